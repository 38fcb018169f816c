//! Secrets never leave the process: the real binary at `RUST_LOG=trace`
//! through a session of every adapter a test can drive without external
//! servers — the line protocol with a secret, the IRC bot against a fake
//! IRC server on loopback (SASL PLAIN, a REGISTER from a logged-in user, a
//! refused one, channel text), the XMPP component against a fake XMPP
//! server (handshake, a registration command, a publish with a message
//! body and the node's secret), a Matrix notify (a pushkey, message text,
//! a malformed pushkey) — then the whole stderr is searched for
//! every secret, full token and message text the session used; and the
//! files the gateway wrote are checked to be owner-only.

mod harness;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use harness::{config_text, Gateway};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const LINE_SECRET: &str = "line-secret-Qz81w";
const SASL_PASSWORD: &str = "sasl-pass-Kx3vT";
const COMPONENT_SECRET: &str = "component-secret-Wr5mB";
const LINE_TEXT: &str = "the eagle lands at midnight";
const IRC_TEXT: &str = "zebras discuss quantum gravity";
const XMPP_TEXT: &str = "purple submarine surfaces at noon";
const MATRIX_TEXT: &str = "seven herons debate origami";
const MATRIX_BAD_KEY: &str = "!!malformed-pushkey-Vt7q!!";

/// A distinctive device token: `byte` repeated to 32 bytes.
fn token(byte: &str) -> String {
    byte.repeat(32)
}

/// A fake IRC server for one connection: CAP with `sasl account-tag`,
/// SASL PLAIN (`AUTHENTICATE +`, 900, 903), welcome; then a REGISTER from
/// alice (logged in: account tag), one from mallory (not logged in) and
/// channel text. Sends the SASL response and the bot's first two NOTICEs
/// once it has them, then keeps the connection open.
async fn fake_irc(l: TcpListener, tokens: [String; 2], done: oneshot::Sender<(String, Vec<String>)>) {
    let (s, _) = l.accept().await.unwrap();
    let (rd, mut wr) = s.into_split();
    let mut lines = BufReader::new(rd).lines();
    let (mut auth, mut notices, mut done) = (String::new(), Vec::new(), Some(done));
    while let Ok(Some(l)) = lines.next_line().await {
        let answer = if l == "CAP LS 302" {
            ":srv CAP * LS :sasl account-tag message-tags\r\n".to_owned()
        } else if let Some(caps) = l.strip_prefix("CAP REQ :") {
            format!(":srv CAP pushbot ACK :{caps}\r\n")
        } else if l == "AUTHENTICATE PLAIN" {
            "AUTHENTICATE +\r\n".to_owned()
        } else if let Some(b64) = l.strip_prefix("AUTHENTICATE ") {
            auth = b64.to_owned();
            ":srv 900 pushbot pushbot!u@h pushbot :You are now logged in\r\n:srv 903 pushbot :SASL authentication successful\r\n".to_owned()
        } else if l == "CAP END" {
            format!(
                ":srv 001 pushbot :Welcome\r\n@account=alice :alice!a@h PRIVMSG pushbot :REGISTER {}\r\n:mallory!m@h PRIVMSG pushbot :REGISTER {}\r\n:alice!a@h PRIVMSG #chat :{IRC_TEXT}\r\n",
                tokens[0], tokens[1]
            )
        } else {
            if l.starts_with("NOTICE ") {
                notices.push(l);
            }
            if notices.len() == 2 {
                if let Some(d) = done.take() {
                    let _ = d.send((auth.clone(), notices.clone()));
                }
            }
            continue;
        };
        wr.write_all(answer.as_bytes()).await.unwrap();
    }
}

/// Read from `s` into `seen` until it holds `what` after `from`.
async fn read_until(s: &mut tokio::net::TcpStream, seen: &mut String, from: usize, what: &str) {
    let mut buf = [0u8; 4096];
    while !seen[from.min(seen.len())..].contains(what) {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("waiting for {what:?}; got {seen}"))
            .unwrap();
        assert!(n > 0, "closed while waiting for {what:?}; got {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// A fake XMPP server for one component connection: header, handshake,
/// a `register-push-apns` command for `token`, then a publish to the node
/// it got with its secret and a message body. Returns (handshake digest,
/// node secret, the component's answer to the publish).
async fn fake_xmpp(l: TcpListener, token: String) -> (String, String, String) {
    let (mut s, _) = l.accept().await.unwrap();
    let mut seen = String::new();
    read_until(&mut s, &mut seen, 0, "push.localhost").await;
    s.write_all(b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' id='5EC12E7' from='push.localhost'>").await.unwrap();
    read_until(&mut s, &mut seen, 0, "</handshake>").await;
    let hs = &seen[seen.find("<handshake>").unwrap() + "<handshake>".len()..seen.find("</handshake>").unwrap()];
    let digest = hs.to_owned();
    s.write_all(b"<handshake/>").await.unwrap();
    let command = format!(
        "<iq type='set' id='reg1' from='alice@localhost/phone' to='push.localhost'><command xmlns='http://jabber.org/protocol/commands' node='register-push-apns' action='execute'><x xmlns='jabber:x:data' type='submit'><field var='token'><value>{token}</value></field><field var='device-id'><value>phone</value></field></x></command></iq>"
    );
    s.write_all(command.as_bytes()).await.unwrap();
    let from = seen.len();
    read_until(&mut s, &mut seen, from, "</iq>").await;
    let reply = seen[from..].to_owned();
    let (node, secret) = (
        harness::field_value(&reply, "node"),
        harness::field_value(&reply, "secret"),
    );
    let publish = format!(
        "<iq type='set' id='pub1' from='localhost' to='push.localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{node}'><item><notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data'><field var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field><field var='last-message-sender'><value>bob@localhost</value></field><field var='last-message-body'><value>{XMPP_TEXT}</value></field></x></notification></item></publish><publish-options><x xmlns='jabber:x:data'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>{secret}</value></field></x></publish-options></pubsub></iq>"
    );
    s.write_all(publish.as_bytes()).await.unwrap();
    let from = seen.len();
    read_until(&mut s, &mut seen, from, "pub1").await;
    let pub1 = from + seen[from..].find("pub1").unwrap_or(0);
    let from = seen[..pub1].rfind("<iq").unwrap_or(from);
    read_until(&mut s, &mut seen, from, ">").await;
    let answer = seen[from..].to_owned();
    // Hold the stream open until the gateway stops.
    let mut buf = [0u8; 1024];
    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    (digest, secret, answer)
}

/// POST a Matrix notify to the adapter on `port` with `pushkey` and
/// `text`, plus a malformed pushkey; the answer's body.
async fn matrix_notify(port: u16, pushkey: &str, text: &str) -> String {
    use http_body_util::{BodyExt, Full};
    let devices = format!(
        r#"[{{"app_id":"com.example.chat.ios","pushkey":"{pushkey}"}},{{"app_id":"com.example.chat.ios","pushkey":"{MATRIX_BAD_KEY}"}}]"#
    );
    let body = format!(
        r#"{{"notification":{{"content":{{"body":"{text}","msgtype":"m.text"}},"counts":{{"unread":1}},"devices":{devices},"event_id":"$e","room_id":"!r:localhost","sender":"@bob:localhost","type":"m.room.message"}}}}"#
    );
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let req = hyper::Request::post(format!("http://127.0.0.1:{port}/_matrix/push/v1/notify"))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("a notify answer within 20 s")
        .expect("the matrix adapter answers");
    assert_eq!(resp.status(), 200);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The Matrix side of the session: a push gateway on a free port, one
/// device with a distinctive token.
struct MatrixPeer {
    port: u16,
    token: String,
    pushkey: String,
}

impl MatrixPeer {
    fn new() -> Self {
        Self {
            port: harness::free_port(),
            token: token("e5"),
            pushkey: base64::engine::general_purpose::STANDARD.encode([0xe5u8; 32]),
        }
    }

    /// Its `[[adapters.matrix]]` section.
    fn section(&self) -> String {
        format!(
            "[[adapters.matrix]]\nlisten = \"127.0.0.1:{}\"\napps = {{ \"com.example.chat.ios\" = {{ topic = \"{}\" }} }}\n",
            self.port,
            harness::TOPIC
        )
    }

    /// Wait for the adapter, then send it a notify with the pushkey,
    /// [`MATRIX_TEXT`] and a malformed pushkey (rejected).
    async fn session(&self, gw: &Gateway) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !gw.logs().contains("matrix adapter listening") {
            assert!(
                std::time::Instant::now() < deadline,
                "no matrix adapter:\n{}",
                gw.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let answer = matrix_notify(self.port, &self.pushkey, MATRIX_TEXT).await;
        assert_eq!(answer, format!(r#"{{"rejected":["{MATRIX_BAD_KEY}"]}}"#));
    }

    /// What the logs must not hold.
    fn secrets(&self) -> [&str; 4] {
        [MATRIX_TEXT, MATRIX_BAD_KEY, &self.pushkey, &self.token]
    }
}

/// Everything the gateway writes in `dir` is owner-only.
fn assert_owner_only(dir: &Path) {
    for f in [
        "pushbridge.db",
        "pushbridge.db-wal",
        "pushbridge.db-shm",
        "pushes.jsonl",
    ] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_hold_no_secret_token_or_text_and_files_are_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let (line_token, irc_token, refused_token, xmpp_token) = (token("a7"), token("b8"), token("c9"), token("d6"));
    let matrix = MatrixPeer::new();
    let irc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xmpp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (irc_port, xmpp_port) = (irc.local_addr().unwrap().port(), xmpp.local_addr().unwrap().port());
    let (irc_tx, irc_rx) = oneshot::channel();
    tokio::spawn(fake_irc(irc, [irc_token.clone(), refused_token.clone()], irc_tx));
    let xmpp_server = tokio::spawn(fake_xmpp(xmpp, xmpp_token.clone()));
    let text = format!(
        "{}\n[[adapters.irc]]\nnetwork = \"test\"\nserver = \"127.0.0.1:{irc_port}\"\nnick = \"pushbot\"\nchannels = [\"#chat\"]\nsasl_account = \"pushbot\"\nsasl_password = \"{SASL_PASSWORD}\"\n\n[[adapters.xmpp]]\nserver = \"127.0.0.1:{xmpp_port}\"\ndomain = \"push.localhost\"\nsecret = \"{COMPONENT_SECRET}\"\n{}",
        config_text(dir.path(), &format!("secret = \"{LINE_SECRET}\""), ""),
        matrix.section()
    );
    let gw = Gateway::start_with_log(dir.path(), &text, "trace");

    // Line protocol: AUTH, REGISTER, a message that becomes a push.
    let mut c = gw.client().await;
    assert_eq!(c.cmd(&format!("AUTH {LINE_SECRET}")).await, "OK");
    assert_eq!(c.cmd(&format!("REGISTER alice {line_token}")).await, "OK");
    assert_eq!(c.cmd("PRESENCE alice offline").await, "OK");
    assert!(c.cmd(&format!("MSG bob alice {LINE_TEXT}")).await.starts_with("OK"));

    // IRC: SASL, one REGISTER accepted, one refused.
    let (auth, notices) = tokio::time::timeout(Duration::from_secs(30), irc_rx)
        .await
        .unwrap_or_else(|_| panic!("no answers from the IRC bot:\n{}", gw.logs()))
        .unwrap();
    let plain = base64::engine::general_purpose::STANDARD.decode(&auth).unwrap();
    assert_eq!(
        plain,
        format!("pushbot\0pushbot\0{SASL_PASSWORD}").as_bytes(),
        "the real password was sent"
    );
    assert!(
        notices.iter().any(|n| n.contains("registered for account alice")),
        "{notices:?}"
    );
    assert!(notices.iter().any(|n| n.contains("not logged in")), "{notices:?}");

    matrix.session(&gw).await;

    // XMPP: handshake, registration, a publish with a body; all three
    // messages became pushes.
    let pushes = gw.wait_pushes(3);
    let bodies: Vec<String> = pushes.iter().map(|p| p["payload"].to_string()).collect();
    assert!(bodies.iter().any(|b| b.contains(LINE_TEXT)), "{bodies:?}");
    assert!(bodies.iter().any(|b| b.contains(XMPP_TEXT)), "{bodies:?}");
    assert!(bodies.iter().any(|b| b.contains(MATRIX_TEXT)), "{bodies:?}");
    // Checked while it runs: SQLite removes the -wal and -shm files on a
    // clean close.
    assert_owner_only(dir.path());
    let (status, logs) = gw.stop_with_logs();
    assert!(status.success(), "{logs}");
    let (digest, node_secret, answer) = tokio::time::timeout(Duration::from_secs(10), xmpp_server)
        .await
        .expect("the XMPP session ends with the gateway")
        .unwrap_or_else(|e| panic!("fake XMPP server: {e}\n{logs}"));
    assert!(answer.contains("result") && !answer.contains("error"), "{answer}");
    assert_eq!(digest.len(), 40, "{digest}");
    let mut secrets = vec![
        LINE_SECRET,
        SASL_PASSWORD,
        &auth,
        COMPONENT_SECRET,
        &digest,
        &node_secret,
        LINE_TEXT,
        IRC_TEXT,
        XMPP_TEXT,
    ];
    secrets.extend([&line_token, &irc_token, &refused_token, &xmpp_token].map(String::as_str));
    secrets.extend(matrix.secrets());
    check_logs(&logs, &secrets);
}

/// The trace holds the sessions (so the search below means something) and
/// none of `secrets` (secrets, full tokens, message texts), not even its
/// last 16 characters.
fn check_logs(logs: &str, secrets: &[&str]) {
    for shown in [
        "irc >",
        "AUTHENTICATE <redacted>",
        "REGISTER b8b8b8b8…",
        "PRIVMSG #chat :<text: 30 bytes>",
        "line <",
        "AUTH <redacted>",
        "MSG bob alice <text: 27 bytes>",
        "<handshake><text: 40 bytes></handshake>",
        "var=\"last-message-body\"><value><text: 33 bytes></value>",
        "pushkey rejected: malformed",
        "push queued",
    ] {
        assert!(logs.contains(shown), "trace lacks {shown:?}:\n{logs}");
    }
    for s in secrets {
        assert!(!logs.contains(s), "the log holds {s:?}:\n{logs}");
        let piece = &s[s.len().saturating_sub(16)..];
        assert!(!logs.contains(piece), "the log holds {piece:?} of {s:?}");
    }
}

/// The keys `pushbridge simulate` generates are owner-only; the CA
/// certificate (public) is not forced.
#[test]
fn simulator_keys_are_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let (p8, client, ca) = (
        dir.path().join("k.p8"),
        dir.path().join("c.pem"),
        dir.path().join("ca.pem"),
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pushbridge"))
        .args(["simulate", "--listen", "127.0.0.1:0", "--write-p8"])
        .arg(&p8)
        .arg("--write-client-cert")
        .arg(&client)
        .arg("--write-ca")
        .arg(&ca)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while ![&p8, &client, &ca].iter().all(|p| p.exists()) {
        assert!(std::time::Instant::now() < deadline, "the simulator wrote no files");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!((mode(&p8), mode(&client)), (0o600, 0o600));
    assert!(std::fs::read_to_string(&p8).unwrap().contains("PRIVATE KEY"));
}
