//! What the Usage page and the key timelines compute from the usage history (`/api/usage`,
//! `/api/keys/{id}/events`): ranges, the time axis, stacked series, error rates; the overview's
//! live charts prefilled from it; and the sign-in link's token. Plain Rust, unit-tested on the
//! host.

use serde_json::Value;

use crate::model::Sample;

/// Groups drawn one by one in a stacked chart; the rest are summed as "other".
pub(crate) const STACKED_GROUPS: usize = 6;

/// The range buttons: label and length in seconds.
pub(crate) const RANGES: [(&str, i64); 4] = [
    ("1 h", 3600),
    ("24 h", 86_400),
    ("7 d", 7 * 86_400),
    ("30 d", 30 * 86_400),
];

/// What the charts can be split by (the API's `group_by`).
pub(crate) const GROUPS: [&str; 4] = ["key", "model", "client", "route"];

/// The token of a sign-in link's fragment: `#token=…` (other fragment parameters may follow
/// after `&`).
pub(crate) fn fragment_token(hash: &str) -> Option<String> {
    hash.trim_start_matches('#')
        .split('&')
        .find_map(|p| p.strip_prefix("token="))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// `2026-12-01T17:30` (an `<input type="datetime-local">` value, read as UTC) → seconds since
/// the epoch.
pub(crate) fn parse_local_time(s: &str) -> Option<i64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, min) = (t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + min * 60)
}

/// The start of every step from `from` to `to` (steps start at multiples of `step`).
pub(crate) fn axis(from: i64, to: i64, step: i64) -> Vec<i64> {
    if step <= 0 || to <= from {
        return Vec::new();
    }
    let first = from.div_euclid(step) * step;
    (0..)
        .map(|i| first + i * step)
        .take_while(|t| *t < to)
        .take(20_000)
        .collect()
}

/// One group's values of `field` on `axis` (0 where it had no traffic).
fn values(group: &Value, axis: &[i64], field: &str) -> Vec<f64> {
    let mut out = vec![0.0; axis.len()];
    let Some(&first) = axis.first() else {
        return out;
    };
    let step = axis.get(1).map(|s| s - first);
    for p in group["points"].as_array().into_iter().flatten() {
        let Some(t) = p["t"].as_i64() else { continue };
        let i = step.map_or(0, |step| (t - first).div_euclid(step));
        if let Some(v) = usize::try_from(i).ok().and_then(|i| out.get_mut(i)) {
            *v += p[field].as_f64().unwrap_or(0.0);
        }
    }
    out
}

/// The layers of a stacked chart of `field`: the busiest groups (as the report orders them),
/// then "other"; each layer's values are its own (not yet summed).
pub(crate) fn layers(report: &Value, axis: &[i64], field: &str) -> Vec<(String, Vec<f64>)> {
    let groups = report["groups"].as_array().cloned().unwrap_or_default();
    let mut out: Vec<(String, Vec<f64>)> = groups
        .iter()
        .take(STACKED_GROUPS)
        .map(|g| {
            (
                group_label(g["name"].as_str().unwrap_or("")),
                values(g, axis, field),
            )
        })
        .collect();
    if groups.len() > STACKED_GROUPS {
        let mut other = vec![0.0; axis.len()];
        for g in &groups[STACKED_GROUPS..] {
            for (o, v) in other.iter_mut().zip(values(g, axis, field)) {
                *o += v;
            }
        }
        out.push(("other".to_owned(), other));
    }
    out
}

/// `field` summed over every group of a report, on `axis`.
fn summed(report: &Value, axis: &[i64], field: &str) -> Vec<f64> {
    let mut out = vec![0.0; axis.len()];
    for g in report["groups"].as_array().into_iter().flatten() {
        for (o, v) in out.iter_mut().zip(values(g, axis, field)) {
            *o += v;
        }
    }
    out
}

/// Samples for the overview's live charts from the stored minutes of a report (`step=1m`)
/// covering `from..now` (seconds): one every `poll` seconds, each carrying its minute's request
/// rate, success rate and tokens per minute (the current minute's rate over its elapsed part).
/// Latency, time to first byte and requests in flight are not stored: those stay gaps.
pub(crate) fn stored_samples(report: &Value, from: i64, now: i64, poll: u64) -> Vec<Sample> {
    let poll = poll.max(1) as i64;
    let axis = axis(from, now, 60);
    let requests = summed(report, &axis, "requests");
    let successes = summed(report, &axis, "successes");
    let tokens = summed(report, &axis, "total_tokens");
    let mut out = Vec::new();
    for (i, minute) in axis.iter().enumerate() {
        let seconds = (now - minute).clamp(1, 60) as f64;
        let (req, ok) = (requests[i], successes[i]);
        let mut t = (*minute).max(from);
        while t < minute + 60 && t < now {
            out.push(Sample {
                at_ms: t as f64 * 1000.0,
                qps: req / seconds,
                requests_1m: req as u64,
                success_rate: (req > 0.0).then(|| ok / req),
                tokens_per_minute: Some(tokens[i] * 60.0 / seconds),
                ..Sample::default()
            });
            t += poll;
        }
    }
    out
}

/// How a group is shown: an empty client (auth off) as "(none)".
pub(crate) fn group_label(name: &str) -> String {
    if name.is_empty() {
        "(none)".to_owned()
    } else {
        name.to_owned()
    }
}

/// The highest stacked value.
pub(crate) fn stacked_max(layers: &[(String, Vec<f64>)]) -> f64 {
    let n = layers.first().map_or(0, |l| l.1.len());
    (0..n)
        .map(|i| layers.iter().map(|l| l.1[i]).sum::<f64>())
        .fold(0.0, f64::max)
}

/// SVG polygon points of each layer, stacked bottom up, on a `width` × `height` box.
pub(crate) fn stacked_polygons(
    layers: &[(String, Vec<f64>)],
    width: f64,
    height: f64,
    max: f64,
) -> Vec<String> {
    let n = layers.first().map_or(0, |l| l.1.len());
    if n == 0 || max <= 0.0 {
        return vec![String::new(); layers.len()];
    }
    let x = |i: usize| {
        if n == 1 {
            width / 2.0
        } else {
            i as f64 * width / (n - 1) as f64
        }
    };
    let y = |v: f64| height - (v / max).min(1.0) * height;
    let mut base = vec![0.0; n];
    layers
        .iter()
        .map(|(_, vals)| {
            let top: Vec<f64> = base.iter().zip(vals).map(|(b, v)| b + v).collect();
            let mut pts: Vec<String> = (0..n)
                .map(|i| format!("{:.1},{:.1}", x(i), y(top[i])))
                .collect();
            pts.extend(
                (0..n)
                    .rev()
                    .map(|i| format!("{:.1},{:.1}", x(i), y(base[i]))),
            );
            base = top;
            pts.join(" ")
        })
        .collect()
}

/// The error rate (%) per step over every group; `None` where there was no request.
pub(crate) fn error_rate(report: &Value, axis: &[i64]) -> Vec<Option<f64>> {
    let groups = report["groups"].as_array().cloned().unwrap_or_default();
    let mut requests = vec![0.0; axis.len()];
    let mut errors = vec![0.0; axis.len()];
    for g in &groups {
        for (r, v) in requests.iter_mut().zip(values(g, axis, "requests")) {
            *r += v;
        }
        for (e, v) in errors.iter_mut().zip(values(g, axis, "errors")) {
            *e += v;
        }
    }
    requests
        .iter()
        .zip(errors)
        .map(|(r, e)| (*r > 0.0).then(|| e / r * 100.0))
        .collect()
}

/// A cost as money: `0.0123` → `"0.0123"`, `12.5` → `"12.50"`.
pub(crate) fn fmt_cost(c: f64) -> String {
    if c == 0.0 {
        "0".to_owned()
    } else if c < 1.0 {
        format!("{c:.4}")
    } else {
        format!("{c:.2}")
    }
}

/// The file name a CSV export is saved as.
pub(crate) fn csv_file_name(group: &str, from: i64, to: i64) -> String {
    format!("gem-proxy-usage-by-{group}-{from}-{to}.csv")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_sign_in_fragment_gives_its_token() {
        assert_eq!(fragment_token("#token=abc.def"), Some("abc.def".into()));
        assert_eq!(fragment_token("#x=1&token=t"), Some("t".into()));
        assert_eq!(fragment_token("#token="), None);
        assert_eq!(fragment_token(""), None);
        assert_eq!(fragment_token("#/keys"), None);
    }

    #[test]
    fn custom_times_are_utc() {
        assert_eq!(parse_local_time("1970-01-01T00:00"), Some(0));
        assert_eq!(parse_local_time("2026-12-01T17:00"), Some(1_796_144_400));
        assert_eq!(parse_local_time("2026-13-01T17:00"), None);
        assert_eq!(parse_local_time("tomorrow"), None);
    }

    fn report() -> Value {
        json!({"groups": [
            {"name": "k1", "points": [
                {"t": 60, "requests": 2, "errors": 1, "total_tokens": 10},
                {"t": 180, "requests": 1, "errors": 0, "total_tokens": 5}]},
            {"name": "k2", "points": [{"t": 60, "requests": 2, "errors": 0, "total_tokens": 4}]},
        ]})
    }

    #[test]
    fn layers_put_each_point_on_its_step() {
        let axis = axis(60, 240, 60);
        assert_eq!(axis, [60, 120, 180]);
        let l = layers(&report(), &axis, "requests");
        assert_eq!(l[0], ("k1".into(), vec![2.0, 0.0, 1.0]));
        assert_eq!(l[1], ("k2".into(), vec![2.0, 0.0, 0.0]));
        assert_eq!(stacked_max(&l), 4.0);
        assert_eq!(error_rate(&report(), &axis), [Some(25.0), None, Some(0.0)]);
        let p = stacked_polygons(&l, 100.0, 10.0, 4.0);
        // k2 sits on top of k1: its top at the first step is the full height.
        assert!(p[1].starts_with("0.0,0.0 "), "{}", p[1]);
        assert!(p[0].starts_with("0.0,5.0 "), "{}", p[0]);
    }

    #[test]
    fn stored_minutes_become_live_samples() {
        // Two groups in two minutes: 30 + 30 requests (54 ok, 6000 tokens) at 600, 6 at 660.
        let report = serde_json::json!({"groups": [
            {"name": "generate", "points": [
                {"t": 600, "requests": 30, "successes": 27, "total_tokens": 3000},
                {"t": 660, "requests": 6, "successes": 6, "total_tokens": 600}
            ]},
            {"name": "stream", "points": [
                {"t": 600, "requests": 30, "successes": 27, "total_tokens": 3000}
            ]}
        ]});
        // Now is 30 s into the second minute; a sample every 3 s.
        let samples = stored_samples(&report, 600, 690, 3);
        assert_eq!(samples.len(), 20 + 10);
        let first = &samples[0];
        assert_eq!(first.at_ms, 600_000.0);
        assert_eq!(first.qps, 1.0);
        assert_eq!(first.requests_1m, 60);
        assert_eq!(first.success_rate, Some(0.9));
        assert_eq!(first.tokens_per_minute, Some(6000.0));
        assert_eq!(first.p50_ms, None, "latency is not stored");
        // The current minute's rate is over its 30 elapsed seconds.
        let last = samples.last().unwrap();
        assert_eq!(last.at_ms, 687_000.0);
        assert_eq!(last.qps, 0.2);
        assert_eq!(last.tokens_per_minute, Some(1200.0));
        assert!(samples.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
        // Nothing stored: quiet samples, not gaps (the gateway was idle).
        let empty = stored_samples(&serde_json::json!({"groups": []}), 600, 660, 3);
        assert_eq!(empty.len(), 20);
        assert!(
            empty
                .iter()
                .all(|s| s.qps == 0.0 && s.success_rate.is_none())
        );
    }

    #[test]
    fn many_groups_end_in_other() {
        let groups: Vec<Value> = (0..9)
            .map(|i| json!({"name": format!("c{i}"), "points": [{"t": 0, "requests": 1}]}))
            .collect();
        let l = layers(&json!({ "groups": groups }), &axis(0, 60, 60), "requests");
        assert_eq!(l.len(), STACKED_GROUPS + 1);
        assert_eq!(l[STACKED_GROUPS], ("other".into(), vec![3.0]));
        assert_eq!(group_label(""), "(none)");
    }

    #[test]
    fn costs_read_well() {
        assert_eq!(fmt_cost(0.0), "0");
        assert_eq!(fmt_cost(0.012345), "0.0123");
        assert_eq!(fmt_cost(12.5), "12.50");
    }
}
