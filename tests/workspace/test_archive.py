"""``workspace export`` / ``import``: a portable archive without secrets; hostile archives refused."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from support.workspaces import make_workspace

from bastion.plan import load_plan
from bastion.workspace.archive import ArchiveError, Limits, export_workspace, import_workspace
from bastion.workspace.compare import WorkspaceTampered
from bastion.workspace.scope import MANIFEST_FILE, SIGNATURE_FILE
from bastion.workspace.verify import verify_workspace

PLAN = b"version: 1\nname: x\n"


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    return make_workspace(tmp_path, collaborators=2)


def names(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return tar.getnames()


def test_export_holds_code_plan_manifest_signature_and_initial_model_only(
    workspace: Path, tmp_path: Path
) -> None:
    (workspace / "logs").mkdir(exist_ok=True)
    (workspace / "logs" / "metrics.jsonl").write_text("{}\n")
    exported = export_workspace(workspace, tmp_path / "ws.tar.gz")
    assert exported.signed and exported.initial_model
    assert sorted(names(exported.archive)) == sorted(
        [
            "plan.yaml",
            "requirements.txt",
            "task.py",
            MANIFEST_FILE,
            SIGNATURE_FILE,
            "save/initial.safetensors",
        ]
    )
    # No private key, certificate or CA file, under any name.
    with tarfile.open(exported.archive) as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member)
            assert data is not None
            assert b"PRIVATE KEY" not in data.read(), member.name


def test_export_is_byte_for_byte_reproducible(workspace: Path, tmp_path: Path) -> None:
    first = export_workspace(workspace, tmp_path / "a.tar.gz").archive.read_bytes()
    (workspace / "task.py").touch()  # a new mtime must not change the archive
    second = export_workspace(workspace, tmp_path / "b.tar.gz").archive.read_bytes()
    assert first == second


def test_export_without_the_initial_model(workspace: Path, tmp_path: Path) -> None:
    exported = export_workspace(workspace, tmp_path / "ws.tar.gz", initial_model=False)
    assert not exported.initial_model
    assert "save/initial.safetensors" not in names(exported.archive)


def test_export_refuses_a_workspace_changed_since_it_was_measured(
    workspace: Path, tmp_path: Path
) -> None:
    (workspace / "task.py").write_text("changed\n")
    with pytest.raises(WorkspaceTampered, match="task.py differs"):
        export_workspace(workspace, tmp_path / "ws.tar.gz")


def test_export_refuses_to_write_into_the_workspace(workspace: Path) -> None:
    with pytest.raises(ArchiveError, match="outside the workspace"):
        export_workspace(workspace, workspace / "ws.tar.gz")


def test_import_then_verify_round_trips(workspace: Path, tmp_path: Path) -> None:
    archive = export_workspace(workspace, tmp_path / "ws.tar.gz").archive
    site = import_workspace(archive, tmp_path / "site")
    assert not (site / "pki").exists()
    assert (site / "save" / "initial.safetensors").read_bytes() == (
        workspace / "save" / "initial.safetensors"
    ).read_bytes()
    # The CA certificate comes from the operator, never from the archive.
    verified = verify_workspace(site, load_plan(site), workspace / "pki" / "ca.crt")
    original = verify_workspace(workspace, load_plan(workspace))
    assert verified.measurement == original.measurement


def test_import_refuses_a_directory_that_is_not_empty(workspace: Path, tmp_path: Path) -> None:
    archive = export_workspace(workspace, tmp_path / "ws.tar.gz").archive
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(ArchiveError, match="not an empty directory"):
        import_workspace(archive, tmp_path / "busy")


# --- hostile archives --------------------------------------------------------------------

Entry = Callable[[tarfile.TarFile], None]


def add_file(name: str, data: bytes) -> Entry:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    return add


def add_link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> Entry:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = target
        tar.addfile(info)

    return add


def add_fifo(name: str) -> Entry:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = tarfile.FIFOTYPE
        tar.addfile(info)

    return add


def make_archive(path: Path, entries: list[Entry]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for entry in entries:
            entry(tar)
    return path


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([add_file("plan.yaml", PLAN), add_file("/etc/cron.d/x", b"x")], "absolute or parent"),
        ([add_file("plan.yaml", PLAN), add_file("../escape.py", b"x")], "absolute or parent"),
        ([add_file("plan.yaml", PLAN), add_file("a/../../escape.py", b"x")], "absolute or parent"),
        ([add_file("plan.yaml", PLAN), add_link("evil", "/etc/passwd")], "points outside"),
        ([add_file("plan.yaml", PLAN), add_link("sub/evil", "../../x")], "points outside"),
        ([add_file("plan.yaml", PLAN), add_link("inner", "plan.yaml")], "is a link"),
        (
            [add_file("plan.yaml", PLAN), add_link("hard", "plan.yaml", tarfile.LNKTYPE)],
            "is a link",
        ),
        ([add_file("plan.yaml", PLAN), add_fifo("pipe")], "special file"),
        ([add_file("plan.yaml", PLAN), add_file("plan.yaml", b"x: 1\n")], "appears twice"),
        ([add_file("plan.yaml", PLAN), add_file("id.key", b"x")], "key or certificate"),
        (
            [add_file("plan.yaml", PLAN), add_file("notes.txt", b"-----BEGIN PRIVATE KEY-----\n")],
            "PEM key or certificate",
        ),
        ([add_file("task.py", b"x = 1\n")], "holds no plan.yaml"),
    ],
    ids=[
        "absolute",
        "dotdot",
        "nested-dotdot",
        "symlink-absolute",
        "symlink-up",
        "symlink-inside",
        "hardlink",
        "fifo",
        "duplicate",
        "key-suffix",
        "pem-content",
        "no-plan",
    ],
)
def test_hostile_archives_are_refused_and_leave_nothing_behind(
    entries: list[Entry], message: str, tmp_path: Path
) -> None:
    archive = make_archive(tmp_path / "hostile.tar.gz", entries)
    target = tmp_path / "site"
    with pytest.raises(ArchiveError, match=message):
        import_workspace(archive, target)
    assert not target.exists()
    assert not list(tmp_path.glob(".site.import-*")), "the staging directory was left behind"
    assert not (tmp_path.parent / "escape.py").exists()


def test_a_member_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    archive = make_archive(
        tmp_path / "big.tar.gz",
        [add_file("plan.yaml", PLAN), add_file("weights.bin", b"\0" * 2048)],
    )
    with pytest.raises(ArchiveError, match="weights.bin.*over the limit of 1024"):
        import_workspace(archive, tmp_path / "site", Limits(max_file_bytes=1024))


def test_an_archive_unpacking_to_too_much_is_refused(tmp_path: Path) -> None:
    entries = [add_file("plan.yaml", PLAN)] + [
        add_file(f"part{i}.bin", b"\0" * 600) for i in range(4)
    ]
    archive = make_archive(tmp_path / "many.tar.gz", entries)
    with pytest.raises(ArchiveError, match="unpacks to more than 2000 bytes"):
        import_workspace(archive, tmp_path / "site", Limits(max_total_bytes=2000))


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    entries = [add_file("plan.yaml", PLAN)] + [add_file(f"f{i}.py", b"") for i in range(5)]
    archive = make_archive(tmp_path / "many.tar.gz", entries)
    with pytest.raises(ArchiveError, match="more than 3 entries"):
        import_workspace(archive, tmp_path / "site", Limits(max_members=3))


def test_files_in_the_plans_run_time_directories_are_refused(
    workspace: Path, tmp_path: Path
) -> None:
    plan = (workspace / "plan.yaml").read_bytes()
    archive = make_archive(
        tmp_path / "pki.tar.gz",
        [add_file("plan.yaml", plan), add_file("pki/issued.json", b"{}")],
    )
    with pytest.raises(ArchiveError, match="pki/issued.json lies in a run-time directory"):
        import_workspace(archive, tmp_path / "site")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_archives_give_one_clear_error(
    damage: str, workspace: Path, tmp_path: Path
) -> None:
    good = export_workspace(workspace, tmp_path / "ws.tar.gz").archive.read_bytes()
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(
        b"this is not a tar archive" if damage == "garbage" else good[: len(good) // 2]
    )
    with pytest.raises(ArchiveError, match="broken.tar.gz"):
        import_workspace(broken, tmp_path / "site")
    assert not (tmp_path / "site").exists()


def test_an_invalid_plan_is_named_by_the_archive(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "bad.tar.gz", [add_file("plan.yaml", PLAN)])
    with pytest.raises(ArchiveError, match=r"bad.tar.gz: plan.yaml: missing required key") as info:
        import_workspace(archive, tmp_path / "site")
    assert ".import-" not in str(info.value)
