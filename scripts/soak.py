"""A year in a cupboard, compressed: the agent on the simulated board at a 1 ms interval against a
MongoDB test server (SecantusDB), with the server SIGKILLed and restarted at random moments, the
agent SIGKILLed and restarted at random moments, a sensor fault injected now and then, and the
spool's file system made full once. Run by scripts/soak.sh, which builds the agent first.

At the end it checks, and prints:
- every report taken is in the database exactly once: each agent run writes under a node name of
  its own, so the collection's count per run is compared with that run's own count (its stop line
  for a run that was stopped, its last status.json for one that was SIGKILLed: see `Run.bounds`);
  no `_id` twice; nothing dropped or refused;
- the agent's RSS after warm-up stayed within a stated bound of its warm-up RSS;
- the spool directory is back to its idle size (nothing unsent, no file set aside, at most one
  segment of at most 1 MiB, plus `acked` and `status.json`).

Exit status 0 when every check passes, 1 otherwise.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from bson import ObjectId  # noqa: F401  (pymongo's bson; imported to fail early without pymongo)
from pymongo import MongoClient

# A SIGKILLed agent loses the reports of its current write group, at most 50 ms of readings at a
# 1 ms interval (the spool's WRITE_GROUP); its status.json may count them already.
WRITE_GROUP_REPORTS = 50
# The spool's largest segment file (segment.rs SEGMENT_MAX): the idle directory holds at most one.
SEGMENT_MAX = 1024 * 1024
# The spool's in-memory queue while the disk is full (spool MEMORY_MAX, reports): the full-disk
# episode must end well before it fills, or reports are dropped by design.
MEMORY_MAX = 50_000


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


def rss_kib(pid, field="VmRSS"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def dir_bytes(path):
    total, files = 0, []
    for name in sorted(os.listdir(path)):
        p = os.path.join(path, name)
        if os.path.isfile(p):
            size = os.path.getsize(p)
            total += size
            files.append((name, size))
    return total, files


class Server:
    """The test server on a fixed port with a persistent storage directory."""

    def __init__(self, secantusd, storage, log_path):
        self.secantusd, self.storage, self.log_path = secantusd, storage, log_path
        self.port = free_port()
        self.proc = None
        self.kills = 0
        self.down_s = 0.0

    @property
    def uri(self):
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self):
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [self.secantusd, "--host", "127.0.0.1", "--port", str(self.port),
                 "--storage-path", self.storage, "--log-level", "WARNING"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        deadline = time.time() + 300
        while not port_open(self.port):
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"the test server did not start on port {self.port} (log: {self.log_path})")
            time.sleep(0.1)

    def kill(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            self.kills += 1

    def stop(self):
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


class Run:
    """One agent process: its node name, how it ended, and what it counted."""

    def __init__(self, index, node, fault, log_path):
        self.index, self.node, self.fault, self.log_path = index, node, fault, log_path
        self.proc = None
        self.started = time.time()
        self.ended = None
        self.how = None  # "killed", "crashed" (exited by itself) or "stopped"
        self.kill_ms = None
        self.status = None  # the last status.json this process wrote
        self.stop = None  # the counters of its stop line
        self.warm_rss = None
        self.peak_rss_after_warmup = 0
        self.hwm = None

    def samples(self):
        src = self.stop or self.status or {}
        return src.get("samples", src.get("reports", 0) + src.get("skipped_samples", 0))

    def bounds(self):
        """The reports this run took: exact for a stopped run (its stop line); for a killed one,
        from its last status.json (written every 10 s, the kill follows it within the chosen
        delay): at least its count less one write group (taken, not yet written: lost by design),
        at most its count plus one report per millisecond between that write and the kill."""
        if self.how == "stopped":
            n = self.stop["reports"]
            return n, n
        if not self.status:
            return 0, int((self.kill_ms - self.started * 1000)) + 1
        n = self.status["reports"]
        return max(0, n - WRITE_GROUP_REPORTS), n + int(self.kill_ms - self.status["updated_ms"]) + 1


def read_status(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


STOP_RE = re.compile(r"\bstopped\b.*")
FIELD_RE = re.compile(r"(\w+)=(\d+)")


def stop_line(log_path):
    with open(log_path, errors="replace") as f:
        lines = [line for line in f if STOP_RE.search(line) and "reports=" in line]
    if not lines:
        return None
    fields = {k: int(v) for k, v in FIELD_RE.findall(lines[-1])}
    # The stop line's names for two of status.json's counters.
    fields["skipped_samples"] = fields.pop("sensor_faults", 0)
    fields["samples"] = fields["reports"] + fields["skipped_samples"]
    return fields


class Disk:
    """The spool's file system: a small tmpfs of our own when we may mount one (root), so that it
    can be made full once; otherwise a plain directory and no full-disk episode."""

    def __init__(self, base, size_mib):
        self.dir = os.path.join(base, "spool-fs")
        os.makedirs(self.dir)
        self.mounted = False
        self.why_not = None
        if os.geteuid() != 0:
            self.why_not = "not root: cannot mount a small file system to fill"
            return
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", self.dir],
                           capture_output=True, text=True)
        if r.returncode != 0:
            self.why_not = f"mount -t tmpfs failed: {r.stderr.strip()}"
            return
        self.mounted = True

    def fill(self):
        """Fill the file system to the last byte; returns the filler's path and size."""
        path = os.path.join(self.dir, "filler")
        chunk = b"\0" * (1 << 20)
        written = 0
        with open(path, "wb", buffering=0) as f:
            while True:
                try:
                    written += f.write(chunk)
                except OSError:
                    break
            # Then byte by byte-ish, so not even a small frame fits.
            for size in (65536, 4096, 512, 64, 8, 1):
                while True:
                    try:
                        written += f.write(b"\0" * size)
                    except OSError:
                        break
        return path, written

    def unmount(self):
        if self.mounted:
            subprocess.run(["umount", self.dir], check=False)
            self.mounted = False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--secantusd", required=True)
    ap.add_argument("--samples", type=int, default=5_000_000, help="stop after this many samples taken")
    ap.add_argument("--seconds", type=float, default=0,
                    help="or after this long, whichever comes first (0: by samples only; then the "
                         "samples target is not checked)")
    ap.add_argument("--interval", default="1ms")
    ap.add_argument("--agent-life", default="20,240", help="seconds an agent runs before its SIGKILL: min,max")
    ap.add_argument("--server-life", default="60,300", help="seconds between server SIGKILLs: min,max")
    ap.add_argument("--server-down", default="1,15", help="seconds the server stays down: min,max")
    ap.add_argument("--fault-chance", type=float, default=0.5, help="share of agent runs with a sensor fault")
    ap.add_argument("--full-seconds", type=float, default=10, help="how long the spool's disk stays full")
    ap.add_argument("--rss-growth-mib", type=float, default=16,
                    help="the bound: peak RSS after warm-up at most this much above the warm-up RSS")
    ap.add_argument("--warmup", type=float, default=30, help="seconds of each run before its RSS counts")
    ap.add_argument("--uri-options", default="journal=true")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()

    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    life = [float(x) for x in a.agent_life.split(",")]
    slife = [float(x) for x in a.server_life.split(",")]
    sdown = [float(x) for x in a.server_down.split(",")]
    work = tempfile.mkdtemp(prefix="soak-")
    log(f"seed {seed}; work directory {work}; target {a.samples} samples"
        + (f" or {a.seconds:.0f} s" if a.seconds else ""))

    # Larger than the spool's own cap (384 MiB by default), so that only the deliberate fill
    # makes it full, however far a slow server lets the backlog grow.
    disk = Disk(work, 1024)
    spool = os.path.join(disk.dir, "spool")
    os.makedirs(spool)
    if disk.why_not:
        log(f"SKIPPED the full disk: {disk.why_not}")
    server = Server(a.secantusd, os.path.join(work, "db"), os.path.join(work, "server.log"))
    server.start()
    uri = server.uri + ("&" + a.uri_options if a.uri_options else "")
    db_name = "soak"
    runs = []
    status_path = os.path.join(spool, "status.json")
    env = dict(os.environ, MONGODB_CONNECTION_STRING=uri, RUST_LOG="info",
               SENSEHAT_CLOCK_SYNC_FILE="/nonexistent/timesync/synchronized")
    agent_kills = 0
    faults = 0
    full_done = not disk.mounted
    full_info = None
    t0 = time.time()

    def spawn(extra=(), node=None):
        i = len(runs)
        node = node or f"soak-{i:05d}"
        fault = None
        if not extra and rng.random() < a.fault_chance:
            chip = rng.choice(["hts221", "lps25h", "lsm9ds1"])
            fault = f"{chip}:{rng.randrange(1000, 60_000)}:{rng.randrange(1, 200)}"
        r = Run(i, node, fault, os.path.join(work, f"agent-{i:05d}.log"))
        args = [a.bin, "--sensors", "sim", "--interval", a.interval, "--clock-wait", "0",
                "--database", db_name, "--node-name", node, "--spool-dir", spool, *extra]
        if fault:
            args += ["--sim-fault", fault]
        with open(r.log_path, "wb") as out:
            r.proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        runs.append(r)
        return r

    def sample_rss(r):
        if r.proc.poll() is not None:
            return
        v = rss_kib(r.proc.pid)
        if v is None:
            return
        age = time.time() - r.started
        if age >= a.warmup:
            if r.warm_rss is None:
                r.warm_rss = v
            r.peak_rss_after_warmup = max(r.peak_rss_after_warmup, v)

    def note_status(r):
        s = read_status(status_path)
        if s and s.get("pid") == r.proc.pid:
            r.status = s

    def done_samples():
        return sum(r.samples() for r in runs)

    def target_reached():
        if a.seconds and time.time() - t0 >= a.seconds:
            return True
        return done_samples() >= a.samples

    ok = True
    try:
        cur = spawn()
        kill_at = time.time() + rng.uniform(*life)
        server_kill_at = time.time() + rng.uniform(*slife)
        server_up_at = None
        # The full disk comes once, somewhere in the first half of the run.
        horizon = a.seconds if a.seconds else a.samples / 1000.0
        full_at = time.time() + rng.uniform(0.15, 0.5) * horizon if not full_done else None
        last_report = time.time()
        while not target_reached():
            time.sleep(0.02)
            now = time.time()
            note_status(cur)
            sample_rss(cur)
            if cur.proc.poll() is not None:
                # A crash: counted (a failure at the end), its reports bounded as for a kill,
                # and the soak goes on with a new run, as systemd would restart it.
                log(f"agent run {cur.index} exited by itself with {cur.proc.returncode}: see {cur.log_path}")
                cur.kill_ms = time.time() * 1000
                cur.how, cur.ended = "crashed", time.time()
                faults += bool(cur.fault)
                cur = spawn()
                kill_at = time.time() + rng.uniform(*life)
                continue
            # The server: SIGKILL, then back on the same port and storage after a while.
            if server.proc and now >= server_kill_at:
                server.kill()
                down = rng.uniform(*sdown)
                server_up_at = now + down
                server.down_s += down
            if server.proc is None and server_up_at and now >= server_up_at:
                server.start()
                server_up_at = None
                server_kill_at = time.time() + rng.uniform(*slife)
            # The spool's disk full once; no agent kill meanwhile (its in-memory reports would go
            # with it, by design).
            if full_at and now >= full_at and not full_done:
                filler, size = disk.fill()
                log(f"spool file system full ({size} bytes of filler)")
                time.sleep(a.full_seconds)
                os.unlink(filler)
                full_info = {"run": cur.index, "seconds": a.full_seconds}
                full_done = True
                log("spool file system has room again")
                kill_at = max(kill_at, time.time() + 5)
                continue
            # The agent: at a random moment, SIGKILL it just after one of its status.json writes
            # plus a random delay, so its last count is known (see Run.bounds); then restart.
            if now >= kill_at:
                seen = cur.status["updated_ms"] if cur.status else None
                deadline = time.time() + 15
                while time.time() < deadline:
                    note_status(cur)
                    if cur.status and cur.status["updated_ms"] != seen:
                        break
                    time.sleep(0.005)
                time.sleep(rng.uniform(0, 0.3))
                sample_rss(cur)
                cur.hwm = rss_kib(cur.proc.pid, "VmHWM")
                cur.kill_ms = time.time() * 1000
                cur.proc.kill()
                cur.proc.wait()
                cur.how, cur.ended = "killed", time.time()
                agent_kills += 1
                faults += bool(cur.fault)
                time.sleep(rng.uniform(0, 2))
                cur = spawn()
                kill_at = time.time() + rng.uniform(*life)
            if now - last_report >= 60:
                last_report = now
                st = read_status(status_path) or {}
                log(f"{done_samples():>10} samples, run {cur.index}, agent kills {agent_kills}, "
                    f"server kills {server.kills}, pending {st.get('pending')}, "
                    f"RSS {rss_kib(cur.proc.pid)} KiB, server {'up' if server.proc else 'down'}")
        log("stopping: " + ("the time limit" if a.seconds and time.time() - t0 >= a.seconds
                            else f"{done_samples()} samples taken"))
        # The end: the server up, the last agent stopped (SIGTERM), then a drain run.
        if server.proc is None:
            server.start()
        if cur.proc.poll() is None:
            sample_rss(cur)
            cur.hwm = rss_kib(cur.proc.pid, "VmHWM")
            cur.proc.send_signal(signal.SIGTERM)
            cur.proc.wait(120)
            cur.how, cur.ended = "stopped", time.time()
            faults += bool(cur.fault)
            cur.stop = stop_line(cur.log_path)
            note_status(cur)
            if cur.stop and cur.status:
                cur.stop["rejected"] = cur.status.get("rejected", 0)
            if cur.proc.returncode != 0 or cur.stop is None:
                log(f"the last agent run did not stop cleanly ({cur.proc.returncode}): see {cur.log_path}")
                ok = False
        log("draining the spool (--count 0)")
        drain = spawn(["--count", "0"], node="soak-drain")
        drain.proc.wait(1800)
        drain.how = "stopped"
        drain.stop = stop_line(drain.log_path) or {"reports": 0}
        if drain.proc.returncode != 0:
            log(f"the drain run failed ({drain.proc.returncode}): see {drain.log_path}")
            ok = False
        wall = time.time() - t0
        ok &= check(a, runs, server, uri, db_name, spool, disk, full_info, agent_kills, faults, wall, seed)
    finally:
        for r in runs:
            if r.proc and r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait()
        server.stop()
        disk.unmount()
        if ok and not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work directory kept: {work}")
    return 0 if ok else 1


def check(a, runs, server, uri, db_name, spool, disk, full_info, agent_kills, faults, wall, seed):
    ok = True

    def verdict(cond, what):
        nonlocal ok
        ok &= bool(cond)
        print(f"  {'ok  ' if cond else 'FAIL'} {what}")

    log("reading the collection back")
    client = MongoClient(uri, serverSelectionTimeoutMS=60_000)
    coll = client[db_name]["reports"]
    per_node = {}
    ids = set()
    n_docs = 0
    for d in coll.find({}, {"_id": 1, "nodeName": 1}, batch_size=10_000):
        n_docs += 1
        ids.add(d["_id"].binary)
        per_node[d.get("nodeName")] = per_node.get(d.get("nodeName"), 0) + 1
    client.close()

    taken = sum(r.samples() for r in runs)
    stopped = [r for r in runs if r.how == "stopped" and r.node != "soak-drain"]
    killed = [r for r in runs if r.how in ("killed", "crashed")]
    crashed = [r for r in runs if r.how == "crashed"]
    lo_total = hi_total = 0
    outside = []
    for r in runs:
        if r.node == "soak-drain":
            continue
        lo, hi = r.bounds()
        lo_total += lo
        hi_total += hi
        got = per_node.pop(r.node, 0)
        if not lo <= got <= hi:
            outside.append((r.index, r.how, got, lo, hi))
    strays = {k: v for k, v in per_node.items()}
    exact_expected = sum(r.bounds()[0] for r in stopped)
    counters = [r.stop or r.status or {} for r in runs]
    rejected = sum((r.status or {}).get("rejected", 0) for r in runs)
    dropped = sum(c.get("dropped", 0) for c in counters)
    skipped = sum(c.get("skipped_samples", 0) for c in counters)
    missed = sum(c.get("missed_slots", 0) for c in counters)
    duplicates = sum(c.get("duplicates", 0) for c in counters)

    print()
    print("=== soak figures")
    rows = [
        ("seed", seed),
        ("wall time", f"{wall / 60:.1f} min"),
        ("samples taken (stop lines; last status.json of SIGKILLed runs)", taken),
        ("reports stored", n_docs),
        ("agent runs (SIGKILLed / crashed / stopped)",
         f"{len(killed) + len(stopped)} ({len(killed) - len(crashed)} / {len(crashed)} / {len(stopped)})"),
        ("runs with an injected sensor fault", faults),
        ("sensor faults / slots missed (counted)", f"{skipped} / {missed}"),
        ("server SIGKILLs (total downtime)", f"{server.kills} ({server.down_s:.0f} s)"),
        ("resent reports already stored (duplicates)", duplicates),
        ("dropped / refused", f"{dropped} / {rejected}"),
        ("full disk", f"{full_info['seconds']:.0f} s during run {full_info['run']}" if full_info
         else f"skipped ({disk.why_not})"),
        ("reports expected, stopped runs (exact)", exact_expected),
        ("reports expected, all runs (bounds)", f"{lo_total} .. {hi_total}"),
        ("  of which unknown at the SIGKILLs (width)", hi_total - lo_total),
    ]
    for k, v in rows:
        print(f"  {k:<64} {v}")

    warm = [r.warm_rss for r in runs if r.warm_rss]
    ref = sorted(warm)[len(warm) // 2] if warm else None
    peak = max((r.peak_rss_after_warmup for r in runs), default=0)
    hwm = max((r.hwm or 0 for r in runs), default=0)
    if ref:
        print(f"  {'RSS at warm-up (median of runs, KiB)':<64} {ref}")
        print(f"  {'peak RSS after warm-up, any run (KiB)':<64} {peak}")
    print(f"  {'peak RSS ever (VmHWM, any run, KiB)':<64} {hwm}")

    status = subprocess.run([a.bin, "status", "--spool-dir", spool], capture_output=True, text=True)
    size, files = dir_bytes(spool)
    segments = [f for f in files if f[0].startswith("segment-")]
    others = [f for f in files if not f[0].startswith("segment-") and f[0] not in ("acked", "status.json", "lock")]
    print(f"  {'spool directory at the end':<64} {size} bytes: "
          + ", ".join(f"{n} {s}" for n, s in files))

    print()
    print("=== checks")
    verdict(not crashed, f"no agent run ended by itself ({len(crashed)}: "
            + (", ".join(f"run {r.index}, see {r.log_path}" for r in crashed[:5]) or "none") + ")")
    verdict(n_docs == len(ids), f"no _id stored twice ({n_docs} documents, {len(ids)} distinct _id)")
    verdict(not outside, f"every run's reports stored within its count ({len(outside)} runs outside)"
            + "".join(f"\n         run {i} ({how}): {got} stored, expected {lo}..{hi}"
                      for i, how, got, lo, hi in outside[:10]))
    verdict(not strays, f"no reports from an unknown node ({strays})" if strays else "no reports from an unknown node")
    if full_info:
        with open(runs[full_info["run"]].log_path, errors="replace") as f:
            text = f.read()
        verdict("cannot write the spool" in text and "spool writable again" in text,
                f"the full disk was met and got over (run {full_info['run']}'s log)")
    verdict(dropped == 0 and rejected == 0, f"nothing dropped or refused ({dropped} / {rejected})")
    verdict(taken >= (a.samples if not a.seconds else 0), f"samples taken {taken} reached the target")
    if ref:
        bound = ref + a.rss_growth_mib * 1024
        verdict(peak <= bound, f"RSS after warm-up {peak} KiB <= warm-up {ref} KiB + {a.rss_growth_mib:.0f} MiB")
    else:
        verdict(False, "no run lived past its warm-up: RSS not measured")
    # Exit 3: the agent is not running, as it is not once the soak is over.
    verdict(status.returncode == 3 and re.search(r"unsent reports\s+0 ", status.stdout),
            "status: no unsent report")
    verdict(len(segments) <= 1 and all(s <= SEGMENT_MAX for _, s in segments) and not others,
            f"spool back to its idle size: {len(segments)} segment file(s), "
            f"{sum(s for _, s in segments)} bytes; other files: {others or 'none'}")
    return ok


def stop_on_sigterm(signum, _frame):
    """A SIGTERM (kill, timeout, a cancelled CI job) ends the run as Ctrl-C does: main's finally
    stops the agent and the server by pid, and unmounts the small disk."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    sys.exit(main())
