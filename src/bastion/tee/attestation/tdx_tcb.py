"""Judge a TDX platform against Intel collateral: TDX TCB info, TDX module identity, TD QE identity.

Follows Intel's PCS API v4 ("TDX TCB Info" v3 and "TD QE Identity" v2) and the evaluation order
of Intel's Quote Verification Library: CRLs and signatures first; then the first TCB level whose
SGX components and PCESVN are at or below the PCK certificate's *and* whose ``tdxtcbcomponents``
are at or below the quote's TEE_TCB_SVN; then the TDX module (MRSIGNERSEAM, SEAMATTRIBUTES under
mask, and for module major version ``TEE_TCB_SVN[1] > 0`` the ``tdxModuleIdentities`` entry
``TDX_<version>`` and its level by ``TEE_TCB_SVN[0]``); then the TD quoting enclave's identity.
When the module version byte is non-zero, bytes 0 and 1 of TEE_TCB_SVN (module SVN and version)
are judged by that module identity, not by ``tdxtcbcomponents[0..1]`` (as Intel's QVL and
dcap-qvl do).  A TD 1.5 body's TEE_TCB_SVN_2 (the TCB after a TD-preserving module update) is
evaluated the same way and must also match a level.  The platform status is the worst of these.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from bastion.tee.attestation.collateral import (
    Collateral,
    PckCa,
    PcsCollateralProvider,
    _issuer_chain,
    parse_crl,
)
from bastion.tee.attestation.errors import (
    CollateralError,
    QeIdentityMismatch,
    TcbStatusRejected,
)
from bastion.tee.attestation.pck import TCB_COMPONENT_COUNT, PckInfo
from bastion.tee.attestation.quote import ReportBody
from bastion.tee.attestation.tcb import _check_crl, _not_revoked, _signed_body
from bastion.tee.attestation.tdx import TdReportBody

#: From best to worst; Revoked is never accepted whatever the policy says.
STATUS_ORDER = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)


@dataclass(frozen=True)
class TdxTcbResult:
    """The platform (with TDX module) and TD quoting enclave TCB statuses, with advisories."""

    platform_status: str
    qe_status: str
    advisory_ids: tuple[str, ...]


class TdxPcsCollateralProvider(PcsCollateralProvider):
    """Fetches TDX collateral (``/tdx/certification/v4/tcb`` and ``.../qe/identity``)."""

    def fetch(self, fmspc: bytes, pck_ca: PckCa) -> Collateral:
        sgx = f"{self.base_url}/sgx/certification/v4"
        tdx = f"{self.base_url}/tdx/certification/v4"
        tcb_body, tcb_headers = self._get(f"{tdx}/tcb?fmspc={fmspc.hex().upper()}")
        qe_body, qe_headers = self._get(f"{tdx}/qe/identity")
        pck_crl_body, _ = self._get(f"{sgx}/pckcrl?ca={pck_ca}&encoding=der")
        root_crl_body, _ = self._get(self.root_ca_crl_url)
        return Collateral(
            tcb_info=tcb_body,
            tcb_info_issuer_chain=_issuer_chain(tcb_headers, "TCB-Info-Issuer-Chain"),
            qe_identity=qe_body,
            qe_identity_issuer_chain=_issuer_chain(qe_headers, "SGX-Enclave-Identity-Issuer-Chain"),
            pck_crl=parse_crl(pck_crl_body, "PCK CRL"),
            root_ca_crl=parse_crl(root_crl_body, "root CA CRL"),
        )


def evaluate_tdx_collateral(
    collateral: Collateral,
    *,
    pck: PckInfo,
    pck_leaf: x509.Certificate,
    pck_issuer: x509.Certificate,
    root: x509.Certificate,
    td_report: TdReportBody,
    qe_report: ReportBody,
    now: dt.datetime,
) -> TdxTcbResult:
    """Check CRLs and signed TDX collateral against `root`, then find the TCB levels."""
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
    svns = [td_report.tee_tcb_svn]
    if td_report.tee_tcb_svn2 is not None:
        svns.append(td_report.tee_tcb_svn2)
    levels: list[tuple[str, tuple[str, ...]]] = []
    try:
        for svn in svns:
            levels.append(_platform_level(tcb_info, pck, svn))
            module = _module_level(tcb_info, td_report, svn)
            if module is not None:
                levels.append(module)
        qe_status = _td_qe_level(identity, qe_report)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise CollateralError(f"TDX collateral JSON is not in Intel's format: {exc!r}") from exc
    platform = max((status for status, _ in levels), key=STATUS_ORDER.index)
    advisories = tuple(dict.fromkeys(a for _, found in levels for a in found))
    return TdxTcbResult(platform, qe_status, advisories)


def _status(value: Any) -> str:
    status = str(value)
    if status not in STATUS_ORDER:
        raise CollateralError(f"unknown TCB status {status!r} in the collateral")
    return status


def _platform_level(
    tcb_info: dict[str, Any], pck: PckInfo, tee_tcb_svn: bytes
) -> tuple[str, tuple[str, ...]]:
    if tcb_info.get("id") != "TDX" or tcb_info.get("version") != 3:
        raise CollateralError(
            f"TCB info is not TDX TCB info v3 (id {tcb_info.get('id')!r}, version "
            f"{tcb_info.get('version')!r}): fetch it from /tdx/certification/v4/tcb"
        )
    if bytes.fromhex(tcb_info["fmspc"]) != pck.fmspc or bytes.fromhex(tcb_info["pceId"]) != (
        pck.pce_id
    ):
        raise CollateralError(
            f"TCB info is for FMSPC {tcb_info['fmspc']}, the PCK certificate is for "
            f"{pck.fmspc.hex().upper()}"
        )
    for level in tcb_info["tcbLevels"]:
        tcb = level["tcb"]
        sgx = [int(c["svn"]) for c in tcb["sgxtcbcomponents"]]
        tdx = [int(c["svn"]) for c in tcb["tdxtcbcomponents"]]
        if len(sgx) != TCB_COMPONENT_COUNT or len(tdx) != len(tee_tcb_svn):
            raise CollateralError("a TDX TCB level does not list 16 SGX and 16 TDX components")
        first = 2 if tee_tcb_svn[1] > 0 else 0  # module SVN/version: judged by module identity
        if (
            all(have >= need for have, need in zip(pck.tcb_components, sgx, strict=True))
            and pck.pce_svn >= int(tcb["pcesvn"])
            and all(
                have >= need for have, need in zip(tee_tcb_svn[first:], tdx[first:], strict=True)
            )
        ):
            return _status(level["tcbStatus"]), tuple(str(a) for a in level.get("advisoryIDs", []))
    raise TcbStatusRejected(
        f"the TDX platform's TCB (FMSPC {pck.fmspc.hex().upper()}, TEE_TCB_SVN "
        f"{tee_tcb_svn.hex()}) is below every level Intel lists: update the BIOS, microcode "
        "and TDX module"
    )


def _module_level(
    tcb_info: dict[str, Any], td: TdReportBody, tee_tcb_svn: bytes
) -> tuple[str, tuple[str, ...]] | None:
    module = tcb_info["tdxModule"]
    mrsigner = bytes.fromhex(module["mrsigner"])
    attributes = int.from_bytes(bytes.fromhex(module["attributes"]), "little")
    mask = int.from_bytes(bytes.fromhex(module["attributesMask"]), "little")
    levels = None
    version = tee_tcb_svn[1]
    if version > 0 and tcb_info.get("tdxModuleIdentities"):
        wanted = f"TDX_{version:02X}"
        matches = [m for m in tcb_info["tdxModuleIdentities"] if str(m["id"]).upper() == wanted]
        if not matches:
            raise CollateralError(f"TCB info lists no TDX module identity {wanted}")
        identity = matches[0]
        mrsigner = bytes.fromhex(identity["mrsigner"])
        attributes = int.from_bytes(bytes.fromhex(identity["attributes"]), "little")
        mask = int.from_bytes(bytes.fromhex(identity["attributesMask"]), "little")
        levels = identity.get("tcbLevels")
    if td.mrsignerseam != mrsigner or td.seam_attributes & mask != attributes & mask:
        raise TcbStatusRejected(
            "the TDX module's MRSIGNERSEAM or SEAMATTRIBUTES do not match Intel's TDX module "
            "identity: the TD does not run under an Intel-signed TDX module",
            reason="tdx_module",
        )
    if not levels:
        return None
    for level in levels:
        if tee_tcb_svn[0] >= int(level["tcb"]["isvsvn"]):
            return _status(level["tcbStatus"]), tuple(str(a) for a in level.get("advisoryIDs", []))
    raise TcbStatusRejected(
        f"the TDX module's SVN {tee_tcb_svn[0]} is below every level Intel lists for "
        f"TDX_{version:02X}: update the TDX module"
    )


def _td_qe_level(identity: dict[str, Any], qe_report: ReportBody) -> str:
    if identity.get("id") != "TD_QE" or identity.get("version") != 2:
        raise CollateralError(
            "the QE identity collateral is not a version 2 'TD_QE' identity: fetch it from "
            "/tdx/certification/v4/qe/identity"
        )
    misc_mask = int.from_bytes(bytes.fromhex(identity["miscselectMask"]), "big")
    misc = int.from_bytes(bytes.fromhex(identity["miscselect"]), "big")
    attributes_mask = bytes.fromhex(identity["attributesMask"])
    attributes = bytes.fromhex(identity["attributes"])
    if len(attributes_mask) != 16 or len(attributes) != 16:
        raise CollateralError("TD QE identity attributes are not 16 bytes")
    masked = bytes(a & m for a, m in zip(qe_report.attributes, attributes_mask, strict=True))
    if (
        bytes.fromhex(identity["mrsigner"]) != qe_report.mr_signer
        or int(identity["isvprodid"]) != qe_report.isv_prod_id
        or qe_report.misc_select & misc_mask != misc & misc_mask
        or masked != bytes(a & m for a, m in zip(attributes, attributes_mask, strict=True))
    ):
        raise QeIdentityMismatch(
            "the quoting enclave's report does not match Intel's TD QE identity (MRSIGNER, "
            "ISVPRODID, MISCSELECT or ATTRIBUTES): the quote was not made by Intel's TD QE"
        )
    for level in identity["tcbLevels"]:
        if qe_report.isv_svn >= int(level["tcb"]["isvsvn"]):
            return _status(level["tcbStatus"])
    raise TcbStatusRejected(
        f"the TD quoting enclave's ISVSVN {qe_report.isv_svn} is below every level Intel lists"
    )


def collateral_from_json(document: dict[str, Any]) -> Collateral:
    """Collateral in the JSON layout of ``dcap-qvl``'s ``QuoteCollateralV3`` (and Intel's QVL
    ``sgx_ql_qve_collateral_t``): raw tcb_info / qe_identity bodies, hex signatures, PEM issuer
    chains and hex-DER CRLs."""
    from bastion.tee.attestation.pck import load_pem_chain

    def signed(key: str, body: str, signature: str) -> bytes:
        return f'{{"{key}":{body},"signature":"{signature}"}}'.encode()

    try:
        return Collateral(
            tcb_info=signed("tcbInfo", document["tcb_info"], document["tcb_info_signature"]),
            tcb_info_issuer_chain=tuple(
                load_pem_chain(document["tcb_info_issuer_chain"].encode(), "TCB info chain")
            ),
            qe_identity=signed(
                "enclaveIdentity", document["qe_identity"], document["qe_identity_signature"]
            ),
            qe_identity_issuer_chain=tuple(
                load_pem_chain(document["qe_identity_issuer_chain"].encode(), "QE identity chain")
            ),
            pck_crl=parse_crl(_crl_bytes(document["pck_crl"]), "PCK CRL"),
            root_ca_crl=parse_crl(_crl_bytes(document["root_ca_crl"]), "root CA CRL"),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise CollateralError(f"collateral JSON lacks a field: {exc!r}") from exc


def _crl_bytes(value: Any) -> bytes:
    if isinstance(value, list):
        return bytes(value)
    return urllib.parse.unquote(str(value)).encode()
