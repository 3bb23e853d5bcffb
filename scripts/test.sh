#!/usr/bin/env bash
# README command 2: provisions what is missing, then runs every check and test against real
# PostgreSQL, moto's SQS server, the real ONNX model and cargo-lambda's runtime emulator.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/sam-tools.sh"
# One install of every pinned tool (moto, cargo-lambda, the SAM template tools).
provision "${SAM_TOOLS[@]}"
trap cleanup EXIT
start_moto
cd "$HIKMAH_ROOT"

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets -q -- -D warnings
log "cargo build (binaries the end-to-end tests run)"
cargo build --workspace --bins -q
log "cargo test"
# Tests create their own databases and queues, so test binaries may run in parallel.
cargo test --workspace --no-fail-fast
log "template checks"
scripts/check-template.sh
log "all checks passed"
