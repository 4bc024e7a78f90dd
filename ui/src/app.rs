//! The console's frame: the session (sign-in / sign-out), the notices, the figures polled for the
//! overview, the navigation and the routes.

use std::collections::VecDeque;
use std::time::Duration;

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::components::{A, Route, Router, Routes};
use leptos_router::path;
use serde_json::Value;

use crate::api::{self, Api};
use crate::model::Sample;
use crate::pages;

const TOKEN_KEY: &str = "gem-proxy.admin-token";
/// How often the overview's figures are read.
pub(crate) const POLL: Duration = Duration::from_secs(3);
/// Samples kept for the charts: ten minutes.
const SAMPLES: usize = 200;

/// The admin credential of this tab: kept in session storage, sent as `Authorization: Bearer`.
#[derive(Clone, Copy)]
pub(crate) struct Session {
    pub(crate) token: RwSignal<Option<String>>,
    /// Why the last session ended, shown on the sign-in page.
    pub(crate) ended: RwSignal<Option<String>>,
    /// The `ETag` (config version) of the config this tab last read or wrote: sent as
    /// `If-Match` with a whole-config save, so a save made from an outdated read is refused
    /// (412) instead of overwriting someone else's change.
    pub(crate) config_etag: RwSignal<Option<String>>,
}

impl Session {
    fn restore() -> Self {
        let session = Self {
            token: RwSignal::new(None),
            ended: RwSignal::new(None),
            config_etag: RwSignal::new(None),
        };
        // A sign-in link (`/#token=…`, as the quick start prints) signs in and leaves the
        // address bar without the token. The fragment never reaches the server or its logs.
        if let Some(token) = api::take_fragment_token() {
            session.sign_in(token);
            return session;
        }
        let token = api::session_storage()
            .and_then(|s| s.get_item(TOKEN_KEY).ok().flatten())
            .filter(|t| !t.is_empty());
        session.token.set(token);
        session
    }

    pub(crate) fn sign_in(&self, token: String) {
        if let Some(s) = api::session_storage() {
            let _ = s.set_item(TOKEN_KEY, &token);
        }
        self.ended.set(None);
        self.token.set(Some(token));
    }

    pub(crate) fn sign_out(&self, why: Option<String>) {
        if let Some(s) = api::session_storage() {
            let _ = s.remove_item(TOKEN_KEY);
        }
        self.ended.set(why);
        self.token.set(None);
    }
}

/// How a notice reads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tone {
    Ok,
    Error,
}

/// Messages after an action ("Key added", "Not saved: ..."), shown in a live region.
#[derive(Clone, Copy)]
pub(crate) struct Notices {
    list: RwSignal<Vec<(u64, Tone, String)>>,
    next: StoredValue<u64>,
}

impl Notices {
    pub(crate) fn get() -> Self {
        expect_context::<Self>()
    }

    pub(crate) fn ok(&self, text: impl Into<String>) {
        self.push(Tone::Ok, text.into());
    }

    pub(crate) fn error(&self, text: impl Into<String>) {
        self.push(Tone::Error, text.into());
    }

    fn push(&self, tone: Tone, text: String) {
        let id = self.next.get_value();
        self.next.set_value(id + 1);
        self.list.update(|l| {
            l.push((id, tone, text));
            if l.len() > 4 {
                l.remove(0);
            }
        });
        let list = self.list;
        set_timeout(
            move || list.update(|l| l.retain(|(i, ..)| *i != id)),
            Duration::from_secs(if tone == Tone::Error { 15 } else { 6 }),
        );
    }

    fn dismiss(&self, id: u64) {
        self.list.update(|l| l.retain(|(i, ..)| *i != id));
    }
}

/// The figures behind the overview, read every [`POLL`] while signed in, whatever page is
/// shown, so the charts have history when the overview opens.
#[derive(Clone, Copy)]
pub(crate) struct Telemetry {
    pub(crate) samples: RwSignal<VecDeque<Sample>>,
    /// The last `/health` document.
    pub(crate) health: RwSignal<Value>,
    /// Why the last reading failed.
    pub(crate) error: RwSignal<Option<String>>,
}

impl Telemetry {
    pub(crate) fn get() -> Self {
        expect_context::<Self>()
    }

    async fn read(self, api: Api) {
        let perf = api.get_json("/performance").await;
        let metrics = api.get_text("/metrics", "text/plain").await;
        let health = api.get_json("/health").await;
        match (perf, metrics) {
            (Ok(perf), Ok(metrics)) => {
                self.samples.update(|s| {
                    let sample = Sample::read(api::now_ms(), &perf, &metrics, s.back());
                    s.push_back(sample);
                    while s.len() > SAMPLES {
                        s.pop_front();
                    }
                });
                self.error.set(None);
            }
            (Err(e), _) | (_, Err(e)) => self.error.set(Some(e.message)),
        }
        if let Ok(h) = health {
            self.health.set(h);
        }
    }

    /// Fills the charts' past from the usage history (the last ten minutes of stored minutes),
    /// so they do not open empty: what is older than the first live reading goes in front.
    async fn prefill(self, api: Api) {
        let now = (api::now_ms() / 1000.0) as i64;
        let from = now - (SAMPLES as u64 * POLL.as_secs()) as i64;
        let path = format!(
            "/api/usage?from={from}&to={}&step=1m&group_by=route",
            now + 1
        );
        // The history may be off: then the charts fill from the live readings only.
        let Ok(report) = api.get_json(&path).await else {
            return;
        };
        let stored = crate::history::stored_samples(&report, from, now, POLL.as_secs());
        self.samples.update(|s| {
            let first_live = s.front().map_or(f64::INFINITY, |f| f.at_ms);
            for sample in stored.into_iter().rev() {
                if sample.at_ms < first_live - POLL.as_millis() as f64 / 2.0 {
                    s.push_front(sample);
                }
            }
            while s.len() > SAMPLES {
                s.pop_front();
            }
        });
    }
}

/// The whole console.
#[component]
pub(crate) fn App() -> impl IntoView {
    let session = Session::restore();
    provide_context(session);
    provide_context(Notices {
        list: RwSignal::new(Vec::new()),
        next: StoredValue::new(0),
    });
    provide_context(Telemetry {
        samples: RwSignal::new(VecDeque::new()),
        health: RwSignal::new(Value::Null),
        error: RwSignal::new(None),
    });
    view! {
        <Router>
            {move || {
                if session.token.with(Option::is_some) {
                    view! { <Shell/> }.into_any()
                } else {
                    view! { <pages::login::Login/> }.into_any()
                }
            }}
            <NoticeList/>
        </Router>
    }
}

/// Header, navigation and the page of the current route.
#[component]
fn Shell() -> impl IntoView {
    let session = expect_context::<Session>();
    let telemetry = Telemetry::get();
    let api = Api::get();
    if telemetry.samples.with_untracked(VecDeque::is_empty) {
        spawn_local(telemetry.prefill(api));
    }
    spawn_local(telemetry.read(api));
    if let Ok(handle) = set_interval_with_handle(move || spawn_local(telemetry.read(api)), POLL) {
        on_cleanup(move || handle.clear());
    }
    let version = move || {
        telemetry
            .health
            .with(|h| h["version"].as_str().map(|v| format!("v{v}")))
            .unwrap_or_default()
    };
    view! {
        <a class="skip" href="#main">"Skip to content"</a>
        <header class="top">
            <div class="brand">
                <span class="logo" aria-hidden="true">"◆"</span>
                " gem-proxy "
                <span class="muted">{version}</span>
            </div>
            <nav aria-label="Console">
                <A href="/" exact=true>"Overview"</A>
                <A href="/keys">"Keys"</A>
                <A href="/usage">"Usage"</A>
                <A href="/config">"Config"</A>
                <A href="/routing">"Routing"</A>
                <A href="/tokens">"Tokens"</A>
                <A href="/errors">"Errors"</A>
            </nav>
            <button class="quiet" on:click=move |_| session.sign_out(None)>"Sign out"</button>
        </header>
        <main id="main" tabindex="-1">
            <Routes fallback=|| view! { <h1>"Not found"</h1><p>"No console page at this address."</p> }>
                <Route path=path!("/") view=pages::overview::Overview/>
                <Route path=path!("/usage") view=pages::usage::Usage/>
                <Route path=path!("/keys") view=pages::keys::Keys/>
                <Route path=path!("/keys/:id/events") view=pages::usage::KeyEvents/>
                <Route path=path!("/config") view=pages::config::Config/>
                <Route path=path!("/routing") view=pages::routing::Routing/>
                <Route path=path!("/tokens") view=pages::tokens::Tokens/>
                <Route path=path!("/errors") view=pages::errors::Errors/>
            </Routes>
        </main>
    }
}

#[component]
fn NoticeList() -> impl IntoView {
    let notices = Notices::get();
    view! {
        <div class="notices" role="status" aria-live="polite">
            <For
                each=move || notices.list.get()
                key=|(id, ..)| *id
                children=move |(id, tone, text)| {
                    view! {
                        <div class="notice" class:error=tone == Tone::Error>
                            <span>{text}</span>
                            <button
                                class="quiet"
                                aria-label="Dismiss"
                                on:click=move |_| notices.dismiss(id)
                            >
                                "×"
                            </button>
                        </div>
                    }
                }
            />
        </div>
    }
}
