//! Query strings and percent-encoding, just what the mock needs.

/// The raw value of the first `name=` parameter in `query`.
pub(crate) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (n == name).then_some(v)
    })
}

/// Decodes `%XX` escapes and `+` (a space in a form-encoded query); bad escapes stay as they are.
pub(crate) fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Some(decoded) = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(decoded);
            i += 3;
            continue;
        }
        out.push(if byte == b'+' { b' ' } else { byte });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Escapes everything but RFC 3986 unreserved characters, for a query value.
pub(crate) fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_query_params() {
        let query = Some("alt=sse&key=abc&flag");
        assert_eq!(query_param(query, "key"), Some("abc"));
        assert_eq!(query_param(query, "alt"), Some("sse"));
        assert_eq!(query_param(query, "flag"), Some(""));
        assert_eq!(query_param(query, "ke"), None);
        assert_eq!(query_param(None, "key"), None);
    }

    #[test]
    fn percent_round_trip() {
        let raw = "AIza-_.~ /+=&é";
        assert_eq!(percent_decode(&percent_encode(raw)), raw);
        assert_eq!(percent_encode("a b&c"), "a%20b%26c");
        assert_eq!(percent_decode("a+b%2"), "a b%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }
}
