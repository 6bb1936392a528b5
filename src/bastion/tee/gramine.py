"""Gramine manifests that run ``python -m bastion <role> ...`` inside an SGX enclave.

What goes where, and why (Gramine docs: "Manifest syntax", "gramine-manifest",
"gramine-sgx-sign", "Encrypted files"; the ``CI-Examples/python`` manifest as a model):

* ``sgx.trusted_files`` (hashed into MRENCLAVE): Gramine's runtime, the system libraries,
  the Python interpreter (and ``libpython`` when shared), the standard library, every other
  ``sys.path`` directory (site-packages, editable sources) and the workspace's code and plan
  as explicit files. Bastion knows its own interpreter's paths, so they are written out;
  Gramine's ``python.*`` template globals describe the Python running ``gramine-manifest``,
  which need not be Bastion's. Only Gramine's own install paths stay Jinja placeholders
  (``{{ gramine.libos }}``, ``{{ gramine.runtimedir() }}``) in the template.
* ``sgx.allowed_files`` (host-controlled, unprotected): the data directory (the site's own
  data), the logs directory, and the four files glibc reads for name resolution (a peer is
  authenticated by mTLS, not by its address).
* Encrypted mounts sealed with ``_sgx_mrsigner``: the checkpoints directory (it holds the
  model the enclave protects) and the PKI directory. Keys and certificates are never
  trusted or allowed files: the host provides them at run time in ``secrets_dir`` (default
  ``/secrets``, where the container mounts them), which the enclave sees at the plan's
  ``network.pki_dir``, where Bastion looks for its PKI. Sealed to the signer, the host can
  neither read the private key nor swap the CA certificate. Sealed files are written from
  inside an enclave with the same MRSIGNER, or encrypted with ``gramine-sgx-pf-crypt`` under
  a key given by Gramine's secret provisioning (set ``sealing_key`` to that key's name).
  Workspace files that look like keys or certificates (``*.key``, ``*.pem``, ``*.crt``, PEM
  content, ``pki/``) are left out of the manifest. A sealed checkpoints directory must start
  empty (or sealed): run ``bastion plan initialize`` in an enclave of the same signer
  (``args=("plan", "initialize")``), or pass ``seal_checkpoints=False`` to let the host see
  the checkpoints.

Directory names (checkpoints, logs, PKI) come from the workspace's ``plan.yaml``.

Targets Gramine >= 1.8: ``loader.entrypoint.uri`` exists only from 1.8 (Gramine 1.7's manifest
checker rejects it); also ``sgx.max_threads`` and typed mounts.  ``gramine_version`` checks the
installed version before a build.
Interpreter and Gramine paths come from ``bastion.tee.runtime``, the workspace selection from
``bastion.tee.workspace_files``, the build commands from ``bastion.tee.gramine_build``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bastion.errors import BastionError
from bastion.plan import PLAN_FILE, load_plan
from bastion.spec.network import NetworkSpec
from bastion.spec.output import OutputSpec
from bastion.tee.gramine_toml import Mount, array, boolean, string
from bastion.tee.runtime import GramineInstall, PythonRuntime
from bastion.tee.workspace_files import (
    WorkspaceFiles,
    first_plaintext,
    select_workspace_files,
)

Role = Literal["aggregator", "collaborator", "seal"]
ROLES: tuple[Role, ...] = ("aggregator", "collaborator", "seal")
TIME_ZONES = Path("/usr/share/zoneinfo")

#: Host variables an enclave may read (``loader.env.NAME = { passthrough = true }``): only
#: names and addresses, which mTLS and attestation make harmless; never paths or code.
HOST_ENV_ALLOWED = ("BASTION_COLLABORATOR_NAME", "BASTION_AGGREGATOR")
#: Host (or container) directory holding the sealed PKI files.
DEFAULT_SECRETS_DIR = Path("/secrets")
#: Files glibc opens to resolve host names (see the Gramine python example's allowed files).
NAME_RESOLUTION_FILES = ("/etc/hosts", "/etc/nsswitch.conf", "/etc/host.conf", "/etc/gai.conf")
_SIZE = re.compile(r"^([1-9][0-9]*)([KMG])$")
_KEY_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_JINJA_MARKERS = ("{{", "{%", "{#")
_TEMPLATE_LIBOS = "{{ gramine.libos }}"
_TEMPLATE_RUNTIME = "{{ gramine.runtimedir() }}"
_UNSEALED_CHECKPOINTS_FIX = (
    "start from an empty one and run `bastion plan initialize` in an enclave with the same "
    "signer, or pass seal_checkpoints=False (--no-seal-checkpoints) to let the host read them"
)


class ManifestError(BastionError):
    """The enclave manifest cannot be built safely from these options."""


@dataclass(frozen=True)
class PinnedWorkspace:
    """Workspace files trusted at fixed hashes (``bastion.workspace.pinned.pin_workspace``)."""

    #: (absolute path, sha256) of every measured file.
    pinned: tuple[tuple[Path, str], ...]
    #: The manifest and signature files, trusted but hashed by the signer tool.
    hashed_by_signer: tuple[Path, ...]
    measurement: str


@dataclass(frozen=True)
class ManifestOptions:
    """Everything that shapes the enclave; defaults are the production-safe choice."""

    workspace: Path
    role: Role = "collaborator"
    #: The collaborator's name (its certificate's CN); needed unless ``args`` are given.
    name: str | None = None
    #: Arguments after ``python -m bastion``; default: ``<role> start [name]``.
    args: tuple[str, ...] | None = None
    #: Let the host choose argv (``loader.insecure__use_cmdline_argv``); debug enclaves only.
    argv_passthrough: bool = False
    #: Host environment variables passed through (only names in ``HOST_ENV_ALLOWED``); a
    #: collaborator enclave without ``name`` reads it from ``BASTION_COLLABORATOR_NAME``.
    host_env: tuple[str, ...] = ()
    #: More read-only files or directories the enclave trusts (hashed into MRENCLAVE).
    extra_trusted: tuple[Path, ...] = ()
    #: More host-controlled directories the enclave may read (e.g. the seal enclave's input).
    extra_allowed: tuple[Path, ...] = ()
    debug: bool = False
    enclave_size: str = "8G"
    max_threads: int = 64
    #: OMP/BLAS threads; must stay below ``max_threads`` or the enclave runs out of slots.
    compute_threads: int = 8
    isv_prod_id: int = 0
    isv_svn: int = 0
    edmm: bool = False
    log_level: Literal["none", "error", "warning", "debug", "trace", "all"] = "error"
    data_dir: Path | None = None
    logs_dir: Path | None = None  # default: the plan's output.logs
    checkpoints_dir: Path | None = None  # default: the plan's output.checkpoints
    #: Seal checkpoints to the signer; False makes them plain allowed files the host can read.
    seal_checkpoints: bool = True
    #: Host (or container) directory with the sealed PKI files.
    secrets_dir: Path = DEFAULT_SECRETS_DIR
    #: Where the enclave sees them; default: the plan's ``network.pki_dir``.
    secrets_mount: Path | None = None
    sealing_key: str = "_sgx_mrsigner"
    #: Trust the workspace files at the hashes of its signed manifest (built by
    #: ``bastion.workspace.pinned.pin_workspace``) instead of hashing whatever is on disk.
    pinned_workspace: PinnedWorkspace | None = None
    python: PythonRuntime | None = None
    gramine: GramineInstall | None = None


@dataclass
class _Manifest:
    """The manifest's content before it is written as TOML."""

    libos: str
    runtime_dir: str
    mounts: list[Mount] = field(default_factory=list)
    trusted: list[str] = field(default_factory=list)
    #: (uri, sha256) trusted files whose hash is fixed here, not by gramine-sgx-sign.
    pinned: list[tuple[str, str]] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)


def render_manifest(options: ManifestOptions) -> str:
    """The manifest as TOML with every path explicit, ready for ``gramine-sgx-sign``."""
    gramine = options.gramine or GramineInstall.detect()
    return _render(options, str(gramine.libos), str(gramine.runtime_dir), template=False)


def render_manifest_template(options: ManifestOptions) -> str:
    """The ``bastion.manifest.template`` for ``gramine-manifest`` (Gramine paths as Jinja)."""
    text = _render(options, _TEMPLATE_LIBOS, _TEMPLATE_RUNTIME, template=True)
    _check_no_jinja(text)
    return text


@dataclass(frozen=True)
class _Dirs:
    """Absolute host paths of the directories mounted apart from the workspace."""

    workspace: Path
    logs: Path
    checkpoints: Path
    pki_mount: Path
    secrets: Path
    data: Path | None


def _dirs(options: ManifestOptions) -> _Dirs:
    """Paths from the options, else from the workspace's plan, else the plan's defaults."""
    workspace = Path(options.workspace).resolve()
    if (workspace / PLAN_FILE).is_file():
        plan = load_plan(workspace / PLAN_FILE)
        output, network = plan.output, plan.network
    else:
        output, network = OutputSpec(), NetworkSpec()
    return _Dirs(
        workspace=workspace,
        logs=Path(options.logs_dir or workspace / output.logs).resolve(),
        checkpoints=Path(options.checkpoints_dir or workspace / output.checkpoints).resolve(),
        pki_mount=Path(options.secrets_mount or workspace / network.pki_dir),
        secrets=Path(options.secrets_dir).resolve(),
        data=Path(options.data_dir).resolve() if options.data_dir else None,
    )


def workspace_selection(options: ManifestOptions) -> WorkspaceFiles:
    """The workspace files the manifest trusts, and those it leaves out (with reasons)."""
    d = _dirs(options)
    apart = [d.logs, d.checkpoints, d.pki_mount, d.secrets, *([d.data] if d.data else [])]
    return select_workspace_files(d.workspace, skip=apart)


def _render(options: ManifestOptions, libos: str, runtime_dir: str, *, template: bool) -> str:
    _validate(options)
    python = options.python or PythonRuntime.probe()
    d = _dirs(options)
    args = _role_args(options)
    selection = workspace_selection(options)

    m = _Manifest(libos=libos, runtime_dir=runtime_dir)
    arch = python.arch_libdir
    system_dirs = [path for path in (arch, f"/usr{arch}") if Path(path).is_dir()]
    m.mounts.append(Mount("/lib", f"file:{runtime_dir}"))
    m.trusted.append(f"file:{runtime_dir}/")
    for directory in system_dirs:
        m.mounts.append(Mount(directory, f"file:{directory}"))
        m.trusted.append(f"file:{directory}/")
    m.mounts.append(Mount("/etc", "file:/etc"))
    m.mounts.append(Mount("/tmp", type="tmpfs"))
    # The time zone database: libraries read it when they load (dateutil, through pandas).
    if TIME_ZONES.is_dir():
        m.mounts.append(_identity(TIME_ZONES))
        m.trusted.append(f"file:{TIME_ZONES}/")

    m.trusted.append(f"file:{python.executable}")
    m.mounts.append(_identity(python.executable))
    if python.libpython is not None:
        m.trusted.append(f"file:{python.libpython}")
        m.mounts.append(_identity(python.libpython))
    for entry in (python.stdlib, *python.path_entries):
        m.mounts.append(_identity(entry))
        m.trusted.append(f"file:{entry}/" if entry.is_dir() else f"file:{entry}")

    m.mounts.append(_identity(d.workspace))
    pinned = options.pinned_workspace
    if pinned is not None:
        m.pinned.extend((f"file:{path}", sha256) for path, sha256 in pinned.pinned)
        m.trusted.extend(f"file:{path}" for path in pinned.hashed_by_signer)
    else:
        m.trusted.extend(f"file:{path}" for path in selection.trusted)

    for path in options.extra_trusted:
        m.mounts.append(_identity(path))
        m.trusted.append(f"file:{path}/" if path.is_dir() else f"file:{path}")
    if d.data is not None:
        m.mounts.append(_identity(d.data))
        m.allowed.append(f"file:{d.data}/")
    for path in options.extra_allowed:
        m.mounts.append(_identity(path))
        m.allowed.append(f"file:{path}/")
    m.mounts.append(_identity(d.logs))
    m.allowed.append(f"file:{d.logs}/")
    key = options.sealing_key
    if options.seal_checkpoints:
        m.mounts.append(Mount(str(d.checkpoints), f"file:{d.checkpoints}", "encrypted", key))
        _check_sealed(d.checkpoints, "the checkpoints directory", _UNSEALED_CHECKPOINTS_FIX)
    else:
        m.mounts.append(_identity(d.checkpoints))
        m.allowed.append(f"file:{d.checkpoints}/")
    m.mounts.append(Mount(str(d.pki_mount), f"file:{d.secrets}", "encrypted", key))
    _check_sealed(d.secrets, "the secrets directory", "pass the sealed PKI, not the plain one")
    m.allowed.extend(f"file:{path}" for path in NAME_RESOLUTION_FILES)

    _check_no_secret_exposed(m, selection, d.secrets)
    m.mounts = _ordered_mounts(m.mounts)
    m.trusted = _unique(m.trusted)
    return _write_toml(options, python, d.workspace, m, args, template=template)


def _validate(options: ManifestOptions) -> None:
    workspace = Path(options.workspace)
    if not workspace.is_dir():
        raise ManifestError(f"workspace {workspace} is not a directory")
    if options.role not in ROLES:
        raise ManifestError(f"role must be one of {', '.join(ROLES)}, got {options.role!r}")
    match = _SIZE.match(options.enclave_size)
    if not match:
        raise ManifestError(
            f"enclave size {options.enclave_size!r} must be a number with K, M or G, e.g. '8G'"
        )
    size = int(match.group(1)) << {"K": 10, "M": 20, "G": 30}[match.group(2)]
    if size & (size - 1):
        raise ManifestError(
            f"enclave size {options.enclave_size} is not a power of two, which SGX requires "
            "(e.g. 4G, 8G, 16G)"
        )
    if not 4 <= options.max_threads <= 4096:
        raise ManifestError(
            f"max_threads must be in 4..4096 (Gramine needs 4 for itself), got "
            f"{options.max_threads}"
        )
    if not 1 <= options.compute_threads < options.max_threads:
        raise ManifestError(
            f"compute_threads must be in 1..{options.max_threads - 1} (below max_threads), got "
            f"{options.compute_threads}"
        )
    for name, value in (("isv_prod_id", options.isv_prod_id), ("isv_svn", options.isv_svn)):
        if not 0 <= value <= 0xFFFF:
            raise ManifestError(f"{name} must be in 0..65535, got {value}")
    if not _KEY_NAME.match(options.sealing_key):
        raise ManifestError(f"sealing key name {options.sealing_key!r} must match [A-Za-z0-9_-]+")
    if options.argv_passthrough and not options.debug:
        raise ManifestError(
            "argv passthrough lets the host choose what the enclave runs: it is allowed only "
            "for debug enclaves; fix the arguments with `args` instead"
        )
    unknown = sorted(set(options.host_env) - set(HOST_ENV_ALLOWED))
    if unknown:
        raise ManifestError(
            f"host environment {', '.join(unknown)} may not reach the enclave; only "
            f"{', '.join(HOST_ENV_ALLOWED)} are passed through"
        )
    if options.argv_passthrough and options.args is not None:
        raise ManifestError("pass either fixed args or argv_passthrough, not both")
    if options.secrets_mount is not None and not Path(options.secrets_mount).is_absolute():
        raise ManifestError(f"secrets mount {options.secrets_mount} must be an absolute path")
    for arg in options.args or ():
        if "\0" in arg:
            raise ManifestError(f"argument {arg!r} contains a NUL byte")
    if "--insecure" in (options.args or ()) and not options.debug:
        raise ManifestError(
            "--insecure (plain-text gRPC) in a production enclave would send the model in the "
            "clear: remove it"
        )


def _check_no_secret_exposed(m: _Manifest, selection: WorkspaceFiles, secrets: Path) -> None:
    """A trusted or allowed directory must not contain a key, a certificate or /secrets."""
    secret_paths = [*selection.secrets, secrets]
    for uri in (*m.trusted, *m.allowed):
        if not uri.endswith("/"):
            continue
        directory = Path(uri.removeprefix("file:"))
        for secret in secret_paths:
            if secret.is_relative_to(directory):
                raise ManifestError(
                    f"{directory} would be a trusted or allowed directory but contains "
                    f"{secret}: move keys and certificates out of it (the enclave reads them "
                    "from the sealed secrets directory)"
                )


def _check_no_jinja(text: str) -> None:
    """Outside Gramine's own placeholders, the template must hold no Jinja markup."""
    explicit = text.replace(_TEMPLATE_LIBOS, "").replace(_TEMPLATE_RUNTIME, "")
    for line in explicit.splitlines():
        if any(marker in line for marker in _JINJA_MARKERS):
            raise ManifestError(
                f"{line.strip()!r} contains Jinja markup, which gramine-manifest would expand: "
                "rename the path or argument, or write the explicit manifest instead"
            )


def _check_sealed(directory: Path, what: str, fix: str) -> None:
    """An encrypted mount cannot open plaintext files: refuse now, not at enclave start."""
    plaintext = first_plaintext(directory)
    if plaintext is not None:
        raise ManifestError(
            f"{plaintext} is plaintext, but {what} {directory} is mounted as sealed (encrypted) "
            f"files: {fix}"
        )


def _write_toml(
    options: ManifestOptions,
    python: PythonRuntime,
    workspace: Path,
    m: _Manifest,
    args: tuple[str, ...],
    *,
    template: bool,
) -> str:
    arch = python.arch_libdir
    system = [arch, f"/usr{arch}"]
    # "/lib" (Gramine's patched glibc) always first; then the interpreter's own libpython
    # before the system directories, where a libpython of another patch release would
    # otherwise shadow it (its extension modules need that one's symbols).
    libdir = str(python.libpython.parent) if python.libpython is not None else None
    ld_path = ["/lib", *([libdir] if libdir and libdir not in ("/lib", *system) else []), *system]
    env = {
        "LD_LIBRARY_PATH": ":".join(ld_path),
        "PYTHONPATH": ":".join(str(p) for p in python.path_entries),
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONSAFEPATH": "1",
        "HOME": "/tmp",
        "OMP_NUM_THREADS": str(options.compute_threads),
    }
    kind = "template for gramine-manifest" if template else "manifest"
    lines = [
        f"# Bastion {options.role} enclave: Gramine {kind}, generated by bastion.tee.gramine.",
        "# Syntax: https://gramine.readthedocs.io/en/stable/manifest-syntax.html",
        "# Keys and certificates are never trusted or allowed files: they come at run time",
        f"# from a directory sealed with {options.sealing_key} (the encrypted PKI mount).",
        "",
        f"loader.entrypoint.uri = {string('file:' + m.libos)}",
        f"libos.entrypoint = {string(str(python.executable))}",
        f"loader.log_level = {string(options.log_level)}",
    ]
    if options.argv_passthrough:
        lines.append("# INSECURE: the host chooses the arguments (debug enclaves only).")
        lines.append("loader.insecure__use_cmdline_argv = true")
    else:
        argv = [str(python.executable), "-m", "bastion", *args]
        lines += array("loader.argv", argv)
    lines += [f"loader.env.{key} = {string(value)}" for key, value in env.items()]
    lines += [f"loader.env.{key} = {{ passthrough = true }}" for key in options.host_env]
    lines += [
        "",
        f"fs.start_dir = {string(str(workspace))}",
        "fs.mounts = [",
        *(f"  {mount.toml()}," for mount in m.mounts),
        "]",
        "",
        'sys.stack.size = "2M"',
        "sys.enable_extra_runtime_domain_names_conf = true",
        "# The host may deliver one SIGTERM: Bastion checkpoints and exits on it.",
        "sys.enable_sigterm_injection = true",
        "",
        f"sgx.debug = {boolean(options.debug)}",
        f"sgx.edmm_enable = {boolean(options.edmm)}",
        f"sgx.enclave_size = {string(options.enclave_size)}",
        f"sgx.max_threads = {options.max_threads}",
        'sgx.remote_attestation = "dcap"',
        f"sgx.isvprodid = {options.isv_prod_id}",
        f"sgx.isvsvn = {options.isv_svn}",
        'sgx.file_check_policy = "strict"',
        "",
        *array("sgx.trusted_files", m.trusted, pinned=m.pinned),
        "",
        "# Unprotected, host-controlled: site data, logs, and name resolution (peers are",
        "# authenticated by mTLS, not by address).",
        *array("sgx.allowed_files", m.allowed),
    ]
    return "\n".join(lines) + "\n"


def _role_args(options: ManifestOptions) -> tuple[str, ...]:
    if options.args is not None:
        return options.args
    if options.role == "aggregator":
        return ("aggregator", "start")
    if options.role == "seal":
        raise ManifestError("a seal enclave needs explicit args (e.g. `tee seal --from DIR`)")
    if options.name:
        return ("collaborator", "start", options.name)
    if "BASTION_COLLABORATOR_NAME" in options.host_env:
        return ("collaborator", "start")
    raise ManifestError(
        "a collaborator enclave runs under one name: pass name= (the certificate's CN), "
        "host_env=('BASTION_COLLABORATOR_NAME',), or args"
    )


def _identity(path: Path) -> Mount:
    return Mount(str(path), f"file:{path}")


def _ordered_mounts(mounts: list[Mount]) -> list[Mount]:
    """Parents before children; drop identity mounts already exposed by an identity parent."""
    ordered = sorted(mounts, key=lambda mount: len(Path(mount.path).parts))
    kept: list[Mount] = []
    for mount in ordered:
        is_identity = mount.type == "chroot" and mount.uri == f"file:{mount.path}"
        covered = any(
            parent.type == "chroot"
            and parent.uri == f"file:{parent.path}"
            and Path(mount.path).is_relative_to(Path(parent.path))
            for parent in kept
        )
        if not (is_identity and covered):
            kept.append(mount)
    return kept


def _unique(uris: list[str]) -> list[str]:
    return list(dict.fromkeys(uris))
