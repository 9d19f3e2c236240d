//! Producing under faults and checking afterwards that nothing acknowledged was lost: a
//! confluent-kafka producer (`python/ck_produce.py`) appends `partition offset value` to a file
//! for every acknowledgement the moment it arrives; the checker reads the whole topic back and
//! compares.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::clients::{kcat_consume_all, pypi_tool, python_script};
use crate::wait::wait_until;

/// A running producer and the file of what it was told is acknowledged.
pub struct Producer {
    child: Option<Child>,
    pub acked_file: PathBuf,
}

impl Producer {
    /// Start `ck_produce.py` with `args` (`--bootstrap`, `--topic`... but not
    /// `--acked-file`), recording acknowledgements in `acked_file`.
    pub fn start(acked_file: &Path, args: &[&str]) -> Producer {
        // Its stderr (librdkafka's logs; `CK_DEBUG=metadata,topic` for more) goes where a
        // failed test's logs are kept: target/test-logs/<pid>/. The idempotent producer's
        // own log (`eos`: epoch bumps, drains, sequence errors) is always in it: what a
        // duplicate or a gap needs explained.
        let logs = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/test-logs")
            .join(std::process::id().to_string());
        let _ = std::fs::create_dir_all(&logs);
        let stderr = std::fs::File::create(logs.join("producer.log")).expect("producer log");
        let child = Command::new(pypi_tool("python3"))
            .arg(python_script("ck_produce.py"))
            .args(args)
            .env(
                "CK_DEBUG",
                std::env::var("CK_DEBUG").unwrap_or_else(|_| "eos".into()),
            )
            .arg("--acked-file")
            .arg(acked_file)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn producer");
        Producer {
            child: Some(child),
            acked_file: acked_file.to_owned(),
        }
    }

    pub fn acked_count(&self) -> usize {
        std::fs::read_to_string(&self.acked_file)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// Wait until at least `n` records are acknowledged.
    pub fn wait_acked(&self, n: usize, timeout: Duration) {
        wait_until(&format!("{n} acknowledgements"), timeout, || {
            (self.acked_count() >= n).then_some(())
        });
    }

    /// Wait for the producer to exit by itself (a `--count` run), within `timeout`; its report.
    pub fn finish(mut self, timeout: Duration) -> serde_json::Value {
        let child = self.child.take().expect("running");
        report(child, timeout)
    }

    /// SIGTERM (it flushes what it can, briefly) and its report.
    pub fn stop(mut self, timeout: Duration) -> serde_json::Value {
        let child = self.child.take().expect("running");
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        report(child, timeout)
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn report(child: Child, timeout: Duration) -> serde_json::Value {
    let pid = child.id();
    let out = std::thread::spawn(move || child.wait_with_output());
    wait_until("the producer to exit", timeout, || {
        out.is_finished().then_some(())
    });
    let out = out
        .join()
        .expect("join")
        .unwrap_or_else(|e| panic!("producer {pid}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "no report from the producer (its log: target/test-logs/{}/producer.log)",
            std::process::id()
        )
    });
    serde_json::from_str(line).expect("producer report")
}

/// How many acknowledgements each partition got (for failure messages).
pub fn per_partition(file: &Path) -> BTreeMap<i32, usize> {
    let mut out = BTreeMap::new();
    for ack in read_acked(file) {
        *out.entry(ack.partition).or_insert(0) += 1;
    }
    out
}

/// One acknowledged record as the producer's delivery report gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub partition: i32,
    /// `None` when the client acknowledged the record without an offset: librdkafka's
    /// idempotent producer does so when a later batch of the same partition succeeded after
    /// this one's answer was lost (an implicit acknowledgement: the broker accepts batches only
    /// in sequence, so the earlier one is stored). Such a record is still checked, by value.
    pub offset: Option<i64>,
    pub value: String,
}

impl Ack {
    /// Stored where the acknowledgement said (anywhere in its partition when it had no offset).
    fn is_in(&self, stored: &BTreeMap<(i32, i64), String>) -> bool {
        match self.offset {
            Some(o) => stored.get(&(self.partition, o)) == Some(&self.value),
            None => stored
                .range((self.partition, i64::MIN)..=(self.partition, i64::MAX))
                .any(|(_, v)| *v == self.value),
        }
    }
}

/// Every acknowledgement in `file` (lines `partition offset value`, offset -1 when unknown).
pub fn read_acked(file: &Path) -> Vec<Ack> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut it = l.splitn(3, ' ');
            let mut field = |name: &str| {
                it.next()
                    .unwrap_or_else(|| panic!("acked line {l:?} has no {name}"))
                    .to_string()
            };
            let (p, o, v) = (field("partition"), field("offset"), field("value"));
            let number = |s: &str| -> i64 {
                s.parse()
                    .unwrap_or_else(|e| panic!("acked line {l:?}: {s:?} is not a number: {e}"))
            };
            Ack {
                partition: number(&p) as i32,
                offset: Some(number(&o)).filter(|o| *o >= 0),
                value: v,
            }
        })
        .collect()
}

/// Every record of `topic` as `(partition, offset) -> value`, read from `bootstrap`.
pub fn everything(bootstrap: &str, topic: &str, timeout: Duration) -> BTreeMap<(i32, i64), String> {
    kcat_consume_all(bootstrap, topic, "%p %o %s\n", timeout)
        .iter()
        .map(|l| {
            let mut it = l.splitn(3, ' ');
            let p = it.next().unwrap().parse().unwrap();
            let o = it.next().unwrap().parse().unwrap();
            ((p, o), it.next().unwrap_or_default().to_string())
        })
        .collect()
}

/// Read `topic` until every acknowledged record is there or `timeout` passes: a leader that
/// just took over serves up to its high watermark, which its followers' next fetches move to
/// where the previous leader's was. What is returned is then checked with [`verify`].
pub fn settled(
    bootstrap: &str,
    topic: &str,
    acked: &[Ack],
    timeout: Duration,
) -> BTreeMap<(i32, i64), String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let stored = everything(bootstrap, topic, timeout);
        let complete = acked.iter().all(|a| a.is_in(&stored));
        if complete || std::time::Instant::now() >= deadline {
            return stored;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The sequence number in a `ck_produce.py` value (`<prefix>-<n>`).
fn sequence(value: &str) -> (String, u64) {
    let (prefix, n) = value.rsplit_once('-').expect("prefix-n");
    (prefix.to_string(), n.parse().expect("a number"))
}

/// Every acknowledged record is stored where its acknowledgement said, exactly once in the
/// whole topic, each partition's records are in the order they were sent (per producer
/// prefix), and offsets have no holes. Returns how many records are stored.
pub fn verify(acked: &[Ack], stored: &BTreeMap<(i32, i64), String>) -> usize {
    for a in acked {
        assert!(
            a.is_in(stored),
            "acknowledged record {a:?} was lost or changed: stored there is {:?}",
            a.offset.map(|o| stored.get(&(a.partition, o)))
        );
    }
    let mut seen: HashMap<&str, (i32, i64)> = HashMap::new();
    for ((p, o), v) in stored {
        if let Some(first) = seen.insert(v, (*p, *o)) {
            panic!("{v} is stored twice: at {first:?} and {p}/{o}");
        }
    }
    let partitions: std::collections::BTreeSet<i32> = stored.keys().map(|(p, _)| *p).collect();
    for p in partitions {
        let records: Vec<(&i64, &String)> = stored
            .iter()
            .filter(|((q, _), _)| *q == p)
            .map(|((_, o), v)| (o, v))
            .collect();
        let start = *records[0].0;
        for (i, (o, _)) in records.iter().enumerate() {
            assert_eq!(
                **o,
                start + i as i64,
                "partition {p}: a hole before offset {o}"
            );
        }
        let mut last: HashMap<String, u64> = HashMap::new();
        for (o, v) in records {
            let (prefix, n) = sequence(v);
            if let Some(prev) = last.insert(prefix, n) {
                assert!(
                    n > prev,
                    "partition {p}: {v} at {o} came after a later record"
                );
            }
        }
    }
    stored.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acknowledgement_without_an_offset_is_found_by_value_in_its_partition() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("acked.txt");
        std::fs::write(&file, "0 5 v-1\n1 -1 v-2\n").unwrap();
        let acked = read_acked(&file);
        assert_eq!(acked[0].offset, Some(5));
        assert_eq!(acked[1].offset, None);
        let stored: BTreeMap<(i32, i64), String> =
            [((0, 5), "v-1".to_string()), ((1, 9), "v-2".to_string())].into();
        assert!(acked.iter().all(|a| a.is_in(&stored)));
        // In another partition, or missing: not found.
        let moved: BTreeMap<(i32, i64), String> =
            [((0, 5), "v-1".to_string()), ((0, 6), "v-2".to_string())].into();
        assert!(!acked[1].is_in(&moved));
        let lost: BTreeMap<(i32, i64), String> = [((0, 4), "v-1".to_string())].into();
        assert!(!acked[0].is_in(&lost));
    }
}
