//! A user's notification settings, as adapters set them and the core keeps
//! them (in the store, surviving restarts): muted conversations and quiet
//! hours.
//!
//! - A *muted* conversation (its `thread`, else its sender: the key of
//!   `thread-id`) still counts toward the badge, but its pushes carry no
//!   alert (a badge-only push).
//! - During *quiet hours* pushes are delivered silently: no `sound`,
//!   `"interruption-level": "passive"`. The hours are wall-clock times in an
//!   IANA time zone, may cross midnight (`22:00-07:00`), and follow its
//!   daylight-saving rules (`jiff`, with the system's time zone database,
//!   else the one bundled in the binary).

use std::fmt;
use std::time::Duration;

use jiff::tz::TimeZone;

/// Why a setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    /// Not `HH:MM-HH:MM` (24-hour clock, two digits each).
    #[error("hours must be HH:MM-HH:MM (24-hour clock), got {0:?}")]
    BadHours(String),
    /// Start and end are the same minute (an empty or endless range).
    #[error("quiet hours must start and end at different times")]
    EmptyHours,
    /// Not a time zone of the IANA database (`Europe/Berlin`, `UTC`).
    #[error("unknown time zone {0:?} (an IANA name such as Europe/Berlin)")]
    BadZone(String),
}

/// Quiet hours: from `start` (inclusive) to `end` (exclusive), minutes
/// after local midnight in `zone`; `start > end` crosses midnight.
#[derive(Clone)]
pub struct QuietHours {
    start: u16,
    end: u16,
    zone_name: String,
    zone: TimeZone,
}

impl QuietHours {
    /// Hours from `start` to `end` (minutes after midnight, below 1440) in
    /// the IANA zone `zone`.
    pub fn new(start: u16, end: u16, zone: &str) -> Result<Self, SettingError> {
        if start >= 1440 || end >= 1440 {
            return Err(SettingError::BadHours(format!("{start}-{end}")));
        }
        if start == end {
            return Err(SettingError::EmptyHours);
        }
        let tz = TimeZone::get(zone).map_err(|_| SettingError::BadZone(zone.to_owned()))?;
        Ok(Self {
            start,
            end,
            zone_name: zone.to_owned(),
            zone: tz,
        })
    }

    /// Parse `HH:MM-HH:MM` and an IANA zone name (`22:00-07:00`,
    /// `Europe/Berlin`).
    pub fn parse(hours: &str, zone: &str) -> Result<Self, SettingError> {
        let bad = || SettingError::BadHours(hours.chars().take(32).collect());
        let (from, to) = hours.split_once('-').ok_or_else(bad)?;
        let start = minute_of_day(from).ok_or_else(bad)?;
        let end = minute_of_day(to).ok_or_else(bad)?;
        Self::new(start, end, zone)
    }

    /// Start, minutes after local midnight.
    pub fn start(&self) -> u16 {
        self.start
    }

    /// End (exclusive), minutes after local midnight.
    pub fn end(&self) -> u16 {
        self.end
    }

    /// The IANA zone name, as given.
    pub fn zone(&self) -> &str {
        &self.zone_name
    }

    /// Whether the instant `unix_ms` (milliseconds since the Unix epoch)
    /// falls in the quiet hours: its wall-clock time in the zone (offset
    /// and daylight saving as of that instant) is in `[start, end)`.
    pub fn is_quiet(&self, unix_ms: i64) -> bool {
        let Ok(at) = jiff::Timestamp::from_millisecond(unix_ms) else {
            return false;
        };
        let local = self.zone.to_datetime(at);
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

/// `HH:MM` (two digits each) as minutes after midnight.
fn minute_of_day(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// `22:00-07:00 Europe/Berlin`.
impl fmt::Display for QuietHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02} {}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60,
            self.zone_name
        )
    }
}

impl fmt::Debug for QuietHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QuietHours({self})")
    }
}

impl PartialEq for QuietHours {
    fn eq(&self, other: &Self) -> bool {
        (self.start, self.end, &self.zone_name) == (other.start, other.end, &other.zone_name)
    }
}

impl Eq for QuietHours {}

/// A muted conversation, as [`Settings`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Muted {
    /// The conversation key (thread, else sender).
    pub conversation: String,
    /// Time left; `None`: until unmuted.
    pub remaining: Option<Duration>,
}

/// A user's settings now ([`crate::Reply::Settings`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    /// Quiet hours, if set.
    pub quiet: Option<QuietHours>,
    /// Conversations muted now, by conversation.
    pub muted: Vec<Muted>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix milliseconds of a UTC wall-clock time.
    fn utc(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn parse_and_show() {
        let q = QuietHours::parse("22:00-07:00", "Europe/Berlin").unwrap();
        assert_eq!((q.start(), q.end(), q.zone()), (1320, 420, "Europe/Berlin"));
        assert_eq!(q.to_string(), "22:00-07:00 Europe/Berlin");
        for bad in [
            "22-07",
            "22:00",
            "24:00-07:00",
            "22:60-07:00",
            "2:00-07:00",
            "22:00-07:0x",
            "+1:00-07:00",
        ] {
            assert!(
                matches!(QuietHours::parse(bad, "UTC"), Err(SettingError::BadHours(_))),
                "{bad}"
            );
        }
        assert_eq!(QuietHours::parse("07:00-07:00", "UTC"), Err(SettingError::EmptyHours));
        assert_eq!(
            QuietHours::parse("22:00-07:00", "Mars/Olympus"),
            Err(SettingError::BadZone("Mars/Olympus".into()))
        );
    }

    #[test]
    fn quiet_hours_cross_midnight() {
        let q = QuietHours::parse("22:00-07:00", "UTC").unwrap();
        for (at, quiet) in [
            ("2026-01-10T21:59:59Z", false),
            ("2026-01-10T22:00:00Z", true),
            ("2026-01-10T23:59:00Z", true),
            ("2026-01-11T00:00:00Z", true),
            ("2026-01-11T06:59:59Z", true),
            ("2026-01-11T07:00:00Z", false),
            ("2026-01-11T12:00:00Z", false),
        ] {
            assert_eq!(q.is_quiet(utc(at)), quiet, "{at}");
        }
        let day = QuietHours::parse("12:30-14:00", "UTC").unwrap();
        assert!(!day.is_quiet(utc("2026-01-11T12:29:00Z")));
        assert!(day.is_quiet(utc("2026-01-11T12:30:00Z")));
        assert!(!day.is_quiet(utc("2026-01-11T14:00:00Z")));
        assert!(!day.is_quiet(utc("2026-01-11T23:00:00Z")));
    }

    /// Berlin is UTC+1 in winter, UTC+2 in summer; the clocks went forward
    /// on 2026-03-29 at 02:00 and go back on 2026-10-25 at 03:00.
    #[test]
    fn quiet_hours_follow_daylight_saving_in_berlin() {
        let q = QuietHours::parse("22:00-07:00", "Europe/Berlin").unwrap();
        // The day before spring forward: 05:30Z is 06:30 CET (quiet),
        // 06:30Z is 07:30 (not).
        assert!(q.is_quiet(utc("2026-03-28T05:30:00Z")));
        assert!(!q.is_quiet(utc("2026-03-28T06:30:00Z")));
        // The transition day: 04:59Z is 06:59 CEST (quiet), 05:00Z is
        // 07:00 CEST (not): the quiet night was one hour shorter.
        assert!(q.is_quiet(utc("2026-03-29T04:59:00Z")));
        assert!(!q.is_quiet(utc("2026-03-29T05:00:00Z")));
        assert!(!q.is_quiet(utc("2026-03-29T05:30:00Z")));
        // Evening of the transition day: 22:00 CEST is 20:00Z.
        assert!(!q.is_quiet(utc("2026-03-29T19:59:00Z")));
        assert!(q.is_quiet(utc("2026-03-29T20:00:00Z")));
        // Fall back: 22:00 CEST on the 24th is 20:00Z; 07:00 CET on the
        // 25th is 06:00Z (the night one hour longer).
        assert!(q.is_quiet(utc("2026-10-24T20:00:00Z")));
        assert!(q.is_quiet(utc("2026-10-25T05:59:00Z")));
        assert!(!q.is_quiet(utc("2026-10-25T06:00:00Z")));
        // Hours inside the skipped hour: 02:00-02:30 never happens on
        // 2026-03-29 (01:59 CET is followed by 03:00 CEST).
        let skipped = QuietHours::parse("02:00-02:30", "Europe/Berlin").unwrap();
        assert!(!skipped.is_quiet(utc("2026-03-29T00:59:00Z")));
        assert!(!skipped.is_quiet(utc("2026-03-29T01:00:00Z")));
        assert!(skipped.is_quiet(utc("2026-03-30T00:15:00Z")));
        // And twice on 2026-10-25 (02:xx CEST, then 02:xx CET).
        assert!(skipped.is_quiet(utc("2026-10-25T00:10:00Z")));
        assert!(skipped.is_quiet(utc("2026-10-25T01:10:00Z")));
        assert!(!skipped.is_quiet(utc("2026-10-25T02:10:00Z")));
    }
}
