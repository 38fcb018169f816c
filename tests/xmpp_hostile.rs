//! A hostile XMPP server against the real binary: after the XEP-0114
//! handshake it sends stanzas nested far deeper than `max_stanza_depth`
//! (an `<iq>` 6,000 deep in 42 KB, then a `<message>` 140,000 deep in
//! about 1 MB under a raised `max_stanza_size`). Each must end the
//! component stream with a `policy-violation` stream error and a
//! reconnect, never a crash: the process stays up and the line protocol
//! keeps answering.

mod harness;

use std::time::Duration;

use harness::{config_text, token, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The stream header the fake server answers with.
const SERVER_HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
xmlns:stream='http://etherx.jabber.org/streams' id='3BF96D32' from='push.localhost'>";

/// `<name>` opening a stanza, `depth - 1` nested `<a>`, and their ends.
fn nested(open: &str, close: &str, depth: usize) -> Vec<u8> {
    let mut v = open.as_bytes().to_vec();
    v.extend("<a>".repeat(depth - 1).bytes());
    v.extend("</a>".repeat(depth - 1).bytes());
    v.extend_from_slice(close.as_bytes());
    v
}

/// What the fake server sends after the handshake on its n-th connection
/// (0-based): the two hostile stanzas, then a disco#info request the
/// component must answer.
fn script(n: usize) -> Vec<u8> {
    match n {
        0 => nested(
            "<iq type='get' id='deep1' from='localhost' to='push.localhost'>",
            "</iq>",
            6_000,
        ),
        1 => nested(
            "<message from='mallory@localhost' to='push.localhost'>",
            "</message>",
            140_000,
        ),
        _ => b"<iq type='get' id='disco1' from='localhost' to='push.localhost'>\
<query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
            .to_vec(),
    }
}

/// Read from `s` into `seen` until it holds `marker`.
async fn read_until(s: &mut tokio::net::tcp::OwnedReadHalf, seen: &mut Vec<u8>, marker: &str) {
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(seen).contains(marker) {
        let n = s.read(&mut buf).await.expect("read from the gateway");
        assert!(
            n > 0,
            "the gateway closed before {marker:?}: {}",
            String::from_utf8_lossy(seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
}

/// One component connection: the handshake, then `script(n)` written
/// while everything the gateway says is collected. Reading runs beside
/// writing: the gateway stops reading at the first too-deep element. The
/// hostile connections report what they saw once the gateway closes (or
/// is silent for 10 s); the last one as soon as its disco request is
/// answered, staying open until the gateway closes it.
async fn serve(s: TcpStream, n: usize, report: mpsc::UnboundedSender<(usize, String)>) {
    let (mut rd, mut wr) = s.into_split();
    let mut seen = Vec::new();
    read_until(&mut rd, &mut seen, "push.localhost").await;
    wr.write_all(SERVER_HEADER).await.unwrap();
    read_until(&mut rd, &mut seen, "</handshake>").await;
    wr.write_all(b"<handshake/>").await.unwrap();
    let writer = tokio::spawn(async move {
        // The gateway may close (and reset) before all of it is written.
        let _ = wr.write_all(&script(n)).await;
        wr
    });
    if n >= 2 {
        read_until(&mut rd, &mut seen, "id=\"disco1\"").await;
        let _ = report.send((n, String::from_utf8_lossy(&seen).into_owned()));
    }
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf)).await {
            Ok(Ok(got)) if got > 0 => seen.extend_from_slice(&buf[..got]),
            _ => break,
        }
    }
    drop(writer.await);
    if n < 2 {
        let _ = report.send((n, String::from_utf8_lossy(&seen).into_owned()));
    }
}

/// A fake XMPP server serving each connection on its own task; what each
/// saw arrives as (connection index, text).
async fn fake_server() -> (u16, mpsc::UnboundedReceiver<(usize, String)>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for n in 0.. {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(serve(s, n, tx.clone()));
        }
    });
    (port, rx)
}

/// The next report of the fake server.
async fn next_connection(rx: &mut mpsc::UnboundedReceiver<(usize, String)>, gw: &Gateway) -> (usize, String) {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no report from the fake server within 30 s:\n{}", gw.logs()))
        .expect("the fake server runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_stanzas_end_the_stream_and_the_gateway_keeps_serving() {
    let (port, mut seen) = fake_server().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[[adapters.xmpp]]\nserver = \"127.0.0.1:{port}\"\ndomain = \"push.localhost\"\n\
         secret = \"comp-secret\"\nmax_stanza_size = 1048576\n",
        config_text(dir.path(), "", "")
    );
    let mut gw = Gateway::start(dir.path(), &text);

    // Both hostile stanzas: a stream error, then a new connection.
    for (n, what) in [(0, "6,000-deep <iq>"), (1, "140,000-deep <message>")] {
        let (got, said) = next_connection(&mut seen, &gw).await;
        assert_eq!(got, n);
        assert!(said.contains("<handshake>"), "{said}");
        assert!(
            said.contains("<stream:error><policy-violation xmlns=\"urn:ietf:params:xml:ns:xmpp-streams\"/></stream:error></stream:stream>"),
            "{what}: no policy-violation stream error: {said}\n{}",
            gw.logs()
        );
        assert!(
            gw.child.try_wait().unwrap().is_none(),
            "the gateway died after the {what}:\n{}",
            gw.logs()
        );
    }

    // The line protocol still answers, end to end.
    let mut c = gw.client().await;
    assert_eq!(c.cmd("PING").await, "PONG");
    let alice = token(0xa11ce);
    assert_eq!(c.cmd(&format!("REGISTER alice {alice}")).await, "OK");
    assert_eq!(c.cmd("PRESENCE alice offline").await, "OK");
    assert_eq!(c.cmd("MSG bob alice still here?").await, "OK 1");
    let p = gw.wait_pushes(1);
    assert_eq!(p[0]["device_token"], alice.as_str());

    // A third connection: the component answers disco on it.
    let (got, said) = next_connection(&mut seen, &gw).await;
    assert_eq!(got, 2);
    assert!(said.contains("urn:xmpp:push:0"), "{said}");
    let logs = gw.logs();
    assert!(
        logs.contains("stanza over max_stanza_depth; closing the stream with policy-violation"),
        "{logs}"
    );
    assert_eq!(logs.matches("XMPP component connected").count(), 3, "{logs}");
    let status = gw.stop();
    assert!(status.success(), "exit status {status:?}");
}
