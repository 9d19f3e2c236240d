//! Multipart uploads on disk. An upload is a directory of part files, each an ordinary object
//! file (block CRCs, its own MD5 ETag, its checksums); Complete streams the chosen parts,
//! verified block by block, into one new object file and publishes it like any PUT. Parts are
//! copied once rather than referenced so that an object stays one self-describing file (and
//! one unit to replicate).
//!
//! A completed upload leaves a small record for a day so that a retried Complete (the client
//! timed out waiting for the first answer) gets the same answer, as on AWS. Uploads neither
//! completed nor aborted are removed once older than the configured expiry: no space is
//! leaked for ever by clients that vanish.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::path::PathBuf;
use std::sync::Arc;

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, Upload, WriteCondition, io, sync_dir, write_durably};
use crate::checksums::{self, Checksums};
use crate::object_file::{self, Meta};

/// S3's lower bound for every part but the last.
pub const MIN_PART_SIZE: u64 = 5 << 20;
pub const MAX_PART_NUMBER: i32 = 10_000;
const DONE_RECORD_LIFETIME_MS: i64 = 24 * 3600 * 1000;

/// An upload in progress, as created (stored as `upload.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MultipartInfo {
    pub bucket: String,
    pub key: String,
    #[serde(default)]
    pub upload_id: String,
    pub initiated_ms: i64,
    pub content_type: Option<String>,
    pub http_headers: BTreeMap<String, String>,
    pub user_metadata: BTreeMap<String, String>,
    /// The checksum algorithm the client announced at creation, if any.
    pub checksum_algorithm: Option<String>,
    /// `COMPOSITE` (checksum of the part checksums) or `FULL_OBJECT`.
    pub checksum_type: Option<String>,
}

/// A part as a Complete request names it.
#[derive(Debug, Clone)]
pub struct PartRef {
    pub number: i32,
    pub etag: String,
    pub checksums: Checksums,
}

/// What a Complete request asks for.
#[derive(Debug, Clone)]
pub struct Completion {
    pub parts: Vec<PartRef>,
    /// Whole-object checksums the client expects (checked before anything is published).
    pub claimed: Checksums,
    pub condition: WriteCondition,
}

/// The result of a Complete, kept for retries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompletedUpload {
    pub bucket: String,
    pub key: String,
    pub etag: String,
    pub checksums: Checksums,
    pub checksum_type: Option<String>,
    pub completed_ms: i64,
}

/// Serialises Completes of one upload id (a retry racing the original waits, then finds the
/// record the first one left).
#[derive(Default)]
pub(super) struct CompletionLocks(parking_lot::Mutex<HashMap<String, Arc<parking_lot::Mutex<()>>>>);

impl Store {
    pub fn create_multipart(&self, mut info: MultipartInfo) -> Result<MultipartInfo, StoreError> {
        if !self.bucket_exists(&info.bucket) {
            return Err(StoreError::NoSuchBucket);
        }
        info.upload_id = uuid::Uuid::new_v4().simple().to_string();
        let dir = self.root.join("multipart").join(&info.upload_id);
        fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        write_durably(
            &dir.join("upload.json"),
            &serde_json::to_vec(&info).expect("serializable"),
        )?;
        sync_dir(&self.root.join("multipart"))?;
        Ok(info)
    }

    /// The upload `id` of `bucket`/`key`, or `NoSuchUpload`.
    pub fn multipart(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
    ) -> Result<MultipartInfo, StoreError> {
        let info = self
            .read_upload(&self.upload_dir(id)?)
            .ok_or(StoreError::NoSuchUpload)?;
        if info.bucket != bucket || info.key != key {
            return Err(StoreError::NoSuchUpload);
        }
        Ok(info)
    }

    /// Make an uploaded part durable under its number (replacing an earlier upload of it).
    pub fn publish_part(
        &self,
        info: &MultipartInfo,
        number: i32,
        upload: Upload,
        meta: Meta,
    ) -> Result<Meta, StoreError> {
        let (tmp, meta) = upload.finish(meta)?;
        let dir = self.upload_dir(&info.upload_id)?;
        let path = dir.join(format!("part-{number:05}"));
        // An Abort may have removed the directory meanwhile.
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(if dir.exists() {
                io(format!("publish {}", path.display()))(e)
            } else {
                StoreError::NoSuchUpload
            });
        }
        sync_dir(&dir)?;
        Ok(meta)
    }

    /// The parts uploaded so far, by number.
    pub fn list_parts(&self, info: &MultipartInfo) -> Result<BTreeMap<i32, Meta>, StoreError> {
        let dir = self.upload_dir(&info.upload_id)?;
        let entries = fs::read_dir(&dir).map_err(|_| StoreError::NoSuchUpload)?;
        let mut parts = BTreeMap::new();
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_prefix("part-"))
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let f = File::open(e.path()).map_err(io(format!("open {}", e.path().display())))?;
            parts.insert(n, object_file::read_meta(&f)?);
        }
        Ok(parts)
    }

    /// Uploads in progress in `bucket`, by key then initiation time.
    pub fn list_multipart(&self, bucket: &str) -> Result<Vec<MultipartInfo>, StoreError> {
        if !self.bucket_exists(bucket) {
            return Err(StoreError::NoSuchBucket);
        }
        let mut out: Vec<MultipartInfo> = self
            .all_uploads()
            .into_iter()
            .filter(|u| u.bucket == bucket)
            .collect();
        out.sort_by(|a, b| (&a.key, a.initiated_ms).cmp(&(&b.key, b.initiated_ms)));
        Ok(out)
    }

    pub fn abort_multipart(&self, bucket: &str, key: &str, id: &str) -> Result<(), StoreError> {
        self.multipart(bucket, key, id)?;
        self.remove_upload(id)
    }

    /// Assemble the named parts into the object. Retrying a Complete that already succeeded
    /// returns the same result.
    pub fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        completion: &Completion,
        now_ms: i64,
    ) -> Result<CompletedUpload, StoreError> {
        self.upload_dir(id)?; // a malformed id is NoSuchUpload before anything else
        let lock = self
            .completing
            .0
            .lock()
            .entry(id.to_string())
            .or_default()
            .clone();
        let _serialised = lock.lock();
        let result = self.complete_locked(bucket, key, id, completion, now_ms);
        self.completing.0.lock().remove(id);
        result
    }

    fn complete_locked(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        completion: &Completion,
        now_ms: i64,
    ) -> Result<CompletedUpload, StoreError> {
        let record = self.done_record(id);
        if let Ok(text) = fs::read(&record)
            && let Ok(done) = serde_json::from_slice::<CompletedUpload>(&text)
        {
            if done.bucket != bucket || done.key != key {
                return Err(StoreError::NoSuchUpload);
            }
            // A crash may have come between the record and the directory's removal.
            let _ = self.remove_upload(id);
            return Ok(done);
        }
        let info = self.multipart(bucket, key, id)?;
        let stored = self.list_parts(&info)?;
        let chosen = choose_parts(&completion.parts, &stored)?;

        let composite = info.checksum_type.as_deref() != Some("FULL_OBJECT");
        let algorithm = info.checksum_algorithm.as_deref();
        let mut full = checksums::hasher(algorithm.filter(|_| !composite));
        let mut etags = Md5::new();
        let size = chosen.iter().map(|(_, meta)| meta.size).sum();
        let mut upload = self.begin_upload(bucket, size)?;
        for (number, meta) in &chosen {
            let path = self.upload_dir(id)?.join(format!("part-{number:05}"));
            let file = File::open(&path).map_err(io(format!("open {}", path.display())))?;
            object_file::for_each_verified_chunk(&file, meta, 0, meta.size, |chunk| {
                full.update(chunk);
                upload.write(chunk)
            })?;
            etags.update(hex::decode(&meta.etag).unwrap_or_default());
        }
        let mut sums = checksums::from_dto(full.finalize());
        if let Some(alg) = algorithm.filter(|_| composite) {
            let part_sums: Vec<&Checksums> = chosen.iter().map(|(_, m)| &m.checksums).collect();
            if let Some(v) = checksums::composite(alg, &part_sums) {
                sums.insert(alg.to_string(), v);
            }
        }
        if let Some(alg) = checksums::first_mismatch(&completion.claimed, &sums) {
            return Err(StoreError::BadDigest(format!(
                "The {alg} you specified did not match the calculated checksum."
            )));
        }
        let etag = format!("{}-{}", hex::encode(etags.finalize()), chosen.len());
        let meta = Meta {
            content_type: info.content_type.clone(),
            http_headers: info.http_headers.clone(),
            user_metadata: info.user_metadata.clone(),
            checksums: sums,
            part_sizes: chosen.iter().map(|(_, m)| m.size).collect(),
            ..Meta::new(key, etag, now_ms)
        };
        let meta = self.publish(bucket, upload, meta, &completion.condition)?;
        let done = CompletedUpload {
            bucket: bucket.to_string(),
            key: key.to_string(),
            etag: meta.etag,
            checksums: meta.checksums,
            checksum_type: algorithm.map(|_| {
                if composite {
                    "COMPOSITE"
                } else {
                    "FULL_OBJECT"
                }
                .to_string()
            }),
            completed_ms: now_ms,
        };
        write_durably(&record, &serde_json::to_vec(&done).expect("serializable"))?;
        self.remove_upload(id)?;
        Ok(done)
    }

    /// Remove uploads older than `expire_after_ms` and completion records older than a day.
    pub fn sweep_multipart(&self, now_ms: i64, expire_after_ms: i64) {
        for u in self.all_uploads() {
            if now_ms - u.initiated_ms > expire_after_ms {
                tracing::info!(
                    bucket = u.bucket,
                    key = u.key,
                    upload_id = u.upload_id,
                    "expiring an abandoned multipart upload"
                );
                let _ = self.remove_upload(&u.upload_id);
            }
        }
        let Ok(records) = fs::read_dir(self.root.join("multipart-done")) else {
            return;
        };
        for r in records.flatten() {
            let expired = fs::read(r.path())
                .ok()
                .and_then(|t| serde_json::from_slice::<CompletedUpload>(&t).ok())
                .is_none_or(|d| now_ms - d.completed_ms > DONE_RECORD_LIFETIME_MS);
            if expired {
                let _ = fs::remove_file(r.path());
            } else if let Some(id) = r.path().file_stem().and_then(|s| s.to_str()) {
                let _ = self.remove_upload(id);
            }
        }
    }

    pub(super) fn all_uploads(&self) -> Vec<MultipartInfo> {
        let Ok(entries) = fs::read_dir(self.root.join("multipart")) else {
            return vec![];
        };
        entries
            .flatten()
            .filter_map(|e| self.read_upload(&e.path()))
            .collect()
    }

    fn read_upload(&self, dir: &std::path::Path) -> Option<MultipartInfo> {
        let text = fs::read(dir.join("upload.json")).ok()?;
        let mut info: MultipartInfo = serde_json::from_slice(&text).ok()?;
        info.upload_id = dir.file_name()?.to_str()?.to_string();
        Some(info)
    }

    pub(super) fn remove_upload(&self, id: &str) -> Result<(), StoreError> {
        let dir = self.upload_dir(id)?;
        match fs::remove_dir_all(&dir) {
            Ok(()) => sync_dir(&self.root.join("multipart")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("remove {}", dir.display()))(e)),
        }
    }

    /// The directory of upload `id`. Ids come from clients: only the form we hand out (32 hex
    /// digits) is accepted, so an id can never name another path.
    fn upload_dir(&self, id: &str) -> Result<PathBuf, StoreError> {
        if id.len() != 32
            || !id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(StoreError::NoSuchUpload);
        }
        Ok(self.root.join("multipart").join(id))
    }

    fn done_record(&self, id: &str) -> PathBuf {
        self.root.join("multipart-done").join(format!("{id}.json"))
    }
}

/// Check the client's part list against what was uploaded, with the errors AWS gives.
fn choose_parts(
    wanted: &[PartRef],
    stored: &BTreeMap<i32, Meta>,
) -> Result<Vec<(i32, Meta)>, StoreError> {
    if wanted.windows(2).any(|w| w[0].number >= w[1].number) {
        return Err(StoreError::InvalidPartOrder);
    }
    let mut chosen = Vec::with_capacity(wanted.len());
    for (i, p) in wanted.iter().enumerate() {
        let not_found = || {
            StoreError::InvalidPart(format!(
                "One or more of the specified parts could not be found. The part may not have \
                 been uploaded, or the specified entity tag may not match the part's entity \
                 tag. (part {})",
                p.number
            ))
        };
        let meta = stored.get(&p.number).ok_or_else(not_found)?;
        if meta.etag != p.etag || checksums::first_mismatch(&p.checksums, &meta.checksums).is_some()
        {
            return Err(not_found());
        }
        if i + 1 < wanted.len() && meta.size < MIN_PART_SIZE {
            return Err(StoreError::EntityTooSmall {
                part: p.number,
                size: meta.size,
            });
        }
        chosen.push((p.number, meta.clone()));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(bucket: &str, key: &str) -> MultipartInfo {
        MultipartInfo {
            bucket: bucket.into(),
            key: key.into(),
            upload_id: String::new(),
            initiated_ms: 1_000,
            content_type: None,
            http_headers: BTreeMap::new(),
            user_metadata: BTreeMap::new(),
            checksum_algorithm: None,
            checksum_type: None,
        }
    }

    fn part(store: &Store, info: &MultipartInfo, n: i32, data: &[u8]) -> PartRef {
        let mut up = store.begin_upload(&info.bucket, 0).unwrap();
        up.write(data).unwrap();
        let etag = hex::encode(Md5::digest(data));
        let meta = Meta::new(&info.key, &etag, 1);
        store.publish_part(info, n, up, meta).unwrap();
        PartRef {
            number: n,
            etag,
            checksums: BTreeMap::new(),
        }
    }

    #[test]
    fn complete_twice_then_records_and_abandoned_uploads_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create_bucket("b", 1).unwrap();
        let up = store.create_multipart(info("b", "k")).unwrap();
        let (a, b) = (vec![1u8; MIN_PART_SIZE as usize], vec![2u8; 10]);
        let parts = vec![part(&store, &up, 1, &a), part(&store, &up, 2, &b)];
        let completion = Completion {
            parts,
            claimed: BTreeMap::new(),
            condition: WriteCondition::Always,
        };
        let first = store
            .complete_multipart("b", "k", &up.upload_id, &completion, 5_000)
            .unwrap();
        assert!(first.etag.ends_with("-2"));
        // Reopened, as after a restart: the retry still gets the first answer.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let again = store
            .complete_multipart("b", "k", &up.upload_id, &completion, 6_000)
            .unwrap();
        assert_eq!(again.etag, first.etag);
        assert!(matches!(
            store.complete_multipart("b", "other", &up.upload_id, &completion, 6_000),
            Err(StoreError::NoSuchUpload)
        ));
        let (file, meta) = store.open_object("b", "k").unwrap();
        assert_eq!(meta.part_sizes, [MIN_PART_SIZE, 10]);
        let content = object_file::read_range(&file, &meta, 0, meta.size).unwrap();
        assert_eq!(content, [a, b].concat());

        let abandoned = store.create_multipart(info("b", "gone")).unwrap();
        part(&store, &abandoned, 1, b"x");
        let day = DONE_RECORD_LIFETIME_MS;
        store.sweep_multipart(2 * day, 7 * day);
        assert_eq!(
            store.list_multipart("b").unwrap().len(),
            1,
            "not expired yet"
        );
        assert!(
            fs::read_dir(dir.path().join("multipart-done"))
                .unwrap()
                .next()
                .is_none(),
            "a day-old completion record is dropped"
        );
        store.sweep_multipart(8 * day, 7 * day);
        assert!(store.list_multipart("b").unwrap().is_empty());
        assert!(matches!(
            store.multipart("b", "gone", &abandoned.upload_id),
            Err(StoreError::NoSuchUpload)
        ));
    }
}
