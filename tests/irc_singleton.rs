//! Singleton failover with the real InspIRCd + Atheme setup and a real
//! PostgreSQL: two gateways configured with the same IRC instance share
//! one database; exactly one bot is on the network; when the holder is
//! killed (`kill -9`) the other's bot comes on and pushes the next
//! highlight within 15 s; when a holder stops gracefully, a standing-by
//! gateway takes over. An observer in the channel follows the membership
//! all along (every JOIN/PART/QUIT/NICK, and NAMES polled every 200 ms)
//! and never sees two bots at once.

mod harness;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::admin::{get, sample};
use harness::irc::{create_account, installed, Irc, Net};
use harness::postgres::Backend;
use harness::{token, Gateway};
use tokio_util::sync::CancellationToken;

const CHANNEL: &str = "#chat";

/// The bot's nick (and any fallback nick it may take: `pushbot_`, …).
fn is_bot(nick: &str) -> bool {
    nick.starts_with("pushbot")
}

/// What the observer saw of the bots in the channel.
#[derive(Debug, Default)]
struct Seen {
    /// Bots in the channel now.
    bots: BTreeSet<String>,
    /// The most bots ever in the channel at once.
    max: usize,
    /// Every change: (since the observer started, bots after it, the line).
    changes: Vec<(Duration, usize, String)>,
}

impl Seen {
    fn set(&mut self, bots: BTreeSet<String>, started: Instant, line: &str) {
        if bots != self.bots {
            self.changes.push((started.elapsed(), bots.len(), line.to_owned()));
        }
        self.max = self.max.max(bots.len());
        self.bots = bots;
    }
}

/// The nick of a `:nick!user@host …` line.
fn source(line: &str) -> Option<&str> {
    line.strip_prefix(':')?.split(['!', ' ']).next()
}

/// Follow the channel until `stop`: membership events as they come, and a
/// NAMES snapshot every 200 ms.
async fn observe(mut w: Irc, seen: Arc<Mutex<Seen>>, stop: CancellationToken) {
    let started = Instant::now();
    let mut names = BTreeSet::new();
    let mut last_names = Instant::now() - Duration::from_secs(1);
    while !stop.is_cancelled() {
        if last_names.elapsed() >= Duration::from_millis(200) {
            w.send(&format!("NAMES {CHANNEL}")).await;
            last_names = Instant::now();
        }
        let Some(l) = w.next_line(Duration::from_millis(100)).await else {
            continue;
        };
        let words: Vec<&str> = l.split(' ').collect();
        let mut seen = seen.lock().unwrap();
        let mut bots = seen.bots.clone();
        match words.get(1).copied() {
            Some("353") => {
                let list = l.rsplit(" :").next().unwrap_or_default();
                names.extend(
                    list.split_whitespace()
                        .map(|n| n.trim_start_matches(['@', '+', '%', '~', '&']))
                        .filter(|n| is_bot(n))
                        .map(str::to_owned),
                );
                continue;
            }
            Some("366") => bots = std::mem::take(&mut names),
            Some("JOIN") => bots.extend(source(&l).filter(|n| is_bot(n)).map(str::to_owned)),
            Some("PART") | Some("QUIT") => {
                source(&l).map(|n| bots.remove(n));
            }
            Some("KICK") => {
                words.get(3).map(|n| bots.remove(*n));
            }
            Some("NICK") => {
                if let Some(old) = source(&l).filter(|n| bots.remove(*n)) {
                    let new = words.get(2).unwrap_or(&old).trim_start_matches(':');
                    bots.extend(is_bot(new).then(|| new.to_owned()));
                }
            }
            _ => continue,
        }
        seen.set(bots, started, &l);
    }
    w.quit().await;
}

/// Wait until the observer has seen `n` changes of the bots in the
/// channel, the last one a bot joining.
async fn wait_changes(seen: &Mutex<Seen>, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        {
            let seen = seen.lock().unwrap();
            if seen.changes.len() >= n && seen.bots.len() == 1 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not {n} change(s) within {within:?}: {seen:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until `gw` has pushed a highlight with body `body`.
async fn wait_push(gw: &Gateway, body: &str, deadline: Instant) {
    while pushes_with(gw, body) == 0 {
        assert!(
            Instant::now() < deadline,
            "no push {body:?}: {:?}\n{}",
            gw.pushes(),
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait (up to 30 s) until `gw` has logged `what`.
async fn wait_log(gw: &Gateway, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gw.logs().contains(what) {
        assert!(Instant::now() < deadline, "waiting for {what:?}:\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pushes in `gw`'s record with alert body `body`.
fn pushes_with(gw: &Gateway, body: &str) -> usize {
    gw.pushes()
        .iter()
        .filter(|p| p["payload"]["aps"]["alert"]["body"] == body)
        .count()
}

/// `pushbridge_adapter_standby` of the IRC instance on `gw`.
async fn standby_gauge(gw: &Gateway) -> Option<f64> {
    let (_, scrape) = get(&format!("{}/metrics", gw.admin_url())).await;
    sample(&scrape, r#"pushbridge_adapter_standby{adapter="irc:test",kind="irc"}"#)
}

/// A gateway in a directory of its own on the shared database, with the
/// bot of network `test`.
fn start_gateway(backend: &Backend, dir: &Path, port: u16) -> Gateway {
    std::fs::create_dir_all(dir).unwrap();
    let text = format!(
        "{}\n[[adapters.irc]]\nnetwork = \"test\"\nserver = \"127.0.0.1:{port}\"\nnick = \"pushbot\"\nchannels = [\"{CHANNEL}\"]\nsasl_account = \"pushbot\"\nsasl_password = \"pushbot-pass\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        backend.config(dir, "", "")
    );
    Gateway::start(dir, &text)
}

/// The network, the database, and the observer in the channel.
struct Scene {
    backend: Backend,
    dir: tempfile::TempDir,
    net: Net,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
    observer: tokio::task::JoinHandle<()>,
}

impl Scene {
    /// Start the network and the database, create the accounts, and put
    /// the observer in the channel; `None` when a tool is missing outside CI.
    async fn start() -> Option<Scene> {
        if !installed() {
            return None;
        }
        let backend = Backend::postgres()?;
        let dir = tempfile::tempdir().unwrap();
        let mut net = Net::new(&dir.path().join("net"));
        net.start();
        let port = net.client_port;
        tokio::join!(
            create_account(port, "alice"),
            create_account(port, "bob"),
            create_account(port, "pushbot")
        );
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = CancellationToken::new();
        let mut watcher = Irc::connect(port, "watcher", None).await;
        watcher.join(CHANNEL).await;
        let observer = tokio::spawn(observe(watcher, seen.clone(), stop.clone()));
        Some(Scene {
            backend,
            dir,
            net,
            seen,
            stop,
            observer,
        })
    }

    fn gateway(&self, name: &str) -> Gateway {
        start_gateway(&self.backend, &self.dir.path().join(name), self.net.client_port)
    }

    /// Gateway a takes the lock and its bot joins; b stands by, ready, and
    /// keeps standing by.
    async fn a_holds_b_stands_by(&self) -> (Gateway, Gateway) {
        let a = self.gateway("a");
        wait_log(&a, "singleton lock taken").await;
        wait_changes(&self.seen, 1, Duration::from_secs(20)).await;
        let b = self.gateway("b");
        wait_log(&b, "singleton standing by").await;
        let (code, body) = get(&format!("{}/readyz", b.admin_url())).await;
        assert_eq!(code, 200, "standing by is not a readiness problem: {body}");
        let (_, status) = get(&format!("{}/status", b.admin_url())).await;
        assert!(
            status.contains(r#""standby":"standing by: held by pushbridge singleton"#),
            "{status}"
        );
        assert_eq!(standby_gauge(&a).await, Some(0.0));
        assert_eq!(standby_gauge(&b).await, Some(1.0));
        // The README's query names the holder: a's process.
        let Backend::Postgres(pg) = &self.backend else {
            unreachable!()
        };
        let holders = pg.psql(
            "SELECT a.application_name, a.client_addr FROM pg_locks l JOIN \
             pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory' AND l.granted \
             AND a.application_name LIKE 'pushbridge singleton %';",
        );
        assert_eq!(holders.lines().count(), 1, "{holders}");
        assert!(holders.contains(&format!(":{}|127.0.0.1", a.child.id())), "{holders}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(self.seen.lock().unwrap().changes.len(), 1);
        assert!(!b.logs().contains("registered on the IRC network"), "{}", b.logs());
        (a, b)
    }

    /// alice registers her phone (with a's bot) and leaves; bob highlights
    /// her: a pushes. bob, in the channel, is returned.
    async fn a_pushes_a_highlight(&self, a: &Gateway, alice_token: &str) -> Irc {
        let port = self.net.client_port;
        let mut alice = Irc::connect(port, "alice", Some(("alice", "alice-pass"))).await;
        let answer = alice.ask("pushbot", &format!("REGISTER {alice_token}")).await;
        assert!(answer.contains("registered for account alice"), "{answer}");
        alice.quit().await;
        wait_log(a, "user=irc:test:alice presence=Offline").await;
        let mut bob = Irc::connect(port, "bob", Some(("bob", "bob-pass"))).await;
        bob.join(CHANNEL).await;
        bob.send("PRIVMSG #chat :alice: before the failover").await;
        wait_push(
            a,
            "alice: before the failover",
            Instant::now() + Duration::from_secs(15),
        )
        .await;
        bob
    }

    /// Stop the observer: the bot came (a), went (kill), came (b), went (b
    /// stopped), came (a2) and went (a2 stopped), never two at once.
    async fn never_two_bots(self) {
        self.stop.cancel();
        self.observer.await.unwrap();
        let seen = self.seen.lock().unwrap();
        assert_eq!(seen.max, 1, "two bots at once: {:?}", seen.changes);
        let counts: Vec<usize> = seen.changes.iter().map(|c| c.1).collect();
        assert_eq!(counts, [1, 0, 1, 0, 1, 0], "{:?}", seen.changes);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bot_on_the_network_and_failover_within_seconds() {
    let Some(s) = Scene::start().await else { return };
    let (a, b) = s.a_holds_b_stands_by().await;
    let alice_token = token(0xa11ce);
    let mut bob = s.a_pushes_a_highlight(&a, &alice_token).await;

    // kill -9 the holder: b's bot is on the network and pushes the next
    // highlight within 15 s.
    let killed = Instant::now();
    a.kill();
    wait_changes(&s.seen, 3, Duration::from_secs(15)).await;
    bob.send("PRIVMSG #chat :alice: after the failover").await;
    wait_push(&b, "alice: after the failover", killed + Duration::from_secs(15)).await;
    let failover = killed.elapsed();
    eprintln!("failover: kill -9 to the next highlight pushed by the other gateway in {failover:?}");
    let p = b.pushes();
    let push = p
        .iter()
        .find(|p| p["payload"]["aps"]["alert"]["body"] == "alice: after the failover");
    assert_eq!(
        push.map(|p| p["device_token"].clone()),
        Some(alice_token.as_str().into())
    );
    assert_eq!(standby_gauge(&b).await, Some(0.0));

    // A gateway started again stands by; b stops gracefully: it takes
    // over within a few seconds.
    let a2 = s.gateway("a2");
    wait_log(&a2, "singleton standing by").await;
    let stopped = Instant::now();
    assert!(b.stop().success());
    wait_changes(&s.seen, 5, Duration::from_secs(10)).await;
    let handover = stopped.elapsed();
    eprintln!("graceful handover: SIGTERM to the other's bot in the channel in {handover:?}");
    bob.send("PRIVMSG #chat :alice: after the handover").await;
    wait_push(
        &a2,
        "alice: after the handover",
        Instant::now() + Duration::from_secs(15),
    )
    .await;
    bob.quit().await;
    assert!(a2.stop().success());
    s.never_two_bots().await;
}
