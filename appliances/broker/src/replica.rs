//! The replica state machine of one partition on this broker: its role (leader, follower, or
//! neither), leader epoch, in-sync set, the progress of each follower, and the high
//! watermark. Pure: it does no I/O and takes the time as an explicit `now_ms`; the partition
//! ([`crate::partition`]) feeds it what the log and the followers report, and the replica
//! manager feeds it what the metadata quorum decided. Tested without I/O below.
//!
//! The rules (the site policy in `quorum::policy` says which in-sync sets are allowed):
//! - The high watermark is the smallest durable offset among the in-sync replicas (the
//!   leader's own fsynced offset included). A follower only reports what it has fsynced (it
//!   fetches again only after its flush), so everything below the high watermark is on disk on
//!   every in-sync replica.
//! - A replica joining the in-sync set counts for the high watermark as soon as the leader
//!   asks for it (it is caught up); one leaving still counts until the controller has
//!   committed its removal. So the controller's in-sync set is always a set that holds
//!   everything below the high watermark, and any of them may become leader without loss.
//! - The high watermark never goes back while leading; it never passes the log end.
//! - Leader epochs only grow.

use std::collections::BTreeMap;

use quorum::ids::{LeaderEpoch, NodeId, Offset, PartitionEpoch};

/// What the metadata says of the partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub leader: Option<NodeId>,
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: PartitionEpoch,
    pub replicas: Vec<NodeId>,
    pub isr: Vec<NodeId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower {
        leader: Option<NodeId>,
    },
    /// Not a replica here (any more), or nothing assigned yet.
    None,
}

/// What changed with an assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Unchanged,
    /// In-sync set or version changed, same leader and epoch.
    Updated,
    BecameLeader,
    BecameFollower {
        leader: Option<NodeId>,
    },
    Removed,
}

/// A follower as its leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    /// What it has fsynced: its last fetch offset. `None` until its first fetch to this leader.
    durable: Option<Offset>,
    last_fetch_ms: u64,
    /// The last time it had everything the leader had (Kafka's lastCaughtUpTime).
    last_caught_up_ms: u64,
    /// The leader's log end when the previous fetch was served.
    leader_end_at_last_fetch: Offset,
    /// The high watermark in the last answer it was sent (what it knows of it).
    high_watermark_sent: Offset,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchRefusal {
    #[error("not the leader")]
    NotLeader,
    #[error("replica {0} is not a replica of this partition")]
    UnknownReplica(NodeId),
    #[error("fetch offset {offset} is past the leader's log end {end}")]
    PastEnd { offset: Offset, end: Offset },
}

#[derive(Debug, Clone)]
pub struct Replica {
    me: NodeId,
    role: Role,
    leader_epoch: LeaderEpoch,
    partition_epoch: PartitionEpoch,
    replicas: Vec<NodeId>,
    /// As committed by the controller.
    isr: Vec<NodeId>,
    /// Asked of the controller, not yet committed (and when it was asked).
    pending_isr: Option<(Vec<NodeId>, u64)>,
    log_end: Offset,
    durable: Offset,
    high_watermark: Offset,
    /// Where this leadership's first record goes.
    epoch_start: Offset,
    followers: BTreeMap<NodeId, Progress>,
    assigned: bool,
}

impl Replica {
    /// A replica over a local log from `log_start` to `log_end`, of which `durable` is on
    /// disk. Its high watermark starts at the log start: a leader computes it at once, a
    /// follower learns it from its leader.
    pub fn new(me: NodeId, log_start: Offset, log_end: Offset, durable: Offset) -> Replica {
        assert!(log_start <= durable && durable <= log_end);
        Replica {
            me,
            role: Role::None,
            leader_epoch: LeaderEpoch(-1),
            partition_epoch: PartitionEpoch(-1),
            replicas: vec![],
            isr: vec![],
            pending_isr: None,
            log_end,
            durable,
            high_watermark: log_start,
            epoch_start: log_end,
            followers: BTreeMap::new(),
            assigned: false,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    pub fn leader_epoch(&self) -> LeaderEpoch {
        self.leader_epoch
    }

    pub fn partition_epoch(&self) -> PartitionEpoch {
        self.partition_epoch
    }

    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    pub fn log_end(&self) -> Offset {
        self.log_end
    }

    pub fn isr(&self) -> &[NodeId] {
        &self.isr
    }

    pub fn replicas(&self) -> &[NodeId] {
        &self.replicas
    }

    /// The in-sync set the high watermark waits for: committed plus asked-for additions.
    fn maximal_isr(&self) -> Vec<NodeId> {
        let mut set = self.isr.clone();
        if let Some((pending, _)) = &self.pending_isr {
            for n in pending {
                if !set.contains(n) {
                    set.push(*n);
                }
            }
        }
        set
    }

    /// Apply what the metadata says. Epochs only grow: an older assignment is a bug upstream.
    pub fn assign(&mut self, a: &Assignment, now_ms: u64) -> Transition {
        assert!(
            !self.assigned || a.leader_epoch >= self.leader_epoch,
            "leader epoch went back from {} to {}",
            self.leader_epoch,
            a.leader_epoch
        );
        let first = !self.assigned;
        self.assigned = true;
        let new_epoch = first || a.leader_epoch > self.leader_epoch;
        let old_role = self.role;
        let changed = first
            || a.partition_epoch != self.partition_epoch
            || a.isr != self.isr
            || a.replicas != self.replicas;
        self.replicas = a.replicas.clone();
        self.isr = a.isr.clone();
        self.partition_epoch = a.partition_epoch;
        self.leader_epoch = a.leader_epoch;
        if self
            .pending_isr
            .as_ref()
            .is_some_and(|(p, _)| sorted(p) == sorted(&a.isr))
            || new_epoch
        {
            self.pending_isr = None;
        }
        if !a.replicas.contains(&self.me) {
            self.role = Role::None;
            self.followers.clear();
            return if old_role == Role::None && !first {
                Transition::Unchanged
            } else {
                Transition::Removed
            };
        }
        if a.leader == Some(self.me) {
            if new_epoch || old_role != Role::Leader {
                self.become_leader(now_ms);
                return Transition::BecameLeader;
            }
        } else if new_epoch || old_role != (Role::Follower { leader: a.leader }) {
            self.role = Role::Follower { leader: a.leader };
            self.followers.clear();
            // A follower's high watermark comes from its leader; never past its own log.
            self.high_watermark = self.high_watermark.min(self.log_end);
            return Transition::BecameFollower { leader: a.leader };
        }
        if self.role == Role::Leader {
            // A reassignment added or removed replicas under the same leader.
            self.sync_followers(now_ms);
            self.advance_high_watermark();
        }
        if changed {
            Transition::Updated
        } else {
            Transition::Unchanged
        }
    }

    fn become_leader(&mut self, now_ms: u64) {
        self.role = Role::Leader;
        self.epoch_start = self.log_end;
        self.followers.clear();
        self.sync_followers(now_ms);
        self.advance_high_watermark();
    }

    /// Track exactly the other replicas: a new one starts unknown (not caught up), a removed
    /// one is forgotten.
    fn sync_followers(&mut self, now_ms: u64) {
        let (me, replicas, log_end) = (self.me, &self.replicas, self.log_end);
        self.followers.retain(|n, _| replicas.contains(n));
        for n in replicas.iter().filter(|n| **n != me) {
            let in_sync = self.isr.contains(n);
            self.followers.entry(*n).or_insert_with(|| Progress {
                durable: None,
                last_fetch_ms: now_ms,
                // In-sync replicas get a full lag time to show up.
                last_caught_up_ms: if in_sync { now_ms } else { 0 },
                leader_end_at_last_fetch: log_end,
                high_watermark_sent: Offset(-1),
            });
        }
    }

    /// Records were appended to the local log.
    pub fn on_append(&mut self, log_end: Offset) {
        assert!(
            log_end >= self.log_end,
            "the log end went back without a truncation"
        );
        self.log_end = log_end;
    }

    /// The local log was made durable up to `durable`. Returns whether the high watermark
    /// moved.
    pub fn on_flush(&mut self, durable: Offset) -> bool {
        assert!(durable <= self.log_end, "flushed past the log end");
        self.durable = self.durable.max(durable);
        self.role == Role::Leader && self.advance_high_watermark()
    }

    /// The local log was cut at `log_end` (a follower diverged from its leader).
    pub fn on_truncate(&mut self, log_end: Offset) {
        assert!(self.role != Role::Leader, "a leader never truncates");
        self.log_end = log_end;
        self.durable = self.durable.min(log_end);
        self.high_watermark = self.high_watermark.min(log_end);
    }

    /// A follower fetched from `offset` (so it holds everything below, durably). Returns
    /// whether the high watermark moved.
    pub fn on_follower_fetch(
        &mut self,
        follower: NodeId,
        offset: Offset,
        now_ms: u64,
    ) -> Result<bool, FetchRefusal> {
        if self.role != Role::Leader {
            return Err(FetchRefusal::NotLeader);
        }
        if offset > self.log_end {
            return Err(FetchRefusal::PastEnd {
                offset,
                end: self.log_end,
            });
        }
        let end = self.log_end;
        let p = self
            .followers
            .get_mut(&follower)
            .ok_or(FetchRefusal::UnknownReplica(follower))?;
        if offset >= end {
            p.last_caught_up_ms = now_ms;
        } else if offset >= p.leader_end_at_last_fetch {
            p.last_caught_up_ms = p.last_caught_up_ms.max(p.last_fetch_ms);
        }
        p.durable = Some(p.durable.map_or(offset, |d| d.max(offset)));
        p.last_fetch_ms = now_ms;
        p.leader_end_at_last_fetch = end;
        Ok(self.advance_high_watermark())
    }

    /// (Leader) an answer told `follower` the high watermark `hw`.
    pub fn on_high_watermark_sent(&mut self, follower: NodeId, hw: Offset) {
        if let Some(p) = self.followers.get_mut(&follower) {
            p.high_watermark_sent = p.high_watermark_sent.max(hw);
        }
    }

    /// (Leader) whether the high watermark moved past what `follower` was last told: news
    /// that consumers reading from that follower (KIP-392) wait for.
    pub fn high_watermark_news(&self, follower: NodeId) -> bool {
        self.role == Role::Leader
            && self
                .followers
                .get(&follower)
                .is_some_and(|p| self.high_watermark > p.high_watermark_sent)
    }

    /// A follower learned its leader's high watermark.
    pub fn on_leader_high_watermark(&mut self, hw: Offset) {
        if matches!(self.role, Role::Follower { .. }) {
            self.high_watermark = hw.min(self.log_end);
        }
    }

    /// Recompute the high watermark (leader): the smallest durable offset among the maximal
    /// in-sync set. Returns whether it moved.
    fn advance_high_watermark(&mut self) -> bool {
        let mut hw = self.durable;
        for n in self.maximal_isr() {
            if n == self.me {
                continue;
            }
            match self.followers.get(&n).and_then(|p| p.durable) {
                Some(d) => hw = hw.min(d),
                // Not heard from since this leadership began: it holds at least the
                // current high watermark, nothing more is known.
                None => hw = hw.min(self.high_watermark),
            }
        }
        assert!(
            hw <= self.log_end,
            "high watermark {hw} past the log end {}",
            self.log_end
        );
        if hw > self.high_watermark {
            self.high_watermark = hw;
            true
        } else {
            false
        }
    }

    /// The in-sync set this leader should ask for now: lagging followers out (caught up last
    /// more than `lag_time_ms` ago), caught-up replicas in. `None` when nothing should change
    /// or a request is in flight (one is retried after `retry_ms`). The controller checks the
    /// site policy; the caller may pre-check it too.
    pub fn wanted_isr(&self, now_ms: u64, lag_time_ms: u64, retry_ms: u64) -> Option<Vec<NodeId>> {
        if self.role != Role::Leader {
            return None;
        }
        if let Some((_, asked)) = &self.pending_isr
            && now_ms.saturating_sub(*asked) < retry_ms
        {
            return None;
        }
        let mut wanted: Vec<NodeId> =
            self.isr
                .iter()
                .copied()
                .filter(|n| {
                    *n == self.me
                        || self.followers.get(n).is_some_and(|p| {
                            now_ms.saturating_sub(p.last_caught_up_ms) <= lag_time_ms
                        })
                })
                .collect();
        let threshold = self.high_watermark.max(self.epoch_start);
        // Joining: replicas outside the in-sync set that hold everything acknowledged and are
        // fetching now (a member that just lagged out is not re-admitted by the same look, and
        // a replica heard from long ago, before a cut, is not taken for a live one).
        for (n, p) in &self.followers {
            let fetching = now_ms.saturating_sub(p.last_fetch_ms) <= lag_time_ms;
            if !self.isr.contains(n) && fetching && p.durable.is_some_and(|d| d >= threshold) {
                wanted.push(*n);
            }
        }
        (sorted(&wanted) != sorted(&self.isr)).then_some(sorted(&wanted))
    }

    /// The leader asked the controller for `isr`.
    pub fn isr_requested(&mut self, isr: Vec<NodeId>, now_ms: u64) {
        self.pending_isr = Some((isr, now_ms));
        self.advance_high_watermark();
    }

    /// The controller refused or did not answer: ask again later from a fresh look.
    pub fn isr_request_failed(&mut self) {
        self.pending_isr = None;
    }

    /// Lag of each follower (leader only): (node, records behind, in sync).
    pub fn follower_lag(&self) -> Vec<(NodeId, i64, bool)> {
        self.followers
            .iter()
            .map(|(n, p)| {
                let behind = p.durable.map_or(self.log_end.0, |d| self.log_end.0 - d.0);
                (*n, behind, self.isr.contains(n))
            })
            .collect()
    }
}

fn sorted(v: &[NodeId]) -> Vec<NodeId> {
    let mut v = v.to_vec();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests;
