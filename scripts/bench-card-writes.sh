#!/usr/bin/env bash
# What the agent makes the storage device write, measured at the device: the agent at 500 ms with
# its spool on an ext4 filesystem of its own (a loop-mounted image, mounted `noatime` as Raspberry
# Pi OS mounts its root), inserting into the local test server. /proc/PID/io, which
# bench-agent.sh reports, counts only the bytes the process dirties; the card also takes the
# filesystem's journal commits and each page written back again as it fills. Needs root (mount).
#
#   sudo bash scripts/bench-card-writes.sh
#   sudo SECONDS_STEADY=300 bash scripts/bench-card-writes.sh "defaults=" "sync 1s=--spool-sync 1s"
#   sudo MOUNT_OPTS=noatime,lazytime bash scripts/bench-card-writes.sh
#
# Each argument is LABEL=AGENT_ARGS (default: the defaults and `--spool-sync 1s`); all variants
# run at once, each on its own image. After WARMUP seconds (default 40: the kernel writes dirty
# pages back once they are 30 s old) the device counters are read twice SECONDS_STEADY apart
# (default 120). Reports are counted as the 500 ms grid's slots in that span.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "needs root, to mount a loop device: sudo bash $0" >&2; exit 1; }
command -v mkfs.ext4 >/dev/null || { echo "mkfs.ext4 not found (package e2fsprogs)" >&2; exit 1; }
source scripts/test-server.sh
cargo build --release -q --bin sensehat-monitor
BIN=target/release/sensehat-monitor
WARMUP=${WARMUP:-40}
SECONDS_STEADY=${SECONDS_STEADY:-120}
MOUNT_OPTS=${MOUNT_OPTS:-noatime}
[ $# -gt 0 ] || set -- "defaults=" "--spool-sync 1s (the old default)=--spool-sync 1s"

WORK=$(mktemp -d)
mounts=() pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || true; done
  rm -rf "$WORK"
  stop_server
}
trap cleanup EXIT

labels=() devs=()
i=0
for v in "$@"; do
  label=${v%%=*} args=${v#*=}
  img=$WORK/card$i.img mnt=$WORK/mnt$i
  truncate -s 256M "$img"
  # Inode tables and journal written now: left lazy, the kernel zeroes them in the background
  # after mounting, which the device counters would charge to the agent.
  mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$img"
  mkdir "$mnt"
  mount -o "loop,$MOUNT_OPTS" "$img" "$mnt"
  mounts+=("$mnt")
  devs+=("$(basename "$(findmnt -n -o SOURCE "$mnt")")")
  labels+=("$label")
  # shellcheck disable=SC2086 # the variant's arguments are split as a shell would
  MONGODB_CONNECTION_STRING="$MONGO_URI" RUST_LOG=warn "$BIN" --sensors sim --clock-wait 0 \
    --database "card_writes_$i" --spool-dir "$mnt/spool" --wire-compression none $args \
    >/dev/null 2>"$WORK/agent$i.log" &
  pids+=($!)
  i=$((i + 1))
  # Spread the variants' 500 ms grids, as bench_production.py does.
  sleep 0.1
done

# Sectors written (field 7 of /sys/block/DEV/stat), write requests (field 5) and journal
# commits (the first line of /proc/fs/jbd2/DEV-8/info) of every variant's device.
counters() {
  for d in "${devs[@]}"; do
    read -r _ _ _ _ writes _ sectors _ < "/sys/block/$d/stat"
    commits=$(awk 'NR == 1 { print $1 }' "/proc/fs/jbd2/$d-8/info" 2>/dev/null || echo 0)
    echo "$sectors $writes $commits"
  done
}
sleep "$WARMUP"
mapfile -t before < <(counters)
sleep "$SECONDS_STEADY"
mapfile -t after < <(counters)
for k in "${!pids[@]}"; do
  kill -0 "${pids[$k]}" 2>/dev/null || { echo "the agent '${labels[$k]}' stopped:" >&2; cat "$WORK/agent$k.log" >&2; exit 1; }
done

reports=$((SECONDS_STEADY * 2))
echo "the agent at 500 ms, spool on ext4 ($MOUNT_OPTS), ${SECONDS_STEADY} s after ${WARMUP} s of warm-up:"
printf '%-36s %16s %12s %14s %12s\n' "" "device B/report" "MB a day" "commits/min" "writes/min"
for k in "${!labels[@]}"; do
  read -r s0 w0 c0 <<< "${before[$k]}"
  read -r s1 w1 c1 <<< "${after[$k]}"
  bytes=$(((s1 - s0) * 512))
  awk -v l="${labels[$k]}" -v b="$bytes" -v r="$reports" -v s="$SECONDS_STEADY" \
    -v c=$((c1 - c0)) -v w=$((w1 - w0)) 'BEGIN {
      printf "%-36s %16.0f %12.0f %14.1f %12.1f\n", l, b / r, b / s * 86400 / 1e6, c / s * 60, w / s * 60 }'
done
