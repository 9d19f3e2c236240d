//! The controller quorum of the stretched hub, shared by every broker and the witness:
//!
//! - [`ids`]: typed node ids, sites, epochs and offsets;
//! - [`policy`]: the site policy (placement, in-sync rules, who may lead), named in one place;
//! - [`metadata`]: the records the quorum orders and the state every node applies them to;
//! - [`controller`]: the leader's decisions (fencing, sites, leaders), pure and clock-driven;
//! - [`raft`]: the Raft log (openraft) with its storage and network;
//! - [`rpc`] and [`transport`]: the messages between nodes and their TCP transport;
//! - [`node`]: a quorum member (voter or learner) with the controller service;
//! - [`status`] and [`admin`]: the cluster as an operator sees it, and the admin port's
//!   cluster routes (status, voter replacement).

pub mod admin;
pub mod config;
pub mod controller;
pub mod ids;
pub mod metadata;
pub mod metrics;
pub mod node;
pub mod policy;
pub mod raft;
pub mod rpc;
pub mod status;
pub mod transport;
