#!/usr/bin/env bash
# Backs up a gem-proxy installation into one timestamped archive, and restores one.
#
#   scripts/backup.sh [OPTIONS]                  write gem-proxy-backup-<UTC time>.tar.gz
#   scripts/backup.sh --restore FILE [OPTIONS]   check FILE, then put its contents back
#
# What goes in: the config file, the TLS certificate and its key, the ACME cache, the data
# directory (usage data; in containers also the generated certificate and the ACME cache), and a
# Redis snapshot (`redis-cli --rdb`). Secrets stay out unless --include-secrets: the env file
# with the API keys, admin token and JWT secret. A config that holds an API key, JWT secret or
# admin token literally (not as ${VAR}) is refused without --include-secrets.
#
# Options (defaults match scripts/quickstart.sh's layout):
#   --config FILE        the config (default $GEM_PROXY_CONFIG, else config/proxy.yaml)
#   --cert FILE          TLS certificate (default config/cert.pem)
#   --key FILE           its private key (default config/key.pem)
#   --acme-dir DIR       ACME cache (default config/acme)
#   --data-dir DIR       data directory: usage history, e.g. a container volume's mount point
#                        (default: data/ beside the config, when it exists)
#   --redis-url URL      Redis to snapshot (default $REDIS_URL; none: no snapshot)
#   --env-file FILE      the secrets (default docker/.env), only with --include-secrets
#   --include-secrets    put the env file in the archive too
#   --out DIR            where the archive goes (default backups/)
# Restore only:
#   --redis-dir DIR      put the snapshot there as dump.rdb, for a Redis that is stopped now and
#                        reads that directory when it starts (refused while --redis-url answers)
#   --keep-dir DIR       where replaced files are kept (default <archive>.replaced-<UTC time>/)
#
# Restore first checks everything: the archive reads, every file matches the checksum in its
# MANIFEST, no path escapes, and the config passes `gem-proxy check-config` (binary: $GEM_PROXY_BIN,
# else target/release or target/debug, else gem-proxy on PATH). Only then does it replace files,
# moving each one it replaces to the keep directory. Files go back where the backup found them
# unless an option above names another place. Safe to re-run.
#
# Exit codes: 0 done; 1 backup or restore failed (nothing was replaced by a refused restore);
# 2 bad usage; 3 the archive is damaged or its config does not pass check-config.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
log() { printf 'backup: %s\n' "$*" >&2; }
die() { log "$1"; exit "${2:-1}"; }

RESTORE="" CONFIG="" CERT="" KEY="" ACME="" DATA="" REDIS_URL="${REDIS_URL:-}" ENV_FILE=""
SECRETS=0 OUT="" REDIS_DIR="" KEEP=""
declare -A GIVEN=()
while [ $# -gt 0 ]; do
    case "$1" in
        --restore) RESTORE="${2:?--restore needs an archive}"; shift ;;
        --config) CONFIG="${2:?}"; GIVEN[config]=1; shift ;;
        --cert) CERT="${2:?}"; GIVEN[cert]=1; shift ;;
        --key) KEY="${2:?}"; GIVEN[key]=1; shift ;;
        --acme-dir) ACME="${2:?}"; GIVEN[acme]=1; shift ;;
        --data-dir) DATA="${2:?}"; GIVEN[data]=1; shift ;;
        --redis-url) REDIS_URL="${2:?}"; shift ;;
        --env-file) ENV_FILE="${2:?}"; GIVEN[env]=1; shift ;;
        --include-secrets) SECRETS=1 ;;
        --out) OUT="${2:?}"; shift ;;
        --redis-dir) REDIS_DIR="${2:?}"; shift ;;
        --keep-dir) KEEP="${2:?}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
    shift
done
CONFIG="${CONFIG:-${GEM_PROXY_CONFIG:-$ROOT/config/proxy.yaml}}"
CERT="${CERT:-$ROOT/config/cert.pem}"
KEY="${KEY:-$ROOT/config/key.pem}"
ACME="${ACME:-$ROOT/config/acme}"
ENV_FILE="${ENV_FILE:-$ROOT/docker/.env}"
OUT="${OUT:-$ROOT/backups}"
# The usage history's default place: data/ beside the config.
if [ -z "$DATA" ] && [ -z "$RESTORE" ] && [ -d "$(dirname "$CONFIG")/data" ]; then DATA="$(dirname "$CONFIG")/data"; fi

abs() { # a path made absolute (it need not exist)
    case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$(pwd)" "$1" ;; esac
}

gem_proxy_bin() {
    local c
    for c in "${GEM_PROXY_BIN:-}" "$ROOT/target/release/gem-proxy" "$ROOT/target/debug/gem-proxy" "$(command -v gem-proxy || true)"; do
        if [ -n "$c" ] && [ -x "$c" ]; then printf '%s' "$c"; return 0; fi
    done
    return 1
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/gem-proxy-backup.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# ------------------------------------------------------------------------------------- backup

# add KIND SOURCE: copies SOURCE (file or directory) into the staging tree as KIND/..., and
# records where it came from.
add() {
    local kind="$1" src="$2"
    mkdir -p "$WORK/stage/$kind"
    if [ -d "$src" ]; then
        cp -a "$src/." "$WORK/stage/$kind/"
    else
        cp -a "$src" "$WORK/stage/$kind/"
    fi
    printf '%s\t%s\n' "$kind" "$(abs "$src")" >>"$WORK/stage/SOURCES"
    log "added $kind: $src"
}

# literal_secrets FILE: prints "line N: NAME" for each key/jwt_secret/token with a literal value
# (not a ${VAR} reference, not empty); fails when there is none.
literal_secrets() {
    # Comments out first (line numbers kept), then each `name: value`.
    sed -E 's/(^|[[:space:]])#.*$//' "$1" |
        grep -noE '(^|[[:space:]{,])(key|jwt_secret|token)[[:space:]]*:[[:space:]]*("[^"]*"|[^",}[:space:]#]+)' |
        sed -E 's/^([0-9]+):[[:space:]{,]*([a-z_]+)[[:space:]]*:[[:space:]]*(.*)$/\1 \2 \3/' |
        while read -r line name value; do
            value="${value#\"}"
            value="${value%\"}"
            case "$value" in '' | null | '~' | "\${"*) continue ;; esac
            printf 'line %s: %s\n' "$line" "$name"
        done | grep .
}

backup() {
    mkdir -p "$WORK/stage"
    : >"$WORK/stage/SOURCES"
    [ -f "$CONFIG" ] || die "no config at $CONFIG (--config FILE)"
    # Literal secrets would end up in the archive: refuse them unless asked to keep them.
    if [ "$SECRETS" -eq 0 ] && literal_secrets "$CONFIG" >"$WORK/literal"; then
        log "$CONFIG holds secrets literally ($(paste -sd, "$WORK/literal")):"
        log "move them to environment variables (\${VAR}), or pass --include-secrets"
        exit 1
    fi
    add config "$CONFIG"
    [ -f "$CERT" ] && add tls-cert "$CERT"
    [ -f "$KEY" ] && add tls-key "$KEY"
    [ -d "$ACME" ] && add acme "$ACME"
    if [ -n "$DATA" ]; then
        [ -d "$DATA" ] || die "no data directory at $DATA"
        add data "$DATA"
    fi
    if [ -n "$REDIS_URL" ]; then
        command -v redis-cli >/dev/null 2>&1 || die "redis-cli is needed for the Redis snapshot (apt-get install redis-tools)"
        mkdir -p "$WORK/stage/redis"
        if ! redis-cli -u "$REDIS_URL" --no-auth-warning --rdb "$WORK/stage/redis/dump.rdb" >"$WORK/redis.log" 2>&1; then
            cat "$WORK/redis.log" >&2
            die "redis-cli --rdb from $REDIS_URL failed"
        fi
        printf 'redis\t%s\n' "-" >>"$WORK/stage/SOURCES"
        log "added redis: snapshot of ${REDIS_URL%%@*}"   # never the password part of the URL
    fi
    if [ "$SECRETS" -eq 1 ]; then
        if [ -f "$ENV_FILE" ]; then add secrets "$ENV_FILE"; else log "no env file at $ENV_FILE: no secrets to add"; fi
    fi
    {
        printf 'gem-proxy-backup 1\ncreated %s\nhost %s\nsecrets %s\n' \
            "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(hostname)" "$([ "$SECRETS" -eq 1 ] && echo included || echo left-out)"
    } >"$WORK/stage/INFO"
    (cd "$WORK/stage" && find . -type f ! -name MANIFEST -print0 | LC_ALL=C sort -z | xargs -0 sha256sum >"$WORK/MANIFEST")
    mv "$WORK/MANIFEST" "$WORK/stage/MANIFEST"
    mkdir -p "$OUT"
    local name
    name="$OUT/gem-proxy-backup-$(date -u +%Y%m%dT%H%M%SZ).tar.gz"
    # Owner-only: the archive holds the TLS private key.
    (umask 077 && tar -C "$WORK/stage" -czf "$name.tmp" . && mv "$name.tmp" "$name")
    log "wrote $name ($(du -h "$name" | cut -f1))"
    echo "$name"
}

# ------------------------------------------------------------------------------------ restore

restore() {
    local archive="$RESTORE" x="$WORK/x" bin
    [ -f "$archive" ] || die "no archive at $archive" 2
    # 1. Everything is checked before anything is touched.
    gzip -t "$archive" 2>/dev/null || die "$archive is not a readable gzip archive: nothing restored" 3
    if tar -tzf "$archive" | grep -qE '(^/|(^|/)\.\.(/|$))'; then
        die "$archive has paths outside the archive: nothing restored" 3
    fi
    mkdir -p "$x"
    tar -C "$x" --no-same-owner -xzf "$archive" || die "$archive does not extract: nothing restored" 3
    if ! { [ -f "$x/MANIFEST" ] && [ -f "$x/SOURCES" ] && head -n 1 "$x/INFO" 2>/dev/null | grep -q '^gem-proxy-backup 1$'; }; then
        die "$archive is not a gem-proxy backup (no MANIFEST/SOURCES/INFO): nothing restored" 3
    fi
    (cd "$x" && sha256sum --quiet --strict -c MANIFEST) >"$WORK/sums" 2>&1 ||
        { cat "$WORK/sums" >&2; die "$archive fails its checksums: nothing restored" 3; }
    local listed actual
    listed="$(cut -c67- "$x/MANIFEST" | LC_ALL=C sort)"
    actual="$(cd "$x" && find . -type f ! -name MANIFEST | LC_ALL=C sort)"
    [ "$listed" = "$actual" ] || die "$archive holds files its MANIFEST does not list: nothing restored" 3
    [ -d "$x/config" ] || die "$archive has no config: nothing restored" 3
    bin="$(gem_proxy_bin)" || die "no gem-proxy binary to check the config with (set GEM_PROXY_BIN)" 1
    local cfg
    cfg="$(find "$x/config" -maxdepth 1 -type f | head -n 1)"
    (
        # The archive's secrets, when it has them, for the ${VAR} references of its config.
        if [ -d "$x/secrets" ]; then
            set -a
            # shellcheck disable=SC1090  # the env file the backup took
            for f in "$x"/secrets/*; do . "$f"; done
            set +a
        fi
        "$bin" check-config --config "$cfg"
    ) >"$WORK/check" 2>&1 || { cat "$WORK/check" >&2; die "the archive's config does not pass check-config: nothing restored" 3; }
    log "archive checked: $(wc -l <"$x/MANIFEST") files, config OK ($(head -c 200 "$WORK/check" | tr -d '\n'))"
    if [ -d "$x/redis" ] && [ -n "$REDIS_DIR" ] && [ -n "$REDIS_URL" ] &&
        redis-cli -u "$REDIS_URL" --no-auth-warning ping >/dev/null 2>&1; then
        die "Redis at ${REDIS_URL%%@*} is running: stop it before restoring its snapshot (it would overwrite it)" 1
    fi

    # 2. Where each part goes: the option given now, else where the backup found it.
    local stamp kind src dest
    stamp="$(date -u +%Y%m%dT%H%M%SZ)"
    KEEP="${KEEP:-$(abs "$archive").replaced-$stamp}"
    while IFS=$'\t' read -r kind src; do
        case "$kind" in
            config) dest="$([ -n "${GIVEN[config]:-}" ] && abs "$CONFIG" || printf '%s' "$src")" ;;
            tls-cert) dest="$([ -n "${GIVEN[cert]:-}" ] && abs "$CERT" || printf '%s' "$src")" ;;
            tls-key) dest="$([ -n "${GIVEN[key]:-}" ] && abs "$KEY" || printf '%s' "$src")" ;;
            acme) dest="$([ -n "${GIVEN[acme]:-}" ] && abs "$ACME" || printf '%s' "$src")" ;;
            data) dest="$([ -n "${GIVEN[data]:-}" ] && abs "$DATA" || printf '%s' "$src")" ;;
            secrets) dest="$([ -n "${GIVEN[env]:-}" ] && abs "$ENV_FILE" || printf '%s' "$src")" ;;
            redis)
                if [ -z "$REDIS_DIR" ]; then
                    log "the archive has a Redis snapshot: pass --redis-dir DIR to restore it (left alone now)"
                    continue
                fi
                dest="$(abs "$REDIS_DIR")/dump.rdb"
                put "$x/redis/dump.rdb" "$dest" "$KEEP/redis"
                continue
                ;;
            *) log "unknown part $kind in the archive: left alone"; continue ;;
        esac
        case "$kind" in
            acme | data) put_dir "$x/$kind" "$dest" "$KEEP/$kind" ;;
            *) put "$x/$kind/$(basename "$src")" "$dest" "$KEEP/$kind" ;;
        esac
    done <"$x/SOURCES"
    log "restored from $archive"
    [ -d "$KEEP" ] && log "what was replaced is kept in $KEEP"
    return 0
}

# put SRC DEST KEEPDIR: replaces the file DEST with SRC, moving an existing DEST into KEEPDIR.
put() {
    local src="$1" dest="$2" keep="$3"
    mkdir -p "$(dirname "$dest")"
    if [ -e "$dest" ]; then
        if cmp -s "$src" "$dest"; then log "unchanged: $dest"; return 0; fi
        mkdir -p "$keep"
        mv "$dest" "$keep/"
    fi
    cp -p "$src" "$dest.restore-tmp" && mv -f "$dest.restore-tmp" "$dest"
    log "restored $dest"
}

# put_dir SRC DEST KEEPDIR: the same for a directory (DEST's old contents go to KEEPDIR).
put_dir() {
    local src="$1" dest="$2" keep="$3"
    if [ -d "$dest" ] && diff -rq "$src" "$dest" >/dev/null 2>&1; then log "unchanged: $dest/"; return 0; fi
    if [ -d "$dest" ] && [ -n "$(ls -A "$dest")" ]; then
        mkdir -p "$keep"
        cp -a "$dest/." "$keep/"
        find "$dest" -mindepth 1 -delete
    fi
    mkdir -p "$dest"
    cp -a "$src/." "$dest/"
    log "restored $dest/"
}

if [ -n "$RESTORE" ]; then restore; else backup; fi
