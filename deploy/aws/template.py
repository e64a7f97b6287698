"""Read deploy/aws/pipeline.yaml and resolve its intrinsic functions, for the two programs that
derive things from it: gen_cli.py (the AWS CLI script, with shell variables for values) and the
rehearsal (the Firehose API calls moto's CloudFormation cannot make, and the expected state it
reads back). Only what pipeline.yaml uses is supported; anything else raises, so a template
change that these programs do not understand fails loudly instead of drifting.
"""

import json
import os
import re

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATE = os.path.join(HERE, "pipeline.yaml")

NO_VALUE = object()


class _Loader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags (!Ref, !Sub, ...) as their long forms."""


def _tag(name):
    def construct(loader, node):
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
            if name == "Fn::GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        key = "Ref" if name == "Ref" else name
        return {key: value}

    return construct


for _t in ["Ref", "Condition"]:
    _Loader.add_constructor("!" + _t, _tag(_t))
for _t in ["Sub", "GetAtt", "If", "Equals", "Not", "And", "Or", "Join", "Select"]:
    _Loader.add_constructor("!" + _t, _tag("Fn::" + _t))


def load(path=TEMPLATE):
    with open(path) as f:
        return yaml.load(f, Loader=_Loader)


def default_parameters(template):
    return {k: str(v["Default"]) for k, v in template["Parameters"].items() if "Default" in v}


# How each resource type is named and what its Ref and Arn are, given its name. `ctx.pseudo`
# gives AWS::Partition, AWS::Region and AWS::AccountId (values or shell variables).
def _arn(ctx, service, resource, region=True, account=True):
    p = ctx.pseudo
    return "arn:{}:{}:{}:{}:{}".format(
        p["AWS::Partition"],
        service,
        p["AWS::Region"] if region else "",
        p["AWS::AccountId"] if account else "",
        resource,
    )


def _queue_url(name):
    raise ValueError("the URL of queue %s comes from SQS: give it in Context.refs" % name)


TYPES = {
    "AWS::Kinesis::Stream": ("Name", lambda c, n: n, lambda c, n: _arn(c, "kinesis", "stream/" + n)),
    "AWS::S3::Bucket": (None, lambda c, n: n, lambda c, n: _arn(c, "s3", n, False, False)),
    "AWS::S3::BucketPolicy": (None, None, None),
    "AWS::Logs::LogGroup": (
        "LogGroupName",
        lambda c, n: n,
        lambda c, n: _arn(c, "logs", "log-group:" + n + ":*"),
    ),
    "AWS::Logs::LogStream": ("LogStreamName", lambda c, n: n, None),
    "AWS::IAM::Role": (None, lambda c, n: n, lambda c, n: _arn(c, "iam", "role/" + n, False)),
    "AWS::IAM::ManagedPolicy": (
        None,
        lambda c, n: _arn(c, "iam", "policy/" + n, False),
        None,
    ),
    "AWS::KinesisFirehose::DeliveryStream": (
        "DeliveryStreamName",
        lambda c, n: n,
        lambda c, n: _arn(c, "firehose", "deliverystream/" + n),
    ),
    "AWS::Events::EventBus": ("Name", lambda c, n: n, lambda c, n: _arn(c, "events", "event-bus/" + n)),
    "AWS::Events::Rule": ("Name", lambda c, n: n, None),  # its Arn needs the bus: Context.getatt
    # A queue's Ref is its URL, which only SQS knows: Context.refs gives it (a shell variable in
    # cli.sh, the answer of GetQueueUrl in the rehearsal).
    "AWS::SQS::Queue": ("QueueName", lambda c, n: _queue_url(n), lambda c, n: _arn(c, "sqs", n)),
    "AWS::SQS::QueuePolicy": (None, None, None),
}


class Context:
    """Values for resolving: parameters, pseudo parameters, and resource names.

    `names` maps a logical id to its physical name; absent names are derived from the name
    property or the `cli-name` metadata ({Param} placeholders), as cli.sh names them.
    `fixed` pins conditions (cli.sh pins CreateDeliveryStream); `free` leaves some undecided,
    for callers that enumerate their values (gen_cli.py). `refs` maps a logical id to its Ref
    where the name alone does not give it (an SQS queue's URL).
    """

    def __init__(self, template, params, pseudo, names=None, fixed=None, refs=None):
        self.t = template
        self.params = params
        self.pseudo = pseudo
        self.names = dict(names or {})
        self.fixed = dict(fixed or {})
        self.refs = dict(refs or {})

    def condition(self, name):
        if name in self.fixed:
            return self.fixed[name]
        return self.cond_expr(self.t["Conditions"][name])

    def cond_expr(self, c):
        (op, arg), = c.items()
        if op == "Fn::Equals":
            a, b = (self.resolve(x) for x in arg)
            return str(a) == str(b)
        if op == "Fn::Not":
            return not self.cond_expr(arg[0])
        if op == "Fn::And":
            return all(self.cond_expr(x) for x in arg)
        if op == "Fn::Or":
            return any(self.cond_expr(x) for x in arg)
        if op == "Condition":
            return self.condition(arg)
        raise ValueError("unsupported condition " + op)

    def exists(self, logical):
        cond = self.t["Resources"][logical].get("Condition")
        return cond is None or self.condition(cond)

    def name(self, logical):
        if logical in self.names:
            return self.names[logical]
        res = self.t["Resources"][logical]
        prop, _, _ = TYPES[res["Type"]]
        if prop and prop in res.get("Properties", {}):
            return self.resolve(res["Properties"][prop])
        pattern = res.get("Metadata", {}).get("cli-name")
        if pattern is None:
            raise ValueError(logical + " has neither a name property nor cli-name metadata")
        return re.sub(r"\{([A-Za-z:]+)\}", lambda m: self.value(m.group(1)), pattern)

    def value(self, name):
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.params:
            v = self.params[name]
            # Number parameters resolve to numbers (shell placeholders stay text).
            if self.t["Parameters"][name]["Type"] == "Number" and str(v).isdigit():
                return int(v)
            return v
        if name in self.t["Resources"]:
            return self.ref(name)
        raise KeyError(name)

    def ref(self, logical):
        if logical in self.refs:
            return self.refs[logical]
        _, ref, _ = TYPES[self.t["Resources"][logical]["Type"]]
        if ref is None:
            raise ValueError("no Ref known for " + logical)
        return ref(self, self.name(logical))

    def getatt(self, logical, attr):
        if attr == "Name" and self.t["Resources"][logical]["Type"] == "AWS::Events::EventBus":
            return self.name(logical)
        if attr != "Arn":
            raise ValueError("unsupported attribute " + attr)
        if self.t["Resources"][logical]["Type"] == "AWS::Events::Rule":
            # A rule on the default bus is rule/NAME; on another bus, rule/BUS/NAME.
            bus = self.resolve(self.t["Resources"][logical]["Properties"]["EventBusName"])
            path = self.name(logical) if bus == "default" else "%s/%s" % (bus, self.name(logical))
            return _arn(self, "events", "rule/" + path)
        _, _, arn = TYPES[self.t["Resources"][logical]["Type"]]
        return arn(self, self.name(logical))

    def resolve(self, x):
        """`x` with every intrinsic function evaluated and AWS::NoValue removed."""
        if isinstance(x, list):
            out = [self.resolve(v) for v in x]
            return [v for v in out if v is not NO_VALUE]
        if not isinstance(x, dict):
            return x
        if len(x) == 1:
            (k, v), = x.items()
            if k == "Ref":
                return NO_VALUE if v == "AWS::NoValue" else self.value(v)
            if k == "Fn::GetAtt":
                return self.getatt(*v)
            if k == "Fn::If":
                return self.resolve(v[1] if self.condition(v[0]) else v[2])
            if k == "Fn::Sub":
                if not isinstance(v, str):
                    raise ValueError("only the one-argument Fn::Sub is supported")

                def sub(m):
                    token = m.group(1)
                    if "." in token and not token.startswith("AWS::"):
                        return self.getatt(*token.split(".", 1))
                    return self.value(token)

                return re.sub(r"\$\{([A-Za-z0-9:.]+)\}", sub, v)
            if k.startswith("Fn::"):
                raise ValueError("unsupported function " + k)
        out = {k: self.resolve(v) for k, v in x.items()}
        return {k: v for k, v in out.items() if v is not NO_VALUE}

    def properties(self, logical):
        return self.resolve(self.t["Resources"][logical].get("Properties", {}))

    def conditions_used(self, x):
        """Names of the conditions that Fn::If in `x` depends on (directly or through others)."""
        found = set()

        def walk(y):
            if isinstance(y, list):
                for v in y:
                    walk(v)
            elif isinstance(y, dict):
                if "Fn::If" in y and len(y) == 1:
                    found.add(y["Fn::If"][0])
                if "Fn::GetAtt" in y and len(y) == 1:
                    # A rule's Arn depends on its bus (see getatt).
                    res = self.t["Resources"][y["Fn::GetAtt"][0]]
                    if res["Type"] == "AWS::Events::Rule":
                        walk(res["Properties"]["EventBusName"])
                for v in y.values():
                    walk(v)

        walk(x)
        return found


def normalize_policy(doc):
    """A policy document in a comparable form: one-element lists as lists, actions sorted."""
    if isinstance(doc, str):
        doc = json.loads(doc)
    out = {"Version": doc.get("Version"), "Statement": []}
    statements = doc["Statement"]
    if isinstance(statements, dict):
        statements = [statements]
    for s in statements:
        if s is None:
            # moto's CloudFormation keeps an AWS::NoValue list entry as null; AWS drops it.
            continue
        n = dict(s)
        for key in ("Action", "Resource"):
            if key in n:
                v = n[key]
                n[key] = sorted(v) if isinstance(v, list) else [v]
        out["Statement"].append(n)
    out["Statement"].sort(key=lambda s: json.dumps(s, sort_keys=True))
    return out
