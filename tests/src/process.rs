//! Starting an appliance binary for a test and waiting for its JSON "ready" log line, which
//! carries the addresses it bound (port 0 in the config: no port races between parallel tests).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The binary did not log its ready line: how it ended (exited on its own, or killed after
/// the timeout); its log says why.
#[derive(Debug)]
pub struct NotReady(pub String);

/// Start `binary --config <config>`, copy its stderr to `log_path`, and wait until `ready`
/// recognises a log line (returning what it extracted). On timeout the child is killed and
/// `Err` carries nothing: the caller reports the log.
pub fn spawn_until_ready<T: Send + 'static>(
    binary: &Path,
    config: &Path,
    log_path: &Path,
    timeout: Duration,
    ready: fn(&serde_json::Value) -> Option<T>,
) -> Result<(Child, T), NotReady> {
    spawn_in_until_ready(None, binary, config, log_path, timeout, ready)
}

/// [`spawn_until_ready`] inside network namespace `netns` (`ip netns exec` replaces itself
/// with the binary: the child is the appliance).
pub fn spawn_in_until_ready<T: Send + 'static>(
    netns: Option<&str>,
    binary: &Path,
    config: &Path,
    log_path: &Path,
    timeout: Duration,
    ready: fn(&serde_json::Value) -> Option<T>,
) -> Result<(Child, T), NotReady> {
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    let mut child = command
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    let log_path = log_path.to_owned();
    std::thread::spawn(move || {
        let mut log = std::fs::File::create(&log_path).expect("log file");
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
            if !sent && let Some(found) = serde_json::from_str(&line).ok().as_ref().and_then(ready)
            {
                let _ = tx.send(found);
                sent = true;
            }
        }
    });
    match rx.recv_timeout(timeout) {
        Ok(found) => Ok((child, found)),
        Err(_) => {
            // How it ended, for the failure message: exited on its own (status), or killed here.
            // (Its stderr closing may come a moment before its exit can be reaped.)
            let deadline = std::time::Instant::now() + Duration::from_secs(1);
            let mut ended = child.try_wait();
            while matches!(ended, Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
                ended = child.try_wait();
            }
            let how = match ended {
                Ok(Some(status)) => format!("it exited on its own: {status}"),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    format!("not ready within {timeout:?}: killed")
                }
            };
            Err(NotReady(how))
        }
    }
}

/// Where run `n` (from 1) of appliance `name` logs, in the test's directory `dir`.
pub fn run_log(dir: &Path, name: &str, n: usize) -> PathBuf {
    dir.join(format!("{name}-{n}.log"))
}

/// Everything the first `starts` runs of `name` logged (see [`run_log`]), in order.
pub fn run_logs(dir: &Path, name: &str, starts: usize) -> String {
    (1..=starts)
        .map(|n| std::fs::read_to_string(run_log(dir, name, n)).unwrap_or_default())
        .collect()
}

/// Crash the child (SIGKILL), if it runs, and reap it.
pub fn kill9(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}
