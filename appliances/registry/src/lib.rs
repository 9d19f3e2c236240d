//! Every appliance an image can be built for. Each appliance crate declares itself in one
//! [`pid1::Manifest`] (name, configuration check, what its image needs); this list is the only
//! place that names them all. Adding an appliance: its crate, its `MANIFEST`, one line here.

use pid1::Manifest;

pub static APPLIANCES: &[&Manifest] = &[
    &broker::appliance::MANIFEST,
    &edge::appliance::MANIFEST,
    &s3gw::appliance::MANIFEST,
    &witness::appliance::MANIFEST,
];

/// The appliance called `name`.
pub fn find(name: &str) -> Option<&'static Manifest> {
    APPLIANCES.iter().copied().find(|m| m.name == name)
}

/// `broker, edge, s3gw, witness`.
pub fn names() -> String {
    APPLIANCES
        .iter()
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every appliance's own baked configuration passes its own check, and names are unique.
    #[test]
    fn every_default_config_passes_its_check() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for m in APPLIANCES {
            let path = root.join(m.default_config);
            let text = std::fs::read_to_string(&path).unwrap();
            (m.check_baked_config)(&text, m.default_config)
                .unwrap_or_else(|e| panic!("{}: {e:#}", m.name));
            assert!(m.ports.iter().any(|p| p.number == m.admin_port));
            assert_eq!(APPLIANCES.iter().filter(|o| o.name == m.name).count(), 1);
        }
    }

    #[test]
    fn a_bad_config_is_refused_with_the_appliances_message() {
        let broker = find("broker").unwrap();
        let e = (broker.check_baked_config)("data_dir = 5\n", "x.toml").unwrap_err();
        assert!(format!("{e:#}").contains("x.toml"), "{e:#}");
        assert!(find("nope").is_none());
    }
}
