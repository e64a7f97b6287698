#!/usr/bin/env bash
# Run every cargo-fuzz target for a while, each in turn, with its seed corpus.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]   # default 60 s, every target
#
# Run for every target (no TARGET named), it then runs the spool's crash property test
# (tests/spool_crash.rs) with SPOOL_CASES cases, default 20000, ten times what `cargo test` runs
# in CI; SPOOL_CASES=0 leaves it out (CI does, having run its 2000 in `cargo test`).
#
# Needs a nightly toolchain and cargo-fuzz (installed here if missing). Corpora grow in
# fuzz/corpus/<target> (gitignored apart from the seeds under fuzz/seeds/<target>); a crash is
# saved in fuzz/artifacts/<target>/ and makes this script exit non-zero. Every crash found
# becomes a `cargo test` regression test before it is fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
shift || true
if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
targets=("$@")
spool_cases=${SPOOL_CASES:-0}
if [ ${#targets[@]} -eq 0 ]; then
  # Not `mapfile < <(...)`: a process substitution's failure is not seen, and the loop below
  # would then fuzz nothing and pass.
  list=$(cargo +nightly fuzz list)
  mapfile -t targets <<<"$list"
  if [ -z "$list" ]; then
    echo "FAIL: cargo fuzz list named no target" >&2
    exit 1
  fi
  spool_cases=${SPOOL_CASES:-20000}
fi
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  seeds=()
  [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
  echo "--- $t for ${SECONDS_PER_TARGET}s"
  log=$(mktemp)
  # -rss_limit_mb bounds memory; -timeout turns a hang into a finding.
  rc=0
  cargo +nightly fuzz run -O -s "${FUZZ_SANITIZER:-none}" "$t" "fuzz/corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 \
    >"$log" 2>&1 || rc=$?
  grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY|Test unit written)|panicked' "$log" || true
  if [ "$rc" != 0 ]; then
    tail -40 "$log" >&2
    if grep -q 'Test unit written' "$log"; then
      echo "FAIL: $t exited $rc (a crash is saved in fuzz/artifacts/$t)" >&2
    else
      echo "FAIL: $t exited $rc without a finding (did the target build? see above)" >&2
    fi
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
done
if [ "$spool_cases" -gt 0 ]; then
  echo "--- spool_crash property test, $spool_cases cases"
  PROPTEST_CASES=$spool_cases cargo test -q --test spool_crash
fi
