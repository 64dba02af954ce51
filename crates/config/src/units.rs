//! Human-friendly durations (`30s`, `5min`, `2days`) and sizes (`64KiB`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// A duration written as a number and a unit: `ms`, `s`, `min`, `h`, `days`
/// (`0` alone means zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HumanDuration(pub Duration);

/// A size in bytes written as a number with an optional unit: `B`, `KiB`, `MiB`, `GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteSize(pub u64);

/// Split `text` into its leading integer and the unit after it (trimmed);
/// `None` when it does not start with digits.
fn number_and_unit(text: &str) -> Option<(u64, &str)> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    Some((number.parse().ok()?, unit.trim()))
}

/// Parse a duration such as `250ms`, `30s`, `5min`, `1h` or `2days`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = number_and_unit(text)
        .ok_or_else(|| format!("`{text}` is not a duration like `30s`, `5min`, `1h` or `2days`"))?;
    let unit_seconds = match unit {
        "ms" => return Ok(Duration::from_millis(number)),
        "" if number == 0 => 0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{text}` (use ms, s, min, h or days)"
            ));
        }
    };
    number
        .checked_mul(unit_seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration `{text}` is too large"))
}

/// Parse a size such as `4096`, `64KiB` or `1MiB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = number_and_unit(text)
        .ok_or_else(|| format!("`{text}` is not a size like `4096`, `64KiB` or `1MiB`"))?;
    let multiplier: u64 = match unit {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}` (use B, KiB, MiB or GiB)"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("size `{text}` is too large"))
}

/// A value written either as text with a unit or as a bare integer.
struct TextOrInteger<T> {
    expecting: &'static str,
    text: fn(&str) -> Result<T, String>,
    integer: fn(i64) -> Result<T, String>,
}

impl<T> Visitor<'_> for TextOrInteger<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        (self.text)(text).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, value: i64) -> Result<T, E> {
        (self.integer)(value).map_err(E::custom)
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextOrInteger {
            expecting: "a duration such as \"30s\", \"5min\", \"1h\" or \"2days\"",
            text: |text| parse_duration(text).map(HumanDuration),
            integer: |value| match value {
                0 => Ok(HumanDuration(Duration::ZERO)),
                _ => Err(format!(
                    "a bare number is ambiguous: write \"{value}s\" or another unit"
                )),
            },
        })
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextOrInteger {
            expecting: "a size such as 4096, \"64KiB\" or \"1MiB\"",
            text: |text| parse_size(text).map(ByteSize),
            integer: |value| {
                u64::try_from(value)
                    .map(ByteSize)
                    .map_err(|_| "a size cannot be negative".to_string())
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5min"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2days"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn sizes_in_every_unit() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("1PiB").is_err());
        assert!(parse_size("-1").is_err());
    }
}
