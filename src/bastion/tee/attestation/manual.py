"""Checking a quote by hand (``bastion tee verify``), with the same verifier the federation uses.

An operator pins a policy (a plan's ``attestation.policy`` or a bare policy file), hands in a
quote file and says what its report data must be: the peer's TLS certificate and the nonce
it answered, or the 64 bytes themselves. Without either, the binding is reported as *not
checked* rather than silently accepted.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from pydantic import ValidationError

from bastion.errors import BastionError
from bastion.spec.attestation import AttestationPolicy
from bastion.tee.attestation.binding import report_data_for, tls_public_key_der
from bastion.tee.attestation.collateral import Collateral
from bastion.tee.attestation.cvm_binding import cvm_report_data_for, workspace_hash_of
from bastion.tee.attestation.evidence import TrustAnchors, Verdict, detect_format, verify_evidence
from bastion.tee.attestation.quote import REPORT_DATA_SIZE, parse_quote
from bastion.tee.attestation.simulated_cvm import SimulatedSnpHierarchy
from bastion.tee.attestation.snp import parse_snp_report, split_snp_evidence
from bastion.tee.attestation.tdx import parse_td_quote
from bastion.tee.attestation.tdx_tcb import collateral_from_json
from bastion.tee.attestation.verify import VerifiedQuote, verify_quote

#: A DCAP quote with its certificate chain is a few KiB; refuse anything absurd before reading.
MAX_QUOTE_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class ManualVerdict:
    """An accepted quote, and whether its report data was compared with an expected value."""

    verified: VerifiedQuote
    binding_checked: bool


def load_policy(path: Path) -> AttestationPolicy:
    """The policy in ``path``: a plan's ``attestation.policy``, or a file holding only a policy."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BastionError(f"policy file {path} not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BastionError(f"cannot read the policy in {path}: {exc}") from None
    section: Any = raw
    if isinstance(raw, dict) and "attestation" in raw:
        attestation = raw["attestation"]
        if not isinstance(attestation, dict) or "policy" not in attestation:
            raise BastionError(f"{path}: the plan's `attestation` section has no `policy`")
        section = attestation["policy"]
    if not isinstance(section, dict):
        raise BastionError(
            f"{path} holds neither a plan with an `attestation.policy` section nor a policy mapping"
        )
    try:
        return AttestationPolicy.model_validate(section)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "policy"
        raise BastionError(f"{path}: attestation policy key '{where}': {first['msg']}") from None


def expected_report_data(
    quote: bytes,
    *,
    certificate: Path | None = None,
    nonce_hex: str | None = None,
    report_data_hex: str | None = None,
) -> tuple[bytes, bool]:
    """What REPORTDATA must hold, and whether that is an independent expectation."""
    if report_data_hex is not None:
        if certificate is not None or nonce_hex is not None:
            raise BastionError("give either --report-data or --cert with --nonce, not both")
        expected = _hex(report_data_hex, "--report-data")
        if len(expected) != REPORT_DATA_SIZE:
            raise BastionError(
                f"--report-data must be {REPORT_DATA_SIZE} bytes ({2 * REPORT_DATA_SIZE} hex "
                f"digits), got {len(expected)} bytes"
            )
        return expected, True
    if (certificate is None) != (nonce_hex is None):
        raise BastionError("--cert and --nonce go together: the quote binds a TLS key to a nonce")
    if certificate is not None and nonce_hex is not None:
        cert = _certificate(certificate, "--cert")
        return report_data_for(tls_public_key_der(cert), _hex(nonce_hex, "--nonce")), True
    # Unbound: compare the quote with itself, and say so loudly in the verdict.
    return parse_quote(quote).report_body.report_data, False


def verify_quote_file(
    quote_path: Path,
    policy: AttestationPolicy,
    *,
    certificate: Path | None = None,
    nonce_hex: str | None = None,
    report_data_hex: str | None = None,
    simulated_root: Path | None = None,
    at: dt.datetime | None = None,
) -> ManualVerdict:
    """Verify the quote in ``quote_path``; an ``AttestationError`` names the failed check."""
    quote = _read_quote(quote_path)
    expected, bound = expected_report_data(
        quote, certificate=certificate, nonce_hex=nonce_hex, report_data_hex=report_data_hex
    )
    root = None
    if simulated_root is not None:
        if not policy.allow_simulated:
            raise BastionError(
                "--simulated-root given, but the policy does not set allow_simulated: true; "
                "simulated evidence is refused by this policy"
            )
        root = _certificate(simulated_root, "--simulated-root")
    verified = verify_quote(quote, policy, expected, now=at, simulated_root=root)
    return ManualVerdict(verified, bound)


def _read_quote(path: Path) -> bytes:
    try:
        size = Path(path).stat().st_size
    except FileNotFoundError:
        raise BastionError(f"quote file {path} not found") from None
    if size > MAX_QUOTE_FILE_BYTES:
        raise BastionError(f"{path} is {size} bytes: not a quote (limit {MAX_QUOTE_FILE_BYTES})")
    return Path(path).read_bytes()


def _certificate(path: Path, option: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError:
        raise BastionError(f"{option} {path} not found") from None
    except ValueError as exc:
        raise BastionError(f"{option} {path} is not a PEM certificate: {exc}") from None


def _hex(value: str, option: str) -> bytes:
    try:
        return bytes.fromhex(value.strip().removeprefix("0x"))
    except ValueError:
        raise BastionError(f"{option} must be hexadecimal, got {value!r}") from None


@dataclass(frozen=True)
class EvidenceVerdict:
    """Accepted SGX, TDX or SNP evidence, and whether its report data was independently bound."""

    verified: Verdict
    kind: str
    binding_checked: bool


def verify_evidence_file(
    evidence_path: Path,
    policy: AttestationPolicy,
    *,
    certificate: Path | None = None,
    nonce_hex: str | None = None,
    plan_hash: str | None = None,
    report_data_hex: str | None = None,
    simulated: Path | None = None,
    vcek: Path | None = None,
    collateral: Path | None = None,
    at: dt.datetime | None = None,
) -> EvidenceVerdict:
    """Detect what ``evidence_path`` holds (SGX v3, TDX v4/v5, SEV-SNP) and verify it.

    A TDX or SNP guest binds the TLS key, nonce *and* workspace measurement, so
    ``--cert``/``--nonce`` need ``--workspace-measurement`` for them.  ``simulated`` is a simulated root CA file or a simulated-keys
    folder; ``collateral`` is Intel collateral saved as JSON (the QVL / dcap-qvl layout).
    """
    data = _read_quote(evidence_path)
    kind = detect_format(data)
    if report_data_hex is not None:
        if certificate is not None or nonce_hex is not None:
            raise BastionError("give either --report-data or --cert with --nonce, not both")
        expected = _hex(report_data_hex, "--report-data")
        if len(expected) != REPORT_DATA_SIZE:
            raise BastionError(f"--report-data must be {REPORT_DATA_SIZE} bytes")
        bound = True
    elif (certificate is None) != (nonce_hex is None):
        raise BastionError("--cert and --nonce go together: the quote binds a TLS key to a nonce")
    elif certificate is not None and nonce_hex is not None:
        spki = tls_public_key_der(_certificate(certificate, "--cert"))
        nonce = _hex(nonce_hex, "--nonce")
        if kind == "sgx":
            expected, bound = report_data_for(spki, nonce), True
        else:
            if plan_hash is None:
                raise BastionError(
                    f"{kind.upper()} evidence binds the workspace too: give "
                    "--workspace-measurement (or --plan-hash for an unmeasured workspace; "
                    "`bastion workspace verify` prints the measurement) with --cert and --nonce"
                )
            expected = cvm_report_data_for(spki, nonce, workspace_hash_of(plan_hash))
            bound = True
    else:
        expected, bound = _own_report_data(data, kind), False
    anchors = _simulated_anchors(simulated, policy)
    vcek_certificate = None
    if vcek is not None:
        try:
            raw = Path(vcek).read_bytes()
            vcek_certificate = (
                x509.load_pem_x509_certificate(raw)
                if raw.lstrip().startswith(b"-----")
                else x509.load_der_x509_certificate(raw)
            )
        except (OSError, ValueError) as exc:
            raise BastionError(f"--vcek {vcek}: not a readable certificate ({exc})") from None
    provider = _SavedCollateral(collateral) if collateral is not None else None
    verified = verify_evidence(
        data,
        policy,
        expected,
        now=at,
        anchors=anchors,
        collateral_provider=provider,
        vcek=vcek_certificate,
    )
    return EvidenceVerdict(verified, kind, bound)


def _own_report_data(data: bytes, kind: str) -> bytes:
    if kind == "sgx":
        return parse_quote(data).report_body.report_data
    if kind == "tdx":
        return parse_td_quote(data).td_report.report_data
    report, _ = split_snp_evidence(data)
    return parse_snp_report(report).report_data


def _simulated_anchors(path: Path | None, policy: AttestationPolicy) -> TrustAnchors:
    if path is None:
        return TrustAnchors()
    if not policy.allow_simulated:
        raise BastionError(
            "--simulated-root given, but the policy does not set allow_simulated: true; "
            "simulated evidence is refused by this policy"
        )
    if not Path(path).is_dir():
        return TrustAnchors(sgx_simulated_root=_certificate(path, "--simulated-root"))
    sgx_root = None
    if (Path(path) / "simulated-root-ca.pem").is_file():
        sgx_root = _certificate(Path(path) / "simulated-root-ca.pem", "--simulated-root")
    snp_root = None
    if SimulatedSnpHierarchy.present(Path(path)):
        snp_root = SimulatedSnpHierarchy.load(Path(path)).root
    return TrustAnchors(sgx_simulated_root=sgx_root, snp_simulated_root=snp_root)


class _SavedCollateral:
    """Collateral saved as JSON, for offline checks (`--collateral`)."""

    def __init__(self, path: Path) -> None:
        try:
            self._document = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BastionError(f"--collateral {path}: not readable JSON ({exc})") from None

    def fetch(self, fmspc: bytes, pck_ca: str) -> Collateral:
        return collateral_from_json(self._document)
