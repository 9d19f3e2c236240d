//! Free space on the data disk. An upload that would leave less than the configured reserve
//! is refused before a byte of it is written, so that the disk keeps room for what must not
//! fail for want of space: deletes, multipart completion records, directory updates. A write
//! that meets a full disk anyway (the reserve is zero, or uploads of unknown size) is reported
//! as a full disk, not as an internal error.

use std::io;
use std::path::Path;

use nix::errno::Errno;

use super::StoreError;

/// Refuse an upload of `size` bytes that would take the free space under `reserve`.
pub(super) fn check(root: &Path, reserve: u64, size: u64) -> Result<(), StoreError> {
    if reserve == 0 {
        return Ok(());
    }
    let available = telemetry::disk::disk_space(root)
        .map_err(super::io("measure free space"))?
        .available;
    if available < reserve.saturating_add(size) {
        return Err(StoreError::DiskFull(format!(
            "{available} bytes free, {size} asked, {reserve} kept in reserve"
        )));
    }
    Ok(())
}

/// The disk (or the user's quota on it) is full.
pub(super) fn is_full(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::ENOSPC | Errno::EDQUOT)
    )
}
