//! Who may do what: each access key's bucket grants from the configuration, and what unsigned
//! requests may read. `s3s` calls [`AccessPolicy::check`] for every routed request after the
//! signature is verified (or found absent); copies also need read access to their source.
//!
//! Over HTTPS with a client certificate the connection has a principal (`User:branch-017`,
//! by `[tls] principal_mapping_rules`), and the credential that names that principal gives
//! the grants: an unsigned request gets them, and a signed one must be signed with one of
//! that principal's keys (a key copied from another branch is refused even though its
//! signature is good). A certificate whose principal no credential names gets what
//! anonymous requests get.
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

/// The principal of the connection's client certificate, put in each request's extensions
/// by the HTTP layer (absent or `None`: no certificate).
#[derive(Clone, Default)]
pub struct CertificatePrincipal(pub Option<Arc<str>>);

/// Bucket name or `prefix*` -> access.
type Grants = BTreeMap<String, Access>;

/// What one credential allows; `grants` is `None` for administrators.
struct Holder {
    principal: Option<String>,
    grants: Option<Grants>,
}

pub struct AccessPolicy {
    /// Access key -> its holder.
    keys: HashMap<String, Arc<Holder>>,
    /// Principal -> the credential naming it.
    principals: HashMap<String, Arc<Holder>>,
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

/// Who is asking: the signature's key and the connection's certificate.
#[derive(Clone, Copy)]
struct Caller<'a> {
    signed: Option<&'a Credentials>,
    certificate: Option<&'a str>,
}

impl<'a> Caller<'a> {
    fn new(signed: Option<&'a Credentials>, extensions: &'a hyper::http::Extensions) -> Caller<'a> {
        let certificate = extensions
            .get::<CertificatePrincipal>()
            .and_then(|p| p.0.as_deref());
        Caller {
            signed,
            certificate,
        }
    }
}

impl AccessPolicy {
    pub fn new(config: &S3gwConfig) -> AccessPolicy {
        let mut keys = HashMap::new();
        let mut principals = HashMap::new();
        for c in &config.credentials {
            let holder = Arc::new(Holder {
                principal: c.principal.clone(),
                grants: c.buckets.clone(),
            });
            if let Some(p) = &c.principal {
                principals.insert(p.clone(), Arc::clone(&holder));
            }
            keys.insert(c.access_key.clone(), holder);
        }
        AccessPolicy {
            keys,
            principals,
            anonymous: config.anonymous.buckets.clone(),
        }
    }

    /// The grants `caller` has (`Some(None)`: an administrator), or `None` when refused
    /// whatever the operation.
    fn grants(&self, caller: Caller<'_>) -> Option<Option<&Grants>> {
        let holder = match (caller.signed, caller.certificate) {
            (Some(c), certificate) => {
                // Unknown keys never get this far (the signature check fails first).
                let holder = self.keys.get(&c.access_key)?;
                if certificate.is_some() && holder.principal.as_deref() != certificate {
                    return None;
                }
                holder
            }
            (None, Some(p)) => match self.principals.get(p) {
                Some(holder) => holder,
                None => return Some(Some(&self.anonymous)),
            },
            (None, None) => return Some(Some(&self.anonymous)),
        };
        Some(holder.grants.as_ref())
    }

    fn permits(&self, caller: Caller<'_>, need: Need, bucket: Option<&str>) -> bool {
        let grants = match self.grants(caller) {
            None => return false,
            Some(None) => return true,
            Some(Some(g)) => g,
        };
        if need == Need::Signed {
            return caller.signed.is_some() || caller.certificate.is_some();
        }
        match bucket {
            Some(b) => allowed(need, grant(grants, b)),
            None => false,
        }
    }

    fn check_copy_source(&self, caller: Caller<'_>, bucket: &str) -> S3Result<()> {
        if self.permits(caller, Need::Read, Some(bucket)) {
            Ok(())
        } else {
            Err(denied())
        }
    }
}

/// An unsigned request whose body is aws-chunked (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`, what
/// newer SDKs send to carry a trailing checksum). `s3s` decodes aws-chunked bodies only for
/// signed requests; taken as is, the chunk framing would be stored as the object's bytes.
fn unsigned_chunked(headers: &hyper::HeaderMap) -> bool {
    let streaming = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("STREAMING-"));
    let chunked = headers
        .get_all(hyper::header::CONTENT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|e| e.trim() == "aws-chunked"));
    streaming || chunked
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
        if cx.credentials().is_none() && unsigned_chunked(cx.headers()) {
            return Err(s3_error!(
                InvalidRequest,
                "unsigned aws-chunked bodies are not supported: sign the request, or send a \
                 plain body (boto3: request_checksum_calculation=\"when_required\")"
            ));
        }
        let bucket = bucket.map(str::to_owned);
        let certificate = cx
            .extensions_mut()
            .get::<CertificatePrincipal>()
            .and_then(|p| p.0.clone());
        let caller = Caller {
            signed: cx.credentials(),
            certificate: certificate.as_deref(),
        };
        if self.permits(caller, need(&operation), bucket.as_deref()) {
            Ok(())
        } else {
            Err(denied())
        }
    }

    async fn copy_object(&self, req: &mut S3Request<CopyObjectInput>) -> S3Result<()> {
        let (bucket, _) = crate::gateway::copy_source(&req.input.copy_source)?;
        let caller = Caller::new(req.credentials.as_ref(), &req.extensions);
        self.check_copy_source(caller, &bucket)
    }

    async fn upload_part_copy(&self, req: &mut S3Request<UploadPartCopyInput>) -> S3Result<()> {
        let (bucket, _) = crate::gateway::copy_source(&req.input.copy_source)?;
        let caller = Caller::new(req.credentials.as_ref(), &req.extensions);
        self.check_copy_source(caller, &bucket)
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

    fn policy() -> AccessPolicy {
        let config: S3gwConfig = toml::from_str(
            r#"
            data_dir = "/d"
            [[credentials]]
            access_key = "admin"
            secret_key = "admin-secret"
            principal = "User:admin"
            [[credentials]]
            access_key = "b17"
            secret_key = "b17-secret"
            principal = "User:branch-017"
            buckets = { "branch-017" = "read-write", "biometrics" = "write" }
            [[credentials]]
            access_key = "b18"
            secret_key = "b18-secret"
            principal = "User:branch-018"
            buckets = { "branch-018" = "read-write" }
            [anonymous]
            buckets = { "firmware" = "read" }
            "#,
        )
        .unwrap();
        AccessPolicy::new(&config)
    }

    fn key(k: &str) -> Credentials {
        Credentials {
            access_key: k.into(),
            secret_key: "unused".into(),
        }
    }

    #[test]
    fn a_client_certificate_gets_its_principals_grants_and_only_its_keys() {
        let p = policy();
        let b17 = key("b17");
        let b18 = key("b18");
        let caller = |signed, certificate| Caller {
            signed,
            certificate,
        };
        let cert17 = Some("User:branch-017");
        // Unsigned over the branch's certificate: the branch's grants, no more.
        assert!(p.permits(caller(None, cert17), Need::Write, Some("branch-017")));
        assert!(p.permits(caller(None, cert17), Need::Read, Some("branch-017")));
        assert!(p.permits(caller(None, cert17), Need::Write, Some("biometrics")));
        assert!(!p.permits(caller(None, cert17), Need::Read, Some("biometrics")));
        assert!(!p.permits(caller(None, cert17), Need::Read, Some("branch-018")));
        assert!(!p.permits(caller(None, cert17), Need::Admin, Some("branch-017")));
        assert!(p.permits(caller(None, cert17), Need::Signed, None));
        // Signed with its own key over its certificate: the same.
        assert!(p.permits(caller(Some(&b17), cert17), Need::Write, Some("branch-017")));
        // Another branch's key over this certificate: refused though the key could.
        assert!(!p.permits(caller(Some(&b18), cert17), Need::Write, Some("branch-018")));
        assert!(!p.permits(caller(Some(&b18), cert17), Need::Signed, None));
        // The key alone, without a certificate, keeps its own grants.
        assert!(p.permits(caller(Some(&b18), None), Need::Write, Some("branch-018")));
        // The administrator's certificate administers.
        assert!(p.permits(caller(None, Some("User:admin")), Need::Admin, Some("x")));
        // A certificate no credential names is anonymous.
        let stranger = Some("User:branch-099");
        assert!(p.permits(caller(None, stranger), Need::Read, Some("firmware")));
        assert!(!p.permits(caller(None, stranger), Need::Write, Some("branch-017")));
        assert!(!p.permits(caller(None, None), Need::Signed, None));
    }
}
