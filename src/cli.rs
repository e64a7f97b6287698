//! Conventions the five programs share on their command lines.
//!
//! - Durations are written with a unit: `500ms`, `5s`, `2m`, `1h` (a bare number is seconds);
//!   [`parse_duration`] reads them. An option renamed to this form keeps its old spelling
//!   (`--interval-ms 500`, `--body-timeout-seconds 120`) as a hidden alias, so no unit file breaks.
//! - `check-config` is a subcommand of every program: it validates the configuration, says
//!   what it found, and exits 0 (usable as systemd's `ExecStartPre`), 2 when it is wrong.
//! - Every option is also an environment variable, shown in `--help`; secrets only there.

use std::time::Duration;

/// Parse `5`, `5s`, `500ms`, `2m` or `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (try 5s or 500ms)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}: use ms, s, m or h"
            ))
        }
    };
    // Beyond a year is a slip of the keyboard, and far enough past it a deadline made from it
    // would not fit the clock's range.
    const MAX_SECS: f64 = 366.0 * 24.0 * 3600.0;
    if secs > MAX_SECS {
        return Err(format!("{s:?} is too long: at most 366 days"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Durations take ms, s, m or h (a bare number is seconds); nonsense and slips are refused.
    #[test]
    fn durations() {
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5d").is_err());
        // Too long to be meant, and once past the clock's range a panic (it was).
        assert!(parse_duration("18000000000000000000")
            .unwrap_err()
            .contains("at most 366 days"));
        assert!(parse_duration("527040m").is_ok());
    }
}
