#!/usr/bin/env bash
# Check the systemd unit: `systemd-analyze verify` passes and the offline security exposure is
# at most 2.0. The unit names /usr/local/bin/sensehat-monitor (where the README installs it);
# verify needs an executable there, so a copy pointing at this build is checked.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --bin sensehat-monitor
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s#/usr/local/bin/sensehat-monitor#$(pwd)/target/debug/sensehat-monitor#g" \
  systemd/sensehat-monitor.service > "$tmp/sensehat-monitor.service"
systemd-analyze verify "$tmp/sensehat-monitor.service"
echo "systemd-analyze verify: ok"
score=$(systemd-analyze security --offline=yes "$tmp/sensehat-monitor.service" 2>&1 \
  | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
echo "systemd-analyze security exposure: ${score:-unknown} (limit 2.0)"
[ -n "$score" ] && awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }'
