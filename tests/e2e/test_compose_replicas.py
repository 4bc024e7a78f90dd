"""The `replicas` profile of docker/compose.yaml, live: three gateways on one Redis behind HAProxy.

Shared limits need the gateway's Redis state backend (`state.backend: redis`). The test asks
the image first (`gem-proxy check-config` with GEM_PROXY__STATE__BACKEND=redis): a binary that
refuses the `state` section runs the profile without shared state (balancing, health checks and
scraping are still checked) and the shared-limit test is skipped saying why.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from compose_stack import ApiSocket, Stack, make_stack, mock_override, tear_down
from helpers import MODEL
from podman import FULL_IMAGE, cleanup_images, gateway_image, podman

CLIENT_RPM = 30
REQUESTS = 3 * CLIENT_RPM
# README, "Overshoot bound": in a minute at most limit + replicas x (max_block + 1), with blocks
# of at most limit / (2 x replicas).
SHARED_BOUND = CLIENT_RPM + 3 * (CLIENT_RPM // 6 + 1)

# The full multi-stage build (GEM_PROXY_E2E_FULL_IMAGE=1) takes many minutes cold.
pytestmark = pytest.mark.timeout(3600 if FULL_IMAGE else 300)


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    try:
        yield gateway_image()
    finally:
        cleanup_images()


@pytest.fixture(scope="module")
def redis_state(image: str) -> str | None:
    """None when the image's gateway accepts `state.backend: redis`, else its refusal."""
    out = podman(
        "run", "--rm", "--no-healthcheck", "--read-only",
        "-e", "GEMINI_API_KEY_1=k", "-e", "GEMINI_API_KEY_2=k",
        "-e", "GEM_PROXY__STATE__BACKEND=redis", "-e", "GEM_PROXY__STATE__REDIS__URL=redis://redis:6379",
        image, "check-config",
        check=False,
    )  # fmt: skip
    return None if out.returncode == 0 else (out.stderr.strip() or out.stdout.strip())


@pytest.fixture(scope="module")
def api() -> Iterator[ApiSocket]:
    sock = ApiSocket()
    try:
        yield sock
    finally:
        sock.stop()


@pytest.fixture(scope="module")
def replicas(
    api: ApiSocket, image: str, redis_state: str | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("replicas")
    files = [mock_override(tmp)]
    limits = tmp / "compose.limits.yaml"
    lines = ["services:"]
    for name in ("gem-proxy", "gem-proxy-2", "gem-proxy-3"):
        lines += [f"  {name}:", "    environment:", f"      GEM_PROXY__AUTH__RATE_LIMIT_PER_MINUTE: '{CLIENT_RPM}'"]
        if redis_state is None and name == "gem-proxy":
            lines += ["      GEM_PROXY__STATE__BACKEND: redis", "      GEM_PROXY__STATE__REDIS__URL: redis://redis:6379"]
        if redis_state is not None and name != "gem-proxy":
            lines += ["      GEM_PROXY__STATE__BACKEND: !reset null", "      GEM_PROXY__STATE__REDIS__URL: !reset null"]
    limits.write_text("\n".join(lines) + "\n")
    files.append(limits)
    s = make_stack(api, "replicas", image, files, profiles=["replicas"])
    try:
        s.compose(
            "up", "-d", "--wait", "--wait-timeout", "240", "--no-build",
            "mock", "redis", "gem-proxy", "gem-proxy-2", "gem-proxy-3", "lb", "prometheus",
        )  # fmt: skip
        yield s
    finally:
        left = tear_down(s)
        assert left == {"containers": [], "volumes": [], "networks": []}, f"`compose down -v` left {left}"


def through_lb(stack: Stack, cert: Path, n: int) -> list[int]:
    codes = []
    ctx = ssl.create_default_context(cafile=cert)
    ctx.check_hostname = False  # each gateway has its own self-signed certificate
    ctx.verify_mode = ssl.CERT_NONE
    for i in range(n):
        # A new connection each time: HAProxy balances connections. A generous time-out: on a
        # loaded 2-core machine a request through HAProxy, a gateway and the mock in containers
        # has been seen to take over 10 s; the test is about where requests go, not how fast.
        with httpx.Client(timeout=60, trust_env=False, verify=ctx) as https:
            try:
                r = https.post(
                    f"{stack.url('lb', 'https')}/v1beta/models/{MODEL}:generateContent",
                    json={"contents": [{"parts": [{"text": f"request {i}"}]}]},
                )
            except httpx.TransportError as e:
                raise AssertionError(f"request {i} through the balancer failed: {e!r}\n{stack.container_logs()}") from e
            codes.append(r.status_code)
    return codes


def test_prometheus_finds_all_three_gateways(replicas: Stack) -> None:
    deadline = time.monotonic() + 90
    up: dict[str, str] = {}
    while time.monotonic() < deadline:
        r = httpx.get(f"{replicas.url('prometheus')}/api/v1/targets", timeout=10, trust_env=False)
        up = {t["labels"]["instance"]: t["health"] for t in r.json()["data"]["activeTargets"]}
        if len(up) == 3 and set(up.values()) == {"up"}:
            break
        time.sleep(1)
    assert up == {"gem-proxy:9090": "up", "gem-proxy-2:9090": "up", "gem-proxy-3:9090": "up"}


def test_the_balancer_spreads_requests_over_the_gateways(replicas: Stack, tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    podman("cp", f"{replicas.container('gem-proxy')}:/var/lib/gem-proxy/cert.pem", str(cert))
    codes = through_lb(replicas, cert, 3)
    assert codes[0] == 200, codes
    served = {}
    for name in ("gem-proxy", "gem-proxy-2", "gem-proxy-3"):
        logs = podman("logs", replicas.container(name))
        served[name] = (logs.stdout + logs.stderr).count("generateContent")
    assert all(n >= 1 for n in served.values()), served


def test_the_replicas_share_client_limits_through_redis(
    replicas: Stack, redis_state: str | None, tmp_path: Path
) -> None:
    if redis_state is not None:
        pytest.skip(f"this gem-proxy has no Redis state backend yet (check-config: {redis_state.splitlines()[-1]})")
    cert = tmp_path / "cert.pem"
    podman("cp", f"{replicas.container('gem-proxy')}:/var/lib/gem-proxy/cert.pem", str(cert))
    health = httpx.get(f"{replicas.url('admin')}/health", timeout=5, trust_env=False).json()
    assert health.get("state", {}).get("backend") == "redis", health.get("state")
    assert health["state"].get("connected") is True, health["state"]
    codes = through_lb(replicas, cert, REQUESTS)
    # Alone, each gateway would let CLIENT_RPM through: REQUESTS in all. Shared, the three
    # together admit the limit once (plus the documented overshoot of leases in flight).
    assert CLIENT_RPM // 2 <= codes.count(200) <= SHARED_BOUND, codes
    assert codes.count(429) >= REQUESTS - SHARED_BOUND, codes
