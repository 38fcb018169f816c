//! Test harness: runs the real `pushbridge` binary on a temporary config,
//! finds the line adapter's port from its log, collects the `log` sink's
//! JSON lines, and talks the line protocol over real TCP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader as StdBufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod admin;
pub mod apns;
pub mod irc;
pub mod postgres;
pub mod sink;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

pub const TOPIC: &str = "com.example.chat";

/// A device token made from a small number.
pub fn token(n: u64) -> String {
    format!("{n:064x}")
}

/// A running gateway process.
pub struct Gateway {
    pub child: Child,
    pub addr: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
    pushes: Arc<Mutex<Vec<Value>>>,
}

/// `listen=ADDR` of a log line.
fn listen_of(line: &str) -> Option<String> {
    let addr = line.split("listen=").nth(1)?;
    Some(addr.split_whitespace().next().unwrap_or("").to_owned())
}

/// The default test config: a log app whose output goes to `pushes.jsonl`
/// in `dir`, the store in `dir`, a line listener on a free port.
pub fn config_text(dir: &Path, extra_line: &str, extra_app: &str) -> String {
    format!(
        "[store]\npath = {db:?}\nsynchronous = \"normal\"\n\n[[apps]]\ntopic = \"{TOPIC}\"\nprotocol = \"log\"\noutput = {out:?}\n{extra_app}\n\n[gateway]\nshutdown_grace = 5\n\n[[adapters.line]]\nlisten = \"127.0.0.1:0\"\n{extra_line}\n",
        db = dir.join("pushbridge.db").display().to_string(),
        out = dir.join("pushes.jsonl").display().to_string(),
    )
}

impl Gateway {
    /// Start on `text` written to `dir/config.toml`.
    pub fn start(dir: &Path, text: &str) -> Gateway {
        let filter = std::env::var("PB_TEST_LOG").unwrap_or_else(|_| "info".into());
        Self::start_with_log(dir, text, &filter)
    }

    /// [`Gateway::start`] with the log filter `filter` (`RUST_LOG` syntax).
    pub fn start_with_log(dir: &Path, text: &str, filter: &str) -> Gateway {
        let config = dir.join("config.toml");
        std::fs::write(&config, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pushbridge"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pushbridge");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let pipe = child.stderr.take().unwrap();
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in StdBufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("line adapter listening") {
                        if let Some(addr) = listen_of(&line) {
                            let _ = tx.send(addr);
                        }
                    }
                    stderr.lock().unwrap().push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "gateway did not start listening:\n{}",
                    stderr.lock().unwrap().join("\n")
                );
            }
        };
        let gw = Gateway {
            child,
            addr,
            dir: dir.to_owned(),
            config,
            stderr,
            pushes: Arc::new(Mutex::new(Vec::new())),
        };
        gw.follow_pushes();
        gw
    }

    /// Tail `pushes.jsonl` into memory.
    fn follow_pushes(&self) {
        let path = self.dir.join("pushes.jsonl");
        let pushes = self.pushes.clone();
        std::thread::spawn(move || {
            let mut offset = 0usize;
            let mut partial = String::new();
            loop {
                if let Ok(data) = std::fs::read(&path) {
                    if data.len() > offset {
                        partial.push_str(std::str::from_utf8(&data[offset..]).unwrap());
                        offset = data.len();
                        while let Some(i) = partial.find('\n') {
                            let line: String = partial.drain(..=i).collect();
                            let v: Value = serde_json::from_str(line.trim()).expect("log sink line is JSON");
                            pushes.lock().unwrap().push(v);
                        }
                    }
                }
                if Arc::strong_count(&pushes) == 1 {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
    }

    /// All pushes seen so far (this process run and earlier ones: the file is appended).
    pub fn pushes(&self) -> Vec<Value> {
        self.pushes.lock().unwrap().clone()
    }

    /// Wait until at least `n` pushes were written.
    pub fn wait_pushes(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let p = self.pushes();
            if p.len() >= n {
                return p;
            }
            assert!(Instant::now() < deadline, "expected {n} pushes, got {}: {p:?}", p.len());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Check that no more than `n` pushes appear within a short while.
    pub fn assert_pushes_stay(&self, n: usize) {
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(self.pushes().len(), n, "unexpected pushes: {:?}", self.pushes());
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// `http://ADDR` of the admin listener (from its log line).
    pub fn admin_url(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let addr = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains("admin listener up"))
                .and_then(|l| listen_of(l));
            if let Some(a) = addr {
                return format!("http://{a}");
            }
            assert!(Instant::now() < deadline, "no admin listener:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.addr).await
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit after SIGTERM:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait, and return the exit status with everything logged.
    pub fn stop_with_logs(self) -> (std::process::ExitStatus, String) {
        let stderr = self.stderr.clone();
        let status = self.stop();
        // The reader thread may still be draining the pipe.
        std::thread::sleep(Duration::from_millis(100));
        let logs = stderr.lock().unwrap().join("\n");
        (status, logs)
    }

    /// A `key=value` number from the last log line containing `marker`.
    pub fn log_number(logs: &str, marker: &str, key: &str) -> Option<u64> {
        let line = logs.lines().rev().find(|l| l.contains(marker))?;
        let v = line.split(&format!("{key}=")).nth(1)?;
        v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    }

    /// SIGKILL and wait.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A line-protocol client.
pub struct Client {
    pub reader: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    pub writer: OwnedWriteHalf,
}

impl Client {
    pub async fn connect(addr: &str) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect to the line adapter");
        let (r, w) = stream.into_split();
        Client {
            reader: BufReader::new(r).lines(),
            writer: w,
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// The next reply line; `None` when the server closed.
    pub async fn line(&mut self) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(20), self.reader.next_line())
            .await
            .expect("reply within 20 s")
            .ok()
            .flatten()
    }

    /// Send one command and read its reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send_raw(format!("{line}\n").as_bytes()).await;
        self.line()
            .await
            .unwrap_or_else(|| panic!("connection closed after {line:?}"))
    }

    /// Send `lines` pipelined in batches; every reply must be `want`.
    pub async fn pipeline(&mut self, lines: &[String], want: &str) {
        for chunk in lines.chunks(200) {
            let mut buf = String::new();
            for l in chunk {
                buf.push_str(l);
                buf.push('\n');
            }
            self.send_raw(buf.as_bytes()).await;
            for l in chunk {
                assert_eq!(self.line().await.as_deref(), Some(want), "reply to {l:?}");
            }
        }
    }
}

/// Notifications waiting in the gateway's outbox (the store in `dir`).
pub fn outbox_len(dir: &Path) -> i64 {
    let db = rusqlite::Connection::open(dir.join("pushbridge.db")).unwrap();
    db.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0)).unwrap()
}

/// Wait until every notification in the outbox has an outcome.
pub async fn wait_outbox_empty(dir: &Path, gw: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while outbox_len(dir) > 0 {
        assert!(
            Instant::now() < deadline,
            "outbox not drained ({} left):\n{}",
            outbox_len(dir),
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run the `pushbridge` command with `args` to its end: (exit success,
/// stdout, stderr).
pub fn pushbridge(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pushbridge"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A loopback port that was free a moment ago (for servers we cannot hand a
/// bound socket).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Stop a server a test started: SIGTERM, up to 5 s to exit, then SIGKILL.
pub fn terminate(child: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The `<value>` of the XEP-0004 form field `var` in `xml` (our writer's
/// quoting).
pub fn field_value(xml: &str, var: &str) -> String {
    let at = xml
        .find(&format!("var=\"{var}\""))
        .unwrap_or_else(|| panic!("no {var} in {xml}"));
    let v = &xml[at..];
    let start = v.find("<value>").unwrap() + "<value>".len();
    v[start..start + v[start..].find("</value>").unwrap()].to_owned()
}
