//! Where the quorum's log and snapshot bytes live: a file on the data disk, or in the
//! simulation a [`SimFile`] that remembers which bytes were synced, so that a simulated crash
//! keeps exactly the synced prefix (plus, at the simulation's choice, a torn part of the rest).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

/// An append-only byte store with explicit durability.
pub trait LogFile: Send + 'static {
    /// Everything written so far (after a crash: what survived it).
    fn read_all(&mut self) -> io::Result<Vec<u8>>;
    /// Cut to `len` bytes (a torn tail found at open), durably.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Make every appended byte durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Replace the whole content atomically and durably.
    fn replace(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Whether calls block on a disk (then they run on a blocking thread).
    fn blocks(&self) -> bool;
}

/// A real file.
pub struct FsFile {
    path: PathBuf,
    file: File,
}

impl FsFile {
    pub fn open(path: &Path) -> io::Result<FsFile> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        Ok(FsFile {
            path: path.to_owned(),
            file,
        })
    }
}

impl LogFile for FsFile {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_end(&mut out)?;
        Ok(out)
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_all()
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn replace(&mut self, bytes: &[u8]) -> io::Result<()> {
        durable_log::checkpoint::write_atomic(&self.path, bytes)?;
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)?;
        Ok(())
    }

    fn blocks(&self) -> bool {
        true
    }
}

/// A simulated disk file. Clones share the same disk, so the simulation keeps a handle to
/// crash it while the node's store owns another.
#[derive(Clone, Default)]
pub struct SimFile(Arc<Mutex<SimDisk>>);

#[derive(Default)]
struct SimDisk {
    /// What a crash keeps.
    synced: Vec<u8>,
    /// What reads see now.
    current: Vec<u8>,
}

impl SimFile {
    /// A crash: the unsynced bytes are lost, except the first `torn_keep` of them (a partly
    /// written tail, which recovery must cut).
    pub fn crash(&self, torn_keep: usize) {
        let mut d = self.0.lock();
        let unsynced = d.current.len().saturating_sub(d.synced.len());
        let keep = torn_keep.min(unsynced);
        let mut after = d.synced.clone();
        let start = d.synced.len();
        after.extend_from_slice(&d.current[start..start + keep]);
        d.current = after;
    }

    pub fn unsynced_len(&self) -> usize {
        let d = self.0.lock();
        d.current.len().saturating_sub(d.synced.len())
    }
}

impl LogFile for SimFile {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        Ok(self.0.lock().current.clone())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let mut d = self.0.lock();
        let len = len as usize;
        d.current.truncate(len);
        d.synced = d.current.clone();
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.lock().current.extend_from_slice(bytes);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut d = self.0.lock();
        d.synced = d.current.clone();
        Ok(())
    }

    fn replace(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut d = self.0.lock();
        d.current = bytes.to_vec();
        d.synced = bytes.to_vec();
        Ok(())
    }

    fn blocks(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simulated_crash_keeps_the_synced_prefix_and_maybe_a_torn_tail() {
        let f = SimFile::default();
        let mut w = f.clone();
        w.append(b"abc").unwrap();
        w.sync().unwrap();
        w.append(b"defg").unwrap();
        assert_eq!(f.unsynced_len(), 4);
        f.crash(2);
        assert_eq!(w.read_all().unwrap(), b"abcde");
        f.crash(0);
        assert_eq!(w.read_all().unwrap(), b"abc");
    }

    #[test]
    fn a_real_file_appends_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = FsFile::open(&dir.path().join("log")).unwrap();
        f.append(b"one").unwrap();
        f.sync().unwrap();
        f.replace(b"two").unwrap();
        f.append(b"+").unwrap();
        assert_eq!(f.read_all().unwrap(), b"two+");
        f.truncate(2).unwrap();
        assert_eq!(f.read_all().unwrap(), b"tw");
    }
}
