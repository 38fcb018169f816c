//! A throwaway PostgreSQL cluster per test: `initdb` into a temporary
//! directory (owned by the `postgres` system user and run as it when the
//! tests run as root: `initdb` refuses root), `pg_ctl start` on a free
//! loopback port with its socket in that directory, stopped when dropped.
//! Missing PostgreSQL binaries fail the test under `CI=true` and skip it
//! (saying so) elsewhere. The clusters run with `fsync = off`: tests check
//! behaviour, not durability (the benchmark keeps fsync on).
//!
//! [`Backend`] lets one test body run against SQLite and PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A running throwaway cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    as_postgres: bool,
}

/// `/usr/lib/postgresql/<newest>/bin`, if PostgreSQL's server is installed.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PgCluster {
    /// Start a fresh cluster; `None` (after saying why) when PostgreSQL is
    /// not installed outside CI.
    pub fn start() -> Option<PgCluster> {
        let Some(bin) = bin_dir() else {
            let why = "PostgreSQL is not installed (Debian package postgresql; .ci/setup installs it)";
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true and {why}");
            }
            eprintln!("SKIPPED (not counted as passing): {why}");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = is_root();
        if as_postgres {
            let ok = Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success(), "chown postgres {}", dir.path().display());
        }
        let cluster = PgCluster {
            dir,
            bin,
            port: super::free_port(),
            as_postgres,
        };
        let data = cluster.data();
        cluster.run("initdb", &["-D", &data, "-A", "trust", "-U", "postgres", "-N"]);
        cluster.pg_ctl_start();
        Some(cluster)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Run one of the server binaries (as `postgres` when root); panics
    /// with its output when it fails.
    fn run(&self, program: &str, args: &[&str]) {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?} failed:\n{}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
    }

    fn pg_ctl_start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50 -c shared_buffers=32MB",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-l", &log, "-o", &opts, "-w", "start"]);
    }

    /// The URL a gateway uses.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stop the server at once (`immediate`: a crash, as far as clients see).
    pub fn stop_now(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
    }

    /// Start it again after [`PgCluster::stop_now`], on the same port.
    pub fn restart(&self) {
        self.pg_ctl_start();
    }

    /// One value from `sql` (psql's unaligned output, trimmed).
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-tAc",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Notifications waiting in the outbox.
    pub fn outbox_len(&self) -> i64 {
        self.psql("SELECT count(*) FROM outbox").parse().unwrap()
    }

    /// Wait until `sql` gives `want` (within 30 s).
    pub fn wait_for(&self, sql: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.psql(sql);
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{sql}: {got}, expected {want}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data();
        let exe = self.bin.join("pg_ctl");
        let args = ["-D", data.as_str(), "-m", "immediate", "stop"];
        let _ = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .output()
        } else {
            Command::new(&exe).args(args).output()
        };
    }
}

/// `[store] lease` (seconds) of the tests' PostgreSQL gateways.
pub const TEST_LEASE: u64 = 2;

/// Which store a test's gateways use.
pub enum Backend {
    Sqlite,
    Postgres(PgCluster),
}

impl Backend {
    /// PostgreSQL on a fresh cluster; `None` when it is not installed
    /// (outside CI).
    pub fn postgres() -> Option<Backend> {
        PgCluster::start().map(Backend::Postgres)
    }

    /// [`super::config_text`] with this backend's `[store]`. PostgreSQL's
    /// has `lease = 2` ([`TEST_LEASE`]): a gateway restarted after a
    /// `kill -9` is a new gateway, and takes over its predecessor's
    /// notifications once that one's heartbeat is a lease old.
    pub fn config(&self, dir: &Path, extra_line: &str, extra_app: &str) -> String {
        let text = super::config_text(dir, extra_line, extra_app);
        match self {
            Backend::Sqlite => text,
            Backend::Postgres(pg) => {
                let path_line = format!("path = {:?}\n", dir.join("pushbridge.db").display().to_string());
                text.replace(&path_line, &format!("url = {:?}\nlease = {TEST_LEASE}\n", pg.url()))
            }
        }
    }
}
