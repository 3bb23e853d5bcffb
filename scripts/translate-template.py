"""Offline SAM -> CloudFormation translation and the checks cfn-lint cannot make.

  translate-template.py TEMPLATE OUT.json   translate with aws-sam-translator, no AWS call
  translate-template.py --assert OUT.json   assert the properties that fail silently when wrong

Run by scripts/check-template.sh inside the tools venv.
"""

import json
import sys

import boto3
from samtranslator.model.exceptions import InvalidDocumentException
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from samtranslator.utils.py27hash_fix import to_py27_compatible_template, undo_mark_unicode_str_in_template
from samtranslator.yaml_helper import yaml_parse

# Fake but well-formed values: translation resolves nothing against AWS.
REGION = "us-east-1"
PARAMETERS = {
    "AWS::Region": REGION,
    "AWS::Partition": "aws",
    "DbSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:hikmah/db-AbCdEf",
}


def managed_policy_map():
    """Stands in for the IAM ListPolicies call the translator makes to resolve managed policy names."""
    names = ["AWSLambdaBasicExecutionRole", "AWSLambdaVPCAccessExecutionRole", "AWSLambdaSQSQueueExecutionRole"]
    return {n: f"arn:aws:iam::aws:policy/service-role/{n}" for n in names}


def translate(src, dst):
    with open(src, encoding="utf-8") as f:
        sam = yaml_parse(f.read())
    params = dict(PARAMETERS)
    # As `sam package` would: local code paths become S3 objects (fake; never fetched).
    for name, r in sam.get("Resources", {}).items():
        key = {"AWS::Serverless::Function": "CodeUri", "AWS::Serverless::LayerVersion": "ContentUri"}.get(r.get("Type"))
        props = r.get("Properties", {})
        if key and isinstance(props.get(key), str) and not props[key].startswith("s3://"):
            props[key] = f"s3://hikmah-check-artifacts/{name}.zip"
    # What samtranslator's transform() does, but with a session pinned to a region (a Session
    # object makes no call by itself) and a stub policy map instead of IAM.
    to_py27_compatible_template(sam, params)
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=REGION))
    try:
        cfn = undo_mark_unicode_str_in_template(
            translator.translate(sam, parameter_values=params, get_managed_policy_map=managed_policy_map)
        )
    except InvalidDocumentException as e:
        for cause in e.causes:
            print(f"translation error: {cause.message}", file=sys.stderr)
        sys.exit(1)
    with open(dst, "w", encoding="utf-8") as f:
        json.dump(cfn, f, indent=1, sort_keys=True)


def of_type(resources, kind):
    return {k: v for k, v in resources.items() if v["Type"] == kind}


def check(cfn_path):
    with open(cfn_path, encoding="utf-8") as f:
        doc = json.load(f)
    res = doc["Resources"]
    problems = []

    def need(cond, msg):
        if not cond:
            problems.append(msg)

    # 1. API Gateway REST: a streaming integration (buffered if the SAM value was wrong).
    apis = of_type(res, "AWS::ApiGateway::RestApi")
    need(len(apis) == 1, f"expected one REST API, found {sorted(apis)}")
    for name, api in apis.items():
        op = api["Properties"]["Body"]["paths"].get("/hikmah/elaborate/stream", {}).get("post")
        need(op is not None, f"{name}: no POST /hikmah/elaborate/stream")
        if op:
            integ = op["x-amazon-apigateway-integration"]
            need(integ.get("responseTransferMode") == "STREAM",
                 f"{name}: integration responseTransferMode is {integ.get('responseTransferMode')!r}, not STREAM "
                 "(the event needs ResponseTransferMode: RESPONSE_STREAM)")
            need("/response-streaming-invocations" in json.dumps(integ["uri"]),
                 f"{name}: integration URI is not the response-streaming-invocations one")
            need("credentials" not in integ, f"{name}: integration invokes with caller credentials")
            schemes = [k for sec in op.get("security", []) for k in sec]
            defs = api["Properties"]["Body"].get("securityDefinitions", {})
            need(any(defs.get(k, {}).get("x-amazon-apigateway-authtype") == "awsSigv4" for k in schemes),
                 f"{name}: method is not IAM (SigV4) authorised")

        # The memory routes: same IAM auth, streaming integration (the function always streams).
        for path, method in [("/hikmah/memory", "get"), ("/hikmah/memory", "delete"),
                             ("/hikmah/memory/export", "get"), ("/hikmah/memory/{note_id}", "delete")]:
            mop = api["Properties"]["Body"]["paths"].get(path, {}).get(method)
            need(mop is not None, f"{name}: no {method.upper()} {path}")
            if mop:
                need(mop["x-amazon-apigateway-integration"].get("responseTransferMode") == "STREAM",
                     f"{name}: {method.upper()} {path} is not a streaming integration")
                mschemes = [k for sec in mop.get("security", []) for k in sec]
                need(any(defs.get(k, {}).get("x-amazon-apigateway-authtype") == "awsSigv4" for k in mschemes),
                     f"{name}: {method.upper()} {path} is not IAM (SigV4) authorised")

    # 2. Function URL: IAM-authorised, streaming.
    urls = of_type(res, "AWS::Lambda::Url")
    need(len(urls) == 1, f"expected one Function URL, found {sorted(urls)}")
    for name, url in urls.items():
        need(url["Properties"].get("InvokeMode") == "RESPONSE_STREAM", f"{name}: InvokeMode is not RESPONSE_STREAM")
        need(url["Properties"].get("AuthType") == "AWS_IAM", f"{name}: AuthType is not AWS_IAM")

    # 3. SQS event source mapping: partial batch failures and bounded concurrency.
    esms = of_type(res, "AWS::Lambda::EventSourceMapping")
    need(len(esms) == 1, f"expected one event source mapping, found {sorted(esms)}")
    for name, esm in esms.items():
        p = esm["Properties"]
        need(p.get("FunctionResponseTypes") == ["ReportBatchItemFailures"], f"{name}: no ReportBatchItemFailures")
        need("MaximumConcurrency" in p.get("ScalingConfig", {}), f"{name}: no ScalingConfig.MaximumConcurrency")
        need("BatchSize" in p and "MaximumBatchingWindowInSeconds" in p, f"{name}: batch size/window unset")

    # 4. Queue: a DLQ after maxReceiveCount, visibility timeout >= 6 x the consumer's timeout.
    consumer = res["MemoryConsumerFunction"]["Properties"]
    queue = res["MemoryQueue"]["Properties"]
    redrive = queue.get("RedrivePolicy", {})
    need(redrive.get("deadLetterTargetArn") == {"Fn::GetAtt": ["MemoryDeadLetterQueue", "Arn"]},
         "MemoryQueue: RedrivePolicy does not target MemoryDeadLetterQueue")
    need(int(redrive.get("maxReceiveCount", 0)) >= 2, "MemoryQueue: maxReceiveCount below 2")
    need(int(queue["VisibilityTimeout"]) >= 6 * int(consumer["Timeout"]),
         f"MemoryQueue: VisibilityTimeout {queue['VisibilityTimeout']} < 6 x consumer Timeout {consumer['Timeout']}")
    alarms = of_type(res, "AWS::CloudWatch::Alarm")
    need(alarms.get("MemoryDeadLetterAlarm") is not None, "no DLQ depth alarm")
    need(alarms.get("PublishFailuresAlarm", {}).get("Properties", {}).get("MetricName") == "PublishFailures",
         "no alarm on elaborate's PublishFailures metric")
    for alarm, metric in [("MemoryConsumerErrorsAlarm", "Errors"), ("MemoryConsumerThrottlesAlarm", "Throttles")]:
        props = alarms.get(alarm, {}).get("Properties", {})
        need(props.get("MetricName") == metric and props.get("Namespace") == "AWS/Lambda"
             and {"Name": "FunctionName", "Value": {"Ref": "MemoryConsumerFunction"}} in props.get("Dimensions", []),
             f"no alarm on the memory consumer's {metric}")

    # 5. The consumer finds the model layer's files under /opt.
    env = consumer["Environment"]["Variables"]
    need(env.get("ORT_DYLIB_PATH", "").startswith("/opt/"), "consumer: ORT_DYLIB_PATH not under /opt")
    need(env.get("EMBED_MODEL_DIR", "").startswith("/opt/"), "consumer: EMBED_MODEL_DIR not under /opt")
    # (SAM suffixes a layer's logical id with a content hash.)
    need(any(layer.get("Ref", "").startswith("EmbedModelLayer") for layer in consumer.get("Layers", [])),
         "consumer: the model layer is not attached")

    # 6. Least privilege for elaborate: no wildcard resource in its own policies.
    role = res["ElaborateFunctionRole"]["Properties"]
    for pol in _branches(role.get("Policies", [])):
        for stmt in _branches(pol["PolicyDocument"]["Statement"]):
            need(stmt.get("Resource") not in ("*", ["*"]), f"ElaborateFunctionRole {pol['PolicyName']}: Resource *")
            actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
            if any(a.startswith("sqs:") for a in actions):
                need(actions == ["sqs:SendMessage"] and stmt["Resource"] == {"Fn::GetAtt": ["MemoryQueue", "Arn"]},
                     f"elaborate's SQS permission is more than SendMessage on MemoryQueue: {stmt}")
            if any(a.startswith("bedrock:") for a in actions):
                need(actions == ["bedrock:InvokeModelWithResponseStream"] and "${LlmModel}" in json.dumps(stmt),
                     f"elaborate's Bedrock permission is more than the configured model: {stmt}")

    # 7. Migrations on deploy: the custom resource calls the migrate function, and each function
    #    that needs the schema waits for it.
    cr = res.get("DatabaseMigrations")
    need(cr is not None and cr["Type"] == "Custom::DatabaseMigrations", "no DatabaseMigrations custom resource")
    for fn in ("ElaborateFunction", "MemoryConsumerFunction"):
        deps = res[fn].get("DependsOn", [])
        deps = [deps] if isinstance(deps, str) else deps
        need("DatabaseMigrations" in deps, f"{fn} does not wait for DatabaseMigrations")

    # 8. Database TLS: with DbVerifyServerCertificate (default true) every function that connects
    #    gets the CA bundle layer and PGSSLROOTCERT at the file layer/Makefile puts in it.
    bundle = "/opt/certs/rds-global-bundle.pem"
    default = doc.get("Parameters", {}).get("DbVerifyServerCertificate", {}).get("Default")
    need(default == "true", f"DbVerifyServerCertificate defaults to {default!r}, not \"true\"")
    with open("layer/Makefile", encoding="utf-8") as f:
        need("certs/rds-global-bundle.pem" in f.read(), f"layer/Makefile does not build {bundle}")
    ca_layers = [k for k, v in of_type(res, "AWS::Lambda::LayerVersion").items() if k.startswith("DbCaBundleLayer")]
    need(len(ca_layers) == 1 and res[ca_layers[0]].get("Condition") == "VerifyDbServer",
         f"expected one DbCaBundleLayer with Condition VerifyDbServer, found {ca_layers}")
    for fn in ("ElaborateFunction", "MemoryConsumerFunction", "MigrateFunction"):
        props = res[fn]["Properties"]
        cert = props["Environment"]["Variables"].get("PGSSLROOTCERT")
        need(cert == {"Fn::If": ["VerifyDbServer", bundle, ""]},
             f"{fn}: PGSSLROOTCERT is {cert!r}, not {bundle} when VerifyDbServer")
        need(ca_layers and {"Fn::If": ["VerifyDbServer", {"Ref": ca_layers[0]}, {"Ref": "AWS::NoValue"}]}
             in props.get("Layers", []), f"{fn}: the DbCaBundleLayer is not attached when VerifyDbServer")

    if problems:
        for p in problems:
            print(f"template check failed: {p}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {len(res)} resources; streaming, queue, layer, IAM, migration and database TLS checks passed")


def _branches(items):
    """The items of a list, looking into both branches of any Fn::If (dropping AWS::NoValue)."""
    out = []
    for item in items if isinstance(items, list) else [items]:
        if isinstance(item, dict) and "Fn::If" in item:
            out.extend(_branches(item["Fn::If"][1:]))
        elif item != {"Ref": "AWS::NoValue"}:
            out.append(item)
    return out


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--assert":
        check(sys.argv[2])
    elif len(sys.argv) == 3:
        translate(sys.argv[1], sys.argv[2])
    else:
        sys.exit(__doc__)
