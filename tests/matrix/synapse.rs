//! A real Synapse homeserver for the Matrix tests: `matrix-synapse` from
//! PyPI in the project's `.venv` (installed by `.ci/setup`), started on a
//! free loopback port with SQLite and the config changes PEERS.md lists
//! (loopback pushes allowed, rate limits raised, open registration), and
//! a small client for its client-server API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// The `.venv` python with Synapse, or why it cannot be used.
pub fn python() -> Result<PathBuf, String> {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import synapse.app.homeserver"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        Ok(python)
    } else {
        Err(format!(
            "{} with matrix-synapse is missing (run .ci/setup)",
            python.display()
        ))
    }
}

/// A running Synapse.
pub struct Synapse {
    child: Child,
    pub url: String,
    dir: PathBuf,
}

/// Rate limits high enough for a test.
const LIMIT: &str = "{per_second: 1000, burst_count: 1000}";

impl Synapse {
    /// Generate a config in `dir`, override what a test needs, start it
    /// and wait until it answers.
    pub fn start(python: &Path, dir: &Path) -> Synapse {
        let config = dir.join("homeserver.yaml");
        let out = Command::new(python)
            .args([
                "-m",
                "synapse.app.homeserver",
                "--server-name",
                "localhost",
                "--config-path",
            ])
            .arg(&config)
            .args(["--generate-config", "--report-stats=no"])
            .current_dir(dir)
            .output()
            .expect("run synapse --generate-config");
        assert!(out.status.success(), "synapse --generate-config: {out:?}");
        let port = super::harness::free_port();
        let overrides = dir.join("test.yaml");
        std::fs::write(
            &overrides,
            format!(
                "listeners:\n  - port: {port}\n    bind_addresses: ['127.0.0.1']\n    type: http\n    tls: false\n    x_forwarded: false\n    resources:\n      - names: [client]\n        compress: false\n\
                 ip_range_whitelist: ['127.0.0.1']\ntrusted_key_servers: []\nfederation_domain_whitelist: []\n\
                 suppress_key_server_warning: true\nenable_registration: true\nenable_registration_without_verification: true\n\
                 rc_message: {LIMIT}\nrc_registration: {LIMIT}\n\
                 rc_login: {{address: {LIMIT}, account: {LIMIT}, failed_attempts: {LIMIT}}}\n\
                 rc_joins: {{local: {LIMIT}, remote: {LIMIT}}}\nrc_joins_per_room: {LIMIT}\n\
                 rc_invites: {{per_room: {LIMIT}, per_user: {LIMIT}, per_issuer: {LIMIT}}}\nrc_room_creation: {LIMIT}\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("synapse.out")).unwrap();
        let child = Command::new(python)
            .args(["-m", "synapse.app.homeserver", "--config-path"])
            .arg(&config)
            .arg("--config-path")
            .arg(&overrides)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start synapse");
        let synapse = Synapse {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "synapse did not start:\n{}", synapse.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        synapse
    }

    /// Synapse's own log and its output.
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!("{}\n{}", read("synapse.out"), read("homeserver.log"))
    }

    /// `method path` with an optional access token and JSON body: status
    /// and JSON answer.
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url))
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = req.body(Full::new(bytes::Bytes::from(body))).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer within 30 s"))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Like [`Synapse::call`], and the answer must be 200.
    pub async fn ok(&self, method: &str, path: &str, token: &str, body: Value) -> Value {
        let (status, v) = self.call(method, path, Some(token), Some(body)).await;
        assert_eq!(status, 200, "{method} {path}: {v}\n{}", self.log());
        v
    }

    /// Register `user` (open registration, the `m.login.dummy` step): its
    /// access token.
    pub async fn register(&self, user: &str) -> String {
        let path = "/_matrix/client/v3/register";
        let mut body = json!({"username": user, "password": format!("{user}-pass-123"), "inhibit_login": false});
        let (status, v) = self.call("POST", path, None, Some(body.clone())).await;
        let v = if status == 401 {
            body["auth"] = json!({"type": "m.login.dummy", "session": v["session"]});
            let (status, v) = self.call("POST", path, None, Some(body)).await;
            assert_eq!(status, 200, "register {user}: {v}");
            v
        } else {
            assert_eq!(status, 200, "register {user}: {v}");
            v
        };
        v["access_token"].as_str().expect("an access token").to_owned()
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        super::harness::terminate(&mut self.child);
    }
}
