//! ACME against a real CA: Debian's Pebble (Let's Encrypt's test CA) and pebble-challtestsrv (its
//! DNS, which answers 127.0.0.1 for every name), started by this test on free 127.0.0.1 ports and
//! killed by their own process handles when it ends. scripts/setup.sh installs them.
//!
//! One gateway proves its domain through TLS-ALPN-01 on its proxy port, another through HTTP-01 on
//! its plain-HTTP listener (it starts before the CA does, so its first order fails and is
//! retried). Both then serve a chain that a normal TLS client verifies against Pebble's root
//! (new at every Pebble start); a restart serves the cached certificate without a new order.

use crate::support::tls as tls_support;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use gem_proxy::config::{AcmeChallenge, Config};
use gem_proxy::gateway::Live;
use gem_proxy::server::Server;
use gem_proxy_mock::{MockOptions, MockUpstream};
use http::{Method, Request, StatusCode};
use http_body_util::Full;

use crate::support::{http1_client, json, read_all, request, test_config};
use tls_support::{
    H2, client_config, connect, eventually, h2, h2_get, https_client, peer_fingerprint,
};

/// A process this test started; killed (by its own pid, nothing else) when dropped.
struct Spawned {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Spawned {
    fn start(name: &'static str, dir: &Path, cmd: &mut Command) -> Spawned {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {name} ({e}): Debian's `pebble` package is needed; run scripts/setup.sh")
            });
        Spawned { name, child, log }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(3000);
        format!(
            "--- {} log ---\n{}",
            self.name,
            &text[text.floor_char_boundary(start)..]
        )
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

/// A port free for TCP (and, with `udp`, for UDP too) on 127.0.0.1 right now.
fn free_port(udp: bool) -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if !udp || UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Pebble's own TLS certificate (for its directory and management API), for 127.0.0.1.
fn pebble_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (dir.join("pebble-cert.pem"), dir.join("pebble-key.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

struct Ports {
    directory: u16,
    management: u16,
    dns: u16,
    challtestsrv: u16,
    /// Where Pebble validates TLS-ALPN-01: the proxy port of gateway A.
    tls_alpn: u16,
    /// Where Pebble validates HTTP-01: the plain-HTTP listener of gateway B.
    http: u16,
}

fn start_challtestsrv(dir: &Path, p: &Ports) -> Spawned {
    Spawned::start(
        "pebble-challtestsrv",
        dir,
        Command::new("pebble-challtestsrv").args([
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
            "-dns01",
            &format!("127.0.0.1:{}", p.dns),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            &format!("127.0.0.1:{}", p.challtestsrv),
        ]),
    )
}

fn start_pebble(dir: &Path, p: &Ports, cert: &Path, key: &Path) -> Spawned {
    let config = serde_json::json!({
        "pebble": {
            "listenAddress": format!("127.0.0.1:{}", p.directory),
            "managementListenAddress": format!("127.0.0.1:{}", p.management),
            "certificate": cert,
            "privateKey": key,
            "httpPort": p.http,
            "tlsPort": p.tls_alpn,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }
    });
    let path = dir.join("pebble-config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    Spawned::start(
        "pebble",
        dir,
        Command::new("pebble")
            .args(["-config", path.to_str().unwrap()])
            .args(["-dnsserver", &format!("127.0.0.1:{}", p.dns)])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0"),
    )
}

/// A gateway in front of `upstream` that gets its certificate for `domain` from Pebble.
fn acme_config(
    upstream: &str,
    pebble: &Ports,
    pebble_cert: &Path,
    cache: &Path,
    domain: &str,
    challenge: AcmeChallenge,
) -> Config {
    let mut c = test_config(upstream);
    let tls = &mut c.server.tls;
    tls.enabled = true;
    let acme = &mut tls.acme;
    acme.enabled = true;
    acme.domains = vec![domain.to_owned()];
    acme.email = Some("ops@gem-proxy.test".into());
    acme.directory_url = Some(format!("https://127.0.0.1:{}/dir", pebble.directory));
    acme.directory_ca_path = Some(pebble_cert.display().to_string());
    acme.cache_dir = cache.display().to_string();
    acme.challenge = challenge;
    match challenge {
        AcmeChallenge::TlsAlpn01 => c.server.port = pebble.tls_alpn,
        AcmeChallenge::Http01 => acme.http_port = pebble.http,
    }
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    c
}

async fn health(server: &Server) -> serde_json::Value {
    let url = format!("http://{}/health", server.admin_addr().unwrap());
    let (status, _, body) = read_all(
        http1_client()
            .request(request(Method::GET, &url, ""))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    json(&body)["tls"].clone()
}

/// Waits until the gateway serves an ACME certificate; its `/health` TLS section.
async fn issued(server: &Server, what: &str) -> serde_json::Value {
    eventually(what, 60, || async {
        let tls = health(server).await;
        (tls["state"] == "ok").then_some(tls)
    })
    .await
}

/// A normal TLS client that trusts only Pebble's root: the served chain verifies, the leaf is
/// the one `/health` describes, and requests go through over HTTP/2.
async fn check_served(addr: SocketAddr, domain: &str, root: &[u8], tls: &serde_json::Value) {
    let stream = connect(addr, domain, client_config(root, &[H2]))
        .await
        .unwrap_or_else(|e| {
            panic!("{domain}: the served chain does not verify against Pebble's root: {e}")
        });
    assert_eq!(
        tls["sha256_fingerprint"],
        peer_fingerprint(&stream).as_str()
    );
    assert_eq!(tls["source"], "acme");
    assert_eq!(tls["names"], serde_json::json!([domain]));
    let mut send = h2(stream).await;
    let (status, _, body) = h2_get(
        &mut send,
        &format!("{domain}:{}", addr.port()),
        "/v1beta/models",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_come_from_pebble_through_tls_alpn_01_and_http_01() {
    let t0 = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ports = Ports {
        directory: free_port(false),
        management: free_port(false),
        dns: free_port(true),
        challtestsrv: free_port(false),
        tls_alpn: free_port(false),
        http: free_port(false),
    };
    let (pebble_cert, pebble_key) = pebble_certificate(d);
    let mock = MockUpstream::start(MockOptions::default()).await.unwrap();
    let _challtestsrv = start_challtestsrv(d, &ports);

    // Gateway B (HTTP-01) starts while the CA is still down: its first order fails, is logged and
    // shown in /health, and is retried with backoff.
    let http_domain = "http01.gem-proxy.test";
    let b_cfg = acme_config(
        &mock.base_url(),
        &ports,
        &pebble_cert,
        &d.join("cache-b"),
        http_domain,
        AcmeChallenge::Http01,
    );
    let b = Server::start(Live::build(b_cfg).unwrap())
        .await
        .expect("gateway B starts");
    let pending = health(&b).await;
    assert_eq!(pending["state"], "pending", "{pending}");
    assert_eq!(pending["names"], serde_json::json!([http_domain]));
    let first_error = eventually("gateway B reports the unreachable CA", 15, || async {
        health(&b).await["last_error"].as_str().map(str::to_owned)
    })
    .await;
    assert!(first_error.starts_with("ACME: "), "{first_error}");

    let pebble = start_pebble(d, &ports, &pebble_cert, &pebble_key);
    let pebble_https = https_client(&std::fs::read(&pebble_cert).unwrap());
    let dir_url = format!("https://127.0.0.1:{}/dir", ports.directory);
    eventually("Pebble's directory answers", 20, || async {
        let req = Request::get(&dir_url).body(Full::default()).unwrap();
        match pebble_https.request(req).await {
            Ok(res) => (res.status() == StatusCode::OK).then_some(()),
            Err(_) => None,
        }
    })
    .await;

    // Gateway A (TLS-ALPN-01) on the port Pebble validates.
    let alpn_domain = "alpn.gem-proxy.test";
    let a_cache = d.join("cache-a");
    let a_cfg = acme_config(
        &mock.base_url(),
        &ports,
        &pebble_cert,
        &a_cache,
        alpn_domain,
        AcmeChallenge::TlsAlpn01,
    );
    let a = Server::start(Live::build(a_cfg.clone()).unwrap())
        .await
        .expect("gateway A starts");

    let (a_tls, b_tls) = tokio::join!(
        issued(&a, "gateway A's certificate (TLS-ALPN-01)"),
        issued(&b, "gateway B's certificate (HTTP-01)"),
    );
    assert!(
        a_tls["last_error"].is_null() && b_tls["last_error"].is_null(),
        "{a_tls} {b_tls}"
    );
    eprintln!(
        "both certificates issued {:.1} s after the start",
        t0.elapsed().as_secs_f64()
    );

    // Pebble's root of this run, fetched from its management API.
    let roots_url = format!("https://127.0.0.1:{}/roots/0", ports.management);
    let res = pebble_https
        .request(Request::get(&roots_url).body(Full::default()).unwrap())
        .await
        .unwrap();
    let (status, _, root) = read_all(res).await;
    assert_eq!(status, StatusCode::OK);
    check_served(a.proxy_addr(), alpn_domain, &root, &a_tls).await;
    check_served(b.proxy_addr(), http_domain, &root, &b_tls).await;
    // A certificate from another CA does not pass for Pebble's: the check above can fail.
    let other_root = std::fs::read(&pebble_cert).unwrap();
    assert!(
        connect(
            a.proxy_addr(),
            alpn_domain,
            client_config(&other_root, &[H2])
        )
        .await
        .is_err()
    );

    // B's plain-HTTP listener sends everything but challenges to HTTPS.
    let res = http1_client()
        .request(
            Request::get(format!("http://127.0.0.1:{}/v1beta/models?x=1", ports.http))
                .header("host", format!("{http_domain}:{}", ports.http))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        res.headers()["location"],
        format!(
            "https://{http_domain}:{}/v1beta/models?x=1",
            b.proxy_addr().port()
        )
        .as_str()
    );

    // The account and certificate are cached (owner-only files): with the CA gone, a restart
    // serves the same certificate at once.
    drop(pebble);
    #[cfg(unix)]
    for entry in std::fs::read_dir(&a_cache).unwrap() {
        use std::os::unix::fs::PermissionsExt;
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{:?}", entry.path());
    }
    a.shutdown();
    a.wait().await;
    let a = Server::start(Live::build(a_cfg).unwrap())
        .await
        .expect("gateway A restarts");
    let again = issued(&a, "gateway A's cached certificate").await;
    assert_eq!(again["sha256_fingerprint"], a_tls["sha256_fingerprint"]);
    check_served(a.proxy_addr(), alpn_domain, &root, &again).await;
    eprintln!("done in {:.1} s", t0.elapsed().as_secs_f64());
}
