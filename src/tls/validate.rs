//! The rules of `server.tls`, for [`Config::validate`](crate::config::Config::validate): each
//! problem with the path of its key. Certificate files that exist are loaded, so `gem-proxy
//! check-config` reports a broken one before the gateway would refuse to start.

use std::net::IpAddr;
use std::path::Path;

use super::TlsError;
use super::certificate::load_files;
use crate::config::{AcmeChallenge, ServerConfig};

/// Every problem with `server.tls` (none while TLS is off), as `(path, message)`.
pub(crate) fn problems(server: &ServerConfig) -> Vec<(String, String)> {
    let tls = &server.tls;
    let mut p = Vec::new();
    if !tls.enabled {
        return p;
    }
    let mut bad = |path: &str, msg: String| p.push((format!("server.tls.{path}"), msg));
    for (key, v) in [
        ("reload_interval_seconds", tls.reload_interval_seconds),
        ("handshake_timeout_seconds", tls.handshake_timeout_seconds),
    ] {
        if v == 0 {
            bad(key, "must be > 0".into());
        }
    }
    for (i, name) in tls.san.iter().enumerate() {
        if name.parse::<IpAddr>().is_err() && !is_dns_name(name) {
            bad(
                &format!("san[{i}]"),
                format!("{name:?} is neither a DNS name nor an IP address"),
            );
        }
    }

    let acme = &tls.acme;
    if acme.enabled {
        if acme.domains.is_empty() {
            bad("acme.domains", "at least one domain is required".into());
        }
        for (i, d) in acme.domains.iter().enumerate() {
            let msg = if d.starts_with("*.") {
                Some("wildcards need the dns-01 challenge, which is not supported")
            } else if d.parse::<IpAddr>().is_ok() {
                Some("must be a DNS name, not an IP address")
            } else if !is_dns_name(d) {
                Some("is not a DNS name")
            } else {
                None
            };
            if let Some(msg) = msg {
                bad(&format!("acme.domains[{i}]"), format!("{d:?} {msg}"));
            }
        }
        if let Some(url) = &acme.directory_url
            && !(url.starts_with("https://") && url.parse::<http::Uri>().is_ok())
        {
            bad(
                "acme.directory_url",
                format!("{url:?} must be an https:// URL"),
            );
        }
        if let Some(email) = &acme.email {
            let address = email.strip_prefix("mailto:").unwrap_or(email);
            if !address.contains('@') || address.contains(char::is_whitespace) {
                bad("acme.email", format!("{email:?} is not an email address"));
            }
        }
        if acme.cache_dir.trim().is_empty() {
            bad(
                "acme.cache_dir",
                "must not be empty (the account and certificates are kept there)".into(),
            );
        }
        if let Some(path) = &acme.directory_ca_path
            && let Err(e) = super::acme::directory_client(Some(Path::new(path)))
        {
            bad("acme.directory_ca_path", e.to_string());
        }
        if acme.challenge == AcmeChallenge::Http01 {
            if acme.http_port == 0 {
                bad(
                    "acme.http_port",
                    "must be a fixed port the CA can reach (80, or one forwarded from it)".into(),
                );
            } else if acme.http_port == server.port {
                bad("acme.http_port", "must differ from server.port".into());
            }
        }
        return p;
    }

    let (Some(cert), Some(key)) = (&tls.cert_path, &tls.key_path) else {
        for (k, v) in [("cert_path", &tls.cert_path), ("key_path", &tls.key_path)] {
            if v.is_none() {
                bad(
                    k,
                    "required when TLS is on without ACME (a self-signed certificate is generated there when neither file exists)".into(),
                );
            }
        }
        return p;
    };
    let (cert, key) = (Path::new(cert), Path::new(key));
    match (cert.exists(), key.exists()) {
        // Generated at start-up.
        (false, false) => {}
        (true, false) | (false, true) => {
            let missing = if cert.exists() {
                "key_path"
            } else {
                "cert_path"
            };
            let (present, absent) = if cert.exists() {
                (cert, key)
            } else {
                (key, cert)
            };
            bad(
                missing,
                TlsError::Incomplete {
                    present: present.display().to_string(),
                    missing: absent.display().to_string(),
                }
                .to_string(),
            );
        }
        (true, true) => {
            if let Err(e) = load_files(cert, key) {
                let at = match &e {
                    TlsError::Key { .. } | TlsError::KeyMismatch { .. } => "key_path",
                    TlsError::Read { path, .. } if Path::new(path) == key => "key_path",
                    _ => "cert_path",
                };
                bad(at, e.to_string());
            }
        }
    }
    p
}

/// A DNS name: dot-separated labels of letters, digits and inner hyphens, 1–63 characters each.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use crate::config::ConfigLoader;

    fn problems(tls_yaml: &str) -> Vec<String> {
        let yaml =
            format!("gemini: {{ api_keys: [{{ id: a, key: k }}] }}\nserver:\n  tls: {tls_yaml}\n");
        ConfigLoader::default()
            .parse_str(&yaml)
            .unwrap()
            .validate()
            .into_iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn tls_off_checks_nothing_so_the_seed_config_loads() {
        assert_eq!(
            problems("{ enabled: false, acme: { enabled: true, domains: [] } }"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn missing_files_are_fine_but_missing_paths_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        assert_eq!(
            problems(&format!(
                "{{ enabled: true, cert_path: \"{d}/c.pem\", key_path: \"{d}/k.pem\" }}"
            )),
            Vec::<String>::new()
        );
        let got = problems("{ enabled: true }");
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with("server.tls.cert_path: required"),
            "{got:?}"
        );
        assert!(
            got[1].starts_with("server.tls.key_path: required"),
            "{got:?}"
        );
    }

    #[test]
    fn broken_files_are_reported_at_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        std::fs::write(dir.path().join("c.pem"), "garbage").unwrap();
        let got = problems(&format!(
            "{{ enabled: true, cert_path: \"{d}/c.pem\", key_path: \"{d}/k.pem\" }}"
        ));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("server.tls.key_path: ") && got[0].contains("does not exist"),
            "{got:?}"
        );
        std::fs::write(dir.path().join("k.pem"), "garbage").unwrap();
        let got = problems(&format!(
            "{{ enabled: true, cert_path: \"{d}/c.pem\", key_path: \"{d}/k.pem\" }}"
        ));
        assert!(got[0].starts_with("server.tls.cert_path: "), "{got:?}");
    }

    #[test]
    fn acme_rules_name_their_keys() {
        let got = problems(
            r#"{ enabled: true, handshake_timeout_seconds: 0, san: ["ok.example", "bad name"],
                acme: { enabled: true, domains: ["*.example.com", "10.0.0.1", "ok.example.com"],
                        email: "nobody", directory_url: "http://ca.example/dir",
                        directory_ca_path: "/nonexistent/ca.pem", challenge: http-01, http_port: 0 } }"#,
        );
        let want = [
            "server.tls.handshake_timeout_seconds: must be > 0",
            "server.tls.san[1]: \"bad name\" is neither a DNS name nor an IP address",
            "server.tls.acme.domains[0]: \"*.example.com\" wildcards need the dns-01 challenge, which is not supported",
            "server.tls.acme.domains[1]: \"10.0.0.1\" must be a DNS name, not an IP address",
            "server.tls.acme.directory_url: \"http://ca.example/dir\" must be an https:// URL",
            "server.tls.acme.email: \"nobody\" is not an email address",
            "server.tls.acme.directory_ca_path: cannot read /nonexistent/ca.pem: No such file or directory (os error 2)",
            "server.tls.acme.http_port: must be a fixed port the CA can reach (80, or one forwarded from it)",
        ];
        assert_eq!(got, want);
        let err = ConfigLoader::default()
            .parse_str("server: { tls: { acme: { challenge: dns-01 } } }")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("server.tls.acme.challenge: ") && err.contains("tls-alpn-01"),
            "{err}"
        );
    }
}
