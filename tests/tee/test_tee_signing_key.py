"""Enclave signing keys: SGX's key shape, MRSIGNER, and enclave.json."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bastion.tee.signing_key import (
    EnclaveKeyError,
    generate_enclave_key,
    load_enclave_key,
    mrsigner_of,
    read_enclave_json,
    write_enclave_json,
)


def independent_mrsigner(public_key: rsa.RSAPublicKey) -> bytes:
    """SDM EINIT: MRSIGNER = SHA-256(SIGSTRUCT.MODULUS), the modulus as 384 LE bytes."""
    modulus = public_key.public_numbers().n
    return hashlib.sha256(modulus.to_bytes(384, byteorder="little")).digest()


def test_keygen_writes_a_private_3072_bit_key_with_exponent_3(tmp_path: Path) -> None:
    path = tmp_path / "enclave-key.pem"
    generate_enclave_key(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 3072
    assert key.public_key().public_numbers().e == 3
    assert mrsigner_of(key.public_key()) == independent_mrsigner(key.public_key())


def test_mrsigner_matches_an_independent_computation(enclave_key: rsa.RSAPrivateKey) -> None:
    digest = mrsigner_of(enclave_key.public_key())
    assert len(digest) == 32
    assert digest == independent_mrsigner(enclave_key.public_key())
    big_endian = enclave_key.public_key().public_numbers().n.to_bytes(384, "big")
    assert digest != hashlib.sha256(big_endian).digest()


def test_keygen_refuses_to_overwrite_a_key(tmp_path: Path) -> None:
    path = tmp_path / "enclave-key.pem"
    first = generate_enclave_key(path)
    with pytest.raises(EnclaveKeyError, match="refusing to overwrite"):
        generate_enclave_key(path)
    assert load_enclave_key(path).private_numbers() == first.private_numbers()

    second = generate_enclave_key(path, overwrite=True)
    assert mrsigner_of(second.public_key()) != mrsigner_of(first.public_key())


def test_passphrase_protected_key_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "enclave-key.pem"
    key = generate_enclave_key(path, passphrase=b"correct horse")
    with pytest.raises(EnclaveKeyError, match="encrypted: supply its passphrase"):
        load_enclave_key(path)
    with pytest.raises(EnclaveKeyError, match="passphrase is wrong"):
        load_enclave_key(path, passphrase=b"wrong")
    loaded = load_enclave_key(path, passphrase=b"correct horse")
    assert loaded.public_key().public_numbers() == key.public_key().public_numbers()


def test_keys_sgx_would_refuse_are_rejected(tmp_path: Path) -> None:
    usual = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "usual.pem"
    path.write_bytes(
        usual.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(EnclaveKeyError, match="2048-bit RSA key; SGX requires 3072"):
        load_enclave_key(path)
    with pytest.raises(EnclaveKeyError, match="SGX requires 3072"):
        mrsigner_of(usual.public_key())

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(EnclaveKeyError, match="not a PEM private key"):
        load_enclave_key(garbage)
    with pytest.raises(EnclaveKeyError, match="cannot read"):
        load_enclave_key(tmp_path / "missing.pem")


def test_enclave_json_records_public_facts_only(
    tmp_path: Path, enclave_key: rsa.RSAPrivateKey
) -> None:
    key_path = tmp_path / "enclave-key.pem"
    info_path = tmp_path / "enclave.json"
    write_enclave_json(info_path, key_path=key_path, public_key=enclave_key.public_key())

    raw = json.loads(info_path.read_text())
    assert raw["key_path"] == str(key_path.resolve())
    assert raw["modulus_bits"] == 3072
    assert raw["public_exponent"] == 3
    assert raw["mrsigner"] == independent_mrsigner(enclave_key.public_key()).hex()
    assert "PRIVATE" not in info_path.read_text()
    assert read_enclave_json(info_path).mrsigner == raw["mrsigner"]


def test_enclave_json_with_a_forged_mrsigner_is_refused(
    tmp_path: Path, enclave_key: rsa.RSAPrivateKey
) -> None:
    info_path = tmp_path / "enclave.json"
    write_enclave_json(info_path, key_path=tmp_path / "k.pem", public_key=enclave_key.public_key())
    raw = json.loads(info_path.read_text())
    raw["mrsigner"] = "00" * 32
    info_path.write_text(json.dumps(raw))
    with pytest.raises(EnclaveKeyError, match="mrsigner does not match"):
        read_enclave_json(info_path)
    info_path.write_text("{")
    with pytest.raises(EnclaveKeyError, match="not JSON"):
        read_enclave_json(info_path)
