//! Label values, all from small fixed sets (the route's is [`RouteLabel`](crate::route::RouteLabel)): which status class, how a request ended,
//! and [`BoundedSet`] for the open-ended ones (models, clients) that are kept to a cap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::StatusCode;

/// `2xx`, `4xx`, … of a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// 1xx (rare: upgrades).
    Informational,
    /// 2xx.
    Success,
    /// 3xx.
    Redirection,
    /// 4xx.
    ClientError,
    /// 5xx.
    ServerError,
}

impl StatusClass {
    /// Number of values.
    pub const COUNT: usize = 5;

    /// The class of `status`.
    pub fn of(status: StatusCode) -> Self {
        match status.as_u16() {
            0..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirection => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }

    /// Index in `0..COUNT`.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// How a request ended, for the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 1xx/2xx/3xx answer, delivered whole.
    Success,
    /// A 4xx other than 429: the request's fault (bad request, auth, not found, too large).
    ClientError,
    /// A 429: the client's limit, every key at its quota, or Google's own 429.
    RateLimited,
    /// A 5xx from Google, or the upstream unreachable / timed out (502, 504).
    UpstreamError,
    /// A 5xx the gateway made for its own reasons (no usable key, internal error, panic).
    GatewayError,
    /// The answer started but broke off (upstream cut, idle timeout).
    StreamError,
    /// The client went away before the answer ended.
    ClientGone,
}

impl Outcome {
    /// Number of values.
    pub const COUNT: usize = 7;

    /// The outcome of a response head; `kind` is the gateway error kind when the gateway made it.
    pub fn of(status: StatusCode, kind: Option<&'static str>) -> Self {
        match status.as_u16() {
            429 => Outcome::RateLimited,
            400..=499 => Outcome::ClientError,
            500..=599 => match kind {
                None | Some("upstream_unavailable" | "upstream_timeout") => Outcome::UpstreamError,
                Some(_) => Outcome::GatewayError,
            },
            _ => Outcome::Success,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ClientError => "client_error",
            Outcome::RateLimited => "rate_limited",
            Outcome::UpstreamError => "upstream_error",
            Outcome::GatewayError => "gateway_error",
            Outcome::StreamError => "stream_error",
            Outcome::ClientGone => "client_gone",
        }
    }

    /// Index in `0..COUNT`.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Index of "no value" (a request that names no model, or no client) in a [`BoundedSet`].
pub const NONE: usize = 0;
/// Index of the catch-all `other` in a [`BoundedSet`].
pub const OTHER: usize = 1;

/// An open-ended label (model names, client ids) kept to at most `cap` values: the first `cap`
/// admitted values get their own index, everything after them is [`OTHER`].
///
/// Reading is lock-free (an [`ArcSwap`] of a map, replaced whole when a value is admitted, which
/// happens at most `cap` times); admitting takes a mutex.
#[derive(Debug)]
pub struct BoundedSet {
    cap: usize,
    /// Looked up on every request (foldhash, seeded per process; the set is bounded anyway).
    map: ArcSwap<HashMap<Box<str>, usize, foldhash::fast::RandomState>>,
    names: ArcSwap<Vec<Arc<str>>>,
    admit: Mutex<()>,
}

impl BoundedSet {
    /// An empty set that admits up to `cap` values.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            map: ArcSwap::from_pointee(HashMap::default()),
            names: ArcSwap::from_pointee(vec![Arc::from(""), Arc::from("other")]),
            admit: Mutex::new(()),
        }
    }

    /// Indexes are `0..slots()`: none, other, then up to `cap` values.
    pub fn slots(&self) -> usize {
        self.cap + 2
    }

    /// Whether another value can be admitted.
    pub fn has_room(&self) -> bool {
        self.map.load().len() < self.cap
    }

    /// The index of `value` if it was admitted ([`NONE`] for an empty value, [`OTHER`] if not).
    pub fn get(&self, value: &str) -> usize {
        if value.is_empty() {
            return NONE;
        }
        self.map.load().get(value).copied().unwrap_or(OTHER)
    }

    /// The index of `value`, admitting it if there is room.
    pub fn get_or_admit(&self, value: &str) -> usize {
        match self.get(value) {
            OTHER => {}
            i => return i,
        }
        let _guard = self.admit.lock().unwrap_or_else(|e| e.into_inner());
        let map = self.map.load();
        if let Some(&i) = map.get(value) {
            return i;
        }
        if map.len() >= self.cap {
            return OTHER;
        }
        let index = map.len() + 2;
        let mut next = HashMap::clone(&map);
        next.insert(Box::from(value), index);
        let mut names = Vec::clone(&self.names.load());
        names.push(Arc::from(value));
        self.names.store(Arc::new(names));
        self.map.store(Arc::new(next));
        index
    }

    /// The label value of an index (`""` for none, `other`).
    pub fn name(&self, index: usize) -> Arc<str> {
        self.names
            .load()
            .get(index)
            .cloned()
            .unwrap_or_else(|| Arc::from("other"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_status_and_error_kind() {
        assert_eq!(Outcome::of(StatusCode::OK, None), Outcome::Success);
        assert_eq!(
            Outcome::of(StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")),
            Outcome::RateLimited
        );
        assert_eq!(
            Outcome::of(StatusCode::UNAUTHORIZED, Some("unauthenticated")),
            Outcome::ClientError
        );
        assert_eq!(
            Outcome::of(StatusCode::BAD_GATEWAY, Some("upstream_unavailable")),
            Outcome::UpstreamError
        );
        assert_eq!(
            Outcome::of(StatusCode::SERVICE_UNAVAILABLE, None),
            Outcome::UpstreamError
        );
        assert_eq!(
            Outcome::of(StatusCode::SERVICE_UNAVAILABLE, Some("no_key")),
            Outcome::GatewayError
        );
    }

    #[test]
    fn bounded_set_admits_up_to_its_cap_then_says_other() {
        let s = BoundedSet::new(2);
        assert_eq!(s.get(""), NONE);
        assert_eq!(s.get("a"), OTHER);
        let a = s.get_or_admit("a");
        let b = s.get_or_admit("b");
        assert!(a >= 2 && b >= 2 && a != b);
        assert_eq!(s.get_or_admit("c"), OTHER);
        assert_eq!(s.get("a"), a);
        assert_eq!(s.get_or_admit("b"), b);
        assert_eq!(&*s.name(a), "a");
        assert_eq!(&*s.name(OTHER), "other");
        assert_eq!(s.slots(), 4);
    }
}
