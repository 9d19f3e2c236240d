//! Producer ids for idempotent producers (InitProducerId), unique across the cluster: the
//! controller hands each broker blocks of ids through the metadata log, and a broker gives
//! ids from its current block. A block is never handed out twice (it is a committed record),
//! so an id is never given twice, even across crashes and failovers (a crash only skips the
//! rest of a block).

use std::sync::Arc;

use quorum::controller::{ControllerError, ControllerRequest, ControllerResponse};

use crate::cluster::Cluster;

pub struct ProducerIds {
    cluster: Arc<Cluster>,
    /// Next id to give, and the end of the current block.
    block: tokio::sync::Mutex<(i64, i64)>,
}

impl ProducerIds {
    pub fn new(cluster: Arc<Cluster>) -> ProducerIds {
        ProducerIds {
            cluster,
            block: tokio::sync::Mutex::new((0, 0)),
        }
    }

    /// A new producer id; asks the controller for a block when this one is used up.
    pub async fn next(&self) -> Result<i64, ControllerError> {
        let mut b = self.block.lock().await;
        if b.0 >= b.1 {
            let epoch = self
                .cluster
                .epoch()
                .ok_or_else(|| ControllerError::NotCommitted("not registered".into()))?;
            let request = ControllerRequest::AllocateProducerIds {
                node: self.cluster.me,
                epoch,
            };
            match self.cluster.call(request).await? {
                ControllerResponse::ProducerIds { first, count, .. } => *b = (first, first + count),
                other => {
                    return Err(ControllerError::Invalid(format!(
                        "unexpected answer to a producer id request: {other:?}"
                    )));
                }
            }
        }
        let id = b.0;
        b.0 += 1;
        Ok(id)
    }
}
