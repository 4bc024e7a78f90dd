//! The state every layer shares: the running configuration and what is built from it.
//!
//! [`Live`] is the configuration plus everything derived from it (the parsed upstream target, the
//! key pool with pre-built headers, the HTTP client, the token verifier). It is swapped whole
//! through an [`ArcSwap`], so reading it costs no lock. Each layer reads the snapshot when it acts (so a
//! reload applies to the very next decision); an upstream attempt runs start to end on one
//! snapshot, and a stream already under way finishes on the client and timeouts it started with.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{HeaderMap, Uri, header};

use crate::auth::{Jwks, Verifier};
use crate::config::document::ConfigDocument;
use crate::config::versions::{ChangeError, ConfigVersions};
use crate::config::{AuthConfig, Config, ConfigLoader, Problem};
use crate::http_client::{self, UpstreamClient, UpstreamTarget};
use crate::key_pool::verdict::{RestFor, Verdict};
use crate::key_pool::{KeyPool, KeyStateStore, RestReason};
use crate::tls::TlsStatus;
use crate::usage::KeyEventKind;

/// A configuration and what is built from it.
#[derive(Debug)]
pub struct Live {
    /// The configuration.
    pub config: Config,
    /// `gemini.base_url`, parsed.
    pub target: UpstreamTarget,
    /// `gemini.api_keys`, ready to use.
    pub keys: KeyPool,
    /// The pooled client to the upstream.
    pub client: UpstreamClient,
    /// The pooled clients through egress proxies, for the keys that have one.
    pub egress: crate::egress::Egress,
    /// Checks client and admin tokens; built once per `auth` section (kept across reloads that
    /// leave it alone). `None` when neither `auth.enabled` nor a JWT key is configured.
    pub verifier: Option<Arc<Verifier>>,
}

impl Live {
    /// Builds everything a validated configuration needs.
    pub fn build(config: Config) -> Result<Self, Vec<Problem>> {
        Self::build_after(config, None)
    }

    /// Builds the snapshot that follows `previous`: its verifier is kept when the `auth` section
    /// is the same, and its JWKS keys when the URL is.
    pub fn build_after(config: Config, previous: Option<&Live>) -> Result<Self, Vec<Problem>> {
        let target = UpstreamTarget::parse(&config.gemini.base_url)
            .ok_or_else(|| vec![Problem::new("gemini.base_url", "not a usable URL")])?;
        let keys = KeyPool::new(&config.gemini.api_keys)
            .map_err(|e| vec![Problem::new("", e.to_string())])?;
        let client = http_client::build_upstream_client(config.gemini.connect_timeout());
        let egress = crate::egress::Egress::build(&config.gemini);
        let verifier = match previous {
            Some(p) if p.config.auth == config.auth => p.verifier.clone(),
            _ => build_verifier(&config.auth, previous.and_then(|p| p.jwks()).cloned()),
        };
        Ok(Self {
            config,
            target,
            keys,
            client,
            egress,
            verifier,
        })
    }

    /// Starts the background work of the Vertex AI members (token refresh; a source already
    /// running for a service account keeps running).
    fn start_vertex(&self) {
        for vertex in self.keys.keys().filter_map(|k| k.vertex.as_ref()) {
            vertex.start();
        }
    }

    /// The JWKS the verifier fetches keys from, if any.
    fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.verifier.as_ref().and_then(|v| v.jwks())
    }
}

/// The verifier for an `auth` section, or `None` when nothing checks tokens. A key file that
/// changed since validation, or a JWKS URL that no longer parses, is logged and left out: the
/// other kinds of tokens keep working.
fn build_verifier(auth: &AuthConfig, jwks: Option<Arc<Jwks>>) -> Option<Arc<Verifier>> {
    let jwt_configured = !auth.jwt_secret.is_empty() || auth.jwt_public_key_path.is_some();
    if !auth.enabled && !jwt_configured {
        return None;
    }
    let verifier = Verifier::new(auth, jwks.clone()).unwrap_or_else(|e| {
        tracing::error!(error = %e, "auth: cannot load the public key; tokens that need it will be refused");
        let mut without = auth.clone();
        without.jwt_public_key_path = None;
        Verifier::new(&without, jwks).unwrap_or_else(|e| {
            tracing::error!(error = %e, "auth: bad JWKS URL");
            without.jwks_url = None;
            Verifier::new(&without, None).expect("an HMAC-only verifier always builds")
        })
    });
    Some(Arc::new(verifier))
}

/// The gateway's shared state.
#[derive(Debug)]
pub struct Gateway {
    live: ArcSwap<Live>,
    /// Key state (headroom, rests, invalid keys, affinity). Outlives config reloads; keyed by
    /// key id, so a key that survives a reload keeps its state.
    store: Arc<dyn KeyStateStore>,
    started: Instant,
    /// The config's document, history and file (admin API, rollback, file watch).
    versions: std::sync::OnceLock<ConfigVersions>,
    /// The certificate the proxy port serves (empty while TLS is off).
    tls: TlsStatus,
    /// Metrics, `/performance` and `/errors` (read at scrape time through a weak reference back
    /// to this gateway).
    metrics: Arc<crate::metrics::Metrics>,
    /// The OTLP tracer, when `metrics.otlp.enabled`.
    tracing: Option<Arc<crate::trace::Tracing>>,
    /// The usage history and per-client token budgets.
    usage: Arc<crate::usage::Usage>,
    /// The open Live API sessions.
    live_sessions: crate::live_sessions::LiveSessions,
    /// The response cache (`cache`); kept across reloads.
    cache: Arc<crate::cache::ResponseCache>,
}

impl Gateway {
    /// A gateway running `live`, its key state in the store `live.config.state` names.
    pub fn new(live: Live) -> Arc<Self> {
        let store = crate::state::open(&live.config.state);
        Self::with_store(live, store)
    }

    /// A gateway running `live` with its key state in `store`.
    pub fn with_store(live: Live, store: Arc<dyn KeyStateStore>) -> Arc<Self> {
        live.keys.attach(&*store);
        live.start_vertex();
        if let Some(jwks) = live.jwks() {
            jwks.start();
        }
        let tracing = crate::trace::Tracing::from_config(&live.config.metrics.otlp);
        let cache = Arc::new(crate::cache::ResponseCache::default());
        cache.set_max_bytes(live.config.cache.max_bytes_while_on());
        if live.config.state.backend == crate::config::state::StateBackend::Redis
            && tokio::runtime::Handle::try_current().is_ok()
            && let Some(mirror) =
                crate::cache::mirror::Mirror::start(&cache, &live.config.state.redis)
        {
            cache.set_mirror(mirror);
        }
        let gateway = Arc::new_cyclic(|me| Self {
            metrics: Arc::new(crate::metrics::Metrics::new(
                &live.config.metrics,
                me.clone(),
            )),
            tracing,
            live: ArcSwap::from_pointee(live),
            store,
            started: Instant::now(),
            versions: std::sync::OnceLock::new(),
            tls: TlsStatus::default(),
            usage: Arc::default(),
            live_sessions: Default::default(),
            cache,
        });
        let me = Arc::downgrade(&gateway);
        gateway
            .store
            .on_shared_config(Box::new(move |who, document| {
                if let Some(gateway) = me.upgrade() {
                    gateway.apply_shared_config(who, document);
                }
            }));
        gateway
    }

    /// Tells the other replicas (through a shared store) about a config change an operator just
    /// made here through the admin API.
    pub fn share_config(&self, who: &str) {
        let live = self.live();
        let document = self.versions().document().masked(&live.config);
        self.store.share_config(who, &document);
    }

    /// Applies a config change made on another replica: its document, with this replica's own
    /// secrets filling the masks, applied and persisted like an admin change. A change that
    /// needs a secret this replica does not have (a new key added with its value) is refused.
    fn apply_shared_config(&self, who: &str, document: serde_json::Value) {
        let who = format!("{who} (on another replica)");
        let live = self.live();
        // Unmasked under the versions' write lock, from the document current at that moment.
        let result = self.versions().update(
            &who,
            None,
            &live.config,
            |current| {
                current
                    .with_unmasked(document)
                    .map_err(ChangeError::Invalid)
            },
            |c| self.reload(c),
        );
        match result {
            Ok(_) => {}
            Err(e @ ChangeError::Persist { .. }) => tracing::warn!(
                who,
                error = %e,
                "config change from another replica applied, not written to the config file"
            ),
            Err(e) => tracing::warn!(
                who,
                error = %e,
                "config change from another replica refused here (make it in the config file)"
            ),
        }
    }

    /// Metrics, `/performance` and `/errors`.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The open Live API sessions (WebSocket).
    pub fn live_sessions(&self) -> &crate::live_sessions::LiveSessions {
        &self.live_sessions
    }

    /// The usage history and per-client token budgets.
    pub fn usage(&self) -> &Arc<crate::usage::Usage> {
        &self.usage
    }

    /// The response cache.
    pub fn cache(&self) -> &Arc<crate::cache::ResponseCache> {
        &self.cache
    }

    /// The OTLP tracer, when traces are on.
    pub fn tracing(&self) -> Option<&Arc<crate::trace::Tracing>> {
        self.tracing.as_ref()
    }

    /// Says where the running config came from (the file, the loader that expands it, and its
    /// document before expansion), so changes can be written back and the file watched. Without
    /// it, changes are kept in memory only. Set once, before serving.
    pub fn set_config_source(
        &self,
        path: Option<std::path::PathBuf>,
        loader: ConfigLoader,
        document: ConfigDocument,
    ) {
        let _ = self
            .versions
            .set(ConfigVersions::new(path, loader, document));
    }

    /// The config's versions.
    pub fn versions(&self) -> &ConfigVersions {
        self.versions.get_or_init(|| {
            let live = self.live();
            ConfigVersions::new(
                None,
                ConfigLoader::default(),
                ConfigDocument::from_config(&live.config),
            )
        })
    }

    /// Applies an edit of the config file made on disk, if there is one (see
    /// [`ConfigVersions::check_file`]).
    pub fn check_config_file(&self) {
        let live = self.live();
        if let Some(Ok(applied)) = self.versions().check_file(&live.config, |c| self.reload(c))
            && !applied.restart_required.is_empty()
        {
            tracing::warn!(
                changes = %applied.restart_required.join("; "),
                "these config changes take effect after a restart"
            );
        }
    }

    /// Builds and applies a new config (validated already): requests under way finish on the old
    /// one.
    pub fn reload(&self, config: Config) -> Result<(), Vec<Problem>> {
        let next = Live::build_after(config, Some(&self.live()))?;
        self.replace(next);
        Ok(())
    }

    /// The key state.
    pub fn store(&self) -> &dyn KeyStateStore {
        &*self.store
    }

    /// The key state, shared (for response bodies that report usage when they end).
    pub fn store_handle(&self) -> Arc<dyn KeyStateStore> {
        self.store.clone()
    }

    /// The current snapshot; hold it for the whole request.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Replaces the running configuration; requests already under way keep theirs. A JWKS the
    /// previous snapshot did not have starts its fetches now.
    pub fn replace(&self, live: Live) {
        let ids: Vec<&str> = live.keys.ids().collect();
        self.store.retain_keys(&ids);
        crate::key_pool::reconcile(
            &*self.store,
            &self.live.load().config.gemini.api_keys,
            &live.config.gemini.api_keys,
        );
        live.keys.attach(&*self.store);
        live.start_vertex();
        self.cache
            .set_max_bytes(live.config.cache.max_bytes_while_on());
        if !live.config.cache.enabled {
            self.cache.clear();
        }
        let previous = self.live.swap(Arc::new(live));
        let current = self.live();
        if current.config.auth != previous.config.auth {
            tracing::info!("auth configuration changed; token checks follow it");
        }
        if let Some(jwks) = current.jwks()
            && !previous.jwks().is_some_and(|old| Arc::ptr_eq(old, jwks))
        {
            jwks.start();
        }
    }

    /// When the gateway started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The certificate the proxy port serves: source, names, expiry (for `/health` and the
    /// expiry gauge).
    pub fn tls(&self) -> &TlsStatus {
        &self.tls
    }

    /// The scheme and host the client used to reach us (`server.public_url` when set), for URLs we
    /// hand back to clients.
    pub fn client_origin(&self, config: &Config, uri: &Uri, headers: &HeaderMap) -> String {
        if let Some(url) = &config.server.public_url {
            return url.trim_end_matches('/').to_owned();
        }
        let scheme = if config.server.tls.enabled {
            "https"
        } else {
            "http"
        };
        let host = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()));
        match host {
            Some(host) => format!("{scheme}://{host}"),
            None => String::new(),
        }
    }

    /// Applies what Google's answer means for `key` (a [`Verdict`] from
    /// [`classify`](crate::key_pool::verdict::classify)) to its state: counted, rested for
    /// `model`, or taken out of rotation. Failover does this for every attempt, the Live API for
    /// every refused handshake and quota close.
    pub fn apply_verdict(&self, key: &str, model: &str, verdict: &Verdict) {
        let live = self.live();
        let gemini = &live.config.gemini;
        let store = self.store();
        store.record(key, verdict.outcome());
        match verdict {
            Verdict::Rest(rest_for, reason) => {
                let rest = match rest_for {
                    RestFor::Delay(d) => *d,
                    RestFor::Default => Duration::from_secs(gemini.default_retry_delay_seconds),
                    RestFor::UntilMidnightPacific => crate::time::until_pacific_midnight(),
                    RestFor::Unusable => Duration::from_secs(gemini.unusable_rest_seconds),
                };
                self.rest_key(key, model, rest, *reason);
            }
            Verdict::Invalid(reason) => {
                tracing::warn!(key_id = key, reason = %reason, "upstream key taken out of rotation");
                store.invalidate(key, reason);
                self.usage()
                    .key_event(key, KeyEventKind::Invalid, None, reason, None);
            }
            _ => {}
        }
    }

    /// Rests `key` for `model` for `rest`: the store, the cooldown metric, the usage history.
    pub fn rest_key(&self, key: &str, model: &str, rest: Duration, reason: RestReason) {
        tracing::info!(
            key_id = key,
            model,
            rest_seconds = rest.as_secs(),
            ?reason,
            "key rests for model"
        );
        let until = crate::deadline::after(tokio::time::Instant::now(), rest);
        self.store().rest(key, model, until, reason);
        self.metrics().cooldown(key, reason);
        self.usage().key_event(
            key,
            KeyEventKind::Rest,
            Some(model),
            reason.as_str(),
            Some(rest.as_secs()),
        );
    }
}
