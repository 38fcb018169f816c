//! The bot's own session with the server: registration (`NICK`/`USER`),
//! capability negotiation (IRCv3 CAP 302, multi-line `LS`), SASL PLAIN
//! (IRCv3 `sasl-3.1`), nick retries while the nick is taken, ISUPPORT
//! (`CASEMAPPING`, `MONITOR`), and joining the channels once welcomed.

use pushbridge_api::AdapterError;

use super::{Bot, Output};
use crate::msg::{line, sasl_plain, CaseMapping, Msg};

/// Capabilities the bot asks for when offered.
pub const WANTED_CAPS: [&str; 7] = [
    "sasl",
    "message-tags",
    "server-time",
    "away-notify",
    "account-notify",
    "extended-join",
    "account-tag",
];

/// Nick attempts before the bot gives up registering.
const MAX_NICK_TRIES: u32 = 50;

impl Bot {
    /// The opening lines: `CAP LS 302`, `NICK`, `USER`.
    pub fn start(&self) -> Vec<Output> {
        let c = self.ctx.config();
        let user = c.username.clone().unwrap_or_else(|| c.nick.clone());
        let real = c.realname.clone().unwrap_or_else(|| "pushbridge push gateway".into());
        vec![
            Output::Now("CAP LS 302".into()),
            Output::Now(line("NICK", &[&self.nick], None)),
            Output::Now(line("USER", &[&user, "0", "*"], Some(&real))),
        ]
    }

    /// `CAP LS` / `ACK` / `NAK`: ask for the [`WANTED_CAPS`] on offer
    /// (SASL only with an account configured), then log in or end.
    pub(super) fn cap(&mut self, m: &Msg, out: &mut Vec<Output>) {
        match m.param(1) {
            "LS" => {
                let more = m.params.len() >= 4 && m.param(2) == "*";
                let list = m.params.last().map(String::as_str).unwrap_or("");
                for cap in list.split_whitespace() {
                    self.offered.insert(cap.split('=').next().unwrap_or(cap).to_owned());
                }
                if more {
                    return;
                }
                let want: Vec<&str> = WANTED_CAPS
                    .iter()
                    .copied()
                    .filter(|c| self.offered.contains(*c))
                    .filter(|c| *c != "sasl" || self.ctx.config().sasl_account.is_some())
                    .collect();
                if want.is_empty() {
                    self.end_cap(out);
                } else {
                    out.push(Output::Now(format!("CAP REQ :{}", want.join(" "))));
                }
            }
            "ACK" => {
                for c in m.params.last().map(String::as_str).unwrap_or("").split_whitespace() {
                    self.caps.insert(c.trim_start_matches('-').to_owned());
                }
                if self.caps.contains("sasl") && self.ctx.config().sasl_account.is_some() {
                    out.push(Output::Now("AUTHENTICATE PLAIN".into()));
                } else {
                    self.end_cap(out);
                }
            }
            "NAK" => self.end_cap(out),
            _ => {}
        }
    }

    fn end_cap(&self, out: &mut Vec<Output>) {
        if self.ctx.config().sasl_account.is_some() && !self.caps.contains("sasl") {
            tracing::warn!(
                adapter = self.ctx.name(),
                "the server offers no SASL; the bot stays logged out"
            );
        }
        out.push(Output::Now("CAP END".into()));
    }

    /// `AUTHENTICATE +`: send the SASL PLAIN credentials.
    pub(super) fn authenticate(&self, out: &mut Vec<Output>) {
        if let (Some(a), Some(p)) = (&self.ctx.config().sasl_account, &self.ctx.config().sasl_password) {
            for chunk in sasl_plain(a, p) {
                out.push(Output::Now(format!("AUTHENTICATE {chunk}")));
            }
        }
    }

    /// 900 `RPL_LOGGEDIN`.
    pub(super) fn logged_in(&self, m: &Msg) {
        tracing::info!(adapter = self.ctx.name(), account = %m.param(2), "logged in to services");
    }

    /// The end of SASL: 903 success, 906 aborted, 907 already logged in
    /// end the negotiation; 902, 904, 905 (refused) fail the connection, as
    /// the configured credentials will not work on a retry either.
    pub(super) fn sasl_done(&self, m: &Msg, out: &mut Vec<Output>) {
        match m.command.as_str() {
            "902" | "904" | "905" => out.push(Output::Fail(AdapterError::Config(format!(
                "SASL login as {:?} refused: {}",
                self.ctx.config().sasl_account.as_deref().unwrap_or(""),
                m.params.last().map(String::as_str).unwrap_or("")
            )))),
            _ => out.push(Output::Now("CAP END".into())),
        }
    }

    /// 001 `RPL_WELCOME`: registered under the nick it names; join the
    /// channels.
    pub(super) fn welcome(&mut self, m: &Msg, out: &mut Vec<Output>) {
        self.nick = m.param(0).to_owned();
        self.registered = true;
        self.ctx.status().set_connected();
        tracing::info!(adapter = self.ctx.name(), nick = %self.nick, "registered on the IRC network");
        let chans = &self.ctx.config().channels;
        if !chans.is_empty() {
            out.push(Output::Now(line("JOIN", &[&chans.join(",")], None)));
        }
    }

    /// 005 `RPL_ISUPPORT`: `CASEMAPPING` and `MONITOR`.
    pub(super) fn isupport(&mut self, m: &Msg) {
        let end = m.params.len().saturating_sub(1);
        for tok in m.params.get(1..end).unwrap_or_default() {
            let (k, v) = tok.split_once('=').unwrap_or((tok, ""));
            match k {
                "CASEMAPPING" => self.cm = CaseMapping::parse(v),
                "MONITOR" => self.monitor = true,
                _ => {}
            }
        }
    }

    /// 432 (erroneous), 433 (in use), 436 (collision), 437 (unavailable)
    /// before the welcome. A configured nick the server calls erroneous is
    /// a config error; otherwise the next nick is tried.
    pub(super) fn nick_refused(&mut self, m: &Msg, out: &mut Vec<Output>) {
        if m.command == "432" && self.nick_tries == 0 {
            out.push(Output::Fail(AdapterError::Config(format!(
                "the server refuses the nick {:?}: {}",
                self.nick,
                m.params.last().map(String::as_str).unwrap_or("")
            ))));
        } else {
            self.next_nick(out);
        }
    }

    /// The next nick to try after the server refused the current one:
    /// `<nick>_`, then `<nick>_2`, … cut to 9 characters.
    fn next_nick(&mut self, out: &mut Vec<Output>) {
        self.nick_tries += 1;
        if self.nick_tries > MAX_NICK_TRIES {
            out.push(Output::Fail(AdapterError::Config(format!(
                "the server refused {} nicks derived from {:?}",
                MAX_NICK_TRIES,
                self.ctx.config().nick
            ))));
            return;
        }
        let base = &self.ctx.config().nick;
        self.nick = if self.nick_tries == 1 {
            format!("{base}_")
        } else {
            // Stay within the 9 characters every server allows.
            let n = self.nick_tries.to_string();
            let keep: String = base.chars().take(9 - n.len() - 1).collect();
            format!("{keep}_{n}")
        };
        out.push(Output::Now(line("NICK", &[&self.nick], None)));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{bot, feed};
    use crate::msg::{sasl_plain, CaseMapping};

    #[tokio::test]
    async fn multi_line_cap_ls_then_sasl_plain() {
        let (mut b, _) = bot(serde_json::json!({"sasl_account": "bot", "sasl_password": "pw"})).await;
        let out = feed(
            &mut b,
            &[
                ":srv CAP * LS * :multi-prefix sasl=PLAIN,EXTERNAL",
                ":srv CAP * LS :account-tag away-notify",
            ],
        )
        .await;
        assert_eq!(out, vec!["CAP REQ :sasl away-notify account-tag"]);
        let out = feed(&mut b, &[":srv CAP * ACK :sasl away-notify account-tag"]).await;
        assert_eq!(out, vec!["AUTHENTICATE PLAIN"]);
        let out = feed(&mut b, &["AUTHENTICATE +"]).await;
        assert_eq!(out, vec![format!("AUTHENTICATE {}", sasl_plain("bot", "pw")[0])]);
        assert_eq!(
            feed(&mut b, &[":srv 903 * :SASL authentication successful"]).await,
            vec!["CAP END"]
        );
        let out = feed(&mut b, &[":srv 904 * :SASL authentication failed"]).await;
        assert!(out[0].starts_with("FAIL") && out[0].contains("\"bot\""), "{out:?}");
    }

    #[tokio::test]
    async fn without_sasl_configured_sasl_is_not_requested() {
        let (mut b, _) = bot(serde_json::json!({})).await;
        let out = feed(&mut b, &[":srv CAP * LS :sasl message-tags"]).await;
        assert_eq!(out, vec!["CAP REQ :message-tags"]);
        assert_eq!(feed(&mut b, &[":srv CAP * NAK :message-tags"]).await, vec!["CAP END"]);
    }

    #[tokio::test]
    async fn nick_collisions_stay_short_and_an_erroneous_nick_is_a_config_error() {
        let (mut b, _) = bot(serde_json::json!({"nick": "pushbridge"})).await;
        let out = feed(&mut b, &[":srv 433 * pushbridge :Nickname is already in use"]).await;
        assert_eq!(out, vec!["NICK pushbridge_"]);
        let out = feed(
            &mut b,
            &[":srv 433 * pushbridge_ :in use", ":srv 437 * pushbri_2 :unavailable"],
        )
        .await;
        assert_eq!(out, vec!["NICK pushbri_2", "NICK pushbri_3"]);
        let out = feed(&mut b, &[":srv 432 * pushbri_3 :Erroneous"]).await;
        assert_eq!(
            out,
            vec!["NICK pushbri_4"],
            "a derived nick the server dislikes: try the next"
        );
        let (mut b, _) = bot(serde_json::json!({"nick": "bad"})).await;
        let out = feed(&mut b, &[":srv 432 * bad :Erroneous Nickname"]).await;
        assert!(out[0].starts_with("FAIL") && out[0].contains("bad"), "{out:?}");
    }

    #[tokio::test]
    async fn short_isupport_lines_do_not_panic() {
        let (mut b, _) = bot(serde_json::json!({})).await;
        assert!(feed(&mut b, &[":srv 005", ":srv 005 me", ":srv 005 me :are supported"])
            .await
            .is_empty());
        feed(&mut b, &[":srv 005 me CASEMAPPING=ascii MONITOR=100 :are supported"]).await;
        assert!(b.monitor && b.cm == CaseMapping::Ascii);
    }
}
