//! The admin listener against real peers: the real binary with the APNS
//! simulator, a real Prometheus scraping it (Debian's `prometheus`
//! package), `promtool check metrics` on a scrape, `/readyz` following the
//! APNS side going down and up, and `pushbridge status`.

mod harness;

use std::process::{Command, Stdio};
use std::time::Duration;

use harness::admin::{get, require, sample, wait_status};
use harness::apns::{http2_config, Creds};
use harness::{free_port, token, Gateway};

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

/// A real Prometheus scraping `target` every second, storing in `dir`.
struct Prometheus {
    child: std::process::Child,
    url: String,
}

impl Prometheus {
    fn start(program: &std::path::Path, dir: &std::path::Path, target: &str) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: pushbridge\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(program)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The JSON answer of an instant query (`None` before Prometheus is up).
    async fn answer(&self, promql: &str) -> Option<serde_json::Value> {
        let q: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let url = format!("{}/api/v1/query?query={q}", self.url);
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let resp = client.get(url.parse().ok()?).await.ok()?;
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .ok()?
            .to_bytes();
        serde_json::from_slice(&body).ok()
    }

    /// The value of an instant query, once it has one.
    async fn query(&self, promql: &str) -> Option<f64> {
        let v = self.answer(promql).await?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_delivered_counter() {
    let Some(prometheus) = require("prometheus", "prometheus") else {
        return;
    };
    let Some(promtool) = require("promtool", "prometheus") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.simulator("127.0.0.1:0", creds.options(false)).await;
    let text = http2_config(dir.path(), &creds.token_app(&sim.addr().to_string()), ADMIN);
    let gw = Gateway::start(dir.path(), &text);
    let admin = gw.admin_url();
    let prom = Prometheus::start(&prometheus, dir.path(), admin.trim_start_matches("http://"));

    let mut c = gw.client().await;
    assert_eq!(c.cmd(&format!("REGISTER alice {}", token(1))).await, "OK");
    assert_eq!(c.cmd("PRESENCE alice away").await, "OK");
    for i in 0..5 {
        assert_eq!(c.cmd(&format!("MSG bob alice hello {i}")).await, "OK 1");
    }
    assert!(
        sim.state().recorder.wait_for(5, Duration::from_secs(20)).await,
        "{}",
        gw.logs()
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let query = "sum(pushbridge_notifications_delivered_total{app=\"com.example.chat\",protocol=\"http2\"})";
    loop {
        if prom.query(query).await == Some(5.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus never saw 5 delivered (last: {:?}); gateway log:\n{}",
            prom.query(query).await,
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        prom.query("sum(pushbridge_adapter_events_total{kind=\"message\"})")
            .await,
        Some(5.0)
    );

    // The scrape itself passes promtool's lint, without a warning.
    let (code, scrape) = get(&format!("{admin}/metrics")).await;
    assert_eq!(code, 200);
    promtool_passes(&promtool, &scrape);
    dashboard_matches(&scrape, &prom).await;

    // What the scrape says, beyond the counter Prometheus read.
    let app = "{app=\"com.example.chat\"}";
    assert_eq!(
        sample(&scrape, &format!("pushbridge_apns_request_duration_seconds_count{app}")),
        Some(5.0)
    );
    assert_eq!(
        sample(&scrape, &format!("pushbridge_outbox_notifications{app}")),
        None,
        "outbox empty: no row"
    );
    assert!(scrape.contains("\npushbridge_apns_connections{app=\"com.example.chat\",host="));
    assert!(sample(&scrape, "process_resident_memory_bytes").is_some_and(|v| v > 1e6));
    assert!(sample(&scrape, "pushbridge_store_commit_batch_size_count").is_some_and(|v| v >= 1.0));
    assert_eq!(
        sample(
            &scrape,
            "pushbridge_adapter_connections{adapter=\"line\",kind=\"line\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_why_while_apns_is_down_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let text = http2_config(dir.path(), &creds.token_app(&endpoint), ADMIN);
    let gw = Gateway::start(dir.path(), &text);
    let admin = gw.admin_url();
    let logs = || gw.logs();

    // Idle: nothing to send, nothing wrong.
    assert_eq!(get(&format!("{admin}/healthz")).await.0, 200);
    wait_status(&format!("{admin}/readyz"), 200, Duration::from_secs(5), logs).await;

    // A push while nothing listens at the endpoint: not ready, and why.
    let mut c = gw.client().await;
    assert_eq!(c.cmd(&format!("REGISTER alice {}", token(2))).await, "OK");
    assert_eq!(c.cmd("PRESENCE alice away").await, "OK");
    assert_eq!(c.cmd("MSG bob alice are you there").await, "OK 1");
    let body = wait_status(&format!("{admin}/readyz"), 503, Duration::from_secs(10), logs).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], false, "{body}");
    assert_eq!(v["problems"][0]["app"], "com.example.chat", "{body}");
    let error = v["problems"][0]["error"].as_str().unwrap();
    assert!(error.contains(&endpoint) && error.contains("refused"), "{body}");
    assert_eq!(get(&format!("{admin}/healthz")).await.0, 200, "alive while not ready");

    // `pushbridge status` says the same and exits 1.
    let (status, said) = status_until(&admin, "outbox 1,").await;
    assert_eq!(status.status.code(), Some(1), "{said}");
    assert!(said.contains("NOT READY: cannot reach APNS at"), "{said}");
    assert!(said.contains("outbox 1, oldest"), "{said}");

    // APNS comes up: the notification goes out and the gateway is ready.
    let sim = creds.simulator(&endpoint, creds.options(false)).await;
    assert!(
        sim.state().recorder.wait_for(1, Duration::from_secs(60)).await,
        "{}",
        gw.logs()
    );
    wait_status(&format!("{admin}/readyz"), 200, Duration::from_secs(10), logs).await;
    let (status, said) = status_until(&admin, "outbox empty").await;
    assert!(status.status.success(), "{said}");
    assert!(
        said.contains("com.example.chat [http2]: connected (1); outbox empty; delivered 1, rejected 0"),
        "{said}"
    );
    assert!(said.contains("line (line): 1 connection(s)"), "{said}");
}

/// Every metric `deploy/grafana-dashboard.json` queries exists in `scrape`
/// (as a sample or a family), and Prometheus accepts every query.
async fn dashboard_matches(scrape: &str, prom: &Prometheus) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut known = std::collections::BTreeSet::new();
    for line in scrape.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let mut it = t.split(' ');
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            known.insert(name.to_owned());
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    known.insert(format!("{name}{s}"));
                }
            }
        } else if !line.starts_with('#') {
            known.insert(line.split(['{', ' ']).next().unwrap().to_owned());
        }
    }
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            exprs.push(t["expr"].as_str().expect("expr").to_owned());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    for expr in &exprs {
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("pushbridge_") || w.starts_with("process_"))
            .collect();
        assert!(!names.is_empty(), "{expr}");
        for n in names {
            assert!(
                known.contains(n),
                "the dashboard queries {n}, which no scrape has ({expr})"
            );
        }
        let concrete = expr
            .replace("$__rate_interval", "1m")
            .replace("$app", ".*")
            .replace("$job", ".*");
        let answer = prom.answer(&concrete).await.expect("Prometheus answers");
        assert_eq!(answer["status"], "success", "{concrete}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_an_expired_client_certificate_until_a_reload_brings_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.simulator("127.0.0.1:0", creds.options(true)).await;
    // A certificate the simulator trusts, valid for 4 more seconds.
    let now = std::time::SystemTime::now();
    let expires = now + Duration::from_secs(4);
    let (cert, key) = creds
        .pki
        .issue_client_with("com.example.chat", |p| {
            p.not_before = (now - Duration::from_secs(60)).into();
            p.not_after = expires.into();
        })
        .unwrap();
    let pem = dir.path().join("short.pem");
    std::fs::write(&pem, format!("{cert}{key}")).unwrap();
    let app = creds
        .cert_app(&sim.addr().to_string())
        .replace(&creds.client_pem.display().to_string(), &pem.display().to_string());
    let gw = Gateway::start(dir.path(), &http2_config(dir.path(), &app, ADMIN));
    let admin = gw.admin_url();
    let logs = || gw.logs();
    // The warning comes from the sink's start, read from stderr by another
    // thread: wait for it rather than expect it already there.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !gw.logs().contains("client certificate expires on") {
        assert!(std::time::Instant::now() < deadline, "{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_status(&format!("{admin}/readyz"), 200, Duration::from_secs(5), logs).await;

    // Once it has expired: not ready, saying so, and a push waits.
    let left = expires.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(left + Duration::from_secs(1)).await;
    let body = wait_status(&format!("{admin}/readyz"), 503, Duration::from_secs(5), logs).await;
    assert!(body.contains(r#""app":"com.example.chat""#), "{body}");
    assert!(body.contains("client certificate expired on "), "{body}");
    let mut c = gw.client().await;
    assert_eq!(c.cmd(&format!("REGISTER alice {}", token(3))).await, "OK");
    assert_eq!(c.cmd("PRESENCE alice away").await, "OK");
    assert_eq!(c.cmd("MSG bob alice still there?").await, "OK 1");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sim.state().recorder.count(), 0);
    assert_eq!(harness::outbox_len(dir.path()), 1, "held, not dropped");
    let (_, scrape) = get(&format!("{admin}/metrics")).await;
    let expiry = sample(
        &scrape,
        "pushbridge_client_certificate_expiry_timestamp_seconds{app=\"com.example.chat\"}",
    )
    .expect("expiry exported");
    let unix = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as f64;
    assert_eq!(expiry, unix(expires).floor(), "{scrape}");

    // A new certificate in the same file and SIGHUP: delivered, ready.
    std::fs::copy(&creds.client_pem, &pem).unwrap();
    let pid = gw.child.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    assert!(
        sim.state().recorder.wait_for(1, Duration::from_secs(60)).await,
        "{}",
        gw.logs()
    );
    wait_status(&format!("{admin}/readyz"), 200, Duration::from_secs(10), logs).await;
    let (_, scrape) = get(&format!("{admin}/metrics")).await;
    let renewed = sample(
        &scrape,
        "pushbridge_client_certificate_expiry_timestamp_seconds{app=\"com.example.chat\"}",
    )
    .expect("expiry exported");
    assert!(renewed > unix(expires) + 86_400.0, "{scrape}");
}

/// `promtool check metrics` passes `scrape` without a word.
fn promtool_passes(promtool: &std::path::Path, scrape: &str) {
    use std::io::Write;
    let mut lint = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    lint.stdin.take().unwrap().write_all(scrape.as_bytes()).unwrap();
    let out = lint.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{scrape}"
    );
}

/// `pushbridge status --admin URL` until its output contains `want`
/// (outbox numbers may be up to a second old), or 5 s passed.
async fn status_until(admin: &str, want: &str) -> (std::process::Output, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_pushbridge"))
            .args(["status", "--admin", admin])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        if said.contains(want) || std::time::Instant::now() > deadline {
            return (out, said);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
