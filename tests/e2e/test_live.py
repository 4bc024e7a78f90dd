"""The Live API (WebSocket) through the gateway with Google's own SDKs, as a user runs it.

The gateway runs with auth ON and TLS ON (google-genai 3.x always dials wss:// and sends the key
in x-goog-api-key): clients use a gem-proxy token as their API key and trust the gateway's
self-signed certificate (SSL_CERT_FILE for Python, NODE_EXTRA_CA_CERTS for Node). The mock
upstream serves the Live endpoint; every session it saw must carry a pool key, never the token.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest
from google import genai
from google.genai import types

from conftest import ROOT, Gateway, Mock, _binary, _stop, start_gateway
from helpers import UPSTREAM_KEYS, header

SECRET = "e2e-live-secret-0123456789abcdef012345"
LIVE_MODEL = "gemini-live-2.5-flash-preview"
NODE_SCRIPT = ROOT / "tests" / "e2e" / "genai_live.cjs"


@pytest.fixture(scope="module")
def live_gateway(mock: Mock, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("live-gateway")
    cert, key = tmp / "tls" / "cert.pem", tmp / "tls" / "key.pem"
    env = {
        "GEM_PROXY__SERVER__TLS__ENABLED": "true",
        "GEM_PROXY__SERVER__TLS__CERT_PATH": str(cert),
        "GEM_PROXY__SERVER__TLS__KEY_PATH": str(key),
        "GEM_PROXY__AUTH__ENABLED": "true",
        "GEM_PROXY__AUTH__JWT_SECRET": SECRET,
    }
    gw = start_gateway(tmp, mock.url, env=env)
    gw.url = gw.url.replace("http://", "https://").replace("127.0.0.1", "localhost")
    try:
        yield gw, cert, env
    finally:
        _stop(gw.proc)


def client_token(live_gateway: tuple[Gateway, Path, dict[str, str]], sub: str) -> str:
    gw, _, env = live_gateway
    out = subprocess.run(
        [str(_binary("GEM_PROXY_BIN", "gem-proxy")), "token", "--config", str(gw.config), "--sub", sub,
         "--ttl", "1h", "--live-sessions", "4"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, env={**os.environ, **env},
    )
    assert out.returncode == 0, out.stderr
    assert "live_sessions 4" in out.stderr, out.stderr
    return out.stdout.strip()


@pytest.fixture
def trust(live_gateway: tuple[Gateway, Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(live_gateway[1]))


def sdk(url: str, api_key: str, version: str = "v1beta") -> genai.Client:
    return genai.Client(api_key=api_key, http_options=types.HttpOptions(base_url=url, api_version=version))


def live_sessions_seen(mock: Mock) -> list[dict[str, Any]]:
    return [r for r in mock.requests() if r["path"].startswith("/ws/")]


def assert_pool_key_only(reqs: list[dict[str, Any]], token: str) -> None:
    assert reqs, "the upstream saw no Live session"
    for r in reqs:
        assert r["key"] in UPSTREAM_KEYS, f"{r['path']}: upstream saw key {r['key']!r}"
        assert header(r, "authorization") == [], r["headers"]
        assert all(token not in v for _, v in r["headers"]), r["headers"]
        assert token not in (r.get("query") or "")


async def text_turn(client: genai.Client, text: str, model: str = LIVE_MODEL) -> list[str]:
    config = types.LiveConnectConfig(response_modalities=[types.Modality.TEXT])
    texts: list[str] = []
    async with client.aio.live.connect(model=model, config=config) as session:
        await session.send_client_content(
            turns=types.Content(role="user", parts=[types.Part(text=text)]), turn_complete=True
        )
        async for msg in session.receive():
            if msg.text:
                texts.append(msg.text)
    return texts


def test_a_python_sdk_text_session(live_gateway, trust, upstream: Mock):
    gw = live_gateway[0]
    token = client_token(live_gateway, "py-live")
    client = sdk(gw.url, token)
    texts = asyncio.run(asyncio.wait_for(text_turn(client, "Hello, Live"), 30))
    assert "".join(texts) == "Echo: Hello, Live"
    seen = live_sessions_seen(upstream)
    assert len(seen) == 1
    assert seen[0]["path"].endswith("v1beta.GenerativeService.BidiGenerateContent")
    assert_pool_key_only(seen, token)


def test_an_audio_round_trip(live_gateway, trust, upstream: Mock):
    gw = live_gateway[0]
    token = client_token(live_gateway, "py-audio")
    pcm = bytes(range(256)) * 64  # 16 KiB of 16-bit PCM, every byte value

    client = sdk(gw.url, token)

    async def run() -> bytes:
        config = types.LiveConnectConfig(response_modalities=[types.Modality.AUDIO])
        heard = b""
        async with client.aio.live.connect(model=LIVE_MODEL, config=config) as session:
            await session.send_realtime_input(audio=types.Blob(data=pcm, mime_type="audio/pcm;rate=16000"))
            async for msg in session.receive():
                if msg.data:
                    heard += msg.data
        return heard

    assert asyncio.run(asyncio.wait_for(run(), 30)) == pcm, "the audio came back byte for byte"
    assert_pool_key_only(live_sessions_seen(upstream), token)


def test_an_ephemeral_token_session_reaches_the_key_that_minted_it(live_gateway, trust, upstream: Mock):
    gw = live_gateway[0]
    token = client_token(live_gateway, "py-ephemeral")
    minter = sdk(gw.url, token, "v1alpha")  # kept referenced: a collected client closes its connection
    minted = minter.auth_tokens.create(config=types.CreateAuthTokenConfig(uses=1))
    assert minted.name and minted.name.startswith("auth_tokens/"), minted
    mint_key = next(r["key"] for r in upstream.requests() if r["path"].endswith("/auth_tokens"))
    assert mint_key in UPSTREAM_KEYS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SDK warns that ephemeral tokens are experimental
        ephemeral = sdk(gw.url, minted.name, "v1alpha")
        texts = asyncio.run(asyncio.wait_for(text_turn(ephemeral, "with a short-lived token"), 30))
    assert "".join(texts) == "Echo: with a short-lived token"
    seen = live_sessions_seen(upstream)
    assert len(seen) == 1
    assert seen[0]["path"].endswith("BidiGenerateContentConstrained")
    assert seen[0]["key"] == mint_key, "the session went to the key that minted the token"
    assert_pool_key_only(seen, token)


def test_a_js_sdk_text_session(live_gateway, upstream: Mock):
    gw, cert, _ = live_gateway
    if not shutil.which("node") or not (ROOT / "node_modules" / "@google" / "genai" / "package.json").exists():
        pytest.fail("node and @google/genai are needed: run scripts/setup.sh", pytrace=False)
    token = client_token(live_gateway, "js-live")
    env = dict(os.environ, NODE_PATH=str(ROOT / "node_modules"), NODE_EXTRA_CA_CERTS=str(cert))
    result = subprocess.run(
        ["node", str(NODE_SCRIPT), gw.url, token, LIVE_MODEL, "Hello from Node"],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "".join(json.loads(result.stdout)["texts"]) == "Echo: Hello from Node"
    assert_pool_key_only(live_sessions_seen(upstream), token)


def test_a_key_resting_for_the_sessions_model_is_not_picked(live_gateway, trust, upstream: Mock):
    """The key is picked once the SDK's setup names the model: a key Google rested for that model
    (a 429 with RetryInfo on an HTTP request for it) carries no session on it."""
    gw = live_gateway[0]
    token = client_token(live_gateway, "py-rested")
    client = sdk(gw.url, token)
    model = "gemini-2.0-flash-live-001"  # not the module's other sessions' model
    failing = UPSTREAM_KEYS[0]

    def key_failure(failure: str | None) -> None:
        body = {"key": failing, "failure": failure, "retry_delay_seconds": 3600}
        upstream.http.post(f"{upstream.url}/_mock/key-failure", json=body).raise_for_status()

    key_failure("429")
    try:
        for _ in range(2):  # round robin reaches the failing key: it rests for the model
            assert client.models.generate_content(model=model, contents="hi").text
    finally:
        key_failure(None)
    assert any(r["key"] == failing for r in upstream.requests()), "the 429 came from the failing key"
    upstream.reset()

    for i in range(3):
        texts = asyncio.run(asyncio.wait_for(text_turn(client, f"session {i}", model), 30))
        assert "".join(texts) == f"Echo: session {i}"
    seen = live_sessions_seen(upstream)
    assert [r["key"] for r in seen] == [UPSTREAM_KEYS[1]] * 3, "every session avoided the resting key"
    assert_pool_key_only(seen, token)
