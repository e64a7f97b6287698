"""The Firehose endpoint under load and abuse: the real `firehose-endpoint` binary against the
MongoDB test server, driven over plain HTTP on loopback. Run by scripts/abuse-endpoint.sh, which
builds the binary and starts the server.

Phases, each with legitimate deliveries running beside it (small batches, one every half second,
each waiting as long as Firehose does, 3 minutes), counted per phase:

1. K = 1, 4, 16 concurrent maximum-size requests (just under --max-body-mib of body, plain and
   gzip): peak RSS over the idle RSS, as a multiple of the bodies in flight.
2. Past the connection limit: every connection slot held by a client sending its headers a
   byte at a time, more such connections waiting; what a delivery meets then. Then the same
   with clients that pipeline requests and never read the answers.
3. A gzip bomb: a small gzip body that expands past the limit (alone, four at once, and without
   a key).
4. Slowloris: headers that never finish; bodies that never finish (with and without a key).
5. A header flood: too many headers, one huge header, and many connections sending them.
6. Idle connections (default 10,000) opened and left idle.
7. A sustained mixed load on a fresh endpoint (default 3 minutes): good deliveries, retries of
   the same request id, bad keys, malformed bodies, records that are dead letters; then every
   good record is looked up in MongoDB (exactly once), and RSS at warm-up is compared with the
   end.

Every check prints ok or FAIL; the exit status is 1 if any failed. Figures are printed in tables.
Standard library and pymongo only.
"""

import argparse
import base64
import gzip
import hashlib
import http.client
import json
import os
import random
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib

from bson import ObjectId
from pymongo import MongoClient

KEY = "abuse-key-0123456789"
MIB = 1024 * 1024
# Firehose waits this long for an answer before it counts a delivery as failed.
FIREHOSE_WAIT = 180
# Firehose retries a failed delivery (5xx, 408, no answer) for this long by default.
FIREHOSE_RETRY = 300

FAILURES = []
# Every endpoint started, for main's finally.
STARTED = []


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def check(cond, what):
    print(f"  {'ok  ' if cond else 'FAIL'} {what}", flush=True)
    if not cond:
        FAILURES.append(what)
    return cond


def table(title, header, rows):
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    print(flush=True)


def proc_field(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def ready(s, timeout=0.0, write=False):
    """(readable, writable) of one socket; poll(2), as select(2) stops at descriptor 1024."""
    p = select.poll()
    p.register(s, select.POLLIN | (select.POLLOUT if write else 0))
    ev = p.poll(timeout * 1000)
    flags = ev[0][1] if ev else 0
    return bool(flags & (select.POLLIN | select.POLLHUP | select.POLLERR)), bool(flags & select.POLLOUT)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Endpoint:
    """The release binary on a free port; RSS read from /proc."""

    def __init__(self, binary, uri, database, body_timeout, workdir, name):
        STARTED.append(self)  # main's finally stops every one, whatever phase was cut short
        self.port = free_port()
        self.log_path = os.path.join(workdir, f"{name}.log")
        env = dict(os.environ, FIREHOSE_ACCESS_KEY=KEY, MONGODB_CONNECTION_STRING=uri, RUST_LOG="warn")
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [binary, "--listen", f"127.0.0.1:{self.port}", "--database", database,
                 "--body-timeout", f"{body_timeout}s"],
                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"the endpoint did not start: see {self.log_path}")
                time.sleep(0.05)

    def rss(self):
        return proc_field(self.proc.pid, "VmRSS")

    def hwm(self):
        return proc_field(self.proc.pid, "VmHWM")

    def reset_hwm(self):
        """Reset VmHWM to the current RSS (Linux clear_refs 5); False where not allowed."""
        try:
            with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def fds(self):
        try:
            return len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except OSError:
            return 0

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Sampler(threading.Thread):
    """The endpoint's VmRSS every 10 ms, for where VmHWM cannot be reset."""

    def __init__(self, ep):
        super().__init__(daemon=True)
        self.ep, self.peak, self.stop_flag = ep, 0, threading.Event()

    def run(self):
        while not self.stop_flag.is_set():
            self.peak = max(self.peak, self.ep.rss())
            time.sleep(0.01)

    def finish(self):
        self.stop_flag.set()
        self.join()
        return self.peak


def headers_for(rid, key=KEY, gz=False):
    h = {"X-Amz-Firehose-Request-Id": rid, "X-Amz-Firehose-Access-Key": key,
         "X-Amz-Firehose-Protocol-Version": "1.0", "Content-Type": "application/json"}
    if gz:
        h["Content-Encoding"] = "gzip"
    return h


def post(port, rid, body, key=KEY, gz=False, timeout=FIREHOSE_WAIT, extra=None):
    """One delivery on a new connection: (status or an error name, seconds)."""
    t = time.time()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        h = headers_for(rid, key, gz)
        if extra:
            h.update(extra)
        conn.request("POST", "/", body=body, headers=h)
        r = conn.getresponse()
        r.read()
        return r.status, time.time() - t
    except (OSError, http.client.HTTPException) as e:
        return type(e).__name__, time.time() - t
    finally:
        conn.close()


def post_early(port, rid, body, key=KEY, gz=True, timeout=60):
    """A delivery whose answer may come before the body is sent in full (413, 401): send and
    read at once, so that an early answer is read rather than lost to a broken pipe."""
    t = time.time()
    h = "".join(f"{k}: {v}\r\n" for k, v in headers_for(rid, key, gz).items())
    data = (f"POST / HTTP/1.1\r\nHost: x\r\n{h}Content-Length: {len(body)}\r\n\r\n").encode() + body
    s = socket.create_connection(("127.0.0.1", port), 10)
    s.setblocking(False)
    sent, reply = 0, b""
    try:
        while time.time() - t < timeout:
            r, w = ready(s, 1, write=sent < len(data))
            if r:
                chunk = s.recv(65536)
                reply += chunk
                if not chunk or b"\r\n\r\n" in reply:
                    break
            if w:
                try:
                    sent += s.send(data[sent:sent + 65536])
                except BlockingIOError:
                    pass
    except OSError as e:
        if not reply:
            return type(e).__name__, time.time() - t
    finally:
        s.close()
    try:
        return int(reply.split(b" ", 2)[1]), time.time() - t
    except (IndexError, ValueError):
        return "closed", time.time() - t


def report_doc(node, with_id=True):
    d = {"nodeName": node, "humidity": round(random.uniform(20, 60), 2),
         "temperature": round(random.uniform(15, 30), 2), "pressure": round(random.uniform(990, 1030), 2),
         "isMoving": False, "acceleration": {"x": 0.01, "y": -0.02, "z": 0.99},
         "recordedAt": "2026-12-05T08:00:00.000Z"}
    if with_id:
        d["_id"] = str(ObjectId())
    return d


def derived_id(rid, index):
    h = hashlib.sha256(b"sensehat-monitor/firehose\0" + rid.encode() + b"\0" + index.to_bytes(8, "big"))
    return ObjectId(h.digest()[:12])


def firehose_body(rid, records):
    """records: raw bytes each; returns the JSON body."""
    return json.dumps({"requestId": rid, "timestamp": int(time.time() * 1000),
                       "records": [{"data": base64.b64encode(r).decode()} for r in records]}).encode()


class Legit(threading.Thread):
    """Legitimate deliveries, one every `every` seconds, each in a thread of its own (so a slow
    one does not hold back the next), waiting and retrying as Firehose does (each attempt waits
    3 minutes for its answer; 408, 5xx and no answer are retried for 5 minutes, 1 s apart).
    Tallied per phase: stored, stored at the first attempt, slowest (all attempts)."""

    def __init__(self, port, every=0.5, per_batch=20):
        super().__init__(daemon=True)
        self.port, self.every, self.per_batch = port, every, per_batch
        self.phase = "start"
        self.results = {}  # phase -> list of (final status, seconds, attempts)
        self.ids = []  # every _id sent, with the status its delivery got
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.threads = []

    def one(self, phase, port):
        rid = str(uuid.uuid4())
        docs = [report_doc("abuse-legit") for _ in range(self.per_batch)]
        body = firehose_body(rid, [json.dumps(d).encode() for d in docs])
        t0, attempts = time.time(), 0
        while True:
            attempts += 1
            status, _ = post(port, rid, body)
            retry = status == 408 or not isinstance(status, int) or status >= 500
            if not retry or time.time() - t0 > FIREHOSE_RETRY:
                break
            time.sleep(1)
        with self.lock:
            self.results.setdefault(phase, []).append((status, time.time() - t0, attempts))
            self.ids.append(([d["_id"] for d in docs], status))

    def run(self):
        while not self.stop_flag.is_set():
            t = threading.Thread(target=self.one, args=(self.phase, self.port), daemon=True)
            t.start()
            self.threads.append(t)
            time.sleep(self.every)

    def set_phase(self, name):
        self.phase = name

    def finish(self):
        self.stop_flag.set()
        self.join()
        for t in self.threads:
            t.join(FIREHOSE_RETRY + FIREHOSE_WAIT + 10)

    def summary(self, phase):
        """sent, stored, slowest seconds, other final answers, stored at the first attempt"""
        with self.lock:
            rs = list(self.results.get(phase, []))
        ok = [s for st, s, _ in rs if st == 200]
        first = sum(1 for st, _, n in rs if st == 200 and n == 1)
        return (len(rs), len(ok), (max(s for _, s, _ in rs) if rs else 0.0),
                sorted({str(st) for st, _, _ in rs if st != 200}), first)


def wait_legit_done(legit, phase, timeout=FIREHOSE_RETRY + FIREHOSE_WAIT + 15):
    """Wait for the deliveries started in `phase` to be answered or to give up."""
    deadline = time.time() + timeout
    for t in list(legit.threads):
        t.join(max(0.0, deadline - time.time()))


# --- phase 1: maximum-size requests -----------------------------------------------------------

class BigBody:
    """A body of just under `limit` bytes (once decompressed) of ~1 MB records, built once; the
    request id is swapped in per request (a gzip body is a small member holding the id followed
    by the records, compressed once: gzip allows several members)."""

    RID_LEN = 36

    def __init__(self, limit):
        raw_len = 750_000  # a record of ~1 MB once base64 encoded: Firehose's largest is 1,000 KiB
        prefix = b'{"requestId":"' + b"x" * self.RID_LEN + b'","timestamp":1764921600000,"records":['
        suffix = b"]}"
        per = len(b'{"data":""},') + raw_len * 4 // 3
        n = (limit - len(prefix) - len(suffix) - 4096) // per
        records = []
        filler = (b"0123456789abcdef" * (raw_len // 16 + 1))
        for i in range(n):
            head = json.dumps({"_id": f"{i:024x}", "nodeName": "abuse-big", "blob": ""}).encode()[:-2]
            body_len = raw_len - len(head) - 2
            records.append(head + b'"' + filler[:body_len - 1] + b'"}')
        items = b",".join(b'{"data":"' + base64.b64encode(r) + b'"}' for r in records)
        # Fill to just under the limit with one padding record whose base64 is invalid: it is a
        # dead letter, stored once per request under a derived _id, so the body is at the limit.
        room = limit - len(prefix) - len(suffix) - len(items) - len(b',{"data":""}') - 64
        pad = b',{"data":"' + b"!" * max(0, room) + b'"}'
        self.middle = items + pad + suffix
        self.prefix_tail = prefix[len(b'{"requestId":"') + self.RID_LEN:]
        self.records = n
        self.size = len(prefix) + len(self.middle)
        assert self.size <= limit, (self.size, limit)
        self.gz_middle = gzip.compress(self.middle, compresslevel=6)

    def plain(self, rid):
        assert len(rid) == self.RID_LEN
        return b'{"requestId":"' + rid.encode() + self.prefix_tail + self.middle

    def gzipped(self, rid):
        return gzip.compress(b'{"requestId":"' + rid.encode() + self.prefix_tail, 1) + self.gz_middle


def phase_max_size(new_endpoint, legit, big, ks):
    """Each round on a fresh endpoint, so that memory the allocator kept from the round before
    does not hide this one's growth."""
    rows = []
    per_request = []
    for gz in (False, True):
        for k in ks:
            name = f"max-size K={k} {'gzip' if gz else 'plain'}"
            legit.set_phase(name)
            ep = new_endpoint(f"endpoint-max-{k}-{'gzip' if gz else 'plain'}")
            main_port, legit.port = legit.port, ep.port
            time.sleep(1)
            before = ep.rss()
            exact = ep.reset_hwm()
            sampler = Sampler(ep)
            sampler.start()
            results = [None] * k
            retries = [0] * k
            bodies = []
            for i in range(k):
                rid = str(uuid.uuid4())
                bodies.append((rid, big.gzipped(rid) if gz else big.plain(rid)))

            def send(i):
                rid, body = bodies[i]
                for _ in range(5):  # a 503 (no room in the body budget) is retried, as by Firehose
                    results[i] = post(ep.port, rid, body, gz=gz)
                    if results[i][0] != 503:
                        break
                    retries[i] += 1

            t0 = time.time()
            threads = [threading.Thread(target=send, args=(i,)) for i in range(k)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.time() - t0
            peak = max(sampler.finish(), ep.hwm() if exact else 0)
            statuses = sorted({str(s) for s, _ in results})
            growth = (peak - before) * 1024
            mult = growth / (k * big.size)
            per_request.append(mult)
            rows.append((name, f"{len(bodies[0][1]) / MIB:.1f}", ",".join(statuses), sum(retries), f"{wall:.1f}",
                         f"{before / 1024:.0f}", f"{peak / 1024:.0f}", f"{growth / MIB:.0f}", f"{mult:.2f}",
                         f"{ep.rss() / 1024:.0f}"))
            check(statuses == ["200"], f"{name}: every request stored (200), got {statuses}")
            check(ep.alive(), f"{name}: the endpoint is still running")
            bodies.clear()
            time.sleep(5)
            rows[-1] = rows[-1][:-1] + (f"{ep.rss() / 1024:.0f}",)
            wait_legit_done(legit, name)
            n, ok, worst, bad, first = legit.summary(name)
            rows[-1] = rows[-1] + (f"{ok}/{n} ({first})",)
            check(ok == n, f"{name}: every legit delivery stored ({ok}/{n}; others: {bad})")
            legit.port = main_port
            ep.stop()
    table("Maximum-size requests (body just under --max-body-mib once decompressed; "
          f"{big.records} records of ~1 MB each, plus one dead-letter padding record)",
          ["case", "wire MiB", "status", "503 retried", "wall s", "RSS before MiB", "peak RSS MiB", "growth MiB",
           "growth / (K x body)", "RSS 5 s after MiB", "legit stored/sent (first attempt)"], rows)
    return max(per_request)


# --- phase 2: the connection limit ------------------------------------------------------------

def slow_body_conn(port, key=KEY, declared=10 * MIB):
    """A connection whose headers are complete and whose body never finishes."""
    s = socket.create_connection(("127.0.0.1", port), 10)
    s.sendall((f"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Firehose-Request-Id: {uuid.uuid4()}\r\n"
               f"X-Amz-Firehose-Access-Key: {key}\r\nX-Amz-Firehose-Protocol-Version: 1.0\r\n"
               f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n{{").encode())
    return s


def read_status(s, timeout):
    """The status of the response on `s`, or "closed" / "no answer"."""
    s.settimeout(timeout)
    try:
        data = s.recv(4096)
    except socket.timeout:
        return "no answer"
    except OSError:
        return "reset"
    if not data:
        return "closed"
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return "garbled"


def phase_connection_limit(ep, legit, slots, extra, header_timeout=10):
    """Every connection slot held by a client that sends its headers a byte at a time (no key
    needed), more such connections waiting in the kernel's backlog."""
    name = f"past the connection limit ({slots}+{extra} slow headers)"
    legit.set_phase(name)
    t0 = time.time()
    socks = []
    for _ in range(slots + extra):
        try:
            s = socket.create_connection(("127.0.0.1", ep.port), 10)
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
            s.setblocking(False)
            socks.append(s)
        except OSError:
            break
    time.sleep(0.5)
    # Meanwhile a delivery on a new connection: it waits in the backlog until a slot frees.
    rid = str(uuid.uuid4())
    status, secs = post(ep.port, rid, firehose_body(rid, [json.dumps(report_doc("abuse-after")).encode()]))
    closed_at = {}
    while len(closed_at) < len(socks) and time.time() - t0 < header_timeout * 6:
        for i, s in enumerate(socks):
            if i in closed_at:
                continue
            try:
                s.send(b"X")
                if ready(s)[0] and not s.recv(4096):
                    closed_at[i] = time.time() - t0
            except OSError:
                closed_at[i] = time.time() - t0
        time.sleep(0.5)
    for s in socks:
        s.close()
    wall = time.time() - t0
    wait_legit_done(legit, name)
    held_slots_report("Past the connection limit", name, "sending a header byte every 0.5 s",
                      "slow", slots, extra, len(socks), closed_at, (status, secs),
                      legit.summary(name), wall)
    return secs


def held_slots_report(title, name, doing, kind, slots, extra, opened, closed_at, delivery, summary, wall):
    """The table and checks of a phase that holds every connection slot, and `extra` more
    connections in the backlog, with clients `doing` something: when the endpoint closed them
    (`closed_at`, seconds by connection index), what a delivery sent meanwhile met, and the
    legit deliveries' `summary`."""
    status, secs = delivery
    n, ok, worst, bad, first = summary
    early = sorted(closed_at[i] for i in range(min(slots, opened)) if i in closed_at)
    late = sorted(closed_at[i] for i in range(slots, opened) if i in closed_at)
    span = lambda v: f"{v[0]:.0f}-{v[-1]:.0f} s" if v else "never"
    table(title, ["what", "figure"], [
        (f"connections opened, each {doing}", opened),
        (f"the first {slots} closed by the endpoint after", span(early)),
        (f"the {extra} past the limit (in the backlog) closed after", span(late)),
        ("a delivery sent meanwhile: stored after", f"{secs:.1f} s ({status})"),
        ("legit deliveries: stored / sent (first attempt), slowest", f"{ok}/{n} ({first}), {worst:.1f} s"),
        ("phase wall time", f"{wall:.0f} s"),
    ])
    check(len(closed_at) == opened, f"{name}: every {kind} connection closed ({len(closed_at)}/{opened})")
    check(status == 200, f"{name}: a delivery waiting behind them is stored ({status})")
    check(ok == n, f"{name}: every legit delivery stored ({ok}/{n}; others: {bad})")


def phase_never_read(ep, legit, slots, extra, write_timeout=30):
    """Every connection slot held by a client that pipelines health checks and never reads the
    answers (a zero TCP window costs it nothing to keep up), more such clients in the backlog."""
    name = f"clients that never read ({slots}+{extra})"
    legit.set_phase(name)
    # More answers than the endpoint's send buffer and this client's receive buffer hold.
    requests = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 20_000
    t0 = time.time()
    socks = []
    for _ in range(slots + extra):
        try:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            s.settimeout(10)
            s.connect(("127.0.0.1", ep.port))
            s.setblocking(False)
            socks.append(s)
        except OSError:
            break
    sent = [0] * len(socks)
    closed_at = {}

    def feed():
        # Requests while the socket takes them; a full buffer is the stall, an error the close.
        for i, s in enumerate(socks):
            if i in closed_at:
                continue
            try:
                while sent[i] < len(requests):
                    sent[i] += s.send(requests[sent[i]:sent[i] + 65536])
                s.send(b"G")  # all sent: probe for the close
            except BlockingIOError:
                pass
            except OSError:
                closed_at[i] = time.time() - t0

    feed()
    # Meanwhile a delivery on a new connection: it waits in the backlog until a slot frees.
    result = {}

    def deliver():
        rid = str(uuid.uuid4())
        result["status"], result["secs"] = post(
            ep.port, rid, firehose_body(rid, [json.dumps(report_doc("abuse-after")).encode()]))

    waiting = threading.Thread(target=deliver)
    waiting.start()
    while len(closed_at) < len(socks) and time.time() - t0 < write_timeout * 4:
        feed()
        time.sleep(0.5)
    waiting.join(FIREHOSE_WAIT)
    for s in socks:
        s.close()
    wall = time.time() - t0
    wait_legit_done(legit, name)
    status, secs = result.get("status", "no answer"), result.get("secs", 0.0)
    held_slots_report(f"Clients that never read (write timeout {write_timeout} s)", name,
                      "pipelining health checks, reading nothing", "stalled", slots, extra,
                      len(socks), closed_at, (status, secs), legit.summary(name), wall)


# --- phase 3: gzip bombs ----------------------------------------------------------------------

def gzip_bomb(expanded):
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = b"\0" * MIB
    parts = [c.compress(zeros) for _ in range(expanded // MIB)]
    parts.append(c.flush())
    return b"".join(parts)


def phase_gzip_bomb(new_endpoint, legit, limit):
    """Each round on a fresh endpoint, as for the maximum-size requests."""
    expanded = 1024 * MIB
    bomb = gzip_bomb(expanded)
    rows = []
    for k, key in ((1, KEY), (4, KEY), (4, "wrong-key")):
        name = f"gzip bomb x{k}" + ("" if key == KEY else " without the key")
        legit.set_phase(name)
        ep = new_endpoint(f"endpoint-bomb-{k}-{key}")
        main_port, legit.port = legit.port, ep.port
        time.sleep(1)
        before = ep.rss()
        exact = ep.reset_hwm()
        sampler = Sampler(ep)
        sampler.start()
        res = [None] * k

        def send(i):
            res[i] = post_early(ep.port, str(uuid.uuid4()), bomb, key=key)

        ts = [threading.Thread(target=send, args=(i,)) for i in range(k)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        peak = max(sampler.finish(), ep.hwm() if exact else 0)
        wait_legit_done(legit, name)
        n, ok, worst, bad, first = legit.summary(name)
        statuses = sorted({str(s) for s, _ in res})
        want = "413" if key == KEY else "401"
        rows.append((name, f"{len(bomb) / MIB:.1f} MiB -> {expanded // MIB} MiB", ",".join(statuses),
                     f"{max(s for _, s in res):.2f}", f"{(peak - before) / 1024:.0f}",
                     f"{(peak - before) * 1024 / (k * limit):.2f}", f"{ok}/{n}"))
        check(statuses == [want], f"{name}: answered {want}, got {statuses}")
        check(ok == n, f"{name}: every legit delivery stored ({ok}/{n}; others: {bad})")
        check(ep.alive(), f"{name}: the endpoint is still running")
        legit.port = main_port
        ep.stop()
    table("Gzip bombs", ["case", "body", "status", "slowest s", "RSS growth MiB", "growth / (K x limit)",
                         "legit ok/sent"], rows)


# --- phase 4: slowloris -----------------------------------------------------------------------

def phase_slowloris(ep, legit, conns, body_timeout, header_timeout=10):
    rows = []
    # Headers that never finish: one byte a second.
    name = f"slowloris: headers ({conns} connections)"
    legit.set_phase(name)
    before = ep.rss()
    socks = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", ep.port), 10)
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Firehose-Access-Key: ")
        s.setblocking(False)
        socks.append(s)
    t0 = time.time()
    closed_at = {}
    while len(closed_at) < len(socks) and time.time() - t0 < header_timeout * 4:
        for i, s in enumerate(socks):
            if i in closed_at:
                continue
            try:
                s.send(b"a")
                if ready(s)[0] and not s.recv(4096):
                    closed_at[i] = time.time() - t0
            except OSError:
                closed_at[i] = time.time() - t0
        time.sleep(1)
    peak = ep.rss()
    for s in socks:
        s.close()
    wait_legit_done(legit, name)
    n, ok, worst, bad, first = legit.summary(name)
    times = sorted(closed_at.values())
    rows.append((name, f"closed after {times[0]:.0f}-{times[-1]:.0f} s" if times else "never closed",
                 f"{(peak - before) / 1024:.1f}", f"{ok}/{n}", f"{worst:.1f}"))
    check(len(times) == conns and times[-1] <= header_timeout + 3,
          f"{name}: every connection closed within the {header_timeout} s header timeout "
          f"({len(times)}/{conns}, last {times[-1] if times else 0:.0f} s)")
    check(ok == n, f"{name}: every legit delivery stored ({ok}/{n}; others: {bad})")

    # Bodies that never finish, with the key (a slot held until --body-timeout) and without.
    # With the key, a slow body holds its share of the body budget until --body-timeout (408);
    # those that find no room wait for it as long, then get 503.
    for key, want, name in ((KEY, ("408", "503"), f"slowloris: bodies ({conns} connections)"),
                            ("wrong-key", ("401",), f"slowloris: bodies without the key ({conns} connections)")):
        legit.set_phase(name)
        before = ep.rss()
        socks = [slow_body_conn(ep.port, key) for _ in range(conns)]
        t0 = time.time()
        stop = threading.Event()

        def trickle():
            while not stop.is_set():
                for s in socks:
                    try:
                        s.send(b" ")
                    except OSError:
                        pass
                stop.wait(1)

        tr = threading.Thread(target=trickle, daemon=True)
        tr.start()
        answers = [read_status(s, body_timeout + 30) for s in socks]
        took = time.time() - t0
        stop.set()
        tr.join()
        peak = ep.rss()
        for s in socks:
            s.close()
        wait_legit_done(legit, name)
        n, ok, worst, bad, first = legit.summary(name)
        st = sorted({str(a) for a in answers})
        rows.append((name, f"{','.join(st)} after {took:.0f} s", f"{(peak - before) / 1024:.1f}",
                     f"{ok}/{n}", f"{worst:.1f}"))
        check(set(st) <= set(want) and want[0] in st, f"{name}: answered {'/'.join(want)}, got {st}")
        check(ok == n, f"{name}: every legit delivery stored ({ok}/{n}; others: {bad})")
    table(f"Slowloris (--body-timeout {body_timeout} s; header timeout {header_timeout} s)",
          ["case", "answer", "RSS growth MiB", "legit ok/sent", "slowest legit s"], rows)


# --- phase 5: header flood --------------------------------------------------------------------

def raw_request(port, head, timeout=30):
    try:
        s = socket.create_connection(("127.0.0.1", port), 10)
    except OSError as e:
        return type(e).__name__
    try:
        s.sendall(head)
    except OSError:
        pass
    st = read_status(s, timeout)
    s.close()
    return st


def phase_header_flood(ep, legit, seconds, conns):
    rid = str(uuid.uuid4())
    base = (f"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Firehose-Request-Id: {rid}\r\n"
            f"X-Amz-Firehose-Access-Key: {KEY}\r\nX-Amz-Firehose-Protocol-Version: 1.0\r\n").encode()
    many = base + b"".join(b"X-Flood-%d: y\r\n" % i for i in range(10_000)) + b"Content-Length: 0\r\n\r\n"
    huge = base + b"X-Flood: " + b"y" * (4 * MIB) + b"\r\nContent-Length: 0\r\n\r\n"
    many_keys = base.replace(f"X-Amz-Firehose-Access-Key: {KEY}\r\n".encode(), b"") + b"".join(
        b"X-Amz-Firehose-Access-Key: guess-%d\r\n" % i for i in range(90)) + b"Content-Length: 0\r\n\r\n"
    rows = []
    for name, head in (("10,000 headers", many), ("one 4 MiB header", huge), ("90 wrong keys", many_keys)):
        st = raw_request(ep.port, head)
        rows.append((name, st))
    table("Header floods, one request each", ["request", "answer"], rows)
    check(rows[0][1] in (431, "closed", "reset"), f"10,000 headers refused before the router, got {rows[0][1]}")
    check(rows[1][1] in (431, "closed", "reset"), f"a 4 MiB header refused, got {rows[1][1]}")
    check(rows[2][1] == 401, f"many access-key headers, none right: 401, got {rows[2][1]}")

    name = f"header flood ({conns} connections for {seconds} s)"
    legit.set_phase(name)
    before = ep.rss()
    exact = ep.reset_hwm()
    sampler = Sampler(ep)
    sampler.start()
    stop = time.time() + seconds
    counts = {}
    lock = threading.Lock()

    def flood(i):
        while time.time() < stop:
            st = raw_request(ep.port, many if i % 2 else huge, timeout=15)
            with lock:
                counts[str(st)] = counts.get(str(st), 0) + 1

    ts = [threading.Thread(target=flood, args=(i,)) for i in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    peak = max(sampler.finish(), ep.hwm() if exact else 0)
    wait_legit_done(legit, name)
    n, ok, worst, bad, first = legit.summary(name)
    table("Header flood, sustained", ["what", "figure"], [
        ("requests sent, by answer", ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))),
        ("RSS before / peak MiB", f"{before / 1024:.0f} / {peak / 1024:.0f}"),
        ("legit deliveries: ok / sent, slowest", f"{ok}/{n}, {worst:.1f} s"),
    ])
    check(set(counts) <= {"431", "closed", "reset"}, f"{name}: every flood request refused ({counts})")
    check(ok == n, f"{name}: every legit delivery stored ({ok}/{n}; others: {bad})")


# --- phase 6: idle connections ----------------------------------------------------------------

def phase_idle(ep, legit, count, hold):
    name = f"{count} idle connections"
    legit.set_phase(name)
    before, fds_before = ep.rss(), ep.fds()
    socks = []
    t0 = time.time()
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", ep.port))
        socks.append(s)
    opened = time.time() - t0
    # Connected: the kernel finished the handshake (the endpoint accepted it, or it waits in the
    # listen backlog); the others are still retrying their SYN.
    time.sleep(5)
    rss_peak, fd_peak = ep.rss(), ep.fds()
    closed_by_peer = 0
    end = time.time() + hold
    while time.time() < end:
        time.sleep(1)
        rss_peak, fd_peak = max(rss_peak, ep.rss()), max(fd_peak, ep.fds())
    established = 0
    for s in socks:
        try:
            s.getpeername()
            established += 1
        except OSError:
            pass
        if ready(s)[0]:
            try:
                if not s.recv(1):
                    closed_by_peer += 1
            except OSError:
                closed_by_peer += 1
    for s in socks:
        s.close()
    closed_at = time.time()
    wait_legit_done(legit, name)
    n, ok, worst, bad, first = legit.summary(name)
    # After the flood: how soon a delivery goes through again.
    status, secs = 0, 0.0
    for _ in range(60):
        rid = str(uuid.uuid4())
        status, secs = post(ep.port, rid, firehose_body(rid, [json.dumps(report_doc("abuse-after")).encode()]))
        if status == 200:
            break
        time.sleep(1)
    table(f"Idle connections (held {hold} s)", ["what", "figure"], [
        ("connections opened (non-blocking) in", f"{opened:.1f} s"),
        ("established (handshake done) at the end", established),
        ("closed by the endpoint (header timeout) while held", closed_by_peer),
        ("endpoint RSS before / peak MiB", f"{before / 1024:.0f} / {rss_peak / 1024:.0f}"),
        ("endpoint open files before / peak", f"{fds_before} / {fd_peak}"),
        ("legit deliveries: ok / sent, slowest", f"{ok}/{n}, {worst:.1f} s"),
        ("legit failures", ", ".join(bad) or "none"),
        ("first delivery after the flood closed", f"{status} after {time.time() - closed_at:.1f} s"),
    ])
    check(fd_peak <= fds_before + 256 + 16, f"{name}: open files bounded by the connection limit ({fd_peak})")
    check(rss_peak - before < 64 * 1024, f"{name}: RSS growth under 64 MiB ({(rss_peak - before) / 1024:.0f} MiB)")
    check(status == 200, f"{name}: deliveries go through once the flood ends")
    check(ok == n, f"{name}: every legit delivery stored within Firehose's 3 minutes ({ok}/{n}; others: {bad})")


# --- phase 7: sustained mixed load ------------------------------------------------------------

def phase_mixed(ep, uri, database, seconds, warmup):
    stop_at = time.time() + seconds
    lock = threading.Lock()
    sent = []  # (rid, body, gz, expected _ids, expected dead-letter _ids)
    expect_ids, expect_rejected = set(), set()
    tally = {}

    def count(kind, status):
        with lock:
            tally.setdefault(kind, {}).setdefault(str(status), 0)
            tally[kind][str(status)] += 1

    def good():
        while time.time() < stop_at:
            rid = str(uuid.uuid4())
            recs, ids, dead = [], [], []
            for i in range(random.randint(1, 300)):
                roll = random.random()
                if roll < 0.1:
                    recs.append(json.dumps(report_doc("abuse-mixed", with_id=False)).encode())
                    ids.append(derived_id(rid, i))
                elif roll < 0.13:
                    recs.append(b"\xff not json")
                    dead.append(derived_id(rid, i))
                else:
                    d = report_doc("abuse-mixed")
                    recs.append(json.dumps(d).encode())
                    ids.append(ObjectId(d["_id"]))
            body = firehose_body(rid, recs)
            gz = random.random() < 0.5
            if gz:
                body = gzip.compress(body, 1)
            st, _ = post(ep.port, rid, body, gz=gz)
            count("good", st)
            with lock:
                sent.append((rid, body, gz))
                if st == 200:
                    expect_ids.update(ids)
                    expect_rejected.update(dead)
                else:
                    pending.append((rid, body, gz, ids, dead))

    pending = []

    def retry():
        while time.time() < stop_at:
            time.sleep(0.2)
            with lock:
                if not sent:
                    continue
                rid, body, gz = random.choice(sent)
            st, _ = post(ep.port, rid, body, gz=gz)
            count("retry of a delivered request id", st)

    def bad_key():
        while time.time() < stop_at:
            rid = str(uuid.uuid4())
            st, _ = post(ep.port, rid, firehose_body(rid, [b"{}"]), key=f"guess-{random.randrange(1 << 30)}")
            count("wrong access key", st)
            time.sleep(0.05)

    def malformed():
        kinds = ["not json", "wrong requestId", "corrupt gzip", "truncated json", "no records"]
        while time.time() < stop_at:
            rid = str(uuid.uuid4())
            k = random.choice(kinds)
            gz = False
            if k == "not json":
                body = b"\x00\x01 this is not a Firehose request"
            elif k == "wrong requestId":
                body = firehose_body(str(uuid.uuid4()), [b"{}"])
            elif k == "corrupt gzip":
                body, gz = gzip.compress(firehose_body(rid, [b"{}"]))[:-9] + b"garbage!!", True
            elif k == "truncated json":
                body = firehose_body(rid, [b"{}"])[:-5]
            else:
                body = json.dumps({"requestId": rid}).encode()
            st, _ = post(ep.port, rid, body, gz=gz)
            count(f"malformed body", st)
            time.sleep(0.05)

    rss = []

    def sample():
        t0 = time.time()
        while time.time() < stop_at:
            rss.append((time.time() - t0, ep.rss()))
            time.sleep(1)

    threads = [threading.Thread(target=f) for f in (good, good, retry, bad_key, malformed, sample)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Retry what failed (a 503 is Firehose's cue to retry), as Firehose would.
    for rid, body, gz, ids, dead in pending:
        for _ in range(10):
            st, _ = post(ep.port, rid, body, gz=gz)
            count("good, retried after a failure", st)
            if st == 200:
                expect_ids.update(ids)
                expect_rejected.update(dead)
                break
            time.sleep(1)
    warm = [v for t, v in rss if t >= warmup]
    warm_rss = warm[0] if warm else 0
    end_rss = rss[-1][1] if rss else 0
    peak_rss = max((v for _, v in rss), default=0)

    client = MongoClient(uri)
    db = client[database]
    stored = [d["_id"] for d in db.firehose.find({"nodeName": "abuse-mixed"}, {"_id": 1})]
    stored_set = set(stored)
    # Whole collections read back and compared here: a large `$in` is slow on the test server.
    rejected = {d["_id"] for d in db.firehose_rejected.find({}, {"_id": 1})} & expect_rejected
    client.close()
    rows = [(kind, ", ".join(f"{k}: {v}" for k, v in sorted(st.items()))) for kind, st in sorted(tally.items())]
    rows += [
        ("good records sent and acknowledged", len(expect_ids)),
        ("good records stored (documents)", len(stored)),
        ("dead letters expected / stored", f"{len(expect_rejected)} / {len(rejected)}"),
        (f"RSS at warm-up ({warmup} s) / peak / end MiB",
         f"{warm_rss / 1024:.1f} / {peak_rss / 1024:.1f} / {end_rss / 1024:.1f}"),
    ]
    table(f"Sustained mixed load, {seconds} s", ["what", "figure"], rows)
    check(set(tally.get("good", {})) <= {"200", "503"} and tally.get("good", {}).get("200", 0) > 0,
          f"good deliveries answered 200 (503 retried): {tally.get('good')}")
    check(set(tally.get("retry of a delivered request id", {"200": 1})) == {"200"},
          "retries of a delivered request id answered 200")
    check(set(tally.get("wrong access key", {})) == {"401"}, "wrong keys answered 401")
    check(set(tally.get("malformed body", {})) == {"400"}, "malformed bodies answered 400")
    check(not pending or all(i in stored_set for _, _, _, ids, _ in pending for i in ids),
          "deliveries that failed were stored on retry")
    check(len(stored) == len(stored_set) == len(expect_ids) and stored_set == expect_ids,
          f"every good record stored exactly once ({len(stored)} documents, {len(expect_ids)} records)")
    check(rejected == expect_rejected, "every dead letter stored once in firehose_rejected")
    check(end_rss <= warm_rss + 16 * 1024, f"RSS flat: end {end_rss / 1024:.1f} MiB <= warm-up "
          f"{warm_rss / 1024:.1f} MiB + 16 MiB")


def verify_legit(uri, database, legit):
    client = MongoClient(uri)
    ids_ok = {ObjectId(i) for ids, st in legit.ids if st == 200 for i in ids}
    stored = [d["_id"] for d in client[database].firehose.find({"nodeName": "abuse-legit"}, {"_id": 1})]
    found = len(ids_ok & set(stored))
    total = len(stored)
    client.close()
    check(found == len(ids_ok), f"every acknowledged legit record is in MongoDB ({found}/{len(ids_ok)})")
    sent = sum(len(ids) for ids, _ in legit.ids)
    check(total <= sent, f"no legit record stored twice ({total} documents for {sent} records sent)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--uri", required=True)
    ap.add_argument("--max-body-mib", type=int, default=64)
    ap.add_argument("--body-timeout", type=int, default=20, help="the endpoint's --body-timeout, seconds")
    ap.add_argument("--ks", default="1,4,16")
    ap.add_argument("--idle", type=int, default=10_000)
    ap.add_argument("--idle-hold", type=int, default=60)
    ap.add_argument("--slow", type=int, default=100, help="slowloris connections")
    ap.add_argument("--flood-seconds", type=int, default=20)
    ap.add_argument("--mixed-seconds", type=int, default=180)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--phases", default="max,limit,noread,bomb,slow,flood,idle,mixed")
    a = ap.parse_args()
    phases = a.phases.split(",")
    work = tempfile.mkdtemp(prefix="abuse-")
    database = f"abuse_{os.getpid()}"
    limit = a.max_body_mib * MIB
    log(f"endpoint logs in {work}; database {database}")
    ep = Endpoint(a.bin, a.uri, database, a.body_timeout, work, "endpoint")
    log(f"endpoint pid {ep.proc.pid} on port {ep.port}, idle RSS {ep.rss() / 1024:.1f} MiB; "
        f"VmHWM reset {'works' if ep.reset_hwm() else 'is not allowed: sampling VmRSS every 10 ms'}")
    legit = Legit(ep.port)
    legit.start()
    try:
        if "max" in phases:
            log("building the maximum-size bodies")
            big = BigBody(limit)
            log(f"body {big.size / MIB:.2f} MiB, gzip {len(big.gz_middle) / MIB:.2f} MiB")
            # The endpoint's default body timeout here: 16 bodies of 64 MiB sent at once by this
            # one Python process take longer to arrive than the short timeout of the other phases.
            phase_max_size(lambda name: Endpoint(a.bin, a.uri, database, 120, work, name),
                           legit, big, [int(k) for k in a.ks.split(",")])
            del big
        if "limit" in phases:
            log("past the connection limit")
            phase_connection_limit(ep, legit, 256, 44)
        if "noread" in phases:
            log("clients that never read")
            phase_never_read(ep, legit, 256, 44)
        if "bomb" in phases:
            log("gzip bombs")
            phase_gzip_bomb(lambda name: Endpoint(a.bin, a.uri, database, a.body_timeout, work, name),
                            legit, limit)
        if "slow" in phases:
            log("slowloris")
            phase_slowloris(ep, legit, a.slow, a.body_timeout)
        if "flood" in phases:
            log("header floods")
            phase_header_flood(ep, legit, a.flood_seconds, 32)
        if "idle" in phases:
            log(f"{a.idle} idle connections")
            phase_idle(ep, legit, a.idle, a.idle_hold)
        legit.finish()
        rows = []
        for phase in legit.results:
            n, ok, worst, bad, first = legit.summary(phase)
            rows.append((phase, n, ok, first, f"{worst:.1f}", ", ".join(bad) or "-"))
        table("Legitimate deliveries during each phase (20 records each, one every 0.5 s, "
              "retried as Firehose does)",
              ["phase", "sent", "stored (200)", "at the first attempt", "slowest s", "never stored"], rows)
        verify_legit(a.uri, database, legit)
        check(ep.alive(), "the endpoint is still running (no panic, no abort)")
        ep.stop()
        if "mixed" in phases:
            log(f"sustained mixed load for {a.mixed_seconds} s on a fresh endpoint")
            ep = Endpoint(a.bin, a.uri, database, a.body_timeout, work, "endpoint-mixed")
            phase_mixed(ep, a.uri, database, a.mixed_seconds, a.warmup)
            check(ep.alive(), "the endpoint is still running after the mixed load")
    finally:
        legit.stop_flag.set()
        for e in STARTED:
            e.stop()
    panics = []
    for name in sorted(os.listdir(work)):
        with open(os.path.join(work, name), errors="replace") as f:
            panics += [line for line in f if "panicked" in line]
    check(not panics, f"no panic in the endpoint's log ({len(panics)})")
    print()
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed:")
        for f in FAILURES:
            print(f"  - {f}")
        return 1
    print("every check passed")
    return 0


def stop_on_sigterm(signum, _frame):
    """A SIGTERM (kill, timeout) ends the run as Ctrl-C does: main's finally stops every
    endpoint it started, by pid."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    sys.exit(main())
