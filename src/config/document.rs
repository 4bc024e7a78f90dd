//! The configuration as the operator wrote it: the YAML tree *before* `${VAR}` expansion.
//!
//! Changes made through the admin API are applied to this document and written back, so a key
//! given as `"${GEMINI_API_KEY_1}"` stays a reference on disk instead of turning into the secret
//! itself. Clients only ever see the masked view ([`masked_view`]); a masked value they send back
//! means "keep the current value" ([`ConfigDocument::with_unmasked`]).

use serde_json::{Map, Value};
use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};

use super::{Config, ConfigError, ConfigLoader, Problem, Secret};

/// A config document: parsed YAML, variables not expanded.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigDocument {
    tree: Value,
}

impl ConfigDocument {
    /// Parses YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let docs = YamlLoader::load_from_str(text).map_err(|e| {
            ConfigError::Invalid(vec![Problem::new("", format!("not valid YAML: {e}"))])
        })?;
        let tree = match docs.into_iter().next() {
            None | Some(Yaml::Null) => Value::Object(Map::new()),
            Some(doc) => yaml_to_json(doc),
        };
        if !tree.is_object() {
            return Err(ConfigError::Invalid(vec![Problem::new(
                "",
                "the config must be a mapping of sections",
            )]));
        }
        Ok(Self { tree })
    }

    /// A document from a JSON (or already parsed YAML) value.
    pub fn from_value(tree: Value) -> Result<Self, ConfigError> {
        if tree.is_object() {
            Ok(Self { tree })
        } else {
            Err(ConfigError::Invalid(vec![Problem::new(
                "",
                "the config must be a mapping of sections",
            )]))
        }
    }

    /// A document holding a running config as it is (secrets included, no `${VAR}` references):
    /// for a gateway started without a config file.
    pub fn from_config(config: &Config) -> Self {
        let tree = super::secret::with_secrets_exposed(|| serde_json::to_value(config))
            .unwrap_or_else(|_| Value::Object(Map::new()));
        Self { tree }
    }

    /// The tree.
    pub fn tree(&self) -> &Value {
        &self.tree
    }

    /// The document as YAML text.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        let mut emitter = YamlEmitter::new(&mut out);
        // Emitting into a String cannot fail.
        let _ = emitter.dump(&json_to_yaml(&self.tree));
        out.push('\n');
        out
    }

    /// Expands, parses and validates the document into a [`Config`].
    pub fn load(&self, loader: &ConfigLoader) -> Result<Config, ConfigError> {
        loader.load_str(&self.to_yaml())
    }

    /// `incoming` (an edited masked view) with every masked value replaced by this document's value
    /// at the same place. Entries of `gemini.api_keys` are matched by `id`, so keys can be added,
    /// removed and reordered while their secrets stay masked.
    pub fn with_unmasked(&self, mut incoming: Value) -> Result<ConfigDocument, Vec<Problem>> {
        let mut problems = Vec::new();
        unmask(&mut incoming, Some(&self.tree), "", &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        ConfigDocument::from_value(incoming).map_err(|e| e.problems())
    }
}

impl ConfigDocument {
    /// This document with every value that `config` (loaded from it) holds as a secret replaced by
    /// [`Secret::MASK`], so it can travel where secrets must not (to other replicas, which fill the
    /// masks from their own documents with [`ConfigDocument::with_unmasked`]).
    pub fn masked(&self, config: &Config) -> Value {
        let mut tree = self.tree.clone();
        mask_like(&mut tree, Some(&masked_view(config)));
        tree
    }
}

fn mask_like(value: &mut Value, masked: Option<&Value>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                mask_like(v, masked.and_then(|m| m.get(k)));
            }
        }
        Value::Array(items) => {
            let masked_items = masked.and_then(Value::as_array);
            for (i, item) in items.iter_mut().enumerate() {
                let m = match item.get("id").and_then(Value::as_str) {
                    Some(id) => masked_items.and_then(|items| {
                        items
                            .iter()
                            .find(|c| c.get("id").and_then(Value::as_str) == Some(id))
                    }),
                    None => masked_items.and_then(|c| c.get(i)),
                };
                mask_like(item, m);
            }
        }
        leaf => {
            if masked.and_then(Value::as_str) == Some(Secret::MASK) {
                *leaf = Value::String(Secret::MASK.to_owned());
            }
        }
    }
}

/// The running config as clients may see it: every secret replaced by [`Secret::MASK`].
pub fn masked_view(config: &Config) -> Value {
    serde_json::to_value(config).unwrap_or(Value::Null)
}

/// What changed between two masked views, one line per changed leaf: `path: old → new`.
pub fn diff(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff_into(old, new, "", &mut out);
    out
}

fn diff_into(old: &Value, new: &Value, path: &str, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let p = join(path, k);
                match b.get(k) {
                    Some(vb) => diff_into(va, vb, &p, out),
                    None => out.push(format!("{p}: removed")),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{}: added", join(path, k)));
            }
        }
        (Value::Array(a), Value::Array(b)) if path.ends_with("api_keys") => {
            let id = |v: &Value| v.get("id").and_then(Value::as_str).map(str::to_owned);
            for va in a {
                let Some(ida) = id(va) else { continue };
                match b.iter().find(|vb| id(vb).as_deref() == Some(&ida)) {
                    Some(vb) => diff_into(va, vb, &format!("{path}[{ida}]"), out),
                    None => out.push(format!("{path}[{ida}]: removed")),
                }
            }
            for vb in b {
                if let Some(idb) = id(vb)
                    && !a.iter().any(|va| id(va).as_deref() == Some(&idb))
                {
                    out.push(format!("{path}[{idb}]: added"));
                }
            }
        }
        (a, b) if a != b => out.push(format!("{path}: {} → {}", short(a), short(b))),
        _ => {}
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn unmask(value: &mut Value, current: Option<&Value>, path: &str, problems: &mut Vec<Problem>) {
    match value {
        Value::String(s) if s == Secret::MASK => match current {
            Some(Value::String(c)) if c != Secret::MASK => *s = c.clone(),
            _ => problems.push(Problem::new(
                path,
                "is masked but there is no current value to keep; send the value itself",
            )),
        },
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                unmask(v, current.and_then(|c| c.get(k)), &join(path, k), problems);
            }
        }
        Value::Array(items) => {
            let current_items = current.and_then(Value::as_array);
            for (i, item) in items.iter_mut().enumerate() {
                // Entries with an id (api keys) are matched by id only, others by position.
                let cur = match item.get("id").and_then(Value::as_str) {
                    Some(id) => current_items.and_then(|items| {
                        items
                            .iter()
                            .find(|c| c.get("id").and_then(Value::as_str) == Some(id))
                    }),
                    None => current_items.and_then(|c| c.get(i)),
                };
                unmask(item, cur, &format!("{path}[{i}]"), problems);
            }
        }
        _ => {}
    }
}

fn yaml_to_json(y: Yaml) -> Value {
    match y {
        Yaml::Real(s) => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::String(s), Value::Number),
        Yaml::Integer(i) => Value::from(i),
        Yaml::String(s) => Value::String(s),
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Array(items) => Value::Array(items.into_iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s,
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        Yaml::Real(s) => s,
                        other => format!("{other:?}"),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Yaml::Null | Yaml::BadValue | Yaml::Alias(_) => Value::Null,
    }
}

fn json_to_yaml(v: &Value) -> Yaml {
    match v {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Array(items.iter().map(json_to_yaml).collect()),
        Value::Object(map) => {
            let mut h = Hash::new();
            for (k, v) in map {
                h.insert(Yaml::String(k.clone()), json_to_yaml(v));
            }
            Yaml::Hash(h)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"
server: { host: "127.0.0.1", port: 8080 }
gemini:
  timeout_seconds: 30
  api_keys:
    - { id: "a", key: "${KEY_A}", weight: 2 }
    - { id: "b", key: "AIzaLITERAL" }
"#;

    fn loader() -> ConfigLoader {
        ConfigLoader::with_env([("KEY_A", "AIzaFROMENV")])
    }

    #[test]
    fn yaml_round_trips_and_keeps_variable_references() {
        let doc = ConfigDocument::from_yaml(DOC).unwrap();
        let again = ConfigDocument::from_yaml(&doc.to_yaml()).unwrap();
        assert_eq!(doc, again);
        assert!(doc.to_yaml().contains("${KEY_A}"));
        let config = doc.load(&loader()).unwrap();
        assert_eq!(config.gemini.api_keys[0].key.expose(), "AIzaFROMENV");
        assert_eq!(config.server.port, 8080);
    }

    #[test]
    fn masked_secrets_sent_back_keep_their_current_value_matched_by_id() {
        let doc = ConfigDocument::from_yaml(DOC).unwrap();
        let config = doc.load(&loader()).unwrap();
        let mut view = masked_view(&config);
        assert!(!view.to_string().contains("AIza"), "{view}");
        // Reorder the keys, add one, change a setting.
        let keys = view["gemini"]["api_keys"].as_array_mut().unwrap();
        keys.reverse();
        keys.push(serde_json::json!({ "id": "c", "key": "AIzaNEW" }));
        view["gemini"]["timeout_seconds"] = 99.into();
        let next = doc.with_unmasked(view).unwrap();
        let text = next.to_yaml();
        assert!(
            text.contains("${KEY_A}") && text.contains("AIzaLITERAL") && text.contains("AIzaNEW"),
            "{text}"
        );
        let config = next.load(&loader()).unwrap();
        let ids: Vec<_> = config
            .gemini
            .api_keys
            .iter()
            .map(|k| (k.id.as_str(), k.key.expose()))
            .collect();
        assert_eq!(
            ids,
            [("b", "AIzaLITERAL"), ("a", "AIzaFROMENV"), ("c", "AIzaNEW")]
        );
        assert_eq!(config.gemini.timeout_seconds, 99);
    }

    #[test]
    fn a_masked_value_with_nothing_to_keep_is_a_problem() {
        let doc = ConfigDocument::from_yaml(DOC).unwrap();
        let view =
            serde_json::json!({ "gemini": { "api_keys": [{ "id": "new", "key": Secret::MASK }] } });
        let problems = doc.with_unmasked(view).unwrap_err();
        assert_eq!(problems[0].path, "gemini.api_keys[0].key");
    }

    #[test]
    fn diff_names_what_changed_without_secrets() {
        let doc = ConfigDocument::from_yaml(DOC).unwrap();
        let before = masked_view(&doc.load(&loader()).unwrap());
        let mut after = before.clone();
        after["gemini"]["timeout_seconds"] = 99.into();
        after["gemini"]["api_keys"]
            .as_array_mut()
            .unwrap()
            .remove(1);
        let d = diff(&before, &after);
        assert_eq!(
            d,
            [
                "gemini.api_keys[b]: removed",
                "gemini.timeout_seconds: 30 → 99"
            ]
        );
    }
}
