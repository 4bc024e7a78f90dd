//! The gem-proxy web console: a Leptos (client-side rendered) app compiled to WebAssembly,
//! embedded in the gateway and served by its admin listener at `/`. It talks only to the admin
//! listener: the admin REST API under `/api/` and the open `/performance`, `/metrics`, `/errors`
//! and `/health` documents.
//!
//! Pages: sign-in, Overview, Usage, Keys (with each key's event timeline), Config, Tokens, Errors
//! (`src/pages/`). Build it with `scripts/build-ui.sh` (wasm32 build, wasm-bindgen, hashed and
//! gzipped assets in `ui/dist`).
//!
//! Only `model` and `history` (parsing, formatting, form logic, chart series) are compiled for the
//! host, where their unit tests run; everything that needs a browser is behind
//! `target_arch = "wasm32"`.

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod history;
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod model;

#[cfg(target_arch = "wasm32")]
mod api;
// `#[component]` turns each component into a `pub` function with a `pub` props struct.
#[cfg(target_arch = "wasm32")]
#[allow(unreachable_pub)]
mod app;
#[cfg(target_arch = "wasm32")]
#[allow(unreachable_pub)]
mod components;
#[cfg(target_arch = "wasm32")]
#[allow(unreachable_pub)]
mod pages;

#[cfg(target_arch = "wasm32")]
fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(app::App);
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!(
        "gem-proxy-ui is the web console and runs in a browser: scripts/build-ui.sh builds it, \
         and gem-proxy serves it on the admin port"
    );
    std::process::exit(2);
}
