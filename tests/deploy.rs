//! `deploy/pushbridge.service` passes `systemd-analyze verify`.
//!
//! verify insists that the `ExecStart` binary exists, and the unit names
//! where an install puts it (`/usr/local/bin/pushbridge`); so a copy is
//! verified with only that path rewritten to the binary cargo just built.
//! Every other line is checked as shipped.

use std::path::Path;
use std::process::Command;

const UNIT: &str = include_str!("../deploy/pushbridge.service");
const INSTALLED: &str = "/usr/local/bin/pushbridge";

fn systemd_analyze() -> Option<std::path::PathBuf> {
    ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .map(Path::to_path_buf)
}

#[test]
fn the_unit_has_what_the_readme_promises() {
    for line in [
        "ExecStart=/usr/local/bin/pushbridge run --config /etc/pushbridge/config.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=pushbridge",
        "StateDirectory=pushbridge",
        "WorkingDirectory=/var/lib/pushbridge",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "Restart=on-failure",
    ] {
        assert!(UNIT.lines().any(|l| l == line), "missing {line:?}");
    }
}

#[test]
fn systemd_analyze_verify_passes() {
    let Some(analyze) = systemd_analyze() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "systemd-analyze is missing (Debian package systemd; .ci/run installs it)"
        );
        eprintln!("systemd-analyze not installed: skipping (CI=true makes this a failure)");
        return;
    };
    assert_eq!(UNIT.matches(INSTALLED).count(), 1, "one ExecStart names the binary");
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("pushbridge.service");
    std::fs::write(&unit, UNIT.replace(INSTALLED, env!("CARGO_BIN_EXE_pushbridge"))).unwrap();
    let out = Command::new(analyze).arg("verify").arg(&unit).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{stderr}");
    // verify warns (exit 0) about unknown keys and bad values: none allowed.
    let own: Vec<&str> = stderr.lines().filter(|l| l.contains("pushbridge.service")).collect();
    assert!(own.is_empty(), "systemd-analyze verify complained:\n{stderr}");

    // And it does fail on a broken unit (this test can fail).
    std::fs::write(
        &unit,
        UNIT.replace("ExecStart=", "ExecStart=relative/")
            .replace(INSTALLED, "x"),
    )
    .unwrap();
    let out = Command::new(systemd_analyze().unwrap())
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a relative ExecStart is refused");
}
