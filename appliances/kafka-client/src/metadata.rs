//! What a Metadata answer says about where to connect.

use std::collections::BTreeMap;

use kafka_protocol::messages::MetadataResponse;

/// Each broker's `host:port` by node id.
pub fn broker_addresses(meta: &MetadataResponse) -> BTreeMap<i32, String> {
    meta.brokers
        .iter()
        .map(|b| (b.node_id.0, format!("{}:{}", &*b.host, b.port)))
        .collect()
}
