"""Podman for the container tests: the engine, the local base images and the gem-proxy image.

Every name a test creates carries RUN_ID (gp-e2e-<hex>), so parallel runs on one machine (and other
users of the same Podman storage) never meet; everything is removed at teardown.

The runtime stage is built on every run around the host's binary (target/debug/gem-proxy, as the
test command builds it): seconds. GEM_PROXY_E2E_FULL_IMAGE=1 builds the whole multi-stage
Dockerfile instead (the Rust builder stage, the console in WebAssembly; many minutes cold).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
RUN_ID = f"gp-e2e-{secrets.token_hex(4)}"
FULL_IMAGE = os.environ.get("GEM_PROXY_E2E_FULL_IMAGE") == "1"

# Podman in CI sandboxes needs runc and explicit rlimits (see containers.conf).
os.environ.setdefault("CONTAINERS_CONF", str(Path(__file__).with_name("containers.conf")))


def podman_path() -> str:
    path = shutil.which("podman")
    if path is None:
        pytest.fail("podman is not installed: run scripts/setup.sh (it installs Podman from Debian)", pytrace=False)
    return path


def podman(*args: str, check: bool = True, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Runs `podman ARGS`; on failure (with check) the test fails showing its output."""
    out = subprocess.run([podman_path(), *args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and out.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}", pytrace=False)
    return out


def inspect(name: str) -> dict[str, Any]:
    return json.loads(podman("inspect", name).stdout)[0]


def script(name: str, *args: str, timeout: float = 3600, env: dict[str, str] | None = None) -> str:
    """Runs scripts/NAME ARGS; fails the test with its output when it fails. Returns stdout."""
    out = subprocess.run(
        [str(ROOT / "scripts" / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )
    if out.returncode != 0:
        pytest.fail(f"scripts/{name} {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}", pytrace=False)
    return out.stdout


def host_binary(name: str) -> Path:
    path = TARGET_DIR / "debug" / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{path} not found: run `cargo build --workspace --bins`", pytrace=False)
    return path


_images: dict[str, str] = {}


def base_images() -> None:
    """The stand-in base images (made once per machine, then found in Podman's storage)."""
    if "bases" not in _images:
        script("make-base-images.sh", *(["--rust"] if FULL_IMAGE else []))
        _images["bases"] = "done"


def gateway_image() -> str:
    """The gem-proxy image under test, built once per test session; removed by `cleanup_images`."""
    if "gateway" not in _images:
        base_images()
        tag = f"localhost/{RUN_ID}-gem-proxy:test"
        if FULL_IMAGE:
            script("build-image.sh", "--tag", tag)
        else:
            script("build-image.sh", "--prebuilt", str(host_binary("gem-proxy")), "--tag", tag)
        _images["gateway"] = tag
    return _images["gateway"]


def cleanup_images() -> None:
    tag = _images.pop("gateway", None)
    if tag:
        podman("rmi", "--force", tag, check=False)
