//! The recent failed requests from `/errors`, with counts and filters.

use std::time::Duration;

use leptos::prelude::*;
use serde_json::Value;

use crate::api::Api;
use crate::model::{ErrorEntry, ErrorFilter, distinct};
use crate::pages::Tasks;

const REFRESH: Duration = Duration::from_secs(5);

#[component]
pub(crate) fn Errors() -> impl IntoView {
    let tasks = Tasks::new();
    let api = Api::get();
    let doc = RwSignal::new(Value::Null);
    let load_error = RwSignal::new(None::<String>);
    let auto = RwSignal::new(true);
    let filter = RwSignal::new(ErrorFilter::default());

    let load = move || {
        tasks.spawn(async move {
            match api.get_json("/errors").await {
                Ok(v) => {
                    doc.set(v);
                    load_error.set(None);
                }
                Err(e) => load_error.set(Some(e.message)),
            }
        })
    };
    load();
    if let Ok(h) = set_interval_with_handle(
        move || {
            if auto.get_untracked() {
                load();
            }
        },
        REFRESH,
    ) {
        on_cleanup(move || h.clear());
    }

    let recent = Memo::new(move |_| {
        doc.with(|d| {
            serde_json::from_value::<Vec<ErrorEntry>>(d["recent"].clone()).unwrap_or_default()
        })
    });
    let shown = Memo::new(move |_| {
        let f = filter.get();
        recent.with(|r| {
            r.iter()
                .filter(|e| f.matches(e))
                .cloned()
                .collect::<Vec<_>>()
        })
    });
    let kinds =
        move || distinct(recent.with(|r| r.iter().map(|e| e.kind.clone()).collect::<Vec<_>>()));
    let keys = move || {
        distinct(recent.with(|r| {
            r.iter()
                .filter_map(|e| e.key_id.clone())
                .collect::<Vec<_>>()
        }))
    };
    let statuses = move || {
        let mut s =
            distinct(recent.with(|r| r.iter().map(|e| e.status.to_string()).collect::<Vec<_>>()));
        s.insert(0, "5xx".into());
        s.insert(0, "4xx".into());
        s
    };
    let counts = move |what: &'static str| {
        doc.with(|d| {
            d[what]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or_default()))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
    };
    let select = move |id: &'static str,
                       label: &'static str,
                       options: Box<dyn Fn() -> Vec<String> + Send + Sync>,
                       set: fn(&mut ErrorFilter, String)| {
        view! {
            <label class="inline" for=id>{label} " "</label>
            <select id=id on:change=move |ev| {
                let v = event_target_value(&ev);
                filter.update(|f| set(f, v));
            }>
                <option value="">"any"</option>
                {move || options().into_iter().map(|o| view! { <option value=o.clone()>{o.clone()}</option> }).collect_view()}
            </select>
        }
    };

    view! {
        <div class="page-head">
            <h1>"Errors"</h1>
            <span class="muted">
                {move || format!("{} since start · the last 100 are kept", doc.with(|d| d["total"].as_u64().unwrap_or_default()))}
            </span>
        </div>
        {move || load_error.get().map(|e| view! { <p class="banner error" role="alert">{e}</p> })}
        <section class="counts" aria-label="Counts">
            <div>
                <h2 class="small-title">"By kind"</h2>
                <ul class="chips">
                    {move || counts("by_kind").into_iter().map(|(k, n)| view! { <li class="chip">{k} " " <strong>{n}</strong></li> }).collect_view()}
                </ul>
            </div>
            <div>
                <h2 class="small-title">"By status"</h2>
                <ul class="chips">
                    {move || counts("by_status").into_iter().map(|(k, n)| view! { <li class="chip">{k} " " <strong>{n}</strong></li> }).collect_view()}
                </ul>
            </div>
        </section>
        <div class="toolbar" role="search" aria-label="Filter errors">
            {select("err-kind", "Kind", Box::new(kinds), |f, v| f.kind = v)}
            {select("err-status", "Status", Box::new(statuses), |f, v| f.status = v)}
            {select("err-key", "Key", Box::new(keys), |f, v| f.key = v)}
            <label class="inline">
                "Search "
                <input type="search" placeholder="message, route, request id"
                    on:input=move |ev| { let v = event_target_value(&ev); filter.update(|f| f.text = v); }/>
            </label>
            <span class="grow"></span>
            <label class="inline">
                <input type="checkbox" bind:checked=auto/>
                " Refresh every " {REFRESH.as_secs()} " s"
            </label>
            <button on:click=move |_| load()>"Refresh"</button>
        </div>
        <p class="muted" aria-live="polite">
            {move || format!("Showing {} of {}", shown.with(Vec::len), recent.with(Vec::len))}
        </p>
        <div class="table-wrap">
            <table>
                <caption class="sr-only">"Recent errors, newest first"</caption>
                <thead>
                    <tr>
                        <th scope="col">"Time (UTC)"</th>
                        <th scope="col" class="num">"Status"</th>
                        <th scope="col">"Kind"</th>
                        <th scope="col">"Route"</th>
                        <th scope="col">"Key"</th>
                        <th scope="col">"Request id"</th>
                        <th scope="col">"Message"</th>
                    </tr>
                </thead>
                <tbody>
                    {move || shown.get().into_iter().map(|e| view! {
                        <tr>
                            <td class="nowrap">{e.time.replace('T', " ").trim_end_matches('Z').to_owned()}</td>
                            <td class="num"><span class=status_class(e.status)>{e.status}</span></td>
                            <td>{e.kind}</td>
                            <td>{e.route}</td>
                            <td>{e.key_id.unwrap_or_else(|| "—".into())}</td>
                            <td class="mono small">{e.request_id.unwrap_or_default()}</td>
                            <td class="message">{e.message}</td>
                        </tr>
                    }).collect_view()}
                </tbody>
            </table>
            <Show when=move || shown.with(Vec::is_empty)>
                <p class="empty">{move || if recent.with(Vec::is_empty) { "No errors recorded." } else { "No error matches the filters." }}</p>
            </Show>
        </div>
    }
}

fn status_class(status: u16) -> &'static str {
    if status >= 500 {
        "badge invalid"
    } else {
        "badge cooling"
    }
}
