//! Conditional requests (RFC 7232 as S3 applies it): If-Match, If-None-Match,
//! If-Modified-Since, If-Unmodified-Since on GET and HEAD, and the x-amz-copy-source-if-*
//! family on copies.

use s3s::dto::{ETagCondition, Timestamp};
use s3s::{S3Result, s3_error};

pub(super) struct Conditions<'a> {
    pub if_match: Option<&'a ETagCondition>,
    pub if_none_match: Option<&'a ETagCondition>,
    pub if_modified_since: Option<&'a Timestamp>,
    pub if_unmodified_since: Option<&'a Timestamp>,
}

fn matches(c: &ETagCondition, etag: &str) -> bool {
    match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == etag,
    }
}

fn seconds(t: &Timestamp) -> i64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp()
}

/// The `x-amz-copy-source-if-*` conditions of a CopyObject or UploadPartCopy input (the
/// fields are named alike in both; s3s gives them no common type).
macro_rules! copy_source_conditions {
    ($input:expr) => {
        $crate::gateway::conditions::Conditions {
            if_match: $input.copy_source_if_match.as_ref(),
            if_none_match: $input.copy_source_if_none_match.as_ref(),
            if_modified_since: $input.copy_source_if_modified_since.as_ref(),
            if_unmodified_since: $input.copy_source_if_unmodified_since.as_ref(),
        }
    };
}
pub(super) use copy_source_conditions;

impl Conditions<'_> {
    /// For GET and HEAD: 412 when If-Match or If-Unmodified-Since fails, 304 when
    /// If-None-Match or If-Modified-Since says the client's copy is current. If-Match
    /// overrides If-Unmodified-Since and If-None-Match overrides If-Modified-Since, as on AWS.
    pub fn check_read(&self, etag: &str, last_modified_ms: i64) -> S3Result<()> {
        let modified = last_modified_ms.div_euclid(1000);
        match (self.if_match, self.if_unmodified_since) {
            (Some(c), _) if !matches(c, etag) => return Err(s3_error!(PreconditionFailed)),
            (None, Some(t)) if modified > seconds(t) => {
                return Err(s3_error!(PreconditionFailed));
            }
            _ => {}
        }
        match (self.if_none_match, self.if_modified_since) {
            (Some(c), _) if matches(c, etag) => Err(s3_error!(NotModified)),
            (None, Some(t)) if modified <= seconds(t) => Err(s3_error!(NotModified)),
            _ => Ok(()),
        }
    }

    /// For copy sources: every failed condition is 412.
    pub fn check_copy_source(&self, etag: &str, last_modified_ms: i64) -> S3Result<()> {
        self.check_read(etag, last_modified_ms).map_err(|e| {
            if *e.code() == s3s::S3ErrorCode::NotModified {
                s3_error!(PreconditionFailed)
            } else {
                e
            }
        })
    }
}

/// The write condition of a PUT or Complete (`If-None-Match: *`, `If-Match: <etag>`).
pub(super) fn write_condition(
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
) -> S3Result<crate::store::WriteCondition> {
    use crate::store::WriteCondition;
    match (if_match, if_none_match) {
        (None, None) => Ok(WriteCondition::Always),
        (None, Some(ETagCondition::Any)) => Ok(WriteCondition::IfAbsent),
        (Some(ETagCondition::ETag(e)), None) => Ok(WriteCondition::IfEtag(e.value().to_string())),
        (Some(ETagCondition::Any), None) => Err(s3_error!(
            NotImplemented,
            "If-Match: * is not supported on writes"
        )),
        (None, Some(ETagCondition::ETag(_))) => Err(s3_error!(
            NotImplemented,
            "If-None-Match on writes only takes *"
        )),
        (Some(_), Some(_)) => Err(s3_error!(
            InvalidRequest,
            "If-Match and If-None-Match cannot both be given"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3s::dto::ETag;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from(time::OffsetDateTime::from_unix_timestamp(secs).unwrap())
    }

    #[test]
    fn rfc7232_precedence() {
        let etag = "abc";
        let lm = 1_000_500; // ms: second 1000
        let yes = ETagCondition::ETag(ETag::Strong("abc".into()));
        let no = ETagCondition::ETag(ETag::Strong("zzz".into()));
        let (before, at) = (ts(999), ts(1000));
        let c = |m, n, ms, us| Conditions {
            if_match: m,
            if_none_match: n,
            if_modified_since: ms,
            if_unmodified_since: us,
        };
        let code = |r: S3Result<()>| r.err().map(|e| e.code().as_str().to_string());
        assert_eq!(code(c(None, None, None, None).check_read(etag, lm)), None);
        assert_eq!(
            code(c(Some(&no), None, None, None).check_read(etag, lm)).as_deref(),
            Some("PreconditionFailed")
        );
        // If-Match true wins over a failing If-Unmodified-Since.
        assert_eq!(
            code(c(Some(&yes), None, None, Some(&before)).check_read(etag, lm)),
            None
        );
        assert_eq!(
            code(c(None, None, None, Some(&before)).check_read(etag, lm)).as_deref(),
            Some("PreconditionFailed")
        );
        assert_eq!(
            code(c(None, Some(&yes), None, None).check_read(etag, lm)).as_deref(),
            Some("NotModified")
        );
        // If-None-Match false wins over If-Modified-Since saying "not modified".
        assert_eq!(
            code(c(None, Some(&no), Some(&at), None).check_read(etag, lm)),
            None
        );
        assert_eq!(
            code(c(None, None, Some(&at), None).check_read(etag, lm)).as_deref(),
            Some("NotModified")
        );
        assert_eq!(
            code(c(None, None, Some(&before), None).check_read(etag, lm)),
            None
        );
        assert_eq!(
            code(c(None, Some(&yes), None, None).check_copy_source(etag, lm)).as_deref(),
            Some("PreconditionFailed")
        );
    }
}
