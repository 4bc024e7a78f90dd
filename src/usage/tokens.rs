//! Token counts read from an answer: Gemini's `usageMetadata` or the OpenAI-compatible `usage`.

use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::Deserialize;

use crate::key_pool::Tokens;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    /// The Live API says `responseTokenCount`.
    #[serde(default, alias = "responseTokenCount")]
    candidates_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
    #[serde(default)]
    total_token_count: u64,
}

#[derive(Deserialize)]
struct OpenAiUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
}

/// The usage reported last in `text`: Gemini's `"usageMetadata": {...}` or OpenAI's
/// `"usage": {...}`.
pub fn find_usage(text: &[u8]) -> Option<Tokens> {
    if let Some(obj) = object_after(text, &USAGE_METADATA) {
        let u: UsageMetadata = serde_json::from_slice(obj).ok()?;
        return Some(Tokens {
            prompt: u.prompt_token_count,
            candidates: u.candidates_token_count,
            thoughts: u.thoughts_token_count,
            cached: u.cached_content_token_count,
            total: u.total_token_count,
        });
    }
    let obj = object_after(text, &USAGE)?;
    let u: OpenAiUsage = serde_json::from_slice(obj).ok()?;
    Some(Tokens {
        prompt: u.prompt_tokens,
        candidates: u.completion_tokens,
        total: u.total_tokens,
        ..Tokens::default()
    })
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
