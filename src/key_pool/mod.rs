//! The upstream API keys, and which one carries the next request.
//!
//! [`KeyPool::pick`] runs weighted round-robin over the keys that can take the request *now*:
//! enabled, not invalid, not resting for the request's model, and with headroom under their
//! per-minute, per-day and token limits for that model. With weights 2:1 the split is 2:1 and
//! evenly interleaved. State lives in a [`KeyStateStore`]; the pool itself is rebuilt from config on
//! reload (the store, keyed by key id, survives it). Every header value a key needs is built once,
//! so a pick allocates nothing.
//!
//! The pick costs the same with 3 keys or 1,000 (see [`queue`]): per model, the keys believed
//! to have headroom wait in a priority queue ordered by their next turn (stride scheduling: a key
//! of weight `w` advances by `1/w` each time it serves), and a key found without headroom moves to
//! a queue ordered by when it has some again, so a pick looks at one or two keys, not all.

mod queue;
mod reconcile;
pub mod store;
pub mod verdict;

use std::sync::{Arc, Mutex, OnceLock};

use queue::Queues;
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use crate::config::{ApiKeyConfig, Secret};
use crate::route::Route;
use crate::vertex::VertexMember;
pub use reconcile::reconcile;
pub use store::{
    Admission, ClientId, KeyLimits, KeyOutcome, KeyStateStore, MemoryStore, RestReason, Slot,
    Tokens,
};

/// One upstream API key, ready to be put on a request.
#[derive(Debug)]
pub struct UpstreamKey {
    /// The key's id from the config: safe to log and show.
    pub id: Arc<str>,
    /// `x-goog-api-key: <key>` (marked sensitive).
    pub api_key_header: HeaderValue,
    /// `Authorization: Bearer <key>` for the OpenAI-compatible surface (marked sensitive).
    pub bearer_header: HeaderValue,
    /// The key itself, to scrub it from anything Google echoes back.
    pub secret: Secret,
    /// Its limits, per model.
    pub limits: KeyLimits,
    /// A Vertex AI member's URL, credential and fix-ups; `None` for an AI Studio key.
    pub vertex: Option<Arc<VertexMember>>,
    /// Its state slot in the gateway's store, once the pool is attached to it
    /// ([`KeyPool::attach`]): the store and the per-key metrics go there directly.
    slot: OnceLock<Slot>,
}

impl UpstreamKey {
    /// Its state slot in the store its pool is attached to (see [`KeyPool::attach`]).
    pub fn slot(&self) -> Option<Slot> {
        self.slot.get().copied()
    }

    /// Whether this member can carry a request for `route` now: an AI Studio key carries every
    /// route; a Vertex member only those Vertex has, and only while it can sign in.
    pub fn can_serve(&self, route: Option<&Route>, now: Instant) -> bool {
        self.vertex.as_ref().is_none_or(|v| v.can_serve(route, now))
    }
}

/// Keys already tried for this request; inserted by failover on retries.
#[derive(Debug, Clone, Default)]
pub struct TriedKeys(pub Vec<Arc<str>>);

/// The key this request must use (it names a resource only that key can see); inserted by the
/// affinity layer.
#[derive(Debug, Clone)]
pub struct BoundKey(pub Arc<str>);

/// The key chosen for a request; inserted as a request extension by the key-balance layer and
/// read by the upstream client (and copied onto the response for the layers above).
#[derive(Debug, Clone)]
pub struct SelectedKey(pub Arc<UpstreamKey>);

/// A key value that cannot be sent in an HTTP header.
#[derive(Debug, thiserror::Error)]
#[error("gemini.api_keys[{index}].key: not a valid HTTP header value")]
pub struct InvalidKeyValue {
    /// Position in `gemini.api_keys`.
    pub index: usize,
}

/// Why no key was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickError {
    /// Every usable key is at its limit or resting; one will have headroom after this long.
    Exhausted {
        /// Time until the earliest key has headroom again.
        retry_after: Duration,
    },
    /// No key can be used at all (all invalid, disabled, or already tried).
    NoUsableKey,
}

#[derive(Debug)]
struct PoolKey {
    key: Arc<UpstreamKey>,
    weight: i64,
    enabled: bool,
}

/// The configured keys.
///
/// A pool is used with one [`KeyStateStore`] (the gateway's): [`KeyPool::attach`] resolves each
/// key's state slot once, so a pick looks nothing up by name.
#[derive(Debug)]
pub struct KeyPool {
    keys: Vec<PoolKey>,
    /// Each key's state slot and limits, in key order.
    slots: OnceLock<Vec<(Slot, KeyLimits)>>,
    /// Per model, the keys in turn order (see [`queue`]).
    queues: Mutex<Queues>,
}

impl KeyPool {
    /// Builds the pool, pre-building each key's header values.
    pub fn new(keys: &[ApiKeyConfig]) -> Result<Self, InvalidKeyValue> {
        let keys: Vec<PoolKey> = keys
            .iter()
            .enumerate()
            .map(|(index, k)| {
                let secret = k.key.expose();
                let mut api_key_header =
                    HeaderValue::from_str(secret).map_err(|_| InvalidKeyValue { index })?;
                api_key_header.set_sensitive(true);
                let mut bearer_header = HeaderValue::from_str(&format!("Bearer {secret}"))
                    .map_err(|_| InvalidKeyValue { index })?;
                bearer_header.set_sensitive(true);
                Ok(PoolKey {
                    key: Arc::new(UpstreamKey {
                        id: Arc::from(k.id.as_str()),
                        api_key_header,
                        bearer_header,
                        secret: k.key.clone(),
                        limits: KeyLimits {
                            requests_per_minute: k.max_requests_per_minute,
                            requests_per_day: k.max_requests_per_day,
                            tokens_per_minute: k.max_tokens_per_minute,
                        },
                        vertex: VertexMember::from_config(k),
                        slot: OnceLock::new(),
                    }),
                    weight: i64::from(k.weight.max(1)),
                    enabled: k.enabled,
                })
            })
            .collect::<Result<_, _>>()?;
        let queues = Mutex::new(Queues::new(
            keys.iter()
                .map(|k| (k.enabled, u64::try_from(k.weight).unwrap_or(1)))
                .collect(),
        ));
        Ok(Self {
            keys,
            slots: OnceLock::new(),
            queues,
        })
    }

    /// Resolves every key's state slot in `store` (done once; later calls do nothing). A pool
    /// is used with one store: a pick attaches it to its store if this was not done before.
    pub fn attach(&self, store: &dyn KeyStateStore) -> &[(Slot, KeyLimits)] {
        self.slots.get_or_init(|| {
            self.keys
                .iter()
                .map(|k| {
                    let slot = store.slot(&k.key.id);
                    let _ = k.key.slot.set(slot);
                    (slot, k.key.limits)
                })
                .collect()
        })
    }

    /// Picks the key for a request for `model` (empty when the request names none), skipping
    /// `exclude` (keys already tried), and counts the request against it.
    pub fn pick(
        &self,
        store: &dyn KeyStateStore,
        model: &str,
        exclude: &[Arc<str>],
        now: Instant,
    ) -> Result<Arc<UpstreamKey>, PickError> {
        self.pick_for(store, None, model, exclude, now)
    }

    /// [`KeyPool::pick`] for a request on `route` (`None`: any route): members that cannot
    /// serve it ([`UpstreamKey::can_serve`]) are skipped.
    pub fn pick_for(
        &self,
        store: &dyn KeyStateStore,
        route: Option<&Route>,
        model: &str,
        exclude: &[Arc<str>],
        now: Instant,
    ) -> Result<Arc<UpstreamKey>, PickError> {
        // Only a replay or a Live session names keys to exclude: a scan then is no cost.
        let excluded: Vec<usize> = if exclude.is_empty() {
            Vec::new()
        } else {
            self.keys
                .iter()
                .enumerate()
                .filter(|(_, k)| exclude.contains(&k.key.id))
                .map(|(i, _)| i)
                .collect()
        };
        let slots = self.attach(store);
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        queues
            .pick(model, store.generation(), now, &excluded, |i, now| {
                let k = &self.keys[i].key;
                if (!exclude.is_empty() && exclude.contains(&k.id))
                    || (route.is_some() && !k.can_serve(route, now))
                {
                    return None;
                }
                Some(store.admit_at(slots[i].0, &k.id, model, &k.limits, now, true))
            })
            .map(|i| self.keys[i].key.clone())
    }

    /// Takes the key with this id for a request (a file or cache bound to it), if it can take one.
    pub fn pick_bound(
        &self,
        store: &dyn KeyStateStore,
        id: &str,
        model: &str,
        now: Instant,
    ) -> Result<Arc<UpstreamKey>, PickError> {
        let slots = self.attach(store);
        let Some((i, k)) = self
            .keys
            .iter()
            .enumerate()
            .find(|(_, k)| &*k.key.id == id && k.enabled)
        else {
            return Err(PickError::NoUsableKey);
        };
        match store.admit_at(slots[i].0, id, model, &k.key.limits, now, true) {
            Admission::Yes => Ok(k.key.clone()),
            Admission::NotUntil(t) => Err(PickError::Exhausted {
                retry_after: t.saturating_duration_since(now),
            }),
            Admission::Never => Err(PickError::NoUsableKey),
        }
    }

    /// Whether the key with this id is enabled in the config.
    pub fn is_enabled(&self, id: &str) -> bool {
        self.keys.iter().any(|k| &*k.key.id == id && k.enabled)
    }

    /// The ids, in config order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| &*k.key.id)
    }

    /// Every key, in config order.
    pub fn keys(&self) -> impl Iterator<Item = &Arc<UpstreamKey>> {
        self.keys.iter().map(|k| &k.key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, weight: u32) -> ApiKeyConfig {
        ApiKeyConfig {
            id: id.into(),
            key: Secret::new(format!("AIza-{id}")),
            weight,
            max_requests_per_minute: None,
            max_requests_per_day: None,
            max_tokens_per_minute: None,
            enabled: true,
            label: None,
            notes: None,
            backend: Default::default(),
            vertex: None,
            proxy: None,
        }
    }

    fn picks(pool: &KeyPool, store: &MemoryStore, n: usize) -> Vec<String> {
        let now = Instant::now();
        (0..n)
            .map(|_| pool.pick(store, "m", &[], now).unwrap().id.to_string())
            .collect()
    }

    #[test]
    fn equal_weights_alternate() {
        let pool = KeyPool::new(&[key("a", 1), key("b", 1), key("c", 1)]).unwrap();
        assert_eq!(
            picks(&pool, &MemoryStore::new(), 6),
            ["a", "b", "c", "a", "b", "c"]
        );
    }

    #[test]
    fn weights_two_to_one_interleave_evenly() {
        let pool = KeyPool::new(&[key("a", 2), key("b", 1)]).unwrap();
        assert_eq!(
            picks(&pool, &MemoryStore::new(), 6),
            ["a", "b", "a", "a", "b", "a"]
        );
    }

    #[test]
    fn weighted_split_over_ten_thousand_picks_is_within_one_percent() {
        let pool = KeyPool::new(&[key("a", 5), key("b", 3), key("c", 2)]).unwrap();
        let got = picks(&pool, &MemoryStore::new(), 10_000);
        for (id, share) in [("a", 0.5), ("b", 0.3), ("c", 0.2)] {
            let n = got.iter().filter(|k| *k == id).count() as f64 / 10_000.0;
            assert!((n - share).abs() <= 0.01, "{id}: {n}");
        }
    }

    #[test]
    fn excluded_invalid_and_disabled_keys_are_skipped() {
        let mut cfg = vec![key("a", 1), key("b", 1), key("c", 1), key("d", 1)];
        cfg[3].enabled = false;
        let pool = KeyPool::new(&cfg).unwrap();
        let store = MemoryStore::new();
        store.invalidate("b", "API_KEY_INVALID");
        let now = Instant::now();
        let exclude = [Arc::from("a")];
        for _ in 0..3 {
            assert_eq!(&*pool.pick(&store, "m", &exclude, now).unwrap().id, "c");
        }
        store.invalidate("c", "x");
        assert_eq!(
            pool.pick(&store, "m", &exclude, now).unwrap_err(),
            PickError::NoUsableKey
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_at_its_limit_is_skipped_and_comes_back_when_the_window_allows() {
        let mut cfg = vec![key("a", 1), key("b", 1)];
        cfg[0].max_requests_per_minute = Some(2);
        let pool = KeyPool::new(&cfg).unwrap();
        let store = MemoryStore::new();
        let now = Instant::now();
        let got: Vec<String> = (0..6)
            .map(|_| pool.pick(&store, "m", &[], now).unwrap().id.to_string())
            .collect();
        assert_eq!(got, ["a", "b", "a", "b", "b", "b"]);
        // 30 s later (60 s / 2 per minute) "a" has room for one more.
        tokio::time::advance(Duration::from_secs(30)).await;
        let now = Instant::now();
        let got: Vec<String> = (0..3)
            .map(|_| pool.pick(&store, "m", &[], now).unwrap().id.to_string())
            .collect();
        assert!(got.contains(&"a".to_string()), "{got:?}");
        assert_eq!(got.iter().filter(|k| *k == "a").count(), 1, "{got:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn all_keys_exhausted_says_when_the_first_comes_back() {
        let mut cfg = vec![key("a", 1), key("b", 1)];
        cfg[0].max_requests_per_minute = Some(1);
        cfg[1].max_requests_per_minute = Some(2);
        let pool = KeyPool::new(&cfg).unwrap();
        let store = MemoryStore::new();
        let now = Instant::now();
        for _ in 0..3 {
            pool.pick(&store, "m", &[], now).unwrap();
        }
        // "b" (2/min) frees a slot after 30 s, "a" (1/min) after 60 s.
        assert_eq!(
            pool.pick(&store, "m", &[], now).unwrap_err(),
            PickError::Exhausted {
                retry_after: Duration::from_secs(30)
            }
        );
        // Other models have their own quota.
        assert!(pool.pick(&store, "other", &[], now).is_ok());
    }

    #[test]
    fn header_values_are_sensitive_and_debug_never_shows_the_key() {
        let pool = KeyPool::new(&[key("a", 1)]).unwrap();
        let k = pool
            .pick(&MemoryStore::new(), "", &[], Instant::now())
            .unwrap();
        assert!(k.api_key_header.is_sensitive() && k.bearer_header.is_sensitive());
        assert_eq!(k.bearer_header.to_str().unwrap(), "Bearer AIza-a");
        assert!(
            !format!("{k:?}").contains("AIza"),
            "Debug must not show the key"
        );
    }
}
