//! The running config, secrets masked: a form (or the YAML text), validation errors next to their
//! field, save; the history of versions with what each changed, and rollback.

use std::collections::BTreeMap;

use leptos::ev::SubmitEvent;
use leptos::prelude::*;
use serde_json::Value;

use crate::api::Api;
use crate::app::Notices;
use crate::components::{ConfirmDialog, FieldError};
use crate::model::{ApiProblem, Change, Field, FieldKind, flatten, rebuild};
use crate::pages::{Tasks, focus_first_invalid, slug};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Form,
    Yaml,
}

/// A form field and its current text.
#[derive(Clone)]
struct Edit {
    field: Field,
    text: RwSignal<String>,
}

#[component]
pub(crate) fn Config() -> impl IntoView {
    let tasks = Tasks::new();
    let api = Api::get();
    let notices = Notices::get();
    let tree = RwSignal::new(None::<Value>);
    let edits = RwSignal::new(Vec::<Edit>::new());
    let yaml = RwSignal::new(String::new());
    let mode = RwSignal::new(Mode::Form);
    let errors = RwSignal::new(BTreeMap::<String, String>::new());
    let general = RwSignal::new(Vec::<String>::new());
    let history = RwSignal::new(Value::Null);
    let saving = RwSignal::new(false);
    let rollback_to = RwSignal::new(None::<u64>);
    let load_error = RwSignal::new(None::<String>);

    let load = move || {
        tasks.spawn(async move {
            match api.get_json("/api/config").await {
                Ok(v) => {
                    edits.set(
                        flatten(&v)
                            .into_iter()
                            .map(|field| Edit {
                                text: RwSignal::new(field.text.clone()),
                                field,
                            })
                            .collect(),
                    );
                    tree.set(Some(v));
                    load_error.set(None);
                }
                Err(e) => load_error.set(Some(e.message)),
            }
            if let Ok(y) = api.get_text("/api/config", "application/yaml").await {
                yaml.set(y);
            }
            if let Ok(h) = api.get_json("/api/config/history").await {
                history.set(h);
            }
        })
    };
    load();

    let show_problem = move |p: ApiProblem| {
        let known: Vec<String> =
            edits.with_untracked(|e| e.iter().map(|e| e.field.path.clone()).collect());
        let (by_field, mut other) = p.split(&known);
        if by_field.is_empty() && other.is_empty() {
            other.push(p.message.clone());
        }
        if mode.get_untracked() == Mode::Yaml {
            // The YAML text has no fields to mark: list everything.
            let mut all: Vec<String> = by_field.iter().map(|(f, d)| format!("{f}: {d}")).collect();
            all.extend(other);
            errors.set(BTreeMap::new());
            general.set(all);
        } else {
            errors.set(by_field);
            general.set(other);
        }
        notices.error("Not saved: the gateway refused the config (see the marked fields)");
        focus_first_invalid();
    };
    let saved = move |v: Value| {
        let version = v["version"].as_u64().unwrap_or_default();
        let changes = v["changes"].as_array().map_or(0, Vec::len);
        let restart: Vec<String> = v["restart_required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect();
        let mut text = format!(
            "Saved: version {version}, {changes} change{}",
            if changes == 1 { "" } else { "s" }
        );
        if !restart.is_empty() {
            text.push_str(&format!(
                ". Takes effect after a restart: {}",
                restart.join(", ")
            ));
        }
        notices.ok(text);
        errors.set(BTreeMap::new());
        general.set(Vec::new());
        load();
    };

    let submit = move |ev: SubmitEvent| {
        ev.prevent_default();
        if mode.get_untracked() == Mode::Yaml {
            let text = yaml.get_untracked();
            saving.set(true);
            tasks.spawn(async move {
                match api.put_yaml("/api/config", text).await {
                    Ok(v) => saved(v),
                    Err(p) => show_problem(p),
                }
                saving.set(false);
            });
            return;
        }
        let Some(base) = tree.get_untracked() else {
            return;
        };
        let fields: Vec<(Field, String)> = edits.with_untracked(|e| {
            e.iter()
                .map(|e| (e.field.clone(), e.text.get_untracked()))
                .collect()
        });
        let doc = match rebuild(&base, &fields) {
            Ok(doc) => doc,
            Err(local) => {
                errors.set(local);
                general.set(vec!["Fix the marked fields.".into()]);
                focus_first_invalid();
                return;
            }
        };
        saving.set(true);
        tasks.spawn(async move {
            match api.send_json("PUT", "/api/config", Some(&doc)).await {
                Ok(v) => saved(v),
                Err(p) => show_problem(p),
            }
            saving.set(false);
        });
    };
    let reset = move |_| {
        edits.with_untracked(|e| {
            for e in e {
                e.text.set(e.field.text.clone());
            }
        });
        errors.set(BTreeMap::new());
        general.set(Vec::new());
        load();
    };
    let changed = move || edits.with(|e| e.iter().filter(|e| e.text.get() != e.field.text).count());

    let form = move || {
        // Fields grouped by their parent; a section's own settings before its subsections.
        let mut groups: Vec<(String, Vec<Edit>)> = Vec::new();
        for e in edits.get() {
            match groups.iter_mut().find(|(g, _)| *g == e.field.group) {
                Some((_, list)) => list.push(e),
                None => groups.push((e.field.group.clone(), vec![e])),
            }
        }
        groups.sort_by_key(|(g, _)| group_order(g));
        groups
            .into_iter()
            .map(|(group, list)| {
                let legend = if group.is_empty() {
                    "(top level)".to_owned()
                } else {
                    group
                };
                view! {
                    <fieldset class="group">
                        <legend>{legend}</legend>
                        {list.into_iter().map(|e| field_view(e, errors)).collect_view()}
                    </fieldset>
                }
            })
            .collect_view()
    };

    let tab = move |m: Mode, text: &'static str| {
        view! {
            <button
                type="button"
                class="tab"
                aria-pressed=move || if mode.get() == m { "true" } else { "false" }
                on:click=move |_| {
                    mode.set(m);
                    errors.set(BTreeMap::new());
                    general.set(Vec::new());
                }
            >
                {text}
            </button>
        }
    };

    view! {
        <div class="page-head">
            <h1>"Config"</h1>
            <span class="muted">
                {move || history.with(|h| h["current_version"].as_u64().map(|v| format!("running version {v}"))).unwrap_or_default()}
                " · secrets are shown as ******** and kept unless you type a new value"
            </span>
        </div>
        {move || load_error.get().map(|e| view! { <p class="banner error" role="alert">{e}</p> })}
        <form class="config" on:submit=submit novalidate>
            <div class="toolbar">
                <div role="group" aria-label="Edit as">
                    {tab(Mode::Form, "Form")}
                    {tab(Mode::Yaml, "YAML")}
                </div>
                <span class="grow"></span>
                <span class="muted" aria-live="polite">
                    {move || {
                        if mode.get() == Mode::Form {
                            match changed() {
                                0 => "No changes".to_owned(),
                                1 => "1 field changed".to_owned(),
                                n => format!("{n} fields changed"),
                            }
                        } else {
                            String::new()
                        }
                    }}
                </span>
                <button type="button" on:click=reset>"Reset"</button>
                <button type="submit" class="primary" disabled=saving>
                    {move || if saving.get() { "Saving…" } else { "Save" }}
                </button>
            </div>
            <div class="banner error" role="alert" hidden=move || general.with(Vec::is_empty)>
                <ul>{move || general.get().into_iter().map(|g| view! { <li>{g}</li> }).collect_view()}</ul>
            </div>
            <Show
                when=move || mode.get() == Mode::Form
                fallback=move || {
                    view! {
                        <label for="config-yaml">"The config as YAML"</label>
                        <textarea id="config-yaml" class="yaml" rows="30" spellcheck="false" bind:value=yaml></textarea>
                    }
                }
            >
                <div class="groups">{form}</div>
            </Show>
        </form>
        <section class="panel" aria-labelledby="history-title">
            <h2 id="history-title">"History"</h2>
            <ol class="history">
                {move || {
                    let current = history.with(|h| h["current_version"].as_u64());
                    let mut versions: Vec<Value> = history.with(|h| h["versions"].as_array().cloned().unwrap_or_default());
                    versions.reverse();
                    versions
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| version_view(&v, i == 0, current, rollback_to))
                        .collect_view()
                }}
            </ol>
        </section>
        <ConfirmDialog
            message=Signal::derive(move || {
                rollback_to.get().map(|v| format!("Roll back to version {v}? Its config becomes the running one (as a new version)."))
            })
            confirm_label="Roll back"
            on_confirm=Callback::new(move |_| {
                let Some(v) = rollback_to.get_untracked() else { return };
                rollback_to.set(None);
                tasks.spawn(async move {
                    match api.send_json("POST", &format!("/api/config/rollback/{v}"), None).await {
                        Ok(r) => {
                            notices.ok(format!(
                                "Rolled back to version {v} (now version {})",
                                r["version"].as_u64().unwrap_or_default()
                            ));
                            load();
                        }
                        Err(p) => notices.error(format!("Not rolled back: {}", p.message)),
                    }
                });
            })
            on_cancel=Callback::new(move |_| rollback_to.set(None))
        />
    }
}

/// Where a group goes: sections in the order of the example config; within one, shallower groups
/// first (`server`, `server.tls`, `server.tls.acme`), else document order (the sort is stable).
fn group_order(group: &str) -> (usize, usize) {
    const SECTIONS: [&str; 6] = ["server", "gemini", "auth", "admin", "metrics", "log"];
    let section = group.split(['.', '[']).next().unwrap_or_default();
    let rank = SECTIONS
        .iter()
        .position(|s| *s == section)
        .unwrap_or(SECTIONS.len());
    (rank, group.matches(['.', '[']).count())
}

/// One field of the form, with its error.
fn field_view(e: Edit, errors: RwSignal<BTreeMap<String, String>>) -> impl IntoView {
    let Edit { field, text } = e;
    let id = format!("f-{}", slug(&field.path));
    let err_id = format!("{id}-err");
    let path = field.path.clone();
    let error = Signal::derive(move || errors.with(|e| e.get(&path).cloned()));
    let invalid = move || error.with(Option::is_some).then_some("true");
    let original = field.text.clone();
    let changed = move || text.get() != original;
    let name = field.path.clone();
    let input = match field.kind {
        FieldKind::Bool => view! {
            <input type="checkbox" id=id.clone() name=name
                prop:checked=move || text.get() == "true"
                on:change=move |ev| text.set(event_target_checked(&ev).to_string())
                aria-describedby=err_id.clone() aria-invalid=invalid/>
        }
        .into_any(),
        FieldKind::Number => view! {
            <input type="number" step="any" id=id.clone() name=name bind:value=text
                aria-describedby=err_id.clone() aria-invalid=invalid/>
        }
        .into_any(),
        FieldKind::Secret => view! {
            <input type="password" id=id.clone() name=name bind:value=text autocomplete="off"
                aria-describedby=err_id.clone() aria-invalid=invalid/>
        }
        .into_any(),
        FieldKind::Text => view! {
            <input type="text" id=id.clone() name=name bind:value=text autocomplete="off" spellcheck="false"
                aria-describedby=err_id.clone() aria-invalid=invalid/>
        }
        .into_any(),
        FieldKind::Unset => view! {
            <input type="text" id=id.clone() name=name bind:value=text placeholder="not set" autocomplete="off"
                spellcheck="false" aria-describedby=err_id.clone() aria-invalid=invalid/>
        }
        .into_any(),
        FieldKind::List => view! {
            <textarea id=id.clone() name=name rows="2" bind:value=text placeholder="one per line" spellcheck="false"
                aria-describedby=err_id.clone() aria-invalid=invalid></textarea>
        }
        .into_any(),
    };
    let kind = field.kind;
    view! {
        <div class="field" class:changed=changed class:invalid=move || error.with(Option::is_some) class:check=kind == FieldKind::Bool>
            <label for=id>{field.name.clone()}</label>
            {input}
            <FieldError id=err_id error=error/>
        </div>
    }
}

/// One version of the history: when, who, what changed, and a rollback button.
fn version_view(
    v: &Value,
    open: bool,
    current: Option<u64>,
    rollback_to: RwSignal<Option<u64>>,
) -> impl IntoView + use<> {
    let version = v["version"].as_u64().unwrap_or_default();
    let time = v["time"].as_str().unwrap_or_default().to_owned();
    let who = v["who"].as_str().unwrap_or_default().to_owned();
    let changes: Vec<Change> = v["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(Change::parse)
        .collect();
    let n = changes.len();
    let is_current = current == Some(version);
    let lines = changes
        .into_iter()
        .map(|c| match c {
            Change::Changed { path, old, new } => view! {
                <li><code class="path">{path}</code>": "<del>{old}</del>" → "<ins>{new}</ins></li>
            }
            .into_any(),
            Change::Added(path) => {
                view! { <li class="added"><code class="path">{path}</code>" added"</li> }.into_any()
            }
            Change::Removed(path) => {
                view! { <li class="removed"><code class="path">{path}</code>" removed"</li> }
                    .into_any()
            }
            Change::Other(line) => view! { <li>{line}</li> }.into_any(),
        })
        .collect_view();
    view! {
        <li>
            <details open=open>
                <summary>
                    <strong>{format!("Version {version}")}</strong>
                    " · " {time} " · by " {who} " · "
                    {if n == 0 { "no changes".to_owned() } else if n == 1 { "1 change".to_owned() } else { format!("{n} changes") }}
                    {is_current.then(|| view! { " " <span class="badge active">"running"</span> })}
                </summary>
                <ul class="diff">{lines}</ul>
                {(!is_current).then(|| view! {
                    <button type="button" aria-label=format!("Roll back to version {version}") on:click=move |_| rollback_to.set(Some(version))>
                        "Roll back to this version"
                    </button>
                })}
            </details>
        </li>
    }
}
