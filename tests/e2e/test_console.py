"""The web console in headless Chromium: tests/console/console.mjs (playwright-core) drives the
console that gem-proxy serves on its admin port, against the mock upstream.

Needs ui/dist built into the gateway (scripts/build-ui.sh, before `cargo build`), Debian's
chromium and npm playwright-core (scripts/setup.sh); scripts/test.sh does all three.
Screenshots of every page go to tests/artifacts/console/ (GEM_PROXY_ARTIFACTS overrides the root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, Mock, _stop, start_gateway

ADMIN_TOKEN = "e2e-console-admin-token-0123456789"
SCRIPT = ROOT / "tests" / "console" / "console.mjs"
ARTIFACTS = Path(os.environ.get("GEM_PROXY_ARTIFACTS", ROOT / "tests" / "artifacts")) / "console"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def _require_tools() -> None:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"chromium ({CHROMIUM})")
    if not (ROOT / "node_modules" / "playwright-core" / "package.json").exists():
        missing.append("npm playwright-core")
    if not shutil.which("node"):
        missing.append("node")
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/setup.sh", pytrace=False)


@pytest.fixture(scope="module")
def console_gateway(mock: Mock, tmp_path_factory: pytest.TempPathFactory):
    gw = start_gateway(
        tmp_path_factory.mktemp("console-gateway"),
        mock.url,
        extra=f'admin: {{ token: "{ADMIN_TOKEN}", config_watch_interval_seconds: 0 }}\n'
        "usage: { flush_interval_milliseconds: 100 }\n",
    )
    yield gw
    _stop(gw.proc)


def test_the_console_is_served_with_its_assets(console_gateway):
    with httpx.Client(base_url=console_gateway.admin_url, trust_env=False, timeout=10) as http:
        page = http.get("/keys")
        assert page.status_code == 200
        if "is not built into this binary" in page.text:
            pytest.fail(
                "this gem-proxy was built without ui/dist: run scripts/build-ui.sh, then cargo build",
                pytrace=False,
            )
        assert page.headers["cache-control"] == "no-cache"
        assert "script-src 'self' 'wasm-unsafe-eval'" in page.headers["content-security-policy"]
        boot_path = next(p for p in page.text.split('"') if p.endswith(".js") and "/boot-" in p)
        boot = http.get(boot_path)
        assert boot.status_code == 200 and boot.headers["cache-control"].endswith("immutable")
        wasm_name = boot.text.split('new URL("./', 1)[1].split('"', 1)[0]
        gz = http.get(f"/assets/{wasm_name}", headers={"accept-encoding": "gzip"})
        assert gz.status_code == 200
        assert gz.headers["content-encoding"] == "gzip"
        assert gz.headers["content-type"] == "application/wasm"
        assert gz.content[:4] == b"\0asm"  # httpx decoded the gzip
        assert http.get("/assets/missing-0000.js").status_code == 404
        # Non-GET stays a Google-shaped 404.
        r = http.post("/keys")
        assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"


def test_the_console_in_chromium(console_gateway, mock: Mock):
    _require_tools()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    env = dict(
        os.environ,
        CONSOLE_URL=console_gateway.admin_url,
        PROXY_URL=console_gateway.url,
        MOCK_URL=mock.url,
        ADMIN_TOKEN=ADMIN_TOKEN,
        ARTIFACTS=str(ARTIFACTS),
        CHROMIUM=CHROMIUM,
        NODE_PATH=str(ROOT / "node_modules"),
    )
    result = subprocess.run(
        ["node", str(SCRIPT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = result.stdout + result.stderr
    print(out)
    assert result.returncode == 0, out[-8000:]
    shots = sorted(p.name for p in ARTIFACTS.glob("*.png"))
    for page in ("sign-in", "overview", "usage", "key-events", "keys", "config", "tokens", "errors"):
        assert any(s.endswith(f"-{page}.png") for s in shots), f"no screenshot of {page}: {shots}"
