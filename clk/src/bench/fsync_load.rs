//! `clk bench fsync-load`: the hub's write pattern on a disk, without the broker.
//!
//! `threads` writers each append `write_size` bytes and fdatasync them, at a fixed total
//! offered load (what the hub's replicas do at a given produce rate: every byte written three
//! times, each append followed by a group-commit fdatasync). Latency is measured from each
//! write's scheduled time to the end of its fdatasync, so a write queued behind a stalled
//! fdatasync counts its wait, as a producer's request does (no coordinated omission). The run
//! is cut into windows as long as one broker measurement, and each window's p99 is reported
//! beside the goal: this is the floor under any acks=all latency measured on the same disk.
//!
//! `--prezeroed` writes into files already written with zeros and fsynced, so an append does
//! not change the file's size or allocation and fdatasync has no metadata to journal (what
//! preallocated segments would give a log); the writers wrap around in their 256 MiB file, so
//! the disk holds `threads` x 256 MiB and the run can be long. Without it each writer appends
//! to 128 MiB segments as the broker's log does, deleting nothing (deleting a file while others
//! fdatasync is a stall of its own on a filesystem mounted with `discard`): the disk must hold
//! the whole run, `rate_mb` x `duration`.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::report::{Percentiles, latency_histogram, percentiles, print};

/// A writer's segment size (small in unit tests, which write a few hundred kilobytes).
const SEGMENT_BYTES: u64 = if cfg!(test) { 1 << 20 } else { 128 << 20 };
/// A writer's one file with `--prezeroed`.
const PREZEROED_BYTES: u64 = if cfg!(test) { 2 << 20 } else { 256 << 20 };
/// The broker's own threshold for a stalled fdatasync (its flush-latency histogram bucket).
const STALL_US: u64 = 51_200;

#[derive(Args)]
pub struct FsyncLoadArgs {
    /// A directory on the disk to measure.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Concurrent writers (the hub's four brokers have 12 partition replicas at full load).
    #[arg(long, default_value_t = 12)]
    threads: usize,
    #[arg(long, default_value = "64KiB", value_parser = appconfig::size::parse)]
    write_size: u64,
    /// Offered load over all writers, in MB/s (3 x the hub's produce rate).
    #[arg(long, default_value_t = 180.0)]
    rate_mb: f64,
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Length of one window (one broker latency measurement is 15 s).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// The p99 a window is held against, in milliseconds.
    #[arg(long, default_value_t = 20.0)]
    goal_ms: f64,
    /// Write into files written with zeros beforehand (no size change to journal).
    #[arg(long)]
    prezeroed: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct FsyncLoadReport {
    bench: &'static str,
    dir: String,
    prezeroed: bool,
    threads: usize,
    write_size: u64,
    offered_mb_s: f64,
    written_mb_s: f64,
    fdatasyncs: u64,
    fdatasyncs_over_51ms: u64,
    /// From each write's scheduled time to the end of its fdatasync.
    latency: Percentiles,
    /// Each window's p99, in ms.
    window_p99_ms: Vec<f64>,
    windows_over_goal: usize,
}

/// What one writer saw: a latency histogram per window, and its stalled fdatasyncs.
struct WriterResult {
    windows: Vec<Histogram<u64>>,
    fdatasyncs: u64,
    stalled: u64,
}

/// One writer's file(s): where the next write goes.
struct Target {
    dir: PathBuf,
    prezeroed: bool,
    file: File,
    segment: u64,
    position: u64,
}

impl Target {
    fn open(dir: &Path, prezeroed: bool) -> anyhow::Result<Target> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = if prezeroed {
            zeroed(&dir.join("file"), PREZEROED_BYTES)?
        } else {
            segment(dir, 0)?
        };
        Ok(Target {
            dir: dir.to_owned(),
            prezeroed,
            file,
            segment: 0,
            position: 0,
        })
    }

    /// Make room for `len` more bytes: wrap around, or roll to a new segment.
    fn room_for(&mut self, len: u64) -> anyhow::Result<()> {
        let limit = if self.prezeroed {
            PREZEROED_BYTES
        } else {
            SEGMENT_BYTES
        };
        if self.position + len <= limit {
            return Ok(());
        }
        self.position = 0;
        if self.prezeroed {
            self.file.seek(SeekFrom::Start(0))?;
            return Ok(());
        }
        self.segment += 1;
        self.file = segment(&self.dir, self.segment)?;
        Ok(())
    }
}

fn segment(dir: &Path, n: u64) -> anyhow::Result<File> {
    let path = dir.join(format!("{n}.seg"));
    File::create(&path).with_context(|| format!("creating {}", path.display()))
}

fn zeroed(path: &Path, len: u64) -> anyhow::Result<File> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..len.div_ceil(zeros.len() as u64) {
        f.write_all(&zeros)?;
    }
    f.sync_all()?;
    f.seek(SeekFrom::Start(0))?;
    Ok(f)
}

/// Windows in a run: the last one may be partial.
fn window_count(a: &FsyncLoadArgs) -> usize {
    (a.duration.as_secs_f64() / a.window.as_secs_f64()).ceil() as usize
}

/// Write at `interval` from `start` for `a.duration`, recording each write's latency in its
/// window.
fn writer(
    mut target: Target,
    a: &FsyncLoadArgs,
    start: Instant,
    interval: Duration,
) -> anyhow::Result<WriterResult> {
    let mut result = WriterResult {
        windows: (0..window_count(a)).map(|_| latency_histogram()).collect(),
        fdatasyncs: 0,
        stalled: 0,
    };
    let buf = vec![0x5au8; a.write_size as usize];
    for n in 0u32.. {
        let due = start + interval * n;
        if due >= start + a.duration {
            break;
        }
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        target.room_for(a.write_size)?;
        let began = Instant::now();
        target.file.write_all(&buf)?;
        target.file.sync_data().context("fdatasync")?;
        let done = Instant::now();
        target.position += a.write_size;
        result.fdatasyncs += 1;
        result.stalled += u64::from(done.duration_since(began).as_micros() as u64 > STALL_US);
        // `min`: a write due a nanosecond before the end may round into a window past the last.
        let window = (due.duration_since(start).as_secs_f64() / a.window.as_secs_f64()) as usize;
        let window = window.min(result.windows.len() - 1);
        let us = done.duration_since(due).as_micros().max(1) as u64;
        result.windows[window].record(us.min(100_000_000))?;
    }
    Ok(result)
}

pub async fn run(a: FsyncLoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.threads > 0 && a.write_size > 0 && a.rate_mb > 0.0 && !a.duration.is_zero(),
        "nothing to do"
    );
    anyhow::ensure!(!a.window.is_zero(), "--window must be longer than zero");
    anyhow::ensure!(
        a.write_size <= SEGMENT_BYTES,
        "--write-size is over a segment"
    );
    let report = tokio::task::spawn_blocking(move || measure(&a).map(|r| (r, a.json))).await?;
    let (report, json) = report?;
    print(&report, json);
    Ok(())
}

fn measure(a: &FsyncLoadArgs) -> anyhow::Result<FsyncLoadReport> {
    let root = a.dir.join(".clk-fsync-load");
    let _ = std::fs::remove_dir_all(&root);
    let targets = (0..a.threads)
        .map(|i| Target::open(&root.join(i.to_string()), a.prezeroed))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let per_writer_bytes_s = a.rate_mb * 1e6 / a.threads as f64;
    let interval = Duration::from_secs_f64(a.write_size as f64 / per_writer_bytes_s);
    let start = Instant::now() + Duration::from_millis(100);
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .into_iter()
            .map(|t| s.spawn(move || writer(t, a, start, interval)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a writer panicked"))
            .collect::<anyhow::Result<Vec<_>>>()
    });
    let elapsed = start.elapsed();
    std::fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    report(a, &results?, elapsed)
}

fn report(
    a: &FsyncLoadArgs,
    results: &[WriterResult],
    elapsed: Duration,
) -> anyhow::Result<FsyncLoadReport> {
    let mut all = latency_histogram();
    let mut windows: Vec<Histogram<u64>> =
        (0..window_count(a)).map(|_| latency_histogram()).collect();
    for r in results {
        for (window, h) in windows.iter_mut().zip(&r.windows) {
            all.add(h)?;
            window.add(h)?;
        }
    }
    let window_p99_ms: Vec<f64> = windows
        .iter()
        .filter(|h| !h.is_empty())
        .map(|h| h.value_at_quantile(0.99) as f64 / 1000.0)
        .collect();
    let fdatasyncs: u64 = results.iter().map(|r| r.fdatasyncs).sum();
    Ok(FsyncLoadReport {
        bench: "fsync-load",
        dir: a.dir.display().to_string(),
        prezeroed: a.prezeroed,
        threads: a.threads,
        write_size: a.write_size,
        offered_mb_s: a.rate_mb,
        written_mb_s: (fdatasyncs * a.write_size) as f64 / 1e6 / elapsed.as_secs_f64(),
        fdatasyncs,
        fdatasyncs_over_51ms: results.iter().map(|r| r.stalled).sum(),
        latency: percentiles(&all),
        windows_over_goal: window_p99_ms.iter().filter(|p| **p > a.goal_ms).count(),
        window_p99_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path, prezeroed: bool) -> FsyncLoadArgs {
        FsyncLoadArgs {
            dir: dir.to_owned(),
            threads: 2,
            write_size: 4096,
            rate_mb: 0.4,
            duration: Duration::from_millis(1_000),
            window: Duration::from_millis(400),
            goal_ms: 20.0,
            prezeroed,
            json: true,
        }
    }

    #[test]
    fn every_scheduled_write_is_made_and_counted_in_its_window() {
        let dir = tempfile::tempdir().unwrap();
        for prezeroed in [false, true] {
            let a = args(dir.path(), prezeroed);
            let r = measure(&a).unwrap();
            // 0.2 MB/s per writer in 4 KiB writes: one every 20.48 ms, 49 in a second.
            assert_eq!(r.fdatasyncs, 2 * 49, "prezeroed {prezeroed}");
            // 1 s in windows of 400 ms: two whole ones and a partial third.
            assert_eq!(r.window_p99_ms.len(), 3);
            assert_eq!(
                r.windows_over_goal,
                r.window_p99_ms.iter().filter(|p| **p > 20.0).count()
            );
            assert!(r.latency.p50_ms > 0.0);
            assert!(
                !dir.path().join(".clk-fsync-load").exists(),
                "the data is removed"
            );
        }
    }

    #[test]
    fn a_writer_rolls_segments_or_wraps_around_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Target::open(&dir.path().join("w"), false).unwrap();
        t.position = SEGMENT_BYTES - 10;
        t.room_for(10).unwrap();
        assert_eq!((t.segment, t.position), (0, SEGMENT_BYTES - 10));
        t.room_for(11).unwrap();
        assert_eq!((t.segment, t.position), (1, 0));
        assert!(dir.path().join("w/1.seg").exists() && dir.path().join("w/0.seg").exists());

        let mut t = Target::open(&dir.path().join("z"), true).unwrap();
        assert_eq!(t.file.metadata().unwrap().len(), PREZEROED_BYTES);
        t.position = PREZEROED_BYTES;
        t.room_for(1).unwrap();
        assert_eq!((t.segment, t.position), (0, 0));
        assert_eq!(t.file.stream_position().unwrap(), 0);
    }
}
