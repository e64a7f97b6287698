#!/usr/bin/env bash
# Check the systemd units (the agent's and the companion services'): `systemd-analyze verify`
# passes and the offline security exposure is at most 2.0. A unit names /usr/local/bin/<binary>
# (where the README installs it); verify needs an executable there, so a copy pointing at this
# build is checked. Then the environment file templates.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --bin sensehat-monitor
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s#/usr/local/bin/sensehat-monitor#$(pwd)/target/debug/sensehat-monitor#g" \
  systemd/sensehat-monitor.service > "$tmp/sensehat-monitor.service"
# verify passes and the offline exposure is at most 2.0, for $1 (a unit file in $tmp).
# verify exits 0 when it only warns (a misspelt or misplaced setting is ignored with a line),
# so any output fails too.
check_unit() {
  local said
  said=$(systemd-analyze verify "$1" 2>&1) || { echo "$said" >&2; exit 1; }
  if [ -n "$said" ]; then
    echo "$said" >&2
    echo "FAIL: systemd-analyze verify warned about $(basename "$1")" >&2
    exit 1
  fi
  echo "$(basename "$1"): systemd-analyze verify: ok"
  local score
  score=$(systemd-analyze security --offline=yes "$1" 2>&1 \
    | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
  echo "$(basename "$1"): security exposure: ${score:-unknown} (limit 2.0)"
  [ -n "$score" ] || { echo "FAIL: systemd-analyze security gave no exposure score" >&2; exit 1; }
  awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || { echo "FAIL: exposure $score is over 2.0" >&2; exit 1; }
}
check_unit "$tmp/sensehat-monitor.service"

# The companion services' units, as shipped and with the endpoint's optional TLS lines on.
cargo build -q --features companions --bin kinesis-forwarder --bin firehose-endpoint
for unit in kinesis-forwarder firehose-endpoint; do
  sed "s#/usr/local/bin/$unit#$(pwd)/target/debug/$unit#g" "systemd/$unit.service" > "$tmp/$unit.service"
  check_unit "$tmp/$unit.service"
done
sed -e 's/^# \(AmbientCapabilities\|CapabilityBoundingSet\|LoadCredential\|Environment=FIREHOSE\)/\1/' \
  "$tmp/firehose-endpoint.service" > "$tmp/firehose-endpoint-tls.service"
[ "$(grep -c '^AmbientCapabilities=CAP_NET_BIND_SERVICE' "$tmp/firehose-endpoint-tls.service")" = 1 ] \
  || { echo "FAIL: the endpoint unit's TLS lines are not where the check expects them" >&2; exit 1; }
check_unit "$tmp/firehose-endpoint-tls.service"
# The companions' environment templates: no setting carries a comment (systemd would keep it in
# the value), and the endpoint's, uncommented, passes its check-config.
for unit in kinesis-forwarder firehose-endpoint; do
  if grep -nE '^# [A-Z_]+=.*[[:space:]]#' "systemd/$unit.env"; then
    echo "FAIL: systemd/$unit.env: a setting with a trailing comment" >&2; exit 1
  fi
done
# Its access key is a placeholder the endpoint refuses (exit 2): checked as it is, then with a
# key such as an operator generates in its place.
evars=()
while IFS= read -r line; do
  [[ $line =~ ^#\ ([A-Z_]+=.*)$ ]] && evars+=("${BASH_REMATCH[1]}")
done < systemd/firehose-endpoint.env
[ "${#evars[@]}" -ge 5 ] || { echo "endpoint env template: only ${#evars[@]} settings found"; exit 1; }
status=0
env -i PATH="$PATH" "${evars[@]}" target/debug/firehose-endpoint check-config 2>/dev/null || status=$?
[ "$status" = 2 ] || { echo "FAIL: the endpoint env template's placeholder key: check-config exit $status, not 2" >&2; exit 1; }
for i in "${!evars[@]}"; do
  if [[ ${evars[$i]} == FIREHOSE_ACCESS_KEY=* ]]; then
    evars[$i]=FIREHOSE_ACCESS_KEY=ci-key-as-openssl-rand-base64-48-makes-0123456789abcdefghijklmnop
  fi
done
env -i PATH="$PATH" "${evars[@]}" target/debug/firehose-endpoint check-config
echo "endpoint env template: ${#evars[@]} settings accepted, once given a key"

# The environment file template: every setting in it, uncommented and read as systemd reads
# EnvironmentFile= (the whole rest of the line is the value), passes check-config, so none
# carries a comment or a value the agent would refuse. The logo path is the repository's.
vars=()
while IFS= read -r line; do
  if [[ $line =~ ^#\ ([A-Z_]+)=(.*)$ ]]; then
    name=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
    [ "$name" = SENSEHAT_LOGO ] && value=$(pwd)/assets/logo.png
    vars+=("$name=$value")
  fi
done < systemd/sensehat-monitor.env
[ "${#vars[@]}" -ge 10 ] || { echo "env template: only ${#vars[@]} settings found"; exit 1; }
env -i PATH="$PATH" "${vars[@]}" SENSEHAT_CLOCK_SYNC_FILE=/nonexistent/synchronized \
  target/debug/sensehat-monitor --sensors sim check-config --spool-dir "$tmp/spool"
echo "env template: ${#vars[@]} settings accepted"
# Left as it is, the template names no database: check-config must say how to give one.
if out=$(env -i PATH="$PATH" target/debug/sensehat-monitor --sensors sim check-config \
  --spool-dir "$tmp/spool" 2>&1); then
  echo "env template: check-config passed with no connection string"; exit 1
fi
grep -q MONGODB_CONNECTION_STRING <<<"$out"
echo "env template: unset connection string refused"
