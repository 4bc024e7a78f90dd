"""Stream heartbeats with the real SDKs: a mock stream silent for 3 s between its two events,
`gemini.stream_heartbeat_seconds: 1` (set through the admin API's config PUT).

Bytes keep arriving during the silence, and google-genai (Python), @google/genai (Node) and the
OpenAI Python SDK return exactly the events the upstream sent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import httpx
import pytest
from google import genai
from google.genai import types
from openai import OpenAI

from conftest import ROOT, Mock, _stop, start_gateway
from helpers import CLIENT_TOKEN, MODEL

ADMIN_TOKEN = "e2e-heartbeat-admin-token-0123"
# Two events, 3 s of silence between them.
SILENT = {"x-mock-chunks": "2", "x-mock-chunk-delay-ms": "3000"}
SSE_PATH = f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
BODY = {"contents": [{"role": "user", "parts": [{"text": "Count to three."}]}]}
NODE_SCRIPT = ROOT / "tests" / "e2e" / "genai_stream.cjs"


@pytest.fixture(scope="module")
def hb_gateway(mock: Mock, tmp_path_factory: pytest.TempPathFactory):
    gw = start_gateway(
        tmp_path_factory.mktemp("heartbeat-gateway"),
        mock.url,
        extra=f'admin: {{ token: "{ADMIN_TOKEN}", config_watch_interval_seconds: 0 }}\n',
    )
    yield gw
    _stop(gw.proc)


def set_heartbeat(gw, seconds: int, style: str) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(trust_env=False, timeout=10, headers=auth) as http:
        r = http.get(f"{gw.admin_url}/api/config")
        r.raise_for_status()
        config = r.json()
        config["gemini"]["stream_heartbeat_seconds"] = seconds
        config["gemini"]["stream_heartbeat_style"] = style
        r = http.put(f"{gw.admin_url}/api/config", json=config, headers={"If-Match": r.headers["etag"]})
        assert r.status_code == 200, r.text


def raw_stream(base: str, path: str) -> list[tuple[float, bytes]]:
    """The body's pieces as they arrive, with the time since the request."""
    pieces = []
    with httpx.Client(trust_env=False, timeout=30) as http:
        t0 = time.monotonic()
        with http.stream("POST", base + path, json=BODY, headers={**SILENT, "x-goog-api-key": CLIENT_TOKEN, "accept-encoding": "identity"}) as r:
            assert r.status_code == 200
            for piece in r.iter_raw():
                pieces.append((time.monotonic() - t0, piece))
    return pieces


def heartbeats_sent(gw) -> float:
    text = httpx.get(f"{gw.admin_url}/metrics", trust_env=False, timeout=10).text
    for line in text.splitlines():
        if line.startswith("gem_proxy_stream_heartbeats_total"):
            return float(line.split()[-1])
    return 0.0  # the series appears with the first heartbeat


def genai_texts(base: str) -> list[str]:
    client = genai.Client(
        api_key=CLIENT_TOKEN,
        http_options=types.HttpOptions(base_url=base, api_version="v1beta", timeout=30_000, headers=SILENT),
    )
    try:
        return [c.text or "" for c in client.models.generate_content_stream(model=MODEL, contents="Count to three.")]
    finally:
        client.close()


def openai_texts(base: str) -> list[str]:
    client = OpenAI(api_key=CLIENT_TOKEN, base_url=base + "/v1beta/openai/", max_retries=0, timeout=30)
    try:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True, extra_headers=SILENT
        )
        return [c.choices[0].delta.content or "" for c in stream if c.choices]
    finally:
        client.close()


def node_texts(base: str) -> list[str]:
    if not shutil.which("node") or not (ROOT / "node_modules" / "@google" / "genai" / "package.json").exists():
        pytest.fail("node and @google/genai are needed: run scripts/setup.sh", pytrace=False)
    env = dict(os.environ, NODE_PATH=str(ROOT / "node_modules"))
    result = subprocess.run(
        ["node", str(NODE_SCRIPT), base, MODEL, json.dumps(SILENT)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_bytes_arrive_during_the_silence_and_the_events_are_the_upstreams(hb_gateway, mock: Mock):
    set_heartbeat(hb_gateway, 1, "blank_line")
    before = heartbeats_sent(hb_gateway)
    pieces = raw_stream(hb_gateway.url, SSE_PATH)
    direct = b"".join(p for _, p in raw_stream(mock.url, SSE_PATH))
    data = [(t, p) for t, p in pieces if p.strip()]
    beats = [(t, p) for t, p in pieces if not p.strip()]
    assert len(data) >= 2 and beats, pieces
    # The beats came between the two events, during the silence.
    assert all(data[0][0] < t < data[-1][0] for t, _ in beats), pieces
    assert all(p == b"\n" for _, p in beats)
    # Without the beats, the body is the upstream's, byte for byte.
    assert b"".join(p for _, p in data) == direct
    assert heartbeats_sent(hb_gateway) - before == len(beats)


def test_the_json_array_stream_gets_no_heartbeats(hb_gateway, mock: Mock):
    set_heartbeat(hb_gateway, 1, "blank_line")
    path = f"/v1beta/models/{MODEL}:streamGenerateContent"
    got = b"".join(p for _, p in raw_stream(hb_gateway.url, path))
    assert got == b"".join(p for _, p in raw_stream(mock.url, path))


@pytest.mark.parametrize("sdk", ["google-genai", "openai", "@google/genai"])
def test_sdks_return_exactly_the_upstreams_events_with_blank_line_heartbeats(hb_gateway, mock: Mock, sdk: str):
    set_heartbeat(hb_gateway, 1, "blank_line")
    read = {"google-genai": genai_texts, "openai": openai_texts, "@google/genai": node_texts}[sdk]
    before = heartbeats_sent(hb_gateway)
    got = read(hb_gateway.url)
    assert heartbeats_sent(hb_gateway) > before, "the silence was filled"
    assert got == read(mock.url)
    assert len(got) == 2


@pytest.mark.parametrize("sdk", ["openai", "@google/genai"])
def test_sdks_that_read_sse_comments_survive_comment_heartbeats(hb_gateway, mock: Mock, sdk: str):
    # google-genai (Python) does not: it reads `: keep-alive` as JSON and fails ("Failed to
    # parse response as JSON"), which is why blank lines are the default.
    set_heartbeat(hb_gateway, 1, "comment")
    read = {"openai": openai_texts, "@google/genai": node_texts}[sdk]
    before = heartbeats_sent(hb_gateway)
    got = read(hb_gateway.url)
    assert heartbeats_sent(hb_gateway) > before
    assert got == read(mock.url)
