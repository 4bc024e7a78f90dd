"""The container image (docker/Dockerfile), run for real with Podman.

The gateway container and the mock upstream (gem-proxy-mock, bind-mounted into a Debian
container) share a pod, so the gateway reaches the mock on the pod's loopback; the pod publishes
the proxy, admin and mock ports on free 127.0.0.1 ports of the host. The gateway runs with
`--read-only` and the image's own user, config and health check.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conftest import free_port
from helpers import MODEL, UPSTREAM_KEYS
from podman import FULL_IMAGE, RUN_ID, cleanup_images, gateway_image, host_binary, inspect, podman

MOCK_PORT_IN_POD = 8080
DEBIAN_IMAGE = "docker.io/library/debian:bookworm-slim"
GRACE_SECONDS = 20

# The full multi-stage build (GEM_PROXY_E2E_FULL_IMAGE=1) takes many minutes cold.
pytestmark = pytest.mark.timeout(3600 if FULL_IMAGE else 300)


@dataclass
class Pod:
    name: str
    gateway: str
    proxy_url: str
    admin_url: str
    mock_url: str
    cert: Path


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    try:
        yield gateway_image()
    finally:
        cleanup_images()


def start_pod(image: str, suffix: str, tmp: Path) -> Pod:
    name = f"{RUN_ID}-{suffix}"
    proxy, admin, mock = free_port(), free_port(), free_port()
    podman(
        "pod", "create", "--name", name,
        "-p", f"127.0.0.1:{proxy}:8443", "-p", f"127.0.0.1:{admin}:9090", "-p", f"127.0.0.1:{mock}:{MOCK_PORT_IN_POD}",
    )  # fmt: skip
    podman(
        "run", "-d", "--pod", name, "--name", f"{name}-mock", "--read-only",
        "-v", f"{host_binary('gem-proxy-mock')}:/usr/local/bin/gem-proxy-mock:ro",
        DEBIAN_IMAGE, "gem-proxy-mock", "--host", "0.0.0.0", "--port", str(MOCK_PORT_IN_POD),
    )  # fmt: skip
    gateway = f"{name}-gateway"
    podman(
        "run", "-d", "--pod", name, "--name", gateway, "--read-only",
        "-v", f"{name}-data:/var/lib/gem-proxy",
        "-e", f"GEMINI_API_KEY_1={UPSTREAM_KEYS[0]}", "-e", f"GEMINI_API_KEY_2={UPSTREAM_KEYS[1]}",
        "-e", f"GEM_PROXY__GEMINI__BASE_URL=http://127.0.0.1:{MOCK_PORT_IN_POD}",
        "-e", f"GEM_PROXY__SERVER__SHUTDOWN_GRACE_SECONDS={GRACE_SECONDS}",
        image,
    )  # fmt: skip
    pod = Pod(
        name=name,
        gateway=gateway,
        proxy_url=f"https://127.0.0.1:{proxy}",
        admin_url=f"http://127.0.0.1:{admin}",
        mock_url=f"http://127.0.0.1:{mock}",
        cert=tmp / "cert.pem",
    )
    wait_ready(pod)
    # The self-signed certificate the gateway generated in its data volume.
    podman("cp", f"{gateway}:/var/lib/gem-proxy/cert.pem", str(pod.cert))
    return pod


def wait_ready(pod: Pod) -> None:
    deadline_checks = 300
    last = "no answer"
    with httpx.Client(timeout=2, trust_env=False) as http:
        for _ in range(deadline_checks):
            state = inspect(pod.gateway)["State"]
            if state["Status"] != "running":
                logs = podman("logs", pod.gateway, check=False)
                pytest.fail(f"gateway container {state['Status']} (exit {state['ExitCode']}):\n{logs.stderr}{logs.stdout}")
            try:
                r = http.get(f"{pod.admin_url}/health/ready")
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code} {r.text[:200]}"
            except httpx.HTTPError as e:
                last = repr(e)
            threading.Event().wait(0.1)
    logs = podman("logs", pod.gateway, check=False)
    pytest.fail(f"gateway not ready (last: {last}):\n{logs.stderr}{logs.stdout}")


def remove_pod(pod: Pod) -> None:
    podman("pod", "rm", "--force", "--time", "2", pod.name, check=False)
    podman("volume", "rm", "--force", f"{pod.name}-data", check=False)


@pytest.fixture(scope="module")
def pod(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    p = start_pod(image, "main", tmp_path_factory.mktemp("pod"))
    try:
        yield p
    finally:
        remove_pod(p)


def test_image_is_configured_for_operators(image: str) -> None:
    info = inspect(image)
    config = info["Config"]
    assert config["User"] == "65532:65532"
    assert set(config["ExposedPorts"]) == {"8443/tcp", "9090/tcp"}
    assert "/var/lib/gem-proxy" in config["Volumes"]
    assert config["StopSignal"] == "SIGTERM"
    assert info["Healthcheck"]["Test"] == [
        "CMD", "/usr/local/bin/gem-proxy", "health", "--url", "http://127.0.0.1:9090/health/ready",
    ]  # fmt: skip
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "gem-proxy"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["GEM_PROXY_CONFIG"] == "/etc/gem-proxy/proxy.yaml"
    for key in ("SERVER__TLS__CERT_PATH", "SERVER__TLS__KEY_PATH", "SERVER__TLS__ACME__CACHE_DIR", "USAGE__PATH"):
        assert env[f"GEM_PROXY__{key}"].startswith("/var/lib/gem-proxy/"), key
    # No secret in the image: the example config takes them from the environment.
    assert not any(k.startswith("GEMINI_API_KEY") for k in env)
    history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    assert "AIza" not in history


def test_ready_and_serves_https_with_its_generated_certificate(pod: Pod) -> None:
    with httpx.Client(timeout=10, trust_env=False) as http:
        ready = http.get(f"{pod.admin_url}/health/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["usable_keys"] == 2
        health = http.get(f"{pod.admin_url}/health").json()
        assert health["tls"]["source"] == "self-signed"
    with httpx.Client(timeout=10, trust_env=False, verify=ssl.create_default_context(cafile=pod.cert)) as https:
        r = https.post(
            f"{pod.proxy_url}/v1beta/models/{MODEL}:generateContent",
            headers={"x-goog-api-key": "client-token"},
            json={"contents": [{"parts": [{"text": "hello from a container test"}]}]},
        )
    assert r.status_code == 200, r.text
    assert "gem-proxy-mock" in r.json()["candidates"][0]["content"]["parts"][0]["text"]
    seen = httpx.get(f"{pod.mock_url}/_mock/requests", trust_env=False).json()
    assert any(x.get("key") in UPSTREAM_KEYS for x in seen), seen


def test_runs_as_non_root_on_a_read_only_root_filesystem(pod: Pod) -> None:
    users = podman("top", pod.gateway, "user", "huser").stdout.split()
    assert users[2:] == ["65532", "65532"], users
    host_config = inspect(pod.gateway)["HostConfig"]
    assert host_config["ReadonlyRootfs"] is True
    # What it wrote went to the volume: the certificate and its key, the key owner-only.
    listing = podman(
        "run", "--rm", "--read-only", "-v", f"{pod.name}-data:/data:ro", DEBIAN_IMAGE,
        "stat", "-c", "%n %u %a", "/data/cert.pem", "/data/key.pem", "/data/usage.db",
    ).stdout.split("\n")  # fmt: skip
    assert "/data/cert.pem 65532" in listing[0], listing
    assert listing[1] == "/data/key.pem 65532 600", listing
    assert listing[2].startswith("/data/usage.db 65532"), listing  # the usage history


def test_the_images_healthcheck_passes(pod: Pod) -> None:
    out = podman("healthcheck", "run", pod.gateway, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert inspect(pod.gateway)["State"]["Health"]["Status"] == "healthy"


def test_sigterm_lets_a_running_stream_finish_then_exits_cleanly(
    image: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    p = start_pod(image, "sigterm", tmp_path_factory.mktemp("sigterm"))
    try:
        mock = httpx.Client(base_url=p.mock_url, timeout=10, trust_env=False)
        mock.post("/_mock/hold-streams", json={"on": True}).raise_for_status()
        events: list[str] = []
        failure: list[BaseException] = []

        def stream() -> None:
            try:
                with httpx.Client(timeout=60, trust_env=False, verify=ssl.create_default_context(cafile=p.cert)) as https:
                    with https.stream(
                        "POST",
                        f"{p.proxy_url}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
                        headers={"x-goog-api-key": "client-token", "x-mock-chunks": "3"},
                        json={"contents": [{"parts": [{"text": "a long answer"}]}]},
                    ) as r:
                        assert r.status_code == 200
                        events.extend(line for line in r.iter_lines() if line.startswith("data:"))
            except BaseException as e:  # reported by the test thread
                failure.append(e)

        client = threading.Thread(target=stream)
        client.start()
        for _ in range(300):  # until the upstream holds the stream open
            if any(":streamGenerateContent" in x["path"] for x in mock.get("/_mock/requests").json()):
                break
            threading.Event().wait(0.05)
        else:
            pytest.fail("the stream never reached the mock")

        podman("kill", "--signal", "TERM", p.gateway)
        # Shutdown waits for the stream: release it, and it finishes whole.
        mock.post("/_mock/hold-streams", json={"on": False}).raise_for_status()
        client.join(timeout=60)
        assert not failure, failure
        assert len(events) == 3, events
        # It exits by itself, within the grace period (`podman wait` would hang otherwise).
        code = podman("wait", p.gateway, timeout=GRACE_SECONDS + 10).stdout.strip()
        assert code == "0", code
        logs = podman("logs", p.gateway)
        assert "stopped" in logs.stdout + logs.stderr
    finally:
        remove_pod(p)
