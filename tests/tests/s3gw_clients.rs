//! The S3 gateway driven by the command-line S3 clients operators and scripts use: awscli
//! (v1, from PyPI), s3cmd and rclone (Debian's). Each uploads a file large enough to go
//! multipart, reads it back whole and by range, lists with delimiters and pages, copies,
//! presigns, deletes, and is refused with a wrong secret.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use e2e::S3gw;
use e2e::clients::run;
use e2e::s3gw::{ACCESS_KEY, SECRET_KEY};

const MIB: usize = 1 << 20;

fn content(len: usize, seed: u64) -> Vec<u8> {
    e2e::clients::noise(seed, len)
}

/// A local tree to upload: one file big enough for multipart, small ones in two levels.
fn local_tree(root: &Path) -> Vec<u8> {
    let big = content(12 * MIB + 4321, 1);
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    for i in 0..3 {
        std::fs::write(root.join(format!("f{i}.txt")), format!("file {i}")).unwrap();
        std::fs::write(root.join(format!("sub/g{i}.txt")), format!("sub file {i}")).unwrap();
    }
    big
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn curl(url: &str) -> Vec<u8> {
    let mut c = Command::new("curl");
    c.args(["-sS", "--fail", url]);
    let out = run(c, None, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "GET {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

struct Aws {
    endpoint: String,
    home: PathBuf,
    secret: String,
}

impl Aws {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(e2e::clients::pypi_tool("aws"));
        c.arg("--endpoint-url")
            .arg(&self.endpoint)
            .args(args)
            .env("HOME", &self.home)
            .env("AWS_CONFIG_FILE", self.home.join("config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", self.home.join("credentials"))
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        ok(
            run(self.cmd(args), None, Duration::from_secs(180)),
            &format!("aws {args:?}"),
        )
    }
}

#[test]
fn awscli() {
    let g = S3gw::start();
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    let big = local_tree(&tree);
    let aws = Aws {
        endpoint: g.endpoint(),
        home: work.path().to_owned(),
        secret: SECRET_KEY.into(),
    };
    aws.ok(&["s3", "mb", "s3://clk"]);
    // 12 MiB: two 8 MiB-chunk parts.
    aws.ok(&[
        "s3",
        "cp",
        tree.join("big.bin").to_str().unwrap(),
        "s3://clk/one/big.bin",
    ]);
    let head: serde_json::Value = serde_json::from_str(&aws.ok(&[
        "s3api",
        "head-object",
        "--bucket",
        "clk",
        "--key",
        "one/big.bin",
    ]))
    .unwrap();
    assert!(head["ETag"].as_str().unwrap().ends_with("-2\""), "{head}");
    let down = work.path().join("down.bin");
    aws.ok(&["s3", "cp", "s3://clk/one/big.bin", down.to_str().unwrap()]);
    assert!(
        std::fs::read(&down).unwrap() == big,
        "downloaded content differs"
    );
    let part = work.path().join("range.bin");
    aws.ok(&[
        "s3api",
        "get-object",
        "--bucket",
        "clk",
        "--key",
        "one/big.bin",
        "--range",
        "bytes=1048000-1049999",
        part.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&part).unwrap() == big[1_048_000..1_050_000]);

    aws.ok(&["s3", "sync", tree.to_str().unwrap(), "s3://clk/tree/"]);
    let ls = aws.ok(&["s3", "ls", "s3://clk/tree/"]);
    assert!(
        ls.contains("PRE sub/") && ls.contains("f2.txt") && !ls.contains("g0.txt"),
        "{ls}"
    );
    let listed: serde_json::Value = serde_json::from_str(&aws.ok(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        "clk",
        "--prefix",
        "tree/",
        "--page-size",
        "2",
    ]))
    .unwrap();
    assert_eq!(listed["Contents"].as_array().unwrap().len(), 7, "{listed}");

    // A server-side copy of a multipart-sized object: awscli copies it with UploadPartCopy.
    aws.ok(&["s3", "cp", "s3://clk/one/big.bin", "s3://clk/two/copy.bin"]);
    assert_eq!(count(&g, "UploadPartCopy"), 2);
    let copy = work.path().join("copy.bin");
    aws.ok(&["s3", "cp", "s3://clk/two/copy.bin", copy.to_str().unwrap()]);
    assert!(std::fs::read(&copy).unwrap() == big, "copy differs");

    let url = aws.ok(&["s3", "presign", "s3://clk/tree/f1.txt"]);
    assert_eq!(curl(url.trim()), b"file 1");

    aws.ok(&["s3", "rm", "--recursive", "s3://clk/tree/"]);
    aws.ok(&[
        "s3api",
        "delete-objects",
        "--bucket",
        "clk",
        "--delete",
        r#"{"Objects":[{"Key":"one/big.bin"},{"Key":"two/copy.bin"}]}"#,
    ]);
    let rest = aws.ok(&["s3", "ls", "--recursive", "s3://clk/"]);
    assert!(rest.trim().is_empty(), "left after deletes: {rest}");
    aws.ok(&["s3", "rb", "s3://clk"]);

    let wrong = Aws {
        secret: "not-the-secret".into(),
        ..aws
    };
    let out = run(wrong.cmd(&["s3", "ls"]), None, Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SignatureDoesNotMatch"));
}

/// Successful requests of one S3 operation so far, from the gateway's metrics.
fn count(g: &S3gw, operation: &str) -> u64 {
    let text = e2e::clients::metrics_text(&g.metrics_url());
    let series = format!("s3gw_requests_total{{operation=\"{operation}\",status=\"200\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn s3cmd_config(dir: &Path, g: &S3gw, secret: &str) -> PathBuf {
    let path = dir.join(format!("s3cfg-{secret}"));
    std::fs::write(
        &path,
        format!(
            "[default]\naccess_key = {ACCESS_KEY}\nsecret_key = {secret}\nhost_base = {0}\n\
             host_bucket = {0}\nuse_https = False\nsignature_v2 = False\n\
             multipart_chunk_size_mb = 5\nbucket_location = us-east-1\n",
            g.s3
        ),
    )
    .unwrap();
    path
}

#[test]
fn s3cmd() {
    let g = S3gw::start();
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    let big = local_tree(&tree);
    let cfg = s3cmd_config(work.path(), &g, SECRET_KEY);
    let s3cmd = |args: &[&str]| {
        let mut c = Command::new("s3cmd");
        c.arg("-c").arg(&cfg).args(args);
        ok(
            run(c, None, Duration::from_secs(180)),
            &format!("s3cmd {args:?}"),
        )
    };
    s3cmd(&["mb", "s3://scmd"]);
    // 12 MiB in 5 MiB parts: three.
    s3cmd(&[
        "put",
        tree.join("big.bin").to_str().unwrap(),
        "s3://scmd/big.bin",
    ]);
    assert_eq!(count(&g, "UploadPart"), 3, "a three-part upload");
    let down = work.path().join("down.bin");
    s3cmd(&[
        "get",
        "--force",
        "s3://scmd/big.bin",
        down.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&down).unwrap() == big);

    s3cmd(&["sync", &format!("{}/", tree.display()), "s3://scmd/tree/"]);
    let ls = s3cmd(&["ls", "s3://scmd/tree/"]);
    assert!(
        ls.contains("DIR") && ls.contains("s3://scmd/tree/sub/") && ls.contains("f0.txt"),
        "{ls}"
    );
    let all = s3cmd(&["ls", "--recursive", "s3://scmd/"]);
    assert_eq!(all.lines().count(), 8, "{all}");

    s3cmd(&["cp", "s3://scmd/tree/f0.txt", "s3://scmd/copy.txt"]);
    let url = s3cmd(&["signurl", "s3://scmd/copy.txt", "+600"]);
    assert_eq!(curl(url.trim()), b"file 0");
    s3cmd(&["del", "--recursive", "--force", "s3://scmd/tree/"]);
    s3cmd(&["del", "s3://scmd/copy.txt", "s3://scmd/big.bin"]);
    s3cmd(&["rb", "s3://scmd"]);

    let wrong = s3cmd_config(work.path(), &g, "not-the-secret");
    let mut c = Command::new("s3cmd");
    c.arg("-c").arg(&wrong).arg("ls");
    let out = run(c, None, Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SignatureDoesNotMatch"));
}

fn rclone(g: &S3gw, dir: &Path, secret: &str, args: &[&str]) -> Output {
    let mut c = Command::new("rclone");
    c.arg("--config")
        .arg(dir.join("rclone.conf"))
        .args([
            "--s3-upload-cutoff",
            "5M",
            "--s3-chunk-size",
            "5M",
            "--low-level-retries",
            "1",
            "--retries",
            "1",
        ])
        .args(args)
        .env("RCLONE_CONFIG_HUB_TYPE", "s3")
        .env("RCLONE_CONFIG_HUB_PROVIDER", "Other")
        .env("RCLONE_CONFIG_HUB_ACCESS_KEY_ID", ACCESS_KEY)
        .env("RCLONE_CONFIG_HUB_SECRET_ACCESS_KEY", secret)
        .env("RCLONE_CONFIG_HUB_ENDPOINT", g.endpoint())
        .env("RCLONE_CONFIG_HUB_FORCE_PATH_STYLE", "true")
        // The AWS SDK inside rclone cannot apply a CA bundle to rclone's own HTTP transport
        // and refuses to start when one is set (some build machines set it for their proxy).
        .env_remove("AWS_CA_BUNDLE");
    run(c, None, Duration::from_secs(180))
}

#[test]
fn rclone_copy_check_cat_link() {
    let g = S3gw::start();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("rclone.conf"), "").unwrap();
    let tree = work.path().join("tree");
    let big = local_tree(&tree);
    let rc = |args: &[&str]| {
        ok(
            rclone(&g, work.path(), SECRET_KEY, args),
            &format!("rclone {args:?}"),
        )
    };
    rc(&["mkdir", "hub:rcl"]);
    rc(&["copy", tree.to_str().unwrap(), "hub:rcl/tree"]);
    // Sizes and MD5s of every file, the multipart one included.
    rc(&["check", tree.to_str().unwrap(), "hub:rcl/tree"]);
    let files = rc(&["lsf", "-R", "hub:rcl"]);
    assert_eq!(files.lines().count(), 9, "{files}"); // 7 files, tree/ and tree/sub/
    let top = rc(&["lsf", "hub:rcl/tree"]);
    assert_eq!(
        top.lines().collect::<Vec<_>>(),
        ["big.bin", "f0.txt", "f1.txt", "f2.txt", "sub/"]
    );
    let slice = rclone(
        &g,
        work.path(),
        SECRET_KEY,
        &[
            "cat",
            "--offset",
            "5000000",
            "--count",
            "100",
            "hub:rcl/tree/big.bin",
        ],
    );
    assert!(slice.status.success());
    assert!(slice.stdout == big[5_000_000..5_000_100]);
    rc(&["copyto", "hub:rcl/tree/f1.txt", "hub:rcl/copy.txt"]);
    let url = rc(&["link", "hub:rcl/copy.txt"]);
    assert_eq!(curl(url.trim()), b"file 1");
    rc(&["purge", "hub:rcl"]);
    let buckets = rc(&["lsd", "hub:"]);
    assert!(!buckets.contains("rcl"), "{buckets}");

    let out = rclone(&g, work.path(), "not-the-secret", &["lsd", "hub:"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SignatureDoesNotMatch"));
}
