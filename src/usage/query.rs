//! Reading the usage history for the admin API: time ranges and steps, series per group, the
//! summary, the estimated cost from `usage.prices`, and CSV.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;

use super::Counts;
use super::db::Cell;
use crate::auth::ModelPattern;
use crate::config::PriceConfig;

/// Most points one series may have (range ÷ step).
pub const MAX_POINTS: i64 = 20_000;
/// Entries in each top list of the summary.
pub const TOP: usize = 10;

/// The steps `step=` accepts, and their length in seconds.
pub const STEPS: [(&str, i64); 4] = [("1m", 60), ("5m", 300), ("1h", 3600), ("1d", 86_400)];

/// A step for a range when none is asked for: about a hundred to a few hundred points.
pub fn auto_step(range_seconds: i64) -> (&'static str, i64) {
    let pick = match range_seconds {
        r if r <= 3 * 3600 => 0,
        r if r <= 2 * 86_400 => 1,
        r if r <= 14 * 86_400 => 2,
        _ => 3,
    };
    STEPS[pick]
}

/// Parses a step (`1m`, `5m`, `1h`, `1d`).
pub fn parse_step(s: &str) -> Option<(&'static str, i64)> {
    STEPS.iter().copied().find(|(name, _)| *name == s)
}

/// Parses a window such as `90m`, `24h`, `7d` into seconds.
pub fn parse_window(s: &str) -> Option<i64> {
    let unit = s.chars().last()?;
    let n: i64 = s[..s.len() - unit.len_utf8()]
        .parse()
        .ok()
        .filter(|&n| n > 0)?;
    let unit = match unit {
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// Parses a time: seconds since the epoch, or RFC 3339 (`2026-12-01T17:00:00Z`).
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(n) = s.parse::<i64>() {
        return (0..=253_402_300_799).contains(&n).then_some(n);
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp()).filter(|&n| n >= 0)
}

/// Seconds since the epoch as RFC 3339 UTC.
pub fn format_time(t: i64) -> String {
    crate::time::utc_time(t.max(0) as u64)
}

/// The price table, matched in order.
#[derive(Debug, Clone, Default)]
pub struct Prices(Vec<(ModelPattern, PriceConfig)>);

impl Prices {
    /// From `usage.prices`.
    pub fn new(prices: &[PriceConfig]) -> Self {
        Self(
            prices
                .iter()
                .map(|p| (ModelPattern::new(&p.model), p.clone()))
                .collect(),
        )
    }

    /// The estimated cost of `counts` for `model`; 0 when no pattern matches it. Input tokens
    /// served from a cache are priced as cached; thinking tokens as output (as Google bills them).
    pub fn cost(&self, model: &str, c: &Counts) -> f64 {
        let Some((_, p)) = self.0.iter().find(|(pat, _)| pat.matches(model)) else {
            return 0.0;
        };
        let fresh_input = c.input_tokens.saturating_sub(c.cached_tokens) as f64;
        let output = (c.output_tokens + c.thinking_tokens) as f64;
        (fresh_input * p.input_per_million
            + c.cached_tokens as f64 * p.cached_per_million
            + output * p.output_per_million)
            / 1_000_000.0
    }
}

/// Sums with what follows from them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct Totals {
    /// The counters.
    #[serde(flatten)]
    pub counts: Counts,
    /// Error answers and failed attempts.
    pub errors: u64,
    /// `errors / requests` (0 without requests).
    pub error_rate: f64,
    /// Estimated cost from `usage.prices`.
    pub cost: f64,
}

impl Totals {
    fn add(&mut self, counts: &Counts, cost: f64) {
        self.counts.add(counts);
        self.cost += cost;
        self.errors = self.counts.errors();
        self.error_rate = if self.counts.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.counts.requests as f64
        };
    }
}

/// One step of one group.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Point {
    /// Start of the step (RFC 3339).
    pub time: String,
    /// The same, in seconds since the epoch.
    pub t: i64,
    /// The sums in this step.
    #[serde(flatten)]
    pub totals: Totals,
}

/// One group's series (only steps with traffic are listed).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Series {
    /// The group's value: a key id, model, client (`""` with auth off) or route.
    pub name: String,
    /// Its sums over the range.
    pub totals: Totals,
    /// Its steps.
    pub points: Vec<Point>,
}

/// `GET /api/usage`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsageReport {
    /// Start of the range (RFC 3339, inclusive).
    pub from: String,
    /// End of the range (RFC 3339, exclusive).
    pub to: String,
    /// The step (`1m`, `5m`, `1h`, `1d`).
    pub step: String,
    /// The step in seconds.
    pub step_seconds: i64,
    /// `key`, `model`, `client` or `route`.
    pub group_by: String,
    /// The replicas whose rows are counted (this process writes its own).
    pub replicas: Vec<String>,
    /// Sums over every group.
    pub totals: Totals,
    /// One series per group, the busiest first.
    pub groups: Vec<Series>,
}

/// The series of `cells` (from [`super::db::read_cells`]), busiest group first.
pub(crate) fn series(cells: &[Cell], prices: &Prices) -> (Totals, Vec<Series>) {
    let mut total = Totals::default();
    let mut groups: BTreeMap<Arc<str>, BTreeMap<i64, Totals>> = BTreeMap::new();
    for c in cells {
        let cost = prices.cost(&c.model, &c.counts);
        total.add(&c.counts, cost);
        groups
            .entry(c.group.clone())
            .or_default()
            .entry(c.time)
            .or_default()
            .add(&c.counts, cost);
    }
    let mut out: Vec<Series> = groups
        .into_iter()
        .map(|(name, steps)| {
            let mut totals = Totals::default();
            let points = steps
                .into_iter()
                .map(|(t, s)| {
                    totals.add(&s.counts, s.cost);
                    Point {
                        time: format_time(t),
                        t,
                        totals: s,
                    }
                })
                .collect();
            Series {
                name: name.to_string(),
                totals,
                points,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.totals
            .counts
            .requests
            .cmp(&a.totals.counts.requests)
            .then_with(|| a.name.cmp(&b.name))
    });
    (total, out)
}

/// One entry of a summary's top list.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Top {
    /// The key id, model or client.
    pub name: String,
    /// Its sums over the window.
    #[serde(flatten)]
    pub totals: Totals,
}

/// `GET /api/usage/summary`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Summary {
    /// The window asked for (`24h`).
    pub window: String,
    /// Its start (RFC 3339).
    pub from: String,
    /// Its end: now (RFC 3339).
    pub to: String,
    /// Sums over everything.
    pub totals: Totals,
    /// The busiest keys.
    pub keys: Vec<Top>,
    /// The busiest models.
    pub models: Vec<Top>,
    /// The busiest clients.
    pub clients: Vec<Top>,
}

/// The top entries of cells grouped one way.
pub(crate) fn top(cells: &[Cell], prices: &Prices) -> (Totals, Vec<Top>) {
    let (totals, series) = series(cells, prices);
    let top = series
        .into_iter()
        .take(TOP)
        .map(|s| Top {
            name: s.name,
            totals: s.totals,
        })
        .collect();
    (totals, top)
}

/// The CSV columns, after `time` and the group.
const CSV_COLUMNS: &str = "requests,successes,errors,rate_limited,invalid,overloaded,server_errors,client_errors,cancelled,input_tokens,output_tokens,thinking_tokens,cached_tokens,total_tokens,cost";

/// A report as CSV: one line per group and step.
pub fn csv(report: &UsageReport) -> String {
    let mut out = format!("time,{},{CSV_COLUMNS}\n", report.group_by);
    for s in &report.groups {
        for p in &s.points {
            let c = &p.totals.counts;
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                p.time,
                csv_field(&s.name),
                c.requests,
                c.successes,
                p.totals.errors,
                c.rate_limited,
                c.invalid,
                c.overloaded,
                c.server_errors,
                c.client_errors,
                c.cancelled,
                c.input_tokens,
                c.output_tokens,
                c.thinking_tokens,
                c.cached_tokens,
                c.total_tokens,
                p.totals.cost,
            ));
        }
    }
    out
}

/// RFC 4180 quoting, and no formula injection into spreadsheets.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(time: i64, group: &str, model: &str, requests: u64, input: u64, output: u64) -> Cell {
        Cell {
            time,
            group: group.into(),
            model: model.into(),
            counts: Counts {
                requests,
                successes: requests,
                input_tokens: input,
                output_tokens: output,
                total_tokens: input + output,
                ..Counts::default()
            },
        }
    }

    #[test]
    fn cost_follows_the_first_matching_price() {
        let prices = Prices::new(&[
            PriceConfig {
                model: "gemini-2.5-pro*".into(),
                input_per_million: 1.25,
                output_per_million: 10.0,
                cached_per_million: 0.31,
            },
            PriceConfig {
                model: "*".into(),
                input_per_million: 1.0,
                output_per_million: 1.0,
                cached_per_million: 0.0,
            },
        ]);
        let c = Counts {
            input_tokens: 2_000_000,
            cached_tokens: 1_000_000,
            output_tokens: 500_000,
            thinking_tokens: 500_000,
            ..Counts::default()
        };
        assert!((prices.cost("gemini-2.5-pro", &c) - (1.25 + 0.31 + 10.0)).abs() < 1e-9);
        assert!((prices.cost("models/gemini-2.0-flash", &c) - 2.0).abs() < 1e-9);
        assert_eq!(Prices::default().cost("x", &c), 0.0);
    }

    #[test]
    fn series_sum_per_group_and_step_and_cost_per_model() {
        let prices = Prices::new(&[PriceConfig {
            model: "a".into(),
            input_per_million: 1_000_000.0,
            output_per_million: 0.0,
            cached_per_million: 0.0,
        }]);
        let cells = [
            cell(0, "k1", "a", 1, 2, 3),
            cell(0, "k1", "b", 1, 5, 0),
            cell(60, "k1", "a", 2, 1, 1),
            cell(60, "k2", "a", 5, 0, 0),
        ];
        let (total, groups) = series(&cells, &prices);
        assert_eq!(total.counts.requests, 9);
        assert_eq!(total.cost, 3.0);
        assert_eq!(groups[0].name, "k2");
        let k1 = &groups[1];
        assert_eq!(k1.points.len(), 2);
        assert_eq!(k1.points[0].totals.counts.input_tokens, 7);
        assert_eq!(k1.points[0].totals.cost, 2.0);
        assert_eq!(k1.totals.counts.requests, 4);
    }

    #[test]
    fn parameters_parse_or_are_refused() {
        assert_eq!(parse_time("0"), Some(0));
        assert_eq!(parse_time("2026-12-01T17:00:00Z"), Some(1_796_144_400));
        assert_eq!(parse_time("2026-12-01T18:00:00+01:00"), Some(1_796_144_400));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("-5"), None);
        assert_eq!(parse_window("24h"), Some(86_400));
        assert_eq!(parse_window("7d"), Some(604_800));
        assert_eq!(parse_window("0h"), None);
        assert_eq!(parse_window("h"), None);
        assert_eq!(parse_window(""), None);
        assert_eq!(parse_window("\u{80}"), None);
        assert_eq!(parse_window("5\u{80}"), None);
        assert_eq!(parse_step("5m"), Some(("5m", 300)));
        assert_eq!(parse_step("2m"), None);
        assert_eq!(auto_step(3600).0, "1m");
        assert_eq!(auto_step(86_400).0, "5m");
        assert_eq!(auto_step(30 * 86_400).0, "1d");
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
    }
}
