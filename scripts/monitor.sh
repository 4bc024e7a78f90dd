#!/usr/bin/env bash
# Watches running gem-proxy gateways from their admin port, and reports from Prometheus.
#
#   scripts/monitor.sh status  [--url ADMIN_URL]...       each gateway: ready?, keys by state,
#                                                        error rate and p99 over 5 minutes
#   scripts/monitor.sh watch   [--url ...] [--interval SECONDS] [--count N]
#                                                        the same, refreshed in the terminal
#   scripts/monitor.sh report  [--prometheus URL] [--out DIR] [--window 1h]
#                                                        a Markdown report (traffic, success rate,
#                                                        latency percentiles, tokens, keys that
#                                                        rested and why) with PNG charts
#   scripts/monitor.sh metrics [--url ADMIN_URL] [PATTERN]
#                                                        the gateway's gem_proxy_* metrics (grep -E PATTERN)
#
# Admin URLs: --url (repeatable), else $GEM_PROXY_ADMIN_URLS (space- or comma-separated), else
# http://127.0.0.1:9090. Prometheus: --prometheus, else $PROMETHEUS_URL, else
# http://127.0.0.1:9091 (the Compose stack's). The report goes to --out (default
# ./gem-proxy-report-<UTC time>/report.md); charts need gnuplot, and are left out, saying so,
# without it. Needs curl and jq.
#
# Exit codes: 0 every gateway ready (status, watch) / done (report, metrics); 1 a gateway is not
# ready or not reachable, or Prometheus is not; 2 bad usage or a missing tool.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
die() { printf 'monitor: %s\n' "$*" >&2; exit "${2:-1}"; }

[ $# -ge 1 ] || { usage >&2; exit 2; }
case "$1" in -h | --help) usage; exit 0 ;; esac
CMD="$1"
shift

URLS=() PROM="${PROMETHEUS_URL:-http://127.0.0.1:9091}" OUT="" WINDOW="1h" INTERVAL=2 COUNT=0 PATTERN=""
while [ $# -gt 0 ]; do
    case "$1" in
        --url) URLS+=("${2:?--url needs a URL}"); shift ;;
        --prometheus) PROM="${2:?--prometheus needs a URL}"; shift ;;
        --out) OUT="${2:?--out needs a directory}"; shift ;;
        --window) WINDOW="${2:?--window needs a duration like 1h}"; shift ;;
        --interval) INTERVAL="${2:?--interval needs seconds}"; shift ;;
        --count) COUNT="${2:?--count needs a number}"; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; exit 2 ;;
        *) PATTERN="$1" ;;
    esac
    shift
done
if [ "${#URLS[@]}" -eq 0 ]; then
    read -r -a URLS <<<"$(printf '%s' "${GEM_PROXY_ADMIN_URLS:-http://127.0.0.1:9090}" | tr ',' ' ')"
fi
for tool in curl jq; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required" 2
done

fetch() { curl -fsS --max-time 5 "$1" 2>/dev/null; }

# ------------------------------------------------------------------------------------ status

# One line per gateway; returns 1 when any is not ready.
status() {
    local url health perf ready rc=0
    printf '%-32s %-9s %-28s %9s %9s %9s\n' GATEWAY READY "KEYS (active/cool/inv/off)" "REQ/5m" "ERRORS" "P99"
    for url in "${URLS[@]}"; do
        url="${url%/}"
        if ! health="$(fetch "$url/health")"; then
            printf '%-32s %-9s %s\n' "$url" "DOWN" "no answer from $url/health"
            rc=1
            continue
        fi
        if fetch "$url/health/ready" >/dev/null; then ready=yes; else ready=NO; rc=1; fi
        perf="$(fetch "$url/performance" || echo '{}')"
        jq -nr --arg url "$url" --arg ready "$ready" --argjson h "$health" --argjson p "$perf" '
            ($p.overall // {}) as $o
            | ($o.success_rate_5m // null) as $s
            | [ $url, $ready,
                "\($h.keys.active)/\($h.keys.cooling)/\($h.keys.invalid)/\($h.keys.disabled) of \($h.keys.total)",
                "\($o.requests_5m // 0)",
                (if $s == null then "-" else "\(((1 - $s) * 1000 | round) / 10)%" end),
                (if ($o.latency_ms.p99 // null) == null then "-" else "\($o.latency_ms.p99 | round) ms" end)
              ]
            | "\(.[0] | .[0:32] | . + " " * (32 - length)) \(.[1] | . + " " * (9 - length)) \(.[2] | . + " " * (28 - length)) \(.[3] | " " * (9 - length) + .) \(.[4] | " " * (9 - length) + .) \(.[5] | " " * (9 - length) + .)"'
        # Keys that are not serving, and why.
        jq -r '.key_states[] | select(.state != "active")
            | "    key \(.id): \(.state)" + (if (.resting // []) == [] then ""
                else " (" + ([.resting[] | "\(.model): \(.reason), \(.remaining_seconds)s left"] | join("; ")) + ")" end)' \
            <<<"$health"
    done
    return "$rc"
}

# ------------------------------------------------------------------------------------- watch

watch_loop() {
    local n=0 rc=0
    trap 'printf "\n"; exit 0' INT TERM
    while :; do
        [ -t 1 ] && printf '\033[H\033[2J'
        printf 'gem-proxy  %s  (every %ss; Ctrl-C stops)\n\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$INTERVAL"
        rc=0
        status || rc=$?
        n=$((n + 1))
        if [ "$COUNT" -gt 0 ] && [ "$n" -ge "$COUNT" ]; then return "$rc"; fi
        sleep "$INTERVAL"
        printf '\n'
    done
}

# ------------------------------------------------------------------------------------ metrics

metrics() {
    local url="${URLS[0]%/}" body
    body="$(fetch "$url/metrics")" || die "no answer from $url/metrics"
    grep -E '^(# (HELP|TYPE) )?gem_proxy_' <<<"$body" | grep -E "${PATTERN:-.}" || true
}

# ------------------------------------------------------------------------------------- report

# promq QUERY: the instant vector as JSON (the result array).
promq() {
    curl -fsS --max-time 20 --get "$PROM/api/v1/query" --data-urlencode "query=$1" | jq -c '.data.result'
}

# scalar QUERY [FORMAT]: the first sample's value, or "-" when there is none.
scalar() {
    promq "$1" | jq -r --arg f "${2:-%s}" 'if length == 0 then "-" else (.[0].value[1] | tonumber) as $v
        | if $f == "pct" then "\(($v * 1000 | round) / 10) %"
          elif $f == "ms" then "\(($v * 1000 * 10 | round) / 10) ms"
          elif $f == "int" then "\($v | round)"
          else "\($v)" end end'
}

# chart FILE TITLE YLABEL QUERY: a PNG of a range query over the window (one line per series).
chart() {
    local file="$1" title="$2" ylabel="$3" query="$4" end start step tmp n=0 plot="" name
    end="$(date +%s)"
    start=$((end - WINDOW_SECONDS))
    step=$((WINDOW_SECONDS / 120))
    [ "$step" -ge 15 ] || step=15
    tmp="$(mktemp -d)"
    curl -fsS --max-time 30 --get "$PROM/api/v1/query_range" --data-urlencode "query=$query" \
        --data-urlencode "start=$start" --data-urlencode "end=$end" --data-urlencode "step=$step" \
        >"$tmp/range.json" || { rm -rf "$tmp"; return 1; }
    # One data file per series, titled by its labels.
    while IFS= read -r name; do
        jq -r --argjson i "$n" '.data.result[$i].values[] | select(.[1] != "NaN") | "\(.[0]) \(.[1])"' \
            "$tmp/range.json" >"$tmp/$n.dat"
        # A series without a single defined value (a quantile with no traffic) is left out.
        [ -s "$tmp/$n.dat" ] || { n=$((n + 1)); continue; }
        plot+="${plot:+, }\"$tmp/$n.dat\" using 1:2 with linespoints lw 2 pt 7 ps 0.5 title \"$name\""
        n=$((n + 1))
    done < <(jq -r '.data.result[] | .metric | to_entries | map("\(.key)=\(.value)") | join(",")
        | if . == "" then "all" else . end' "$tmp/range.json")
    if [ -z "$plot" ]; then
        rm -rf "$tmp"
        return 1
    fi
    gnuplot <<EOF
set terminal pngcairo size 900,360 font "sans,10"
set output "$file"
set title "$title"
set ylabel "$ylabel"
set xdata time
set timefmt "%s"
set format x "%H:%M"
set grid
set termoption noenhanced
set xrange [$start:$end]
set xlabel "UTC"
set key outside right
plot $plot
EOF
    rm -rf "$tmp"
}

# delta SELECTOR: how much a counter grew over the window. Not increase(): it leaves out a
# series' first increment (a key's first rest, a gateway started within the window); this
# counts from zero for series that are newer than the window. A counter reset (restart) within
# the window undercounts (never below zero).
delta() {
    printf 'clamp_min(%s - (%s offset %s or %s * 0), 0)' "$1" "$1" "$WINDOW" "$1"
}

report() {
    case "$WINDOW" in
        *h) WINDOW_SECONDS=$((${WINDOW%h} * 3600)) ;;
        *m) WINDOW_SECONDS=$((${WINDOW%m} * 60)) ;;
        *) die "--window takes minutes or hours (30m, 1h, 24h)" 2 ;;
    esac
    curl -fsS --max-time 5 "$PROM/-/ready" >/dev/null 2>&1 || die "Prometheus at $PROM is not reachable (--prometheus URL)"
    local now w="$WINDOW" dir md charts=()
    now="$(date -u '+%Y-%m-%dT%H%M%SZ')"
    dir="${OUT:-gem-proxy-report-$now}"
    mkdir -p "$dir"
    md="$dir/report.md"

    local sel='job=~"gem-proxy.*"'
    local total success p50 p95 p99 ttfb retries
    total="$(scalar "sum($(delta "gem_proxy_requests_total{$sel}"))" int)"
    success="$(scalar "sum($(delta "gem_proxy_requests_total{$sel,outcome=\"success\"}")) / sum($(delta "gem_proxy_requests_total{$sel}"))" pct)"
    p50="$(scalar "histogram_quantile(0.50, sum by (le) ($(delta "gem_proxy_request_duration_seconds_bucket{$sel}")))" ms)"
    p95="$(scalar "histogram_quantile(0.95, sum by (le) ($(delta "gem_proxy_request_duration_seconds_bucket{$sel}")))" ms)"
    p99="$(scalar "histogram_quantile(0.99, sum by (le) ($(delta "gem_proxy_request_duration_seconds_bucket{$sel}")))" ms)"
    ttfb="$(scalar "histogram_quantile(0.95, sum by (le) ($(delta "gem_proxy_time_to_first_byte_seconds_bucket{$sel}")))" ms)"
    retries="$(scalar "sum($(delta "gem_proxy_retries_total{$sel}"))" int)"

    # table QUERY HEADER... : a Markdown table of a vector's labels (in HEADER order) and values.
    table() {
        local query="$1" header
        shift
        header="$(printf '| %s ' "$@")|"
        printf '%s\n' "$header" "$(printf '%s' "$header" | sed 's/[^|]/-/g')"
        promq "$query" | jq -r --argjson cols "$(printf '%s\n' "$@" | jq -R . | jq -sc '.[:-1]')" '
            if length == 0 then "| (none)" + (" | " * ($cols | length)) + "|"
            else sort_by(-(.value[1] | tonumber))[]
                | "| " + ([.metric[$cols[]] // "-"] | join(" | ")) + " | \(.value[1] | tonumber | round) |" end'
    }

    {
        printf '# gem-proxy report: the last %s\n\n' "$w"
        printf 'Generated %s from %s.\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" "$PROM"
        printf '## Summary\n\n| | |\n|---|---|\n'
        printf '| Requests | %s |\n| Success rate | %s |\n' "$total" "$success"
        printf '| Latency p50 / p95 / p99 | %s / %s / %s |\n' "$p50" "$p95" "$p99"
        printf '| Time to first byte p95 (streams) | %s |\n| Failovers (retries on another key) | %s |\n\n' "$ttfb" "$retries"
        printf '## Traffic by route and status\n\n'
        table "sum by (route, status_class) ($(delta "gem_proxy_requests_total{$sel}")) > 0" route status_class requests
        printf '\n## Tokens\n\n'
        table "sum by (model, kind) ($(delta "gem_proxy_tokens_total{$sel}")) > 0" model kind tokens
        printf '\n## Keys that rested, and why\n\n'
        table "sum by (key_id, reason) ($(delta "gem_proxy_key_cooldowns_total{$sel}")) > 0" key_id reason rests
        printf '\n## Upstream attempts per key\n\n'
        table "sum by (key_id, result) ($(delta "gem_proxy_upstream_attempts_total{$sel}")) > 0" key_id result attempts
        printf '\n## Rate-limited requests\n\n'
        table "sum by (limiter) ($(delta "gem_proxy_rate_limited_total{$sel}")) > 0" limiter requests
        printf '\n## Gateways\n\n'
        table "up{$sel}" instance job up
    } >"$md"

    if command -v gnuplot >/dev/null 2>&1; then
        if chart "$dir/traffic.png" "Requests per second by status" "req/s" \
            "sum by (status_class) (rate(gem_proxy_requests_total{$sel}[5m]))"; then
            charts+=("traffic.png")
        fi
        if chart "$dir/latency.png" "Latency percentiles" "seconds" \
            "label_replace(histogram_quantile(0.5, sum by (le) (rate(gem_proxy_request_duration_seconds_bucket{$sel}[5m]))), \"q\", \"p50\", \"\", \"\") or label_replace(histogram_quantile(0.95, sum by (le) (rate(gem_proxy_request_duration_seconds_bucket{$sel}[5m]))), \"q\", \"p95\", \"\", \"\") or label_replace(histogram_quantile(0.99, sum by (le) (rate(gem_proxy_request_duration_seconds_bucket{$sel}[5m]))), \"q\", \"p99\", \"\", \"\")"; then
            charts+=("latency.png")
        fi
        {
            printf '\n## Charts\n\n'
            if [ "${#charts[@]}" -eq 0 ]; then
                printf 'No samples in the window yet.\n'
            fi
            for c in "${charts[@]}"; do printf '![%s](%s)\n\n' "${c%.png}" "$c"; done
        } >>"$md"
    else
        printf '\n## Charts\n\nLeft out: gnuplot is not installed.\n' >>"$md"
    fi
    echo "$md"
}

case "$CMD" in
    status) status ;;
    watch) watch_loop ;;
    metrics) metrics ;;
    report) report ;;
    *) usage >&2; exit 2 ;;
esac
