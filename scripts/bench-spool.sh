#!/usr/bin/env bash
# Benchmark the spool: backlog drain of N reports (default 100,000) by the real agent binary
# (`--count 0`: deliver the backlog, take no sample) against one plain insert_many of the same
# documents, each into a fresh local server in the same run; the agent's peak RSS while
# draining; the bytes written to storage per appended report under both fsync policies; and the
# CPU of an append, written at once against grouped as at --interval 1ms; and how long the append
# that finds the disk writable again takes to move 50,000 reports kept in memory back to it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/test-server.sh
N=${N:-100000}
cargo build --release -q --bin sensehat-monitor
cargo bench -q --bench spool --no-run
work=$(mktemp -d -p "${BENCH_DIR:-$ROOT/target}")
trap 'stop_server; rm -rf "$work"' EXIT
cargo bench -q --bench spool -- appends "$work/appends" 200000
cargo bench -q --bench spool -- memory "$work/memory"
cargo bench -q --bench spool -- fill "$work/sync0" 2000 0
cargo bench -q --bench spool -- fill "$work/sync1000" 2000 1000
cargo bench -q --bench spool -- fill "$work/spool" "$N" 1000
# The drain empties the spool: a second copy of the same number of reports for the second
# yardstick run.
cargo bench -q --bench spool -- fill "$work/spool2" "$N" 1000 >/dev/null
# The server slows down as it fills (its oplog grows), so each of the three runs gets a fresh,
# empty server, and the yardstick runs both before and after the drain, which is compared with
# their mean.
restart_server
cargo bench -q --bench spool -- baseline "$work/spool" "$MONGO_URI" bench_baseline1 | tee "$work/base.txt"
restart_server
drain=$(MONGODB_CONNECTION_STRING="$MONGO_URI" RUST_LOG=warn "$PY" scripts/measure.py \
  target/release/sensehat-monitor --sensors sim --count 0 --database bench_drain --spool-dir "$work/spool")
count=$("$PY" -c "import pymongo; print(pymongo.MongoClient('$MONGO_URI').bench_drain.reports.count_documents({}))")
restart_server
cargo bench -q --bench spool -- baseline "$work/spool2" "$MONGO_URI" bench_baseline2 | tee -a "$work/base.txt"
"$PY" - "$drain" "$N" "$count" "$work/base.txt" <<'PYEOF'
import json, re, sys
d, n, count = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
times = [float(t) for t in re.findall(r": ([0-9.]+) s,", open(sys.argv[4]).read())]
base = sum(times) / len(times)
assert d["rc"] == 0 and count == n, (d, count)
print(f"agent drain: {n} reports in {d['wall_s']:.3f} s ({n/d['wall_s']:.0f} docs/s, process start included), peak RSS {d['maxrss_kib']/1024:.1f} MiB")
print(f"plain insert_many, before and after: {' s, '.join(f'{t:.3f}' for t in times)} s (mean {base:.3f} s)")
print(f"drain throughput / plain insert_many throughput = {base/d['wall_s']:.3f}  (target >= 0.8)")
PYEOF
