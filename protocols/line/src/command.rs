//! Parsing commands and formatting replies: pure functions, no I/O.

use pushbridge_api::settings::{QuietHours, SettingError, Settings};
use pushbridge_api::types::validate_local;
use pushbridge_api::{DeviceToken, Environment, EventError, Presence, Reply};

/// Longest mute accepted, in seconds (a year).
pub const MAX_MUTE_SECONDS: u64 = 31_536_000;

/// One parsed command; user names are still local (unscoped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Auth(String),
    Register {
        user: String,
        token: DeviceToken,
        topic: Option<String>,
        environment: Option<Environment>,
    },
    Unregister {
        user: String,
        token: DeviceToken,
    },
    Presence {
        user: String,
        presence: Presence,
    },
    Msg {
        from: String,
        to: String,
        text: String,
    },
    /// `seconds: None`: until unmuted.
    Mute {
        user: String,
        conversation: String,
        seconds: Option<u64>,
    },
    Unmute {
        user: String,
        conversation: String,
    },
    /// `hours: None`: off.
    Quiet {
        user: String,
        hours: Option<QuietHours>,
    },
    Settings {
        user: String,
    },
    Ping,
    Quit,
}

/// The error codes of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Syntax,
    Auth,
    UnknownCommand,
    BadToken,
    BadUser,
    TooLong,
    UnknownTopic,
    /// Quiet hours that are not `HH:MM-HH:MM`, or an empty range.
    BadHours,
    /// A time zone the IANA database does not have.
    BadZone,
    Unavailable,
    /// The connection timed out (idle, or a line not completed in time).
    Timeout,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Syntax => "syntax",
            Code::Auth => "auth",
            Code::UnknownCommand => "unknown-command",
            Code::BadToken => "bad-token",
            Code::BadUser => "bad-user",
            Code::TooLong => "too-long",
            Code::UnknownTopic => "unknown-topic",
            Code::BadHours => "bad-hours",
            Code::BadZone => "bad-zone",
            Code::Unavailable => "unavailable",
            Code::Timeout => "timeout",
        }
    }
}

/// An `ERR` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError {
    pub code: Code,
    pub reason: String,
}

impl ProtoError {
    pub fn new(code: Code, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    /// `ERR <code> <reason>` with a newline.
    pub fn line(&self) -> String {
        format!("ERR {} {}\n", self.code.as_str(), self.reason)
    }
}

fn syntax(usage: &str) -> ProtoError {
    ProtoError::new(Code::Syntax, format!("usage: {usage}"))
}

fn user(name: &str) -> Result<String, ProtoError> {
    validate_local(name).map_err(|e| ProtoError::new(Code::BadUser, e.to_string()))?;
    Ok(name.to_owned())
}

fn token(hex: &str) -> Result<DeviceToken, ProtoError> {
    DeviceToken::parse(hex).map_err(|e| ProtoError::new(Code::BadToken, e.to_string()))
}

/// Parse one line (without its terminator): the command word (any case),
/// then its arguments separated by single spaces. Errors are the `ERR`
/// reply to send: `syntax` (not UTF-8, empty, wrong arguments),
/// `unknown-command`, `bad-user` or `bad-token`.
pub fn parse(line: &[u8]) -> Result<Command, ProtoError> {
    let line = std::str::from_utf8(line).map_err(|_| ProtoError::new(Code::Syntax, "line is not valid UTF-8"))?;
    if line.is_empty() {
        return Err(ProtoError::new(Code::Syntax, "empty line"));
    }
    let (word, rest) = match line.split_once(' ') {
        Some((w, r)) => (w, Some(r)),
        None => (line, None),
    };
    match word.to_ascii_uppercase().as_str() {
        "AUTH" => auth(rest),
        "REGISTER" => register(rest),
        "UNREGISTER" => unregister(rest),
        "PRESENCE" => presence(rest),
        "MSG" => msg(rest),
        "MUTE" => mute(rest),
        "UNMUTE" => unmute(rest),
        "QUIET" => quiet(rest),
        "SETTINGS" => args(rest, 1, 1, "SETTINGS <user>").and_then(|a| Ok(Command::Settings { user: user(a[0])? })),
        "PING" => args(rest, 0, 0, "PING").map(|_| Command::Ping),
        "QUIT" => args(rest, 0, 0, "QUIT").map(|_| Command::Quit),
        _ => {
            let shown: String = word.chars().take(32).collect();
            Err(ProtoError::new(
                Code::UnknownCommand,
                format!("unknown command {shown:?}"),
            ))
        }
    }
}

/// The arguments after the command word, split at single spaces: between
/// `n_min` and `n_max` of them, none empty (`syntax` with `usage`
/// otherwise).
fn args<'a>(rest: Option<&'a str>, n_min: usize, n_max: usize, usage: &str) -> Result<Vec<&'a str>, ProtoError> {
    let parts: Vec<&str> = match rest {
        None => Vec::new(),
        Some(r) => r.split(' ').collect(),
    };
    if parts.len() < n_min || parts.len() > n_max || parts.iter().any(|p| p.is_empty()) {
        return Err(syntax(usage));
    }
    Ok(parts)
}

/// `AUTH <secret>`: the secret is the rest of the line, spaces included.
fn auth(rest: Option<&str>) -> Result<Command, ProtoError> {
    let secret = rest.filter(|s| !s.is_empty()).ok_or_else(|| syntax("AUTH <secret>"))?;
    Ok(Command::Auth(secret.to_owned()))
}

/// `REGISTER <user> <token> [<topic> [sandbox|production]]`.
fn register(rest: Option<&str>) -> Result<Command, ProtoError> {
    const USAGE: &str = "REGISTER <user> <token> [<topic> [sandbox|production]]";
    let a = args(rest, 2, 4, USAGE)?;
    let environment = a.get(3).map(|e| environment(e)).transpose()?;
    Ok(Command::Register {
        user: user(a[0])?,
        token: token(a[1])?,
        topic: a.get(2).map(|t| (*t).to_owned()),
        environment,
    })
}

/// `sandbox` or `production`.
fn environment(word: &str) -> Result<Environment, ProtoError> {
    match word {
        "sandbox" => Ok(Environment::Sandbox),
        "production" => Ok(Environment::Production),
        _ => Err(ProtoError::new(
            Code::Syntax,
            "environment must be sandbox or production",
        )),
    }
}

/// `UNREGISTER <user> <token>`.
fn unregister(rest: Option<&str>) -> Result<Command, ProtoError> {
    let a = args(rest, 2, 2, "UNREGISTER <user> <token>")?;
    Ok(Command::Unregister {
        user: user(a[0])?,
        token: token(a[1])?,
    })
}

/// `PRESENCE <user> online|away|offline`.
fn presence(rest: Option<&str>) -> Result<Command, ProtoError> {
    const USAGE: &str = "PRESENCE <user> online|away|offline";
    let a = args(rest, 2, 2, USAGE)?;
    let presence = a[1].parse().map_err(|_| syntax(USAGE))?;
    Ok(Command::Presence {
        user: user(a[0])?,
        presence,
    })
}

/// `MSG <from> <to> <text>`: the text is the rest of the line, spaces
/// included.
fn msg(rest: Option<&str>) -> Result<Command, ProtoError> {
    const USAGE: &str = "MSG <from> <to> <text>";
    let mut parts = rest.ok_or_else(|| syntax(USAGE))?.splitn(3, ' ');
    let (Some(from), Some(to), Some(text)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(syntax(USAGE));
    };
    if from.is_empty() || to.is_empty() || text.is_empty() {
        return Err(syntax(USAGE));
    }
    Ok(Command::Msg {
        from: user(from)?,
        to: user(to)?,
        text: text.to_owned(),
    })
}

/// `MUTE <user> <conversation> [seconds]` (1 to [`MAX_MUTE_SECONDS`]).
fn mute(rest: Option<&str>) -> Result<Command, ProtoError> {
    const USAGE: &str = "MUTE <user> <conversation> [seconds]";
    let a = args(rest, 2, 3, USAGE)?;
    let seconds = match a.get(2) {
        None => None,
        Some(s) => match s.parse::<u64>() {
            Ok(n) if (1..=MAX_MUTE_SECONDS).contains(&n) && s.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => {
                return Err(ProtoError::new(
                    Code::Syntax,
                    format!("seconds must be 1 to {MAX_MUTE_SECONDS}"),
                ))
            }
        },
    };
    Ok(Command::Mute {
        user: user(a[0])?,
        conversation: user(a[1])?,
        seconds,
    })
}

/// `UNMUTE <user> <conversation>`.
fn unmute(rest: Option<&str>) -> Result<Command, ProtoError> {
    let a = args(rest, 2, 2, "UNMUTE <user> <conversation>")?;
    Ok(Command::Unmute {
        user: user(a[0])?,
        conversation: user(a[1])?,
    })
}

/// `QUIET <user> <HH:MM>-<HH:MM> <zone>` or `QUIET <user> off`.
fn quiet(rest: Option<&str>) -> Result<Command, ProtoError> {
    const USAGE: &str = "QUIET <user> <HH:MM>-<HH:MM> <zone> | QUIET <user> off";
    let a = args(rest, 2, 3, USAGE)?;
    let hours = match (a[1], a.get(2)) {
        ("off", None) => None,
        (hours, Some(zone)) => Some(QuietHours::parse(hours, zone).map_err(|e| {
            let code = match e {
                SettingError::BadZone(_) => Code::BadZone,
                SettingError::BadHours(_) | SettingError::EmptyHours => Code::BadHours,
            };
            ProtoError::new(code, e.to_string())
        })?),
        _ => return Err(syntax(USAGE)),
    };
    Ok(Command::Quiet {
        user: user(a[0])?,
        hours,
    })
}

/// `OK quiet=<HH:MM>-<HH:MM>,<zone>|off [mute=<conversation>:<seconds
/// left>|forever …]`: seconds left rounded up.
fn settings_line(s: &Settings) -> String {
    let mut line = match &s.quiet {
        Some(q) => format!(
            "OK quiet={:02}:{:02}-{:02}:{:02},{}",
            q.start() / 60,
            q.start() % 60,
            q.end() / 60,
            q.end() % 60,
            q.zone()
        ),
        None => "OK quiet=off".to_owned(),
    };
    for m in &s.muted {
        match m.remaining {
            Some(left) => line.push_str(&format!(" mute={}:{}", m.conversation, left.as_millis().div_ceil(1000))),
            None => line.push_str(&format!(" mute={}:forever", m.conversation)),
        }
    }
    line.push('\n');
    line
}

/// The reply line for the core's answer.
pub fn reply_line(r: Result<Reply, EventError>) -> String {
    match r {
        Ok(Reply::Queued(n)) => format!("OK {n}\n"),
        Ok(Reply::Settings(s)) => settings_line(&s),
        Ok(_) => "OK\n".to_owned(),
        Err(EventError::UnknownTopic(t)) => {
            ProtoError::new(Code::UnknownTopic, format!("no app with topic {t:?}")).line()
        }
        Err(EventError::NoSuchDevice) => ProtoError::new(Code::BadToken, "no such device").line(),
        Err(e @ (EventError::Unavailable(_) | EventError::ShuttingDown)) => {
            ProtoError::new(Code::Unavailable, e.to_string()).line()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOK: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn code(line: &str) -> Code {
        parse(line.as_bytes()).unwrap_err().code
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(parse(b"PING"), Ok(Command::Ping));
        assert_eq!(parse(b"quit"), Ok(Command::Quit));
        assert_eq!(parse(b"AUTH s3 cret"), Ok(Command::Auth("s3 cret".into())));
        assert_eq!(
            parse(format!("REGISTER alice {TOK} com.x sandbox").as_bytes()),
            Ok(Command::Register {
                user: "alice".into(),
                token: DeviceToken::parse(TOK).unwrap(),
                topic: Some("com.x".into()),
                environment: Some(Environment::Sandbox),
            })
        );
        assert!(matches!(
            parse(format!("REGISTER alice {TOK}").as_bytes()),
            Ok(Command::Register { topic: None, .. })
        ));
        assert!(matches!(
            parse(format!("UNREGISTER alice {TOK}").as_bytes()),
            Ok(Command::Unregister { .. })
        ));
        assert_eq!(
            parse(b"PRESENCE alice away"),
            Ok(Command::Presence {
                user: "alice".into(),
                presence: Presence::Away
            })
        );
        assert_eq!(
            parse("MSG bob alice are you  coming? 😀".as_bytes()),
            Ok(Command::Msg {
                from: "bob".into(),
                to: "alice".into(),
                text: "are you  coming? 😀".into()
            })
        );
    }

    #[test]
    fn every_error_code() {
        assert_eq!(code(""), Code::Syntax);
        assert_eq!(code("PING extra"), Code::Syntax);
        assert_eq!(code("AUTH"), Code::Syntax);
        assert_eq!(code("REGISTER alice"), Code::Syntax);
        assert_eq!(code(&format!("REGISTER alice {TOK} t sandbox extra")), Code::Syntax);
        assert_eq!(code(&format!("REGISTER alice {TOK} t staging")), Code::Syntax);
        assert_eq!(code(&format!("REGISTER alice  {TOK}")), Code::Syntax);
        assert_eq!(code("PRESENCE alice busy"), Code::Syntax);
        assert_eq!(code("MSG bob alice"), Code::Syntax);
        assert_eq!(code("MSG bob alice "), Code::Syntax);
        assert_eq!(parse(b"MSG a b \xff").unwrap_err().code, Code::Syntax);
        assert_eq!(code("FROB x"), Code::UnknownCommand);
        assert_eq!(code("REGISTER alice xyz"), Code::BadToken);
        assert_eq!(code("REGISTER alice abc"), Code::BadToken);
        assert_eq!(code(&format!("REGISTER alice {}", &TOK[..62])), Code::BadToken);
        assert_eq!(code(&format!("REGISTER {} {TOK}", "u".repeat(257))), Code::BadUser);
        assert_eq!(code("PRESENCE al\u{1}ice online"), Code::BadUser);
        assert_eq!(
            reply_line(Err(EventError::UnknownTopic("t".into()))),
            "ERR unknown-topic no app with topic \"t\"\n"
        );
        assert!(reply_line(Err(EventError::Unavailable("x".into()))).starts_with("ERR unavailable "));
        assert_eq!(reply_line(Ok(Reply::Queued(2))), "OK 2\n");
        assert_eq!(reply_line(Ok(Reply::Done)), "OK\n");
    }

    #[test]
    fn error_replies_are_exact() {
        let line = |l: &[u8]| parse(l).unwrap_err().line();
        assert_eq!(line(b""), "ERR syntax empty line\n");
        assert_eq!(line(b"\xff"), "ERR syntax line is not valid UTF-8\n");
        assert_eq!(line(b"AUTH "), "ERR syntax usage: AUTH <secret>\n");
        assert_eq!(line(b"PING "), "ERR syntax usage: PING\n");
        assert_eq!(line(b"QUIT x"), "ERR syntax usage: QUIT\n");
        assert_eq!(
            line(b"REGISTER alice"),
            "ERR syntax usage: REGISTER <user> <token> [<topic> [sandbox|production]]\n"
        );
        assert_eq!(
            line(format!("REGISTER alice {TOK} t staging").as_bytes()),
            "ERR syntax environment must be sandbox or production\n"
        );
        // The environment is checked before the user and the token.
        assert_eq!(
            line(b"REGISTER al\x01ice xyz t staging"),
            "ERR syntax environment must be sandbox or production\n"
        );
        assert_eq!(
            line(b"UNREGISTER alice"),
            "ERR syntax usage: UNREGISTER <user> <token>\n"
        );
        assert_eq!(
            line(b"PRESENCE al\x01ice busy"),
            "ERR syntax usage: PRESENCE <user> online|away|offline\n"
        );
        assert_eq!(line(b"MSG a b"), "ERR syntax usage: MSG <from> <to> <text>\n");
        assert_eq!(line(b"MSG"), "ERR syntax usage: MSG <from> <to> <text>\n");
        assert_eq!(
            line(b"frobnicate-the-whole-world-right-now please"),
            "ERR unknown-command unknown command \"frobnicate-the-whole-world-right\"\n"
        );
        assert!(line(b"REGISTER alice xyz").starts_with("ERR bad-token "));
        assert!(line(b"MSG bob al\x01ice hi").starts_with("ERR bad-user "));
    }

    #[test]
    fn settings_commands() {
        assert_eq!(
            parse(b"MUTE alice bob 2"),
            Ok(Command::Mute {
                user: "alice".into(),
                conversation: "bob".into(),
                seconds: Some(2)
            })
        );
        assert!(matches!(
            parse(b"mute alice bob"),
            Ok(Command::Mute { seconds: None, .. })
        ));
        assert_eq!(
            parse(b"UNMUTE alice bob"),
            Ok(Command::Unmute {
                user: "alice".into(),
                conversation: "bob".into()
            })
        );
        let q = QuietHours::parse("22:00-07:00", "Europe/Berlin").unwrap();
        assert_eq!(
            parse(b"QUIET alice 22:00-07:00 Europe/Berlin"),
            Ok(Command::Quiet {
                user: "alice".into(),
                hours: Some(q)
            })
        );
        assert_eq!(
            parse(b"QUIET alice off"),
            Ok(Command::Quiet {
                user: "alice".into(),
                hours: None
            })
        );
        assert_eq!(parse(b"SETTINGS alice"), Ok(Command::Settings { user: "alice".into() }));
        let line = |l: &[u8]| parse(l).unwrap_err().line();
        assert_eq!(
            line(b"MUTE alice"),
            "ERR syntax usage: MUTE <user> <conversation> [seconds]\n"
        );
        for bad in ["0", "-1", "+5", "1.5", "31536001", "soon"] {
            assert_eq!(
                line(format!("MUTE alice bob {bad}").as_bytes()),
                "ERR syntax seconds must be 1 to 31536000\n",
                "{bad}"
            );
        }
        assert_eq!(code("MUTE alice b\u{1}ob"), Code::BadUser);
        assert_eq!(
            line(b"QUIET alice 22:00-07:00 Mars/Olympus"),
            "ERR bad-zone unknown time zone \"Mars/Olympus\" (an IANA name such as Europe/Berlin)\n"
        );
        assert_eq!(
            line(b"QUIET alice 22-7 UTC"),
            "ERR bad-hours hours must be HH:MM-HH:MM (24-hour clock), got \"22-7\"\n"
        );
        assert_eq!(code("QUIET alice 07:00-07:00 UTC"), Code::BadHours);
        assert_eq!(code("QUIET alice on"), Code::Syntax);
        assert_eq!(code("QUIET alice off UTC"), Code::BadHours);
        assert_eq!(code("SETTINGS"), Code::Syntax);
        assert_eq!(code("SETTINGS alice bob"), Code::Syntax);
    }

    #[test]
    fn settings_reply_lists_quiet_hours_and_mutes() {
        use pushbridge_api::settings::Muted;
        use std::time::Duration;
        assert_eq!(reply_line(Ok(Reply::Settings(Settings::default()))), "OK quiet=off\n");
        let s = Settings {
            quiet: Some(QuietHours::parse("22:00-07:30", "Europe/Berlin").unwrap()),
            muted: vec![
                Muted {
                    conversation: "bob".into(),
                    remaining: None,
                },
                Muted {
                    conversation: "carol".into(),
                    remaining: Some(Duration::from_millis(1_001)),
                },
            ],
        };
        assert_eq!(
            reply_line(Ok(Reply::Settings(s))),
            "OK quiet=22:00-07:30,Europe/Berlin mute=bob:forever mute=carol:2\n"
        );
    }
}
