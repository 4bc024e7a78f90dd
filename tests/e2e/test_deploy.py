"""scripts/deploy.sh for real, through Podman's Docker API: a deploy that becomes ready, then a
new image that never does, which is rolled back to the one before."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from compose_stack import ApiSocket, Stack, make_stack, tear_down
from podman import FULL_IMAGE, ROOT, RUN_ID, base_images, host_binary, inspect, podman

pytestmark = pytest.mark.timeout(3600 if FULL_IMAGE else 300)

TAG = f"localhost/{RUN_ID}-deploy:latest"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    base_images()
    api = ApiSocket()
    s = make_stack(api, "deploy", TAG, [])
    try:
        yield s
    finally:
        left = tear_down(s)
        api.stop()
        for tag in (TAG, TAG.replace(":latest", ":previous"), TAG.replace(":latest", ":failed")):
            podman("rmi", "--force", tag, check=False)
        assert left == {"containers": [], "volumes": [], "networks": []}, left


def deploy(stack: Stack, binary: str, timeout: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(ROOT / "scripts" / "deploy.sh"),
            "--project", stack.project, "--tag", TAG, "--prebuilt", binary,
            "--services", "gem-proxy redis", "--timeout", str(timeout),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        env={**stack.env, "VIRTUAL_ENV": os.environ.get("VIRTUAL_ENV", "")},
        cwd=ROOT,
        timeout=600,
    )


def gateway_image_id(stack: Stack) -> str:
    return inspect(stack.container("gem-proxy"))["Image"]


def test_deploy_then_roll_back_an_image_that_never_gets_ready(stack: Stack) -> None:
    first = deploy(stack, str(host_binary("gem-proxy")), timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "gem-proxy deployed" in first.stdout
    assert f"console:    http://127.0.0.1:{stack.ports['admin']}/" in first.stdout, first.stdout
    assert httpx.get(f"{stack.url('admin')}/health/ready", timeout=5).status_code == 200
    good = gateway_image_id(stack)

    # A "new version" that cannot serve: the mock's binary in the gateway's place.
    second = deploy(stack, str(host_binary("gem-proxy-mock")), timeout=20)
    assert second.returncode == 1, second.stdout + second.stderr
    assert "rolling back to the previous image" in second.stderr
    assert "gem-proxy rolled back" in second.stdout
    assert gateway_image_id(stack) == good
    assert inspect(TAG.replace(":latest", ":failed"))["Id"] != good  # kept, to look into
    assert httpx.get(f"{stack.url('admin')}/health/ready", timeout=5).status_code == 200
