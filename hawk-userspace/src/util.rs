//! Small parsers shared by the command line and the daemon: durations such as
//! `10`, `10s`, `500ms`, `2m`, `1h`.

use std::time::Duration;

/// A duration that is not of the form `<number>[ms|s|m|h]`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid duration {0:?}: expected a number with an optional unit ms, s, m or h (e.g. 10, 10s, 2m)"
)]
pub struct DurationError(String);

/// Parses `10` (seconds), `10s`, `1.5s`, `500ms`, `2m`, `1h`. Zero and
/// negative durations are rejected: a window must have a length.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(text.to_string());
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number.parse().map_err(|_| err())?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(err()),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs <= 0.0 || secs > 365.0 * 86400.0 {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn rejects_garbage_zero_and_negative() {
        for bad in [
            "", "s", "ten", "10x", "0", "0s", "-5", "1e400", "10 s s", ".",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(
            parse_duration("10x")
                .unwrap_err()
                .to_string()
                .contains("\"10x\"")
        );
    }
}
