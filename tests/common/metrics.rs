//! Checking the programs' metrics as their users do: scraped over HTTP, parsed by Python's
//! `prometheus-client` text parser (installed by .ci/run into .venv-test), linted by
//! `promtool`, and scraped by a real Prometheus server (Debian package `prometheus`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{free_port, secantusd, wait_until};

/// An HTTP answer: status code and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// `GET path` on `addr` (`host:port`) over a fresh connection. HTTP/1.0, so that the answer
/// is the body as it is, never chunked, and the connection closes after it.
pub fn get(addr: &str, path: &str) -> std::io::Result<Answer> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    Ok(Answer {
        status,
        content_type,
        body: body.to_owned(),
    })
}

/// Wait until the metric `name` scraped from `addr` is at least `min`.
pub async fn wait_for_metric(addr: &str, name: &str, min: f64) {
    let (a, n) = (addr.to_owned(), name.to_owned());
    wait_until(
        Duration::from_secs(60),
        &format!("{name} >= {min}"),
        move || {
            let (a, n) = (a.clone(), n.clone());
            async move { scrape(&a).get(&n).is_some_and(|&v| v >= min) }
        },
    )
    .await;
}

/// Wait until `addr` answers `/healthz`.
pub async fn wait_serving(addr: &str) {
    let a = addr.to_owned();
    wait_until(Duration::from_secs(30), "the metrics listener", move || {
        let a = a.clone();
        async move { get(&a, "/healthz").is_ok_and(|r| r.status == 200) }
    })
    .await;
}

/// A `127.0.0.1:PORT` address with a free port.
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// The test venv's Python (beside SecantusDB's launcher).
pub fn python() -> PathBuf {
    let s = secantusd();
    match s.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join("python"),
        _ => PathBuf::from("python3"),
    }
}

/// Samples by name with their labels written `name{a="1",b="2"}` (labels sorted), as parsed
/// by `prometheus_client.parser`. Panics with the parser's message if it refuses the text.
pub fn parse(text: &str) -> BTreeMap<String, f64> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        out[s.name + ("{%s}" % labels if labels else "")] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new(python())
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the test venv's python (bash .ci/run creates .venv-test)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Scrape `addr`'s `/metrics`, check its status and content type, and parse it.
pub fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let r = get(addr, "/metrics").expect("scrape /metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        r.content_type
    );
    parse(&r.body)
}

/// The value of one sample; panics with every sample's name if it is missing.
pub fn value(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    *samples.get(name).unwrap_or_else(|| {
        panic!(
            "no sample {name}; there are: {:?}",
            samples.keys().collect::<Vec<_>>()
        )
    })
}

/// `promtool` with these arguments and `stdin`: its exit status and its output.
pub fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian package prometheus; bash .ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Lint an exposition with `promtool check metrics`; panics with what it says.
pub fn lint(text: &str) {
    let (ok, said) = promtool(&["check", "metrics"], text);
    assert!(
        ok && said.trim().is_empty(),
        "promtool check metrics: {said}\n{text}"
    );
}

/// A Prometheus server scraping some targets every second, on a free port, with its storage in
/// a temporary directory. Killed on drop.
pub struct Prometheus {
    pub addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrape each `(job, host:port)` every second.
    pub fn start(targets: &[(&str, &str)]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("prometheus.log")).unwrap(),
            ))
            .spawn()
            .expect("run prometheus (Debian package prometheus; bash .ci/run installs it)");
        Prometheus {
            addr,
            child,
            _dir: dir,
        }
    }

    /// The log so far, for a failure message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query through the HTTP API: each series' labels (as JSON) and value.
    pub fn query(&self, expr: &str) -> Vec<(serde_json::Value, f64)> {
        let Ok(r) = get(
            &self.addr,
            &format!("/api/v1/query?query={}", encode_query(expr)),
        ) else {
            return Vec::new();
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&r.body) else {
            return Vec::new();
        };
        v["data"]["result"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| {
                        let value = s["value"][1].as_str()?.parse().ok()?;
                        Some((s["metric"].clone(), value))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether Prometheus accepts `expr` as a query: `Err` with its error if not.
    pub fn check(&self, expr: &str) -> Result<(), String> {
        let r = get(
            &self.addr,
            &format!("/api/v1/query?query={}", encode_query(expr)),
        )
        .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
        if v["status"] == "success" {
            Ok(())
        } else {
            Err(format!("{}: {}", v["errorType"], v["error"]))
        }
    }

    /// Wait until `expr` gives at least one series, all of them with values `ok` accepts.
    pub async fn wait_for(
        &self,
        expr: &str,
        ok: impl Fn(f64) -> bool,
    ) -> Vec<(serde_json::Value, f64)> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.query(expr);
            if !r.is_empty() && r.iter().all(|(_, v)| ok(*v)) {
                return r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "Prometheus never answered {expr} as expected (last: {r:?}); its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encode a query parameter.
fn encode_query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The repository's file at `rel`.
pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// node_exporter with only its textfile and time collectors on (the stale-file rule takes the
/// file's age on the machine's clock), reading `dir`, on a free port. Killed on drop.
pub struct NodeExporter {
    pub addr: String,
    child: Child,
}

impl NodeExporter {
    /// Serve the `*.prom` files of `dir`.
    pub fn start(dir: &Path) -> NodeExporter {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus-node-exporter")
            .arg("--collector.disable-defaults")
            .arg("--collector.textfile")
            .arg("--collector.time")
            .arg(format!("--collector.textfile.directory={}", dir.display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run prometheus-node-exporter (Debian package; bash .ci/run installs it)");
        NodeExporter { addr, child }
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
