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
* Encrypted mounts sealed with ``_sgx_mrsigner``: the outputs directory (checkpoints hold
  the model the enclave protects) and the PKI directory. Keys and certificates are never
  trusted or allowed files: the host provides them at run time in ``secrets_dir`` (default
  ``/secrets``, where the container mounts them), which the enclave sees at
  ``<workspace>/pki``, where Bastion looks for its PKI. Sealed to the signer, the host can
  neither read the private key nor swap the CA certificate. Sealed files are written from
  inside an enclave with the same MRSIGNER, or encrypted with ``gramine-sgx-pf-crypt`` under
  a key given by Gramine's secret provisioning (set ``sealing_key`` to that key's name).
  Workspace files that look like keys or certificates (``*.key``, ``*.pem``, ``*.crt``, PEM
  content, ``pki/``) are left out of the manifest.

Targets Gramine >= 1.6 (``loader.entrypoint.uri``, ``sgx.max_threads``, typed mounts).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bastion.errors import BastionError
from bastion.pki.layout import DEFAULT_PKI_DIR

Role = Literal["aggregator", "collaborator"]
ROLES: tuple[Role, ...] = ("aggregator", "collaborator")
MANIFEST_NAME = "bastion"
#: Host (or container) directory holding the sealed PKI files.
DEFAULT_SECRETS_DIR = Path("/secrets")
#: Files glibc opens to resolve host names (see the Gramine python example's allowed files).
NAME_RESOLUTION_FILES = ("/etc/hosts", "/etc/nsswitch.conf", "/etc/host.conf", "/etc/gai.conf")
#: Where Debian/Ubuntu packages install Gramine; used when its Python package is absent.
DEFAULT_GRAMINE_PKGLIBDIR = Path("/usr/lib/x86_64-linux-gnu/gramine")
SECRET_SUFFIXES = frozenset(
    {".key", ".pem", ".crt", ".cer", ".der", ".p12", ".pfx", ".csr", ".jks", ".p8", ".pk8"}
)
SECRET_DIR_NAMES = frozenset({"pki", "secrets", "certs"})
_SIZE = re.compile(r"^([1-9][0-9]*)([KMG])$")
_KEY_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_JINJA_MARKERS = ("{{", "{%", "{#")
INSTALL_HINT = "install Gramine (https://gramine.readthedocs.io/en/stable/installation.html)"


class ManifestError(BastionError):
    """The enclave manifest cannot be built safely from these options."""


class GramineNotInstalled(BastionError):
    """A Gramine tool is needed but not on PATH."""


@dataclass(frozen=True)
class PythonRuntime:
    """The interpreter the enclave runs, as that interpreter itself reports its paths."""

    executable: Path
    stdlib: Path
    path_entries: tuple[Path, ...]
    libpython: Path | None
    arch_libdir: str

    @classmethod
    def probe(cls, interpreter: Path | str | None = None) -> PythonRuntime:
        """Ask ``interpreter`` (default: this one) for its ``sys.path`` with ``-E -s -c``.

        A fresh process is used so that the caller's script directory, working directory,
        ``PYTHONPATH`` and user site never end up trusted.
        """
        python = str(interpreter or sys.executable)
        if not python:
            raise ManifestError("cannot locate the Python interpreter: pass it explicitly")
        try:
            out = subprocess.run(
                [python, "-E", "-s", "-c", _PROBE_SCRIPT],
                capture_output=True,
                check=True,
                text=True,
                timeout=60,
            ).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            raise ManifestError(f"cannot run {python} to list its paths: {exc}") from None
        facts = json.loads(out)
        stdlib = Path(facts["stdlib"])
        entries: list[Path] = []
        for raw in facts["sys_path"]:
            path = Path(raw)
            usable = raw and path.is_absolute() and path.exists()
            if usable and not _is_under(path, stdlib) and path not in entries:
                entries.append(path)
        libpython = None
        if facts["shared"] and facts["libdir"] and facts["soname"]:
            candidate = Path(facts["libdir"]) / facts["soname"]
            libpython = candidate if candidate.exists() else None
        multiarch = facts["multiarch"]
        return cls(
            executable=Path(facts["executable"]),
            stdlib=stdlib,
            path_entries=tuple(entries),
            libpython=libpython,
            arch_libdir=f"/lib/{multiarch}" if multiarch else "/lib64",
        )


_PROBE_SCRIPT = """
import json, os, sys, sysconfig
v = sysconfig.get_config_var
print(json.dumps({
    "executable": os.path.realpath(sys.executable),
    "stdlib": sysconfig.get_paths()["stdlib"],
    "sys_path": sys.path,
    "shared": bool(v("Py_ENABLE_SHARED")),
    "libdir": v("LIBDIR"),
    "soname": v("INSTSONAME"),
    "multiarch": v("MULTIARCH"),
}))
"""


@dataclass(frozen=True)
class GramineInstall:
    """Where Gramine's LibOS (``libsysdb.so``) and patched glibc live."""

    pkglibdir: Path

    @property
    def libos(self) -> Path:
        return self.pkglibdir / "libsysdb.so"

    @property
    def runtime_dir(self) -> Path:
        return self.pkglibdir / "runtime" / "glibc"

    @property
    def installed(self) -> bool:
        return self.libos.is_file()

    @classmethod
    def detect(cls) -> GramineInstall:
        """Gramine's Python package knows its install dir; else the Debian package path."""
        try:
            import graminelibos

            return cls(Path(graminelibos._CONFIG_PKGLIBDIR))
        except (ImportError, AttributeError):
            return cls(DEFAULT_GRAMINE_PKGLIBDIR)


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
    logs_dir: Path | None = None  # default: <workspace>/logs
    outputs_dir: Path | None = None  # default: <workspace>/outputs
    #: Seal outputs (checkpoints) to the signer; False makes them plain allowed files.
    protect_outputs: bool = True
    #: Host (or container) directory with the sealed PKI files.
    secrets_dir: Path = DEFAULT_SECRETS_DIR
    #: Where the enclave sees them; default ``<workspace>/pki``, Bastion's PKI directory.
    secrets_mount: Path | None = None
    sealing_key: str = "_sgx_mrsigner"
    python: PythonRuntime | None = None
    gramine: GramineInstall | None = None


@dataclass(frozen=True)
class WorkspaceFiles:
    """The workspace files to trust, and those left out with the reason why."""

    trusted: tuple[Path, ...]
    excluded: tuple[tuple[Path, str], ...]
    #: Keys, certificates and key directories among ``excluded``.
    secrets: tuple[Path, ...]


@dataclass(frozen=True)
class BuildStep:
    """One command of the enclave build, for the Dockerfile, the README, or to run."""

    tool: str
    argv: tuple[str, ...]
    purpose: str

    def shell(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class _Mount:
    path: str
    uri: str | None = None
    type: str = "chroot"
    key_name: str | None = None

    def toml(self) -> str:
        parts = [] if self.type == "chroot" else [f"type = {_s(self.type)}"]
        parts.append(f"path = {_s(self.path)}")
        if self.uri is not None:
            parts.append(f"uri = {_s(self.uri)}")
        if self.key_name is not None:
            parts.append(f"key_name = {_s(self.key_name)}")
        return "{ " + ", ".join(parts) + " }"


@dataclass
class _Manifest:
    """The manifest's content before it is written as TOML."""

    libos: str
    runtime_dir: str
    mounts: list[_Mount] = field(default_factory=list)
    trusted: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)


def is_secret_file(path: Path) -> str | None:
    """Why ``path`` looks like a key or certificate, or None: such files are never baked in."""
    if path.suffix.lower() in SECRET_SUFFIXES:
        return f"{path.suffix} file (key or certificate)"
    if path.is_symlink() or not path.is_file():
        return None
    try:
        with path.open("rb") as handle:
            head = handle.read(4096)
    except OSError:
        return None
    if b"-----BEGIN " in head:
        return "PEM content (key or certificate)"
    return None


def select_workspace_files(workspace: Path, *, skip: Iterable[Path] = ()) -> WorkspaceFiles:
    """Walk the workspace: code and plan are trusted; secrets, hidden files, caches and the
    separately mounted directories in ``skip`` are left out."""
    workspace = Path(workspace).resolve()
    skipped = {Path(p).resolve() for p in skip}
    trusted: list[Path] = []
    excluded: list[tuple[Path, str]] = []
    secrets: list[Path] = []
    for root, dirs, files in os.walk(workspace):
        here = Path(root)
        for name in sorted(dirs):
            sub = here / name
            if name.lower() in SECRET_DIR_NAMES:
                secrets.append(sub)
                excluded.append((sub, "key or certificate directory"))
                dirs.remove(name)
            elif reason := _excluded_dir_reason(sub, skipped):
                excluded.append((sub, reason))
                dirs.remove(name)
        dirs.sort()
        for name in sorted(files):
            path = here / name
            if secret := is_secret_file(path):
                secrets.append(path)
                excluded.append((path, secret))
            elif name.startswith("."):
                excluded.append((path, "hidden file"))
            elif path.is_symlink():
                excluded.append((path, "symlink (its target would be trusted unseen)"))
            elif not path.is_file():
                excluded.append((path, "not a regular file"))
            else:
                trusted.append(path)
    return WorkspaceFiles(tuple(trusted), tuple(excluded), tuple(secrets))


def render_manifest(options: ManifestOptions) -> str:
    """The manifest as TOML with every path explicit, ready for ``gramine-sgx-sign``."""
    gramine = options.gramine or GramineInstall.detect()
    return _render(options, str(gramine.libos), str(gramine.runtime_dir), template=False)


def render_manifest_template(options: ManifestOptions) -> str:
    """The ``bastion.manifest.template`` for ``gramine-manifest`` (Gramine paths as Jinja)."""
    return _render(options, "{{ gramine.libos }}", "{{ gramine.runtimedir() }}", template=True)


def build_steps(directory: Path, *, key: Path, name: str = MANIFEST_NAME) -> list[BuildStep]:
    """The commands that turn ``<name>.manifest.template`` in ``directory`` into a signed
    enclave (``<name>.manifest.sgx`` and ``<name>.sig``); run them with cwd = ``directory``."""
    del directory  # the commands use relative names so they read the same in a Dockerfile
    return [
        BuildStep(
            "gramine-manifest",
            ("gramine-manifest", f"{name}.manifest.template", f"{name}.manifest"),
            "render the template with Gramine's install paths",
        ),
        BuildStep(
            "gramine-sgx-sign",
            (
                "gramine-sgx-sign",
                "--manifest",
                f"{name}.manifest",
                "--output",
                f"{name}.manifest.sgx",
                "--key",
                str(key),
            ),
            f"hash trusted files, compute MRENCLAVE, write {name}.sig signed with the key",
        ),
    ]


def run_command(name: str = MANIFEST_NAME) -> BuildStep:
    """The command that starts the signed enclave (needs SGX hardware and the AESM/DCAP)."""
    return BuildStep("gramine-sgx", ("gramine-sgx", name), "start the enclave")


def missing_tools(steps: Sequence[BuildStep]) -> list[str]:
    """The tools of ``steps`` that are not on PATH."""
    return sorted({step.tool for step in steps if shutil.which(step.tool) is None})


def run_build_steps(steps: Sequence[BuildStep], directory: Path) -> None:
    """Run the build for real; refuses up front when a Gramine tool is missing."""
    missing = missing_tools(steps)
    if missing:
        raise GramineNotInstalled(
            f"{', '.join(missing)} not found on PATH: {INSTALL_HINT}, or run this inside the "
            "Bastion SGX image"
        )
    for step in steps:
        result = subprocess.run(step.argv, cwd=directory, capture_output=True, text=True)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
            raise ManifestError(
                f"`{step.shell()}` failed with exit code {result.returncode} in {directory}: "
                + " | ".join(tail)
            )


def _render(options: ManifestOptions, libos: str, runtime_dir: str, *, template: bool) -> str:
    _validate(options)
    python = options.python or PythonRuntime.probe()
    workspace = Path(options.workspace).resolve()
    logs = Path(options.logs_dir or workspace / "logs").resolve()
    outputs = Path(options.outputs_dir or workspace / "outputs").resolve()
    data = Path(options.data_dir).resolve() if options.data_dir else None
    secrets = Path(options.secrets_dir).resolve()
    pki_mount = Path(options.secrets_mount or workspace / DEFAULT_PKI_DIR)
    args = _role_args(options)
    mounted_apart = [p for p in (logs, outputs, data, secrets, pki_mount) if p is not None]
    selection = select_workspace_files(workspace, skip=mounted_apart)

    m = _Manifest(libos=libos, runtime_dir=runtime_dir)
    arch = python.arch_libdir
    system_dirs = [d for d in (arch, f"/usr{arch}") if Path(d).is_dir()]
    m.mounts.append(_Mount("/lib", f"file:{runtime_dir}"))
    m.trusted.append(f"file:{runtime_dir}/")
    for directory in system_dirs:
        m.mounts.append(_Mount(directory, f"file:{directory}"))
        m.trusted.append(f"file:{directory}/")
    m.mounts.append(_Mount("/etc", "file:/etc"))
    m.mounts.append(_Mount("/tmp", type="tmpfs"))

    m.trusted.append(f"file:{python.executable}")
    m.mounts.append(_identity(python.executable))
    if python.libpython is not None:
        m.trusted.append(f"file:{python.libpython}")
        m.mounts.append(_identity(python.libpython))
    for entry in (python.stdlib, *python.path_entries):
        m.mounts.append(_identity(entry))
        m.trusted.append(f"file:{entry}/" if entry.is_dir() else f"file:{entry}")

    m.mounts.append(_identity(workspace))
    m.trusted.extend(f"file:{path}" for path in selection.trusted)

    if data is not None:
        m.mounts.append(_identity(data))
        m.allowed.append(f"file:{data}/")
    m.mounts.append(_identity(logs))
    m.allowed.append(f"file:{logs}/")
    if options.protect_outputs:
        m.mounts.append(_Mount(str(outputs), f"file:{outputs}", "encrypted", options.sealing_key))
    else:
        m.mounts.append(_identity(outputs))
        m.allowed.append(f"file:{outputs}/")
    m.mounts.append(_Mount(str(pki_mount), f"file:{secrets}", "encrypted", options.sealing_key))
    m.allowed.extend(f"file:{path}" for path in NAME_RESOLUTION_FILES)

    _check_no_secret_exposed(m, selection, secrets)
    m.mounts = _ordered_mounts(m.mounts)
    m.trusted = _unique(m.trusted)
    if template:
        _check_no_jinja(m)
    return _write_toml(options, python, workspace, m, args, template=template)


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
            if _is_under(secret, directory):
                raise ManifestError(
                    f"{directory} would be a trusted or allowed directory but contains "
                    f"{secret}: move keys and certificates out of it (the enclave reads them "
                    "from the sealed secrets directory)"
                )


def _check_no_jinja(m: _Manifest) -> None:
    for value in (*m.trusted, *m.allowed, *(mount.path for mount in m.mounts)):
        explicit = value.replace(m.libos, "").replace(m.runtime_dir, "")
        if any(marker in explicit for marker in _JINJA_MARKERS):
            raise ManifestError(
                f"path {value!r} contains Jinja markup, which gramine-manifest would expand: "
                "rename it or write the explicit manifest instead"
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
    ld_path = ["/lib", arch, f"/usr{arch}"]
    if python.libpython is not None and str(python.libpython.parent) not in ld_path:
        ld_path.append(str(python.libpython.parent))
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
        f"loader.entrypoint.uri = {_s('file:' + m.libos)}",
        f"libos.entrypoint = {_s(str(python.executable))}",
        f"loader.log_level = {_s(options.log_level)}",
    ]
    if options.argv_passthrough:
        lines.append("# INSECURE: the host chooses the arguments (debug enclaves only).")
        lines.append("loader.insecure__use_cmdline_argv = true")
    else:
        argv = [str(python.executable), "-m", "bastion", *args]
        lines += _array("loader.argv", argv)
    lines += [f"loader.env.{key} = {_s(value)}" for key, value in env.items()]
    lines += [
        "",
        f"fs.start_dir = {_s(str(workspace))}",
        "fs.mounts = [",
        *(f"  {mount.toml()}," for mount in m.mounts),
        "]",
        "",
        'sys.stack.size = "2M"',
        "sys.enable_extra_runtime_domain_names_conf = true",
        "# The host may deliver one SIGTERM: Bastion checkpoints and exits on it.",
        "sys.enable_sigterm_injection = true",
        "",
        f"sgx.debug = {_b(options.debug)}",
        f"sgx.edmm_enable = {_b(options.edmm)}",
        f"sgx.enclave_size = {_s(options.enclave_size)}",
        f"sgx.max_threads = {options.max_threads}",
        'sgx.remote_attestation = "dcap"',
        f"sgx.isvprodid = {options.isv_prod_id}",
        f"sgx.isvsvn = {options.isv_svn}",
        'sgx.file_check_policy = "strict"',
        "",
        *_array("sgx.trusted_files", m.trusted),
        "",
        "# Unprotected, host-controlled: site data, logs, and name resolution (peers are",
        "# authenticated by mTLS, not by address).",
        *_array("sgx.allowed_files", m.allowed),
    ]
    return "\n".join(lines) + "\n"


def _role_args(options: ManifestOptions) -> tuple[str, ...]:
    if options.args is not None:
        return options.args
    if options.role == "aggregator":
        return ("aggregator", "start")
    if not options.name:
        raise ManifestError(
            "a collaborator enclave runs under one name: pass name= (the certificate's CN) or args"
        )
    return ("collaborator", "start", options.name)


def _identity(path: Path) -> _Mount:
    return _Mount(str(path), f"file:{path}")


def _ordered_mounts(mounts: list[_Mount]) -> list[_Mount]:
    """Parents before children; drop identity mounts already exposed by an identity parent."""
    ordered = sorted(mounts, key=lambda mount: len(Path(mount.path).parts))
    kept: list[_Mount] = []
    for mount in ordered:
        is_identity = mount.type == "chroot" and mount.uri == f"file:{mount.path}"
        covered = any(
            parent.type == "chroot"
            and parent.uri == f"file:{parent.path}"
            and _is_under(Path(mount.path), Path(parent.path))
            for parent in kept
        )
        if not (is_identity and covered):
            kept.append(mount)
    return kept


def _unique(uris: list[str]) -> list[str]:
    return list(dict.fromkeys(uris))


def _excluded_dir_reason(directory: Path, skipped: set[Path]) -> str | None:
    if directory.resolve() in skipped:
        return "mounted separately"
    if directory.name.startswith("."):
        return "hidden directory"
    if directory.name == "__pycache__":
        return "bytecode cache"
    if directory.is_symlink():
        return "symlink (its target would be trusted unseen)"
    return None


def _is_under(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _array(key: str, values: Sequence[str]) -> list[str]:
    return [f"{key} = [", *(f"  {_s(value)}," for value in values), "]"]


def _b(value: bool) -> str:
    return "true" if value else "false"


def _s(value: str) -> str:
    """A TOML basic string (escapes quotes, backslashes and control characters)."""
    out = []
    for char in value:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'
