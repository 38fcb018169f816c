//! IRC messages (RFC 1459/2812 with IRCv3 tags): parsing, casemapping,
//! formatting codes, safe line splitting, SASL PLAIN, highlight matching.
//! Pure functions, no I/O.

use std::collections::HashMap;

use base64::Engine as _;

/// The longest line we accept: 8191 bytes of tags + 512 of message.
pub const MAX_LINE: usize = 8191 + 512;

/// One IRC message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Msg {
    pub tags: HashMap<String, String>,
    /// `nick!user@host` or a server name.
    pub prefix: Option<String>,
    pub command: String,
    pub params: Vec<String>,
}

impl Msg {
    /// Parse one line (without CR LF). `None` for an empty or command-less line.
    pub fn parse(line: &str) -> Option<Msg> {
        let mut rest = line.trim_end_matches(['\r', '\n']);
        let mut m = Msg::default();
        if let Some(r) = rest.strip_prefix('@') {
            let (tags, r) = r.split_once(' ')?;
            for tag in tags.split(';').filter(|t| !t.is_empty()) {
                let (k, v) = tag.split_once('=').unwrap_or((tag, ""));
                m.tags.insert(k.to_owned(), unescape_tag(v));
            }
            rest = r.trim_start_matches(' ');
        }
        if let Some(r) = rest.strip_prefix(':') {
            let (prefix, r) = r.split_once(' ')?;
            m.prefix = Some(prefix.to_owned());
            rest = r.trim_start_matches(' ');
        }
        let (command, mut rest) = match rest.split_once(' ') {
            Some((c, r)) => (c, r),
            None => (rest, ""),
        };
        if command.is_empty() {
            return None;
        }
        m.command = command.to_ascii_uppercase();
        loop {
            rest = rest.trim_start_matches(' ');
            if rest.is_empty() {
                break;
            }
            if let Some(trailing) = rest.strip_prefix(':') {
                m.params.push(trailing.to_owned());
                break;
            }
            match rest.split_once(' ') {
                Some((p, r)) => {
                    m.params.push(p.to_owned());
                    rest = r;
                }
                None => {
                    m.params.push(rest.to_owned());
                    break;
                }
            }
        }
        Some(m)
    }

    /// The nick of the prefix.
    pub fn nick(&self) -> Option<&str> {
        self.prefix.as_deref().map(|p| p.split(['!', '@']).next().unwrap_or(p))
    }

    pub fn param(&self, i: usize) -> &str {
        self.params.get(i).map(String::as_str).unwrap_or("")
    }

    /// The services account from the `account` tag.
    pub fn account(&self) -> Option<&str> {
        self.tags
            .get("account")
            .map(String::as_str)
            .filter(|a| !a.is_empty() && *a != "*")
    }
}

fn unescape_tag(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(':') => out.push(';'),
            Some('s') => out.push(' '),
            Some('\\') => out.push('\\'),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// A command line: `COMMAND params… :trailing`. Parameters and trailing
/// text must not contain CR, LF or NUL; they are replaced by spaces.
pub fn line(command: &str, params: &[&str], trailing: Option<&str>) -> String {
    let clean = |s: &str| s.replace(['\r', '\n', '\0'], " ");
    let mut l = command.to_owned();
    for p in params {
        l.push(' ');
        l.push_str(&clean(p).replace(' ', ""));
    }
    if let Some(t) = trailing {
        l.push_str(" :");
        l.push_str(&clean(t));
    }
    l
}

/// The server's CASEMAPPING.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseMapping {
    Ascii,
    Rfc1459,
    Rfc1459Strict,
}

impl CaseMapping {
    pub fn parse(s: &str) -> CaseMapping {
        match s.to_ascii_lowercase().as_str() {
            "ascii" => CaseMapping::Ascii,
            "rfc1459-strict" | "strict-rfc1459" => CaseMapping::Rfc1459Strict,
            _ => CaseMapping::Rfc1459,
        }
    }

    pub fn lower_char(self, c: char) -> char {
        match (self, c) {
            (_, 'A'..='Z') => c.to_ascii_lowercase(),
            (CaseMapping::Rfc1459 | CaseMapping::Rfc1459Strict, '[') => '{',
            (CaseMapping::Rfc1459 | CaseMapping::Rfc1459Strict, ']') => '}',
            (CaseMapping::Rfc1459 | CaseMapping::Rfc1459Strict, '\\') => '|',
            (CaseMapping::Rfc1459, '~') => '^',
            _ => c,
        }
    }

    pub fn lower(self, s: &str) -> String {
        s.chars().map(|c| self.lower_char(c)).collect()
    }
}

/// Text without IRC formatting: bold, colours (`\x03` with its digits,
/// `\x04` with hex), italics, underline, strike-through, monospace,
/// reverse, reset, and any other control character.
pub fn strip_formatting(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x03' => {
                let mut fg = false;
                for _ in 0..2 {
                    if chars.peek().is_some_and(|c| c.is_ascii_digit()) {
                        chars.next();
                        fg = true;
                    }
                }
                if fg && chars.peek() == Some(&',') {
                    let mut look = chars.clone();
                    look.next();
                    if look.peek().is_some_and(|c| c.is_ascii_digit()) {
                        chars.next();
                        for _ in 0..2 {
                            if chars.peek().is_some_and(|c| c.is_ascii_digit()) {
                                chars.next();
                            }
                        }
                    }
                }
            }
            '\x04' => {
                let mut fg = false;
                for _ in 0..6 {
                    if chars.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                        chars.next();
                        fg = true;
                    }
                }
                if fg && chars.peek() == Some(&',') {
                    let mut look = chars.clone();
                    look.next();
                    if look.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                        chars.next();
                        for _ in 0..6 {
                            if chars.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                                chars.next();
                            }
                        }
                    }
                }
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Split `text` into pieces of at most `max` bytes, at grapheme cluster
/// boundaries (a character boundary only inside a cluster longer than
/// `max`), preferring spaces.
pub fn split_text(text: &str, max: usize) -> Vec<String> {
    let max = max.max(4);
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = pushbridge_kit::text::split_point(rest, max);
        if let Some(space) = rest[..cut].rfind(' ').filter(|&i| i > max / 2) {
            cut = space;
        }
        out.push(rest[..cut].to_owned());
        rest = rest[cut..].trim_start_matches(' ');
    }
    if !rest.is_empty() || out.is_empty() {
        out.push(rest.to_owned());
    }
    out
}

/// The AUTHENTICATE payload for SASL PLAIN (RFC 4616): base64 of
/// `authzid NUL authcid NUL password`, in chunks of 400 (a final `+` when
/// the last chunk is exactly 400 bytes).
pub fn sasl_plain(account: &str, password: &str) -> Vec<String> {
    let raw = format!("{account}\0{account}\0{password}");
    let b64 = base64::engine::general_purpose::STANDARD.encode(raw.as_bytes());
    let mut chunks: Vec<String> = b64
        .as_bytes()
        .chunks(400)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    if chunks.last().is_none_or(|c| c.len() == 400) {
        chunks.push("+".to_owned());
    }
    chunks
}

fn is_nick_char(c: char) -> bool {
    c.is_alphanumeric() || "[]\\`^{}|-_".contains(c)
}

/// Whether `word` appears in `text` as a whole word (not inside a longer
/// nick), compared under `cm`.
pub fn mentions(text: &str, word: &str, cm: CaseMapping) -> bool {
    Lowered::new(text, cm).mentions(word)
}

/// A text lowered once under a case mapping, for many [`Lowered::mentions`]
/// checks (one per watched account: lowering the text for each would cost
/// accounts x line length per channel message).
pub struct Lowered {
    chars: Vec<char>,
    cm: CaseMapping,
}

impl Lowered {
    /// `text` under `cm`.
    pub fn new(text: &str, cm: CaseMapping) -> Self {
        Self {
            chars: cm.lower(text).chars().collect(),
            cm,
        }
    }

    /// Whether `word` appears as a whole word (not inside a longer nick).
    pub fn mentions(&self, word: &str) -> bool {
        let text = &self.chars;
        let word: Vec<char> = self.cm.lower(word).chars().collect();
        if word.is_empty() || word.len() > text.len() {
            return false;
        }
        (0..=text.len() - word.len()).any(|i| {
            text[i..i + word.len()] == word[..]
                && (i == 0 || !is_nick_char(text[i - 1]))
                && (i + word.len() == text.len() || !is_nick_char(text[i + word.len()]))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tags_prefix_params_and_trailing() {
        let m = Msg::parse(
            "@time=2026-01-01T00:00:00.000Z;msgid=abc;account=dave;note=a\\sb\\:c :dave!dave@127.0.0.1 PRIVMSG #test :hello :) there",
        )
        .unwrap();
        assert_eq!(m.tags["account"], "dave");
        assert_eq!(m.tags["note"], "a b;c");
        assert_eq!(m.account(), Some("dave"));
        assert_eq!(m.nick(), Some("dave"));
        assert_eq!(m.command, "PRIVMSG");
        assert_eq!(m.params, ["#test", "hello :) there"]);
        let m = Msg::parse("PING irc.localhost").unwrap();
        assert_eq!((m.command.as_str(), m.param(0)), ("PING", "irc.localhost"));
        let m = Msg::parse(":srv 730 bot :alice!a@h,bob").unwrap();
        assert_eq!(m.params, ["bot", "alice!a@h,bob"]);
        let m = Msg::parse(":srv CAP * LS * :sasl=PLAIN,EXTERNAL multi-prefix").unwrap();
        assert_eq!(m.params, ["*", "LS", "*", "sasl=PLAIN,EXTERNAL multi-prefix"]);
        assert!(Msg::parse("").is_none());
        assert!(Msg::parse("@only-tags").is_none());
        assert_eq!(Msg::parse("AUTHENTICATE +").unwrap().param(0), "+");
    }

    #[test]
    fn casemapping_and_highlights() {
        let r = CaseMapping::Rfc1459;
        assert_eq!(r.lower("Al[i]ce~\\"), "al{i}ce^|");
        assert_eq!(CaseMapping::Ascii.lower("Al[i]ce"), "al[i]ce");
        assert!(mentions("hey ALICE, lunch?", "alice", r));
        assert!(mentions("alice: ping", "Alice", r));
        assert!(mentions("(alice)", "alice", r));
        assert!(!mentions("malice aforethought", "alice", r));
        assert!(!mentions("alice_ is not her", "alice", r));
        assert!(!mentions("alices", "alice", r));
        assert!(mentions("ping {bot}!", "[bot]", r));
        assert!(!mentions("ping {bot}!", "[bot]", CaseMapping::Ascii));
        assert!(mentions("ÄLICE? no: alice.", "alice", r));
    }

    #[test]
    fn formatting_is_stripped() {
        assert_eq!(
            strip_formatting("\x02bold\x02 \x0304,12red\x03 \x1Fu\x1F \x1Dit\x0F"),
            "bold red u it"
        );
        assert_eq!(strip_formatting("\x031,2x \x03,5y"), "x ,5y");
        assert_eq!(
            strip_formatting("\x04ff00ffhex\x04 \x11mono\x16rev\x1Es"),
            "hex monorevs"
        );
        assert_eq!(strip_formatting("a\x01b\tc"), "abc");
    }

    #[test]
    fn long_text_splits_on_char_boundaries() {
        let s = "é".repeat(300); // 600 bytes
        let parts = split_text(&s, 401);
        assert!(parts.iter().all(|p| p.len() <= 401));
        assert_eq!(parts.concat(), s);
        let words = "word ".repeat(100);
        let parts = split_text(words.trim(), 50);
        assert!(parts.iter().all(|p| p.len() <= 50 && !p.starts_with(' ')));
        assert_eq!(parts.join(" "), words.trim());
        assert_eq!(split_text("", 10), [""]);
    }

    #[test]
    fn long_text_splits_between_grapheme_clusters() {
        let family = "👨\u{200d}👩\u{200d}👧\u{200d}👦"; // 25 bytes
        for (s, unit) in [
            ("🇩🇪".repeat(100), 8),
            ("e\u{301}".repeat(300), 3),
            (family.repeat(40), family.len()),
        ] {
            let parts = split_text(&s, 401);
            assert_eq!(parts.concat(), s);
            for p in &parts {
                assert!(p.len() <= 401 && p.len() % unit == 0, "{} bytes", p.len());
            }
        }
    }

    #[test]
    fn sasl_plain_encoding() {
        // RFC 4616 §4 style: authzid = authcid = tim, password tanstaaftanstaaf.
        assert_eq!(
            sasl_plain("tim", "tanstaaftanstaaf"),
            ["dGltAHRpbQB0YW5zdGFhZnRhbnN0YWFm"]
        );
        let long = sasl_plain("a", &"p".repeat(600));
        assert!(long.len() == 3 && long[0].len() == 400 && long[2].len() < 400);
        // 300 raw bytes encode to exactly 400 characters: a "+" follows.
        let exact = sasl_plain("a", &"p".repeat(300 - 4));
        assert_eq!(exact, [exact[0].clone(), "+".to_owned()]);
        assert_eq!(exact[0].len(), 400);
    }

    #[test]
    fn lines_cannot_be_injected() {
        assert_eq!(line("PRIVMSG", &["#c"], Some("a\r\nQUIT :x")), "PRIVMSG #c :a  QUIT :x");
        assert_eq!(line("NICK", &["bo t"], None), "NICK bot");
    }
}
