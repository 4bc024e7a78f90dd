//! Routing rules: the model aliases, fallbacks and suffixes (`gemini.models`), the request
//! overrides (`gemini.overrides`) and the response cache (`cache`, with what it holds now), each
//! edited as JSON and saved through `PUT /api/config` like the config page.

use leptos::ev::SubmitEvent;
use leptos::prelude::*;
use serde_json::Value;

use crate::api::Api;
use crate::app::Notices;
use crate::components::FieldError;
use crate::model::fmt_num;
use crate::pages::Tasks;

/// The parts of the config this page edits: (field id, label, path in the document).
const SECTIONS: [(&str, &str, [&str; 2]); 3] = [
    (
        "models",
        "Model aliases, fallbacks and suffixes (gemini.models)",
        ["gemini", "models"],
    ),
    (
        "overrides",
        "Request overrides (gemini.overrides)",
        ["gemini", "overrides"],
    ),
    ("cache", "Response cache (cache)", ["cache", ""]),
];

fn section<'a>(doc: &'a Value, path: &[&str; 2]) -> &'a Value {
    let first = &doc[path[0]];
    if path[1].is_empty() {
        first
    } else {
        &first[path[1]]
    }
}

fn set_section(doc: &mut Value, path: &[&str; 2], value: Value) {
    if path[1].is_empty() {
        doc[path[0]] = value;
    } else {
        doc[path[0]][path[1]] = value;
    }
}

#[component]
pub(crate) fn Routing() -> impl IntoView {
    let tasks = Tasks::new();
    let api = Api::get();
    let notices = Notices::get();
    let doc = RwSignal::new(None::<Value>);
    let texts = SECTIONS.map(|_| RwSignal::new(String::new()));
    let errors = RwSignal::new(std::collections::BTreeMap::<String, String>::new());
    let general = RwSignal::new(None::<String>);
    let saving = RwSignal::new(false);
    let held = RwSignal::new(Value::Null);

    let load = move || {
        tasks.spawn(async move {
            match api.get_json("/api/config").await {
                Ok(v) => {
                    for (i, (_, _, path)) in SECTIONS.iter().enumerate() {
                        let pretty =
                            serde_json::to_string_pretty(section(&v, path)).unwrap_or_default();
                        texts[i].set(pretty);
                    }
                    doc.set(Some(v));
                }
                Err(p) => general.set(Some(format!("Could not load the config: {}", p.summary()))),
            }
            if let Ok(h) = api.get_json("/health").await {
                held.set(h["cache"].clone());
            }
        });
    };
    load();

    let save = move |ev: SubmitEvent| {
        ev.prevent_default();
        let Some(mut next) = doc.get_untracked() else {
            return;
        };
        let mut local = std::collections::BTreeMap::new();
        for (i, (id, _, path)) in SECTIONS.iter().enumerate() {
            match serde_json::from_str::<Value>(&texts[i].get_untracked()) {
                Ok(v) => set_section(&mut next, path, v),
                Err(e) => {
                    local.insert((*id).to_owned(), format!("not JSON: {e}"));
                }
            }
        }
        errors.set(local.clone());
        general.set(None);
        if !local.is_empty() {
            crate::pages::focus_first_invalid();
            return;
        }
        saving.set(true);
        tasks.spawn(async move {
            match api.send_json("PUT", "/api/config", Some(&next)).await {
                Ok(_) => {
                    notices.ok("Saved: the routing rules apply to the next request");
                    load();
                }
                Err(p) => {
                    let by_field: std::collections::BTreeMap<String, String> = p
                        .violations
                        .iter()
                        .filter_map(|(field, msg)| {
                            let id = SECTIONS.iter().find(|(_, _, path)| {
                                let prefix = if path[1].is_empty() {
                                    path[0].to_owned()
                                } else {
                                    format!("{}.{}", path[0], path[1])
                                };
                                field.starts_with(&prefix)
                            })?;
                            Some((id.0.to_owned(), format!("{field}: {msg}")))
                        })
                        .collect();
                    errors.set(by_field);
                    general.set(Some(format!("Not saved: {}", p.summary())));
                }
            }
            saving.set(false);
        });
    };

    let err = move |id: &'static str| Signal::derive(move || errors.with(|e| e.get(id).cloned()));
    let invalid = move |id: &'static str| move || errors.with(|e| e.contains_key(id));
    let fields = SECTIONS
        .iter()
        .enumerate()
        .map(|(i, (id, label, _))| {
            let field_id = format!("routing-{id}");
            let err_id = format!("routing-{id}-err");
            view! {
                <div class="field">
                    <label for=field_id.clone()>{*label}</label>
                    <textarea id=field_id rows="8" spellcheck="false" bind:value=texts[i]
                        aria-describedby=err_id.clone() aria-invalid=invalid(id)></textarea>
                    <FieldError id=err_id error=err(id)/>
                </div>
            }
        })
        .collect_view();
    let cache_line = move || {
        let h = held.get();
        if h.is_null() {
            return String::new();
        }
        format!(
            "Cached answers: {}, holding {} of {} bytes; {} dropped to stay within the limit.",
            fmt_num(h["entries"].as_f64().unwrap_or(0.0)),
            fmt_num(h["bytes"].as_f64().unwrap_or(0.0)),
            fmt_num(h["max_bytes"].as_f64().unwrap_or(0.0)),
            fmt_num(h["evicted"].as_f64().unwrap_or(0.0)),
        )
    };

    view! {
        <h1>"Routing"</h1>
        <p class="muted">
            "Aliases and fallbacks, model-name suffixes, request overrides and the response cache. "
            "Each is JSON in the shape of its config section (README: Model aliases and fallbacks, "
            "Request overrides, Response cache)."
        </p>
        <p class="muted small" id="routing-cache-held">{cache_line}</p>
        <section class="panel" aria-labelledby="routing-title">
            <h2 id="routing-title">"Rules"</h2>
            <form on:submit=save novalidate>
                {fields}
                {move || general.get().map(|g| view! { <p class="banner error" role="alert">{g}</p> })}
                <button type="submit" class="primary" disabled=saving>"Save"</button>
            </form>
        </section>
    }
}
