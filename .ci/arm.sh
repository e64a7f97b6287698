#!/usr/bin/env bash
# The agent for the Raspberry Pi's ARM targets, without Docker:
# - release builds with cargo-zigbuild against glibc 2.31 (Raspberry Pi OS Bullseye), checked for
#   the highest GLIBC symbol version and for shared libraries beyond libc, and their size;
# - under qemu-user: the unit, driver, report, spool and loop tests; the real binary in --dry-run;
#   and the real binary storing 20 reports in a local MongoDB wire-protocol server.
# The ARMv6 target (Pi 1, Zero) cannot be added on these machines; Cross.toml keeps it for users.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export PATH="$ROOT/.venv-test/bin:$PATH"
if ! command -v cargo-zigbuild >/dev/null; then
  pip install -q --disable-pip-version-check ziglang==0.17.1 cargo-zigbuild==0.24.1
fi
source scripts/test-server.sh
source .ci/timed.sh

declare -A GCC=([aarch64-unknown-linux-gnu]=aarch64-linux-gnu [armv7-unknown-linux-gnueabihf]=arm-linux-gnueabihf)
declare -A QEMU=([aarch64-unknown-linux-gnu]=qemu-aarch64 [armv7-unknown-linux-gnueabihf]=qemu-arm)
MAX_GLIBC=2.31
SIZE_LIMIT_AARCH64=$((6 * 1024 * 1024))

for target in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
  prefix=${GCC[$target]}
  qemu="${QEMU[$target]} -L /usr/$prefix"
  echo "--- $target: release build against glibc $MAX_GLIBC"
  cargo zigbuild -q --release --target "$target.$MAX_GLIBC" --bin sensehat-monitor
  bin="target/$target/release/sensehat-monitor"
  size=$(stat -c %s "$bin")
  echo "stripped size: $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.2f", s / 1048576 }') MiB)"
  if [ "$target" = aarch64-unknown-linux-gnu ] && [ "$size" -gt "$SIZE_LIMIT_AARCH64" ]; then
    echo "FAIL: aarch64 agent is over 6 MiB" >&2; exit 1
  fi
  highest=$("$prefix-objdump" -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
  echo "highest GLIBC symbol version needed: $highest (limit $MAX_GLIBC)"
  [ "$(printf '%s\n%s\n' "$highest" "$MAX_GLIBC" | sort -V | tail -1)" = "$MAX_GLIBC" ] \
    || { echo "FAIL: needs glibc $highest" >&2; exit 1; }
  needed=$("$prefix-readelf" -d "$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')
  echo "shared libraries: $needed"
  for lib in $needed; do
    case "$lib" in
      libc.so.*|libm.so.*|libgcc_s.so.*|ld-linux*|libpthread.so.*|libdl.so.*|librt.so.*) ;;
      *) echo "FAIL: links $lib (only libc is allowed)" >&2; exit 1 ;;
    esac
  done

  echo "--- $target: --dry-run under qemu"
  out=$(timeout 120 $qemu "$bin" --sensors sim --dry-run --count 5 --interval-ms 20)
  lines=$(printf '%s\n' "$out" | grep -c '"recordedAt":{"$date":"' || true)
  [ "$lines" -eq 5 ] || { echo "FAIL: expected 5 reports, got: $out" >&2; exit 1; }
  printf '%s\n' "$out" | head -1

  echo "--- $target: 20 reports into MongoDB under qemu"
  spool=$(mktemp -d)
  db="arm_${target%%-*}"
  MONGODB_CONNECTION_STRING="$MONGO_URI" timeout 300 $qemu "$bin" --sensors sim --count 20 --interval-ms 50 \
    --database "$db" --spool-dir "$spool"
  rm -rf "$spool"
  n=$("$PY" -c "import pymongo; print(pymongo.MongoClient('$MONGO_URI')['$db'].reports.count_documents({}))")
  [ "$n" -eq 20 ] || { echo "FAIL: $n reports stored, expected 20" >&2; exit 1; }
  echo "stored $n reports"

  echo "--- $target: tests under qemu (unit, drivers, loop)"
  upper=$(echo "$target" | tr 'a-z-' 'A-Z_')
  timed 1500 env "CARGO_TARGET_${upper}_LINKER=$prefix-gcc" "CC_${target//-/_}=$prefix-gcc" \
      "CARGO_TARGET_${upper}_RUNNER=$qemu" \
    cargo test -q --target "$target" --lib --test drivers --test agent_loop
  # Each target's debug build is used once; drop it before the next one fills the disk again.
  rm -rf "target/$target/debug"
done
