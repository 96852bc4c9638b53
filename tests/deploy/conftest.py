"""What the deployment tests need from the machine: podman (with a local Debian base image) and
nginx, installed with apt when missing.

Our CI machines have no Docker engine and reach no image registry, so the image is built with
podman on a base made locally from Debian packages (mmdebstrap). Everything particular to these
machines lives here, not in deploy/: podman runs only with runc, cgroupfs, no default ulimits and
host networking, and pip inside a build trusts only the CA certificates the host trusts, so the
base image gets the host's extra certificates (``update-ca-certificates``) and PIP_CERT /
SSL_CERT_FILE pointing at the bundle. Without root and without the tools the tests skip, saying
so; with root a missing tool is installed, never skipped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")
BASE_REPO = "localhost/tandem-base"
CONTAINERS_CONF = """\
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""
_apt_updated = False


def ensure_installed(commands: dict[str, str]) -> None:
    """Install the Debian package of each missing command (command → package); skip if we can't."""
    missing = {cmd: pkg for cmd, pkg in commands.items() if shutil.which(cmd) is None}
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"needs {', '.join(sorted(missing))} (apt-get install as root installs them)")
    global _apt_updated
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=300)
        _apt_updated = True
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *sorted(set(missing.values()))],
        check=True, env=env, timeout=600, capture_output=True,
    )  # fmt: skip


class Podman:
    """``podman`` with this machine's settings: runc, cgroupfs, no default ulimits."""

    def __init__(self, conf: Path) -> None:
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def __call__(self, *args: str, timeout: float = 120, check: bool = True):
        out = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and out.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {out.returncode}\n{out.stderr}")
        return out


@pytest.fixture(scope="session")
def podman(tmp_path_factory) -> Podman:
    ensure_installed({"podman": "podman", "mmdebstrap": "mmdebstrap", "runc": "runc"})
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return Podman(conf)


@pytest.fixture(scope="session")
def nginx_installed() -> None:
    ensure_installed({"nginx": "nginx"})


def extra_ca_certs() -> list[Path]:
    return sorted(EXTRA_CA_DIR.rglob("*.crt")) if EXTRA_CA_DIR.is_dir() else []


@pytest.fixture(scope="session")
def base_image(podman, tmp_path_factory) -> str:
    """Debian bookworm minbase + python3 + venv, trusting the host's CAs; made once, then cached.

    The tag carries a hash of the host's extra certificates, so a changed set makes a new base.
    """
    certs = extra_ca_certs()
    digest = hashlib.sha256(b"".join(c.read_bytes() for c in certs)).hexdigest()[:12]
    name = f"{BASE_REPO}:bookworm-{digest}"
    if podman("image", "exists", name, check=False).returncode == 0:
        return name
    tar = tmp_path_factory.mktemp("base") / "base.tar"
    hooks = []
    if certs:
        copy = " ".join(str(c) for c in certs)
        hooks += [
            f"--customize-hook=copy-in {copy} /usr/local/share/ca-certificates/",
            '--customize-hook=chroot "$1" update-ca-certificates',
        ]
    subprocess.run(
        ["mmdebstrap", "--quiet", "--variant=minbase",
         "--include=python3,python3-venv,ca-certificates", *hooks, "bookworm", str(tar)],
        check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    podman(
        "import",
        "--change", f"ENV PIP_CERT={bundle}",
        "--change", f"ENV SSL_CERT_FILE={bundle}",
        str(tar), name,
        timeout=300,
    )  # fmt: skip
    tar.unlink()
    return name
