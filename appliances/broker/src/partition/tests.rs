//! What a produce waiting on a leader learns when the leadership moves under it
//! ([`Partition::wait_outcome`]): two replicas in temporary directories, replication done by
//! hand (the fetcher's steps: read from the leader, append, report, take its high watermark).

use std::future::Future;
use std::iter::once;
use std::pin::Pin;

use futures::FutureExt;
use prometheus_client::registry::Registry;
use quorum::ids::PartitionEpoch;
use tempfile::TempDir;

use super::*;
use crate::internal_log::encode_batch;

fn open(dir: &Path, me: u32) -> Arc<Partition> {
    let spec = PartitionSpec {
        topic: "t".into(),
        topic_id: Uuid::nil(),
        index: 0,
        me: NodeId(me),
        config: LogConfig::default(),
        policy: TopicPolicy {
            min_insync_replicas: 1,
            compacted: false,
            timestamp_before_max_ms: i64::MAX,
            timestamp_after_max_ms: i64::MAX,
        },
        durability: Durability::Sync,
        clean_shutdown: true,
    };
    let metrics = Arc::new(Metrics::register(&mut Registry::default()));
    Partition::open(dir, spec, metrics, CancellationToken::new()).expect("open")
}

/// Replicas 1 and 2, both in sync, `leader` leading in `epoch`.
fn led_by(leader: u32, epoch: i32) -> Assignment {
    Assignment {
        leader: Some(NodeId(leader)),
        leader_epoch: LeaderEpoch(epoch),
        partition_epoch: PartitionEpoch(epoch),
        replicas: vec![NodeId(1), NodeId(2)],
        isr: vec![NodeId(1), NodeId(2)],
    }
}

fn one_record(value: &'static str) -> Vec<RawBatch> {
    let batch = encode_batch(once((None, Some(Bytes::from_static(value.as_bytes())))));
    durable_log::split_batches(&batch).expect("a batch")
}

/// Replicas 1 and 2 in temporary directories (kept while the first is), 1 leading in epoch 1.
async fn pair() -> ((TempDir, TempDir), Arc<Partition>, Arc<Partition>) {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (one, two) = (open(dirs.0.path(), 1), open(dirs.1.path(), 2));
    one.assign(led_by(1, 1)).await.unwrap();
    two.assign(led_by(1, 1)).await.unwrap();
    (dirs, one, two)
}

/// One fetch by replica `id` from `leader` (in `epoch`): copy what it lacks, make it durable,
/// report it, take the leader's high watermark.
async fn fetch(id: u32, follower: &Arc<Partition>, leader: &Arc<Partition>, epoch: i32) {
    let from = follower.offsets().log_end;
    let read = leader
        .read(from, 1 << 20, true, ReadBound::LogEnd)
        .await
        .expect("read");
    if !read.records.is_empty() {
        let batches = durable_log::split_stored_batches(&read.records).expect("batches");
        let end = follower
            .append_as_follower(batches, LeaderEpoch(epoch))
            .await
            .expect("append as follower");
        follower.wait_durable(end).await.expect("durable");
    }
    let end = follower.offsets().log_end;
    leader
        .wait_durable(leader.offsets().log_end)
        .await
        .expect("durable");
    leader
        .follower_fetched(NodeId(id), end, LeaderEpoch(epoch))
        .await
        .expect("the leader takes the fetch");
    follower.leader_high_watermark(leader.high_watermark());
}

type Waiting = Pin<Box<dyn Future<Output = Result<Outcome, PartitionError>> + Send>>;

fn waiting(p: &Arc<Partition>, w: Written) -> Waiting {
    let p = Arc::clone(p);
    Box::pin(async move { p.wait_outcome(w).await })
}

/// Whether `w` is answered by now, and how (a watch receiver checks its value at the first
/// poll: no waiting needed to see an answer that is due).
fn answer(w: &mut Waiting) -> Option<Outcome> {
    w.as_mut()
        .now_or_never()
        .map(|r| r.expect("no storage error"))
}

#[tokio::test]
async fn records_the_new_leader_has_are_answered_committed_after_the_leadership_moves() {
    let (_dirs, one, two) = pair().await;
    let (result, epoch) = one.append(one_record("a")).await.unwrap();
    let written = one.written(&result, epoch);
    let mut w = waiting(&one, written);
    assert_eq!(answer(&mut w), None, "nothing is committed yet");
    // Replica 2 copies the record but the leader never hears that it has it: the leadership
    // moves to replica 2 with the record uncommitted.
    let from = two.offsets().log_end;
    let read = one
        .read(from, 1 << 20, true, ReadBound::LogEnd)
        .await
        .unwrap();
    let batches = durable_log::split_stored_batches(&read.records).unwrap();
    two.append_as_follower(batches, epoch).await.unwrap();
    two.assign(led_by(2, 2)).await.unwrap();
    one.assign(led_by(2, 2)).await.unwrap();
    assert_eq!(
        answer(&mut w),
        None,
        "losing the leadership is no answer: the record may have survived"
    );
    // Replica 1 follows: the new leader commits the record, and says so.
    fetch(1, &one, &two, 2).await;
    assert!(two.high_watermark() >= written.end);
    assert_eq!(answer(&mut w), Some(Outcome::Committed));
    assert_eq!(one.offsets().log_end, written.end, "stored once");
}

#[tokio::test]
async fn records_the_new_leader_lacks_are_answered_lost() {
    let (_dirs, one, two) = pair().await;
    let (result, epoch) = one.append(one_record("a")).await.unwrap();
    let written = one.written(&result, epoch);
    let (mut cut, mut replaced) = (waiting(&one, written), waiting(&one, written));
    // Replica 2 leads without the record and writes another at its offset.
    two.assign(led_by(2, 2)).await.unwrap();
    one.assign(led_by(2, 2)).await.unwrap();
    let (b, e2) = two.append(one_record("b")).await.unwrap();
    assert_eq!((b.first_offset, e2), (written.first, LeaderEpoch(2)));
    assert_eq!(answer(&mut cut), None);
    assert_eq!(answer(&mut replaced), None);
    // The divergence cuts replica 1's record: the first waiter sees it gone.
    one.truncate_to(written.first).await.unwrap();
    assert_eq!(answer(&mut cut), Some(Outcome::Lost));
    // The second looks only after the new leader's record took the same offsets and was
    // committed: the epoch the offsets carry tells it the record there is not its own.
    fetch(1, &one, &two, 2).await;
    assert!(one.high_watermark() >= written.end);
    assert_eq!(answer(&mut replaced), Some(Outcome::Lost));
}

#[tokio::test]
async fn a_leader_that_keeps_leading_answers_once_committed() {
    let (_dirs, one, two) = pair().await;
    let (result, epoch) = one.append(one_record("a")).await.unwrap();
    let mut w = waiting(&one, one.written(&result, epoch));
    assert_eq!(answer(&mut w), None);
    fetch(2, &two, &one, 1).await;
    assert_eq!(answer(&mut w), Some(Outcome::Committed));
}
