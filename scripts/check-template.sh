#!/usr/bin/env bash
# Template checks (issue 5, item 6), run by scripts/test.sh and usable on their own:
#   1. `sam validate --lint`: SAM's schema and cfn-lint on the SAM template;
#   2. translate template.yaml to plain CloudFormation offline with aws-sam-translator, because
#      cfn-lint does not check the values of SAM-only properties, then run cfn-lint on the result;
#   3. assertions on the translated template for the properties that fail silently when wrong
#      (response streaming on both doors, the queue's redrive and visibility timeout, least privilege).
# Needs only PyPI (for the pinned tools); makes no AWS call.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/sam-tools.sh"

ensure_python "${SAM_TOOLS[@]}"
cd "$HIKMAH_ROOT"
out=$(mktemp -d "${TMPDIR:-/tmp}/hikmah-cfn.XXXXXX")
trap 'rm -rf "$out"' EXIT

# No credentials, no region lookups, no telemetry: everything below is offline.
export AWS_REGION=${AWS_REGION:-us-east-1} AWS_DEFAULT_REGION=${AWS_REGION:-us-east-1}
export SAM_CLI_TELEMETRY=0 AWS_EC2_METADATA_DISABLED=true

log "sam validate --lint (template.yaml)"
sam validate --lint --template-file template.yaml --region "$AWS_REGION"

log "translating template.yaml to CloudFormation offline (aws-sam-translator)"
"$VENV/bin/python" scripts/translate-template.py template.yaml "$out/template.cfn.json"

log "cfn-lint on the translated template"
cfn-lint --regions "$AWS_REGION" -- "$out/template.cfn.json"

log "checking what would fail silently in the translated template"
"$VENV/bin/python" scripts/translate-template.py --assert "$out/template.cfn.json"

log "template checks passed"
