//! Pieces several pages use: a figure card, a small SVG line chart, and a confirmation dialog.

use leptos::html;
use leptos::prelude::*;

use crate::model::{last_point, nice_max, polyline};

/// A figure with its name and a line under it.
#[component]
pub(crate) fn Card(
    label: &'static str,
    #[prop(into)] value: Signal<String>,
    #[prop(optional, into)] sub: Signal<String>,
) -> impl IntoView {
    view! {
        <div class="card">
            <div class="card-label">{label}</div>
            <div class="card-value" data-figure=label>{value}</div>
            <div class="card-sub muted">{sub}</div>
        </div>
    }
}

/// One line of a chart.
#[derive(Clone, PartialEq)]
pub(crate) struct Line {
    pub(crate) name: &'static str,
    /// CSS class that colours it.
    pub(crate) class: &'static str,
    pub(crate) values: Vec<Option<f64>>,
}

const W: f64 = 300.0;
const H: f64 = 72.0;

/// A small line chart of the last minutes, with its scale and a text alternative.
#[component]
pub(crate) fn Chart(
    title: &'static str,
    /// Formats a value of the y axis (`"12 ms"`).
    format: fn(f64) -> String,
    /// The y axis goes at least this high.
    #[prop(default = 1.0)]
    floor: f64,
    #[prop(into)] lines: Signal<Vec<Line>>,
    /// What the x axis covers, in words.
    #[prop(into)]
    span: Signal<String>,
) -> impl IntoView {
    let max = Memo::new(move |_| {
        let top = lines.with(|ls| {
            ls.iter()
                .flat_map(|l| l.values.iter().flatten())
                .fold(0.0f64, |a, b| a.max(*b))
        });
        nice_max(top, floor)
    });
    let description = move || {
        lines.with(|ls| {
            let parts: Vec<String> = ls
                .iter()
                .map(|l| {
                    let last = l.values.iter().rev().flatten().next();
                    let peak = l
                        .values
                        .iter()
                        .flatten()
                        .fold(None::<f64>, |a, b| Some(a.map_or(*b, |a| a.max(*b))));
                    match (last, peak) {
                        (Some(last), Some(peak)) => {
                            format!("{}: now {}, peak {}", l.name, format(*last), format(peak))
                        }
                        _ => format!("{}: no data yet", l.name),
                    }
                })
                .collect();
            format!("{title} over {}. {}", span.get(), parts.join("; "))
        })
    };
    view! {
        <figure class="chart">
            <figcaption>
                <span>{title}</span>
                <span class="legend">
                    {move || {
                        lines
                            .get()
                            .into_iter()
                            .filter(|l| lines.with(|ls| ls.len() > 1) || !l.name.is_empty())
                            .map(|l| view! { <span class=format!("key {}", l.class)>{l.name}</span> })
                            .collect_view()
                    }}
                </span>
            </figcaption>
            <svg
                viewBox=format!("0 0 {W} {H}")
                preserveAspectRatio="none"
                role="img"
                aria-label=description
            >
                <line class="grid" x1="0" y1="0.5" x2=W y2="0.5"></line>
                <line class="grid" x1="0" y1=H / 2.0 x2=W y2=H / 2.0></line>
                <line class="axis" x1="0" y1=H - 0.5 x2=W y2=H - 0.5></line>
                {move || {
                    let max = max.get();
                    lines
                        .get()
                        .into_iter()
                        .map(|l| {
                            let end = last_point(&l.values, W, H, max);
                            view! {
                                <polyline
                                    class=format!("series {}", l.class)
                                    points=polyline(&l.values, W, H, max)
                                ></polyline>
                                {end.map(|p| view! { <polyline class=format!("end {}", l.class) points=p></polyline> })}
                            }
                        })
                        .collect_view()
                }}
            </svg>
            <div class="scale muted">
                <span>{move || format!("max {}", format(max.get()))}</span>
                <span>{move || span.get()}</span>
            </div>
        </figure>
    }
}

/// A modal dialog that asks before something that cannot be undone. Open while `message` is
/// set; Escape or Cancel call `on_cancel`.
#[component]
pub(crate) fn ConfirmDialog(
    #[prop(into)] message: Signal<Option<String>>,
    confirm_label: &'static str,
    #[prop(into)] on_confirm: Callback<()>,
    #[prop(into)] on_cancel: Callback<()>,
) -> impl IntoView {
    let dialog = NodeRef::<html::Dialog>::new();
    Effect::new(move |_| {
        let open = message.with(Option::is_some);
        if let Some(d) = dialog.get() {
            if open && !d.open() {
                let _ = d.show_modal();
            } else if !open && d.open() {
                d.close();
            }
        }
    });
    view! {
        <dialog node_ref=dialog aria-labelledby="confirm-text" on:close=move |_| {
            if message.with_untracked(Option::is_some) {
                on_cancel.run(());
            }
        }>
            <form method="dialog" on:submit=move |ev| ev.prevent_default()>
                <p id="confirm-text">{move || message.get().unwrap_or_default()}</p>
                <div class="actions">
                    <button type="button" on:click=move |_| on_cancel.run(())>"Cancel"</button>
                    <button type="button" class="danger" on:click=move |_| on_confirm.run(())>
                        {confirm_label}
                    </button>
                </div>
            </form>
        </dialog>
    }
}

/// The error of one form field, referenced by the field's `aria-describedby`.
#[component]
pub(crate) fn FieldError(id: String, #[prop(into)] error: Signal<Option<String>>) -> impl IntoView {
    view! {
        <p class="field-error" id=id role="alert" hidden=move || error.with(Option::is_none)>
            {move || error.get().unwrap_or_default()}
        </p>
    }
}
