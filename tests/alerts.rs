//! What the person with the phone sees (issue 15, cases 1–5), end to end:
//! the real binary with `[policy] collapse = true`, the HTTP/2 sink over
//! real TLS to the simulator (header validation as Apple's), and all
//! three adapters — the line protocol over TCP, the IRC bot against a fake
//! IRC server, the XMPP component against a fake XMPP server (both on
//! loopback, speaking the real protocols). Each case checks the request
//! the simulator accepted: headers and payload.

mod harness;

use std::time::Duration;

use harness::apns::{http2_config, Creds};
use harness::{token, Gateway};
use pushbridge::policy::collapse_id;
use pushbridge::simulator::http2::Simulator;
use pushbridge::simulator::Record;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The lines the fake IRC server sends once the bot's registration is
/// done: alice registers her phone (logged in: account tag) and leaves;
/// carol then writes in `#café` and acts in `#chat`, both highlighting her.
fn irc_script(alice: &str) -> String {
    [
        ":srv 001 pushbot :Welcome".to_owned(),
        format!("@account=alice :alice!a@h PRIVMSG pushbot :REGISTER {alice}"),
        ":alice!a@h QUIT :bye".to_owned(),
        ":carol!c@h PRIVMSG #café :alice: ça va?".to_owned(),
        ":carol!c@h PRIVMSG #chat :\x01ACTION waves at alice\x01".to_owned(),
    ]
    .map(|l| l + "\r\n")
    .concat()
}

/// A fake IRC server for one connection: CAP (`account-tag`), welcome,
/// then `script`; keeps reading until the bot goes.
async fn fake_irc(l: TcpListener, script: String) {
    let (s, _) = l.accept().await.unwrap();
    let (rd, mut wr) = s.into_split();
    let mut lines = BufReader::new(rd).lines();
    while let Ok(Some(l)) = lines.next_line().await {
        let answer = if l == "CAP LS 302" {
            ":srv CAP * LS :account-tag message-tags\r\n".to_owned()
        } else if let Some(caps) = l.strip_prefix("CAP REQ :") {
            format!(":srv CAP pushbot ACK :{caps}\r\n")
        } else if l == "CAP END" {
            script.clone()
        } else {
            continue;
        };
        wr.write_all(answer.as_bytes()).await.unwrap();
    }
}

/// A fake XMPP server holding the component's stream.
struct FakeXmpp {
    s: TcpStream,
    seen: String,
}

impl FakeXmpp {
    /// Accept the component and answer its header and handshake.
    async fn accept(l: TcpListener) -> FakeXmpp {
        let (s, _) = l.accept().await.unwrap();
        let mut x = FakeXmpp { s, seen: String::new() };
        x.read_until(0, |s| s.contains("push.localhost")).await;
        x.s.write_all(b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' id='5EC12E7' from='push.localhost'>").await.unwrap();
        x.read_until(0, |s| s.contains("</handshake>")).await;
        x.s.write_all(b"<handshake/>").await.unwrap();
        x
    }

    async fn read_until(&mut self, from: usize, done: impl Fn(&str) -> bool) {
        let mut buf = [0u8; 4096];
        while !done(&self.seen[from..]) {
            let n = tokio::time::timeout(Duration::from_secs(20), self.s.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no answer from the component; got {}", self.seen))
                .unwrap();
            assert!(n > 0, "component closed; got {}", self.seen);
            self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    /// Send the iq `xml` (id `id`) and return the component's whole reply.
    async fn iq(&mut self, id: &str, xml: &str) -> String {
        self.s.write_all(xml.as_bytes()).await.unwrap();
        let from = self.seen.len();
        let id_attr = format!("id=\"{id}\"");
        let whole = |s: &str| {
            s.find(&id_attr).is_some_and(|at| {
                let start = s[..at].rfind("<iq").unwrap_or(0);
                let tail = &s[start..];
                tail.contains("</iq>") || tail.split('>').next().is_some_and(|t| t.ends_with('/'))
            })
        };
        self.read_until(from, whole).await;
        let tail = &self.seen[from..];
        let start = tail[..tail.find(&id_attr).unwrap()].rfind("<iq").unwrap();
        tail[start..].to_owned()
    }

    /// Register `token` for `jid` (a full JID): the node and its secret.
    async fn register(&mut self, jid: &str, token: &str) -> (String, String) {
        let cmd = format!(
            "<iq type='set' id='reg-{token}' from='{jid}' to='push.localhost'><command xmlns='http://jabber.org/protocol/commands' node='register-push-apns' action='execute'><x xmlns='jabber:x:data' type='submit'><field var='token'><value>{token}</value></field><field var='device-id'><value>phone</value></field></x></command></iq>"
        );
        let reply = self.iq(&format!("reg-{token}"), &cmd).await;
        (
            harness::field_value(&reply, "node"),
            harness::field_value(&reply, "secret"),
        )
    }

    /// Publish a notification with the summary `fields` to `node`; the
    /// component's reply must be `result`.
    async fn publish(&mut self, id: &str, node: &(String, String), fields: &[(&str, &str)]) {
        let summary: String = fields
            .iter()
            .map(|(var, v)| format!("<field var='{var}'><value>{v}</value></field>"))
            .collect();
        let xml = format!(
            "<iq type='set' id='{id}' from='example.org' to='push.localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{n}'><item><notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data'><field var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field>{summary}</x></notification></item></publish><publish-options><x xmlns='jabber:x:data'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>{s}</value></field></x></publish-options></pubsub></iq>",
            n = node.0,
            s = node.1,
        );
        let reply = self.iq(id, &xml).await;
        assert!(reply.contains("type=\"result\""), "{reply}");
    }
}

/// Wait for the simulator to accept a request matching `pick`.
async fn accepted(sim: &Simulator, gw: &Gateway, pick: impl Fn(&Record) -> bool) -> Record {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = sim.state().recorder.records().into_iter().find(&pick) {
            return r;
        }
        if std::time::Instant::now() > deadline {
            let seen: Vec<String> = sim
                .state()
                .recorder
                .records()
                .iter()
                .map(|r| format!("{}: {}", &r.device_token[56..], alert(r)["title"]))
                .collect();
            panic!("no such request; accepted (device: title): {seen:?}\n{}", gw.logs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alert(r: &Record) -> &Value {
    &r.payload["aps"]["alert"]
}

/// The body `r` shows: `full` cut between two grapheme clusters, with `…`.
fn cut_whole(r: &Record, full: &str) -> String {
    let body = alert(r)["body"].as_str().unwrap().to_owned();
    let kept = body.strip_suffix('…').unwrap_or_else(|| panic!("not cut: {body:?}"));
    assert!(full.starts_with(kept));
    assert!(
        pushbridge_kit::text::cut_points(full).contains(&kept.len()),
        "cut inside a character at byte {}",
        kept.len()
    );
    kept.to_owned()
}

/// Bodies that end in the middle of a visible character when cut by
/// code points (case 2), each with the byte length of its repeating unit.
fn hard_bodies() -> Vec<(String, usize)> {
    let family = "👨\u{200d}👩\u{200d}👧\u{200d}👦";
    vec![
        ("🇩🇪".repeat(950), 8),
        ("e\u{301}".repeat(2600), 3),
        ("1\u{fe0f}\u{20e3}".repeat(1000), 7),
        (family.repeat(300), family.len()),
        ("שלום עולם مرحبا ".repeat(260), 1),
        ("\"\\\u{1}\t".repeat(2000), 1),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_characters_and_alert_shapes_for_every_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.simulator("127.0.0.1:0", creds.options(false)).await;
    let irc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xmpp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (irc_addr, xmpp_addr) = (irc.local_addr().unwrap(), xmpp.local_addr().unwrap());
    let (line_dev, irc_dev, xmpp_dev, other_dev) = (token(0x11), token(0x12), token(0x13), token(0x14));
    tokio::spawn(fake_irc(irc, irc_script(&irc_dev)));
    let text = format!(
        "{}\n[[adapters.irc]]\nnetwork = \"test\"\nserver = \"{irc_addr}\"\nnick = \"pushbot\"\nchannels = [\"#chat\", \"#café\"]\n\n[[adapters.xmpp]]\nserver = \"{xmpp_addr}\"\ndomain = \"push.localhost\"\nsecret = \"s\"\n",
        http2_config(dir.path(), &creds.token_app(&sim.addr().to_string()), "[policy]\ncollapse = true\n"),
    );
    let gw = Gateway::start(dir.path(), &text);
    let mut x = FakeXmpp::accept(xmpp).await;

    // Case 1, line: a non-ASCII sender is delivered, its collapse id the
    // digest of the conversation; bob's too, with another id.
    let mut c = gw.client().await;
    assert_eq!(c.cmd(&format!("REGISTER alice {line_dev}")).await, "OK");
    assert_eq!(c.cmd("PRESENCE alice away").await, "OK");
    assert_eq!(c.cmd("MSG jürgen alice hallo").await, "OK 1");
    assert_eq!(c.cmd("MSG bob alice hi").await, "OK 1");
    let by_title = |dev: &str, title: &str| {
        let (dev, title) = (dev.to_owned(), title.to_owned());
        move |r: &Record| r.device_token == dev && alert(r)["title"] == title.as_str()
    };
    let r = accepted(&sim, &gw, by_title(&line_dev, "jürgen")).await;
    assert_eq!(r.collapse_id, Some(collapse_id("jürgen")));
    assert_eq!(r.payload["aps"]["thread-id"], "jürgen");
    assert_eq!(alert(&r)["body"], "hallo");
    let r = accepted(&sim, &gw, by_title(&line_dev, "bob")).await;
    assert_eq!(r.collapse_id, Some(collapse_id("bob")));
    assert_ne!(collapse_id("bob"), collapse_id("jürgen"));

    // Case 2, line: long bodies are cut between grapheme clusters.
    for (i, (body, unit)) in hard_bodies().into_iter().enumerate() {
        assert_eq!(c.cmd(&format!("MSG s{i} alice {body}")).await, "OK 1");
        let r = accepted(&sim, &gw, by_title(&line_dev, &format!("s{i}"))).await;
        let kept = cut_whole(&r, &body);
        assert_eq!(kept.len() % unit, 0, "s{i}: {kept:?}");
        assert!(serde_json::to_string(&r.payload).unwrap().len() <= 4096);
    }

    // Case 1 and 3, IRC: `#café` is delivered; an action names its actor.
    let r = accepted(&sim, &gw, by_title(&irc_dev, "carol in #café")).await;
    assert_eq!(r.collapse_id, Some(collapse_id("#café")));
    assert_eq!(alert(&r)["body"], "alice: ça va?");
    let r = accepted(&sim, &gw, by_title(&irc_dev, "carol in #chat")).await;
    assert_eq!(alert(&r)["body"], "* carol waves at alice");
    assert_eq!(r.payload["aps"]["thread-id"], "#chat");

    xmpp_cases(&sim, &gw, &mut x, &xmpp_dev, &other_dev).await;

    // Every request the gateway made was accepted: nothing was refused.
    let want = 2 + hard_bodies().len() + 2 + 4;
    assert_eq!(sim.state().recorder.count(), want as u64);
    let requests = sim.state().requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(requests, want as u64, "{}", gw.logs());
    assert!(gw.stop().success());
}

/// XMPP: case 1 (a non-ASCII sender), case 4 (a group chat keeps its
/// speaker) and case 5 (anonymous: title and body differ, one thread per
/// account).
async fn xmpp_cases(sim: &Simulator, gw: &Gateway, x: &mut FakeXmpp, dev: &str, other_dev: &str) {
    let alice = x.register("alice@example.org/phone", dev).await;
    let carol = x.register("carol@example.net/pad", other_dev).await;
    let sender = |s: &'static str| ("last-message-sender", s);
    x.publish(
        "p1",
        &alice,
        &[sender("jürgen@example.org/phone"), ("last-message-body", "hallo")],
    )
    .await;
    let r = accepted(sim, gw, |r| {
        r.device_token == dev && alert(r)["title"] == "jürgen@example.org"
    })
    .await;
    assert_eq!(r.collapse_id, Some(collapse_id("jürgen@example.org")));
    assert_eq!(alert(&r)["body"], "hallo");

    let room = "room@conference.example.org";
    x.publish(
        "p2",
        &alice,
        &[
            sender("room@conference.example.org/Bob"),
            ("last-message-body", "lunch?"),
        ],
    )
    .await;
    let r = accepted(sim, gw, |r| r.device_token == dev && alert(r)["title"] == "Bob").await;
    assert_eq!(alert(&r)["subtitle"], room);
    assert_eq!(alert(&r)["body"], "lunch?");
    assert_eq!(r.payload["aps"]["thread-id"], room);
    assert_eq!(r.collapse_id, Some(collapse_id(room)));

    x.publish("p3", &alice, &[("message-count", "2")]).await;
    x.publish("p4", &carol, &[]).await;
    let anon = |d: &str| {
        let d = d.to_owned();
        move |r: &Record| r.device_token == d && alert(r).get("subtitle").is_none() && alert(r)["body"] == "New message"
    };
    let a = accepted(sim, gw, anon(dev)).await;
    let c = accepted(sim, gw, anon(other_dev)).await;
    assert_eq!(alert(&a)["title"], "example.org");
    assert_eq!(alert(&c)["title"], "example.net");
    assert_eq!(a.payload["aps"]["thread-id"], "alice@example.org");
    assert_eq!(c.payload["aps"]["thread-id"], "carol@example.net");
    assert_eq!(a.payload["aps"]["badge"], 2);
}
