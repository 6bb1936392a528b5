"""A real `bastion workspace dockerize` build, then the federation run from the image.

Runs with `make test-docker` (root, Debian's docker.io and debootstrap): a private dockerd,
a Debian base image made offline with debootstrap, the image built from the generated
context with `docker build`, and the aggregator and two collaborators run as containers on
the host network with their PKI mounted read-only at run time.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.audit import WRAPPER, uncovered
from support.docker import REPO, Docker, import_base_image, private_daemon, unavailable
from support.workspaces import make_workspace

from bastion.tee.signing_key import generate_enclave_key, mrsigner_of
from bastion.workspace.docker_files import IMAGE_UID

SKIP = unavailable()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]

TAG = "bastion-e2e:test"
WHEELHOUSE = REPO / ".cache" / "wheelhouse"


@pytest.fixture(scope="module")
def docker() -> Iterator[Docker]:
    with private_daemon() as daemon:
        yield daemon


@pytest.fixture(scope="module")
def built(docker: Docker, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A signed workspace, dockerized and built for real (and saved with --save)."""
    root = tmp_path_factory.mktemp("dockerized")
    # A collaborator that cannot reach the aggregator gives up after 5 s (the enclave audit
    # below runs one without an aggregator).
    workspace = make_workspace(
        root, collaborators=2, rounds=2, plan_changes={"timeouts": {"reconnect_give_up_seconds": 5}}
    )
    base = import_base_image(docker)
    links = ["--find-links", str(WHEELHOUSE)] if WHEELHOUSE.is_dir() else []
    saved = root / "image.tar"
    result = subprocess.run(
        [sys.executable, "-m", "bastion", "workspace", "dockerize", str(root / "context"),
         "--workspace", str(workspace), "--base-image", base, "--tag", TAG, *links,
         "--build", "--save", str(saved)],
        env={**docker.env, "COLUMNS": "400"}, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"built image {TAG}, saved to {saved}" in result.stdout
    return {"workspace": workspace, "context": root / "context", "saved": saved, "root": root}


def pki_for_containers(workspace: Path, target: Path, names: list[str]) -> Path:
    """What each host mounts: ca.crt and its own key pair, readable by the image's user."""
    target.mkdir(mode=0o700)
    for name in ("ca.crt", *(f"{n}.{ext}" for n in names for ext in ("crt", "key"))):
        shutil.copy2(workspace / "pki" / name, target / name)
    for path in (target, *target.iterdir()):
        os.chown(path, IMAGE_UID, IMAGE_UID)
    return target


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_context_builds_and_saves_an_image_without_keys(
    docker: Docker, built: dict[str, Path]
) -> None:
    with tarfile.open(built["saved"]) as saved:
        assert "manifest.json" in saved.getnames()
    assert docker.run("run", "--rm", "--entrypoint", "id", TAG, "-u").stdout.strip() == str(
        IMAGE_UID
    )
    listing = docker.run(
        "run", "--rm", "--entrypoint", "/bin/sh", TAG, "-c",
        "cd /workspace && find . -type f | sort && "
        "! grep -rl 'PRIVATE KEY' /workspace /opt/bastion/entrypoint.sh /opt/bastion/healthcheck.py",
    ).stdout.split()  # fmt: skip
    assert listing == sorted(
        [
            "./plan.yaml",
            "./requirements.txt",
            "./save/initial.safetensors",
            "./task.py",
            "./workspace.manifest.json",
            "./workspace.manifest.sig",
        ]
    )
    base = docker.run("inspect", "--format", "{{.Config.Healthcheck.Test}}", TAG).stdout
    assert "/opt/bastion/healthcheck.py" in base


def test_the_image_verifies_its_workspace_and_refuses_a_tampered_one(
    docker: Docker, built: dict[str, Path]
) -> None:
    pki = pki_for_containers(built["workspace"], built["root"] / "pki-verify", ["site-1"])
    mount = f"{pki}:/workspace/pki:ro"
    verified = docker.run("run", "--rm", "-v", mount, TAG, "workspace", "verify")
    assert "verified: 3 files match the manifest signed by model-owner" in verified.stdout
    tampered = docker.run(
        "run", "--rm", "--network", "none", "--user", "0", "-v", mount,
        "--entrypoint", "/bin/sh", TAG, "-c",
        "echo '# changed' >> /workspace/task.py && "
        "exec /opt/bastion/entrypoint.sh collaborator site-1 --aggregator 127.0.0.1:9",
        check=False,
    )  # fmt: skip
    assert tampered.returncode == 2, tampered.stdout + tampered.stderr
    assert "task.py differs" in tampered.stderr


def test_aggregator_and_collaborators_run_the_federation_from_the_image(
    docker: Docker, built: dict[str, Path]
) -> None:
    names = ["site-1", "site-2"]
    pki = pki_for_containers(built["workspace"], built["root"] / "pki-run", ["aggregator", *names])
    mount = f"{pki}:/workspace/pki:ro"
    port = free_port()
    containers = ["e2e-aggregator", *(f"e2e-{name}" for name in names)]
    try:
        docker.run(
            "run", "-d", "--name", "e2e-aggregator", "--network", "host", "-v", mount,
            TAG, "aggregator", "--port", str(port),
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while docker.run(
            "exec", "e2e-aggregator", "python", "/opt/bastion/healthcheck.py", check=False
        ).returncode:
            state = docker.run("inspect", "--format", "{{.State.Status}}", "e2e-aggregator")
            logs = docker.run("logs", "e2e-aggregator", check=False)
            assert state.stdout.strip() == "running", logs.stdout + logs.stderr
            assert time.monotonic() < deadline, "the aggregator never became healthy"
            time.sleep(1)
        for name in names:
            docker.run(
                "run", "-d", "--name", f"e2e-{name}", "--network", "host", "-v", mount,
                TAG, "collaborator", name, "--aggregator", f"127.0.0.1:{port}",
            )  # fmt: skip
        codes = {name: docker.run("wait", name, timeout=600).stdout.strip() for name in containers}
        logs = {name: docker.run("logs", name, check=False) for name in containers}
        assert codes == dict.fromkeys(containers, "0"), {
            name: (log.stdout + log.stderr)[-3000:] for name, log in logs.items()
        }
        aggregator_log = logs["e2e-aggregator"].stdout + logs["e2e-aggregator"].stderr
        assert "federation finished after 2 rounds" in aggregator_log, aggregator_log[-3000:]
    finally:
        docker.run("rm", "-f", *containers, check=False)


#: Runs in the image: the collaborator enclave's entrypoint as its manifest says (interpreter,
#: environment, working directory) under the audit hook, and reports what it opened.
ENCLAVE_AUDIT = r"""
import json, os, subprocess, sys, tomllib
manifests = {}
for role in ("aggregator", "collaborator", "seal"):
    with open(f"/opt/bastion/enclave/{role}/bastion.manifest.template") as handle:
        text = handle.read()
    text = text.replace("{{ gramine.libos }}", "/gramine/libsysdb.so")
    manifests[role] = tomllib.loads(text.replace("{{ gramine.runtimedir() }}", "/gramine/rt"))
manifest = manifests["collaborator"]
env = {k: v for k, v in manifest["loader"]["env"].items() if isinstance(v, str)}
env.update({k: os.environ[k] for k, v in manifest["loader"]["env"].items()
            if isinstance(v, dict) and k in os.environ})
argv, cwd = manifest["loader"]["argv"], manifest["fs"]["start_dir"]
with open("/out/wrapper.py") as handle:
    wrapper = handle.read()
run = subprocess.run([argv[0], "-c", wrapper, "/out/raw.txt", *argv[3:]], env=env, cwd=cwd,
                     capture_output=True, text=True, timeout=300)
with open("/out/raw.txt") as handle:
    opened = {os.path.normpath(os.path.join(cwd, line)) for line in handle.read().splitlines()}
with open("/out/result.json", "w") as handle:
    json.dump({"returncode": run.returncode, "stderr": run.stderr[-4000:], "manifests": manifests,
               "opened": sorted(p for p in opened if os.path.exists(p))}, handle)
"""


def test_graminized_context_renders_its_enclaves_inside_the_image(
    docker: Docker, built: dict[str, Path], tmp_path: Path
) -> None:
    """Up to the Gramine stage (Gramine's package repository is not reachable here): the
    templates are rendered by the image's own Python and cover what a collaborator opens."""
    key = tmp_path / "enclave-key.pem"
    generate_enclave_key(key)
    context = tmp_path / "sgx-context"
    links = ["--find-links", str(WHEELHOUSE)] if WHEELHOUSE.is_dir() else []
    result = subprocess.run(
        [sys.executable, "-m", "bastion", "workspace", "graminize", str(context),
         "--workspace", str(built["workspace"]), "--signing-key", str(key),
         "--base-image", "bastion-test-base:bookworm", *links, "--no-build"],
        env={**docker.env, "COLUMNS": "400"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    tag = "bastion-e2e-sgx:templates"
    docker.run("build", "--target", "enclave-templates", "--tag", tag, str(context), timeout=1800)

    out = tmp_path / "out"
    out.mkdir()
    (out / "wrapper.py").write_text(WRAPPER)
    (out / "audit.py").write_text(ENCLAVE_AUDIT)
    os.chown(out, IMAGE_UID, IMAGE_UID)
    pki = pki_for_containers(built["workspace"], tmp_path / "pki", ["site-1"])
    docker.run(
        "run", "--rm", "--network", "none", "--user", str(IMAGE_UID),
        "-v", f"{pki}:/workspace/pki:ro", "-v", f"{out}:/out",
        "-e", "BASTION_COLLABORATOR_NAME=site-1", "-e", "BASTION_AGGREGATOR=127.0.0.1:9",
        "--entrypoint", "python3", tag, "/out/audit.py",
    )  # fmt: skip

    report = json.loads((out / "result.json").read_text())
    assert report["returncode"] == 2 and "unreachable" in report["stderr"], report["stderr"]
    manifests = report["manifests"]
    for manifest in manifests.values():
        assert manifest["libos"]["entrypoint"] == "/usr/bin/python3.11"  # Debian's, not ours
        assert manifest["loader"]["env"]["PYTHONPATH"] == (
            "/opt/bastion/venv/lib/python3.11/site-packages"
        )
        assert manifest["sgx"]["debug"] is False
        assert manifest["fs"]["start_dir"] == "/workspace"
    assert "file:/opt/bastion/initial/" in manifests["seal"]["sgx"]["trusted_files"]
    opened = report["opened"]
    for expected in ("/workspace/plan.yaml", "/workspace/task.py", "/workspace/pki/site-1.key"):
        assert expected in opened
    assert any(path.endswith("digits.csv.gz") for path in opened)
    assert uncovered(opened, manifests["collaborator"], exists=lambda _: True) == []


# TEST DOUBLES of Gramine's two build tools, installed in a base image so the graminized
# Dockerfile skips installing Gramine (its package repository is unreachable here). They take
# the real tools' arguments and write the real outputs; the SIGSTRUCT is genuine and signed
# with the key, only its MRENCLAVE is a hash of the manifest rather than of enclave pages.
FAKE_GRAMINE_MANIFEST = """\
#!/bin/sh
set -eu
sed -e 's|{{ gramine.libos }}|/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so|' \\
    -e 's|{{ gramine.runtimedir() }}|/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc|' "$1" > "$2"
"""
FAKE_GRAMINE_SGX_SIGN = """\
#!/opt/bastion/venv/bin/python
import argparse, hashlib, shutil, tomllib
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from bastion.tee.sigstruct import build_sigstruct
parser = argparse.ArgumentParser()
for option in ("--manifest", "--output", "--key"):
    parser.add_argument(option, required=True)
args = parser.parse_args()
raw = Path(args.manifest).read_bytes()
sgx = tomllib.loads(raw.decode())["sgx"]
key = serialization.load_pem_private_key(Path(args.key).read_bytes(), password=None)
sig = build_sigstruct(key, mrenclave=hashlib.sha256(raw).digest(), isv_prod_id=sgx["isvprodid"],
                      isv_svn=sgx["isvsvn"], debug=sgx["debug"])
shutil.copyfile(args.manifest, args.output)
Path(args.output).parent.joinpath("bastion.sig").write_bytes(sig)
"""


def buildkit_env(docker: Docker) -> dict[str, str] | None:
    """An environment whose `docker` builds with BuildKit: the default client with buildx,
    or Debian's 20.10 client (BuildKit built in) when a newer one without buildx is first."""
    if docker.run("buildx", "version", check=False).returncode == 0:
        return docker.env
    debian = Path("/usr/bin/docker")
    if debian.is_file() and shutil.which("docker") != str(debian):
        return {**docker.env, "PATH": f"/usr/bin:{os.environ['PATH']}"}
    return None


def test_graminize_builds_signs_with_a_build_secret_and_bakes_no_key(
    docker: Docker, built: dict[str, Path], tmp_path: Path
) -> None:
    env = buildkit_env(docker)
    if env is None:
        pytest.skip("no docker client with BuildKit (install docker-buildx)")
    tools = tmp_path / "fake-gramine"
    tools.mkdir()
    (tools / "gramine-manifest").write_text(FAKE_GRAMINE_MANIFEST)
    (tools / "gramine-sgx-sign").write_text(FAKE_GRAMINE_SGX_SIGN)
    for tool in tools.iterdir():
        tool.chmod(0o755)
    (tools / "Dockerfile").write_text(
        "FROM bastion-test-base:bookworm\nCOPY gramine-manifest gramine-sgx-sign /usr/local/bin/\n"
    )
    docker.run("build", "--tag", "bastion-test-base:fake-gramine", str(tools))

    key = tmp_path / "enclave-key.pem"
    mrsigner = mrsigner_of(generate_enclave_key(key).public_key()).hex()
    context, saved = tmp_path / "sgx", tmp_path / "sgx.tar"
    links = ["--find-links", str(WHEELHOUSE)] if WHEELHOUSE.is_dir() else []
    result = subprocess.run(
        [sys.executable, "-m", "bastion", "workspace", "graminize", str(context),
         "--workspace", str(built["workspace"]), "--signing-key", str(key),
         "--base-image", "bastion-test-base:fake-gramine", "--tag", "bastion-e2e-sgx:test",
         "--isv-prod-id", "5", "--isv-svn", "2", *links, "--build", "--save", str(saved)],
        env={**env, "COLUMNS": "400"}, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for role in ("aggregator", "collaborator", "seal"):
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(role))
        assert f"MRSIGNER {mrsigner} isv_prod_id 5 isv_svn 2 debug no" in line
        assert (context / "sigstructs" / f"{role}.sig").is_file()
    inspected = docker.run(
        "run", "--rm", "bastion-e2e-sgx:test", "tee", "inspect", "--json",
        "/opt/bastion/enclave/collaborator/bastion.sig",
    )  # fmt: skip
    assert json.loads(inspected.stdout)["mrsigner"] == mrsigner
    assert docker.run(
        "run", "--rm", "--entrypoint", "id", "bastion-e2e-sgx:test", "-u"
    ).stdout.strip() == str(IMAGE_UID)

    # The key was a build secret: no layer of the saved image holds any of it.
    pem_lines = [line for line in key.read_text().splitlines() if not line.startswith("-----")]
    with tarfile.open(saved) as image:
        for member in image.getmembers():
            handle = image.extractfile(member)
            if handle is None:
                continue
            data = handle.read()
            assert not any(line.encode() in data for line in pem_lines[1:4]), member.name
