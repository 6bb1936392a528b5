"""dcap-qvl as an oracle for the SGX DCAP v3 verifier too: good, tampered and mutated quotes of
the test PKI, and a real SGX quote, get the same verdict and TCB status from both.

The real quote and its Intel collateral are from Phala-Network/dcap-qvl, ``sample/sgx_quote`` and
``sample/sgx_quote_collateral.json`` at commit 23e1f94dd73dec276dc59ca16d4577de36ba768e (a
quote from a real SGX CPU; collateral issued 2025-06-19, verified here at 2025-06-20).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.tee.attestation import AttestationError, AttestationPolicy, parse_quote
from bastion.tee.attestation.evidence import TrustAnchors, verify_evidence
from bastion.tee.attestation.roots import intel_sgx_root_ca
from bastion.tee.attestation.tdx_tcb import collateral_from_json

dcap_qvl = pytest.importorskip("dcap_qvl")

DATA = Path(__file__).parent / "data"
REAL_QUOTE = (DATA / "sgx_v3_phala.quote").read_bytes()
REAL_COLLATERAL = json.loads((DATA / "sgx_v3_phala_collateral.json").read_text())
REAL_AT = dt.datetime(2025, 6, 20, 12, tzinfo=dt.timezone.utc)
STATUSES = [
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
]


def qvl_json(pki: Any, collateral: Any) -> str:
    def split(body: bytes, key: str) -> tuple[str, str]:
        document = json.loads(body)
        return json.dumps(document[key], separators=(",", ":")), document["signature"]

    tcb, tcb_signature = split(collateral.tcb_info, "tcbInfo")
    qe, qe_signature = split(collateral.qe_identity, "enclaveIdentity")
    der = serialization.Encoding.DER
    chain = pki.pem(pki.tcb_signer, pki.root).decode()
    return json.dumps(
        {
            "pck_crl_issuer_chain": pki.pem(pki.ca, pki.root).decode(),
            "root_ca_crl": collateral.root_ca_crl.public_bytes(der).hex(),
            "pck_crl": collateral.pck_crl.public_bytes(der).hex(),
            "tcb_info_issuer_chain": chain,
            "tcb_info": tcb,
            "tcb_info_signature": tcb_signature,
            "qe_identity_issuer_chain": chain,
            "qe_identity": qe,
            "qe_identity_signature": qe_signature,
        }
    )


def outcomes(
    quote: bytes, collateral: Any, qvl_collateral: str, root: Any, now: dt.datetime, real: bool
) -> tuple[Any, Any]:
    class Provider:
        def fetch(self, fmspc: bytes, pck_ca: str) -> Any:
            return collateral

    try:
        body = parse_quote(quote).report_body
        policy = AttestationPolicy(
            required=True, mrenclave=[body.mr_enclave.hex()], allowed_tcb_statuses=STATUSES
        )
        ours: Any = verify_evidence(
            quote,
            policy,
            body.report_data,
            now=now,
            anchors=TrustAnchors(intel_root=None if real else root),
            collateral_provider=Provider(),
        )
    except AttestationError as exc:
        ours = exc
    try:
        parsed = dcap_qvl.QuoteCollateralV3.from_json(qvl_collateral)
        if real:
            theirs: Any = dcap_qvl.verify(quote, parsed, int(now.timestamp()))
        else:
            der = root.public_bytes(serialization.Encoding.DER)
            theirs = dcap_qvl.verify_with_root_ca(quote, parsed, der, int(now.timestamp()))
    except Exception as exc:  # dcap-qvl raises ValueError on every rejection
        theirs = exc
    return ours, theirs


def agree(ours: Any, theirs: Any) -> None:
    ours_ok, theirs_ok = not isinstance(ours, Exception), not isinstance(theirs, Exception)
    ours_says = "accepted" if ours_ok else f"{ours.reason}: {ours}"
    theirs_says = "accepted" if theirs_ok else str(theirs)[:300]
    assert ours_ok == theirs_ok, f"bastion: {ours_says}\ndcap-qvl: {theirs_says}"
    if ours_ok:
        assert ours.tcb_status == theirs.status
        assert sorted(ours.advisory_ids) == sorted(theirs.advisory_ids)


def settled_disagreement(ours: Any, theirs: Any, offset: int, original: bytes) -> bool:
    """The disagreements investigated and settled (module docstring of test_dcap_qvl_oracle):
    Bastion refuses, dcap-qvl accepts, because of a malformed copy of the root certificate in the
    PEM chain, or because the certification data is shorter than the signature data around it
    (bytes left over that no field accounts for).  Anything else must agree."""
    if not isinstance(ours, AttestationError) or isinstance(theirs, Exception):
        return False
    in_root_copy = offset >= original.rindex(b"-----BEGIN CERTIFICATE-----")
    chain_reasons = {"pck_chain", "certificate_chain", "certificate_format"}
    if in_root_copy and ours.reason in chain_reasons:
        return True
    return ours.reason == "quote_format" and "unexpected bytes after" in str(ours)


def pki_case(pki: Any, quote: bytes, collateral: Any | None = None) -> tuple[Any, Any]:
    collateral = collateral or pki.collateral()
    return outcomes(quote, collateral, qvl_json(pki, collateral), pki.root, pki.now, real=False)


def test_a_good_quote_both_accept(pki: Any) -> None:
    ours, theirs = pki_case(pki, pki.quote())
    agree(ours, theirs)
    assert ours.tcb_status == "UpToDate"


TAMPERED = {
    "foreign signing key": {"signing_key": "new"},
    "foreign QE signing key": {"qe_signing_key": "new"},
    "QE report data not binding the key": {"qe_report_data": bytes(64)},
    "not Intel's QE": {"qe_signer": bytes(32)},
    "QE below every level": {"qe_isv_svn": 1},
    "debug enclave": {"flags": 0x7},
}


@pytest.mark.parametrize("change", TAMPERED.values(), ids=TAMPERED.keys())
def test_tampered_quotes_get_the_same_verdict(pki: Any, change: dict[str, Any]) -> None:
    change = {k: (pki.new_key() if v == "new" else v) for k, v in change.items()}
    if "flags" in change:
        quote = pki.quote(
            body=pki.pack_body(mr_enclave=pki.MRENCLAVE, mr_signer=pki.MRSIGNER, flags=0x7)
        )
    else:
        quote = pki.quote(**change)
    ours, theirs = pki_case(pki, quote)
    if "flags" in change:  # Bastion's policy refuses debug; dcap-qvl's verify does too
        assert isinstance(ours, AttestationError) and ours.reason == "debug"
    agree(ours, theirs)


def test_a_foreign_root_gets_the_same_verdict(pki: Any, other_pki: Any) -> None:
    ours, theirs = pki_case(pki, other_pki.quote())
    agree(ours, theirs)
    assert isinstance(ours, AttestationError)


def test_an_out_of_date_platform_gets_the_same_status(pki: Any) -> None:
    higher = tuple(c + 1 for c in pki.TCB_COMPONENTS)
    levels = ((higher, pki.PCE_SVN, "UpToDate"), (pki.TCB_COMPONENTS, pki.PCE_SVN, "OutOfDate"))
    ours, theirs = pki_case(pki, pki.quote(), pki.collateral(levels=levels))
    agree(ours, theirs)
    assert ours.tcb_status == "OutOfDate"


def test_the_real_sgx_quote_both_accept_with_the_same_status() -> None:
    ours, theirs = outcomes(
        REAL_QUOTE,
        collateral_from_json(REAL_COLLATERAL),
        json.dumps(REAL_COLLATERAL),
        intel_sgx_root_ca(),
        REAL_AT,
        real=True,
    )
    agree(ours, theirs)
    assert ours.tcb_status == "ConfigurationAndSWHardeningNeeded"
    assert set(ours.advisory_ids) == {"INTEL-SA-00289", "INTEL-SA-00615"}
    assert bytes(dcap_qvl.Quote.parse(REAL_QUOTE).report.mr_enclave) == ours.mr_enclave


def test_a_certification_data_size_too_small_is_the_settled_disagreement() -> None:
    """Byte 1048 is the certification data size: shrinking it leaves bytes in the signature
    data that no field accounts for.  Bastion refuses the malformed quote; dcap-qvl ignores the
    leftover bytes (and the cut-off root copy) and accepts."""
    tampered = bytearray(REAL_QUOTE)
    tampered[1048] ^= 0x04
    ours, theirs = outcomes(
        bytes(tampered),
        collateral_from_json(REAL_COLLATERAL),
        json.dumps(REAL_COLLATERAL),
        intel_sgx_root_ca(),
        REAL_AT,
        real=True,
    )
    assert isinstance(ours, AttestationError) and "unexpected bytes after" in str(ours)
    assert not isinstance(theirs, Exception)
    assert settled_disagreement(ours, theirs, 1048, REAL_QUOTE)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(offset=st.integers(0, len(REAL_QUOTE) - 1), bit=st.integers(0, 7))
def test_bit_flips_in_the_real_sgx_quote_get_the_same_verdict(offset: int, bit: int) -> None:
    tampered = bytearray(REAL_QUOTE)
    tampered[offset] ^= 1 << bit
    ours, theirs = outcomes(
        bytes(tampered),
        collateral_from_json(REAL_COLLATERAL),
        json.dumps(REAL_COLLATERAL),
        intel_sgx_root_ca(),
        REAL_AT,
        real=True,
    )
    root_copy = REAL_QUOTE.rindex(b"-----BEGIN CERTIFICATE-----")
    if (
        offset >= root_copy
        and isinstance(ours, AttestationError)
        and not isinstance(theirs, Exception)
    ):
        assert ours.reason in {"pck_chain", "certificate_chain", "certificate_format"}
        return  # the settled disagreement on a malformed root copy (see the TDX oracle)
    agree(ours, theirs)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutations_of_test_pki_quotes_get_the_same_verdict(pki: Any, data: Any) -> None:
    original = pki.quote()
    quote = bytearray(original)
    offset = data.draw(st.integers(0, len(quote) - 1))
    quote[offset] = data.draw(st.integers(0, 255))
    ours, theirs = pki_case(pki, bytes(quote))
    root_copy = original.rindex(b"-----BEGIN CERTIFICATE-----")
    if (
        offset >= root_copy
        and isinstance(ours, AttestationError)
        and not isinstance(theirs, Exception)
    ):
        assert ours.reason in {"pck_chain", "certificate_chain", "certificate_format"}
        return
    agree(ours, theirs)
