"""`workspace dockerize` / `graminize` build contexts: complete, pinned, and free of secrets.

The real `docker build` of such a context is tests/workspace/test_docker_build.py
(`make test-docker`); these tests check what the context holds, and that the commands say
what they did when no Docker engine is present.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from support.docker import REPO
from support.workspaces import edit_plan, make_workspace, sign_workspace

from bastion.tee.signing_key import (
    EnclaveKeyError,
    generate_enclave_key,
    load_enclave_key,
    mrsigner_of,
)
from bastion.workspace.dockerize import DockerizeError, DockerizeOptions, write_context
from bastion.workspace.gramine_image import KEY_SECRET
from bastion.workspace.graminize import GraminizeError, GraminizeOptions, write_enclave_context

WHEELHOUSE = REPO / ".cache" / "wheelhouse"
EXPORTED = [
    "plan.yaml",
    "requirements.txt",
    "save/initial.safetensors",
    "task.py",
    "workspace.manifest.json",
    "workspace.manifest.sig",
]


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    if not any(WHEELHOUSE.glob("*.whl")):
        pytest.skip("no .cache/wheelhouse: `make .venv/.installed` fills it with the core wheels")
    return WHEELHOUSE


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("owner"), collaborators=2)


@pytest.fixture(scope="module")
def context(workspace: Path, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("contexts") / "docker"
    write_context(DockerizeOptions(workspace, out, find_links=(wheelhouse,)))
    return out


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def assert_no_secrets(root: Path, *, extra: bytes | None = None) -> None:
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        assert path.suffix not in (".key", ".pem", ".crt"), path
        data = path.read_bytes()
        assert b"PRIVATE KEY" not in data, path
        assert b"-----BEGIN" not in data, path
        if extra is not None:
            assert extra not in data, f"{path} holds the signing key's material"


def test_the_context_holds_the_exported_workspace_and_nothing_secret(
    context: Path, workspace: Path
) -> None:
    assert files_under(context / "workspace") == EXPORTED
    for name in EXPORTED:
        assert (context / "workspace" / name).read_bytes() == (workspace / name).read_bytes()
    assert_no_secrets(context)


def test_the_dockerfile_takes_the_base_image_and_runs_as_a_user(context: Path) -> None:
    text = (context / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    assert text.count("FROM ${BASE_IMAGE}") == 2
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE)
    assert (
        'HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \\\n  CMD ["python", "/opt/bastion/healthcheck.py"]'
        in text
    )
    assert 'ENTRYPOINT ["/opt/bastion/entrypoint.sh"]' in text
    # Installs offline, exactly the hashed wheels of the context.
    assert "--no-index --no-deps" in text and "--require-hashes" in text
    assert "COPY workspace/ /workspace/" in text


def test_every_pin_is_a_wheel_of_the_context_with_its_hash(context: Path) -> None:
    lines = [
        line
        for line in (context / "requirements.lock").read_text().splitlines()
        if not line.startswith("#")
    ]
    wheels = {p.name: p for p in (context / "wheels").glob("*.whl")}
    assert len(lines) == len(wheels)
    names = {line.split("==")[0].lower().replace("_", "-") for line in lines}
    assert {"bastion-fl", "numpy", "grpcio", "cryptography", "scikit-learn"} <= names
    digests = {hashlib.sha256(path.read_bytes()).hexdigest() for path in wheels.values()}
    for line in lines:
        digest = line.rsplit("--hash=sha256:", 1)[1]
        assert digest in digests, line


def test_the_entrypoint_and_healthcheck_are_valid_scripts(context: Path) -> None:
    entrypoint = context / "entrypoint.sh"
    assert os.access(entrypoint, os.X_OK)
    subprocess.run(["sh", "-n", str(entrypoint)], check=True)
    compile((context / "healthcheck.py").read_text(), "healthcheck.py", "exec")
    text = entrypoint.read_text()
    assert "exec bastion aggregator start --workspace /workspace --host 0.0.0.0" in text
    assert 'exec bastion collaborator start "$@" --workspace /workspace' in text


def test_the_readme_says_how_to_build_and_mount_the_pki(context: Path) -> None:
    readme = (context / "README.txt").read_text()
    assert "docker build --build-arg BASE_IMAGE=python:3.11-slim -t bastion-" in readme
    assert ":/workspace/pki:ro" in readme


def test_an_unsigned_workspace_is_refused(wheelhouse: Path, tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, collaborators=1, signed=False)
    with pytest.raises(DockerizeError, match="not signed.*--allow-unsigned"):
        write_context(DockerizeOptions(workspace, tmp_path / "ctx", find_links=(wheelhouse,)))
    assert not (tmp_path / "ctx").exists()


def test_a_context_is_written_to_a_new_directory_outside_the_workspace(
    workspace: Path, tmp_path: Path
) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    with pytest.raises(DockerizeError, match="not empty"):
        write_context(DockerizeOptions(workspace, busy))
    with pytest.raises(DockerizeError, match="outside the workspace"):
        write_context(DockerizeOptions(workspace, workspace / "image"))


def bastion(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # No docker client on PATH: the commands must notice and say so.
    env = {**os.environ, "PATH": str(Path(sys.executable).parent), "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, "-m", "bastion", *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip


def test_dockerize_without_docker_writes_the_context_and_says_how_to_build(
    wheelhouse: Path, tmp_path: Path
) -> None:
    # A development workspace: unsigned, so only --allow-unsigned packages it.
    workspace = make_workspace(tmp_path, collaborators=1, signed=False)
    out = tmp_path / "ctx"
    result = bastion("workspace", "dockerize", str(out), "--find-links", str(wheelhouse),
                     "--base-image", "python:3.11-bookworm", "--allow-unsigned",
                     cwd=workspace)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "signed by nobody (development image)" in result.stdout
    assert "no image built (no `docker` client on PATH)" in result.stdout
    assert "docker build --build-arg BASE_IMAGE=python:3.11-bookworm -t bastion-ws:" in (
        result.stdout
    )
    assert (out / "Dockerfile").is_file()
    assert "workspace.manifest.sig" not in files_under(out / "workspace")


@pytest.mark.parametrize("flags", [["--save", "image.tar"], ["--build"]])
def test_asking_for_an_image_without_docker_is_refused_up_front(
    flags: list[str], workspace: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ctx"
    result = bastion("workspace", "dockerize", str(out), *flags, cwd=workspace)
    assert result.returncode == 2
    assert "cannot build here: no `docker` client on PATH" in result.stderr
    assert not out.exists()


# --- graminize ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def enclave_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("enclave-key") / "enclave-key.pem"
    generate_enclave_key(path)
    return path


@pytest.fixture(scope="module")
def graminized(
    workspace: Path, wheelhouse: Path, enclave_key: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """`bastion workspace graminize` run where no Docker engine is: the context, stdout."""
    out = tmp_path_factory.mktemp("contexts") / "sgx"
    result = bastion("workspace", "graminize", str(out), "--signing-key", str(enclave_key),
                     "--find-links", str(wheelhouse), "--enclave-size", "16G",
                     "--max-threads", "32", "--isv-prod-id", "7", "--isv-svn", "3",
                     cwd=workspace)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def key_material(key_path: Path) -> bytes:
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key.private_numbers().p.to_bytes(192, "big")


def test_graminize_context_holds_no_key_and_signs_with_a_build_secret(
    graminized: tuple[Path, str], enclave_key: Path
) -> None:
    enclave_context, _ = graminized
    assert_no_secrets(enclave_context, extra=key_material(enclave_key))
    text = (enclave_context / "Dockerfile").read_text()
    assert f"RUN --mount=type=secret,id={KEY_SECRET},required=true" in text
    assert "gramine-manifest bastion.manifest.template bastion.manifest" in text
    assert (
        "gramine-sgx-sign --manifest bastion.manifest --output bastion.manifest.sgx "
        f"--key /run/secrets/{KEY_SECRET}"
    ) in text
    assert "for role in aggregator collaborator seal" in text
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE)
    # Rendered inside the image, with the image's interpreter, and the options given.
    assert (
        "bastion tee image-manifests --workspace /workspace --out /opt/bastion/enclave "
        "--enclave-size=16G --max-threads=32 --isv-prod-id=7 --isv-svn=3 --no-debug "
        "--seal-checkpoints"
    ) in text
    assert "mv /workspace/save/initial.safetensors /opt/bastion/initial/" in text


def test_graminize_entrypoint_starts_each_enclave(graminized: tuple[Path, str]) -> None:
    enclave_context, _ = graminized
    entrypoint = enclave_context / "entrypoint.sh"
    subprocess.run(["sh", "-n", str(entrypoint)], check=True)
    text = entrypoint.read_text()
    assert "exec gramine-sgx bastion" in text
    assert 'BASTION_COLLABORATOR_NAME="$1"' in text
    readme = (enclave_context / "README.txt").read_text()
    assert "DOCKER_BUILDKIT=1 docker build --secret id=enclave-key,src=" in readme
    assert "--device /dev/sgx_enclave --device /dev/sgx_provision" in readme
    assert "/var/run/aesmd/aesm.socket" in readme
    assert "tee inspect /opt/bastion/enclave/aggregator/bastion.sig" in readme


def test_graminize_refuses_a_key_sgx_would_refuse(
    workspace: Path, wheelhouse: Path, tmp_path: Path
) -> None:
    weak = tmp_path / "rsa2048.pem"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    weak.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(EnclaveKeyError):
        write_enclave_context(GraminizeOptions(DockerizeOptions(workspace, tmp_path / "ctx"), weak))
    assert not (tmp_path / "ctx").exists()


def test_graminize_refuses_a_key_other_than_the_policys_signer(
    wheelhouse: Path, enclave_key: Path, tmp_path: Path
) -> None:
    workspace = make_workspace(tmp_path, collaborators=1, signed=False)
    other = tmp_path / "other-key.pem"
    pinned = mrsigner_of(generate_enclave_key(other).public_key()).hex()
    edit_plan(
        workspace,
        {"attestation": {"policy": {"mrsigner": pinned, "isv_prod_id": 1}}},
    )
    sign_workspace(workspace)
    with pytest.raises(GraminizeError, match=f"pins MRSIGNER {pinned}"):
        write_enclave_context(
            GraminizeOptions(DockerizeOptions(workspace, tmp_path / "ctx"), enclave_key)
        )


def test_graminize_without_docker_prints_the_buildkit_command(
    graminized: tuple[Path, str], enclave_key: Path
) -> None:
    _, stdout = graminized
    assert "no image built (no `docker` client on PATH)" in stdout
    assert f"DOCKER_BUILDKIT=1 docker build --secret id=enclave-key,src={enclave_key}" in stdout
    assert "-t bastion-ws-sgx:" in stdout
    assert "DEBUG" not in stdout
    assert f"MRSIGNER {mrsigner_of(load_enclave_key(enclave_key).public_key()).hex()}" in stdout
