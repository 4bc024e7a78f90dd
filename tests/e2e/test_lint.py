"""Linters over the deployment files: hadolint on docker/Dockerfile, shellcheck on every script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_dockerfile_passes_hadolint() -> None:
    out = run(str(BIN / "hadolint"), "docker/Dockerfile")
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_script_passes_shellcheck() -> None:
    scripts = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scripts").glob("*.sh"))
    assert "scripts/deploy.sh" in scripts and "scripts/test.sh" in scripts
    out = run(str(BIN / "shellcheck"), "--external-sources", "--severity=style", *scripts)
    assert out.returncode == 0, out.stdout + out.stderr
