//! Where a client's token may be: `x-goog-api-key` (Google's SDKs), `Authorization: Bearer` (the
//! OpenAI SDK) or the `key` query parameter. All three are removed by the upstream client before a
//! request is forwarded.

use http::{HeaderMap, Uri, header};

use crate::http_client::X_GOOG_API_KEY;

/// The token a request carries, looked for in this order: `x-goog-api-key`, `Authorization:
/// Bearer`, `?key=`. `None` when there is none (or only an empty one).
pub fn token_from_request<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    if let Some(v) = headers.get(&X_GOOG_API_KEY) {
        return v.to_str().ok().map(str::trim).filter(|t| !t.is_empty());
    }
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?.trim();
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty());
    }
    uri.query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("key="))
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(headers: &[(&str, &str)], uri: &str) -> Option<String> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        token_from_request(&h, &uri.parse().unwrap()).map(str::to_owned)
    }

    #[test]
    fn finds_the_token_wherever_sdks_put_it() {
        let t = Some("a.b.c".to_string());
        assert_eq!(token(&[("x-goog-api-key", "a.b.c")], "/v1/models"), t);
        assert_eq!(token(&[("authorization", "Bearer a.b.c")], "/v1/models"), t);
        assert_eq!(
            token(&[("authorization", "bearer  a.b.c ")], "/v1/models"),
            t
        );
        assert_eq!(token(&[], "/v1/models?alt=sse&key=a.b.c"), t);
        assert_eq!(token(&[], "/v1/models?key=a.b.c&alt=sse"), t);
    }

    #[test]
    fn precedence_and_absence() {
        assert_eq!(
            token(
                &[
                    ("x-goog-api-key", "header"),
                    ("authorization", "Bearer bearer")
                ],
                "/v1/models?key=query"
            )
            .as_deref(),
            Some("header")
        );
        assert_eq!(token(&[], "/v1/models?keyword=x"), None);
        assert_eq!(token(&[], "/v1/models"), None);
        assert_eq!(
            token(&[("authorization", "Basic dXNlcjpwdw==")], "/v1/models"),
            None
        );
        assert_eq!(token(&[("x-goog-api-key", "")], "/v1/models"), None);
        assert_eq!(token(&[("authorization", "Bearer ")], "/v1/models"), None);
    }
}
