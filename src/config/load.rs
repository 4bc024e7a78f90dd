//! Reading the configuration: defaults → YAML → environment, `${VAR}` expansion, typed parse with
//! error paths, then [`Config::validate`].

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use config::{Environment, File, FileFormat, Map, Source, Value, ValueKind};

use super::{Config, Problem};

/// Prefix of the environment variables that override config keys: `GEM_PROXY__SERVER__PORT`.
pub const ENV_PREFIX: &str = "GEM_PROXY";

/// Why a configuration could not be used. Every problem carries the path of the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file or the environment could not be parsed or has wrong or unknown keys, or the
    /// values break a rule. One line per problem.
    #[error("{}", ProblemList(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// Every problem, each with its path. A read error is reported as one problem at the root.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::Read { path, source } => {
                vec![Problem::new("", format!("{path}: {source}"))]
            }
            ConfigError::Invalid(problems) => problems.clone(),
        }
    }
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Loads configuration with an explicit environment, so tests never touch the process's own.
#[derive(Debug, Clone, Default)]
pub struct ConfigLoader {
    env: HashMap<String, String>,
}

impl ConfigLoader {
    /// A loader that reads this process's environment.
    pub fn from_process_env() -> Self {
        Self {
            env: std::env::vars().collect(),
        }
    }

    /// A loader over the given variables only.
    pub fn with_env<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            env: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// Reads, parses and validates the YAML file at `path`.
    pub fn load_file(&self, path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.load_str(&text)
    }

    /// Parses and validates YAML text (with the environment applied on top).
    pub fn load_str(&self, yaml: &str) -> Result<Config, ConfigError> {
        let config = self.parse_str(yaml)?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Parses YAML text (with the environment applied on top) without the semantic checks of
    /// [`Config::validate`]: only syntax, types and unknown keys.
    pub fn parse_str(&self, yaml: &str) -> Result<Config, ConfigError> {
        let invalid = |path: &str, msg: String| ConfigError::Invalid(vec![Problem::new(path, msg)]);
        let mut file = File::from_str(yaml, FileFormat::Yaml)
            .collect()
            .map_err(|e| invalid("", format!("not valid YAML: {e}")))?;
        let mut problems = Vec::new();
        for (key, value) in file.iter_mut() {
            self.expand_value(key, value, &mut problems);
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }

        let env: Map<String, String> = self
            .env
            .iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k[ENV_PREFIX.len()..].starts_with("__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let built = config::Config::builder()
            .add_source(Expanded(file))
            .add_source(
                Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    .source(Some(env)),
            )
            .build()
            .map_err(|e| invalid("", e.to_string()))?;
        serde_path_to_error::deserialize::<_, Config>(built).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            invalid(&path, clean_serde_message(&e.into_inner().to_string()))
        })
    }

    /// Replaces `${VAR}` and `${VAR:-default}` in the secret fields below `value` (see
    /// [`SECRET_FIELDS`]); `$${` is a literal `${` everywhere. A reference in any other field is a
    /// problem: a value shown by the admin API, the history or `/health` must never be able to pull
    /// a secret out of the environment.
    fn expand_value(&self, path: &str, value: &mut Value, problems: &mut Vec<Problem>) {
        match &mut value.kind {
            ValueKind::String(s) if s.contains('$') => {
                match expand(s, is_secret_field(path).then_some(&self.env)) {
                    Ok(expanded) => *s = expanded,
                    Err(msg) => problems.push(Problem::new(path, msg)),
                }
            }
            ValueKind::Table(table) => {
                for (k, v) in table.iter_mut() {
                    self.expand_value(&format!("{path}.{k}"), v, problems);
                }
            }
            ValueKind::Array(items) => {
                for (i, v) in items.iter_mut().enumerate() {
                    self.expand_value(&format!("{path}[{i}]"), v, problems);
                }
            }
            _ => {}
        }
    }
}

/// The parsed, expanded YAML as a `config` source.
#[derive(Debug, Clone)]
struct Expanded(Map<String, Value>);

impl Source for Expanded {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

/// The fields where `${VAR}` is expanded: the secrets, which are never shown.
pub const SECRET_FIELDS: &str = "gemini.api_keys[].key, gemini.api_keys[].vertex.credentials, \
     gemini.api_keys[].proxy, gemini.proxy, auth.jwt_secret, auth.capability_secret, admin.token, \
     state.redis.url";

fn is_secret_field(path: &str) -> bool {
    path == "auth.jwt_secret"
        || path == "auth.capability_secret"
        || path == "admin.token"
        // It may carry the Redis password.
        || path == "state.redis.url"
        // Proxy URLs may carry a password.
        || path == "gemini.proxy"
        || (path.starts_with("gemini.api_keys[")
            && (path.ends_with("].key")
                || path.ends_with("].vertex.credentials")
                || path.ends_with("].proxy")))
}

/// Expands `${VAR}` from `env`; with no `env` (a field that is not a secret) a reference is an
/// error. Messages never repeat the value (it may be a secret).
fn expand(input: &str, env: Option<&HashMap<String, String>>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        if let Some(after) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| "unterminated `${` (write `$${` for a literal `${`)".to_owned())?;
            let spec = &after[..end];
            let Some(env) = env else {
                return Err(format!(
                    "`${{…}}` is expanded only in secret fields ({SECRET_FIELDS}); write `$${{` \
                     for a literal `${{`, or set this value with {ENV_PREFIX}__SECTION__KEY"
                ));
            };
            let (name, default) = match spec.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (spec, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err("a `${…}` here is not a valid variable reference".to_owned());
            }
            match (env.get(name), default) {
                (Some(v), _) => out.push_str(v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(format!("environment variable {name} is not set")),
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// serde's messages, without the noise around them (the path is already in front) and without
/// the value they refused: `invalid type: string "AIza…", expected u32` becomes
/// `string, expected u32` (the value may be a secret in the wrong place).
pub(crate) fn clean_serde_message(msg: &str) -> String {
    let msg = match msg.rfind(" for key `") {
        Some(at) if msg.ends_with('`') => &msg[..at],
        _ => msg,
    };
    for prefix in ["invalid type: ", "invalid value: ", "invalid length "] {
        if let Some(rest) = msg.strip_prefix(prefix)
            && let Some((unexpected, expected)) = rest.split_once(", expected ")
        {
            // `string "…"`, `integer `5``, `floating point `1.5``: keep the kind only.
            let kind = unexpected
                .split([' ', '"', '`'])
                .take_while(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let kind = kind
                .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
                .trim();
            return format!("{kind}, expected {expected}");
        }
    }
    // The `config` crate's own wording for an unknown enum value.
    if let Some((enum_name, _value)) = msg.split_once(" does not have variant constructor ") {
        return format!("{enum_name} does not have that variant");
    }
    if let Some(rest) = msg.strip_prefix("unknown variant `")
        && let Some((_, expected)) = rest.split_once("`, expected ")
    {
        return format!("unknown variant, expected {expected}");
    }
    msg.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> ConfigLoader {
        ConfigLoader::with_env(pairs.iter().copied())
    }

    const MINIMAL: &str = r#"
gemini:
  api_keys:
    - { id: "a", key: "${KEY_A}" }
"#;

    #[test]
    fn expands_variables_and_defaults() {
        let e: HashMap<String, String> = [("A".to_string(), "x".to_string())].into();
        assert_eq!(
            expand("${A}-${B:-y}-$${A}-$5", Some(&e)).unwrap(),
            "x-y-${A}-$5"
        );
        assert_eq!(
            expand("${MISSING}", Some(&e)).unwrap_err(),
            "environment variable MISSING is not set"
        );
        assert!(expand("${A", Some(&e)).is_err());
        // Outside secret fields only the literal form is accepted.
        assert_eq!(expand("$${A} costs $5", None).unwrap(), "${A} costs $5");
        assert!(expand("${A}", None).is_err());
    }

    #[test]
    fn variables_are_expanded_only_in_secret_fields() {
        let loader = env(&[("KEY_A", "AIzaSECRET"), ("T", "admin-token-0123456789")]);
        let cfg = loader
            .load_str(
                "gemini: { api_keys: [{ id: a, key: \"${KEY_A}\", label: \"$${KEY_A}\" }] }\n\
                 admin: { token: \"${T}\" }\n",
            )
            .unwrap();
        assert_eq!(cfg.gemini.api_keys[0].key.expose(), "AIzaSECRET");
        assert_eq!(cfg.gemini.api_keys[0].label.as_deref(), Some("${KEY_A}"));
        assert_eq!(cfg.admin.token.expose(), "admin-token-0123456789");
        for field in ["label", "notes", "id"] {
            let others = if field == "id" { "" } else { "id: a, " };
            let yaml = format!(
                "gemini: {{ api_keys: [{{ {others}key: k, {field}: \"${{KEY_A}}\" }}] }}\n"
            );
            let err = loader.load_str(&yaml).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("gemini.api_keys[0].{field}: ")),
                "{err}"
            );
            assert!(err.contains("only in secret fields"), "{err}");
            assert!(!err.contains("AIzaSECRET"), "{err}");
        }
        let err = loader
            .load_str("gemini: { base_url: \"${KEY_A}\", api_keys: [{ id: a, key: k }] }")
            .unwrap_err();
        assert!(!err.to_string().contains("AIzaSECRET"), "{err}");
    }

    #[test]
    fn type_errors_do_not_repeat_the_refused_value() {
        let yaml = "server:\n  port: AIzaSECRETVALUE\ngemini:\n  api_keys:\n    - { id: a, key: k, weight: \"AIzaOTHER\" }\n";
        let err = env(&[]).load_str(yaml).unwrap_err().to_string();
        // Either may be reported first (the sections are read in no fixed order).
        assert!(
            err.starts_with("server.port: string, expected ")
                || err.starts_with("gemini.api_keys[0].weight: string, expected "),
            "{err}"
        );
        assert!(!err.contains("AIza"), "{err}");
        let err = env(&[])
            .load_str("log: { format: AIzaSECRETVALUE }\ngemini: { api_keys: [{ id: a, key: k }] }")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("AIza"), "{err}");
        assert_eq!(
            clean_serde_message("invalid type: integer `12345`, expected a string"),
            "integer, expected a string"
        );
        assert_eq!(
            clean_serde_message("invalid value: floating point `1.5`, expected u32"),
            "floating point, expected u32"
        );
    }

    #[test]
    fn missing_variable_names_it_and_the_key() {
        let err = env(&[]).load_str(MINIMAL).unwrap_err();
        assert_eq!(
            err.to_string(),
            "gemini.api_keys[0].key: environment variable KEY_A is not set"
        );
    }

    #[test]
    fn environment_overrides_file() {
        let cfg = env(&[
            ("KEY_A", "AIzaA"),
            ("GEM_PROXY__SERVER__PORT", "9999"),
            ("GEM_PROXY__GEMINI__TIMEOUT_SECONDS", "5"),
            ("GEM_PROXY_CONFIG", "ignored.yaml"),
        ])
        .load_str(MINIMAL)
        .unwrap();
        assert_eq!(cfg.server.port, 9999);
        assert_eq!(cfg.gemini.timeout_seconds, 5);
        assert_eq!(cfg.gemini.api_keys[0].key.expose(), "AIzaA");
    }

    #[test]
    fn unknown_keys_are_errors_with_their_path() {
        let yaml = "gemini:\n  api_keys:\n    - { id: a, key: k, wieght: 2 }\n";
        let err = env(&[]).load_str(yaml).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("gemini.api_keys[0]"), "{msg}");
        assert!(msg.contains("unknown field `wieght`"), "{msg}");

        let err = env(&[]).load_str("servr:\n  port: 1\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `servr`"), "{err}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let yaml = "server:\n  port: lots\ngemini:\n  api_keys:\n    - { id: a, key: k }\n";
        let err = env(&[]).load_str(yaml).unwrap_err();
        assert!(err.to_string().starts_with("server.port: "), "{err}");
    }
}
