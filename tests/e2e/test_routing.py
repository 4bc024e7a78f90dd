"""Routing rules with the real SDKs: model aliases and request overrides set through the admin
API's config PUT.

A gateway of its own (admin token on), its `gemini.models` changed at run time; the mock's
request log says which model the upstream saw.
"""

from __future__ import annotations

import json

import httpx
import pytest
from google import genai
from google.genai import types
from openai import OpenAI

from conftest import Mock, _stop, start_gateway
from helpers import CLIENT_TOKEN

ADMIN_TOKEN = "e2e-routing-admin-token-0123"
ALIASES = {"flash": "gemini-2.5-flash", "pro": "gemini-2.5-pro"}


@pytest.fixture(scope="module")
def routing_gateway(mock: Mock, tmp_path_factory: pytest.TempPathFactory):
    gw = start_gateway(
        tmp_path_factory.mktemp("routing-gateway"),
        mock.url,
        extra=f'admin: {{ token: "{ADMIN_TOKEN}", config_watch_interval_seconds: 0 }}\n',
    )
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(trust_env=False, timeout=10, headers=auth) as http:
        r = http.get(f"{gw.admin_url}/api/config")
        r.raise_for_status()
        config = r.json()
        config["gemini"]["models"] = {"aliases": ALIASES}
        config["gemini"]["overrides"] = [
            {
                "match": {"models": ["gemini-2.5-pro"]},
                "set": {"generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}},
                "default": {"generationConfig": {"maxOutputTokens": 256}},
            }
        ]
        r = http.put(f"{gw.admin_url}/api/config", json=config, headers={"If-Match": r.headers["etag"]})
        assert r.status_code == 200, r.text
    yield gw
    _stop(gw.proc)


def test_the_sdk_calls_an_alias_and_the_upstream_sees_the_model(routing_gateway, upstream: Mock):
    client = genai.Client(
        api_key=CLIENT_TOKEN,
        http_options=types.HttpOptions(base_url=routing_gateway.url, api_version="v1beta", timeout=30_000),
    )
    try:
        resp = client.models.generate_content(model="flash", contents="Say hello in one word.")
        assert resp.text and resp.text.strip()
        # Google's modelVersion, untouched.
        assert resp.model_version == "gemini-2.5-flash"
        chunks = list(client.models.generate_content_stream(model="pro", contents="Count to three."))
        assert chunks and "".join(c.text or "" for c in chunks).strip()
        listed = {m.name for m in client.models.list()}
        assert {"models/flash", "models/pro", "models/gemini-2.5-flash"} <= listed
        assert client.models.get(model="flash").name == "models/gemini-2.5-flash"
    finally:
        client.close()
    paths = [r["path"] for r in upstream.requests() if r["method"] == "POST"]
    assert paths == [
        "/v1beta/models/gemini-2.5-flash:generateContent",
        "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
    ]


def test_the_openai_sdk_calls_an_alias_and_the_upstream_sees_the_model(routing_gateway, upstream: Mock):
    client = OpenAI(api_key=CLIENT_TOKEN, base_url=routing_gateway.url + "/v1beta/openai/", max_retries=0)
    try:
        resp = client.chat.completions.create(model="flash", messages=[{"role": "user", "content": "hi"}])
        assert resp.choices[0].message.content
    finally:
        client.close()
    (seen,) = [r for r in upstream.requests() if r["method"] == "POST"]
    assert seen["path"] == "/v1beta/openai/chat/completions"
    assert json.loads(seen["body"])["model"] == "gemini-2.5-flash"


def test_an_override_reaches_the_upstream_and_a_default_keeps_the_clients_value(routing_gateway, upstream: Mock):
    client = genai.Client(
        api_key=CLIENT_TOKEN,
        http_options=types.HttpOptions(base_url=routing_gateway.url, api_version="v1beta", timeout=30_000),
    )
    config = types.GenerateContentConfig(
        max_output_tokens=64, thinking_config=types.ThinkingConfig(thinking_budget=2048, include_thoughts=True)
    )
    try:
        assert client.models.generate_content(model="pro", contents="hi", config=config).text
        # Another model: no rule, the SDK's bytes reach Google unchanged.
        assert client.models.generate_content(model="flash", contents="hi", config=config).text
    finally:
        client.close()
    pro, flash = [r for r in upstream.requests() if r["method"] == "POST"]
    sent = json.loads(pro["body"])["generationConfig"]
    # google-genai spells the thinking fields snake_case; the rule's spelling replaces the SDK's
    # (Google reads both, so a body with both would name the field twice).
    assert sent["thinkingConfig"] == {"thinkingBudget": 0, "include_thoughts": True}
    assert sent["maxOutputTokens"] == 64
    assert json.loads(flash["body"])["generationConfig"]["thinkingConfig"]["thinking_budget"] == 2048
