//! Applying the hardware profile's sysctls: a key `net.core.rmem_max` is the file
//! `/proc/sys/net/core/rmem_max`.

use std::collections::BTreeMap;

/// Apply every setting; failures are logged and counted, not fatal (a key missing from this
/// kernel must not stop the appliance).
pub fn apply(sysctls: &BTreeMap<String, String>) -> usize {
    let mut failed = 0;
    for (key, value) in sysctls {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        if let Err(e) = std::fs::write(&path, value) {
            tracing::warn!(key, value, error = %e, "sysctl not applied");
            failed += 1;
        }
    }
    failed
}
