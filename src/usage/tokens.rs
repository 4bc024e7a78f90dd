//! Token counts read from an answer: Gemini's `usageMetadata` or the OpenAI-compatible `usage`.

use std::sync::LazyLock;

use memchr::memmem::Finder;

use crate::key_pool::Tokens;

/// The usage reported last in `text`: Gemini's `"usageMetadata": {...}` or OpenAI's
/// `"usage": {...}`. `None` when there is none, or when one of its counts is not a whole
/// non-negative number.
pub fn find_usage(text: &[u8]) -> Option<Tokens> {
    if let Some(obj) = object_after(text, &USAGE_METADATA) {
        let [prompt, candidates, thoughts, cached, total] = counts(obj, GEMINI_COUNTS)?;
        return Some(Tokens {
            prompt,
            candidates,
            thoughts,
            cached,
            total,
        });
    }
    let obj = object_after(text, &USAGE)?;
    let [prompt, candidates, total] = counts(obj, OPENAI_COUNTS)?;
    Some(Tokens {
        prompt,
        candidates,
        total,
        ..Tokens::default()
    })
}

/// `usageMetadata`'s counts, by where [`find_usage`] puts them.
const GEMINI_COUNTS: &[(&[u8], usize)] = &[
    (b"promptTokenCount", 0),
    (b"candidatesTokenCount", 1),
    // The Live API says `responseTokenCount`.
    (b"responseTokenCount", 1),
    (b"thoughtsTokenCount", 2),
    (b"cachedContentTokenCount", 3),
    (b"totalTokenCount", 4),
];

/// The OpenAI-compatible `usage`'s counts.
const OPENAI_COUNTS: &[(&[u8], usize)] = &[
    (b"prompt_tokens", 0),
    (b"completion_tokens", 1),
    (b"total_tokens", 2),
];

/// The counts named in `names` among the members of the JSON object `obj` (as [`object_after`]
/// cut it), 0 for those absent. A count must be a whole non-negative number that fits a `u64`,
/// else the whole object is refused (`None`); other members' values are skipped whatever they
/// are. This runs on every answer, so it reads the bytes once rather than building JSON values.
fn counts<const N: usize>(obj: &[u8], names: &[(&[u8], usize)]) -> Option<[u64; N]> {
    let mut out = [0u64; N];
    let mut i = skip_ws(obj, 1);
    if obj.get(i) == Some(&b'}') {
        return Some(out);
    }
    loop {
        if obj.get(i) != Some(&b'"') {
            return None;
        }
        let end = string_end(obj, i)?;
        let name = &obj[i + 1..end];
        i = skip_ws(obj, end + 1);
        if obj.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(obj, i + 1);
        let start = i;
        i = value_end(obj, i)?;
        if let Some(&(_, slot)) = names.iter().find(|(n, _)| *n == name) {
            *out.get_mut(slot)? = whole_number(&obj[start..i])?;
        }
        i = skip_ws(obj, i);
        match obj.get(i) {
            Some(b',') => i = skip_ws(obj, i + 1),
            Some(b'}') => return Some(out),
            _ => return None,
        }
    }
}

/// `value` as a `u64` when it is digits only (no sign, fraction or exponent) and fits.
fn whole_number(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while s
        .get(i)
        .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

/// Where the string that opens at `s[open]` closes (its closing quote), escapes skipped.
fn string_end(s: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', s.get(i..)?)?;
        if s[i] == b'"' {
            return Some(i);
        }
        i += 2;
    }
}

/// The end (exclusive) of the JSON value that starts at `s[i]`: a string, an object or array
/// (nesting and the strings inside followed), or a bare word (number, `true`, `false`, `null`).
fn value_end(s: &[u8], i: usize) -> Option<usize> {
    match s.get(i)? {
        b'"' => Some(string_end(s, i)? + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < s.len() {
                match s[j] {
                    b'"' => j = string_end(s, j)?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let len = s[i..]
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))?;
            (len > 0).then_some(i + len)
        }
    }
}

/// `"usageMetadata"` and `"usage"`, built once (a searcher's set-up costs more than searching
/// an answer's tail).
static USAGE_METADATA: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"usageMetadata\""));
static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));

/// The JSON object that follows the last `name:` in `text` (the texts searched are an answer's
/// last few KiB: a forward search that keeps its last match beats a reverse one).
fn object_after<'a>(text: &'a [u8], name: &Finder<'static>) -> Option<&'a [u8]> {
    let at = name.find_iter(text).last()? + name.needle().len();
    let rest = &text[at..];
    let colon = rest.iter().position(|&c| !c.is_ascii_whitespace())?;
    if rest[colon] != b':' {
        return None;
    }
    let rest = &rest[colon + 1..];
    let open = rest.iter().position(|&c| !c.is_ascii_whitespace())?;
    if rest[open] != b'{' {
        return None;
    }
    let obj = &rest[open..];
    // Jumps from one brace or quote to the next (memchr) rather than matching every byte; inside
    // a string, from one quote or backslash to the next.
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(at) = memchr::memchr3(b'"', b'{', b'}', &obj[i..]) {
        i += at;
        match obj[i] {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&obj[..=i]);
                }
            }
            _ => loop {
                // In a string: find its closing quote, skipping escaped characters.
                i += 1;
                let at = memchr::memchr2(b'"', b'\\', obj.get(i..)?)?;
                i += at;
                if obj[i] == b'"' {
                    break;
                }
                i += 1;
            },
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What serde_json makes of the same object: the reference the byte reader must agree with.
    fn by_serde(obj: &[u8], names: &[(&[u8], usize)], n: usize) -> Option<Vec<u64>> {
        let v: serde_json::Value = serde_json::from_slice(obj).ok()?;
        let mut out = vec![0; n];
        for (name, value) in v.as_object()? {
            if let Some(&(_, slot)) = names.iter().find(|(k, _)| *k == name.as_bytes()) {
                out[slot] = value.as_u64()?;
            }
        }
        Some(out)
    }

    /// A JSON value of any kind, with quotes, braces and brackets inside strings.
    fn value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            (0u32..1000).prop_map(|n| format!("{n}.5")),
            (1u32..1000).prop_map(|n| format!("-{n}")),
            Just("1e3".to_owned()),
            Just("null".to_owned()),
            Just("true".to_owned()),
            "[a-z{}\\[\\]\":, ]{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                proptest::collection::vec(("[a-z]{1,6}", inner), 0..4).prop_map(|m| {
                    let members: Vec<String> =
                        m.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    proptest! {
        /// Whatever a usage object holds, the counts read are serde_json's (and a count that is
        /// not a whole non-negative `u64` refuses the object, as serde's `u64` does).
        #[test]
        fn counts_agree_with_serde(
            members in proptest::collection::vec(
                (prop_oneof![
                    Just("promptTokenCount".to_owned()),
                    Just("candidatesTokenCount".to_owned()),
                    Just("totalTokenCount".to_owned()),
                    Just("promptTokensDetails".to_owned()),
                    "[a-z]{1,8}",
                ], value()),
                0..6,
            ),
            spaced in any::<bool>(),
        ) {
            // No member twice (serde_json's Value keeps the last; so does the reader, but the
            // derive this replaced refused duplicates: not worth pinning either way).
            let mut seen = std::collections::HashSet::new();
            let members: Vec<_> = members.into_iter().filter(|(k, _)| seen.insert(k.clone())).collect();
            let sep = if spaced { " ,\n " } else { "," };
            let colon = if spaced { " : " } else { ":" };
            let body: Vec<String> = members.iter().map(|(k, v)| format!("\"{k}\"{colon}{v}")).collect();
            let obj = format!("{{{}}}", body.join(sep));
            let got = counts::<5>(obj.as_bytes(), GEMINI_COUNTS).map(|a| a.to_vec());
            prop_assert_eq!(got, by_serde(obj.as_bytes(), GEMINI_COUNTS, 5), "{}", obj);
        }
    }

    #[test]
    fn live_and_openai_names_are_read() {
        let live = br#"{"usageMetadata":{"promptTokenCount":3,"responseTokenCount":4,"totalTokenCount":7}}"#;
        assert_eq!(find_usage(live).map(|t| t.candidates), Some(4));
        let cut = br#"{"usageMetadata":{"promptTokenCount":3,"totalTokenCount":"#;
        assert_eq!(find_usage(cut), None);
    }
}
