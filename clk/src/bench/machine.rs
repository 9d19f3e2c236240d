//! This machine's physical limits, to state benchmark results as a ratio of them.
//!
//! - disk: sequential 1 MiB writes, buffered then one fdatasync (what a log with group commit
//!   approaches), with O_DIRECT (what the device takes), and the latency of a 4 KiB write +
//!   fdatasync (what an fsync per request would cost);
//! - loopback: one TCP stream over 127.0.0.1.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::report::{Percentiles, latency_histogram, mb_per_s, percentiles, print};

#[derive(Args)]
pub struct DiskArgs {
    /// A directory on the disk to measure.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Bytes to write per sequential test.
    #[arg(long, default_value = "1GiB", value_parser = appconfig::size::parse)]
    size: u64,
    #[arg(long, default_value_t = 200)]
    fsyncs: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct DiskReport {
    bench: &'static str,
    dir: String,
    buffered_fdatasync_mb_s: f64,
    o_direct_mb_s: f64,
    small_write_fdatasync_per_s: f64,
    small_write_fdatasync_latency: Percentiles,
}

const CHUNK: usize = 1 << 20;

/// A buffer whose `slice()` is 4 KiB-aligned, as O_DIRECT requires.
struct Aligned {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let mut storage: Vec<u8> = (0..len + 4096).map(|i| (i * 31 % 251) as u8).collect();
        let start = storage.as_mut_ptr().align_offset(4096);
        Aligned {
            storage,
            start,
            len,
        }
    }

    fn slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

fn sequential(path: &PathBuf, size: u64, direct: bool) -> anyhow::Result<Duration> {
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if direct {
        opts.custom_flags(nix::libc::O_DIRECT);
    }
    let mut f = opts.open(path)?;
    let buf = Aligned::new(CHUNK);
    let start = Instant::now();
    let mut written = 0u64;
    while written < size {
        f.write_all(buf.slice())?;
        written += CHUNK as u64;
    }
    f.sync_data()?;
    Ok(start.elapsed())
}

pub async fn disk(a: DiskArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        let path = a.dir.join(".clk-disk-bench");
        let buffered = sequential(&path, a.size, false)?;
        let direct = sequential(&path, a.size, true)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let block = Aligned::new(4096);
        let mut h = latency_histogram();
        let start = Instant::now();
        for _ in 0..a.fsyncs {
            let t = Instant::now();
            f.write_all(block.slice())?;
            f.sync_data()?;
            h.record(t.elapsed().as_micros().max(1) as u64)?;
        }
        let fsync_rate = a.fsyncs as f64 / start.elapsed().as_secs_f64();
        std::fs::remove_file(&path)?;
        print(
            &DiskReport {
                bench: "disk",
                dir: a.dir.display().to_string(),
                buffered_fdatasync_mb_s: mb_per_s(a.size, buffered),
                o_direct_mb_s: mb_per_s(a.size, direct),
                small_write_fdatasync_per_s: fsync_rate,
                small_write_fdatasync_latency: percentiles(&h),
            },
            a.json,
        );
        anyhow::Ok(())
    })
    .await?
}

#[derive(Args)]
pub struct LoopbackArgs {
    #[arg(long, default_value = "8GiB", value_parser = appconfig::size::parse)]
    size: u64,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct LoopbackReport {
    bench: &'static str,
    mb_per_s: f64,
}

pub async fn loopback(a: LoopbackArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let size = a.size;
    let sink = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        while total < size {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        anyhow::Ok(total)
    });
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let buf = vec![7u8; 256 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < size {
        s.write_all(&buf).await?;
        sent += buf.len() as u64;
    }
    let received = sink.await??;
    print(
        &LoopbackReport {
            bench: "loopback",
            mb_per_s: mb_per_s(received, start.elapsed()),
        },
        a.json,
    );
    Ok(())
}
