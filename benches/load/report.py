"""Turns the harness's raw samples into a summary (JSON) and a markdown report.

Every figure is the median over the repeats, with (min–max) when the repeats differ. "Added"
latency is, per repeat, the target's figure minus direct's figure of the same scenario in the same
repeat, then the median of those differences. Standard library only.
"""

from __future__ import annotations

import statistics

PROXIES = ["nginx", "pingora", "gem-proxy", "gem-proxy-redis", "litellm"]
LABEL = {"direct": "direct (mock, the floor)", "nginx": "nginx", "pingora": "Pingora", "gem-proxy": "gem-proxy",
         "gem-proxy-redis": "gem-proxy, state.backend: redis",
         "litellm": "LiteLLM"}


def spread(values: list) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _by(samples: list[dict], target: str, scenario: str) -> list[dict]:
    return sorted((s for s in samples if s["target"] == target and s["scenario"] == scenario),
                  key=lambda s: s["repeat"])


def _added(samples, target, scenario, metric) -> dict | None:
    direct = {s["repeat"]: s.get(metric) for s in _by(samples, "direct", scenario)}
    diffs = [s.get(metric) - direct[s["repeat"]] for s in _by(samples, target, scenario)
             if s.get(metric) is not None and direct.get(s["repeat"]) is not None]
    return spread(diffs)


def summarize(raw: dict) -> dict:
    samples = raw["samples"]
    st = raw["settings"]
    targets = raw["targets"]
    out: dict = {"run_id": raw["run_id"], "started": raw["started"], "duration_s": raw["duration_s"],
                 "command": raw["command"], "settings": st, "machine": raw["machine"], "targets": {}}
    closed = [f"c{c}" for c in st["concurrency"]]
    for t in targets:
        d: dict = {}
        for sc in closed:
            rows = _by(samples, t, sc)
            if not rows:
                continue
            d[sc] = {m: spread([r.get(m) for r in rows])
                     for m in ("rps", "p50_us", "p99_us", "p999_us", "cpu_s_per_1k", "non_2xx", "socket_errors",
                               "bytes_per_response")}
            if t != "direct":
                d[sc]["added_p50_us"] = _added(samples, t, sc, "p50_us")
                d[sc]["added_p99_us"] = _added(samples, t, sc, "p99_us")
                d[sc]["added_p999_us"] = _added(samples, t, sc, "p999_us")
        rows = _by(samples, t, "open")
        if rows:
            d["open"] = {m: spread([r.get(m) for r in rows])
                         for m in ("achieved_rps", "p50_us", "p99_us", "p999_us", "max_us", "errors", "dropped",
                                   "cpu_s_per_1k")}
            if t != "direct":
                d["open"]["added_p50_us"] = _added(samples, t, "open", "p50_us")
                d["open"]["added_p99_us"] = _added(samples, t, "open", "p99_us")
                d["open"]["added_p999_us"] = _added(samples, t, "open", "p999_us")
        rows = _by(samples, t, "sse")
        if rows:
            d["sse"] = {m: spread([r.get(m) for r in rows])
                        for m in ("ttfe_p50_us", "ttfe_p99_us", "gap_p50_us", "gap_p99_us", "gap_p999_us",
                                  "gap_max_us", "errors", "wrong_event_count")}
            if t != "direct":
                for m in ("ttfe_p50_us", "ttfe_p99_us", "gap_p50_us", "gap_p99_us", "gap_p999_us"):
                    d["sse"]["added_" + m] = _added(samples, t, "sse", m)
        holds = {}
        idle = []
        for h in st["hold"]:
            rows = _by(samples, t, f"hold{h}")
            if rows:
                holds[str(h)] = {m: spread([r.get(m) for r in rows])
                                 for m in ("opened", "kb_per_stream", "held_rss_kb", "idle_rss_kb", "open_ms")}
                idle += [r.get("idle_rss_kb") for r in rows]
        if holds:
            d["hold"] = holds
        rows = _by(samples, t, "live")
        if rows:
            d["live"] = {m: spread([r.get(m) for r in rows])
                         for m in ("opened", "errors", "rtt_p50_us", "rtt_p99_us", "kb_per_session",
                                   "held_rss_kb", "idle_rss_kb")}
            if t != "direct":
                d["live"]["added_rtt_p50_us"] = _added(samples, t, "live", "rtt_p50_us")
                d["live"]["added_rtt_p99_us"] = _added(samples, t, "live", "rtt_p99_us")
        warm = [s.get("rss_kb") for s in _by(samples, t, "after_warmup")]
        d["idle_rss_kb"] = spread(idle) or None
        d["rss_after_warmup_kb"] = spread(warm)
        # First repeat only: later repeats run on processes restarted for (and so marked by) held streams.
        hwm = [s.get("hwm_kb") for s in samples if s["target"] == t and s["scenario"] in closed and s["repeat"] == 1]
        d["peak_rss_kb"] = max((v for v in hwm if v is not None), default=None)
        out["targets"][t] = d
    out["checks"] = checks(out)
    out["ratios"] = ratios(out)
    out["goals"] = goals(out)
    return out


def _med(summary, t, sc, m):
    try:
        return summary["targets"][t][sc][m]["median"]
    except (KeyError, TypeError):
        return None


def checks(summary: dict) -> list[dict]:
    res = []
    for sc in ("c64", "c256"):
        direct = _med(summary, "direct", sc, "rps")
        best = max(((_med(summary, p, sc, "rps") or 0, p) for p in PROXIES if p in summary["targets"]),
                   default=(0, None))
        if direct and best[1]:
            ok = direct >= 2 * best[0]
            res.append({"check": f"mock not the bottleneck at {sc}", "ok": ok,
                        "detail": f"direct {direct:,.0f} req/s vs fastest proxy ({best[1]}) {best[0]:,.0f} req/s: "
                                  f"{direct / best[0]:.2f}x (needs >= 2x)" if best[0] else "no proxy figure"})
    for t, d in summary["targets"].items():
        bad = sum((_med(summary, t, sc, "non_2xx") or 0) + (_med(summary, t, sc, "socket_errors") or 0)
                  for sc in ("c1", "c64", "c256"))
        if bad:
            res.append({"check": f"{t}: every closed-loop answer a 2xx", "ok": False,
                        "detail": f"median errors over scenarios: {bad:,.0f}"})
        for sc in ("open", "sse"):
            errs = (_med(summary, t, sc, "errors") or 0) + (_med(summary, t, sc, "dropped") or 0) + \
                   (_med(summary, t, sc, "wrong_event_count") or 0)
            if errs:
                res.append({"check": f"{t}: {sc} without errors or dropped requests", "ok": False,
                            "detail": f"median errors + dropped + wrong event counts {errs:,.0f}"})
        for h, hd in (d.get("hold") or {}).items():
            opened = hd["opened"]["median"] if hd.get("opened") else 0
            if opened < int(h):
                res.append({"check": f"{t}: all {h} streams held", "ok": False,
                            "detail": f"median opened {opened:,.0f}"})
    req, got = summary["settings"]["hold_requested"], summary["settings"]["hold"]
    if req != got:
        res.append({"check": "stream counts as asked", "ok": False,
                    "detail": f"asked {req}, ran {got}: the open-files hard limit here is "
                              f"{summary['settings']['nofile_hard_limit']} and a proxy needs 2 per stream"})
    return res


def ratios(summary: dict) -> dict:
    r = {}
    for other in ("nginx", "pingora", "litellm"):
        if other not in summary["targets"] or "gem-proxy" not in summary["targets"]:
            continue
        for sc in ("c1", "c64", "c256"):
            a, b = _med(summary, "gem-proxy", sc, "rps"), _med(summary, other, sc, "rps")
            if a and b:
                r[f"rps_{sc}_gem-proxy/{other}"] = a / b
        a, b = _med(summary, "gem-proxy", "c64", "cpu_s_per_1k"), _med(summary, other, "c64", "cpu_s_per_1k")
        if a and b:
            r[f"cpu_per_req_c64_gem-proxy/{other}"] = a / b
    return r


def goals(summary: dict) -> list[dict]:
    """The targets issue 8 aims at, and where gem-proxy stands."""
    g = summary["targets"].get("gem-proxy")
    if not g:
        return []
    out = []

    def goal(name, value, ok, detail):
        out.append({"goal": name, "value": value, "met": ok, "detail": detail})

    for other in ("nginx", "pingora"):
        if other in summary["targets"]:
            a, b = _med(summary, "gem-proxy", "c256", "rps"), _med(summary, other, "c256", "rps")
            if a and b:
                goal(f"throughput >= {LABEL[other]} (c=256, same core)", a / b, a >= b, f"{a:,.0f} vs {b:,.0f} req/s")
    added = _med(summary, "gem-proxy", "c1", "added_p99_us")
    if added is not None:
        goal("added p99 at c=1 <= 150 us", added, added <= 150, f"{added:,.0f} us")
    if "nginx" in summary["targets"]:
        a, b = _med(summary, "gem-proxy", "c64", "cpu_s_per_1k"), _med(summary, "nginx", "c64", "cpu_s_per_1k")
        if a and b:
            goal("CPU per request <= nginx's (c=64)", a / b, a <= b, f"{a * 1000:.1f} vs {b * 1000:.1f} CPU-ms per 1k")
    idle = (g.get("idle_rss_kb") or {}).get("median")
    if idle:
        goal("idle RSS < 20 MB", idle, idle < 20 * 1000, f"{idle / 1024:.1f} MiB")
    for h, hd in (g.get("hold") or {}).items():
        kb = (hd.get("kb_per_stream") or {}).get("median")
        if kb is not None:
            goal(f"< 20 KB per open stream ({int(h):,} streams)", kb, kb * 1.024 < 20, f"{kb:.1f} KiB")
    if "litellm" in summary["targets"]:
        a, b = _med(summary, "gem-proxy", "c64", "rps"), _med(summary, "litellm", "c64", "rps")
        if a and b:
            goal(">= 50x LiteLLM's throughput (c=64)", a / b, a >= 50 * b, f"{a / b:.1f}x")
    return out


# ---------------------------------------------------------------- markdown


def _num(v: float, unit: str) -> str:
    if unit == "us":
        if abs(v) >= 10_000:
            return f"{v / 1000:,.1f} ms"
        return f"{v:,.0f} µs"
    if unit == "rps":
        return f"{v:,.0f}"
    if unit == "cpu":  # CPU-seconds per 1k requests, shown as CPU-ms per 1k
        return f"{v * 1000:,.1f}"
    if unit == "kb":
        return f"{v / 1024:,.1f} MiB" if abs(v) >= 1024 else f"{v:,.1f} KiB"
    if unit == "x":
        return f"{v:.2f}"
    return f"{v:,.0f}"


def cell(sp: dict | None, unit: str) -> str:
    if not sp:
        return "—"
    med = _num(sp["median"], unit)
    if sp["n"] > 1 and _num(sp["min"], unit) != _num(sp["max"], unit):
        lo, hi = _num(sp["min"], unit), _num(sp["max"], unit)
        return f"{med} ({lo.split()[0]}–{hi})"
    return med


def _get(d, *path):
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def summary_table(s: dict) -> list[str]:
    """One row per target: the figures the README quotes."""
    st = s["settings"]
    big = str(max(st["hold"])) if st["hold"] else None
    header = ["target", "req/s c=1", "req/s c=64", "req/s c=256", "added p50 / p99 at c=1",
              f"open loop p99 ({st['open_rate']:,.0f}/s)", "CPU-ms / 1k req (c=64)", "idle RSS"]
    if big:
        header.append(f"per stream ({int(big):,} streams)")
    header.append("SSE added first event / gap p99")
    rows = []
    for n, d in s["targets"].items():
        c1 = d.get("c1", {})
        added = "—" if n == "direct" else f"{cell(c1.get('added_p50_us'), 'us')} / {cell(c1.get('added_p99_us'), 'us')}"
        row = [LABEL[n], cell(_get(d, "c1", "rps"), "rps"), cell(_get(d, "c64", "rps"), "rps"),
               cell(_get(d, "c256", "rps"), "rps"), added, cell(_get(d, "open", "p99_us"), "us"),
               cell(_get(d, "c64", "cpu_s_per_1k"), "cpu"), cell(d.get("idle_rss_kb"), "kb")]
        if big:
            row.append(cell(_get(d, "hold", big, "kb_per_stream"), "kb"))
        sse = d.get("sse", {})
        row.append("—" if n == "direct" else
                   f"{cell(sse.get('added_ttfe_p50_us'), 'us')} / {cell(sse.get('added_gap_p99_us'), 'us')}")
        rows.append(row)
    return ["### Summary (details below)"] + _table(header, rows)


def markdown(s: dict) -> str:
    st, m = s["settings"], s["machine"]
    names = list(s["targets"])
    L = [f"## Load test: {', '.join(LABEL[n].split(' ')[0].rstrip(',') if n != 'gem-proxy-redis' else 'gem-proxy (redis state)' for n in names)}", ""]
    L.append(f"Run {s['started']} ({s['duration_s'] // 60} min), `{s['command']}`: {st['repeats']} repeat(s) of "
             f"{st['seconds']:g} s per scenario, targets interleaved; each cell is the median over repeats "
             "(min–max). Plain HTTP/1.1 on 127.0.0.1; each proxy on one core (CPU 0), mock + load generators on CPU 1.")
    before, after = m.get("before", {}), m.get("after", {})
    L.append(f"Machine: {before.get('nproc')} × {before.get('cpu', '?')}, Linux {before.get('kernel', '?')}; "
             f"load average (1/5/15 min) {' '.join(before.get('loadavg', []))} before, "
             f"{' '.join(after.get('loadavg', []))} after.")
    busy = m.get("busy_before")
    if busy:
        L.append(f"Busiest processes at the start (%CPU, command): {'; '.join(busy[:5])}.")
    if st.get("quick"):
        L.append("**Quick run** (`--quick`): one short repeat, for checking the harness, not for quoting.")
    L.append("")

    L += summary_table(s)
    L.append("")
    for c in st["concurrency"]:
        sc = f"c{c}"
        size = _get(s, "targets", "direct", sc, "bytes_per_response", "median")
        L.append(f"### generateContent, closed loop, {c} connection{'s' if c > 1 else ''} (wrk)"
                 + (f" — {size / 1024:.1f} KiB per response incl. headers" if size and c == 1 else ""))
        rows = []
        for n in names:
            d = s["targets"][n].get(sc, {})
            rows.append([LABEL[n], cell(d.get("rps"), "rps"), cell(d.get("p50_us"), "us"), cell(d.get("p99_us"), "us"),
                         cell(d.get("p999_us"), "us"), cell(d.get("added_p50_us"), "us"),
                         cell(d.get("added_p99_us"), "us"), cell(d.get("cpu_s_per_1k"), "cpu")])
        L += _table(["target", "req/s", "p50", "p99", "p99.9", "added p50", "added p99", "CPU-ms / 1k req"], rows)
        L.append("")

    L.append(f"### generateContent, open loop at {st['open_rate']:,.0f} req/s over 64 connections (bench-driver; "
             "latency from the scheduled send time)")
    rows = []
    for n in names:
        d = s["targets"][n].get("open", {})
        rows.append([LABEL[n], cell(d.get("achieved_rps"), "rps"), cell(d.get("p50_us"), "us"),
                     cell(d.get("p99_us"), "us"), cell(d.get("p999_us"), "us"), cell(d.get("max_us"), "us"),
                     cell(d.get("added_p99_us"), "us"), cell(d.get("added_p999_us"), "us"),
                     cell(d.get("cpu_s_per_1k"), "cpu")])
    L += _table(["target", "achieved req/s", "p50", "p99", "p99.9", "max", "added p99", "added p99.9",
                 "CPU-ms / 1k req"], rows)
    L.append("")

    L.append(f"### SSE streams: {st['sse_streams']} concurrent × {st['sse_rounds']} round(s), 64 events 20 ms apart "
             "(bench-driver)")
    rows = []
    for n in names:
        d = s["targets"][n].get("sse", {})
        rows.append([LABEL[n], cell(d.get("ttfe_p50_us"), "us"), cell(d.get("ttfe_p99_us"), "us"),
                     cell(d.get("added_ttfe_p50_us"), "us"), cell(d.get("added_ttfe_p99_us"), "us"),
                     cell(d.get("gap_p50_us"), "us"), cell(d.get("gap_p99_us"), "us"),
                     cell(d.get("added_gap_p99_us"), "us"), cell(d.get("added_gap_p999_us"), "us")])
    L += _table(["target", "first event p50", "first event p99", "added p50", "added p99", "gap p50", "gap p99",
                 "added gap p99", "added gap p99.9"], rows)
    L.append("")

    holds = [str(h) for h in st["hold"]]
    L.append("### Memory: idle, under load, and per open stream (fresh process per stream count; "
             f"streams held {st['hold_seconds']:g} s, events every 2 s)")
    header = ["target", "idle RSS", "peak RSS (closed loop, 1st repeat)"]
    for h in holds:
        header += [f"RSS, {int(h):,} streams", f"per stream ({int(h):,})"]
    rows = []
    for n in names:
        if n == "direct":
            continue
        d = s["targets"][n]
        row = [LABEL[n], cell(d.get("idle_rss_kb"), "kb"),
               _num(d["peak_rss_kb"], "kb") if d.get("peak_rss_kb") else "—"]
        for h in holds:
            hd = (d.get("hold") or {}).get(h, {})
            opened = _get(hd, "opened", "median")
            note = f" ({opened:,.0f} opened)" if opened is not None and opened < int(h) else ""
            row += [cell(hd.get("held_rss_kb"), "kb"), cell(hd.get("kb_per_stream"), "kb") + note]
        rows.append(row)
    L += _table(header, rows)
    L.append("")
    L.append("RSS is VmRSS (peak: VmHWM) summed over the target's processes: nginx's master and worker "
             "(shared pages counted twice; its worker preallocates slots for the connection limit the held "
             "streams need), LiteLLM's interpreter and any helpers.")
    L.append("")

    live = [n for n in names if s["targets"][n].get("live")]
    if live:
        L.append(f"### Live API: {st.get('live_sessions', 0):,} concurrent sessions, a turn every "
                 f"{st.get('live_interval_ms', 100)} ms each for {st.get('live_seconds', 0):g} s (bench-driver live)")
        rows = []
        for n in live:
            d = s["targets"][n]["live"]
            rows.append([LABEL[n], cell(d.get("opened"), "n"), cell(d.get("rtt_p50_us"), "us"),
                         cell(d.get("rtt_p99_us"), "us"), cell(d.get("added_rtt_p50_us"), "us"),
                         cell(d.get("added_rtt_p99_us"), "us"), cell(d.get("kb_per_session"), "kb"),
                         cell(d.get("errors"), "n")])
        L += _table(["target", "sessions open", "turn p50", "turn p99", "added p50", "added p99",
                     "RSS per session", "errors"], rows)
        L.append("")
        L.append("A turn is timed from sending a `clientContent` to the first answer frame; added = the "
                 "target's figure minus the direct connection's (the mock itself) in the same repeat.")
        L.append("")

    r = s["ratios"]
    if r:
        parts = []
        for other in ("nginx", "pingora", "litellm"):
            vals = [(sc, r.get(f"rps_{sc}_gem-proxy/{other}")) for sc in ("c1", "c64", "c256")]
            vals = [(sc, v) for sc, v in vals if v]
            if vals:
                parts.append(f"gem-proxy/{LABEL[other]} " + " · ".join(f"{v:.2f} ({sc.replace('c', 'c=')})"
                                                                      for sc, v in vals))
        L.append("**Throughput ratios (req/s):** " + "; ".join(parts) + ".")
        L.append("")
        cpu = [f"gem-proxy/{LABEL[o]} {r[k]:.3g}" for o in ("nginx", "pingora", "litellm")
               if (k := f"cpu_per_req_c64_gem-proxy/{o}") in r]
        if cpu:
            L.append("**CPU per request ratios (c=64):** " + ", ".join(cpu) + ".")
            L.append("")
        L.append("")
    if s["goals"]:
        L.append("**Issue 8 targets for gem-proxy:** " + "; ".join(
            f"{g['goal']}: {'met' if g['met'] else 'NOT met'} ({g['detail']})" for g in s["goals"]) + ".")
        L.append("")
    for c in s["checks"]:
        L.append(f"- {'OK' if c['ok'] else 'WARNING'}: {c['check']} — {c['detail']}")
    L.append("")
    return "\n".join(L)


def selftest() -> None:
    """Renders a synthetic two-repeat run; raises if anything is off (used by --dry-run)."""
    samples = []
    for rep in (1, 2):
        for t, k in (("direct", 1.0), ("nginx", 1.5), ("pingora", 1.6), ("gem-proxy", 1.7)):
            for c in (1, 64, 256):
                samples.append({"target": t, "scenario": f"c{c}", "repeat": rep, "rps": 40000 / k / (1 if c > 1 else 4),
                                "p50_us": 50 * k * c, "p99_us": 90 * k * c, "p999_us": 150 * k * c, "non_2xx": 0,
                                "socket_errors": 0, "bytes_per_response": 1200, "hwm_kb": 9000,
                                "cpu_s_per_1k": None if t == "direct" else 0.02 * k})
            samples.append({"target": t, "scenario": "open", "repeat": rep, "achieved_rps": 2000, "p50_us": 60 * k,
                            "p99_us": 120 * k, "p999_us": 300 * k, "max_us": 900 * k, "errors": 0, "dropped": 0})
            samples.append({"target": t, "scenario": "sse", "repeat": rep, "ttfe_p50_us": 300 * k,
                            "ttfe_p99_us": 500 * k, "gap_p50_us": 20100, "gap_p99_us": 20400 + 10 * k,
                            "gap_p999_us": 21000, "gap_max_us": 22000, "errors": 0, "wrong_event_count": 0})
            if t in ("direct", "gem-proxy"):
                samples.append({"target": t, "scenario": "live", "repeat": rep, "opened": 1000, "errors": 0,
                                "rtt_p50_us": 400 * k, "rtt_p99_us": 900 * k,
                                "kb_per_session": None if t == "direct" else 30.0})
            if t != "direct":
                samples.append({"target": t, "scenario": "hold1000", "repeat": rep, "opened": 1000,
                                "idle_rss_kb": 8000, "held_rss_kb": 8000 + 1000 * 9 * k, "kb_per_stream": 9 * k,
                                "open_ms": 500})
    raw = {"run_id": "selftest", "started": "now", "duration_s": 60, "command": "selftest",
           "settings": {"quick": False, "repeats": 2, "seconds": 10, "concurrency": [1, 64, 256], "open_rate": 2000,
                        "sse_streams": 32, "sse_rounds": 3, "hold": [1000], "hold_requested": [1000],
                        "hold_seconds": 3, "nofile_hard_limit": 20000},
           "machine": {"before": {"nproc": 2, "loadavg": ["0.1", "0.1", "0.1"]}, "after": {}},
           "targets": ["direct", "nginx", "pingora", "gem-proxy"], "samples": samples}
    s = summarize(raw)
    md = markdown(s)
    assert abs(s["ratios"]["rps_c64_gem-proxy/nginx"] - 1.5 / 1.7) < 1e-9, s["ratios"]
    assert abs(s["targets"]["gem-proxy"]["c1"]["added_p99_us"]["median"] - 63) < 1e-9, s["targets"]["gem-proxy"]["c1"]
    assert all(c["ok"] for c in s["checks"]) is False  # direct is only 1.5x nginx here: must warn
    assert "WARNING: mock not the bottleneck at c64" in md, md
    assert "| gem-proxy |" in md and "Throughput ratios" in md, md
    assert abs(s["targets"]["gem-proxy"]["live"]["added_rtt_p50_us"]["median"] - 280) < 1e-9, s["targets"]["gem-proxy"]
    assert "### Live API" in md, md
