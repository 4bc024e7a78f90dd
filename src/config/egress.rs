//! `gemini.proxy` and `gemini.api_keys[].proxy`: the proxy each key's requests leave through.

use std::fmt;

use super::{ApiKeyConfig, GeminiConfig};

/// What `gemini.api_keys[].proxy` says to leave a key out of `gemini.proxy`.
pub const DIRECT: &str = "direct";

/// The kind of an egress proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyScheme {
    /// `http://`: an HTTP proxy, asked for a tunnel with `CONNECT`.
    Http,
    /// `https://`: the same over TLS to the proxy.
    Https,
    /// `socks5://`: SOCKS5, names resolved by the gateway.
    Socks5,
    /// `socks5h://`: SOCKS5, names resolved by the proxy.
    Socks5h,
}

impl ProxyScheme {
    /// As written in the URL.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyScheme::Http => "http",
            ProxyScheme::Https => "https",
            ProxyScheme::Socks5 => "socks5",
            ProxyScheme::Socks5h => "socks5h",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            ProxyScheme::Http => 80,
            ProxyScheme::Https => 443,
            ProxyScheme::Socks5 | ProxyScheme::Socks5h => 1080,
        }
    }
}

/// An egress proxy, parsed: where it is and how to sign in.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ProxyTarget {
    /// Its kind.
    pub scheme: ProxyScheme,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// User name and password, percent-decoded (both empty strings when only one was given).
    pub credentials: Option<(String, String)>,
}

impl fmt::Debug for ProxyTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown())
    }
}

impl ProxyTarget {
    /// Parses `scheme://[user[:password]@]host[:port][/]`; `None` for [`DIRECT`]. Messages never
    /// repeat the URL (it may carry a password).
    pub fn parse(url: &str) -> Result<Option<Self>, String> {
        let url = url.trim();
        if url.eq_ignore_ascii_case(DIRECT) {
            return Ok(None);
        }
        let (scheme, rest) = url
            .split_once("://")
            .ok_or("must be a URL such as socks5://host:1080 or http://host:3128 (or `direct`)")?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => ProxyScheme::Http,
            "https" => ProxyScheme::Https,
            "socks5" => ProxyScheme::Socks5,
            "socks5h" => ProxyScheme::Socks5h,
            _ => return Err("the scheme must be http, https, socks5 or socks5h".into()),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err("a proxy URL has no path, query or fragment".into());
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| "the user name or password is not UTF-8 once decoded".to_owned())
        };
        let credentials = match userinfo {
            None => None,
            Some(u) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                let (user, pass) = (decode(user)?, decode(pass)?);
                if user.len() > 255 || pass.len() > 255 {
                    return Err("the user name and password are 255 bytes at most".into());
                }
                Some((user, pass))
            }
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("an IPv6 address needs its `]`")?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        {
            return Err("the proxy URL needs a host name or address".into());
        }
        let port = match port {
            None => scheme.default_port(),
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or("the port must be 1-65535")?,
        };
        Ok(Some(Self {
            scheme,
            host: host.to_owned(),
            port,
            credentials,
        }))
    }

    /// `scheme://host:port`, without user and password: what logs and `/health` may show.
    pub fn shown(&self) -> String {
        if self.host.contains(':') {
            format!("{}://[{}]:{}", self.scheme.as_str(), self.host, self.port)
        } else {
            format!("{}://{}:{}", self.scheme.as_str(), self.host, self.port)
        }
    }
}

impl GeminiConfig {
    /// The proxy `key`'s requests leave through: its own `proxy`, else `gemini.proxy`; `None`
    /// for a direct connection (or a URL validation refused).
    pub fn proxy_for(&self, key: &ApiKeyConfig) -> Option<ProxyTarget> {
        let url = key.proxy.as_ref().or(self.proxy.as_ref())?;
        ProxyTarget::parse(url.expose()).ok().flatten()
    }

    /// Problems with the proxies as `(path, message)`.
    pub(crate) fn proxy_problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if let Some(url) = &self.proxy {
            match ProxyTarget::parse(url.expose()) {
                Err(msg) => p.push(("gemini.proxy".to_owned(), msg)),
                Ok(None) => p.push((
                    "gemini.proxy".to_owned(),
                    "`direct` is for a key's own proxy; leave gemini.proxy out instead".to_owned(),
                )),
                Ok(Some(_)) => {}
            }
        }
        for (i, k) in self.api_keys.iter().enumerate() {
            if let Some(url) = &k.proxy
                && let Err(msg) = ProxyTarget::parse(url.expose())
            {
                p.push((format!("gemini.api_keys[{i}].proxy"), msg));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme_with_and_without_credentials() {
        let t = ProxyTarget::parse("socks5h://us%40er:p%3Ass@proxy.local:1081/")
            .unwrap()
            .unwrap();
        assert_eq!(t.scheme, ProxyScheme::Socks5h);
        assert_eq!((t.host.as_str(), t.port), ("proxy.local", 1081));
        assert_eq!(t.credentials, Some(("us@er".into(), "p:ss".into())));
        assert_eq!(t.shown(), "socks5h://proxy.local:1081");
        assert_eq!(format!("{t:?}"), "socks5h://proxy.local:1081");
        let t = ProxyTarget::parse("http://[::1]").unwrap().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 80));
        assert_eq!(t.shown(), "http://[::1]:80");
        assert_eq!(
            ProxyTarget::parse("https://p:8443")
                .unwrap()
                .unwrap()
                .scheme,
            ProxyScheme::Https
        );
        assert_eq!(ProxyTarget::parse("direct").unwrap(), None);
    }

    #[test]
    fn refuses_what_it_cannot_use_without_repeating_the_password() {
        for bad in [
            "ftp://u:hunter2@p:1",
            "socks5://u:hunter2@p:0",
            "socks5://u:hunter2@:1080",
            "http://u:hunter2@p:1/path",
            "hunter2",
        ] {
            let msg = ProxyTarget::parse(bad).unwrap_err();
            assert!(!msg.contains("hunter2"), "{bad}: {msg}");
        }
    }
}
