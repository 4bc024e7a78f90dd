"""The gateway over HTTPS with Google's own SDK (google-genai), as a user runs it.

The gateway generates its self-signed certificate on start (TLS switched on through the
environment, GEM_PROXY__SERVER__TLS__*, as an operator could). Clients are given that
certificate as their CA: through SSL_CERT_FILE, which google-genai reads when it builds its
client, or through an explicit ssl context in `client_args`. A client that is not given it must
refuse the connection.
"""

from __future__ import annotations

import ssl
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import types
from openai import OpenAI

from conftest import Gateway, Mock, _stop, start_gateway
from helpers import CLIENT_TOKEN, MODEL, assert_clean_upstream


@pytest.fixture(scope="module")
def tls_gateway(mock: Mock, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("tls-gateway")
    cert, key = tmp / "tls" / "cert.pem", tmp / "tls" / "key.pem"
    overrides = {
        "GEM_PROXY__SERVER__TLS__ENABLED": "true",
        "GEM_PROXY__SERVER__TLS__CERT_PATH": str(cert),
        "GEM_PROXY__SERVER__TLS__KEY_PATH": str(key),
    }
    gw = start_gateway(tmp, mock.url, env=overrides)
    gw.url = gw.url.replace("http://", "https://").replace("127.0.0.1", "localhost")
    try:
        yield gw, cert, key
    finally:
        _stop(gw.proc)


@pytest.fixture(scope="module")
def https_url(tls_gateway: tuple[Gateway, Path, Path]) -> str:
    return tls_gateway[0].url


@pytest.fixture(scope="module")
def ca_file(tls_gateway: tuple[Gateway, Path, Path]) -> Path:
    return tls_gateway[1]


def _client(url: str, **http: Any) -> genai.Client:
    return genai.Client(
        api_key=CLIENT_TOKEN,
        http_options=types.HttpOptions(base_url=url, api_version="v1beta", timeout=30_000, **http),
    )


def test_the_certificate_is_generated_with_a_private_key(tls_gateway: tuple[Gateway, Path, Path]):
    gw, cert, key = tls_gateway
    assert cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    health = httpx.get(f"{gw.admin_url}/health", trust_env=False).json()
    assert health["tls"]["source"] == "self-signed", health
    assert {"localhost", "127.0.0.1"} <= set(health["tls"]["names"]), health
    # The fingerprint is in the log, for people comparing it with what their client shows.
    assert health["tls"]["sha256_fingerprint"] in gw.stderr()


def test_sdk_with_ssl_cert_file(https_url: str, ca_file: Path, upstream: Mock, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    client = _client(https_url)
    try:
        resp = client.models.generate_content(model=MODEL, contents="Say hello in one word.")
        assert isinstance(resp.text, str) and resp.text.strip(), resp
        chunks = list(client.models.generate_content_stream(model=MODEL, contents="Count to three."))
        assert len(chunks) >= 2, "a stream arrives in pieces over TLS too"
        assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    finally:
        client.close()
    assert_clean_upstream(upstream.requests())


def test_sdk_with_an_explicit_ssl_context_uploads_a_file(https_url: str, ca_file: Path, upstream: Mock, tmp_path: Path):
    ctx = ssl.create_default_context(cafile=str(ca_file))
    client = _client(https_url, client_args={"verify": ctx})
    try:
        path = tmp_path / "notes.txt"
        path.write_bytes(b"over https\n" * 50)
        # The resumable upload continues at the URL the gateway hands back: it must be https.
        f = client.files.upload(file=path, config={"mime_type": "text/plain"})
        assert f.name and f.name.startswith("files/"), f
        assert f.size_bytes == path.stat().st_size
    finally:
        client.close()
    uploads = [r for r in upstream.requests() if r["path"].startswith("/upload/")]
    assert len(uploads) >= 2, "the start and the upload/finalize step both went through"


def test_openai_sdk_with_the_ca(https_url: str, ca_file: Path, upstream: Mock):
    ca = ssl.create_default_context(cafile=str(ca_file))
    with httpx.Client(verify=ca) as http:
        oai = OpenAI(api_key=CLIENT_TOKEN, base_url=f"{https_url}/v1beta/openai/", http_client=http, max_retries=0)
        resp = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert resp.choices and resp.choices[0].message.content
    assert_clean_upstream(upstream.requests())


def test_a_client_without_the_ca_refuses_the_connection(https_url: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    client = _client(https_url)
    try:
        with pytest.raises(Exception) as info:
            client.models.generate_content(model=MODEL, contents="hello")
    finally:
        client.close()
    chain = []
    e: BaseException | None = info.value
    while e is not None:
        chain.append(repr(e))
        e = e.__cause__ or e.__context__
    assert any("CERTIFICATE_VERIFY_FAILED" in c or "certificate verify failed" in c for c in chain), chain


def test_http2_is_negotiated(https_url: str, ca_file: Path):
    with httpx.Client(http2=True, verify=ssl.create_default_context(cafile=str(ca_file)), trust_env=False) as http:
        r = http.get(f"{https_url}/v1beta/models", headers={"x-goog-api-key": CLIENT_TOKEN})
    assert r.status_code == 200, r.text
    assert r.http_version == "HTTP/2"


def test_plain_http_to_the_tls_port_gets_a_clear_answer(https_url: str, tls_gateway: tuple[Gateway, Path, Path]):
    plain = https_url.replace("https://", "http://")
    r = httpx.get(f"{plain}/v1beta/models", trust_env=False)
    assert r.status_code == 400
    assert "https://" in r.json()["error"]["message"]
    assert tls_gateway[0].proc.poll() is None, "the gateway must keep running"
