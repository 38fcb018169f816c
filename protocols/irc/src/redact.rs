//! What the raw-line traces (`irc <`, `irc >`) show of a line: the line
//! itself, minus what must not reach a log. One function, [`redact_line`],
//! for lines in both directions:
//!
//! - `AUTHENTICATE <response>` (SASL, base64 of the account and password):
//!   `AUTHENTICATE <redacted>`; the mechanism names, `+` and `*` stay.
//! - `PASS <password>`: `PASS <redacted>`; `OPER <name> <password>`:
//!   `OPER <name> <redacted>`.
//! - `PRIVMSG`/`NOTICE` text (private to its sender and readers): its
//!   length only, `<text: 17 bytes>`; except a command to the bot (a
//!   target that is not a channel, a text starting with a bot command),
//!   which keeps the command word and its non-text arguments: `REGISTER
//!   <token> [topic] [sandbox]` with the token shortened, `TELL <nick>
//!   <text: 9 bytes>`.
//! - everywhere: runs of 32+ hex digits (device tokens) cut to their first
//!   8 digits and `…` ([`pushbridge_kit::redact::shorten_hex`]).

use std::borrow::Cow;

use pushbridge_kit::redact::{shorten_hex, text_len, REDACTED};

use crate::msg::strip_formatting;

/// SASL mechanism names: an `AUTHENTICATE` parameter that is one of these
/// (or `+`, `*`) is shown, anything else is a response and redacted.
const MECHANISMS: &[&str] = &[
    "PLAIN",
    "EXTERNAL",
    "SCRAM-SHA-1",
    "SCRAM-SHA-256",
    "SCRAM-SHA-512",
    "ECDSA-NIST256P-CHALLENGE",
];

/// `line` (without CR LF) as a trace may show it; borrowed when nothing
/// in it needs hiding.
pub fn redact_line(line: &str) -> Cow<'_, str> {
    match redact_command(line) {
        Some(r) => Cow::Owned(shorten_hex(&r).into_owned()),
        None => shorten_hex(line),
    }
}

/// The line with its secret or text replaced, `None` when it holds none.
fn redact_command(line: &str) -> Option<String> {
    let (head, command, params) = split(line);
    match command.to_ascii_uppercase().as_str() {
        "AUTHENTICATE" => {
            let p = params.strip_prefix(':').unwrap_or(params).trim_end();
            let shown = p.is_empty() || p == "+" || p == "*" || MECHANISMS.iter().any(|m| m.eq_ignore_ascii_case(p));
            (!shown).then(|| format!("{head}{REDACTED}"))
        }
        "PASS" => (!params.is_empty()).then(|| format!("{head}{REDACTED}")),
        "OPER" => {
            let name = params.split(' ').next().unwrap_or("");
            Some(format!("{head}{name} {REDACTED}"))
        }
        "PRIVMSG" | "NOTICE" => {
            let (target, text) = match params.split_once(' ') {
                Some((t, r)) => (t, r.trim_start_matches(' ')),
                None => (params, ""),
            };
            let text = text.strip_prefix(':').unwrap_or(text);
            let is_channel = target.starts_with(['#', '&', '+', '!']);
            let shown = (!is_channel)
                .then(|| bot_command(text))
                .flatten()
                .unwrap_or_else(|| text_len(text));
            Some(format!("{head}{target} :{shown}"))
        }
        _ => None,
    }
}

/// Split a line into its head (tags, prefix and command, with the spaces
/// after it), the command word and the parameters.
fn split(line: &str) -> (&str, &str, &str) {
    let mut at = 0;
    for lead in ['@', ':'] {
        if line[at..].starts_with(lead) {
            at = skip_word(line, at);
        }
    }
    let command_at = at;
    let command_end = line[at..].find(' ').map_or(line.len(), |i| at + i);
    let params_at = skip_word(line, at);
    (&line[..params_at], &line[command_at..command_end], &line[params_at..])
}

/// The index after the word starting at `at` and the spaces after it.
fn skip_word(line: &str, at: usize) -> usize {
    let end = line[at..].find(' ').map_or(line.len(), |i| at + i);
    end + line[end..].len() - line[end..].trim_start_matches(' ').len()
}

/// A private message to the bot shown as its command (the verbs of
/// `bot::commands`), or `None` when it is not one.
fn bot_command(text: &str) -> Option<String> {
    let plain = strip_formatting(text);
    let t = plain.trim_start();
    let (verb, rest) = t.split_once(char::is_whitespace).unwrap_or((t, ""));
    let verb = verb.to_ascii_uppercase();
    let rest = rest.trim();
    match verb.as_str() {
        "REGISTER" | "UNREGISTER" => Some(format!("{verb} {rest}").trim_end().to_owned()),
        "HELP" | "STATUS" if rest.is_empty() => Some(verb),
        "TELL" => {
            let (nick, said) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            Some(format!("{verb} {nick} {}", text_len(said.trim_start())))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::sasl_plain;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn sasl_responses_and_passwords_are_redacted() {
        let b64 = &sasl_plain("bot", "hunter2")[0];
        assert_eq!(redact_line(&format!("AUTHENTICATE {b64}")), "AUTHENTICATE <redacted>");
        assert_eq!(redact_line(&format!("AUTHENTICATE :{b64}")), "AUTHENTICATE <redacted>");
        // Uppercase base64 that is no mechanism is redacted too.
        assert_eq!(redact_line("AUTHENTICATE QUJD"), "AUTHENTICATE <redacted>");
        for shown in [
            "AUTHENTICATE PLAIN",
            "AUTHENTICATE +",
            "AUTHENTICATE *",
            "AUTHENTICATE scram-sha-256",
        ] {
            assert_eq!(redact_line(shown), shown);
        }
        assert_eq!(redact_line("PASS :s3cret pw"), "PASS <redacted>");
        assert_eq!(redact_line("pass s3cret"), "pass <redacted>");
        assert_eq!(redact_line("OPER root s3cret"), "OPER root <redacted>");
    }

    #[test]
    fn message_text_is_its_length() {
        assert_eq!(
            redact_line("@time=x;account=alice :alice!a@h PRIVMSG #chan :bob: my secret plan"),
            "@time=x;account=alice :alice!a@h PRIVMSG #chan :<text: 19 bytes>"
        );
        assert_eq!(redact_line("PRIVMSG bob word"), "PRIVMSG bob :<text: 4 bytes>");
        assert_eq!(
            redact_line("NOTICE alice :I push IRC highlights"),
            "NOTICE alice :<text: 21 bytes>"
        );
        assert_eq!(redact_line(":srv NOTICE *"), ":srv NOTICE * :<text: 0 bytes>");
        // A bot command word in a channel is channel text.
        assert_eq!(
            redact_line(":a!b@c PRIVMSG #c :register this thought"),
            ":a!b@c PRIVMSG #c :<text: 21 bytes>"
        );
        // CTCP is text.
        assert_eq!(
            redact_line(":a!b@c PRIVMSG bot :\x01ACTION waves\x01"),
            ":a!b@c PRIVMSG bot :<text: 14 bytes>"
        );
    }

    #[test]
    fn bot_commands_keep_their_shape_with_tokens_shortened() {
        assert_eq!(
            redact_line(&format!(
                ":alice!a@h PRIVMSG pushbot :REGISTER {TOKEN} com.example.chat sandbox"
            )),
            ":alice!a@h PRIVMSG pushbot :REGISTER 01234567… com.example.chat sandbox"
        );
        assert_eq!(
            redact_line(&format!(
                ":alice!a@h PRIVMSG pushbot :unregister {}",
                TOKEN.to_uppercase()
            )),
            ":alice!a@h PRIVMSG pushbot :UNREGISTER 01234567…"
        );
        assert_eq!(
            redact_line(":alice!a@h PRIVMSG pushbot :TELL bob meet me at 5"),
            ":alice!a@h PRIVMSG pushbot :TELL bob <text: 12 bytes>"
        );
        assert_eq!(
            redact_line(":a!b@c PRIVMSG pushbot :STATUS"),
            ":a!b@c PRIVMSG pushbot :STATUS"
        );
        assert_eq!(
            redact_line(":a!b@c PRIVMSG pushbot :help me with my password"),
            ":a!b@c PRIVMSG pushbot :<text: 24 bytes>"
        );
    }

    #[test]
    fn other_lines_pass_with_hex_runs_cut() {
        for l in [
            "PING :abc",
            ":srv 001 pushbot :Welcome",
            "CAP REQ :sasl account-tag",
            "",
            "@x",
            ":p",
        ] {
            assert!(matches!(redact_line(l), Cow::Borrowed(b) if b == l), "{l}");
        }
        assert_eq!(
            redact_line(&format!(":srv 999 pushbot {TOKEN} :x")),
            ":srv 999 pushbot 01234567… :x"
        );
    }
}
