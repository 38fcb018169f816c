//! What the stanza traces (`xmpp <`, `xmpp >`) show of a stanza: its
//! elements and attributes, never its character data. Text in XMPP is
//! where the private and secret things are (a message `<body>`, the
//! XEP-0114 `<handshake>` digest, a XEP-0357 publish's `last-message-body`
//! and `secret` form values, a registration form's device token), so every
//! text node is shown as its length only (`<text: 17 bytes>`), and runs of
//! 32+ hex digits in names and attributes (a device token in a node name)
//! are cut to their first 8 digits and `…`.
//!
//! One scan over the serialized stanza, no recursion: a stanza nested as
//! deep as the reader allows costs no stack here.

use pushbridge_kit::redact::{shorten_hex, text_len};

use crate::xml::Element;

/// `stanza` serialized as a trace may show it.
pub fn redact_stanza(stanza: &Element) -> String {
    redact_xml(&stanza.to_bytes())
}

/// Serialized XML (our writer's output: no DTD; comments and CDATA
/// handled all the same) as a trace may show it: markup kept with hex runs
/// cut, every non-blank text node and CDATA section replaced by its length.
pub fn redact_xml(xml: &[u8]) -> String {
    let s = String::from_utf8_lossy(xml);
    let mut out = String::with_capacity(s.len().min(4096));
    let mut rest: &str = &s;
    while !rest.is_empty() {
        if let Some(cdata) = rest.strip_prefix("<![CDATA[") {
            let end = cdata.find("]]>").unwrap_or(cdata.len());
            out.push_str(&text_len(&cdata[..end]));
            rest = cdata.get(end + 3..).unwrap_or("");
        } else if rest.starts_with('<') {
            let end = markup_end(rest);
            out.push_str(&shorten_hex(&rest[..end]));
            rest = &rest[end..];
        } else {
            let end = rest.find('<').unwrap_or(rest.len());
            let text = &rest[..end];
            if !text.trim().is_empty() {
                out.push_str(&text_len(text));
            }
            rest = &rest[end..];
        }
    }
    out
}

/// The index after the `>` that ends the markup `s` starts with (quoted
/// attribute values skipped), or `s.len()` when it does not end.
fn markup_end(s: &str) -> usize {
    let mut quote = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return i + 1,
            _ => {}
        }
    }
    s.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::handshake_digest;

    #[test]
    fn handshake_digest_and_bodies_are_lengths() {
        let digest = handshake_digest("3BF96D32", "secret");
        let hs = Element::new("handshake").text(&digest);
        assert_eq!(redact_stanza(&hs), "<handshake><text: 40 bytes></handshake>");
        let msg = Element::new("message")
            .attr("to", "alice@example.org")
            .attr("type", "chat")
            .child(Element::new("body").text("meet me at <5> & bring it"));
        let shown = redact_stanza(&msg);
        assert_eq!(
            shown,
            "<message to=\"alice@example.org\" type=\"chat\"><body><text: 35 bytes></body></message>"
        );
    }

    #[test]
    fn form_values_are_lengths_and_tokens_in_attributes_cut() {
        let token = "0f".repeat(32);
        let publish = Element::new("iq").attr("type", "set").child(
            Element::new("pubsub").child(
                Element::new("publish").attr("node", &token).child(
                    Element::new("field")
                        .attr("var", "last-message-body")
                        .child(Element::new("value").text("private words")),
                ),
            ),
        );
        assert_eq!(
            redact_stanza(&publish),
            "<iq type=\"set\"><pubsub><publish node=\"0f0f0f0f…\"><field var=\"last-message-body\"><value><text: 13 bytes></value></field></publish></pubsub></iq>"
        );
    }

    #[test]
    fn markup_edge_cases() {
        assert_eq!(redact_xml(b"<a x='1>2'>t</a>"), "<a x='1>2'><text: 1 bytes></a>");
        assert_eq!(redact_xml(b"<a><![CDATA[s3cret]]></a> "), "<a><text: 6 bytes></a>");
        assert_eq!(redact_xml(b"<a>\n  <b/>\n</a>"), "<a><b/></a>");
        assert_eq!(redact_xml(b"<unterminated attr='x"), "<unterminated attr='x");
        assert_eq!(redact_xml(b"<![CDATA[open"), "<text: 4 bytes>");
        assert_eq!(redact_xml(b""), "");
    }
}
