"""The gem-proxy command line as an operator uses it: check-config, start, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx

from conftest import CONFIG_TEMPLATE, Mock, _binary, free_port, start_gateway
from helpers import UPSTREAM_KEYS


def _config(upstream: str, **over: object) -> str:
    values: dict[str, object] = dict(
        port=free_port(), admin_port=free_port(), upstream=upstream, key1=UPSTREAM_KEYS[0], key2=UPSTREAM_KEYS[1]
    )
    values.update(over)
    return CONFIG_TEMPLATE.format(**values)


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_binary("GEM_PROXY_BIN", "gem-proxy")), "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def test_check_config_accepts_a_valid_file(tmp_path: Path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(_config("http://127.0.0.1:9"))
    r = _check_config(cfg)
    assert r.returncode == 0, f"stdout={r.stdout!r} stderr={r.stderr!r}"
    out = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(out) == 1, f"expected one line, got {r.stdout!r}"
    for key in UPSTREAM_KEYS:
        assert key not in r.stdout + r.stderr, "check-config printed an API key"


def test_check_config_reports_each_problem_with_its_path(tmp_path: Path):
    cfg = tmp_path / "bad.yaml"
    text = _config("http://127.0.0.1:9", port=99999)  # out of range for a port
    text = text.replace("timeout_seconds: 30", "timeout_seconds: 30\n  no_such_option: true")
    cfg.write_text(text)
    r = _check_config(cfg)
    assert r.returncode == 1, f"stdout={r.stdout!r} stderr={r.stderr!r}"
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert lines, "no problem reported"
    assert any("no_such_option" in line for line in lines) or any("server.port" in line for line in lines), lines
    assert all(": " in line for line in lines), f"each line should read 'path: message': {lines}"


def test_check_config_missing_file_fails(tmp_path: Path):
    r = _check_config(tmp_path / "does-not-exist.yaml")
    assert r.returncode == 1
    assert "does-not-exist.yaml" in r.stdout + r.stderr


def test_sigterm_stops_the_gateway_cleanly(mock: Mock, tmp_path: Path):
    gw = start_gateway(tmp_path, mock.url)
    with httpx.Client(timeout=10, trust_env=False) as http:
        assert http.get(f"{gw.admin_url}/health").json()["status"] == "ok"
    t0 = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    try:
        code = gw.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        gw.proc.kill()
        gw.proc.wait()
        raise AssertionError(f"gem-proxy did not exit within 15 s of SIGTERM; log:\n{gw.stderr()}") from None
    assert code == 0, f"exit code {code} after SIGTERM; log:\n{gw.stderr()}"
    assert time.monotonic() - t0 < 5, "an idle gateway should stop at once"
