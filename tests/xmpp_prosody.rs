//! The XMPP adapter against a real Prosody (Debian's `prosody` +
//! `prosody-modules` for mod_cloud_notify) and a real XMPP client
//! (slixmpp, driven by `tests/xmpp/client.py`): registration by ad-hoc
//! command, XEP-0357 enable, a phone-like drop, a push through the HTTP/2
//! simulator, then APNS reporting the device gone and Prosody disabling
//! the node.

mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::apns::{http2_config, Creds};
use harness::{free_port, token, Gateway};
use pushbridge::simulator::http2::Simulator;

const SECRET: &str = "comp-s3cret";

/// Prosody and slixmpp, or why they cannot be used here.
fn peers() -> Result<(PathBuf, PathBuf), String> {
    let prosody = PathBuf::from("/usr/bin/prosody");
    if !prosody.exists() {
        return Err("prosody is not installed (apt-get install prosody prosody-modules; .ci/setup does)".into());
    }
    if !Path::new("/usr/lib/prosody/modules/mod_cloud_notify/mod_cloud_notify.lua").exists() {
        return Err("mod_cloud_notify is missing (apt-get install prosody-modules)".into());
    }
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import slixmpp"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        return Err(format!("{} with slixmpp is missing (run .ci/setup)", python.display()));
    }
    Ok((prosody, python))
}

struct Prosody {
    child: Child,
    config: PathBuf,
    log: PathBuf,
    c2s: u16,
    component: u16,
}

impl Prosody {
    fn start(dir: &Path, prosody: &Path) -> Prosody {
        let (c2s, component) = (free_port(), free_port());
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        let log = dir.join("prosody.log");
        let config = dir.join("prosody.cfg.lua");
        std::fs::write(
            &config,
            format!(
                r#"run_as_root = true
pidfile = "{pid}"
data_path = "{data}"
-- Debug level: the test reads the router's "Received[component]" lines.
log = {{ debug = "{log}" }}
certificates = "{certs}"
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
component_ports = {{ {component} }}
component_interfaces = {{ "127.0.0.1" }}
legacy_ssl_ports = {{ }}
modules_disabled = {{ "s2s" }}
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; "smacks"; "cloud_notify"; "offline" }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
storage = "internal"
push_notification_with_body = true
push_notification_with_sender = true
push_max_errors = 1
smacks_hibernation_time = 600
VirtualHost "localhost"
Component "push.localhost"
    component_secret = "{SECRET}"
"#,
                pid = dir.join("prosody.pid").display(),
                data = data.display(),
                log = log.display(),
                certs = dir.join("certs").display(),
            ),
        )
        .unwrap();
        for (user, pass) in [("alice", "alicepass"), ("bob", "bobpass")] {
            let out = Command::new("prosodyctl")
                .args(["--config"])
                .arg(&config)
                .args(["register", user, "localhost", pass])
                .output()
                .unwrap();
            assert!(out.status.success(), "prosodyctl register {user}: {out:?}");
        }
        let child = Command::new(prosody)
            .args(["-F", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", c2s)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", component)).is_err()
        {
            assert!(Instant::now() < deadline, "prosody did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        Prosody {
            child,
            config,
            log,
            c2s,
            component,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        harness::terminate(&mut self.child);
        let _ = &self.config;
    }
}

fn client(python: &Path, prosody: &Prosody, args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/xmpp/client.py");
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .args(["--port", &prosody.c2s.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool, logs: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{}", logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of a Debug-formatted tracing field (`name="value"`) in a log line.
fn quoted_field(line: &str, name: &str) -> Option<String> {
    let start = line.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = line[start..].find('"')?;
    Some(line[start..start + len].to_owned())
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// What the test runs against: Prosody with alice and bob, pushbridge
/// connected to it as `push.localhost`, and the HTTP/2 APNS simulator.
/// Fields drop in order: pushbridge first, the temporary directory last.
struct World {
    gw: Gateway,
    sim: Simulator,
    _creds: Creds,
    prosody: Prosody,
    python: PathBuf,
    _dir: tempfile::TempDir,
}

impl World {
    /// Start everything and wait for the component link; `None` (the test
    /// is skipped) when Prosody or slixmpp is missing outside CI.
    async fn start() -> Option<World> {
        let (prosody_bin, python) = match peers() {
            Ok(p) => p,
            Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("CI=true and {why}"),
            Err(why) => {
                eprintln!("SKIPPING the Prosody integration test: {why}");
                return None;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let prosody = Prosody::start(dir.path(), &prosody_bin);
        let creds = Creds::new(dir.path());
        let sim = creds.simulator("127.0.0.1:0", creds.options(false)).await;
        let text = format!(
            "{}\n[[adapters.xmpp]]\nserver = \"127.0.0.1:{}\"\ndomain = \"push.localhost\"\nsecret = \"{SECRET}\"\n",
            http2_config(
                dir.path(),
                &creds.token_app(&sim.addr().to_string()),
                "[admin]\nlisten = \"127.0.0.1:0\"\n"
            ),
            prosody.component
        );
        let gw = Gateway::start(dir.path(), &text);
        wait_for(
            "the component link",
            || gw.logs().contains("XMPP component connected"),
            || gw.logs(),
        );
        harness::admin::assert_connected(&gw, "xmpp", "xmpp").await;
        Some(World {
            gw,
            sim,
            _creds: creds,
            prosody,
            python,
            _dir: dir,
        })
    }

    /// alice registers her phone, enables push, and vanishes: her token.
    fn alice_registers_and_enables_push(&self) -> String {
        let alice_token = token(0xa11ce);
        let out = client(
            &self.python,
            &self.prosody,
            &[
                "register-enable",
                "--jid",
                "alice@localhost/phone",
                "--password",
                "alicepass",
                "--component",
                "push.localhost",
                "--token",
                &alice_token,
            ],
        );
        let reg: serde_json::Value = serde_json::from_str(out.trim()).expect("node and secret as JSON");
        assert!(reg["node"].as_str().is_some_and(|n| n.len() >= 16), "{reg}");
        assert!(reg["secret"].as_str().is_some_and(|s| s.len() >= 24), "{reg}");
        alice_token
    }

    /// bob writes `body` to alice.
    fn bob_writes(&self, body: &str) {
        client(
            &self.python,
            &self.prosody,
            &[
                "send",
                "--jid",
                "bob@localhost/pc",
                "--password",
                "bobpass",
                "--to",
                "alice@localhost",
                "--body",
                body,
            ],
        );
    }

    /// bob writes; Prosody publishes to pushbridge; one push reaches APNS.
    async fn first_message_is_pushed(&self, alice_token: &str) {
        self.bob_writes("are you there, alice?");
        assert!(
            self.sim.state().recorder.wait_for(1, Duration::from_secs(20)).await,
            "no push:\n{}\n{}",
            self.gw.logs(),
            self.prosody.log()
        );
        let r = self.sim.state().recorder.records();
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].device_token, alice_token);
        assert_eq!(r[0].payload["aps"]["alert"]["title"], "bob@localhost");
        assert_eq!(r[0].payload["aps"]["alert"]["body"], "are you there, alice?");
    }

    /// Prosody received the iq result for that publish: its router logs
    /// every stanza a component sends (debug level), with the id of the
    /// publish it answers.
    fn prosody_receives_the_publish_result(&self) {
        let gw = &self.gw;
        wait_for(
            "pushbridge to answer the publish",
            || gw.logs().contains("outcome=\"result\""),
            || gw.logs(),
        );
        let logs = gw.logs();
        let id = logs
            .lines()
            .find(|l| l.contains("XEP-0357 publish answered") && l.contains("outcome=\"result\""))
            .and_then(|l| quoted_field(l, "id"))
            .unwrap_or_else(|| panic!("no id in the publish log line:\n{logs}"));
        assert!(!id.is_empty(), "{logs}");
        let prosody = &self.prosody;
        wait_for(
            "Prosody to receive the iq result for the publish",
            || {
                prosody.log().lines().any(|l| {
                    l.contains("Received[component]: <iq ")
                        && l.contains(&format!("id='{id}'"))
                        && l.contains("type='result'")
                        && l.contains("from='push.localhost'")
                        && l.contains("to='localhost'")
                })
            },
            || prosody.log(),
        );
        assert!(!prosody.log().contains("Got error"), "{}", prosody.log());
    }

    /// APNS now says alice's token is gone. The next publish is still taken
    /// (the device is removed when APNS answers 410)… and the one after is
    /// answered item-not-found: Prosody disables push.
    fn a_gone_device_gets_its_node_disabled(&self, alice_token: &str) {
        let (gw, prosody) = (&self.gw, &self.prosody);
        self.sim.state().reject(alice_token, 410, "Unregistered");
        self.bob_writes("second");
        wait_for(
            "the device to be removed",
            || gw.logs().contains("removing it"),
            || format!("{}\n{}", gw.logs(), prosody.log()),
        );
        self.bob_writes("third");
        wait_for(
            "pushbridge to refuse the publish",
            || gw.logs().contains("outcome=\"item-not-found\""),
            || gw.logs(),
        );
        wait_for(
            "Prosody to disable the node",
            || prosody.log().contains("Disabling push notifications for identifier"),
            || prosody.log(),
        );
    }

    /// A fourth message publishes nothing more.
    fn a_disabled_node_gets_no_publish(&self) {
        let answered = count(&self.gw.logs(), "XEP-0357 publish answered");
        self.bob_writes("fourth");
        std::thread::sleep(Duration::from_millis(2500));
        assert_eq!(
            count(&self.gw.logs(), "XEP-0357 publish answered"),
            answered,
            "{}",
            self.gw.logs()
        );
        assert_eq!(self.sim.state().recorder.count(), 1, "no more pushes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_push_register_publish_and_disable() {
    let Some(world) = World::start().await else {
        return;
    };
    let alice_token = world.alice_registers_and_enables_push();
    world.first_message_is_pushed(&alice_token).await;
    world.prosody_receives_the_publish_result();
    world.a_gone_device_gets_its_node_disabled(&alice_token);
    world.a_disabled_node_gets_no_publish();
}
