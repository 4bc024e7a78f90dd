"""docker/compose.yaml: validated, and brought up for real through Podman's Docker API.

The live stack runs the gateway (the image under test), Redis and Prometheus (local stand-ins
tagged with the Compose file's image names, scripts/make-base-images.sh) plus the mock upstream
from a test-only override file. Grafana has no Debian package, so its provisioning files are
checked against the Compose file instead of running it.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from compose_stack import COMPOSE, COMPOSE_FILE, ApiSocket, Stack, make_stack, mock_override, tear_down
from helpers import MODEL
from podman import FULL_IMAGE, ROOT, base_images, cleanup_images, gateway_image, podman

CHECK_JSONSCHEMA = str(Path(sys.executable).parent / "check-jsonschema")

# The full multi-stage build (GEM_PROXY_E2E_FULL_IMAGE=1) takes many minutes cold.
pytestmark = pytest.mark.timeout(3600 if FULL_IMAGE else 300)


def compose_config(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(
        [COMPOSE, "-f", str(COMPOSE_FILE), *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        cwd=ROOT,
        timeout=60,
    )


# ----------------------------------------------------------------------------- static checks


def test_compose_file_is_valid_in_both_profiles() -> None:
    env = {"GEMINI_API_KEY_1": "AIzaONLYKEY"}
    for profile in ([], ["--profile", "replicas"]):
        out = compose_config(*profile, "config", "-q", env=env)
        assert out.returncode == 0, out.stderr
    out = subprocess.run(
        [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_only_the_first_api_key_is_required() -> None:
    out = compose_config("config", "-q")
    assert out.returncode != 0
    assert "GEMINI_API_KEY_1" in out.stderr
    resolved = json.loads(compose_config("config", "--format", "json", env={"GEMINI_API_KEY_1": "AIzaONLYKEY"}).stdout)
    env = resolved["services"]["gem-proxy"]["environment"]
    assert env["GEMINI_API_KEY_1"] == env["GEMINI_API_KEY_2"] == "AIzaONLYKEY"
    # The shared-state settings are passed on only when the operator sets them.
    assert env.get("GEM_PROXY__STATE__BACKEND") is None


def test_replicas_profile_runs_three_gateways_on_one_redis_behind_a_balancer() -> None:
    resolved = json.loads(
        compose_config("--profile", "replicas", "config", "--format", "json", env={"GEMINI_API_KEY_1": "k"}).stdout
    )
    services = resolved["services"]
    gateways = [s for s in services if s.startswith("gem-proxy")]
    assert sorted(gateways) == ["gem-proxy", "gem-proxy-2", "gem-proxy-3"]
    for name in ("gem-proxy-2", "gem-proxy-3"):
        env = services[name]["environment"]
        assert env["GEM_PROXY__STATE__BACKEND"] == "redis"
        assert env["GEM_PROXY__STATE__REDIS__URL"] == "redis://redis:6379"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert set(services["lb"]["depends_on"]) == set(gateways)
    cfg = (ROOT / "docker" / "haproxy" / "haproxy.cfg").read_text()
    for name in gateways:
        assert f" {name}:8443" in cfg


def test_grafana_is_provisioned_from_grafana_dir() -> None:
    resolved = json.loads(compose_config("config", "--format", "json", env={"GEMINI_API_KEY_1": "k"}).stdout)
    grafana = resolved["services"]["grafana"]
    mounts = {v["target"]: Path(v["source"]) for v in grafana["volumes"] if v["type"] == "bind"}
    provisioning = mounts["/etc/grafana/provisioning"]
    assert provisioning == ROOT / "grafana" / "provisioning"
    providers = yaml.safe_load((provisioning / "dashboards" / "gem-proxy.yaml").read_text())["providers"]
    dashboards_dir = providers[0]["options"]["path"]
    assert mounts[dashboards_dir] == ROOT / "grafana" / "dashboards"
    assert json.loads((mounts[dashboards_dir] / "gem-proxy.json").read_text())["panels"]
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"][0]
    assert datasource["url"] == "${PROMETHEUS_URL}"
    assert grafana["environment"]["PROMETHEUS_URL"] == "http://prometheus:9090"
    assert "prometheus" in grafana["depends_on"]
    # Prometheus loads the alert rules from grafana/ itself (mounted, never copied).
    prom = resolved["services"]["prometheus"]
    prom_mounts = {v["target"]: Path(v["source"]) for v in prom["volumes"] if v["type"] == "bind"}
    assert prom_mounts["/etc/prometheus/alerts.yml"] == ROOT / "grafana" / "prometheus" / "alerts.yml"


def test_prometheus_and_haproxy_accept_their_configs() -> None:
    base_images()
    docker = ROOT / "docker"
    out = podman(
        "run", "--rm", "--read-only", "--entrypoint", "promtool",
        "-v", f"{docker / 'prometheus' / 'prometheus.yml'}:/etc/prometheus/prometheus.yml:ro",
        "-v", f"{ROOT / 'grafana' / 'prometheus' / 'alerts.yml'}:/etc/prometheus/alerts.yml:ro",
        "docker.io/prom/prometheus:v2.53.2", "check", "config", "/etc/prometheus/prometheus.yml",
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout and "rules found" in out.stdout
    out = podman(
        "run", "--rm", "--read-only",
        "-v", f"{docker / 'haproxy' / 'haproxy.cfg'}:/usr/local/etc/haproxy/haproxy.cfg:ro",
        "docker.io/library/haproxy:3.0-bookworm", "haproxy", "-c", "-f", "/usr/local/etc/haproxy/haproxy.cfg",
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


# ----------------------------------------------------------------------------- the live stack


@pytest.fixture(scope="module")
def api() -> Iterator[ApiSocket]:
    sock = ApiSocket()
    try:
        yield sock
    finally:
        sock.stop()


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    try:
        yield gateway_image()
    finally:
        cleanup_images()


@pytest.fixture(scope="module")
def stack(api: ApiSocket, image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(api, "compose", image, [mock_override(tmp_path_factory.mktemp("compose"))])
    try:
        s.compose("up", "-d", "--wait", "--wait-timeout", "240", "--no-build", "mock", "gem-proxy", "redis", "prometheus")
        yield s
    finally:
        left = tear_down(s)
        assert left == {"containers": [], "volumes": [], "networks": []}, f"`compose down -v` left {left}"


def prometheus_query(stack: Stack, path: str, **params: str) -> dict:
    r = httpx.get(f"{stack.url('prometheus')}{path}", params=params, timeout=10, trust_env=False)
    r.raise_for_status()
    return r.json()["data"]


def test_stack_serves_https_and_the_console(stack: Stack, tmp_path: Path) -> None:
    with httpx.Client(timeout=10, trust_env=False) as http:
        assert http.get(f"{stack.url('admin')}/health/ready").status_code == 200
        console = http.get(f"{stack.url('admin')}/")
        assert console.status_code == 200 and "<html" in console.text.lower()
    # The certificate the gateway generated into its volume on first start.
    cert = tmp_path / "cert.pem"
    podman("cp", f"{stack.container('gem-proxy')}:/var/lib/gem-proxy/cert.pem", str(cert))
    with httpx.Client(timeout=10, trust_env=False, verify=ssl.create_default_context(cafile=cert)) as https:
        r = https.post(
            f"{stack.url('proxy', 'https')}/v1beta/models/{MODEL}:generateContent",
            json={"contents": [{"parts": [{"text": "through compose"}]}]},
        )
    assert r.status_code == 200, r.text
    assert "gem-proxy-mock" in r.text


def test_every_service_is_healthy(stack: Stack) -> None:
    ps = [json.loads(line) for line in stack.compose("ps", "--format", "json").stdout.splitlines() if line.strip()]
    states = {c["Service"]: c.get("Health") or c["State"] for c in ps}
    assert states == {"mock": "running", "gem-proxy": "healthy", "redis": "healthy", "prometheus": "healthy"}


def test_prometheus_scrapes_the_gateway_and_loads_the_alert_rules(stack: Stack) -> None:
    deadline = time.monotonic() + 90  # the first scrape comes within one scrape_interval (15 s)
    targets: list[dict] = []
    while time.monotonic() < deadline:
        targets = prometheus_query(stack, "/api/v1/targets")["activeTargets"]
        if any(t["labels"]["job"] == "gem-proxy" and t["health"] == "up" for t in targets):
            break
        time.sleep(1)
    gateway = [t for t in targets if t["labels"]["job"] == "gem-proxy"]
    assert [t["health"] for t in gateway] == ["up"], targets
    assert gateway[0]["labels"]["instance"] == "gem-proxy:9090"
    # Without the replicas profile there is no replica target at all (none always down).
    assert not [t for t in targets if t["labels"]["job"] == "gem-proxy-replicas"], targets
    groups = prometheus_query(stack, "/api/v1/rules")["groups"]
    rules = {r["name"] for g in groups for r in g["rules"]}
    assert {"GemProxyDown", "GemProxyHighErrorRate"} <= rules
    up = prometheus_query(stack, "/api/v1/query", query='up{job="gem-proxy"}')["result"]
    assert up and up[0]["value"][1] == "1"
