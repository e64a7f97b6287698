#!/usr/bin/env bash
# The whole pipeline, offline, on one machine:
#
#   agent (sim) -> monitors.reports -> kinesis-forwarder -> Kinesis (kinesis-local)
#     -> firehose-local -> firehose-endpoint -> monitors.firehose
#
# Starts SecantusDB (or uses MONGODB_CONNECTION_STRING), the Kinesis emulator with a stream
# "realm", the endpoint, firehose-local, the forwarder and the agent on the simulated board, then
# prints the documents as they arrive in monitors.firehose. Ctrl-C stops everything it started.
#
# Needs: cargo, node/npm (the emulator), and .venv-test with SecantusDB and pymongo
# (`bash .ci/run setup` or: python3 -m venv .venv-test && .venv-test/bin/pip install SecantusDB==0.7.0b3 pymongo).
#
#   bash scripts/pipeline.sh            # 20 reports, one every 250 ms
#   COUNT=100 bash scripts/pipeline.sh
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-20}
MONGO_PORT=${MONGO_PORT:-27027}
KINESIS_PORT=${KINESIS_PORT:-4568}
ENDPOINT_PORT=${ENDPOINT_PORT:-8443}
STREAM=${STREAM:-realm}
export FIREHOSE_ACCESS_KEY=${FIREHOSE_ACCESS_KEY:-local-pipeline-key}
# Any static credentials do for the emulator; they come through the standard AWS chain.
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-local} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-local}
export AWS_REGION=${AWS_REGION:-us-east-1} AWS_EC2_METADATA_DISABLED=true
export RUST_LOG=${RUST_LOG:-info}

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

wait_port() { # port name
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not start on port $1" >&2
  exit 1
}

echo "==> building the agent and the companion services"
cargo build --quiet --features companions --bins
BIN="${CARGO_TARGET_DIR:-target}/debug"
for b in sensehat-monitor kinesis-forwarder firehose-local firehose-endpoint; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b" >&2; exit 1; }
done

if [ -z "${MONGODB_CONNECTION_STRING:-}" ]; then
  [ -x .venv-test/bin/secantusd-py ] || { echo "SecantusDB is not installed: run 'bash .ci/run setup' once (it creates .venv-test), or set MONGODB_CONNECTION_STRING to a replica set" >&2; exit 1; }
  echo "==> SecantusDB on port $MONGO_PORT (in memory)"
  .venv-test/bin/secantusd-py --host 127.0.0.1 --port "$MONGO_PORT" --storage-path :memory: --log-level WARNING &
  PIDS+=($!)
  wait_port "$MONGO_PORT" SecantusDB
  export MONGODB_CONNECTION_STRING="mongodb://127.0.0.1:$MONGO_PORT/?directConnection=true"
fi

echo "==> Kinesis emulator on port $KINESIS_PORT with stream $STREAM"
bash .ci/kinesis.sh install >/dev/null
(
  cd "$(bash .ci/kinesis.sh dir)"
  KINESIS_MOCK_PLAIN_PORT=$KINESIS_PORT KINESIS_MOCK_TLS_PORT=$((KINESIS_PORT + 1)) \
    INITIALIZE_STREAMS="$STREAM:2" CREATE_STREAM_DURATION=0ms LOG_LEVEL=WARN exec node main.js
) >/dev/null &
PIDS+=($!)
wait_port "$KINESIS_PORT" kinesis-local
KINESIS="http://127.0.0.1:$KINESIS_PORT"

echo "==> firehose-endpoint on 127.0.0.1:$ENDPOINT_PORT -> monitors.firehose"
"$BIN/firehose-endpoint" --listen "127.0.0.1:$ENDPOINT_PORT" --path / \
  --mongodb-uri "$MONGODB_CONNECTION_STRING" --database monitors --collection firehose \
  --parse-dates recordedAt &
PIDS+=($!)
wait_port "$ENDPOINT_PORT" firehose-endpoint

echo "==> firehose-local: $STREAM -> http://127.0.0.1:$ENDPOINT_PORT/ (1 s buffer)"
"$BIN/firehose-local" --stream-name "$STREAM" --kinesis-endpoint-url "$KINESIS" \
  --destination-url "http://127.0.0.1:$ENDPOINT_PORT/" --buffer-interval 1s --from-start \
  --error-dir "${ERROR_DIR:-$(mktemp -d)}" &
PIDS+=($!)

echo "==> kinesis-forwarder: monitors.reports -> $STREAM"
"$BIN/kinesis-forwarder" --stream-name "$STREAM" --kinesis-endpoint-url "$KINESIS" &
PIDS+=($!)
sleep 2

echo "==> agent on the simulated board: $COUNT reports"
SPOOL=$(mktemp -d)
"$BIN/sensehat-monitor" --sensors sim --count "$COUNT" --interval-ms 250 --spool-dir "$SPOOL" &
PIDS+=($!)

echo "==> documents arriving in monitors.firehose"
.venv-test/bin/python - "$COUNT" <<'PY'
import os, sys, time
from pymongo import MongoClient
want = int(sys.argv[1])
db = MongoClient(os.environ["MONGODB_CONNECTION_STRING"]).monitors
seen = set()
deadline = time.time() + 60 + want
while len(seen) < want and time.time() < deadline:
    for d in db.firehose.find({"_id": {"$nin": list(seen)}}):
        seen.add(d["_id"])
        print(f"  {d['_id']} {d.get('nodeName')} t={d.get('temperature'):.2f} recordedAt={d.get('recordedAt')}")
    time.sleep(0.3)
reports = db.reports.count_documents({})
print(f"==> {len(seen)} documents in monitors.firehose, {reports} in monitors.reports")
sys.exit(0 if len(seen) >= want else 1)
PY
