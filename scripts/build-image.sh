#!/usr/bin/env bash
# Builds the gem-proxy container image from docker/Dockerfile with Podman (or Docker).
#
#   scripts/build-image.sh                                  # full multi-stage build from source
#   scripts/build-image.sh --prebuilt target/release/gem-proxy
#                                                           # runtime stage only, around a binary
#                                                           # built on this machine (seconds)
#   scripts/build-image.sh --tag localhost/gem-proxy:dev --runtime docker.io/library/debian:bookworm-slim
#
# Options:
#   --tag NAME          image name (default localhost/gem-proxy:latest, or $GEM_PROXY_IMAGE)
#   --prebuilt PATH     use this binary (it must run on Debian bookworm's glibc) instead of
#                       compiling inside the build; it is staged as target/image/gem-proxy
#   --runtime IMAGE     the runtime base (default: the Dockerfile's, distroless/cc)
#   --build-arg K=V     passed on (e.g. RUST_IMAGE=..., DEBIAN_IMAGE=...)
#   --pull              let the engine pull base images (default: --pull=never with Podman,
#                       for machines without registry access; see scripts/make-base-images.sh)
#
# The engine is $CONTAINER_ENGINE, else podman, else docker. HTTPS inside the build (crates.io,
# rustup) uses this machine's CA bundle, mounted read-only. Prints the image name on the last line.
# Exit codes: 0 built, 1 the build failed, 2 bad usage.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf 'build-image: %s\n' "$*" >&2; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }

TAG="${GEM_PROXY_IMAGE:-localhost/gem-proxy:latest}"
PREBUILT="" RUNTIME="" PULL=0
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) TAG="${2:?--tag needs a name}"; shift ;;
        --prebuilt) PREBUILT="${2:?--prebuilt needs a path}"; shift ;;
        --runtime) RUNTIME="${2:?--runtime needs an image}"; shift ;;
        --build-arg) ARGS+=(--build-arg "${2:?--build-arg needs K=V}"); shift ;;
        --pull) PULL=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
    shift
done

ENGINE="${CONTAINER_ENGINE:-}"
if [ -z "$ENGINE" ]; then
    if command -v podman >/dev/null 2>&1; then ENGINE=podman; else ENGINE=docker; fi
fi
command -v "$ENGINE" >/dev/null 2>&1 || { log "neither podman nor docker found"; exit 1; }

if [ -n "$PREBUILT" ]; then
    [ -x "$PREBUILT" ] || { log "$PREBUILT is not an executable file"; exit 2; }
    mkdir -p target/image
    # A stripped copy: the debug info of a dev build is most of its size and none of its function.
    if command -v strip >/dev/null 2>&1; then
        strip -o target/image/gem-proxy.tmp "$PREBUILT"
    else
        cp "$PREBUILT" target/image/gem-proxy.tmp
    fi
    mv -f target/image/gem-proxy.tmp target/image/gem-proxy
    ARGS+=(--build-arg BINARY=prebuilt)
else
    # Given explicitly: Buildah 1.28 does not see an ARG's default when it picks the stages to build.
    ARGS+=(--build-arg BINARY=build)
fi
[ -n "$RUNTIME" ] && ARGS+=(--build-arg "RUNTIME_IMAGE=$RUNTIME")

REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
ARGS+=(--build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION"
    --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)")

if [ "$ENGINE" = podman ]; then
    # HEALTHCHECK, SHELL and STOPSIGNAL-aware docker format (the OCI format drops HEALTHCHECK).
    ARGS+=(--format docker)
    [ "$PULL" -eq 1 ] || ARGS+=(--pull=never)
    ca=/etc/ssl/certs/ca-certificates.crt
    [ -f "$ca" ] && ARGS+=(-v "$ca:$ca:ro")
fi

t0=$SECONDS
log "$ENGINE build -t $TAG ($([ -n "$PREBUILT" ] && echo "prebuilt $PREBUILT" || echo "from source"))"
if ! "$ENGINE" build -f docker/Dockerfile -t "$TAG" "${ARGS[@]}" . >&2; then
    log "build failed after $((SECONDS - t0))s"
    exit 1
fi
if [ "$ENGINE" = podman ]; then
    # Podman keeps an image per build step: drop this Dockerfile's that nothing uses any more
    # (the prebuilt stage's copies of old binaries, the steps of images whose tag moved on).
    "$ENGINE" image prune -f --filter label=io.gem-proxy.stage=prebuilt >/dev/null 2>&1 || true
    "$ENGINE" image prune -f --filter label=org.opencontainers.image.title=gem-proxy >/dev/null 2>&1 || true
fi
size="$("$ENGINE" image inspect --format '{{.Size}}' "$TAG" 2>/dev/null | awk '{printf "%.1f MB", $1 / 1e6}')"
log "built $TAG in $((SECONDS - t0))s (${size:-size unknown})"
echo "$TAG"
