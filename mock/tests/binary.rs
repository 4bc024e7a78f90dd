//! The `gem-proxy-mock` binary: prints its address, serves, exits 0 on SIGTERM.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use http::StatusCode;
use support::Call;

#[tokio::test]
async fn binary_prints_its_address_and_exits_cleanly_on_sigterm() {
    let pid_file =
        std::env::temp_dir().join(format!("gem-proxy-mock-test-{}.pid", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_gem-proxy-mock"))
        .args(["--port", "0", "--chunks", "2", "--invalid-key", "dead"])
        .arg("--pid-file")
        .arg(&pid_file)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .strip_suffix('\n')
        .unwrap()
        .strip_prefix("listening on ")
        .unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{line:?}");
    let addr: SocketAddr = url.strip_prefix("http://").unwrap().parse().unwrap();
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(pid.trim(), child.id().to_string());

    let stream = Call::post("/v1beta/models/m:streamGenerateContent?alt=sse")
        .header("x-goog-api-key", "k")
        .fetch(addr)
        .await;
    assert_eq!(stream.text().matches("data: ").count(), 2);
    let dead = Call::post("/v1beta/models/m:generateContent")
        .header("x-goog-api-key", "dead")
        .fetch(addr)
        .await;
    assert_eq!(dead.status, StatusCode::BAD_REQUEST);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!pid_file.exists(), "the pid file is removed on exit");
}
