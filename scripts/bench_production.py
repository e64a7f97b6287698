#!/usr/bin/env python3
"""The agent at the rate it runs, side by side with the original Python agent on one server.

Every program runs at the same time against the same MongoDB server, each through a TCP proxy of
its own that counts the bytes both ways on its database connections. After a warm-up, two
snapshots of each running process are taken SECONDS apart, and the figures are the differences,
so start-up is left out:

- CPU per sample: the time each thread ran (/proc/PID/task/*/schedstat), summed over the
  process's threads, divided by the reports it stored in that span (counted in the database by
  recordedAt, once the last window has been inserted);
- wake-ups per second: voluntary and involuntary context switches of all its threads
  (/proc/PID/task/*/status);
- bytes on the database connection per report, sent and received, from the proxy;
- bytes written to storage per report (/proc/PID/io write_bytes: the spool and status.json);
- peak RSS (VmHWM at the end);
- systemd watchdog pings a minute: each agent runs as the unit runs it, with NOTIFY_SOCKET (a
  socket this script reads as systemd would) and a 30 s watchdog (WatchdogSec=30). Each ping
  is a datagram that wakes systemd, and its sending is the agent's CPU.

The floor is a program that only wakes on the same grid and does nothing else
(examples/sleep_floor), measured the same way. Ratios are to the seed in the same run.

Usage: bench_production.py --uri MONGO_URI --bin AGENT --floor SLEEP_FLOOR --seed-dir DIR
       [--python PY] [--interval-ms 500] [--seconds 60] [--warmup 15]
       [--variant LABEL=ARGS ...]
Each --variant runs the agent once more with those extra arguments (split as a shell would);
ARGS starting with "@zlib" run it behind a proxy that offers zlib wire compression, which the
test server itself does not (scripts/wire_proxy.py); then "@uri&OPTIONS " adds OPTIONS to its
connection string (e.g. "@zlib@uri&compressors=zlib&zlibCompressionLevel=6 "); last,
"@bin=PATH " runs another build of the agent in --bin's place, to compare two builds side by
side (e.g. "@bin=other-target/release/sensehat-monitor "). The agent
with its defaults always runs; the default variants are: the same behind the zlib-offering
proxy, the same without compression, and --insert-every 0 (an insert per report, as before the
window)."""
import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

import pymongo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wire_proxy import Proxy  # noqa: E402


def threads(pid):
    """{tid: (ns on CPU, context switches)} of every thread of pid now."""
    out = {}
    base = f"/proc/{pid}/task"
    for tid in os.listdir(base):
        try:
            with open(f"{base}/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
            switches = 0
            with open(f"{base}/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches += int(line.split()[1])
            out[tid] = (ns, switches)
        except FileNotFoundError:  # the thread ended while we looked
            pass
    return out


def io_written(pid):
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class Measured:
    """A running program, its proxy (if it uses the database) and its snapshots."""

    def __init__(self, label, argv, cwd=None, env=None, proxy=None, count=None, notify=None):
        self.label, self.proxy, self.count, self.notify = label, proxy, count, notify
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)

    def snapshot(self):
        pid = self.proc.pid
        if self.proc.poll() is not None:
            raise SystemExit(f"{self.label} exited early ({self.proc.returncode}): "
                             f"{self.proc.stderr.read()[-2000:]}")
        return {"threads": threads(pid), "io": io_written(pid),
                "wire": self.proxy.counts() if self.proxy else (0, 0),
                "pings": self.notify.pings() if self.notify else 0,
                "wall": datetime.now(timezone.utc)}

    def between(self, a, b):
        cpu = switches = 0
        for tid, (ns, sw) in b["threads"].items():
            ns0, sw0 = a["threads"].get(tid, (0, 0))
            cpu += ns - ns0
            switches += sw - sw0
        lost = len(set(a["threads"]) - set(b["threads"]))
        return {"cpu_s": cpu / 1e9, "switches": switches, "lost_threads": lost,
                "io": b["io"] - a["io"], "sent": b["wire"][0] - a["wire"][0],
                "received": b["wire"][1] - a["wire"][1], "pings": b["pings"] - a["pings"],
                "systemd": self.notify is not None}

    def stop(self):
        rss = peak_rss_kib(self.proc.pid) if self.proc.poll() is None else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proxy:
            self.proxy.close()
        return rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--uri", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--floor", required=True)
    ap.add_argument("--seed-dir", required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--interval-ms", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=15)
    ap.add_argument("--variant", action="append", default=None,
                    help="LABEL=EXTRA ARGS; EXTRA may start with @zlib (a server offering zlib), "
                         "@scrape (--metrics-listen on a free port, scraped every 15 s) "
                         "@uri&OPTIONS (added to the connection string) or @bin=PATH (another "
                         "build of the agent), in that order")
    a = ap.parse_args()
    a.python, a.bin, a.floor = map(os.path.abspath, (a.python, a.bin, a.floor))
    variants = [("defaults", "")] + [tuple(v.split("=", 1)) for v in (a.variant or [
        "defaults, zlib offered=@zlib",
        "no compression, zlib offered=@zlib --wire-compression none",
        "one insert per report=--insert-every 0",
    ])]
    host_port = a.uri.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    upstream = (host, int(port))
    client = pymongo.MongoClient(a.uri)
    tmp = tempfile.mkdtemp(prefix="bench-production-")
    env = dict(os.environ, RUST_LOG="warn")
    progs = []
    try:
        run(a, variants, upstream, client, tmp, env, progs)
    finally:
        for m in progs:
            if m.proc.poll() is None:
                m.proc.kill()
                m.proc.wait()


class Notify:
    """Stands in for systemd's notification socket (NOTIFY_SOCKET): read at once, as systemd
    reads it (a sender blocks once the socket's short queue is full), counting the pings."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.lock = threading.Lock()
        self.watchdog = 0
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        while True:
            message = self.sock.recv(256)
            if message.strip() == b"WATCHDOG=1":
                with self.lock:
                    self.watchdog += 1

    def pings(self):
        with self.lock:
            return self.watchdog


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_every(port, seconds):
    """GET /metrics every `seconds`, as a Prometheus server would, for as long as the process runs."""
    while True:
        time.sleep(seconds)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                c.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                while c.recv(65536):
                    pass
        except OSError:
            pass


def stagger(a, variants):
    """Wait a share of the interval before starting the next program, so that their grids are
    spread over it: started together, every program woke at the same instant as the others,
    and the first started was charged up to half again as much CPU as the same agent started
    after it."""
    time.sleep(a.interval_ms / 1000 / (len(variants) + 2))


def run(a, variants, upstream, client, tmp, env, progs):
    for i, (label, extra) in enumerate(variants):
        # "@zlib" first: the proxy stands in for a server that offers zlib (see wire_proxy.py).
        offer = extra.startswith("@zlib")
        extra = extra.removeprefix("@zlib")
        # "@scrape": metrics on a free port, scraped as Prometheus would, every 15 s.
        flags = ""
        if extra.startswith("@scrape"):
            metrics_port = free_port()
            flags = f"--metrics-listen 127.0.0.1:{metrics_port} "
            extra = extra.removeprefix("@scrape")
            threading.Thread(target=scrape_every, args=(metrics_port, 15.0), daemon=True).start()
        # "@uri&OPTIONS ": options added to the agent's connection string.
        options = ""
        if extra.startswith("@uri"):
            options, _, extra = extra.removeprefix("@uri").partition(" ")
            if not options.startswith("&"):
                sys.exit(f"{label}: @uri takes options starting with &, as in @uri&a=1&b=2")
        # "@bin=PATH ": another build of the agent, compared side by side with --bin's.
        binary = a.bin
        if extra.startswith("@bin="):
            binary, _, extra = extra.removeprefix("@bin=").partition(" ")
            binary = os.path.abspath(binary)
        extra = flags + extra.replace("@tmp", tmp)
        proxy = Proxy(upstream, offer_zlib=offer)
        spool = os.path.join(tmp, f"spool{i}")
        argv = [binary, "--sensors", "sim", "--interval", f"{a.interval_ms}ms", "--clock-wait", "0",
                "--database", f"bench_production_{i}", "--spool-dir", spool,
                "--node-name", f"bench-{i}", *shlex.split(extra)]
        notify = Notify(os.path.join(tmp, f"notify{i}.sock"))
        e = dict(env, MONGODB_CONNECTION_STRING=f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true{options}",
                 NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="30000000")
        m = Measured(label, argv, env=e, proxy=proxy, notify=notify,
                     count=lambda t0, t1, i=i: client[f"bench_production_{i}"].reports.count_documents(
                         {"recordedAt": {"$gte": t0, "$lt": t1}}))
        progs.append(m)
        stagger(a, variants)
    seed_proxy = Proxy(upstream)
    seed_env = dict(os.environ, MONGODB_CONNECTION_STRING=f"mongodb://127.0.0.1:{seed_proxy.port}/?directConnection=true",
                    SAMPLES="1000000", PERIOD=str(a.interval_ms / 1000))
    seed_node = socket.gethostname()
    seed = Measured("seed agent (Python)", [a.python, "seed_agent.py"], cwd=a.seed_dir, env=seed_env,
                    proxy=seed_proxy,
                    count=lambda t0, t1: client.monitors.reports.count_documents(
                        {"nodeName": seed_node, "recordedAt": {"$gte": t0.replace(tzinfo=None), "$lt": t1.replace(tzinfo=None)}}))
    progs.append(seed)
    stagger(a, variants)
    floor = Measured("floor", [a.floor, "100000000", str(a.interval_ms)])
    progs.append(floor)
    everyone = list(progs)
    time.sleep(a.warmup)
    first = [m.snapshot() for m in everyone]
    time.sleep(a.seconds)
    last = [m.snapshot() for m in everyone]
    # Let the last window of each agent reach the database before counting.
    time.sleep(5)
    rows = []
    for m, s0, s1 in zip(everyone, first, last):
        d = m.between(s0, s1)
        span = (s1["wall"] - s0["wall"]).total_seconds()
        # The seed stamps recordedAt with local time (naive datetime.now()); on a UTC machine
        # that is UTC. Ours with UTC.
        d["reports"] = m.count(s0["wall"], s1["wall"]) if m.count else span * 1000 / a.interval_ms
        d["span_s"] = span
        rows.append((m, d))
    rss = [m.stop() for m in everyone]
    client.close()
    report(rows, rss, a)


def report(rows, rss, a):
    seed_d = rows[-2][1]
    seed_rss = rss[-2]
    per = lambda d, k: d[k] / max(d["reports"], 1)
    print(f"at {a.interval_ms} ms, {a.seconds:.0f} s of steady state after {a.warmup:.0f} s, all at once "
          f"against one server; ratios to the seed in the same run; the agents under a 30 s "
          f"systemd watchdog (pings/min: what they send it)")
    head = (f"{'':<34}{'reports':>8}{'CPU/sample':>14}{'wake-ups/s':>12}{'wire B/report':>15}"
            f"{'(sent+recv)':>14}{'disk B/report':>15}{'peak RSS':>11}{'pings/min':>11}")
    print(head)
    for (m, d), r in zip(rows, rss):
        wire = per(d, "sent") + per(d, "received")
        both = f"{per(d, 'sent'):.0f}+{per(d, 'received'):.0f}"
        print(f"{m.label:<34}{d['reports']:>8.0f}{per(d, 'cpu_s') * 1e6:>11.0f} us"
              f"{d['switches'] / d['span_s']:>12.2f}{wire:>15.0f}{both:>14}"
              f"{per(d, 'io'):>15.0f}{r / 1024:>8.1f} MiB"
              + (f"{d['pings'] / d['span_s'] * 60:>11.1f}" if d["systemd"] else "")
              + (f"   ({d['lost_threads']} threads ended meanwhile, not counted)" if d["lost_threads"] else ""))
    print("ratios to the seed (targets: CPU <= 0.10, wake-ups <= 0.5, wire bytes <= 0.25, RSS <= 0.25)")
    for (m, d), r in zip(rows[:-2], rss[:-2]):
        wire = per(d, "sent") + per(d, "received")
        seed_wire = per(seed_d, "sent") + per(seed_d, "received")
        print(f"  {m.label:<32} CPU {per(d, 'cpu_s') / per(seed_d, 'cpu_s'):.3f}"
              f"   wake-ups {d['switches'] / d['span_s'] / (seed_d['switches'] / seed_d['span_s']):.3f}"
              f"   wire bytes {wire / seed_wire:.3f}   RSS {r / seed_rss:.3f}")
    f = rows[-1][1]
    print(f"floor (the same grid doing nothing): {per(f, 'cpu_s') * 1e6:.0f} us a slot, "
          f"{f['switches'] / f['span_s']:.2f} wake-ups/s; "
          f"{per(f, 'cpu_s') / per(seed_d, 'cpu_s'):.3f} of the seed's CPU per sample")


def stop_on_sigterm(signum, _frame):
    """A SIGTERM (kill, timeout) ends the run as Ctrl-C does: main's finally stops every
    program it started, by pid."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    main()
