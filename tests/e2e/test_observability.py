"""Observability end to end: a real Prometheus scraping the gateway, an OTLP receiver taking its
traces (gRPC and HTTP), promtool on the scraped text and on the alert rules, and the Grafana
dashboard checked against Grafana's schema types with each panel's PromQL parsed.

Prometheus and promtool come from Debian's `prometheus` package, TypeScript and `@grafana/schema`
from npm, the OTLP receiver from `opentelemetry-proto` + `grpcio`: all installed by
scripts/setup.sh. Every process started here is started from its binary and stopped by its own
handle; nothing waits blindly, everything polls with a deadline.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from conftest import Gateway, Mock, _stop, _tail, free_port, start_gateway
from helpers import MODEL, header

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
BODY = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0, every: float = 0.2) -> Any:
    """Polls `check` until it returns something truthy; fails with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
            # Not ready yet (Prometheus still starting, no scrape yet): an error is not an answer.
            last = e
        else:
            if last:
                return last
        time.sleep(every)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})", pytrace=False)


def tool(name: str) -> str:
    path = shutil.which(name) or (str(ROOT / "node_modules" / ".bin" / name) if name == "tsc" else None)
    if not path or not Path(path).exists():
        pytest.fail(f"{name} is not installed: run scripts/setup.sh", pytrace=False)
    return path


# --------------------------------------------------------------------------- OTLP receiver


class Spans:
    """Spans received by either receiver, with their resource."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[Any, Any]] = []

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self.lock:
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        self.items.append((rs.resource, span))

    def of_trace(self, trace_id_hex: str) -> list[tuple[Any, Any]]:
        with self.lock:
            return [(r, s) for r, s in self.items if s.trace_id.hex() == trace_id_hex]


class GrpcReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, spans: Spans) -> None:
        self.spans = spans

    def Export(self, request, context):  # noqa: N802 (gRPC method name)
        self.spans.add(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def start_grpc_receiver(spans: Spans) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(GrpcReceiver(spans), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"http://127.0.0.1:{port}"


def start_http_receiver(spans: Spans) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.path != "/v1/traces":
                self.send_response(404)
                self.end_headers()
                return
            spans.add(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
            out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, name="otlp-http", daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module", params=["grpc", "http/protobuf"])
def traced(request: pytest.FixtureRequest, mock: Mock, tmp_path_factory: pytest.TempPathFactory):
    """A gateway exporting traces over OTLP (`request.param`) to a receiver of ours."""
    spans = Spans()
    if request.param == "grpc":
        receiver, endpoint = start_grpc_receiver(spans)
    else:
        receiver, endpoint = start_http_receiver(spans)
    with pytest.MonkeyPatch.context() as mp:
        # Config through the environment (GEM_PROXY__...), and the SDK's standard batch delay.
        mp.setenv("GEM_PROXY__METRICS__OTLP__ENABLED", "true")
        mp.setenv("GEM_PROXY__METRICS__OTLP__ENDPOINT", endpoint)
        mp.setenv("GEM_PROXY__METRICS__OTLP__PROTOCOL", request.param)
        mp.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
        gw = start_gateway(tmp_path_factory.mktemp("traced"), mock.url)
    try:
        yield gw, spans
    finally:
        _stop(gw.proc)
        if isinstance(receiver, grpc.Server):
            receiver.stop(None)
        else:
            receiver.shutdown()


def attrs(span: Any) -> dict[str, Any]:
    out = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None
    return out


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
def test_request_span_continues_the_clients_trace_with_attempts_and_tokens(traced, upstream: Mock, stream: bool):
    gw, spans = traced
    trace_id = f"{int(time.time() * 1e6):032x}"[-32:]
    client_span = "00f067aa0ba902b7"
    path = f"/v1beta/models/{MODEL}:" + ("streamGenerateContent?alt=sse" if stream else "generateContent")
    with httpx.Client(timeout=30, trust_env=False) as http:
        r = http.post(
            gw.url + path,
            json=BODY,
            headers={"traceparent": f"00-{trace_id}-{client_span}-01", "x-request-id": f"req-{trace_id[-8:]}"},
        )
        assert r.status_code == 200, r.text

    def found():
        got = spans.of_trace(trace_id)
        names = {s.name for _, s in got}
        return got if {f"POST {'stream' if stream else 'generate'}", "upstream attempt"} <= names else None

    got = wait_for(f"spans of trace {trace_id} at the receiver; gateway log:\n{gw.stderr()}", found, timeout=20)
    (resource, server), = [(r, s) for r, s in got if s.name.startswith("POST ")]
    attempts = [s for _, s in got if s.name == "upstream attempt"]
    # The client's span is the parent: the gateway continued its trace.
    assert server.parent_span_id.hex() == client_span
    assert server.kind == server.SPAN_KIND_SERVER
    a = attrs(server)
    assert a["http.route"] == ("stream" if stream else "generate")
    assert a["gen_ai.request.model"] == MODEL
    assert a["gem_proxy.key_id"] in ("key1", "key2")
    assert a["http.response.status_code"] == 200
    assert a["gem_proxy.request_id"] == f"req-{trace_id[-8:]}"
    # Tokens from usageMetadata (the mock's fixed counts), for plain and streamed answers.
    assert a["gen_ai.usage.input_tokens"] == 8
    assert a["gen_ai.usage.output_tokens"] == 12
    assert a["gen_ai.usage.reasoning_tokens"] == 4
    assert {kv.key: kv.value.string_value for kv in resource.attributes}["service.name"] == "gem-proxy"
    # One attempt, a child of the request's span; Google saw it as the parent.
    assert len(attempts) == 1
    attempt = attempts[0]
    assert attempt.parent_span_id == server.span_id
    assert attrs(attempt)["gem_proxy.key_id"] == a["gem_proxy.key_id"]
    seen = upstream.requests()
    assert len(seen) == 1
    assert header(seen[0], "traceparent") == [f"00-{trace_id}-{attempt.span_id.hex()}-01"]


def test_retries_show_as_attempt_spans(traced, upstream: Mock):
    gw, spans = traced
    trace_id = f"{int(time.time() * 1e6) + 7:032x}"[-32:]
    with httpx.Client(timeout=30, trust_env=False) as http:
        httpx.post(f"{upstream.url}/_mock/key-failure", json={"key": "AIzaTESTKEY1", "failure": "503"}).raise_for_status()
        try:
            codes = []
            for _ in range(2):
                r = http.post(
                    gw.url + f"/v1beta/models/{MODEL}:generateContent",
                    json=BODY,
                    headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
                )
                codes.append(r.status_code)
        finally:
            upstream.reset()
    assert codes == [200, 200]
    # Two requests; whichever picked key1 first was replayed on key2: three attempts in all.
    got = wait_for(
        "three attempt spans",
        lambda: (lambda a: a if len(a) == 3 else None)([s for _, s in spans.of_trace(trace_id) if s.name == "upstream attempt"]),
        timeout=20,
    )
    failed = [s for s in got if attrs(s).get("http.response.status_code") == 503]
    assert len(failed) == 1 and failed[0].status.code == failed[0].status.STATUS_CODE_ERROR
    assert {attrs(s)["gem_proxy.attempt"] for s in got} == {0, 1}


# --------------------------------------------------------------------------- Prometheus


@pytest.fixture(scope="module")
def gateway(mock: Mock, tmp_path_factory: pytest.TempPathFactory):
    """This module's own gateway: other modules' tests (key disabling, failures) don't touch it."""
    gw = start_gateway(tmp_path_factory.mktemp("observed"), mock.url)
    try:
        yield gw
    finally:
        _stop(gw.proc)


@pytest.fixture(scope="module")
def prometheus(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory):
    """A real Prometheus scraping this module's gateway every second, with our alert rules loaded."""
    binary = tool("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    shutil.copy(GRAFANA / "prometheus" / "alerts.yml", tmp / "alerts.yml")
    admin = gateway.admin_url.removeprefix("http://")
    (tmp / "prometheus.yml").write_text(
        "global: { scrape_interval: 1s, evaluation_interval: 1s }\n"
        "rule_files: [alerts.yml]\n"
        "scrape_configs:\n"
        f"  - job_name: gem-proxy\n    static_configs: [{{ targets: ['{admin}'] }}]\n"
    )
    subprocess.run([tool("promtool"), "check", "config", str(tmp / "prometheus.yml")], check=True, capture_output=True)
    port = free_port()
    log = tmp / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=url, timeout=5, trust_env=False)
    try:
        def ready():
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}:\n{_tail(log)}", pytrace=False)
            return http.get("/-/ready").status_code == 200

        wait_for("Prometheus ready", ready)
        yield http
    finally:
        http.close()
        _stop(proc)


def query(prom: httpx.Client, expr: str) -> list[dict[str, Any]]:
    r = prom.get("/api/v1/query", params={"query": expr})
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_the_gateway_and_reads_the_series_back(prometheus: httpx.Client, gateway: Gateway):
    def target_up():
        targets = prometheus.get("/api/v1/targets").json()["data"]["activeTargets"]
        return targets and all(t["health"] == "up" for t in targets) and targets

    wait_for("the gateway's scrape target to be up", target_up)
    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as http:
        for _ in range(3):
            assert http.post(f"/v1beta/models/{MODEL}:generateContent", json=BODY).status_code == 200
        with http.stream("POST", f"/v1beta/models/{MODEL}:streamGenerateContent", params={"alt": "sse"}, json=BODY) as r:
            assert r.status_code == 200
            r.read()
        assert http.get("/not-an-api-path").status_code == 404

    def value(expr: str) -> float | None:
        res = query(prometheus, expr)
        return float(res[0]["value"][1]) if res else None

    # At least ours (this module's other tests may have added to them).
    expectations = {
        f'sum(gem_proxy_requests_total{{route="generate",model="{MODEL}",outcome="success",status_class="2xx"}})': 3,
        f'sum(gem_proxy_requests_total{{route="stream",model="{MODEL}",outcome="success"}})': 1,
        'sum(gem_proxy_requests_total{route="not_found",status_class="4xx"})': 1,
        f'sum(gem_proxy_time_to_first_byte_seconds_count{{model="{MODEL}"}})': 1,
        f'sum(gem_proxy_request_duration_seconds_bucket{{model="{MODEL}",le="600"}})': 4,
        f'sum(gem_proxy_tokens_total{{kind="candidates",model="{MODEL}"}})': 4 * 12,
        'sum(gem_proxy_upstream_attempts_total{result="2xx"})': 4,
        'sum(gem_proxy_keys{state="active"})': 2,
        'count(gem_proxy_key_state{state="active"} == 1)': 2,
        'sum(gem_proxy_gateway_errors_total{kind="not_found"})': 1,
        'up{job="gem-proxy"}': 1,
        "process_resident_memory_bytes": 1,
        "process_open_fds": 1,
        "process_cpu_seconds_total": 0.0001,
    }

    def all_there():
        missing = {e: value(e) for e, want in expectations.items() if (value(e) or 0) < want}
        return True if not missing else None

    wait_for("the expected series in Prometheus", all_there, timeout=30)
    # A histogram Prometheus can take a quantile of (over the counts so far: a rate needs two
    # scrapes that differ).
    p50 = wait_for(
        "a P50 from Prometheus",
        lambda: value('histogram_quantile(0.5, sum by (le) (gem_proxy_request_duration_seconds_bucket{route="generate"}))'),
    )
    assert 0 < p50 < 5
    # The alert rules are loaded and evaluate without errors; none fires on a healthy gateway.
    rules = wait_for("the rules", lambda: prometheus.get("/api/v1/rules").raise_for_status().json()["data"]["groups"])
    loaded = [r for g in rules for r in g["rules"]]
    assert len(loaded) == 12 and all(r["health"] == "ok" for r in loaded), loaded
    firing = [r["name"] for r in loaded if r["state"] == "firing"]
    assert not firing, firing


def test_scraped_text_passes_promtool_check_metrics(gateway: Gateway):
    with httpx.Client(timeout=10, trust_env=False) as http:
        http.post(f"{gateway.url}/v1beta/models/{MODEL}:generateContent", json=BODY).raise_for_status()
        text = http.get(f"{gateway.admin_url}/metrics").text
    assert "gem_proxy_requests_total{" in text
    check = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check
    # promtool's linter does catch what it should (a counter without _total).
    bad = subprocess.run(
        [tool("promtool"), "check", "metrics"],
        input="# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests 1\n",
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0


def test_performance_and_errors_endpoints(gateway: Gateway):
    with httpx.Client(timeout=10, trust_env=False) as http:
        http.post(f"{gateway.url}/v1beta/models/{MODEL}:generateContent", json=BODY).raise_for_status()
        http.get(f"{gateway.url}/nowhere", headers={"x-request-id": "e2e-missing-route"})
        perf = http.get(f"{gateway.admin_url}/performance").json()
        errors = http.get(f"{gateway.admin_url}/errors").json()
    overall = perf["overall"]
    assert overall["requests_1m"] >= 2 and overall["qps_1m"] > 0
    assert 0 < overall["success_rate_5m"] < 1
    assert overall["latency_ms"]["p50"] > 0 and overall["latency_ms"]["p99"] >= overall["latency_ms"]["p50"]
    assert set(perf["keys"]) <= {"key1", "key2"} and perf["keys"]
    entry = next(e for e in errors["recent"] if e["request_id"] == "e2e-missing-route")
    assert entry["status"] == 404 and entry["kind"] == "not_found" and entry["route"] == "not_found"
    assert "AIza" not in json.dumps(errors)


# --------------------------------------------------------------------------- rules and dashboard


def test_alert_rules_check_and_unit_tests_pass():
    promtool = tool("promtool")
    subprocess.run([promtool, "check", "rules", str(GRAFANA / "prometheus" / "alerts.yml")], check=True, capture_output=True)
    res = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        cwd=GRAFANA / "prometheus",
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    out = []
    for panel in dashboard["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            out += [t["expr"] for t in p.get("targets", []) if t.get("expr")]
    return out


def test_dashboard_matches_grafana_schema_types(tmp_path: Path):
    tsc = tool("tsc")
    text = (GRAFANA / "dashboards" / "gem-proxy.json").read_text()
    json.loads(text)
    # Inside the repo so `@grafana/schema` resolves from its node_modules.
    work = ROOT / "target" / "grafana-check"
    work.mkdir(parents=True, exist_ok=True)

    def check(source: str) -> subprocess.CompletedProcess[str]:
        f = work / "dashboard.ts"
        f.write_text(
            "import type { Dashboard } from '@grafana/schema';\n"
            f"const dashboard: Dashboard = {source};\nexport default dashboard;\n"
        )
        return subprocess.run(
            [tsc, "--noEmit", "--strict", "--skipLibCheck", "--target", "es2022",
             "--module", "nodenext", "--moduleResolution", "nodenext", str(f)],
            capture_output=True,
            text=True,
        )

    ok = check(text)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The check is real: an unknown field is refused.
    broken = check(text.replace('"graphTooltip": 1', '"graphTooltip": 1, "graphTooltips": 1', 1))
    assert broken.returncode != 0 and "graphTooltips" in broken.stdout


def test_every_dashboard_query_parses(tmp_path: Path):
    dashboard = json.loads((GRAFANA / "dashboards" / "gem-proxy.json").read_text())
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) >= 25
    names = set(re.findall(r"\b(gem_proxy_[a-z_]+|process_[a-z_]+)\b", " ".join(exprs)))
    assert {"gem_proxy_requests_total", "gem_proxy_key_state", "gem_proxy_tokens_total",
            "gem_proxy_time_to_first_byte_seconds_bucket", "process_cpu_seconds_total"} <= names
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for i, e in enumerate(exprs):
        e = (e.replace("$__rate_interval", "5m").replace("$__range", "1h")
             .replace("$job", ".+").replace("$instance", ".+"))
        assert "$" not in e, e
        rules += [f"      - record: dashboard:panel_{i}", f"        expr: {json.dumps(e)}"]
    f = tmp_path / "dashboard_rules.yml"
    f.write_text("\n".join(rules) + "\n")
    res = subprocess.run([tool("promtool"), "check", "rules", str(f)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    # And a broken query would be caught.
    f.write_text("groups:\n  - name: x\n    rules:\n      - record: x:y\n        expr: 'sum(rate(x[5m])'\n")
    assert subprocess.run([tool("promtool"), "check", "rules", str(f)], capture_output=True).returncode != 0
