//! Who sent a request: the peer's socket address ([`ClientAddr`], inserted by the server for every
//! request) and the address a request is attributed to once `server.trusted_proxies` and
//! `X-Forwarded-For` are taken into account ([`client_ip`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use http::{HeaderMap, HeaderName};

use crate::config::Cidr;

/// The client's socket address; a request extension inserted for every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// `x-forwarded-for`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The address a request is attributed to: the peer, or — when the peer is a trusted proxy —
/// the right-most `X-Forwarded-For` entry that is not a trusted proxy itself. Entries are read
/// from the right because only those were written by proxies we trust; anything further left
/// may have been made up by the client.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let Some(peer) = peer else {
        return IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    };
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if trusted.is_empty() || !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    // Header lines in order, entries in order, read backwards: the last hop first.
    let lines: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect();
    for entry in lines.iter().rev().flat_map(|line| line.rsplit(',')) {
        let Some(ip) = parse_forwarded_ip(entry) else {
            // Garbage: nothing left of it can be believed.
            return client;
        };
        client = ip;
        if !is_trusted(ip) {
            return ip;
        }
    }
    client
}

/// An `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:5678`.
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = entry.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&X_FORWARDED_FOR, v.parse().unwrap());
        }
        h
    }

    fn nets(s: &[&str]) -> Vec<Cidr> {
        s.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = xff(&["203.0.113.7"]);
        // From an untrusted peer the header is ignored.
        assert_eq!(
            client_ip(Some(ip("198.51.100.1")), &h, &trusted),
            ip("198.51.100.1")
        );
        // No trusted proxies configured: ignored too.
        assert_eq!(client_ip(Some(ip("10.0.0.1")), &h, &[]), ip("10.0.0.1"));
        // From a trusted proxy: believed.
        assert_eq!(
            client_ip(Some(ip("10.0.0.1")), &h, &trusted),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn forwarded_for_is_read_from_the_right() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer = Some(ip("10.0.0.1"));
        // The client made up the left-most entry; the right-most untrusted one is real.
        let h = xff(&["1.1.1.1, 203.0.113.7, 10.0.0.2"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("203.0.113.7"));
        // Several header lines count as one list, in order.
        let h = xff(&["1.1.1.1", "203.0.113.8:4711", "10.0.0.2"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("203.0.113.8"));
        let h = xff(&["[2001:db8::5]:443"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("2001:db8::5"));
        // Only proxies: the left-most of them.
        let h = xff(&["10.0.0.3, 10.0.0.2"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("10.0.0.3"));
        // Garbage stops the walk at the last address we could trust.
        let h = xff(&["203.0.113.9, junk, 10.0.0.2"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("10.0.0.2"));
        // No header: the proxy itself.
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), ip("10.0.0.1"));
        assert_eq!(client_ip(None, &HeaderMap::new(), &trusted), ip("0.0.0.0"));
    }
}
