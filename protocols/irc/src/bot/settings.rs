//! A user's notification settings, sent to the bot privately from a
//! vouched services account: `MUTE <#channel|nick> [minutes]`, `UNMUTE
//! <#channel|nick>`, `QUIET <HH:MM>-<HH:MM> <zone>`, `QUIET off`; kept by
//! the core (in its store) for the account's user and shown by `STATUS`.
//!
//! A conversation is what the push's `thread-id` is: the channel of a
//! highlight, the sender's nick for a TELL. A channel the bot watches is
//! named as configured, whatever case the user types.

use std::time::Duration;

use pushbridge_api::settings::{QuietHours, Settings};
use pushbridge_api::{Event, Reply};

use super::{Bot, Output};

/// Longest mute, in minutes (a year).
const MAX_MUTE_MINUTES: u64 = 525_600;

impl Bot {
    /// `MUTE`, `UNMUTE` or `QUIET` (`verb`, upper case) for `account`.
    pub(super) async fn setting(
        &mut self,
        sender: &str,
        account: &str,
        verb: &str,
        args: &[&str],
        out: &mut Vec<Output>,
    ) {
        let Some(user) = self.user(account) else {
            return self.notice(sender, "Your account name cannot be used as a user id.", out);
        };
        let (event, done) = match (verb, args) {
            ("MUTE", [conv]) | ("MUTE", [conv, _]) => {
                let minutes = match args.get(1).map(|m| m.parse::<u64>()) {
                    None => None,
                    Some(Ok(m)) if (1..=MAX_MUTE_MINUTES).contains(&m) => Some(m),
                    Some(_) => {
                        return self.notice(
                            sender,
                            &format!("Minutes must be 1 to {MAX_MUTE_MINUTES}. Usage: MUTE <#channel> [minutes]"),
                            out,
                        )
                    }
                };
                let conversation = self.conversation(conv);
                let done = match minutes {
                    Some(m) => format!("Muted {conversation} for {m} minute(s): no alerts, the badge still counts."),
                    None => format!("Muted {conversation} until you UNMUTE it: no alerts, the badge still counts."),
                };
                let duration = minutes.map(|m| Duration::from_secs(m * 60));
                (
                    Event::Mute {
                        user,
                        conversation,
                        duration,
                    },
                    done,
                )
            }
            ("UNMUTE", [conv]) => {
                let conversation = self.conversation(conv);
                let done = format!("{conversation} is no longer muted.");
                (Event::Unmute { user, conversation }, done)
            }
            ("QUIET", [off]) if off.eq_ignore_ascii_case("off") => {
                (Event::Quiet { user, hours: None }, "Quiet hours off.".to_owned())
            }
            ("QUIET", [hours, zone]) => match QuietHours::parse(hours, zone) {
                Ok(q) => {
                    let done = format!("Quiet hours {q}: pushes arrive silently then.");
                    (Event::Quiet { user, hours: Some(q) }, done)
                }
                Err(e) => return self.notice(sender, &format!("{e}. Usage: QUIET 22:00-07:00 Europe/Berlin"), out),
            },
            ("MUTE", _) => return self.notice(sender, "Usage: MUTE <#channel> [minutes]", out),
            ("UNMUTE", _) => return self.notice(sender, "Usage: UNMUTE <#channel>", out),
            _ => return self.notice(sender, "Usage: QUIET <HH:MM>-<HH:MM> <zone> | QUIET off", out),
        };
        match self.ctx.submit(event).await {
            Ok(_) => self.notice(sender, &done, out),
            Err(e) => self.notice(sender, &format!("Could not change that now: {e}"), out),
        }
    }

    /// The conversation key for what the user typed: a watched channel as
    /// configured (highlights carry that name), anything else as typed.
    fn conversation(&self, typed: &str) -> String {
        let lower = self.lower(typed);
        self.ctx
            .config()
            .channels
            .iter()
            .find(|c| self.lower(c) == lower)
            .cloned()
            .unwrap_or_else(|| typed.to_owned())
    }

    /// The `STATUS` lines about `account`'s settings.
    pub(super) async fn settings_status(&mut self, sender: &str, account: &str, out: &mut Vec<Output>) {
        let Some(user) = self.user(account) else { return };
        let settings = match self.ctx.submit(Event::Settings { user }).await {
            Ok(Reply::Settings(s)) => s,
            _ => return self.notice(sender, "Your quiet hours and mutes cannot be read now.", out),
        };
        self.notice(sender, &describe(&settings), out);
    }
}

/// `Quiet hours: … Muted: …` in one line.
fn describe(s: &Settings) -> String {
    let quiet = match &s.quiet {
        Some(q) => format!("Quiet hours {q}."),
        None => "No quiet hours.".to_owned(),
    };
    if s.muted.is_empty() {
        return format!("{quiet} Nothing muted.");
    }
    let muted: Vec<String> = s
        .muted
        .iter()
        .map(|m| match m.remaining {
            Some(left) => format!("{} ({} min left)", m.conversation, left.as_secs().div_ceil(60)),
            None => format!("{} (until UNMUTE)", m.conversation),
        })
        .collect();
    format!("{quiet} Muted: {}.", muted.join(", "))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{account_tag_bot, feed, settle};
    use super::*;
    use pushbridge_api::settings::Muted;

    const LOGGED_IN: &str = "@account=alice :alice!a@h PRIVMSG pushbridge :";

    #[tokio::test]
    async fn settings_commands_from_a_vouched_account() {
        let (mut b, events) = account_tag_bot().await;
        let say = |cmd: &str| format!("{LOGGED_IN}{cmd}");
        let out = feed(&mut b, &[&say("MUTE #CHAT 10")]).await;
        assert!(
            out.iter().any(|l| l.contains("Muted #chat for 10 minute(s)")),
            "{out:?}"
        );
        let out = feed(&mut b, &[&say("UNMUTE #chat")]).await;
        assert!(out.iter().any(|l| l.contains("#chat is no longer muted")), "{out:?}");
        let out = feed(&mut b, &[&say("QUIET 22:00-07:00 Europe/Berlin")]).await;
        assert!(
            out.iter().any(|l| l.contains("Quiet hours 22:00-07:00 Europe/Berlin")),
            "{out:?}"
        );
        let out = feed(&mut b, &[&say("QUIET off")]).await;
        assert!(out.iter().any(|l| l.contains("Quiet hours off")), "{out:?}");
        // Refused before reaching the core.
        let out = feed(&mut b, &[&say("QUIET 22:00-07:00 Mars/Olympus")]).await;
        assert!(out.iter().any(|l| l.contains("unknown time zone")), "{out:?}");
        let out = feed(&mut b, &[&say("MUTE #chat forever")]).await;
        assert!(out.iter().any(|l| l.contains("Minutes must be 1 to")), "{out:?}");
        // Not logged in: refused.
        let out = feed(&mut b, &[":mallory!m@h PRIVMSG pushbridge :MUTE #chat"]).await;
        assert!(out.iter().any(|l| l.contains("not logged in")), "{out:?}");
        settle().await;
        let user = pushbridge_api::UserId::parse("irc:test:alice").unwrap();
        let got: Vec<Event> = events.lock().unwrap().clone();
        assert_eq!(
            got,
            vec![
                Event::Mute {
                    user: user.clone(),
                    conversation: "#chat".into(),
                    duration: Some(Duration::from_secs(600)),
                },
                Event::Unmute {
                    user: user.clone(),
                    conversation: "#chat".into(),
                },
                Event::Quiet {
                    user: user.clone(),
                    hours: Some(QuietHours::parse("22:00-07:00", "Europe/Berlin").unwrap()),
                },
                Event::Quiet { user, hours: None },
            ]
        );
    }

    #[test]
    fn status_line_describes_settings() {
        assert_eq!(describe(&Settings::default()), "No quiet hours. Nothing muted.");
        let s = Settings {
            quiet: Some(QuietHours::parse("22:00-07:00", "Europe/Berlin").unwrap()),
            muted: vec![
                Muted {
                    conversation: "#chat".into(),
                    remaining: Some(Duration::from_secs(61)),
                },
                Muted {
                    conversation: "bob".into(),
                    remaining: None,
                },
            ],
        };
        assert_eq!(
            describe(&s),
            "Quiet hours 22:00-07:00 Europe/Berlin. Muted: #chat (2 min left), bob (until UNMUTE)."
        );
    }
}
