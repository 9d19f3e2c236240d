//! The S3 gateway as a process, driven by boto3 with its default configuration, and crashed
//! with kill -9 in the middle of uploads.

// The expected-answers table of the boto3 API test is one large `json!`.
#![recursion_limit = "256"]

use std::time::Duration;

use e2e::S3gw;
use e2e::clients::python;
use e2e::s3gw::{ACCESS_KEY, SECRET_KEY, WRITER_KEY, WRITER_SECRET};

#[test]
fn boto3_defaults_work_end_to_end() {
    let g = S3gw::start();
    let out = python(
        "s3_boto3.py",
        &[&g.endpoint(), ACCESS_KEY, SECRET_KEY],
        Duration::from_secs(120),
    );
    assert_eq!(out["roundtrip"], true, "{out}");
    assert_eq!(out["etag_matches"], true);
    assert_eq!(out["metadata"]["site"], "17");
    assert_eq!(out["range"], true, "a range across a CRC block boundary");
    assert_eq!(
        out["delimited"]["keys"],
        serde_json::json!([
            "site-17/e0",
            "site-17/e1",
            "site-17/e2",
            "site-17/e3",
            "site-17/e4",
            "site-17/e5",
            "site-17/e6"
        ])
    );
    assert_eq!(
        out["delimited"]["prefixes"],
        serde_json::json!(["site-17/2026/"])
    );
    assert_eq!(out["paged"].as_array().unwrap().len(), 8, "{out}");
    assert_eq!(out["paged"], out["paged_v1"]);
    assert_eq!(out["missing_key"], "NoSuchKey");
    assert_eq!(out["missing_bucket"], "NoSuchBucket");
    assert_eq!(out["presigned_kind"], "v2", "boto3's default presigning");
    assert_eq!(out["presigned_get"], true);
    assert_eq!(out["wrong_secret"], "SignatureDoesNotMatch");
    assert_eq!(out["versioning_status"], serde_json::Value::Null);
    assert_eq!(out["after_delete"], 7);
}

#[test]
fn kill_9_during_uploads_keeps_every_acknowledged_object_and_shows_no_partial_one() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut g = S3gw::start();
    let mut loader = Command::new(e2e::clients::pypi_tool("python3"))
        .arg(e2e::clients::python_script("s3_upload_loop.py"))
        .args([&g.endpoint(), ACCESS_KEY, SECRET_KEY])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the upload loop");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = loader.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Crash once 40 uploads (ten of them multipart) are acknowledged: another is in flight,
    // maybe half written, maybe between its parts or inside its Complete.
    let mut acked: Vec<String> = (0..40)
        .map(|_| {
            rx.recv_timeout(Duration::from_secs(60))
                .expect("uploads are acknowledged")
        })
        .collect();
    g.kill9();
    let _ = loader.wait();
    acked.extend(rx.try_iter());

    g.restart();
    let leftovers = std::fs::read_dir(g.data_dir().join("tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "interrupted uploads left temporary files");
    let out = python(
        "s3_verify.py",
        &[&g.endpoint(), ACCESS_KEY, SECRET_KEY],
        Duration::from_secs(120),
    );
    let listed: Vec<String> = serde_json::from_value(out["listed"].clone()).unwrap();
    for key in &acked {
        assert!(
            listed.contains(key),
            "acknowledged {key} lost after kill -9"
        );
    }
    assert_eq!(
        out["bad"],
        serde_json::json!([]),
        "objects with wrong content are visible"
    );
    assert!(
        out["interrupted_uploads"].as_u64().unwrap() <= 1,
        "one upload at most was in flight: {out}"
    );
    let multipart_left = std::fs::read_dir(g.data_dir().join("multipart"))
        .unwrap()
        .count();
    assert_eq!(
        multipart_left, 0,
        "aborting the interrupted upload reclaims it"
    );
    // At most the uploads in flight at the crash (one, the loop is sequential) may exist
    // without having been acknowledged.
    assert!(
        listed.len() <= acked.len() + 1,
        "{} listed, {} acknowledged",
        listed.len(),
        acked.len()
    );
}

#[test]
fn boto3_multipart_copy_conditions_checksums_presigning_and_grants() {
    let g = S3gw::start();
    let out = python(
        "s3_boto3_api.py",
        &[
            &g.endpoint(),
            ACCESS_KEY,
            SECRET_KEY,
            WRITER_KEY,
            WRITER_SECRET,
        ],
        Duration::from_secs(300),
    );
    let expect = serde_json::json!({
        "transfer_roundtrip": true,
        "transfer_etag_parts": "3",
        "transfer_parts_count": 3,
        "transfer_checksum_type": "COMPOSITE",
        "transfer_has_crc32": true,
        "part_etag_is_md5": true,
        "listed_parts": [[1, 5242880], [2, 5242880], [3, 1024]],
        "parts_page": [2, true, 2],
        "listed_uploads": ["manual"],
        "complete_wrong_order": "InvalidPartOrder",
        "complete_wrong_etag": "InvalidPart",
        "complete_missing_part": "InvalidPart",
        "retried_complete_same_etag": true,
        "multipart_etag": true,
        "manual_roundtrip": true,
        "manual_metadata": [{"site": "17"}, "application/x-scan"],
        "get_part_2": true,
        "list_parts_after_complete": "NoSuchUpload",
        "entity_too_small": "EntityTooSmall",
        "bad_part_number": "InvalidArgument",
        "after_abort": "NoSuchUpload",
        "bogus_upload_id": "NoSuchUpload",
        "copy_keeps_metadata": ["original", {"a": "1"}, "text/plain"],
        "copy_replaces_metadata": {"b": "2"},
        "copy_to_itself": "InvalidRequest",
        "copy_missing": "NoSuchKey",
        "batch_deleted": ["copied", "copy-source", "never-existed"],
        "batch_errors": [],
        "if_none_match_current": "304",
        "if_match_other": "PreconditionFailed",
        "if_match_current": "ok",
        "if_modified_since_future": "304",
        "if_unmodified_since_past": "412",
        "put_if_none_match_existing": "PreconditionFailed",
        "put_if_none_match_new": "ok",
        "copy_if_match_other": "PreconditionFailed",
        "invalid_range": "InvalidRange",
        "sha256_stored": true,
        "default_crc32_stored": true,
        "wrong_crc32": "BadDigest",
        "wrong_md5": "BadDigest",
        "checksum_crc32c": [true, "FULL_OBJECT"],
        "checksum_crc64nvme": [true, "FULL_OBJECT"],
        "checksum_sha1": [true, "FULL_OBJECT"],
        "wrong_crc32c": "BadDigest",
        "wrong_crc64nvme": "BadDigest",
        "wrong_sha1": "BadDigest",
        "invalid_md5": "InvalidDigest",
        "bad_key_absent": "404",
        "chunked_trailer_crc32": true,
        "chunked_roundtrip": true,
        "chunked_encoding_dropped": true,
        "presigned_put_v2": [200, true],
        "presigned_put_v4": [200, true],
        "expired_v2": 403,
        "expired_v4": [403, true],
        "acl": ["FULL_CONTROL"],
        "versions": [["orig", "null", true]],
        "location": null,
        "odd_keys_listed": true,
        "odd_keys_read": true,
        "writer_put": "ok",
        "writer_get": "AccessDenied",
        "writer_list": "AccessDenied",
        "writer_other_bucket": "AccessDenied",
        "writer_create_bucket": "AccessDenied",
        "writer_copy_from_unreadable": "AccessDenied",
        "anonymous_read_firmware": [200, true],
        "anonymous_read_biometrics": [403, true],
        "anonymous_write_firmware": 403,
        "virtual_host_get": true,
        "virtual_host_list": ["vhost/key"],
        "virtual_host_anonymous": [200, true],
    });
    for (k, v) in expect.as_object().unwrap() {
        assert_eq!(&out[k], v, "{k}: {out}");
    }
    // Completed and aborted uploads leave nothing behind.
    let left = std::fs::read_dir(g.data_dir().join("multipart"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "multipart directories left after complete/abort");
    let metrics = e2e::clients::metrics_text(&g.metrics_url());
    for op in [
        "CompleteMultipartUpload",
        "UploadPartCopy",
        "CopyObject",
        "DeleteObjects",
    ] {
        assert!(
            metrics.contains(&format!(
                "s3gw_requests_total{{operation=\"{op}\",status=\"200\"}}"
            )),
            "{op} not counted:\n{metrics}"
        );
    }
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kib * 1024
}

#[test]
fn a_1_gib_object_streams_in_and_out_with_flat_memory() {
    const GIB: u64 = 1 << 30;
    let g = S3gw::start();
    // Not a power of two, so that a chunk served out of order cannot compare equal.
    let pattern: bytes::Bytes = (0..(1 << 20) + 7).map(|i: u32| (i % 251) as u8).collect();
    let client =
        s3_client::S3Client::new(&g.endpoint(), "big", ACCESS_KEY, SECRET_KEY, "us-east-1")
            .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(client.create_bucket()).unwrap();
    let before = peak_rss(g.pid().unwrap());
    rt.block_on(client.put_repeated("one-gib", pattern.clone(), GIB))
        .unwrap();
    let mut offset = 0usize;
    let mut mismatches = 0u64;
    let read = rt
        .block_on(client.get_with("one-gib", |mut chunk| {
            while !chunk.is_empty() {
                let at = offset % pattern.len();
                let n = chunk.len().min(pattern.len() - at);
                if chunk[..n] != pattern[at..at + n] {
                    mismatches += 1;
                }
                offset += n;
                chunk = &chunk[n..];
            }
        }))
        .unwrap();
    assert_eq!((read, mismatches), (GIB, 0), "the object came back whole");
    let after = peak_rss(g.pid().unwrap());
    eprintln!(
        "s3gw peak RSS: {} MiB before, {} MiB after",
        before >> 20,
        after >> 20
    );
    // A buffered body would be 1 GiB; streaming needs a few blocks and socket buffers.
    assert!(
        after < 64 << 20,
        "peak RSS {} MiB after 1 GiB in and out (was {} MiB before)",
        after >> 20,
        before >> 20
    );
}

#[test]
fn signed_chunks_are_verified_skewed_clocks_refused_and_malformed_requests_answered() {
    let g = S3gw::start();
    let out = python(
        "s3_signed_by_hand.py",
        &[&g.endpoint(), ACCESS_KEY, SECRET_KEY],
        Duration::from_secs(60),
    );
    assert_eq!(out["streaming_put"], 200, "{out}");
    assert_eq!(out["streaming_roundtrip"], true);
    assert_eq!(out["tampered_chunk"], serde_json::json!([403, true]));
    assert_eq!(
        out["tampered_absent"], 404,
        "a refused upload leaves no object"
    );
    assert_eq!(out["skewed_clock"], serde_json::json!([403, true]));
    let malformed = |k: &str, status: u16, code: &str| {
        assert_eq!(out[k], serde_json::json!([status, code]), "{k}: {out}");
    };
    malformed("delete_objects_bad_xml", 400, "MalformedXML");
    malformed("complete_bad_xml", 400, "MalformedXML");
    malformed("complete_unknown_upload", 404, "NoSuchUpload");
    malformed("bad_bucket_name", 400, "InvalidBucketName");
    assert_eq!(out["not_http_answer"], "HTTP/1.1 400");
    assert_eq!(
        out["short_body_absent"], 404,
        "a cut-short body is not an object"
    );
    assert_eq!(out["still_serving"], 200);
}

/// Bytes free on the gateway's data disk, as its metrics report them.
fn disk_available(g: &S3gw) -> u64 {
    e2e::clients::metric(&g.metrics_url(), "data_disk_available_bytes")
        .expect("data_disk_available_bytes in the metrics") as u64
}

/// Grow or shrink a file beside the store until `target` bytes are left free on its disk.
fn leave_free(g: &S3gw, target: u64) {
    use std::io::Write;
    let path = g.data_dir().join("filler");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let len = file.metadata().unwrap().len();
    let available = disk_available(g);
    if available > target {
        // Written, not set_len: a sparse file would take no space.
        let zeros = vec![0u8; (available - target) as usize];
        (&file).write_all(&zeros).unwrap();
    } else {
        file.set_len(len.saturating_sub(target - available))
            .unwrap();
    }
    let left = disk_available(g);
    assert!(
        left.abs_diff(target) <= 64 << 10,
        "{left} bytes free, wanted {target}"
    );
}

#[test]
fn a_full_disk_refuses_uploads_with_507_and_loses_nothing() {
    const MIB: usize = 1 << 20;
    let Some(mut g) = S3gw::start_on_small_disk(64, 8) else {
        return;
    };
    let content = |len: usize, seed: u8| -> bytes::Bytes {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    };
    let client =
        s3_client::S3Client::new(&g.endpoint(), "full", ACCESS_KEY, SECRET_KEY, "us-east-1")
            .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let get = |key: &str| {
        let mut body = vec![];
        rt.block_on(client.get_with(key, |c| body.extend_from_slice(c)))
            .map(|_| body)
            .map_err(|e| format!("{e:#}"))
    };
    let insufficient = |e: String| {
        assert!(
            e.contains("507") && e.contains("<Code>InsufficientStorage</Code>"),
            "{e}"
        );
    };
    rt.block_on(client.create_bucket()).unwrap();
    let kept = content(MIB + 3, 1);
    rt.block_on(client.put("kept", kept.clone())).unwrap();

    // The reserve (8 MiB): an upload that would eat into it is refused before it is written.
    leave_free(&g, 10 * MIB as u64);
    insufficient(
        rt.block_on(client.put("too-big", content(4 * MIB, 2)))
            .unwrap_err()
            .to_string(),
    );
    rt.block_on(client.put("fits", content(MIB, 3))).unwrap();

    // Without a reserve, the disk itself runs out in the middle of an upload.
    g.kill9();
    g.set_keep_free_mib(0);
    g.restart();
    leave_free(&g, MIB as u64);
    let before = disk_available(&g);
    insufficient(
        rt.block_on(client.put("overflows", content(2 * MIB, 4)))
            .unwrap_err()
            .to_string(),
    );
    // Nothing of it stays: no object, no temporary file, its space given back.
    let gone = get("overflows").unwrap_err();
    assert!(gone.contains("NoSuchKey"), "{gone}");
    let tmp = std::fs::read_dir(g.data_dir().join("tmp")).unwrap().count();
    assert_eq!(tmp, 0, "temporary files left behind");
    assert!(
        disk_available(&g) >= before,
        "space of the failed upload not freed"
    );

    // What was acknowledged is intact, and uploads work again once there is room.
    assert_eq!(get("kept").unwrap(), kept);
    std::fs::remove_file(g.data_dir().join("filler")).unwrap();
    let overflows = content(2 * MIB, 4);
    rt.block_on(client.put("overflows", overflows.clone()))
        .unwrap();
    assert_eq!(get("overflows").unwrap(), overflows);
    // Both refusals are logged: by the reserve, then by the file system.
    let log = g.log();
    assert!(log.contains("kept in reserve"), "{log}");
    assert!(log.contains("No space left on device"), "{log}");
}
