"""Vertex AI members behind the gateway, driven by google-genai exactly as a Gemini Developer API
client uses it (unchanged, pointed at the gateway).

The mock serves Vertex AI's paths and a token endpoint that verifies the service account's RS256
assertions against its public key and issues tokens that live two seconds, so the gateway's
background refresh happens during the test. The test service account's key pair is made here
with openssl, per run.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import types

from conftest import Mock, _start_mock, _stop, start_gateway
from helpers import CLIENT_TOKEN, MODEL, UPSTREAM_KEYS, header

PROJECT = "test-project"
LOCATION = "europe-west4"
EXPRESS_KEY = "AQ.TESTEXPRESSKEY"
TOKEN_LIFETIME_SECONDS = 2
WAIT_SECONDS = 20.0


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fresh RSA key pair for the test service account: (private PKCS#8 PEM, public PEM)."""
    d = tmp_path_factory.mktemp("service-account")
    private, public = d / "private.pem", d / "public.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(private)],
        check=True,
        capture_output=True,
    )
    subprocess.run(["openssl", "pkey", "-in", str(private), "-pubout", "-out", str(public)], check=True, capture_output=True)
    return private, public


@pytest.fixture(scope="module")
def vertex_mock(key_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    _, public = key_pair
    m = _start_mock(
        tmp_path_factory.mktemp("vertex-mock"),
        ("--vertex-public-key", str(public), "--vertex-token-lifetime-seconds", str(TOKEN_LIFETIME_SECONDS)),
    )
    try:
        yield m
    finally:
        m.http.close()
        _stop(m.proc)


def _config(port: int, admin_port: int, upstream: str, members: str) -> str:
    return f"""\
server: {{ host: "127.0.0.1", port: {port}, workers: 2, tls: {{ enabled: false }} }}
gemini:
  base_url: "{upstream}"
  timeout_seconds: 30
  api_keys:
{members}
auth: {{ enabled: false, jwt_secret: "", rate_limit_per_minute: 0 }}
metrics: {{ enabled: true, prometheus_port: {admin_port} }}
log: {{ format: "text" }}
"""


def _gateway(tmp: Path, mock: Mock, members: str):
    return start_gateway(tmp, mock.url, config_text=lambda port, admin: _config(port, admin, mock.url, members))


def _client(url: str) -> genai.Client:
    return genai.Client(
        api_key=CLIENT_TOKEN,
        http_options=types.HttpOptions(base_url=url, api_version="v1beta", timeout=30_000),
    )


def _member(health: dict[str, Any], member: str) -> dict[str, Any]:
    return next(k for k in health["key_states"] if k["id"] == member)


def _health(gw) -> dict[str, Any]:
    return httpx.get(f"{gw.admin_url}/health", timeout=5, trust_env=False).json()


def _wait_for(what: str, check):
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _tokens(mock: Mock) -> list[str]:
    r = mock.http.get(f"{mock.url}/_mock/vertex-tokens")
    r.raise_for_status()
    return r.json()


def _no_client_credential(reqs: list[dict[str, Any]]) -> None:
    for r in reqs:
        assert not header(r, "x-goog-api-key"), f"{r['path']}: an API key reached Vertex"
        for k, v in r.get("headers", []):
            assert CLIENT_TOKEN not in v, f"{r['path']}: the client's credential leaked in {k}"
        assert CLIENT_TOKEN not in (r.get("query") or "")


@pytest.fixture(scope="module")
def service_account_gateway(vertex_mock: Mock, key_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    private, _ = key_pair
    tmp = tmp_path_factory.mktemp("vertex-gateway")
    sa = tmp / "sa.json"
    sa.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": PROJECT,
                "private_key_id": "test-key",
                "private_key": private.read_text(),
                "client_email": "gateway@test-project.iam.gserviceaccount.com",
                "token_uri": f"{vertex_mock.url}/token",
            }
        )
    )
    members = f"""\
    - {{ id: "studio", key: "{UPSTREAM_KEYS[0]}", weight: 1 }}
    - id: "vertex-eu"
      backend: vertex
      weight: 1
      vertex: {{ project: "{PROJECT}", location: "{LOCATION}", credentials_file: "{sa}", base_url: "{vertex_mock.url}" }}
"""
    gw = _gateway(tmp, vertex_mock, members)
    try:
        yield gw
    finally:
        _stop(gw.proc)


def test_google_genai_through_a_pool_of_an_ai_studio_key_and_a_service_account(
    service_account_gateway, vertex_mock: Mock
):
    gw = service_account_gateway
    _wait_for("the first token", lambda: _member(_health(gw), "vertex-eu")["vertex"]["token"]["ready"])
    vertex_mock.reset()
    client = _client(gw.url)
    try:
        for _ in range(2):
            resp = client.models.generate_content(model=MODEL, contents="Say hello in one word.")
            assert resp.text and resp.usage_metadata and resp.usage_metadata.total_token_count
        for _ in range(2):
            chunks = list(client.models.generate_content_stream(model=MODEL, contents="Count to three."))
            assert len(chunks) > 1 and "".join(c.text or "" for c in chunks)
        for _ in range(2):
            assert client.models.count_tokens(model=MODEL, contents="How many tokens?").total_tokens
    finally:
        client.close()

    reqs = [r for r in vertex_mock.requests() if r["path"] != "/token"]
    kinds = ["vertex" if r["path"].startswith("/v1/projects/") else "studio" for r in reqs]
    assert kinds == ["studio", "vertex"] * 3, kinds
    vertex = [r for r in reqs if r["path"].startswith("/v1/projects/")]
    prefix = f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/{MODEL}"
    assert [r["path"] for r in vertex] == [
        f"{prefix}:generateContent",
        f"{prefix}:streamGenerateContent",
        f"{prefix}:countTokens",
    ]
    assert "alt=sse" in (vertex[1]["query"] or "")
    issued = _tokens(vertex_mock)
    for r in vertex:
        auth = header(r, "authorization")
        assert len(auth) == 1 and auth[0].removeprefix("Bearer ") in issued, auth
    _no_client_credential(vertex)
    studio = [r for r in reqs if not r["path"].startswith("/v1/projects/")]
    assert all(r["key"] == UPSTREAM_KEYS[0] for r in studio)


def test_the_two_second_token_is_refreshed_in_the_background(service_account_gateway, vertex_mock: Mock):
    gw = service_account_gateway
    _wait_for("the first token", lambda: _member(_health(gw), "vertex-eu")["vertex"]["token"]["ready"])
    first = len(_tokens(vertex_mock))
    vertex_mock.reset()
    client = _client(gw.url)
    used: set[str] = set()
    try:
        # Requests keep flowing while tokens come and go: every one is answered, and the mock
        # (which refuses an expired token with 401) never takes the member out of rotation.
        def two_more_tokens() -> bool:
            assert client.models.generate_content(model=MODEL, contents="hi").text
            for r in vertex_mock.requests():
                used.update(a.removeprefix("Bearer ") for a in header(r, "authorization"))
            return len(_tokens(vertex_mock)) >= first + 2 and len(used) >= 2

        _wait_for("two refreshes", two_more_tokens)
    finally:
        client.close()
    member = _member(_health(gw), "vertex-eu")
    assert member["state"] == "active", member
    assert member["vertex"]["token"]["ready"] and "error" not in member["vertex"]["token"], member
    assert used <= set(_tokens(vertex_mock))
    # Only the gateway's refresh task called the token endpoint: no request asked for a token.
    token_calls = [r for r in vertex_mock.requests() if r["path"] == "/token"]
    assert all(not header(r, "authorization") for r in token_calls)


def test_google_genai_through_an_express_mode_member(vertex_mock: Mock, tmp_path: Path):
    members = f"""\
    - id: "vertex-express"
      backend: vertex_express
      key: "{EXPRESS_KEY}"
      vertex: {{ base_url: "{vertex_mock.url}" }}
"""
    gw = _gateway(tmp_path, vertex_mock, members)
    vertex_mock.reset()
    client = _client(gw.url)
    try:
        assert client.models.generate_content(model=MODEL, contents="Say hello.").text
        assert len(list(client.models.generate_content_stream(model=MODEL, contents="Count."))) > 1
        assert client.models.count_tokens(model=MODEL, contents="How many?").total_tokens
    finally:
        client.close()
        _stop(gw.proc)
    reqs = vertex_mock.requests()
    prefix = f"/v1/publishers/google/models/{MODEL}"
    assert [r["path"] for r in reqs] == [
        f"{prefix}:generateContent",
        f"{prefix}:streamGenerateContent",
        f"{prefix}:countTokens",
    ]
    for r in reqs:
        assert f"key={EXPRESS_KEY}" in (r["query"] or "").split("&"), r["query"]
        assert not header(r, "authorization")
    _no_client_credential(reqs)


def test_metadata_server_credentials(vertex_mock: Mock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`credentials: metadata` (GKE, Compute Engine): tokens from the machine's metadata server,
    found where Google's libraries look (GCE_METADATA_HOST)."""
    monkeypatch.setenv("GCE_METADATA_HOST", vertex_mock.url.removeprefix("http://"))
    members = f"""\
    - id: "vertex-gke"
      backend: vertex
      vertex: {{ project: "{PROJECT}", location: "global", credentials: metadata, base_url: "{vertex_mock.url}" }}
"""
    vertex_mock.reset()
    gw = _gateway(tmp_path, vertex_mock, members)
    client = _client(gw.url)
    try:
        _wait_for("the first token", lambda: _member(_health(gw), "vertex-gke")["vertex"]["token"]["ready"])
        assert client.models.generate_content(model=MODEL, contents="Say hello.").text
    finally:
        client.close()
        _stop(gw.proc)
    reqs = vertex_mock.requests()
    fetches = [r for r in reqs if r["path"].startswith("/computeMetadata/")]
    assert fetches and all(header(r, "metadata-flavor") == ["Google"] for r in fetches)
    (call,) = [r for r in reqs if r["path"].startswith("/v1/")]
    assert call["path"] == f"/v1/projects/{PROJECT}/locations/global/publishers/google/models/{MODEL}:generateContent"
    assert header(call, "authorization")[0].removeprefix("Bearer ") in _tokens(vertex_mock)
    _no_client_credential([call])


def test_google_genai_embeddings_through_vertex_predict(service_account_gateway, vertex_mock: Mock):
    """google-genai embeds with batchEmbedContents on the Developer API; a Vertex member serves
    it with :predict, answered in the shape the SDK reads."""
    gw = service_account_gateway
    _wait_for("the first token", lambda: _member(_health(gw), "vertex-eu")["vertex"]["token"]["ready"])
    vertex_mock.reset()
    client = _client(gw.url)
    try:
        for _ in range(2):
            resp = client.models.embed_content(model="text-embedding-005", contents=["one", "two"])
            assert resp.embeddings and len(resp.embeddings) == 2
            assert all(e.values for e in resp.embeddings)
    finally:
        client.close()
    paths = [r["path"] for r in vertex_mock.requests() if r["path"] != "/token"]
    predict = f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/text-embedding-005:predict"
    assert sorted(paths) == sorted(["/v1beta/models/text-embedding-005:batchEmbedContents", predict]), paths
