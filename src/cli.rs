//! Conventions the five programs share on their command lines.
//!
//! - Durations are written with a unit: `500ms`, `5s`, `2m`, `1h`, `7d` (a bare number is
//!   seconds); [`parse_duration`] reads them. An option renamed to this form keeps its old spelling
//!   (`--interval-ms 500`, `--body-timeout-seconds 120`) as a hidden alias, so no unit file breaks.
//! - `check-config` is a subcommand of every program: it validates the configuration, says
//!   what it found, and exits 0 (usable as systemd's `ExecStartPre`), [`INVALID_CONFIG`] when it
//!   is wrong ([`check_config_exit`]).
//! - Sizes are bytes, or written with a unit: `64MiB`, `1G` ([`parse_size`]).
//! - Every option is also an environment variable, shown in `--help`; secrets only there.
//!   A command line clap refuses is said without the user name and password of any
//!   connection string on it ([`parse_args`]).

use std::process::ExitCode;
use std::time::Duration;

/// The exit status of a configuration that cannot work, from `check-config` or at start.
pub const INVALID_CONFIG: u8 = 2;

/// Parse the command line as `T`. What clap would say about a line it refuses is said with the
/// user name and password of every connection string on the line left out: clap quotes an
/// argument it does not know (a connection string given without its option, say), and under
/// systemd what a program writes goes to the journal.
pub fn parse_args<T: clap::Parser>() -> T {
    T::try_parse().unwrap_or_else(|e| {
        if !e.use_stderr() {
            // --help and --version.
            e.exit()
        }
        let mut text = e.render().to_string();
        for arg in std::env::args_os().filter_map(|a| a.into_string().ok()) {
            if arg.contains("://") {
                text = crate::mongo::redact_credentials(&text, &arg);
            }
        }
        eprint!("{text}");
        std::process::exit(e.exit_code())
    })
}

/// How `check-config` ends: what it found on standard output and exit 0, or why the
/// configuration cannot work in the log and exit [`INVALID_CONFIG`].
pub fn check_config_exit(found: Result<String, String>) -> ExitCode {
    match found {
        Ok(found) => print_answer(&found),
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(INVALID_CONFIG)
        }
    }
}

/// Write a command's answer (`status`, `check-config`) to standard output. A reader that has
/// gone (`| head -1`, `| grep -q`) ends it as usual; any other failure (`> /dev/full`) is said
/// on one line, with exit status 1. `print!` would panic at either.
pub fn print_answer(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("cannot write to standard output: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The longest duration [`parse_duration`] takes: beyond a year is a slip of the keyboard, and
/// far enough past it a deadline made from it would not fit the clock's range.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);
/// [`MAX_DURATION`] in milliseconds, for the old unit-less spellings that took milliseconds.
pub const MAX_DURATION_MS: u64 = MAX_DURATION.as_secs() * 1000;
/// [`MAX_DURATION`] in seconds, for the old unit-less spellings that took seconds.
pub const MAX_DURATION_SECS: u64 = MAX_DURATION.as_secs();

/// Parse `5`, `5s`, `500ms`, `2m`, `1h` or `7d`, at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_duration_at_most(s, MAX_DURATION)
}

/// [`parse_duration`] with another upper bound, for an option whose range is not a year.
pub fn parse_duration_at_most(s: &str, max: Duration) -> Result<Duration, String> {
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
        "d" => n * 86_400.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}: use ms, s, m, h or d"
            ))
        }
    };
    if secs > max.as_secs_f64() {
        return Err(format!("{s:?} is too long: at most {}", days(max)));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

/// Parse a size: bytes (`16384`), or a number with a unit. `K`, `M`, `G` and `KiB`, `MiB`,
/// `GiB` count in 1024s, as systemd's unit files do; `KB`, `MB`, `GB` in 1000s. Case is
/// ignored, and a space may come before the unit.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = unit.trim_start();
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?}: write bytes, or use K, M or G (KiB, MiB, GiB), or KB, MB, GB"
            ))
        }
    };
    let not_a_size = || format!("not a size: {s:?} (try 64MiB or 1G)");
    if num.is_empty() {
        return Err(not_a_size());
    }
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(scale)
            .ok_or_else(|| format!("{s:?} is too large"));
    }
    let n: f64 = num.parse().map_err(|_| not_a_size())?;
    let bytes = (n * scale as f64).round();
    if bytes >= u64::MAX as f64 {
        return Err(format!("{s:?} is too large"));
    }
    Ok(bytes as u64)
}

/// `366 days`, or the exact duration when it is not whole days.
fn days(d: Duration) -> String {
    match d.as_secs() {
        s if s % 86_400 == 0 && d.subsec_nanos() == 0 => format!("{} days", s / 86_400),
        _ => format!("{d:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Durations take ms, s, m, h or d (a bare number is seconds); nonsense and slips are refused.
    #[test]
    fn durations() {
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(
            parse_duration("1.5d").unwrap(),
            Duration::from_secs(36 * 3600)
        );
        assert_eq!(
            parse_duration("2 d").unwrap(),
            Duration::from_secs(2 * 86_400)
        );
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5w")
            .unwrap_err()
            .contains("ms, s, m, h or d"));
        // Too long to be meant, and once past the clock's range a panic (it was).
        assert!(parse_duration("18000000000000000000")
            .unwrap_err()
            .contains("at most 366 days"));
        assert!(parse_duration("527040m").is_ok());
        assert!(parse_duration("366d").is_ok());
        assert!(parse_duration("367d").is_err());
    }

    // Another bound is kept to, and named in the refusal.
    // Sizes take bytes or a unit, binary for K/M/G as systemd reads them; nonsense is refused.
    #[test]
    fn sizes() {
        assert_eq!(parse_size("16384").unwrap(), 16_384);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("64 mb").unwrap(), 64_000_000);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("2kb").unwrap(), 2_000);
        assert_eq!(parse_size("512B").unwrap(), 512);
        for bad in ["", "MiB", "64 MiBs", "sixty", "1.2.3M", "-5M", "64T"] {
            assert!(parse_size(bad).is_err(), "{bad:?} was taken");
        }
        assert!(parse_size("64T").unwrap_err().contains("unknown unit"));
        assert!(parse_size("18446744073709551615").is_ok());
        assert!(parse_size("18446744073709551615K")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_size("1e30G").is_err());
    }

    #[test]
    fn durations_with_another_bound() {
        let max = Duration::from_secs(400 * 86_400);
        assert_eq!(
            parse_duration_at_most("400d", max).unwrap(),
            Duration::from_secs(400 * 86_400)
        );
        let e = parse_duration_at_most("401d", max).unwrap_err();
        assert!(e.contains("at most 400 days"), "{e}");
        let e = parse_duration_at_most("2s", Duration::from_millis(1500)).unwrap_err();
        assert!(e.contains("at most 1.5s"), "{e}");
    }
}
