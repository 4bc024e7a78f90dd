//! Graceful shutdown of the real binary: SIGTERM stops new connections, lets a running stream
//! finish, and the process exits 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;
use gem_proxy_mock::{MockOptions, MockUpstream};
use http::Method;
use http_body_util::BodyExt;

/// Starts the binary and returns it with the proxy address it logged.
pub(crate) fn spawn_gateway(config: &str) -> (std::process::Child, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gem-proxy"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("gateway logged its address").unwrap();
        let v: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if v["message"] == "gem-proxy listening" {
            break v["proxy_addr"].as_str().unwrap().to_owned();
        }
    };
    // Keep draining the log so the gateway never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr, dir)
}

/// Sends the gateway process SIGTERM (what Kubernetes and Compose send on stop).
pub(crate) fn sigterm(child: &std::process::Child) {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
}

/// Waits (with [`within`]'s deadline) for the gateway process to exit, and its status.
pub(crate) async fn exits(child: &mut std::process::Child) -> std::process::ExitStatus {
    within("process exits", async {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_running_stream_finish_then_exits_zero() {
    let mock = MockUpstream::start(MockOptions {
        chunks: 3,
        ..MockOptions::default()
    })
    .await
    .unwrap();
    mock.hold_streams(true);
    let config = format!(
        r#"
server: {{ host: "127.0.0.1", port: 0, shutdown_grace_seconds: 30 }}
gemini: {{ base_url: "{}", api_keys: [{{ id: k, key: "{KEY1}" }}] }}
metrics: {{ enabled: false }}
log: {{ format: json }}
"#,
        mock.base_url()
    );
    let (mut child, addr, _dir) = spawn_gateway(&config);
    let client = http1_client();
    let res = within(
        "stream starts",
        client.request(request(
            Method::POST,
            &format!("http://{addr}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
            GENERATE_BODY,
        )),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let first = within("first event", body.frame()).await.unwrap().unwrap();
    let mut received = first.into_data().unwrap().to_vec();

    sigterm(&child);

    // The listener closes: new connections are refused (polled, with a deadline).
    within("listener closes", async {
        while tokio::net::TcpStream::connect(&addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited with a stream still running"
    );

    // The running stream is allowed to finish, completely and cleanly.
    mock.release_chunk();
    mock.release_chunk();
    while let Some(frame) = within("rest of stream", body.frame()).await {
        received.extend_from_slice(&frame.expect("clean stream").into_data().unwrap());
    }
    let text = String::from_utf8(received).unwrap();
    assert_eq!(text.matches("data: ").count(), 3, "{text}");
    assert!(text.contains("\"finishReason\":\"STOP\""), "{text}");

    let status = exits(&mut child).await;
    assert!(status.success(), "{status:?}");
}
