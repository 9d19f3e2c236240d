//! Who may do what: each access key's bucket grants from the configuration, and what unsigned
//! requests may read. `s3s` calls [`AccessPolicy::check`] for every routed request after the
//! signature is verified (or found absent); copies also need read access to their source.
//!
//! The check is also where the S3 operation's name is first known, so it is recorded here
//! for the per-operation metrics (see [`OperationSlot`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::Credentials;
use s3s::dto::{CopyObjectInput, UploadPartCopyInput};
use s3s::path::S3Path;
use s3s::{S3Request, S3Result, s3_error};

use crate::config::{Access, S3gwConfig};

/// Filled with the S3 operation's name while the request is handled; the HTTP layer puts an
/// empty one in the request's extensions and reads it back for its metrics.
#[derive(Clone, Default)]
pub struct OperationSlot(Arc<OnceLock<String>>);

impl OperationSlot {
    pub fn name(&self) -> &str {
        self.0.get().map_or("Unrouted", String::as_str)
    }
}

/// Bucket name or `prefix*` -> access.
type Grants = BTreeMap<String, Access>;

pub struct AccessPolicy {
    /// Access key -> its grants; `None` for administrators.
    keys: HashMap<String, Option<Grants>>,
    anonymous: Grants,
}

/// What an operation needs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Need {
    /// Bucket creation and deletion, bucket settings.
    Admin,
    /// Any signed request (listing the buckets).
    Signed,
    Read,
    Write,
    /// Probes clients make before reading or writing (HeadBucket, GetBucketLocation).
    ReadOrWrite,
}

fn need(operation: &str) -> Need {
    match operation {
        "ListBuckets" => Need::Signed,
        "HeadBucket" | "GetBucketLocation" => Need::ReadOrWrite,
        "GetObject"
        | "HeadObject"
        | "ListObjects"
        | "ListObjectsV2"
        | "ListObjectVersions"
        | "GetBucketVersioning"
        | "GetBucketAcl"
        | "GetObjectAcl" => Need::Read,
        "PutObject"
        | "DeleteObject"
        | "DeleteObjects"
        | "CopyObject"
        | "CreateMultipartUpload"
        | "UploadPart"
        | "UploadPartCopy"
        | "CompleteMultipartUpload"
        | "AbortMultipartUpload"
        | "ListParts"
        | "ListMultipartUploads" => Need::Write,
        _ => Need::Admin,
    }
}

fn grant(grants: &Grants, bucket: &str) -> Option<Access> {
    if let Some(a) = grants.get(bucket) {
        return Some(*a);
    }
    // The longest matching prefix wins.
    grants
        .iter()
        .filter_map(|(p, a)| {
            let prefix = p.strip_suffix('*')?;
            bucket.starts_with(prefix).then_some((prefix.len(), *a))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, a)| a)
}

fn allowed(need: Need, access: Option<Access>) -> bool {
    match (need, access) {
        (_, None) => false,
        (Need::Read, Some(a)) => a.reads(),
        (Need::Write, Some(a)) => a.writes(),
        (Need::ReadOrWrite, Some(_)) => true,
        (Need::Admin | Need::Signed, Some(_)) => false,
    }
}

fn denied() -> s3s::S3Error {
    s3_error!(AccessDenied, "Access Denied")
}

impl AccessPolicy {
    pub fn new(config: &S3gwConfig) -> AccessPolicy {
        AccessPolicy {
            keys: config
                .credentials
                .iter()
                .map(|c| (c.access_key.clone(), c.buckets.clone()))
                .collect(),
            anonymous: config.anonymous.buckets.clone(),
        }
    }

    fn permits(&self, who: Option<&Credentials>, need: Need, bucket: Option<&str>) -> bool {
        let grants = match who {
            None => Some(&self.anonymous),
            Some(c) => match self.keys.get(&c.access_key) {
                // Unknown keys never get this far (the signature check fails first).
                None => return false,
                Some(None) => return true,
                Some(Some(g)) => Some(g),
            },
        };
        if need == Need::Signed {
            return who.is_some();
        }
        match (grants, bucket) {
            (Some(g), Some(b)) => allowed(need, grant(g, b)),
            _ => false,
        }
    }

    fn check_copy_source(&self, who: Option<&Credentials>, bucket: &str) -> S3Result<()> {
        if self.permits(who, Need::Read, Some(bucket)) {
            Ok(())
        } else {
            Err(denied())
        }
    }
}

#[async_trait::async_trait]
impl S3Access for AccessPolicy {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let operation = cx.s3_op().name().to_string();
        if let Some(slot) = cx.extensions_mut().get::<OperationSlot>() {
            let _ = slot.0.set(operation.clone());
        }
        let bucket = match cx.s3_path() {
            S3Path::Root => None,
            S3Path::Bucket { bucket } | S3Path::Object { bucket, .. } => Some(&**bucket),
        };
        if self.permits(cx.credentials(), need(&operation), bucket) {
            Ok(())
        } else {
            Err(denied())
        }
    }

    async fn copy_object(&self, req: &mut S3Request<CopyObjectInput>) -> S3Result<()> {
        let (bucket, _) = crate::gateway::copy_source(&req.input.copy_source)?;
        self.check_copy_source(req.credentials.as_ref(), &bucket)
    }

    async fn upload_part_copy(&self, req: &mut S3Request<UploadPartCopyInput>) -> S3Result<()> {
        let (bucket, _) = crate::gateway::copy_source(&req.input.copy_source)?;
        self.check_copy_source(req.credentials.as_ref(), &bucket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_by_name_and_longest_prefix() {
        let g: Grants = [
            ("biometrics".to_string(), Access::Write),
            ("branch-*".to_string(), Access::Read),
            ("branch-017-*".to_string(), Access::ReadWrite),
        ]
        .into();
        assert_eq!(grant(&g, "biometrics"), Some(Access::Write));
        assert_eq!(grant(&g, "branch-001-logs"), Some(Access::Read));
        assert_eq!(grant(&g, "branch-017-logs"), Some(Access::ReadWrite));
        assert_eq!(grant(&g, "other"), None);
        assert!(allowed(Need::Write, Some(Access::Write)));
        assert!(!allowed(Need::Read, Some(Access::Write)));
        assert!(allowed(Need::ReadOrWrite, Some(Access::Write)));
        assert!(!allowed(Need::Admin, Some(Access::ReadWrite)));
        assert_eq!(need("UploadPartCopy"), Need::Write);
        assert_eq!(need("PutBucketPolicy"), Need::Admin);
    }
}
