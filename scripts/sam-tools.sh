# shellcheck shell=bash
# The pinned SAM tool set, shared by scripts/check-template.sh and scripts/sam-build.sh (one list,
# so the venv stamp of ensure_python stays the same between them). aws-sam-cli pins the
# translator exactly and cfn-lint to a range; cargo-lambda (in lib.sh's PY_TOOLS) brings ziglang.
SAM_TOOLS=("aws-sam-cli==1.170.0" "aws-sam-translator==1.115.0" "cfn-lint==1.58.0")
