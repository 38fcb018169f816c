//! The IRC message parser (`pushbridge_irc::msg::Msg::parse`) over
//! arbitrary lines, and the pure helpers the bot applies to what a server
//! sends: formatting removal, casemapping, highlight matching, splitting,
//! line building, SASL PLAIN.
//!
//! Properties: no panic; a parsed message is well formed (a non-empty
//! upper-case command, middle parameters without spaces) and, when it has
//! no CR/LF/NUL, formats back to a line that parses the same; a line we
//! build never holds CR, LF or NUL; split pieces keep their byte limit
//! and lose nothing but spaces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushbridge_irc::msg::{line, mentions, sasl_plain, split_text, strip_formatting, CaseMapping, Msg};

fn check_msg(m: &Msg, input: &str) {
    assert!(!m.command.is_empty() && !m.command.contains(' '), "{m:?}");
    assert_eq!(m.command, m.command.to_ascii_uppercase());
    if let Some((_, middle)) = m.params.split_last() {
        for p in middle {
            assert!(!p.is_empty() && !p.contains(' ') && !p.starts_with(':'), "{m:?}");
        }
    }
    let fields: usize = m.params.iter().map(String::len).sum::<usize>() + m.command.len();
    assert!(
        fields <= input.len(),
        "{fields} bytes of fields from {} of input",
        input.len()
    );
    let _ = (m.nick(), m.account(), m.param(0));
    // Our own line for the same command and parameters reads back the same.
    let clean = |s: &str| !s.contains(['\r', '\n', '\0']);
    if clean(&m.command) && !m.command.starts_with(['@', ':']) && m.params.iter().all(|p| clean(p)) {
        let (trailing, middle) = match m.params.split_last() {
            Some((last, middle)) => (Some(last.as_str()), middle),
            None => (None, &[][..]),
        };
        let middle: Vec<&str> = middle.iter().map(String::as_str).collect();
        let built = line(&m.command, &middle, trailing);
        let back = Msg::parse(&built).expect("our own line parses");
        assert_eq!((&back.command, &back.params), (&m.command, &m.params), "{built:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for l in text.split('\n') {
        if let Some(m) = Msg::parse(l) {
            check_msg(&m, l);
            // Parameters a hostile server chose, in a line of ours: one line.
            let params: Vec<&str> = m.params.iter().map(String::as_str).collect();
            let built = line("PRIVMSG", &params, m.params.last().map(String::as_str));
            assert!(!built.contains(['\r', '\n', '\0']), "{built:?}");
        }
    }
    let plain = strip_formatting(&text);
    assert!(!plain.chars().any(char::is_control), "{plain:?}");
    assert!(plain.len() <= text.len());
    let (word, rest) = text.split_once(' ').unwrap_or((&text, ""));
    for cm in [CaseMapping::Ascii, CaseMapping::Rfc1459, CaseMapping::Rfc1459Strict] {
        if mentions(rest, word, cm) {
            assert!(cm.lower(rest).contains(&cm.lower(word)));
        }
    }
    let max = data.first().map_or(4, |&b| usize::from(b));
    let pieces = split_text(&text, max);
    assert!(pieces.iter().all(|p| p.len() <= max.max(4)), "{pieces:?}");
    assert_eq!(pieces.concat().replace(' ', ""), text.replace(' ', ""));
    let chunks = sasl_plain(word, rest);
    assert!(chunks.iter().all(|c| c.len() <= 400) && chunks.last().is_some_and(|c| c.len() < 400));
});
