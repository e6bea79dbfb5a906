//! Change windows: the times a batch may start.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Allowed times for starting a batch, in a time zone.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangeWindow {
    /// IANA time zone name, like `Europe/Berlin` (default `UTC`).
    #[serde(default = "utc")]
    pub time_zone: String,
    /// Days a batch may start: `Mon` … `Sun` (default every day).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<String>,
    /// Start of the window, `HH:MM` local time.
    pub start: String,
    /// End of the window, `HH:MM` local time; earlier than `start` means the window crosses midnight.
    pub end: String,
}

fn utc() -> String {
    "UTC".to_string()
}

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// Parse `HH:MM` into minutes after midnight.
pub fn parse_clock(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: u32 = h.parse().ok()?;
    let m: u32 = m.parse().ok()?;
    (h < 24 && m < 60).then_some(h * 60 + m)
}

impl ChangeWindow {
    /// Check the window's fields; the error names the field.
    pub fn check(&self) -> Result<(), (String, String)> {
        if jiff::tz::TimeZone::get(&self.time_zone).is_err() {
            return Err((
                "window.timeZone".into(),
                format!("unknown time zone {:?}", self.time_zone),
            ));
        }
        for (i, d) in self.days.iter().enumerate() {
            if !DAY_NAMES.contains(&d.as_str()) {
                return Err((
                    format!("window.days[{i}]"),
                    format!("{d:?} is not one of {}", DAY_NAMES.join(", ")),
                ));
            }
        }
        for (field, v) in [("window.start", &self.start), ("window.end", &self.end)] {
            if parse_clock(v).is_none() {
                return Err((field.into(), format!("{v:?} is not a time like 09:30")));
            }
        }
        if self.start == self.end {
            return Err((
                "window.end".into(),
                "start and end are equal: the window would be empty".into(),
            ));
        }
        Ok(())
    }

    /// True when `now` falls inside the window. An invalid window allows nothing.
    pub fn allows(&self, now: jiff::Timestamp) -> bool {
        let Ok(tz) = jiff::tz::TimeZone::get(&self.time_zone) else {
            return false;
        };
        let (Some(start), Some(end)) = (parse_clock(&self.start), parse_clock(&self.end)) else {
            return false;
        };
        let local = now.to_zoned(tz);
        let minute =
            u32::from(local.hour().unsigned_abs()) * 60 + u32::from(local.minute().unsigned_abs());
        let weekday_index = local.weekday().to_monday_zero_offset() as usize;
        let day_allowed =
            |idx: usize| self.days.is_empty() || self.days.iter().any(|d| d == DAY_NAMES[idx]);
        if start < end {
            day_allowed(weekday_index) && minute >= start && minute < end
        } else if minute >= start {
            // Crossing midnight: the evening part belongs to today's window.
            day_allowed(weekday_index)
        } else if minute < end {
            // The early-morning part belongs to the window that opened yesterday.
            day_allowed((weekday_index + 6) % 7)
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn window(tz: &str, days: &[&str], start: &str, end: &str) -> ChangeWindow {
        ChangeWindow {
            time_zone: tz.into(),
            days: days.iter().map(|d| d.to_string()).collect(),
            start: start.into(),
            end: end.into(),
        }
    }

    #[test]
    fn office_hours_in_a_time_zone() {
        let w = window(
            "Europe/Berlin",
            &["Mon", "Tue", "Wed", "Thu", "Fri"],
            "09:00",
            "17:00",
        );
        // 2026-11-23 is a Monday; Berlin is UTC+1 in November.
        assert!(w.allows(at("2026-11-23T08:30:00Z")));
        assert!(!w.allows(at("2026-11-23T07:59:00Z")));
        assert!(!w.allows(at("2026-11-23T16:00:00Z")));
        // Saturday.
        assert!(!w.allows(at("2026-11-21T10:00:00Z")));
    }

    #[test]
    fn window_across_midnight_belongs_to_the_day_it_opens() {
        let w = window("UTC", &["Fri"], "22:00", "02:00");
        assert!(w.allows(at("2026-11-20T23:00:00Z"))); // Friday night
        assert!(w.allows(at("2026-11-21T01:00:00Z"))); // early Saturday, opened Friday
        assert!(!w.allows(at("2026-11-22T01:00:00Z"))); // early Sunday, Saturday not allowed
    }

    #[test]
    fn check_names_the_bad_field() {
        assert_eq!(
            window("Mars/Base", &[], "09:00", "10:00")
                .check()
                .unwrap_err()
                .0,
            "window.timeZone"
        );
        assert_eq!(
            window("UTC", &["Monday"], "09:00", "10:00")
                .check()
                .unwrap_err()
                .0,
            "window.days[0]"
        );
        assert_eq!(
            window("UTC", &[], "9am", "10:00").check().unwrap_err().0,
            "window.start"
        );
        assert_eq!(
            window("UTC", &[], "09:00", "09:00").check().unwrap_err().0,
            "window.end"
        );
        assert!(window("UTC", &[], "09:00", "10:00").check().is_ok());
    }
}
