"""Enclave signing keys: the RSA-3072, e=3 key that signs a SIGSTRUCT, and its MRSIGNER.

SGX only launches enclaves whose SIGSTRUCT is signed with a 3072-bit RSA key with public
exponent 3, and names the signer by MRSIGNER = SHA-256 of the key's modulus as the 384
little-endian bytes stored in SIGSTRUCT.MODULUS. Sources: Intel SDM Vol. 3D, "Enclave
Signature Structure (SIGSTRUCT)" and "EINIT" (MRSIGNER computation); Gramine's
``python/graminelibos/sgx_sign.py`` (key size, exponent, PKCS#1 v1.5 + SHA-256 signing).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bastion.errors import BastionError
from bastion.storage.atomic import atomic_write_bytes, atomic_write_text

SGX_RSA_KEY_BITS = 3072
SGX_RSA_PUBLIC_EXPONENT = 3
SGX_MODULUS_BYTES = SGX_RSA_KEY_BITS // 8
ENCLAVE_JSON_FORMAT = "bastion-enclave-key/1"


class EnclaveKeyError(BastionError):
    """An enclave signing key is missing, malformed, or not usable by SGX."""


@dataclass(frozen=True)
class EnclaveKeyInfo:
    """What ``enclave.json`` records: where the key is and which MRSIGNER it produces."""

    key_path: str
    modulus_bits: int
    public_exponent: int
    mrsigner: str
    public_key_pem: str
    format: str = ENCLAVE_JSON_FORMAT


def check_enclave_key(public_key: rsa.RSAPublicKey, where: str = "the key") -> None:
    """Refuse a key SGX would refuse at EINIT: it must be RSA-3072 with exponent 3."""
    numbers = public_key.public_numbers()
    if public_key.key_size != SGX_RSA_KEY_BITS:
        raise EnclaveKeyError(
            f"{where} is a {public_key.key_size}-bit RSA key; SGX requires {SGX_RSA_KEY_BITS} "
            "bits: create one with `bastion tee keygen`"
        )
    if numbers.e != SGX_RSA_PUBLIC_EXPONENT:
        raise EnclaveKeyError(
            f"{where} has public exponent {numbers.e}; SGX requires {SGX_RSA_PUBLIC_EXPONENT}: "
            "create one with `bastion tee keygen`"
        )


def mrsigner_of(public_key: rsa.RSAPublicKey) -> bytes:
    """MRSIGNER: SHA-256 over the modulus as 384 little-endian bytes (SDM, EINIT)."""
    check_enclave_key(public_key)
    modulus = public_key.public_numbers().n.to_bytes(SGX_MODULUS_BYTES, "little")
    return hashlib.sha256(modulus).digest()


def generate_enclave_key(
    path: Path, *, passphrase: bytes | None = None, overwrite: bool = False
) -> rsa.RSAPrivateKey:
    """Create an SGX signing key and write it as PEM, readable by its owner only (0600).

    Refuses to replace an existing file unless ``overwrite``: losing a signing key changes
    MRSIGNER, which every verifier pins.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise EnclaveKeyError(
            f"{path} already exists: refusing to overwrite an enclave signing key "
            "(pass --force to replace it; every enclave signed with it gets a new MRSIGNER)"
        )
    if not path.parent.is_dir():
        raise EnclaveKeyError(f"cannot write {path}: directory {path.parent} does not exist")
    key = rsa.generate_private_key(
        public_exponent=SGX_RSA_PUBLIC_EXPONENT, key_size=SGX_RSA_KEY_BITS
    )
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=encryption,
    )
    _write_private(path, pem)
    return key


def load_enclave_key(path: Path, *, passphrase: bytes | None = None) -> rsa.RSAPrivateKey:
    """Read a PEM signing key and check that SGX accepts it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EnclaveKeyError(f"cannot read enclave key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        raise EnclaveKeyError(
            f"{path} is encrypted: supply its passphrase"
            if passphrase is None
            else f"{path} is not encrypted: do not pass a passphrase"
        ) from None
    except ValueError:
        raise EnclaveKeyError(
            f"{path} is not a PEM private key (or the passphrase is wrong)"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise EnclaveKeyError(f"{path} holds a {type(key).__name__}; SGX needs an RSA key")
    check_enclave_key(key.public_key(), where=str(path))
    return key


def describe_key(key_path: Path, public_key: rsa.RSAPublicKey) -> EnclaveKeyInfo:
    """The ``enclave.json`` record of a key (public facts only, never key material)."""
    check_enclave_key(public_key, where=str(key_path))
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return EnclaveKeyInfo(
        key_path=str(Path(key_path).resolve()),
        modulus_bits=public_key.key_size,
        public_exponent=public_key.public_numbers().e,
        mrsigner=mrsigner_of(public_key).hex(),
        public_key_pem=pem.decode("ascii"),
    )


def write_enclave_json(
    path: Path, *, key_path: Path, public_key: rsa.RSAPublicKey
) -> EnclaveKeyInfo:
    """Write ``enclave.json`` so operators and verifiers can pin MRSIGNER without the key."""
    info = describe_key(key_path, public_key)
    text = json.dumps(asdict(info), indent=2, sort_keys=True) + "\n"
    atomic_write_text(path, text)
    return info


def read_enclave_json(path: Path) -> EnclaveKeyInfo:
    """Read ``enclave.json`` back, checking that its MRSIGNER matches its public key."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise EnclaveKeyError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise EnclaveKeyError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from None
    fields = set(EnclaveKeyInfo.__dataclass_fields__)
    if not isinstance(raw, dict) or set(raw) != fields:
        raise EnclaveKeyError(f"{path} is not an enclave.json: expected keys {sorted(fields)}")
    info = EnclaveKeyInfo(**raw)
    if info.format != ENCLAVE_JSON_FORMAT:
        raise EnclaveKeyError(
            f"{path} has format {info.format!r}, expected {ENCLAVE_JSON_FORMAT!r}"
        )
    try:
        public_key = serialization.load_pem_public_key(info.public_key_pem.encode("ascii"))
    except ValueError:
        raise EnclaveKeyError(f"{path}: public_key_pem is not a PEM public key") from None
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise EnclaveKeyError(f"{path}: public_key_pem is not an RSA key")
    if mrsigner_of(public_key).hex() != info.mrsigner:
        raise EnclaveKeyError(f"{path}: mrsigner does not match public_key_pem; regenerate it")
    return info


def _write_private(path: Path, data: bytes) -> None:
    """Write with mode 0600 from the first byte, then rename into place atomically."""
    atomic_write_bytes(path, data, mode=0o600)
