#!/usr/bin/env bash
# shellcheck disable=SC2016  # the --customize-hook commands get the new root as $1 from mmdebstrap
# Makes local stand-ins for the container images docker/Dockerfile and docker/compose.yaml name,
# for machines that cannot pull from a registry (CI here): each is built from Debian bookworm
# packages with mmdebstrap, imported into Podman and tagged with the upstream image's name.
#
#   scripts/make-base-images.sh            # the images the runtime image and the Compose stack need
#   scripts/make-base-images.sh --rust     # also the Rust builder image (for the full multi-stage build)
#   scripts/make-base-images.sh --force    # rebuild even those that exist
#   scripts/make-base-images.sh --list     # print the image names and exit
#
# An image that already exists (`podman image exists`) is skipped, so a warm machine returns at
# once. Where a registry is reachable, pull the real images instead. Every stand-in carries the
# label org.opencontainers.image.description="local stand-in ...", so it cannot be mistaken for
# the real one. Needs root (rootful Podman) and mmdebstrap; scripts/setup.sh installs both.
#
# Exit codes: 0 all images present, 1 a build failed, 2 bad usage.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf 'make-base-images: %s\n' "$*" >&2; }

# The names (keep in step with docker/Dockerfile's ARGs and docker/compose.yaml's images).
DEBIAN_IMAGE="docker.io/library/debian:bookworm-slim"
DISTROLESS_IMAGE="gcr.io/distroless/cc-debian12:nonroot"
REDIS_IMAGE="docker.io/library/redis:7.2-bookworm"
PROMETHEUS_IMAGE="docker.io/prom/prometheus:v2.53.2"
HAPROXY_IMAGE="docker.io/library/haproxy:3.0-bookworm"
RUST_IMAGE="docker.io/library/rust:1.95-slim-bookworm"

usage() { sed -n '3,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }

RUST=0 FORCE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --rust) RUST=1 ;;
        --force) FORCE=1 ;;
        --list)
            printf '%s\n' "$DEBIAN_IMAGE" "$DISTROLESS_IMAGE" "$REDIS_IMAGE" "$PROMETHEUS_IMAGE" \
                "$HAPROXY_IMAGE" "$RUST_IMAGE"
            exit 0
            ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
    shift
done

command -v podman >/dev/null 2>&1 || { log "podman not found (scripts/setup.sh installs it)"; exit 1; }
command -v mmdebstrap >/dev/null 2>&1 || { log "mmdebstrap not found (scripts/setup.sh installs it)"; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/gem-proxy-bases.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

STANDIN='org.opencontainers.image.description="local stand-in built from Debian bookworm packages"'
# Debian's slim images leave out documentation and translations; so do these.
SLIM=(
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-include=/usr/share/locale/locale.alias'
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*.log'
)

needed() { [ "$FORCE" -eq 1 ] || ! podman image exists "$1"; }

# standin NAME MMDEBSTRAP-ARGS... -- IMPORT-CHANGES...
standin() {
    local name="$1" t0=$SECONDS tar
    shift
    local mm=() changes=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do mm+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    for c in "$@"; do changes+=(--change "$c"); done
    tar="$WORK/$(printf '%s' "$name" | tr '/:' '__').tar"
    log "building $name"
    if ! mmdebstrap --quiet "${mm[@]}" bookworm "$tar" >"$tar.log" 2>&1; then
        log "mmdebstrap for $name failed:"; tail -n 20 "$tar.log" >&2; return 1
    fi
    podman import --quiet "${changes[@]}" --change "LABEL $STANDIN" "$tar" "$name" >/dev/null
    rm -f "$tar"
    log "$name ready in $((SECONDS - t0))s ($(podman image inspect --format '{{.Size}}' "$name" | awk '{printf "%.1f MB", $1 / 1e6}'))"
}

pids=()
if needed "$DEBIAN_IMAGE"; then
    standin "$DEBIAN_IMAGE" --variant=minbase --include=ca-certificates "${SLIM[@]}" -- \
        'CMD ["bash"]' &
    pids+=($!)
fi
if needed "$DISTROLESS_IMAGE"; then
    # What distroless/cc holds: glibc, libgcc, libstdc++, libssl, CA certificates, time zones,
    # /etc/passwd with root and nonroot (65532), no shell and no package manager. The extract
    # variant unpacks exactly these packages (no dependencies, no maintainer scripts).
    standin "$DISTROLESS_IMAGE" --variant=extract \
        --include=base-files,netbase,tzdata,ca-certificates,libc6,libgcc-s1,libstdc++6,libssl3,libgomp1 \
        "${SLIM[@]}" \
        --customize-hook='cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/ca-certificates.crt"' \
        --customize-hook='printf "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n" >"$1/etc/passwd"' \
        --customize-hook='printf "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n" >"$1/etc/group"' \
        --customize-hook='mkdir -p "$1/home/nonroot" "$1/tmp" && chown 65532:65532 "$1/home/nonroot" && chmod 1777 "$1/tmp"' \
        --customize-hook='rm -rf "$1/usr/share/zoneinfo/right" "$1/usr/share/zoneinfo/posix" "$1/var/lib/dpkg"' \
        -- 'USER 65532' 'WORKDIR /home/nonroot' 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' &
    pids+=($!)
fi
if needed "$REDIS_IMAGE"; then
    standin "$REDIS_IMAGE" --variant=minbase --include=redis-server "${SLIM[@]}" \
        --customize-hook='mkdir -p "$1/data" && chroot "$1" chown redis:redis /data' \
        -- 'USER redis' 'WORKDIR /data' 'VOLUME /data' 'EXPOSE 6379' 'CMD ["redis-server"]' &
    pids+=($!)
fi
if needed "$PROMETHEUS_IMAGE"; then
    # Laid out like prom/prometheus: /bin/prometheus as the entrypoint, runs as nobody, data in
    # /prometheus, wget for health checks (busybox's in the real image).
    standin "$PROMETHEUS_IMAGE" --variant=minbase --include=prometheus,wget "${SLIM[@]}" \
        --customize-hook='mkdir -p "$1/prometheus" && chown 65534:65534 "$1/prometheus"' \
        -- 'USER 65534' 'WORKDIR /prometheus' 'VOLUME /prometheus' 'EXPOSE 9090' \
        'ENTRYPOINT ["/bin/prometheus"]' \
        'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]' &
    pids+=($!)
fi
if needed "$HAPROXY_IMAGE"; then
    standin "$HAPROXY_IMAGE" --variant=minbase --include=haproxy "${SLIM[@]}" \
        --customize-hook='mkdir -p "$1/usr/local/etc/haproxy"' \
        -- 'USER haproxy' 'STOPSIGNAL SIGUSR1' \
        'CMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]' &
    pids+=($!)
fi

rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
[ "$rc" -eq 0 ] || exit 1

if [ "$RUST" -eq 1 ] && needed "$RUST_IMAGE"; then
    # Laid out like the official rust image (RUSTUP_HOME, CARGO_HOME under /usr/local), with the
    # toolchain rust-toolchain.toml names copied from this machine's rustup (no download).
    t0=$SECONDS
    channel="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$ROOT/rust-toolchain.toml")"
    host_rustup="${RUSTUP_HOME:-$HOME/.rustup}"
    toolchain="$(cd "$host_rustup/toolchains/$channel-x86_64-unknown-linux-gnu" && pwd -P)"
    [ -d "$toolchain" ] || { log "no toolchain $channel in $host_rustup (rustup toolchain install $channel)"; exit 1; }
    log "building $RUST_IMAGE (toolchain $channel from $toolchain)"
    mkdir -p "$WORK/rust"
    cp "$(command -v rustup)" "$WORK/rust/rustup"
    cat >"$WORK/rust/Containerfile" <<EOF
FROM $DEBIAN_IMAGE
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev make && rm -rf /var/lib/apt/lists/*
COPY rustup /usr/local/cargo/bin/rustup
RUN mkdir -p /usr/local/rustup/toolchains && cp -a /host-toolchain /usr/local/rustup/toolchains/$channel-x86_64-unknown-linux-gnu \\
 && rm -rf /usr/local/rustup/toolchains/$channel-x86_64-unknown-linux-gnu/share/doc \\
 && for t in cargo rustc rustdoc cargo-clippy clippy-driver rustfmt cargo-fmt; do ln -s rustup /usr/local/cargo/bin/\$t; done \\
 && rustup default $channel && rustc --version
LABEL $STANDIN
EOF
    podman build --pull=never --quiet -t "$RUST_IMAGE" -v "$toolchain:/host-toolchain:ro" \
        -f "$WORK/rust/Containerfile" "$WORK/rust" >/dev/null
    log "$RUST_IMAGE ready in $((SECONDS - t0))s"
fi
log "all images present"
