//! One module per page.

pub(crate) mod config;
pub(crate) mod errors;
pub(crate) mod keys;
pub(crate) mod login;
pub(crate) mod overview;
pub(crate) mod routing;
pub(crate) mod tokens;
pub(crate) mod usage;

use leptos::prelude::*;

/// Starts a page's async work (a request, then what it does with the answer) so that it stops
/// when the page goes away: nothing then touches the page's state after it is gone (reading a
/// disposed signal would panic, and a panic ends the app).
#[derive(Clone, Copy)]
pub(crate) struct Tasks(StoredValue<Option<Owner>>);

impl Tasks {
    /// For the component being built.
    pub(crate) fn new() -> Self {
        Self(StoredValue::new(Owner::current()))
    }

    pub(crate) fn spawn(self, work: impl Future<Output = ()> + 'static) {
        if let Some(Some(owner)) = self.0.try_get_value() {
            owner.with(|| leptos::task::spawn_local_scoped_with_cancellation(work));
        }
    }
}

/// An element id made from a config path or key id: `gemini.api_keys[0].id` → `gemini-api_keys-0--id`.
pub(crate) fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Moves the keyboard focus to the first field marked invalid, after the view updated.
pub(crate) fn focus_first_invalid() {
    request_animation_frame(|| {
        use wasm_bindgen::JsCast;
        if let Some(el) = document()
            .query_selector("[aria-invalid=\"true\"]")
            .ok()
            .flatten()
            .and_then(|e| e.dyn_into::<web_sys::HtmlElement>().ok())
        {
            let _ = el.focus();
        }
    });
}
