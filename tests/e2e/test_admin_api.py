"""The admin API against its own OpenAPI document, with Schemathesis: generated requests to every
route, no 5xx, every answer matching the schema (status codes, content types, bodies)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import Mock, _stop, start_gateway

ADMIN_TOKEN = "e2e-admin-token-0123456789"


@pytest.fixture(scope="module")
def admin_gateway(mock: Mock, tmp_path_factory: pytest.TempPathFactory):
    gw = start_gateway(
        tmp_path_factory.mktemp("admin-gateway"),
        mock.url,
        extra=f'admin: {{ token: "{ADMIN_TOKEN}", config_watch_interval_seconds: 0 }}\n',
    )
    yield gw
    _stop(gw.proc)


def test_the_admin_api_is_closed_without_the_token(admin_gateway):
    with httpx.Client(trust_env=False, timeout=10) as http:
        r = http.get(f"{admin_gateway.admin_url}/api/keys")
        assert r.status_code == 401
        assert r.json()["error"]["status"] == "UNAUTHENTICATED"
        r = http.get(f"{admin_gateway.admin_url}/api/keys", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 200
        assert {k["id"] for k in r.json()} == {"key1", "key2"}


def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(admin_gateway, tmp_path: Path):
    st = Path(sys.executable).with_name("schemathesis")
    if not st.exists():
        st = Path(shutil.which("schemathesis") or "schemathesis")
    result = subprocess.run(
        [
            str(st),
            "run",
            f"{admin_gateway.admin_url}/api/openapi.json",
            "--header",
            f"Authorization: Bearer {ADMIN_TOKEN}",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "25",
            "--workers",
            "1",
            "--no-color",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-8000:]
    # The gateway kept serving and never showed a key.
    with httpx.Client(trust_env=False, timeout=10) as http:
        r = http.get(f"{admin_gateway.admin_url}/health")
        assert r.status_code == 200
    assert "AIza" not in out
