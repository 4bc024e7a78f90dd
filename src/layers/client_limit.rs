//! Client limit: a per-client requests-per-minute limit (GCRA, on the `governor` crate).
//!
//! Sits right after auth (it keys on the [`Client`] auth inserted) and before body buffering, so
//! a client over its limit is answered before its body is read.
//!
//! - **Who is a client:** with auth on, the token's subject (`sub`); with auth off, the client's
//!   IP address ([`ClientAddr`]; IPv6 by /64 so one host cannot rotate through its addresses). A
//!   request from one of `server.trusted_proxies` is attributed to the address its
//!   `X-Forwarded-For` names (the right-most one that is not itself a trusted proxy); from anyone
//!   else, `X-Forwarded-For` is ignored.
//! - **The limit:** the token's `rpm` claim, else `auth.rate_limit_per_minute`; `0` means no limit
//!   (the default). Read from the live config per request, so a reload applies to the next
//!   request. A budget of N allows a burst of N and then one request every 60/N seconds.
//! - **Errors:** 429 `RESOURCE_EXHAUSTED` with `Retry-After` (seconds until the next request is
//!   accepted), `x-ratelimit-limit` (the per-minute limit), `x-ratelimit-remaining` (0) and
//!   `x-ratelimit-reset` (seconds until the whole budget is back).
//! - **Token budgets:** the token's `tpm` / `tpd` claims and `auth.default_tokens_per_day`
//!   ([`crate::usage::budget`]), checked here too; over budget → 429 `RESOURCE_EXHAUSTED` naming
//!   the budget and when it resets, with `Retry-After`.
//! - **Memory:** one small entry per client seen in about the last minute; a janitor task drops
//!   idle clients every [`JANITOR_INTERVAL`].
//! - **Several replicas:** with `state.backend: redis` the key-state store decides instead
//!   ([`KeyStateStore::admit_client`]): the same GCRA, kept in Redis, spent from leases each
//!   replica holds (see `crate::state::lease`), so a client spread over replicas gets its limit
//!   once.
//!
//! Why not `tower_governor`: it keeps one quota per layer and ties the body type to axum's; our
//! quota varies per client (the `rpm` claim) and with reloads. So this layer keeps one governor
//! keyed limiter per distinct limit, created on first use.
//!
//! ```
//! # use gem_proxy::{config::ConfigLoader, gateway::{Gateway, Live}};
//! # use gem_proxy::layers::{auth::AuthLayer, client_limit::ClientLimitLayer};
//! # let config = ConfigLoader::default().load_str("gemini: { api_keys: [{ id: a, key: k }] }").unwrap();
//! # let gateway = Gateway::new(Live::build(config).unwrap());
//! # let inner = tower::service_fn(|_req: http::Request<()>| async {
//! #     Ok::<_, gem_proxy::error::GatewayError>(http::Response::new(()))
//! # });
//! let service = tower::ServiceBuilder::new()
//!     .layer(AuthLayer::new(gateway.clone()))
//!     .layer(ClientLimitLayer::new(gateway))
//!     .service(inner);
//! # let _ = service;
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use http::Request;
use tower::{Layer, Service};

use super::ShortCircuit;
use crate::auth::Client;
use crate::client_addr::{ClientAddr, client_ip};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::key_pool::{Admission, ClientId, KeyStateStore};
use crate::usage::BudgetLimits;

/// How often idle clients are forgotten.
pub const JANITOR_INTERVAL: Duration = Duration::from_secs(10);

/// Applies [`ClientLimit`].
#[derive(Debug, Clone)]
pub struct ClientLimitLayer {
    gateway: Arc<Gateway>,
    limiter: Arc<ClientLimiter>,
}

impl ClientLimitLayer {
    /// Limits from the gateway's live config. Inside a tokio runtime, also starts the janitor
    /// that keeps memory bounded (it stops when the layer and its services are dropped).
    pub fn new(gateway: Arc<Gateway>) -> Self {
        let limiter = Arc::new(ClientLimiter::new());
        limiter.start_janitor();
        Self { gateway, limiter }
    }

    /// The limiter, for inspection (tests, admin API).
    pub fn limiter(&self) -> &Arc<ClientLimiter> {
        &self.limiter
    }
}

impl<S> Layer<S> for ClientLimitLayer {
    type Service = ClientLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientLimit {
            inner,
            gateway: self.gateway.clone(),
            limiter: self.limiter.clone(),
        }
    }
}

/// Counts each request against its client's budget; answers 429 over it.
#[derive(Debug, Clone)]
pub struct ClientLimit<S> {
    inner: S,
    gateway: Arc<Gateway>,
    limiter: Arc<ClientLimiter>,
}

impl<S> ClientLimit<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for ClientLimit<S>
where
    S: Service<Request<B>, Error = GatewayError>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = ShortCircuit<S::Future, Result<S::Response, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let decision = {
            let live = self.gateway.live();
            // Token budgets first: a refused request should not spend a request slot. Decided
            // from in-memory counters (crate::usage::budget).
            if let Some(client) = req.extensions().get::<Client>()
                && let Some(limits) =
                    BudgetLimits::of(client, live.config.auth.default_tokens_per_day)
                && let Err(over) = self.gateway.usage().budgets().check(
                    &client.id,
                    limits,
                    crate::time::now_unix(),
                )
            {
                return ShortCircuit::ready(Err(over.into()));
            }
            let default_rpm = live.config.auth.rate_limit_per_minute;
            let store = self.gateway.store();
            match req.extensions().get::<Client>() {
                Some(client) => NonZeroU32::new(client.rpm.unwrap_or(default_rpm)).map(|rpm| {
                    shared(store, ClientId::Subject(&client.id), rpm).unwrap_or_else(|| {
                        self.limiter
                            .check(ClientKey::Subject(client.id.clone()), rpm)
                    })
                }),
                None => NonZeroU32::new(default_rpm).map(|rpm| {
                    let peer = req.extensions().get::<ClientAddr>().map(|a| a.0.ip());
                    let ip = client_ip(peer, req.headers(), &live.config.server.trusted_proxies);
                    let key = ClientKey::ip(ip);
                    let shared_ip = match &key {
                        ClientKey::Ip(ip) => shared(store, ClientId::Ip(*ip), rpm),
                        ClientKey::Subject(_) => None,
                    };
                    shared_ip.unwrap_or_else(|| self.limiter.check(key, rpm))
                }),
            }
        };
        match decision {
            Some(Err(limited)) => ShortCircuit::ready(Err(limited.into())),
            None | Some(Ok(_)) => ShortCircuit::inner(self.inner.call(req)),
        }
    }
}

/// The decision of a store that shares client limits between replicas (`state.backend: redis`),
/// or `None` when the store leaves it to this layer's limiter.
fn shared(
    store: &dyn KeyStateStore,
    client: ClientId<'_>,
    rpm: NonZeroU32,
) -> Option<Result<Allowed, Limited>> {
    let now = tokio::time::Instant::now();
    Some(match store.admit_client(client, rpm.get(), now)? {
        Admission::Yes => Ok(Allowed {
            limit: rpm.get(),
            remaining: 0,
        }),
        Admission::NotUntil(t) => {
            let retry_after = t.saturating_duration_since(now);
            let interval = Duration::from_secs(60) / rpm.get();
            Err(Limited {
                limit: rpm.get(),
                retry_after,
                reset: retry_after + interval * (rpm.get() - 1),
            })
        }
        Admission::Never => Err(Limited {
            limit: rpm.get(),
            retry_after: Duration::from_secs(60),
            reset: Duration::from_secs(60),
        }),
    })
}

/// Whose budget a request counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// An authenticated client: the token's `sub`.
    Subject(Arc<str>),
    /// An anonymous client: its address (IPv6 reduced to its /64).
    Ip(IpAddr),
}

impl ClientKey {
    /// The key for an address: IPv4 as is, IPv6 by its /64 network (an IPv4-mapped IPv6 address
    /// counts as the IPv4 address).
    pub fn ip(ip: IpAddr) -> Self {
        ClientKey::Ip(match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
            },
            v4 => v4,
        })
    }
}

/// A request over its client's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// The per-minute limit.
    pub limit: u32,
    /// Until the next request will be accepted.
    pub retry_after: Duration,
    /// Until the whole budget is back.
    pub reset: Duration,
}

impl From<Limited> for GatewayError {
    fn from(l: Limited) -> Self {
        GatewayError::RateLimited {
            limit: l.limit,
            retry_after_seconds: ceil_seconds(l.retry_after).max(1),
            reset_seconds: ceil_seconds(l.reset).max(1),
        }
    }
}

fn ceil_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A request within its client's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// The per-minute limit.
    pub limit: u32,
    /// Requests left in the current burst.
    pub remaining: u32,
}

/// The tokio clock as a governor clock, so paused-time tests drive the limits.
#[derive(Debug, Clone)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(tokio::time::Instant::now().saturating_duration_since(self.origin))
    }
}

type KeyedLimiter =
    RateLimiter<ClientKey, DashMapStateStore<ClientKey>, TokioClock, StateInformationMiddleware>;

/// Per-client GCRA budgets: one governor keyed limiter per distinct per-minute limit, each
/// keyed by [`ClientKey`]. A client whose limit changes (new `rpm` claim, config reload) starts
/// with a full budget under the new limit.
#[derive(Debug)]
pub struct ClientLimiter {
    clock: TokioClock,
    by_rpm: ArcSwap<HashMap<u32, Arc<KeyedLimiter>>>,
    /// Serialises adding and removing limiters (rare); checks never take it.
    change: Mutex<()>,
}

impl Default for ClientLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientLimiter {
    /// No clients yet.
    pub fn new() -> Self {
        Self {
            clock: TokioClock::default(),
            by_rpm: ArcSwap::from_pointee(HashMap::new()),
            change: Mutex::new(()),
        }
    }

    /// Counts one request of `key` against a budget of `rpm` per minute.
    pub fn check(&self, key: ClientKey, rpm: NonZeroU32) -> Result<Allowed, Limited> {
        let limiters = self.by_rpm.load();
        let limiter = match limiters.get(&rpm.get()) {
            Some(l) => l,
            None => {
                drop(limiters);
                return self.check_new(key, rpm);
            }
        };
        decide(limiter, &key, rpm, &self.clock)
    }

    #[cold]
    fn check_new(&self, key: ClientKey, rpm: NonZeroU32) -> Result<Allowed, Limited> {
        let limiter = {
            let _guard = self.change.lock().unwrap_or_else(|p| p.into_inner());
            let current = self.by_rpm.load_full();
            match current.get(&rpm.get()) {
                Some(l) => l.clone(),
                None => {
                    let limiter = Arc::new(KeyedLimiter::new(
                        Quota::per_minute(rpm),
                        DashMapStateStore::default(),
                        self.clock.clone(),
                    ));
                    let mut next = HashMap::clone(&current);
                    next.insert(rpm.get(), limiter.clone());
                    self.by_rpm.store(Arc::new(next));
                    limiter
                }
            }
        };
        decide(&limiter, &key, rpm, &self.clock)
    }

    /// Clients currently tracked (for tests and metrics).
    pub fn tracked_clients(&self) -> usize {
        self.by_rpm.load().values().map(|l| l.len()).sum()
    }

    /// Forgets clients whose budget is full again (they would be treated the same as new ones),
    /// frees the space, and drops limiters that track nobody.
    pub fn forget_idle(&self) {
        let _guard = self.change.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.by_rpm.load_full();
        for limiter in current.values() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if current.values().any(|l| l.is_empty()) {
            let next: HashMap<_, _> = current
                .iter()
                .filter(|(_, l)| !l.is_empty())
                .map(|(rpm, l)| (*rpm, l.clone()))
                .collect();
            self.by_rpm.store(Arc::new(next));
        }
    }

    /// Runs [`forget_idle`](Self::forget_idle) every [`JANITOR_INTERVAL`] on the current tokio
    /// runtime, until this limiter is dropped. Outside a runtime, does nothing.
    pub fn start_janitor(self: &Arc<Self>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        handle.spawn(async move {
            let mut tick = tokio::time::interval(JANITOR_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(limiter) => limiter.forget_idle(),
                    None => return,
                }
            }
        });
    }
}

fn decide(
    limiter: &KeyedLimiter,
    key: &ClientKey,
    rpm: NonZeroU32,
    clock: &TokioClock,
) -> Result<Allowed, Limited> {
    match limiter.check_key(key) {
        Ok(snapshot) => Ok(Allowed {
            limit: rpm.get(),
            remaining: snapshot.remaining_burst_capacity(),
        }),
        Err(not_until) => {
            let retry_after = not_until.wait_time_from(clock.now());
            let quota = not_until.quota();
            let refill = quota.replenish_interval() * (quota.burst_size().get() - 1);
            Err(Limited {
                limit: rpm.get(),
                retry_after,
                reset: retry_after + refill,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        assert_eq!(
            ClientKey::ip(ip("2001:db8:1:2:aaaa::1")),
            ClientKey::ip(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            ClientKey::ip(ip("2001:db8:1:2::1")),
            ClientKey::ip(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            ClientKey::ip(ip("::ffff:192.0.2.1")),
            ClientKey::ip(ip("192.0.2.1"))
        );
    }

    fn sub(s: &str) -> ClientKey {
        ClientKey::Subject(Arc::from(s))
    }

    fn rpm(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn over_the_limit_exactly_the_overflow_is_refused() {
        let limiter = ClientLimiter::new();
        let results: Vec<_> = (0..8).map(|_| limiter.check(sub("a"), rpm(5))).collect();
        let allowed: Vec<_> = results.iter().filter_map(|r| r.ok()).collect();
        assert_eq!(allowed.len(), 5);
        assert_eq!(
            allowed.iter().map(|a| a.remaining).collect::<Vec<_>>(),
            [4, 3, 2, 1, 0]
        );
        let limited: Vec<_> = results.iter().filter_map(|r| r.err()).collect();
        assert_eq!(limited.len(), 3);
        // One request every 12 s comes back; the whole budget after a minute.
        assert_eq!(limited[0].retry_after, Duration::from_secs(12));
        assert_eq!(limited[0].reset, Duration::from_secs(60));
        // Another client is unaffected.
        assert!((0..5).all(|_| limiter.check(sub("b"), rpm(5)).is_ok()));

        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(limiter.check(sub("a"), rpm(5)).is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limiter.check(sub("a"), rpm(5)).is_ok());
        assert!(limiter.check(sub("a"), rpm(5)).is_err());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            (0..6)
                .filter(|_| limiter.check(sub("a"), rpm(5)).is_ok())
                .count(),
            5
        );
    }

    mod through_the_layer {
        use super::*;
        use crate::auth::{ModelPolicy, Role};
        use crate::config::ConfigLoader;
        use crate::gateway::Live;
        use std::net::SocketAddr;
        use tower::ServiceExt;

        fn gateway(yaml_auth: &str) -> Arc<Gateway> {
            let yaml = format!("gemini: {{ api_keys: [{{ id: a, key: k }}] }}\n{yaml_auth}");
            let config = ConfigLoader::default().load_str(&yaml).unwrap();
            Gateway::new(Live::build(config).unwrap())
        }

        fn client(id: &str, rpm: Option<u32>) -> Client {
            Client {
                id: Arc::from(id),
                role: Role::Client,
                models: ModelPolicy::Any,
                rpm,
                tpm: None,
                tpd: None,
                live_sessions: None,
                overrides: None,
                token_id: None,
            }
        }

        /// Sends one request through the layer; the status the client would see.
        async fn send(layer: &ClientLimitLayer, ext: impl FnOnce(&mut Request<()>)) -> u16 {
            let svc = layer.layer(tower::service_fn(|_req: Request<()>| async {
                Ok::<_, GatewayError>(http::Response::new(()))
            }));
            let mut req = Request::new(());
            ext(&mut req);
            match svc.oneshot(req).await {
                Ok(_) => 200,
                Err(e) => e.status().as_u16(),
            }
        }

        async fn statuses(
            layer: &ClientLimitLayer,
            n: usize,
            ext: impl Fn(&mut Request<()>),
        ) -> Vec<u16> {
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(send(layer, &ext).await);
            }
            out
        }

        #[tokio::test(start_paused = true)]
        async fn a_client_over_its_claim_gets_exactly_the_overflow_as_429s() {
            let gw = gateway("auth: { rate_limit_per_minute: 100 }");
            let layer = ClientLimitLayer::new(gw);
            let alice = |r: &mut Request<()>| {
                r.extensions_mut().insert(client("alice", Some(3)));
            };
            let bob = |r: &mut Request<()>| {
                r.extensions_mut().insert(client("bob", None));
            };
            assert_eq!(statuses(&layer, 5, alice).await, [200, 200, 200, 429, 429]);
            // Bob has the configured 100 and is unaffected by Alice.
            assert!(statuses(&layer, 100, bob).await.iter().all(|s| *s == 200));
            assert_eq!(send(&layer, bob).await, 429);
            // 20 s later Alice has one more (3 per minute = one every 20 s).
            tokio::time::advance(Duration::from_secs(20)).await;
            assert_eq!(statuses(&layer, 2, alice).await, [200, 429]);
        }

        #[tokio::test(start_paused = true)]
        async fn the_429_tells_when_to_come_back() {
            let layer = ClientLimitLayer::new(gateway("auth: { rate_limit_per_minute: 2 }"));
            let req = || {
                let mut r = Request::new(());
                r.extensions_mut().insert(client("c", None));
                r
            };
            let svc = layer.layer(tower::service_fn(|_req: Request<()>| async {
                Ok::<_, GatewayError>(http::Response::new(()))
            }));
            svc.clone().oneshot(req()).await.unwrap();
            svc.clone().oneshot(req()).await.unwrap();
            tokio::time::advance(Duration::from_millis(500)).await;
            let err = svc.oneshot(req()).await.unwrap_err();
            let res = err.into_response();
            assert_eq!(res.status(), 429);
            assert_eq!(res.headers()["retry-after"], "30", "ceil(29.5 s)");
            assert_eq!(res.headers()["x-ratelimit-limit"], "2");
            assert_eq!(res.headers()["x-ratelimit-remaining"], "0");
            assert_eq!(res.headers()["x-ratelimit-reset"], "60", "ceil(59.5 s)");
        }

        #[tokio::test(start_paused = true)]
        async fn without_auth_clients_are_ips_and_zero_means_unlimited() {
            let from = |addr: &'static str| {
                move |r: &mut Request<()>| {
                    r.extensions_mut()
                        .insert(ClientAddr(addr.parse::<SocketAddr>().unwrap()));
                }
            };
            let unlimited = ClientLimitLayer::new(gateway(""));
            assert!(
                statuses(&unlimited, 500, from("192.0.2.1:1000"))
                    .await
                    .iter()
                    .all(|s| *s == 200)
            );

            let layer = ClientLimitLayer::new(gateway("auth: { rate_limit_per_minute: 2 }"));
            // A new port is the same client; another address is another client.
            assert_eq!(
                statuses(&layer, 2, from("192.0.2.1:1000")).await,
                [200, 200]
            );
            assert_eq!(send(&layer, from("192.0.2.1:2000")).await, 429);
            assert_eq!(
                statuses(&layer, 3, from("192.0.2.2:1000")).await,
                [200, 200, 429]
            );
            // X-Forwarded-For from an untrusted peer buys nothing.
            let spoof = |r: &mut Request<()>| {
                from("192.0.2.1:1000")(r);
                r.headers_mut()
                    .insert("x-forwarded-for", "203.0.113.50".parse().unwrap());
            };
            assert_eq!(send(&layer, spoof).await, 429);
        }

        #[tokio::test(start_paused = true)]
        async fn a_reloaded_limit_applies_to_the_next_request() {
            let gw = gateway("auth: { rate_limit_per_minute: 2 }");
            let layer = ClientLimitLayer::new(gw.clone());
            let carol = |r: &mut Request<()>| {
                r.extensions_mut().insert(client("carol", None));
            };
            assert_eq!(statuses(&layer, 3, carol).await, [200, 200, 429]);

            let mut config = gw.live().config.clone();
            config.auth.rate_limit_per_minute = 5;
            gw.replace(Live::build(config.clone()).unwrap());
            assert_eq!(
                statuses(&layer, 6, carol).await,
                [200, 200, 200, 200, 200, 429]
            );

            config.auth.rate_limit_per_minute = 0;
            gw.replace(Live::build(config).unwrap());
            assert!(statuses(&layer, 50, carol).await.iter().all(|s| *s == 200));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_janitor_keeps_memory_bounded_without_being_asked() {
        let limiter = Arc::new(ClientLimiter::new());
        limiter.start_janitor();
        for i in 0..10_000u32 {
            limiter
                .check(ClientKey::ip(IpAddr::V4(Ipv4Addr::from(i))), rpm(600))
                .unwrap();
        }
        assert_eq!(limiter.tracked_clients(), 10_000);
        // One janitor round later, clients whose budget is full again are gone.
        tokio::time::sleep(JANITOR_INTERVAL + Duration::from_millis(1)).await;
        assert_eq!(limiter.tracked_clients(), 0);
        assert!(limiter.by_rpm.load().is_empty());
        // The janitor ends with the limiter.
        let weak = Arc::downgrade(&limiter);
        drop(limiter);
        assert!(weak.upgrade().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_clients_are_forgotten() {
        let limiter = ClientLimiter::new();
        for i in 0..1000 {
            limiter
                .check(ClientKey::ip(IpAddr::V4(Ipv4Addr::from(i))), rpm(60))
                .unwrap();
        }
        limiter.check(sub("busy"), rpm(1)).unwrap();
        assert_eq!(limiter.tracked_clients(), 1001);
        limiter.forget_idle();
        assert_eq!(limiter.tracked_clients(), 1001, "all still recent");

        tokio::time::advance(Duration::from_secs(3)).await;
        limiter.forget_idle();
        assert_eq!(
            limiter.tracked_clients(),
            1,
            "the 60-rpm clients are full again"
        );
        assert_eq!(limiter.by_rpm.load().len(), 1, "the empty limiter is gone");
        // The remembered client is still limited.
        assert!(limiter.check(sub("busy"), rpm(1)).is_err());
    }
}
