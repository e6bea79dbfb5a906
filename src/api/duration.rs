//! Human durations as written in a ChangeRequest: `30s`, `5m`, `1h30m`, `250ms`.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration as StdDuration;

/// A non-negative duration that serialises as `1h30m`-style text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub StdDuration);

impl Duration {
    /// Duration from whole seconds.
    pub const fn from_secs(s: u64) -> Self {
        Duration(StdDuration::from_secs(s))
    }
    /// Duration from milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Duration(StdDuration::from_millis(ms))
    }
    /// The std duration.
    pub fn std(&self) -> StdDuration {
        self.0
    }
    /// Whole milliseconds, saturating.
    pub fn as_millis_i64(&self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Why a duration string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {why} (write it like 30s, 5m, 1h30m or 250ms)")]
pub struct DurationError {
    input: String,
    why: &'static str,
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| DurationError {
            input: s.to_string(),
            why,
        };
        let text = s.trim();
        if text.is_empty() {
            return Err(err("it is empty"));
        }
        if text == "0" {
            return Ok(Duration::default());
        }
        let bytes = text.as_bytes();
        let mut total_ms: u128 = 0;
        let mut i = 0;
        let mut last_rank = usize::MAX;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if start == i {
                return Err(err("expected a number"));
            }
            let number: u128 = text[start..i]
                .parse()
                .map_err(|_| err("number too large"))?;
            let unit_start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            // Units must appear from largest to smallest, each at most once.
            let (rank, ms_per_unit) = match &text[unit_start..i] {
                "h" => (0, 3_600_000),
                "m" => (1, 60_000),
                "s" => (2, 1_000),
                "ms" => (3, 1),
                "" => return Err(err("a number needs a unit (h, m, s or ms)")),
                _ => return Err(err("unknown unit (use h, m, s or ms)")),
            };
            if last_rank != usize::MAX && rank <= last_rank {
                return Err(err("units must go from largest to smallest, each once"));
            }
            last_rank = rank;
            total_ms = total_ms
                .checked_add(number.saturating_mul(ms_per_unit))
                .ok_or_else(|| err("too large"))?;
        }
        let ms = u64::try_from(total_ms).map_err(|_| err("too large"))?;
        Ok(Duration(StdDuration::from_millis(ms)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        let h = ms / 3_600_000;
        ms %= 3_600_000;
        let m = ms / 60_000;
        ms %= 60_000;
        let s = ms / 1000;
        ms %= 1000;
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        if ms > 0 {
            write!(f, "{ms}ms")?;
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "minLength": 1,
            "pattern": "^([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$",
            "description": "A duration like 30s, 5m, 1h30m or 250ms."
        })
    }
    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!("30s".parse::<Duration>().unwrap(), Duration::from_secs(30));
        assert_eq!("5m".parse::<Duration>().unwrap(), Duration::from_secs(300));
        assert_eq!(
            "1h30m".parse::<Duration>().unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            "1m500ms".parse::<Duration>().unwrap(),
            Duration::from_millis(60_500)
        );
        assert_eq!("0".parse::<Duration>().unwrap(), Duration::default());
    }

    #[test]
    fn rejects_bad_forms_with_reason() {
        for bad in ["", "5", "5x", "m5", "30s1m", "1h1h", "-5s", "1.5h"] {
            let e = bad.parse::<Duration>().unwrap_err().to_string();
            assert!(e.contains("invalid duration"), "{bad}: {e}");
        }
    }

    #[test]
    fn displays_round_trip() {
        for text in ["30s", "5m", "1h30m", "2h", "1m500ms", "0s"] {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.to_string(), text);
        }
    }
}
