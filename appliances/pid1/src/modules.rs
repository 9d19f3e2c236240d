//! Loading the kernel modules the image carries, in the order the builder resolved from their
//! dependencies, each with its parameters (`finit_module` is the only way to pass them: the
//! kernel command line's `module.param=` is not applied to modules loaded this way).

use std::ffi::CString;
use std::fs::File;

use nix::kmod::{ModuleInitFlags, finit_module};

use crate::system::Module;

#[derive(Debug, thiserror::Error)]
#[error("kernel module {name} ({path}) failed to load: {reason}")]
pub struct ModuleError {
    pub name: String,
    pub path: String,
    pub reason: String,
}

/// Load every module; an optional module's failure only warns. Returns the first required
/// module that failed (the caller decides: an appliance without its disk driver cannot run).
pub fn load_all(modules: &[Module]) -> Result<usize, ModuleError> {
    let mut loaded = 0;
    for m in modules {
        match load(m) {
            Ok(()) => loaded += 1,
            Err(e) if m.optional => tracing::warn!(error = %e, "optional module not loaded"),
            Err(e) => return Err(e),
        }
    }
    Ok(loaded)
}

fn load(m: &Module) -> Result<(), ModuleError> {
    let fail = |reason: String| ModuleError {
        name: m.name.clone(),
        path: m.path.clone(),
        reason,
    };
    let file = File::open(&m.path).map_err(|e| fail(e.to_string()))?;
    let params = CString::new(m.params.as_str()).map_err(|e| fail(e.to_string()))?;
    match finit_module(&file, &params, ModuleInitFlags::empty()) {
        // Built into this kernel or loaded already: what we wanted.
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(fail(e.desc().to_string())),
    }
}
