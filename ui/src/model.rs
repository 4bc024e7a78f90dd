//! What the console computes without a browser: reading the gateway's documents (`/performance`,
//! `/metrics`, `/errors`, the admin API), turning the config into form fields and back, and the
//! formatting the pages share. Plain Rust, compiled and unit-tested on the host too.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// What `Secret` serializes to in the admin API; sent back unchanged, it means "keep the value".
pub(crate) const MASK: &str = "********";

// ------------------------------------------------------------------------------------- overview

/// One reading of the gateway's figures, taken every few seconds for the overview's charts.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Sample {
    /// When it was taken (milliseconds, the browser's clock).
    pub(crate) at_ms: f64,
    /// Requests per second over the last minute.
    pub(crate) qps: f64,
    /// Requests in the last minute.
    pub(crate) requests_1m: u64,
    /// Share of the last minute's requests that succeeded.
    pub(crate) success_rate: Option<f64>,
    /// Latency percentiles over five minutes, in milliseconds.
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p95_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    /// Time to first byte of streamed answers (P50, P95), in milliseconds.
    pub(crate) ttfb_p50_ms: Option<f64>,
    pub(crate) ttfb_p95_ms: Option<f64>,
    /// `gem_proxy_tokens_total` summed over kinds and models: a counter.
    pub(crate) tokens_total: Option<f64>,
    /// `gem_proxy_requests_in_flight`.
    pub(crate) in_flight: Option<f64>,
    /// Tokens per minute, from this sample's counter and the previous one.
    pub(crate) tokens_per_minute: Option<f64>,
}

impl Sample {
    /// A sample from the `/performance` document and the `/metrics` text, taken at `at_ms`.
    /// `previous` gives the token rate.
    pub(crate) fn read(
        at_ms: f64,
        performance: &Value,
        metrics: &str,
        previous: Option<&Sample>,
    ) -> Self {
        let overall = &performance["overall"];
        let num = |v: &Value| v.as_f64();
        let tokens_total = metric_sum(metrics, "gem_proxy_tokens_total");
        let tokens_per_minute = match (previous, tokens_total) {
            (Some(prev), Some(now)) => prev.tokens_total.and_then(|before| {
                let minutes = (at_ms - prev.at_ms) / 60_000.0;
                // A counter that went down means the gateway restarted: no rate for this step.
                (minutes > 0.0 && now >= before).then(|| (now - before) / minutes)
            }),
            _ => None,
        };
        Self {
            at_ms,
            qps: num(&overall["qps_1m"]).unwrap_or(0.0),
            requests_1m: overall["requests_1m"].as_u64().unwrap_or(0),
            success_rate: num(&overall["success_rate_1m"]),
            p50_ms: num(&overall["latency_ms"]["p50"]),
            p95_ms: num(&overall["latency_ms"]["p95"]),
            p99_ms: num(&overall["latency_ms"]["p99"]),
            ttfb_p50_ms: num(&overall["ttfb_ms"]["p50"]),
            ttfb_p95_ms: num(&overall["ttfb_ms"]["p95"]),
            tokens_total,
            in_flight: metric_sum(metrics, "gem_proxy_requests_in_flight"),
            tokens_per_minute,
        }
    }
}

/// The sum of every series of metric `name` in a Prometheus text exposition; `None` when the
/// metric is not there.
pub(crate) fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // `name{labels} value` or `name value`; not `name_suffix ...`.
        let value = if let Some(labelled) = rest.strip_prefix('{') {
            labelled.rsplit_once('}').map(|(_, v)| v)
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            None
        };
        let Some(v) = value
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        *found.get_or_insert(0.0) += v;
    }
    found
}

/// Points of an SVG polyline for `values` in a `width`×`height` box, y from 0 to `max`.
/// Missing values break nothing: they are left out.
pub(crate) fn polyline(values: &[Option<f64>], width: f64, height: f64, max: f64) -> String {
    let n = values.len();
    if n == 0 {
        return String::new();
    }
    let step = if n > 1 { width / (n - 1) as f64 } else { 0.0 };
    let max = if max > 0.0 { max } else { 1.0 };
    values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            v.map(|v| {
                let x = i as f64 * step;
                let y = height - (v.max(0.0) / max).min(1.0) * height;
                format!("{x:.1},{y:.1}")
            })
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last point of [`polyline`], twice (`"x,y x,y"`): a zero-length line that a round line cap
/// draws as a dot, so a series with one value shows, and the current value stands out.
pub(crate) fn last_point(
    values: &[Option<f64>],
    width: f64,
    height: f64,
    max: f64,
) -> Option<String> {
    let i = values.iter().rposition(Option::is_some)?;
    let mut only = vec![None; values.len()];
    only[i] = values[i];
    let p = polyline(&only, width, height, max);
    Some(format!("{p} {p}"))
}

/// A "nice" upper bound for a chart's y axis: 1, 2 or 5 times a power of ten, at least `floor`.
pub(crate) fn nice_max(max: f64, floor: f64) -> f64 {
    let max = max.max(floor);
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let pow = 10f64.powf(max.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if max <= m * pow {
            return m * pow;
        }
    }
    10.0 * pow
}

// ----------------------------------------------------------------------------------- formatting

/// `12.3 ms`, `1.24 s`, `—`.
pub(crate) fn fmt_ms(ms: Option<f64>) -> String {
    match ms {
        None => "—".into(),
        Some(ms) if ms < 10.0 => format!("{ms:.1} ms"),
        Some(ms) if ms < 1000.0 => format!("{ms:.0} ms"),
        Some(ms) => format!("{:.2} s", ms / 1000.0),
    }
}

/// `99.5 %`, `—`.
pub(crate) fn fmt_pct(rate: Option<f64>) -> String {
    match rate {
        None => "—".into(),
        Some(r) if r >= 1.0 => "100 %".into(),
        Some(r) => format!("{:.1} %", r * 100.0),
    }
}

/// `0.25`, `12.4`, `1.2k`, `3.4M`.
pub(crate) fn fmt_num(n: f64) -> String {
    let a = n.abs();
    if a >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", n / 1e3)
    } else if a >= 100.0 || n.fract() == 0.0 {
        format!("{n:.0}")
    } else if a >= 10.0 {
        format!("{n:.1}")
    } else {
        format!("{n:.2}")
    }
}

/// `45 s`, `3 min 5 s`, `2 h 10 min`, `1 d 3 h`.
pub(crate) fn fmt_seconds(s: u64) -> String {
    match s {
        0..60 => format!("{s} s"),
        60..3600 if s.is_multiple_of(60) => format!("{} min", s / 60),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86_400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

// ------------------------------------------------------------------------------------------ keys

/// One key as `GET /api/keys` shows it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub(crate) struct Key {
    pub(crate) id: String,
    pub(crate) label: Option<String>,
    pub(crate) notes: Option<String>,
    pub(crate) weight: u32,
    pub(crate) enabled: bool,
    pub(crate) max_requests_per_minute: Option<u32>,
    pub(crate) max_requests_per_day: Option<u32>,
    pub(crate) max_tokens_per_minute: Option<u32>,
    /// `active`, `cooling`, `invalid` or `disabled`.
    pub(crate) state: String,
    pub(crate) invalid_reason: Option<String>,
    pub(crate) resting: Vec<Rest>,
    pub(crate) requests: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) tokens: BTreeMap<String, u64>,
}

/// A model a key rests for.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub(crate) struct Rest {
    pub(crate) model: String,
    /// `rate_limited`, `exhausted_today`, `unusable` or `proxy_unreachable`.
    pub(crate) reason: String,
    pub(crate) remaining_seconds: u64,
}

impl Key {
    /// All errors, whatever their kind.
    pub(crate) fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Tokens used (`total`, or the sum of the kinds when the total is missing).
    pub(crate) fn token_total(&self) -> u64 {
        self.tokens.get("total").copied().unwrap_or_else(|| {
            self.tokens
                .iter()
                .filter(|(k, _)| k.as_str() != "total")
                .map(|(_, v)| v)
                .sum()
        })
    }

    /// `600 rpm · 10k rpd · no tpm`.
    pub(crate) fn limits(&self) -> String {
        let one = |v: Option<u32>, unit: &str| match v {
            Some(v) => format!("{} {unit}", fmt_num(f64::from(v))),
            None => format!("– {unit}"),
        };
        [
            one(self.max_requests_per_minute, "rpm"),
            one(self.max_requests_per_day, "rpd"),
            one(self.max_tokens_per_minute, "tpm"),
        ]
        .join(" · ")
    }

    /// What its state means, in words: `active`, `cooling: gemini-2.5-pro for 45 s (rate limited)`,
    /// `exhausted today: gemini-2.5-pro (back in 5 h 3 min)`, `invalid: API key not valid`.
    pub(crate) fn state_detail(&self) -> String {
        match self.state.as_str() {
            "invalid" => match &self.invalid_reason {
                Some(r) => format!("invalid: {r}"),
                None => "invalid".into(),
            },
            "disabled" => "disabled".into(),
            _ if !self.resting.is_empty() => self
                .resting
                .iter()
                .map(|r| match r.reason.as_str() {
                    "exhausted_today" => format!(
                        "exhausted today: {} (back in {})",
                        r.model,
                        fmt_seconds(r.remaining_seconds)
                    ),
                    "unusable" => format!(
                        "unusable: {} (retried in {})",
                        r.model,
                        fmt_seconds(r.remaining_seconds)
                    ),
                    "proxy_unreachable" => format!(
                        "proxy unreachable: {} (retried in {})",
                        r.model,
                        fmt_seconds(r.remaining_seconds)
                    ),
                    _ => format!(
                        "cooling: {} for {}",
                        r.model,
                        fmt_seconds(r.remaining_seconds)
                    ),
                })
                .collect::<Vec<_>>()
                .join("; "),
            other => other.into(),
        }
    }

    /// The short state shown as a badge: `exhausted` when every rest is for the day.
    pub(crate) fn badge(&self) -> &str {
        if self.state == "cooling"
            && !self.resting.is_empty()
            && self.resting.iter().all(|r| r.reason == "exhausted_today")
        {
            "exhausted"
        } else {
            &self.state
        }
    }

    /// Whether the key matches a filter text (id, label, notes or state, any case) and a state
    /// filter (`""` for any).
    pub(crate) fn matches(&self, text: &str, state: &str) -> bool {
        if !state.is_empty() && self.state != state && self.badge() != state {
            return false;
        }
        let text = text.trim().to_lowercase();
        text.is_empty()
            || [
                Some(self.id.as_str()),
                self.label.as_deref(),
                self.notes.as_deref(),
                Some(self.state.as_str()),
            ]
            .into_iter()
            .flatten()
            .any(|s| s.to_lowercase().contains(&text))
    }
}

/// A key to add: what `POST /api/keys` takes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NewKey {
    pub(crate) id: String,
    pub(crate) key: String,
    pub(crate) weight: Option<u32>,
}

impl NewKey {
    /// The JSON entry, with the optional fields the form gave.
    pub(crate) fn to_json(&self) -> Value {
        let mut v = serde_json::json!({ "id": self.id, "key": self.key });
        if let Some(w) = self.weight {
            v["weight"] = w.into();
        }
        v
    }
}

/// Keys pasted one per line: `KEY`, `ID KEY` or `ID KEY WEIGHT`, separated by spaces, tabs or
/// commas; blank lines and `#` comments are skipped. Keys without an id get `key-N`, the first
/// numbers that `existing` ids (and the pasted ones) leave free. Errors name their line (from 1).
pub(crate) fn parse_bulk_keys(text: &str, existing: &[String]) -> Result<Vec<NewKey>, Vec<String>> {
    let mut taken: Vec<String> = existing.to_vec();
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    let mut unnamed = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .collect();
        let (id, key, weight) = match parts.as_slice() {
            [key] => (None, *key, None),
            [id, key] => (Some(*id), *key, None),
            [id, key, weight] => match weight.parse::<u32>() {
                Ok(w) if w > 0 => (Some(*id), *key, Some(w)),
                _ => {
                    errors.push(format!(
                        "line {}: the weight {weight:?} is not a whole number > 0",
                        n + 1
                    ));
                    continue;
                }
            },
            _ => {
                errors.push(format!(
                    "line {}: expected KEY, ID KEY or ID KEY WEIGHT",
                    n + 1
                ));
                continue;
            }
        };
        if let Some(id) = id {
            if taken.iter().any(|t| t == id) {
                errors.push(format!("line {}: the id {id:?} is already used", n + 1));
                continue;
            }
            taken.push(id.to_owned());
        } else {
            unnamed.push(keys.len());
        }
        keys.push(NewKey {
            id: id.unwrap_or_default().to_owned(),
            key: key.to_owned(),
            weight,
        });
    }
    let mut next = 1;
    for i in unnamed {
        while taken.iter().any(|t| *t == format!("key-{next}")) {
            next += 1;
        }
        keys[i].id = format!("key-{next}");
        taken.push(keys[i].id.clone());
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if keys.is_empty() {
        return Err(vec!["no key given".into()]);
    }
    Ok(keys)
}

// ---------------------------------------------------------------------------------------- config

/// How a config value is edited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldKind {
    /// A checkbox.
    Bool,
    /// A number input.
    Number,
    /// A text input.
    Text,
    /// A text input whose value is masked (`********`): left as is, the value is kept.
    Secret,
    /// A value that is not set (`null`): a text input; empty keeps it unset, a number is a
    /// number, anything else a string.
    Unset,
    /// A list of strings: one per line.
    List,
}

/// One editable leaf of the config tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Field {
    /// Its path as the API names it: `gemini.api_keys[0].weight`.
    pub(crate) path: String,
    /// The group it is shown in (its parent's path): `gemini.api_keys[0]`.
    pub(crate) group: String,
    /// Its own name: `weight`.
    pub(crate) name: String,
    pub(crate) kind: FieldKind,
    /// The value as the form shows it.
    pub(crate) text: String,
}

/// Every editable leaf of a config view, in document order.
pub(crate) fn flatten(tree: &Value) -> Vec<Field> {
    let mut out = Vec::new();
    flatten_into(tree, "", &mut out);
    out
}

fn flatten_into(v: &Value, path: &str, out: &mut Vec<Field>) {
    let (group, name) = match path.rsplit_once('.') {
        Some((g, n)) => (g.to_owned(), n.to_owned()),
        None => (String::new(), path.to_owned()),
    };
    let leaf = |kind, text: String| Field {
        path: path.to_owned(),
        group: group.clone(),
        name: name.clone(),
        kind,
        text,
    };
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                flatten_into(child, &p, out);
            }
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            for (i, child) in items.iter().enumerate() {
                flatten_into(child, &format!("{path}[{i}]"), out);
            }
        }
        Value::Array(items) => out.push(leaf(
            FieldKind::List,
            items
                .iter()
                .map(|i| match i {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n"),
        )),
        Value::Bool(b) => out.push(leaf(FieldKind::Bool, b.to_string())),
        Value::Number(n) => out.push(leaf(FieldKind::Number, n.to_string())),
        Value::String(s) if s == MASK => out.push(leaf(FieldKind::Secret, s.clone())),
        Value::String(s) => out.push(leaf(FieldKind::Text, s.clone())),
        Value::Null => out.push(leaf(FieldKind::Unset, String::new())),
    }
}

/// The JSON value a field's text stands for, or why it is not valid.
pub(crate) fn field_value(kind: FieldKind, text: &str) -> Result<Value, String> {
    let t = text.trim();
    match kind {
        FieldKind::Bool => Ok(Value::Bool(t == "true")),
        FieldKind::Number => {
            if let Ok(i) = t.parse::<i64>() {
                Ok(i.into())
            } else if let Some(n) = t.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                Ok(Value::Number(n))
            } else {
                Err("must be a number".into())
            }
        }
        FieldKind::Text | FieldKind::Secret => Ok(Value::String(text.to_owned())),
        FieldKind::Unset if t.is_empty() => Ok(Value::Null),
        FieldKind::Unset => Ok(match t.parse::<i64>() {
            Ok(i) => i.into(),
            Err(_) => match t {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => Value::String(t.to_owned()),
            },
        }),
        FieldKind::List => Ok(Value::Array(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| Value::String(l.to_owned()))
                .collect(),
        )),
    }
}

/// Sets the value at `path` (`a.b[2].c`) in `tree`; false when the path is not there.
pub(crate) fn set_path(tree: &mut Value, path: &str, value: Value) -> bool {
    let mut cur = tree;
    for segment in path.split('.') {
        let (name, indexes) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        let Some(next) = cur.get_mut(name) else {
            return false;
        };
        cur = next;
        for index in indexes.split(['[', ']']).filter(|s| !s.is_empty()) {
            let Some(next) = index.parse::<usize>().ok().and_then(|i| cur.get_mut(i)) else {
                return false;
            };
            cur = next;
        }
    }
    *cur = value;
    true
}

/// The config view with every field's text put back in; errors by field path.
pub(crate) fn rebuild(
    tree: &Value,
    fields: &[(Field, String)],
) -> Result<Value, BTreeMap<String, String>> {
    let mut tree = tree.clone();
    let mut errors = BTreeMap::new();
    for (field, text) in fields {
        match field_value(field.kind, text) {
            Ok(v) => {
                set_path(&mut tree, &field.path, v);
            }
            Err(e) => {
                errors.insert(field.path.clone(), e);
            }
        }
    }
    if errors.is_empty() {
        Ok(tree)
    } else {
        Err(errors)
    }
}

/// A Google-shaped error answer: its message and its `BadRequest` field violations.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ApiProblem {
    pub(crate) status: u16,
    pub(crate) message: String,
    /// `(field, description)` from `error.details[*].fieldViolations`.
    pub(crate) violations: Vec<(String, String)>,
}

impl ApiProblem {
    /// Reads an error body; a body that is not Google's shape becomes the message.
    pub(crate) fn parse(status: u16, body: &str) -> Self {
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let err = &v["error"];
        let message = err["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| {
                let t = body.trim();
                if t.is_empty() {
                    format!("HTTP {status}")
                } else {
                    t.chars().take(300).collect()
                }
            });
        let violations = err["details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|d| d["fieldViolations"].as_array().into_iter().flatten())
            .map(|fv| {
                (
                    fv["field"].as_str().unwrap_or_default().to_owned(),
                    fv["description"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        Self {
            status,
            message,
            violations,
        }
    }

    /// The problem in one line: the field violations, or the message.
    pub(crate) fn summary(&self) -> String {
        if self.violations.is_empty() {
            return self.message.clone();
        }
        self.violations
            .iter()
            .map(|(f, d)| {
                if f.is_empty() {
                    d.clone()
                } else {
                    format!("{f}: {d}")
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Violations for fields in `known`, by path, and the rest (shown above the form).
    pub(crate) fn split(&self, known: &[String]) -> (BTreeMap<String, String>, Vec<String>) {
        let mut by_field: BTreeMap<String, String> = BTreeMap::new();
        let mut other = Vec::new();
        for (field, description) in &self.violations {
            if known.iter().any(|k| k == field) {
                by_field
                    .entry(field.clone())
                    .and_modify(|m| {
                        m.push_str("; ");
                        m.push_str(description);
                    })
                    .or_insert_with(|| description.clone());
            } else if field.is_empty() {
                other.push(description.clone());
            } else {
                other.push(format!("{field}: {description}"));
            }
        }
        (by_field, other)
    }
}

/// One line of a version's `changes`, split for showing as a diff.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change {
    /// `path: old → new`.
    Changed {
        path: String,
        old: String,
        new: String,
    },
    /// `path: added`.
    Added(String),
    /// `path: removed`.
    Removed(String),
    /// Anything else, as it came.
    Other(String),
}

impl Change {
    pub(crate) fn parse(line: &str) -> Self {
        let Some((path, rest)) = line.split_once(": ") else {
            return Self::Other(line.to_owned());
        };
        match rest {
            "added" => Self::Added(path.to_owned()),
            "removed" => Self::Removed(path.to_owned()),
            _ => match rest.split_once(" → ") {
                Some((old, new)) => Self::Changed {
                    path: path.to_owned(),
                    old: old.to_owned(),
                    new: new.to_owned(),
                },
                None => Self::Other(line.to_owned()),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------- errors

/// One entry of `/errors`' `recent` list.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub(crate) struct ErrorEntry {
    pub(crate) time: String,
    pub(crate) request_id: Option<String>,
    pub(crate) route: String,
    pub(crate) key_id: Option<String>,
    pub(crate) status: u16,
    pub(crate) kind: String,
    pub(crate) message: String,
}

/// The filters of the errors page; empty means any.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ErrorFilter {
    pub(crate) kind: String,
    pub(crate) status: String,
    pub(crate) key: String,
    pub(crate) text: String,
}

impl ErrorFilter {
    pub(crate) fn matches(&self, e: &ErrorEntry) -> bool {
        let text = self.text.trim().to_lowercase();
        (self.kind.is_empty() || e.kind == self.kind)
            && (self.status.is_empty()
                || e.status.to_string() == self.status
                || (self.status.len() == 3
                    && self.status.ends_with("xx")
                    && e.status.to_string().starts_with(&self.status[..1])))
            && (self.key.is_empty() || e.key_id.as_deref() == Some(self.key.as_str()))
            && (text.is_empty()
                || e.message.to_lowercase().contains(&text)
                || e.route.to_lowercase().contains(&text)
                || e.request_id
                    .as_deref()
                    .is_some_and(|r| r.to_lowercase().contains(&text)))
    }
}

/// The distinct values of one property, sorted, for a filter's options.
pub(crate) fn distinct<T: Ord + Clone>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut v: Vec<T> = items.into_iter().collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const METRICS: &str = "\
# HELP gem_proxy_tokens_total Tokens.
# TYPE gem_proxy_tokens_total counter
gem_proxy_tokens_total{kind=\"candidates\",model=\"gemini-2.5-flash\"} 36
gem_proxy_tokens_total{kind=\"prompt\",model=\"gemini-2.5-flash\"} 24
gem_proxy_tokens_total_extra 1000
gem_proxy_requests_in_flight 2
gem_proxy_key_tokens_total{key_id=\"key1\",kind=\"prompt\"} 16
";

    #[test]
    fn metric_sum_adds_every_series_of_exactly_that_metric() {
        assert_eq!(metric_sum(METRICS, "gem_proxy_tokens_total"), Some(60.0));
        assert_eq!(
            metric_sum(METRICS, "gem_proxy_requests_in_flight"),
            Some(2.0)
        );
        assert_eq!(metric_sum(METRICS, "gem_proxy_nothing"), None);
    }

    #[test]
    fn a_sample_reads_performance_and_rates_tokens_against_the_previous_one() {
        let perf = json!({"overall": {
            "qps_1m": 1.5, "requests_1m": 90, "success_rate_1m": 0.75,
            "latency_ms": {"p50": 3.0, "p95": 10.0, "p99": 12.0},
            "ttfb_ms": {"p50": null, "p95": null, "p99": null}
        }});
        let first = Sample::read(0.0, &perf, METRICS, None);
        assert_eq!(first.qps, 1.5);
        assert_eq!(first.requests_1m, 90);
        assert_eq!(first.success_rate, Some(0.75));
        assert_eq!(first.p95_ms, Some(10.0));
        assert_eq!(first.ttfb_p50_ms, None);
        assert_eq!(first.in_flight, Some(2.0));
        assert_eq!(first.tokens_per_minute, None);
        let more = METRICS.replace("} 36", "} 96");
        let second = Sample::read(30_000.0, &perf, &more, Some(&first));
        assert_eq!(second.tokens_per_minute, Some(120.0));
        // A restarted gateway (counter went down) gives no rate.
        let third = Sample::read(60_000.0, &perf, METRICS, Some(&second));
        assert_eq!(third.tokens_per_minute, None);
    }

    #[test]
    fn polyline_scales_into_the_box_and_skips_gaps() {
        assert_eq!(
            polyline(&[Some(0.0), None, Some(5.0)], 100.0, 10.0, 10.0),
            "0.0,10.0 100.0,5.0"
        );
        assert_eq!(polyline(&[], 100.0, 10.0, 10.0), "");
        assert_eq!(
            last_point(&[Some(1.0), Some(5.0), None], 100.0, 10.0, 10.0).as_deref(),
            Some("50.0,5.0 50.0,5.0")
        );
        assert_eq!(last_point(&[None, None], 100.0, 10.0, 10.0), None);
        assert_eq!(nice_max(0.0, 1.0), 1.0);
        assert_eq!(nice_max(3.2, 1.0), 5.0);
        assert_eq!(nice_max(120.0, 1.0), 200.0);
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_ms(None), "—");
        assert_eq!(fmt_ms(Some(3.412)), "3.4 ms");
        assert_eq!(fmt_ms(Some(250.0)), "250 ms");
        assert_eq!(fmt_ms(Some(1500.0)), "1.50 s");
        assert_eq!(fmt_pct(Some(1.0)), "100 %");
        assert_eq!(fmt_pct(Some(0.995)), "99.5 %");
        assert_eq!(fmt_num(1.275), "1.27");
        assert_eq!(fmt_num(600.0), "600");
        assert_eq!(fmt_num(12_345.0), "12.3k");
        assert_eq!(fmt_seconds(45), "45 s");
        assert_eq!(fmt_seconds(185), "3 min 5 s");
        assert_eq!(fmt_seconds(7800), "2 h 10 min");
    }

    fn key(v: Value) -> Key {
        serde_json::from_value(v).expect("a key")
    }

    #[test]
    fn keys_read_from_the_api_and_describe_their_state() {
        let k = key(json!({
            "id": "key1", "weight": 2, "enabled": true, "max_requests_per_minute": 600,
            "max_requests_per_day": null, "max_tokens_per_minute": null, "state": "cooling",
            "resting": [{"model": "gemini-2.5-pro", "reason": "exhausted_today", "remaining_seconds": 7800}],
            "requests": 5, "errors": {"rate_limited": 2, "server": 1},
            "tokens": {"prompt": 16, "candidates": 24, "total": 40}
        }));
        assert_eq!(k.error_total(), 3);
        assert_eq!(k.token_total(), 40);
        assert_eq!(k.limits(), "600 rpm · – rpd · – tpm");
        assert_eq!(k.badge(), "exhausted");
        assert_eq!(
            k.state_detail(),
            "exhausted today: gemini-2.5-pro (back in 2 h 10 min)"
        );
        assert!(k.matches("KEY", ""));
        assert!(k.matches("", "exhausted"));
        assert!(k.matches("", "cooling"));
        assert!(!k.matches("", "active"));
        assert!(!k.matches("other", ""));
        let labelled = key(json!({"id": "k9", "label": "Team Alpha", "state": "active"}));
        assert!(labelled.matches("alpha", "active"));
    }

    #[test]
    fn bulk_keys_take_ids_weights_and_name_the_unnamed() {
        let existing = vec!["key-1".to_owned()];
        let keys = parse_bulk_keys(
            "# pasted\nAIzaA\n\nbackup, AIzaB\nbig AIzaC 3\nAIzaD\n",
            &existing,
        )
        .expect("valid");
        let ids: Vec<_> = keys.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(ids, ["key-2", "backup", "big", "key-3"]);
        assert_eq!(keys[2].weight, Some(3));
        assert_eq!(
            keys[2].to_json(),
            json!({"id": "big", "key": "AIzaC", "weight": 3})
        );
        let errors = parse_bulk_keys("a b c d\nkey-1 AIza\nx AIza zero", &existing).unwrap_err();
        assert_eq!(errors.len(), 3);
        assert!(errors[0].starts_with("line 1:"));
        assert!(errors[1].contains("already used"));
        assert!(parse_bulk_keys("\n# nothing\n", &[]).is_err());
    }

    #[test]
    fn config_fields_round_trip() {
        let tree = json!({
            "auth": {"enabled": false, "jwt_secret": "", "issuer": null, "revoked_token_ids": ["a", "b"]},
            "gemini": {"timeout_seconds": 600, "api_keys": [{"id": "key1", "key": MASK, "weight": 1}]}
        });
        let fields = flatten(&tree);
        let paths: Vec<_> = fields.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "auth.enabled",
                "auth.issuer",
                "auth.jwt_secret",
                "auth.revoked_token_ids",
                "gemini.api_keys[0].id",
                "gemini.api_keys[0].key",
                "gemini.api_keys[0].weight",
                "gemini.timeout_seconds",
            ]
        );
        assert_eq!(fields[3].kind, FieldKind::List);
        assert_eq!(fields[3].text, "a\nb");
        assert_eq!(fields[5].kind, FieldKind::Secret);
        assert_eq!(fields[5].group, "gemini.api_keys[0]");
        assert_eq!(fields[5].name, "key");
        // Unchanged texts give the same tree back.
        let same: Vec<_> = fields.iter().map(|f| (f.clone(), f.text.clone())).collect();
        assert_eq!(rebuild(&tree, &same), Ok(tree.clone()));
        // Edits land at their paths; a bad number is refused before anything is sent.
        let mut edited = same.clone();
        edited[0].1 = "true".into();
        edited[1].1 = "https://issuer".into();
        edited[6].1 = "3".into();
        let out = rebuild(&tree, &edited).expect("valid");
        assert_eq!(out["auth"]["enabled"], json!(true));
        assert_eq!(out["auth"]["issuer"], json!("https://issuer"));
        assert_eq!(out["gemini"]["api_keys"][0]["weight"], json!(3));
        edited[7].1 = "soon".into();
        let errors = rebuild(&tree, &edited).unwrap_err();
        assert_eq!(errors["gemini.timeout_seconds"], "must be a number");
    }

    #[test]
    fn unset_fields_become_numbers_strings_or_stay_unset() {
        assert_eq!(field_value(FieldKind::Unset, " "), Ok(Value::Null));
        assert_eq!(field_value(FieldKind::Unset, "100"), Ok(json!(100)));
        assert_eq!(field_value(FieldKind::Unset, "x"), Ok(json!("x")));
        assert_eq!(field_value(FieldKind::Number, "0.5"), Ok(json!(0.5)));
        assert!(!set_path(&mut json!({"a": 1}), "b.c", json!(1)));
    }

    #[test]
    fn api_problems_split_into_fields_and_the_rest() {
        let body = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
        "message": "the configuration was not changed: ...",
        "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [
            {"field": "gemini.timeout_seconds", "description": "must be > 0"},
            {"field": "gemini.timeout_seconds", "description": "is odd"},
            {"field": "nowhere", "description": "is wrong"},
            {"field": "", "description": "not valid JSON"}
        ]}]}});
        let p = ApiProblem::parse(400, &body.to_string());
        assert_eq!(p.violations.len(), 4);
        let (fields, other) = p.split(&["gemini.timeout_seconds".to_owned()]);
        assert_eq!(fields["gemini.timeout_seconds"], "must be > 0; is odd");
        assert_eq!(other, ["nowhere: is wrong", "not valid JSON"]);
        assert!(
            p.summary()
                .starts_with("gemini.timeout_seconds: must be > 0; ")
        );
        let plain = ApiProblem::parse(502, "bad gateway");
        assert_eq!(plain.message, "bad gateway");
        assert!(plain.violations.is_empty());
        assert_eq!(plain.summary(), "bad gateway");
    }

    #[test]
    fn change_lines_parse_as_a_diff() {
        assert_eq!(
            Change::parse("gemini.timeout_seconds: 600 → 30"),
            Change::Changed {
                path: "gemini.timeout_seconds".into(),
                old: "600".into(),
                new: "30".into()
            }
        );
        assert_eq!(
            Change::parse("gemini.api_keys[key3]: added"),
            Change::Added("gemini.api_keys[key3]".into())
        );
        assert_eq!(Change::parse("x: removed"), Change::Removed("x".into()));
        assert_eq!(Change::parse("odd"), Change::Other("odd".into()));
    }

    #[test]
    fn error_filters() {
        let e = ErrorEntry {
            status: 429,
            kind: "upstream".into(),
            route: "generate".into(),
            key_id: Some("key1".into()),
            message: "Resource exhausted".into(),
            request_id: Some("abc-1".into()),
            ..Default::default()
        };
        assert!(ErrorFilter::default().matches(&e));
        let f = |kind: &str, status: &str, key: &str, text: &str| ErrorFilter {
            kind: kind.into(),
            status: status.into(),
            key: key.into(),
            text: text.into(),
        };
        assert!(f("upstream", "4xx", "key1", "exhausted").matches(&e));
        assert!(f("", "429", "", "ABC").matches(&e));
        assert!(!f("rate_limited", "", "", "").matches(&e));
        assert!(!f("", "5xx", "", "").matches(&e));
        assert!(!f("", "", "key2", "").matches(&e));
        assert_eq!(distinct(["b", "a", "b"]), ["a", "b"]);
    }
}
