//! `bench-driver`: the load harness's own client, for what wrk cannot measure.
//!
//! ```text
//! bench-driver open-loop --addr H:P --path P [--header 'N: v']... [--body S]
//!              --rate R --duration-seconds S [--connections K] [--grace-seconds G]
//! bench-driver sse       --addr H:P --path P ... --streams N --rounds R --events E
//! bench-driver hold      --addr H:P --path P ... --streams N --hold-seconds S
//!              [--open-timeout-seconds T] [--open-parallel P]
//! bench-driver live      --addr H:P --path P ... --streams N --duration-seconds S
//!              [--interval-ms I] [--open-timeout-seconds T] [--open-parallel P]
//! ```
//!
//! Every mode prints one JSON object on its last line of stdout. Plain HTTP/1.1, one request at a
//! time per connection, `TCP_NODELAY` on every socket, a single-threaded runtime (the harness pins
//! it to one CPU).
//!
//! * `open-loop`: requests are scheduled at a fixed rate (request `i` at `t0 + i/R`) and spread
//!   round-robin over K connections (wrk2's model). A request that had to wait because its
//!   connection was still busy with a slow answer is timed from its *scheduled* start, so a stall
//!   of the target shows in the percentiles (no coordinated omission); one that only waited for
//!   this process's own timer is timed from when it was sent, so the driver's timer slack is not
//!   blamed on the target. Requests still unsent `grace` seconds after the run are `dropped`.
//! * `sse`: N concurrent streams (starts staggered over 20 ms), R requests each, one after the
//!   other on the same connection. An event ends at a blank line (`\n\n` or `\r\n\r\n`).
//!   Reports time to first event (from sending the request) and the gaps between events.
//! * `hold`: opens N streams (at most P opening at once), waits for the first event of each,
//!   prints `ready OPENED MS`, holds them all for S seconds, then closes them.
//! * `live`: opens N Live API sessions (WebSocket upgrade at `--path`, `setup` answered by
//!   `setupComplete`; at most P opening at once), prints `ready OPENED MS`, then each session sends
//!   a `clientContent` turn every I ms (100 by default; sessions staggered over one interval) for
//!   S seconds. Reports the time from sending a turn to its first answer frame, then closes all.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};

type Sender = SendRequest<Full<Bytes>>;

struct Opts {
    mode: String,
    addr: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    rate: f64,
    duration: Duration,
    connections: usize,
    grace: Duration,
    streams: usize,
    rounds: usize,
    events: usize,
    hold: Duration,
    open_timeout: Duration,
    open_parallel: usize,
    interval_ms: u64,
}

fn usage(problem: &str) -> ! {
    eprintln!("bench-driver: {problem}\nsee the doc comment of benches/load/driver/src/main.rs");
    std::process::exit(2);
}

fn parse() -> Opts {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| usage("no mode"));
    let mut o = Opts {
        mode,
        addr: String::new(),
        path: String::new(),
        headers: Vec::new(),
        body: Bytes::new(),
        rate: 1000.0,
        duration: Duration::from_secs(10),
        connections: 64,
        grace: Duration::from_secs(5),
        streams: 32,
        rounds: 1,
        events: 0,
        hold: Duration::from_secs(3),
        open_timeout: Duration::from_secs(60),
        open_parallel: 256,
        interval_ms: 100,
    };
    let secs = |v: String| Duration::from_secs_f64(v.parse().unwrap_or_else(|_| usage(&v)));
    let num = |v: String| v.parse::<usize>().unwrap_or_else(|_| usage(&v));
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--addr" => o.addr = value,
            "--path" => o.path = value,
            "--header" => {
                let (name, v) = value
                    .split_once(':')
                    .unwrap_or_else(|| usage("--header 'Name: value'"));
                o.headers
                    .push((name.trim().to_owned(), v.trim().to_owned()));
            }
            "--body" => o.body = Bytes::from(value),
            "--rate" => o.rate = value.parse().unwrap_or_else(|_| usage("--rate")),
            "--duration-seconds" => o.duration = secs(value),
            "--connections" => o.connections = num(value).max(1),
            "--grace-seconds" => o.grace = secs(value),
            "--streams" => o.streams = num(value).max(1),
            "--rounds" => o.rounds = num(value).max(1),
            "--events" => o.events = num(value),
            "--hold-seconds" => o.hold = secs(value),
            "--open-timeout-seconds" => o.open_timeout = secs(value),
            "--open-parallel" => o.open_parallel = num(value).max(1),
            "--interval-ms" => o.interval_ms = num(value) as u64,
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    if o.addr.is_empty() || o.path.is_empty() {
        usage("--addr and --path are required");
    }
    o
}

fn request(o: &Opts) -> Request<Full<Bytes>> {
    let mut b = Request::post(o.path.as_str())
        .header("host", o.addr.as_str())
        .header("content-type", "application/json");
    for (name, value) in &o.headers {
        b = b.header(name.as_str(), value.as_str());
    }
    b.body(Full::new(o.body.clone()))
        .unwrap_or_else(|e| usage(&format!("bad request: {e}")))
}

async fn connect(addr: &str) -> Result<Sender, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one request and reads its whole answer; returns the status.
async fn exchange(sender: &mut Sender, o: &Opts) -> Result<u16, String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request(o))
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

/// Value at quantile `q` of sorted `v` (nearest rank); 0 when empty.
fn pct(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn stats(name: &str, v: &mut [u64]) -> String {
    v.sort_unstable();
    let mean = if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<u64>() as f64 / v.len() as f64
    };
    format!(
        "\"{name}_p50_us\":{},\"{name}_p90_us\":{},\"{name}_p99_us\":{},\"{name}_p999_us\":{},\"{name}_max_us\":{},\"{name}_mean_us\":{mean:.1}",
        pct(v, 0.5),
        pct(v, 0.9),
        pct(v, 0.99),
        pct(v, 0.999),
        v.last().copied().unwrap_or(0),
    )
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

#[derive(Default)]
struct LoopResult {
    latencies: Vec<u64>,
    ok: u64,
    errors: u64,
    dropped: u64,
}

async fn open_loop(o: &'static Opts) -> String {
    let total = (o.rate * o.duration.as_secs_f64()).round() as u64;
    let interval = 1.0 / o.rate;
    let k = o.connections as u64;
    // Connections first, so connecting is not part of the first requests' latency.
    let mut senders = Vec::new();
    for _ in 0..k {
        senders.push(connect(&o.addr).await.ok());
    }
    let t0 = Instant::now() + Duration::from_millis(50);
    let deadline = t0 + o.duration + o.grace;
    let mut tasks = Vec::new();
    for (lane, sender) in (0..k).zip(senders) {
        tasks.push(tokio::spawn(async move {
            let mut r = LoopResult::default();
            let mut sender = sender;
            let mut free_since = t0;
            let mut i = lane;
            while i < total {
                let scheduled = t0 + Duration::from_secs_f64(i as f64 * interval);
                if Instant::now() >= deadline {
                    r.dropped += (total - i).div_ceil(k);
                    break;
                }
                tokio::time::sleep_until(scheduled.into()).await;
                if sender.is_none() {
                    sender = connect(&o.addr).await.ok();
                }
                // Busy past the scheduled start: the target made us wait, so that counts.
                let start = if free_since > scheduled {
                    scheduled
                } else {
                    Instant::now()
                };
                let outcome = match sender.as_mut() {
                    Some(s) => exchange(s, o).await,
                    None => Err("connect".into()),
                };
                let done = Instant::now();
                match outcome {
                    Ok(200) => {
                        r.ok += 1;
                        r.latencies.push(micros(done - start));
                    }
                    Ok(_) => r.errors += 1,
                    Err(_) => {
                        r.errors += 1;
                        sender = None;
                    }
                }
                free_since = done;
                i += k;
            }
            r
        }));
    }
    let mut all = LoopResult::default();
    for t in tasks {
        if let Ok(mut r) = t.await {
            all.latencies.append(&mut r.latencies);
            all.ok += r.ok;
            all.errors += r.errors;
            all.dropped += r.dropped;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    format!(
        "{{\"mode\":\"open-loop\",\"rate\":{},\"scheduled\":{total},\"ok\":{},\"errors\":{},\"dropped\":{},\"elapsed_s\":{elapsed:.3},\"achieved_rps\":{:.1},{}}}",
        o.rate,
        all.ok,
        all.errors,
        all.dropped,
        all.ok as f64 / elapsed,
        stats("latency", &mut all.latencies)
    )
}

/// Counts SSE event ends (a blank line) across frames; `\r` is ignored.
#[derive(Default)]
struct EventScanner {
    after_newline: bool,
}

impl EventScanner {
    fn feed(&mut self, data: &[u8]) -> usize {
        let mut n = 0;
        for &b in data {
            match b {
                b'\n' if self.after_newline => {
                    n += 1;
                    self.after_newline = false;
                }
                b'\n' => self.after_newline = true,
                b'\r' => {}
                _ => self.after_newline = false,
            }
        }
        n
    }
}

/// Reads frames of `body` until `scanner` has seen `want` more events or the body ends.
async fn read_events(
    body: &mut Incoming,
    scanner: &mut EventScanner,
    times: &mut Vec<Instant>,
    want: usize,
) -> Result<bool, String> {
    let goal = times.len() + want;
    while times.len() < goal {
        match body.frame().await {
            None => return Ok(false),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let n = scanner.feed(data);
                    let now = Instant::now();
                    times.extend(std::iter::repeat_n(now, n));
                }
            }
        }
    }
    Ok(true)
}

#[derive(Default)]
struct SseResult {
    ttfe: Vec<u64>,
    gaps: Vec<u64>,
    ok: u64,
    errors: u64,
    short: u64,
}

async fn sse(o: &'static Opts) -> String {
    let n = o.streams;
    let mut tasks = Vec::new();
    for s in 0..n {
        tasks.push(tokio::spawn(async move {
            let mut r = SseResult::default();
            // Staggered starts: the mock's ticks of different streams don't all coincide.
            tokio::time::sleep(Duration::from_micros((s as u64 * 20_000) / n as u64)).await;
            let mut sender = connect(&o.addr).await.ok();
            for _ in 0..o.rounds {
                let Some(tx) = sender.as_mut() else {
                    r.errors += 1;
                    sender = connect(&o.addr).await.ok();
                    continue;
                };
                let sent = Instant::now();
                let response = match async {
                    tx.ready().await?;
                    tx.send_request(request(o)).await
                }
                .await
                {
                    Ok(resp) => resp,
                    Err(_) => {
                        r.errors += 1;
                        sender = None;
                        continue;
                    }
                };
                if response.status() != 200 {
                    r.errors += 1;
                    let _ = response.into_body().collect().await;
                    continue;
                }
                let mut body = response.into_body();
                let mut scanner = EventScanner::default();
                let mut times = Vec::with_capacity(o.events.max(1));
                let outcome = read_events(&mut body, &mut scanner, &mut times, usize::MAX).await;
                if outcome.is_err() {
                    r.errors += 1;
                    sender = None;
                }
                if o.events > 0 && times.len() != o.events {
                    r.short += 1;
                }
                if let Some(first) = times.first() {
                    r.ttfe.push(micros(*first - sent));
                }
                for w in times.windows(2) {
                    r.gaps.push(micros(w[1] - w[0]));
                }
                if outcome.is_ok() && !times.is_empty() {
                    r.ok += 1;
                }
            }
            r
        }));
    }
    let mut all = SseResult::default();
    for t in tasks {
        if let Ok(mut r) = t.await {
            all.ttfe.append(&mut r.ttfe);
            all.gaps.append(&mut r.gaps);
            all.ok += r.ok;
            all.errors += r.errors;
            all.short += r.short;
        }
    }
    format!(
        "{{\"mode\":\"sse\",\"streams\":{n},\"rounds\":{},\"ok\":{},\"errors\":{},\"wrong_event_count\":{},\"events\":{},{},{}}}",
        o.rounds,
        all.ok,
        all.errors,
        all.short,
        all.gaps.len() as u64 + all.ttfe.len() as u64,
        stats("ttfe", &mut all.ttfe),
        stats("gap", &mut all.gaps)
    )
}

async fn hold(o: &'static Opts) -> String {
    let n = o.streams;
    let opening = Arc::new(Semaphore::new(o.open_parallel));
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let ended_early = Arc::new(AtomicUsize::new(0));
    let (release_tx, release_rx) = watch::channel(false);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (opening, ready, failed, ended_early) = (
            Arc::clone(&opening),
            Arc::clone(&ready),
            Arc::clone(&failed),
            Arc::clone(&ended_early),
        );
        let mut release = release_rx.clone();
        tasks.push(tokio::spawn(async move {
            let permit = opening.acquire_owned().await;
            let mut opened = None;
            for attempt in 0..3u64 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                let Ok(mut tx) = connect(&o.addr).await else {
                    continue;
                };
                let Ok(response) = async {
                    tx.ready().await?;
                    tx.send_request(request(o)).await
                }
                .await
                else {
                    continue;
                };
                if response.status() != 200 {
                    continue;
                }
                let mut body = response.into_body();
                let mut scanner = EventScanner::default();
                let mut times = Vec::new();
                if let Ok(true) = read_events(&mut body, &mut scanner, &mut times, 1).await {
                    opened = Some((tx, body));
                    break;
                }
            }
            drop(permit);
            let Some((_tx, mut body)) = opened else {
                failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            ready.fetch_add(1, Ordering::Relaxed);
            loop {
                tokio::select! {
                    frame = body.frame() => match frame {
                        Some(Ok(_)) => {}
                        _ => { ended_early.fetch_add(1, Ordering::Relaxed); return; }
                    },
                    _ = release.changed() => return,
                }
            }
        }));
    }
    let open_deadline = started + o.open_timeout;
    while ready.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n
        && Instant::now() < open_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_ms = started.elapsed().as_millis();
    let opened = ready.load(Ordering::Relaxed);
    println!("ready {opened} {open_ms}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tokio::time::sleep(o.hold).await;
    let still_open = opened - ended_early.load(Ordering::Relaxed).min(opened);
    let _ = release_tx.send(true);
    for t in tasks {
        t.abort();
    }
    format!(
        "{{\"mode\":\"hold\",\"streams\":{n},\"opened\":{opened},\"failed\":{},\"ended_early\":{},\"still_open_at_release\":{still_open},\"open_ms\":{open_ms}}}",
        failed.load(Ordering::Relaxed),
        ended_early.load(Ordering::Relaxed)
    )
}

/// One Live session: connect, `setup`, wait for `setupComplete`.
async fn live_session(o: &Opts) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, String> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let stream = TcpStream::connect(&o.addr)
        .await
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut req = format!("ws://{}{}", o.addr, o.path)
        .into_client_request()
        .map_err(|e| e.to_string())?;
    for (name, value) in &o.headers {
        let name =
            hyper::header::HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
        req.headers_mut()
            .insert(name, value.parse().map_err(|_| "bad header".to_owned())?);
    }
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| e.to_string())?;
    ws.send(Message::text(
        r#"{"setup":{"model":"models/gemini-live-2.5-flash"}}"#,
    ))
    .await
    .map_err(|e| e.to_string())?;
    match ws.next().await {
        Some(Ok(Message::Binary(_) | Message::Text(_))) => Ok(ws),
        other => Err(format!("no setupComplete: {other:?}")),
    }
}

async fn live(o: &'static Opts) -> String {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let n = o.streams;
    let interval = Duration::from_millis(o.interval_ms.max(1));
    let opening = Arc::new(Semaphore::new(o.open_parallel));
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let (go_tx, go_rx) = watch::channel(false);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (opening, ready, failed) = (
            Arc::clone(&opening),
            Arc::clone(&ready),
            Arc::clone(&failed),
        );
        let mut go = go_rx.clone();
        tasks.push(tokio::spawn(async move {
            let permit = opening.acquire_owned().await;
            let ws = live_session(o).await;
            drop(permit);
            let Ok(mut ws) = ws else {
                failed.fetch_add(1, Ordering::Relaxed);
                return (Vec::new(), 0u64);
            };
            ready.fetch_add(1, Ordering::Relaxed);
            let _ = go.wait_for(|go| *go).await;
            // Spread the sessions' turns over one interval.
            tokio::time::sleep(interval * i as u32 / n as u32).await;
            let turn = Message::text(
                r#"{"clientContent":{"turns":[{"role":"user","parts":[{"text":"tick"}]}],"turnComplete":true}}"#,
            );
            let mut rtts = Vec::new();
            let mut errors = 0u64;
            let end = Instant::now() + o.duration;
            let mut next = tokio::time::Instant::now();
            while Instant::now() < end {
                tokio::time::sleep_until(next).await;
                next += interval;
                let sent = Instant::now();
                if ws.send(turn.clone()).await.is_err() {
                    errors += 1;
                    break;
                }
                // The model turn, then turnComplete.
                match ws.next().await {
                    Some(Ok(Message::Binary(_) | Message::Text(_))) => {
                        rtts.push(sent.elapsed().as_micros() as u64)
                    }
                    _ => {
                        errors += 1;
                        break;
                    }
                }
                if !matches!(ws.next().await, Some(Ok(_))) {
                    errors += 1;
                    break;
                }
            }
            let _ = ws.close(None).await;
            (rtts, errors)
        }));
    }
    let open_deadline = started + o.open_timeout;
    while ready.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n
        && Instant::now() < open_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_ms = started.elapsed().as_millis();
    let opened = ready.load(Ordering::Relaxed);
    println!("ready {opened} {open_ms}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = go_tx.send(true);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((rtts, e)) = t.await {
            all.extend(rtts);
            errors += e;
        }
    }
    format!(
        "{{\"mode\":\"live\",\"sessions\":{n},\"opened\":{opened},\"failed\":{},\"open_ms\":{open_ms},\"frames\":{},\"errors\":{errors},{}}}",
        failed.load(Ordering::Relaxed),
        all.len(),
        stats("rtt", &mut all)
    )
}

fn main() {
    let o: &'static Opts = Box::leak(Box::new(parse()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let out = runtime.block_on(async {
        match o.mode.as_str() {
            "open-loop" => open_loop(o).await,
            "sse" => sse(o).await,
            "hold" => hold(o).await,
            "live" => live(o).await,
            other => usage(&format!("unknown mode {other}")),
        }
    });
    println!("{out}");
    // Don't wait for held connections' tasks to wind down.
    runtime.shutdown_background();
}
