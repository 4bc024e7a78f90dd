//! The command line: `check-config`, `--version`, `--help`, and the seed project's config.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_gem-proxy");

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("GEM_PROXY_CONFIG")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("binary runs")
}

fn check(yaml: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = run(&["check-config", "--config", path.to_str().unwrap()], &[]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"
server: { host: "127.0.0.1", port: 8080 }
gemini:
  api_keys:
    - { id: "key1", key: "AIzaONE", weight: 2, max_requests_per_minute: 60 }
    - { id: "key2", key: "AIzaTWO" }
"#;

#[test]
fn a_good_config_gets_a_one_line_summary() {
    let (ok, stdout, stderr) = check(GOOD);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("OK: 2 upstream key(s)"), "{stdout}");
    assert!(!stdout.contains("AIza"), "a key was printed: {stdout}");
}

#[test]
fn each_kind_of_bad_config_is_rejected_naming_the_field() {
    let cases: &[(&str, &str)] = &[
        (
            "gemini: { api_keys: [] }",
            "gemini.api_keys: at least one key is required",
        ),
        (
            "gemini: { api_keys: [{ id: a, key: k1 }, { id: a, key: k2 }] }",
            "gemini.api_keys[1].id: duplicate id \"a\"",
        ),
        (
            "gemini: { api_keys: [{ id: a, key: k1 }, { id: b, key: k2, weight: 0 }] }",
            "gemini.api_keys[1].weight: must be > 0",
        ),
        (
            "gemini: { base_url: \"not a url\", api_keys: [{ id: a, key: k }] }",
            "gemini.base_url:",
        ),
        (
            "auth: { enabled: true, jwt_secret: short }\ngemini: { api_keys: [{ id: a, key: k }] }",
            "auth.jwt_secret: must be at least 32 characters",
        ),
        (
            "gemini: { api_keys: [{ id: a, key: k, wieght: 1 }] }",
            "gemini.api_keys[0].wieght: unknown field `wieght`, expected one of `id`, `key`",
        ),
        ("sever: { port: 1 }", "unknown field `sever`"),
        (
            "server: { port: 70000 }\ngemini: { api_keys: [{ id: a, key: k }] }",
            "server.port:",
        ),
        (
            "gemini: { api_keys: [{ id: a, key: \"${GEM_PROXY_TEST_UNSET_VAR}\" }] }",
            "gemini.api_keys[0].key: environment variable GEM_PROXY_TEST_UNSET_VAR is not set",
        ),
        ("gemini: [unclosed", "not valid YAML"),
    ];
    for (yaml, want) in cases {
        let (ok, _, stderr) = check(yaml);
        assert!(!ok, "accepted: {yaml}");
        assert!(
            stderr.contains(want),
            "for {yaml:?}\nwanted {want:?}\ngot {stderr}"
        );
    }
}

#[test]
fn every_problem_is_listed_at_once() {
    let (ok, _, stderr) = check(
        "server: { max_connections: 0 }\ngemini: { timeout_seconds: 0, api_keys: [{ id: a, key: k, weight: 0 }] }",
    );
    assert!(!ok);
    for want in [
        "server.max_connections: must be > 0",
        "gemini.timeout_seconds: must be > 0",
        "gemini.api_keys[0].weight: must be > 0",
    ] {
        assert!(stderr.contains(want), "{want} missing from {stderr}");
    }
}

#[test]
fn a_missing_file_is_reported() {
    let out = run(
        &["check-config", "--config", "/nonexistent/proxy.yaml"],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/proxy.yaml"));
}

/// The original project's README config loads with its keys unchanged (TLS switched off): the
/// only complaint is its 20-character example JWT secret, which is too short to be safe.
#[test]
fn the_seed_projects_config_loads_unchanged() {
    let seed = r#"
server:
  host: "0.0.0.0"
  port: 8080
  workers: 4
  max_connections: 10000
  tls:
    enabled: false
    cert_path: "config/cert.pem"
    key_path: "config/key.pem"
    acme:
      enabled: true
      domains:
        - "proxy.example.com"
      email: "admin@example.com"
      directory_url: "https://acme-v02.api.letsencrypt.org/directory"

gemini:
  base_url: "https://generativelanguage.googleapis.com"
  timeout_seconds: 30
  api_keys:
    - id: "key1"
      key: "AIzaSyXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
      weight: 100
      max_requests_per_minute: 60
    - id: "key2"
      key: "AIzaSyYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYY"
      weight: 100
      max_requests_per_minute: 60

auth:
  enabled: true
  jwt_secret: "your-secret-key-here"
  rate_limit_per_minute: 100

metrics:
  enabled: true
  prometheus_port: 9090
"#;
    let (ok, _, stderr) = check(seed);
    assert!(!ok);
    let problems: Vec<&str> = stderr.lines().skip(1).map(str::trim).collect();
    assert!(
        problems.iter().all(|p| p.starts_with("auth.")),
        "only the auth section may be rejected: {problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("auth.jwt_secret: must be at least 32"))
    );
    // With a real secret it is accepted as is.
    let fixed = seed.replace("your-secret-key-here", "0123456789abcdef0123456789abcdef");
    let (ok, stdout, stderr) =
        check(&fixed.replace("enabled: true\n  jwt", "enabled: false\n  jwt"));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("2 upstream key(s)"));
}

/// The example ships with TLS on and no certificate: valid as it is (the self-signed certificate
/// is generated at the first start, relative to the working directory).
#[test]
fn the_shipped_example_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/proxy.yaml.example");
    let fresh = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config", example.to_str().unwrap()])
        .current_dir(fresh.path())
        .env_remove("GEM_PROXY_CONFIG")
        .env("GEMINI_API_KEY_1", "AIzaONE")
        .env("GEMINI_API_KEY_2", "AIzaTWO")
        .output()
        .expect("binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("proxy on 0.0.0.0:8443 (TLS on)"),
        "{stdout}"
    );
    // Checking writes nothing.
    assert_eq!(std::fs::read_dir(fresh.path()).unwrap().count(), 0);
}

#[test]
fn config_path_falls_back_to_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, GOOD).unwrap();
    let out = run(
        &["check-config"],
        &[("GEM_PROXY_CONFIG", path.to_str().unwrap())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn version_and_help() {
    let out = run(&["--version"], &[]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("gem-proxy {}", env!("CARGO_PKG_VERSION"))
    );
    let out = run(&["--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["serve", "check-config", "--config"] {
        assert!(help.contains(word), "{word} missing from --help");
    }
}
