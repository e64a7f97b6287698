#!/usr/bin/env python3
"""Generate deploy/aws/cli.sh, the plain AWS CLI equivalent of pipeline.yaml, from pipeline.yaml.

    .venv-aws/bin/python deploy/aws/gen_cli.py           # write deploy/aws/cli.sh (PyYAML: bash .ci/aws.sh install)
    .venv-aws/bin/python deploy/aws/gen_cli.py --check   # exit 1 if the committed cli.sh is not a fresh generation

Every value in cli.sh comes from the template: parameters become environment variables with the
template's defaults and constraints, conditions become shell tests, and each resource's resolved
properties become the JSON documents of the calls. Needs PyYAML (in .venv-aws).
"""

import json
import os
import re
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import template as tpl  # noqa: E402

OUT = os.path.join(tpl.HERE, "cli.sh")
PSEUDO = {"AWS::Partition": "${PARTITION}", "AWS::Region": "${REGION}", "AWS::AccountId": "${ACCOUNT_ID}"}
# cli.sh always creates the delivery streams (that parameter exists for moto's CloudFormation).
FIXED_PARAMS = {"CreateDeliveryStream": "true"}


def env_name(param):
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", param.replace("MiB", "Mib")).upper()


NUMBERS = []


def num(x):
    return x if isinstance(x, str) and x.startswith("${") else int(x)


def var(logical):
    return "N_" + logical


# bash's =~ compiles with the C library's regcomp, and POSIX promises repetition counts only up
# to RE_DUP_MAX, 255: macOS and musl refuse larger ones, the pattern does not compile, and every
# value (the default too) "does not match". So a larger count is left open and its limit checked
# as a length instead.
RE_DUP_MAX = 255
COUNT = re.compile(r"\{(\d+)(,(\d*))?\}")


def shell_pattern(param, pattern):
    """`pattern` as bash's =~ on any libc takes it, and the longest value it allows when that is
    checked apart (None otherwise). A count above RE_DUP_MAX ({32,4096}) becomes open-ended
    ({32,}); that and a length check make the same constraint only when the count is on one
    character and nothing else in the pattern matches any character, which is checked."""
    longs = [m for m in COUNT.finditer(pattern) if any(int(n) > RE_DUP_MAX for n in m.groups()[::2] if n)]
    if not longs:
        return pattern, None
    m = longs[0]
    low, high = int(m.group(1)), m.group(3)
    atom = re.search(r"(\[\^?\]?[^\]]*\]|\\.|[^\\])$", pattern[:m.start()])
    rest = pattern[:atom.start()] + pattern[m.end():]
    if len(longs) > 1 or low > RE_DUP_MAX or not high or not re.fullmatch(r"[\^$()?]*", rest):
        raise ValueError("%s: cli.sh cannot check %r in bash (a count above %d other than one "
                         "character's {n,m} over the whole value)" % (param, pattern, RE_DUP_MAX))
    return pattern[:m.start()] + ("{%d,}" % low) + pattern[m.end():], int(high)


def shell_cond(t, c):
    (op, arg), = c.items()
    if op == "Fn::Equals":
        a, b = arg
        if not (isinstance(a, dict) and list(a) == ["Ref"] and isinstance(b, str)):
            raise ValueError("cli.sh supports Fn::Equals of a parameter and a literal")
        if a["Ref"] in FIXED_PARAMS:
            return "true" if FIXED_PARAMS[a["Ref"]] == b else "false"
        return '[ "${%s}" = "%s" ]' % (env_name(a["Ref"]), b)
    if op == "Fn::Not":
        return "! { %s; }" % shell_cond(t, arg[0])
    if op == "Fn::And":
        return "{ %s; }" % " && ".join(shell_cond(t, x) for x in arg)
    if op == "Fn::Or":
        return "{ %s; }" % " || ".join(shell_cond(t, x) for x in arg)
    if op == "Condition":
        return '[ "${COND_%s}" = true ]' % arg
    raise ValueError(op)


def doc(path, obj):
    """A heredoc writing `obj` as JSON; values hold only ${VAR} expansions (checked), and a
    JSON document inside a string (an SQS queue's Policy attribute) may escape its quotes, which
    a heredoc leaves as they are."""
    text = json.dumps(obj, indent=2, sort_keys=True)
    # Number parameters are JSON numbers: their expansions go in unquoted.
    text = re.sub(r'"(\$\{(%s)\})"' % "|".join(NUMBERS), r"\1", text)
    bare = re.sub(r"\$\{[A-Za-z0-9_]+\}", "", text).replace('\\"', "")
    if any(ch in bare for ch in "`\\"):
        raise ValueError("a JSON document for cli.sh holds a shell metacharacter: " + path)
    # A literal $ (InputPath's "$.detail") is escaped; the heredoc expands only ${VAR}.
    text = re.sub(r"\$(?!\{)", r"\\$", text)
    return 'cat > "$T/%s" <<EOF\n%s\nEOF\n' % (path, text)


def emit_resource(ctx, logical, props):
    """Shell commands creating `logical` (idempotently) from its resolved properties."""
    t = ctx.t["Resources"][logical]["Type"]
    n = "${%s}" % var(logical)
    out = []
    if t == "AWS::Kinesis::Stream":
        assert props.pop("RetentionPeriodHours", 24) == 24, "cli.sh assumes 24 h retention"
        enc = props.pop("StreamEncryption")
        create = {"StreamName": props.pop("Name"), "StreamModeDetails": props.pop("StreamModeDetails")}
        if "ShardCount" in props:
            create["ShardCount"] = num(props.pop("ShardCount"))
        out.append(doc(logical + ".json", create))
        out.append(
            'if ! aws kinesis describe-stream-summary --stream-name "%s" >/dev/null 2>&1; then\n'
            '  aws kinesis create-stream --cli-input-json "file://$T/%s.json"\n'
            '  aws kinesis wait stream-exists --stream-name "%s"\n'
            "fi\n" % (n, logical, n)
        )
        out.append(
            'if [ "$(aws kinesis describe-stream-summary --stream-name "%s" '
            "--query StreamDescriptionSummary.EncryptionType --output text)\" != %s ]; then\n"
            '  aws kinesis start-stream-encryption --stream-name "%s" --encryption-type %s --key-id "%s"\n'
            '  aws kinesis wait stream-exists --stream-name "%s"  # ACTIVE again, for Firehose\n'
            "fi\n" % (n, enc["EncryptionType"], n, enc["EncryptionType"], enc["KeyId"], n)
        )
    elif t == "AWS::S3::Bucket":
        enc = props.pop("BucketEncryption")
        pab = props.pop("PublicAccessBlockConfiguration")
        own = props.pop("OwnershipControls")
        rules = []
        for r in props.pop("LifecycleConfiguration")["Rules"]:
            rule = {"ID": r["Id"], "Status": r["Status"], "Filter": {"Prefix": ""}}
            if "ExpirationInDays" in r:
                rule["Expiration"] = {"Days": num(r["ExpirationInDays"])}
            if "AbortIncompleteMultipartUpload" in r:
                a = r["AbortIncompleteMultipartUpload"]
                rule["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": num(a["DaysAfterInitiation"])}
            rules.append(rule)
        out.append(
            'if ! aws s3api head-bucket --bucket "%s" >/dev/null 2>&1; then\n'
            '  if [ "$REGION" = us-east-1 ]; then aws s3api create-bucket --bucket "%s" >/dev/null\n'
            '  else aws s3api create-bucket --bucket "%s" --create-bucket-configuration "LocationConstraint=$REGION" >/dev/null; fi\n'
            "fi\n" % (n, n, n)
        )
        out.append(doc(logical + ".pab.json", pab))
        out.append('aws s3api put-public-access-block --bucket "%s" --public-access-block-configuration "file://$T/%s.pab.json"\n' % (n, logical))
        out.append(doc(logical + ".own.json", own))
        out.append('aws s3api put-bucket-ownership-controls --bucket "%s" --ownership-controls "file://$T/%s.own.json"\n' % (n, logical))
        # The API's name for CloudFormation's ServerSideEncryptionByDefault.
        enc_rules = [{("ApplyServerSideEncryptionByDefault" if k == "ServerSideEncryptionByDefault" else k): v
                      for k, v in r.items()} for r in enc["ServerSideEncryptionConfiguration"]]
        out.append(doc(logical + ".enc.json", {"Rules": enc_rules}))
        out.append('aws s3api put-bucket-encryption --bucket "%s" --server-side-encryption-configuration "file://$T/%s.enc.json"\n' % (n, logical))
        out.append(doc(logical + ".life.json", {"Rules": rules}))
        out.append('aws s3api put-bucket-lifecycle-configuration --bucket "%s" --lifecycle-configuration "file://$T/%s.life.json"\n' % (n, logical))
    elif t == "AWS::S3::BucketPolicy":
        out.append(doc(logical + ".json", props.pop("PolicyDocument")))
        out.append('aws s3api put-bucket-policy --bucket "%s" --policy "file://$T/%s.json"\n' % (props.pop("Bucket"), logical))
    elif t == "AWS::Logs::LogGroup":
        props.pop("LogGroupName")
        days = props.pop("RetentionInDays")
        out.append(
            'aws logs describe-log-groups --log-group-name-prefix "%s" --query "logGroups[?logGroupName==\'%s\'].logGroupName" --output text | grep -q . ||\n'
            '  aws logs create-log-group --log-group-name "%s"\n' % (n, n, n)
        )
        out.append('aws logs put-retention-policy --log-group-name "%s" --retention-in-days "%s"\n' % (n, days))
    elif t == "AWS::Logs::LogStream":
        group = props.pop("LogGroupName")
        props.pop("LogStreamName")
        out.append(
            'aws logs describe-log-streams --log-group-name "%s" --log-stream-name-prefix "%s" --query "logStreams[?logStreamName==\'%s\'].logStreamName" --output text | grep -q . ||\n'
            '  aws logs create-log-stream --log-group-name "%s" --log-stream-name "%s"\n' % (group, n, n, group, n)
        )
    elif t == "AWS::IAM::Role":
        out.append(doc(logical + ".trust.json", props.pop("AssumeRolePolicyDocument")))
        out.append(
            'if aws iam get-role --role-name "%s" >/dev/null 2>&1; then\n'
            '  aws iam update-assume-role-policy --role-name "%s" --policy-document "file://$T/%s.trust.json"\n'
            "else\n"
            '  aws iam create-role --role-name "%s" --description "%s" --assume-role-policy-document "file://$T/%s.trust.json" >/dev/null\n'
            "fi\n" % (n, n, logical, n, props.pop("Description"), logical)
        )
        for p in props.pop("Policies"):
            f = "%s.%s.json" % (logical, p["PolicyName"])
            out.append(doc(f, p["PolicyDocument"]))
            out.append('aws iam put-role-policy --role-name "%s" --policy-name %s --policy-document "file://$T/%s"\n' % (n, p["PolicyName"], f))
    elif t == "AWS::IAM::ManagedPolicy":
        out.append(doc(logical + ".json", props.pop("PolicyDocument")))
        arn = ctx.ref(logical)
        out.append(
            'if aws iam get-policy --policy-arn "%s" >/dev/null 2>&1; then\n'
            '  replace_policy_version "%s" "file://$T/%s.json"\n'
            "else\n"
            '  aws iam create-policy --policy-name "%s" --description "%s" --policy-document "file://$T/%s.json" >/dev/null\n'
            "fi\n" % (arn, arn, logical, n, props.pop("Description"), logical)
        )
    elif t == "AWS::KinesisFirehose::DeliveryStream":
        out.append(doc(logical + ".json", props))
        props = {}
        out.append(
            'if aws firehose describe-delivery-stream --delivery-stream-name "%s" >/dev/null 2>&1; then\n'
            '  echo "delivery stream %s exists; change it with aws firehose update-destination" >&2\n'
            "else\n"
            '  retry_iam aws firehose create-delivery-stream --cli-input-json "file://$T/%s.json"\n'
            "fi\n" % (n, n, logical)
        )
    elif t == "AWS::Events::EventBus":
        props.pop("Name")
        out.append(
            'aws events describe-event-bus --name "%s" >/dev/null 2>&1 || aws events create-event-bus --name "%s" >/dev/null\n' % (n, n)
        )
    elif t == "AWS::Events::Rule":
        props.pop("Name")
        bus = props.pop("EventBusName")
        out.append(doc(logical + ".pattern.json", props.pop("EventPattern")))
        out.append(
            'aws events put-rule --name "%s" --event-bus-name "%s" --state %s --description "%s" --event-pattern "file://$T/%s.pattern.json" >/dev/null\n'
            % (n, bus, props.pop("State"), props.pop("Description"), logical)
        )
        out.append(doc(logical + ".targets.json", props.pop("Targets")))
        out.append('put_targets --rule "%s" --event-bus-name "%s" --targets "file://$T/%s.targets.json"\n' % (n, bus, logical))
    elif t == "AWS::SQS::Queue":
        # CloudFormation's property names are the API's attribute names; attributes are strings.
        props.pop("QueueName", None)
        attrs = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in props.items()}
        props = {}
        url = ctx.ref(logical)
        uvar = url[2:-1]  # U_<logical>, the variable cli.sh keeps the URL in
        out.append(doc(logical + ".attrs.json", attrs))
        out.append(
            'if %s=$(aws sqs get-queue-url --queue-name "%s" --query QueueUrl --output text 2>/dev/null); then\n'
            '  aws sqs set-queue-attributes --queue-url "%s" --attributes "file://$T/%s.attrs.json"\n'
            "else\n"
            '  %s=$(aws sqs create-queue --queue-name "%s" --attributes "file://$T/%s.attrs.json" --query QueueUrl --output text)\n'
            "fi\n" % (uvar, n, url, logical, uvar, n, logical)
        )
    elif t == "AWS::SQS::QueuePolicy":
        policy = json.dumps(props.pop("PolicyDocument"), sort_keys=True)
        out.append(doc(logical + ".json", {"Policy": policy}))
        for q in props.pop("Queues"):
            out.append('aws sqs set-queue-attributes --queue-url "%s" --attributes "file://$T/%s.json"\n' % (q, logical))
    else:
        raise ValueError("cli.sh cannot create " + t)
    if props:
        raise ValueError("%s: properties cli.sh does not set: %s" % (logical, sorted(props)))
    return "".join(out)


def generate():
    t = tpl.load()
    params = {k: "${%s}" % env_name(k) for k in t["Parameters"] if k not in FIXED_PARAMS}
    NUMBERS[:] = [env_name(k) for k, p in t["Parameters"].items() if p["Type"] == "Number"]
    params.update(FIXED_PARAMS)
    ctx = tpl.Context(t, params, PSEUDO)
    lines = []
    w = lines.append
    w(HEADER)
    w("# Parameters (environment variables), with pipeline.yaml's defaults and constraints.\n")
    for k, p in t["Parameters"].items():
        if k in FIXED_PARAMS:
            continue
        e = env_name(k)
        desc = " ".join(str(p.get("Description", "")).split())
        w("# %s: %s\n" % (e, desc))
        if "Default" in p:
            w(': "${%s=%s}"\n' % (e, p["Default"]))
        else:
            w(': "${%s:?set %s (required)}"\n' % (e, e))
        if "AllowedPattern" in p:
            pattern, longest = shell_pattern(k, p["AllowedPattern"])
            what = " ".join(str(p.get("ConstraintDescription", "")).split())
            w("check_pattern %s %s%s\n" % (e, shlex.quote(pattern), " " + shlex.quote(what) if what else ""))
            if longest is not None:
                w("check_length %s %d\n" % (e, longest))
        if "AllowedValues" in p:
            w("check_values %s %s\n" % (e, " ".join(str(v) for v in p["AllowedValues"])))
        if "MinValue" in p:
            w("check_range %s %s %s\n" % (e, p["MinValue"], p["MaxValue"]))
    w("\n# Rules.\n")
    for r in t.get("Rules", {}).values():
        for asrt in r["Assertions"]:
            w('if ! %s; then fail "%s"; fi\n' % (shell_cond(t, asrt["Assert"]), " ".join(asrt["AssertDescription"].split())))
    w("\n# Where: region, partition and account from the AWS CLI's configuration.\n")
    w(ENV_BLOCK)
    w("\n# Conditions.\n")
    for c, expr in t["Conditions"].items():
        w("if %s; then COND_%s=true; else COND_%s=false; fi\n" % (shell_cond(t, expr), c, c))
    w("\n# Names (CloudFormation generates some of these; cli.sh fixes them).\n")
    for logical in t["Resources"]:
        if tpl.TYPES[t["Resources"][logical]["Type"]][1] is None:
            continue
        w('%s="%s"\n' % (var(logical), ctx.name(logical)))
    ctx.names = {lg: "${%s}" % var(lg) for lg in t["Resources"] if tpl.TYPES[t["Resources"][lg]["Type"]][1]}
    # A queue's URL comes from SQS when cli.sh creates or finds the queue.
    ctx.refs = {lg: "${U_%s}" % lg for lg, r in t["Resources"].items() if r["Type"] == "AWS::SQS::Queue"}
    for logical, res in t["Resources"].items():
        w("\n# %s (%s)\n" % (logical, res["Type"]))
        body = []
        conds = sorted(ctx.conditions_used(res.get("Properties", {})))
        if conds:
            body.append('case "%s" in\n' % ":".join("${COND_%s}" % c for c in conds))
            for i in range(2 ** len(conds)):
                values = [bool(i >> j & 1) for j in range(len(conds))]
                ctx.fixed = dict(zip(conds, values))
                block = emit_resource(ctx, logical, ctx.properties(logical))
                body.append("  %s)\n%s  ;;\n" % (":".join(str(v).lower() for v in values), indent(block, 4)))
            body.append("esac\n")
            ctx.fixed = {}
        else:
            body.append(emit_resource(ctx, logical, ctx.properties(logical)))
        text = "".join(body)
        if "Condition" in res:
            text = 'if [ "${COND_%s}" = true ]; then\n%sfi\n' % (res["Condition"], indent(text, 2))
        w('step "%s"\n' % logical)
        w(text)
    w("\n# Outputs.\n")
    for k, o in t["Outputs"].items():
        v = o["Value"]
        conds = sorted(ctx.conditions_used(v) | ({o["Condition"]} if "Condition" in o else set()))
        if not conds:
            w('echo "%s=%s"\n' % (k, ctx.resolve(v)))
            continue
        w('case "%s" in\n' % ":".join("${COND_%s}" % c for c in conds))
        for i in range(2 ** len(conds)):
            values = [bool(i >> j & 1) for j in range(len(conds))]
            ctx.fixed = dict(zip(conds, values))
            if "Condition" in o and not ctx.fixed[o["Condition"]]:
                continue
            w('  %s) echo "%s=%s" ;;\n' % (":".join(str(x).lower() for x in values), k, ctx.resolve(v)))
        w("  *) ;;\nesac\n")
        ctx.fixed = {}
    return "".join(lines)


def indent(text, n):
    """`text` indented by n, except heredoc bodies and terminators (which must stay put)."""
    pad = " " * n
    out, inside = [], False
    for line in text.splitlines(True):
        if inside:
            out.append(line)
            inside = line != "EOF\n"
            continue
        out.append(pad + line if line.strip() else line)
        inside = line.rstrip().endswith("<<EOF")
    return "".join(out)


HEADER = r"""#!/usr/bin/env bash
# GENERATED by deploy/aws/gen_cli.py from deploy/aws/pipeline.yaml: do not edit; change the
# template and run `.venv-aws/bin/python deploy/aws/gen_cli.py` (CI checks that this file is a fresh generation).
#
# The plain AWS CLI equivalent of pipeline.yaml, for people who do not use CloudFormation: the
# Kinesis stream, the failed-deliveries bucket, the log group, the IAM roles and policies, the
# Firehose delivery stream (and, with ENABLE_EVENT_BRIDGE=true, the bus, the rule, its
# dead-letter queue and the Direct PUT delivery stream). Safe to run again: what exists is left
# or brought to the template's settings (delivery streams are left as they are). See docs/aws.md.
#
#   ENDPOINT_URL=https://firehose.example.org/ ACCESS_KEY="$(cat key)" bash deploy/aws/cli.sh
#
# Region and credentials come from the usual AWS CLI chain (AWS_REGION, AWS_PROFILE, ...).
# The access key is written only to a private temporary file, never onto a command line.
set -euo pipefail

step() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'cli.sh: %s\n' "$*" >&2; exit 2; }
check_pattern() { [[ "${!1}" =~ $2 ]] || fail "$1 does not match $2${3:+ ($3)}"; }
# The longest a value may be where the template's pattern counts past 255, which bash's regex
# cannot do on every system (macOS, musl): gen_cli.py leaves such a count open in the pattern.
check_length() { local v=${!1}; [ "${#v}" -le "$2" ] || fail "$1 is longer than $2 characters"; }
check_values() { local n=$1 v; shift; for v in "$@"; do [ "${!n}" = "$v" ] && return 0; done; fail "$n must be one of: $*"; }
check_range() { [[ "${!1}" =~ ^[0-9]+$ ]] && [ "${!1}" -ge "$2" ] && [ "${!1}" -le "$3" ] || fail "$1 must be a number from $2 to $3"; }
# IAM changes take a few seconds to reach Firehose and EventBridge: retry what depends on them.
retry_iam() {
  local i
  for i in 1 2 3 4 5 6 7 8 9 10; do
    "$@" && return 0
    [ "$i" = 10 ] && return 1
    echo "retrying in 6 s (a new role may not have propagated yet)" >&2; sleep 6
  done
}
# aws events put-targets exits 0 even when it refused a target (FailedEntryCount > 0): fail then.
put_targets() {
  local out n
  out=$(retry_iam aws events put-targets "$@" --output json) || fail "aws events put-targets $* failed"
  n=$(printf '%s\n' "$out" | sed -n 's/^ *"FailedEntryCount": *\([0-9][0-9]*\).*/\1/p')
  [ "$n" = 0 ] || fail "aws events put-targets $* did not set every target (FailedEntryCount ${n:-missing}): $(printf '%s' "$out" | tr -s ' \n' ' ')"
}
# A managed policy holds at most 5 versions: drop the non-default ones, then add the new default.
replace_policy_version() {
  local v
  for v in $(aws iam list-policy-versions --policy-arn "$1" --query 'Versions[?!IsDefaultVersion].VersionId' --output text); do
    aws iam delete-policy-version --policy-arn "$1" --version-id "$v"
  done
  aws iam create-policy-version --policy-arn "$1" --policy-document "$2" --set-as-default >/dev/null
}


"""


ENV_BLOCK = r"""REGION=${AWS_REGION:-${AWS_DEFAULT_REGION:-$(aws configure get region || true)}}
[ -n "$REGION" ] || fail "set AWS_REGION"
export AWS_DEFAULT_REGION=$REGION
case "$REGION" in cn-*) PARTITION=aws-cn ;; us-gov-*) PARTITION=aws-us-gov ;; *) PARTITION=aws ;; esac
ACCOUNT_ID=$(aws sts get-caller-identity --query Account --output text)
umask 077
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
"""


def main():
    text = generate()
    if sys.argv[1:] == ["--check"]:
        with open(OUT) as f:
            if f.read() != text:
                print("deploy/aws/cli.sh is not a fresh generation: run .venv-aws/bin/python deploy/aws/gen_cli.py", file=sys.stderr)
                return 1
        print("deploy/aws/cli.sh matches pipeline.yaml")
        return 0
    with open(OUT, "w") as f:
        f.write(text)
    os.chmod(OUT, 0o755)
    return 0


if __name__ == "__main__":
    sys.exit(main())
