//! The `models` claim: which models a client may call, as glob patterns (`gemini-2.5-*`).

use std::sync::Arc;

/// One allowed-model pattern. `*` matches any run of characters (also none), `?` exactly one;
/// everything else matches itself. A leading `models/` is ignored on both sides, so
/// `models/gemini-*` and `gemini-*` mean the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPattern(Box<str>);

impl ModelPattern {
    /// A pattern.
    pub fn new(pattern: &str) -> Self {
        Self(strip_models_prefix(pattern).into())
    }

    /// The pattern as written (without a `models/` prefix).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `model` matches.
    pub fn matches(&self, model: &str) -> bool {
        glob(self.0.as_bytes(), strip_models_prefix(model).as_bytes())
    }
}

/// Which models a client may call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ModelPolicy {
    /// Any model: the token has no `models` claim.
    #[default]
    Any,
    /// Only models matching one of these patterns. An empty list allows no model (only requests
    /// that name none, like listing models).
    Only(Arc<[ModelPattern]>),
}

impl ModelPolicy {
    /// A policy from the claim's patterns.
    pub fn only<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Self {
        ModelPolicy::Only(patterns.into_iter().map(ModelPattern::new).collect())
    }

    /// Whether `model` is allowed.
    pub fn allows(&self, model: &str) -> bool {
        match self {
            ModelPolicy::Any => true,
            ModelPolicy::Only(patterns) => patterns.iter().any(|p| p.matches(model)),
        }
    }
}

fn strip_models_prefix(s: &str) -> &str {
    s.strip_prefix("models/").unwrap_or(s)
}

/// Wildcard match with one level of backtracking: linear in practice, never exponential.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it is currently matched up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            ("gemini-2.5-*", "gemini-2.5-flash", true),
            ("gemini-2.5-*", "gemini-2.5-", true),
            ("gemini-2.5-*", "gemini-2.0-flash", false),
            ("gemini-2.5-*", "xgemini-2.5-flash", false),
            ("*-flash", "gemini-2.5-flash", true),
            ("*-flash", "gemini-2.5-flash-lite", false),
            ("*flash*", "gemini-2.5-flash-lite", true),
            ("gemini-?.5-pro", "gemini-2.5-pro", true),
            ("gemini-?.5-pro", "gemini-22.5-pro", false),
            ("*", "anything", true),
            ("gemini-2.5-pro", "gemini-2.5-pro", true),
            ("gemini-2.5-pro", "gemini-2.5-pro-preview", false),
            ("models/gemini-*", "gemini-2.5-pro", true),
            ("gemini-*", "models/gemini-2.5-pro", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
        ];
        for (pattern, model, want) in cases {
            assert_eq!(
                ModelPattern::new(pattern).matches(model),
                want,
                "{pattern} vs {model}"
            );
        }
    }

    #[test]
    fn policy() {
        assert!(ModelPolicy::Any.allows("gemini-2.5-pro"));
        let p = ModelPolicy::only(["gemini-2.5-*", "text-embedding-004"]);
        assert!(p.allows("gemini-2.5-flash"));
        assert!(p.allows("text-embedding-004"));
        assert!(!p.allows("gemini-3-pro"));
        assert!(!ModelPolicy::only([]).allows("gemini-2.5-flash"));
    }

    #[test]
    fn pathological_patterns_stay_fast() {
        let pattern = ModelPattern::new(&"*a".repeat(50));
        let text = "a".repeat(2000) + "b";
        assert!(!pattern.matches(&text));
    }
}
