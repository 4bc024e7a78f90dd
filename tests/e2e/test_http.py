"""Wire-level behaviour of the gateway that the SDKs don't exercise: other ways clients
send credentials, the non-SSE stream, routing of every API version and of unknown paths."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import Mock
from helpers import CLIENT_TOKEN, MODEL, UPSTREAM_KEYS, assert_clean_upstream, header

BODY = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}


@pytest.fixture(scope="module")
def http(gateway_url: str):
    with httpx.Client(base_url=gateway_url, timeout=30, trust_env=False) as c:
        yield c


def test_key_in_query_string_is_replaced(http: httpx.Client, upstream: Mock):
    r = http.post(f"/v1beta/models/{MODEL}:generateContent", params={"key": CLIENT_TOKEN}, json=BODY)
    assert r.status_code == 200, r.text
    assert r.json()["candidates"][0]["content"]["parts"][0]["text"]
    reqs = upstream.requests()
    assert len(reqs) == 1
    assert_clean_upstream(reqs)


def test_bearer_token_on_native_route_does_not_reach_google(http: httpx.Client, upstream: Mock):
    # Google answers 401 when a native request carries Authorization: the gateway must strip it.
    r = http.post(
        f"/v1beta/models/{MODEL}:generateContent",
        headers={"Authorization": f"Bearer {CLIENT_TOKEN}", "x-goog-api-key": CLIENT_TOKEN},
        json=BODY,
    )
    assert r.status_code == 200, r.text
    assert_clean_upstream(upstream.requests())


@pytest.mark.parametrize("version", ["v1", "v1beta", "v1alpha"])
def test_every_api_version_is_routed(http: httpx.Client, upstream: Mock, version: str):
    r = http.post(f"/{version}/models/{MODEL}:embedContent", headers={"x-goog-api-key": CLIENT_TOKEN},
                  json={"content": {"parts": [{"text": "embed me"}]}})
    assert r.status_code == 200, r.text
    assert r.json()["embedding"]["values"]
    reqs = upstream.requests()
    assert [r["path"] for r in reqs] == [f"/{version}/models/{MODEL}:embedContent"]
    assert_clean_upstream(reqs)


def test_sse_stream_is_passed_through_as_events(http: httpx.Client, upstream: Mock):
    events = []
    with http.stream(
        "POST",
        f"/v1beta/models/{MODEL}:streamGenerateContent",
        params={"alt": "sse"},
        headers={"x-goog-api-key": CLIENT_TOKEN},
        json=BODY,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
    assert len(events) >= 2
    assert events[-1]["candidates"][0].get("finishReason") == "STOP"
    assert "usageMetadata" in events[-1]
    assert_clean_upstream(upstream.requests())


def test_json_array_stream_without_alt_sse(http: httpx.Client, upstream: Mock):
    r = http.post(
        f"/v1beta/models/{MODEL}:streamGenerateContent", headers={"x-goog-api-key": CLIENT_TOKEN}, json=BODY
    )
    assert r.status_code == 200, r.text
    chunks = r.json()
    assert isinstance(chunks, list) and len(chunks) >= 2
    assert chunks[-1]["candidates"][0].get("finishReason") == "STOP"
    assert "alt=sse" not in (upstream.requests()[0]["query"] or "")


def test_unknown_path_under_a_version_is_passed_through(http: httpx.Client, upstream: Mock):
    # New endpoints appear often (e.g. /v1/interactions): the gateway forwards them as they are.
    r = http.get("/v1beta/some/new/endpoint", params={"pageSize": "5"}, headers={"x-goog-api-key": CLIENT_TOKEN})
    reqs = upstream.requests()
    assert [(q["method"], q["path"]) for q in reqs] == [("GET", "/v1beta/some/new/endpoint")], r.text
    assert "pageSize=5" in (reqs[0]["query"] or "")
    assert_clean_upstream(reqs)


def test_path_outside_the_api_is_not_forwarded(http: httpx.Client, upstream: Mock):
    r = http.get("/not-an-api/models", headers={"x-goog-api-key": CLIENT_TOKEN})
    assert r.status_code == 404
    assert upstream.requests() == []


def test_upstream_error_body_is_passed_through(http: httpx.Client, upstream: Mock):
    r = http.post("/v1beta/models/mock-error-429:generateContent", headers={"x-goog-api-key": CLIENT_TOKEN},
                  json=BODY)
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["code"] == 429 and err["status"] == "RESOURCE_EXHAUSTED"
    # Clients back off by Google's RetryInfo: the details must survive the gateway.
    types_ = [d.get("@type", "") for d in err.get("details", [])]
    assert any(t.endswith("google.rpc.RetryInfo") for t in types_), err
    for k, v in r.headers.items():
        assert not any(key in v for key in UPSTREAM_KEYS), f"upstream key leaked in response header {k}"
    assert not any(key in r.text for key in UPSTREAM_KEYS), "upstream key leaked in the error body"


def test_openai_route_gets_the_upstream_key_as_bearer(http: httpx.Client, upstream: Mock):
    r = http.post(
        "/v1beta/openai/chat/completions",
        headers={"Authorization": f"Bearer {CLIENT_TOKEN}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200, r.text
    reqs = upstream.requests()
    assert_clean_upstream(reqs)
    assert header(reqs[0], "x-goog-api-key") in ([], [reqs[0]["key"]])


def test_h2c_prior_knowledge(gateway_url: str, upstream: Mock):
    """HTTP/2 over cleartext (as gRPC-style clients and load balancers speak it)."""
    with httpx.Client(base_url=gateway_url, http1=False, http2=True, timeout=30, trust_env=False) as h2:
        r = h2.post(f"/v1beta/models/{MODEL}:generateContent", headers={"x-goog-api-key": CLIENT_TOKEN}, json=BODY)
        assert r.http_version == "HTTP/2"
        assert r.status_code == 200, r.text
        assert r.json()["candidates"][0]["content"]["parts"][0]["text"]
        with h2.stream(
            "POST",
            f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
            headers={"x-goog-api-key": CLIENT_TOKEN},
            json=BODY,
        ) as s:
            events = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert len(events) >= 2
    assert_clean_upstream(upstream.requests())


def test_concurrent_streams_are_not_mixed_up(gateway_url: str, upstream: Mock):
    """Several streams at once over separate connections each get their own complete answer."""
    def one(i: int) -> tuple[int, list[dict]]:
        with httpx.Client(base_url=gateway_url, timeout=30, trust_env=False) as c:
            body = {"contents": [{"role": "user", "parts": [{"text": f"stream {i}"}]}]}
            with c.stream(
                "POST",
                f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
                headers={"x-goog-api-key": CLIENT_TOKEN},
                json=body,
            ) as r:
                assert r.status_code == 200
                return i, [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: ")]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(8)))
    for i, events in results:
        assert len(events) >= 2, f"stream {i}: {events}"
        assert events[-1]["candidates"][0].get("finishReason") == "STOP", f"stream {i} truncated"
    reqs = upstream.requests()
    assert len(reqs) == 8
    assert sorted(json.loads(r["body"])["contents"][0]["parts"][0]["text"] for r in reqs) == sorted(
        f"stream {i}" for i in range(8)
    )
    assert_clean_upstream(reqs)
