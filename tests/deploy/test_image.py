"""deploy/Dockerfile, built and run: the image operators deploy.

Built with ``deploy/build-image.sh`` (podman here, ``--build-arg BASE_IMAGE`` = the local Debian
base) and run as ``podman run IMAGE --listen 127.0.0.1:PORT`` on the host network: health says
SERVING, the server is not root, a real edge agent on the host gets the local decode's answer
through it, the image's own HEALTHCHECK passes, and ``podman stop`` (SIGTERM) ends it with exit
status 0 inside the grace period.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import subprocess
import time
import urllib.request
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
    # Each build leaves the previous image and its build stage untagged (about 1 GB): drop them,
    # so CI machines do not fill up run after run. The base image stays (it is tagged).
    podman("image", "prune", "--force", timeout=300, check=False)
    size = int(podman("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout)
    print(f"\nimage {IMAGE} on {base_image}: {size / 1e6:.0f} MB, built in "
          f"{time.monotonic() - started:.0f} s")  # fmt: skip
    assert size < MAX_IMAGE_BYTES, f"the image grew to {size / 1e6:.0f} MB"
    return IMAGE


@pytest.fixture
def run_image(podman, image):
    """Start the image with ``podman run`` options and arguments; removed after the test."""
    started = []

    def run(options: list[str], args: list[str], health: str) -> str:
        cid = podman(
            "run", "--detach", "--network", "host", "--health-interval", "disable",
            "--env", f"TANDEM_HEALTH_ADDRESS={health}", *options, image, *args,
        ).stdout.strip()  # fmt: skip
        started.append(cid)
        wait_serving(health, podman, cid)
        return cid

    yield run
    for cid in started:
        podman("rm", "--force", "--time", "0", cid, check=False)


@pytest.fixture
def container(run_image):
    port = free_port()
    address = f"127.0.0.1:{port}"
    return run_image([], ["--listen", address], health=address), port


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

    ask_through_an_edge_agent(tmp_path, {"addresses": [f"127.0.0.1:{port}"]})
    stop_cleanly(podman, cid)


def test_the_shipped_config_with_tls_and_tokens(podman, run_image, tmp_path, monkeypatch):
    # What a deployment runs: /etc/tandem/cloud.yaml (TLS + bearer tokens on the client port,
    # plaintext health-only port, metrics), Secrets as a mounted folder and an env variable.
    # Only the ports are moved, so the test shares the host network with other processes.
    tls = tmp_path / "tls"
    make_server_certificate(tls)
    token = secrets.token_urlsafe(18)
    port, health, metrics = free_port(), free_port(), free_port()
    cid = run_image(
        ["--env", f"TANDEM_CLOUD_TOKENS=phone-1={token}", "--volume", f"{tls}:/etc/tandem/tls:ro"],
        ["--config", "/etc/tandem/cloud.yaml", "--listen", f"127.0.0.1:{port}",
         "--health-listen", f"127.0.0.1:{health}", "--metrics-listen", f"127.0.0.1:{metrics}"],
        health=f"127.0.0.1:{health}",
    )  # fmt: skip
    assert podman("healthcheck", "run", cid, check=False).returncode == 0
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as reply:
        assert b"tandem_cloud" in reply.read()
    cloud = {
        "addresses": [f"127.0.0.1:{port}"],
        "ca_file": str(tls / "ca.crt"),
        "token_env": "TANDEM_TEST_TOKEN",
    }
    monkeypatch.setenv("TANDEM_TEST_TOKEN", token)  # the agent's token_env
    ask_through_an_edge_agent(tmp_path, cloud)
    stop_cleanly(podman, cid)


def ask_through_an_edge_agent(workdir: Path, cloud: dict) -> None:
    """A real agent on the host, always routing to the cloud: answers equal local decodes."""
    model = Seq2Seq.load(bundle_path())
    sock = str(workdir / "edge.sock")
    config = {"socket": sock, "cloud": cloud, "policy": {"policy": "always_cloud"}}
    edge = EdgeProcess({**config, "metrics_port": 0}, workdir)
    edge.start()
    try:
        with EdgeClient(sock) as client:
            for text, target in (("12 7", "en"), ("4096 31", "fr"), ("700 5 19", "de")):
                answer = client.ask(text, target=target)
                assert answer.route == "cloud" and not answer.fallbacks, answer
                assert answer.text == model.generate(text, target=target).text
    finally:
        edge.stop()


def stop_cleanly(podman, cid: str) -> None:
    """``podman stop`` (SIGTERM): the server drains and exits 0 before the grace period ends."""
    started = time.monotonic()
    podman("stop", "--time", str(GRACE_S), cid, timeout=GRACE_S + 30)
    took = time.monotonic() - started
    code = podman("inspect", cid, "--format", "{{.State.ExitCode}}").stdout.strip()
    assert code == "0", podman("logs", cid, check=False).stderr
    assert took < GRACE_S, f"podman stop took {took:.1f} s: SIGKILL, not a drain"


def make_server_certificate(out: Path) -> None:
    """A throwaway CA (ca.crt) and a server certificate for 127.0.0.1 (tls.crt, tls.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def cert(subject: str, issuer: str, public, signer, extension):
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(extension, critical=False)
            .sign(signer, hashes.SHA256())
        )

    ca = cert("test CA", "test CA", ca_key.public_key(), ca_key,
              x509.BasicConstraints(ca=True, path_length=None))  # fmt: skip
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    server = cert("127.0.0.1", "test CA", key.public_key(), ca_key, san)
    out.mkdir(mode=0o755)
    pem = serialization.Encoding.PEM
    (out / "ca.crt").write_bytes(ca.public_bytes(pem))
    (out / "tls.crt").write_bytes(server.public_bytes(pem))
    (out / "tls.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    for f in out.iterdir():
        f.chmod(0o644)  # the container's uid 10001 reads them, as from a Secret volume


def test_healthcheck_fails_when_nothing_serves(podman, image):
    # The HEALTHCHECK really asks: pointed at a port nobody serves, it fails.
    out = podman(
        "run", "--rm", "--network", "host", "--entrypoint", "/bin/sh",
        "--env", f"TANDEM_HEALTH_ADDRESS=127.0.0.1:{free_port()}",
        image, "-c", 'tandem cloud health --timeout-s 1 --address "$TANDEM_HEALTH_ADDRESS"',
        check=False, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
