//! Running real clients: Debian's kcat and the Python client scenarios in `tests/python`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Run a command with a deadline, feeding `stdin`. If it overruns, it is killed and the test
/// fails with what it printed.
pub fn run(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let pid = Pid::from_raw(child.id() as i32);
    let waiter = std::thread::spawn(move || child.wait_with_output());
    let deadline = Instant::now() + timeout;
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            let _ = kill(pid, Signal::SIGKILL);
            let out = waiter.join().expect("join").expect("wait for child");
            panic!(
                "{what} did not finish within {timeout:?}:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    waiter.join().expect("join").expect("wait for child")
}

/// `kcat` with `args`; panics unless it exits 0.
pub fn kcat(args: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> String {
    let mut cmd = Command::new("kcat");
    cmd.args(args);
    let out = run(cmd, stdin, timeout);
    assert!(
        out.status.success(),
        "kcat {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Every record of `topic` from the beginning, one line per record formatted by kcat's `-f`.
pub fn kcat_consume_all(
    bootstrap: &str,
    topic: &str,
    format: &str,
    timeout: Duration,
) -> Vec<String> {
    let args = [
        "-b",
        bootstrap,
        "-C",
        "-t",
        topic,
        "-o",
        "beginning",
        "-e",
        "-q",
        "-f",
        format,
    ];
    kcat(&args, None, timeout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A command the tests drive from PyPI (`python3`, `aws`): the project's venv (`build/venv`,
/// made by scripts/test) when it exists, else whatever is on PATH.
pub fn pypi_tool(name: &str) -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../build/venv/bin")
        .join(name);
    if venv.exists() {
        venv
    } else {
        PathBuf::from(name)
    }
}

pub fn python_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// Run `tests/python/<script>` and return the JSON object it prints last; panics unless it
/// exits 0.
pub fn python(script: &str, args: &[&str], timeout: Duration) -> serde_json::Value {
    let mut cmd = Command::new(pypi_tool("python3"));
    cmd.arg(python_script(script)).args(args);
    json_result(script, args, run(cmd, None, timeout))
}

/// Run `tests/node/<script>` (npm clients, installed by scripts/test with `npm ci`) and
/// return the JSON object it prints last; panics unless it exits 0.
pub fn node(script: &str, args: &[&str], timeout: Duration) -> serde_json::Value {
    let mut cmd = Command::new("node");
    cmd.current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node"))
        .arg(script)
        .args(args);
    json_result(script, args, run(cmd, None, timeout))
}

/// The JSON object a test client printed last.
fn json_result(script: &str, args: &[&str], out: Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "{script} printed no JSON result:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{script} printed bad JSON ({e}): {last}"))
}

/// The whole text of a Prometheus endpoint.
pub fn metrics_text(url: &str) -> String {
    let Some((host, path)) = url.strip_prefix("http://").and_then(|r| r.split_once('/')) else {
        return String::new();
    };
    let Ok(mut s) = std::net::TcpStream::connect(host) else {
        return String::new();
    };
    let _ = write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    let mut body = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut body);
    body
}

/// A metric's value from a Prometheus text endpoint (`name` with its labels, exactly).
pub fn metric(url: &str, name: &str) -> Option<f64> {
    metrics_text(url)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// `curl` an HTTP JSON API: the status and the answer's JSON (`Null` when it is not JSON),
/// with `body` sent as `application/json`.
pub fn http_json(method: &str, url: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    http_json_with(method, url, body, &[])
}

/// [`http_json`] with extra request headers (`"Authorization: Bearer ..."`).
pub fn http_json_with(
    method: &str,
    url: &str,
    body: Option<&str>,
    headers: &[&str],
) -> (u16, serde_json::Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method, url]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d", b]);
    }
    let out = cmd.output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

/// `curl` a POST of `body` as `content_type`: the status and the answer's JSON (`Null` when
/// it is not JSON).
pub fn http_post(url: &str, content_type: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}"])
        .args(["-H", &format!("Content-Type: {content_type}")])
        .args(["--data-binary", "@-", url]);
    let out = run(cmd, Some(body), Duration::from_secs(90));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

/// Send a Kafka ApiVersions request in plain text to `addr` (a TLS port) and return what
/// comes back before the connection ends: nothing, or a TLS alert (starting with 0x15), never
/// a Kafka answer, is what a TLS listener must give.
pub fn plain_text_answer(addr: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a timeout");
    // ApiVersions v0, correlation 1, client id "t".
    s.write_all(&[0, 0, 0, 11, 0, 18, 0, 0, 0, 0, 0, 1, 0, 1, b't'])
        .expect("write");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    answer
}

/// The HTTP status curl got for `url` (`000` when nothing answered), with `extra` arguments.
pub fn http_status(url: &str, extra: &[&str]) -> String {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ])
    .args(extra)
    .arg(url);
    let out = run(cmd, None, Duration::from_secs(30));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deterministic bytes that do not compress (xorshift from `seed`): bodies, and noise for
/// listeners, that a failure can replay.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
