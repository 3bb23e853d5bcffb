#!/usr/bin/env bash
# README command 1: provisions what is missing, then runs the whole pipeline locally
# (`hikmah serve`: the elaborate handler over HTTP + the memory consumer). Ctrl-C stops it and
# the throwaway PostgreSQL cluster, if one was started.
source "$(dirname "$0")/lib.sh"
provision
trap 'rm -f "$HIKMAH_CACHE_DIR/local.env"; cleanup' EXIT
cd "$HIKMAH_ROOT"
log "building hikmah (release; the first build takes a few minutes)"
cargo build --release -q -p hikmah
# Where cargo put it: CARGO_TARGET_DIR when the user keeps one target directory elsewhere.
HIKMAH="${CARGO_TARGET_DIR:-$HIKMAH_ROOT/target}/release/hikmah"
# What scripts/hikmah needs to talk to this pipeline from another terminal.
{
  echo "DATABASE_URL=$DATABASE_URL"
  echo "EMBED_MODEL_DIR=$EMBED_MODEL_DIR"
  echo "ORT_DYLIB_PATH=$ORT_DYLIB_PATH"
  if [ -n "${MEMORY_QUEUE_URL:-}" ]; then echo "MEMORY_QUEUE_URL=$MEMORY_QUEUE_URL"; fi
} | write_private_file "$HIKMAH_CACHE_DIR/local.env"
export HIKMAH_CLI="scripts/hikmah"
"$HIKMAH" migrate
"$HIKMAH" doctor
"$HIKMAH" serve
