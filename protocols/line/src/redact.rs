//! What the `line <` trace shows of a command line: the line itself, minus
//! what must not reach a log. `AUTH <secret>` is `AUTH <redacted>`; the
//! text of `MSG <from> <to> <text>` is its length only; every run of 32+
//! hex digits (a device token in `REGISTER`, `UNREGISTER` or anywhere) is
//! cut to its first 8 digits and `…`, as `DeviceToken::short` everywhere
//! else in the logs.

use pushbridge_kit::redact::{shorten_hex, text_len, REDACTED};

/// A received line (without its terminator, maybe not UTF-8: decoded
/// lossily) as a trace may show it.
pub fn redact_line(line: &[u8]) -> String {
    let line = String::from_utf8_lossy(line);
    let (word, rest) = line.split_once(' ').unwrap_or((&line, ""));
    match word.to_ascii_uppercase().as_str() {
        "AUTH" => format!("{word} {REDACTED}"),
        "MSG" => {
            let mut parts = rest.splitn(3, ' ');
            let (from, to, text) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            shorten_hex(&format!("{word} {from} {to} {}", text_len(text))).into_owned()
        }
        _ => shorten_hex(&line).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_text_and_tokens_are_hidden() {
        let token = "ab".repeat(32);
        assert_eq!(redact_line(b"AUTH s3 cret"), "AUTH <redacted>");
        assert_eq!(redact_line(b"auth"), "auth <redacted>");
        assert_eq!(
            redact_line(b"MSG bob alice see you at the usual place"),
            "MSG bob alice <text: 26 bytes>"
        );
        assert_eq!(redact_line(b"MSG bob"), "MSG bob  <text: 0 bytes>");
        assert_eq!(
            redact_line(format!("REGISTER alice {token} com.example.chat sandbox").as_bytes()),
            "REGISTER alice abababab… com.example.chat sandbox"
        );
        assert_eq!(
            redact_line(format!("UNREGISTER alice {}", token.to_uppercase()).as_bytes()),
            "UNREGISTER alice ABABABAB…"
        );
        assert_eq!(redact_line(b"PRESENCE alice away"), "PRESENCE alice away");
        assert_eq!(redact_line(b"PING \xff"), "PING \u{fffd}");
    }
}
