"""The operations scripts against real processes: scripts/monitor.sh (a running gateway and a real
Prometheus) and scripts/backup.sh (files, certificates and a Redis snapshot from Debian's
redis-server, started here on a free port)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import _binary, _stop, free_port
from helpers import MODEL
from test_observability import gateway, prometheus, wait_for  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
BODY = {"contents": [{"parts": [{"text": "hello"}]}]}


def run(script: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPTS / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=cwd or ROOT,
    )


# ----------------------------------------------------------------------------- monitor.sh


def test_help_and_bad_usage_of_every_script() -> None:
    for script in ("deploy.sh", "monitor.sh", "backup.sh", "build-image.sh", "make-base-images.sh"):
        out = run(script, "--help")
        assert out.returncode == 0 and "Exit codes" in out.stdout, (script, out.stdout, out.stderr)
        assert run(script, "--no-such-option").returncode == 2, script


def test_monitor_status_shows_each_gateway_and_fails_for_one_that_is_down(gateway) -> None:  # noqa: F811
    for _ in range(3):
        httpx.post(f"{gateway.url}/v1beta/models/{MODEL}:generateContent", json=BODY, timeout=10).raise_for_status()
    down = f"http://127.0.0.1:{free_port()}"
    out = run("monitor.sh", "status", "--url", gateway.admin_url, "--url", down)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:2] == ["GATEWAY", "READY"]
    mine = next(line for line in lines if line.startswith(gateway.admin_url))
    assert mine.split()[1:6] == ["yes", "2/0/0/0", "of", "2", "3"], mine  # ready, keys, 3 requests in 5 min
    assert mine.split()[6] == "0%", mine  # no errors
    assert mine.endswith(" ms"), mine  # a p99
    assert any(line.startswith(down) and "DOWN" in line for line in lines), out.stdout
    ok = run("monitor.sh", "status", "--url", gateway.admin_url)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_monitor_watch_refreshes_and_metrics_filters(gateway) -> None:  # noqa: F811
    out = run("monitor.sh", "watch", "--url", gateway.admin_url, "--interval", "0", "--count", "2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("GATEWAY") == 2
    metrics = run("monitor.sh", "metrics", "--url", gateway.admin_url, "gem_proxy_keys")
    assert metrics.returncode == 0
    assert metrics.stdout and all(line.startswith(("gem_proxy_keys", "# ")) for line in metrics.stdout.splitlines())


def test_monitor_report_from_prometheus_with_charts(gateway, prometheus, tmp_path: Path) -> None:  # noqa: F811
    http = httpx.Client(timeout=10, trust_env=False)

    def scraped_requests() -> float:
        res = prometheus.get("/api/v1/query", params={"query": "sum(gem_proxy_requests_total)"}).json()
        return float(res["data"]["result"][0]["value"][1]) if res["data"]["result"] else 0.0

    # Traffic over several scrapes (a rate needs two samples that differ).
    for _ in range(3):
        for _ in range(2):
            http.post(f"{gateway.url}/v1beta/models/{MODEL}:generateContent", json=BODY).raise_for_status()
        total = httpx.get(f"{gateway.admin_url}/performance").json()["overall"]["requests_5m"]
        wait_for("Prometheus to scrape the requests", lambda: scraped_requests() == total)
    # Google says 429 to both keys: both rest (rate_limited), and the client gets the 429.
    r = http.post(f"{gateway.url}/v1beta/models/{MODEL}:generateContent", json=BODY, headers={"x-mock-error": "429"})
    assert r.status_code == 429
    sent = int(httpx.get(f"{gateway.admin_url}/performance").json()["overall"]["requests_5m"])

    def scraped() -> bool:
        res = prometheus.get("/api/v1/query", params={"query": "sum(gem_proxy_key_cooldowns_total)"}).json()
        return bool(res["data"]["result"]) and float(res["data"]["result"][0]["value"][1]) >= 2

    wait_for("Prometheus to scrape the rests", scraped)
    time.sleep(2)  # two more scrapes: the range for the charts has points
    out_dir = tmp_path / "report"
    out = run("monitor.sh", "report", "--prometheus", str(prometheus.base_url), "--out", str(out_dir))
    assert out.returncode == 0, out.stdout + out.stderr
    md = (out_dir / "report.md").read_text()
    assert out.stdout.strip() == str(out_dir / "report.md")
    assert md.startswith("# gem-proxy report: the last 1h")
    assert f"| Requests | {sent} |" in md, md
    assert "| generate | 2xx |" in md and "| generate | 4xx |" in md
    rests = md.split("## Keys that rested, and why")[1].split("##")[0]
    assert "| key1 | rate_limited | 1 |" in rests and "| key2 | rate_limited | 1 |" in rests, rests
    assert "| prompt |" in md.split("## Tokens")[1].split("##")[0]
    for png in ("traffic.png", "latency.png"):
        data = (out_dir / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, (png, out.stderr)
        assert f"]({png})" in md
    down = run("monitor.sh", "report", "--prometheus", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path / "x"))
    assert down.returncode == 1 and "not reachable" in down.stderr


# ----------------------------------------------------------------------------- backup.sh


class Redis:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run scripts/setup.sh", pytrace=False)
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--daemonize", "no", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--dbfilename", "dump.rdb"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for("redis to answer PING", lambda: self.cli("ping") == "PONG", timeout=10, every=0.05)

    def cli(self, *args: str) -> str:
        out = subprocess.run(["redis-cli", "-u", self.url, *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


@pytest.fixture
def install(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """A gateway installation on disk (config, certificate, ACME cache, data) and a live Redis."""
    base = tmp_path / "install"
    (base / "acme").mkdir(parents=True)
    (base / "data").mkdir()
    config = base / "proxy.yaml"
    config.write_text(
        'server: { host: "127.0.0.1", port: 8443 }\n'
        'gemini:\n  api_keys:\n    - { id: "key1", key: "${GEMINI_API_KEY_1}" }\n'
        'admin: { token: "${GEM_PROXY_ADMIN_TOKEN:-}" }\n'
    )
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-keyout", str(base / "key.pem"), "-out", str(base / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    (base / "acme" / "cached_account_abc").write_bytes(os.urandom(64))
    (base / "data" / "usage.sqlite3").write_bytes(os.urandom(256))
    env_file = base / "gem-proxy.env"
    env_file.write_text("GEMINI_API_KEY_1=AIzaSECRETKEY\n")
    (base / "redis").mkdir()
    redis = Redis(base / "redis")
    redis.start()
    try:
        yield {"base": base, "config": config, "env": env_file, "redis_dir": base / "redis", "redis": redis}  # type: ignore[dict-item]
    finally:
        redis.stop()


def backup_args(p: dict, *extra: str) -> list[str]:
    base = p["base"]
    return [
        "--config", str(p["config"]), "--cert", str(base / "cert.pem"), "--key", str(base / "key.pem"),
        "--acme-dir", str(base / "acme"), "--data-dir", str(base / "data"), "--env-file", str(p["env"]),
        "--redis-url", p["redis"].url, "--out", str(base.parent / "backups"), *extra,
    ]  # fmt: skip


def tree(base: Path) -> dict[str, str]:
    return {
        str(f.relative_to(base)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(base.rglob("*"))
        if f.is_file()
    }


ENV = {"GEMINI_API_KEY_1": "AIzaFROMENV", "GEM_PROXY_BIN": str(_binary("GEM_PROXY_BIN", "gem-proxy"))}


def test_backup_then_restore_round_trips_config_certificates_and_redis(install: dict) -> None:
    base, redis = install["base"], install["redis"]
    redis.cli("set", "gem-proxy:lease:key1", "before")
    before = tree(base)
    out = run("backup.sh", *backup_args(install), env=ENV)
    assert out.returncode == 0, out.stderr
    archive = Path(out.stdout.strip().splitlines()[-1])
    assert archive.name.startswith("gem-proxy-backup-") and archive.name.endswith(".tar.gz")
    assert archive.stat().st_mode & 0o077 == 0, "the archive holds a private key: owner-only"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "./redis/dump.rdb" in names and "./tls-key/key.pem" in names and "./acme/cached_account_abc" in names
    assert not any("secrets" in n for n in names), names  # the env file stays out by default
    assert "AIzaSECRETKEY" not in archive.read_bytes().decode("latin-1")

    # Things change after the backup.
    redis.cli("set", "gem-proxy:lease:key1", "after")
    install["config"].write_text(install["config"].read_text().replace("8443", "9443"))
    (base / "cert.pem").write_text("not the certificate any more\n")
    (base / "acme" / "cached_account_abc").write_bytes(b"changed")

    # Redis must be stopped before its snapshot is put back.
    busy = run("backup.sh", "--restore", str(archive), "--redis-dir", str(install["redis_dir"]), "--redis-url", redis.url, env=ENV)
    assert busy.returncode == 1 and "stop it" in busy.stderr, busy.stderr
    redis.stop()
    keep = base.parent / "replaced"
    out = run("backup.sh", "--restore", str(archive), "--redis-dir", str(install["redis_dir"]), "--redis-url",
              redis.url, "--keep-dir", str(keep), env=ENV)  # fmt: skip
    assert out.returncode == 0, out.stderr
    after = tree(base)
    for f in ("proxy.yaml", "cert.pem", "key.pem", "acme/cached_account_abc", "data/usage.sqlite3", "gem-proxy.env"):
        assert after[f] == before[f], f
    # What it replaced is kept.
    assert (keep / "config" / "proxy.yaml").read_text().count("9443") == 1
    assert (keep / "tls-cert" / "cert.pem").read_text() == "not the certificate any more\n"
    assert (keep / "acme" / "cached_account_abc").read_bytes() == b"changed"
    # A Redis started on the restored snapshot has the value from before.
    redis.start()
    assert redis.cli("get", "gem-proxy:lease:key1") == "before"
    # Re-running the same restore changes nothing.
    again = run("backup.sh", "--restore", str(archive), "--keep-dir", str(base.parent / "again"), env=ENV)
    assert again.returncode == 0, again.stderr
    assert tree(base) == after and not (base.parent / "again").exists()


def test_secrets_only_with_include_secrets_and_never_literal(install: dict) -> None:
    out = run("backup.sh", *backup_args(install, "--include-secrets"), env=ENV)
    assert out.returncode == 0, out.stderr
    with tarfile.open(out.stdout.strip().splitlines()[-1]) as tar:
        assert "./secrets/gem-proxy.env" in tar.getnames()
    install["config"].write_text(install["config"].read_text().replace("${GEMINI_API_KEY_1}", "AIzaLITERAL"))
    refused = run("backup.sh", *backup_args(install), env=ENV)
    assert refused.returncode == 1 and "literally" in refused.stderr, refused.stderr
    assert "AIzaLITERAL" not in refused.stderr


def test_a_damaged_archive_is_refused_without_touching_anything(install: dict) -> None:
    base = install["base"]
    out = run("backup.sh", *backup_args(install), env=ENV)
    assert out.returncode == 0, out.stderr
    archive = Path(out.stdout.strip().splitlines()[-1])
    install["config"].write_text(install["config"].read_text() + "# edited since\n")
    before = tree(base)
    keep = base.parent / "kept"

    truncated = archive.with_name("truncated.tar.gz")
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    # Valid gzip and tar, but a file no longer matches its checksum.
    tampered = archive.with_name("tampered.tar.gz")
    unpacked = base.parent / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    (unpacked / "tls-cert" / "cert.pem").write_text("forged\n")
    with tarfile.open(tampered, "w:gz") as tar:
        tar.add(unpacked, arcname=".")
    # Intact, but its config does not pass check-config.
    invalid = archive.with_name("invalid.tar.gz")
    (unpacked / "tls-cert" / "cert.pem").write_bytes((base / "cert.pem").read_bytes())
    (unpacked / "config" / "proxy.yaml").write_text("gemini: { api_keys: [] }\n")
    files = sorted(f for f in unpacked.rglob("*") if f.is_file() and f.name != "MANIFEST")
    (unpacked / "MANIFEST").write_text(
        "".join(f"{hashlib.sha256(f.read_bytes()).hexdigest()}  ./{f.relative_to(unpacked)}\n" for f in files)
    )
    with tarfile.open(invalid, "w:gz") as tar:
        tar.add(unpacked, arcname=".")

    for bad, why in ((truncated, "not a readable gzip"), (tampered, "checksums"), (invalid, "check-config")):
        out = run("backup.sh", "--restore", str(bad), "--keep-dir", str(keep), env=ENV)
        assert out.returncode == 3, (bad.name, out.stderr)
        assert why in out.stderr and "nothing restored" in out.stderr, (bad.name, out.stderr)
        assert tree(base) == before, bad.name
        assert not keep.exists(), bad.name
    # A Redis that was running is still running, with its data.
    assert install["redis"].cli("ping") == "PONG"
