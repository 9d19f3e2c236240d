//! Liveness and readiness. An appliance is live while its process answers; it is ready once
//! every named condition it registered holds (storage recovered, listeners bound...).

use std::collections::BTreeMap;

use parking_lot::Mutex;

#[derive(Debug, Default)]
pub struct Health {
    /// Condition name -> `None` when it holds, or why it does not.
    conditions: Mutex<BTreeMap<String, Option<String>>>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declare a condition, initially not holding.
    pub fn require(&self, name: &str, why_not: &str) {
        self.conditions
            .lock()
            .insert(name.to_string(), Some(why_not.to_string()));
    }

    pub fn set_ok(&self, name: &str) {
        self.conditions.lock().insert(name.to_string(), None);
    }

    pub fn set_failing(&self, name: &str, why: impl Into<String>) {
        self.conditions
            .lock()
            .insert(name.to_string(), Some(why.into()));
    }

    /// `Ok` when ready, else the conditions that do not hold, one per line.
    pub fn readiness(&self) -> Result<(), String> {
        let failing: Vec<String> = self
            .conditions
            .lock()
            .iter()
            .filter_map(|(name, why)| why.as_ref().map(|w| format!("{name}: {w}")))
            .collect();
        if failing.is_empty() {
            Ok(())
        } else {
            Err(failing.join("\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_all_conditions_hold() {
        let h = Health::new();
        assert!(h.readiness().is_ok());
        h.require("storage", "recovering");
        h.require("listener", "not bound");
        h.set_ok("storage");
        assert_eq!(h.readiness().unwrap_err(), "listener: not bound");
        h.set_ok("listener");
        assert!(h.readiness().is_ok());
    }
}
