#!/usr/bin/env bash
# Benchmark the spool: backlog drain of N reports (default 100,000) by the real agent binary
# (`--count 0`: deliver the backlog, take no sample) against one plain insert_many of the same
# documents, both into the same local server in the same run; the agent's peak RSS while
# draining; the bytes written to storage per appended report under both fsync policies; and the
# CPU of an append, written at once against grouped as at --interval-ms 1.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/test-server.sh
N=${N:-100000}
cargo build --release -q --bin sensehat-monitor
cargo bench -q --bench spool --no-run 2>/dev/null
work=$(mktemp -d -p "${BENCH_DIR:-$ROOT/target}")
trap 'kill $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null; rm -rf "$DBDIR" "$work"' EXIT
cargo bench -q --bench spool -- appends "$work/appends" 200000
cargo bench -q --bench spool -- fill "$work/sync0" 2000 0
cargo bench -q --bench spool -- fill "$work/sync1000" 2000 1000
cargo bench -q --bench spool -- fill "$work/spool" "$N" 1000
# The server slows as it fills, so the yardstick runs both before and after the drain (each into
# a fresh database) and the drain is compared with their mean.
cargo bench -q --bench spool -- baseline "$work/spool" "$MONGO_URI" bench_baseline1 | tee "$work/base.txt"
drain=$(MONGODB_CONNECTION_STRING="$MONGO_URI" RUST_LOG=warn "$PY" scripts/measure.py \
  target/release/sensehat-monitor --sensors sim --count 0 --database bench_drain --spool-dir "$work/spool")
# The drain emptied the spool; fill it again with the same number of reports for the second run.
cargo bench -q --bench spool -- fill "$work/spool2" "$N" 1000 >/dev/null
cargo bench -q --bench spool -- baseline "$work/spool2" "$MONGO_URI" bench_baseline2 | tee -a "$work/base.txt"
count=$("$PY" -c "import pymongo; print(pymongo.MongoClient('$MONGO_URI').bench_drain.reports.count_documents({}))")
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
