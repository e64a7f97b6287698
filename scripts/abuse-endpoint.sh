#!/usr/bin/env bash
# The Firehose endpoint under load and abuse: the release `firehose-endpoint` against the MongoDB
# test server. Measures peak RSS with K = 1, 4, 16 concurrent maximum-size requests (plain and
# gzip), what happens past the connection limit, clients that never read, gzip bombs, slowloris,
# header floods, 10,000 idle connections, with legitimate deliveries counted during each, then a
# sustained mixed load whose good records must each be stored exactly once with RSS flat. Prints tables; exits
# non-zero if a check fails (scripts/abuse_endpoint.py does the work; `--help` lists its knobs).
#
#   bash scripts/abuse-endpoint.sh                              # about 15 minutes
#   ABUSE_MIXED_SECONDS=600 bash scripts/abuse-endpoint.sh
#   bash scripts/abuse-endpoint.sh --phases bomb,slow           # some phases only
#
# The endpoint runs with --body-timeout ABUSE_BODY_TIMEOUT (default 20 s, not the 120 s default)
# so that slow bodies are answered within the run.
set -euo pipefail
cd "$(dirname "$0")/.."
# 10,000 idle client sockets, and the endpoint's own (its limit is 256 connections).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 11000 ]; then
  echo "ulimit -n is $(ulimit -n): the idle-connections phase needs about 10,100 files; raise the hard limit" >&2
  exit 1
fi
source scripts/test-server.sh
"$PY" -c 'import pymongo' 2>/dev/null || .venv-test/bin/pip install -q pymongo
CARGO_INCREMENTAL=0 cargo build --release -q --features firehose --bin firehose-endpoint
"$PY" -u scripts/abuse_endpoint.py --bin target/release/firehose-endpoint --uri "$MONGO_URI" \
  --body-timeout "${ABUSE_BODY_TIMEOUT:-20}" --mixed-seconds "${ABUSE_MIXED_SECONDS:-180}" "$@"
