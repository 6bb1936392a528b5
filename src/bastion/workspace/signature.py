"""The model owner's signature over a workspace manifest.

``workspace.manifest.sig`` is JSON: the signer's certificate (base64 DER, not PEM, so the
file never looks like a key or certificate file to the archive's guards), the algorithm, and
the signature over a fixed context string followed by the manifest's exact bytes (the context
keeps a code-signing key's signature from meaning anything in another protocol). It is
trusted only if the certificate was issued by the federation's CA with the ``model-owner``
role (OU and codeSigning extended key usage) and is valid now. The CA certificate comes
from the operator, never from the workspace, so a workspace cannot vouch for itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from bastion.errors import BastionError, PKIError
from bastion.pki import Identity, Role, identity_of, load_certificate, verify_identity
from bastion.pki.pem import SigningKey, key_matches, load_private_key
from bastion.workspace.scope import SIGNATURE_FILE

FORMAT = "bastion-workspace-signature/1"
CONTEXT = b"bastion workspace manifest signature v1\0"
MAX_SIGNATURE_BYTES = 64 * 1024
Algorithm = Literal["ecdsa-sha256", "rsa-pss-sha256"]
ALGORITHMS: tuple[Algorithm, ...] = ("ecdsa-sha256", "rsa-pss-sha256")


class SignatureError(BastionError):
    """The manifest's signature is missing, malformed, invalid or not the federation's."""


@dataclass(frozen=True)
class ManifestSignature:
    manifest_sha256: str
    certificate: x509.Certificate
    algorithm: Algorithm
    signature: bytes
    signed_at: str

    def to_bytes(self) -> bytes:
        document = {
            "format": FORMAT,
            "manifest_sha256": self.manifest_sha256,
            "certificate": base64.b64encode(
                self.certificate.public_bytes(serialization.Encoding.DER)
            ).decode(),
            "algorithm": self.algorithm,
            "signature": base64.b64encode(self.signature).decode(),
            "signed_at": self.signed_at,
        }
        return (json.dumps(document, sort_keys=True, indent=2) + "\n").encode()

    @classmethod
    def parse(cls, raw: bytes, source: str) -> ManifestSignature:
        if len(raw) > MAX_SIGNATURE_BYTES:
            raise SignatureError(f"{source} is larger than {MAX_SIGNATURE_BYTES} bytes")
        try:
            document: Any = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SignatureError(f"{source} is not JSON: {exc}") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise SignatureError(f"{source} is not a {FORMAT} file")
        try:
            algorithm = document["algorithm"]
            if algorithm not in ALGORITHMS:
                raise SignatureError(
                    f"{source}: algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}"
                )
            certificate = x509.load_der_x509_certificate(
                base64.b64decode(str(document["certificate"]), validate=True)
            )
            return cls(
                manifest_sha256=str(document["manifest_sha256"]),
                certificate=certificate,
                algorithm=algorithm,
                signature=base64.b64decode(str(document["signature"]), validate=True),
                signed_at=str(document["signed_at"]),
            )
        except (KeyError, ValueError) as exc:
            raise SignatureError(f"{source} is malformed: {exc}") from None


def signature_path(workspace: Path) -> Path:
    return Path(workspace) / SIGNATURE_FILE


def _algorithm_for(key: SigningKey) -> Algorithm:
    return "ecdsa-sha256" if isinstance(key, ec.EllipticCurvePrivateKey) else "rsa-pss-sha256"


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def sign_bytes(manifest_bytes: bytes, key: SigningKey, cert: x509.Certificate) -> ManifestSignature:
    """Sign ``manifest_bytes`` with ``key``, whose certificate is ``cert``."""
    message = CONTEXT + manifest_bytes
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    else:
        signature = key.sign(message, _pss(), hashes.SHA256())
    return ManifestSignature(
        manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        certificate=cert,
        algorithm=_algorithm_for(key),
        signature=signature,
        signed_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def load_signing_identity(key_path: Path, cert_path: Path) -> tuple[SigningKey, x509.Certificate]:
    """The model owner's key and certificate, checked to belong together and to the role."""
    key = load_private_key(key_path)
    cert = load_certificate(cert_path)
    if not key_matches(key, cert):
        raise PKIError(f"private key {key_path} does not belong to certificate {cert_path}")
    identity = identity_of(cert)
    if identity.role is not Role.MODEL_OWNER:
        raise PKIError(
            f"{cert_path} belongs to {identity}; signing a workspace needs a model-owner "
            f"certificate: `bastion pki request NAME --role model-owner`, signed by the CA"
        )
    return key, cert


def verify_signature(manifest_bytes: bytes, signature_file: Path, ca_cert: Path) -> Identity:
    """Check the signature over ``manifest_bytes`` and that the federation's CA issued its
    signer as a model owner; return the signer."""
    try:
        raw = signature_file.read_bytes()
    except FileNotFoundError:
        raise SignatureError(
            f"{signature_file} not found: the manifest is not signed. The model owner runs "
            "`bastion workspace sign --key ... --cert ...`"
        ) from None
    signed = ManifestSignature.parse(raw, str(signature_file))
    if not ca_cert.is_file():
        raise SignatureError(
            f"CA certificate {ca_cert} not found: copy the federation's ca.crt there (from the "
            "federation operator, never from the workspace archive)"
        )
    label = f"the signer's certificate in {signature_file}"
    try:
        identity = verify_identity(signed.certificate, ca_cert, Role.MODEL_OWNER)
    except PKIError as exc:
        raise SignatureError(
            f"{label} is not a model-owner identity of this federation: {exc}"
        ) from None
    if signed.manifest_sha256 != hashlib.sha256(manifest_bytes).hexdigest():
        raise SignatureError(
            f"{signature_file} was made for another manifest: the manifest changed after "
            "signing; the model owner must sign it again"
        )
    public_key = signed.certificate.public_key()
    message = CONTEXT + manifest_bytes
    try:
        if signed.algorithm == "ecdsa-sha256" and isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signed.signature, message, ec.ECDSA(hashes.SHA256()))
        elif signed.algorithm == "rsa-pss-sha256" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signed.signature, message, _pss(), hashes.SHA256())
        else:
            raise SignatureError(
                f"{signature_file}: algorithm {signed.algorithm} does not fit the signer's "
                f"{type(public_key).__name__}"
            )
    except InvalidSignature:
        raise SignatureError(
            f"{signature_file}: the signature does not verify with {identity}'s key: the "
            "manifest or the signature was altered"
        ) from None
    return identity
