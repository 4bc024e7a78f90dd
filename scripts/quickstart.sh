#!/usr/bin/env bash
# One command from a fresh clone to a running gateway:
#
#   GEMINI_API_KEY_1=AIza... [GEMINI_API_KEY_2=AIza...] scripts/quickstart.sh
#
# Builds the release binary, creates config/proxy.yaml from config/proxy.yaml.example when it is
# missing, and runs the gateway in the foreground (Ctrl-C stops it). The example serves HTTPS on
# port 8443: on the first start the gateway generates a self-signed certificate
# (config/cert.pem, config/key.pem) and reuses it afterwards; this script then prints how to
# trust it. Without GEMINI_API_KEY_1 it runs in demo mode: the bundled mock Gemini upstream
# stands in for Google, so everything can be tried without a key, and the web console gets an
# admin token (GEM_PROXY_ADMIN_TOKEN, or a random one made for this run) and a sign-in link.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf 'quickstart: %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
    echo "quickstart: cargo not found; install Rust from https://rustup.rs first" >&2
    exit 1
fi

# The web console first: the gateway embeds ui/dist (skipped when ui/ is unchanged; the first run
# installs the wasm target and wasm-bindgen-cli, which takes a few minutes).
scripts/build-ui.sh
log "building (release)"
cargo build --release --quiet -p gem-proxy -p gem-proxy-mock --bins
# Where cargo put them (a CARGO_TARGET_DIR set in the environment moves them).
BIN="${CARGO_TARGET_DIR:-target}/release"

CONFIG="${GEM_PROXY_CONFIG:-config/proxy.yaml}"
if [ ! -f "$CONFIG" ]; then
    log "creating $CONFIG from config/proxy.yaml.example"
    mkdir -p "$(dirname "$CONFIG")"
    cp config/proxy.yaml.example "$CONFIG"
fi

mock_pid=""
demo=0
cleanup() { [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null || true; }
trap cleanup EXIT

if [ -z "${GEMINI_API_KEY_1:-}" ]; then
    log "GEMINI_API_KEY_1 is not set: demo mode, with the bundled mock upstream instead of Google"
    mkdir -p .run
    rm -f .run/quickstart-mock.out
    "$BIN/gem-proxy-mock" --host 127.0.0.1 --port 0 --pid-file .run/quickstart-mock.pid \
        > .run/quickstart-mock.out &
    mock_pid=$!
    for _ in $(seq 1 100); do
        grep -q '^listening on ' .run/quickstart-mock.out 2>/dev/null && break
        sleep 0.05
    done
    mock_url="$(sed -n 's/^listening on //p' .run/quickstart-mock.out)"
    [ -n "$mock_url" ] || { echo "quickstart: the mock upstream did not start" >&2; exit 1; }
    export GEM_PROXY__GEMINI__BASE_URL="$mock_url"
    export GEMINI_API_KEY_1="demo-key-1" GEMINI_API_KEY_2="demo-key-2"
    demo=1
    if [ -z "${GEM_PROXY_ADMIN_TOKEN:-}" ]; then
        # config/proxy.yaml.example reads admin.token from this variable.
        GEM_PROXY_ADMIN_TOKEN="demo-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
        export GEM_PROXY_ADMIN_TOKEN
        log "made an admin token for this demo run (set GEM_PROXY_ADMIN_TOKEN to choose your own)"
    fi
fi
export GEMINI_API_KEY_2="${GEMINI_API_KEY_2:-$GEMINI_API_KEY_1}"

summary="$("$BIN/gem-proxy" check-config --config "$CONFIG")"
echo "$summary"
log "starting gem-proxy (Ctrl-C to stop)"
"$BIN/gem-proxy" serve --config "$CONFIG" &
gw_pid=$!
trap 'kill -TERM "$gw_pid" 2>/dev/null; wait "$gw_pid"; cleanup' INT TERM

# Once it answers, say how to reach it (and, over HTTPS, how to trust its certificate).
port="$(sed -n 's/.*proxy on [^ ]*:\([0-9]*\) (TLS .*/\1/p' <<<"$summary")"
admin_port="$(sed -n 's/.*admin on [^ ]*:\([0-9]*\),.*/\1/p' <<<"$summary")"
health=""
if [ -n "$admin_port" ] && command -v curl >/dev/null 2>&1; then
    for _ in $(seq 1 100); do
        health="$(curl -sf "http://127.0.0.1:$admin_port/health" 2>/dev/null)" && break
        kill -0 "$gw_pid" 2>/dev/null || break
        sleep 0.1
    done
fi
if [ -n "$admin_port" ]; then
    if [ "$demo" = 1 ] && [ -n "${GEM_PROXY_ADMIN_TOKEN:-}" ]; then
        # The token rides in the fragment (#...), which the browser never sends to the server.
        log "web console: http://localhost:$admin_port/#token=$GEM_PROXY_ADMIN_TOKEN (signs you in)"
    elif [ -n "${GEM_PROXY_ADMIN_TOKEN:-}" ]; then
        log "web console: http://localhost:$admin_port/ (sign in with \$GEM_PROXY_ADMIN_TOKEN)"
    else
        log "web console: http://localhost:$admin_port/ (set GEM_PROXY_ADMIN_TOKEN, 16+ characters, to sign in)"
    fi
fi
field() { sed -n "s/.*\"tls\":{[^}]*\"$1\":\"\([^\"]*\)\".*/\1/p" <<<"$health"; }
if grep -q '(TLS on)' <<<"$summary"; then
    url="https://localhost:$port"
    log "gem-proxy serves $url (health: http://localhost:$admin_port/health)"
    if [ "$(field source)" = "self-signed" ]; then
        cert="$(sed -n 's/^ *cert_path: *"\{0,1\}\([^"#]*[^"# ]\)"\{0,1\}.*/\1/p' "$CONFIG" | head -n 1)"
        log "its certificate is self-signed: $cert (SHA-256 $(field sha256_fingerprint))"
        log "trust it:   curl --cacert $cert $url/v1beta/models      (or curl -k to skip the check)"
        log "Python SDK: SSL_CERT_FILE=$cert python your_script.py   (base_url=\"$url\")"
    fi
else
    log "gem-proxy serves http://localhost:$port (health: http://localhost:$admin_port/health)"
fi
wait "$gw_pid"
