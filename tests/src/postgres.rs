//! A PostgreSQL server from Debian for a test: the branch database whose outbox an edge
//! gateway reads. initdb refuses to run as root, so the server runs as its own system user
//! (`clk-postgres`, created when missing), in a temporary directory it owns; the test talks
//! to it with psql over TCP (trust authentication, loopback only).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::clients::run;

const USER: &str = "clk-postgres";
const T: Duration = Duration::from_secs(120);

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

impl Postgres {
    /// initdb and start a server with logical decoding on.
    pub fn start() -> Postgres {
        Postgres::start_with(None)
    }

    /// [`Postgres::start`] taking TCP connections over TLS only (`hostssl`), with this
    /// certificate and key.
    pub fn start_with_tls(certificate: &Path, key: &Path) -> Postgres {
        Postgres::start_with(Some((certificate, key)))
    }

    fn start_with(tls: Option<(&Path, &Path)>) -> Postgres {
        let bin = bin_dir();
        ensure_user();
        let dir = tempfile::Builder::new()
            .prefix("postgres-test")
            .tempdir()
            .expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let pg = Postgres { dir, bin, port };
        let mut chown = Command::new("chown");
        chown.args(["-R", USER]).arg(pg.dir.path());
        check(run(chown, None, T), "chown");
        pg.as_user(
            "initdb",
            &[
                "-D",
                &pg.data().display().to_string(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{dir}'\n\
             wal_level = logical\nmax_replication_slots = 4\nmax_wal_senders = 4\n\
             shared_buffers = 16MB\nmax_wal_size = 64MB\nmin_wal_size = 32MB\n",
            dir = pg.dir.path().display()
        );
        if let Some((certificate, key)) = tls {
            for (from, to) in [(certificate, "server.crt"), (key, "server.key")] {
                let to = pg.data().join(to);
                std::fs::copy(from, &to).expect("copy the TLS files");
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod");
            }
            let mut chown = Command::new("chown");
            chown.args(["-R", USER]).arg(pg.data());
            check(run(chown, None, T), "chown");
            conf += "ssl = on\n";
            let hba = "local all all trust\nlocal replication all trust\n\
                       hostssl all all 127.0.0.1/32 trust\nhostssl replication all 127.0.0.1/32 trust\n";
            std::fs::write(pg.data().join("pg_hba.conf"), hba).expect("pg_hba.conf");
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(pg.data().join("postgresql.conf"))
            .expect("postgresql.conf");
        std::io::Write::write_all(&mut f, conf.as_bytes()).expect("write postgresql.conf");
        pg.start_server();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What the edge gateway's `[outbox] connection` says.
    pub fn connection(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    fn as_user(&self, tool: &str, args: &[&str]) -> String {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", USER, "--"])
            .arg(self.bin.join(tool))
            .args(args)
            .current_dir(self.dir.path());
        check(run(cmd, None, T), tool)
    }

    fn start_server(&self) {
        let log = self.dir.path().join("server.log").display().to_string();
        let data = self.data().display().to_string();
        self.as_user(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-t", "60", "start"],
        );
    }

    /// Crash the server as a power cut would (`pg_ctl -m immediate`), then start it again:
    /// it recovers from its WAL, and what was not checkpointed (a slot's advance) is back
    /// where it was.
    pub fn crash_and_restart(&self) {
        let data = self.data().display().to_string();
        self.as_user("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        self.start_server();
    }

    /// Run SQL (statements on stdin, each its own transaction); its output, unaligned.
    pub fn sql(&self, sql: &str) -> String {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
            .args(["-p", &self.port.to_string()])
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"]);
        check(run(cmd, Some(sql.as_bytes()), T), "psql")
            .trim()
            .to_string()
    }

    /// The server's log, for a failing test.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data().display().to_string();
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", USER, "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &data, "-m", "immediate", "stop"]);
        let _ = cmd.output();
    }
}

fn check(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Debian's server binaries (`/usr/lib/postgresql/<version>/bin`), the newest there.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL from Debian (postgresql-15) is installed by scripts/test")
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("a PostgreSQL server under /usr/lib/postgresql")
        .1
}

/// The system user the server runs as.
fn ensure_user() {
    let exists = Command::new("id")
        .arg(USER)
        .output()
        .is_ok_and(|o| o.status.success());
    if !exists {
        let mut cmd = Command::new("useradd");
        cmd.args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            USER,
        ]);
        let out = run(cmd, None, T);
        // Another test may have created it meanwhile.
        let now = Command::new("id")
            .arg(USER)
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            now,
            "useradd {USER} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
