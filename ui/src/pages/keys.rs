//! The upstream keys: table with state and counters, add (one, or several pasted), enable /
//! disable, test, edit (label, notes, weight, limits), delete; filter and bulk actions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use leptos::ev::SubmitEvent;
use leptos::html;
use leptos::prelude::*;
use serde_json::{Value, json};

use crate::api::Api;
use crate::app::Notices;
use crate::components::{ConfirmDialog, FieldError};
use crate::model::{ApiProblem, Key, fmt_num, parse_bulk_keys};
use crate::pages::{Tasks, focus_first_invalid, slug};

const REFRESH: Duration = Duration::from_secs(5);

fn key_path(id: &str, action: &str) -> String {
    let id = String::from(js_sys::encode_uri_component(id));
    if action.is_empty() {
        format!("/api/keys/{id}")
    } else {
        format!("/api/keys/{id}/{action}")
    }
}

/// The outcome of a live test of one key.
#[derive(Clone, PartialEq)]
struct TestResult {
    ok: bool,
    text: String,
}

#[component]
pub(crate) fn Keys() -> impl IntoView {
    let tasks = Tasks::new();
    let api = Api::get();
    let notices = Notices::get();
    let keys = RwSignal::new(Vec::<Key>::new());
    let loaded = RwSignal::new(false);
    let load_error = RwSignal::new(None::<String>);
    let filter = RwSignal::new(String::new());
    let state_filter = RwSignal::new(String::new());
    let selected = RwSignal::new(BTreeSet::<String>::new());
    let tests = RwSignal::new(BTreeMap::<String, TestResult>::new());
    let busy = RwSignal::new(false);
    let to_delete = RwSignal::new(None::<Vec<String>>);
    let editing = RwSignal::new(None::<Key>);

    let reload = move || {
        tasks.spawn(async move {
            match api.get_json("/api/keys").await {
                Ok(v) => {
                    let list: Vec<Key> = serde_json::from_value(v).unwrap_or_default();
                    selected.update(|s| s.retain(|id| list.iter().any(|k| &k.id == id)));
                    keys.set(list);
                    loaded.set(true);
                    load_error.set(None);
                }
                Err(e) => load_error.set(Some(e.message)),
            }
        })
    };
    reload();
    if let Ok(h) = set_interval_with_handle(reload, REFRESH) {
        on_cleanup(move || h.clear());
    }

    let shown = Memo::new(move |_| {
        let (text, state) = (filter.get(), state_filter.get());
        keys.with(|ks| {
            ks.iter()
                .filter(|k| k.matches(&text, &state))
                .cloned()
                .collect::<Vec<_>>()
        })
    });
    let shown_ids = move || shown.with(|ks| ks.iter().map(|k| k.id.clone()).collect::<Vec<_>>());
    let all_shown_selected = move || {
        let ids = shown_ids();
        !ids.is_empty() && selected.with(|s| ids.iter().all(|id| s.contains(id)))
    };

    // Actions on a list of keys, one request each, then one notice and a reload.
    let set_enabled = move |ids: Vec<String>, enabled: bool| {
        busy.set(true);
        tasks.spawn(async move {
            let action = if enabled { "enable" } else { "disable" };
            let mut failed = Vec::new();
            for id in &ids {
                if let Err(e) = api.send_json("POST", &key_path(id, action), None).await {
                    failed.push(format!("{id}: {}", e.message));
                }
            }
            busy.set(false);
            let done = ids.len() - failed.len();
            if done > 0 {
                notices.ok(format!(
                    "{} {}",
                    if enabled { "Enabled" } else { "Disabled" },
                    if done == 1 && ids.len() == 1 {
                        ids[0].clone()
                    } else {
                        format!("{done} keys")
                    }
                ));
            }
            if !failed.is_empty() {
                notices.error(format!("Not {action}d: {}", failed.join("; ")));
            }
            reload();
        });
    };
    let test = move |ids: Vec<String>| {
        busy.set(true);
        tasks.spawn(async move {
            for id in &ids {
                tests.update(|t| {
                    t.insert(
                        id.clone(),
                        TestResult {
                            ok: true,
                            text: "testing…".into(),
                        },
                    );
                });
                let result = match api.send_json("POST", &key_path(id, "test"), None).await {
                    Ok(v) => {
                        let result = v["result"].as_str().unwrap_or("error").to_owned();
                        let status = v["status"]
                            .as_u64()
                            .map(|s| format!(" (HTTP {s})"))
                            .unwrap_or_default();
                        let detail = v["detail"]
                            .as_str()
                            .map(|d| format!(": {d}"))
                            .unwrap_or_default();
                        TestResult {
                            ok: result == "valid",
                            text: format!("test: {}{status}{detail}", result.replace('_', " ")),
                        }
                    }
                    Err(e) => TestResult {
                        ok: false,
                        text: format!("test failed: {}", e.message),
                    },
                };
                tests.update(|t| {
                    t.insert(id.clone(), result);
                });
            }
            busy.set(false);
            reload();
        });
    };
    let delete = move |ids: Vec<String>| {
        busy.set(true);
        tasks.spawn(async move {
            let mut failed = Vec::new();
            for id in &ids {
                if let Err(e) = api.send_json("DELETE", &key_path(id, ""), None).await {
                    failed.push(format!("{id}: {}", e.message));
                }
            }
            busy.set(false);
            let done = ids.len() - failed.len();
            if done > 0 {
                notices.ok(if ids.len() == 1 && done == 1 {
                    format!("Deleted {}", ids[0])
                } else {
                    format!("Deleted {done} keys")
                });
            }
            if !failed.is_empty() {
                notices.error(format!("Not deleted: {}", failed.join("; ")));
            }
            selected.update(|s| s.retain(|id| !ids.contains(id)));
            reload();
        });
    };
    let chosen = move || selected.get().into_iter().collect::<Vec<_>>();

    let row = move |k: Key| {
        let id = k.id.clone();
        let (id_sel, id_chk, id_t, id_en, id_test, id_del) = (
            id.clone(),
            id.clone(),
            id.clone(),
            id.clone(),
            id.clone(),
            id.clone(),
        );
        let is_selected = Signal::derive(move || selected.with(|s| s.contains(&id_sel)));
        let enabled = k.enabled;
        let badge = k.badge().to_owned();
        let detail = Some(k.state_detail()).filter(|d| *d != k.state && *d != badge);
        let errors_title = k
            .errors
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(kind, n)| format!("{kind}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let tokens_title = k
            .tokens
            .iter()
            .filter(|(kind, _)| kind.as_str() != "total")
            .map(|(kind, n)| format!("{kind}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let edit_key = k.clone();
        view! {
            <tr class:selected=is_selected>
                <td>
                    <input
                        type="checkbox"
                        aria-label=format!("Select {id}")
                        prop:checked=is_selected
                        on:change=move |ev| {
                            let on = event_target_checked(&ev);
                            selected.update(|s| {
                                if on { s.insert(id_chk.clone()); } else { s.remove(&id_chk); }
                            });
                        }
                    />
                </td>
                <th scope="row">
                    <a class="key-id" href=format!("/keys/{}/events", js_sys::encode_uri_component(&id)) title=format!("Events of {id}")>{id.clone()}</a>
                    {k.label.clone().filter(|l| !l.is_empty()).map(|l| view! { <span class="chip">{l}</span> })}
                    {k.notes.clone().filter(|n| !n.is_empty()).map(|n| view! { <div class="notes muted">{n}</div> })}
                </th>
                <td class="num">{k.weight}</td>
                <td class="limits">{k.limits()}</td>
                <td>
                    <span class=format!("badge {badge}")>{badge.clone()}</span>
                    {detail.map(|d| view! { <div class="muted small">{d}</div> })}
                    {move || {
                        tests.with(|t| t.get(&id_t).cloned()).map(|r| {
                            view! { <div class="small" class:bad=!r.ok class:good=r.ok>{r.text}</div> }
                        })
                    }}
                </td>
                <td class="num">{fmt_num(k.requests as f64)}</td>
                <td class="num" title=errors_title>{fmt_num(k.error_total() as f64)}</td>
                <td class="num" title=tokens_title>{fmt_num(k.token_total() as f64)}</td>
                <td class="row-actions">
                    <button
                        aria-label=format!("{} {id}", if enabled { "Disable" } else { "Enable" })
                        disabled=busy
                        on:click=move |_| set_enabled(vec![id_en.clone()], !enabled)
                    >
                        {if enabled { "Disable" } else { "Enable" }}
                    </button>
                    <button aria-label=format!("Test {id}") disabled=busy on:click=move |_| test(vec![id_test.clone()])>
                        "Test"
                    </button>
                    <button aria-label=format!("Edit {id}") on:click=move |_| editing.set(Some(edit_key.clone()))>
                        "Edit"
                    </button>
                    <button
                        class="danger"
                        aria-label=format!("Delete {id}")
                        disabled=busy
                        on:click=move |_| to_delete.set(Some(vec![id_del.clone()]))
                    >
                        "Delete"
                    </button>
                </td>
            </tr>
        }
    };

    view! {
        <div class="page-head">
            <h1>"Keys"</h1>
            <span class="muted">
                {move || format!("{} keys · refreshed every {} s", keys.with(Vec::len), REFRESH.as_secs())}
            </span>
        </div>
        {move || load_error.get().map(|e| view! { <p class="banner error" role="alert">{e}</p> })}
        <div class="two">
            <AddKey keys=keys on_added=Callback::new(move |_| reload())/>
            <BulkAdd keys=keys on_added=Callback::new(move |_| reload())/>
        </div>
        <div class="toolbar" role="toolbar" aria-label="Filter and bulk actions">
            <label class="inline">
                "Filter "
                <input type="search" placeholder="id, label, notes, state" bind:value=filter/>
            </label>
            <label class="inline">
                "State "
                <select on:change=move |ev| state_filter.set(event_target_value(&ev))>
                    <option value="">"any"</option>
                    {["active", "cooling", "exhausted", "invalid", "disabled"]
                        .map(|s| view! { <option value=s>{s}</option> })}
                </select>
            </label>
            <span class="grow"></span>
            <span class="muted" aria-live="polite">
                {move || {
                    let n = selected.with(BTreeSet::len);
                    if n == 0 { "None selected".to_owned() } else { format!("{n} selected") }
                }}
            </span>
            <button disabled=move || busy.get() || selected.with(BTreeSet::is_empty) on:click=move |_| set_enabled(chosen(), true)>
                "Enable selected"
            </button>
            <button disabled=move || busy.get() || selected.with(BTreeSet::is_empty) on:click=move |_| set_enabled(chosen(), false)>
                "Disable selected"
            </button>
            <button disabled=move || busy.get() || selected.with(BTreeSet::is_empty) on:click=move |_| test(chosen())>
                "Test selected"
            </button>
            <button
                class="danger"
                disabled=move || busy.get() || selected.with(BTreeSet::is_empty)
                on:click=move |_| to_delete.set(Some(chosen()))
            >
                "Delete selected"
            </button>
        </div>
        <div class="table-wrap">
            <table>
                <caption class="sr-only">"Upstream keys"</caption>
                <thead>
                    <tr>
                        <th scope="col">
                            <input
                                type="checkbox"
                                aria-label="Select all shown keys"
                                prop:checked=all_shown_selected
                                on:change=move |ev| {
                                    let on = event_target_checked(&ev);
                                    let ids = shown_ids();
                                    selected.update(|s| {
                                        for id in ids {
                                            if on { s.insert(id); } else { s.remove(&id); }
                                        }
                                    });
                                }
                            />
                        </th>
                        <th scope="col">"Key"</th>
                        <th scope="col" class="num">"Weight"</th>
                        <th scope="col">"Limits"</th>
                        <th scope="col">"State"</th>
                        <th scope="col" class="num">"Requests"</th>
                        <th scope="col" class="num">"Errors"</th>
                        <th scope="col" class="num">"Tokens"</th>
                        <th scope="col">"Actions"</th>
                    </tr>
                </thead>
                <tbody>
                    <For each=move || shown.get() key=|k| format!("{k:?}") children=row/>
                </tbody>
            </table>
            <Show when=move || loaded.get() && shown.with(Vec::is_empty)>
                <p class="empty">{move || if keys.with(Vec::is_empty) { "No keys yet." } else { "No key matches the filter." }}</p>
            </Show>
        </div>
        <ConfirmDialog
            message=Signal::derive(move || {
                to_delete.get().map(|ids| {
                    if ids.len() == 1 {
                        format!("Delete the key {}? It is removed from the config; this cannot be undone (except by a rollback).", ids[0])
                    } else {
                        format!("Delete {} keys ({})? They are removed from the config.", ids.len(), ids.join(", "))
                    }
                })
            })
            confirm_label="Delete"
            on_confirm=Callback::new(move |_| {
                if let Some(ids) = to_delete.get_untracked() {
                    to_delete.set(None);
                    delete(ids);
                }
            })
            on_cancel=Callback::new(move |_| to_delete.set(None))
        />
        <EditKey editing=editing on_saved=Callback::new(move |_| reload())/>
    }
}

/// Optional whole number from a form field: empty is `None`.
fn optional_number(text: &str) -> Result<Option<u32>, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse::<u32>()
        .map(Some)
        .map_err(|_| "must be a whole number".into())
}

fn put_opt(v: &mut Value, field: &str, value: Option<u32>) {
    v[field] = value.map_or(Value::Null, Value::from);
}

fn put_text(v: &mut Value, field: &str, text: &str) {
    let t = text.trim();
    v[field] = if t.is_empty() {
        Value::Null
    } else {
        Value::String(t.to_owned())
    };
}

/// The form for one key.
#[component]
fn AddKey(keys: RwSignal<Vec<Key>>, on_added: Callback<()>) -> impl IntoView {
    let tasks = Tasks::new();
    let api = Api::get();
    let notices = Notices::get();
    let id = RwSignal::new(String::new());
    let key = RwSignal::new(String::new());
    let weight = RwSignal::new("1".to_owned());
    let rpm = RwSignal::new(String::new());
    let label = RwSignal::new(String::new());
    let notes = RwSignal::new(String::new());
    let errors = RwSignal::new(BTreeMap::<&'static str, String>::new());
    let general = RwSignal::new(None::<String>);
    let busy = RwSignal::new(false);
    let err = move |f: &'static str| Signal::derive(move || errors.with(|e| e.get(f).cloned()));

    let submit = move |ev: SubmitEvent| {
        ev.prevent_default();
        let mut e = BTreeMap::new();
        let id_v = id.get_untracked().trim().to_owned();
        if id_v.is_empty() {
            e.insert("id", "an id is required".to_owned());
        } else if keys.with_untracked(|ks| ks.iter().any(|k| k.id == id_v)) {
            e.insert("id", format!("the id {id_v:?} is already used"));
        }
        let key_v = key.get_untracked().trim().to_owned();
        if key_v.is_empty() {
            e.insert("key", "the API key is required".to_owned());
        }
        let w = weight
            .get_untracked()
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|w| *w > 0);
        if w.is_none() {
            e.insert("weight", "must be a whole number > 0".to_owned());
        }
        let r = optional_number(&rpm.get_untracked());
        if let Err(m) = &r {
            e.insert("rpm", m.clone());
        }
        errors.set(e.clone());
        general.set(None);
        if !e.is_empty() {
            focus_first_invalid();
            return;
        }
        let mut body = json!({ "id": id_v, "key": key_v, "weight": w });
        put_opt(&mut body, "max_requests_per_minute", r.unwrap_or_default());
        put_text(&mut body, "label", &label.get_untracked());
        put_text(&mut body, "notes", &notes.get_untracked());
        busy.set(true);
        tasks.spawn(async move {
            match api.send_json("POST", "/api/keys", Some(&body)).await {
                Ok(_) => {
                    notices.ok(format!("Added the key {id_v}"));
                    for s in [id, key, rpm, label, notes] {
                        s.set(String::new());
                    }
                    weight.set("1".into());
                    on_added.run(());
                }
                Err(p) => general.set(Some(p.summary())),
            }
            busy.set(false);
        });
    };
    let field = move |name: &'static str, label_text: &'static str, input: AnyView| {
        view! {
            <div class="field">
                <label for=format!("add-{name}")>{label_text}</label>
                {input}
                <FieldError id=format!("add-{name}-err") error=err(name)/>
            </div>
        }
    };
    let invalid =
        move |f: &'static str| move || errors.with(|e| e.contains_key(f)).then_some("true");
    view! {
        <details class="panel">
            <summary>"Add a key"</summary>
            <form on:submit=submit aria-label="Add a key">
                <div class="grid">
                    {field("id", "Id", view! {
                        <input id="add-id" bind:value=id autocomplete="off" placeholder="e.g. team-a-1"
                            aria-describedby="add-id-err" aria-invalid=invalid("id")/>
                    }.into_any())}
                    {field("key", "API key", view! {
                        <input id="add-key" type="password" bind:value=key autocomplete="off" placeholder="AIza…"
                            aria-describedby="add-key-err" aria-invalid=invalid("key")/>
                    }.into_any())}
                    {field("weight", "Weight", view! {
                        <input id="add-weight" type="number" min="1" step="1" bind:value=weight
                            aria-describedby="add-weight-err" aria-invalid=invalid("weight")/>
                    }.into_any())}
                    {field("rpm", "Requests per minute (per model)", view! {
                        <input id="add-rpm" type="number" min="1" step="1" bind:value=rpm placeholder="no limit"
                            aria-describedby="add-rpm-err" aria-invalid=invalid("rpm")/>
                    }.into_any())}
                    {field("label", "Label", view! {
                        <input id="add-label" bind:value=label autocomplete="off" placeholder="optional"/>
                    }.into_any())}
                    {field("notes", "Notes", view! {
                        <input id="add-notes" bind:value=notes autocomplete="off" placeholder="optional"/>
                    }.into_any())}
                </div>
                {move || general.get().map(|g| view! { <p class="banner error" role="alert">{g}</p> })}
                <button type="submit" class="primary" disabled=busy>"Add key"</button>
            </form>
        </details>
    }
}

/// Several keys pasted at once.
#[component]
fn BulkAdd(keys: RwSignal<Vec<Key>>, on_added: Callback<()>) -> impl IntoView {
    let tasks = Tasks::new();
    let api = Api::get();
    let notices = Notices::get();
    let text = RwSignal::new(String::new());
    let errors = RwSignal::new(Vec::<String>::new());
    let busy = RwSignal::new(false);
    let submit = move |ev: SubmitEvent| {
        ev.prevent_default();
        let existing: Vec<String> =
            keys.with_untracked(|ks| ks.iter().map(|k| k.id.clone()).collect());
        let parsed = match parse_bulk_keys(&text.get_untracked(), &existing) {
            Ok(p) => p,
            Err(e) => {
                errors.set(e);
                focus_first_invalid();
                return;
            }
        };
        errors.set(Vec::new());
        let body = json!({ "keys": parsed.iter().map(|k| k.to_json()).collect::<Vec<_>>() });
        let ids: Vec<String> = parsed.iter().map(|k| k.id.clone()).collect();
        busy.set(true);
        tasks.spawn(async move {
            match api.send_json("POST", "/api/keys", Some(&body)).await {
                Ok(_) => {
                    notices.ok(format!("Added {} keys: {}", ids.len(), ids.join(", ")));
                    text.set(String::new());
                    on_added.run(());
                }
                Err(p) => errors.set(vec![p.summary()]),
            }
            busy.set(false);
        });
    };
    view! {
        <details class="panel">
            <summary>"Paste several keys"</summary>
            <form on:submit=submit aria-label="Paste several keys">
                <label for="bulk-keys">"One key per line: " <code>"KEY"</code> ", " <code>"ID KEY"</code> " or " <code>"ID KEY WEIGHT"</code></label>
                <textarea
                    id="bulk-keys"
                    rows="5"
                    spellcheck="false"
                    autocomplete="off"
                    bind:value=text
                    aria-describedby="bulk-keys-err"
                    aria-invalid=move || errors.with(|e| !e.is_empty()).then_some("true")
                ></textarea>
                <div class="field-error" id="bulk-keys-err" role="alert" hidden=move || errors.with(Vec::is_empty)>
                    <ul>{move || errors.get().into_iter().map(|e| view! { <li>{e}</li> }).collect_view()}</ul>
                </div>
                <button type="submit" class="primary" disabled=busy>"Add keys"</button>
            </form>
        </details>
    }
}

/// Label, notes, weight and limits of one key, saved through `PUT /api/config`.
#[component]
fn EditKey(editing: RwSignal<Option<Key>>, on_saved: Callback<()>) -> impl IntoView {
    let tasks = Tasks::new();
    let api = Api::get();
    let notices = Notices::get();
    let dialog = NodeRef::<html::Dialog>::new();
    let label = RwSignal::new(String::new());
    let notes = RwSignal::new(String::new());
    let weight = RwSignal::new(String::new());
    let rpm = RwSignal::new(String::new());
    let rpd = RwSignal::new(String::new());
    let tpm = RwSignal::new(String::new());
    let errors = RwSignal::new(BTreeMap::<String, String>::new());
    let general = RwSignal::new(None::<String>);
    let busy = RwSignal::new(false);
    let opt = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_default();

    Effect::new(move |_| {
        let key = editing.get();
        if let Some(k) = &key {
            label.set(k.label.clone().unwrap_or_default());
            notes.set(k.notes.clone().unwrap_or_default());
            weight.set(k.weight.to_string());
            rpm.set(opt(k.max_requests_per_minute));
            rpd.set(opt(k.max_requests_per_day));
            tpm.set(opt(k.max_tokens_per_minute));
            errors.set(BTreeMap::new());
            general.set(None);
        }
        if let Some(d) = dialog.get() {
            if key.is_some() && !d.open() {
                let _ = d.show_modal();
            } else if key.is_none() && d.open() {
                d.close();
            }
        }
    });

    let submit = move |ev: SubmitEvent| {
        ev.prevent_default();
        let Some(key) = editing.get_untracked() else {
            return;
        };
        let mut e = BTreeMap::new();
        let w = weight.get_untracked().trim().parse::<u32>().ok();
        if w.is_none() {
            e.insert("weight".to_owned(), "must be a whole number".to_owned());
        }
        let mut limits = Vec::new();
        for (name, s) in [
            ("max_requests_per_minute", rpm),
            ("max_requests_per_day", rpd),
            ("max_tokens_per_minute", tpm),
        ] {
            match optional_number(&s.get_untracked()) {
                Ok(v) => limits.push((name, v)),
                Err(m) => {
                    e.insert(name.to_owned(), m);
                }
            }
        }
        errors.set(e.clone());
        if !e.is_empty() {
            focus_first_invalid();
            return;
        }
        let (label_v, notes_v) = (label.get_untracked(), notes.get_untracked());
        busy.set(true);
        tasks.spawn(async move {
            let result = async {
                let mut config = api.get_json("/api/config").await?;
                let entries = config["gemini"]["api_keys"].as_array_mut();
                let Some((index, entry)) = entries
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .find(|(_, k)| k["id"].as_str() == Some(key.id.as_str()))
                else {
                    return Err(ApiProblem {
                        status: 404,
                        message: format!("the key {} is no longer in the config", key.id),
                        violations: Vec::new(),
                    });
                };
                entry["weight"] = w.into();
                for (name, v) in &limits {
                    put_opt(entry, name, *v);
                }
                put_text(entry, "label", &label_v);
                put_text(entry, "notes", &notes_v);
                api.send_json("PUT", "/api/config", Some(&config))
                    .await
                    .map_err(|p| (index, p))
                    .map_err(|(index, p)| {
                        // Show the key's own violations next to its fields.
                        let prefix = format!("gemini.api_keys[{index}].");
                        let mut rest = p.clone();
                        let mut by_field = BTreeMap::new();
                        rest.violations
                            .retain(|(f, d)| match f.strip_prefix(&prefix) {
                                Some(name) => {
                                    by_field.insert(name.to_owned(), d.clone());
                                    false
                                }
                                None => true,
                            });
                        errors.set(by_field);
                        rest
                    })
            }
            .await;
            busy.set(false);
            match result {
                Ok(_) => {
                    notices.ok(format!("Saved the key {}", key.id));
                    editing.set(None);
                    on_saved.run(());
                }
                Err(p) => {
                    if p.violations.is_empty() && errors.with_untracked(|e| !e.is_empty()) {
                        general.set(None);
                    } else {
                        general.set(Some(p.summary()));
                    }
                    focus_first_invalid();
                }
            }
        });
    };
    let err = move |f: &'static str| Signal::derive(move || errors.with(|e| e.get(f).cloned()));
    let invalid =
        move |f: &'static str| move || errors.with(|e| e.contains_key(f)).then_some("true");
    let number = move |name: &'static str, text: &'static str, value: RwSignal<String>| {
        let id = format!("edit-{}", slug(name));
        let err_id = format!("{id}-err");
        view! {
            <div class="field">
                <label for=id.clone()>{text}</label>
                <input id=id type="number" min="0" step="1" bind:value=value placeholder="no limit"
                    aria-describedby=err_id.clone() aria-invalid=invalid(name)/>
                <FieldError id=err_id error=err(name)/>
            </div>
        }
    };
    view! {
        <dialog node_ref=dialog aria-labelledby="edit-title" on:close=move |_| editing.set(None)>
            <form on:submit=submit>
                <h2 id="edit-title">{move || format!("Edit {}", editing.get().map(|k| k.id).unwrap_or_default())}</h2>
                <div class="field">
                    <label for="edit-label">"Label"</label>
                    <input id="edit-label" bind:value=label autocomplete="off"/>
                </div>
                <div class="field">
                    <label for="edit-notes">"Notes"</label>
                    <textarea id="edit-notes" rows="3" bind:value=notes></textarea>
                </div>
                <div class="grid">
                    <div class="field">
                        <label for="edit-weight">"Weight"</label>
                        <input id="edit-weight" type="number" min="1" step="1" bind:value=weight
                            aria-describedby="edit-weight-err" aria-invalid=invalid("weight")/>
                        <FieldError id="edit-weight-err".into() error=err("weight")/>
                    </div>
                    {number("max_requests_per_minute", "Requests per minute", rpm)}
                    {number("max_requests_per_day", "Requests per day", rpd)}
                    {number("max_tokens_per_minute", "Tokens per minute", tpm)}
                </div>
                {move || general.get().map(|g| view! { <p class="banner error" role="alert">{g}</p> })}
                <div class="actions">
                    <button type="button" on:click=move |_| editing.set(None)>"Cancel"</button>
                    <button type="submit" class="primary" disabled=busy>"Save"</button>
                </div>
            </form>
        </dialog>
    }
}
