"""Egress proxies per key with real proxies (pproxy) and the real SDK.

Two pproxy servers with a user and password: an HTTP proxy (CONNECT tunnels) for key1 and a
SOCKS5 proxy for key2. Each proxy carries exactly its key's connections; one stopped, its key
rests with `proxy_unreachable` and the SDK keeps getting answers through the other.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from google import genai
from google.genai import types

from conftest import ROOT, Mock, _stop, free_port, start_gateway
from helpers import CLIENT_TOKEN, MODEL, UPSTREAM_KEYS

USER, PASSWORD = "egress-user", "egress-pass-0123"
ADMIN_TOKEN = "e2e-egress-admin-token-0123"


class Pproxy:
    def __init__(self, scheme: str, tmp: Path) -> None:
        self.port = free_port()
        self.log = tmp / f"pproxy-{scheme}.log"
        pproxy = Path(sys.executable).with_name("pproxy")
        self.proc = subprocess.Popen(
            [str(pproxy), "-l", f"{scheme}://127.0.0.1:{self.port}#{USER}:{PASSWORD}", "-v"],
            stdout=open(self.log, "wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 20
        while "Serving on" not in self.log.read_text(errors="replace"):
            assert self.proc.poll() is None, self.log.read_text(errors="replace")
            assert time.monotonic() < deadline, "pproxy did not start"
            time.sleep(0.05)
        self.scheme = scheme

    def url(self) -> str:
        scheme = "socks5h" if self.scheme == "socks5" else self.scheme
        return f"{scheme}://{USER}:{PASSWORD}@127.0.0.1:{self.port}"

    def tunnels_to(self, port: int) -> int:
        """Connections the proxy opened to 127.0.0.1:`port` (from its verbose log)."""
        return sum(1 for line in self.log.read_text(errors="replace").splitlines() if f"-> 127.0.0.1:{port}" in line)

    def stop(self) -> None:
        _stop(self.proc)


@pytest.fixture
def proxies(tmp_path: Path):
    http, socks = Pproxy("http", tmp_path), Pproxy("socks5", tmp_path)
    yield http, socks
    http.stop()
    socks.stop()


def _key_states(gw) -> dict[str, dict]:
    with httpx.Client(trust_env=False, timeout=10) as c:
        return {k["id"]: k for k in c.get(f"{gw.admin_url}/health").json()["key_states"]}


def test_each_key_leaves_through_its_proxy_and_a_stopped_one_rests_its_key(
    mock: Mock, proxies, tmp_path_factory: pytest.TempPathFactory
) -> None:
    http, socks = proxies
    mock_port = int(mock.url.rsplit(":", 1)[1])
    gw = start_gateway(
        tmp_path_factory.mktemp("egress-gateway"),
        mock.url,
        extra=f'admin: {{ token: "{ADMIN_TOKEN}", config_watch_interval_seconds: 0 }}\n',
    )
    # The proxies are set through the admin API; it shows them masked afterwards.
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(trust_env=False, timeout=10, headers=auth) as admin:
        r = admin.get(f"{gw.admin_url}/api/config")
        r.raise_for_status()
        doc = r.json()
        doc["gemini"]["api_keys"][0]["proxy"] = http.url()
        doc["gemini"]["api_keys"][1]["proxy"] = socks.url()
        r = admin.put(f"{gw.admin_url}/api/config", json=doc, headers={"If-Match": r.headers["etag"]})
        assert r.status_code == 200, r.text
        shown = admin.get(f"{gw.admin_url}/api/config").text
        assert PASSWORD not in shown and USER not in shown
    client = genai.Client(
        api_key=CLIENT_TOKEN,
        http_options=types.HttpOptions(base_url=gw.url, api_version="v1beta", timeout=30_000),
    )
    try:
        mock.reset()
        for _ in range(8):
            assert client.models.generate_content(model=MODEL, contents="Say hello.").text
        seen = {r["key"] for r in mock.requests()}
        assert seen == set(UPSTREAM_KEYS), "both keys served"
        assert http.tunnels_to(mock_port) >= 1 and socks.tunnels_to(mock_port) >= 1

        states = _key_states(gw)
        assert states["key1"]["proxy"] == f"http://127.0.0.1:{http.port}"
        assert states["key2"]["proxy"] == f"socks5h://127.0.0.1:{socks.port}"

        # The SOCKS proxy goes down: key2 rests, the SDK keeps getting answers through key1.
        socks.stop()
        mock.reset()
        for _ in range(8):
            assert client.models.generate_content(model=MODEL, contents="Say hello.").text
        assert {r["key"] for r in mock.requests()} == {UPSTREAM_KEYS[0]}
        key2 = _key_states(gw)["key2"]
        assert key2["state"] == "cooling", key2
        assert [r["reason"] for r in key2["resting"]] == ["proxy_unreachable"], key2
        assert PASSWORD not in gw.stderr(), "the proxy password never reaches the log"
    finally:
        client.close()
        _stop(gw.proc)
