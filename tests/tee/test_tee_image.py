"""The graminized image's enclaves (aggregator, collaborator, seal) and `bastion tee seal`.

In the image the templates are rendered by `bastion tee image-manifests` with the image's own
interpreter; here the same function renders them for this machine's interpreter and a test
workspace, which is what the assertions need (paths differ, structure does not).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support.workspaces import make_workspace

from bastion.storage.checkpoints import INITIAL
from bastion.tee.gramine import HOST_ENV_ALLOWED, ManifestError, ManifestOptions, render_manifest
from bastion.tee.runtime import PythonRuntime
from bastion.tee.seal import SealError, seal
from bastion.workspace.gramine_image import EnclaveOptions, render_image_templates
from bastion.workspace.manifest import read_manifest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")


@pytest.fixture(scope="module")
def runtime() -> PythonRuntime:
    return PythonRuntime.probe()


@pytest.fixture()
def image_workspace(tmp_path: Path) -> tuple[Path, Path]:
    """A workspace laid out as in the image: PKI mounted later, initial model moved aside."""
    workspace = make_workspace(tmp_path, collaborators=2)
    initial = tmp_path / "opt-initial"
    initial.mkdir()
    (workspace / "save" / INITIAL).rename(initial / INITIAL)
    for path in sorted((workspace / "pki").iterdir()):
        path.unlink()
    (workspace / "pki").rmdir()
    return workspace, initial


def render(
    workspace: Path, initial: Path, runtime: PythonRuntime, tmp_path: Path, **options: Any
) -> dict[str, dict[str, Any]]:
    out = tmp_path / "enclave"
    written = render_image_templates(
        workspace, out, EnclaveOptions(**options), python=runtime, initial_dir=initial
    )
    manifests = {}
    for path in written:
        text = path.read_text()
        text = text.replace("{{ gramine.libos }}", "/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so")
        text = text.replace("{{ gramine.runtimedir() }}", "/usr/lib/x86_64-linux-gnu/gramine/rt")
        manifests[path.parent.name] = tomllib.loads(text)
    return manifests


def test_three_enclaves_with_production_settings(
    image_workspace: tuple[Path, Path], runtime: PythonRuntime, tmp_path: Path
) -> None:
    workspace, initial = image_workspace
    manifests = render(workspace, initial, runtime, tmp_path, enclave_size="16G", max_threads=32)
    signed, _ = read_manifest(workspace)
    assert sorted(manifests) == ["aggregator", "collaborator", "seal"]
    for manifest in manifests.values():
        sgx = manifest["sgx"]
        assert sgx["debug"] is False
        assert sgx["remote_attestation"] == "dcap"
        assert sgx["enclave_size"] == "16G" and sgx["max_threads"] == 32
        assert manifest["libos"]["entrypoint"] == str(runtime.executable)
        assert manifest["loader"]["argv"][:3] == [str(runtime.executable), "-m", "bastion"]
        mounts = {mount["path"]: mount for mount in manifest["fs"]["mounts"]}
        assert mounts["/tmp"]["type"] == "tmpfs"
        assert mounts[str(workspace / "pki")]["type"] == "encrypted"
        assert mounts[str(workspace / "save")]["type"] == "encrypted"
        # The workspace files are trusted at the hashes of the signed manifest.
        pinned = {e["uri"]: e["sha256"] for e in sgx["trusted_files"] if isinstance(e, dict)}
        for name, digest in signed.files.items():
            assert pinned[f"file:{workspace / name}"] == digest.sha256
        assert f"file:{workspace / 'workspace.manifest.sig'}" in sgx["trusted_files"]
        uris = [e["uri"] if isinstance(e, dict) else e for e in sgx["trusted_files"]]
        for entry in uris + sgx["allowed_files"]:
            # Keys reach an enclave only through the sealed mount (the seal enclave reads
            # them once from /pki-in, checked below).
            assert str(workspace / "pki") not in entry, entry
            assert not entry.endswith((".key", ".crt", ".pem")), entry
    debug = render(workspace, initial, runtime, tmp_path / "debug", debug=True)
    assert all(m["sgx"]["debug"] is True for m in debug.values())


def test_each_enclave_runs_its_role(
    image_workspace: tuple[Path, Path], runtime: PythonRuntime, tmp_path: Path
) -> None:
    workspace, initial = image_workspace
    manifests = render(workspace, initial, runtime, tmp_path)
    argv = {role: m["loader"]["argv"][3:] for role, m in manifests.items()}
    assert argv["aggregator"] == ["aggregator", "start", "--host", "0.0.0.0"]
    assert argv["collaborator"] == ["collaborator", "start"]
    assert argv["seal"] == [
        "tee", "seal", "--from", "/pki-in", "--initial-model", str(initial / INITIAL),
    ]  # fmt: skip
    # Only the collaborator takes anything from the host: its name and the aggregator's address.
    passthrough = {
        role: sorted(k for k, v in m["loader"]["env"].items() if isinstance(v, dict))
        for role, m in manifests.items()
    }
    assert passthrough == {
        "aggregator": [],
        "collaborator": sorted(HOST_ENV_ALLOWED),
        "seal": [],
    }
    for manifest in manifests.values():
        assert "insecure__use_cmdline_argv" not in manifest["loader"]
    seal_sgx = manifests["seal"]["sgx"]
    assert "file:/pki-in/" in seal_sgx["allowed_files"]
    assert f"file:{initial}/" in seal_sgx["trusted_files"]
    assert "file:/pki-in/" not in manifests["collaborator"]["sgx"]["allowed_files"]


def test_unsealed_checkpoints_keep_the_initial_model_in_place(
    runtime: PythonRuntime, tmp_path: Path
) -> None:
    workspace = make_workspace(tmp_path, collaborators=1)
    for path in sorted((workspace / "pki").iterdir()):
        path.unlink()
    manifests = render(workspace, tmp_path / "none", runtime, tmp_path, seal_checkpoints=False)
    assert manifests["seal"]["loader"]["argv"][3:] == ["tee", "seal", "--from", "/pki-in"]
    assert f"file:{workspace / 'save'}/" in manifests["aggregator"]["sgx"]["allowed_files"]


def test_only_names_and_addresses_come_from_the_host(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, collaborators=1, initialize=False)
    for name in ("LD_PRELOAD", "PYTHONPATH"):
        with pytest.raises(ManifestError, match=f"host environment {name} may not reach"):
            render_manifest(
                ManifestOptions(workspace=workspace, role="collaborator", host_env=(name,))
            )


# --- bastion tee seal --------------------------------------------------------------------


def fake_enclave(tmp_path: Path, kind: str = "dcap") -> Path:
    """What Gramine shows at /dev/attestation, for the logic that runs inside the enclave."""
    directory = tmp_path / "attestation"
    directory.mkdir()
    (directory / "attestation_type").write_text(kind)
    return directory


def site_pki(workspace: Path, target: Path, name: str = "site-1") -> Path:
    target.mkdir()
    for file in ("ca.crt", f"{name}.crt", f"{name}.key"):
        (target / file).write_bytes((workspace / "pki" / file).read_bytes())
    return target


def test_seal_copies_the_pki_and_the_initial_model(tmp_path: Path) -> None:
    owner = make_workspace(tmp_path / "owner", collaborators=1)
    source = site_pki(owner, tmp_path / "pki-in")
    image = make_workspace(tmp_path / "image", collaborators=1, initialize=False)
    for path in sorted((image / "pki").iterdir()):
        path.unlink()
    model = owner / "save" / INITIAL
    sealed = seal(image, source, model, attestation_dir=fake_enclave(tmp_path))
    assert sorted(p.name for p in sealed.pki_files) == ["ca.crt", "site-1.crt", "site-1.key"]
    assert (image / "pki" / "site-1.key").read_bytes() == (source / "site-1.key").read_bytes()
    assert sealed.initial_model == image / "save" / INITIAL
    assert (image / "save" / INITIAL).read_bytes() == model.read_bytes()
    again = seal(image, source, model, attestation_dir=tmp_path / "attestation")
    assert again.initial_model is None and "already sealed" in again.model_note


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: (d / "ca.crt").unlink(), "holds no ca.crt"),
        (lambda d: (d / "ca.key").write_text("x"), "ca.key, the CA's private key"),
        (lambda d: (d / "site-2.key").write_text("x"), "exactly one NAME.key"),
        (lambda d: (d / "site-1.crt").unlink(), "exactly one NAME.key with its NAME.crt"),
        (lambda d: os.symlink("/etc/passwd", d / "link.crt"), "not a regular file"),
    ],
    ids=["no-ca", "ca-key", "two-keys", "no-cert", "symlink"],
)
def test_seal_refuses_anything_but_one_sites_pki(change: Any, message: str, tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, collaborators=1, initialize=False)
    source = site_pki(workspace, tmp_path / "pki-in")
    change(source)
    with pytest.raises(SealError, match=message):
        seal(workspace, source, attestation_dir=fake_enclave(tmp_path))


@pytest.mark.parametrize("kind", [None, "none"])
def test_seal_refuses_outside_an_sgx_enclave(kind: str | None, tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, collaborators=1, initialize=False)
    attestation = fake_enclave(tmp_path, kind) if kind else tmp_path / "no-such-dir"
    with pytest.raises(SealError, match="refusing to seal"):
        seal(workspace, workspace / "pki", attestation_dir=attestation)


def test_tee_seal_cli_outside_an_enclave_exits_2_with_one_line(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, collaborators=1, initialize=False)
    result = subprocess.run(
        [sys.executable, "-m", "bastion", "tee", "seal", "--from", str(workspace / "pki")],
        cwd=workspace, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "refusing to seal" in result.stderr and "Traceback" not in result.stderr


def test_the_interpreters_libpython_comes_before_the_system_libraries(
    runtime: PythonRuntime, tmp_path: Path
) -> None:
    # A system libpython of another patch release must not shadow the interpreter's own;
    # Gramine's glibc ("/lib") stays first.
    workspace = make_workspace(tmp_path, collaborators=1, initialize=False)
    own = replace(runtime, libpython=Path("/opt/python/lib/libpython3.11.so.1.0"))
    system = replace(runtime, libpython=Path(f"/usr{runtime.arch_libdir}/libpython3.11.so.1.0"))
    paths = {}
    for label, python in (("own", own), ("system", system)):
        options = ManifestOptions(workspace=workspace, role="aggregator", python=python)
        paths[label] = tomllib.loads(render_manifest(options))["loader"]["env"]["LD_LIBRARY_PATH"]
    arch = runtime.arch_libdir
    assert paths["own"] == f"/lib:/opt/python/lib:{arch}:/usr{arch}"
    assert paths["system"] == f"/lib:{arch}:/usr{arch}"
