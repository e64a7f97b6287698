//! Shared helpers for the integration tests: a real MongoDB wire-protocol server (SecantusDB,
//! installed by .ci/run into .venv-test) started on a free port, and the agent binary.
//!
//! Set `MONGODB_TEST_URI` to run against a real mongod or Atlas instead; each test then uses its
//! own database name, and tests that must stop the server are skipped with a message.
#![allow(dead_code)]

pub mod wire;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on the loopback interface, for a server a test starts.
///
/// It is free when chosen, not when the server binds it. A port the kernel hands out for
/// `:0` comes from the ephemeral range, where every outgoing connection of every test takes
/// its local port too: one could take it first, and the server would fail to start. So the
/// port is drawn below that range (from `/proc/sys/net/ipv4/ip_local_port_range`), where only
/// listeners go, and never twice in one test process.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    const LOWEST: u16 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    if ephemeral_start > LOWEST + 1_000 {
        for _ in 0..1_000 {
            let port = fastrand::u16(LOWEST..ephemeral_start);
            if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.insert(port);
                return port;
            }
        }
    }
    // An unusual range: the kernel's choice, with the race above.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// The SecantusDB launcher: `$SECANTUSD`, else `.venv-test/bin/secantusd-py` in the package,
/// else `secantusd-py` on PATH.
pub fn secantusd() -> PathBuf {
    if let Some(p) = std::env::var_os("SECANTUSD") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-test/bin/secantusd-py");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("secantusd-py")
}

/// A unique name for a test's database.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}_{:x}", std::process::id(), fastrand::u64(..))
}

pub struct MongoServer {
    pub uri: String,
    pub port: u16,
    storage: Option<PathBuf>,
    child: Option<Child>,
    /// Whether this process owns the server (false with MONGODB_TEST_URI).
    pub owned: bool,
    _tmp: Option<tempfile::TempDir>,
}

impl MongoServer {
    /// A server for one test: MONGODB_TEST_URI if set, else a fresh in-memory SecantusDB.
    pub fn start() -> MongoServer {
        if let Ok(uri) = std::env::var("MONGODB_TEST_URI") {
            return MongoServer {
                uri,
                port: 0,
                storage: None,
                child: None,
                owned: false,
                _tmp: None,
            };
        }
        Self::start_owned(None)
    }

    /// A server of our own (for tests that put a proxy in front of it). None when
    /// MONGODB_TEST_URI points elsewhere: a proxy needs a server on this machine's loopback.
    pub fn own() -> Option<MongoServer> {
        if std::env::var_os("MONGODB_TEST_URI").is_some() {
            eprintln!("skipping: this test needs a server of its own behind a proxy");
            return None;
        }
        Some(Self::start_owned(None))
    }

    /// A server of our own whose data survives restarts (for outage tests). None when
    /// MONGODB_TEST_URI points elsewhere: such tests cannot stop a shared server.
    pub fn start_persistent() -> Option<MongoServer> {
        if std::env::var_os("MONGODB_TEST_URI").is_some() {
            eprintln!("skipping: this test stops and starts its own server");
            return None;
        }
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut s = Self::start_owned(Some(tmp.path().join("db")));
        s._tmp = Some(tmp);
        Some(s)
    }

    /// A persistent server on a port, not started yet (for "server down at start" tests).
    pub fn not_started() -> Option<MongoServer> {
        if std::env::var_os("MONGODB_TEST_URI").is_some() {
            eprintln!("skipping: this test stops and starts its own server");
            return None;
        }
        let tmp = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        Some(MongoServer {
            uri: Self::uri_for(port),
            port,
            storage: Some(tmp.path().join("db")),
            child: None,
            owned: true,
            _tmp: Some(tmp),
        })
    }

    fn uri_for(port: u16) -> String {
        format!("mongodb://127.0.0.1:{port}/?directConnection=true")
    }

    fn start_owned(storage: Option<PathBuf>) -> MongoServer {
        let port = free_port();
        let mut s = MongoServer {
            uri: Self::uri_for(port),
            port,
            storage,
            child: None,
            owned: true,
            _tmp: None,
        };
        s.launch();
        s
    }

    /// Start (or start again) the server process on its port.
    pub fn launch(&mut self) {
        assert!(self.owned && self.child.is_none());
        let storage = self
            .storage
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| ":memory:".to_owned());
        let child = Command::new(secantusd())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--storage-path", &storage, "--log-level", "WARNING"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}. Run `bash .ci/run` once (it installs SecantusDB into .venv-test), \
                     or set MONGODB_TEST_URI",
                    secantusd().display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "MongoDB test server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop the server process (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Kill the server process with SIGKILL, as a crash or power cut would: nothing it has not
    /// made durable survives.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A client for checking what arrived.
    pub async fn client(&self) -> mongodb::Client {
        mongodb::Client::with_uri_str(&self.uri)
            .await
            .expect("test client")
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The agent binary built for this test run.
pub fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sensehat-monitor")
}

/// The agent binary, as a command that trusts the clock: on a host whose systemd-timesyncd has
/// not synchronized its clock yet, the agent would otherwise hold readings for `--clock-wait`.
/// The clock's own tests give `--clock-sync-file` themselves, which wins over this.
pub fn agent_command() -> Command {
    let mut c = Command::new(agent_bin());
    c.env(
        "SENSEHAT_CLOCK_SYNC_FILE",
        "/nonexistent/timesync/synchronized",
    );
    c
}

/// The agent on the simulated board taking `count` samples 50 ms apart into `db` on the server at
/// `uri`, spooling in `spool`. A std `Command`: `tokio::process::Command::from` it for async use.
pub fn sim_agent(uri: &str, db: &str, count: u32, spool: &Path) -> Command {
    let mut c = agent_command();
    c.args(["--sensors", "sim", "--interval-ms", "50", "--database", db])
        .args(["--count", &count.to_string()])
        .arg("--spool-dir")
        .arg(spool)
        .env("MONGODB_CONNECTION_STRING", uri);
    c
}

/// Run [`sim_agent`] to completion with a throwaway spool; panics with its stderr if it fails.
pub async fn run_sim_agent(uri: &str, db: &str, count: u32) {
    let spool = tempfile::tempdir().unwrap();
    run_to_success(sim_agent(uri, db, count, spool.path())).await;
}

/// Run `command` to completion; panics with its stderr if it fails.
pub async fn run_to_success(command: Command) {
    let out = tokio::process::Command::from(command)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every document of `db.reports`, in natural order.
pub async fn all_reports(client: &mongodb::Client, db: &str) -> Vec<mongodb::bson::Document> {
    let mut cursor = client
        .database(db)
        .collection::<mongodb::bson::Document>("reports")
        .find(mongodb::bson::doc! {})
        .await
        .unwrap();
    let mut docs = Vec::new();
    while cursor.advance().await.unwrap() {
        docs.push(cursor.deserialize_current().unwrap());
    }
    docs
}

/// Wait (up to 20 s) until something listens on loopback `port`: `what`, started just now.
pub async fn wait_listening(port: u16, what: &str) {
    wait_until(
        Duration::from_secs(20),
        &format!("{what} to listen on port {port}"),
        || async move { std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() },
    )
    .await;
}

/// Wait until `f` is true, polling; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Send a signal to a child process by number (15 TERM, 9 KILL, 2 INT).
pub fn signal(child: &Child, sig: i32) {
    signal_pid(child.id(), sig);
}

/// Send a signal to a process by id (a Tokio child's `id()`).
pub fn signal_pid(pid: u32, sig: i32) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// Wait up to `timeout` for `child` to exit, and give its exit status; past it, kill it and
/// fail the test.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("agent did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The agent with `args`, spooling in `spool` and storing through `uri`, its output discarded;
/// killed when dropped.
pub fn quiet_agent(uri: &str, spool: &Path, args: &[&str]) -> Reaped {
    let child = agent_command()
        .args(args)
        .arg("--spool-dir")
        .arg(spool)
        .env("MONGODB_CONNECTION_STRING", uri)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Reaped(child)
}

/// A child process killed when dropped, so that a failed assertion does not leave an agent
/// running (it would keep the test harness's output pipe open).
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sensehat-monitor status --spool-dir DIR`: its exit code, standard output and standard
/// error.
pub fn status_run(spool_dir: &Path) -> (Option<i32>, String, String) {
    let out = agent_command()
        .arg("status")
        .arg("--spool-dir")
        .arg(spool_dir)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What `sensehat-monitor status --spool-dir DIR` prints. It must succeed, or exit 3 (the
/// agent is not running, as after it was stopped) or 4 (no status file yet): callers that care
/// use [`status_run`].
pub fn status_text(spool_dir: &Path) -> String {
    let (code, text, said) = status_run(spool_dir);
    assert!(matches!(code, Some(0 | 3 | 4)), "exit {code:?}: {said}");
    text
}

/// The number that follows `label` at the start of a line of `status`'s text ("unsent reports
/// 12 ..." gives 12), if there is one.
pub fn status_figure(text: &str, label: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(label))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Wait up to 30 s until the agent's status file in `spool_dir` holds what `f` asks for;
/// panics with `what` otherwise.
pub async fn wait_for_status(
    spool_dir: &Path,
    what: &str,
    f: impl Fn(&sensehat_monitor::status::Status) -> bool,
) {
    let file = spool_dir.join(sensehat_monitor::status::STATUS_FILE);
    let f = &f;
    wait_until(Duration::from_secs(30), what, || {
        let file = file.clone();
        async move { sensehat_monitor::status::Status::read(&file).is_some_and(|s| f(&s)) }
    })
    .await;
}

/// Start `command` with its stderr piped and return the first line of it that holds `needle`,
/// failing the test if none comes within `timeout`; the process is killed and reaped either way.
pub async fn first_stderr_line(mut command: Command, needle: &str, timeout: Duration) -> String {
    use std::io::BufRead as _;
    let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let wanted = needle.to_owned();
    let found = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains(&wanted))
    });
    let line = tokio::time::timeout(timeout, found).await;
    let _ = child.kill();
    let _ = child.wait();
    let line = line.unwrap_or_else(|_| panic!("no line with {needle:?} within {timeout:?}"));
    line.unwrap()
        .unwrap_or_else(|| panic!("stderr ended without a line with {needle:?}"))
}
