//! The usage history (`/api/usage`): a range (1 h, 24 h, 7 d, 30 d or custom), split by key,
//! model, client or route; stacked charts of requests and tokens, the error rate, a table of
//! totals with the estimated cost, and a CSV export of the same range. Also each key's event
//! timeline (`/api/keys/{id}/events`).

use leptos::prelude::*;
use leptos_router::hooks::use_params_map;
use serde_json::Value;

use crate::api::{self, Api};
use crate::components::{Chart, Line};
use crate::history::{
    GROUPS, RANGES, axis, csv_file_name, error_rate, fmt_cost, group_label, layers,
    parse_local_time, stacked_max, stacked_polygons,
};
use crate::model::{fmt_num, fmt_pct, nice_max};
use crate::pages::Tasks;

const W: f64 = 300.0;
const H: f64 = 96.0;

/// The range asked for: a preset's length (ending now), or custom times.
#[derive(Clone, Copy, PartialEq)]
enum Range {
    Last(i64),
    Custom(i64, i64),
}

impl Range {
    fn bounds(self) -> (i64, i64) {
        match self {
            Range::Last(len) => {
                let now = (api::now_ms() / 1000.0) as i64 + 1;
                (now - len, now)
            }
            Range::Custom(from, to) => (from, to),
        }
    }
}

#[component]
pub(crate) fn Usage() -> impl IntoView {
    let tasks = Tasks::new();
    let api = Api::get();
    let range = RwSignal::new(Range::Last(86_400));
    let group = RwSignal::new("key");
    let report = RwSignal::new(Value::Null);
    let bounds = RwSignal::new((0i64, 0i64));
    let load_error = RwSignal::new(None::<String>);
    let loading = RwSignal::new(false);
    let custom_from = RwSignal::new(String::new());
    let custom_to = RwSignal::new(String::new());
    let custom_error = RwSignal::new(None::<String>);

    let load = move || {
        let (from, to) = range.get_untracked().bounds();
        let g = group.get_untracked();
        loading.set(true);
        tasks.spawn(async move {
            let path = format!("/api/usage?from={from}&to={to}&group_by={g}");
            match api.get_json(&path).await {
                Ok(v) => {
                    bounds.set((from, to));
                    report.set(v);
                    load_error.set(None);
                }
                Err(e) => load_error.set(Some(e.message)),
            }
            loading.set(false);
        })
    };
    Effect::new(move |_| {
        range.track();
        group.track();
        load();
    });

    let export = move |_| {
        let (from, to) = bounds.get_untracked();
        let g = group.get_untracked();
        tasks.spawn(async move {
            let path = format!("/api/usage?from={from}&to={to}&group_by={g}&format=csv");
            match api.get_text(&path, "text/csv").await {
                Ok(text) => api::download(&csv_file_name(g, from, to), "text/csv", &text),
                Err(e) => load_error.set(Some(e.message)),
            }
        })
    };

    let apply_custom = move |_| match (
        parse_local_time(&custom_from.get_untracked()),
        parse_local_time(&custom_to.get_untracked()),
    ) {
        (Some(from), Some(to)) if from < to => {
            custom_error.set(None);
            range.set(Range::Custom(from, to));
        }
        (Some(_), Some(_)) => custom_error.set(Some("The start must be before the end.".into())),
        _ => custom_error.set(Some("Give both times (UTC).".into())),
    };

    let axis = Memo::new(move |_| {
        let step = report.with(|r| r["step_seconds"].as_i64()).unwrap_or(60);
        let (from, to) = bounds.get();
        axis(from, to, step)
    });
    let requests = Memo::new(move |_| report.with(|r| layers(r, &axis.get(), "requests")));
    let tokens = Memo::new(move |_| report.with(|r| layers(r, &axis.get(), "total_tokens")));
    let errors = Signal::derive(move || {
        vec![Line {
            name: "error %",
            class: "s4",
            values: report.with(|r| error_rate(r, &axis.get())),
        }]
    });
    let step_label = move || {
        report.with(|r| {
            r["step"]
                .as_str()
                .map(|s| format!("per {s}"))
                .unwrap_or_default()
        })
    };
    let span = Signal::derive(move || {
        let (from, to) = bounds.get();
        format!("{} → {} UTC", short_time(from), short_time(to))
    });
    let total = move |field: &'static str| {
        Signal::derive(move || report.with(|r| r["totals"][field].as_f64().unwrap_or(0.0)))
    };

    view! {
        <div class="page-head">
            <h1>"Usage"</h1>
            <span class="muted">{move || format!("kept across restarts · {}", span.get())}</span>
        </div>
        <div class="toolbar" role="group" aria-label="Range and grouping">
            <div class="segmented" role="radiogroup" aria-label="Range">
                {RANGES.iter().map(|&(label, len)| view! {
                    <button
                        role="radio"
                        data-range=label
                        aria-checked=move || (range.get() == Range::Last(len)).to_string()
                        class:active=move || range.get() == Range::Last(len)
                        on:click=move |_| range.set(Range::Last(len))
                    >{label}</button>
                }).collect_view()}
                <button
                    role="radio"
                    data-range="custom"
                    aria-checked=move || matches!(range.get(), Range::Custom(..)).to_string()
                    class:active=move || matches!(range.get(), Range::Custom(..))
                    on:click=move |_| {
                        if custom_from.get_untracked().is_empty() {
                            let (from, to) = range.get_untracked().bounds();
                            custom_from.set(input_time(from));
                            custom_to.set(input_time(to));
                        }
                        range.set(match range.get_untracked() {
                            Range::Custom(f, t) => Range::Custom(f, t),
                            r => { let (f, t) = r.bounds(); Range::Custom(f, t) }
                        });
                    }
                >"Custom"</button>
            </div>
            <label class="inline" for="usage-group">"Split by "</label>
            <select id="usage-group" on:change=move |ev| {
                let v = event_target_value(&ev);
                if let Some(g) = GROUPS.iter().copied().find(|g| *g == v) { group.set(g) }
            }>
                {GROUPS.iter().copied().map(|g| view! { <option value=g selected=move || group.get() == g>{g}</option> }).collect_view()}
            </select>
            <span class="grow"></span>
            <button on:click=move |_| load() disabled=loading>"Refresh"</button>
            <button on:click=export data-action="export-csv">"Export CSV"</button>
        </div>
        <Show when=move || matches!(range.get(), Range::Custom(..))>
            <form class="toolbar" aria-label="Custom range" on:submit=move |ev| { ev.prevent_default(); apply_custom(()); }>
                <label class="inline">"From (UTC) "
                    <input type="datetime-local" id="usage-from" bind:value=custom_from/>
                </label>
                <label class="inline">"To (UTC) "
                    <input type="datetime-local" id="usage-to" bind:value=custom_to/>
                </label>
                <button type="submit">"Show"</button>
                {move || custom_error.get().map(|e| view! { <span class="field-error" role="alert">{e}</span> })}
            </form>
        </Show>
        {move || load_error.get().map(|e| view! { <p class="banner error" role="alert">{e}</p> })}
        <section class="cards" aria-label="Totals">
            <Figure label="Requests" value=Signal::derive(move || fmt_num(total("requests").get()))/>
            <Figure label="Error rate" value=Signal::derive(move || fmt_pct(report.with(|r| r["totals"]["error_rate"].as_f64())))/>
            <Figure label="Tokens" value=Signal::derive(move || fmt_num(total("total_tokens").get()))/>
            <Figure label="Estimated cost" value=Signal::derive(move || fmt_cost(total("cost").get()))/>
        </section>
        <section class="charts usage-charts" aria-label="Charts">
            <StackedChart title="Requests" layers=requests step=Signal::derive(step_label) span=span/>
            <StackedChart title="Tokens" layers=tokens step=Signal::derive(step_label) span=span/>
            <Chart title="Error rate" format=|v| format!("{v:.0} %") floor=10.0 lines=errors span=span/>
        </section>
        <section class="panel" aria-labelledby="usage-table-title">
            <h2 id="usage-table-title">{move || format!("By {}", group.get())}</h2>
            <div class="table-wrap">
                <table class="usage-table">
                    <thead>
                        <tr>
                            <th scope="col">{move || group.get()}</th>
                            <th scope="col" class="num">"Requests"</th>
                            <th scope="col" class="num">"Errors"</th>
                            <th scope="col" class="num">"Error rate"</th>
                            <th scope="col" class="num">"Input"</th>
                            <th scope="col" class="num">"Output"</th>
                            <th scope="col" class="num">"Thinking"</th>
                            <th scope="col" class="num">"Tokens"</th>
                            <th scope="col" class="num">"Cost"</th>
                        </tr>
                    </thead>
                    <tbody>
                        {move || report.with(|r| r["groups"].as_array().cloned().unwrap_or_default()).into_iter().map(|g| {
                            let t = g["totals"].clone();
                            let n = |f: &str| fmt_num(t[f].as_f64().unwrap_or(0.0));
                            let name = g["name"].as_str().unwrap_or("").to_owned();
                            let by_key = group.get_untracked() == "key";
                            view! {
                                <tr data-group=name.clone()>
                                    <th scope="row">
                                        {if by_key {
                                            view! { <a href=format!("/keys/{}/events", urlencode(&name))>{name.clone()}</a> }.into_any()
                                        } else {
                                            view! { <span>{group_label(&name)}</span> }.into_any()
                                        }}
                                    </th>
                                    <td class="num" data-col="requests">{n("requests")}</td>
                                    <td class="num">{n("errors")}</td>
                                    <td class="num">{fmt_pct(t["error_rate"].as_f64())}</td>
                                    <td class="num">{n("input_tokens")}</td>
                                    <td class="num">{n("output_tokens")}</td>
                                    <td class="num">{n("thinking_tokens")}</td>
                                    <td class="num" data-col="total_tokens">{n("total_tokens")}</td>
                                    <td class="num">{fmt_cost(t["cost"].as_f64().unwrap_or(0.0))}</td>
                                </tr>
                            }
                        }).collect_view()}
                    </tbody>
                </table>
                <Show when=move || report.with(|r| r["groups"].as_array().is_none_or(Vec::is_empty))>
                    <p class="empty">"No traffic in this range."</p>
                </Show>
            </div>
            <p class="muted small">
                "Requests are upstream attempts. Costs are estimates from usage.prices. Rows older than usage.minute_retention_days are hourly. "
                {move || report.with(|r| r["replicas"].as_array().map(|a| format!("Replica(s): {}.", a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))).unwrap_or_default())}
            </p>
        </section>
    }
}

#[component]
fn Figure(label: &'static str, #[prop(into)] value: Signal<String>) -> impl IntoView {
    view! {
        <div class="card">
            <div class="card-label">{label}</div>
            <div class="card-value" data-figure=label>{value}</div>
        </div>
    }
}

/// A stacked area chart: one layer per group, with a legend and a text alternative.
#[component]
fn StackedChart(
    title: &'static str,
    #[prop(into)] layers: Signal<Vec<(String, Vec<f64>)>>,
    #[prop(into)] step: Signal<String>,
    #[prop(into)] span: Signal<String>,
) -> impl IntoView {
    let max = Memo::new(move |_| nice_max(layers.with(|l| stacked_max(l)), 1.0));
    let description = move || {
        let parts: Vec<String> = layers.with(|ls| {
            ls.iter()
                .map(|(name, v)| format!("{name}: {}", fmt_num(v.iter().sum())))
                .collect()
        });
        format!(
            "{title} {} over {}. {}",
            step.get(),
            span.get(),
            parts.join("; ")
        )
    };
    view! {
        <figure class="chart" data-chart=title>
            <figcaption>
                <span>{title} " " <span class="muted small">{move || step.get()}</span></span>
                <span class="legend">
                    {move || layers.get().into_iter().enumerate().map(|(i, (name, _))| {
                        view! { <span class=format!("key s{}", i % 6 + 1)>{name}</span> }
                    }).collect_view()}
                </span>
            </figcaption>
            <svg viewBox=format!("0 0 {W} {H}") preserveAspectRatio="none" role="img" aria-label=description>
                <line class="grid" x1="0" y1="0.5" x2=W y2="0.5"></line>
                <line class="grid" x1="0" y1=H / 2.0 x2=W y2=H / 2.0></line>
                <line class="axis" x1="0" y1=H - 0.5 x2=W y2=H - 0.5></line>
                {move || {
                    let polys = layers.with(|l| stacked_polygons(l, W, H, max.get()));
                    polys.into_iter().enumerate().map(|(i, p)| view! {
                        <polygon class=format!("area s{}", i % 6 + 1) points=p></polygon>
                    }).collect_view()
                }}
            </svg>
            <div class="scale muted">
                <span>{move || format!("max {}", fmt_num(max.get()))}</span>
                <span>{move || span.get()}</span>
            </div>
        </figure>
    }
}

/// One key's rests, invalidations and enable/disable, newest first.
#[component]
pub(crate) fn KeyEvents() -> impl IntoView {
    let tasks = Tasks::new();
    let api = Api::get();
    let params = use_params_map();
    let id = move || params.with(|p| p.get("id").unwrap_or_default());
    let events = RwSignal::new(Value::Null);
    let load_error = RwSignal::new(None::<String>);
    Effect::new(move |_| {
        let id = id();
        tasks.spawn(async move {
            match api
                .get_json(&format!("/api/keys/{}/events", urlencode(&id)))
                .await
            {
                Ok(v) => {
                    events.set(v);
                    load_error.set(None);
                }
                Err(e) => load_error.set(Some(e.message)),
            }
        })
    });
    let list = move || events.with(|e| e["events"].as_array().cloned().unwrap_or_default());
    view! {
        <div class="page-head">
            <h1>{move || format!("Key {}: events", id())}</h1>
            <a href="/keys">"← Keys"</a>
        </div>
        {move || load_error.get().map(|e| view! { <p class="banner error" role="alert">{e}</p> })}
        <ol class="timeline" aria-label="Events, newest first">
            {move || list().into_iter().map(|e| {
                let kind = e["kind"].as_str().unwrap_or("").to_owned();
                let what = match kind.as_str() {
                    "rest" => format!(
                        "rested for {} ({}, {} s)",
                        e["model"].as_str().unwrap_or("every model"),
                        e["reason"].as_str().unwrap_or(""),
                        e["seconds"].as_u64().unwrap_or(0)
                    ),
                    "invalid" => format!("taken out of rotation: {}", e["reason"].as_str().unwrap_or("")),
                    "disabled" => format!("disabled {}", e["reason"].as_str().unwrap_or("")),
                    "enabled" => format!("enabled {}", e["reason"].as_str().unwrap_or("")),
                    other => other.to_owned(),
                };
                view! {
                    <li data-kind=kind.clone()>
                        <time class="nowrap muted">{short_time_str(e["time"].as_str().unwrap_or(""))}</time>
                        " "
                        <span class=format!("badge {}", badge(&kind))>{kind.clone()}</span>
                        " "
                        <span>{what}</span>
                    </li>
                }
            }).collect_view()}
        </ol>
        <Show when=move || list().is_empty() && load_error.with(Option::is_none)>
            <p class="empty">"No events recorded for this key."</p>
        </Show>
    }
}

fn badge(kind: &str) -> &'static str {
    match kind {
        "rest" => "cooling",
        "invalid" => "invalid",
        "disabled" => "disabled",
        _ => "active",
    }
}

/// `2026-12-01T17:05:00Z` → `2026-12-01 17:05`.
fn short_time_str(t: &str) -> String {
    t.replace('T', " ")
        .trim_end_matches('Z')
        .trim_end_matches(":00")
        .to_owned()
}

fn short_time(secs: i64) -> String {
    short_time_str(&input_time(secs).replace('T', " "))
}

/// Seconds since the epoch as a `datetime-local` value (UTC).
fn input_time(secs: i64) -> String {
    let d = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(secs as f64 * 1000.0));
    d.to_iso_string()
        .as_string()
        .map(|s| s.chars().take(16).collect())
        .unwrap_or_default()
}

fn urlencode(s: &str) -> String {
    js_sys::encode_uri_component(s)
        .as_string()
        .unwrap_or_default()
}

/// The overview's charts of the stored last hour (requests and tokens per minute), so they show
/// history from the first moment instead of starting empty.
#[component]
pub(crate) fn StoredLastHour() -> impl IntoView {
    let tasks = Tasks::new();
    let api = Api::get();
    let report = RwSignal::new(Value::Null);
    let bounds = RwSignal::new((0i64, 0i64));
    let load = move || {
        let (from, to) = Range::Last(3600).bounds();
        tasks.spawn(async move {
            let path = format!("/api/usage?from={from}&to={to}&step=1m&group_by=key");
            // The history may be off: then these charts just stay empty.
            if let Ok(v) = api.get_json(&path).await {
                bounds.set((from, to));
                report.set(v);
            }
        })
    };
    load();
    if let Ok(h) = set_interval_with_handle(load, std::time::Duration::from_secs(60)) {
        on_cleanup(move || h.clear());
    }
    let per_minute = move |field: &'static str, name: &'static str, class: &'static str| {
        Signal::derive(move || {
            let (from, to) = bounds.get();
            let axis = axis(from, to, 60);
            let sum = report.with(|r| layers(r, &axis, field)).into_iter().fold(
                vec![0.0; axis.len()],
                |mut acc, (_, v)| {
                    for (a, b) in acc.iter_mut().zip(v) {
                        *a += b;
                    }
                    acc
                },
            );
            vec![Line {
                name,
                class,
                values: sum.into_iter().map(Some).collect(),
            }]
        })
    };
    let span = Signal::derive(|| "the last hour (stored)".to_owned());
    view! {
        <Chart title="Requests per minute" format=fmt_num lines=per_minute("requests", "requests/min", "s1") span=span/>
        <Chart title="Tokens per minute (stored)" format=fmt_num lines=per_minute("total_tokens", "tokens/min", "s2") span=span/>
    }
}
