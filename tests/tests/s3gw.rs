//! The S3 gateway as a process, driven by boto3 with its default configuration, and crashed
//! with kill -9 in the middle of uploads.

use std::time::Duration;

use e2e::S3gw;
use e2e::clients::python;
use e2e::s3gw::{ACCESS_KEY, SECRET_KEY};

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
    let mut loader = Command::new("python3")
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
    // Crash once 40 uploads are acknowledged: more are in flight, some half written.
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
    // At most the uploads in flight at the crash (one, the loop is sequential) may exist
    // without having been acknowledged.
    assert!(
        listed.len() <= acked.len() + 1,
        "{} listed, {} acknowledged",
        listed.len(),
        acked.len()
    );
}
