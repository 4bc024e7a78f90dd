//! `gemini.models`: model aliases (names clients may use for a real model) and fallbacks (models
//! that serve a request when every key is resting for the one it asked for).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `gemini.models`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Alias → real model (`flash: gemini-2.5-flash`). The alias is rewritten to the real model in
    /// the path and in OpenAI-compatible bodies before anything else reads the model: token
    /// policies, key limits, rests, metrics and usage all see the real name.
    pub aliases: BTreeMap<String, String>,
    /// Real model → the models to serve it with, in order, when every key is resting (or at its
    /// limit) for it. Empty: no fallbacks (the default).
    pub fallbacks: BTreeMap<String, Vec<String>>,
    /// Read model-name suffixes (`-nothinking`, `-thinking-<budget>`, `-search`) as requests
    /// ([`ModelSuffix`](super::ModelSuffix)). Off by default: a name is then sent as it is.
    pub suffixes: bool,
}

impl ModelsConfig {
    /// The real model an alias stands for; `None` when `name` is no alias.
    pub fn resolve(&self, name: &str) -> Option<&str> {
        self.aliases.get(name).map(String::as_str)
    }

    /// The real model `name` stands for after its suffixes (with `suffixes` on) and aliases,
    /// and what the suffixes ask; `None` when `name` is neither an alias nor suffixed.
    pub fn resolve_with_suffix<'a>(
        &'a self,
        name: &'a str,
    ) -> Option<(&'a str, Option<super::ModelSuffix>)> {
        // Suffixes are looked for only when they are on (every request with a model passes here).
        let split = if self.suffixes {
            super::ModelSuffix::split(name)
        } else {
            None
        };
        let (base, suffix) = match split {
            Some((base, s)) => (base, Some(s)),
            None => (name, None),
        };
        let real = self.resolve(base).unwrap_or(base);
        (suffix.is_some() || real != name).then_some((real, suffix))
    }

    /// The fallbacks of a real model, in order (empty when it has none).
    pub fn fallbacks_of(&self, model: &str) -> &[String] {
        self.fallbacks.get(model).map_or(&[], Vec::as_slice)
    }

    /// Problems as `(path, message)`, paths under `gemini.models`.
    pub(crate) fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        for (alias, target) in &self.aliases {
            let at = format!("gemini.models.aliases.{alias}");
            if let Some(why) = bad_name(alias) {
                p.push((at.clone(), format!("the alias {why}")));
            }
            if let Some(why) = bad_name(target) {
                p.push((at.clone(), format!("the model {why}")));
            } else if alias == target {
                p.push((at.clone(), "an alias must not name itself".into()));
            } else if self.aliases.contains_key(target) {
                p.push((
                    at.clone(),
                    format!("{target:?} is an alias itself: name the real model"),
                ));
            }
        }
        for (model, list) in &self.fallbacks {
            let at = format!("gemini.models.fallbacks.{model}");
            if let Some(why) = bad_name(model) {
                p.push((at.clone(), format!("the model {why}")));
            } else if self.aliases.contains_key(model) {
                p.push((
                    at.clone(),
                    format!("{model:?} is an alias: fallbacks are keyed by the real model"),
                ));
            }
            if list.is_empty() {
                p.push((at.clone(), "must list at least one model".into()));
            }
            for (i, fallback) in list.iter().enumerate() {
                let at = format!("{at}[{i}]");
                if let Some(why) = bad_name(fallback) {
                    p.push((at, format!("the model {why}")));
                } else if fallback == model {
                    p.push((at, "a model must not fall back to itself".into()));
                } else if self.aliases.contains_key(fallback) {
                    p.push((at, format!("{fallback:?} is an alias: name the real model")));
                } else if list[..i].contains(fallback) {
                    p.push((at, format!("{fallback:?} is listed twice")));
                }
            }
        }
        p
    }
}

/// Why `name` cannot be a model name (the characters the route layer accepts in a path's model).
fn bad_name(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Some(format!(
            "{name:?} may only have letters, digits, '-', '.' and '_'"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::config::ConfigLoader;

    fn problems(models: &str) -> Vec<String> {
        let yaml = format!("gemini: {{ api_keys: [{{ id: a, key: k }}], models: {models} }}");
        match ConfigLoader::default().load_str(&yaml) {
            Ok(_) => Vec::new(),
            Err(e) => e.to_string().lines().map(str::to_owned).collect(),
        }
    }

    #[test]
    fn each_rule_names_its_path() {
        let got = problems(
            r#"{ aliases: { flash: gemini-2.5-flash, "a b": x, self: self, two: flash },
                 fallbacks: { gemini-2.5-pro: [gemini-2.5-flash, gemini-2.5-pro, flash, gemini-2.5-flash], flash: [x], gemini-x: [] } }"#,
        )
        .join("\n");
        for expected in [
            "gemini.models.aliases.a b: the alias \"a b\" may only have letters, digits, '-', '.' and '_'",
            "gemini.models.aliases.self: an alias must not name itself",
            "gemini.models.aliases.two: \"flash\" is an alias itself: name the real model",
            "gemini.models.fallbacks.gemini-2.5-pro[1]: a model must not fall back to itself",
            "gemini.models.fallbacks.gemini-2.5-pro[2]: \"flash\" is an alias: name the real model",
            "gemini.models.fallbacks.gemini-2.5-pro[3]: \"gemini-2.5-flash\" is listed twice",
            "gemini.models.fallbacks.flash: \"flash\" is an alias: fallbacks are keyed by the real model",
            "gemini.models.fallbacks.gemini-x: must list at least one model",
        ] {
            assert!(got.contains(expected), "{expected}\nnot in\n{got}");
        }
    }

    #[test]
    fn a_good_models_section_passes() {
        assert_eq!(
            problems(
                "{ aliases: { flash: gemini-2.5-flash, pro: gemini-2.5-pro }, fallbacks: { gemini-2.5-pro: [gemini-2.5-flash] } }"
            ),
            Vec::<String>::new()
        );
    }
}
