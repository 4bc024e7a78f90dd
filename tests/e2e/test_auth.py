"""Client authentication end to end: a gem-proxy with `auth.enabled`, tokens minted by PyJWT
(an independent JWT library) and by `gem-proxy token`, used by plain HTTP and by the real SDKs.

What a user notices: a valid token works as the SDKs' "API key"; every kind of bad token is a
401 that says what is wrong; a model outside the token's `models` is a 403; a client over its
`rpm` gets 429 with Retry-After; the token never reaches Google and never lands in the log.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import openai
import pytest
from google import genai
from google.genai import errors, types
from openai import OpenAI

import conftest
from conftest import Gateway, Mock, _binary, _stop, free_port, start_gateway
from helpers import MODEL, UPSTREAM_KEYS, header

crypto = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa", reason="RS256 needs cryptography")
from cryptography.hazmat.primitives import serialization  # noqa: E402

SECRET = "e2e-secret-0123456789abcdef0123456789"
ISSUER = "https://issuer.e2e.example"
AUDIENCE = "gem-proxy-e2e"
REVOKED_JTI = "revoked-" + uuid.uuid4().hex

AUTH_CONFIG = """\
server:
  host: "127.0.0.1"
  port: {port}
  workers: 2
gemini:
  base_url: "{upstream}"
  timeout_seconds: 30
  api_keys:
    - {{ id: "key1", key: "{key1}" }}
    - {{ id: "key2", key: "{key2}" }}
auth:
  enabled: true
  jwt_secret: "{secret}"
  issuer: "{issuer}"
  audience: "{audience}"
  leeway_seconds: 5
  jwt_public_key_path: "{public_key}"
  revoked_token_ids: ["{revoked}"]
  rate_limit_per_minute: 1000
metrics: {{ enabled: true, prometheus_port: {admin_port} }}
log: {{ format: "text", level: "gem_proxy=debug,info" }}
"""


@pytest.fixture(scope="module")
def idp_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """An identity provider's RSA key pair; the public half goes into the gateway's config."""
    key = crypto.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("idp") / "idp-public.pem"
    path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key, path


@pytest.fixture(scope="module")
def auth_gateway(mock: Mock, idp_key: tuple[Any, Path], tmp_path_factory: pytest.TempPathFactory):
    """A gateway with auth enabled, in front of the session's mock. Logs at debug level so the
    check that tokens never reach the log means something."""
    port, admin_port = free_port(), free_port()
    text = AUTH_CONFIG.format(
        port=port,
        admin_port=admin_port,
        upstream=mock.url,
        key1=UPSTREAM_KEYS[0],
        key2=UPSTREAM_KEYS[1],
        secret=SECRET,
        issuer=ISSUER,
        audience=AUDIENCE,
        public_key=idp_key[1],
        revoked=REVOKED_JTI,
    )
    saved = os.environ.get("RUST_LOG")
    os.environ["RUST_LOG"] = "gem_proxy=debug,info"
    # start_gateway picks its own ports for the URLs it waits on and returns, even when given a
    # config text: hand it the ports this config names.
    ports = iter([port, admin_port])
    pick_port = conftest.free_port
    conftest.free_port = lambda: next(ports)
    try:
        gw = start_gateway(tmp_path_factory.mktemp("auth-gateway"), mock.url, text)
    finally:
        conftest.free_port = pick_port
        if saved is None:
            os.environ.pop("RUST_LOG", None)
        else:
            os.environ["RUST_LOG"] = saved
    try:
        yield gw
    finally:
        _stop(gw.proc)


def claims(sub: str = "alice", **over: Any) -> dict[str, Any]:
    now = int(time.time())
    c: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + 600, "iss": ISSUER, "aud": AUDIENCE}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def hs(**over: Any) -> str:
    return jwt.encode(claims(**over), SECRET, algorithm="HS256")


def unsigned(payload: dict[str, Any]) -> str:
    """An `alg: none` token, built by hand (PyJWT refuses to make one with a key)."""
    import base64
    import json

    def b64(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(payload)}."


GENERATE = f"/v1beta/models/{MODEL}:generateContent"
BODY = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}


def post(gw: Gateway, token: str | None, path: str = GENERATE) -> httpx.Response:
    headers = {"x-goog-api-key": token} if token is not None else {}
    return httpx.post(gw.url + path, json=BODY, headers=headers, timeout=30, trust_env=False)


def assert_token_not_upstream(reqs: list[dict[str, Any]], token: str) -> None:
    for r in reqs:
        assert r.get("key") in UPSTREAM_KEYS, f"upstream saw key {r.get('key')!r}"
        assert token not in str(r), f"the client token reached the upstream: {r['method']} {r['path']}"


# --------------------------------------------------------------------------- SDKs


def test_google_genai_works_with_a_token_as_its_api_key(auth_gateway: Gateway, upstream: Mock):
    token = hs(sub="genai-user")
    for version in ("v1", "v1beta"):
        client = genai.Client(
            api_key=token,
            http_options=types.HttpOptions(base_url=auth_gateway.url, api_version=version, timeout=30_000),
        )
        resp = client.models.generate_content(model=MODEL, contents="Say hello.")
        assert resp.text and resp.text.strip()
        chunks = list(client.models.generate_content_stream(model=MODEL, contents="Count to three."))
        assert len(chunks) >= 2
        client.close()
    reqs = upstream.requests()
    assert len(reqs) == 4
    assert_token_not_upstream(reqs, token)
    for r in reqs:
        assert header(r, "x-goog-api-key")[0] in UPSTREAM_KEYS


def test_openai_sdk_works_with_a_token_as_its_api_key(auth_gateway: Gateway, upstream: Mock):
    token = hs(sub="openai-user")
    client = OpenAI(api_key=token, base_url=auth_gateway.url + "/v1beta/openai/", max_retries=0, timeout=30)
    resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content
    client.close()
    reqs = upstream.requests()
    assert len(reqs) == 1
    assert_token_not_upstream(reqs, token)
    assert header(reqs[0], "authorization") in ([f"Bearer {k}"] for k in UPSTREAM_KEYS)


def test_sdks_raise_their_normal_errors_for_a_bad_token(auth_gateway: Gateway, upstream: Mock):
    expired = hs(exp=int(time.time()) - 3600)
    client = genai.Client(
        api_key=expired,
        http_options=types.HttpOptions(base_url=auth_gateway.url, api_version="v1beta", timeout=30_000),
    )
    with pytest.raises(errors.ClientError) as exc:
        client.models.generate_content(model=MODEL, contents="hi")
    assert exc.value.code == 401
    assert exc.value.status == "UNAUTHENTICATED"
    assert "expired" in (exc.value.message or "")
    client.close()

    oai = OpenAI(api_key=expired, base_url=auth_gateway.url + "/v1beta/openai/", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as oexc:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert oexc.value.status_code == 401
    oai.close()
    assert upstream.requests() == []


# --------------------------------------------------------------------------- refusals


def _bad_tokens(idp_key: tuple[Any, Path]) -> list[tuple[str, str | None, str]]:
    key, public_path = idp_key
    now = int(time.time())
    other_rsa = crypto.generate_private_key(public_exponent=65537, key_size=2048)
    return [
        ("expired", hs(exp=now - 120), "the token has expired"),
        ("not yet valid", hs(nbf=now + 3600), "the token is not valid yet (nbf claim)"),
        ("no exp", hs(exp=None), "the token has no expiry (exp claim)"),
        (
            "bad signature",
            jwt.encode(claims(), "a-different-secret-a-different-secret", algorithm="HS256"),
            "the token's signature is invalid",
        ),
        ("wrong issuer", hs(iss="https://evil.example"), "the token's issuer (iss) is not accepted"),
        ("wrong audience", hs(aud="another-service"), "the token's audience (aud) does not include this gateway"),
        ("alg none", unsigned(claims()), "unsigned tokens (alg: none) are not accepted"),
        (
            # Algorithm confusion: HS256 with the identity provider's public key as the secret.
            "HS token against the RS key",
            _hs_with_public_key(public_path.read_bytes()),
            "the token's signature is invalid",
        ),
        (
            "RS token from an unknown key",
            jwt.encode(claims(), other_rsa, algorithm="RS256"),
            "the token's signature is invalid",
        ),
        ("revoked jti", hs(jti=REVOKED_JTI), "the token has been revoked"),
        ("no subject", hs(sub=None), "the token has no subject (sub claim)"),
        ("garbage", "this-is-not-a-jwt", "the token is not a well-formed JWT"),
        ("missing", None, "missing credentials"),
    ]


def _hs_with_public_key(public_pem: bytes) -> str:
    """PyJWT (rightly) refuses a PEM key as an HMAC secret, so sign by hand."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims()).encode())
    sig = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def test_each_bad_token_is_401_saying_what_is_wrong(
    auth_gateway: Gateway, upstream: Mock, idp_key: tuple[Any, Path]
):
    for what, token, want in _bad_tokens(idp_key):
        r = post(auth_gateway, token)
        assert r.status_code == 401, f"{what}: {r.status_code} {r.text}"
        err = r.json()["error"]
        assert err["code"] == 401 and err["status"] == "UNAUTHENTICATED", f"{what}: {err}"
        assert err["message"].startswith(want), f"{what}: {err['message']!r}"
        if token:
            assert token not in r.text, f"{what}: the token was echoed"
    assert upstream.requests() == [], "a refused request reached the upstream"


def test_an_identity_provider_rs256_token_is_accepted(
    auth_gateway: Gateway, upstream: Mock, idp_key: tuple[Any, Path]
):
    token = jwt.encode(claims(sub="idp-user"), idp_key[0], algorithm="RS256", headers={"kid": "idp-1"})
    r = post(auth_gateway, token)
    assert r.status_code == 200, r.text
    assert_token_not_upstream(upstream.requests(), token)


def test_a_model_outside_the_tokens_models_is_403(auth_gateway: Gateway, upstream: Mock):
    token = hs(sub="flash-only", models=["gemini-2.5-*"])
    client = genai.Client(
        api_key=token,
        http_options=types.HttpOptions(base_url=auth_gateway.url, api_version="v1beta", timeout=30_000),
    )
    assert client.models.generate_content(model=MODEL, contents="hi").text
    with pytest.raises(errors.ClientError) as exc:
        client.models.generate_content(model="gemini-3-pro", contents="hi")
    assert exc.value.code == 403
    assert exc.value.status == "PERMISSION_DENIED"
    client.close()
    assert [r["path"] for r in upstream.requests()] == [GENERATE]


# --------------------------------------------------------------------------- limits


def test_a_client_over_its_rpm_gets_429_and_another_client_does_not(auth_gateway: Gateway, upstream: Mock):
    slow = hs(sub="slow-" + uuid.uuid4().hex[:8], rpm=3)
    other = hs(sub="other-" + uuid.uuid4().hex[:8])
    codes = [post(auth_gateway, slow).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429], codes

    r = post(auth_gateway, slow)
    assert r.status_code == 429
    assert r.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert 1 <= int(r.headers["retry-after"]) <= 20
    assert r.headers["x-ratelimit-limit"] == "3"
    assert r.headers["x-ratelimit-remaining"] == "0"
    assert 1 <= int(r.headers["x-ratelimit-reset"]) <= 60

    assert all(post(auth_gateway, other).status_code == 200 for _ in range(10))
    assert len(upstream.requests()) == 13, "429s must not reach the upstream"


# --------------------------------------------------------------------------- CLI and logs


def test_a_token_from_gem_proxy_token_is_accepted(auth_gateway: Gateway, upstream: Mock):
    out = subprocess.run(
        [
            str(_binary("GEM_PROXY_BIN", "gem-proxy")),
            "token",
            "--config",
            str(auth_gateway.config),
            "--sub",
            "cli-user",
            "--ttl",
            "1h",
            "--models",
            "gemini-2.5-*",
            "--rpm",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert len(out.stdout.splitlines()) == 1 and token.count(".") == 2, out.stdout
    assert SECRET not in out.stdout + out.stderr

    # PyJWT, independently, reads what the CLI put in it.
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert decoded["sub"] == "cli-user" and decoded["rpm"] == 2 and decoded["models"] == ["gemini-2.5-*"]
    assert decoded["jti"] and decoded["exp"] - decoded["iat"] == 3600

    assert [post(auth_gateway, token).status_code for _ in range(3)] == [200, 200, 429]
    assert_token_not_upstream(upstream.requests(), token)


def test_tokens_never_reach_the_log(auth_gateway: Gateway, upstream: Mock, idp_key: tuple[Any, Path]):
    good = hs(sub="log-check")
    used = [good] + [t for _, t, _ in _bad_tokens(idp_key) if t]
    post(auth_gateway, good)
    httpx.get(f"{auth_gateway.url}/v1beta/models?key={good}", timeout=30, trust_env=False)
    httpx.get(
        f"{auth_gateway.url}/v1beta/models", headers={"authorization": f"Bearer {good}"}, timeout=30, trust_env=False
    )
    for t in used[1:]:
        post(auth_gateway, t)
    log = Path(auth_gateway.log).read_text(errors="replace")
    assert "client token refused" in log, "debug logging is on: the refusals should be logged (without tokens)"
    for t in used:
        assert t not in log, "a token was written to the log"
        # Not even the signature part on its own.
        assert t.rsplit(".", 1)[-1] not in log or len(t.rsplit(".", 1)[-1]) < 8
