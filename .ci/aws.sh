#!/usr/bin/env bash
# The AWS deploy, checked offline: installs .venv-aws (pinned moto, AWS CLI, cfn-lint, boto3),
# lints every CloudFormation template (no errors, no warnings), checks that deploy/aws/cli.sh is
# a fresh generation of pipeline.yaml, starts moto_server on a free loopback port, and runs
# scripts/aws-rehearsal.py: the stack and cli.sh deployed into moto and read back, and the template
# checked against the programs' source. Exits non-zero on any mismatch. Safe to run again.
#
#   bash .ci/aws.sh            # what CI runs
#   bash .ci/aws.sh --twice    # also run cli.sh a second time (it must be safe to repeat)
#   bash .ci/aws.sh install    # only install .venv-aws (the EventBridge tests need moto_server)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-aws
# Tried together on 2026-12-04 (awscli pins its own botocore; boto3 follows it).
PINS=("moto[server]==5.2.5" "awscli==1.46.3" "cfn-lint==1.58.0" "boto3==1.44.8")
STAMP="$VENV/.pins"
# Their dependencies are pinned too, in .ci/constraints/aws.txt.
CONSTRAINTS=.ci/constraints/aws.txt
stamp="${PINS[*]} $(sha256sum < "$CONSTRAINTS")"

step() { printf '\n==> %s\n' "$*"; }
start=$(date +%s)

step "AWS tools in $VENV"
if [ ! -x "$VENV/bin/moto_server" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$stamp" ]; then
  python3 -c 'import ensurepip' 2>/dev/null || { echo "python3-venv is needed (apt-get install python3-venv)" >&2; exit 1; }
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  echo '*' > "$VENV/.gitignore"  # keep the venv out of git without touching the project's .gitignore
  "$VENV/bin/pip" install -q --disable-pip-version-check -c "$CONSTRAINTS" "${PINS[@]}"
  echo "$stamp" > "$STAMP"
fi
"$VENV/bin/pip" freeze --disable-pip-version-check | grep -iE '^(moto|awscli|cfn-lint|boto3|botocore)==' | tr '\n' ' '
echo
installed=$(date +%s)
[ "${1:-}" = install ] && exit 0

step "cfn-lint (errors, warnings and informational findings fail)"
shopt -s nullglob
templates=(deploy/aws/*.yaml)
"$VENV/bin/cfn-lint" --include-checks I --format parseable -- "${templates[@]}"
echo "cfn-lint: ${#templates[@]} template(s) clean"

step "deploy/aws/cli.sh is generated from pipeline.yaml"
"$VENV/bin/python" deploy/aws/gen_cli.py --check
bash -n deploy/aws/cli.sh

step "moto_server on a free loopback port"
port=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
moto_pid=$!
trap 'kill "$moto_pid" 2>/dev/null || true; wait "$moto_pid" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 100); do
  "$VENV/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/')" 2>/dev/null && break
  kill -0 "$moto_pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.2
done
echo "moto_server pid $moto_pid on 127.0.0.1:$port"

step "rehearsal against moto"
status=0
out=$(mktemp)
PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/python" scripts/aws-rehearsal.py --endpoint-url "http://127.0.0.1:$port" "$@" \
  | tee "$out" || status=$?
end=$(date +%s)
echo "aws checks took $((end - installed)) s after install ($((end - start)) s in all)"
# The rehearsal's count, last (the line CI's summary reads).
tail -n 1 "$out"
rm -f "$out"
exit $status
