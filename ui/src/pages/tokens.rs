//! Client tokens: whether the gateway requires them (`auth.enabled`), issuing one (subject,
//! lifetime, models, rpm, Live sessions, role, request overrides) shown once with a copy button, and revoking by id.

use leptos::ev::SubmitEvent;
use leptos::html;
use leptos::prelude::*;
use serde_json::{Value, json};

use crate::api::{self, Api};
use crate::app::Notices;
use crate::components::FieldError;
use crate::pages::Tasks;

/// A token issued in this tab (the token itself is not kept).
#[derive(Clone, PartialEq)]
struct Issued {
    sub: String,
    role: String,
    /// The `live_sessions` claim, when one was set.
    live_sessions: Option<u32>,
    jti: String,
    expires_at: String,
}

impl Issued {
    /// ` · 2 Live sessions at once`, or nothing without the claim.
    fn live_sessions_text(&self) -> String {
        match self.live_sessions {
            Some(0) => " · Live sessions unlimited".to_owned(),
            Some(n) => format!(
                " · {n} Live session{} at once",
                if n == 1 { "" } else { "s" }
            ),
            None => String::new(),
        }
    }
}

/// An optional whole number typed into a form field: `Ok(None)` when empty.
fn optional_whole(text: &str) -> Result<Option<u32>, ()> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<u32>().map(Some).map_err(|_| ())
}

/// 48 characters from the browser's CSPRNG, for `auth.jwt_secret`.
fn random_secret() -> Option<String> {
    // 64 symbols: each byte maps to one without bias.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 48];
    window()
        .crypto()
        .ok()?
        .get_random_values_with_u8_array(&mut bytes)
        .ok()?;
    Some(
        bytes
            .iter()
            .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
            .collect(),
    )
}

#[component]
pub(crate) fn Tokens() -> impl IntoView {
    let tasks = Tasks::new();
    let api = Api::get();
    let notices = Notices::get();
    let config = RwSignal::new(None::<Value>);
    let load = move || {
        tasks.spawn(async move {
            match api.get_json("/api/config").await {
                Ok(v) => config.set(Some(v)),
                Err(e) => notices.error(format!("The config could not be read: {}", e.message)),
            }
        })
    };
    load();
    let auth_on = move || {
        config.with(|c| {
            c.as_ref()
                .is_some_and(|c| c["auth"]["enabled"] == json!(true))
        })
    };
    let has_secret = move || {
        config.with(|c| {
            c.as_ref().is_some_and(|c| {
                c["auth"]["jwt_secret"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty())
            })
        })
    };
    let revoked = move || {
        config.with(|c| {
            c.as_ref()
                .and_then(|c| c["auth"]["revoked_token_ids"].as_array().cloned())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
    };

    // auth.enabled (and a secret when none is set) through PUT /api/config.
    let auth_busy = RwSignal::new(false);
    let set_auth = move |enabled: bool, new_secret: Option<String>| {
        let Some(mut c) = config.get_untracked() else {
            return;
        };
        c["auth"]["enabled"] = Value::Bool(enabled);
        if let Some(s) = new_secret {
            c["auth"]["jwt_secret"] = Value::String(s);
        }
        auth_busy.set(true);
        tasks.spawn(async move {
            match api.send_json("PUT", "/api/config", Some(&c)).await {
                Ok(_) => notices.ok(if enabled {
                    "Client tokens are now required (auth.enabled: true)"
                } else {
                    "Client tokens are no longer required (auth.enabled: false)"
                }),
                Err(p) => notices.error(format!("Not changed: {}", p.summary())),
            }
            auth_busy.set(false);
            load();
        });
    };

    // Issuing.
    let sub = RwSignal::new(String::new());
    let ttl = RwSignal::new("30d".to_owned());
    let models = RwSignal::new(String::new());
    let rpm = RwSignal::new(String::new());
    let live_sessions = RwSignal::new(String::new());
    let role = RwSignal::new("client".to_owned());
    let overrides = RwSignal::new(String::new());
    let errors = RwSignal::new(std::collections::BTreeMap::<String, String>::new());
    let general = RwSignal::new(None::<String>);
    let busy = RwSignal::new(false);
    let shown = RwSignal::new(None::<(String, Issued)>);
    let issued = RwSignal::new(Vec::<Issued>::new());
    let token_field = NodeRef::<html::Input>::new();

    let issue = move |ev: SubmitEvent| {
        ev.prevent_default();
        let mut e = std::collections::BTreeMap::new();
        let s = sub.get_untracked().trim().to_owned();
        if s.is_empty() {
            e.insert(
                "sub".to_owned(),
                "a subject (who the token is for) is required".to_owned(),
            );
        }
        let mut whole = |field: &str, text: String| {
            optional_whole(&text).unwrap_or_else(|()| {
                e.insert(field.to_owned(), "must be a whole number".to_owned());
                None
            })
        };
        let rpm_n = whole("rpm", rpm.get_untracked());
        let live_n = whole("live_sessions", live_sessions.get_untracked());
        let overrides_v = overrides.get_untracked().trim().to_owned();
        let overrides_json = if overrides_v.is_empty() {
            None
        } else {
            match serde_json::from_str::<serde_json::Value>(&overrides_v) {
                Ok(v @ serde_json::Value::Array(_)) => Some(v),
                _ => {
                    e.insert(
                        "overrides".to_owned(),
                        "must be a JSON list of rules, e.g. [{\"set\": {…}}]".to_owned(),
                    );
                    None
                }
            }
        };
        errors.set(e.clone());
        general.set(None);
        if !e.is_empty() {
            crate::pages::focus_first_invalid();
            return;
        }
        let model_list: Vec<String> = models
            .get_untracked()
            .split([',', ' ', '\n'])
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect();
        let mut body = json!({ "sub": s, "ttl": ttl.get_untracked().trim(), "models": model_list, "role": role.get_untracked() });
        if let Some(n) = rpm_n {
            body["rpm"] = n.into();
        }
        if let Some(n) = live_n {
            body["live_sessions"] = n.into();
        }
        if let Some(o) = overrides_json {
            body["overrides"] = o;
        }
        busy.set(true);
        tasks.spawn(async move {
            match api.send_json("POST", "/api/tokens", Some(&body)).await {
                Ok(v) => {
                    let info = Issued {
                        sub: s.clone(),
                        role: role.get_untracked(),
                        live_sessions: live_n,
                        jti: v["jti"].as_str().unwrap_or_default().to_owned(),
                        expires_at: v["expires_at"].as_str().unwrap_or_default().to_owned(),
                    };
                    issued.update(|l| l.insert(0, info.clone()));
                    shown.set(Some((
                        v["token"].as_str().unwrap_or_default().to_owned(),
                        info,
                    )));
                    sub.set(String::new());
                    notices.ok(format!(
                        "Issued a token for {s}: copy it now, it is shown only once"
                    ));
                    request_animation_frame(move || {
                        if let Some(i) = token_field.try_get().flatten() {
                            let _ = i.focus();
                            i.select();
                        }
                    });
                }
                Err(p) => {
                    let (by_field, other) = p.split(&[
                        "sub".into(),
                        "ttl".into(),
                        "models".into(),
                        "rpm".into(),
                        "live_sessions".into(),
                        "role".into(),
                        "overrides".into(),
                    ]);
                    errors.set(by_field);
                    general.set(Some(if other.is_empty() {
                        p.message.clone()
                    } else {
                        other.join("; ")
                    }));
                }
            }
            busy.set(false);
        });
    };
    let copy = move |_| {
        let Some((token, _)) = shown.get_untracked() else {
            return;
        };
        tasks.spawn(async move {
            if api::copy_text(&token).await {
                notices.ok("Copied the token to the clipboard");
            } else {
                if let Some(i) = token_field.get_untracked() {
                    i.select();
                }
                notices.error(
                    "The browser refused the clipboard: the token is selected, press Ctrl+C",
                );
            }
        });
    };

    // Revoking.
    let jti = RwSignal::new(String::new());
    let revoke = move |id: String| {
        tasks.spawn(async move {
            match api
                .send_json("POST", "/api/tokens/revoke", Some(&json!({ "jti": id })))
                .await
            {
                Ok(_) => {
                    notices.ok(format!("Revoked the token {id}"));
                    jti.set(String::new());
                    load();
                }
                Err(p) => notices.error(format!("Not revoked: {}", p.summary())),
            }
        });
    };

    let err = move |f: &'static str| Signal::derive(move || errors.with(|e| e.get(f).cloned()));
    let invalid =
        move |f: &'static str| move || errors.with(|e| e.contains_key(f)).then_some("true");

    view! {
        <div class="page-head">
            <h1>"Tokens"</h1>
            <span class="muted">"Client tokens are JWTs signed with auth.jwt_secret; the gateway stores none of them."</span>
        </div>
        <section class="panel" aria-labelledby="auth-title">
            <h2 id="auth-title">"Client authentication"</h2>
            <p>
                {move || if auth_on() {
                    "Clients must send a token (auth.enabled is on)."
                } else {
                    "Clients need no token (auth.enabled is off): tokens you issue are not checked until you turn it on."
                }}
            </p>
            <Show when=move || config.with(Option::is_some) && !has_secret()>
                <p class="banner">"No auth.jwt_secret is set, so no token can be issued yet."</p>
            </Show>
            <div class="actions left">
                <button
                    class="primary"
                    disabled=auth_busy
                    on:click=move |_| set_auth(!auth_on(), None)
                    hidden=move || !has_secret()
                >
                    {move || if auth_on() { "Stop requiring tokens" } else { "Require tokens" }}
                </button>
                <button
                    disabled=auth_busy
                    hidden=move || has_secret() || config.with(Option::is_none)
                    on:click=move |_| match random_secret() {
                        Some(secret) => set_auth(auth_on(), Some(secret)),
                        None => notices.error("The browser has no random number generator: set auth.jwt_secret on the Config page"),
                    }
                >
                    "Set a random JWT secret"
                </button>
            </div>
        </section>
        <div class="two">
            <section class="panel" aria-labelledby="issue-title">
                <h2 id="issue-title">"Issue a token"</h2>
                <form on:submit=issue novalidate>
                    <div class="field">
                        <label for="tok-sub">"Subject (who it is for)"</label>
                        <input id="tok-sub" bind:value=sub autocomplete="off" placeholder="e.g. team-search"
                            aria-describedby="tok-sub-err" aria-invalid=invalid("sub")/>
                        <FieldError id="tok-sub-err".into() error=err("sub")/>
                    </div>
                    <div class="grid">
                        <div class="field">
                            <label for="tok-ttl">"Lifetime"</label>
                            <input id="tok-ttl" bind:value=ttl list="ttl-options" autocomplete="off"
                                aria-describedby="tok-ttl-err" aria-invalid=invalid("ttl")/>
                            <datalist id="ttl-options">
                                <option value="1h"></option>
                                <option value="12h"></option>
                                <option value="7d"></option>
                                <option value="30d"></option>
                                <option value="90d"></option>
                                <option value="365d"></option>
                            </datalist>
                            <FieldError id="tok-ttl-err".into() error=err("ttl")/>
                        </div>
                        <div class="field">
                            <label for="tok-rpm">"Requests per minute"</label>
                            <input id="tok-rpm" type="number" min="1" step="1" bind:value=rpm placeholder="the default"
                                aria-describedby="tok-rpm-err" aria-invalid=invalid("rpm")/>
                            <FieldError id="tok-rpm-err".into() error=err("rpm")/>
                        </div>
                        <div class="field">
                            <label for="tok-live-sessions">"Live sessions at once"</label>
                            <input id="tok-live-sessions" type="number" min="0" step="1" bind:value=live_sessions placeholder="no limit"
                                aria-describedby="tok-live-sessions-err" aria-invalid=invalid("live_sessions")/>
                            <FieldError id="tok-live-sessions-err".into() error=err("live_sessions")/>
                        </div>
                        <div class="field">
                            <label for="tok-role">"Role"</label>
                            <select id="tok-role" on:change=move |ev| role.set(event_target_value(&ev))>
                                <option value="client" selected=move || role.get() == "client">"client"</option>
                                <option value="admin" selected=move || role.get() == "admin">"admin (admin API)"</option>
                            </select>
                        </div>
                    </div>
                    <div class="field">
                        <label for="tok-models">"Models (patterns, comma separated; empty: any)"</label>
                        <input id="tok-models" bind:value=models autocomplete="off" placeholder="gemini-2.5-*"
                            aria-describedby="tok-models-err" aria-invalid=invalid("models")/>
                        <FieldError id="tok-models-err".into() error=err("models")/>
                    </div>
                    <div class="field">
                        <label for="tok-overrides">"Request overrides (JSON list of rules like gemini.overrides; empty: none)"</label>
                        <textarea id="tok-overrides" rows="3" bind:value=overrides autocomplete="off"
                            placeholder=r#"[{"match": {"models": ["gemini-2.5-*"]}, "set": {"generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}}}]"#
                            aria-describedby="tok-overrides-err" aria-invalid=invalid("overrides")></textarea>
                        <FieldError id="tok-overrides-err".into() error=err("overrides")/>
                    </div>
                    {move || general.get().map(|g| view! { <p class="banner error" role="alert">{g}</p> })}
                    <button type="submit" class="primary" disabled=busy>"Issue token"</button>
                </form>
                {move || shown.get().map(|(token, info)| view! {
                    <div class="once" role="region" aria-labelledby="once-title">
                        <h3 id="once-title">{format!("Token for {}", info.sub)}</h3>
                        <p>"Copy it now: it is shown only once and the gateway does not keep it."</p>
                        <div class="copy-row">
                            <label for="issued-token" class="sr-only">"The new token"</label>
                            <input id="issued-token" node_ref=token_field readonly value=token spellcheck="false"/>
                            <button class="primary" on:click=copy>"Copy"</button>
                        </div>
                        <p class="muted small">{format!("id (jti) {} · role {} · expires {}{}", info.jti, info.role, info.expires_at, info.live_sessions_text())}</p>
                        <button on:click=move |_| shown.set(None)>"Done"</button>
                    </div>
                })}
            </section>
            <section class="panel" aria-labelledby="revoke-title">
                <h2 id="revoke-title">"Revoke"</h2>
                <form
                    class="inline-form"
                    on:submit=move |ev: SubmitEvent| {
                        ev.prevent_default();
                        let id = jti.get_untracked().trim().to_owned();
                        if !id.is_empty() {
                            revoke(id);
                        }
                    }
                >
                    <label for="revoke-jti">"Token id (jti)"</label>
                    <input id="revoke-jti" bind:value=jti autocomplete="off" spellcheck="false"/>
                    <button type="submit" class="danger">"Revoke"</button>
                </form>
                <h3>"Issued in this tab"</h3>
                <Show when=move || !issued.with(Vec::is_empty) fallback=|| view! { <p class="muted">"None yet."</p> }>
                    <ul class="plain">
                        {move || issued.get().into_iter().map(|t| {
                            let id = t.jti.clone();
                            let is_revoked = {
                                let id = id.clone();
                                move || revoked().contains(&id)
                            };
                            view! {
                                <li>
                                    <span>{format!("{} ({}) · {} · expires {}{}", t.sub, t.role, t.jti, t.expires_at, t.live_sessions_text())}</span>
                                    <Show when=is_revoked.clone() fallback=move || {
                                        let id = id.clone();
                                        view! {
                                            <button class="danger" aria-label=format!("Revoke {}", id) on:click=move |_| revoke(id.clone())>"Revoke"</button>
                                        }
                                    }>
                                        <span class="badge disabled">"revoked"</span>
                                    </Show>
                                </li>
                            }
                        }).collect_view()}
                    </ul>
                </Show>
                <h3>"Revoked ids (auth.revoked_token_ids)"</h3>
                <Show when=move || !revoked().is_empty() fallback=|| view! { <p class="muted">"None."</p> }>
                    <ul class="plain mono">{move || revoked().into_iter().map(|id| view! { <li>{id}</li> }).collect_view()}</ul>
                </Show>
            </section>
        </div>
    }
}
