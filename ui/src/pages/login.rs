//! Sign-in with the admin token (`admin.token`, or an admin JWT).

use leptos::ev::SubmitEvent;
use leptos::prelude::*;
use leptos::task::spawn_local;

use crate::api;
use crate::app::Session;
use crate::components::FieldError;
use crate::model::ApiProblem;

#[component]
pub(crate) fn Login() -> impl IntoView {
    let session = expect_context::<Session>();
    let token = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    let busy = RwSignal::new(false);
    let submit = move |ev: SubmitEvent| {
        ev.prevent_default();
        let t = token.get_untracked().trim().to_owned();
        if t.is_empty() {
            error.set(Some("Enter the admin token.".into()));
            return;
        }
        busy.set(true);
        spawn_local(async move {
            // Any admin route tells whether the token is accepted; the history is small.
            let reply = api::send(
                "GET",
                "/api/config/history",
                Some(&t),
                "application/json",
                None,
                None,
            )
            .await;
            busy.set(false);
            match reply {
                Ok(r) if r.status == 200 => session.sign_in(t),
                Ok(r) => error.set(Some(ApiProblem::parse(r.status, &r.text).message)),
                Err(e) => error.set(Some(e.message)),
            }
        });
    };
    view! {
        <main class="login" id="main">
            <form class="panel" on:submit=submit aria-labelledby="login-title">
                <h1 id="login-title">
                    <span class="logo" aria-hidden="true">"◆"</span>
                    " gem-proxy console"
                </h1>
                <p class="muted">
                    "Sign in with the admin token (" <code>"admin.token"</code>
                    ") or an admin JWT. It is kept in this tab only, until you sign out or close it."
                </p>
                {move || {
                    session
                        .ended
                        .get()
                        .map(|why| view! { <p class="banner">{why}</p> })
                }}
                <label for="admin-token">"Admin token"</label>
                <input
                    id="admin-token"
                    type="password"
                    autocomplete="current-password"
                    required
                    bind:value=token
                    aria-describedby="login-error"
                    aria-invalid=move || error.with(Option::is_some).then_some("true")
                />
                <FieldError id="login-error".into() error=error/>
                <button type="submit" class="primary" disabled=busy>
                    {move || if busy.get() { "Signing in…" } else { "Sign in" }}
                </button>
            </form>
        </main>
    }
}
