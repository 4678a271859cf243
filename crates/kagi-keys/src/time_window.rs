//! Recurring time windows with a time zone ("Tuesdays 02:00–04:00 Asia/Tokyo"), shared by key
//! policies and perimeter policies. A window whose end is before its start runs past midnight;
//! the part after midnight belongs to the day it started.

use serde::Deserialize;

/// A window as written in TOML: `{days = ["tue"], start = "02:00", end = "04:00", tz = "Asia/Tokyo"}`
/// (no days = every day; tz defaults to UTC).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeWindowSpec {
    /// Weekdays, `mon`..`sun` (full names accepted).
    #[serde(default)]
    pub days: Vec<String>,
    /// `HH:MM`.
    pub start: String,
    /// `HH:MM` (`24:00` allowed).
    pub end: String,
    /// IANA time zone.
    #[serde(default = "utc")]
    pub tz: String,
}

fn utc() -> String {
    "UTC".to_string()
}

/// A parsed window.
#[derive(Debug, Clone)]
pub struct TimeWindow {
    /// Bit i set = weekday i (Monday = 0) included.
    days: u8,
    start_min: u16,
    end_min: u16,
    tz: jiff::tz::TimeZone,
}

fn parse_hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    if h == 24 && m == 0 {
        return Some(24 * 60);
    }
    (h < 24 && m < 60).then_some(h * 60 + m)
}

fn parse_day(s: &str) -> Option<u8> {
    let d = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    d.iter()
        .position(|x| x.eq_ignore_ascii_case(s) || s.to_ascii_lowercase().starts_with(x))
        .map(|p| p as u8)
}

impl TimeWindowSpec {
    /// Validates the window; the error names the bad field in one phrase.
    pub fn parse(&self) -> Result<TimeWindow, String> {
        let start = parse_hhmm(&self.start)
            .ok_or_else(|| format!("start {:?} is not HH:MM", self.start))?;
        let end =
            parse_hhmm(&self.end).ok_or_else(|| format!("end {:?} is not HH:MM", self.end))?;
        let mut days = if self.days.is_empty() { 0x7f } else { 0 };
        for d in &self.days {
            let b = parse_day(d).ok_or_else(|| format!("unknown day {d:?} (use mon..sun)"))?;
            days |= 1 << b;
        }
        let tz = jiff::tz::TimeZone::get(&self.tz)
            .map_err(|_| format!("unknown time zone {:?}", self.tz))?;
        Ok(TimeWindow {
            days,
            start_min: start,
            end_min: end,
            tz,
        })
    }
}

impl TimeWindow {
    /// Whether `now` falls inside the window.
    pub fn contains(&self, now: jiff::Timestamp) -> bool {
        let local = now.to_zoned(self.tz.clone());
        let day = local.weekday().to_monday_zero_offset() as u8;
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        let on = |d: u8| self.days & (1 << d) != 0;
        if self.start_min <= self.end_min {
            on(day) && minute >= self.start_min && minute < self.end_min
        } else {
            // Wraps past midnight: the part after midnight belongs to the previous day.
            (on(day) && minute >= self.start_min) || (on((day + 6) % 7) && minute < self.end_min)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(days: &[&str], start: &str, end: &str, tz: &str) -> TimeWindowSpec {
        TimeWindowSpec {
            days: days.iter().map(|d| d.to_string()).collect(),
            start: start.into(),
            end: end.into(),
            tz: tz.into(),
        }
    }

    #[test]
    fn window_across_midnight() {
        let w = spec(&["mon"], "23:00", "01:00", "UTC").parse().unwrap();
        assert!(w.contains("2026-11-23T23:30:00Z".parse().unwrap())); // Mon 23:30
        assert!(w.contains("2026-11-24T00:30:00Z".parse().unwrap())); // Tue 00:30
        assert!(!w.contains("2026-11-24T23:30:00Z".parse().unwrap())); // Tue 23:30
    }

    #[test]
    fn time_zones_and_bad_fields() {
        // Tuesday 02:00-04:00 in Tokyo is Monday 17:00-19:00 UTC.
        let w = spec(&["tue"], "02:00", "04:00", "Asia/Tokyo")
            .parse()
            .unwrap();
        assert!(w.contains("2026-11-23T17:30:00Z".parse().unwrap()));
        assert!(!w.contains("2026-11-24T02:30:00Z".parse().unwrap()));
        assert!(spec(&[], "25:00", "01:00", "UTC")
            .parse()
            .unwrap_err()
            .contains("25:00"));
        assert!(spec(&["xyz"], "01:00", "02:00", "UTC")
            .parse()
            .unwrap_err()
            .contains("xyz"));
        assert!(spec(&[], "01:00", "02:00", "Mars/Base")
            .parse()
            .unwrap_err()
            .contains("Mars"));
    }
}
