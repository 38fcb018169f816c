//! The XMPP component stream reader: a fixed stream header (declaring
//! the default and `stream:` namespaces, as a server sends it), then
//! arbitrary bytes read stanza by stanza with namespace resolution, under
//! a stanza size limit the input picks.
//!
//! Properties: no panic (no stack overflow); the reader ends with an
//! error or the end of the stream, never loops; every stanza read is
//! written back as XML that reads again, with the same name, namespace
//! and attributes.
#![no_main]

use futures::executor::block_on;
use libfuzzer_sys::fuzz_target;
use pushbridge_xmpp::xml::{Element, Limits, ReadError, StreamReader};

const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
    xmlns:stream='http://etherx.jabber.org/streams' id='3BF96D32' from='push.localhost'>";

/// Read every stanza of `HEADER` + `body`; the stanzas and the error that
/// ended the stream.
fn read_all(body: &[u8], max_stanza: usize) -> (Vec<Element>, ReadError) {
    let stream = [HEADER, body].concat();
    let mut reader = StreamReader::new(
        &stream[..],
        Limits {
            max_stanza,
            max_depth: 64,
        },
    );
    let header = block_on(reader.header()).expect("the fixed header reads");
    assert_eq!(header.ns(), Some("http://etherx.jabber.org/streams"));
    let mut stanzas = Vec::new();
    loop {
        match block_on(reader.next()) {
            Ok(stanza) => {
                stanzas.push(stanza);
                // Each stanza takes at least `<a/>` of the input.
                assert!(stanzas.len() * 4 <= body.len(), "more stanzas than input");
            }
            Err(e) => return (stanzas, e),
        }
    }
}

/// Everything the service reads of a stanza, walked.
fn walk(e: &Element) -> usize {
    let _ = (
        e.local(),
        e.ns(),
        e.get("type"),
        e.find("query", None),
        e.text_content(),
    );
    1 + e.elements().map(walk).sum::<usize>()
}

fuzz_target!(|data: &[u8]| {
    let Some((&size, body)) = data.split_first() else {
        return;
    };
    // 64 bytes to 16 KiB: small limits make the size checks fire.
    let max_stanza = 64 << (size % 9);
    let (stanzas, _end) = read_all(body, max_stanza);
    for stanza in &stanzas {
        walk(stanza);
        let written = stanza.to_bytes();
        let (again, end) = read_all(&written, written.len() + 64);
        assert!(
            again.len() == 1,
            "{:?} wrote {:?}, which read back as {} stanzas ({end})",
            stanza,
            String::from_utf8_lossy(&written),
            again.len()
        );
        let back = &again[0];
        assert_eq!(
            (&back.name, back.ns(), back.attrs.len()),
            (&stanza.name, stanza.ns(), stanza.attrs.len())
        );
    }
});
