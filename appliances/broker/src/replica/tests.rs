use super::*;

const ME: NodeId = NodeId(1);
const B: NodeId = NodeId(2);
const C: NodeId = NodeId(5);
const LAG: u64 = 10_000;

fn assignment(leader: NodeId, epoch: i32, isr: &[NodeId]) -> Assignment {
    Assignment {
        leader: Some(leader),
        leader_epoch: LeaderEpoch(epoch),
        partition_epoch: PartitionEpoch(epoch),
        replicas: vec![ME, B, C],
        isr: isr.to_vec(),
    }
}

/// A leader over a log holding `end` records, all durable.
fn leader(end: i64) -> Replica {
    let mut r = Replica::new(ME, Offset(0), Offset(end), Offset(end));
    assert_eq!(
        r.assign(&assignment(ME, 1, &[ME, B, C]), 0),
        Transition::BecameLeader
    );
    r
}

#[test]
fn the_high_watermark_waits_for_every_in_sync_replica_to_be_durable() {
    let mut r = leader(0);
    r.on_append(Offset(10));
    assert!(!r.on_flush(Offset(10)), "followers have not fetched yet");
    assert_eq!(r.high_watermark(), Offset(0));
    r.on_follower_fetch(B, Offset(10), 1).unwrap();
    assert_eq!(r.high_watermark(), Offset(0), "C has not confirmed");
    assert!(r.on_follower_fetch(C, Offset(7), 2).unwrap());
    assert_eq!(r.high_watermark(), Offset(7));
    assert!(r.on_follower_fetch(C, Offset(10), 3).unwrap());
    assert_eq!(r.high_watermark(), Offset(10));
    // The leader's own durability counts too.
    r.on_append(Offset(20));
    r.on_follower_fetch(B, Offset(20), 4).unwrap();
    r.on_follower_fetch(C, Offset(20), 4).unwrap();
    assert_eq!(r.high_watermark(), Offset(10), "the leader has not flushed");
    assert!(r.on_flush(Offset(20)));
    assert_eq!(r.high_watermark(), Offset(20));
}

#[test]
fn a_lagging_follower_is_proposed_out_and_counts_until_the_change_commits() {
    let mut r = leader(0);
    r.on_append(Offset(100));
    r.on_flush(Offset(100));
    r.on_follower_fetch(B, Offset(100), 1_000).unwrap();
    r.on_follower_fetch(C, Offset(40), 1_000).unwrap();
    assert_eq!(r.wanted_isr(5_000, LAG, 1_000), None, "within the lag time");
    r.on_follower_fetch(B, Offset(100), 11_500).unwrap();
    let wanted = r.wanted_isr(12_000, LAG, 1_000).expect("C is out");
    assert_eq!(wanted, vec![ME, B]);
    r.isr_requested(wanted.clone(), 12_000);
    // Still counted until committed: the high watermark stays at what C holds.
    r.on_follower_fetch(B, Offset(100), 12_001).unwrap();
    assert_eq!(r.high_watermark(), Offset(40));
    assert_eq!(
        r.wanted_isr(12_500, LAG, 1_000),
        None,
        "a request is in flight"
    );
    let mut committed = assignment(ME, 1, &wanted);
    committed.partition_epoch = PartitionEpoch(2);
    assert_eq!(r.assign(&committed, 12_600), Transition::Updated);
    r.on_follower_fetch(B, Offset(100), 12_700).unwrap();
    assert_eq!(r.high_watermark(), Offset(100));
}

#[test]
fn a_caught_up_replica_is_proposed_in_and_counts_at_once() {
    let mut r = Replica::new(ME, Offset(0), Offset(50), Offset(50));
    r.assign(&assignment(ME, 3, &[ME, B]), 0);
    r.on_follower_fetch(B, Offset(50), 1).unwrap();
    assert_eq!(r.high_watermark(), Offset(50));
    r.on_follower_fetch(C, Offset(20), 2).unwrap();
    assert_eq!(r.wanted_isr(3, LAG, 1_000), None, "C is behind");
    r.on_follower_fetch(C, Offset(50), 4).unwrap();
    let wanted = r.wanted_isr(5, LAG, 1_000).expect("C is in");
    assert_eq!(wanted, vec![ME, B, C]);
    r.isr_requested(wanted, 5);
    // Counted at once: new appends wait for C as well.
    r.on_append(Offset(60));
    r.on_flush(Offset(60));
    r.on_follower_fetch(B, Offset(60), 6).unwrap();
    assert_eq!(r.high_watermark(), Offset(50));
    r.on_follower_fetch(C, Offset(60), 7).unwrap();
    assert_eq!(r.high_watermark(), Offset(60));
}

#[test]
fn a_new_leader_never_counts_followers_it_has_not_heard_from() {
    let mut r = Replica::new(ME, Offset(0), Offset(30), Offset(30));
    r.assign(&assignment(B, 4, &[ME, B, C]), 0);
    r.on_leader_high_watermark(Offset(25));
    assert_eq!(r.high_watermark(), Offset(25));
    assert_eq!(
        r.assign(&assignment(ME, 5, &[ME, B, C]), 10),
        Transition::BecameLeader
    );
    assert_eq!(r.high_watermark(), Offset(25), "kept, not advanced blindly");
    r.on_follower_fetch(B, Offset(30), 11).unwrap();
    r.on_follower_fetch(C, Offset(30), 11).unwrap();
    assert_eq!(r.high_watermark(), Offset(30));
}

#[test]
fn followers_refuse_leader_work_and_track_their_leaders_high_watermark() {
    let mut r = Replica::new(ME, Offset(0), Offset(10), Offset(10));
    assert_eq!(
        r.assign(&assignment(B, 2, &[ME, B, C]), 0),
        Transition::BecameFollower { leader: Some(B) }
    );
    assert_eq!(
        r.on_follower_fetch(C, Offset(1), 1),
        Err(FetchRefusal::NotLeader)
    );
    r.on_leader_high_watermark(Offset(50));
    assert_eq!(r.high_watermark(), Offset(10), "never past its own log");
    r.on_truncate(Offset(8));
    assert_eq!((r.log_end(), r.high_watermark()), (Offset(8), Offset(8)));
    assert_eq!(r.wanted_isr(100, LAG, 1), None);
}

#[test]
fn fetches_past_the_end_or_from_strangers_are_refused() {
    let mut r = leader(5);
    assert_eq!(
        r.on_follower_fetch(B, Offset(6), 1),
        Err(FetchRefusal::PastEnd {
            offset: Offset(6),
            end: Offset(5)
        })
    );
    assert_eq!(
        r.on_follower_fetch(NodeId(9), Offset(1), 1),
        Err(FetchRefusal::UnknownReplica(NodeId(9)))
    );
}

#[test]
fn removal_from_the_replicas_ends_the_role() {
    let mut r = leader(5);
    let mut gone = assignment(B, 2, &[B, C]);
    gone.replicas = vec![B, C];
    assert_eq!(r.assign(&gone, 1), Transition::Removed);
    assert_eq!(r.role(), Role::None);
}

#[test]
#[should_panic(expected = "leader epoch went back")]
fn leader_epochs_never_go_back() {
    let mut r = leader(0);
    r.assign(&assignment(B, 0, &[ME, B, C]), 1);
}

#[test]
fn a_replica_not_heard_from_lately_is_not_taken_back() {
    let mut r = Replica::new(ME, Offset(0), Offset(10), Offset(10));
    r.assign(&assignment(ME, 1, &[ME, B]), 0);
    r.on_follower_fetch(B, Offset(10), 1).unwrap();
    // C caught up once, then went silent (cut off): it is not proposed back in.
    r.on_follower_fetch(C, Offset(10), 2).unwrap();
    assert!(
        r.wanted_isr(5, LAG, 1).is_some(),
        "caught up and fetching: in"
    );
    r.on_follower_fetch(B, Offset(10), 50_000).unwrap();
    assert_eq!(
        r.wanted_isr(50_000, LAG, 1),
        None,
        "silent for longer than the lag time"
    );
}

#[test]
fn a_follower_has_high_watermark_news_until_an_answer_tells_it() {
    let mut r = leader(0);
    r.on_append(Offset(10));
    r.on_flush(Offset(10));
    r.on_follower_fetch(B, Offset(10), 1).unwrap();
    r.on_high_watermark_sent(B, r.high_watermark());
    r.on_high_watermark_sent(C, r.high_watermark());
    assert!(
        !r.high_watermark_news(B),
        "nothing committed yet, B knows 0"
    );
    // C's fetch (the one reporting offset 10) commits the records: B has not been told.
    assert!(r.on_follower_fetch(C, Offset(10), 2).unwrap());
    assert!(r.high_watermark_news(B));
    assert!(r.high_watermark_news(C), "C was not told either");
    r.on_high_watermark_sent(B, Offset(10));
    assert!(!r.high_watermark_news(B));
    // An older answer arriving late does not take back what B was told.
    r.on_high_watermark_sent(B, Offset(3));
    assert!(!r.high_watermark_news(B));
    // A follower never has news from a replica that does not lead.
    let mut f = Replica::new(ME, Offset(0), Offset(0), Offset(0));
    f.assign(&assignment(B, 1, &[ME, B, C]), 0);
    assert!(!f.high_watermark_news(C));
}

#[test]
fn a_leader_tracks_replicas_a_reassignment_adds_and_forgets_removed_ones() {
    const D: NodeId = NodeId(6);
    let mut r = leader(50);
    r.on_follower_fetch(B, Offset(50), 1).unwrap();
    r.on_follower_fetch(C, Offset(50), 1).unwrap();
    assert_eq!(r.high_watermark(), Offset(50));
    // D is added under the same leader and epoch: it fetches like any follower and is
    // proposed into the in-sync set once it holds everything acknowledged; until then it
    // does not hold back the high watermark.
    let mut moving = assignment(ME, 1, &[ME, B, C]);
    moving.partition_epoch = PartitionEpoch(2);
    moving.replicas = vec![D, B, C, ME];
    assert_eq!(r.assign(&moving, 2), Transition::Updated);
    r.on_append(Offset(60));
    r.on_flush(Offset(60));
    r.on_follower_fetch(B, Offset(60), 3).unwrap();
    r.on_follower_fetch(C, Offset(60), 3).unwrap();
    r.on_follower_fetch(D, Offset(10), 3).unwrap();
    assert_eq!(r.high_watermark(), Offset(60));
    assert_eq!(r.wanted_isr(4, LAG, 1_000), None, "D is behind");
    r.on_follower_fetch(D, Offset(60), 5).unwrap();
    assert_eq!(r.wanted_isr(6, LAG, 1_000), Some(vec![ME, B, C, D]));
    // The move completes without this leader: it is told it is no longer a replica.
    let mut done = assignment(D, 2, &[D, B, C]);
    done.partition_epoch = PartitionEpoch(3);
    done.replicas = vec![D, B, C];
    assert_eq!(r.assign(&done, 7), Transition::Removed);
    // Had it stayed leader, a removed follower would be refused at its next fetch.
    let mut kept = leader(5);
    let mut shrunk = assignment(ME, 1, &[ME, B]);
    shrunk.partition_epoch = PartitionEpoch(2);
    shrunk.replicas = vec![ME, B, D];
    kept.assign(&shrunk, 1);
    assert_eq!(
        kept.on_follower_fetch(C, Offset(5), 2),
        Err(FetchRefusal::UnknownReplica(C))
    );
    kept.on_follower_fetch(D, Offset(5), 2).unwrap();
}
