//! Durations written the way Go and Kubernetes write them: `100ms`, `5s`, `1h30m`.

use std::{borrow::Cow, fmt, str::FromStr};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pattern the API server checks a duration string against. It accepts
/// exactly what [`Duration::from_str`] accepts.
pub const DURATION_PATTERN: &str = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$";

/// A non-negative duration, serialized as a Go-style string (`"1m30s"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (write it like 250ms, 5s, 1m30s or 24h)")]
pub struct ParseDurationError {
    input: String,
    reason: &'static str,
}

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    pub const fn as_std(self) -> std::time::Duration {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Self(d)
    }
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason| ParseDurationError {
            input: input.to_owned(),
            reason,
        };
        if input == "0" {
            return Ok(Self::default());
        }
        if input.is_empty() {
            return Err(fail("it is empty"));
        }
        let mut rest = input;
        let mut total_nanos: u128 = 0;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| fail("a number has no unit"))?;
            let (number, tail) = rest.split_at(number_len);
            let (whole, fraction) = match number.split_once('.') {
                Some((w, f)) => (w, f),
                None => (number, ""),
            };
            if whole.is_empty() || whole.contains('.') || fraction.contains('.') {
                return Err(fail("a number is malformed"));
            }
            if number.ends_with('.') {
                return Err(fail("a number ends with a dot"));
            }
            let (unit_nanos, unit_len): (u128, usize) = if tail.starts_with("ns") {
                (1, 2)
            } else if tail.starts_with("us") {
                (1_000, 2)
            } else if tail.starts_with("µs") {
                (1_000, "µs".len())
            } else if tail.starts_with("ms") {
                (1_000_000, 2)
            } else if tail.starts_with('s') {
                (1_000_000_000, 1)
            } else if tail.starts_with('m') {
                (60_000_000_000, 1)
            } else if tail.starts_with('h') {
                (3_600_000_000_000, 1)
            } else {
                return Err(fail("unknown unit; use ns, us, ms, s, m or h"));
            };
            let whole: u128 = whole.parse().map_err(|_| fail("a number is too large"))?;
            let mut nanos = whole
                .checked_mul(unit_nanos)
                .ok_or_else(|| fail("it is too large"))?;
            let mut scale = unit_nanos;
            for digit in fraction.bytes() {
                scale /= 10;
                nanos += u128::from(digit - b'0') * scale;
            }
            total_nanos = total_nanos
                .checked_add(nanos)
                .ok_or_else(|| fail("it is too large"))?;
            rest = &tail[unit_len..];
        }
        let secs =
            u64::try_from(total_nanos / 1_000_000_000).map_err(|_| fail("it is too large"))?;
        let subsec = (total_nanos % 1_000_000_000) as u32;
        Ok(Self(std::time::Duration::new(secs, subsec)))
    }
}

impl fmt::Display for Duration {
    /// Prints the shortest exact form: `1h30m`, `250ms`, `1.5s`, `0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.is_zero() {
            return f.write_str("0");
        }
        let nanos = d.subsec_nanos();
        if d.as_secs() == 0 {
            return if nanos.is_multiple_of(1_000_000) {
                write!(f, "{}ms", nanos / 1_000_000)
            } else if nanos.is_multiple_of(1_000) {
                write!(f, "{}us", nanos / 1_000)
            } else {
                write!(f, "{nanos}ns")
            };
        }
        let (h, m, s) = (d.as_secs() / 3600, d.as_secs() / 60 % 60, d.as_secs() % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 || nanos > 0 {
            if nanos == 0 {
                write!(f, "{s}s")?;
            } else {
                let frac = format!("{nanos:09}");
                write!(f, "{s}.{}s", frac.trim_end_matches('0'))?;
            }
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
        let s = Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> std::time::Duration {
        s.parse::<Duration>().unwrap().0
    }

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(parse("0"), std::time::Duration::ZERO);
        assert_eq!(parse("250ms"), std::time::Duration::from_millis(250));
        assert_eq!(parse("1h30m"), std::time::Duration::from_secs(5400));
        assert_eq!(parse("1.5s"), std::time::Duration::from_millis(1500));
        assert_eq!(parse("2m0.25s"), std::time::Duration::from_millis(120_250));
        assert_eq!(parse("10us"), std::time::Duration::from_micros(10));
        assert_eq!(parse("10µs"), std::time::Duration::from_micros(10));
        assert_eq!(parse("7ns"), std::time::Duration::from_nanos(7));
    }

    #[test]
    fn rejects_malformed_durations_with_the_input_named() {
        for bad in ["", "5", "5x", "s", "1.s", ".5s", "-1s", "1..2s", "1h 30m"] {
            let err = bad.parse::<Duration>().unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn the_schema_pattern_agrees_with_the_parser() {
        let re = regex::Regex::new(DURATION_PATTERN).unwrap();
        for s in [
            "0", "1s", "1.5h", "3m2s1ms", "5µs", "5", "5x", "1.s", ".5s", "-1s", "",
        ] {
            assert_eq!(re.is_match(s), s.parse::<Duration>().is_ok(), "{s}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "0", "250ms", "1h30m", "1.5s", "24h", "1h0m1s", "10us", "7ns",
        ] {
            let d: Duration = s.parse().unwrap();
            let again: Duration = d.to_string().parse().unwrap();
            assert_eq!(d, again, "{s} -> {d}");
        }
        assert_eq!(Duration::from_secs(5400).to_string(), "1h30m");
        assert_eq!(Duration::from_millis(1500).to_string(), "1.5s");
    }
}
