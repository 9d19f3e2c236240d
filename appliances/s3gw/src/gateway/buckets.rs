//! Bucket operations, and the bucket settings this gateway does not have (versioning, ACLs,
//! location) answered the way AWS answers for a plain private bucket, so that applications
//! probing them carry on.

use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use super::{Gateway, blocking, now_ms, timestamp};

/// The one owner every bucket has (access is governed by the configured keys, not ACLs).
pub(super) fn owner() -> Owner {
    Owner {
        display_name: Some("clk".into()),
        id: Some("clk-s3gw".into()),
    }
}

pub(super) async fn list_buckets(
    g: &Gateway,
    _req: S3Request<ListBucketsInput>,
) -> S3Result<S3Response<ListBucketsOutput>> {
    let buckets = g
        .store
        .list_buckets()
        .into_iter()
        .map(|(name, created)| Bucket {
            name: Some(name),
            creation_date: Some(timestamp(created)),
            bucket_region: None,
        })
        .collect();
    #[allow(clippy::needless_update)] // the fuzz build's s3s (`minio` feature) has more fields
    let out = ListBucketsOutput {
        buckets: Some(buckets),
        owner: Some(owner()),
        ..Default::default()
    };
    Ok(S3Response::new(out))
}

pub(super) async fn create_bucket(
    g: &Gateway,
    req: S3Request<CreateBucketInput>,
) -> S3Result<S3Response<CreateBucketOutput>> {
    let store = g.store.clone();
    let bucket = req.input.bucket.clone();
    blocking(move || store.create_bucket(&bucket, now_ms())).await?;
    #[allow(clippy::needless_update)] // the fuzz build's s3s (`minio` feature) has more fields
    let out = CreateBucketOutput {
        location: Some(format!("/{}", req.input.bucket)),
        ..Default::default()
    };
    Ok(S3Response::new(out))
}

fn require_bucket(g: &Gateway, bucket: &str) -> S3Result<()> {
    if g.store.bucket_exists(bucket) {
        Ok(())
    } else {
        Err(s3_error!(NoSuchBucket))
    }
}

pub(super) async fn head_bucket(
    g: &Gateway,
    req: S3Request<HeadBucketInput>,
) -> S3Result<S3Response<HeadBucketOutput>> {
    require_bucket(g, &req.input.bucket)?;
    Ok(S3Response::new(HeadBucketOutput::default()))
}

pub(super) async fn delete_bucket(
    g: &Gateway,
    req: S3Request<DeleteBucketInput>,
) -> S3Result<S3Response<DeleteBucketOutput>> {
    let store = g.store.clone();
    blocking(move || store.delete_bucket(&req.input.bucket)).await?;
    Ok(S3Response::new(DeleteBucketOutput::default()))
}

/// Versioning is never enabled: the empty answer AWS gives for such a bucket.
pub(super) async fn get_bucket_versioning(
    g: &Gateway,
    req: S3Request<GetBucketVersioningInput>,
) -> S3Result<S3Response<GetBucketVersioningOutput>> {
    require_bucket(g, &req.input.bucket)?;
    Ok(S3Response::new(GetBucketVersioningOutput::default()))
}

/// A private bucket: the owner has full control.
pub(super) async fn get_bucket_acl(
    g: &Gateway,
    req: S3Request<GetBucketAclInput>,
) -> S3Result<S3Response<GetBucketAclOutput>> {
    require_bucket(g, &req.input.bucket)?;
    let owner = owner();
    Ok(S3Response::new(GetBucketAclOutput {
        grants: Some(vec![Grant {
            grantee: Some(Grantee {
                display_name: owner.display_name.clone(),
                id: owner.id.clone(),
                type_: Type::from_static(Type::CANONICAL_USER),
                email_address: None,
                uri: None,
            }),
            permission: Some(Permission::from_static(Permission::FULL_CONTROL)),
        }]),
        owner: Some(owner),
    }))
}

/// Every bucket is in the default region (an empty LocationConstraint, as AWS says for
/// us-east-1).
pub(super) async fn get_bucket_location(
    g: &Gateway,
    req: S3Request<GetBucketLocationInput>,
) -> S3Result<S3Response<GetBucketLocationOutput>> {
    require_bucket(g, &req.input.bucket)?;
    Ok(S3Response::new(GetBucketLocationOutput::default()))
}
