"""Fixtures for the end-to-end tests: a real gem-proxy in front of gem-proxy-mock.

The mock stands in for Google's API (generativelanguage.googleapis.com) and records
everything it receives (GET /_mock/requests), so tests can check what the upstream saw.

Binaries come from target/debug (built by `cargo build --workspace --bins`, which
scripts/test.sh runs first); GEM_PROXY_BIN / GEM_PROXY_MOCK_BIN override them.

Every process started here is started directly from its binary (no shell, no shim) and
stopped by its own Popen handle at teardown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

from helpers import DIRECT, UPSTREAM_KEYS

ROOT = Path(__file__).resolve().parents[2]
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))

STARTUP_TIMEOUT = float(os.environ.get("GEM_PROXY_E2E_STARTUP_TIMEOUT", "30"))
STOP_TIMEOUT = 10.0

# Loopback traffic must never go through a proxy from the environment.
for _var in ("NO_PROXY", "no_proxy"):
    _cur = os.environ.get(_var, "")
    if "127.0.0.1" not in _cur:
        os.environ[_var] = ",".join(x for x in (_cur, "127.0.0.1,localhost") if x)


def _binary(env_var: str, name: str) -> Path:
    path = Path(os.environ.get(env_var) or TARGET_DIR / "debug" / name)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"{name} binary not found at {path}: run `cargo build --workspace --bins` "
            f"(or set {env_var})",
            pytrace=False,
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, limit: int = 6000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no log>"
    return text[-limit:] if len(text) > limit else text


def _stop(proc: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> int | None:
    """SIGTERM the process we started, wait, SIGKILL as a last resort. Returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    return proc.returncode


# --------------------------------------------------------------------------- mock


@dataclass
class Mock:
    url: str
    proc: subprocess.Popen[Any]
    log: Path
    http: httpx.Client = field(repr=False)

    def requests(self) -> list[dict[str, Any]]:
        """Everything the mock received since the last reset, control calls excluded."""
        r = self.http.get(f"{self.url}/_mock/requests")
        r.raise_for_status()
        return [x for x in r.json() if not x.get("path", "").startswith("/_mock/")]

    def reset(self) -> None:
        self.http.post(f"{self.url}/_mock/reset").raise_for_status()


def _start_mock(tmp: Path, extra: tuple[str, ...] = ()) -> Mock:
    """Starts gem-proxy-mock; `extra` are more command-line arguments."""
    binary = _binary("GEM_PROXY_MOCK_BIN", "gem-proxy-mock")
    log = tmp / "mock.stderr.log"
    # Several stream chunks with a small delay, so streaming is observable as streaming.
    args = [str(binary), "--host", "127.0.0.1", "--port", "0", "--chunks", "4", "--chunk-delay-ms", "20", *extra]
    with open(log, "wb") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)

    # Read the "listening on http://127.0.0.1:PORT" line with a deadline; keep draining
    # stdout afterwards so the mock can never block on a full pipe.
    first_line: list[str] = []
    ready = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            if not ready.is_set():
                first_line.append(raw.decode(errors="replace").strip())
                ready.set()
        ready.set()

    threading.Thread(target=reader, name="mock-stdout", daemon=True).start()
    if not ready.wait(STARTUP_TIMEOUT) or not first_line:
        code = _stop(proc)
        pytest.fail(
            f"gem-proxy-mock did not report readiness (exit code {code}); stderr:\n{_tail(log)}",
            pytrace=False,
        )
    line = first_line[0]
    prefix = "listening on "
    if not line.startswith(prefix):
        _stop(proc)
        pytest.fail(f"unexpected first line from gem-proxy-mock: {line!r}\n{_tail(log)}", pytrace=False)
    url = line[len(prefix) :].strip().rstrip("/")
    return Mock(url=url, proc=proc, log=log, http=httpx.Client(timeout=10, trust_env=False))


@pytest.fixture(scope="session")
def mock(tmp_path_factory: pytest.TempPathFactory):
    m = _start_mock(tmp_path_factory.mktemp("mock"))
    try:
        yield m
    finally:
        m.http.close()
        _stop(m.proc)


# --------------------------------------------------------------------------- gateway

_SESSION: dict[str, Any] = {}


@dataclass
class Gateway:
    url: str
    admin_url: str
    proc: subprocess.Popen[Any]
    config: Path
    log: Path

    def stderr(self) -> str:
        return _tail(self.log)


CONFIG_TEMPLATE = """\
server:
  host: "127.0.0.1"
  port: {port}
  workers: 2
  max_connections: 1000
  tls: {{ enabled: false }}
gemini:
  base_url: "{upstream}"
  timeout_seconds: 30
  api_keys:
    - {{ id: "key1", key: "{key1}", weight: 1, max_requests_per_minute: 600 }}
    - {{ id: "key2", key: "{key2}", weight: 1, max_requests_per_minute: 600 }}
auth: {{ enabled: false, jwt_secret: "", rate_limit_per_minute: 600 }}
metrics: {{ enabled: true, prometheus_port: {admin_port} }}
log: {{ format: "text" }}
"""


def start_gateway(
    tmp: Path,
    upstream: str,
    config_text: str | Callable[[int, int], str] | None = None,
    extra: str = "",
    env: dict[str, str] | None = None,
) -> Gateway:
    """Starts gem-proxy with a config pointing at `upstream`; waits for /health == 200.

    `extra` is YAML appended to the standard config (sections it does not already have).
    `config_text` replaces it: the YAML, or a function of the proxy and admin ports giving it.
    `env` is added to the process's environment (e.g. `GEM_PROXY__…` overrides)."""
    binary = _binary("GEM_PROXY_BIN", "gem-proxy")
    port, admin_port = free_port(), free_port()
    while admin_port == port:
        admin_port = free_port()
    config = tmp / "gem-proxy.yaml"
    if callable(config_text):
        config_text = config_text(port, admin_port)
    config.write_text(
        config_text
        or CONFIG_TEMPLATE.format(
            port=port, admin_port=admin_port, upstream=upstream, key1=UPSTREAM_KEYS[0], key2=UPSTREAM_KEYS[1]
        )
        + extra
    )
    log = tmp / "gem-proxy.stderr.log"
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env.setdefault("RUST_LOG", "info")
    child_env.setdefault("NO_COLOR", "1")  # the log goes to a file read by people
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [str(binary), "serve", "--config", str(config)],
            stdout=err,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env,
        )
    gw = Gateway(
        url=f"http://127.0.0.1:{port}", admin_url=f"http://127.0.0.1:{admin_port}", proc=proc, config=config, log=log
    )

    deadline = time.monotonic() + STARTUP_TIMEOUT
    last_err = "no answer yet"
    with httpx.Client(timeout=2, trust_env=False) as http:
        while True:
            code = proc.poll()
            if code is not None:
                pytest.fail(
                    f"gem-proxy exited with code {code} during startup; its output:\n{gw.stderr()}",
                    pytrace=False,
                )
            try:
                r = http.get(f"{gw.admin_url}/health")
                if r.status_code == 200:
                    break
                last_err = f"HTTP {r.status_code}: {r.text[:200]}"
            except httpx.HTTPError as e:
                last_err = repr(e)
            if time.monotonic() > deadline:
                _stop(proc)
                pytest.fail(
                    f"gem-proxy /health on {gw.admin_url} not ready after {STARTUP_TIMEOUT}s "
                    f"(last: {last_err}); its output:\n{gw.stderr()}",
                    pytrace=False,
                )
            time.sleep(0.05)
    return gw


@pytest.fixture(scope="session")
def gateway(mock: Mock, tmp_path_factory: pytest.TempPathFactory):
    gw = start_gateway(tmp_path_factory.mktemp("gateway"), mock.url)
    _SESSION["gateway"] = gw
    try:
        yield gw
    finally:
        _SESSION.pop("gateway", None)
        code = _stop(gw.proc)
        if code not in (0, -signal.SIGTERM):
            print(f"\ngem-proxy exited with code {code} after SIGTERM; output:\n{gw.stderr()}")


@pytest.fixture(scope="session")
def gateway_url(request: pytest.FixtureRequest) -> str:
    """Where the clients under test connect: the gateway (or the mock itself, see helpers.DIRECT)."""
    if DIRECT:
        return request.getfixturevalue("mock").url
    return request.getfixturevalue("gateway").url


@pytest.fixture
def upstream(mock: Mock) -> Mock:
    """The mock, with its request log cleared: what the test then reads is its own traffic."""
    mock.reset()
    return mock


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]):
    """On a failing test, append the tail of the gateway's log to the report."""
    outcome = yield
    report = outcome.get_result()
    gw = _SESSION.get("gateway")
    if report.failed and call.when == "call" and gw is not None:
        report.sections.append(("gem-proxy log (tail)", _tail(gw.log, 3000)))
