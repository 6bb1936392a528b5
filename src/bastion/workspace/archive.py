"""``bastion workspace export`` / ``import``: a portable ``.tar.gz`` of a workspace.

An export holds exactly the measured files (plan, code, requirements: see
:mod:`bastion.workspace.scope`), the manifest and its signature, and the initial model
checkpoint. It never holds the PKI directory: not the private keys, not the member
certificates, and not even ``ca.crt``, because the CA certificate is what verifies the
workspace's signature and must reach each site from the federation operator, not inside
the thing it verifies. Entries are sorted with fixed owners, modes and times, so the same
workspace always exports to the same bytes.

Import trusts nothing in the archive: absolute names, ``..``, links, devices, duplicate
names, key or certificate files and members over the size limits are refused before
anything is written, and the workspace appears only once it is complete.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bastion.errors import BastionError, PlanError
from bastion.plan import PLAN_FILE, load_plan
from bastion.storage.atomic import atomic_writer
from bastion.storage.checkpoints import INITIAL
from bastion.tee.workspace_files import SECRET_SUFFIXES, is_secret_file
from bastion.workspace.compare import require_unchanged
from bastion.workspace.manifest import (
    MAX_MANIFEST_BYTES,
    WorkspaceManifest,
    measure_workspace,
    read_manifest,
)
from bastion.workspace.scope import MANIFEST_FILE, SIGNATURE_FILE, runtime_dirs

DEFAULT_MAX_FILE_BYTES = 4 << 30
DEFAULT_MAX_TOTAL_BYTES = 32 << 30
DEFAULT_MAX_MEMBERS = 100_000
_COPY_CHUNK = 1 << 20


class ArchiveError(BastionError):
    """An archive cannot be written or is unsafe to unpack."""


@dataclass(frozen=True)
class Exported:
    archive: Path
    files: int
    signed: bool
    initial_model: bool


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    max_members: int = DEFAULT_MAX_MEMBERS


def export_members(workspace: Path, *, initial_model: bool = True) -> tuple[list[str], bool]:
    """The relative paths an export holds, and whether the manifest is signed.

    With a manifest, the files must still match it (a stale manifest is refused); without
    one, the workspace is measured now and the export is unsigned.
    """
    workspace = Path(workspace)
    manifest: WorkspaceManifest
    if (workspace / MANIFEST_FILE).is_file():
        manifest, _ = read_manifest(workspace)
        require_unchanged(
            workspace,
            manifest,
            "its manifest",
            "Run `bastion workspace measure` and `bastion workspace sign` again before exporting",
        )
        extra = [MANIFEST_FILE]
    else:
        manifest = measure_workspace(workspace)
        extra = []
    signed = (workspace / SIGNATURE_FILE).is_file()
    if signed:
        extra.append(SIGNATURE_FILE)
    members = sorted(manifest.files) + extra
    if initial_model:
        root = workspace.resolve()
        checkpoint = workspace / load_plan(workspace).output.checkpoints / INITIAL
        if (
            checkpoint.is_file()
            and not checkpoint.is_symlink()
            and checkpoint.resolve().is_relative_to(root)
        ):
            path = checkpoint.resolve().relative_to(root).as_posix()
            if path not in members:
                members.append(path)
    return members, signed


def export_workspace(workspace: Path, archive: Path, *, initial_model: bool = True) -> Exported:
    """Write the workspace's portable archive (deterministic ``.tar.gz``)."""
    workspace = Path(workspace)
    archive = Path(archive)
    if archive.resolve().is_relative_to(workspace.resolve()):
        raise ArchiveError(f"write the archive outside the workspace, not to {archive}")
    members, signed = export_members(workspace, initial_model=initial_model)
    for rel in members:
        path = workspace / rel
        reason = is_secret_file(path)
        if reason:  # the scope already refuses these; never let one slip into an archive
            raise ArchiveError(f"{path} looks like a key or certificate ({reason}); not exported")
    with (
        atomic_writer(archive, mode=0o600) as raw,  # owner-only, as the archive always was
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for rel in members:
            _add_file(tar, workspace / rel, rel)
    has_model = any(m.endswith("/" + INITIAL) for m in members)
    return Exported(archive, len(members), signed, has_model)


def _add_file(tar: tarfile.TarFile, path: Path, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.size = path.stat().st_size
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    with path.open("rb") as handle:
        tar.addfile(info, handle)


#: Without explicit limits, an archive may unpack to this multiple of what its manifest declares.
DECLARED_MULTIPLE = 2
_DECLARED_SLACK = 1 << 20


def declared_limits(archive: Path) -> Limits:
    """Limits from the archive's own manifest: each member at most the largest declared
    file, all of them at most ``DECLARED_MULTIPLE`` x the declared total (plus room for the
    manifest and signature); the fixed defaults for an archive without a manifest."""
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for count, member in enumerate(tar, start=1):
                if count > DEFAULT_MAX_MEMBERS:
                    break
                if member.name != MANIFEST_FILE or not member.isfile():
                    continue
                if member.size > MAX_MANIFEST_BYTES:
                    raise ArchiveError(
                        f"{archive}: its manifest is larger than {MAX_MANIFEST_BYTES} bytes"
                    )
                data = tar.extractfile(member)
                manifest = WorkspaceManifest.parse(data.read() if data else b"", MANIFEST_FILE)
                break
            else:
                return Limits()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"{archive} is not a readable tar archive: {exc}") from None
    except BastionError as exc:
        raise ArchiveError(f"{archive}: {exc}") from None
    sizes = [d.size for d in (*manifest.files.values(), *manifest.shipped.values())]
    declared = sum(sizes)
    return Limits(
        max_file_bytes=min(DEFAULT_MAX_FILE_BYTES, max([*sizes, 0]) + _DECLARED_SLACK),
        max_total_bytes=min(
            DEFAULT_MAX_TOTAL_BYTES, DECLARED_MULTIPLE * declared + 2 * _DECLARED_SLACK
        ),
        max_members=min(DEFAULT_MAX_MEMBERS, 2 * len(sizes) + 16),
    )


def import_workspace(archive: Path, directory: Path, limits: Limits | None = None) -> Path:
    """Unpack ``archive`` into ``directory`` (new or empty), refusing anything unsafe;
    without ``limits``, the archive's declared size bounds it (``declared_limits``)."""
    archive, directory = Path(archive), Path(directory)
    if limits is None and archive.is_file():
        limits = declared_limits(archive)
    limits = limits or Limits()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ArchiveError(f"{directory} exists and is not an empty directory: choose a new one")
    if not archive.is_file():
        raise ArchiveError(f"archive {archive} does not exist")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.import-"))
    try:
        try:
            with tarfile.open(archive, mode="r:*") as tar:
                _unpack(tar, archive, staging, limits)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise ArchiveError(f"{archive} is not a readable tar archive: {exc}") from None
        if not (staging / PLAN_FILE).is_file():
            raise ArchiveError(f"{archive} holds no {PLAN_FILE}: it is not a Bastion workspace")
        _check_runtime_dirs(archive, staging)
        if directory.exists():
            directory.rmdir()
        staging.chmod(0o755)  # mkdtemp made it private; a workspace is not
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _unpack(tar: tarfile.TarFile, archive: Path, target: Path, limits: Limits) -> None:
    seen: set[str] = set()
    total = 0
    try:
        for count, member in enumerate(tar, start=1):
            if count > limits.max_members:
                raise ArchiveError(f"{archive} has more than {limits.max_members} entries")
            name = _safe_name(member, archive)
            where = f"{archive}: entry {member.name!r}"
            if name in seen:
                raise ArchiveError(f"{where} appears twice; a later copy could replace the first")
            seen.add(name)
            if member.isdir():
                (target / name).mkdir(mode=0o755, parents=True, exist_ok=True)
                continue
            if member.issym() or member.islnk():
                outside = _link_leaves(member, name)
                why = "points outside the workspace" if outside else "is a link"
                raise ArchiveError(f"{where} {why} ({member.linkname!r}); exports hold files only")
            if not member.isfile():
                raise ArchiveError(f"{where} is a device, FIFO or other special file")
            if member.size > limits.max_file_bytes:
                raise ArchiveError(
                    f"{where} is {member.size} bytes, over the limit of {limits.max_file_bytes} "
                    "(raise it with --max-file-mib if you expect such a file)"
                )
            total += member.size
            if total > limits.max_total_bytes:
                raise ArchiveError(
                    f"{archive} unpacks to more than {limits.max_total_bytes} bytes "
                    "(raise it with --max-total-mib if you expect that much)"
                )
            if PurePosixPath(name).suffix.lower() in SECRET_SUFFIXES:
                raise ArchiveError(f"{where} is a key or certificate file; exports never hold one")
            _write_member(tar, member, target / name, where)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"{archive} is corrupt or truncated: {exc}") from None


def _safe_name(member: tarfile.TarInfo, archive: Path) -> str:
    name = member.name
    parts = PurePosixPath(name).parts
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\0" in name
        or ".." in parts
        or (len(name) > 1 and name[1] == ":")
    ):
        raise ArchiveError(
            f"{archive}: entry {name!r} has an absolute or parent ('..') path; refusing it"
        )
    clean = "/".join(part for part in parts if part not in ("", "."))
    if not clean:
        raise ArchiveError(f"{archive}: entry {name!r} names the archive root")
    return clean


def _link_leaves(member: tarfile.TarInfo, name: str) -> bool:
    target = member.linkname
    if target.startswith("/"):
        return True
    base = PurePosixPath(name).parent if member.issym() else PurePosixPath()
    depth = len(base.parts)
    for part in PurePosixPath(target).parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return True
    return False


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path, where: str) -> None:
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    source = tar.extractfile(member)
    if source is None:
        raise ArchiveError(f"{where} has no content")
    written = 0
    with source, path.open("xb") as out:
        while chunk := source.read(_COPY_CHUNK):
            written += len(chunk)
            if written > member.size:
                raise ArchiveError(f"{where} holds more data than its header says")
            out.write(chunk)
    os.chmod(path, 0o644)
    if is_secret_file(path):
        raise ArchiveError(f"{where} holds a PEM key or certificate; exports never hold one")


def _check_runtime_dirs(archive: Path, workspace: Path) -> None:
    """Only the initial model may sit in the plan's PKI, checkpoint or log directories."""
    try:
        plan = load_plan(workspace)
    except PlanError as exc:  # name the archive, not the staging directory
        shown = str(exc).replace(str(workspace / PLAN_FILE), f"{archive}: {PLAN_FILE}")
        raise ArchiveError(shown) from None
    allowed = (Path(workspace) / plan.output.checkpoints / INITIAL).resolve()
    for rel in runtime_dirs(plan, workspace):
        root = workspace / rel
        if not root.exists():
            continue
        for dirpath, _, files in os.walk(root):
            for name in files:
                path = Path(dirpath) / name
                if path.resolve() != allowed:
                    shown = path.relative_to(workspace).as_posix()
                    raise ArchiveError(
                        f"{archive}: {shown} lies in a run-time directory (PKI, checkpoints or "
                        "logs) that an export never fills; refusing the archive"
                    )
