#!/usr/bin/env bash
# Builds the web console (ui/) into ui/dist, which `cargo build` of gem-proxy embeds:
#
#   scripts/build-ui.sh            # skips when ui/ is unchanged since the last build
#   scripts/build-ui.sh --force    # builds anyway
#
# Steps: the wasm32 target and wasm-bindgen-cli (at exactly the wasm-bindgen version in Cargo.lock)
# are installed when missing; `cargo build --profile ui --target wasm32-unknown-unknown`;
# wasm-bindgen --target web; then every asset gets a
# content hash in its name (served as immutable) and a gzip twin (served when the browser accepts
# gzip), and index.html is written to point at them.
#
# Idempotent: a stamp (ui/dist/.stamp) holds a hash of everything the bundle is made from, and a
# second run with nothing changed returns at once. The server builds without ui/dist (it then
# serves a page saying to run this script), so a fresh clone's `cargo build` never fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf 'build-ui: %s\n' "$*"; }

FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

TARGET=wasm32-unknown-unknown
DIST="$ROOT/ui/dist"
# The wasm build has its own target directory outside the clone, kept between runs and shared by
# clones (cargo locks it): a fresh clone (CI) rebuilds only the console crate, not Leptos, and the
# wasm build never waits on the lock of a host build in target/.
TARGET_DIR="${GEM_PROXY_UI_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gem-proxy/ui-target}"
# No wasm-opt: Debian's (binaryen 108) corrupts modules that use reference types, and turning
# them off (-Ctarget-feature=-reference-types) does not help, as the prebuilt std still declares
# them and wasm-bindgen then looks for externref intrinsics that are not there. The `ui` profile
# (opt-level z, fat LTO, one codegen unit, panic=abort) does most of what wasm-opt would.

# What the bundle is made from: the crate, its assets, the toolchain, the locked wasm-bindgen
# and leptos versions, and this script.
inputs_hash() {
    {
        find ui -path ui/dist -prune -o -type f -print | LC_ALL=C sort | xargs sha256sum
        sha256sum rust-toolchain.toml scripts/build-ui.sh
        sed -n '/^\[profile.ui\]/,/^$/p' Cargo.toml
        grep -A1 -E '^name = "(wasm-bindgen|leptos|leptos_router|tachys|reactive_graph|web-sys|js-sys)"$' Cargo.lock
    } | sha256sum | cut -d' ' -f1
}

want="$(inputs_hash)"
if [ "$FORCE" -eq 0 ] && [ -f "$DIST/index.html" ] && [ "$(cat "$DIST/.stamp" 2>/dev/null)" = "$want" ]; then
    log "ui/dist is up to date"
    exit 0
fi
t0=$SECONDS

# The toolchain pieces, once.
if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    log "rustup target add $TARGET"
    rustup target add "$TARGET"
fi
WBG_VERSION="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)"
[ -n "$WBG_VERSION" ] || { echo "build-ui: no wasm-bindgen in Cargo.lock" >&2; exit 1; }
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WBG_VERSION" ]; then
    # Without --locked: its lockfile pins a crate version the registry no longer has. Slow (minutes),
    # so it happens once per version; the binary stays in ~/.cargo/bin.
    log "cargo install wasm-bindgen-cli $WBG_VERSION (once; takes a few minutes)"
    cargo install --quiet wasm-bindgen-cli --version "$WBG_VERSION"
fi

# clippy-driver compiles the crate itself (the dependencies go through plain rustc), and
# `cargo rustc -- -D warnings` applies to that crate only: the console's code is linted for wasm32
# (`[workspace.lints]`, warnings denied) at no extra cost.
log "cargo build --profile ui --target $TARGET -p gem-proxy-ui (linted by clippy)"
CARGO_TARGET_DIR="$TARGET_DIR" RUSTC_WORKSPACE_WRAPPER="$(rustup which clippy-driver)" \
    cargo rustc --quiet --profile ui --target "$TARGET" -p gem-proxy-ui --bin gem-proxy-ui -- -D warnings
WASM="$TARGET_DIR/$TARGET/ui/gem-proxy-ui.wasm"

STAGE="$(mktemp -d "$ROOT/ui/.dist.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/bindgen" "$STAGE/out/assets"
wasm-bindgen --target web --no-typescript --remove-name-section --remove-producers-section --out-dir "$STAGE/bindgen" --out-name app "$WASM"

# Content-hashed names: a new build never collides with what a browser cached.
hashed() { # SRC NAME EXT -> prints the hashed file name, copies SRC to out/assets under it
    local h
    h="$(sha256sum "$1" | cut -c1-16)"
    cp "$1" "$STAGE/out/assets/$2-$h.$3"
    printf '%s' "$2-$h.$3"
}
wasm_name="$(hashed "$STAGE/bindgen/app_bg.wasm" app wasm)"
js_name="$(hashed "$STAGE/bindgen/app.js" app js)"
css_name="$(hashed ui/style.css style css)"
printf 'import init from "./%s";\ninit({ module_or_path: new URL("./%s", import.meta.url) });\n' \
    "$js_name" "$wasm_name" >"$STAGE/boot.js"
boot_name="$(hashed "$STAGE/boot.js" boot js)"
sed -e "s|{{STYLE}}|$css_name|" -e "s|{{APP_JS}}|$js_name|" -e "s|{{BOOT}}|$boot_name|" \
    ui/index.html >"$STAGE/out/index.html"

# gzip twins, kept only where they are smaller.
for f in "$STAGE/out/index.html" "$STAGE"/out/assets/*; do
    gzip -9 -n -c "$f" >"$f.gz"
    if [ "$(stat -c %s "$f.gz")" -ge "$(stat -c %s "$f")" ]; then rm -f "$f.gz"; fi
done

echo "$want" >"$STAGE/out/.stamp"
rm -rf "$DIST"
mv "$STAGE/out" "$DIST"

raw=$(stat -c %s "$DIST/assets/$wasm_name")
gz=$(stat -c %s "$DIST/assets/$wasm_name.gz")
js=$(stat -c %s "$DIST/assets/$js_name")
log "ui/dist built in $((SECONDS - t0))s: wasm $((raw / 1024)) KiB ($((gz / 1024)) KiB gzipped), js $((js / 1024)) KiB"
