//! Merging a TOML fragment (from cloud-init) over the appliance configuration baked into the
//! image: tables merge key by key, any other value is replaced. The merged text is parsed and
//! validated by the appliance itself, so an overlay can never bypass validation.

use toml::Value;

pub fn merge(base: &str, overlay: &str) -> Result<String, String> {
    let mut base: Value = toml::from_str(base).map_err(|e| format!("baked configuration: {e}"))?;
    let overlay: Value =
        toml::from_str(overlay).map_err(|e| format!("cloud-init clk_config: {}", e.message()))?;
    merge_value(&mut base, overlay);
    toml::to_string(&base).map_err(|e| e.to_string())
}

fn merge_value(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Table(b), Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge_value(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_merge_and_values_replace() {
        let base = "node_id = 1\n[kafka]\nlisten = \"0.0.0.0:9092\"\n";
        let merged = super::merge(base, "node_id = 2\n[kafka]\nadvertised = \"h:9092\"\n").unwrap();
        let v: toml::Value = toml::from_str(&merged).unwrap();
        assert_eq!(v["node_id"].as_integer(), Some(2));
        assert_eq!(v["kafka"]["listen"].as_str(), Some("0.0.0.0:9092"));
        assert_eq!(v["kafka"]["advertised"].as_str(), Some("h:9092"));
        assert!(
            super::merge(base, "[kafka\n")
                .unwrap_err()
                .contains("clk_config")
        );
    }
}
