#!/usr/bin/env python3
"""Rehearse the AWS deploy against moto, and check pipeline.yaml against the programs.

    python3 scripts/aws-rehearsal.py --endpoint-url http://127.0.0.1:PORT   # .ci/aws.sh runs this
    python3 scripts/aws-rehearsal.py --static-only                          # no emulator needed

Static checks (template against source): the stream name default (the forwarder's clap
default), the EventBridge rule's Source and DetailType and its target's dead-letter queue and
retry policy, the endpoint's body limit
against what Firehose may POST with the template's buffering, the access-key pattern against the
endpoint's key list syntax, and the forwarder's and firehose-local's policies against the Kinesis
calls their source makes. cli.sh's parameter checks are run by bash (and its regexes count to no
more than the 255 every libc allows).

Against moto: check that a secret's ARN as Secrets Manager gives it passes AccessKeySecretArn's
pattern and cli.sh's check; create the stack in us-east-1 (CreateDeliveryStream=false, since moto's
CloudFormation cannot create delivery streams), create the delivery streams through the Firehose
API with the template's properties resolved against the stack, then run deploy/aws/cli.sh in
eu-west-1 with other names and options (on-demand stream, the default event bus), and read every
resource of both back, comparing it with the template. Exits 1 on any mismatch.
"""

import argparse
import atexit
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "deploy", "aws"))
import template as tpl  # noqa: E402

FIREHOSE_MAX_REQUEST_MIB = 64  # the spec: a body is at most 64 MiB before compression
FIREHOSE_MAX_RECORDS = 10_000  # records per request
RECORD_OVERHEAD = len('{"data":""},')
ACCOUNT = "123456789012"  # moto's default account
KEY = "rehearsal-access-key-0123456789abcdefghij"
PARTIAL_SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:sensehat-monitor/firehose-access-key"
FULL_SECRET_ARN = PARTIAL_SECRET_ARN + "-AbC123"

failures = []
passed = [0]


def check(ok, what):
    if ok:
        passed[0] += 1
    else:
        failures.append(what)


def same(expected, actual, what):
    """Every key of `expected` is in `actual` with an equal value (numbers compared as text)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return check(False, "%s: expected %r, got %r" % (what, expected, actual))
        for k, v in expected.items():
            same(v, actual.get(k), "%s.%s" % (what, k))
    elif isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return check(False, "%s: expected %r, got %r" % (what, expected, actual))
        for i, (e, a) in enumerate(zip(expected, actual)):
            same(e, a, "%s[%d]" % (what, i))
    else:
        check(str(expected) == str(actual), "%s: expected %r, got %r" % (what, expected, actual))


def read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def without_tests(src):
    """`src` up to its inline test module (`#[cfg(test)] mod tests {`). A `#[cfg(test)] mod
    tests;` declaration may stand anywhere, before code too, so it does not cut; the file it
    names is left out by rust_files."""
    return re.split(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", src)[0]


def rust_files(folder):
    """The Rust files anywhere under `folder` (src/forwarder/put/ too), but test modules in
    their own files (`tests.rs`), as paths relative to the project."""
    return [os.path.relpath(f, ROOT)
            for f in sorted(glob.glob(os.path.join(ROOT, folder, "**", "*.rs"), recursive=True))
            if not f.endswith("tests.rs")]


def service_calls(service, crate, paths, operations):
    """`service`'s API operations called (`client.op()` builders) in the Rust files at `paths`
    that use the SDK crate `crate`, as IAM actions (`kinesis:PutRecords`)."""
    snake = {re.sub(r"(?<!^)(?=[A-Z])", "_", op).lower(): op for op in operations}
    found = set()
    for p in paths:
        src = without_tests(read(p))
        if crate not in src:
            continue
        for m in re.finditer(r"\.\s*([a-z_]+)\(\)", src):
            if m.group(1) in snake:
                found.add(service + ":" + snake[m.group(1)])
    return found


def kinesis_calls(paths, operations):
    """Kinesis API operations called in the Rust files at `paths`."""
    return service_calls("kinesis", "aws_sdk_kinesis", paths, operations)


def policy_actions(ctx, logical):
    doc = ctx.properties(logical)["PolicyDocument"]
    return {a for s in tpl.normalize_policy(doc)["Statement"] for a in s["Action"]}


def static_checks(t):
    import botocore.session

    p = t["Parameters"]
    # 1. The stream name: the forwarder's clap default (`--stream-name`, in its config module)
    #    is the template's default, so that a forwarder started without one finds the stream.
    cfg_src = read("src/forwarder/config.rs")
    field = re.search(r"#\[arg\(([^\]]*)\)\]\s*pub stream_name: String", cfg_src)
    check(field is not None, "src/forwarder/config.rs: no stream_name option found")
    default = re.search(r"default_value\s*=\s*([A-Z_]+|\"[^\"]+\")", field.group(1)) if field else None
    check(default is not None, "kinesis-forwarder --stream-name has no default")
    if default:
        value = default.group(1)
        if not value.startswith('"'):
            const = re.search(r"pub const %s: &str = (\"[^\"]+\");" % value, cfg_src)
            check(const is not None, "src/forwarder/config.rs: %s not found" % value)
            value = const.group(1) if const else '""'
        value = value.strip('"')
        check(value == p["StreamName"]["Default"],
              "forwarder --stream-name default %r != template %r" % (value, p["StreamName"]["Default"]))
        print("stream name: forwarder default %r = template default" % value)

    # 2. Body size: the endpoint must accept the largest POST Firehose can make with this
    #    template (413 loses the batch): Firehose's 64 MiB, and the largest buffer base64-encoded.
    cfg = read("src/firehose/config.rs")
    mib = int(re.search(r"pub const DEFAULT_MAX_BODY_MIB: u64 = (\d+);", cfg).group(1))
    largest = p["BufferSizeMiB"]["MaxValue"] * 4 / 3 + (FIREHOSE_MAX_RECORDS * RECORD_OVERHEAD + 1024) / 2**20
    check(mib >= FIREHOSE_MAX_REQUEST_MIB, "endpoint --max-body-mib default %d < Firehose's %d" % (mib, FIREHOSE_MAX_REQUEST_MIB))
    check(mib >= largest, "endpoint --max-body-mib default %d < largest body %.1f MiB" % (mib, largest))
    print("body size: endpoint accepts %d MiB; Firehose sends at most %d, this template at most %.1f"
          % (mib, FIREHOSE_MAX_REQUEST_MIB, largest))

    # 3. gzip: the template's encoding is one the endpoint decodes.
    # The endpoint's code, wherever in src/firehose/ it lives, without its test files (a
    # module's `#[cfg(test)] mod tests;` line may stand before its code, so files are skipped by
    # name rather than cut at that line).
    endpoint = "".join(read(f) for f in rust_files("src/firehose"))
    check('e == "gzip"' in endpoint, "src/firehose/ does not accept Content-Encoding: gzip")
    for lg in ("DeliveryStream", "EventsDeliveryStream"):
        enc = t["Resources"][lg]["Properties"]["HttpEndpointDestinationConfiguration"]["RequestConfiguration"]
        check(enc["ContentEncoding"] == "GZIP", lg + " ContentEncoding is not GZIP")

    # 3b. Where failed batches land: the S3 Prefix failed/<delivery stream>/ (no
    #     ErrorOutputPrefix), then the folder Firehose adds for HTTP endpoint failures, which
    #     firehose-local's --error-dir imitates; docs/aws.md and the bucket's output say so.
    folder = re.search(r'"(http-endpoint-failed)/\{', read("src/firehose_local/delivery.rs"))
    check(folder is not None, "src/firehose_local/delivery.rs: no http-endpoint-failed/ folder")
    layout = "failed/<delivery stream>/%s/YYYY/MM/DD/HH/" % (folder and folder.group(1))
    for lg, name in (("DeliveryStream", "${DeliveryStreamName}"), ("EventsDeliveryStream", "${DeliveryStreamName}-events")):
        s3 = t["Resources"][lg]["Properties"]["HttpEndpointDestinationConfiguration"]["S3Configuration"]
        check(s3.get("Prefix") == {"Fn::Sub": "failed/%s/" % name} and "ErrorOutputPrefix" not in s3,
              "%s's S3 Prefix is not failed/%s/ alone" % (lg, name))
    check(layout in read("docs/aws.md"), "docs/aws.md does not give the failed batches' layout " + layout)
    check(layout in " ".join(t["Outputs"]["FailedDeliveriesBucket"]["Description"].split()),
          "the FailedDeliveriesBucket output does not give " + layout)

    # 4. The access key: no comma (the endpoint splits FIREHOSE_ACCESS_KEY on commas), at most
    #    Firehose's 4096 characters.
    pattern = p["AccessKey"]["AllowedPattern"]
    check("split(',')" in cfg, "src/firehose/config.rs no longer splits keys on commas")
    check(re.fullmatch(pattern, KEY) is not None, "AccessKey pattern refuses a plain key")
    check(re.fullmatch(pattern, KEY + ",other") is None, "AccessKey pattern allows a comma")
    check(re.fullmatch(pattern, "a" * 4097) is None, "AccessKey pattern allows over 4096 characters")

    # 4b. The secret: only a full ARN, with the six characters Secrets Manager appends to the
    #     name. The role's GetSecretValue names this ARN verbatim and IAM compares it with the
    #     secret's full ARN, so a partial one would deny Firehose the key.
    pattern = p["AccessKeySecretArn"]["AllowedPattern"]
    check(re.fullmatch(pattern, PARTIAL_SECRET_ARN) is None, "AccessKeySecretArn pattern allows a partial ARN")
    check(re.fullmatch(pattern, FULL_SECRET_ARN) is not None, "AccessKeySecretArn pattern refuses a full ARN")
    check(re.fullmatch(pattern, "") is not None, "AccessKeySecretArn pattern refuses empty (no secret)")

    # 4c. Who may assume the roles, for this account only, by the condition each service
    #     documents sending: Firehose the account id as sts:ExternalId, EventBridge
    #     aws:SourceAccount. A key the service does not send fails the AssumeRole.
    for lg, service, key in (("FirehoseRole", "firehose.amazonaws.com", "sts:ExternalId"),
                             ("EventsRole", "events.amazonaws.com", "aws:SourceAccount")):
        trust = t["Resources"][lg]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        check(len(trust) == 1 and trust[0]["Principal"] == {"Service": service}
              and trust[0]["Condition"] == {"StringEquals": {key: {"Ref": "AWS::AccountId"}}},
              "%s's trust is not %s with %s equal to the account" % (lg, service, key))

    # 5. Least privilege: the policies grant exactly the Kinesis calls the programs make.
    ops = botocore.session.get_session().get_service_model("kinesis").operation_names
    ctx = tpl.Context(t, tpl.default_parameters(t) | {"EndpointUrl": "https://x/"},
                      {"AWS::Partition": "aws", "AWS::Region": "us-east-1", "AWS::AccountId": ACCOUNT})
    forwarder = kinesis_calls(rust_files("src/forwarder"), ops)
    reader = kinesis_calls(rust_files("src/firehose_local"), ops)
    check(forwarder == policy_actions(ctx, "ForwarderPolicy"),
          "ForwarderPolicy %s != forwarder's calls %s" % (sorted(policy_actions(ctx, "ForwarderPolicy")), sorted(forwarder)))
    check(reader == policy_actions(ctx, "ReaderPolicy"),
          "ReaderPolicy %s != firehose-local's calls %s" % (sorted(policy_actions(ctx, "ReaderPolicy")), sorted(reader)))
    print("policies: kinesis-forwarder calls %s; firehose-local calls %s" % (sorted(forwarder), sorted(reader)))

    # 6. EventBridge: the rule matches exactly the Source and DetailType the forwarder puts, and
    #    the forwarder's events policy grants exactly the EventBridge calls it makes (PutEvents,
    #    and DescribeEventBus for /readyz).
    rule = t["Resources"]["ForwarderEventsRule"]["Properties"]["EventPattern"]
    eb = without_tests(read("src/forwarder/batch.rs"))
    for name, key in (("SOURCE", "source"), ("DETAIL_TYPE", "detail-type")):
        m = re.search(r'pub const %s: &str = "([^"]+)";' % name, eb)
        check(m is not None, "src/forwarder/batch.rs: no %s" % name)
        check(m is not None and rule[key] == [m.group(1)],
              "template rule %s %r != forwarder %s %r" % (key, rule[key], name, m and m.group(1)))
    eb_ops = botocore.session.get_session().get_service_model("events").operation_names
    eb_calls = service_calls("events", "aws_sdk_eventbridge", rust_files("src/forwarder"), eb_ops)
    check("events:PutEvents" in eb_calls, "no PutEvents call found in src/forwarder")
    check(policy_actions(ctx, "ForwarderEventsPolicy") == eb_calls,
          "ForwarderEventsPolicy %s != the forwarder's EventBridge calls %s"
          % (sorted(policy_actions(ctx, "ForwarderEventsPolicy")), sorted(eb_calls)))
    print("eventbridge: rule matches the forwarder's Source %r and DetailType %r; it calls %s"
          % (rule["source"][0], rule["detail-type"][0], sorted(eb_calls)))

    # 7. Undeliverable events are kept: the rule's target has the dead-letter queue and the retry
    #    policy, and the queue takes messages from EventBridge for this rule only, whenever the
    #    rule exists.
    res = t["Resources"]
    target = res["ForwarderEventsRule"]["Properties"]["Targets"][0]
    check(target.get("DeadLetterConfig") == {"Arn": {"Fn::GetAtt": ["EventsDeadLetterQueue", "Arn"]}},
          "the rule's target has no DeadLetterConfig on EventsDeadLetterQueue")
    check(target.get("RetryPolicy") == {"MaximumEventAgeInSeconds": 86400, "MaximumRetryAttempts": 185},
          "the rule's target has no RetryPolicy of 24 h and 185 attempts")
    stmt = res["EventsDeadLetterQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    check(len(stmt) == 1 and stmt[0]["Principal"] == {"Service": "events.amazonaws.com"}
          and stmt[0]["Action"] == "sqs:SendMessage"
          and stmt[0]["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["ForwarderEventsRule", "Arn"]}}},
          "EventsDeadLetterQueuePolicy does not limit SendMessage to EventBridge for this rule")
    conds = {res[lg].get("Condition") for lg in ("ForwarderEventsRule", "EventsDeadLetterQueue", "EventsDeadLetterQueuePolicy")}
    check(len(conds) == 1, "the rule, its queue and the queue's policy are not made under one condition: %s" % conds)
    print("eventbridge: undeliverable events go to EventsDeadLetterQueue after 24 h or 185 attempts")


def put_targets_guard():
    """cli.sh's put_targets stops the script when PutTargets refuses a target: the AWS CLI exits 0
    then, with FailedEntryCount > 0. moto's PutTargets never refuses one (it answers
    FailedEntryCount 0, or an error), so here `aws` is a shell function answering as the CLI
    prints EventBridge's answer, and the helpers are cli.sh's own."""
    src = read("deploy/aws/cli.sh")
    helpers = src[src.index("step() {"):src.index("\n# Parameters")]
    check("aws events put-targets" not in src[src.index("\n# Parameters"):],
          "cli.sh calls aws events put-targets other than through put_targets")
    answers = {
        0: '{\n    "FailedEntryCount": 0,\n    "FailedEntries": []\n}',
        1: '{\n    "FailedEntryCount": 1,\n    "FailedEntries": [\n        {\n            "TargetId": "firehose",\n'
           '            "ErrorCode": "ConcurrentModificationException",\n            "ErrorMessage": "rehearsal"\n        }\n    ]\n}',
    }
    for failed, answer in answers.items():
        script = "set -euo pipefail\n%s\naws() { cat <<'JSON'\n%s\nJSON\n}\n" \
                 "put_targets --rule r --event-bus-name b --targets file:///dev/null\necho after\n" % (helpers, answer)
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
        if failed:
            check(r.returncode == 2 and "after" not in r.stdout and "FailedEntryCount 1" in r.stderr
                  and "ConcurrentModificationException" in r.stderr,
                  "cli.sh put_targets went on after a refused target (%d): %s" % (r.returncode, r.stderr[-300:]))
        else:
            check(r.returncode == 0 and r.stdout == "after\n",
                  "cli.sh put_targets failed on FailedEntryCount 0 (%d): %s" % (r.returncode, r.stderr[-300:]))
    print("cli.sh put_targets: stops on FailedEntryCount 1, goes on at 0")


def run_cli_parameters(env):
    """cli.sh's helpers and parameter checks, run by bash with `env`; it prints "checked" after."""
    src = read("deploy/aws/cli.sh")
    params = src[src.index("step() {"):src.index("\n# Rules.")]
    base = {"PATH": os.environ["PATH"], "ENDPOINT_URL": "https://firehose.example.org/", "ACCESS_KEY": KEY}
    return subprocess.run(["bash", "-c", params + "\necho checked\n"], env=base | env,
                          capture_output=True, text=True, timeout=60)


def cli_parameter_checks():
    """cli.sh's parameter checks, run by bash. Each regex it hands to bash's =~ counts to at
    most 255 (RE_DUP_MAX): macOS's and musl's regcomp refuse more, and every value, the default
    too, then "does not match", which glibc here would never show. Longer limits are checked as
    lengths: the defaults and a 4096-character key pass, one character more or a comma fails."""
    src = read("deploy/aws/cli.sh")
    regexes = re.findall(r"^check_pattern \S+ '([^']*)'", src, re.M)
    regexes += [r for r in re.findall(r"=~ (\S+)", src) if not r.startswith("$")]
    check(len(regexes) >= 6, "found only %d regexes in cli.sh" % len(regexes))
    for r in regexes:
        counts = [int(n) for m in re.finditer(r"\{(\d+)(?:,(\d*))?\}", r) for n in m.groups() if n]
        check(all(n <= 255 for n in counts), "cli.sh hands bash a count above 255 (RE_DUP_MAX): %s" % r)
    cases = [
        ({}, None, "the defaults"),
        ({"ACCESS_KEY": "k" * 4096}, None, "a 4096-character key"),
        ({"ACCESS_KEY": "k" * 4097}, "ACCESS_KEY is longer than 4096 characters", "a 4097-character key"),
        ({"ACCESS_KEY": KEY + ",other"}, "ACCESS_KEY does not match", "a comma in the key"),
        ({"ACCESS_KEY": "k" * 31}, "ACCESS_KEY does not match", "a 31-character key"),
        ({"ENDPOINT_NAME": "n" * 256, "EVENT_BUS_NAME": "b" * 256}, None, "256-character names"),
        ({"ENDPOINT_NAME": "n" * 257}, "ENDPOINT_NAME is longer than 256 characters", "a 257-character endpoint name"),
        ({"EVENT_BUS_NAME": "b" * 257}, "EVENT_BUS_NAME is longer than 256 characters", "a 257-character bus name"),
        ({"EVENT_BUS_NAME": "bus/1"}, "EVENT_BUS_NAME does not match", "a slash in the bus name"),
        ({"ACCESS_KEY": "", "ACCESS_KEY_SECRET_ARN": FULL_SECRET_ARN}, None, "a full secret ARN"),
        ({"ACCESS_KEY": "", "ACCESS_KEY_SECRET_ARN": PARTIAL_SECRET_ARN}, "full ARN", "a partial secret ARN"),
    ]
    for env, error, what in cases:
        r = run_cli_parameters(env)
        if error is None:
            check(r.returncode == 0 and r.stdout == "checked\n",
                  "cli.sh refused %s (%d): %s" % (what, r.returncode, r.stderr[-300:]))
        else:
            check(r.returncode == 2 and error in r.stderr and "checked" not in r.stdout,
                  "cli.sh accepted %s (%d): %s" % (what, r.returncode, r.stderr[-300:]))
    print("cli.sh parameters: %d regexes, every count at most 255; %d values checked by bash" % (len(regexes), len(cases)))


# ---- reading back -----------------------------------------------------------------------------


# What moto 5.2.5's CloudFormation accepts but does not apply (it creates the resource without
# these settings, or not at all). In the stack run a mismatch here is reported, not failed; the
# cli.sh run makes the same settings through the service APIs and checks them all.
MOTO_CFN_GAPS = {
    "Stream.EncryptionType", "Stream.KeyId",
    "FailedDeliveriesBucket.encryption", "FailedDeliveriesBucket.public-access",
    "FailedDeliveriesBucket.ownership", "FailedDeliveriesBucket.lifecycle",
    "FailedDeliveriesBucketPolicy", "DestinationLogStream", "BackupLogStream",
    "EventsDeadLetterQueuePolicy",  # moto has no AWS::SQS::QueuePolicy
}
gaps = []


def verify(ctx, c, label):
    """Compare every resource the template creates (in ctx's view) with what moto holds."""
    t = ctx.t
    for lg, res in t["Resources"].items():
        if label == "stack":
            before = len(failures)
            try:
                verify_one(ctx, c, label, lg, res)
            except Exception as e:  # noqa: BLE001 - a missing resource reads as an error
                failures.append("%s %s: %s" % (label, lg, e))
            kept = []
            for f in failures[before:]:
                key = f.split(" ", 2)[1].rstrip(":")
                if any(key == g or key.startswith((g + ".", g + "[")) for g in MOTO_CFN_GAPS):
                    gaps.append(key)
                else:
                    kept.append(f)
            failures[before:] = kept
        else:
            verify_one(ctx, c, label, lg, res)


def get(call, **kw):
    """A read's answer, or None when the service holds no such configuration."""
    from botocore.exceptions import ClientError

    try:
        return call(**kw)
    except ClientError as e:
        if e.response["Error"]["Code"].startswith(("NoSuch", "ServerSideEncryptionConfigurationNotFound", "OwnershipControlsNotFound")):
            return None
        raise


def s3_encryption_rules(rules):
    """CloudFormation's ServerSideEncryptionByDefault is the API's ApplyServerSideEncryptionByDefault."""
    return [{("ApplyServerSideEncryptionByDefault" if k == "ServerSideEncryptionByDefault" else k): v
             for k, v in r.items()} for r in rules]


def policy_doc(doc):
    """A policy document as a dict. moto's CloudFormation stores inline role policies as Python's
    repr of the dict rather than JSON; read that too (the content is what is compared)."""
    import ast

    if isinstance(doc, str):
        try:
            return json.loads(doc)
        except json.JSONDecodeError:
            return ast.literal_eval(doc)
    return doc


def verify_one(ctx, c, label, lg, res):
    if not ctx.exists(lg):
        return
    typ = res["Type"]
    props = ctx.properties(lg)
    what = "%s %s" % (label, lg)
    if typ == "AWS::Kinesis::Stream":
        s = c["kinesis"].describe_stream_summary(StreamName=props["Name"])["StreamDescriptionSummary"]
        same({"StreamName": props["Name"], "StreamARN": ctx.getatt(lg, "Arn"),
              "EncryptionType": props["StreamEncryption"]["EncryptionType"],
              "KeyId": props["StreamEncryption"]["KeyId"],
              "RetentionPeriodHours": props["RetentionPeriodHours"],
              "StreamModeDetails": props["StreamModeDetails"]}, s, what)
        if "ShardCount" in props:
            same(props["ShardCount"], s.get("OpenShardCount"), what + ".OpenShardCount")
    elif typ == "AWS::S3::Bucket":
        s3, b = c["s3"], ctx.name(lg)
        got = get(s3.get_bucket_encryption, Bucket=b)
        same(s3_encryption_rules(props["BucketEncryption"]["ServerSideEncryptionConfiguration"]),
             got and got["ServerSideEncryptionConfiguration"]["Rules"], what + ".encryption")
        got = get(s3.get_public_access_block, Bucket=b)
        same(props["PublicAccessBlockConfiguration"], got and got["PublicAccessBlockConfiguration"], what + ".public-access")
        got = get(s3.get_bucket_ownership_controls, Bucket=b)
        same(props["OwnershipControls"]["Rules"], got and got["OwnershipControls"]["Rules"], what + ".ownership")
        got = get(s3.get_bucket_lifecycle_configuration, Bucket=b)
        rules = got and got["Rules"]
        expected = [{"ID": r["Id"], "Status": r["Status"], "Expiration": {"Days": r["ExpirationInDays"]},
                     "AbortIncompleteMultipartUpload": r["AbortIncompleteMultipartUpload"]}
                    for r in props["LifecycleConfiguration"]["Rules"]]
        same(expected, rules, what + ".lifecycle")
    elif typ == "AWS::S3::BucketPolicy":
        got = get(c["s3"].get_bucket_policy, Bucket=props["Bucket"])
        same(tpl.normalize_policy(props["PolicyDocument"]), got and tpl.normalize_policy(got["Policy"]), what)
    elif typ == "AWS::Logs::LogGroup":
        groups = c["logs"].describe_log_groups(logGroupNamePrefix=props["LogGroupName"])["logGroups"]
        g = [x for x in groups if x["logGroupName"] == props["LogGroupName"]]
        check(len(g) == 1, what + " missing")
        if g:
            same(props["RetentionInDays"], g[0].get("retentionInDays"), what + ".retention")
    elif typ == "AWS::Logs::LogStream":
        ss = c["logs"].describe_log_streams(logGroupName=props["LogGroupName"],
                                            logStreamNamePrefix=props["LogStreamName"])["logStreams"]
        check(any(s["logStreamName"] == props["LogStreamName"] for s in ss), what + " missing")
    elif typ == "AWS::IAM::Role":
        iam, n = c["iam"], ctx.name(lg)
        role = iam.get_role(RoleName=n)["Role"]
        same(ctx.getatt(lg, "Arn"), role["Arn"], what + ".Arn")
        same(tpl.normalize_policy(props["AssumeRolePolicyDocument"]),
             tpl.normalize_policy(policy_doc(role["AssumeRolePolicyDocument"])), what + ".trust")
        names = sorted(iam.list_role_policies(RoleName=n)["PolicyNames"])
        same(sorted(p["PolicyName"] for p in props["Policies"]), names, what + ".policies")
        for p in props["Policies"]:
            doc = policy_doc(iam.get_role_policy(RoleName=n, PolicyName=p["PolicyName"])["PolicyDocument"])
            same(tpl.normalize_policy(p["PolicyDocument"]), tpl.normalize_policy(doc), what + "." + p["PolicyName"])
    elif typ == "AWS::IAM::ManagedPolicy":
        iam, arn = c["iam"], ctx.ref(lg)
        pol = iam.get_policy(PolicyArn=arn)["Policy"]
        doc = iam.get_policy_version(PolicyArn=arn, VersionId=pol["DefaultVersionId"])["PolicyVersion"]["Document"]
        same(tpl.normalize_policy(props["PolicyDocument"]), tpl.normalize_policy(policy_doc(doc)), what)
    elif typ == "AWS::KinesisFirehose::DeliveryStream":
        d = c["firehose"].describe_delivery_stream(DeliveryStreamName=props["DeliveryStreamName"])["DeliveryStreamDescription"]
        same({"DeliveryStreamType": props["DeliveryStreamType"], "DeliveryStreamARN": ctx.getatt(lg, "Arn")}, d, what)
        if "KinesisStreamSourceConfiguration" in props:
            same(props["KinesisStreamSourceConfiguration"], d["Source"]["KinesisStreamSourceDescription"], what + ".Source")
        want = dict(props["HttpEndpointDestinationConfiguration"])
        s3 = want.pop("S3Configuration")
        ep = dict(want.pop("EndpointConfiguration"))
        want["EndpointConfiguration"] = {"Url": ep["Url"], "Name": ep["Name"]}
        have = d["Destinations"][0]["HttpEndpointDestinationDescription"]
        same(want, have, what + ".HttpEndpoint")
        same(s3, have.get("S3DestinationDescription") or have.get("S3Configuration"), what + ".S3")
    elif typ == "AWS::Events::EventBus":
        c["events"].describe_event_bus(Name=props["Name"])
        passed[0] += 1
    elif typ == "AWS::Events::Rule":
        ev = c["events"]
        r = ev.describe_rule(Name=props["Name"], EventBusName=props["EventBusName"])
        same(props["EventPattern"], json.loads(r["EventPattern"]), what + ".EventPattern")
        same(props["State"], r["State"], what + ".State")
        targets = ev.list_targets_by_rule(Rule=props["Name"], EventBusName=props["EventBusName"])["Targets"]
        same(props["Targets"], targets, what + ".Targets")
        # Spelled out as well: an event the target cannot take goes to the queue, not away.
        # (moto stores both settings but never delivers to Firehose, so it never uses them.)
        queue = ctx.getatt("EventsDeadLetterQueue", "Arn")
        for tg in targets:
            same({"DeadLetterConfig": {"Arn": queue},
                  "RetryPolicy": {"MaximumEventAgeInSeconds": 86400, "MaximumRetryAttempts": 185}},
                 tg, "%s.Targets[%s]" % (what, tg["Id"]))
    elif typ == "AWS::SQS::Queue":
        sqs = c["sqs"]
        url = sqs.get_queue_url(QueueName=ctx.name(lg))["QueueUrl"]
        # moto's host in the URL is the one it was asked on; the stack's is AWS's.
        same(urlsplit(ctx.ref(lg)).path, urlsplit(url).path, what + ".QueueUrl")
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        want = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in props.items() if k != "QueueName"}
        same(want | {"QueueArn": ctx.getatt(lg, "Arn")}, attrs, what)
    elif typ == "AWS::SQS::QueuePolicy":
        for q in props["Queues"]:
            got = c["sqs"].get_queue_attributes(QueueUrl=q, AttributeNames=["Policy"]).get("Attributes", {}).get("Policy")
            same(tpl.normalize_policy(props["PolicyDocument"]), got and tpl.normalize_policy(got), what)
    else:
        check(False, "%s: no read-back for %s" % (what, typ))


def clients(endpoint, region):
    import boto3

    s = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=region)
    return {n: s.client(n, endpoint_url=endpoint) for n in
            ("cloudformation", "kinesis", "s3", "logs", "iam", "firehose", "events", "sts", "sqs", "secretsmanager")}


def rehearse_stack(t, endpoint):
    region = "us-east-1"
    c = clients(endpoint, region)
    params = tpl.default_parameters(t) | {
        "EndpointUrl": "https://firehose.example.org/",
        "AccessKey": KEY,
        "CreateDeliveryStream": "false",
        "EnableEventBridge": "true",
    }
    name = "sensehat-monitor-rehearsal"
    cf = c["cloudformation"]
    if any(s["StackName"] == name for s in cf.list_stacks(StackStatusFilter=["CREATE_COMPLETE", "UPDATE_COMPLETE"])["StackSummaries"]):
        cf.delete_stack(StackName=name)
    cf.create_stack(StackName=name, TemplateBody=read("deploy/aws/pipeline.yaml"),
                    Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
                    Capabilities=["CAPABILITY_IAM"])
    cf.get_waiter("stack_create_complete").wait(StackName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    resources = cf.describe_stack_resources(StackName=name)["StackResources"]
    # moto lists some resources (bucket policy, log streams, ...) without their logical id;
    # those are checked below by reading the service's state, like every other.
    created = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources if "LogicalResourceId" in r and "PhysicalResourceId" in r}
    pseudo = {"AWS::Partition": "aws", "AWS::Region": region, "AWS::AccountId": ACCOUNT}
    ctx = tpl.Context(t, params, pseudo)
    expected = {lg for lg in t["Resources"] if ctx.exists(lg)}
    check(set(created) <= expected, "stack resources %s not in the template" % sorted(set(created) - expected))
    unlisted = sorted(expected - set(created))
    if unlisted:
        print("moto's stack does not list %s; read back from the services instead" % ", ".join(unlisted))
    # Generated names, as the stack chose them (a managed policy's physical id is its ARN).
    # A queue's physical id is its URL, which is also its Ref.
    names, refs = {}, {}
    for lg, phys in created.items():
        typ = t["Resources"][lg]["Type"]
        prop = tpl.TYPES[typ][0]
        if (prop is None or prop not in t["Resources"][lg].get("Properties", {})) and tpl.TYPES[typ][1] is not None:
            names[lg] = phys.rsplit("/", 1)[-1] if typ in ("AWS::IAM::ManagedPolicy", "AWS::SQS::Queue") else phys
        if typ == "AWS::SQS::Queue":
            refs[lg] = phys
    # Now as if CreateDeliveryStream were true: the delivery streams, through the Firehose API.
    ctx = tpl.Context(t, params, pseudo, names=names, fixed={"MakeDeliveryStream": True}, refs=refs)
    for lg, res in t["Resources"].items():
        if res["Type"] == "AWS::KinesisFirehose::DeliveryStream" and ctx.exists(lg):
            props = ctx.properties(lg)
            try:
                c["firehose"].delete_delivery_stream(DeliveryStreamName=props["DeliveryStreamName"])
            except c["firehose"].exceptions.ResourceNotFoundException:
                pass
            c["firehose"].create_delivery_stream(**props)
    outputs = {o["OutputKey"]: o["OutputValue"] for o in cf.describe_stacks(StackName=name)["Stacks"][0].get("Outputs", [])}
    for k, o in t["Outputs"].items():
        if "Condition" in o and not ctx.condition(o["Condition"]):
            continue
        same(ctx.resolve(o["Value"]), outputs.get(k), "stack output " + k)
    verify(ctx, c, "stack")
    return params


def rehearse_cli(t, endpoint, twice):
    region = "eu-west-1"
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_REGION=region, AWS_DEFAULT_REGION=region,
               AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_PAGER="")
    params = tpl.default_parameters(t) | {
        "EndpointUrl": "https://firehose.example.org:443/firehose",
        "AccessKey": KEY,
        "StreamName": "realm-cli",
        "StreamMode": "ON_DEMAND",
        "DeliveryStreamName": "rehearsal-cli",
        "EnableEventBridge": "true",
        "EventBusName": "default",
        "BufferIntervalSeconds": "30",
    }
    import gen_cli

    # The AWS CLI v1 sends sqs commands to its own endpoint for most regions whatever
    # AWS_ENDPOINT_URL says (awscli/customizations/overridesslcommonname.py); only --endpoint-url
    # overrides that. So cli.sh's `aws` here is a wrapper that adds it to sqs commands.
    wrap = tempfile.mkdtemp(prefix="aws-rehearsal-")
    with open(os.path.join(wrap, "aws"), "w") as f:
        f.write('#!/bin/sh\nif [ "$1" = sqs ]; then shift; exec "%s" sqs --endpoint-url "$AWS_ENDPOINT_URL" "$@"; fi\n'
                'exec "%s" "$@"\n' % (shutil.which("aws"), shutil.which("aws")))
    os.chmod(os.path.join(wrap, "aws"), 0o755)
    atexit.register(shutil.rmtree, wrap, True)
    env["PATH"] = wrap + os.pathsep + env["PATH"]
    for k, v in params.items():
        if k not in gen_cli.FIXED_PARAMS:
            env[gen_cli.env_name(k)] = v
    # The template's constraints hold in cli.sh before any AWS call: no key, a plain-HTTP URL,
    # another port.
    for bad, why in (({"ACCESS_KEY": ""}, "no access key"),
                     ({"ENDPOINT_URL": "http://firehose.example.org/"}, "http URL"),
                     ({"ENDPOINT_URL": "https://firehose.example.org:8443/"}, "port 8443")):
        r = subprocess.run(["bash", os.path.join(ROOT, "deploy/aws/cli.sh")], env=env | bad,
                           capture_output=True, text=True, timeout=60)
        check(r.returncode == 2 and "==>" not in r.stderr, "cli.sh accepted %s (%d): %s" % (why, r.returncode, r.stderr[-300:]))
    # With --twice, a second run proves cli.sh is safe to run again (each aws call costs a
    # Python start, so CI runs it once).
    for attempt in ((1, 2) if twice else (1,)):
        r = subprocess.run(["bash", os.path.join(ROOT, "deploy/aws/cli.sh")], env=env,
                           capture_output=True, text=True, timeout=300)
        check(r.returncode == 0, "cli.sh run %d failed (%d): %s" % (attempt, r.returncode, r.stderr[-2000:]))
        if r.returncode != 0:
            return
    pseudo = {"AWS::Partition": "aws", "AWS::Region": region, "AWS::AccountId": ACCOUNT}
    ctx = tpl.Context(t, params | gen_cli.FIXED_PARAMS, pseudo)
    c = clients(endpoint, region)
    # A queue's URL, as SQS gives it, is its Ref (and what cli.sh must print).
    ctx.refs = {lg: c["sqs"].get_queue_url(QueueName=ctx.name(lg))["QueueUrl"]
                for lg, res in t["Resources"].items() if res["Type"] == "AWS::SQS::Queue" and ctx.exists(lg)}
    printed = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    for k, o in t["Outputs"].items():
        if "Condition" in o and not ctx.condition(o["Condition"]):
            continue
        same(ctx.resolve(o["Value"]), printed.get(k), "cli.sh output " + k)
    verify(ctx, c, "cli.sh")


def rehearse_secret_arn(t, endpoint):
    """A secret's ARN as Secrets Manager (here moto) gives it, read as docs/aws.md says, passes
    the template's AccessKeySecretArn pattern and cli.sh's check."""
    sm = clients(endpoint, "eu-west-1")["secretsmanager"]
    name = "sensehat-monitor-rehearsal/firehose-access-key"
    try:
        sm.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
    except sm.exceptions.ResourceNotFoundException:
        pass
    sm.create_secret(Name=name, SecretString=json.dumps({"api_key": KEY}))
    arn = sm.describe_secret(SecretId=name)["ARN"]
    check(re.fullmatch(t["Parameters"]["AccessKeySecretArn"]["AllowedPattern"], arn) is not None,
          "AccessKeySecretArn pattern refuses Secrets Manager's ARN %s" % arn)
    r = run_cli_parameters({"ACCESS_KEY": "", "ACCESS_KEY_SECRET_ARN": arn})
    check(r.returncode == 0 and r.stdout == "checked\n", "cli.sh refused Secrets Manager's ARN %s: %s" % (arn, r.stderr[-300:]))
    sm.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
    print("secret ARN: %s passes the template's pattern and cli.sh" % arn)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint-url")
    ap.add_argument("--static-only", action="store_true")
    ap.add_argument("--twice", action="store_true", help="run cli.sh twice (it must be safe to repeat)")
    a = ap.parse_args()
    start = time.monotonic()
    t = tpl.load()
    static_checks(t)
    put_targets_guard()
    cli_parameter_checks()
    if not a.static_only:
        rehearse_secret_arn(t, a.endpoint_url)
        t0 = time.monotonic()
        rehearse_stack(t, a.endpoint_url)
        print("stack rehearsal: %.0f s" % (time.monotonic() - t0))
        t0 = time.monotonic()
        rehearse_cli(t, a.endpoint_url, a.twice)
        print("cli.sh rehearsal: %.0f s" % (time.monotonic() - t0))
    if gaps:
        print("not applied by moto's CloudFormation (checked in the cli.sh run): " + ", ".join(sorted(set(gaps))))
    for f in failures:
        print("MISMATCH: " + f)
    print("rehearsal took %.0f s" % (time.monotonic() - start))
    print("rehearsal: %d passed, %d failed" % (passed[0], len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
