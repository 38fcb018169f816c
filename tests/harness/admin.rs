//! The admin listener's side of the tests: an HTTP GET through hyper's
//! client, and external tools that must exist under `CI=true`.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// GET `url`: status code and body.
pub async fn get(url: &str) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let uri: hyper::Uri = url.parse().expect("URL");
    let resp = tokio::time::timeout(Duration::from_secs(10), client.get(uri))
        .await
        .unwrap_or_else(|_| panic!("GET {url}: no answer within 10 s"))
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// Poll `url` until its status is `code`; the last body.
pub async fn wait_status(url: &str, code: u16, within: Duration, logs: impl Fn() -> String) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (c, body) = get(url).await;
        if c == code {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url}: still {c} {body} after {within:?}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The path of an external program, or why it is missing. Under
/// `CI=true` a missing program fails the test; elsewhere the test says why
/// it did nothing and returns.
pub fn require(program: &str, package: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let why = format!("{program} is not installed (Debian package {package}; .ci/setup installs it)");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true and {why}");
        }
        eprintln!("SKIPPED (not counted as passing): {why}");
    }
    found
}

/// The value of the sample `name{labels}` (labels as written) in an
/// exposition text.
pub fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `/readyz` answers 200 and `pushbridge_adapter_connected` is 1 for
/// `adapter` (of `kind`), within a few seconds.
pub async fn assert_connected(gw: &super::Gateway, adapter: &str, kind: &str) {
    let admin = gw.admin_url();
    wait_status(&format!("{admin}/readyz"), 200, Duration::from_secs(10), || gw.logs()).await;
    let (_, scrape) = get(&format!("{admin}/metrics")).await;
    let gauge = format!("pushbridge_adapter_connected{{adapter=\"{adapter}\",kind=\"{kind}\"}}");
    assert_eq!(sample(&scrape, &gauge), Some(1.0), "{scrape}");
}
