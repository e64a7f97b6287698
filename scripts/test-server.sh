# Sourced by the benchmark scripts: start SecantusDB (installed by .ci/run into .venv-test) on a
# free port with a throwaway storage directory, export MONGO_URI, and stop it on exit.
# `restart_server` replaces it with a fresh, empty one (new port, new directory); call it in the
# script's own shell, not in a $(...) subshell, or the old server outlives the script.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECANTUSD=${SECANTUSD:-$ROOT/.venv-test/bin/secantusd-py}
PY=${PY:-$ROOT/.venv-test/bin/python}
if [ ! -x "$SECANTUSD" ]; then
  echo "SecantusDB not found at $SECANTUSD: run 'bash .ci/run setup' once (it creates .venv-test)" >&2
  exit 1
fi
SERVER_PID= DBDIR=
stop_server() {
  # Never fatal under `set -e`: the server may have exited already, and wait returns its status.
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  if [ -n "$DBDIR" ]; then rm -rf "$DBDIR"; fi
  SERVER_PID= DBDIR=
}
start_server() {
  PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  DBDIR=$(mktemp -d)
  "$SECANTUSD" --host 127.0.0.1 --port "$PORT" --storage-path "$DBDIR/db" --log-level WARNING >/dev/null 2>&1 &
  SERVER_PID=$!
  local up=0
  for _ in $(seq 1 300); do
    "$PY" -c "import socket,sys; socket.create_connection(('127.0.0.1',$PORT),0.2)" 2>/dev/null && { up=1; break; }
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [ "$up" != 1 ]; then
    echo "the MongoDB test server ($SECANTUSD) did not start on port $PORT" >&2
    return 1
  fi
  export MONGO_URI="mongodb://127.0.0.1:$PORT/?directConnection=true"
}
restart_server() { stop_server; start_server; }
trap stop_server EXIT
start_server
