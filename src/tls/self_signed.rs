//! The default certificate: when neither `server.tls.cert_path` nor `key_path` exists, a
//! self-signed certificate is generated there (ECDSA P-256, one year) and reused on every later
//! start, so clients that trusted it keep trusting it.
//!
//! It covers `localhost`, `127.0.0.1`, `::1`, this machine's host name, `server.host` (when it is
//! a specific address or name) and the names in `server.tls.san`. One is generated again only
//! when it is about to expire or lacks a name that `server.tls.san` asks for.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use super::TlsError;
use super::certificate::{CertificateSource, CertificateStatus, SELF_SIGNED_CN};

/// How long a generated certificate is valid (Apple's platforms refuse server certificates valid
/// for more than 825 days, even trusted by hand).
const VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A generated certificate this close to its end is replaced at start-up.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// What [`ensure`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KeyOutcome {
    /// The files were there; they are used as they are.
    Existing,
    /// A certificate was generated (there was none, or ours was expiring or missing a name).
    Generated,
}

/// Makes sure a certificate and key exist at the two paths, generating a self-signed pair when
/// neither does (or when the one there is our own and needs replacing).
pub(crate) fn ensure(
    cert_path: &Path,
    key_path: &Path,
    server_host: &str,
    san: &[String],
) -> Result<KeyOutcome, TlsError> {
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            if let Some(reason) = needs_replacing(cert_path, san) {
                tracing::warn!(
                    cert_path = %cert_path.display(),
                    "replacing the generated self-signed certificate: {reason}"
                );
            } else {
                return Ok(KeyOutcome::Existing);
            }
        }
        (false, false) => {}
        (true, false) | (false, true) => {
            let (present, missing) = if cert_path.exists() {
                (cert_path, key_path)
            } else {
                (key_path, cert_path)
            };
            return Err(TlsError::Incomplete {
                present: present.display().to_string(),
                missing: missing.display().to_string(),
            });
        }
    }
    let names = names(server_host, san);
    let (cert_pem, key_pem) = generate(&names)?;
    write_file(key_path, key_pem.as_bytes(), 0o600)?;
    write_file(cert_path, cert_pem.as_bytes(), 0o644)?;
    tracing::info!(
        cert_path = %cert_path.display(),
        key_path = %key_path.display(),
        names = ?names,
        "generated a self-signed TLS certificate"
    );
    Ok(KeyOutcome::Generated)
}

/// Why an existing certificate that we generated must be made again; `None` to keep it (always
/// `None` for a certificate we did not generate).
fn needs_replacing(cert_path: &Path, san: &[String]) -> Option<String> {
    let pem = std::fs::read(cert_path).ok()?;
    let der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(&pem).ok()?
    };
    let status = CertificateStatus::of_leaf(&der, None).ok()?;
    if status.source != CertificateSource::SelfSigned {
        return None;
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    if status
        .not_after_unix
        .is_some_and(|end| end < now + RENEW_BEFORE.as_secs() as i64)
    {
        return Some("it expires within 30 days".into());
    }
    let missing: Vec<&String> = san
        .iter()
        .filter(|want| !status.names.iter().any(|have| same_name(have, want)))
        .collect();
    (!missing.is_empty()).then(|| format!("server.tls.san asks for {missing:?}, which it lacks"))
}

fn same_name(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a.eq_ignore_ascii_case(b),
    }
}

/// The names a generated certificate covers, without duplicates.
pub(crate) fn names(server_host: &str, san: &[String]) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    let mut add = |name: &str| {
        let name = name.trim().trim_start_matches('[').trim_end_matches(']');
        if !name.is_empty() && !names.iter().any(|n| same_name(n, name)) {
            names.push(name.to_owned());
        }
    };
    if let Some(host) = host_name() {
        add(&host);
    }
    let unspecified = server_host
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified());
    if !unspecified {
        add(server_host);
    }
    for name in san {
        add(name);
    }
    names
}

/// This machine's host name (Linux), when it is usable as a DNS name.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()?;
    let name = name.trim();
    let usable = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    usable.then(|| name.to_owned())
}

/// A self-signed certificate and its key, both PEM (the key PKCS#8).
pub(crate) fn generate(names: &[String]) -> Result<(String, String), TlsError> {
    let err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = names
        .iter()
        .map(|name| match name.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => name
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|_| TlsError::Generate(format!("{name:?} is not a DNS name"))),
        })
        .collect::<Result<_, _>>()?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, SELF_SIGNED_CN);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "gem-proxy");
    let now = OffsetDateTime::now_utc();
    // An hour of slack for clients whose clock is a little behind.
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + VALIDITY;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // Strict verifiers (Python 3.13's default) want the key identifiers.
    params.use_authority_key_identifier_extension = true;
    let cert = params.self_signed(&key).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes a file whole: into a temporary file beside it with `mode`, then renamed over the
/// target, so a reader never sees half of it.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let fail = |source: std::io::Error| TlsError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let written = options.open(&tmp).and_then(|mut f| {
        f.write_all(contents)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certificate::load_files;

    #[test]
    fn names_cover_loopback_the_host_and_san_without_duplicates() {
        let san = vec![
            "gw.example.com".to_string(),
            "LOCALHOST".into(),
            "10.0.0.7".into(),
        ];
        let n = names("0.0.0.0", &san);
        assert_eq!(&n[..3], ["localhost", "127.0.0.1", "::1"]);
        assert!(n.contains(&"gw.example.com".to_string()));
        assert!(n.contains(&"10.0.0.7".to_string()));
        assert!(!n.contains(&"0.0.0.0".to_string()));
        assert_eq!(
            n.iter()
                .filter(|x| x.eq_ignore_ascii_case("localhost"))
                .count(),
            1
        );
        assert!(names("192.168.1.5", &[]).contains(&"192.168.1.5".to_string()));
    }

    #[test]
    fn generated_once_then_reused_with_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (
            dir.path().join("tls/cert.pem"),
            dir.path().join("tls/key.pem"),
        );
        let san = vec!["gw.internal".to_string()];
        assert_eq!(
            ensure(&cert, &key, "0.0.0.0", &san).unwrap(),
            KeyOutcome::Generated
        );
        let first = load_files(&cert, &key).unwrap().status;
        assert_eq!(first.source, CertificateSource::SelfSigned);
        assert!(first.names.contains(&"gw.internal".to_string()));
        assert!(first.names.contains(&"127.0.0.1".to_string()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert_eq!(
            ensure(&cert, &key, "0.0.0.0", &san).unwrap(),
            KeyOutcome::Existing
        );
        let again = load_files(&cert, &key).unwrap().status;
        assert_eq!(again.sha256_fingerprint, first.sha256_fingerprint);

        // A name asked for later makes a new one; the others are still there.
        let san = vec!["gw.internal".to_string(), "gw2.internal".to_string()];
        assert_eq!(
            ensure(&cert, &key, "0.0.0.0", &san).unwrap(),
            KeyOutcome::Generated
        );
        let third = load_files(&cert, &key).unwrap().status;
        assert_ne!(third.sha256_fingerprint, first.sha256_fingerprint);
        assert!(third.names.contains(&"gw2.internal".to_string()));
    }

    #[test]
    fn one_file_without_the_other_is_an_error_not_an_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, "mine").unwrap();
        let err = ensure(&cert, &key, "0.0.0.0", &[]).unwrap_err().to_string();
        assert!(
            err.contains("key.pem") && err.contains("does not exist"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), "mine");
    }

    #[test]
    fn an_operators_certificate_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let k = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["own.example".to_string()]).unwrap();
        params.not_before = OffsetDateTime::now_utc() - Duration::from_secs(3600);
        params.not_after = OffsetDateTime::now_utc() + Duration::from_secs(3600);
        let c = params.self_signed(&k).unwrap();
        std::fs::write(&cert, c.pem()).unwrap();
        std::fs::write(&key, k.serialize_pem()).unwrap();
        let san = vec!["other.example".to_string()];
        assert_eq!(
            ensure(&cert, &key, "0.0.0.0", &san).unwrap(),
            KeyOutcome::Existing
        );
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), c.pem());
    }
}
