"""``bastion tee seal``: put a site's PKI (and the aggregator's initial model) into the
enclave's sealed directories.

In a Bastion enclave the PKI directory and the checkpoints directory are Gramine encrypted
mounts keyed to the enclave signer (``_sgx_mrsigner``): only an enclave signed with the same
key can write or read them, so the host can neither read the TLS private key nor swap the CA
certificate. This command runs inside the *seal* enclave of a graminized image: it reads the
plain files from a host directory (an allowed, read-only mount), writes them through the
encrypted mount, and copies the initial model (a trusted file of the image) into the sealed
checkpoints. Outside an enclave it refuses: it would only write plain copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bastion.errors import BastionError
from bastion.plan import load_plan
from bastion.storage.checkpoints import INITIAL
from bastion.tee.attestation.providers import GRAMINE_ATTESTATION_DIR

#: Gramine reports these attestation types inside a hardware (gramine-sgx) enclave.
SGX_ATTESTATION_TYPES = ("dcap", "epid")
MAX_PKI_FILE_BYTES = 1 << 20


class SealError(BastionError):
    """The files cannot be sealed (not in an enclave, or the input is not a PKI directory)."""


@dataclass(frozen=True)
class Sealed:
    pki_files: tuple[Path, ...]
    initial_model: Path | None
    #: Why the initial model was not copied, when it was not.
    model_note: str = ""


def enclave_check(attestation_dir: Path = GRAMINE_ATTESTATION_DIR) -> str | None:
    """Why this process is not in an SGX enclave under Gramine, or None when it is."""
    type_file = Path(attestation_dir) / "attestation_type"
    try:
        kind = type_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return f"{type_file} is unreadable: this is not a Gramine enclave"
    if kind not in SGX_ATTESTATION_TYPES:
        return f"Gramine reports attestation type {kind!r}: not an SGX hardware enclave"
    return None


def seal(
    workspace: Path,
    source: Path,
    initial_model: Path | None = None,
    *,
    attestation_dir: Path = GRAMINE_ATTESTATION_DIR,
) -> Sealed:
    """Copy every file of ``source`` into the plan's PKI directory, and ``initial_model``
    into its empty checkpoints directory; both are sealed mounts inside the enclave."""
    reason = enclave_check(attestation_dir)
    if reason is not None:
        raise SealError(
            f"refusing to seal: {reason}. Run it in the image's seal enclave (see the "
            "graminized image's README.txt); outside one it would write plain copies"
        )
    workspace = Path(workspace)
    plan = load_plan(workspace)
    files = _pki_files(Path(source))
    pki = workspace / plan.network.pki_dir
    pki.mkdir(parents=True, exist_ok=True)
    written = []
    for path in files:
        target = pki / path.name
        target.write_bytes(path.read_bytes())
        target.chmod(0o600)
        written.append(target)
    if initial_model is None:
        return Sealed(tuple(written), None, "no initial model given")
    checkpoint = workspace / plan.output.checkpoints / INITIAL
    if checkpoint.exists():
        return Sealed(tuple(written), None, f"{checkpoint} is already sealed; kept it")
    if not Path(initial_model).is_file():
        raise SealError(f"initial model {initial_model} not found in the image")
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes(Path(initial_model).read_bytes())
    return Sealed(tuple(written), checkpoint)


def _pki_files(source: Path) -> list[Path]:
    """The plain files of a PKI directory: ``ca.crt`` and one key pair, nothing else."""
    if not source.is_dir():
        raise SealError(f"{source} is not a directory: mount the site's PKI files there")
    files = sorted(source.iterdir())
    for path in files:
        if path.is_symlink() or not path.is_file():
            raise SealError(f"{path} is not a regular file; mount plain PKI files only")
        if path.stat().st_size > MAX_PKI_FILE_BYTES:
            raise SealError(f"{path} is larger than a key or certificate can be")
    names = {path.name for path in files}
    if "ca.key" in names:
        raise SealError(f"{source} holds ca.key, the CA's private key: it never goes to a site")
    if "ca.crt" not in names:
        raise SealError(f"{source} holds no ca.crt: mount the federation's CA certificate too")
    keys = sorted(name for name in names if name.endswith(".key"))
    if len(keys) != 1 or f"{keys[0][:-4]}.crt" not in names:
        raise SealError(
            f"{source} must hold exactly one NAME.key with its NAME.crt (found {sorted(names)})"
        )
    return files
