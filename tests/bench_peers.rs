//! The smoke of the side-by-side benchmark (`bench/peers/run`, README
//! "Benchmark"): the script runs with `SMOKE=1` (a few thousand
//! notifications, one run of each row) against the binary cargo built,
//! into a real nghttpd and the real h2load, with the registry rows of a
//! 1,000-device store (`REGISTRY=1000`), so that it cannot rot. Nothing
//! about speed is judged: every row must be there, with every notification
//! answered (the script fails otherwise) and a rate above zero.
//!
//! Needs nghttpd and h2load (Debian's nghttp2-server, nghttp2-client),
//! openssl, bc and python3; `.ci/setup` installs them. Under
//! `CI=true` a missing one fails the test.

use std::path::Path;
use std::process::Command;

/// Whether `program` is on the PATH; under `CI=true` a missing one fails.
fn require(program: &str, package: &str) -> bool {
    let found =
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()));
    if !found {
        let why = format!("{program} is not installed (Debian package {package}; .ci/setup installs it)");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true and {why}");
        }
        eprintln!("SKIPPED (not counted as passing): {why}");
    }
    found
}

#[test]
fn the_side_by_side_benchmark_runs_every_row() {
    let tools = [
        ("nghttpd", "nghttp2-server"),
        ("h2load", "nghttp2-client"),
        ("openssl", "openssl"),
        ("bc", "bc"),
        ("python3", "python3"),
    ];
    if !tools.iter().all(|(p, pkg)| require(p, pkg)) {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("bench/peers/run"))
        .env("SMOKE", "1")
        .env("REGISTRY", "1000")
        .env("PUSHBRIDGE", env!("CARGO_BIN_EXE_pushbridge"))
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench/peers/run failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for label in [
        "| h2load, 1 connection, 100 streams |",
        "| h2load, 1 connection, 1000 streams |",
        "| h2 crate alone (bench-h2-reference), 1 connection, 100 streams, 1 thread |",
        "| h2 crate alone (bench-h2-reference), 1 connection, 100 streams, 2 tokio workers |",
        "| pushbridge drain, 3000 queued, connections = 1 |",
        "| pushbridge drain, 3000 queued, connections = 2 |",
        "| pushbridge end to end, HTTP/2, synchronous = full |",
        "| pushbridge end to end, paced at 10,000 msg/s |",
        "| pushbridge end to end, binary, synchronous = full |",
        // The registry rows' labels go on with their fill, start-up and
        // RSS figures.
        "| registry 1000 devices (100 users x 10) into nghttpd:",
        "| registry 1000 devices (100 users x 10) into the log sink:",
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no row {label:?} in\n{stdout}\nstderr:\n{stderr}"));
        // The second cell: "<median> (<runs>)".
        let rate: u64 = row
            .split('|')
            .nth(2)
            .and_then(|cell| cell.split_whitespace().next())
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no rate in {row:?}"));
        assert!(rate > 0, "{row}");
    }
}
