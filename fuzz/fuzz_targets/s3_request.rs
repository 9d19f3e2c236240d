//! Arbitrary HTTP requests into the S3 gateway's service (s3s routing, header and XML parsing,
//! SigV4/SigV2 verification, then our handlers on a real store in a temp directory). Input:
//! "METHOD TARGET\n", header lines "name: value\n", a blank line, then the body. Any outcome
//! but a panic or a hang is fine: errors must be S3 errors.

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;

struct World {
    runtime: tokio::runtime::Runtime,
    service: s3s::service::S3Service,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let config: s3gw::S3gwConfig = toml::from_str(&format!(
            "data_dir = {:?}\n[[credentials]]\naccess_key = \"AKFUZZ\"\nsecret_key = \"fuzz-secret-key\"\n",
            dir.path().display().to_string()
        ))
        .unwrap();
        let store = Arc::new(s3gw::store::Store::open(dir.path()).unwrap());
        store.create_bucket("fuzz", 0).unwrap();
        let service = s3gw::server::build_service(store, &config).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        World { runtime, service, _dir: dir }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(req) = parse(data) else { return };
    let w = world();
    let _ = w.runtime.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(5), w.service.call(req))
            .await
            .expect("the service must answer, not hang")
    });
});

fn parse(data: &[u8]) -> Option<http::Request<s3s::Body>> {
    let split = data.windows(2).position(|w| w == b"\n\n")?;
    let (head, body) = (
        std::str::from_utf8(&data[..split]).ok()?,
        &data[split + 2..],
    );
    let mut lines = head.lines();
    let (method, target) = lines.next()?.split_once(' ')?;
    let mut b = http::Request::builder().method(method).uri(target);
    for line in lines {
        let (k, v) = line.split_once(':')?;
        b = b.header(k.trim(), v.trim());
    }
    b.body(s3s::Body::from(body.to_vec())).ok()
}
