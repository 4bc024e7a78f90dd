//! Query strings and percent-encoding, just what the mock needs.

/// The raw value of the first `name=` parameter in `query`.
pub(crate) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (n == name).then_some(v)
    })
}

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// Everything but RFC 3986 unreserved characters.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Decodes `%XX` escapes and `+` (a space in a form-encoded query); bad escapes stay as they are.
pub(crate) fn percent_decode(value: &str) -> String {
    percent_decode_str(&value.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// Escapes everything but RFC 3986 unreserved characters, for a query value.
pub(crate) fn percent_encode(value: &str) -> String {
    utf8_percent_encode(value, NOT_UNRESERVED).to_string()
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
        assert_eq!(percent_decode("%2B"), "+");
    }

    #[test]
    fn a_sign_is_not_a_hex_digit() {
        // `%+1` is a bad escape, kept as written (with `+` a space), not byte 0x01.
        assert_eq!(percent_decode("a%+1"), "a% 1");
        assert_eq!(percent_decode("%-1"), "%-1");
    }
}
