//! The web console (`ui/`), embedded in the binary and served by the admin listener at `/`.
//!
//! `scripts/build-ui.sh` builds the Leptos app into `ui/dist`: `index.html` and content-hashed
//! assets under `/assets/`, each with a gzip twin. `build.rs` embeds them (see
//! `$OUT_DIR/console_assets.rs`); a binary built without `ui/dist` serves a page saying how to
//! build the console instead.
//!
//! - `/assets/…`: `Cache-Control: public, max-age=31536000, immutable` (a new build has new names);
//!   an unknown asset is a 404, never the app's page.
//! - Every other path is `index.html` (the app routes on the client: `/keys`, `/config`, …),
//!   `Cache-Control: no-cache` with an `ETag`, so a new build is picked up at the next load.
//! - The gzip twin is sent with `Content-Encoding: gzip` when `Accept-Encoding` allows it.
//! - The page may only load its own scripts and talk to its own origin (`Content-Security-Policy`),
//!   and may not be framed.
//!
//! The console is static and public, like any login page: everything it shows comes from the admin
//! API, which checks the admin token on each call.

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};

use crate::body::GatewayBody;
use crate::error::google_error;

/// One embedded file.
#[derive(Debug)]
pub(crate) struct Asset {
    /// Its path, from `/`: `/index.html`, `/assets/app-0123456789abcdef.wasm`.
    path: &'static str,
    body: &'static [u8],
    /// The same, gzipped, when that is smaller.
    gzip: Option<&'static [u8]>,
    /// A quoted hash of `body`.
    etag: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

/// Shown when the binary was built without `ui/dist`.
const NOT_BUILT: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>gem-proxy console</title><link rel=\"icon\" href=\"data:,\"></head>\
<body style=\"font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem\">\
<h1>The web console is not built into this binary</h1>\
<p>This gem-proxy was compiled without <code>ui/dist</code>. Build the console, then the gateway:</p>\
<pre>scripts/build-ui.sh\ncargo build --release</pre>\
<p>(<code>scripts/quickstart.sh</code> does both.) The admin API (<code>/api/</code>), \
<code>/health</code>, <code>/metrics</code>, <code>/performance</code> and <code>/errors</code> \
work without it.</p></body></html>";

const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Whether the console's assets are in this binary.
pub fn is_embedded() -> bool {
    !ASSETS.is_empty()
}

/// Answers a `GET` or `HEAD` for the console: an asset, or the app's page for any other path.
pub fn respond<B>(req: &Request<B>) -> Response<GatewayBody> {
    let path = req.uri().path();
    if path.starts_with("/assets/") {
        return match find(path) {
            Some(asset) => send(req, asset, "public, max-age=31536000, immutable"),
            None => google_error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                &format!("no console asset {path}"),
            ),
        };
    }
    match find("/index.html") {
        Some(index) => send(req, index, "no-cache"),
        None => {
            let mut res = Response::new(GatewayBody::full(NOT_BUILT));
            page_headers(res.headers_mut(), "text/html; charset=utf-8", "no-store");
            res
        }
    }
}

fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

fn send<B>(req: &Request<B>, asset: &'static Asset, cache: &'static str) -> Response<GatewayBody> {
    let content_type = content_type(asset.path);
    let not_modified = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == asset.etag || t.trim() == "*")
        });
    let gzip = asset.gzip.filter(|_| accepts_gzip(req.headers()));
    let mut res = if not_modified {
        let mut res = Response::new(GatewayBody::full(bytes::Bytes::new()));
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        res
    } else {
        let body = gzip.unwrap_or(asset.body);
        let len = body.len();
        let body = if req.method() == Method::HEAD {
            GatewayBody::full(bytes::Bytes::new())
        } else {
            GatewayBody::full(bytes::Bytes::from_static(body))
        };
        let mut res = Response::new(body);
        res.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if gzip.is_some() {
            res.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        res
    };
    page_headers(res.headers_mut(), content_type, cache);
    let headers = res.headers_mut();
    headers.insert(header::ETAG, HeaderValue::from_static(asset.etag));
    if asset.gzip.is_some() {
        headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    res
}

fn page_headers(headers: &mut HeaderMap, content_type: &'static str, cache: &'static str) {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// Whether `Accept-Encoding` allows gzip (`gzip` or `*`, without `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn get(path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::get(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).expect("a request")
    }

    async fn body(res: Response<GatewayBody>) -> Vec<u8> {
        res.into_body()
            .collect()
            .await
            .map(|c| c.to_bytes().to_vec())
            .unwrap_or_default()
    }

    #[test]
    fn gzip_is_accepted_unless_refused() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(v).expect("ascii"),
            );
            m
        };
        assert!(accepts_gzip(&h("gzip, deflate, br")));
        assert!(accepts_gzip(&h("br;q=1.0, GZIP;q=0.5")));
        assert!(accepts_gzip(&h("*")));
        assert!(!accepts_gzip(&h("gzip;q=0, br")));
        assert!(!accepts_gzip(&h("identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type("/assets/app-1.wasm"), "application/wasm");
        assert_eq!(
            content_type("/assets/app-1.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("/index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("/x"), "application/octet-stream");
    }

    #[tokio::test]
    async fn client_routes_get_the_page_and_unknown_assets_a_404() {
        for path in ["/", "/keys", "/config/anything"] {
            let res = respond(&get(path, &[]));
            assert_eq!(res.status(), StatusCode::OK, "{path}");
            assert_eq!(
                res.headers()[header::CONTENT_TYPE],
                "text/html; charset=utf-8"
            );
            assert!(res.headers().contains_key(header::CONTENT_SECURITY_POLICY));
            let cache = res.headers()[header::CACHE_CONTROL]
                .to_str()
                .expect("ascii")
                .to_owned();
            assert!(cache == "no-cache" || cache == "no-store", "{cache}");
            let text = String::from_utf8(body(res).await).expect("utf-8");
            assert!(text.contains("<title>gem-proxy console</title>"), "{text}");
        }
        let res = respond(&get("/assets/nothing-0000.js", &[]));
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }

    /// With the console embedded: hashed assets are immutable, gzip is used when accepted, and an
    /// `If-None-Match` with the ETag gives a 304.
    #[tokio::test]
    async fn embedded_assets_are_cached_compressed_and_revalidated() {
        let Some(asset) = ASSETS.iter().find(|a| a.path.starts_with("/assets/")) else {
            eprintln!("ui/dist was not built: nothing embedded to check");
            return;
        };
        let res = respond(&get(asset.path, &[]));
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            res.headers()[header::CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
        assert!(!res.headers().contains_key(header::CONTENT_ENCODING));
        assert_eq!(body(res).await, asset.body);

        if let Some(gz) = asset.gzip {
            let res = respond(&get(asset.path, &[("accept-encoding", "gzip, br")]));
            assert_eq!(res.headers()[header::CONTENT_ENCODING], "gzip");
            assert_eq!(res.headers()[header::VARY], "Accept-Encoding");
            assert_eq!(body(res).await, gz);
        }

        let res = respond(&get("/keys", &[]));
        let etag = res.headers()[header::ETAG].clone();
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-cache");
        let res = respond(&get(
            "/keys",
            &[("if-none-match", etag.to_str().expect("ascii"))],
        ));
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        assert!(body(res).await.is_empty());
    }
}
