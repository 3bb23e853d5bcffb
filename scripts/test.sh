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
log "memory-consumer as deployed: cargo lambda build --release (x86_64), panic isolation under the emulator"
# sam build runs `cargo lambda build --release`, whose panic strategy comes from the release
# profile (cargo-lambda picks "abort" when the workspace does not say): check the per-record
# panic isolation against that binary, not only the debug one. One binary, about 6 min cold on
# 2 cores; incremental afterwards.
cargo lambda build --release --x86-64 --bin memory-consumer
target_dir=${CARGO_TARGET_DIR:-$HIKMAH_ROOT/target}
release_bins="$target_dir/lambda-release-bins"
mkdir -p "$release_bins"
cp "$target_dir/lambda/memory-consumer/bootstrap" "$release_bins/memory-consumer"
HIKMAH_BIN_DIR="$release_bins" cargo test -p hikmah-tests --test main -- --exact \
  consumer_lambda::a_panicking_record_fails_alone_in_the_binary_under_the_lambda_emulator
log "template checks"
scripts/check-template.sh
log "all checks passed"
