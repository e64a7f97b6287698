//! Logging set-up shared by the binaries: `tracing` to stderr (journald captures it), filtered
//! by `RUST_LOG` (default `info`), colours only on a terminal (journald would store the escape
//! codes). Standard output is left for data.

use std::io::IsTerminal;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber. Call once, first thing in `main`.
pub fn init() {
    let (filter, note) = filter(std::env::var("RUST_LOG").ok().as_deref());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    if let Some(note) = note {
        tracing::warn!("{note}");
    }
}

/// The filter for `RUST_LOG`'s value `given`, and what to say about it. Whatever it names, the
/// program's own warnings and errors are not silenced by accident: `RUST_LOG` without a level
/// for everything (`hyper=debug`, or `warning`, which tracing takes for a module's name) keeps
/// `info` for the rest, and a value it cannot parse is replaced by `info`, each said.
fn filter(given: Option<&str>) -> (EnvFilter, Option<String>) {
    let given = given.unwrap_or_default().trim();
    let parts: Vec<&str> = given
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let is_level = |p: &&str| p.parse::<LevelFilter>().is_ok();
    let leveled = parts.iter().any(is_level);
    // Joined again without the spaces: tracing would take " warn" for a module's name.
    let spec = if leveled {
        parts.join(",")
    } else if parts.is_empty() {
        "info".to_owned()
    } else {
        format!("info,{}", parts.join(","))
    };
    // A bare word that is no level was most likely meant as one ("warning").
    let not_levels: Vec<&str> = parts
        .iter()
        .copied()
        .filter(|p| !is_level(p) && !p.contains(['=', ':', '[']))
        .collect();
    let mut note = (!not_levels.is_empty()).then(|| {
        format!(
            "RUST_LOG names {not_levels:?}, which is taken for a module's name, not a level \
             (error, warn, info, debug, trace or off){}",
            if leveled {
                ""
            } else {
                ": the rest is logged at info"
            }
        )
    });
    let filter = EnvFilter::builder().parse(&spec).unwrap_or_else(|e| {
        note = Some(format!(
            "RUST_LOG {given:?} is not understood ({e}): logging at info instead"
        ));
        EnvFilter::new("info")
    });
    (filter, note)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(given: Option<&str>) -> (String, bool) {
        let (f, note) = filter(given);
        (f.to_string(), note.is_some())
    }

    // A level for everything is taken as given; without one, info for the rest.
    #[test]
    fn the_program_is_never_silenced_by_accident() {
        assert_eq!(shown(None), ("info".into(), false));
        assert_eq!(shown(Some("")), ("info".into(), false));
        assert_eq!(shown(Some("warn")), ("warn".into(), false));
        assert!(!shown(Some("debug,hyper=info")).1);
        assert_eq!(
            shown(Some("hyper=debug, warn")),
            ("hyper=debug,warn".into(), false)
        );
        let (f, noted) = shown(Some("hyper=debug"));
        assert!(
            f.contains("info") && f.contains("hyper=debug") && !noted,
            "{f}"
        );
        let (f, noted) = shown(Some("warning"));
        assert!(f.contains("info") && noted, "{f}");
        let (f, noted) = shown(Some("sensehat_monitor=lolwut"));
        assert!(f == "info" && noted, "{f}");
    }
}
