//! Live figures: QPS, success rate, latency percentiles, time to first byte, tokens per minute and
//! requests in flight, with charts of the last minutes, and the keys' states; below them, the
//! stored last hour from the usage history (so the page never opens on empty charts).

use leptos::prelude::*;
use leptos_router::components::A;

use crate::app::{POLL, Telemetry};
use crate::components::{Card, Chart, Line};
use crate::model::{Sample, fmt_ms, fmt_num, fmt_pct, fmt_seconds};

#[component]
pub(crate) fn Overview() -> impl IntoView {
    let t = Telemetry::get();
    let last = Memo::new(move |_| t.samples.with(|s| s.back().cloned()).unwrap_or_default());
    let series = move |f: fn(&Sample) -> Option<f64>| {
        t.samples.with(|s| s.iter().map(f).collect::<Vec<_>>())
    };
    let span = Signal::derive(move || {
        let seconds = t.samples.with(|s| s.len()) as u64 * POLL.as_secs();
        format!("the last {}", fmt_seconds(seconds.max(POLL.as_secs())))
    });
    let fig = move |f: fn(&Sample) -> String| Signal::derive(move || f(&last.get()));

    let qps_lines = Signal::derive(move || {
        vec![Line {
            name: "requests/s",
            class: "s1",
            values: series(|s| Some(s.qps)),
        }]
    });
    let success_lines = Signal::derive(move || {
        vec![Line {
            name: "success %",
            class: "s2",
            values: series(|s| s.success_rate.map(|r| r * 100.0)),
        }]
    });
    let latency_lines = Signal::derive(move || {
        vec![
            Line {
                name: "P50",
                class: "s1",
                values: series(|s| s.p50_ms),
            },
            Line {
                name: "P95",
                class: "s3",
                values: series(|s| s.p95_ms),
            },
            Line {
                name: "P99",
                class: "s4",
                values: series(|s| s.p99_ms),
            },
        ]
    });
    let ttfb_lines = Signal::derive(move || {
        vec![
            Line {
                name: "P50",
                class: "s1",
                values: series(|s| s.ttfb_p50_ms),
            },
            Line {
                name: "P95",
                class: "s3",
                values: series(|s| s.ttfb_p95_ms),
            },
        ]
    });
    let token_lines = Signal::derive(move || {
        vec![Line {
            name: "tokens/min",
            class: "s2",
            values: series(|s| s.tokens_per_minute),
        }]
    });
    let flight_lines = Signal::derive(move || {
        vec![Line {
            name: "in flight",
            class: "s3",
            values: series(|s| s.in_flight),
        }]
    });

    let keys = move |state: &'static str| {
        Signal::derive(move || {
            t.health.with(|h| {
                h["keys"][state]
                    .as_u64()
                    .map(|n| n.to_string())
                    .unwrap_or("—".into())
            })
        })
    };
    let uptime = move || {
        t.health
            .with(|h| h["uptime_seconds"].as_u64())
            .map(|s| format!("up {}", fmt_seconds(s)))
            .unwrap_or_default()
    };

    view! {
        <div class="page-head">
            <h1>"Overview"</h1>
            <span class="muted">{uptime} " · refreshed every " {POLL.as_secs()} " s"</span>
        </div>
        {move || t.error.get().map(|e| view! { <p class="banner error" role="alert">"Figures unavailable: " {e}</p> })}
        <section class="cards" aria-label="Current figures">
            <Card label="Requests/s" value=fig(|s| fmt_num(s.qps)) sub=fig(|s| format!("{} requests in the last minute", s.requests_1m))/>
            <Card label="Success rate" value=fig(|s| fmt_pct(s.success_rate)) sub="last minute"/>
            <Card label="Latency P50" value=fig(|s| fmt_ms(s.p50_ms)) sub="last 5 minutes"/>
            <Card label="Latency P95" value=fig(|s| fmt_ms(s.p95_ms)) sub="last 5 minutes"/>
            <Card label="Latency P99" value=fig(|s| fmt_ms(s.p99_ms)) sub="last 5 minutes"/>
            <Card label="Time to first byte" value=fig(|s| fmt_ms(s.ttfb_p50_ms)) sub=fig(|s| format!("P50 · P95 {}", fmt_ms(s.ttfb_p95_ms)))/>
            <Card label="Tokens/min" value=fig(|s| s.tokens_per_minute.map(fmt_num).unwrap_or("—".into())) sub=fig(|s| s.tokens_total.map(|t| format!("{} since start", fmt_num(t))).unwrap_or_default())/>
            <Card label="In flight" value=fig(|s| s.in_flight.map(fmt_num).unwrap_or("—".into())) sub="requests being served"/>
        </section>
        <section class="charts" aria-label="Charts">
            <Chart title="Requests per second" format=fmt_num lines=qps_lines span=span/>
            <Chart title="Success rate" format=|v| format!("{v:.0} %") floor=100.0 lines=success_lines span=span/>
            <Chart title="Latency" format=|v| fmt_ms(Some(v)) lines=latency_lines span=span/>
            <Chart title="Time to first byte" format=|v| fmt_ms(Some(v)) lines=ttfb_lines span=span/>
            <Chart title="Tokens per minute" format=fmt_num lines=token_lines span=span/>
            <Chart title="Requests in flight" format=fmt_num lines=flight_lines span=span/>
        </section>
        <section class="charts" aria-label="The last hour">
            <crate::pages::usage::StoredLastHour/>
        </section>
        <section class="panel" aria-labelledby="keys-title">
            <h2 id="keys-title">"Keys"</h2>
            <div class="cards small">
                <Card label="Total" value=keys("total")/>
                <Card label="Active" value=keys("active")/>
                <Card label="Cooling" value=keys("cooling")/>
                <Card label="Invalid" value=keys("invalid")/>
                <Card label="Disabled" value=keys("disabled")/>
            </div>
            <p><A href="/keys">"Manage keys →"</A></p>
        </section>
    }
}
