"""`gem-proxy health --url URL`: the probe a container HEALTHCHECK runs (no curl in the image)."""

from __future__ import annotations

import subprocess

from conftest import _binary, free_port


def health(url: str) -> subprocess.CompletedProcess[str]:
    binary = _binary("GEM_PROXY_BIN", "gem-proxy")
    # No config file anywhere near: the probe must not need one.
    return subprocess.run(
        [str(binary), "health", "--url", url, "--timeout-seconds", "5"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "GEM_PROXY_CONFIG": "/nonexistent/proxy.yaml"},
    )


def test_ready_gateway_passes(gateway) -> None:
    out = health(f"{gateway.admin_url}/health/ready")
    assert out.returncode == 0, out.stderr
    assert "200" in out.stdout


def test_non_2xx_answer_fails_with_the_status(gateway) -> None:
    # The admin API without a credential: 401.
    out = health(f"{gateway.admin_url}/api/config")
    assert out.returncode != 0
    assert "HTTP 401" in out.stderr, out.stderr


def test_nothing_listening_fails_saying_so() -> None:
    out = health(f"http://127.0.0.1:{free_port()}/health/ready")
    assert out.returncode != 0
    assert "refused" in out.stderr.lower(), out.stderr


def test_unusable_url_fails_without_a_request() -> None:
    out = health("ftp://example.com/health")
    assert out.returncode != 0
    assert "http://" in out.stderr, out.stderr
