"""Measuring, signing and verifying a workspace, as the collaborator and aggregator do at start."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from support.workspaces import MODEL_OWNER, edit_plan, make_workspace

from bastion.errors import BastionError, PKIError
from bastion.pki import Role, init_ca, issue
from bastion.plan import load_plan
from bastion.workspace.compare import WorkspaceTampered, changes
from bastion.workspace.manifest import ManifestFormatError, WorkspaceManifest, measure_workspace
from bastion.workspace.scope import MANIFEST_FILE, SIGNATURE_FILE, WorkspaceScopeError
from bastion.workspace.signature import SignatureError
from bastion.workspace.verify import WorkspaceNotSigned, measure, sign, verify_workspace


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    """A measured, signed workspace with its own CA, model-owner identity and initial model."""
    return make_workspace(tmp_path, collaborators=2)


def owner_key(workspace: Path) -> tuple[Path, Path]:
    pki = workspace / "pki"
    return pki / f"{MODEL_OWNER}.key", pki / f"{MODEL_OWNER}.crt"


def verify(workspace: Path) -> str:
    return verify_workspace(workspace, load_plan(workspace)).measurement


def test_the_manifest_lists_code_plan_and_requirements_but_no_run_time_files(
    workspace: Path,
) -> None:
    manifest = measure_workspace(workspace)
    assert sorted(manifest.files) == ["plan.yaml", "requirements.txt", "task.py"]
    assert manifest.excluded == ("logs", "pki", "save")
    assert manifest.plan_sha256 == load_plan(workspace).canonical_hash()
    document = json.loads((workspace / MANIFEST_FILE).read_text())
    digest = document["files"]["task.py"]
    assert digest["sha256"] == hashlib.sha256((workspace / "task.py").read_bytes()).hexdigest()
    assert digest["size"] == (workspace / "task.py").stat().st_size


def test_measuring_is_deterministic_and_ignores_bytecode_and_hidden_files(
    workspace: Path,
) -> None:
    first = measure_workspace(workspace)
    (workspace / "__pycache__").mkdir()
    (workspace / "__pycache__" / "task.cpython-311.pyc").write_bytes(b"\0" * 16)
    (workspace / ".git").mkdir()
    (workspace / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (workspace / "save" / "last.safetensors").write_bytes(b"not measured")
    again = measure_workspace(workspace)
    assert again.to_bytes() == first.to_bytes()
    assert again.measurement == first.measurement


def test_a_verified_workspace_reports_the_signed_measurement(workspace: Path) -> None:
    verified = verify_workspace(workspace, load_plan(workspace))
    assert verified.signer is not None and verified.signer.name == MODEL_OWNER
    assert (
        verified.measurement
        == WorkspaceManifest.parse((workspace / MANIFEST_FILE).read_bytes()).measurement
    )


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            lambda ws: (ws / "task.py").write_text((ws / "task.py").read_text() + "\n# edit\n"),
            "task.py differs",
        ),
        (lambda ws: (ws / "helpers.py").write_text("print('new code')\n"), "helpers.py was added"),
        (lambda ws: (ws / "requirements.txt").unlink(), "requirements.txt is missing"),
        (
            lambda ws: (ws / "models").mkdir() or (ws / "models" / "net.py").write_text("x = 1\n"),
            "models/net.py was added",
        ),
    ],
    ids=["tampered", "added", "deleted", "added-in-subdirectory"],
)
def test_a_changed_file_is_refused_by_name(
    workspace: Path, change: Callable[[Path], object], named: str
) -> None:
    change(workspace)
    with pytest.raises(WorkspaceTampered, match=named):
        verify(workspace)


def test_the_first_change_in_path_order_is_named_and_the_rest_counted(workspace: Path) -> None:
    (workspace / "zzz.py").write_text("x = 1\n")
    (workspace / "task.py").write_text("tampered\n")
    (workspace / "requirements.txt").unlink()
    signed = WorkspaceManifest.parse((workspace / MANIFEST_FILE).read_bytes())
    found = changes(workspace, signed)
    assert [(c.path, c.kind) for c in found] == [
        ("requirements.txt", "missing"),
        ("task.py", "differs"),
        ("zzz.py", "added"),
    ]
    with pytest.raises(WorkspaceTampered, match=r"requirements.txt is missing \(and 2 more\)"):
        verify(workspace)


def test_a_symlink_in_the_workspace_is_refused(workspace: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.py"
    outside.write_text("print('unmeasured')\n")
    os.symlink(outside, workspace / "linked.py")
    with pytest.raises(WorkspaceTampered, match="linked.py is a symbolic link"):
        verify(workspace)
    with pytest.raises(WorkspaceScopeError, match="symbolic link"):
        measure(workspace)


def test_a_key_inside_the_measured_scope_is_refused_when_measuring(workspace: Path) -> None:
    (workspace / "deploy.key").write_text("not really a key\n")
    with pytest.raises(WorkspaceScopeError, match="deploy.key.*private key or certificate"):
        measure(workspace)


def test_an_unsigned_workspace_is_refused(workspace: Path) -> None:
    (workspace / SIGNATURE_FILE).unlink()
    with pytest.raises(SignatureError, match="not signed"):
        verify(workspace)


def test_a_workspace_without_a_manifest_is_refused(workspace: Path) -> None:
    (workspace / MANIFEST_FILE).unlink()
    with pytest.raises(WorkspaceNotSigned, match="bastion workspace measure"):
        verify(workspace)


def test_development_mode_runs_unsigned_code_but_still_measures_it(
    workspace: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (workspace / SIGNATURE_FILE).unlink()
    (workspace / "task.py").write_text((workspace / "task.py").read_text() + "\n# dev edit\n")
    verified = verify_workspace(workspace, load_plan(workspace), allow_unsigned=True)
    assert verified.signer is None
    assert verified.measurement == measure_workspace(workspace).measurement
    assert "NOT checked" in caplog.text


def test_a_signature_by_a_model_owner_of_another_ca_is_refused(
    workspace: Path, tmp_path: Path
) -> None:
    rogue = tmp_path / "rogue-pki"
    init_ca(rogue)
    issue(rogue, "mallory", Role.MODEL_OWNER)
    (workspace / "task.py").write_text("print('rogue code')\n")
    measure(workspace)
    sign(workspace, rogue / "mallory.key", rogue / "mallory.crt", ca_cert=rogue / "ca.crt")
    with pytest.raises(SignatureError, match="not a model-owner identity of this federation"):
        verify(workspace)


def test_a_federation_identity_without_the_model_owner_role_cannot_sign(workspace: Path) -> None:
    pki = workspace / "pki"
    with pytest.raises(PKIError, match="needs a model-owner certificate"):
        sign(workspace, pki / "site-1.key", pki / "site-1.crt")


def test_signing_refuses_a_certificate_the_federation_did_not_issue(
    workspace: Path, tmp_path: Path
) -> None:
    rogue = tmp_path / "rogue-pki"
    init_ca(rogue)
    issue(rogue, "mallory", Role.MODEL_OWNER)
    with pytest.raises(PKIError):
        sign(workspace, rogue / "mallory.key", rogue / "mallory.crt")


def test_signing_refuses_a_stale_manifest(workspace: Path) -> None:
    (workspace / "task.py").write_text("changed after measuring\n")
    with pytest.raises(WorkspaceTampered, match="task.py differs.*measure` again"):
        sign(workspace, *owner_key(workspace))


def test_a_manifest_edited_after_signing_is_refused(workspace: Path) -> None:
    path = workspace / MANIFEST_FILE
    document = json.loads(path.read_text())
    document["files"]["task.py"]["size"] += 1
    path.write_text(json.dumps(document, sort_keys=True, indent=2) + "\n")
    with pytest.raises(SignatureError, match="made for another manifest"):
        verify(workspace)


def test_a_forged_signature_is_refused(workspace: Path) -> None:
    path = workspace / SIGNATURE_FILE
    document = json.loads(path.read_text())
    raw = bytearray(base64.b64decode(document["signature"]))
    raw[-1] ^= 1
    document["signature"] = base64.b64encode(bytes(raw)).decode()
    path.write_text(json.dumps(document))
    with pytest.raises(SignatureError, match="does not verify"):
        verify(workspace)


def test_the_signature_file_holds_no_pem_block(workspace: Path) -> None:
    # The archive refuses PEM files, so the signer's certificate travels as base64 DER.
    assert b"-----BEGIN" not in (workspace / SIGNATURE_FILE).read_bytes()


def test_a_plan_changed_after_signing_is_refused(workspace: Path) -> None:
    edit_plan(workspace, {"rounds": 9})
    with pytest.raises(BastionError, match="made for another plan"):
        verify(workspace)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"format": "something-else/1"}',
        b"{}",
    ],
)
def test_a_malformed_manifest_is_refused(workspace: Path, raw: bytes) -> None:
    (workspace / MANIFEST_FILE).write_bytes(raw)
    with pytest.raises(WorkspaceNotSigned):
        verify(workspace)


def test_manifest_paths_that_escape_the_workspace_are_refused() -> None:
    document = {
        "format": "bastion-workspace-manifest/1",
        "plan_sha256": "0" * 64,
        "excluded": [],
        "files": {"../outside.py": {"sha256": "0" * 64, "size": 1}},
    }
    raw = (json.dumps(document, sort_keys=True, indent=2) + "\n").encode()
    with pytest.raises(ManifestFormatError, match="not a plain relative path"):
        WorkspaceManifest.parse(raw)


def test_a_plan_that_makes_the_workspace_itself_a_run_time_directory_is_refused(
    workspace: Path,
) -> None:
    edit_plan(workspace, {"output": {"logs": "."}})
    with pytest.raises(WorkspaceScopeError, match="output.logs"):
        measure(workspace)
