#!/usr/bin/env bash
# A year in a cupboard, compressed: the agent on the simulated board at a 1 ms interval against
# the MongoDB test server, with the server and the agent SIGKILLed and restarted at random
# moments, a sensor fault injected now and then and the spool's file system made full once (as
# root: a small tmpfs; otherwise that part is skipped, said so). At the end, every report taken
# is in the database exactly once, RSS after warm-up stayed within a bound, and the spool is back
# to its idle size; it prints the figures and exits non-zero if any check fails
# (scripts/soak.py does the work; `python3 scripts/soak.py --help` lists its knobs).
#
#   nice -n 10 bash scripts/soak.sh                     # 5 million samples (about 90 minutes)
#   SOAK_SECONDS=600 bash scripts/soak.sh               # ten minutes
#   SOAK_SAMPLES=20000000 SOAK_SEED=7 bash scripts/soak.sh
#
# SOAK_URI_OPTIONS (default `journal=true`) is appended to the connection string: the test
# server is standalone, and without the journal it acknowledges inserts its SIGKILL then loses.
set -euo pipefail
cd "$(dirname "$0")/.."
SECANTUSD=${SECANTUSD:-.venv-test/bin/secantusd-py}
PY=${PY:-.venv-test/bin/python}
if [ ! -x "$SECANTUSD" ]; then
  echo "SecantusDB not found at $SECANTUSD: run 'bash .ci/run setup' once (it creates .venv-test)" >&2
  exit 1
fi
"$PY" -c 'import pymongo' 2>/dev/null || .venv-test/bin/pip install -q pymongo
CARGO_INCREMENTAL=0 cargo build --release -q --bin sensehat-monitor
args=(--bin target/release/sensehat-monitor --secantusd "$SECANTUSD"
  --samples "${SOAK_SAMPLES:-5000000}" --seconds "${SOAK_SECONDS:-0}"
  --uri-options "${SOAK_URI_OPTIONS-journal=true}")
if [ -n "${SOAK_SEED:-}" ]; then args+=(--seed "$SOAK_SEED"); fi
exec "$PY" -u scripts/soak.py "${args[@]}" "$@"
