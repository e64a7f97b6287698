#!/usr/bin/env bash
# Benchmark: the agent (simulated board) against the original Python agent
# (shared/bench/seed_agent), inserting into the same local MongoDB wire-protocol server in the
# same run. Prints figures and ratios to the seed.
#
# First, at the production interval (500 ms) with the seed at PERIOD=0.5, everything running at
# once for SECONDS (default 60) of steady state after WARMUP (default 15) seconds
# (scripts/bench_production.py): CPU per sample, wake-ups per second, bytes on the database
# connection and to storage per report, peak RSS, and the floor. Then a stress line: 2000
# samples at 1 ms, timed as whole processes (STRESS=0 leaves it out).
#
#   bash scripts/bench-agent.sh                 # both
#   SECONDS_STEADY=300 STRESS=0 bash scripts/bench-agent.sh
#   METRICS=1 bash scripts/bench-agent.sh       # what metrics cost at 500 ms: off, served and
#                                               # scraped every 15 s, written as a textfile
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/test-server.sh
SEED=${SEED_AGENT_DIR:-../shared/bench/seed_agent}
[ -f "$SEED/seed_agent.py" ] || { echo "the original Python agent is not at $SEED: set SEED_AGENT_DIR to its directory" >&2; exit 1; }
# Two builds: an example pulls in the dev-dependencies, whose features (tokio's test-util, and
# more) would otherwise be built into the agent too, which then is not the binary a Pi runs.
cargo build --release -q --bin sensehat-monitor
cargo build --release -q --example sleep_floor
"$PY" -c 'import pymongo' 2>/dev/null || .venv-test/bin/pip install -q pymongo
variants=()
if [ "${METRICS:-0}" = 1 ]; then
  # The first row ("defaults") has metrics off.
  variants=(--variant "metrics served, scraped every 15 s=@scrape"
            --variant "metrics written as a textfile=--metrics-textfile @tmp/agent.prom")
  STRESS=0
fi
echo "=== at the production interval"
"$PY" scripts/bench_production.py --uri "$MONGO_URI" --bin target/release/sensehat-monitor \
  --floor target/release/examples/sleep_floor --seed-dir "$SEED" --python "$PY" \
  --seconds "${SECONDS_STEADY:-60}" --warmup "${WARMUP:-15}" "${variants[@]}"
[ "${STRESS:-1}" = 0 ] && exit 0
echo
echo "=== stress: 2000 samples at 1 ms"
SAMPLES=${SAMPLES:-2000}
INTERVAL_MS=1
if [ "$INTERVAL_MS" = 1 ]; then PERIOD=0; else PERIOD=$("$PY" -c "print($INTERVAL_MS/1000)"); fi
BIN=target/release/sensehat-monitor
# The floor: the agent's ticker alone, waking on the same grid and doing nothing else
# (examples/sleep_floor.rs). What this machine charges for the wake-ups is no work of ours.
FLOOR=target/release/examples/sleep_floor
# ROUNDS pairs, ours then the seed's, one after the other: on a shared virtual machine the cost
# of a context switch drifts by tens of percent within minutes, so each ratio compares two runs
# made seconds apart, and the median of the rounds is reported with their range.
ROUNDS=${ROUNDS:-1}
# Each run gets a fresh, empty server (restart_server, in this shell before each run):
# SecantusDB slows down as its oplog grows (a seed run's wall time went from 2 s to 28 s within
# one benchmark), which would make the seed's figure depend on how many runs came before it.
run_ours() { # $1: measure.py mode flag (or empty)
  local spool out
  spool=$(mktemp -d)
  out=$(MONGODB_CONNECTION_STRING="$MONGO_URI" RUST_LOG=warn "$PY" scripts/measure.py $1 \
    "$BIN" --sensors sim --count "$SAMPLES" --interval "${INTERVAL_MS}ms" --clock-wait 0 --database bench_agent --spool-dir "$spool")
  rm -rf "$spool"
  echo "$out"
}
run_seed() { # $1: measure.py mode flag (or empty); $2: the seed's PERIOD (default $PERIOD)
  (cd "$SEED" && MONGODB_CONNECTION_STRING="$MONGO_URI" SAMPLES="$SAMPLES" PERIOD="${2:-$PERIOD}" \
    "$PY" "$ROOT/scripts/measure.py" $1 "$PY" seed_agent.py)
}
# At --interval 1ms the headline ratio is against the seed at PERIOD=0, never sleeping: the
# seed's lowest CPU per sample, so the strictest comparison. Each round also runs the seed paced
# as ours is, sleeping PERIOD=0.001 after each sample and so paying a wake-up per sample as ours
# does; that ratio is printed on a line of its own.
PACED=""
if [ "$INTERVAL_MS" = 1 ]; then PACED=0.001; fi
# CPU counted a second way when perf works here: perf's task-clock, which leaves out the cost of
# switching to the process (see measure.py; about 10 us a switch on a nested VM).
perf_ok=0
if command -v perf >/dev/null && perf stat -e task-clock true >/dev/null 2>&1; then perf_ok=1; fi
rounds=()
for _ in $(seq "$ROUNDS"); do
  restart_server; ours=$(run_ours "")
  restart_server; theirs=$(run_seed "")
  paced=null
  if [ -n "$PACED" ]; then restart_server; paced=$(run_seed "" "$PACED"); fi
  floor=$("$PY" scripts/measure.py "$FLOOR" "$SAMPLES" "$INTERVAL_MS")
  ours_tc=null theirs_tc=null
  if [ "$perf_ok" = 1 ]; then
    restart_server; ours_tc=$(run_ours --task-clock)
    restart_server; theirs_tc=$(run_seed --task-clock)
  fi
  rounds+=("{\"ours\":$ours,\"theirs\":$theirs,\"floor\":$floor,\"paced\":$paced,\"ours_tc\":$ours_tc,\"theirs_tc\":$theirs_tc}")
done
size=$(stat -c %s "$BIN")
"$PY" - "$SAMPLES" "$size" "$INTERVAL_MS" "$PERIOD" "${rounds[@]}" <<'PYEOF'
import json, statistics, sys
n, size, interval, period = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
rounds = [json.loads(r) for r in sys.argv[5:]]
for r in rounds:
    for k in ("ours", "theirs", "paced", "floor", "ours_tc", "theirs_tc"):
        assert r[k] is None or r[k]["rc"] == 0, r
def spread(values, fmt):
    v = sorted(values)
    return f"{fmt.format(statistics.median(v))} ({fmt.format(v[0])}-{fmt.format(v[-1])})"
us = lambda r, key: r[key] / n * 1e6
print(f"{n} samples each, a fresh server per run, every {interval} ms (seed: PERIOD={period}); "
      f"median of {len(rounds)} rounds (range)")
print(f"{'':<26}{'peak RSS':>22}{'CPU/sample (wait4)':>30}{'wall':>24}")
for who, name in (("ours", "sensehat-monitor (Rust)"), ("theirs", "seed agent (Python)")):
    rs = [r[who] for r in rounds]
    print(f"{name:<26}{spread([r['maxrss_kib'] / 1024 for r in rs], '{:.1f}'):>18} MiB"
          f"{spread([us(r, 'cpu_s') for r in rs], '{:.1f}'):>27} us"
          f"{spread([r['wall_s'] for r in rs], '{:.2f}'):>22} s")
rss = [r["ours"]["maxrss_kib"] / r["theirs"]["maxrss_kib"] for r in rounds]
cpu = [r["ours"]["cpu_s"] / r["theirs"]["cpu_s"] for r in rounds]
print(f"RSS ratio   ours/theirs = {spread(rss, '{:.3f}')}  (target <= 0.25)")
print(f"CPU ratio   ours/theirs = {spread(cpu, '{:.3f}')}  (target <= 0.10; user+sys from wait4)")
if all(r["paced"] for r in rounds):
    paced = [us(r["paced"], "cpu_s") for r in rounds]
    ratio = [r["ours"]["cpu_s"] / r["paced"]["cpu_s"] for r in rounds]
    print(f"seed paced as ours (PERIOD=0.001): CPU/sample {spread(paced, '{:.1f}')} us; "
          f"ours/paced seed = {spread(ratio, '{:.3f}')}")
floor = [us(r["floor"], "cpu_s") for r in rounds]
own = [us(r["ours"], "cpu_s") - f for r, f in zip(rounds, floor)]
of_seed = [f / us(r["theirs"], "cpu_s") for r, f in zip(rounds, floor)]
print(f"floor: the same wake-ups doing nothing (examples/sleep_floor) {spread(floor, '{:.1f}')} us/slot, "
      f"{spread(of_seed, '{:.3f}')} of the seed's CPU; ours minus floor {spread(own, '{:.1f}')} us/sample")
if all(r["ours_tc"] for r in rounds):
    o = [us(r["ours_tc"], "task_clock_s") for r in rounds]
    t = [us(r["theirs_tc"], "task_clock_s") for r in rounds]
    ratio = [a / b for a, b in zip(o, t)]
    print(f"CPU/sample by perf task-clock: ours {spread(o, '{:.1f}')} us, theirs {spread(t, '{:.1f}')} us, "
          f"ratio {spread(ratio, '{:.3f}')}  (target <= 0.10)")
    cs = lambda who: [r[who]["context_switches"] / n for r in rounds]
    print(f"context switches per sample: ours {spread(cs('ours_tc'), '{:.2f}')}, "
          f"theirs {spread(cs('theirs_tc'), '{:.2f}')}")
else:
    print("perf not usable here: CPU by task-clock not measured")
print(f"release binary (stripped, x86_64): {size / 1048576:.2f} MiB")
PYEOF
