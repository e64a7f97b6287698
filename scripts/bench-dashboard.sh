#!/usr/bin/env bash
# Benchmark of sensehat-dashboard against SecantusDB (not a timed test): load NODES nodes x
# HOURS hours x HZ readings a second, then time, in the same run and on the same server,
#  - the page's first full load, made of the requests its script makes (page, assets,
#    /api/nodes, then one /api/chart per node),
#  - one series request (one node, temperature, the whole loaded window) against the naive
#    way: fetch all of that node's documents of the window and bucket them in the program
#    (examples/dashboard_naive.rs),
# and print the ratio and the dashboard's peak RSS.
#
# The issue asks for 24 h x 2 Hz x 5 nodes = 864,000 documents: run with HOURS=24. SecantusDB
# inserts and scans far slower than mongod, so the default is 2 h (72,000 documents).
#
#   scripts/bench-dashboard.sh                # NODES=5 HOURS=2 HZ=2, debug build
#   PROFILE=release HOURS=24 scripts/bench-dashboard.sh
#   BENCH_MONGODB_URI=mongodb://127.0.0.1:27017/ scripts/bench-dashboard.sh   # a real mongod
# (its database bench_dashboard is dropped and refilled)
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=${NODES:-5}
HOURS=${HOURS:-2}
HZ=${HZ:-2}
PROFILE=${PROFILE:-dev}
PY=${PYTHON:-.venv-test/bin/python}
SECANTUSD=${SECANTUSD:-.venv-test/bin/secantusd-py}
[ -x "$PY" ] || { echo "$PY is missing: run 'bash .ci/run setup' once (it creates .venv-test), or set PYTHON" >&2; exit 1; }
DB=bench_dashboard

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_s() { date +%s.%N; }

cargo build --quiet --profile "$PROFILE" --features dashboard --bin sensehat-dashboard --example dashboard_naive
dir=target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")

work=$(mktemp -d)
pids=()
cleanup() {
    local status=$?
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    # Kept when the run failed: the dashboard's and the server's logs say why.
    if [ "$status" = 0 ]; then rm -rf "$work"; else echo "logs kept in $work" >&2; fi
}
trap cleanup EXIT

uri=${BENCH_MONGODB_URI:-}
if [ -z "$uri" ]; then
    db_port=$(free_port)
    "$SECANTUSD" --host 127.0.0.1 --port "$db_port" --storage-path :memory: --log-level WARNING >"$work/db.log" 2>&1 &
    pids+=($!)
    uri="mongodb://127.0.0.1:$db_port/?directConnection=true"
    for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$db_port) 2>/dev/null && break; sleep 0.2; done
fi

total=$((NODES * HOURS * 3600 * HZ))
echo "loading $total documents ($NODES nodes x $HOURS h x $HZ Hz) ..."
t0=$(now_s)
to_ms=$("$PY" - "$uri" "$DB" "$NODES" "$HOURS" "$HZ" <<'PY'
import sys, math, time, datetime, pymongo
uri, db, nodes, hours, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
col = pymongo.MongoClient(uri)[db].reports
col.drop()
col.create_index([("nodeName", 1), ("recordedAt", 1)])
end = int(time.time() * 1000)
n = hours * 3600 * hz
step = 1000 // hz
for k in range(nodes):
    batch = []
    for i in range(n):
        t = end - (n - i) * step
        batch.append({"nodeName": f"node-{k}", "humidity": 45 + 8 * math.sin(i / 900 + k),
                      "temperature": 21 + 3 * math.sin(i / 1400 + k), "pressure": 1010 + 4 * math.sin(i / 4000),
                      "isMoving": i % 997 == 0, "acceleration": {"x": 0.01, "y": -0.02, "z": 0.99},
                      "recordedAt": datetime.datetime.fromtimestamp(t / 1000, datetime.timezone.utc)})
        if len(batch) == 10000:
            col.insert_many(batch, ordered=False); batch = []
    if batch:
        col.insert_many(batch, ordered=False)
print(end)
PY
)
echo "loaded in $(echo "$(now_s) - $t0" | bc) s"
from_ms=$((to_ms - HOURS * 3600 * 1000))
iso() { date -u -d "@$(echo "$1 / 1000" | bc -l)" +%Y-%m-%dT%H:%M:%S.%3NZ; }
from=$(iso "$from_ms"); to=$(iso "$to_ms")

port=$(free_port)
MONGODB_CONNECTION_STRING=$uri RUST_LOG=warn "$dir/sensehat-dashboard" --listen "127.0.0.1:$port" \
    --database "$DB" --query-timeout 600s >"$work/dash.log" 2>&1 &
dash=$!
pids+=($dash)
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
base="http://127.0.0.1:$port"
get() { curl -sf -o /dev/null "$base$1" || { echo "FAIL: GET $1 (curl exit $?)" >&2; return 1; }; }

# The page's first full load, request for request as dashboard.js makes them (nodes first,
# then one /api/chart per node, in parallel).
t0=$(now_s)
get /; get /assets/dashboard.js; get /assets/dashboard.css; get /api/nodes
q() { echo "node=node-$1&from=$from&to=$to"; }
# Waits for these requests only (a bare `wait` would wait for the servers too), each in turn:
# `wait PID...` returns the last one's status only, and a failed request must fail the run.
parallel() {
  local jobs=() failed=0 j
  for path in "$@"; do get "$path" & jobs+=($!); done
  for j in "${jobs[@]}"; do wait "$j" || failed=1; done
  if [ "$failed" != 0 ]; then echo "FAIL: a request of the page's load failed" >&2; return 1; fi
}
nodes=$(seq 0 $((NODES - 1)))
parallel $(for k in $nodes; do echo "/api/chart?$(q "$k")"; done)
page=$(echo "$(now_s) - $t0" | bc)

t0=$(now_s)
series_json=$(curl -sf "$base/api/series?field=temperature&$(q 0)") || { echo "FAIL: GET /api/series" >&2; exit 1; }
series=$(echo "$(now_s) - $t0" | bc)
points=$(echo "$series_json" | "$PY" -c 'import json,sys; print(len(json.load(sys.stdin)["points"]))')
bucket_ms=$(echo "$series_json" | "$PY" -c 'import json,sys; print(int(json.load(sys.stdin)["bucketSeconds"]*1000))')

t0=$(now_s)
naive_out=$("$dir/examples/dashboard_naive" "$uri" "$DB" reports node-0 temperature "$from_ms" "$to_ms" "$bucket_ms")
naive=$(echo "$(now_s) - $t0" | bc)
rss=$(awk '/VmHWM/ {print $2, $3}' "/proc/$dash/status")

echo "documents:              $total ($NODES nodes x $HOURS h x $HZ Hz), window $from .. $to"
echo "page first full load:   ${page} s ($((1 + NODES)) API requests)"
echo "one series (in MongoDB): ${series} s, $points points"
echo "one series (naive):     ${naive} s ($naive_out)"
echo "naive / dashboard:      $(echo "scale=2; $naive / $series" | bc)"
echo "dashboard peak RSS:     $rss"
