//! The agent's metrics and health over real HTTP, against the real test MongoDB server: parsed
//! by Python's prometheus-client, linted by promtool, scraped by a real Prometheus; and the
//! alert rules shipped in deploy/prometheus checked by promtool.

mod common;
#[path = "common/metrics.rs"]
mod metrics_common;

use std::time::Duration;

use common::{agent_command, quiet_agent, unique_name, wait_until, MongoServer, Reaped};
use metrics_common::{
    free_addr, get, lint, promtool, repo_file, scrape, value, wait_for_metric, wait_serving,
    Prometheus,
};

/// The agent on the simulated board, 50 ms apart, inserting every 200 ms, with metrics on
/// `addr` and a textfile.
fn agent(
    uri: &str,
    db: &str,
    spool: &std::path::Path,
    addr: &str,
    textfile: &std::path::Path,
) -> Reaped {
    let args = [
        "--sensors",
        "sim",
        "--interval",
        "50ms",
        "--insert-every",
        "200ms",
        "--database",
        db,
        "--metrics-listen",
        addr,
        "--metrics-textfile",
        textfile.to_str().unwrap(),
    ];
    quiet_agent(uri, spool, &args)
}

/// The agent on the simulated board, 50 ms apart, with no database to reach, serving its
/// metrics; and their address, once it serves them.
async fn agent_without_database(spool: &std::path::Path) -> (Reaped, String) {
    let nobody = format!("mongodb://127.0.0.1:{}/", common::free_port());
    let addr = free_addr();
    let args = [
        "--sensors",
        "sim",
        "--interval",
        "50ms",
        "--metrics-listen",
        &addr,
    ];
    let agent = quiet_agent(&nobody, spool, &args);
    wait_serving(&addr).await;
    (agent, addr)
}

// The metrics follow what the agent does: samples, deliveries, the spool; when the database
// goes away /readyz says so with the reason, database_up drops and the spool grows; the
// textfile holds the same names, promtool finds nothing wrong with either, and node_exporter
// serves it under the name the stale-file alert looks for.
#[tokio::test(flavor = "multi_thread")]
async fn agent_metrics_follow_delivery_and_an_outage() {
    let Some(mut server) = MongoServer::start_persistent() else {
        eprintln!("skipped: needs a server it can stop (MONGODB_TEST_URI is set)");
        return;
    };
    let db = unique_name("metrics");
    let spool = tempfile::tempdir().unwrap();
    // The name docs/metrics.md gives it, which the alert rule matches.
    let textfile = spool.path().join("sensehat.prom");
    let addr = free_addr();
    let _agent = agent(&server.uri, &db, spool.path(), &addr, &textfile);
    wait_serving(&addr).await;

    wait_for_metric(&addr, "sensehat_agent_reports_delivered_total", 20.0).await;
    let m = scrape(&addr);
    assert!(value(&m, "sensehat_agent_samples_total") >= 20.0);
    assert_eq!(value(&m, "sensehat_agent_database_up"), 1.0);
    assert_eq!(value(&m, "sensehat_agent_samples_skipped_total"), 0.0);
    assert!(value(&m, "sensehat_agent_insert_duration_seconds_count") >= 1.0);
    assert!(value(&m, "sensehat_agent_spool_capacity_bytes") > 0.0);
    let stored = server
        .client()
        .await
        .database(&db)
        .collection::<mongodb::bson::Document>("reports")
        .count_documents(mongodb::bson::doc! {})
        .await
        .unwrap();
    assert!(
        stored as f64 >= value(&m, "sensehat_agent_reports_delivered_total"),
        "the agent counts more deliveries ({m:?}) than the database has ({stored})"
    );
    let ready = get(&addr, "/readyz").unwrap();
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    let health = get(&addr, "/healthz").unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(get(&addr, "/nothing").unwrap().status, 404);

    // The textfile is written with status.json (every 10 s, and the first at start).
    wait_until(Duration::from_secs(30), "the metrics textfile", || {
        let t = textfile.clone();
        async move { t.exists() }
    })
    .await;
    let text = std::fs::read_to_string(&textfile).unwrap();
    let file = metrics_common::parse(&text);
    assert!(
        file.contains_key("sensehat_agent_reports_delivered_total"),
        "{text}"
    );
    assert!(file.contains_key("sensehat_agent_spool_reports"), "{text}");
    lint(&text);
    lint(&get(&addr, "/metrics").unwrap().body);
    // node_exporter's textfile collector serves it, without complaint.
    let exporter = metrics_common::NodeExporter::start(spool.path());
    wait_until(
        Duration::from_secs(30),
        "node_exporter to serve the textfile",
        || {
            let a = exporter.addr.clone();
            async move {
                get(&a, "/metrics").is_ok_and(|r| {
                    r.status == 200 && r.body.contains("\nsensehat_agent_reports_delivered_total ")
                })
            }
        },
    )
    .await;
    let served = scrape(&exporter.addr);
    assert_eq!(value(&served, "node_textfile_scrape_error"), 0.0);
    // The stale-file rule's age, as Prometheus computes it from node_exporter: one series, the
    // agent's file, freshly written (the agent rewrites it every 10 s).
    let prometheus = Prometheus::start(&[("node", &exporter.addr)]);
    let age = stale_file_age_expr();
    let found = prometheus.wait_for(&age, |v| v < 60.0).await;
    assert_eq!(found.len(), 1, "{age}: {found:?}");
    drop(prometheus);
    drop(exporter);
    // When the agent stops, the unit removes its directory: node_exporter reports that as a
    // textfile error, the rule's other half.
    let gone = metrics_common::NodeExporter::start(&spool.path().join("no-such-directory"));
    wait_until(Duration::from_secs(30), "node_exporter to serve", || {
        let a = gone.addr.clone();
        async move { get(&a, "/metrics").is_ok_and(|r| r.status == 200) }
    })
    .await;
    assert_eq!(
        value(&scrape(&gone.addr), "node_textfile_scrape_error"),
        1.0
    );
    drop(gone);

    server.kill();
    wait_until(Duration::from_secs(60), "/readyz to say not ready", || {
        let a = addr.clone();
        async move { get(&a, "/readyz").is_ok_and(|r| r.status == 503) }
    })
    .await;
    let not_ready = get(&addr, "/readyz").unwrap();
    assert!(
        not_ready.body.starts_with("not ready: MongoDB unreachable"),
        "{}",
        not_ready.body
    );
    assert_eq!(not_ready.body.lines().count(), 1, "{}", not_ready.body);
    wait_for_metric(&addr, "sensehat_agent_spool_reports", 10.0).await;
    let m = scrape(&addr);
    assert_eq!(value(&m, "sensehat_agent_database_up"), 0.0);
    assert!(value(&m, "sensehat_agent_spool_bytes") > 0.0);
    assert!(value(&m, "sensehat_agent_spool_oldest_age_seconds") > 0.0);

    server.launch();
    wait_until(Duration::from_secs(60), "/readyz to recover", || {
        let a = addr.clone();
        async move { get(&a, "/readyz").is_ok_and(|r| r.status == 200) }
    })
    .await;
}

// While the spool's disk refuses writes (its segment file is /dev/full) and no database
// answers, the reports wait in memory and `spool_memory_reports` counts them, as
// SensehatSpoolDiskUnwritable expects (the spool's size on disk does not move, so
// SensehatSpoolNearlyFull cannot see them); once the disk takes writes they move to it and the
// gauge falls to 0 while the reports stay unsent.
#[tokio::test(flavor = "multi_thread")]
async fn reports_held_in_memory_are_counted_apart() {
    let spool = tempfile::tempdir().unwrap();
    let segment = spool.path().join("segment-0000000000000001.spool");
    std::os::unix::fs::symlink("/dev/full", &segment).unwrap();
    let (_agent, addr) = agent_without_database(spool.path()).await;
    wait_for_metric(&addr, "sensehat_agent_spool_memory_reports", 10.0).await;
    assert_eq!(value(&scrape(&addr), "sensehat_agent_spool_bytes"), 0.0);
    std::fs::remove_file(&segment).unwrap();
    wait_until(
        Duration::from_secs(60),
        "the reports to move to disk",
        || {
            let a = addr.clone();
            async move {
                let m = scrape(&a);
                value(&m, "sensehat_agent_spool_memory_reports") == 0.0
                    && value(&m, "sensehat_agent_spool_reports") >= 10.0
                    && value(&m, "sensehat_agent_spool_bytes") > 0.0
            }
        },
    )
    .await;
}

// Restarted while the database is unreachable, the agent goes on counting from the last insert
// the previous run had acknowledged: `status` does not say "never", and the age the
// no-readings alert watches does not start again from zero at each restart.
#[tokio::test(flavor = "multi_thread")]
async fn the_last_insert_outlives_a_restart() {
    let server = MongoServer::start();
    let db = unique_name("lastinsert");
    let spool = tempfile::tempdir().unwrap();
    let first = agent_command()
        .args([
            "--sensors",
            "sim",
            "--count",
            "5",
            "--interval",
            "50ms",
            "--database",
            &db,
        ])
        .arg("--spool-dir")
        .arg(spool.path())
        .env("MONGODB_CONNECTION_STRING", &server.uri)
        .output()
        .unwrap();
    assert!(first.status.success(), "{first:?}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (again, addr) = agent_without_database(spool.path()).await;
    let age = value(&scrape(&addr), "sensehat_agent_last_insert_age_seconds");
    assert!(age >= 5.0, "{age}");
    // The status file this run wrote, not the last run's.
    let pid = again.0.id();
    common::wait_for_status(spool.path(), "this run's status file", |s| s.pid == pid).await;
    let s = common::status_text(spool.path());
    let last = s.lines().find(|l| l.starts_with("last insert"));
    assert!(last.is_some_and(|l| l.ends_with(" s ago)")), "{s}");
}

// A real Prometheus scrapes the agent: its target is up and the samples arrive under the
// documented names.
#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_agent() {
    let server = MongoServer::start();
    let db = unique_name("metrics_prom");
    let spool = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let _agent = agent(
        &server.uri,
        &db,
        spool.path(),
        &addr,
        &spool.path().join("agent.prom"),
    );
    wait_serving(&addr).await;
    let prometheus = Prometheus::start(&[("sensehat_agent", &addr)]);
    prometheus
        .wait_for("up{job=\"sensehat_agent\"}", |v| v == 1.0)
        .await;
    prometheus
        .wait_for("sensehat_agent_reports_delivered_total", |v| v > 0.0)
        .await;
    prometheus
        .wait_for("sensehat_agent_insert_duration_seconds_count", |v| v > 0.0)
        .await;
    // Every query of the shipped Grafana dashboard is one Prometheus accepts, and the agent's
    // panels have data, for all Pis (Grafana puts the variable's `allValue` for `$instance`)
    // and for the one its variable lists.
    let dashboard: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo_file("deploy/grafana/sensehat-monitor.json")).unwrap(),
    )
    .unwrap();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let instance = variables.iter().find(|v| v["name"] == "instance").unwrap();
    let listed = instance["definition"]
        .as_str()
        .and_then(|d| d.strip_prefix("label_values("))
        .and_then(|d| d.strip_suffix(", instance)"))
        .expect("the instance variable lists a metric's instance labels");
    let pis = prometheus.query(listed);
    assert_eq!(pis.len(), 1, "{listed}: {pis:?}");
    let pi = pis[0].0["instance"].as_str().unwrap().to_owned();
    let mut agent_queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let with = |value: &str| target["expr"].as_str().unwrap().replace("$instance", value);
            let all = with(instance["allValue"].as_str().unwrap());
            prometheus
                .check(&all)
                .unwrap_or_else(|e| panic!("the dashboard's query {all} fails: {e}"));
            if all.contains("sensehat_agent_") {
                prometheus.wait_for(&with(&pi), |_| true).await;
                if !all.contains("rate(") {
                    prometheus.wait_for(&all, |_| true).await;
                    agent_queries += 1;
                }
            }
        }
    }
    assert!(agent_queries >= 3);
}

// Every metric the alert rules and the dashboard use is one docs/metrics.md documents, and
// every metric the agent serves is documented there.
#[tokio::test(flavor = "multi_thread")]
async fn the_rules_the_dashboard_and_the_docs_use_the_same_names() {
    let docs = std::fs::read_to_string(repo_file("docs/metrics.md")).unwrap();
    let documented = |name: &str| {
        let prefix = [
            "sensehat_agent_",
            "firehose_endpoint_",
            "kinesis_forwarder_",
            "firehose_local_",
        ]
        .into_iter()
        .find(|p| name.starts_with(p))
        .unwrap_or_else(|| panic!("{name} has no program's prefix"));
        let short = name.strip_prefix(prefix).unwrap();
        // Histograms are documented by their base name.
        let base = ["_bucket", "_count", "_sum"]
            .into_iter()
            .find_map(|s| short.strip_suffix(s))
            .unwrap_or(short);
        docs.contains(&format!("`{base}`")) || docs.contains(&format!("`{base}{{"))
    };
    let used = [
        std::fs::read_to_string(repo_file("deploy/prometheus/alerts.yml")).unwrap(),
        std::fs::read_to_string(repo_file("deploy/grafana/sensehat-monitor.json")).unwrap(),
    ]
    .concat();
    let mut names: Vec<&str> = used
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            [
                "sensehat_agent_",
                "firehose_endpoint_",
                "kinesis_forwarder_",
                "firehose_local_",
            ]
            .iter()
            .any(|p| w.starts_with(p))
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 15, "{names:?}");
    for name in names {
        assert!(
            documented(name),
            "{name} is used but not in docs/metrics.md"
        );
    }

    let server = MongoServer::start();
    let db = unique_name("metrics_names");
    let spool = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let _agent = agent(
        &server.uri,
        &db,
        spool.path(),
        &addr,
        &spool.path().join("agent.prom"),
    );
    wait_serving(&addr).await;
    wait_until(Duration::from_secs(30), "the sensors' metrics", || {
        let a = addr.clone();
        async move {
            scrape(&a)
                .keys()
                .any(|k| k.starts_with("sensehat_agent_sensor_up"))
        }
    })
    .await;
    for name in scrape(&addr).keys() {
        let family = name.split('{').next().unwrap();
        assert!(
            documented(family),
            "the agent serves {family}, which docs/metrics.md does not list"
        );
    }
}

// A textfile that cannot be written (its directory is a file) is said once, at WARN, however
// often it is tried, and the agent goes on storing readings.
#[test]
fn an_unwritable_textfile_is_said_once() {
    let server = MongoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "").unwrap();
    let out = agent_command()
        .args(["--sensors", "sim", "--interval", "50ms", "--count", "5"])
        .args(["--database", &unique_name("textfile_bad")])
        .arg("--spool-dir")
        .arg(dir.path().join("spool"))
        .arg("--metrics-textfile")
        .arg(not_a_dir.join("sensehat.prom"))
        .env("MONGODB_CONNECTION_STRING", &server.uri)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    // Written at the first sample and again at the stop: two failures, one line.
    assert_eq!(
        log.matches("cannot write the metrics textfile").count(),
        1,
        "{log}"
    );
    assert!(
        log.contains("WARN") && log.contains("Not a directory"),
        "{log}"
    );
}

// A port already in use is a configuration error (exit 2) that names the option, as is an
// address that is no HOST:PORT; each says what to check. An address not on this machine, or a
// name DNS cannot resolve, may yet come (DHCP): the agent says so and takes its readings (see
// `metrics_are_served_once_the_address_comes`).
#[test]
fn a_metrics_address_in_use_is_refused_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let in_use = taken.local_addr().unwrap().to_string();
    // Where the kernel has no IPv6, or lets programs bind any address, fd00::5 is no test.
    let nonlocal = std::fs::read_to_string("/proc/sys/net/ipv6/ip_nonlocal_bind")
        .map_or(true, |v| v.trim() == "1");
    let cases = [
        (in_use.as_str(), "another program", Some(2)),
        ("127.0.0.1:99999", "HOST:PORT", Some(2)),
        ("[fd00::5]:9464", "not one of this machine's", Some(0)),
        // A name DNS cannot resolve (yet): the same.
        (
            "no-such-host.invalid:9464",
            "trying the address again",
            Some(0),
        ),
    ];
    for (addr, says, code) in cases
        .into_iter()
        .filter(|(a, ..)| !(nonlocal && a.starts_with("[fd00")))
    {
        let out = agent_command()
            .args(["--sensors", "sim", "--dry-run", "--count", "3"])
            .args(["--metrics-listen", addr])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), code, "{err}");
        assert!(
            err.contains("--metrics-listen") && err.contains(says),
            "{err}"
        );
    }
}

// check-config (the unit's ExecStartPre) warns of a --metrics-textfile it cannot write, and
// passes: the agent would run without the file, and node_exporter would find none, which no
// alert tells from a Pi never set up. Before, it said only "configuration ok".
#[test]
fn check_config_warns_of_a_textfile_it_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let check = |textfile: &std::path::Path| {
        let out = agent_command()
            .args([
                "--sensors",
                "sim",
                "--mongodb-uri",
                "mongodb://127.0.0.1:1/",
            ])
            .arg("--spool-dir")
            .arg(dir.path().join("spool"))
            .arg("--metrics-textfile")
            .arg(textfile)
            .arg("check-config")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        assert!(err.contains("configuration ok"), "{err}");
        err
    };
    let err = check(&dir.path().join("no-such-dir").join("sensehat.prom"));
    assert!(
        err.contains("warning: --metrics-textfile") && err.contains("/run/sensehat-monitor"),
        "{err}"
    );
    let err = check(&dir.path().join("sensehat.prom"));
    assert!(!err.contains("--metrics-textfile"), "{err}");
}

// After a power cut the router may come back after the Pi: --metrics-listen's LAN address is
// not on the machine yet. The agent takes its readings meanwhile and serves /metrics once the
// address is there; before, it exited 2, and the service took no readings until the network
// came back. In a network namespace of the test's own (an address added there), as root or
// with user namespaces.
#[test]
fn metrics_are_served_once_the_address_comes() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
        "$1" --sensors sim --dry-run --interval 100ms --metrics-listen '[fd00::5]:9464' \
            > "$2/out" 2> "$2/err" &
        agent=$!
        sleep 2
        lines=$(wc -l < "$2/out")
        ip addr add fd00::5/128 dev lo && ip link set lo up
        for _ in $(seq 1 200); do grep -q 'serving /metrics' "$2/err" && break; sleep 0.1; done
        python3 -c 'import urllib.request, sys
get = urllib.request.build_opener(urllib.request.ProxyHandler({})).open
sys.stdout.write(get("http://[fd00::5]:9464/metrics", timeout=10).read().decode())' \
            > "$2/metrics"
        kill -TERM "$agent"; wait "$agent"; echo "exit $? after $lines readings"
    "#;
    let out = std::process::Command::new("unshare")
        .args(["-rn", "sh", "-c", script, "sh", common::agent_bin()])
        .arg(dir.path())
        .env(
            "SENSEHAT_CLOCK_SYNC_FILE",
            "/nonexistent/timesync/synchronized",
        )
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let err = std::fs::read_to_string(dir.path().join("err")).unwrap_or_default();
    if !out.status.success() && std::env::var_os("CI").is_none() {
        return eprintln!(
            "skipped: no network namespace here: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let readings: u32 = said
        .trim()
        .strip_prefix("exit 0 after ")
        .and_then(|s| s.strip_suffix(" readings"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said} {err}"));
    assert!(
        readings >= 5,
        "{readings} readings before the address came: {err}"
    );
    assert!(err.contains("trying the address again"), "{err}");
    let metrics = std::fs::read_to_string(dir.path().join("metrics")).unwrap();
    assert!(
        metrics.contains("sensehat_agent_samples_total"),
        "{metrics}\n{err}"
    );
}

// The shipped alert rules load in promtool, and their unit tests pass.
#[test]
fn the_alert_rules_pass_promtool() {
    let rules = repo_file("deploy/prometheus/alerts.yml");
    let (ok, said) = promtool(&["check", "rules", rules.to_str().unwrap()], "");
    assert!(ok, "promtool check rules: {said}");
    let tests = repo_file("deploy/prometheus/alerts_test.yml");
    let (ok, said) = promtool(&["test", "rules", tests.to_str().unwrap()], "");
    assert!(ok, "promtool test rules: {said}");
}

/// The age the alert SensehatMetricsFileStale compares with its threshold: the part of its
/// expression in deploy/prometheus/alerts.yml from `node_time_seconds - ` up to the comparison.
fn stale_file_age_expr() -> String {
    let rules = std::fs::read_to_string(repo_file("deploy/prometheus/alerts.yml")).unwrap();
    let rule = rules
        .split("alert: SensehatMetricsFileStale")
        .nth(1)
        .expect("alerts.yml has SensehatMetricsFileStale");
    let from = rule
        .find("node_time_seconds - ")
        .expect("the rule computes an age on the Pi's clock");
    let (age, _) = rule[from..]
        .split_once(" > ")
        .expect("the rule compares the age");
    age.to_owned()
}

// Every program refuses a metrics address that is not HOST:PORT, from its flag or its
// environment variable, with exit 2 and what to give: a bare port passed check-config, and
// the service then failed at start.
#[test]
fn a_metrics_address_without_a_host_is_refused() {
    #[cfg_attr(
        not(any(feature = "firehose", feature = "forwarder")),
        allow(unused_mut)
    )]
    let mut programs = vec![(
        env!("CARGO_BIN_EXE_sensehat-monitor"),
        "SENSEHAT_METRICS_LISTEN",
    )];
    #[cfg(feature = "firehose")]
    programs.push((
        env!("CARGO_BIN_EXE_firehose-endpoint"),
        "FIREHOSE_METRICS_LISTEN",
    ));
    #[cfg(feature = "forwarder")]
    programs.extend([
        (
            env!("CARGO_BIN_EXE_kinesis-forwarder"),
            "FORWARDER_METRICS_LISTEN",
        ),
        (
            env!("CARGO_BIN_EXE_firehose-local"),
            "FIREHOSE_LOCAL_METRICS_LISTEN",
        ),
    ]);
    for (program, variable) in programs {
        let by_flag = std::process::Command::new(program)
            .args(["--metrics-listen", "9467", "check-config"])
            .output()
            .unwrap();
        let by_env = std::process::Command::new(program)
            .arg("check-config")
            .env(variable, ":9467")
            .output()
            .unwrap();
        for out in [by_flag, by_env] {
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{program}: {err}");
            assert!(err.contains("is not HOST:PORT"), "{program}: {err}");
        }
    }
}
