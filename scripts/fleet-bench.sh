#!/usr/bin/env bash
# Fleet load test: N simulated Pis, each a real sensehat-monitor process at 500 ms, into the
# whole offline pipeline (SecantusDB, kinesis-local, kinesis-forwarder, firehose-local, two
# firehose-endpoint processes behind a round-robin balancer), a fresh pipeline for each N.
# Prints per N: readings produced / stored / arrived per second, latency recordedAt ->
# monitors.firehose (p50, p99), each program's CPU and peak RSS, and the hop that saturates
# first; checks arrived = produced and no duplicates, and exits non-zero when a check fails.
# The figures and what they mean: docs/capacity.md. The driver is scripts/fleet_bench.py.
#
# Needs what `bash .ci/run setup` installs (.venv-test with SecantusDB and pymongo; Node.js for
# kinesis-local).
#
#   bash scripts/fleet-bench.sh                 # N = 10 and 100, 60 s each after 20 s warm-up
#   FLEET="10 100 1000" STEADY=60 bash scripts/fleet-bench.sh
#   bash scripts/fleet-bench.sh 1000 --steady 30 --endpoints 1
#   RESULTS=fleet.json KEEP=1 bash scripts/fleet-bench.sh   # results as JSON; keep logs, spools
#
# Environment: FLEET, STEADY, WARMUP, ENDPOINTS, SHARDS, BUFFER_INTERVAL, DRAIN_TIMEOUT,
# AGENT_SHUTDOWN_TIMEOUT, RESULTS, KEEP (see `python3 scripts/fleet_bench.py --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv-test/bin/python
if [ ! -x .venv-test/bin/secantusd-py ] || [ ! -x "$PY" ]; then
  echo "SecantusDB is not installed: run 'bash .ci/run setup' once (it creates .venv-test)" >&2
  exit 1
fi
bash .ci/kinesis.sh install >/dev/null

echo "==> building the release binaries"
CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0} cargo build --quiet --release --features companions --bins

# A thousand agents each hold a connection to the one server, which needs a file per connection.
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ]; then ulimit -n 65536; else ulimit -n "$hard"; fi
echo "==> open files: $(ulimit -n)"

# The driver stops everything it started, by pid, when it ends or gets SIGINT/SIGTERM; this
# script stops the driver the same way if the script itself is stopped.
driver=
stop_driver() {
  if [ -n "$driver" ] && kill -0 "$driver" 2>/dev/null; then
    kill -TERM "$driver" 2>/dev/null || true
    wait "$driver" 2>/dev/null || true
  fi
}
trap stop_driver EXIT
trap 'exit 130' INT TERM

"$PY" scripts/fleet_bench.py "$@" &
driver=$!
wait "$driver"
