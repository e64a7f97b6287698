//! A registry as Prometheus' text format (version 0.0.4), which Prometheus, node_exporter's
//! textfile collector and `promtool check metrics` all read.
//!
//! `prometheus-client` writes OpenMetrics, which differs in three ways that matter here: a
//! counter's `# HELP`/`# TYPE` lines name it without the `_total` its samples carry (the text
//! format's parsers then take the samples for an untyped metric of another name), it adds
//! `# UNIT` lines, and it ends with `# EOF`. The conversion renames the first and drops the
//! other two; the samples themselves are the same in both formats.

use std::path::Path;

use prometheus_client::registry::Registry;

/// The content type of what [`encode`] returns.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The registry's metrics in Prometheus' text format.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut open = String::new();
    prometheus_client::encoding::text::encode(&mut open, registry)?;
    Ok(to_text_format(&open))
}

/// OpenMetrics text as Prometheus text format (see the module's comment).
fn to_text_format(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    // A `# HELP` line waits for its `# TYPE`, which says whether the name takes `_total`.
    let mut help: Option<&str> = None;
    for line in open.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some(h) = help.replace(rest) {
                push_line(&mut out, &["# HELP ", h]);
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.rsplit_once(' ').unwrap_or((rest, "untyped"));
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "unknown" => ("", "untyped"),
                "info" | "stateset" => ("", "gauge"),
                k => ("", k),
            };
            if let Some(h) = help.take() {
                let text = h.strip_prefix(name).unwrap_or(h);
                push_line(&mut out, &["# HELP ", name, suffix, text]);
            }
            push_line(&mut out, &["# TYPE ", name, suffix, " ", kind]);
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        push_line(&mut out, &[line]);
    }
    if let Some(h) = help {
        push_line(&mut out, &["# HELP ", h]);
    }
    out
}

fn push_line(out: &mut String, parts: &[&str]) {
    for p in parts {
        out.push_str(p);
    }
    out.push('\n');
}

/// Write the registry's metrics to `path` for node_exporter's textfile collector: replaced
/// whole (a temporary file renamed over it), so a scrape never reads half of it, and readable
/// by others (node_exporter runs as its own user; the agent's unit sets a umask of 0077). Not
/// synced: it is rewritten every few seconds, and node_exporter reads it from the page cache.
pub fn write_textfile(path: &Path, registry: &Registry) -> std::io::Result<()> {
    let text = encode(registry).map_err(std::io::Error::other)?;
    crate::fsutil::replace_with_mode(
        path,
        text.as_bytes(),
        crate::fsutil::Durability::Unsynced,
        Some(0o644),
    )
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::Unit;

    use super::*;

    #[test]
    fn counters_are_named_with_total_and_openmetrics_lines_go() {
        let mut r = Registry::with_prefix("demo");
        let c: Counter = Counter::default();
        c.inc_by(3);
        r.register("things", "Things done", c);
        let g: Gauge = Gauge::default();
        g.set(-2);
        r.register_with_unit("depth", "Depth of a thing", Unit::Bytes, g);
        let h = Histogram::new([0.1, 1.0]);
        h.observe(0.5);
        r.register_with_unit("wait", "Time waited", Unit::Seconds, h);
        let text = encode(&r).unwrap();
        // prometheus-client ends every help text with a period.
        assert!(
            text.contains("# HELP demo_things_total Things done.\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE demo_things_total counter\n"),
            "{text}"
        );
        assert!(text.contains("\ndemo_things_total 3\n"), "{text}");
        assert!(text.contains("# TYPE demo_depth_bytes gauge\n"), "{text}");
        assert!(text.contains("\ndemo_depth_bytes -2\n"), "{text}");
        assert!(
            text.contains("# TYPE demo_wait_seconds histogram\n"),
            "{text}"
        );
        assert!(
            text.contains("demo_wait_seconds_bucket{le=\"1.0\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("# UNIT"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn the_textfile_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.prom");
        let r = Registry::default();
        let c: Counter = Counter::default();
        let mut r = r;
        r.register("written", "Writes", c.clone());
        write_textfile(&path, &r).unwrap();
        c.inc();
        write_textfile(&path, &r).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\nwritten_total 1\n"), "{text}");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("agent.prom")]);
    }
}
