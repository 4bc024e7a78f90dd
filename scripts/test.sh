#!/usr/bin/env bash
# The project's test command (what CI runs through .ci/run):
#   1. scripts/setup.sh                         installs the test tools (.venv with the real SDKs)
#   2. scripts/build-ui.sh                      the web console into ui/dist (skipped when unchanged)
#   3. cargo build --workspace --bins           gem-proxy (embedding ui/dist) and gem-proxy-mock
#   4. scripts/check-deps.py                    no module imports upwards (ARCHITECTURE.md's tiers)
#   5. cargo fmt --all --check                  formatting
#   6. cargo clippy --workspace --all-targets -- -D warnings
#   7. cargo test --workspace --no-fail-fast    unit + integration tests
#   8. .venv/bin/python -m pytest tests/e2e     end-to-end tests with the real Gemini/OpenAI SDKs,
#                                               the console in headless Chromium, and the container
#                                               image, Compose stack and operations scripts under
#                                               Podman (GEM_PROXY_E2E_FULL_IMAGE=1: the image's
#                                               full multi-stage build instead of the runtime stage)
#   9. benches/load/run.sh --dry-run            the load harness's configs and report self-test
# Extra arguments go to pytest (e.g. `scripts/test.sh -k stream -x`).
# Steps 4 to 9 all run even if one fails; the exit code is non-zero if any step failed.
# The last line counts the tests of steps 7 and 8: "summary: N passed, N failed".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ -n "${CI:-}" ]; then
    export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
fi
export PYTHONDONTWRITEBYTECODE=1

LOGS="$(mktemp -d "${TMPDIR:-/tmp}/gem-proxy-test.XXXXXX")"
trap 'rm -rf "$LOGS"' EXIT

failed=()
results=()

# run NAME CMD... : runs a step (output shown and kept in $LOGS/NAME.log), records the result.
run() {
    local name="$1" t0=$SECONDS rc=0
    shift
    printf '\n==> %s: %s\n' "$name" "$*"
    "$@" 2>&1 | tee "$LOGS/$name.log" || rc=$?
    if [ "$rc" -eq 0 ]; then
        results+=("ok    ${name} ($((SECONDS - t0))s)")
    else
        results+=("FAIL  ${name} (exit ${rc}, $((SECONDS - t0))s)")
        failed+=("$name")
    fi
    return "$rc"
}

# Test counts from cargo's "test result:" lines and pytest's closing line.
count() {
    local what="$1" n=0 m
    if [ -f "$LOGS/cargo-test.log" ]; then
        m="$(grep -aoE "test result: .*" "$LOGS/cargo-test.log" | grep -aoE "[0-9]+ $what" | awk '{s += $1} END {print s + 0}')"
        n=$((n + m))
    fi
    if [ -f "$LOGS/e2e.log" ]; then
        m="$(grep -aE "^=*.* in [0-9.]+s" "$LOGS/e2e.log" | tail -n 1 | grep -aoE "[0-9]+ $what" | awk '{s += $1} END {print s + 0}')"
        n=$((n + m))
    fi
    echo "$n"
}

summary() {
    printf '\n==> summary\n'
    printf '  %s\n' "${results[@]}"
    local passed failed_n errors
    passed="$(count passed)"
    failed_n="$(count failed)"
    errors="$(count error)"
    failed_n=$((failed_n + errors))
    if [ "${#failed[@]}" -ne 0 ]; then
        printf 'test.sh: FAILED: %s\n' "${failed[*]}"
    else
        printf 'test.sh: all steps passed\n'
    fi
    printf 'summary: %s passed, %s failed\n' "$passed" "$failed_n"
    [ "${#failed[@]}" -eq 0 ]
}

# Setup and build are prerequisites: stop at the first failure.
run setup scripts/setup.sh || { summary; exit 1; }
run build-ui scripts/build-ui.sh || { summary; exit 1; }
run build cargo build --workspace --bins || { summary; exit 1; }

# The checks the code promises: module order, formatting, lints.
run deps scripts/check-deps.py || true
run fmt cargo fmt --all --check || true
run clippy cargo clippy --workspace --all-targets -- -D warnings || true
# Both suites run; both are reported.
run cargo-test cargo test --workspace --no-fail-fast || true
# pytest exits 0 only when tests ran and passed (5 = none collected, which is a failure here).
run e2e .venv/bin/python -m pytest tests/e2e -q "$@" || true
# The load harness checks its own configs and report code (a second; the real run is manual).
run bench-harness benches/load/run.sh --dry-run || true

summary
