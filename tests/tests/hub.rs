//! The stretched hub as processes on loopback: brokers at two sites, the witness at a third,
//! confluent-kafka producing with acks=all while whole sites die, and a checker that reads
//! everything back: every acknowledged record present, exactly once, in order per partition.
//!
//! These tests run one at a time, never beside a VM boot (test group `heavy` in
//! .config/nextest.toml): several brokers each, on two cores.

use std::time::Duration;

use e2e::acked::{Producer, everything, read_acked, settled, verify};
use e2e::clients::{http_json, kcat, python};
use e2e::compacted::{check_compacted, keyed_records};
use e2e::hub::{Hub, HubSpec, WITNESS_ID};
use e2e::netns::Sites;
use e2e::wait_until;

const T: Duration = Duration::from_secs(120);

/// Create `topic` (6 partitions, RF 3 over the sites: the hub's defaults) and wait until every
/// broker sees it.
fn create_topic(hub: &mut Hub, topic: &str) {
    let bootstrap = hub.bootstrap();
    kcat(&["-b", &bootstrap, "-L", "-t", topic], None, T);
    wait_until("the topic's leaders", T, || {
        let listing = kcat(&["-b", &bootstrap, "-L", "-t", topic], None, T);
        (listing.contains("with 6 partitions") && !listing.contains("leader -1")).then_some(())
    });
}

/// confluent-kafka producing `count` records (0: until stopped) to `orders` with idempotence
/// and acks=all, `rate` per second (0: as fast as it can), appending each acknowledged one to
/// a file (returned with the directory that holds it).
fn produce_orders(
    hub: &mut Hub,
    count: u32,
    rate: u32,
) -> (Producer, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let acked_file = dir.path().join("acked.txt");
    let bootstrap = hub.bootstrap();
    let (count, rate) = (count.to_string(), rate.to_string());
    let args = [
        "--bootstrap",
        &bootstrap,
        "--topic",
        "orders",
        "--idempotence",
        "--count",
        &count,
        "--rate",
        &rate,
    ];
    (Producer::start(&acked_file, &args), acked_file, dir)
}

#[test]
fn a_killed_site_loses_nothing_acknowledged_and_comes_back_in_sync() {
    let mut hub = Hub::start(HubSpec::two_by_two());
    create_topic(&mut hub, "orders");
    let (producer, acked_file, _dir) = produce_orders(&mut hub, 30000, 3000);
    producer.wait_acked(5000, T);
    // Site A dies at once (kill -9 of both brokers; voter 1 with them). The witness and
    // site B's voter fence it; leaders move to site B; the producer goes on there.
    hub.kill_site("site-a");
    let report = producer.finish(Duration::from_secs(240));
    assert_eq!(report["error_count"], 0, "{report}");
    assert_eq!(report["acked"], 30000, "{report}");
    let acked = read_acked(&acked_file);
    let survivors = hub.bootstrap();
    let stored = settled(&survivors, "orders", &acked, T);
    assert_eq!(verify(&acked, &stored), 30000);
    assert_eq!(hub.metric(3, "broker_cluster_fenced_sites"), Some(1.0));
    assert_eq!(hub.metric(3, "broker_cluster_degraded"), Some(1.0));

    // Site A returns: its replicas truncate to the survivors' history, catch up, rejoin the
    // in-sync sets, and the hub leaves degraded mode by itself.
    hub.restart_site("site-a");
    hub.wait_healthy(1, T);
    hub.wait_healthy(3, T);
    let from_a = everything(&hub.brokers[&1].bootstrap(), "orders", T);
    assert_eq!(from_a, stored, "site A serves the same history");
}

/// The site that goes on when the data sites lose each other: the controller's, or the
/// preferred one (site-a) when the witness leads the quorum.
fn survivor(hub: &Hub) -> &'static str {
    match hub.site_of(hub.controller(1)) {
        "site-c" => "site-a",
        s => s,
    }
}

fn other(site: &str) -> &'static str {
    if site == "site-a" { "site-b" } else { "site-a" }
}

/// Bootstrap servers of one site's brokers.
fn site_bootstrap(hub: &mut Hub, site: &str) -> String {
    hub.site(site)
        .into_iter()
        .map(|n| hub.brokers[&n].bootstrap())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn a_cut_between_the_data_sites_lets_one_site_go_on_and_loses_nothing() {
    one_site_goes_on_through(Sites::cut, Sites::heal);
}

/// Only the replication network between the data sites fails: quorum and heartbeats still get
/// through, so only the brokers' probes of each other's replication listeners can tell the
/// controller that acks=all writes are stalled.
#[test]
fn a_cut_of_only_the_replication_network_lets_one_site_go_on_and_loses_nothing() {
    one_site_goes_on_through(Sites::cut_replication, Sites::heal_replication);
}

/// Under acks=all load, `cut` sites a and b apart: one site is fenced and the other goes on
/// with every acknowledged record; after `heal`, the fenced site catches up with it.
fn one_site_goes_on_through(cut: fn(&Sites, &str, &str), heal: fn(&Sites, &str, &str)) {
    if !Sites::available() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let mut hub = Hub::start(HubSpec::two_by_two_in_namespaces());
    create_topic(&mut hub, "orders");
    let (producer, acked_file, _dir) = produce_orders(&mut hub, 30000, 2500);
    producer.wait_acked(3000, T);
    let goes_on = survivor(&hub);
    let fenced = other(goes_on);
    cut(hub.net.as_ref().unwrap(), "a", "b");
    let watcher = hub.site(goes_on)[0];
    hub.wait_metric(watcher, "broker_cluster_fenced_sites", T, |v| v == 1.0);
    let at_fence = e2e::acked::per_partition(&acked_file);
    let report = producer.finish(Duration::from_secs(300));
    assert_eq!(
        report["error_count"],
        0,
        "{report}\nacknowledged per partition when {fenced} was fenced: {at_fence:?}, at the end: {:?}",
        e2e::acked::per_partition(&acked_file)
    );
    assert_eq!(report["acked"], 30000, "{report}");
    let acked = read_acked(&acked_file);
    let stored = settled(&site_bootstrap(&mut hub, goes_on), "orders", &acked, T);
    assert_eq!(verify(&acked, &stored), 30000);
    // Healed: the fenced site truncates to the survivors' history and catches up.
    heal(hub.net.as_ref().unwrap(), "a", "b");
    for n in hub.site(fenced) {
        hub.wait_healthy(n, Duration::from_secs(180));
    }
    let back = everything(&site_bootstrap(&mut hub, fenced), "orders", T);
    assert_eq!(back, stored);
}

#[test]
fn an_isolated_site_stops_taking_writes_within_its_lease_while_the_others_go_on() {
    if !Sites::available() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let mut hub = Hub::start(HubSpec::two_by_two_in_namespaces());
    create_topic(&mut hub, "orders");
    let (producer, acked_file, _dir) = produce_orders(&mut hub, 25000, 2500);
    producer.wait_acked(3000, T);
    // What site A leads before the cut (it keeps believing so: it hears no metadata).
    let bootstrap = hub.bootstrap();
    let led_by_a: Vec<(u32, i32)> = kcat(&["-b", &bootstrap, "-L", "-t", "orders"], None, T)
        .lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("partition ")?;
            let (p, rest) = l.split_once(", leader ")?;
            let leader: u32 = rest.split(',').next()?.trim().parse().ok()?;
            (leader == 1 || leader == 2).then(|| (leader, p.parse().ok()).1.map(|p| (leader, p)))?
        })
        .collect();
    assert!(!led_by_a.is_empty(), "site A leads nothing");
    // Site A loses both other sites (branches still reach it, as the test does).
    let net = hub.net.as_ref().unwrap();
    net.cut("a", "b");
    net.cut("a", "c");
    for n in hub.site("site-a") {
        hub.wait_metric(n, "broker_lease_valid", Duration::from_secs(30), |v| {
            v == 0.0
        });
    }
    // From then on it refuses every write to what it led, whatever the acks.
    let batch = kafka_client::encode_batch(
        &[(None, Some("split-brain?".into()))],
        1_800_000_000_000,
        None,
    );
    for (n, p) in &led_by_a {
        for acks in [1, -1] {
            // Refused either way: an error code, or (the usual case) no connection at all.
            if let Ok(code) = hub.brokers[n].produce_raw_to("orders", *p, batch.clone(), acks) {
                assert_ne!(
                    code, 0,
                    "broker {n} took an acks={acks} write to partition {p} while cut off"
                );
            }
        }
    }
    let report = producer.finish(Duration::from_secs(300));
    assert_eq!(report["error_count"], 0, "{report}");
    assert_eq!(report["acked"], 25000, "{report}");
    let acked = read_acked(&acked_file);
    let stored = settled(&site_bootstrap(&mut hub, "site-b"), "orders", &acked, T);
    assert_eq!(verify(&acked, &stored), 25000);
    let net = hub.net.as_ref().unwrap();
    net.heal("a", "b");
    net.heal("a", "c");
    for n in hub.site("site-a") {
        hub.wait_healthy(n, Duration::from_secs(180));
    }
    assert_eq!(
        everything(&site_bootstrap(&mut hub, "site-a"), "orders", T),
        stored
    );
    // No split brain: each site-a leader had stopped (its lease gone, its connections closed)
    // before a site-b broker took its partition over (the logs share this machine's clock).
    for (n, p) in &led_by_a {
        let stopped = log_times(&hub.brokers[n].log(), |l| {
            l["message"]
                == "lease lost (cut off from the controller, or fenced): closing Kafka connections until it is back"
        });
        let taken: Vec<String> = hub
            .site("site-b")
            .iter()
            .flat_map(|b| {
                log_times(&hub.brokers[b].log(), |l| {
                    l["message"] == "leading" && l["topic"] == "orders" && l["partition"] == *p
                })
            })
            .collect();
        let (Some(stopped), Some(taken)) = (stopped.first(), taken.iter().max()) else {
            panic!(
                "broker {n} logged no lease loss ({stopped:?}) or site-b no takeover of partition {p} ({taken:?})"
            );
        };
        assert!(
            stopped < taken,
            "partition {p}: site-b led it from {taken}, broker {n} still led until {stopped}"
        );
    }
}

/// Timestamps (RFC 3339, UTC: they sort as text) of the JSON log lines that match.
fn log_times(log: &str, matches: impl Fn(&serde_json::Value) -> bool) -> Vec<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| matches(l))
        .filter_map(|l| l["timestamp"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn losing_the_witness_stops_nothing() {
    let mut hub = Hub::start(HubSpec::two_by_two());
    create_topic(&mut hub, "orders");
    let (producer, acked_file, _dir) = produce_orders(&mut hub, 20000, 2500);
    producer.wait_acked(3000, T);
    hub.witness.as_mut().unwrap().kill9();
    let report = producer.finish(Duration::from_secs(240));
    assert_eq!(report["error_count"], 0, "{report}");
    let acked = read_acked(&acked_file);
    let stored = settled(&hub.bootstrap(), "orders", &acked, T);
    assert_eq!(verify(&acked, &stored), 20000);
    // Nobody was fenced: the two data-site voters are a majority.
    assert_eq!(hub.metric(1, "broker_cluster_fenced_sites"), Some(0.0));
    assert_eq!(hub.metric(1, "broker_cluster_brokers_fenced"), Some(0.0));
    hub.witness.as_mut().unwrap().restart();
    hub.wait_healthy(1, T);
}

/// A consumer group's committed offsets live in `__consumer_offsets`, replicated like any
/// topic: when the site of the group's coordinator dies, the coordinator moves with the
/// partition's leadership and a new member resumes exactly after the committed offsets.
#[test]
fn a_groups_committed_offsets_and_coordinator_survive_the_loss_of_its_site() {
    let mut hub = Hub::start(HubSpec::two_by_two());
    create_topic(&mut hub, "orders");
    let (producer, _acked_file, _dir) = produce_orders(&mut hub, 3000, 0);
    let report = producer.finish(T);
    assert_eq!(report["acked"], 3000, "{report}");
    let group = |phase: &str, n: &str, bootstrap: &str| {
        let count_flag = if phase == "commit" {
            "--count"
        } else {
            "--expect"
        };
        let args = [
            "--bootstrap",
            bootstrap,
            "--topic",
            "orders",
            "--group",
            "billing",
            "--phase",
            phase,
            count_flag,
            n,
        ];
        python("ck_group_resume.py", &args, T)
    };
    let first = group("commit", "1200", &hub.bootstrap());
    let coordinator = first["coordinator"].as_u64().expect("coordinator id") as u32;
    let committed: u64 = first["committed"]
        .as_object()
        .unwrap()
        .values()
        .map(|o| o.as_u64().unwrap())
        .sum();
    assert!(committed >= 1200, "{first}");

    let lost = hub.site_of(coordinator);
    hub.kill_site(lost);
    let survivors = hub.bootstrap();
    let rest = (3000 - committed).to_string();
    let second = group("resume", &rest, &survivors);
    for (p, offset) in first["committed"].as_object().unwrap() {
        // A partition with nothing left after its commit has no first read; the rest resume
        // exactly at the committed offset.
        if let Some(resumed) = second["first"].get(p) {
            assert_eq!(resumed, offset, "partition {p}: {first} then {second}");
        }
    }
    assert_eq!(second["read"].as_u64(), Some(3000 - committed), "{second}");
}

/// Each broker in turn stops (SIGTERM: a controlled shutdown hands its leaderships over first)
/// and starts again under acks=all load.
#[test]
fn a_rolling_restart_of_every_broker_loses_nothing() {
    let mut hub = Hub::start(HubSpec::two_by_two());
    create_topic(&mut hub, "orders");
    let (producer, acked_file, _dir) = produce_orders(&mut hub, 0, 2000);
    producer.wait_acked(2000, T);
    let nodes: Vec<u32> = hub.brokers.keys().copied().collect();
    for n in nodes {
        let before = producer.acked_count();
        let status = hub.brokers.get_mut(&n).unwrap().stop();
        assert!(
            status.success(),
            "broker {n} did not stop cleanly: {status}"
        );
        // A controlled shutdown: the controller moved its leaderships before it stopped.
        let log = hub.brokers[&n].log();
        assert_eq!(
            log.matches("leaderships handed over").count(),
            1,
            "broker {n} stopped without handing over its leaderships"
        );
        // And answered every acks=all write it held with its outcome, learnt from the new
        // leaders as their follower, before it stopped fetching; its connections then drained.
        assert!(
            !log.contains("still wait for their records' outcome"),
            "broker {n} stopped with writes whose outcome it had not learnt"
        );
        assert!(
            !log.contains("shutdown was not clean"),
            "broker {n}'s connections did not drain"
        );
        hub.brokers.get_mut(&n).unwrap().restart();
        let watcher = *hub.brokers.keys().find(|m| **m != n).unwrap();
        hub.wait_healthy(watcher, Duration::from_secs(180));
        producer.wait_acked(before + 2000, T);
    }
    producer.stop(T);
    let acked = read_acked(&acked_file);
    let stored = settled(&hub.bootstrap(), "orders", &acked, T);
    assert!(verify(&acked, &stored) >= acked.len());
}

/// `(partition, leader, replicas)` of every partition of `topic`, from kcat's JSON listing.
fn layout(bootstrap: &str, topic: &str) -> Vec<(i32, u32, Vec<u32>)> {
    let listing = kcat(&["-b", bootstrap, "-L", "-J", "-t", topic], None, T);
    let v: serde_json::Value = serde_json::from_str(&listing).expect("kcat's JSON listing");
    v["topics"][0]["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| {
            let ids = p["replicas"].as_array().expect("replicas").iter();
            (
                p["partition"].as_i64().expect("an index") as i32,
                p["leader"].as_u64().expect("a leader") as u32,
                ids.map(|r| r["id"].as_u64().expect("an id") as u32)
                    .collect(),
            )
        })
        .collect()
}

/// A write waiting on its leader when the leader stops is answered with what became of it:
/// its offset once the new leader, which had copied it, commits it. (Answered NOT_LEADER,
/// as it was, an idempotent client takes it for unwritten, and librdkafka re-sends such
/// records under a new producer epoch whenever one of its partitions bumps the epoch
/// meanwhile: the rolling restart above then found a record stored twice.)
#[test]
fn a_write_waiting_on_a_stopping_leader_is_answered_with_its_offset_once_the_new_leader_commits_it()
{
    let mut hub = Hub::start(HubSpec::two_by_two());
    create_topic(&mut hub, "orders");
    // Partition 0 on brokers 2 and 1 (site A, 2 leading) and 4 (site B), none of them a
    // voter but 1: the quorum keeps its majority with 2 stopped and 4 frozen.
    let (leader, next, other) = (2, 1, 4);
    let admin = hub.brokers[&1].admin.to_string();
    #[rustfmt::skip]
    clk_cluster(&["reassign", "--admin", &admin, "--topic", "orders", "--partition", "0",
        "--replicas", "2,1,4", "--wait", "3m", "--token", e2e::ADMIN_TOKEN]);
    let bootstrap = hub.bootstrap();
    let led_by = |bootstrap: &str, n: u32| {
        layout(bootstrap, "orders")
            .iter()
            .any(|(p, l, r)| *p == 0 && *l == n && *r == [leader, next, other])
            .then_some(())
    };
    wait_until("partition 0 led by broker 2", T, || {
        led_by(&bootstrap, leader)
    });
    // Broker 4 freezes: nothing can be committed without a copy in site B.
    hub.brokers[&other].pause();
    let before = hub.brokers[&next].partition_log_bytes("orders", 0);
    let appends = |n| {
        hub.metric(n, "broker_append_latency_seconds_count")
            .unwrap_or(0.0)
    };
    let (leader_appends, follower_appends) = (appends(leader), appends(next));
    let record =
        kafka_client::encode_batch(&[(None, Some("once".into()))], 1_800_000_000_000, None);
    let answer = std::thread::scope(|s| {
        let writer = &hub.brokers[&leader];
        let write = s.spawn(move || {
            writer.produce_raw_within("orders", 0, record, -1, Duration::from_secs(60))
        });
        wait_until("the record copied to broker 1", T, || {
            (hub.brokers[&next].partition_log_bytes("orders", 0) > before).then_some(())
        });
        // Both appends, the leader's and the follower's, are timed for the operator.
        wait_until("both appends timed", T, || {
            (appends(leader) > leader_appends && appends(next) > follower_appends).then_some(())
        });
        // The leader stops on purpose: it hands the partition to broker 1, which has the
        // record, and waits as its follower to hear what became of the record before it exits.
        hub.brokers[&leader].terminate();
        let next_bootstrap = hub.brokers[&next].bootstrap();
        wait_until("broker 1 leading", T, || led_by(&next_bootstrap, next));
        assert!(
            !write.is_finished(),
            "answered while broker 4 was frozen: {:?}",
            write.join()
        );
        hub.brokers[&other].resume();
        write.join().expect("the writer").expect("an answer")
    });
    let status = hub.brokers.get_mut(&leader).unwrap().wait_stopped();
    assert!(status.success(), "broker 2 did not stop cleanly: {status}");
    assert_eq!(
        (answer.error_code, answer.base_offset),
        (0, 0),
        "answered {answer:?}"
    );
    let stored = e2e::clients::kcat_consume_all(&bootstrap, "orders", "%p %s\n", T);
    assert_eq!(
        stored
            .iter()
            .filter(|l| l.starts_with("0 "))
            .collect::<Vec<_>>(),
        ["0 once"]
    );
}

/// kafkajs's reassignment script (tests/node/reassign.js): its observations.
fn reassign_with_kafkajs(hub: &mut Hub) -> serde_json::Value {
    let bootstrap = hub.bootstrap();
    let one_site = hub
        .site("site-a")
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let args = [
        "--bootstrap",
        &bootstrap,
        "--topic",
        "orders",
        "--one-site",
        &one_site,
    ];
    e2e::clients::node("reassign.js", &args, Duration::from_secs(240))
}

fn sorted_ids(v: &serde_json::Value) -> Vec<u64> {
    let mut ids: Vec<u64> = v
        .as_array()
        .expect("an array of ids")
        .iter()
        .map(|n| n.as_u64().expect("an id"))
        .collect();
    ids.sort_unstable();
    ids
}

#[test]
fn partitions_move_to_other_brokers_under_acks_all_load_and_lose_nothing() {
    let mut hub = Hub::start(HubSpec::two_by_two());
    create_topic(&mut hub, "orders");
    let (producer, acked_file, _dir) = produce_orders(&mut hub, 0, 2000);
    producer.wait_acked(4000, T);
    // kafkajs moves every partition off its leader's broker (each leadership moves too) onto
    // the broker it was not on, and waits until ListPartitionReassignments shows none left.
    // (How many it lists right after asking depends on the machine's load: a move can be
    // done by then. The moves are checked by the replicas afterwards.)
    let r = reassign_with_kafkajs(&mut hub);
    let before = r["before"].as_array().expect("partitions");
    for (p, after) in r["after"]
        .as_array()
        .expect("partitions")
        .iter()
        .enumerate()
    {
        let target = &r["targets"][p.to_string()];
        assert_eq!(sorted_ids(&after["replicas"]), sorted_ids(target), "{r}");
        assert_eq!(sorted_ids(&after["isr"]), sorted_ids(target), "{r}");
        assert_ne!(after["leader"], before[p]["leader"], "{r}");
    }
    assert_eq!(r["one_site"], "INVALID_REPLICA_ASSIGNMENT", "{r}");
    // The removed replicas deleted their copies.
    for (p, b) in before.iter().enumerate() {
        let old_leader = b["leader"].as_u64().unwrap() as u32;
        let dir = hub.brokers[&old_leader]
            .data_dir()
            .join("topics")
            .join(format!("orders-{p}"));
        wait_until("a moved replica's copy to be deleted", T, || {
            (!dir.exists()).then_some(())
        });
    }
    // The operator's command: partition 0 to every broker (RF 4, 2+2), waiting for the move.
    let admin = hub.brokers[&1].admin.to_string();
    let all: Vec<String> = hub.brokers.keys().map(u32::to_string).collect();
    let shown = clk_cluster(&[
        "reassign",
        "--admin",
        &admin,
        "--topic",
        "orders",
        "--partition",
        "0",
        "--replicas",
        &all.join(","),
        "--wait",
        "3m",
        "--token",
        e2e::ADMIN_TOKEN,
    ]);
    assert!(shown.contains("orders-0: moved"), "{shown}");
    let listing = kcat(&["-b", &hub.bootstrap(), "-L", "-t", "orders"], None, T);
    let line = listing
        .lines()
        .find(|l| l.contains("partition 0,"))
        .expect("partition 0 listed");
    assert!(
        line.contains(&format!("replicas: {}", all.join(","))),
        "{listing}"
    );
    let moves = clk_cluster(&["reassignments", "--admin", &admin]);
    assert!(moves.contains("no partition is being moved"), "{moves}");
    let status = clk_cluster(&["status", "--admin", &admin, "--wait-healthy", "120s"]);
    assert!(status.contains("0 being moved"), "{status}");
    // Every acknowledged record is there, once, in order: nothing was lost or written twice
    // while leaders and replicas moved under the idempotent producer.
    producer.stop(T);
    let acked = read_acked(&acked_file);
    let stored = settled(&hub.bootstrap(), "orders", &acked, T);
    assert!(verify(&acked, &stored) >= acked.len());
}

#[test]
fn a_follower_with_a_torn_tail_cuts_it_and_catches_up() {
    let mut hub = Hub::start(HubSpec::two_by_two());
    create_topic(&mut hub, "orders");
    let data: String = (0..3000).map(|i| format!("v-{i}\n")).collect();
    let bootstrap = hub.bootstrap();
    kcat(
        &["-b", &bootstrap, "-P", "-t", "orders", "-X", "acks=all"],
        Some(data.as_bytes()),
        T,
    );
    // A follower (broker 4) crashes in the middle of a write: garbage at the end of every
    // segment it has.
    let b4 = hub.brokers.get_mut(&4).unwrap();
    b4.kill9();
    let topics = b4.data_dir().join("topics");
    for entry in std::fs::read_dir(&topics).unwrap().flatten() {
        if !entry.file_name().to_string_lossy().starts_with("orders-") {
            continue;
        }
        for f in std::fs::read_dir(entry.path()).unwrap().flatten() {
            if f.path().extension().is_some_and(|e| e == "log") {
                use std::io::Write;
                let mut file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(f.path())
                    .unwrap();
                file.write_all(&[0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0x40, 0xde, 0xad])
                    .unwrap();
            }
        }
    }
    b4.restart();
    hub.wait_healthy(4, T);
    let log = hub.brokers[&4].log();
    assert!(
        log.contains("cut unacknowledged data torn by a crash"),
        "{log}"
    );
    let bootstrap = hub.bootstrap();
    wait_until("every record to be readable again", T, || {
        (everything(&bootstrap, "orders", T).len() == 3000).then_some(())
    });
}

/// `clk cluster ...` (the operator's command, as a process), which must succeed.
fn clk_cluster(args: &[&str]) -> String {
    let mut cmd = std::process::Command::new(e2e::broker::bin("clk"));
    cmd.arg("cluster").args(args);
    let out = e2e::clients::run(cmd, None, Duration::from_secs(150));
    assert!(
        out.status.success(),
        "clk cluster {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn a_dead_witness_is_replaced_by_a_new_voter_that_then_carries_a_site_loss() {
    let mut hub = Hub::start(HubSpec::two_by_two());
    create_topic(&mut hub, "orders");
    let admin = hub.brokers[&1].admin.to_string();
    let shown = clk_cluster(&["status", "--admin", &admin, "--wait-healthy", "120s"]);
    assert!(shown.contains("hub: HEALTHY"), "{shown}");
    assert!(shown.contains("voters:     1 ("), "{shown}");
    // The witness's machine is lost for good: a new one (a new id, an empty disk) replaces it.
    hub.witness.as_mut().unwrap().kill9();
    let new_quorum = e2e::hub::free_addr();
    let witness = e2e::witness::Witness::start(101, "site-c", new_quorum, hub.cluster_section());
    let add = format!("101={new_quorum}");
    let replace = [
        "replace-voter",
        "--admin",
        &admin,
        "--remove",
        "100",
        "--add",
        &add,
    ];
    // Changes need the node's admin token.
    let mut cmd = std::process::Command::new(e2e::broker::bin("clk"));
    cmd.arg("cluster")
        .args(replace)
        .args(["--token", "not-the-token-of-this-hub"]);
    let refused = e2e::clients::run(cmd, None, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("401"),
        "{stderr}"
    );
    // The node itself refuses more than one voter out and one in at a time.
    let two_at_once = format!(
        r#"{{"voters": {{"1": "127.0.0.1:1", "7": "127.0.0.1:2", "101": "{new_quorum}"}}}}"#
    );
    let mut curl = std::process::Command::new("curl");
    curl.args(["-s", "-X", "POST", "-H"])
        .arg(format!("Authorization: Bearer {}", e2e::ADMIN_TOKEN))
        .args(["-d", &two_at_once])
        .arg(format!("http://{admin}/v1/cluster/voters"));
    let answer = e2e::clients::run(curl, None, Duration::from_secs(60));
    let answer = String::from_utf8_lossy(&answer.stdout);
    assert!(answer.contains("one voter at a time"), "{answer}");
    clk_cluster(&[&replace[..], &["--token", e2e::ADMIN_TOKEN]].concat());
    let status: serde_json::Value =
        serde_json::from_str(&clk_cluster(&["status", "--admin", &admin, "--json"])).unwrap();
    let voters: Vec<&String> = status["quorum"]["voters"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(voters, ["1", "101", "3"], "{status}");
    // The new witness answers for the cluster too.
    let from_witness = clk_cluster(&["status", "--admin", &witness.admin.to_string()]);
    assert!(
        from_witness.contains("as node 101 sees it"),
        "{from_witness}"
    );
    // Site B dies: only voter 1 and the new witness are left, a majority only if 101 votes.
    hub.kill_site("site-b");
    hub.wait_metric(1, "broker_cluster_fenced_sites", T, |v| v == 1.0);
    let shown = clk_cluster(&["status", "--admin", &admin]);
    assert!(shown.contains("hub: DEGRADED"), "{shown}");
    let bootstrap = hub.bootstrap();
    kcat(
        &[
            "-b", &bootstrap, "-P", "-t", "orders", "-p", "0", "-X", "acks=all",
        ],
        Some(b"after the witness was replaced\n"),
        T,
    );
    let back = kcat(
        &[
            "-b",
            &bootstrap,
            "-C",
            "-t",
            "orders",
            "-p",
            "0",
            "-o",
            "beginning",
            "-e",
            "-q",
        ],
        None,
        T,
    );
    assert!(back.contains("after the witness was replaced"), "{back}");
}

/// The README's main job runs `clk lab hub`: it must come up healthy, serve a producer and a
/// consumer on different sites, and stop every node cleanly on SIGTERM.
#[test]
fn the_lab_hub_of_the_main_job_starts_healthy_serves_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = e2e::broker::bin("clk").parent().unwrap().to_owned();
    let out = dir.path().join("out.txt");
    let lab = std::process::Command::new(bin_dir.join("clk"))
        .args(["lab", "hub", "--ready-timeout", "100s", "--bin-dir"])
        .arg(&bin_dir)
        .arg("--dir")
        .arg(dir.path().join("hub"))
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Its fixed addresses must be free for the next run, whatever happens here.
    let mut lab = KillOnDrop(lab);
    let lab = &mut lab.0;
    let shown = wait_until("the lab hub to report ready", T, || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        assert!(
            lab.try_wait().unwrap().is_none(),
            "clk lab hub exited: {text}"
        );
        text.contains("hub ready").then_some(text)
    });
    assert!(shown.contains("hub: HEALTHY"), "{shown}");
    kcat(
        &["-b", "127.0.1.1:9092", "-P", "-t", "lab", "-X", "acks=all"],
        Some(b"across the sites\n"),
        T,
    );
    let back = kcat(
        &[
            "-b",
            "127.0.2.2:9092",
            "-C",
            "-t",
            "lab",
            "-o",
            "beginning",
            "-e",
            "-q",
        ],
        None,
        T,
    );
    assert_eq!(back.trim(), "across the sites");
    let pid = nix::unistd::Pid::from_raw(lab.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait_until("clk lab hub to stop", T, || lab.try_wait().unwrap());
    assert!(status.success(), "clk lab hub stopped with {status}");
}

/// KIP-392: a consumer that says which site it is in (`client.rack`) is sent to a replica
/// there, so a site reads locally instead of across the WAN. Followers' fetches wait up to
/// 300 s here, longer than the test's deadlines: the first produce is acknowledged only if a
/// follower whose set of partitions grows (the new topic) does not wait behind the fetch it
/// had at the leader, and the reads end only if a leader answers a waiting fetch with the
/// high watermark that moved (the follower learns what is committed without new data).
#[test]
fn a_consumer_with_client_rack_reads_from_a_replica_in_its_own_site() {
    let mut spec = HubSpec::two_by_two();
    spec.broker_extra
        .push_str("[replication]\nfetch_wait = \"300s\"\nlag_time = \"600s\"\n");
    let mut hub = Hub::start(spec);
    create_topic(&mut hub, "orders");
    let bootstrap = hub.bootstrap();
    // Keyed, so that every partition gets records (librdkafka's sticky partitioner would put
    // keyless ones in a few partitions, perhaps none led in site-a).
    let lines: String = (0..600).map(|i| format!("k{i}:r{i}\n")).collect();
    kcat(
        &[
            "-b", &bootstrap, "-P", "-K:", "-t", "orders", "-X", "acks=all",
        ],
        Some(lines.as_bytes()),
        T,
    );
    // A partition led in site-a, with records.
    let listing = kcat(&["-b", &bootstrap, "-L", "-t", "orders"], None, T);
    let (p, leader) = listing
        .lines()
        .filter_map(|l| {
            let (p, rest) = l
                .trim()
                .strip_prefix("partition ")?
                .split_once(", leader ")?;
            Some((
                p.parse::<i32>().ok()?,
                rest.split(',').next()?.trim().parse::<u32>().ok()?,
            ))
        })
        .find(|(_, leader)| hub.site_of(*leader) == "site-a")
        .expect("site-a leads a partition");
    // Followers caught up, so replication moves no more bytes while the consumer reads.
    for n in hub.site("site-a").into_iter().chain(hub.site("site-b")) {
        hub.wait_healthy(n, T);
    }
    let bytes_out = "broker_bytes_out_total{topic=\"orders\"}";
    let before: Vec<(u32, f64)> = (1..=4)
        .map(|n| (n, hub.metric(n, bytes_out).unwrap_or(0.0)))
        .collect();
    // A follower learns the high watermark from its next fetch's answer, so a read from one
    // may at first find nothing committed yet (as in Kafka): read until records come.
    let partition = p.to_string();
    let args = [
        "-b",
        &bootstrap,
        "-C",
        "-t",
        "orders",
        "-p",
        &partition,
        "-o",
        "beginning",
        "-e",
        "-q",
        "-X",
        "client.rack=site-b",
    ];
    wait_until("records read from a replica in site-b", T, || {
        (kcat(&args, None, T).lines().count() > 0).then_some(())
    });
    let served: Vec<(u32, f64)> = before
        .iter()
        .map(|(n, b)| (*n, hub.metric(*n, bytes_out).unwrap_or(0.0) - b))
        .collect();
    let by_site_b: f64 = served
        .iter()
        .filter(|(n, _)| hub.site_of(*n) == "site-b")
        .map(|(_, d)| d)
        .sum();
    let by_leader = served
        .iter()
        .find(|(n, _)| *n == leader)
        .map_or(0.0, |(_, d)| *d);
    assert!(
        by_site_b > 0.0 && by_leader == 0.0,
        "bytes served per broker: {served:?} (leader {leader})"
    );
    // Once the followers wait with nothing to fetch, one more record: it is committed when
    // both sites have it, and the site-b replica's consumers see it without new traffic.
    kcat(
        &[
            "-b", &bootstrap, "-P", "-t", "orders", "-p", &partition, "-X", "acks=all",
        ],
        Some(b"the-last-record\n"),
        T,
    );
    wait_until("the last record read from a replica in site-b", T, || {
        kcat(&args, None, T)
            .contains("the-last-record")
            .then_some(())
    });
}

/// A child process (and, through its SIGTERM handling, its own children) stopped when the
/// test ends, failed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = self.0.wait();
        }
    }
}

/// Every broker of the hub serves the Schema Registry: writes sent to any of them reach the
/// one writer (the leader of `_schemas`, at the address it announced in the metadata), and the
/// broker that holds no replica of `_schemas` forwards reads too, and says it is ready.
#[test]
fn every_broker_serves_the_schema_registry_through_the_one_writer() {
    let mut spec = HubSpec::two_by_two();
    spec.broker_extra
        .push_str("[schema_registry]\nlisten = \"127.0.0.1:0\"\n");
    let mut hub = Hub::start(spec);
    let nodes: Vec<u32> = hub.brokers.keys().copied().collect();
    let urls: Vec<(u32, String)> = nodes
        .iter()
        .map(|n| {
            let addr = wait_until("the registry's listener", T, || {
                hub.brokers[n].log().lines().find_map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).ok()?;
                    (v["message"] == "schema registry listening")
                        .then(|| v["addr"].as_str().map(str::to_string))
                        .flatten()
                })
            });
            (*n, format!("http://{addr}"))
        })
        .collect();
    // RF 3 over four brokers: one holds no replica of _schemas.
    let bootstrap = hub.bootstrap();
    let replicas: Vec<u32> = wait_until("_schemas and its replicas", T, || {
        let listing = kcat(&["-b", &bootstrap, "-L", "-J", "-t", "_schemas"], None, T);
        let v: serde_json::Value = serde_json::from_str(&listing).ok()?;
        let r = v["topics"][0]["partitions"][0]["replicas"]
            .as_array()?
            .clone();
        Some(
            r.iter()
                .filter_map(|x| x["id"].as_u64())
                .map(|x| x as u32)
                .collect(),
        )
    });
    let outsider = *nodes
        .iter()
        .find(|n| !replicas.contains(n))
        .expect("a broker without a replica");
    // A write through each broker (50003 while a writer is being elected or announced).
    let mut ids = vec![];
    for (n, url) in &urls {
        let schema = format!(
            r#"{{"schema":"{{\"type\":\"record\",\"name\":\"ViaBroker{n}\",\"fields\":[{{\"name\":\"f\",\"type\":\"long\"}}]}}"}}"#
        );
        let id = wait_until(&format!("a registration through broker {n}"), T, || {
            let (code, v) = http_json(
                "POST",
                &format!("{url}/subjects/via-{n}/versions"),
                Some(&schema),
            );
            (code == 200).then(|| v["id"].as_i64()).flatten()
        });
        ids.push(id);
    }
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "one id per schema: {ids:?}");
    // Every id reads back through every broker, the outsider included.
    for (n, url) in &urls {
        for id in &ids {
            wait_until(&format!("id {id} through broker {n}"), T, || {
                let (code, v) = http_json("GET", &format!("{url}/schemas/ids/{id}"), None);
                (code == 200 && v["schema"].is_string()).then_some(())
            });
        }
        let (code, subjects) = http_json("GET", &format!("{url}/subjects"), None);
        assert_eq!(code, 200);
        assert_eq!(
            subjects.as_array().map(Vec::len),
            Some(urls.len()),
            "{n}: {subjects}"
        );
    }
    let ready = hub.brokers[&outsider]
        .metrics_url()
        .replace("/metrics", "/ready");
    let (code, _) = http_json("GET", &ready, None);
    assert_eq!(
        code, 200,
        "broker {outsider} (no replica of _schemas) forwards, so it is ready"
    );
}

/// A compacted topic at RF 3: every replica compacts its own log below its high watermark;
/// when the leader's site dies a follower that compacted on its own leads, serving the
/// newest record of every key at its offset; the site comes back and its replicas rejoin.
#[test]
fn a_compacted_topic_keeps_every_keys_newest_record_through_the_loss_of_a_site() {
    let mut spec = HubSpec::two_by_two();
    spec.broker_extra
        .push_str("cleaner_check_interval = \"200ms\"\n");
    let mut hub = Hub::start(spec);
    let bootstrap = hub.bootstrap();
    e2e::compacted::create(&bootstrap, "changelog", 3);
    let out = e2e::compacted::produce(&bootstrap, "changelog", 50, 20, 5);
    assert_eq!(out["errors"], serde_json::json!([]), "{out}");
    let acked = keyed_records(&out["acked"]);
    // Every replica compacts (three passes at least over the four brokers).
    let nodes: Vec<u32> = hub.brokers.keys().copied().collect();
    wait_until("every replica compacted", T, || {
        let passes: f64 = nodes
            .iter()
            .filter_map(|n| hub.metric(*n, "broker_log_cleaner_passes_total"))
            .sum();
        (passes >= 3.0).then_some(())
    });
    let check = |bootstrap: &str| {
        let all = e2e::compacted::read_settled(bootstrap, "changelog", &acked, T);
        check_compacted(&acked, &all);
        assert!(all.len() < acked.len(), "nothing was compacted");
    };
    hub.kill_site("site-a");
    let survivors = hub.bootstrap();
    check(&survivors);
    hub.restart_site("site-a");
    hub.wait_healthy(1, T);
    hub.wait_healthy(3, T);
    check(&hub.bootstrap());
}

/// The inter-site and witness zones over mTLS: the quorum's members (brokers and the witness)
/// talk over it, and followers fetch over it from each broker's replication listener, so
/// acks=all writes, which need a copy in each site, go through; a plain-text client gets no
/// answer on a replication or a quorum listener.
#[test]
fn the_quorum_and_replication_run_over_mtls_and_refuse_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tls::test_pki::TestPki::new(dir.path(), "hub");
    let node = pki.node("brokers", &["127.0.0.1", "localhost"]);
    let mut spec = HubSpec::two_by_two();
    spec.tls = Some(format!(
        "[tls]\ncertificate = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nclient_auth = \"required\"\n",
        node.certificate.display(),
        node.key.display(),
        pki.ca.display()
    ));
    let mut hub = Hub::start(spec);
    create_topic(&mut hub, "orders");
    let (producer, acked_file, _dir) = produce_orders(&mut hub, 3000, 3000);
    let report = producer.finish(Duration::from_secs(300));
    assert_eq!(report["error_count"], 0, "{report}");
    assert_eq!(report["acked"], 3000, "{report}");
    let acked = read_acked(&acked_file);
    for site in ["site-a", "site-b"] {
        let stored = settled(&site_bootstrap(&mut hub, site), "orders", &acked, T);
        assert_eq!(verify(&acked, &stored), 3000);
    }
    let replication = hub.replication_addrs[&1].clone();
    let quorum = hub.quorum_addr(WITNESS_ID).to_string();
    for addr in [replication, quorum] {
        let answer = e2e::clients::plain_text_answer(&addr);
        assert!(
            answer.is_empty() || answer[0] == 0x15,
            "{addr}: a TLS alert or nothing, not an answer: {answer:?}"
        );
    }
}
