"""Judge a platform against Intel collateral: revocation, TCB level and quoting-enclave identity.

Follows the TCB evaluation in Intel's "SGX DCAP Quote Verification Library" and the PCS API
appendices (TCB info v2/v3, enclave identity v2): the first TCB level whose every SVN is at or
below the PCK certificate's is the platform's level; the QE's level is chosen by its ISVSVN.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from bastion.tee.attestation.collateral import Collateral
from bastion.tee.attestation.errors import (
    CertificateChainError,
    CollateralError,
    QeIdentityMismatch,
    TcbStatusRejected,
)
from bastion.tee.attestation.pck import (
    TCB_COMPONENT_COUNT,
    PckInfo,
    common_name,
    public_key_of,
    verify_chain,
)
from bastion.tee.attestation.quote import ReportBody
from bastion.tee.attestation.signatures import verify_raw


@dataclass(frozen=True)
class TcbResult:
    """The platform's and the quoting enclave's TCB status, with Intel's advisories."""

    platform_status: str
    qe_status: str
    advisory_ids: tuple[str, ...]


def evaluate_collateral(
    collateral: Collateral,
    *,
    pck: PckInfo,
    pck_leaf: x509.Certificate,
    pck_issuer: x509.Certificate,
    root: x509.Certificate,
    qe_report: ReportBody,
    now: dt.datetime,
) -> TcbResult:
    """Check CRLs and signed collateral against `root`, then find the TCB levels."""
    _check_crl(collateral.root_ca_crl, root, now, "root CA CRL")
    _check_crl(collateral.pck_crl, pck_issuer, now, "PCK CRL")
    _not_revoked(pck_issuer, collateral.root_ca_crl)
    _not_revoked(pck_leaf, collateral.pck_crl)
    tcb_info = _signed_body(
        collateral.tcb_info,
        "tcbInfo",
        collateral.tcb_info_issuer_chain,
        root,
        collateral.root_ca_crl,
        now,
    )
    identity = _signed_body(
        collateral.qe_identity,
        "enclaveIdentity",
        collateral.qe_identity_issuer_chain,
        root,
        collateral.root_ca_crl,
        now,
    )
    try:
        platform_status, advisories = _platform_level(tcb_info, pck)
        qe_status = _qe_level(identity, qe_report)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CollateralError(f"collateral JSON is not in Intel's format: {exc!r}") from exc
    return TcbResult(platform_status, qe_status, advisories)


def _check_crl(
    crl: x509.CertificateRevocationList, issuer: x509.Certificate, now: dt.datetime, what: str
) -> None:
    key = public_key_of(issuer, f"{what} issuer")
    if crl.issuer != issuer.subject or not crl.is_signature_valid(key):
        raise CollateralError(f"the {what} is not signed by {common_name(issuer)!r}")
    next_update = crl.next_update_utc
    if next_update is None or not crl.last_update_utc <= now <= next_update:
        raise CollateralError(f"the {what} is not current at {now:%Y-%m-%d %H:%M} UTC; refetch it")


def _not_revoked(certificate: x509.Certificate, crl: x509.CertificateRevocationList) -> None:
    try:
        entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
    except ValueError as exc:
        raise CollateralError(f"a CRL entry is malformed: {exc}") from exc
    if entry is not None:
        raise CertificateChainError(
            f"{common_name(certificate)!r} (serial {certificate.serial_number:x}) is revoked",
            reason="certificate_revoked",
        )


def _signed_body(
    body: bytes,
    key: str,
    issuer_chain: Sequence[x509.Certificate],
    root: x509.Certificate,
    root_crl: x509.CertificateRevocationList,
    now: dt.datetime,
) -> dict[str, Any]:
    """Verify Intel's signature over the raw `key` member of a {key: ..., signature: hex} body."""
    raw, value, signature_hex = _split_signed_json(body, key)
    signer, _ = verify_chain(issuer_chain, [root], now, f"{key} signing chain")
    _not_revoked(signer, root_crl)
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError as exc:
        raise CollateralError(f"the {key} signature is not hex") from exc
    if not verify_raw(public_key_of(signer, f"{key} signing"), signature, raw):
        raise CollateralError(f"the {key} signature does not verify with {common_name(signer)!r}")
    for field in ("issueDate", "nextUpdate"):
        if not isinstance(value.get(field), str):
            raise CollateralError(f"{key} lacks {field}")
    issued, next_update = _time(value["issueDate"]), _time(value["nextUpdate"])
    if not issued <= now <= next_update:
        raise CollateralError(
            f"{key} is valid from {issued:%Y-%m-%d} to {next_update:%Y-%m-%d}, not now: refetch it"
        )
    return value


def _split_signed_json(body: bytes, key: str) -> tuple[bytes, dict[str, Any], str]:
    """Return the exact bytes of the `key` member (what Intel signed), its value and signature."""
    try:
        text = body.decode("utf-8")
        members = _top_level_members(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CollateralError(f"the {key} collateral is not a JSON object: {exc}") from exc
    if key not in members or "signature" not in members:
        raise CollateralError(f"the collateral lacks '{key}' or 'signature'")
    raw, value = members[key]
    signature = members["signature"][1]
    if not isinstance(value, dict) or not isinstance(signature, str):
        raise CollateralError(f"the {key} collateral has the wrong shape")
    return raw.encode("utf-8"), value, signature


def _top_level_members(text: str) -> dict[str, tuple[str, Any]]:
    decoder = json.JSONDecoder()
    members: dict[str, tuple[str, Any]] = {}
    pos = _skip(text, 0)
    if text[pos : pos + 1] != "{":
        raise ValueError("expected '{'")
    pos = _skip(text, pos + 1)
    while text[pos : pos + 1] != "}":
        name, pos = decoder.raw_decode(text, pos)
        pos = _skip(text, pos)
        if not isinstance(name, str) or text[pos : pos + 1] != ":":
            raise ValueError("expected a member name and ':'")
        start = _skip(text, pos + 1)
        value, pos = decoder.raw_decode(text, start)
        members[name] = (text[start:pos], value)
        pos = _skip(text, pos)
        if text[pos : pos + 1] == ",":
            pos = _skip(text, pos + 1)
        elif text[pos : pos + 1] != "}":
            raise ValueError("expected ',' or '}'")
    if text[pos + 1 :].strip():
        raise ValueError("trailing data after the JSON object")
    return members


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _platform_level(tcb_info: dict[str, Any], pck: PckInfo) -> tuple[str, tuple[str, ...]]:
    version = tcb_info["version"]
    if version not in (2, 3) or tcb_info.get("id", "SGX") != "SGX":
        raise CollateralError(f"unsupported TCB info (id {tcb_info.get('id')}, version {version})")
    if bytes.fromhex(tcb_info["fmspc"]) != pck.fmspc or bytes.fromhex(tcb_info["pceId"]) != (
        pck.pce_id
    ):
        raise CollateralError(
            f"TCB info is for FMSPC {tcb_info['fmspc']}, the PCK certificate is for "
            f"{pck.fmspc.hex().upper()}"
        )
    for level in tcb_info["tcbLevels"]:
        tcb = level["tcb"]
        if version == 3:
            required = [int(component["svn"]) for component in tcb["sgxtcbcomponents"]]
        else:
            required = [int(tcb[f"sgxtcbcomp{i:02d}svn"]) for i in range(1, 17)]
        if len(required) != TCB_COMPONENT_COUNT:
            raise CollateralError("a TCB level does not list 16 SGX TCB components")
        if all(have >= need for have, need in zip(pck.tcb_components, required, strict=True)) and (
            pck.pce_svn >= int(tcb["pcesvn"])
        ):
            return str(level["tcbStatus"]), tuple(str(a) for a in level.get("advisoryIDs", []))
    raise TcbStatusRejected(
        f"the platform's TCB (FMSPC {pck.fmspc.hex().upper()}) is below every level Intel "
        "lists: update its microcode and BIOS"
    )


def _qe_level(identity: dict[str, Any], qe_report: ReportBody) -> str:
    if identity.get("id") != "QE" or identity.get("version") != 2:
        raise CollateralError("the QE identity collateral is not a version 2 'QE' identity")
    misc_mask = int.from_bytes(bytes.fromhex(identity["miscselectMask"]), "big")
    misc = int.from_bytes(bytes.fromhex(identity["miscselect"]), "big")
    attributes_mask = bytes.fromhex(identity["attributesMask"])
    attributes = bytes.fromhex(identity["attributes"])
    masked = bytes(a & m for a, m in zip(qe_report.attributes, attributes_mask, strict=True))
    if (
        bytes.fromhex(identity["mrsigner"]) != qe_report.mr_signer
        or int(identity["isvprodid"]) != qe_report.isv_prod_id
        or qe_report.misc_select & misc_mask != misc & misc_mask
        or masked != bytes(a & m for a, m in zip(attributes, attributes_mask, strict=True))
    ):
        raise QeIdentityMismatch(
            "the quoting enclave's report does not match Intel's QE identity (MRSIGNER, "
            "ISVPRODID, MISCSELECT or ATTRIBUTES): the quote was not made by Intel's QE"
        )
    for level in identity["tcbLevels"]:
        if qe_report.isv_svn >= int(level["tcb"]["isvsvn"]):
            return str(level["tcbStatus"])
    raise TcbStatusRejected(
        f"the quoting enclave's ISVSVN {qe_report.isv_svn} is below every level Intel lists: "
        "update the platform's DCAP packages"
    )


def _time(value: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CollateralError(f"collateral time {value!r} is not ISO 8601") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
