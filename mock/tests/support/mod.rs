//! A minimal HTTP client for talking to the mock in tests.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpStream;

/// A request to send.
pub struct Call {
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Call {
    pub fn get(path: &str) -> Self {
        Self::new(Method::GET, path)
    }

    pub fn post(path: &str) -> Self {
        Self::new(Method::POST, path)
    }

    pub fn new(method: Method, path: &str) -> Self {
        Call {
            method,
            path: path.to_owned(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn key(self, key: &str) -> Self {
        self.header("x-goog-api-key", key)
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    pub fn json(self, json: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(serde_json::to_vec(json).unwrap())
    }

    fn request(self, authority: &str) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(self.method)
            .uri(self.path.as_str());
        if !self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("host"))
        {
            builder = builder.header("host", authority);
        }
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        builder.body(Full::new(self.body)).unwrap()
    }

    /// Sends over a fresh HTTP/1.1 connection; the body is left to read.
    pub async fn send(self, addr: SocketAddr) -> Response<Incoming> {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender
            .send_request(self.request(&addr.to_string()))
            .await
            .unwrap()
    }

    /// Sends over a fresh HTTP/2 (prior knowledge) connection.
    pub async fn send_h2(self, addr: SocketAddr) -> Response<Incoming> {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let mut request = self.request(&addr.to_string());
        *request.uri_mut() = format!("http://{addr}{}", request.uri()).parse().unwrap();
        sender.send_request(request).await.unwrap()
    }

    /// Sends over HTTP/1.1 and reads the whole answer.
    pub async fn fetch(self, addr: SocketAddr) -> Answer {
        Answer::read(self.send(addr).await).await
    }
}

/// A whole response.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub async fn read(response: Response<Incoming>) -> Answer {
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("a complete body").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Asserts a Google-shaped error with this code and status name; returns the `error` object.
    pub fn google_error(&self, code: u16, status: &str) -> Value {
        assert_eq!(self.status.as_u16(), code, "{}", self.text());
        assert!(
            self.header("content-type")
                .unwrap()
                .starts_with("application/json")
        );
        let json = self.json();
        assert_eq!(json["error"]["code"], code);
        assert_eq!(json["error"]["status"], status);
        assert!(json["error"]["message"].is_string());
        json["error"].clone()
    }
}
