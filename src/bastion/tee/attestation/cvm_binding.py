"""Bind a confidential VM's evidence to one TLS key, one fresh nonce and the workspace it runs.

TDX REPORTDATA and SNP REPORT_DATA are 64 bytes, exactly a SHA-512 digest::

    SHA-512( DER SubjectPublicKeyInfo of the TLS key || 32-byte nonce || 32-byte workspace hash )

The SPKI DER is self-delimiting and the other two have fixed lengths, so the concatenation is
unambiguous.  The workspace hash is the measurement of the signed workspace both parties
verified (``bastion workspace measure``), or the plan's canonical SHA-256 where no workspace
was measured: the evidence then also vouches for the code and plan the CVM says it runs.  (SGX quotes keep their
own layout, `binding.report_data_for`, since the enclave's MRENCLAVE already measures the code.)
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import serialization

from bastion.tee.attestation.binding import NONCE_SIZE
from bastion.tee.attestation.errors import BindingError

WORKSPACE_HASH_SIZE = 32


def cvm_report_data_for(tls_public_key_spki: bytes, nonce: bytes, workspace_hash: bytes) -> bytes:
    """The 64 bytes a TD or SNP guest puts in its report data for this key, nonce and plan."""
    if len(nonce) != NONCE_SIZE:
        raise BindingError(f"an attestation nonce is {NONCE_SIZE} bytes, got {len(nonce)}")
    if len(workspace_hash) != WORKSPACE_HASH_SIZE:
        raise BindingError(
            f"the workspace hash is {WORKSPACE_HASH_SIZE} bytes (SHA-256), got {len(workspace_hash)}"
        )
    try:
        serialization.load_der_public_key(tls_public_key_spki)
    except (ValueError, TypeError) as exc:
        raise BindingError(
            "the TLS public key must be DER SubjectPublicKeyInfo bytes (use tls_public_key_der)"
        ) from exc
    return hashlib.sha512(tls_public_key_spki + nonce + workspace_hash).digest()


def workspace_hash_of(plan_hash: str) -> bytes:
    """The 32 bytes of a workspace measurement or a plan's canonical hash (hex SHA-256)."""
    try:
        raw = bytes.fromhex(plan_hash)
    except ValueError:
        raw = b""
    if len(raw) != WORKSPACE_HASH_SIZE:
        raise BindingError(f"the plan hash must be 64 hex characters, got {plan_hash!r}")
    return raw
