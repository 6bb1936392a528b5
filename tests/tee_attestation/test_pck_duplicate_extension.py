"""A PCK certificate with an X.509 extension twice is a rejection, not a traceback (issue 15)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from support.cli import run_bastion

from bastion.tee.attestation import SimulatedProvider, build_simulated_hierarchy

MRENCLAVE = "aa" * 32
FIRST = x509.ObjectIdentifier("1.2.3.4.5.1")
SECOND = x509.ObjectIdentifier("1.2.3.4.5.2")


def _with_duplicate_extension(certificate: x509.Certificate) -> x509.Certificate:
    """``certificate``'s names and key, with one (unknown) extension present twice in the DER."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    built = (
        x509.CertificateBuilder()
        .subject_name(certificate.subject)
        .issuer_name(certificate.issuer)
        .public_key(certificate.public_key())
        .serial_number(certificate.serial_number)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.UnrecognizedExtension(FIRST, b"\x05\x00"), critical=False)
        .add_extension(x509.UnrecognizedExtension(SECOND, b"\x05\x00"), critical=False)
        .sign(key, hashes.SHA256())
    )
    der = built.public_bytes(serialization.Encoding.DER)
    # The OIDs' DER bodies (1.2 -> 0x2a): the second becomes the first, so it appears twice.
    duplicated = der.replace(bytes.fromhex("2a03040502"), bytes.fromhex("2a03040501"))
    assert duplicated != der
    return x509.load_der_x509_certificate(duplicated)


def test_duplicate_extension_in_the_pck_gives_one_rejected_line(tmp_path: Path) -> None:
    hierarchy = build_simulated_hierarchy()
    leaf, *rest = hierarchy.pck_chain
    corrupted = dataclasses.replace(hierarchy, pck_chain=(_with_duplicate_extension(leaf), *rest))
    quote = tmp_path / "quote.bin"
    provider = SimulatedProvider(corrupted, mr_enclave=MRENCLAVE, mr_signer="bb" * 32)
    quote.write_bytes(provider.quote(secrets.token_bytes(64)).quote)
    root = tmp_path / "root.pem"
    root.write_bytes(hierarchy.root_certificate.public_bytes(serialization.Encoding.PEM))
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        yaml.safe_dump({"mrenclave": [MRENCLAVE], "allow_simulated": True, "collateral": "none"})
    )
    result = run_bastion(
        "tee",
        "verify",
        str(quote),
        "--policy",
        str(policy),
        "--simulated-root",
        str(root),
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("REJECTED ("), result.stdout
    assert "Traceback" not in result.stderr and "DuplicateExtension" not in result.stderr
    print(lines[0])


def test_on_the_federation_path_it_is_an_attestation_rejection() -> None:
    """What the aggregator's gate and a collaborator call (``verify_evidence``) refuse it with
    an ``AttestationError`` (a rejection the federation reports), not a raw exception."""
    from bastion.tee.attestation import AttestationError, AttestationPolicy
    from bastion.tee.attestation.evidence import TrustAnchors, verify_evidence

    hierarchy = build_simulated_hierarchy()
    leaf, *rest = hierarchy.pck_chain
    corrupted = dataclasses.replace(hierarchy, pck_chain=(_with_duplicate_extension(leaf), *rest))
    report_data = secrets.token_bytes(64)
    provider = SimulatedProvider(corrupted, mr_enclave=MRENCLAVE, mr_signer="bb" * 32)
    quote = provider.quote(report_data).quote
    policy = AttestationPolicy(mrenclave=[MRENCLAVE], allow_simulated=True, collateral="none")
    anchors = TrustAnchors(sgx_simulated_root=hierarchy.root_certificate)
    with pytest.raises(AttestationError, match="malformed extensions"):
        verify_evidence(quote, policy, report_data, anchors=anchors)
