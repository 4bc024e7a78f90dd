//! `gemini.models.suffixes`: model-name suffixes users know from other Gemini proxies, read as
//! requests (opt-in).
//!
//! - `-nothinking`: `generationConfig.thinkingConfig.thinkingBudget: 0`;
//! - `-thinking-<budget>`: `thinkingBudget: <budget>` (`-1` for dynamic thinking);
//! - `-search`: the `google_search` tool added to `tools` (native API only).
//!
//! They may be combined (`gemini-2.5-flash-search-nothinking`), each at most once, in any order
//! at the end of the name. The model without them is the real model (an alias is resolved after
//! they are taken off), so limits, policies, metrics and usage see `gemini-2.5-flash`.

use serde_json::{Map, Value, json};

use super::OverrideRule;

/// What the suffixes of a model name ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelSuffix {
    /// The thinking budget (`-nothinking` is 0).
    pub thinking_budget: Option<i64>,
    /// Add the `google_search` tool.
    pub search: bool,
}

impl ModelSuffix {
    /// `name` without its suffixes, and what they ask; `None` when it has none (or nothing would
    /// be left of the name).
    pub fn split(name: &str) -> Option<(&str, ModelSuffix)> {
        let mut rest = name;
        let mut found = ModelSuffix::default();
        loop {
            if let Some(r) = rest.strip_suffix("-search").filter(|_| !found.search) {
                found.search = true;
                rest = r;
            } else if let Some(r) = rest
                .strip_suffix("-nothinking")
                .filter(|_| found.thinking_budget.is_none())
            {
                found.thinking_budget = Some(0);
                rest = r;
            } else if let Some((r, budget)) = rest
                .rsplit_once("-thinking-")
                .filter(|_| found.thinking_budget.is_none())
                .and_then(|(r, b)| Some((r, thinking_budget(b)?)))
            {
                found.thinking_budget = Some(budget);
                rest = r;
            } else {
                break;
            }
        }
        (found != ModelSuffix::default() && !rest.is_empty()).then_some((rest, found))
    }

    /// The thinking budget as an override rule (`set`, applied like the client's own choice
    /// before the configured rules); `None` without one.
    pub fn thinking_rule(&self) -> Option<OverrideRule> {
        let budget = self.thinking_budget?;
        let mut set = Map::new();
        set.insert(
            "generationConfig".into(),
            json!({ "thinkingConfig": { "thinkingBudget": budget } }),
        );
        Some(OverrideRule {
            set,
            ..OverrideRule::default()
        })
    }

    /// Adds `{"google_search": {}}` to a native body's `tools`, unless it is there already.
    pub fn add_search_tool(body: &mut Map<String, Value>) {
        let tools = body
            .entry("tools")
            .or_insert_with(|| Value::Array(Vec::new()));
        if !tools.is_array() {
            *tools = Value::Array(Vec::new());
        }
        let Value::Array(list) = tools else { return };
        let has = list
            .iter()
            .any(|t| t.get("google_search").is_some() || t.get("googleSearch").is_some());
        if !has {
            list.push(json!({ "google_search": {} }));
        }
    }
}

/// A `-thinking-<budget>` value: digits, or `-1` (dynamic), at most 6 digits.
fn thinking_budget(s: &str) -> Option<i64> {
    if s == "-1" {
        return Some(-1);
    }
    (!s.is_empty() && s.len() <= 6 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_suffix_and_their_combinations() {
        let s = |b: Option<i64>, search| ModelSuffix {
            thinking_budget: b,
            search,
        };
        assert_eq!(
            ModelSuffix::split("gemini-2.5-flash-nothinking"),
            Some(("gemini-2.5-flash", s(Some(0), false)))
        );
        assert_eq!(
            ModelSuffix::split("gemini-2.5-pro-thinking-1024"),
            Some(("gemini-2.5-pro", s(Some(1024), false)))
        );
        assert_eq!(
            ModelSuffix::split("gemini-2.5-flash-search"),
            Some(("gemini-2.5-flash", s(None, true)))
        );
        assert_eq!(
            ModelSuffix::split("gemini-2.5-flash-search-nothinking"),
            Some(("gemini-2.5-flash", s(Some(0), true)))
        );
        assert_eq!(
            ModelSuffix::split("gemini-2.5-flash-thinking-128-search"),
            Some(("gemini-2.5-flash", s(Some(128), true)))
        );
        assert_eq!(ModelSuffix::split("gemini-2.5-flash"), None);
        assert_eq!(ModelSuffix::split("gemini-2.5-flash-thinking-x"), None);
        assert_eq!(ModelSuffix::split("-search"), None);
        // Twice the same kind: the outer one only.
        assert_eq!(
            ModelSuffix::split("m-nothinking-nothinking"),
            Some(("m-nothinking", s(Some(0), false)))
        );
    }

    #[test]
    fn the_search_tool_is_added_once() {
        let mut body: Map<String, Value> =
            serde_json::from_str(r#"{"tools":[{"code_execution":{}}]}"#).unwrap();
        ModelSuffix::add_search_tool(&mut body);
        ModelSuffix::add_search_tool(&mut body);
        assert_eq!(
            Value::Object(body),
            json!({"tools":[{"code_execution":{}},{"google_search":{}}]})
        );
    }
}
