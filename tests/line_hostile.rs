//! Hostile line-protocol clients against the real binary: clients that
//! never authenticate, dribble bytes, guess the secret, or flood pipelined
//! long lines over 1,000 connections.

mod harness;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{config_text, Client, Gateway};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The resident set of process `pid`, in bytes (`VmRSS` of `/proc/<pid>/status`).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kb * 1024
}

/// Read until the server closes; everything it said.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out))
        .await
        .expect("closed within 20 s")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn clients_that_never_auth_are_cut_and_a_real_client_gets_in() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        dir.path(),
        &config_text(
            dir.path(),
            "secret = \"s3cret\"\nmax_connections = 20\nauth_timeout = 1",
            "",
        ),
    );
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(&gw.addr).await.unwrap());
    }
    // Every slot is taken: this one waits in the backlog until the silent ones go.
    let started = Instant::now();
    let mut real = gw.client().await;
    assert_eq!(real.cmd("AUTH s3cret").await, "OK");
    assert_eq!(real.cmd("PING").await, "PONG");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(500), "got in after {waited:?}");
    for s in &mut silent {
        assert_eq!(read_to_close(s).await, "ERR auth no AUTH within 1 s\n");
    }
    let (status, logs) = gw.stop_with_logs();
    assert!(status.success());
    assert!(logs.contains("all connection slots in use"), "{logs}");
    let cut = logs
        .lines()
        .filter(|l| l.contains("no AUTH in time") && l.contains("peer=127.0.0.1:"));
    assert_eq!(cut.count(), 20, "{logs}");
}

#[tokio::test]
async fn a_byte_a_second_client_is_cut_after_line_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &config_text(dir.path(), "line_timeout = 2", ""));
    let mut slow = TcpStream::connect(&gw.addr).await.unwrap();
    let started = Instant::now();
    let mut said = String::new();
    let mut buf = [0u8; 256];
    for b in b"MSG bob alice this line never ends".iter().cycle() {
        if slow.write_all(&[*b]).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(250), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => said.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still connected after 10 s"
        );
    }
    said.push_str(&read_to_close(&mut slow).await);
    assert_eq!(said, "ERR timeout line not completed within 2 s\n");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(2), "cut after {elapsed:?}");
    // An ordinary client is not affected.
    let mut c = gw.client().await;
    assert_eq!(c.cmd("PING").await, "PONG");
    let (_, logs) = gw.stop_with_logs();
    assert!(logs.contains("line not completed in time"), "{logs}");
}

#[tokio::test]
async fn wrong_auth_guesses_are_slowed_and_logged_sparingly() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &config_text(dir.path(), "secret = \"s3cret\"", ""));
    let started = Instant::now();
    for i in 0..6 {
        let mut c = gw.client().await;
        assert_eq!(c.cmd(&format!("AUTH guess-{i}")).await, "ERR auth wrong secret");
        assert_eq!(c.line().await, None);
    }
    // Guesses 2..6 waited 100 + 200 + 400 + 800 + 1600 ms.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(3100), "6 guesses took {elapsed:?}");
    // The right secret waits for the address's turn too, then clears it.
    let mut c = gw.client().await;
    let before = Instant::now();
    assert_eq!(c.cmd("AUTH s3cret").await, "OK");
    assert!(
        before.elapsed() >= Duration::from_millis(3000),
        "{:?}",
        before.elapsed()
    );
    let mut c = gw.client().await;
    assert_eq!(c.cmd("AUTH s3cret").await, "OK");
    let (_, logs) = gw.stop_with_logs();
    let warned = logs.lines().filter(|l| l.contains("AUTH failed")).count();
    assert_eq!(warned, 1, "one WARN per 10 s, not one per guess:\n{logs}");
    assert!(logs.contains("count=1"), "{logs}");
}

/// Lines per flooding client, each of 8,000 bytes.
const FLOOD_LINES: usize = 64;
/// The documented ceiling with default settings (README: 200 MB).
const RSS_CEILING: u64 = 200 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_pipelining_clients_stay_under_the_memory_ceiling() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &config_text(dir.path(), "", ""));
    let pid = gw.child.id();
    let peak = Arc::new(AtomicU64::new(rss(pid)));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // 16 lines of 8,000 bytes, written FLOOD_LINES / 16 times by every client.
    let chunk: Arc<[u8]> = {
        let line = format!("MSG bob nobody {}\n", "x".repeat(8000 - 16));
        line.repeat(16).into_bytes().into()
    };
    let mut clients = Vec::new();
    for _ in 0..1000 {
        let stream = TcpStream::connect(&gw.addr).await.unwrap();
        let chunk = chunk.clone();
        clients.push(tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let writer = tokio::spawn(async move {
                for _ in 0..FLOOD_LINES / 16 {
                    w.write_all(&chunk).await.unwrap();
                }
                w
            });
            let mut lines = BufReader::new(r).lines();
            for _ in 0..FLOOD_LINES {
                let reply = tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await;
                assert_eq!(reply.expect("answered").unwrap().as_deref(), Some("OK 0"));
            }
            writer.await.unwrap()
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    eprintln!("peak RSS with 1000 flooding clients: {} MB", peak >> 20);
    assert!(
        peak < RSS_CEILING,
        "peak RSS {} MB over {} MB",
        peak >> 20,
        RSS_CEILING >> 20
    );
    // Still serving.
    let mut c: Client = gw.client().await;
    assert_eq!(c.cmd("PING").await, "PONG");
}
