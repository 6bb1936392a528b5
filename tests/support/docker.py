"""A private Docker daemon and an offline Debian base image, for the real image builds.

No registry is reachable from the test machines, so the base image is a Debian bookworm
root file system (Python 3.11, venv and pip) made with ``debootstrap`` from Debian's package
mirror and loaded with ``docker import``. The tarball is cached under ``.cache/docker`` (git
ignores ``.cache``) so only the first run pays for debootstrap. The daemon runs as root with
its own data root (a tmpfs when it can be mounted), sockets and pid file under a temporary
directory, and is stopped by the process id this module started, never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTFS_CACHE = REPO / ".cache" / "docker" / "debian-bookworm-python3-rootfs.tar.gz"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = "python3,python3-venv"
BASE_IMAGE = "bastion-test-base:bookworm"
#: Upper bound of the in-memory data root (the test's images take about 1.5 GiB).
DATA_ROOT_TMPFS = "6g"
#: The private daemon's bridge (link-local to this host: no NAT, no outside traffic).
BRIDGE_ADDRESS = "172.31.213.1/24"
#: Set by `make test-docker`: the build test needs root, dockerd, debootstrap and minutes.
ENABLE_VARIABLE = "BASTION_TEST_DOCKER"


def unavailable() -> str | None:
    """Why the real Docker build cannot run here, or None."""
    if os.environ.get(ENABLE_VARIABLE) != "1":
        return f"real Docker builds run with `make test-docker` ({ENABLE_VARIABLE}=1)"
    if os.geteuid() != 0:
        return "the Docker build test starts its own dockerd and needs root"
    missing = [tool for tool in ("dockerd", "docker") if shutil.which(tool) is None]
    if not ROOTFS_CACHE.is_file() and shutil.which("debootstrap") is None:
        missing.append("debootstrap")
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install docker.io debootstrap)"
    return None


@dataclass(frozen=True)
class Docker:
    """A running private daemon: run ``docker`` against it with :meth:`run`."""

    host: str
    root: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def run(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr[-2000:]}"
            )
        return result


@contextmanager
def private_daemon() -> Iterator[Docker]:
    """Start dockerd as root on a private socket; stop it by its pid on exit."""
    root = Path(tempfile.mkdtemp(prefix="bastion-dockerd-"))
    socket = root / "docker.sock"
    # Image layers in memory: deleting gigabytes of small files from disk took longer than
    # the builds; unmounting a tmpfs is instant. On disk when tmpfs cannot be mounted.
    (root / "data").mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DATA_ROOT_TMPFS},mode=0711", "tmpfs", str(root / "data")],
        check=False, capture_output=True,
    )  # fmt: skip
    log = (root / "dockerd.log").open("wb")
    bridge = _make_bridge()
    process = subprocess.Popen(
        [
            "dockerd",
            "--data-root", str(root / "data"),
            "--exec-root", str(root / "exec"),
            "--pidfile", str(root / "dockerd.pid"),
            "--host", f"unix://{socket}",
            # Our own bridge (BuildKit runs build steps on it) and no iptables rules: build
            # steps need no outside network, containers use --network host.
            "--bridge", bridge or "none",
            "--iptables=false",
            "--ip-masq=false",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    docker = Docker(f"unix://{socket}", root)
    try:
        deadline = time.monotonic() + 60
        while docker.run("version", check=False, timeout=10).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (root / "dockerd.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"dockerd did not start: {tail}")
            time.sleep(0.5)
        yield docker
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        _unmount_below(root)
        subprocess.run(["rm", "-rf", str(root)], check=False, timeout=600)
        if bridge is not None:
            subprocess.run(["ip", "link", "delete", bridge], check=False, capture_output=True)


def _make_bridge() -> str | None:
    """A bridge of our own for the daemon (removed after), or None if it cannot be made."""
    name = f"bastion{os.getpid() % 100000}"
    steps = [
        ["ip", "link", "add", name, "type", "bridge"],
        ["ip", "addr", "add", BRIDGE_ADDRESS, "dev", name],
        ["ip", "link", "set", name, "up"],
    ]
    for step in steps:
        try:
            made = subprocess.run(step, check=False, capture_output=True).returncode == 0
        except OSError:
            made = False
        if not made:
            subprocess.run(["ip", "link", "delete", name], check=False, capture_output=True)
            return None
    return name


def _unmount_below(root: Path) -> None:
    """dockerd can leave its network-namespace mount behind; remove what is under ``root``."""
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted((p for p in points if p.startswith(f"{root}/")), reverse=True):
        subprocess.run(["umount", point], check=False, capture_output=True)


def ensure_rootfs() -> Path:
    """The cached bookworm root file system tarball, made with debootstrap when absent."""
    if ROOTFS_CACHE.is_file():
        return ROOTFS_CACHE
    ROOTFS_CACHE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bastion-rootfs-") as scratch:
        target = Path(scratch) / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm",
             str(target), DEBIAN_MIRROR],
            check=True, capture_output=True, timeout=1800,
        )  # fmt: skip
        # Package caches and lists are not needed to run Python; leave them out of the image.
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (target / sub).glob("*"):
                if entry.is_file():
                    entry.unlink()
        partial = ROOTFS_CACHE.with_suffix(".partial")
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(target), "-czf", str(partial), "."],
            check=True, timeout=600,
        )  # fmt: skip
        partial.replace(ROOTFS_CACHE)
    return ROOTFS_CACHE


def import_base_image(docker: Docker) -> str:
    """Load the Debian root file system as ``BASE_IMAGE`` (no registry involved)."""
    rootfs = ensure_rootfs()
    docker.run("import", str(rootfs), BASE_IMAGE, timeout=600)
    return BASE_IMAGE
