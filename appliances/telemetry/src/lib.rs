//! What every appliance exposes about itself: structured logs (`tracing`), Prometheus metrics
//! and health endpoints on a small admin HTTP server.

pub mod access;
pub mod admin;
pub mod disk;
pub mod health;
pub mod jwks;
pub mod logging;
pub mod process;
pub mod service;

pub use access::{AdminAccess, AdminSettings};
pub use admin::{
    AdminReply, AdminRoutes, AdminServer, Routes, TlsFilesRoute, serve_admin, serve_admin_with,
};
pub use disk::DiskCollector;
pub use health::Health;
pub use logging::{LogFormat, init_logging};
pub use process::ProcessCollector;
pub use service::{run_process, stop_requested};
