//! The replica manager: owns this broker's partitions and its follower fetchers, and is
//! driven only by applied metadata. Every time the quorum's state changes here, it reconciles:
//! open the logs of partitions assigned to this broker, hand each its assignment (which makes
//! it leader or follower), point fetchers at the right leaders, delete what is no longer
//! ours. Request handlers only ask it for a partition and append to it or read from it.
//!
//! It also runs the leaders' in-sync set upkeep: every tick each led partition says which
//! in-sync set it wants (lagging followers out, caught-up ones in), pre-checked against the
//! site policy, and the controller is asked to commit it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use quorum::controller::ControllerRequest;
use quorum::ids::{NodeId, PartitionKey};
use quorum::metadata::{ClusterState, TopicState};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cluster::Cluster;
use crate::config::{Durability, TopicDefaults};
use crate::fetcher::Fetchers;
use crate::metrics::Metrics;
use crate::partition::{Partition, PartitionSpec};
use crate::replica::{Assignment, Transition};
use crate::topic_config;

/// How often leaders look at their followers' lag.
const ISR_TICK: Duration = Duration::from_millis(250);
/// A refused or unanswered in-sync set request is asked again after this.
const ISR_RETRY_MS: u64 = 2_000;
/// Leadership changes of `__consumer_offsets` partitions queued for the group coordinator.
const LEADERSHIP_QUEUE: usize = 4096;

/// The internal topic of consumer group state.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// This broker started or stopped leading an offsets partition.
#[derive(Clone)]
pub enum Leadership {
    Leading(Arc<Partition>),
    NotLeading(i32),
}

pub struct ReplicaManager {
    cluster: Arc<Cluster>,
    dir: PathBuf,
    defaults: TopicDefaults,
    durability: Durability,
    lag_time_ms: u64,
    partitions: RwLock<HashMap<PartitionKey, Arc<Partition>>>,
    /// The topic configurations the local partitions were last given.
    configured: RwLock<HashMap<Uuid, BTreeMap<String, String>>>,
    fetchers: Fetchers,
    /// The metadata index this manager has reconciled to.
    reconciled: watch::Sender<u64>,
    leadership: mpsc::Sender<Leadership>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// Whether the previous process stopped cleanly (partitions opened at start skip
    /// recovery scans).
    clean_start: bool,
}

fn partition_dir(root: &Path, topic: &str, index: i32) -> PathBuf {
    root.join(format!("{topic}-{index}"))
}

fn write_partition_metadata(dir: &Path, id: Uuid) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    durable_log::checkpoint::write_atomic(
        &dir.join("partition.metadata"),
        format!("version: 0\ntopic_id: {id}\n").as_bytes(),
    )
}

fn read_partition_metadata(dir: &Path) -> Option<Uuid> {
    let text = std::fs::read_to_string(dir.join("partition.metadata")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("topic_id: "))
        .and_then(|v| v.trim().parse().ok())
}

pub struct ManagerSettings {
    pub data_dir: PathBuf,
    pub defaults: TopicDefaults,
    pub durability: Durability,
    pub lag_time: Duration,
    pub fetch_wait: Duration,
    pub fetch_max_bytes: usize,
    pub clean_start: bool,
}

impl ReplicaManager {
    /// A manager with nothing opened yet; [`ReplicaManager::run`] reconciles with the
    /// metadata from the start. Leadership changes of offsets partitions go to `leadership`.
    pub fn new(
        cluster: Arc<Cluster>,
        settings: ManagerSettings,
        metrics: Arc<Metrics>,
        leadership: mpsc::Sender<Leadership>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Arc<ReplicaManager>> {
        let dir = settings.data_dir.join("topics");
        std::fs::create_dir_all(&dir)?;
        let fetchers = Fetchers::new(
            Arc::clone(&cluster),
            settings.fetch_wait,
            settings.fetch_max_bytes,
            shutdown.clone(),
        );
        Ok(Arc::new(ReplicaManager {
            cluster,
            dir,
            defaults: settings.defaults,
            durability: settings.durability,
            lag_time_ms: settings.lag_time.as_millis() as u64,
            partitions: RwLock::new(HashMap::new()),
            configured: RwLock::new(HashMap::new()),
            fetchers,
            reconciled: watch::Sender::new(0),
            leadership,
            metrics,
            shutdown,
            clean_start: settings.clean_start,
        }))
    }

    /// The queue size for [`Leadership`] events.
    pub fn leadership_queue() -> (mpsc::Sender<Leadership>, mpsc::Receiver<Leadership>) {
        mpsc::channel(LEADERSHIP_QUEUE)
    }

    pub fn partition(&self, key: PartitionKey) -> Option<Arc<Partition>> {
        self.partitions.read().get(&key).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Partition>> {
        self.partitions.read().values().cloned().collect()
    }

    /// Wait until the metadata up to `index` is reconciled here (partitions opened, roles
    /// taken), at most `timeout`.
    pub async fn wait_reconciled(&self, index: u64, timeout: Duration) -> bool {
        let mut rx = self.reconciled.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|i| *i >= index))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Reconcile with every metadata state as it is applied, until shutdown.
    pub async fn run(self: Arc<Self>) {
        let mut rx = self.cluster.subscribe();
        tokio::spawn(Arc::clone(&self).isr_upkeep());
        loop {
            let state = Arc::clone(&rx.borrow_and_update());
            self.reconcile(&state).await;
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                changed = rx.changed() => if changed.is_err() { return },
            }
        }
    }

    async fn reconcile(&self, state: &ClusterState) {
        let me = self.cluster.me;
        let mut wanted: BTreeMap<PartitionKey, (Arc<TopicState>, Assignment)> = BTreeMap::new();
        for (key, p) in state.partitions_of(me) {
            let a = Assignment {
                leader: p.leader,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                replicas: p.replicas.clone(),
                isr: p.isr.clone(),
            };
            wanted.insert(key, (Arc::clone(&state.topics[&key.topic]), a));
        }
        self.remove_unwanted(&wanted).await;
        for (key, (topic, assignment)) in wanted {
            let Some(partition) = self.open(key, &topic) else {
                continue;
            };
            self.configure_if_changed(&partition, &topic).await;
            match partition.assign(assignment.clone()).await {
                Ok(t) => {
                    self.after_transition(&partition, &topic, &assignment, t)
                        .await
                }
                Err(e) => {
                    tracing::error!(topic = %topic.name, partition = key.index, error = %e, "applying an assignment failed")
                }
            }
        }
        self.metrics
            .partitions
            .set(self.partitions.read().len() as i64);
        self.reconciled.send_replace(state.applied_index);
    }

    /// Open (creating if new) the local log of `key`.
    fn open(&self, key: PartitionKey, topic: &TopicState) -> Option<Arc<Partition>> {
        if let Some(p) = self.partition(key) {
            return Some(p);
        }
        let dir = partition_dir(&self.dir, &topic.name, key.index);
        if read_partition_metadata(&dir).is_some_and(|id| id != topic.id) {
            // A deleted topic's leftovers under the same name: not ours.
            tracing::info!(dir = %dir.display(), "removing the directory of a deleted topic");
            let _ = std::fs::remove_dir_all(&dir);
        }
        if let Err(e) = write_partition_metadata(&dir, topic.id) {
            tracing::error!(dir = %dir.display(), error = %e, "creating a partition directory failed");
            return None;
        }
        let (config, policy) = topic_config::resolve(&topic.configs, &self.defaults);
        let spec = PartitionSpec {
            topic: Arc::clone(&topic.name),
            topic_id: topic.id,
            index: key.index,
            me: self.cluster.me,
            config,
            policy,
            durability: self.durability,
            clean_shutdown: self.clean_start,
        };
        match Partition::open(
            &dir,
            spec,
            Arc::clone(&self.metrics),
            self.shutdown.child_token(),
        ) {
            Ok(p) => {
                self.partitions.write().insert(key, Arc::clone(&p));
                Some(p)
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "opening a partition failed");
                None
            }
        }
    }

    /// Give a partition its topic's configuration when that changed since it was opened.
    async fn configure_if_changed(&self, partition: &Arc<Partition>, topic: &TopicState) {
        let known = self.configured.read().get(&topic.id).cloned();
        match known {
            None => {
                // Opened with these (or reconciled for the first time): remember them.
                self.configured
                    .write()
                    .insert(topic.id, topic.configs.clone());
            }
            Some(c) if c != topic.configs => {
                let (config, policy) = topic_config::resolve(&topic.configs, &self.defaults);
                let local: Vec<Arc<Partition>> = self
                    .all()
                    .into_iter()
                    .filter(|p| p.topic_id == topic.id)
                    .collect();
                for p in local {
                    if let Err(e) = p.reconfigure(config.clone(), policy).await {
                        tracing::warn!(topic = %topic.name, partition = p.index, error = %e, "reconfiguring failed");
                    }
                }
                self.configured
                    .write()
                    .insert(topic.id, topic.configs.clone());
                let _ = partition;
            }
            Some(_) => {}
        }
    }

    async fn after_transition(
        &self,
        partition: &Arc<Partition>,
        topic: &TopicState,
        a: &Assignment,
        t: Transition,
    ) {
        let key = partition.key();
        match t {
            Transition::BecameLeader => {
                tracing::info!(topic = %topic.name, partition = key.index, epoch = %a.leader_epoch, "leading");
                self.fetchers.remove(key);
                self.notify_offsets(topic, Leadership::Leading(Arc::clone(partition)))
                    .await;
            }
            Transition::BecameFollower { leader } => {
                tracing::info!(topic = %topic.name, partition = key.index, ?leader, epoch = %a.leader_epoch, "following");
                self.fetchers.remove(key);
                if let Some(leader) = leader {
                    self.fetchers
                        .add(leader, Arc::clone(partition), a.leader_epoch);
                }
                self.notify_offsets(topic, Leadership::NotLeading(key.index))
                    .await;
            }
            Transition::Removed => {
                self.fetchers.remove(key);
                self.notify_offsets(topic, Leadership::NotLeading(key.index))
                    .await;
            }
            Transition::Updated | Transition::Unchanged => {}
        }
    }

    async fn notify_offsets(&self, topic: &TopicState, event: Leadership) {
        if &*topic.name == OFFSETS_TOPIC {
            let _ = self.leadership.send(event).await;
        }
    }

    /// Delete local partitions the metadata no longer assigns here (their topic was
    /// deleted, or they moved).
    async fn remove_unwanted(
        &self,
        wanted: &BTreeMap<PartitionKey, (Arc<TopicState>, Assignment)>,
    ) {
        let gone: Vec<Arc<Partition>> = {
            let mut map = self.partitions.write();
            let keys: Vec<PartitionKey> = map
                .keys()
                .filter(|k| !wanted.contains_key(k))
                .copied()
                .collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        for p in gone {
            self.fetchers.remove(p.key());
            if &*p.topic == OFFSETS_TOPIC {
                let _ = self.leadership.send(Leadership::NotLeading(p.index)).await;
            }
            tracing::info!(topic = %p.topic, partition = p.index, "removing partition data");
            if let Err(e) = p.delete().await {
                tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "removing partition data failed");
            }
        }
    }

    /// Remove directories no topic of `state` owns (left by a crash during a deletion).
    pub fn remove_stray_directories(&self, state: &ClusterState) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let keep = name.rsplit_once('-').and_then(|(topic, index)| {
                let index: usize = index.parse().ok()?;
                let t = state.topic_by_name(topic)?;
                let p = t.partitions.get(index)?;
                (p.replicas.contains(&self.cluster.me)
                    && read_partition_metadata(&entry.path()) == Some(t.id))
                .then_some(())
            });
            if keep.is_none() {
                tracing::info!(dir = %entry.path().display(), "removing a partition directory no topic owns");
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Leaders' in-sync set upkeep, every [`ISR_TICK`].
    async fn isr_upkeep(self: Arc<Self>) {
        let mut tick = tokio::time::interval(ISR_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(epoch) = self.cluster.epoch() else {
                continue;
            };
            let state = self.cluster.state();
            let Some(policy) = state.policy.clone() else {
                continue;
            };
            let views = state.broker_views();
            for p in self.all().into_iter().filter(|p| p.is_leader()) {
                let Some(wanted) = p.wanted_isr(self.lag_time_ms, ISR_RETRY_MS) else {
                    continue;
                };
                let r = p.replica();
                // What the controller would refuse is not asked (a lagging last copy of a
                // site stays: writes wait for it, as the site rule wants).
                let mut allowed = wanted.clone();
                if policy
                    .check_isr_change(
                        r.replicas(),
                        Some(self.cluster.me),
                        r.isr(),
                        &wanted,
                        &views,
                    )
                    .is_err()
                {
                    allowed = r.isr().to_vec();
                    for n in &wanted {
                        if !allowed.contains(n) {
                            allowed.push(*n);
                        }
                    }
                    allowed.sort();
                    let mut current = r.isr().to_vec();
                    current.sort();
                    if allowed == current {
                        continue;
                    }
                }
                p.isr_requested(allowed.clone());
                let request = ControllerRequest::AlterIsr {
                    node: self.cluster.me,
                    epoch,
                    partition: p.key(),
                    leader_epoch: r.leader_epoch(),
                    partition_epoch: r.partition_epoch(),
                    isr: allowed.clone(),
                };
                let cluster = Arc::clone(&self.cluster);
                tokio::spawn(async move {
                    match cluster.call(request).await {
                        Ok(_) => {
                            tracing::info!(topic = %p.topic, partition = p.index, isr = ?allowed, "in-sync set changed")
                        }
                        Err(e) => {
                            tracing::info!(topic = %p.topic, partition = p.index, error = %e, "in-sync set change refused");
                            p.isr_request_failed();
                        }
                    }
                });
            }
        }
    }

    /// The partition `name`/`index`, by topic name.
    pub fn by_name(&self, state: &ClusterState, name: &str, index: i32) -> Option<Arc<Partition>> {
        let t = state.topic_by_name(name)?;
        self.partition(PartitionKey { topic: t.id, index })
    }

    /// Followers' lag per partition for metrics: (partition, follower, records behind).
    pub fn follower_lag(&self) -> Vec<(Arc<Partition>, NodeId, i64, bool)> {
        self.all()
            .into_iter()
            .filter(|p| p.is_leader())
            .flat_map(|p| {
                p.replica()
                    .follower_lag()
                    .into_iter()
                    .map(move |(n, behind, in_sync)| (Arc::clone(&p), n, behind, in_sync))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}
