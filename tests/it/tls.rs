//! TLS on the proxy port, black-box: the real gateway on 127.0.0.1:0 with TLS on, real rustls
//! clients, certificates made by the gateway itself or by Debian's `openssl` as an operator would.

use crate::support::tls as tls_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use gem_proxy::config::Config;
use gem_proxy::gateway::Live;
use gem_proxy::server::Server;
use gem_proxy_mock::{MockOptions, MockUpstream};
use http::{Method, Request, StatusCode, Version};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Harness, http1_client, json, read_all, request, test_config, within};
use tls_support::{
    H2, HTTP11, alpn, client_config, connect, eventually, h1, h2, h2_get, https_client, openssl,
    peer_fingerprint, roots_from, served_fingerprint,
};

/// TLS on, with the certificate files in `dir`.
fn tls_on(config: &mut Config, dir: &Path) {
    let tls = &mut config.server.tls;
    tls.enabled = true;
    tls.cert_path = Some(dir.join("cert.pem").display().to_string());
    tls.key_path = Some(dir.join("key.pem").display().to_string());
}

/// A gateway with TLS on and no usable upstream (for what happens before any request goes out).
async fn start_tls(dir: &Path, edit: impl FnOnce(&mut Config)) -> Result<Server, std::io::Error> {
    let mut config = test_config("http://127.0.0.1:9");
    tls_on(&mut config, dir);
    edit(&mut config);
    Server::start(Live::build(config).expect("config builds")).await
}

async fn health(server: &Server) -> serde_json::Value {
    let url = format!("http://{}/health", server.admin_addr().unwrap());
    let res = http1_client()
        .request(request(Method::GET, &url, ""))
        .await
        .expect("health answers");
    let (status, _, body) = read_all(res).await;
    assert_eq!(status, StatusCode::OK);
    json(&body)
}

fn port_authority(addr: SocketAddr) -> String {
    format!("localhost:{}", addr.port())
}

#[tokio::test]
async fn a_self_signed_certificate_is_generated_then_reused_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let server = start_tls(dir.path(), |c| {
        c.server.tls.san = vec!["gw.example.test".into(), "10.9.8.7".into()];
    })
    .await
    .expect("starts");
    assert!(cert_path.exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the private key must be readable by its owner only"
        );
    }

    // A client that trusts the generated certificate verifies it under each of its names.
    let roots = roots_from(&cert_path);
    let addr = server.proxy_addr();
    let config = client_config(&roots, &[H2, HTTP11]);
    let first = served_fingerprint(addr, "localhost", config.clone()).await;
    for name in ["127.0.0.1", "gw.example.test"] {
        assert_eq!(
            served_fingerprint(addr, name, config.clone()).await,
            first,
            "{name}"
        );
    }
    let err = connect(addr, "other.example.test", config.clone()).await;
    assert!(err.is_err(), "a name the certificate lacks must not verify");

    let h = health(&server).await;
    let tls = &h["tls"];
    assert_eq!(tls["enabled"], true, "{h}");
    assert_eq!(tls["state"], "ok", "{h}");
    assert_eq!(tls["source"], "self-signed", "{h}");
    assert_eq!(tls["sha256_fingerprint"], first.as_str(), "{h}");
    let names: Vec<&str> = tls["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    for want in [
        "localhost",
        "127.0.0.1",
        "::1",
        "gw.example.test",
        "10.9.8.7",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(
        tls["expires_in_seconds"].as_i64().unwrap() > 300 * 86_400,
        "{h}"
    );
    assert_eq!(
        server.gateway().tls().expiry_unix_seconds(),
        server.gateway().tls().certificate().unwrap().not_after_unix
    );
    // The expiry gauge shows this server's certificate.
    let expiry = server.gateway().tls().expiry_unix_seconds().unwrap();
    assert!(
        server.gateway().metrics().render().contains(&format!(
            "gem_proxy_tls_certificate_expiry_timestamp_seconds {expiry}"
        )),
        "expiry gauge missing"
    );

    let before = std::fs::read(&cert_path).unwrap();
    server.shutdown();
    server.wait().await;

    // The next start serves the same certificate.
    let server = start_tls(dir.path(), |c| {
        c.server.tls.san = vec!["gw.example.test".into(), "10.9.8.7".into()];
    })
    .await
    .expect("restarts");
    assert_eq!(std::fs::read(&cert_path).unwrap(), before);
    assert_eq!(
        served_fingerprint(server.proxy_addr(), "localhost", config).await,
        first
    );
}

#[tokio::test]
async fn http2_is_negotiated_by_alpn_and_http1_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start_with(MockOptions::default(), |c| tls_on(c, dir.path())).await;
    let roots = roots_from(&dir.path().join("cert.pem"));
    let addr = h.server.proxy_addr();
    let authority = port_authority(addr);

    let stream = connect(addr, "localhost", client_config(&roots, &[H2, HTTP11]))
        .await
        .unwrap();
    assert_eq!(alpn(&stream).as_deref(), Some(H2));
    let mut send = h2(stream).await;
    let (status, version, body) = h2_get(&mut send, &authority, "/v1beta/models").await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(version, Version::HTTP_2);
    assert!(json(&body)["models"].is_array());

    for offer in [&[HTTP11][..], &[]] {
        let stream = connect(addr, "localhost", client_config(&roots, offer))
            .await
            .unwrap();
        let expected = (!offer.is_empty()).then(|| HTTP11.to_vec());
        assert_eq!(alpn(&stream), expected);
        let mut send = h1(stream).await;
        let res = send
            .send_request(tls_support::get(&authority, "/v1beta/models"))
            .await
            .unwrap();
        assert_eq!(res.version(), Version::HTTP_11);
        assert_eq!(read_all(res).await.0, StatusCode::OK);
    }

    // A pooled client, as the SDKs use: a streamed answer arrives whole over HTTP/2.
    let client = https_client(&roots);
    let req = Request::post(format!(
        "https://{authority}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    ))
    .header("content-type", "application/json")
    .body(Full::new(Bytes::from_static(
        crate::support::GENERATE_BODY.as_bytes(),
    )))
    .unwrap();
    let res = within("stream over TLS", client.request(req))
        .await
        .unwrap();
    assert_eq!(res.version(), Version::HTTP_2);
    let (status, _, body) = read_all(res).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("finishReason"), "{text}");
}

/// Upload URLs handed back to clients say https when the client came over TLS.
#[tokio::test]
async fn upload_urls_point_back_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start_with(MockOptions::default(), |c| {
        c.gemini.api_keys.truncate(1);
        tls_on(c, dir.path());
    })
    .await;
    let roots = roots_from(&dir.path().join("cert.pem"));
    let authority = port_authority(h.server.proxy_addr());
    let client = https_client(&roots);
    let req = Request::post(format!("https://{authority}/upload/v1beta/files"))
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", "start")
        .header("x-goog-upload-header-content-length", "5")
        .header("x-goog-upload-header-content-type", "text/plain")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"file":{"display_name":"hello"}}"#,
        )))
        .unwrap();
    let (status, headers, body) = read_all(client.request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let url = headers["x-goog-upload-url"].to_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("https://{authority}/upload/v1beta/files?")),
        "{url}"
    );
    let req = Request::post(&url)
        .header("x-goog-upload-command", "upload, finalize")
        .header("x-goog-upload-offset", "0")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let (status, _, body) = read_all(client.request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
}

/// Keys and certificates as operators make them with openssl, in every supported format.
struct OwnCert {
    cert: PathBuf,
    key: PathBuf,
}

/// A key (`genkey` is the openssl command line after `openssl`, writing `<name>.key`) and a
/// self-signed certificate for `own.test` and 127.0.0.1.
fn own_cert(dir: &Path, name: &str, genkey: &[&str]) -> OwnCert {
    let key = format!("{name}.key");
    let cert = format!("{name}.crt");
    let mut args: Vec<&str> = genkey.to_vec();
    args.extend(["-out", &key]);
    openssl(dir, &args);
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &key,
            "-subj",
            "/CN=own.test",
            "-days",
            "30",
            "-addext",
            "subjectAltName=DNS:own.test,IP:127.0.0.1",
            // Not a CA: clients that trust this very certificate then accept it as a server's.
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-out",
            &cert,
        ],
    );
    OwnCert {
        cert: dir.join(cert),
        key: dir.join(key),
    }
}

fn pem_label(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().next().unwrap_or_default().to_owned()
}

fn leaf_fingerprint(cert: &Path) -> String {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_file(cert).unwrap();
    gem_proxy::tls::fingerprint(&der)
}

/// Puts a certificate in place the way `mv` and Kubernetes' secret mounts do: whole files
/// renamed over the old ones.
fn install(own: &OwnCert, dir: &Path) {
    for (from, to) in [(&own.key, "key.pem"), (&own.cert, "cert.pem")] {
        let tmp = dir.join(format!("{to}.new"));
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(to)).unwrap();
    }
}

#[tokio::test]
async fn own_certificates_load_in_every_key_format() {
    let keys = tempfile::tempdir().unwrap();
    let k = keys.path();
    let rsa = own_cert(
        k,
        "rsa8",
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
    );
    openssl(
        k,
        &[
            "pkey",
            "-in",
            "rsa8.key",
            "-traditional",
            "-out",
            "rsa1.key",
        ],
    );
    let rsa_pkcs1 = OwnCert {
        cert: rsa.cert.clone(),
        key: k.join("rsa1.key"),
    };
    let cases = [
        ("RSA, PKCS#8", rsa, "-----BEGIN PRIVATE KEY-----"),
        ("RSA, PKCS#1", rsa_pkcs1, "-----BEGIN RSA PRIVATE KEY-----"),
        (
            "ECDSA P-256, SEC1",
            own_cert(
                k,
                "ec1",
                &["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
            ),
            "-----BEGIN EC PRIVATE KEY-----",
        ),
        (
            "ECDSA P-384, PKCS#8",
            own_cert(
                k,
                "ec384",
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-384",
                ],
            ),
            "-----BEGIN PRIVATE KEY-----",
        ),
        (
            "Ed25519, PKCS#8",
            own_cert(k, "ed", &["genpkey", "-algorithm", "ed25519"]),
            "-----BEGIN PRIVATE KEY-----",
        ),
    ];
    for (what, own, label) in cases {
        assert_eq!(
            pem_label(&own.key),
            label,
            "{what}: test key in the wrong format"
        );
        let dir = tempfile::tempdir().unwrap();
        install(&own, dir.path());
        let server = start_tls(dir.path(), |_| {})
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let roots = roots_from(&own.cert);
        let got = served_fingerprint(
            server.proxy_addr(),
            "own.test",
            client_config(&roots, &[H2]),
        )
        .await;
        assert_eq!(got, leaf_fingerprint(&own.cert), "{what}");
        let h = health(&server).await;
        assert_eq!(h["tls"]["source"], "file", "{what}: {h}");
        assert_eq!(
            h["tls"]["names"],
            serde_json::json!(["own.test", "127.0.0.1"]),
            "{what}"
        );
        server.shutdown();
        server.wait().await;
    }
}

/// A CA-issued certificate: the file holds the leaf and its intermediate; clients trust only
/// the root.
#[tokio::test]
async fn a_certificate_chain_is_served_whole() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut root = vec!["req", "-x509", "-new"];
    root.extend(ec);
    root.extend([
        "-keyout",
        "root.key",
        "-subj",
        "/CN=Test Root",
        "-days",
        "30",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        "root.pem",
    ]);
    openssl(p, &root);
    std::fs::write(
        p.join("ca.ext"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    std::fs::write(p.join("leaf.ext"), "subjectAltName=DNS:chain.test\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n").unwrap();
    for (name, subject, issuer, ext) in [
        ("int", "/CN=Test Intermediate", "root", "ca.ext"),
        ("leaf", "/CN=chain.test", "int", "leaf.ext"),
    ] {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let mut req = vec!["req", "-new"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-subj", subject, "-out", &csr]);
        openssl(p, &req);
        let (ca, ca_key) = (format!("{issuer}.pem"), format!("{issuer}.key"));
        openssl(
            p,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                ext,
                "-out",
                &pem,
            ],
        );
    }
    let chain = [
        std::fs::read(p.join("leaf.pem")).unwrap(),
        std::fs::read(p.join("int.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(p.join("chain.pem"), chain).unwrap();
    let own = OwnCert {
        cert: p.join("chain.pem"),
        key: p.join("leaf.key"),
    };
    let dir = tempfile::tempdir().unwrap();
    install(&own, dir.path());
    let server = start_tls(dir.path(), |_| {}).await.expect("starts");
    let roots = roots_from(&p.join("root.pem"));
    let stream = connect(
        server.proxy_addr(),
        "chain.test",
        client_config(&roots, &[H2]),
    )
    .await
    .expect("the chain verifies against the root");
    let presented = stream.get_ref().1.peer_certificates().unwrap().len();
    assert_eq!(presented, 2, "leaf and intermediate");
    assert_eq!(
        peer_fingerprint(&stream),
        leaf_fingerprint(&p.join("leaf.pem"))
    );
}

#[tokio::test]
async fn replacing_the_files_rotates_the_certificate_without_a_restart() {
    let keys = tempfile::tempdir().unwrap();
    let a = own_cert(
        keys.path(),
        "a",
        &["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
    );
    let b = own_cert(
        keys.path(),
        "b",
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
    );
    let roots = [roots_from(&a.cert), roots_from(&b.cert)].concat();
    let config = client_config(&roots, &[H2]);
    let (fp_a, fp_b) = (leaf_fingerprint(&a.cert), leaf_fingerprint(&b.cert));

    let dir = tempfile::tempdir().unwrap();
    install(&a, dir.path());
    let mock = MockUpstream::start(MockOptions::default()).await.unwrap();
    let mut cfg = test_config(&mock.base_url());
    tls_on(&mut cfg, dir.path());
    cfg.server.tls.reload_interval_seconds = 1;
    let server = Server::start(Live::build(cfg).unwrap()).await.unwrap();
    let addr = server.proxy_addr();
    let authority = port_authority(addr);

    // A connection opened before the rotation ...
    let old = connect(addr, "own.test", config.clone()).await.unwrap();
    assert_eq!(peer_fingerprint(&old), fp_a);
    let mut old = h2(old).await;
    assert_eq!(
        h2_get(&mut old, &authority, "/v1beta/models").await.0,
        StatusCode::OK
    );

    install(&b, dir.path());
    eventually("new handshakes get certificate b", 10, || {
        let config = config.clone();
        let fp_b = fp_b.clone();
        async move { (served_fingerprint(addr, "own.test", config).await == fp_b).then_some(()) }
    })
    .await;
    // ... keeps working on the certificate it started with.
    assert_eq!(
        h2_get(&mut old, &authority, "/v1beta/models").await.0,
        StatusCode::OK
    );
    let h = health(&server).await;
    assert_eq!(h["tls"]["sha256_fingerprint"], fp_b.as_str(), "{h}");
    assert!(h["tls"]["last_error"].is_null(), "{h}");

    // A broken replacement (a certificate cut short) is refused, and says why.
    let text = std::fs::read_to_string(&b.cert).unwrap();
    std::fs::write(dir.path().join("cert.pem.new"), &text[..text.len() / 2]).unwrap();
    std::fs::rename(dir.path().join("cert.pem.new"), dir.path().join("cert.pem")).unwrap();
    let error = eventually("the broken file is noticed", 10, || {
        let server = &server;
        async move {
            let h = health(server).await;
            h["tls"]["last_error"].as_str().map(str::to_owned)
        }
    })
    .await;
    assert!(
        error.contains("cert.pem") && error.contains("not valid PEM"),
        "{error}"
    );
    // The server still serves b, to old and new connections.
    assert_eq!(
        served_fingerprint(addr, "own.test", config.clone()).await,
        fp_b
    );
    assert_eq!(
        h2_get(&mut old, &authority, "/v1beta/models").await.0,
        StatusCode::OK
    );
    let mut fresh = h2(connect(addr, "own.test", config.clone()).await.unwrap()).await;
    assert_eq!(
        h2_get(&mut fresh, &authority, "/v1beta/models").await.0,
        StatusCode::OK
    );

    // Mended: the good files are picked up again, and the error clears.
    install(&a, dir.path());
    eventually("certificate a is back", 10, || {
        let config = config.clone();
        let fp_a = fp_a.clone();
        async move { (served_fingerprint(addr, "own.test", config).await == fp_a).then_some(()) }
    })
    .await;
    assert!(health(&server).await["tls"]["last_error"].is_null());
}

#[tokio::test]
async fn a_broken_certificate_at_start_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("key.pem"), "").unwrap();
    let err = start_tls(dir.path(), |_| {}).await.unwrap_err().to_string();
    assert!(
        err.starts_with("TLS: ") && err.contains("cert.pem"),
        "{err}"
    );
    // Neither file is replaced by a generated one.
    assert!(
        std::fs::read_to_string(dir.path().join("cert.pem"))
            .unwrap()
            .contains("not base64!")
    );
}

#[tokio::test]
async fn plaintext_on_the_tls_port_fails_cleanly_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start_with(MockOptions::default(), |c| {
        tls_on(c, dir.path());
        c.server.tls.handshake_timeout_seconds = 1;
    })
    .await;
    let roots = roots_from(&dir.path().join("cert.pem"));
    let addr = h.server.proxy_addr();
    let authority = port_authority(addr);
    let mut before = h2(connect(addr, "localhost", client_config(&roots, &[H2]))
        .await
        .unwrap())
    .await;
    assert_eq!(
        h2_get(&mut before, &authority, "/v1beta/models").await.0,
        StatusCode::OK
    );

    // An HTTP client pointed at http:// gets a 400 that says what to do.
    let (status, _, body) = h.get("/v1beta/models").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let v = json(&body);
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("https://"),
        "{v}"
    );

    // Raw bytes: the answer (if any) arrives and the connection closes; nothing hangs.
    for (what, bytes) in [
        (
            "an HTTP request",
            &b"GET /v1beta/models HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        ),
        ("binary noise", &b"\x00\x01\x02\x03garbage"[..]),
        (
            "a broken TLS record",
            &b"\x16\x03\x01\x00\x05hello-this-is-not-tls"[..],
        ),
    ] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        let mut got = Vec::new();
        let read = within(what, tcp.read_to_end(&mut got)).await;
        if what == "an HTTP request" {
            read.expect("a clean close after the answer");
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
            assert!(text.contains("use https://"), "{text}");
        } else {
            assert!(
                !String::from_utf8_lossy(&got).starts_with("HTTP/"),
                "{what}"
            );
        }
    }

    // A client that connects and says nothing is closed after the handshake timeout.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("closed within the handshake timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);

    // Everyone else was not affected.
    assert_eq!(
        h2_get(&mut before, &authority, "/v1beta/models").await.0,
        StatusCode::OK
    );
    let mut after = h2(connect(addr, "localhost", client_config(&roots, &[H2]))
        .await
        .unwrap())
    .await;
    assert_eq!(
        h2_get(&mut after, &authority, "/v1beta/models").await.0,
        StatusCode::OK
    );
}
