#!/usr/bin/env bash
# The whole pipeline, offline, on one machine:
#
#   agent (sim) -> monitors.reports -> kinesis-forwarder -> Kinesis (kinesis-local)
#     -> firehose-local -> firehose-endpoint -> monitors.firehose
#
# Starts SecantusDB (or uses MONGODB_CONNECTION_STRING), the Kinesis emulator with a stream
# "realm", the endpoint, firehose-local, the forwarder and the agent on the simulated board, then
# prints the documents as they arrive in monitors.firehose. Ctrl-C stops everything it started.
# With MONGODB_CONNECTION_STRING set, it works in the database pipeline_demo instead
# (PIPELINE_DATABASE), so that a demo never writes into a real deployment's monitors. Each
# server takes a free port unless MONGO_PORT, KINESIS_PORT or ENDPOINT_PORT says which.
#
# Needs: cargo, node/npm (the emulator), and .venv-test with SecantusDB and pymongo
# (`bash .ci/run setup` or: python3 -m venv .venv-test && .venv-test/bin/pip install SecantusDB==0.7.0b3 pymongo).
#
#   bash scripts/pipeline.sh            # 20 reports, one every 250 ms
#   COUNT=100 bash scripts/pipeline.sh
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-20}
STREAM=${STREAM:-realm}
export FIREHOSE_ACCESS_KEY=${FIREHOSE_ACCESS_KEY:-local-pipeline-key}
# Any static credentials do for the emulator; they come through the standard AWS chain.
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-local} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-local}
export AWS_REGION=${AWS_REGION:-us-east-1} AWS_EC2_METADATA_DISABLED=true
export RUST_LOG=${RUST_LOG:-info}

PIDS=()
cleanup() { # the last started first: the database goes after the programs that use it
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A port given by hand must be free: else the program meant for it fails to bind, and the
# pipeline would talk to whatever holds it (an installed firehose-endpoint listens on 8443).
port_free() { # port variable
  if answers "$1"; then
    echo "port $1 ($2) is in use by another program: choose another, or leave $2 unset for a free one" >&2
    exit 1
  fi
}

wait_port() { # port name pid
  for _ in $(seq 1 300); do
    answers "$1" && return 0
    kill -0 "$3" 2>/dev/null || { echo "$2 exited before it listened on port $1 (its log is above)" >&2; exit 1; }
    sleep 0.1
  done
  echo "$2 did not start on port $1" >&2
  exit 1
}

MONGO_PORT=${MONGO_PORT:-$(free_port)}
KINESIS_PORT=${KINESIS_PORT:-$(free_port)}
ENDPOINT_PORT=${ENDPOINT_PORT:-$(free_port)}
port_free "$KINESIS_PORT" KINESIS_PORT
port_free $((KINESIS_PORT + 1)) "KINESIS_PORT (its TLS port, the next one)"
port_free "$ENDPOINT_PORT" ENDPOINT_PORT

echo "==> building the agent and the companion services"
cargo build --quiet --features companions --bins
BIN="${CARGO_TARGET_DIR:-target}/debug"
for b in sensehat-monitor kinesis-forwarder firehose-local firehose-endpoint; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b" >&2; exit 1; }
done

if [ -z "${MONGODB_CONNECTION_STRING:-}" ]; then
  [ -x .venv-test/bin/secantusd-py ] || { echo "SecantusDB is not installed: run 'bash .ci/run setup' once (it creates .venv-test), or set MONGODB_CONNECTION_STRING to a replica set" >&2; exit 1; }
  port_free "$MONGO_PORT" MONGO_PORT
  echo "==> SecantusDB on port $MONGO_PORT (in memory)"
  .venv-test/bin/secantusd-py --host 127.0.0.1 --port "$MONGO_PORT" --storage-path :memory: --log-level WARNING &
  PIDS+=($!)
  wait_port "$MONGO_PORT" SecantusDB $!
  export MONGODB_CONNECTION_STRING="mongodb://127.0.0.1:$MONGO_PORT/?directConnection=true"
  DB=${PIPELINE_DATABASE:-monitors}
else
  DB=${PIPELINE_DATABASE:-pipeline_demo}
  echo "==> MONGODB_CONNECTION_STRING is set: working in its database $DB"
fi

echo "==> Kinesis emulator on port $KINESIS_PORT with stream $STREAM"
bash .ci/kinesis.sh install >/dev/null
(
  cd "$(bash .ci/kinesis.sh dir)"
  KINESIS_MOCK_PLAIN_PORT=$KINESIS_PORT KINESIS_MOCK_TLS_PORT=$((KINESIS_PORT + 1)) \
    INITIALIZE_STREAMS="$STREAM:2" CREATE_STREAM_DURATION=0ms LOG_LEVEL=WARN exec node main.js
) >/dev/null &
PIDS+=($!)
wait_port "$KINESIS_PORT" kinesis-local $!
KINESIS="http://127.0.0.1:$KINESIS_PORT"

echo "==> firehose-endpoint on 127.0.0.1:$ENDPOINT_PORT -> $DB.firehose"
"$BIN/firehose-endpoint" --listen "127.0.0.1:$ENDPOINT_PORT" --path / \
  --mongodb-uri "$MONGODB_CONNECTION_STRING" --database "$DB" --collection firehose \
  --parse-dates recordedAt &
PIDS+=($!)
wait_port "$ENDPOINT_PORT" firehose-endpoint $!

echo "==> firehose-local: $STREAM -> http://127.0.0.1:$ENDPOINT_PORT/ (1 s buffer)"
"$BIN/firehose-local" --stream-name "$STREAM" --kinesis-endpoint-url "$KINESIS" \
  --destination-url "http://127.0.0.1:$ENDPOINT_PORT/" --buffer-interval 1s --from-start \
  --error-dir "${ERROR_DIR:-$(mktemp -d)}" &
PIDS+=($!)

echo "==> kinesis-forwarder: $DB.reports -> $STREAM"
"$BIN/kinesis-forwarder" --stream-name "$STREAM" --kinesis-endpoint-url "$KINESIS" --database "$DB" &
PIDS+=($!)
sleep 2

STARTED=$(date +%s.%N)
echo "==> agent on the simulated board: $COUNT reports"
SPOOL=$(mktemp -d)
# --clock-wait 0: where the clock never says it is synchronized (NTP blocked, some VMs), the
# agent would hold the readings for five minutes first.
"$BIN/sensehat-monitor" --sensors sim --count "$COUNT" --interval-ms 250 --spool-dir "$SPOOL" \
  --database "$DB" --clock-wait 0 &
PIDS+=($!)

echo "==> documents arriving in $DB.firehose"
.venv-test/bin/python - "$COUNT" "$DB" "$STARTED" <<'PY'
import datetime, os, sys, time
from pymongo import MongoClient
want = int(sys.argv[1])
db = MongoClient(os.environ["MONGODB_CONNECTION_STRING"])[sys.argv[2]]
# Only this run's readings: a database of the user's server keeps those of earlier runs.
this_run = {"recordedAt": {"$gte": datetime.datetime.fromtimestamp(float(sys.argv[3]), datetime.timezone.utc)}}
seen = set()
deadline = time.time() + 60 + want
while len(seen) < want and time.time() < deadline:
    for d in db.firehose.find({**this_run, "_id": {"$nin": list(seen)}}):
        seen.add(d["_id"])
        print(f"  {d['_id']} {d.get('nodeName')} t={d.get('temperature'):.2f} recordedAt={d.get('recordedAt')}")
    time.sleep(0.3)
reports = db.reports.count_documents(this_run)
print(f"==> {len(seen)} documents in {db.name}.firehose, {reports} in {db.name}.reports")
sys.exit(0 if len(seen) >= want else 1)
PY
