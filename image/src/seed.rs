//! The data area's file system seed: a small ext4 made by the host's `mke2fs` with the
//! settings in `firmware/mke2fs.conf`, a fixed UUID, hash seed and time, gzipped into the
//! initramfs. PID 1 writes it to a blank data partition and grows it online (see
//! `pid1::datadisk`), so the image needs no mkfs.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use anyhow::Context;

/// Size of the seed file system before PID 1 grows it.
pub const SEED_BYTES: u64 = 64 << 20;

pub fn build(work: &Path, firmware_dir: &Path, uuid: &str, epoch: u64) -> anyhow::Result<Vec<u8>> {
    let img = work.join("data-seed.ext4");
    let _ = std::fs::remove_file(&img);
    std::fs::File::create(&img)?.set_len(SEED_BYTES)?;
    let mut cmd = Command::new("mke2fs");
    cmd.env("MKE2FS_CONFIG", firmware_dir.join("mke2fs.conf"))
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .args(["-q", "-F", "-t", "ext4", "-L", "clk-data", "-U", uuid])
        .arg("-E")
        .arg(format!(
            "hash_seed={uuid},root_owner=0:0,lazy_itable_init=1,nodiscard"
        ))
        .arg(&img);
    crate::tool::run(&mut cmd).context("mke2fs (from e2fsprogs) making the data area seed")?;
    let raw = std::fs::read(&img)?;
    // mtime 0 and no file name in the gzip header: same input, same bytes.
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(&raw)?;
    Ok(gz.finish()?)
}
