"""The real client SDKs, pointed at gem-proxy, as a user would use them.

google-genai (native Gemini API, v1 and v1beta) and openai (Gemini's OpenAI-compatible
surface). Behind the gateway runs gem-proxy-mock; after the calls, the tests read the
mock's request log to check what the upstream actually saw (keys, headers, paths).
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from google import genai
from google.genai import errors, types
from openai import OpenAI

from conftest import Mock
from helpers import CLIENT_TOKEN, MODEL, UPSTREAM_KEYS, assert_clean_upstream

API_VERSIONS = ["v1", "v1beta"]


# --------------------------------------------------------------------------- clients


@pytest.fixture(scope="module", params=API_VERSIONS)
def api_version(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def client(gateway_url: str, api_version: str):
    # Keep the reference for the whole module: a collected Client closes its connection.
    c = genai.Client(
        api_key=CLIENT_TOKEN,
        http_options=types.HttpOptions(base_url=gateway_url, api_version=api_version, timeout=30_000),
    )
    yield c
    c.close()


@pytest.fixture(scope="module")
def oai(gateway_url: str):
    c = OpenAI(api_key=CLIENT_TOKEN, base_url=gateway_url + "/v1beta/openai/", max_retries=0, timeout=30)
    yield c
    c.close()


# --------------------------------------------------------------------------- google-genai


def test_generate_content(client: genai.Client, api_version: str, upstream: Mock):
    resp = client.models.generate_content(model=MODEL, contents="Say hello in one word.")

    assert isinstance(resp.text, str) and resp.text.strip(), f"no text in {resp!r}"
    assert resp.candidates and resp.candidates[0].finish_reason == types.FinishReason.STOP
    assert resp.usage_metadata and resp.usage_metadata.total_token_count

    reqs = upstream.requests()
    assert [(r["method"], r["path"]) for r in reqs] == [("POST", f"/{api_version}/models/{MODEL}:generateContent")]
    assert "Say hello in one word." in reqs[0]["body"], "request body did not reach the upstream intact"
    assert_clean_upstream(reqs)


def test_generate_content_stream(client: genai.Client, api_version: str, upstream: Mock):
    chunks, arrivals = [], []
    for chunk in client.models.generate_content_stream(model=MODEL, contents="Count to four."):
        chunks.append(chunk)
        arrivals.append(time.monotonic())

    assert len(chunks) >= 2, f"expected a stream of several chunks, got {len(chunks)}"
    text = "".join(c.text or "" for c in chunks)
    assert text.strip(), "streamed chunks carried no text"
    last = chunks[-1]
    assert last.usage_metadata is not None and last.usage_metadata.total_token_count, "last chunk lacks usage"
    assert last.candidates and last.candidates[0].finish_reason == types.FinishReason.STOP, (
        "stream ended without finishReason: truncated?"
    )
    # The mock spaces chunks 20 ms apart: a gateway that buffers the whole answer
    # delivers them all at once.
    spread = arrivals[-1] - arrivals[0]
    assert spread >= 0.010 * (len(chunks) - 1), f"chunks arrived together ({spread * 1000:.1f} ms): buffered?"

    reqs = upstream.requests()
    assert [r["path"] for r in reqs] == [f"/{api_version}/models/{MODEL}:streamGenerateContent"]
    assert "alt=sse" in (reqs[0]["query"] or "")
    assert_clean_upstream(reqs)


def test_count_tokens(client: genai.Client, api_version: str, upstream: Mock):
    resp = client.models.count_tokens(model=MODEL, contents="How many tokens is this?")
    assert isinstance(resp.total_tokens, int) and resp.total_tokens > 0

    reqs = upstream.requests()
    assert [r["path"] for r in reqs] == [f"/{api_version}/models/{MODEL}:countTokens"]
    assert_clean_upstream(reqs)


def test_embed_content(client: genai.Client, upstream: Mock):
    resp = client.models.embed_content(model="gemini-embedding-001", contents=["first text", "second text"])
    assert resp.embeddings is not None and len(resp.embeddings) == 2
    for e in resp.embeddings:
        assert e.values and all(isinstance(v, float) for v in e.values)

    reqs = upstream.requests()
    assert len(reqs) == 1 and reqs[0]["path"].endswith("/models/gemini-embedding-001:batchEmbedContents")
    assert_clean_upstream(reqs)


def test_list_and_get_models(client: genai.Client, api_version: str, upstream: Mock):
    models = list(client.models.list())
    names = [m.name for m in models]
    assert names and all(n and n.startswith("models/") for n in names), names

    one = client.models.get(model=names[0])
    assert one.name == names[0]

    reqs = upstream.requests()
    assert reqs[0]["method"] == "GET" and reqs[0]["path"] == f"/{api_version}/models"
    assert reqs[-1]["method"] == "GET" and reqs[-1]["path"] == f"/{api_version}/{names[0]}"
    assert_clean_upstream(reqs)


def test_upstream_429_reaches_the_client(client: genai.Client, upstream: Mock):
    with pytest.raises(errors.ClientError) as exc:
        client.models.generate_content(model="mock-error-429", contents="hi")
    assert exc.value.code == 429
    assert exc.value.status == "RESOURCE_EXHAUSTED", "Google's error status should pass through"
    # After Google's first 429 every key rests for this model, so the gateway may answer later
    # calls itself (same status, with Retry-After) without asking the upstream again.
    reqs = upstream.requests()
    if reqs:
        assert_clean_upstream(reqs)


def test_upstream_503_reaches_the_client(client: genai.Client, upstream: Mock):
    with pytest.raises(errors.ServerError) as exc:
        client.models.generate_content(model="mock-error-503", contents="hi")
    assert exc.value.code == 503
    assert exc.value.status == "UNAVAILABLE"
    assert_clean_upstream(upstream.requests())


def test_upstream_400_is_passed_through_and_not_retried(client: genai.Client, upstream: Mock):
    with pytest.raises(errors.ClientError) as exc:
        client.models.generate_content(model="mock-error-400", contents="hi")
    assert exc.value.code == 400
    reqs = upstream.requests()
    assert len(reqs) == 1, f"a 400 must not be retried, upstream saw {len(reqs)} requests"


def test_stream_error_reaches_the_client(client: genai.Client, upstream: Mock):
    with pytest.raises(errors.ClientError) as exc:
        for _ in client.models.generate_content_stream(model="mock-error-429", contents="hi"):
            pass
    assert exc.value.code == 429


def test_keys_rotate_and_client_token_never_reaches_upstream(client: genai.Client, upstream: Mock):
    n = 12  # enough that a random pick of two keys uses both (p of one key only < 0.1 %)
    for i in range(n):
        assert client.models.generate_content(model=MODEL, contents=f"request {i}").text
    reqs = upstream.requests()
    assert len(reqs) == n
    assert_clean_upstream(reqs)
    used = {r["key"] for r in reqs}
    assert used == set(UPSTREAM_KEYS), f"both upstream keys should be used, saw {used}"


# --------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def files_client(gateway_url: str):
    c = genai.Client(
        api_key=CLIENT_TOKEN,
        http_options=types.HttpOptions(base_url=gateway_url, api_version="v1beta", timeout=30_000),
    )
    yield c
    c.close()


def test_file_upload_roundtrip(files_client: genai.Client, upstream: Mock, tmp_path):
    content = b"hello from the gem-proxy e2e tests\n" * 100
    path = tmp_path / "notes.txt"
    path.write_bytes(content)

    f = files_client.files.upload(file=path, config={"mime_type": "text/plain", "display_name": "notes"})
    assert f.name and f.name.startswith("files/"), f
    assert f.size_bytes == len(content)

    got = files_client.files.get(name=f.name)
    assert got.name == f.name
    # Each key sees only its own files; the gateway merges every key's list.
    assert f.name in [x.name for x in files_client.files.list()]
    files_client.files.delete(name=f.name)
    with pytest.raises(errors.ClientError):
        files_client.files.get(name=f.name)

    reqs = upstream.requests()
    uploads = [r for r in reqs if r["path"].startswith("/upload/")]
    assert len(uploads) >= 2, "expected the resumable start and the upload/finalize step upstream"
    assert_clean_upstream(reqs)
    # A file is visible only to the key that uploaded it: every step must use that key (the
    # listing, which asks every key, aside).
    keys = {r["key"] for r in reqs if not (r["method"] == "GET" and r["path"].endswith("/files"))}
    assert len(keys) == 1, f"file upload and its follow-ups used different upstream keys: {keys}"


def test_upload_url_does_not_leak_the_upstream_key(gateway_url: str, upstream: Mock):
    content = b"0123456789" * 10
    with httpx.Client(timeout=10, trust_env=False) as http:
        start = http.post(
            f"{gateway_url}/upload/v1beta/files",
            headers={
                "x-goog-api-key": CLIENT_TOKEN,
                "X-Goog-Upload-Protocol": "resumable",
                "X-Goog-Upload-Command": "start",
                "X-Goog-Upload-Header-Content-Length": str(len(content)),
                "X-Goog-Upload-Header-Content-Type": "text/plain",
            },
            json={"file": {"display_name": "by-hand"}},
        )
        assert start.status_code == 200, start.text
        upload_url = start.headers.get("x-goog-upload-url")
        assert upload_url, f"no X-Goog-Upload-URL in {dict(start.headers)}"
        assert "AIzaTESTKEY" not in upload_url, f"upstream key leaked to the client: {upload_url}"
        assert "key=" not in upload_url, upload_url
        assert upload_url.startswith(gateway_url + "/"), f"upload URL should point at the gateway: {upload_url}"
        for k, v in start.headers.items():
            assert "AIzaTESTKEY" not in v, f"upstream key leaked in response header {k}"

        # Finish the upload exactly as the SDK does: no credentials, just the URL.
        done = http.post(
            upload_url,
            headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"},
            content=content,
        )
        assert done.status_code == 200, done.text
        assert done.headers.get("x-goog-upload-status") == "final"
        assert int(done.json()["file"]["sizeBytes"]) == len(content)

    reqs = upstream.requests()
    assert_clean_upstream(reqs)
    assert len({r["key"] for r in reqs}) == 1, "start and upload went upstream with different keys"


# --------------------------------------------------------------------------- openai


def test_openai_chat_completion(oai: OpenAI, upstream: Mock):
    resp = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}])
    assert resp.choices and resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop"

    reqs = upstream.requests()
    assert [(r["method"], r["path"]) for r in reqs] == [("POST", "/v1beta/openai/chat/completions")]
    assert_clean_upstream(reqs)


def test_openai_chat_completion_stream(oai: OpenAI, upstream: Mock):
    stream = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count to four."}], stream=True
    )
    chunks, arrivals = [], []
    for c in stream:  # ends cleanly on `data: [DONE]`, raises on a broken stream
        chunks.append(c)
        arrivals.append(time.monotonic())
    assert len(chunks) >= 2, f"expected several chunks, got {len(chunks)}"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks), "no finish_reason in stream"
    spread = arrivals[-1] - arrivals[0]
    assert spread >= 0.010 * (len(chunks) - 1), f"chunks arrived together ({spread * 1000:.1f} ms): buffered?"

    reqs = upstream.requests()
    assert [r["path"] for r in reqs] == ["/v1beta/openai/chat/completions"]
    assert '"stream"' in reqs[0]["body"]
    assert_clean_upstream(reqs)


def test_openai_models_and_embeddings(oai: OpenAI, upstream: Mock):
    models = list(oai.models.list())
    assert models and all(m.id for m in models)

    emb = oai.embeddings.create(model="gemini-embedding-001", input=["a", "b"])
    assert len(emb.data) == 2 and emb.data[0].embedding

    reqs = upstream.requests()
    assert {r["path"] for r in reqs} == {"/v1beta/openai/models", "/v1beta/openai/embeddings"}
    assert_clean_upstream(reqs)


def test_openai_error_passes_through(oai: OpenAI, upstream: Mock):
    with pytest.raises(openai.RateLimitError) as exc:
        oai.chat.completions.create(model="mock-error-429", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.status_code == 429


def test_both_sdks_rotate_keys(client: genai.Client, oai: OpenAI, upstream: Mock):
    for i in range(4):
        client.models.generate_content(model=MODEL, contents=f"n{i}")
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"o{i}"}])
    reqs = upstream.requests()
    assert_clean_upstream(reqs)
    native = {r["key"] for r in reqs if not r["path"].startswith("/v1beta/openai/")}
    compat = {r["key"] for r in reqs if r["path"].startswith("/v1beta/openai/")}
    assert native | compat == set(UPSTREAM_KEYS), f"both keys should be used: native={native} openai={compat}"
