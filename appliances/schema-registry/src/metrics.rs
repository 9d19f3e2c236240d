//! The registry's Prometheus metrics, registered in the serving appliance's registry: requests
//! by route template (never the raw path: subjects would make the label set unbounded) and
//! status, and the number of subjects and schemas held.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Default)]
pub struct RegistryMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub subjects: Gauge,
    pub schemas: Gauge,
}

impl RegistryMetrics {
    pub fn register(registry: &mut Registry) -> RegistryMetrics {
        let m = RegistryMetrics::default();
        registry.register(
            "schema_registry_requests",
            "Schema Registry requests by method, route template and status",
            m.requests.clone(),
        );
        registry.register(
            "schema_registry_subjects",
            "Subjects with a live version",
            m.subjects.clone(),
        );
        registry.register(
            "schema_registry_schemas",
            "Distinct schema ids held",
            m.schemas.clone(),
        );
        m
    }
}

/// The route template of a request's path segments (`/subjects/{subject}/versions/{version}`).
pub fn route_template(segs: &[&str]) -> &'static str {
    match segs {
        [] => "/",
        ["subjects"] => "/subjects",
        ["subjects", _] => "/subjects/{subject}",
        ["subjects", _, "versions"] => "/subjects/{subject}/versions",
        ["subjects", _, "versions", _] => "/subjects/{subject}/versions/{version}",
        ["subjects", _, "versions", _, "schema"] => "/subjects/{subject}/versions/{version}/schema",
        ["subjects", _, "versions", _, "referencedby"] => {
            "/subjects/{subject}/versions/{version}/referencedby"
        }
        ["schemas", "types"] => "/schemas/types",
        ["schemas", "ids", _] => "/schemas/ids/{id}",
        ["schemas", "ids", _, tail] => match *tail {
            "schema" => "/schemas/ids/{id}/schema",
            "versions" => "/schemas/ids/{id}/versions",
            "subjects" => "/schemas/ids/{id}/subjects",
            _ => "other",
        },
        ["compatibility", "subjects", _, "versions"] => {
            "/compatibility/subjects/{subject}/versions"
        }
        ["compatibility", "subjects", _, "versions", _] => {
            "/compatibility/subjects/{subject}/versions/{version}"
        }
        ["config"] => "/config",
        ["config", _] => "/config/{subject}",
        ["mode"] => "/mode",
        ["mode", _] => "/mode/{subject}",
        _ => "other",
    }
}
