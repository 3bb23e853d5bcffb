#!/usr/bin/env bash
# README command 1: provisions what is missing, then runs the whole pipeline locally.
source "$(dirname "$0")/lib.sh"
ensure_cargo
ensure_python
ensure_artifacts
export_artifact_env
ensure_postgres
trap cleanup EXIT
cd "$HIKMAH_ROOT"
log "building hikmah (release)"
cargo build --release -q -p hikmah
HIKMAH="$HIKMAH_ROOT/target/release/hikmah"
"$HIKMAH" migrate
"$HIKMAH" doctor
"$HIKMAH" serve
