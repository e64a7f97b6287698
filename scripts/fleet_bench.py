#!/usr/bin/env python3
"""Fleet load test: N agents on the simulated board into the whole offline pipeline.

For each fleet size N it starts a fresh pipeline (SecantusDB in memory, kinesis-local,
--endpoints firehose-endpoint processes, behind scripts/fleet_balancer.py when there are
several, firehose-local, kinesis-forwarder), then N real `sensehat-monitor --sensors sim
--interval 500ms --node-name pi-NNNN` processes, each with its own spool directory. After
--warmup seconds it measures --steady seconds, stops the agents with SIGTERM, waits until
everything they produced has reached monitors.firehose, checks every count and prints:

- readings produced, stored in monitors.reports and arrived in monitors.firehose per second,
  over the steady-state window. Produced: readings whose recordedAt falls in the window (every
  one of them is stored by the end, which the checks prove). Stored and arrived: the server's
  own time of each document's first write (the change event's wallTime, replayed from the oplog
  after the run, so measuring costs nothing while the fleet runs).
- end-to-end latency from recordedAt to that first write in monitors.firehose (p50, p99, max),
  split at monitors.reports (the agent's hop includes its insert window, 5 s by default).
- each program's CPU share over the window (utime+stime from /proc/PID/stat, in cores; the
  agents summed) and its peak RSS (VmHWM; for the agents the sum and the largest), and the CPU
  the rest of the machine used meanwhile (/proc/stat less ours), as the machine is shared.
- which hop saturates first: the first hop whose rate falls below 0.95 of the one before it, or
  whose program uses 0.85 of a core or more.

Checks, each a non-zero exit when it fails: every agent ran to the end and exited 0 with nothing
dropped; readings produced (the agents' own counts, from status.json written at stop) = documents
in monitors.reports = documents in monitors.firehose; count = distinct _id in both collections,
the same _id set in both, and no (nodeName, recordedAt) stored twice; every stored document has
its write event in the oplog.

Run it through scripts/fleet-bench.sh, which builds the release binaries and raises ulimit -n.
Every process it starts is stopped by pid when it ends, also on SIGINT/SIGTERM."""
import argparse
import bisect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from pymongo import MongoClient

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
STREAM = "realm"
ACCESS_KEY = "fleet-bench-key"
# A hop falls behind when its rate is below this share of the hop before it...
RATE_BEHIND = 0.95
# ...or its program uses this much of a core.
CPU_BUSY = 0.85


class Stopped(Exception):
    """SIGINT or SIGTERM arrived."""


def on_signal(signum, _frame):
    raise Stopped(signal.Signals(signum).name)


class Processes:
    """Every process this run started, stopped by pid (never by name)."""

    def __init__(self):
        self.procs = []  # (name, Popen)

    def start(self, name, argv, log, **kw):
        with open(log, "ab") as err:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=err, **kw)
        self.procs.append((name, p))
        return p

    def stop(self, procs, timeout=30.0):
        for _, p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _, p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self):
        self.stop(list(reversed(self.procs)), timeout=15.0)
        self.procs.clear()


def free_port(pair=False):
    """A free port on 127.0.0.1 (with pair, one whose successor is free too)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not pair:
            return port
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


def wait_for(what, ready, proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} at start")
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f} s")


def port_open(port):
    def ready():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False
    return ready


def log_says(path, text):
    def ready():
        try:
            return text in Path(path).read_text(errors="replace")
        except FileNotFoundError:
            return False
    return ready


def cpu_ticks(pid):
    """utime + stime of pid, in clock ticks, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def machine_busy_ticks():
    """Ticks every CPU spent busy (not idle or iowait) since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]


def peak_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return None


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def first_writes(coll, start, expect):
    """{_id: first write time (s since epoch)} from coll's change events since `start`, and the
    number of events (more than documents when a record was delivered again)."""
    first, events, empty = {}, 0, 0
    # No $match or $project: the test server replays faster without a pipeline to run.
    with coll.watch(start_at_operation_time=start, max_await_time_ms=300,
                    batch_size=10000) as cs:
        # An empty batch is the end of the oplog; wait a little longer while some are missing.
        while empty < (1 if len(first) >= expect else 5):
            change = cs.try_next()
            if change is None:
                empty += 1
                continue
            empty = 0
            if change["operationType"] not in ("insert", "replace", "update"):
                continue
            events += 1
            key = change["documentKey"]["_id"]
            if key not in first:
                first[key] = change["wallTime"].timestamp()
    return first, events


class Pipeline:
    """One fresh offline pipeline: its processes, ports and logs."""

    def __init__(self, procs, args, workdir):
        self.procs, self.args, self.dir = procs, args, workdir
        self.bin = REPO / "target" / "release"
        self.named = {}  # program name -> [Popen]
        self.balancer_stats = workdir / "balancer.json"

    def _start(self, name, argv, ready=None, says=None, **kw):
        """Start a program; wait until `ready()` or until its log `says` the given text."""
        log = self.dir / f"{name.replace('#', '-')}.log"
        p = self.procs.start(name, argv, log, **kw)
        self.named.setdefault(name.split("#")[0], []).append(p)
        if says:
            ready = log_says(log, says)
        if ready:
            wait_for(name, ready, p)
        return p

    def start(self):
        a = self.args
        env = dict(os.environ, RUST_LOG="info", FIREHOSE_ACCESS_KEY=ACCESS_KEY,
                   AWS_ACCESS_KEY_ID="local", AWS_SECRET_ACCESS_KEY="local",
                   AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
        mongo_port = free_port()
        # The oplog must hold the whole run: the forwarder reads it, and so do the figures.
        self._start("secantusd", [str(REPO / ".venv-test/bin/secantusd-py"), "--host", "127.0.0.1",
                                  "--port", str(mongo_port), "--storage-path", ":memory:",
                                  "--log-level", "WARNING", "--oplog-max-entries", "50000000",
                                  "--session-max", str(a.fleet_max * 2 + 100)],
                    ready=port_open(mongo_port))
        self.uri = f"mongodb://127.0.0.1:{mongo_port}/?directConnection=true"
        env["MONGODB_CONNECTION_STRING"] = self.uri
        self.env = env
        client = MongoClient(self.uri, tz_aware=True)
        self.start_time = client.admin.command("hello")["operationTime"]
        client.close()

        kinesis_port = free_port(pair=True)
        kdir = subprocess.run(["bash", str(REPO / ".ci/kinesis.sh"), "dir"], check=True,
                              capture_output=True, text=True).stdout.strip()
        kenv = dict(env, KINESIS_MOCK_PLAIN_PORT=str(kinesis_port),
                    KINESIS_MOCK_TLS_PORT=str(kinesis_port + 1),
                    INITIALIZE_STREAMS=f"{STREAM}:{a.shards}", CREATE_STREAM_DURATION="0ms",
                    LOG_LEVEL="WARN")
        self._start("kinesis-local", ["node", "main.js"], ready=port_open(kinesis_port),
                    cwd=kdir, env=kenv)
        kinesis = f"http://127.0.0.1:{kinesis_port}"

        backends = []
        for i in range(a.endpoints):
            port = free_port()
            self._start(f"firehose-endpoint#{i}",
                        [str(self.bin / "firehose-endpoint"), "--listen", f"127.0.0.1:{port}",
                         "--path", "/", "--database", "monitors", "--collection", "firehose"],
                        ready=port_open(port), env=env)
            backends.append(f"127.0.0.1:{port}")
        if len(backends) > 1:
            port = free_port()
            argv = [sys.executable, str(REPO / "scripts/fleet_balancer.py"), "--listen", str(port),
                    "--stats", str(self.balancer_stats)]
            for b in backends:
                argv += ["--backend", b]
            self._start("balancer", argv, ready=port_open(port))
            destination = f"http://127.0.0.1:{port}/"
        else:
            destination = f"http://{backends[0]}/"

        self._start("firehose-local",
                    [str(self.bin / "firehose-local"), "--stream-name", STREAM,
                     "--kinesis-endpoint-url", kinesis, "--destination-url", destination,
                     "--buffer-interval", a.buffer_interval, "--from-start",
                     "--error-dir", str(self.dir / "firehose-errors")],
                    says="firehose-local started", env=env)
        self._start("kinesis-forwarder",
                    [str(self.bin / "kinesis-forwarder"), "--stream-name", STREAM,
                     "--kinesis-endpoint-url", kinesis],
                    says="forwarding", env=env)

    def services(self):
        """(program, Popen) of every pipeline process, in pipeline order."""
        order = ["secantusd", "kinesis-forwarder", "kinesis-local", "firehose-local", "balancer",
                 "firehose-endpoint"]
        return [(n, p) for n in order for p in self.named.get(n, [])]


def run_fleet(n, args, procs):
    workdir = Path(tempfile.mkdtemp(prefix=f"fleet-{n}-"))
    print(f"\n==> fleet of {n}: fresh pipeline in {workdir}", flush=True)
    pipe = Pipeline(procs, args, workdir)
    pipe.start()

    # A marker in a directory that does not exist means no systemd-timesyncd: the clock is
    # trusted and readings are not held (as .ci/run sets it).
    agent_env = dict(pipe.env,
                     SENSEHAT_CLOCK_SYNC_FILE=str(workdir / "no-timesyncd" / "synchronized"))
    agents = []
    t_launch = time.monotonic()
    for i in range(1, n + 1):
        name = f"pi-{i:04d}"
        spool = workdir / "agents" / name
        spool.mkdir(parents=True)
        p = procs.start(name, [str(pipe.bin / "sensehat-monitor"), "--sensors", "sim",
                               "--interval", "500ms", "--node-name", name,
                               "--spool-dir", str(spool), "--shutdown-timeout",
                               args.agent_shutdown_timeout],
                        spool / "agent.log", env=agent_env)
        agents.append((name, p, spool))
    print(f"    {n} agents started in {time.monotonic() - t_launch:.1f} s; warm-up "
          f"{args.warmup:.0f} s, then {args.steady:.0f} s measured", flush=True)
    time.sleep(args.warmup)

    services = pipe.services()
    t0_wall, t0 = time.time(), time.monotonic()
    busy0 = machine_busy_ticks()
    cpu0 = {p.pid: cpu_ticks(p.pid) for _, p in services}
    cpu0.update({p.pid: cpu_ticks(p.pid) for _, p, _ in agents})
    time.sleep(args.steady)
    cpu1 = {p.pid: cpu_ticks(p.pid) for _, p in services}
    cpu1.update({p.pid: cpu_ticks(p.pid) for _, p, _ in agents})
    busy1 = machine_busy_ticks()
    t1_wall, t1 = time.time(), time.monotonic()
    agent_rss = [peak_rss_kib(p.pid) for _, p, _ in agents]
    span = t1 - t0

    failures = []
    gone = [name for name, p, _ in agents if p.poll() is not None]
    if gone:
        failures.append(f"{len(gone)} agents exited before the end of the window: {gone[:5]}")

    print(f"    stopping the agents (SIGTERM) and waiting for the pipeline to drain", flush=True)
    t_stop = time.monotonic()
    procs.stop([(name, p) for name, p, _ in agents], timeout=120.0)
    for name, p, _ in agents:
        if p.returncode != 0:
            failures.append(f"{name} exited with {p.returncode}")

    produced, dropped, duplicates = 0, 0, 0
    for name, _, spool in agents:
        try:
            st = json.loads((spool / "status.json").read_text())
        except (FileNotFoundError, ValueError) as e:
            failures.append(f"{name}: no status.json at stop ({e})")
            continue
        produced += st["reports"]
        dropped += st["dropped"]
        duplicates += st["duplicates"]
        if st["pending"]:
            failures.append(f"{name}: {st['pending']} reports still in its spool at stop")
    if dropped:
        failures.append(f"the agents dropped {dropped} reports")

    client = MongoClient(pipe.uri, tz_aware=True)
    db = client.monitors
    # Nothing more will come when agents died: check what is there at once.
    deadline = time.monotonic() + (0 if gone else args.drain_timeout)
    while time.monotonic() < deadline:
        stored = db.reports.estimated_document_count()
        arrived = db.firehose.estimated_document_count()
        if arrived >= produced and stored >= produced:
            break
        time.sleep(0.5)
    drained_after = time.monotonic() - t_stop
    stored = db.reports.count_documents({})
    arrived = db.firehose.count_documents({})
    if not (stored == produced == arrived):
        failures.append(f"produced {produced}, stored {stored}, arrived {arrived} "
                        f"({args.drain_timeout:.0f} s after the stop)")
    service_rss = {p.pid: peak_rss_kib(p.pid) for _, p in services}

    print(f"    drained {drained_after:.1f} s after the stop; reading the oplog", flush=True)
    docs = {}
    for d in db.reports.find({}, {"recordedAt": 1, "nodeName": 1}):
        docs[d["_id"]] = (d["recordedAt"].timestamp(), d["nodeName"])
    firehose_ids = set(db.firehose.distinct("_id"))
    if len(docs) != stored or len(firehose_ids) != arrived:
        failures.append(f"count vs distinct _id: reports {stored}/{len(docs)}, "
                        f"firehose {arrived}/{len(firehose_ids)}")
    if firehose_ids != set(docs):
        failures.append(f"_id sets differ: {len(firehose_ids - set(docs))} only in firehose, "
                        f"{len(set(docs) - firehose_ids)} only in reports")
    readings = {(node, at) for at, node in docs.values()}
    if len(readings) != len(docs):
        failures.append(f"{len(docs) - len(readings)} readings stored twice under another _id")
    stored_at, stored_events = first_writes(db.reports, pipe.start_time, len(docs))
    arrived_at, arrived_events = first_writes(db.firehose, pipe.start_time, len(firehose_ids))
    if len(stored_at) != len(docs) or len(arrived_at) != len(firehose_ids):
        failures.append(f"write events found for {len(stored_at)}/{len(docs)} reports and "
                        f"{len(arrived_at)}/{len(firehose_ids)} firehose documents")
    client.close()

    # Stop the pipeline before reading the balancer's counts (it writes them at SIGTERM).
    for name, p in services:
        if p.poll() is not None:
            failures.append(f"{name} exited with {p.returncode} during the run")
    procs.stop(list(reversed(services)), timeout=20.0)
    balancer = None
    if pipe.balancer_stats.exists():
        balancer = json.loads(pipe.balancer_stats.read_text())["requests"]
    procs.procs = [(nm, p) for nm, p in procs.procs if p.poll() is None]

    def in_window(t):
        return t0_wall <= t < t1_wall

    rate = {
        "produced": sum(1 for at, _ in docs.values() if in_window(at)) / span,
        "stored": sum(1 for t in stored_at.values() if in_window(t)) / span,
        "arrived": sum(1 for t in arrived_at.values() if in_window(t)) / span,
    }
    lat_total, lat_agent, lat_rest = [], [], []
    for _id, (at, _) in docs.items():
        if in_window(at) and _id in stored_at and _id in arrived_at:
            lat_total.append(arrived_at[_id] - at)
            lat_agent.append(stored_at[_id] - at)
            lat_rest.append(arrived_at[_id] - stored_at[_id])
    for v in (lat_total, lat_agent, lat_rest):
        v.sort()
    # Backlog at the end of the window: produced by then but not yet stored / arrived.
    rec_sorted = sorted(at for at, _ in docs.values())
    produced_by_t1 = bisect.bisect_left(rec_sorted, t1_wall)
    stored_by_t1 = sum(1 for t in stored_at.values() if t < t1_wall)
    arrived_by_t1 = sum(1 for t in arrived_at.values() if t < t1_wall)

    def cores(pids):
        total = 0
        for pid in pids:
            if cpu0.get(pid) is not None and cpu1.get(pid) is not None:
                total += cpu1[pid] - cpu0[pid]
        return total / CLK_TCK / span

    programs = []
    for name in dict.fromkeys(n for n, _ in services):
        for i, p in enumerate([p for nm, p in services if nm == name]):
            label = name if len(pipe.named[name]) == 1 else f"{name} #{i + 1}"
            programs.append({"program": label, "cpu_cores": cores([p.pid]),
                             "peak_rss_mib": (service_rss.get(p.pid) or 0) / 1024})
    agent_cpu = cores([p.pid for _, p, _ in agents])
    rss_known = [r for r in agent_rss if r]
    programs.insert(0, {"program": f"agents (sum of {n})", "cpu_cores": agent_cpu,
                        "peak_rss_mib": sum(rss_known) / 1024,
                        "max_agent_rss_mib": max(rss_known, default=0) / 1024,
                        "cpu_per_agent": agent_cpu / n})
    ours = sum(p["cpu_cores"] for p in programs)
    machine = (busy1 - busy0) / CLK_TCK / span

    saturates = saturation(rate, programs)
    result = {
        "fleet": n, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "window_s": span, "warmup_s": args.warmup, "endpoints": args.endpoints,
        "shards": args.shards, "rates_per_s": rate,
        "latency_s": {k: {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99),
                          "max": v[-1] if v else float("nan")}
                      for k, v in (("end_to_end", lat_total), ("to_reports", lat_agent),
                                   ("reports_to_firehose", lat_rest))},
        "backlog_at_window_end": {"not_yet_stored": produced_by_t1 - stored_by_t1,
                                  "not_yet_arrived": stored_by_t1 - arrived_by_t1},
        "drained_after_stop_s": drained_after,
        "programs": programs, "our_cpu_cores": ours, "other_cpu_cores": max(0.0, machine - ours),
        "counts": {"produced": produced, "stored": stored, "arrived": arrived,
                   "agent_duplicates": duplicates, "reports_write_events": stored_events,
                   "firehose_write_events": arrived_events},
        "balancer_requests": balancer, "saturates": saturates, "failures": failures,
    }
    print_result(result)
    if failures:
        print(f"kept for the failure: the programs' logs in {workdir}")
    elif not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def saturation(rate, programs):
    """The first hop, in pipeline order, that falls behind or runs near a full core."""
    cpu = {p["program"].split(" #")[0]: 0.0 for p in programs}
    for p in programs:
        key = p["program"].split(" #")[0]
        cpu[key] = max(cpu[key], p["cpu_cores"])
    busy = {k: v for k, v in cpu.items() if not k.startswith("agents") and v >= CPU_BUSY}
    hops = [
        ("agents -> monitors.reports (the agents' inserts, the database)",
         rate["stored"] / rate["produced"] if rate["produced"] else 1.0, ["secantusd"]),
        ("monitors.reports -> monitors.firehose (forwarder, Kinesis, firehose-local, endpoint)",
         rate["arrived"] / rate["stored"] if rate["stored"] else 1.0,
         ["kinesis-forwarder", "kinesis-local", "firehose-local", "balancer",
          "firehose-endpoint"]),
    ]
    for hop, ratio, owners in hops:
        hot = [f"{o} at {cpu[o]:.2f} core" for o in owners if o in busy]
        if ratio < RATE_BEHIND or hot:
            why = [f"rate {ratio:.2f} of the hop before"] if ratio < RATE_BEHIND else []
            if not hot:
                top = max((o for o in owners if o in cpu), key=lambda o: cpu[o])
                why.append(f"its busiest program {top} at {cpu[top]:.2f} core")
            return f"{hop}: " + "; ".join(why + hot)
    if "secantusd" in busy:
        return f"the database server: secantusd at {cpu['secantusd']:.2f} core"
    top = max(((k, v) for k, v in cpu.items() if not k.startswith("agents")),
              key=lambda kv: kv[1])
    return (f"none at this size (every hop kept up); the busiest program was {top[0]} at "
            f"{top[1]:.2f} core")


def print_result(r):
    rt, lat = r["rates_per_s"], r["latency_s"]
    print(f"\n--- fleet of {r['fleet']} agents at 500 ms, {r['window_s']:.0f} s window after "
          f"{r['warmup_s']:.0f} s warm-up, {r['endpoints']} endpoint(s), {r['shards']} shards, "
          f"{r['date']}")
    print(f"readings/s: produced {rt['produced']:.1f}, stored in monitors.reports "
          f"{rt['stored']:.1f}, arrived in monitors.firehose {rt['arrived']:.1f}")
    for key, label in (("end_to_end", "recordedAt -> monitors.firehose"),
                       ("to_reports", "recordedAt -> monitors.reports"),
                       ("reports_to_firehose", "monitors.reports -> monitors.firehose")):
        v = lat[key]
        print(f"latency {label}: p50 {v['p50']:.2f} s, p99 {v['p99']:.2f} s, "
              f"max {v['max']:.2f} s")
    b = r["backlog_at_window_end"]
    print(f"backlog at the window's end: {b['not_yet_stored']} not yet stored, "
          f"{b['not_yet_arrived']} stored but not yet arrived; drained "
          f"{r['drained_after_stop_s']:.1f} s after the agents' stop")
    print("| program | CPU (cores) | peak RSS (MiB) |")
    print("| --- | --- | --- |")
    for p in r["programs"]:
        rss = f"{p['peak_rss_mib']:.1f}"
        cpu = f"{p['cpu_cores']:.3f}"
        if "max_agent_rss_mib" in p:
            rss += f" (largest {p['max_agent_rss_mib']:.1f})"
            cpu += f" ({p['cpu_per_agent'] * 1000:.2f} mcore each)"
        print(f"| {p['program']} | {cpu} | {rss} |")
    print(f"CPU of this run {r['our_cpu_cores']:.2f} cores; other processes on the machine "
          f"{r['other_cpu_cores']:.2f} cores meanwhile")
    if r["balancer_requests"]:
        print(f"balancer requests per endpoint: {r['balancer_requests']}")
    c = r["counts"]
    print(f"counts: produced {c['produced']}, stored {c['stored']}, arrived {c['arrived']}; "
          f"write events {c['reports_write_events']} in reports, "
          f"{c['firehose_write_events']} in firehose (more = delivered again, absorbed by the "
          f"upsert); agent-side duplicates {c['agent_duplicates']}")
    print(f"saturates first: {r['saturates']}")
    if r["failures"]:
        print("CHECKS FAILED:\n  " + "\n  ".join(r["failures"]))
    else:
        print("checks: arrived = stored = produced, no duplicate _id, no reading stored twice: ok")
    sys.stdout.flush()


def main():
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fleet", nargs="*", type=int,
                    default=[int(x) for x in env("FLEET", "10 100").split()],
                    help="fleet sizes (default FLEET or '10 100')")
    ap.add_argument("--steady", type=float, default=float(env("STEADY", "60")),
                    help="seconds measured (STEADY, 60)")
    ap.add_argument("--warmup", type=float, default=float(env("WARMUP", "20")),
                    help="seconds after the last agent started (WARMUP, 20)")
    ap.add_argument("--endpoints", type=int, default=int(env("ENDPOINTS", "2")),
                    help="firehose-endpoint processes behind the balancer (ENDPOINTS, 2)")
    ap.add_argument("--shards", type=int, default=int(env("SHARDS", "2")),
                    help="Kinesis shards (SHARDS, 2)")
    ap.add_argument("--buffer-interval", default=env("BUFFER_INTERVAL", "1s"),
                    help="firehose-local's --buffer-interval (BUFFER_INTERVAL, 1s)")
    ap.add_argument("--drain-timeout", type=float, default=float(env("DRAIN_TIMEOUT", "300")),
                    help="seconds to wait for monitors.firehose after the stop (DRAIN_TIMEOUT)")
    ap.add_argument("--agent-shutdown-timeout", default=env("AGENT_SHUTDOWN_TIMEOUT", "60s"),
                    help="the agents' --shutdown-timeout: time for their last insert when "
                         "the whole fleet stops at once (AGENT_SHUTDOWN_TIMEOUT, 60s)")
    ap.add_argument("--json", default=env("RESULTS"), help="write the results here (RESULTS)")
    ap.add_argument("--keep", action="store_true", default=bool(env("KEEP")),
                    help="keep the spool directories and logs (KEEP)")
    args = ap.parse_args()
    args.fleet_max = max(args.fleet)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    procs = Processes()
    results = []
    try:
        for n in args.fleet:
            results.append(run_fleet(n, args, procs))
            procs.stop_all()
    except Stopped as s:
        print(f"\nstopped by {s}; stopping everything started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.json and results:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")

    failed = [r["fleet"] for r in results if r["failures"]]
    print("\n| N | produced/s | stored/s | arrived/s | latency p50 / p99 (s) | saturates first |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        rt, lat = r["rates_per_s"], r["latency_s"]["end_to_end"]
        print(f"| {r['fleet']} | {rt['produced']:.1f} | {rt['stored']:.1f} | {rt['arrived']:.1f} "
              f"| {lat['p50']:.2f} / {lat['p99']:.2f} | {r['saturates']} |")
    if failed:
        print(f"checks failed for N = {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
