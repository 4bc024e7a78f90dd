//! What the mock remembers of each request.

use bytes::Bytes;
use serde::Serialize;

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, exactly as received (not decoded).
    pub path: String,
    /// The query string without `?`, if any.
    pub query: Option<String>,
    /// Every header in arrival order (values of a repeated name together), names lowercase.
    pub headers: Vec<(String, String)>,
    /// The whole request body.
    pub body: Bytes,
    /// The credential it carried: `x-goog-api-key`, else `?key=`, else `Authorization: Bearer`.
    pub key: Option<String>,
}

impl RecordedRequest {
    /// The first value of header `name` (any case), if the request carried it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The JSON form served by `GET /_mock/requests` (body as lossy UTF-8).
    pub(crate) fn to_json(&self) -> RecordedRequestJson<'_> {
        RecordedRequestJson {
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
            body: String::from_utf8_lossy(&self.body),
            key: self.key.as_deref(),
        }
    }
}

/// A [`RecordedRequest`] as JSON; headers become `[name, value]` pairs.
#[derive(Serialize)]
pub(crate) struct RecordedRequestJson<'a> {
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a [(String, String)],
    body: std::borrow::Cow<'a, str>,
    key: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lookup_ignores_case_and_takes_first() {
        let request = RecordedRequest {
            method: "GET".into(),
            path: "/".into(),
            query: None,
            headers: vec![("x-a".into(), "1".into()), ("x-a".into(), "2".into())],
            body: Bytes::new(),
            key: None,
        };
        assert_eq!(request.header("X-A"), Some("1"));
        assert_eq!(request.header("x-b"), None);
    }
}
