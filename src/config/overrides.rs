//! `gemini.overrides`: rules that change a request's JSON body before it is sent.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One rule of `gemini.overrides`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverrideRule {
    /// Which requests the rule is for (all of them when empty).
    #[serde(rename = "match")]
    pub matches: OverrideMatch,
    /// Fields that replace the client's (objects are merged key by key, anything else replaced).
    pub set: Map<String, Value>,
    /// Fields filled in only where the client left them out.
    pub default: Map<String, Value>,
}

/// `gemini.overrides[].match`: every list that is not empty must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverrideMatch {
    /// Model patterns (`gemini-2.5-*`; `*` any run, `?` one character), against the real model.
    pub models: Vec<String>,
    /// Client ids (the token's `sub`); a rule with clients never matches with auth off.
    pub clients: Vec<String>,
}

/// The fields a rule may set, in the native API's names.
pub const OVERRIDABLE_FIELDS: [&str; 3] =
    ["generationConfig", "safetySettings", "systemInstruction"];

/// Problems as `(path, message)`, paths under `gemini.overrides` (also used for a token's
/// `overrides` claim).
pub fn problems(rules: &[OverrideRule]) -> Vec<(String, String)> {
    let mut p = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let at = |f: &str| format!("gemini.overrides[{i}].{f}");
        if rule.set.is_empty() && rule.default.is_empty() {
            p.push((at("set"), "a rule needs `set` or `default`".into()));
        }
        for (which, fields) in [("set", &rule.set), ("default", &rule.default)] {
            for key in fields.keys() {
                if !OVERRIDABLE_FIELDS.contains(&key.as_str()) {
                    p.push((
                        at(&format!("{which}.{key}")),
                        format!(
                            "not a field overrides may change (use one of {OVERRIDABLE_FIELDS:?})"
                        ),
                    ));
                }
            }
            if let Some(v) = fields.get("generationConfig").filter(|v| !v.is_object()) {
                p.push((
                    at(&format!("{which}.generationConfig")),
                    format!("must be an object, not {v}"),
                ));
            }
        }
        for (j, m) in rule.matches.models.iter().enumerate() {
            if m.trim().is_empty() {
                p.push((
                    at(&format!("match.models[{j}]")),
                    "must not be empty".into(),
                ));
            }
        }
        for (j, c) in rule.matches.clients.iter().enumerate() {
            if c.trim().is_empty() {
                p.push((
                    at(&format!("match.clients[{j}]")),
                    "must not be empty".into(),
                ));
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use crate::config::ConfigLoader;

    #[test]
    fn each_rule_names_its_path() {
        let yaml = r#"
gemini:
  api_keys: [{ id: a, key: k }]
  overrides:
    - { match: { models: [""] }, set: { tools: [] } }
    - { match: { clients: ["team-a"] } }
    - { default: { generationConfig: 7 } }
    - { match: { models: ["gemini-2.5-*"], clients: [team-a] }, set: { generationConfig: { thinkingConfig: { thinkingBudget: 0 } } } }
"#;
        let err = ConfigLoader::default()
            .load_str(yaml)
            .unwrap_err()
            .to_string();
        for expected in [
            "gemini.overrides[0].match.models[0]: must not be empty",
            "gemini.overrides[0].set.tools: not a field overrides may change",
            "gemini.overrides[1].set: a rule needs `set` or `default`",
            "gemini.overrides[2].default.generationConfig: must be an object, not 7",
        ] {
            assert!(err.contains(expected), "{expected}\nnot in\n{err}");
        }
        assert!(!err.contains("overrides[3]"), "{err}");
    }
}
