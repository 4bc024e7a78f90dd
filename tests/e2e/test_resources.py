"""Files through the gateway with auth on, as a new user would use them: google-genai with a
client token as its API key uploads a file (it sends the bytes to the upload URL with no
credential: the URL's capability is the credential), gets, lists and deletes it, and makes a
cached content of it; the Node SDK (which sends its key to the upload URL too) uploads as well.
The upstream must only ever see a pool key: never the client's token, never the capability.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from google import genai
from google.genai import types

import conftest
from conftest import Gateway, Mock, _stop, free_port, start_gateway
from helpers import MODEL, UPSTREAM_KEYS

ROOT = Path(__file__).resolve().parents[2]
NODE_SCRIPT = ROOT / "tests" / "e2e" / "genai_upload.cjs"
SECRET = "e2e-resources-secret-0123456789abcdef"

CONFIG = """\
server: {{ host: "127.0.0.1", port: {port}, workers: 2, tls: {{ enabled: false }} }}
gemini:
  base_url: "{upstream}"
  timeout_seconds: 30
  api_keys:
    - {{ id: "key1", key: "{key1}" }}
    - {{ id: "key2", key: "{key2}" }}
auth: {{ enabled: true, jwt_secret: "{secret}", rate_limit_per_minute: 1000 }}
metrics: {{ enabled: true, prometheus_port: {admin_port} }}
log: {{ format: "text" }}
"""


@pytest.fixture(scope="module")
def auth_gateway(mock: Mock, tmp_path_factory: pytest.TempPathFactory):
    port, admin_port = free_port(), free_port()
    text = CONFIG.format(
        port=port, admin_port=admin_port, upstream=mock.url, key1=UPSTREAM_KEYS[0], key2=UPSTREAM_KEYS[1], secret=SECRET
    )
    # start_gateway waits on the ports it picks: hand it the ones this config names.
    ports = iter([port, admin_port])
    pick_port = conftest.free_port
    conftest.free_port = lambda: next(ports)
    try:
        gw = start_gateway(tmp_path_factory.mktemp("resources-gateway"), mock.url, text)
    finally:
        conftest.free_port = pick_port
    try:
        yield gw
    finally:
        _stop(gw.proc)


def token(sub: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + 600}, SECRET, algorithm="HS256")


def assert_only_pool_keys(reqs: list[dict[str, Any]], *secrets: str) -> None:
    assert reqs, "the upstream received no request"
    for r in reqs:
        where = f"{r['method']} {r['path']}"
        assert r.get("key") in UPSTREAM_KEYS, f"{where}: upstream saw key {r.get('key')!r}"
        assert "gpcap1." not in str(r), f"{where}: a capability reached the upstream"
        for s in secrets:
            assert s not in str(r), f"{where}: the client token reached the upstream"


def test_google_genai_files_and_caches_with_a_client_token(auth_gateway: Gateway, upstream: Mock, tmp_path):
    tok = token("genai-files")
    client = genai.Client(
        api_key=tok,
        http_options=types.HttpOptions(base_url=auth_gateway.url, api_version="v1beta", timeout=30_000),
    )
    path = tmp_path / "notes.txt"
    path.write_text("gem-proxy keeps files on the key that holds them.\n")

    f = client.files.upload(file=path, config={"mime_type": "text/plain", "display_name": "notes"})
    assert f.name and f.name.startswith("files/"), f
    assert client.files.get(name=f.name).name == f.name
    assert f.name in [x.name for x in client.files.list()]
    cache = client.caches.create(
        model=MODEL,
        config=types.CreateCachedContentConfig(
            contents=[types.Content(role="user", parts=[types.Part.from_uri(file_uri=f.uri, mime_type="text/plain")])],
            ttl="300s",
        ),
    )
    assert cache.name and cache.name.startswith("cachedContents/"), cache
    client.files.delete(name=f.name)

    # Another client sees none of it.
    other = genai.Client(
        api_key=token("someone-else"),
        http_options=types.HttpOptions(base_url=auth_gateway.url, api_version="v1beta", timeout=30_000),
    )
    assert cache.name not in [c.name for c in other.caches.list()]

    reqs = upstream.requests()
    assert_only_pool_keys(reqs, tok)
    uploads = [r for r in reqs if r["path"].startswith("/upload/")]
    assert len(uploads) == 2, [(r["method"], r["path"]) for r in reqs]
    file_id = f.name.split("/")[1]
    keys = {r["key"] for r in uploads} | {r["key"] for r in reqs if file_id in r["path"]}
    assert len(keys) == 1, f"the upload and its follow-ups used different upstream keys: {keys}"
    client.close()
    other.close()


def test_the_node_sdk_uploads_with_a_client_token(auth_gateway: Gateway, upstream: Mock, tmp_path):
    if not shutil.which("node") or not (ROOT / "node_modules" / "@google" / "genai" / "package.json").exists():
        pytest.fail("node and @google/genai are needed: run scripts/setup.sh", pytrace=False)
    tok = token("node-files")
    path = tmp_path / "node.txt"
    path.write_text("uploaded by @google/genai\n")
    env = dict(os.environ, NODE_PATH=str(ROOT / "node_modules"))
    done = subprocess.run(
        ["node", str(NODE_SCRIPT), auth_gateway.url, tok, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout.strip().splitlines()[-1]
    assert '"name":"files/' in out and out.count("files/") == 2, out
    assert_only_pool_keys(upstream.requests(), tok)


def test_a_generated_video_downloads_by_its_link_and_with_google_genai(auth_gateway: Gateway, upstream: Mock):
    tok = token("genai-video")
    client = genai.Client(
        api_key=tok,
        http_options=types.HttpOptions(base_url=auth_gateway.url, api_version="v1beta", timeout=30_000),
    )
    # google-genai 3.x offers generate_videos only on Vertex AI: start and poll it over REST.
    with httpx.Client(trust_env=False, timeout=30, headers={"x-goog-api-key": tok}) as rest:
        r = rest.post(
            f"{auth_gateway.url}/v1beta/models/veo-3.0-generate-preview:predictLongRunning",
            json={"instances": [{"prompt": "a cat on a keyboard"}]},
        )
        assert r.status_code == 200, r.text
        op = r.json()
        for _ in range(10):
            if op.get("done"):
                break
            r = rest.get(f"{auth_gateway.url}/v1beta/{op['name']}")
            assert r.status_code == 200, r.text
            op = r.json()
    assert op.get("done"), op
    uri = op["response"]["generateVideoResponse"]["generatedSamples"][0]["video"]["uri"]
    assert uri.startswith(auth_gateway.url + "/download/v1beta/files/"), uri
    assert not any(k in uri for k in UPSTREAM_KEYS) and tok not in uri, uri

    # The link alone fetches the video (it carries the client's capability) ...
    with httpx.Client(trust_env=False, timeout=30) as http:
        r = http.get(uri)
        assert r.status_code == 200, r.text
        assert len(r.content) == 256 * 1024
        # ... and only for this client's file: not for another path.
        other = uri.replace("/files/", "/files/x", 1)
        assert http.get(other).status_code in (401, 403)
    # The SDK's own download (its token in the header) reaches the same file.
    file_id = uri.split("/files/")[1].split(":")[0]
    assert len(client.files.download(file=f"files/{file_id}")) == 256 * 1024

    reqs = upstream.requests()
    assert_only_pool_keys(reqs, tok)
    assert len({r["key"] for r in reqs}) == 1, [(r["path"], r["key"]) for r in reqs]
    client.close()
