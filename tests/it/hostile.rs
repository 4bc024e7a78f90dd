//! Hostile clients against the real binary: thousands of silent connections, slowloris headers,
//! HTTP/2 rapid reset and stream floods, 100 MB bodies on many streams at once, random bytes.
//! Throughout, `/health` and ordinary requests must keep succeeding, and the gateway's memory
//! must stay far below what the attack throws at it. The gateway's resident memory and open
//! files are printed after every phase (`cargo test --test hostile -- --nocapture`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use gem_proxy_mock::{MockOptions, MockUpstream};
use http::{Method, Request};
use http_body::{Body, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SILENT_CONNECTIONS: usize = 5_000;
const IDLE_SECONDS: u64 = 2;
const MAX_BODY: usize = 4 * 1024 * 1024;
const BODY_BUDGET: usize = 128 * 1024 * 1024;
const HUGE_BODY: usize = 100 * 1024 * 1024;
const HUGE_STREAMS: usize = 16;
const MIB: u64 = 1024 * 1024;

struct Gateway {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    fn start(mock: &MockUpstream) -> Gateway {
        let config = format!(
            r#"
server:
  host: "127.0.0.1"
  port: 0
  workers: 2
  max_connections: 6000
  idle_connection_timeout_seconds: {IDLE_SECONDS}
  header_read_timeout_seconds: {IDLE_SECONDS}
  request_body_timeout_seconds: 20
  max_request_body_bytes: {MAX_BODY}
  max_buffered_body_bytes: {BODY_BUDGET}
gemini: {{ base_url: "{}", api_keys: [{{ id: k1, key: "{KEY1}" }}, {{ id: k2, key: "{KEY2}" }}] }}
metrics: {{ enabled: true, prometheus_port: 0 }}
log: {{ format: json, level: warn }}
"#,
            mock.base_url()
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.yaml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_gem-proxy"))
            .args(["serve", "--config", path.to_str().unwrap()])
            .env("RUST_LOG", "gem_proxy=info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (proxy, admin) = loop {
            let line = lines.next().expect("gateway logged its address").unwrap();
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["message"] == "gem-proxy listening" {
                let admin = v["admin_addr"].as_str().unwrap();
                let admin = admin.trim_start_matches("Some(").trim_end_matches(')');
                break (
                    v["proxy_addr"].as_str().unwrap().parse().unwrap(),
                    admin.parse().unwrap(),
                );
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Gateway {
            child,
            proxy,
            admin,
            _dir: dir,
        }
    }

    /// Resident memory in bytes and open files, from `/proc`.
    fn usage(&self) -> (u64, usize) {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count();
        (rss_kib * 1024, fds)
    }
}

/// Peak and per-phase figures.
struct Record {
    peak_rss: AtomicU64,
    peak_fds: AtomicU64,
}

impl Record {
    fn sample(&self, gw: &Gateway, phase: &str) -> (u64, usize) {
        let (rss, fds) = gw.usage();
        self.peak_rss.fetch_max(rss, Ordering::Relaxed);
        self.peak_fds.fetch_max(fds as u64, Ordering::Relaxed);
        println!(
            "hostile: {phase:<44} rss {:>6.1} MiB  open files {fds:>5}",
            rss as f64 / MIB as f64
        );
        (rss, fds)
    }
}

/// Raises this process's soft open-file limit (the gateway inherits it) so 5,000 connections
/// fit, with util-linux's `prlimit` (the workspace forbids `unsafe`, so no `setrlimit` here).
fn raise_nofile_limit() {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if soft < 16_384 {
        let status = Command::new("prlimit")
            .args(["--pid", &std::process::id().to_string(), "--nofile=16384:"])
            .status();
        println!("hostile: raised the open-file limit from {soft}: {status:?}");
    }
}

/// Probes `/health` and an ordinary generate call every 50 ms on fresh connections until
/// stopped; counts successes and failures.
struct Probes {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Probes {
    fn start(gw: &Gateway) -> Probes {
        let (stop, ok, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (proxy, admin) = (gw.proxy, gw.admin);
        let task = {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    for (what, req) in [
                        (
                            "health",
                            request(Method::GET, &format!("http://{admin}/health"), ""),
                        ),
                        (
                            "generate",
                            request(
                                Method::POST,
                                &format!(
                                    "http://{proxy}/v1beta/models/gemini-2.5-flash:generateContent"
                                ),
                                GENERATE_BODY,
                            ),
                        ),
                    ] {
                        // A fresh client: a probe must get a new connection through the flood.
                        let client = http1_client();
                        match tokio::time::timeout(Duration::from_secs(5), client.request(req))
                            .await
                        {
                            Ok(Ok(res)) if res.status() == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(format!("{what}: {other:?}"));
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                errors
            })
        };
        Probes {
            stop,
            ok,
            failed,
            task,
        }
    }

    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.task.await.unwrap();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

/// A request body of `remaining` zero bytes, made on the fly in 64 KiB pieces (the test never
/// holds it in memory).
struct Zeros {
    remaining: usize,
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl Body for Zeros {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(ZEROS.len());
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&ZEROS[..n])))))
    }
}

/// Reads until the peer closes (or `limit` passes); whether it closed.
async fn closed_by_peer(conn: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A small xorshift: random bytes without a dependency.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_survives_hostile_clients_with_bounded_memory() {
    raise_nofile_limit();
    let mock = MockUpstream::start(MockOptions::default()).await.unwrap();
    let gw = Gateway::start(&mock);
    let record = Arc::new(Record {
        peak_rss: AtomicU64::new(0),
        peak_fds: AtomicU64::new(0),
    });
    let (base_rss, base_fds) = record.sample(&gw, "idle, before any attack");
    let probes = Probes::start(&gw);
    // Peaks between the phase samples.
    let pid = gw.child.id();
    let sampler = {
        let record = record.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                    return;
                };
                if let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    record.peak_rss.fetch_max(kib * 1024, Ordering::Relaxed);
                }
                if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
                    record
                        .peak_fds
                        .fetch_max(fds.count() as u64, Ordering::Relaxed);
                }
            }
        })
    };

    // 1. Thousands of connections that never send a byte: all closed after the idle timeout.
    let mut silent = Vec::with_capacity(SILENT_CONNECTIONS);
    for _ in 0..SILENT_CONNECTIONS {
        silent.push(TcpStream::connect(gw.proxy).await.unwrap());
    }
    // And a flood of idle admin connections, past the listener's regular slots.
    for _ in 0..300 {
        silent.push(TcpStream::connect(gw.admin).await.unwrap());
    }
    record.sample(&gw, "5,300 silent connections opened");
    let mut closed = 0;
    for conn in &mut silent {
        if closed_by_peer(conn, Duration::from_secs(4 * IDLE_SECONDS)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, silent.len(), "every silent connection was closed");
    drop(silent);
    record.sample(&gw, "silent connections closed by the gateway");

    // 2. Slowloris: headers a byte at a time, never finished.
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut c = TcpStream::connect(gw.proxy).await.unwrap();
        c.write_all(b"POST /v1beta/models/m:generateContent HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        slow.push(c);
    }
    for i in 0..4 {
        for c in &mut slow {
            let _ = c.write_all(format!("x-slow-{i}: a\r\n").as_bytes()).await;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    record.sample(&gw, "200 slowloris connections dripping headers");
    let mut closed = 0;
    for c in &mut slow {
        if closed_by_peer(c, Duration::from_secs(4 * IDLE_SECONDS)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, slow.len(), "every slowloris connection was closed");
    drop(slow);

    // 3. HTTP/2 rapid reset: open streams and cancel them at once, thousands of times.
    let mut rapid_reset_goaway = 0;
    for _ in 0..4 {
        let io = TcpStream::connect(gw.proxy).await.unwrap();
        let (mut h2, conn) = h2::client::handshake(io).await.unwrap();
        let conn = tokio::spawn(conn);
        for _ in 0..5_000 {
            let req = Request::post(format!(
                "http://{}/v1beta/models/gemini-2.5-flash:generateContent",
                gw.proxy
            ))
            .body(())
            .unwrap();
            let Ok(ready) = h2.ready().await else { break };
            h2 = ready;
            match h2.send_request(req, false) {
                Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
                Err(_) => break,
            }
        }
        if tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .is_ok()
        {
            rapid_reset_goaway += 1;
        }
    }
    record.sample(&gw, "HTTP/2 rapid reset, 4 x 5,000 streams");
    println!("hostile: rapid-reset connections the gateway closed: {rapid_reset_goaway}/4");

    // 4. Stream flood: many HTTP/2 connections, each with as many streams as it may open,
    // every stream's body left unfinished.
    let mut flood = Vec::new();
    for _ in 0..20 {
        let io = TcpStream::connect(gw.proxy).await.unwrap();
        let (mut h2, conn) = h2::client::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let mut streams = Vec::new();
        for _ in 0..100 {
            let req = Request::post(format!(
                "http://{}/v1beta/models/gemini-2.5-flash:generateContent",
                gw.proxy
            ))
            .body(())
            .unwrap();
            let Ok(Ok(ready)) =
                tokio::time::timeout(Duration::from_secs(1), h2.clone().ready()).await
            else {
                break;
            };
            h2 = ready;
            match h2.send_request(req, false) {
                Ok((res, mut body)) => {
                    let _ = body.send_data(Bytes::from_static(b"{\"contents\":"), false);
                    streams.push((res, body));
                }
                Err(_) => break,
            }
        }
        flood.push((h2, streams));
    }
    let open: usize = flood.iter().map(|(_, s)| s.len()).sum();
    // The gateway announced its stream limit (server.http2.max_concurrent_streams).
    assert_eq!(flood[0].0.current_max_send_streams(), 100);
    assert!(open <= 20 * 100, "{open}");
    record.sample(&gw, &format!("stream flood, {open} unfinished streams"));
    drop(flood);

    // 5. 100 MB bodies on many streams at once: HTTP/2 streams and HTTP/1.1 connections,
    // without a Content-Length (so the gateway finds out only by counting).
    let io = TokioIo::new(TcpStream::connect(gw.proxy).await.unwrap());
    let (h2, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Zeros>(io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut uploads = tokio::task::JoinSet::new();
    for i in 0..HUGE_STREAMS {
        let url = format!(
            "http://{}/v1beta/models/gemini-2.5-flash:generateContent",
            gw.proxy
        );
        let req = Request::post(url).body(Zeros {
            remaining: HUGE_BODY,
        });
        if i % 2 == 0 {
            let mut h2 = h2.clone();
            uploads.spawn(async move {
                match h2.send_request(req.unwrap()).await {
                    Ok(res) => res.status().as_u16(),
                    Err(_) => 0,
                }
            });
        } else {
            let proxy = gw.proxy;
            uploads.spawn(async move {
                let io = TokioIo::new(TcpStream::connect(proxy).await.unwrap());
                let (mut h1, conn) = hyper::client::conn::http1::handshake::<_, Zeros>(io)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                match h1.send_request(req.unwrap()).await {
                    Ok(res) => res.status().as_u16(),
                    Err(_) => 0,
                }
            });
        }
    }
    let statuses = uploads.join_all().await;
    record.sample(
        &gw,
        &format!("{HUGE_STREAMS} x 100 MB bodies answered {statuses:?}"),
    );
    assert!(
        statuses.iter().all(|&s| s != 200),
        "no oversized body was accepted: {statuses:?}"
    );

    // 6. Random bytes.
    for seed in 0..200u64 {
        if let Ok(mut c) = TcpStream::connect(gw.proxy).await {
            let _ = c.write_all(&noise(seed + 1, 16 * 1024)).await;
        }
    }
    record.sample(&gw, "200 connections of random bytes");

    let (ok, failed, errors) = probes.finish().await;
    println!("hostile: probes during the attacks: {ok} succeeded, {failed} failed");
    assert!(failed == 0, "probes failed during the attacks: {errors:?}");
    assert!(ok > 0);

    // Afterwards: the gateway is still itself, and back near its idle footprint.
    tokio::time::sleep(Duration::from_secs(IDLE_SECONDS + 2)).await;
    let (rss, fds) = record.sample(&gw, "after the attacks, idle again");
    sampler.abort();
    let peak = record.peak_rss.load(Ordering::Relaxed);
    println!(
        "hostile: peak rss {:.1} MiB (baseline {:.1} MiB), peak open files {} (baseline {base_fds}); bodies sent at it: {} MiB",
        peak as f64 / MIB as f64,
        base_rss as f64 / MIB as f64,
        record.peak_fds.load(Ordering::Relaxed),
        (HUGE_STREAMS * HUGE_BODY) as u64 / MIB
    );
    // Bounded: the bodies alone would be 1,600 MiB; the gateway may hold at most its body
    // budget plus connection state.
    assert!(
        peak < base_rss + BODY_BUDGET as u64 + 128 * MIB,
        "peak rss {peak} bytes"
    );
    assert!(
        fds < base_fds + 50,
        "connections were released: {fds} open files"
    );
    let client = http1_client();
    let res = client
        .request(request(
            Method::GET,
            &format!("http://{}/health", gw.admin),
            "",
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let _ = rss;
}
