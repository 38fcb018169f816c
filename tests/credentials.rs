//! Credential diagnostics end to end, with the real binary: `check`, `run`
//! and `push` on certificates and keys made here (rcgen; RSA with the
//! `openssl` tool), and gateways whose credential the APNS simulator
//! refuses at run time (an untrusted client certificate, a provider token
//! signed with another key): nothing is rejected, one ERROR line, and
//! everything goes out once the credential works.

mod harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use harness::apns::{http2_config, Creds};
use harness::{outbox_len, token, wait_outbox_empty, Gateway};
use x509_parser::time::ASN1Time;

const DAY: u64 = 86_400;
const APP: &str = "apps[0] (topic \"com.example.chat\")";

/// Run the binary with `args`; its output once it exits (within 30 s).
fn pushbridge(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pushbridge"))
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("PB_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pushbridge");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pushbridge {args:?} did not exit: {:?}", child.wait_with_output());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A client certificate and its key in one PEM file, the certificate's
/// params changed by `edit`; `key_pem` replaces the key when given (a
/// key that does not belong to it).
fn cert_file(
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut rcgen::CertificateParams),
    key_pem: Option<String>,
) -> PathBuf {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "com.example.chat");
    edit(&mut params);
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("{}{}", cert.pem(), key_pem.unwrap_or_else(|| key.serialize_pem())),
    )
    .unwrap();
    path
}

fn cert_keys(path: &Path) -> String {
    format!(
        "protocol = \"http2\"\nendpoint = \"127.0.0.1:9\"\ncert_file = {:?}\n",
        path.display().to_string()
    )
}

fn token_keys(key_file: &Path, key_id: &str) -> String {
    format!(
        "protocol = \"http2\"\nendpoint = \"127.0.0.1:9\"\nkey_file = {:?}\nkey_id = \"{key_id}\"\nteam_id = \"TEAM123456\"\n",
        key_file.display().to_string()
    )
}

/// An RSA key in PKCS#8 PEM (`BEGIN PRIVATE KEY`), made by openssl.
fn rsa_pkcs8(dir: &Path) -> PathBuf {
    let path = dir.join("rsa.p8");
    let status = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&path)
        .stderr(Stdio::null())
        .status()
        .expect("the openssl tool (Debian package openssl, installed by .ci/setup)");
    assert!(status.success());
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----"));
    path
}

/// App keys with one bad credential each (files in `d`), and the message
/// that must name it.
fn bad_credentials(d: &Path) -> Vec<(String, String)> {
    let other_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let garbage = d.join("garbage.p8");
    std::fs::write(&garbage, "this is not a key\n").unwrap();
    let p384 = d.join("p384.p8");
    let k384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    std::fs::write(&p384, k384.serialize_pem()).unwrap();
    let good_p8 = d.join("good.p8");
    let k256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(&good_p8, k256.serialize_pem()).unwrap();
    let expired = cert_file(
        d,
        "expired.pem",
        |p| p.not_after = rcgen::date_time_ymd(2024, 2, 1),
        None,
    );
    let early = cert_file(
        d,
        "early.pem",
        |p| p.not_before = rcgen::date_time_ymd(2099, 1, 2),
        None,
    );
    let mismatched = cert_file(d, "mismatched.pem", |_| {}, Some(other_key.serialize_pem()));
    let rsa = rsa_pkcs8(d);
    let cases = vec![
        (
            cert_keys(&expired),
            format!(
                "cert_file {}: client certificate expired on 2024-02-01",
                expired.display()
            ),
        ),
        (
            cert_keys(&early),
            format!(
                "cert_file {}: client certificate is not valid before 2099-01-02",
                early.display()
            ),
        ),
        (
            cert_keys(&mismatched),
            format!(
                "cert_file {}: the private key does not belong to the client certificate",
                mismatched.display()
            ),
        ),
        (
            token_keys(&rsa, "KEYID12345"),
            format!("key_file {}: an RSA key;", rsa.display()),
        ),
        (
            token_keys(&garbage, "KEYID12345"),
            format!("key_file {}: not a PEM private key", garbage.display()),
        ),
        (
            token_keys(&p384, "KEYID12345"),
            format!("key_file {}: a P-384 key;", p384.display()),
        ),
        (
            token_keys(&good_p8, "KEYID1234"),
            "key_id \"KEYID1234\" must be the 10-character identifier".to_owned(),
        ),
    ];
    cases
}

#[test]
fn check_and_run_refuse_each_bad_credential_with_the_same_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases = bad_credentials(d);
    assert_eq!(cases.len(), 7);
    for (i, (keys, want)) in cases.iter().enumerate() {
        let case = d.join(format!("case{i}"));
        std::fs::create_dir_all(&case).unwrap();
        let config = case.join("config.toml");
        std::fs::write(&config, http2_config(&case, keys, "")).unwrap();
        let config = config.to_str().unwrap();
        let check = pushbridge(&["check", "--config", config]);
        let err = text(&check.stderr);
        assert!(
            !check.status.success(),
            "check accepted case {i}: {}",
            text(&check.stdout)
        );
        assert!(
            err.contains(APP) && err.contains(want.as_str()),
            "case {i}: want {want:?} in {err}"
        );
        let run = pushbridge(&["run", "--config", config]);
        let run_err = text(&run.stderr);
        assert!(!run.status.success(), "run started with case {i}");
        assert!(
            run_err.contains(APP) && run_err.contains(want.as_str()),
            "case {i}: want {want:?} in {run_err}"
        );
        // The same message, word for word.
        let line = |s: &str| s.lines().find(|l| l.contains(want.as_str())).map(str::to_owned);
        assert_eq!(line(&err), line(&run_err));
    }
}

#[test]
fn a_certificate_expiring_soon_is_a_warning_for_check_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let soon = ASN1Time::now().to_datetime() + Duration::from_secs(12 * DAY + 3600);
    let date = format!("{:04}-{:02}-{:02}", soon.year(), soon.month() as u8, soon.day());
    let cert = cert_file(dir.path(), "soon.pem", |p| p.not_after = soon, None);
    let config = dir.path().join("config.toml");
    let config_text = http2_config(dir.path(), &cert_keys(&cert), "");
    std::fs::write(&config, &config_text).unwrap();
    let check = pushbridge(&["check", "--config", config.to_str().unwrap()]);
    let out = text(&check.stdout);
    assert!(check.status.success(), "{out}{}", text(&check.stderr));
    let want = format!(
        "WARNING: {APP}: cert_file {}: client certificate expires on {date} (in 12 days)",
        cert.display()
    );
    assert!(out.lines().any(|l| l == want), "want {want:?} in:\n{out}");
    // `run` starts, and says so at WARN.
    let gw = Gateway::start(dir.path(), &config_text);
    let (_, logs) = gw.stop_with_logs();
    let warn = logs
        .lines()
        .find(|l| l.contains("credential needs attention"))
        .unwrap_or_else(|| panic!("no warning in:\n{logs}"));
    assert!(
        warn.contains(" WARN ") && warn.contains(&format!("expires on {date}")),
        "{warn}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_names_the_tls_alert_when_apns_refuses_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.simulator("127.0.0.1:0", creds.options(true)).await;
    // Valid, but self-signed: the simulator does not trust its issuer.
    let pem = cert_file(dir.path(), "stranger.pem", |_| {}, None);
    let keys = format!(
        "protocol = \"http2\"\nendpoint = \"{}\"\nca_file = {:?}\ncert_file = {:?}\n",
        sim.addr(),
        creds.ca_file.display().to_string(),
        pem.display().to_string()
    );
    let config = dir.path().join("config.toml");
    std::fs::write(&config, http2_config(dir.path(), &keys, "")).unwrap();
    let config = config.to_str().unwrap().to_owned();
    // Several times: the alert used to lose the race against "broken pipe".
    for _ in 0..5 {
        let config = config.clone();
        let tok = token(7);
        let out = tokio::task::spawn_blocking(move || {
            pushbridge(&["push", "--config", &config, "--token", &tok, "--alert", "hi"])
        })
        .await
        .unwrap();
        let err = text(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains(
                "APNS refused the client certificate: issued by a CA APNS does not trust (TLS alert UnknownCA)"
            ),
            "{err}"
        );
        assert!(!err.contains("broken pipe"), "{err}");
    }
    assert_eq!(sim.state().recorder.count(), 0);
}

/// Send `n` messages to an offline user through `gw`.
async fn send_messages(gw: &Gateway, n: usize) {
    let mut c = gw.client().await;
    assert_eq!(c.cmd(&format!("REGISTER alice {}", token(0xa11ce))).await, "OK");
    assert_eq!(c.cmd("PRESENCE alice away").await, "OK");
    for i in 0..n {
        assert_eq!(c.cmd(&format!("MSG bob alice message {i}")).await, "OK 1");
    }
}

/// Wait until the gateway logged `marker` at least `n` times.
async fn wait_log_count(gw: &Gateway, marker: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while gw.logs().matches(marker).count() < n {
        assert!(
            Instant::now() < deadline,
            "{marker:?} not logged {n} times:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The gateway is refused while it reconnects or retries several times:
/// one ERROR line, nothing rejected, everything still in the outbox.
async fn assert_held(gw: &Gateway, dir: &Path, n: usize, reason: &str) {
    wait_log_count(gw, "credential still refused", 3).await;
    let logs = gw.logs();
    let errors: Vec<&str> = logs.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert_eq!(errors.len(), 1, "one ERROR line:\n{logs}");
    assert!(errors[0].contains("APNS refuses the credential"), "{}", errors[0]);
    assert!(
        errors[0].contains("app=com.example.chat host=127.0.0.1:"),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains(reason), "want {reason:?} in {}", errors[0]);
    assert!(
        !logs.contains("notification rejected") && !logs.contains("expired undelivered"),
        "{logs}"
    );
    assert_eq!(outbox_len(dir), n as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_certificate_holds_notifications_until_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.simulator("127.0.0.1:0", creds.options(true)).await;
    let pem = cert_file(dir.path(), "stranger.pem", |_| {}, None);
    let good = creds.cert_app(&sim.addr().to_string());
    let bad = good.replace(&creds.client_pem.display().to_string(), &pem.display().to_string());
    let gw = Gateway::start_with_log(dir.path(), &http2_config(dir.path(), &bad, ""), "info,pushbridge=debug");
    send_messages(&gw, 3).await;
    assert_held(
        &gw,
        dir.path(),
        3,
        "APNS refused the client certificate: issued by a CA APNS does not trust",
    )
    .await;
    assert_eq!(sim.state().recorder.count(), 0);
    gw.stop();
    assert_eq!(outbox_len(dir.path()), 3, "nothing lost at shutdown");
    // With the certificate the simulator trusts, everything goes out.
    let gw = Gateway::start(dir.path(), &http2_config(dir.path(), &good, ""));
    wait_outbox_empty(dir.path(), &gw).await;
    assert_eq!(sim.state().recorder.count(), 3);
    assert!(gw.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_provider_token_holds_notifications_until_the_right_key() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.simulator("127.0.0.1:0", creds.options(false)).await;
    // A well-formed key the simulator does not know.
    let wrong = dir.path().join("AuthKey_WRONG.p8");
    let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(&wrong, k.serialize_pem()).unwrap();
    let good = creds.token_app(&sim.addr().to_string());
    let bad = good.replace(&creds.p8_file.display().to_string(), &wrong.display().to_string());
    let gw = Gateway::start_with_log(dir.path(), &http2_config(dir.path(), &bad, ""), "info,pushbridge=debug");
    send_messages(&gw, 3).await;
    assert_held(
        &gw,
        dir.path(),
        3,
        "APNS refuses the provider token (InvalidProviderToken): check key_id, team_id and the .p8",
    )
    .await;
    assert_eq!(sim.state().recorder.count(), 0);
    gw.stop();
    assert_eq!(outbox_len(dir.path()), 3, "nothing lost at shutdown");
    let gw = Gateway::start_with_log(dir.path(), &http2_config(dir.path(), &good, ""), "info");
    wait_outbox_empty(dir.path(), &gw).await;
    assert_eq!(sim.state().recorder.count(), 3);
    let (status, logs) = gw.stop_with_logs();
    assert!(status.success(), "{logs}");
    assert!(!logs.contains(" ERROR "), "{logs}");
}
