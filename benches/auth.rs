//! What client authentication and per-client limits cost per request.
//!
//! `cargo bench -p gem-proxy --bench auth`. The groups:
//! - `verify`: checking one token (signature + claims) with the configured keys;
//! - `limit`: one rate-limit decision, for one busy client and spread over 10 000 clients;
//! - `layers`: the auth and client-limit layers together, as a request passes them (token in
//!   `x-goog-api-key`, model policy, limit), in front of a service that answers at once.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use gem_proxy::auth::{Role, TokenRequest, Verifier, issue, unix_now};
use gem_proxy::config::{AuthConfig, ConfigLoader};
use gem_proxy::error::GatewayError;
use gem_proxy::gateway::{Gateway, Live};
use gem_proxy::layers::auth::AuthLayer;
use gem_proxy::layers::client_limit::{ClientKey, ClientLimitLayer, ClientLimiter};
use gem_proxy::layers::route::RouteLayer;
use http::{Request, Response};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use tower::Layer;

#[path = "support/mod.rs"]
mod support;
const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn auth_config() -> AuthConfig {
    let yaml = format!(
        "gemini: {{ api_keys: [{{ id: a, key: k }}] }}\nauth: {{ enabled: true, jwt_secret: \"{SECRET}\", issuer: gem-proxy, audience: gemini, rate_limit_per_minute: 1000000000 }}"
    );
    ConfigLoader::default().load_str(&yaml).unwrap().auth
}

/// A token like the ones `gem-proxy token` issues, with a model list.
fn issued_token(config: &AuthConfig) -> String {
    let req = TokenRequest {
        sub: "bench-client".into(),
        ttl: Duration::from_secs(3600),
        models: vec!["gemini-2.5-*".into(), "text-embedding-004".into()],
        rpm: None,
        tpm: None,
        tpd: None,
        live_sessions: None,
        role: Role::Client,
    };
    issue(config, &req, unix_now()).unwrap().token
}

fn verify(c: &mut Criterion) {
    let config = auth_config();
    let verifier = Verifier::new(&config, None).unwrap();
    let token = issued_token(&config);
    let now = unix_now();
    let mut g = c.benchmark_group("verify");
    g.bench_function("hs256", |b| {
        b.iter(|| verifier.verify(black_box(&token), now).unwrap())
    });

    // ES256 from a public key file, for comparison with what an identity provider would use.
    let pair = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
    )
    .unwrap();
    let pkcs8 = pair.to_pkcs8v1().unwrap();
    let public: aws_lc_rs::encoding::PublicKeyX509Der =
        aws_lc_rs::encoding::AsDer::as_der(aws_lc_rs::signature::KeyPair::public_key(&pair))
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("es256.pem");
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, public.as_ref());
    std::fs::write(
        &path,
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n"),
    )
    .unwrap();
    let mut es_config = config.clone();
    es_config.jwt_public_key_path = Some(path.to_str().unwrap().into());
    let es_verifier = Verifier::new(&es_config, None).unwrap();
    let claims = serde_json::json!({
        "sub": "idp-user", "exp": now + 3600, "iss": "gem-proxy", "aud": "gemini"
    });
    let es_token = encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_der(pkcs8.as_ref()),
    )
    .unwrap();
    g.bench_function("es256", |b| {
        b.iter(|| es_verifier.verify(black_box(&es_token), now).unwrap())
    });
    g.finish();
}

fn limit(c: &mut Criterion) {
    let limiter = ClientLimiter::new();
    let rpm = NonZeroU32::new(1_000_000_000).unwrap();
    let busy = ClientKey::Subject(Arc::from("bench-client"));
    let mut g = c.benchmark_group("limit");
    g.bench_function("one_client", |b| {
        b.iter(|| limiter.check(black_box(busy.clone()), rpm).unwrap())
    });
    let many: Vec<ClientKey> = (0..10_000u32)
        .map(|i| ClientKey::ip(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))))
        .collect();
    let mut i = 0;
    g.bench_function("10k_clients", |b| {
        b.iter(|| {
            i = (i + 1) % many.len();
            limiter.check(black_box(many[i].clone()), rpm).unwrap()
        })
    });
    g.finish();
}

fn layers(c: &mut Criterion) {
    let yaml = format!(
        "gemini: {{ api_keys: [{{ id: a, key: k }}] }}\nauth: {{ enabled: true, jwt_secret: \"{SECRET}\", issuer: gem-proxy, audience: gemini, rate_limit_per_minute: 1000000000 }}"
    );
    let config = ConfigLoader::default().load_str(&yaml).unwrap();
    let token = issued_token(&config.auth);
    let gateway = Gateway::new(Live::build(config).unwrap());
    let inner = tower::service_fn(|_req: Request<()>| {
        std::future::ready(Ok::<_, GatewayError>(Response::new(())))
    });
    let mut service = RouteLayer::new(gateway.clone())
        .layer(AuthLayer::new(gateway.clone()).layer(ClientLimitLayer::new(gateway).layer(inner)));
    let make = || {
        Request::builder()
            .method("POST")
            .uri("/v1beta/models/gemini-2.5-flash:generateContent")
            .header("x-goog-api-key", &token)
            .header("content-type", "application/json")
            .body(())
            .unwrap()
    };
    let mut g = c.benchmark_group("layers");
    g.bench_function("route+auth+limit", |b| {
        support::bench_ready_service(b, &mut service, make)
    });
    g.finish();
}

criterion_group!(benches, verify, limit, layers);
criterion_main!(benches);
