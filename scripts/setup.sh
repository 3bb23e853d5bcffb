#!/usr/bin/env bash
# Provisions everything hikmah needs that is not in the repo: pinned Python tools (moto, cargo-lambda)
# in a venv, the pinned model files and ONNX Runtime library, and the int8 model built from them, all under $HIKMAH_CACHE_DIR
# (default ~/.cache/hikmah). Idempotent: what is present with the right sha256 is reused.
source "$(dirname "$0")/lib.sh"
ensure_cargo
ensure_python
ensure_artifacts
ensure_int8_model
log "set-up complete: $HIKMAH_CACHE_DIR"
