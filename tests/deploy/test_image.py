"""deploy/Dockerfile, built and run: the image operators deploy.

Built with ``deploy/build-image.sh`` (podman here, ``--build-arg BASE_IMAGE`` = the local Debian
base) and run as ``podman run IMAGE --listen 127.0.0.1:PORT`` on the host network: health says
SERVING, the server is not root, a real edge agent on the host gets the local decode's answer
through it, the image's own HEALTHCHECK passes, and ``podman stop`` (SIGTERM) ends it with exit
status 0 inside the grace period.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem.defaults import bundle_path
from tandem.edge.client import EdgeClient
from tandem.emulate.processes import EdgeProcess, free_port
from tandem.runtime.seq2seq import Seq2Seq

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/tandem-cloud:test"
GRACE_S = 20  # podman stop's timeout before SIGKILL; cloud.yaml's grace_period_s is 20 too
MAX_IMAGE_BYTES = 1 << 30


@pytest.fixture(scope="session")
def image(podman, base_image) -> str:
    started = time.monotonic()
    out = subprocess.run(
        [str(ROOT / "deploy" / "build-image.sh"), "--network", "host",
         "--build-arg", f"BASE_IMAGE={base_image}"],
        env={**podman.env, "CONTAINER_ENGINE": "podman", "TANDEM_IMAGE": IMAGE},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    size = int(podman("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout)
    print(f"\nimage {IMAGE} on {base_image}: {size / 1e6:.0f} MB, built in "
          f"{time.monotonic() - started:.0f} s")  # fmt: skip
    assert size < MAX_IMAGE_BYTES, f"the image grew to {size / 1e6:.0f} MB"
    return IMAGE


@pytest.fixture
def container(podman, image):
    port = free_port()
    cid = podman(
        "run", "--detach", "--network", "host", "--health-interval", "disable",
        "--env", f"TANDEM_HEALTH_ADDRESS=127.0.0.1:{port}",
        image, "--listen", f"127.0.0.1:{port}",
    ).stdout.strip()  # fmt: skip
    try:
        wait_serving(f"127.0.0.1:{port}", podman, cid)
        yield cid, port
    finally:
        podman("rm", "--force", "--time", "0", cid, check=False)


def wait_serving(address: str, podman, cid: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            state = podman("inspect", cid, "--format", "{{.State.Status}}").stdout.strip()
            assert state == "running", podman("logs", cid, check=False).stderr
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise AssertionError(f"the container did not serve in {timeout_s} s")


def test_the_image_serves_a_host_agent_and_stops_cleanly(podman, container, tmp_path):
    cid, port = container
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="tandem.v1.Decoder"), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    status = podman("exec", cid, "cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids == ["10001"] * 4, status  # real, effective, saved, filesystem: not root

    hc = podman("healthcheck", "run", cid, check=False)
    assert hc.returncode == 0, hc.stdout + hc.stderr

    model = Seq2Seq.load(bundle_path())
    sock = str(tmp_path / "edge.sock")
    edge = EdgeProcess(
        {
            "socket": sock,
            "cloud": {"addresses": [f"127.0.0.1:{port}"]},
            "policy": {"policy": "always_cloud"},
            "metrics_port": 0,
        },
        tmp_path,
    )
    edge.start()
    try:
        with EdgeClient(sock) as client:
            for text, target in (("12 7", "en"), ("4096 31", "fr"), ("700 5 19", "de")):
                answer = client.ask(text, target=target)
                assert answer.route == "cloud" and not answer.fallbacks, answer
                assert answer.text == model.generate(text, target=target).text
    finally:
        edge.stop()

    started = time.monotonic()
    podman("stop", "--time", str(GRACE_S), cid, timeout=GRACE_S + 30)
    took = time.monotonic() - started
    code = podman("inspect", cid, "--format", "{{.State.ExitCode}}").stdout.strip()
    assert code == "0", podman("logs", cid, check=False).stderr
    assert took < GRACE_S, f"podman stop took {took:.1f} s: SIGKILL, not a drain"


def test_healthcheck_fails_when_nothing_serves(podman, image):
    # The HEALTHCHECK really asks: pointed at a port nobody serves, it fails.
    out = podman(
        "run", "--rm", "--network", "host", "--entrypoint", "/bin/sh",
        "--env", f"TANDEM_HEALTH_ADDRESS=127.0.0.1:{free_port()}",
        image, "-c", 'tandem cloud health --timeout-s 1 --address "$TANDEM_HEALTH_ADDRESS"',
        check=False, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
