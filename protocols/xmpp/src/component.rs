//! The component link (XEP-0114): connect to the XMPP server's component
//! port, open the `jabber:component:accept` stream, authenticate with the
//! handshake (SHA-1 of stream id ‖ secret), and read `<stream:error>`s
//! (RFC 6120 §4.9) into adapter errors.

use std::time::Duration;

use pushbridge_api::{AdapterError, Context};
use sha1::{Digest, Sha1};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::redact::redact_stanza;
use crate::xml::{Element, ReadError, StreamReader};
use crate::XmppConfig;

/// The component stream's namespace (XEP-0114).
pub const NS_COMPONENT: &str = "jabber:component:accept";
/// The stream namespace (RFC 6120 §4.8.1).
pub const NS_STREAM: &str = "http://etherx.jabber.org/streams";
/// Stream error conditions (RFC 6120 §4.9.3).
pub const NS_STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";

/// How long the TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An authenticated component stream: stanzas in, bytes out.
pub struct Link {
    /// Reads the server's stanzas (its stream header is read already).
    pub reader: StreamReader<OwnedReadHalf>,
    /// Writes to the server (our stream header is written already).
    pub writer: OwnedWriteHalf,
}

/// The XEP-0114 handshake: lower-case hex SHA-1 of stream id ‖ secret.
pub fn handshake_digest(stream_id: &str, secret: &str) -> String {
    let d = Sha1::digest(format!("{stream_id}{secret}").as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The XML declaration and our opening `<stream:stream>` tag, to `domain`.
pub fn stream_header(domain: &str) -> Vec<u8> {
    let mut open = Vec::new();
    open.extend_from_slice(b"<?xml version='1.0'?>");
    let header = Element::new("stream:stream")
        .attr("xmlns", NS_COMPONENT)
        .attr("xmlns:stream", NS_STREAM)
        .attr("to", domain);
    let mut h = header.to_bytes();
    // An opening tag only: drop the self-closing "/>".
    if h.ends_with(b"/>") {
        h.truncate(h.len() - 2);
        h.push(b'>');
    }
    open.extend_from_slice(&h);
    open
}

/// Connect to `server` and authenticate as `domain` (the adapter's
/// config). `Ok(None)` when shutdown comes before the TCP connection.
///
/// Errors: [`AdapterError::Io`] when the server cannot be reached (within
/// 10 s) or the connection fails; [`AdapterError::Config`] when the server
/// refuses the component (wrong secret, unknown domain);
/// [`AdapterError::Protocol`] when it answers something else.
pub async fn connect(ctx: &Context<XmppConfig>) -> Result<Option<Link>, AdapterError> {
    let cfg = ctx.config();
    let tcp = tokio::select! {
        r = pushbridge_kit::connect(&cfg.server, CONNECT_TIMEOUT) => r.map_err(|e| AdapterError::Io(e.into()))?,
        _ = ctx.shutdown().cancelled() => return Ok(None),
    };
    let (rd, mut writer) = tcp.into_split();
    let mut reader = StreamReader::new(rd, cfg.limits());
    writer.write_all(&stream_header(&cfg.domain)).await?;
    let server_header = reader.header().await.map_err(|e| protocol("stream header", e))?;
    let id = server_header
        .get("id")
        .ok_or_else(|| AdapterError::Protocol("the server's stream header has no id".into()))?;
    let hs = Element::new("handshake").text(&handshake_digest(id, &cfg.secret));
    tracing::trace!(stanza = %redact_stanza(&hs), "xmpp >");
    writer.write_all(&hs.to_bytes()).await?;
    let answer = reader.next().await;
    if let Ok(a) = &answer {
        tracing::trace!(stanza = %redact_stanza(a), "xmpp <");
    }
    handshake_answer(cfg, answer)?;
    Ok(Some(Link { reader, writer }))
}

/// Judge the server's answer to our handshake: `<handshake/>` is success.
fn handshake_answer(cfg: &XmppConfig, answer: Result<Element, ReadError>) -> Result<(), AdapterError> {
    match answer {
        Ok(e) if e.local() == "handshake" => Ok(()),
        Ok(e) if e.local() == "error" => {
            let (cond, text) = stream_error_parts(&e);
            let text = text.map(|t| format!(" ({t})")).unwrap_or_default();
            Err(if cond == "not-authorized" {
                AdapterError::Config(format!(
                    "{} refused the component secret for {} (not-authorized){text}: check secret against the server's component_secret",
                    cfg.server, cfg.domain
                ))
            } else {
                AdapterError::Config(format!("{} refused component {}: {cond}{text}", cfg.server, cfg.domain))
            })
        }
        Ok(e) => Err(AdapterError::Protocol(format!(
            "expected <handshake/>, got <{}>",
            e.name
        ))),
        Err(ReadError::Closed) => Err(AdapterError::Config(format!(
            "{} closed the stream during the handshake: wrong secret or unknown component {}?",
            cfg.server, cfg.domain
        ))),
        Err(e) => Err(protocol("handshake", e)),
    }
}

/// The defined condition and the text (at most 200 characters, control
/// characters blanked) of a `<stream:error>`.
pub fn stream_error_parts(e: &Element) -> (String, Option<String>) {
    let condition = e
        .elements()
        .find(|c| c.local() != "text")
        .map(|c| c.local().to_owned())
        .unwrap_or_else(|| "undefined-condition".to_owned());
    let text = e
        .find("text", None)
        .map(|t| {
            // Peer text goes into logs: no control characters (new lines).
            t.text_content()
                .trim()
                .chars()
                .take(200)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect::<String>()
        })
        .filter(|t| !t.is_empty());
    (condition, text)
}

/// Why the adapter stops after a `<stream:error>` received once connected.
/// `conflict` means another component connected as our domain (or the
/// server replaced us with it): reconnecting at once would only fight it,
/// so it is a configuration error (longest backoff).
pub fn stream_error(cfg: &XmppConfig, condition: &str, text: Option<&str>) -> AdapterError {
    let text = text.map(|t| format!(" ({t})")).unwrap_or_default();
    if condition == "conflict" {
        AdapterError::Config(format!(
            "{} ended the stream with conflict{text}: another component is connected as {}; is the domain configured for a second pushbridge or another service?",
            cfg.server, cfg.domain
        ))
    } else {
        AdapterError::Other(format!(
            "{} ended the stream with stream error {condition}{text}",
            cfg.server
        ))
    }
}

/// A read failure while `what` as an adapter error: I/O stays I/O, the
/// rest is the server breaking the protocol.
pub fn protocol(what: &str, e: ReadError) -> AdapterError {
    match e {
        ReadError::Io(io) => AdapterError::Io(io),
        other => AdapterError::Protocol(format!("{what}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::run_until_error;

    #[test]
    fn handshake_test_vector() {
        // PROTOCOLS.md §4.
        assert_eq!(
            handshake_digest("3BF96D32", "secret"),
            "b09ea9b3b7f586be8a08d0a3dd7466f110aeb136"
        );
    }

    #[test]
    fn stream_header_is_an_opening_tag() {
        let h = String::from_utf8(stream_header("push.localhost")).unwrap();
        assert!(h.starts_with("<?xml version='1.0'?><stream:stream "), "{h}");
        assert!(h.ends_with("\">") && !h.ends_with("/>"), "{h}");
        assert!(h.contains("to=\"push.localhost\"") && h.contains(NS_COMPONENT), "{h}");
    }

    #[tokio::test]
    async fn wrong_secret_is_a_config_error() {
        let (err, seen) = run_until_error(
            b"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>",
        )
        .await;
        assert!(
            matches!(err, AdapterError::Config(ref m) if m.contains("not-authorized")),
            "{err}"
        );
        assert!(seen.contains("b09ea9b3b7f586be8a08d0a3dd7466f110aeb136"), "{seen}");
        assert!(seen.contains("jabber:component:accept"), "{seen}");
    }

    #[test]
    fn stream_error_parts_read_condition_and_text() {
        let e = Element::new("stream:error")
            .child(
                Element::new("text")
                    .attr("xmlns", NS_STREAM_ERRORS)
                    .text(&"x".repeat(500)),
            )
            .child(Element::new("host-unknown").attr("xmlns", NS_STREAM_ERRORS));
        let (_, text) =
            stream_error_parts(&Element::new("stream:error").child(Element::new("text").text(" two\nlines\r\n")));
        assert_eq!(text.as_deref(), Some("two lines"));
        let (cond, text) = stream_error_parts(&e);
        assert_eq!(cond, "host-unknown");
        assert_eq!(text.map(|t| t.len()), Some(200));
        let (cond, text) = stream_error_parts(&Element::new("stream:error"));
        assert_eq!((cond.as_str(), text), ("undefined-condition", None));
    }
}
