//! ApiVersions, DescribeCluster and InitProducerId: what the broker is and what it speaks.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{
    ApiVersionsResponse, BrokerId, DescribeClusterRequest, DescribeClusterResponse,
    InitProducerIdRequest, InitProducerIdResponse, ProducerId,
};
use kafka_protocol::protocol::StrBytes;

use super::{err, versions};
use crate::state::BrokerState;

pub fn api_versions() -> ApiVersionsResponse {
    let keys = versions::SUPPORTED
        .iter()
        .map(|&(key, min, max)| {
            ApiVersion::default()
                .with_api_key(key as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect();
    ApiVersionsResponse::default().with_api_keys(keys)
}

/// The answer to an ApiVersions request newer than we speak, to be encoded as v0.
pub fn api_versions_too_new() -> ApiVersionsResponse {
    api_versions().with_error_code(err(ResponseError::UnsupportedVersion))
}

pub fn describe_cluster(
    s: &BrokerState,
    listener: &str,
    version: i16,
    r: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let state = s.metadata();
    let brokers = s
        .live_brokers(&state)
        .into_iter()
        .map(|b| {
            let (host, port) = crate::state::client_endpoint(&b, listener);
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.node.kafka()))
                .with_host(StrBytes::from_string(host))
                .with_port(port)
                .with_rack(Some(StrBytes::from_string(b.site.to_string())))
        })
        .collect();
    let mut resp = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(s.cluster_id.clone()))
        .with_controller_id(BrokerId(super::metadata::controller_id(s)))
        .with_brokers(brokers);
    if version >= 1 {
        // Endpoint type 1 asks for brokers, 2 for controllers; this node is both.
        if r.endpoint_type != 1 && r.endpoint_type != 2 {
            resp = resp
                .with_error_code(err(ResponseError::UnsupportedEndpointType))
                .with_error_message(Some(StrBytes::from_static_str("unknown endpoint type")))
                .with_brokers(Vec::new());
        }
        resp = resp.with_endpoint_type(r.endpoint_type);
    }
    resp
}

pub async fn init_producer_id(s: &BrokerState, r: InitProducerIdRequest) -> InitProducerIdResponse {
    let failed = |code| {
        InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if r.transactional_id.as_ref().is_some_and(|t| !t.0.is_empty()) {
        tracing::info!(
            "refusing InitProducerId for a transactional producer: transactions are not supported"
        );
        return failed(err(ResponseError::UnsupportedVersion));
    }
    // Idempotent producers always get a fresh id (also on an epoch bump), as in Kafka.
    match s.producer_ids.next().await {
        Ok(id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(e) => {
            tracing::error!(error = %e, "allocating producer ids failed");
            failed(err(ResponseError::KafkaStorageError))
        }
    }
}
