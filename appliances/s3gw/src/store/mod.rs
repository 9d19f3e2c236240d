//! The object store on the local file system.
//!
//! ```text
//! <data_dir>/tmp/<n>                         uploads in progress (deleted at start)
//! <data_dir>/buckets/<bucket>/bucket.json    creation time
//! <data_dir>/buckets/<bucket>/objects/<h[..2]>/<h>   one object file, h = sha256(key)
//! <data_dir>/multipart/<upload id>/upload.json      a multipart upload in progress ...
//! <data_dir>/multipart/<upload id>/part-<n>         ... and its parts (object files)
//! <data_dir>/multipart-done/<upload id>.json        a completed upload, kept for retries
//! ```
//!
//! Keys are hashed into file names (S3 keys may be 1024 bytes, contain `/` and `..`); the key
//! itself is in the object's footer. The listing index is in memory and rebuilt from the
//! footers at start, so it can never disagree with what is durable. A write is published by
//! `rename` under the index lock (so the index and the files agree on which of two
//! concurrent writers won), then the directory is fsynced outside the lock (so concurrent
//! writers share journal commits): only then is it acknowledged. Replication (a later issue)
//! will acknowledge once the other site also holds the renamed file; nothing here assumes a
//! single copy.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use durable_log::checkpoint;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::object_file::{self, Meta, ObjectFileError};

mod multipart;
mod space;
pub use multipart::{
    CompletedUpload, Completion, MAX_PART_NUMBER, MIN_PART_SIZE, MultipartInfo, PartRef,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such bucket")]
    NoSuchBucket,
    #[error("bucket already exists")]
    BucketExists,
    #[error("bucket is not empty")]
    BucketNotEmpty,
    #[error("no such key")]
    NoSuchKey,
    #[error("the condition of a conditional write does not hold")]
    PreconditionFailed,
    #[error("{0}")]
    BadDigest(String),
    #[error("no such upload")]
    NoSuchUpload,
    #[error("{0}")]
    InvalidPart(String),
    #[error("the list of parts was not in ascending order")]
    InvalidPartOrder,
    #[error("part {part} is {size} bytes; all parts but the last must be at least 5 MiB")]
    EntityTooSmall { part: i32, size: u64 },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Damaged(#[from] ObjectFileError),
    #[error("the data disk is full: {0}")]
    DiskFull(String),
}

impl StoreError {
    /// Whether the request failed for want of disk space: refused up front, or a write that
    /// met a full disk. Clients are told so (and may retry once space is freed).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::DiskFull(_) => true,
            StoreError::Io { source, .. } | StoreError::Damaged(ObjectFileError::Io(source)) => {
                space::is_full(source)
            }
            _ => false,
        }
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

#[derive(Serialize, Deserialize)]
struct BucketFile {
    created_ms: i64,
}

/// What listing needs about an object (the rest stays in its file).
#[derive(Debug, Clone)]
pub struct Entry {
    pub size: u64,
    pub etag: String,
    pub last_modified_ms: i64,
}

impl Entry {
    fn of(meta: &Meta) -> Entry {
        Entry {
            size: meta.size,
            etag: meta.etag.clone(),
            last_modified_ms: meta.last_modified_ms,
        }
    }
}

struct Bucket {
    created_ms: i64,
    objects: BTreeMap<String, Entry>,
}

pub struct Store {
    root: PathBuf,
    buckets: RwLock<BTreeMap<String, Bucket>>,
    next_tmp: AtomicU64,
    completing: multipart::CompletionLocks,
    /// Free space uploads must leave on the data disk (see `space`).
    reserve_bytes: u64,
}

/// An upload in progress: content goes to a temporary file until [`Store::publish`]. Dropped
/// unpublished (client gone, bad digest), its temporary file goes with it.
pub struct Upload {
    tmp: PathBuf,
    /// Always `Some` until [`Upload::finish`].
    writer: Option<object_file::Writer>,
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl Upload {
    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.writer.as_mut().expect("unfinished").write(data)
    }

    pub fn written(&self) -> u64 {
        self.writer.as_ref().expect("unfinished").written()
    }

    /// Finish the file and hand over its temporary path (now owned by the caller).
    fn finish(mut self, meta: Meta) -> Result<(PathBuf, Meta), StoreError> {
        let tmp = std::mem::take(&mut self.tmp);
        let writer = self.writer.take().expect("unfinished");
        match writer.finish(meta) {
            Ok(meta) => Ok((tmp, meta)),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(io("write the object")(e))
            }
        }
    }
}

/// A conditional write: `If-None-Match: *` or `If-Match: <etag>` on PUT and Complete.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum WriteCondition {
    #[default]
    Always,
    IfAbsent,
    IfEtag(String),
}

impl WriteCondition {
    fn check(&self, current: Option<&Entry>) -> Result<(), StoreError> {
        match (self, current) {
            (WriteCondition::Always, _) => Ok(()),
            (WriteCondition::IfAbsent, None) => Ok(()),
            (WriteCondition::IfAbsent, Some(_)) => Err(StoreError::PreconditionFailed),
            (WriteCondition::IfEtag(_), None) => Err(StoreError::NoSuchKey),
            (WriteCondition::IfEtag(want), Some(e)) if *want == e.etag => Ok(()),
            (WriteCondition::IfEtag(_), Some(_)) => Err(StoreError::PreconditionFailed),
        }
    }
}

impl Store {
    /// Open (or create) the store, delete leftovers of interrupted uploads and load the index.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let tmp = root.join("tmp");
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io(format!("create {}", tmp.display())))?;
        let buckets_dir = root.join("buckets");
        fs::create_dir_all(&buckets_dir).map_err(io("create buckets/"))?;
        for d in ["multipart", "multipart-done"] {
            fs::create_dir_all(root.join(d)).map_err(io(format!("create {d}/")))?;
        }
        sync_dir(root)?;
        let mut buckets = BTreeMap::new();
        for e in fs::read_dir(&buckets_dir).map_err(io("read buckets/"))? {
            let e = e.map_err(io("read buckets/"))?;
            let Some(name) = e.file_name().to_str().map(String::from) else {
                continue;
            };
            let Ok(text) = fs::read(e.path().join("bucket.json")) else {
                tracing::warn!(bucket = name, "directory without bucket.json ignored");
                continue;
            };
            let info: BucketFile = serde_json::from_slice(&text)
                .map_err(|err| io(format!("bucket {name}"))(std::io::Error::other(err)))?;
            let mut objects = BTreeMap::new();
            load_objects(&e.path().join("objects"), &mut objects)?;
            buckets.insert(
                name,
                Bucket {
                    created_ms: info.created_ms,
                    objects,
                },
            );
        }
        let count: usize = buckets.values().map(|b: &Bucket| b.objects.len()).sum();
        tracing::info!(
            buckets = buckets.len(),
            objects = count,
            "object store opened"
        );
        Ok(Store {
            root: root.to_owned(),
            buckets: RwLock::new(buckets),
            next_tmp: AtomicU64::new(0),
            completing: Default::default(),
            reserve_bytes: 0,
        })
    }

    /// Refuse uploads that would leave less than `bytes` free on the data disk.
    pub fn reserving(self, bytes: u64) -> Store {
        Store {
            reserve_bytes: bytes,
            ..self
        }
    }

    pub fn list_buckets(&self) -> Vec<(String, i64)> {
        self.buckets
            .read()
            .iter()
            .map(|(n, b)| (n.clone(), b.created_ms))
            .collect()
    }

    pub fn bucket_exists(&self, bucket: &str) -> bool {
        self.buckets.read().contains_key(bucket)
    }

    pub fn create_bucket(&self, bucket: &str, now_ms: i64) -> Result<(), StoreError> {
        let mut buckets = self.buckets.write();
        if buckets.contains_key(bucket) {
            return Err(StoreError::BucketExists);
        }
        let dir = self.bucket_dir(bucket);
        fs::create_dir_all(dir.join("objects")).map_err(io(format!("create {}", dir.display())))?;
        let text = serde_json::to_vec(&BucketFile { created_ms: now_ms }).expect("serializable");
        write_durably(&dir.join("bucket.json"), &text)?;
        sync_dir(&self.root.join("buckets"))?;
        buckets.insert(
            bucket.to_string(),
            Bucket {
                created_ms: now_ms,
                objects: BTreeMap::new(),
            },
        );
        Ok(())
    }

    pub fn delete_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        let mut buckets = self.buckets.write();
        let b = buckets.get(bucket).ok_or(StoreError::NoSuchBucket)?;
        if !b.objects.is_empty() {
            return Err(StoreError::BucketNotEmpty);
        }
        let dir = self.bucket_dir(bucket);
        fs::remove_dir_all(&dir).map_err(io(format!("remove {}", dir.display())))?;
        sync_dir(&self.root.join("buckets"))?;
        buckets.remove(bucket);
        drop(buckets);
        // Uploads in progress go with their bucket.
        for u in self
            .all_uploads()
            .into_iter()
            .filter(|u| u.bucket == bucket)
        {
            self.remove_upload(&u.upload_id)?;
        }
        Ok(())
    }

    /// Start an upload of about `size` bytes (0 when unknown) into `bucket`.
    pub fn begin_upload(&self, bucket: &str, size: u64) -> Result<Upload, StoreError> {
        if !self.bucket_exists(bucket) {
            return Err(StoreError::NoSuchBucket);
        }
        space::check(&self.root, self.reserve_bytes, size)?;
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io(format!("create {}", tmp.display())))?;
        Ok(Upload {
            tmp,
            writer: Some(object_file::Writer::new(file)),
        })
    }

    /// Make an upload durable and visible under its key, if `condition` holds at that
    /// moment. `meta` has everything but the size and block CRCs, which the writer fills in.
    pub fn publish(
        &self,
        bucket: &str,
        upload: Upload,
        meta: Meta,
        condition: &WriteCondition,
    ) -> Result<Meta, StoreError> {
        let (tmp, meta) = upload.finish(meta)?;
        let path = self.object_path(bucket, &meta.key);
        let dir = path
            .parent()
            .expect("object path has a directory")
            .to_owned();
        let new_shard = {
            // The check, the rename and the index update happen together under the lock, so
            // concurrent writers of one key leave the index describing the file that won.
            let mut buckets = self.buckets.write();
            let published = buckets
                .get_mut(bucket)
                .ok_or(StoreError::NoSuchBucket)
                .and_then(|b| {
                    condition.check(b.objects.get(&meta.key))?;
                    let new_shard = match fs::create_dir(&dir) {
                        Ok(()) => true,
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                        Err(e) => return Err(io(format!("create {}", dir.display()))(e)),
                    };
                    fs::rename(&tmp, &path).map_err(io(format!("publish {}", path.display())))?;
                    b.objects.insert(meta.key.clone(), Entry::of(&meta));
                    Ok(new_shard)
                });
            match published {
                Ok(new_shard) => new_shard,
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(e);
                }
            }
        };
        // Durable before acknowledged: the file's entry in its shard directory, and the
        // shard's own entry when this write created it.
        sync_dir(&dir)?;
        if new_shard {
            sync_dir(dir.parent().expect("shards live in objects/"))?;
        }
        Ok(meta)
    }

    /// Open an object for reading: the file stays readable even if it is replaced meanwhile.
    pub fn open_object(&self, bucket: &str, key: &str) -> Result<(File, Meta), StoreError> {
        {
            let buckets = self.buckets.read();
            let b = buckets.get(bucket).ok_or(StoreError::NoSuchBucket)?;
            if !b.objects.contains_key(key) {
                return Err(StoreError::NoSuchKey);
            }
        }
        let path = self.object_path(bucket, key);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NoSuchKey);
            }
            Err(e) => return Err(io(format!("open {}", path.display()))(e)),
        };
        let meta = object_file::read_meta(&file)?;
        Ok((file, meta))
    }

    /// Delete an object; deleting a missing key succeeds, as in S3.
    pub fn delete_object(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        let path = self.object_path(bucket, key);
        {
            let mut buckets = self.buckets.write();
            let b = buckets.get_mut(bucket).ok_or(StoreError::NoSuchBucket)?;
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io(format!("delete {}", path.display()))(e)),
            }
            b.objects.remove(key);
        }
        sync_dir(path.parent().expect("has a directory"))
    }

    /// The index entry of an object, if it exists.
    pub fn entry(&self, bucket: &str, key: &str) -> Result<Option<Entry>, StoreError> {
        let buckets = self.buckets.read();
        let b = buckets.get(bucket).ok_or(StoreError::NoSuchBucket)?;
        Ok(b.objects.get(key).cloned())
    }

    /// Keys after `after`, starting with `prefix`, rolled up at `delimiter`, at most `max`
    /// entries (objects and common prefixes together, as S3 counts them). Returns the entries,
    /// the common prefixes and, when truncated, the last key or prefix returned.
    pub fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max: usize,
    ) -> Result<Listing, StoreError> {
        let buckets = self.buckets.read();
        let b = buckets.get(bucket).ok_or(StoreError::NoSuchBucket)?;
        let mut out = Listing::default();
        let start = match after {
            Some(a) if a >= prefix => std::ops::Bound::Excluded(a.to_string()),
            _ => std::ops::Bound::Included(prefix.to_string()),
        };
        let mut last: Option<String> = None;
        for (key, entry) in b.objects.range((start, std::ops::Bound::Unbounded)) {
            if !key.starts_with(prefix) {
                break;
            }
            let rolled = delimiter.filter(|d| !d.is_empty()).and_then(|d| {
                key[prefix.len()..]
                    .find(d)
                    .map(|i| key[..prefix.len() + i + d.len()].to_string())
            });
            if let Some(cp) = &rolled
                && (out.common_prefixes.last() == Some(cp)
                    || after.is_some_and(|a| a.starts_with(cp.as_str())))
            {
                continue;
            }
            if out.objects.len() + out.common_prefixes.len() == max {
                out.truncated = true;
                break;
            }
            match rolled {
                Some(cp) => {
                    last = Some(cp.clone());
                    out.common_prefixes.push(cp);
                }
                None => {
                    last = Some(key.clone());
                    out.objects.push((key.clone(), entry.clone()));
                }
            }
        }
        if out.truncated {
            out.next_marker = last;
        }
        Ok(out)
    }

    fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.root.join("buckets").join(bucket)
    }

    fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        let h = hex::encode(Sha256::digest(key.as_bytes()));
        self.bucket_dir(bucket)
            .join("objects")
            .join(&h[..2])
            .join(h)
    }
}

#[derive(Debug, Default)]
pub struct Listing {
    pub objects: Vec<(String, Entry)>,
    pub common_prefixes: Vec<String>,
    pub truncated: bool,
    /// The last key or common prefix returned, when truncated (continue after it).
    pub next_marker: Option<String>,
}

fn load_objects(dir: &Path, out: &mut BTreeMap<String, Entry>) -> Result<(), StoreError> {
    let Ok(shards) = fs::read_dir(dir) else {
        return Ok(());
    };
    for shard in shards.flatten() {
        for e in fs::read_dir(shard.path())
            .map_err(io("read an object directory"))?
            .flatten()
        {
            let f = File::open(e.path()).map_err(io(format!("open {}", e.path().display())))?;
            match object_file::read_meta(&f) {
                Ok(m) => {
                    out.insert(m.key.clone(), Entry::of(&m));
                }
                // Only published (renamed, fsynced) files live here, so this is damage, not a
                // torn write: keep the file for inspection, leave the key out, say so.
                Err(err) => {
                    tracing::error!(file = %e.path().display(), error = %err, "damaged object file")
                }
            }
        }
    }
    Ok(())
}

/// Atomic, durable small-file replacement: the durable log's checkpoint writer.
fn write_durably(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    checkpoint::write_atomic(path, data).map_err(io(format!("write {}", path.display())))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    checkpoint::sync_dir(dir).map_err(io(format!("fsync {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &Store, key: &str, data: &[u8]) {
        let mut up = store.begin_upload("b", 0).unwrap();
        up.write(data).unwrap();
        let meta = Meta::new(key, "e", 1);
        store
            .publish("b", up, meta, &WriteCondition::Always)
            .unwrap();
    }

    #[test]
    fn pages_with_a_delimiter_add_up_to_one_listing_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create_bucket("b", 1).unwrap();
        for k in ["a/1", "a/2", "b", "c/x/1", "c/y", "d"] {
            put(&store, k, k.as_bytes());
        }
        let all = store.list("b", "", Some("/"), None, 1000).unwrap();
        let keys: Vec<&str> = all.objects.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "d"]);
        assert_eq!(all.common_prefixes, ["a/", "c/"]);
        // Two entries per page: a/, b | c/, d
        let mut seen = vec![];
        let mut after: Option<String> = None;
        loop {
            let page = store.list("b", "", Some("/"), after.as_deref(), 2).unwrap();
            seen.extend(page.objects.iter().map(|(k, _)| k.clone()));
            seen.extend(page.common_prefixes.iter().cloned());
            if !page.truncated {
                break;
            }
            after = page.next_marker;
        }
        seen.sort();
        assert_eq!(seen, ["a/", "b", "c/", "d"]);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.list("b", "c/", None, None, 10).unwrap().objects.len(),
            2
        );
        assert!(matches!(
            store.delete_bucket("b"),
            Err(StoreError::BucketNotEmpty)
        ));
    }
}
