#!/usr/bin/env bash
# gem-proxy's load harness: gateway overhead against direct, nginx, Pingora (and LiteLLM), in one run.
#
#   benches/load/run.sh [--quick] [--with-litellm] [--dry-run] [--no-install]
#                       [--repeats N] [--seconds S] [--rate R] [--targets direct,nginx,...]
#                       [--rig nginx-upstream]
#
# --rig nginx-upstream runs the "nginx as upstream" scenario instead (rig_nginx.py): every proxy in
# front of an nginx with a fixed answer, HTTP and HTTPS, 1,000 keys, the 401 path; CPU per request
# and a one-line summary of ratios.
#
# From a clean checkout (Debian, root, 2+ cores) it:
#   1. installs what it needs with apt-get when missing: nginx-light, wrk, cmake (Pingora's zlib-ng),
#      redis-server (the gem-proxy-redis target);
#   2. builds gem-proxy and gem-proxy-mock (release), and the two crates of its own, each outside the
#      workspace, into target/bench-tools: benches/pingora-ref (a minimal Pingora pass-through proxy)
#      and benches/load/driver (bench-driver: open-loop, SSE timing and held streams);
#   3. with --with-litellm, installs LiteLLM's proxy (pinned) into target/bench-tools/litellm-venv;
#   4. runs benches/load/bench.py: every target and scenario, pinned (proxy on CPU 0; mock, load
#      generators and the orchestrator on CPU 1), warm-up first, targets interleaved, 3 repeats
#      (1 with --quick), and writes benches/load/results/<run>.{md,json} and latest.{md,json}.
#
# --dry-run installs and builds nothing and starts nothing: it writes every config and checks it
# (`nginx -t` when nginx is installed, `gem-proxy check-config` and a real token with whatever
# gem-proxy binary exists), and self-tests the report code. It takes about a second.
#
# Needs the machine quiet to mean anything: a full run takes ~15-20 min (+ ~10 with LiteLLM).
# Load stays on 127.0.0.1. Everything started is stopped on exit (by pid).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

quick=0 litellm=0 dry=0 install=1 rig=mock targets=""
pass=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1; pass+=(--quick) ;;
        --with-litellm) litellm=1; pass+=(--with-litellm) ;;
        --dry-run) dry=1; pass+=(--dry-run) ;;
        --no-install) install=0 ;;
        --repeats|--seconds|--rate) pass+=("$1" "$2"); shift ;;
        --targets) targets="$2"; pass+=("$1" "$2"); shift ;;
        --rig) rig="$2"; pass+=("$1" "$2"); shift ;;
        -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { printf '\n==> %s\n' "$*" >&2; }

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
TOOLS_DIR="$ROOT/target/bench-tools"
# Pinned. Later releases' `proxy` extra needs a `litellm-proxy` package this registry doesn't have,
# and 1.107.0 was a compromised release.
LITELLM_VERSION="1.106.12"
PYTHON="${PYTHON:-python3}"

# --- 1. system packages -------------------------------------------------------------------------
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
want_pingora=0
if [ -z "$targets" ] || [[ ",$targets," == *",pingora,"* ]]; then want_pingora=1; fi
[ "$want_pingora" -eq 0 ] || command -v cmake >/dev/null 2>&1 || need+=(cmake)
[ "$rig" != mock ] || command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
if [ "$dry" -eq 0 ] && [ "${#need[@]}" -gt 0 ]; then
    if [ "$install" -eq 0 ]; then
        echo "run.sh: missing ${need[*]} (and --no-install given)" >&2
        exit 1
    fi
    say "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

# --- 2. builds ----------------------------------------------------------------------------------
if [ "$dry" -eq 0 ]; then
    say "building gem-proxy and gem-proxy-mock (release)"
    cargo build --release --locked -p gem-proxy -p gem-proxy-mock --bins
    # Pingora only when it is a target; the driver only for the standard run (the rig uses wrk).
    if [ "$want_pingora" -eq 1 ]; then
        say "building benches/pingora-ref (release, own target dir)"
        CARGO_TARGET_DIR="$TOOLS_DIR" cargo build --release --locked --manifest-path benches/pingora-ref/Cargo.toml
    fi
    if [ "$rig" = mock ]; then
        say "building benches/load/driver (release, own target dir)"
        CARGO_TARGET_DIR="$TOOLS_DIR" cargo build --release --locked --manifest-path benches/load/driver/Cargo.toml
    fi
    GEM_PROXY="$TARGET_DIR/release/gem-proxy"
else
    # The newer of the two builds: CI has a debug one, a developer often an older release one too.
    GEM_PROXY="$ROOT/target/debug/gem-proxy"
    if [ -x "$TARGET_DIR/release/gem-proxy" ] && { [ ! -x "$GEM_PROXY" ] || [ "$TARGET_DIR/release/gem-proxy" -nt "$GEM_PROXY" ]; }; then
        GEM_PROXY="$TARGET_DIR/release/gem-proxy"
    fi
    if [ ! -x "$GEM_PROXY" ]; then
        echo "run.sh --dry-run: no gem-proxy binary (cargo build first)" >&2
        exit 1
    fi
fi

# --- 3. LiteLLM ---------------------------------------------------------------------------------
LITELLM="$TOOLS_DIR/litellm-venv/bin/litellm"
if [ "$litellm" -eq 1 ] && [ "$dry" -eq 0 ]; then
    if ! "$TOOLS_DIR/litellm-venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('litellm') != '$LITELLM_VERSION')" 2>/dev/null; then
        say "installing LiteLLM $LITELLM_VERSION into $TOOLS_DIR/litellm-venv (slow)"
        mkdir -p "$TOOLS_DIR"
        "$PYTHON" -m venv "$TOOLS_DIR/litellm-venv"
        "$TOOLS_DIR/litellm-venv/bin/pip" install -q --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION"
    fi
fi

# --- 4. the run ---------------------------------------------------------------------------------
if [ "$dry" -eq 0 ]; then
    # Held streams need many sockets: a proxy holds two per stream. Raise the soft limit to the
    # hard one (bench.py sizes the largest stream count to fit it, and says so).
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    say "machine before the run: $(cut -d' ' -f1-3 /proc/loadavg) (load average 1/5/15 min), $(nproc) CPUs"
fi

if [ "$dry" -eq 1 ] && ! [ -x "$NGINX" ]; then
    echo "run.sh --dry-run: nginx is not installed: its config is written but not checked (nginx -t)" >&2
    NGINX=""
fi

tools=$(printf '{"gem-proxy":"%s","mock":"%s","pingora":"%s","driver":"%s","wrk":"%s","nginx":"%s","litellm":"%s","redis":"%s"}' \
    "$GEM_PROXY" "$TARGET_DIR/release/gem-proxy-mock" "$TOOLS_DIR/release/pingora-ref" \
    "$TOOLS_DIR/release/bench-driver" "$(command -v wrk || true)" "$NGINX" "$LITELLM" "$(command -v redis-server || true)")

command_line="benches/load/run.sh${pass[*]:+ ${pass[*]}}"
exec "$PYTHON" "$ROOT/benches/load/bench.py" --tools "$tools" --command "$command_line" "${pass[@]}"
