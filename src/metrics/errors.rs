//! `/errors`: counts of failed requests by kind, by status and by key since start, and the last
//! [`RECENT`] of them.
//!
//! Only failed requests reach it (a 4xx/5xx answer, or an answer that broke off), so its mutex is
//! off the path of successful requests. Messages are those of the answer the client got: the
//! gateway's own (which never carry a key or token) or Google's (scrubbed of the upstream key by
//! failover), cut to [`MESSAGE_CHARS`] characters.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// How many recent errors are kept.
pub const RECENT: usize = 100;
/// Longest message kept.
pub const MESSAGE_CHARS: usize = 300;

/// One failed request.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorEntry {
    /// When it ended (UTC, RFC 3339).
    pub time: String,
    /// Seconds since the Unix epoch.
    pub unix_time: u64,
    /// Its `x-request-id`.
    pub request_id: Option<String>,
    /// Its route label (`generate`, `stream`, ...).
    pub route: &'static str,
    /// The upstream key's id, when one was used.
    #[serde(serialize_with = "ser_opt_str")]
    pub key_id: Option<Arc<str>>,
    /// The HTTP status the client got.
    pub status: u16,
    /// The gateway's error kind (`rate_limited`, `upstream_timeout`, ...), `upstream` for an
    /// error answer from Google, `stream_error` for an answer that broke off.
    pub kind: &'static str,
    /// What the answer said (Google's `error.message` or the gateway's), secret-free.
    pub message: String,
}

fn ser_opt_str<S: serde::Serializer>(v: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_some(&**v),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Default)]
struct Inner {
    total: u64,
    by_kind: BTreeMap<&'static str, u64>,
    by_status: BTreeMap<u16, u64>,
    by_key: BTreeMap<Arc<str>, KeyErrors>,
    recent: VecDeque<ErrorEntry>,
}

/// Error counts of one key.
#[derive(Debug, Default, Clone, Serialize)]
pub struct KeyErrors {
    /// All errors with this key.
    pub total: u64,
    /// By kind.
    pub by_kind: BTreeMap<&'static str, u64>,
    /// By status.
    pub by_status: BTreeMap<u16, u64>,
}

/// The error log.
#[derive(Debug, Default)]
pub struct ErrorLog {
    inner: Mutex<Inner>,
}

impl ErrorLog {
    /// Records one failed request.
    pub fn record(&self, entry: ErrorEntry) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.total += 1;
        *inner.by_kind.entry(entry.kind).or_default() += 1;
        *inner.by_status.entry(entry.status).or_default() += 1;
        if let Some(key) = &entry.key_id {
            let k = inner.by_key.entry(key.clone()).or_default();
            k.total += 1;
            *k.by_kind.entry(entry.kind).or_default() += 1;
            *k.by_status.entry(entry.status).or_default() += 1;
        }
        if inner.recent.len() == RECENT {
            inner.recent.pop_front();
        }
        inner.recent.push_back(entry);
    }

    /// The `/errors` document: counts, and the recent errors newest first.
    pub fn snapshot(&self) -> serde_json::Value {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::json!({
            "total": inner.total,
            "by_kind": inner.by_kind,
            "by_status": inner.by_status.iter().map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
            "by_key": inner.by_key.iter().map(|(k, e)| {
                (k.to_string(), serde_json::json!({
                    "total": e.total,
                    "by_kind": e.by_kind,
                    "by_status": e.by_status.iter().map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
                }))
            }).collect::<serde_json::Map<_, _>>(),
            "recent": inner.recent.iter().rev().collect::<Vec<_>>(),
        })
    }
}

/// The message of an error body: Google's shape `{"error":{"message"}}` when it is one, else the
/// start of the text; cut to [`MESSAGE_CHARS`] characters.
pub fn message_of(body: &[u8]) -> String {
    let parsed = serde_json::from_slice::<serde_json::Value>(body).ok();
    let parsed = parsed.as_ref().map(|v| {
        // The OpenAI-compatible surface sends `[{"error": ...}]` for some errors.
        let v = v.get(0).unwrap_or(v);
        v.get("error").unwrap_or(v)
    });
    let text = match parsed
        .and_then(|e| e.get("message"))
        .and_then(|m| m.as_str())
    {
        Some(m) => m.to_owned(),
        None => String::from_utf8_lossy(body).trim().to_owned(),
    };
    let mut out: String = text.chars().take(MESSAGE_CHARS).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(status: u16, kind: &'static str, key: Option<&str>) -> ErrorEntry {
        ErrorEntry {
            time: String::new(),
            unix_time: 0,
            request_id: None,
            route: "generate",
            key_id: key.map(Arc::from),
            status,
            kind,
            message: "m".into(),
        }
    }

    #[test]
    fn counts_and_keeps_the_last_hundred_newest_first() {
        let log = ErrorLog::default();
        for i in 0..150u16 {
            log.record(entry(
                500 + i % 2,
                "upstream",
                Some(if i % 3 == 0 { "a" } else { "b" }),
            ));
        }
        log.record(entry(429, "rate_limited", None));
        let v = log.snapshot();
        assert_eq!(v["total"], 151);
        assert_eq!(v["by_kind"]["upstream"], 150);
        assert_eq!(v["by_status"]["429"], 1);
        assert_eq!(v["by_key"]["a"]["total"], 50);
        assert_eq!(v["recent"].as_array().unwrap().len(), RECENT);
        assert_eq!(v["recent"][0]["status"], 429);
    }

    #[test]
    fn message_is_googles_or_the_text_cut_short() {
        assert_eq!(
            message_of(br#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}"#),
            "Quota exceeded"
        );
        assert_eq!(message_of(br#"[{"error":{"message":"x"}}]"#), "x");
        assert_eq!(message_of(b"  plain text "), "plain text");
        let long = "y".repeat(1000);
        assert_eq!(
            message_of(long.as_bytes()).chars().count(),
            MESSAGE_CHARS + 1
        );
    }
}
