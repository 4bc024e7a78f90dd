"""Shared constants and assertions for the end-to-end tests."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs

# Upstream keys configured in the gateway. Clients send CLIENT_TOKEN (auth disabled);
# the upstream must only ever see UPSTREAM_KEYS.
UPSTREAM_KEYS = ("AIzaTESTKEY1", "AIzaTESTKEY2")
CLIENT_TOKEN = "client-token"
MODEL = "gemini-2.5-flash"

# Development aid: GEM_PROXY_E2E_DIRECT=1 points the clients straight at the mock (no gateway),
# to check the tests themselves; the checks of what the gateway does to credentials are then skipped.
DIRECT = os.environ.get("GEM_PROXY_E2E_DIRECT") == "1"


def header(req: dict[str, Any], name: str) -> list[str]:
    """All values of header `name` (case-insensitive) in a request the mock recorded."""
    name = name.lower()
    return [v for k, v in req.get("headers", []) if k.lower() == name]


def assert_clean_upstream(reqs: list[dict[str, Any]]) -> None:
    """What the upstream saw carried only the gateway's keys, never the client's token."""
    assert reqs, "the upstream received no request"
    if DIRECT:
        return
    for r in reqs:
        where = f"{r['method']} {r['path']}"
        query = r.get("query") or ""
        assert r.get("key") in UPSTREAM_KEYS, f"{where}: upstream saw key {r.get('key')!r}"
        for k, v in r.get("headers", []):
            assert CLIENT_TOKEN not in v, f"{where}: client token leaked upstream in header {k}: {v}"
        assert CLIENT_TOKEN not in query, f"{where}: client token leaked in the query: {query}"
        if r["path"].startswith("/v1beta/openai/"):
            auth = header(r, "authorization")
            assert len(auth) == 1 and auth[0] in [f"Bearer {k}" for k in UPSTREAM_KEYS], (
                f"{where}: OpenAI route should carry 'Bearer <upstream key>', got {auth}"
            )
        else:
            # Google checks Authorization first and answers 401: it must never reach a native route.
            assert header(r, "authorization") == [], f"{where}: Authorization header reached a native route"
            creds = header(r, "x-goog-api-key") + parse_qs(query).get("key", [])
            assert len(creds) == 1 and creds[0] in UPSTREAM_KEYS, (
                f"{where}: expected exactly one upstream key (x-goog-api-key or ?key=), got {creds}"
            )
