"""TDX quote verification against a test PKI: v4, v5 (TD 1.0 and 1.5) accepted; each broken link
refused with its own reason."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from bastion.tee.attestation import AttestationError, AttestationPolicy
from bastion.tee.attestation.evidence import detect_format
from bastion.tee.attestation.tdx import parse_td_quote
from bastion.tee.attestation.tdx_verify import VerifiedTdQuote, verify_td_quote

REPORT_DATA = bytes(range(64))


class _Fixed:
    def __init__(self, collateral: Any) -> None:
        self.collateral = collateral

    def fetch(self, fmspc: bytes, pck_ca: str) -> Any:
        return self.collateral


def policy(pki: Any, **tdx: Any) -> AttestationPolicy:
    section: dict[str, Any] = {"mrtd": [pki.MRTD.hex()], "rtmr3": [pki.RTMRS[3].hex()]}
    section.update(tdx)
    return AttestationPolicy(required=True, collateral="none", tdx=section)


def verify(pki: Any, quote: bytes, pol: AttestationPolicy | None = None, **kw: Any) -> Any:
    return verify_td_quote(
        quote,
        pol or policy(pki),
        kw.pop("expected", REPORT_DATA),
        pki.root,
        pki.now,
        **kw,
    )


def reason_of(pki: Any, quote: bytes, pol: AttestationPolicy | None = None, **kw: Any) -> str:
    with pytest.raises(AttestationError) as caught:
        verify(pki, quote, pol, **kw)
    return caught.value.reason


@pytest.mark.parametrize(
    ("version", "td15"), [(4, False), (5, False), (5, True)], ids=["v4", "v5-td10", "v5-td15"]
)
def test_good_quotes_are_accepted_with_their_fields(pki: Any, version: int, td15: bool) -> None:
    quote = pki.td_quote(version=version, td15=td15, report_data=REPORT_DATA)
    assert detect_format(quote) == "tdx"
    verified = verify(pki, quote)
    assert isinstance(verified, VerifiedTdQuote)
    assert verified.quote.version == version
    assert verified.td.mrtd == pki.MRTD and verified.td.rtmrs == pki.RTMRS
    assert verified.td.report_data == REPORT_DATA
    assert verified.td.is_td15 is td15
    assert verified.fmspc == pki.FMSPC
    assert not verified.simulated and not verified.tcb_checked
    if td15:
        assert verified.td.mrservicetd == bytes(48)
        assert verified.td.tee_tcb_svn2 == pki.TEE_TCB_SVN


def test_parse_roundtrips_through_bastions_packer(pki: Any) -> None:
    from bastion.tee.attestation.tdx import pack_td_quote

    quote = pki.td_quote(version=5, td15=True)
    parsed = parse_td_quote(quote)
    again = pack_td_quote(
        parsed.header,
        parsed.td_report,
        signature=parsed.signature,
        attestation_public_key=parsed.attestation_public_key,
        qe_report_body=parsed.qe_report_body,
        qe_report_signature=parsed.qe_report_signature,
        qe_auth_data=parsed.qe_auth_data,
        certification_data=parsed.certification_data,
    )
    assert again == quote


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"mrtd": bytes(48)}, "mrtd"),
        ({"rtmrs": (bytes(48),) * 4}, "rtmr"),
        ({"td_attributes": 0x1}, "debug"),
    ],
    ids=["mrtd", "rtmr3", "debug"],
)
def test_policy_mismatches_have_their_own_reason(
    pki: Any, change: dict[str, Any], reason: str
) -> None:
    assert reason_of(pki, pki.td_quote(report_data=REPORT_DATA, **change)) == reason


def test_debug_td_is_accepted_only_when_the_policy_allows_it(pki: Any) -> None:
    quote = pki.td_quote(report_data=REPORT_DATA, td_attributes=0x1)
    assert verify(pki, quote, policy(pki, allow_debug=True)).debug


def test_xfam_and_td_attributes_masks(pki: Any) -> None:
    quote = pki.td_quote(report_data=REPORT_DATA)
    ok = policy(pki, xfam={"value": "61ae7"}, td_attributes={"value": "10000000"})
    verify(pki, quote, ok)
    assert reason_of(pki, quote, policy(pki, xfam={"value": "e7", "mask": "ff0ff"})) == "xfam"
    bad_attributes = policy(pki, td_attributes={"value": "0", "mask": "10000000"})
    assert reason_of(pki, quote, bad_attributes) == "td_attributes"


def test_a_td_bound_to_a_service_td_is_refused_unless_pinned(pki: Any) -> None:
    quote = pki.td_quote(version=5, td15=True, report_data=REPORT_DATA, mrservicetd=b"\x5f" * 48)
    assert reason_of(pki, quote) == "mrservicetd"
    verify(pki, quote, policy(pki, mrservicetd=["5f" * 48]))


def test_rtmr_any_and_lists(pki: Any) -> None:
    quote = pki.td_quote(report_data=REPORT_DATA)
    verify(pki, quote, policy(pki, rtmr3="any", rtmr0=[pki.RTMRS[0].hex(), "ab" * 48]))


def test_a_quote_signed_by_another_key_is_refused(pki: Any) -> None:
    quote = pki.td_quote(report_data=REPORT_DATA, signing_key=pki.new_key())
    assert reason_of(pki, quote) == "quote_signature"


def test_a_tampered_body_byte_breaks_the_signature(pki: Any) -> None:
    quote = bytearray(pki.td_quote(report_data=REPORT_DATA))
    quote[48 + 520 + 5] ^= 0x01  # inside REPORTDATA (body offset 520): the policy passes
    assert reason_of(pki, bytes(quote)) == "quote_signature"


def test_a_qe_report_not_signed_by_the_pck_key_is_refused(pki: Any) -> None:
    quote = pki.td_quote(report_data=REPORT_DATA, qe_signing_key=pki.new_key())
    assert reason_of(pki, quote) == "qe_report_signature"


def test_an_attestation_key_the_qe_did_not_vouch_for_is_refused(pki: Any) -> None:
    quote = pki.td_quote(report_data=REPORT_DATA, qe_report_data=bytes(64))
    assert reason_of(pki, quote) == "attestation_key_binding"


def test_a_qe_that_is_not_intels_td_qe_is_refused(pki: Any) -> None:
    quote = pki.td_quote(report_data=REPORT_DATA, qe_signer=pki.INTEL_QE_SIGNER)
    assert reason_of(pki, quote) == "qe_identity"


def test_a_chain_to_a_foreign_root_is_refused(pki: Any, other_pki: Any) -> None:
    quote = other_pki.td_quote(report_data=REPORT_DATA)
    assert reason_of(pki, quote) == "untrusted_root"


def test_report_data_of_another_connection_is_refused(pki: Any) -> None:
    quote = pki.td_quote(report_data=REPORT_DATA)
    assert reason_of(pki, quote, expected=bytes(64)) == "report_data"


def test_a_policy_without_a_tdx_section_refuses_tdx(pki: Any) -> None:
    sgx_only = AttestationPolicy(required=True, mrenclave=["aa" * 32], collateral="none")
    assert reason_of(pki, pki.td_quote(report_data=REPORT_DATA), sgx_only) == "evidence_kind"


def test_a_tdx_only_policy_refuses_every_sgx_quote(pki: Any) -> None:
    from bastion.tee.attestation.evidence import verify_evidence

    with pytest.raises(AttestationError) as caught:
        verify_evidence(pki.quote(), policy(pki), bytes(64))
    assert caught.value.reason == "evidence_kind"


# --- collateral: TDX TCB info v3, TDX module identity, TD QE identity -------------------------


def collateral_policy(pki: Any, statuses: list[str] | None = None) -> AttestationPolicy:
    section: dict[str, Any] = {"mrtd": [pki.MRTD.hex()]}
    if statuses:
        section["allowed_tcb_statuses"] = statuses
    return AttestationPolicy(required=True, tdx=section)


def test_collateral_up_to_date_is_accepted(pki: Any) -> None:
    provider = _Fixed(pki.tdx_collateral())
    verified = verify(
        pki,
        pki.td_quote(report_data=REPORT_DATA),
        collateral_policy(pki),
        collateral_provider=provider,
    )
    assert verified.tcb_checked and verified.tcb_status == "UpToDate"
    assert verified.qe_tcb_status == "UpToDate"


def raised_microcode(pki: Any) -> tuple[int, ...]:
    """TDX components one above the quote's in byte 2 (TDX late microcode): bytes 0 and 1 (the
    module's SVN and version) are judged by the module identity when the version is non-zero."""
    svn = list(pki.TEE_TCB_SVN)
    svn[2] += 1
    return tuple(svn)


def test_tee_tcb_svn_below_every_level_is_refused(pki: Any) -> None:
    higher = raised_microcode(pki)
    provider = _Fixed(pki.tdx_collateral(levels=[(higher, "UpToDate")]))
    quote = pki.td_quote(report_data=REPORT_DATA)
    assert (
        reason_of(pki, quote, collateral_policy(pki), collateral_provider=provider) == "tcb_status"
    )


def test_an_out_of_date_level_is_refused_unless_allowed(pki: Any) -> None:
    higher = raised_microcode(pki)
    levels = [(higher, "UpToDate"), (tuple(pki.TEE_TCB_SVN), "OutOfDate")]
    provider = _Fixed(pki.tdx_collateral(levels=levels))
    quote = pki.td_quote(report_data=REPORT_DATA)
    assert (
        reason_of(pki, quote, collateral_policy(pki), collateral_provider=provider) == "tcb_status"
    )
    lenient = collateral_policy(pki, ["UpToDate", "OutOfDate"])
    verified = verify(pki, quote, lenient, collateral_provider=provider)
    assert verified.tcb_status == "OutOfDate" and verified.advisory_ids == ("INTEL-SA-00001",)


def test_an_outdated_tdx_module_lowers_the_status(pki: Any) -> None:
    provider = _Fixed(pki.tdx_collateral(module_levels=[(9, "UpToDate"), (2, "OutOfDate")]))
    quote = pki.td_quote(report_data=REPORT_DATA)
    assert (
        reason_of(pki, quote, collateral_policy(pki), collateral_provider=provider) == "tcb_status"
    )
    lenient = collateral_policy(pki, ["UpToDate", "OutOfDate"])
    assert verify(pki, quote, lenient, collateral_provider=provider).tcb_status == "OutOfDate"


def test_module_svn_bytes_are_judged_by_the_module_identity_not_the_level(pki: Any) -> None:
    module_svn_higher = (9,) + tuple(pki.TEE_TCB_SVN[1:])
    provider = _Fixed(pki.tdx_collateral(levels=[(module_svn_higher, "UpToDate")]))
    verified = verify(
        pki,
        pki.td_quote(report_data=REPORT_DATA),
        collateral_policy(pki),
        collateral_provider=provider,
    )
    assert verified.tcb_status == "UpToDate"


def test_a_td15_quote_is_judged_on_tee_tcb_svn2_too(pki: Any) -> None:
    provider = _Fixed(pki.tdx_collateral())
    older = bytes([5, 1, 1]) + bytes(13)  # the module after a TD-preserving update: lower
    quote = pki.td_quote(version=5, td15=True, report_data=REPORT_DATA, tee_tcb_svn2=older)
    assert (
        reason_of(pki, quote, collateral_policy(pki), collateral_provider=provider) == "tcb_status"
    )


def test_a_tdx_module_not_signed_by_intel_is_refused(pki: Any) -> None:
    provider = _Fixed(pki.tdx_collateral())
    quote = pki.td_quote(report_data=REPORT_DATA, mrsignerseam=b"\x01" * 48)
    assert (
        reason_of(pki, quote, collateral_policy(pki), collateral_provider=provider) == "tdx_module"
    )


def test_sgx_tcb_info_is_not_accepted_for_a_td(pki: Any) -> None:
    provider = _Fixed(pki.collateral())
    quote = pki.td_quote(report_data=REPORT_DATA)
    assert (
        reason_of(pki, quote, collateral_policy(pki), collateral_provider=provider) == "collateral"
    )


def test_expired_collateral_is_refused(pki: Any) -> None:
    provider = _Fixed(pki.tdx_collateral())
    later = pki.now + dt.timedelta(days=60)
    with pytest.raises(AttestationError):
        verify_td_quote(
            pki.td_quote(report_data=REPORT_DATA),
            collateral_policy(pki),
            REPORT_DATA,
            pki.root,
            later,
            collateral_provider=provider,
        )


def test_tdx_collateral_is_fetched_from_the_tdx_paths_of_pcs(pki: Any) -> None:
    from urllib.parse import quote

    from cryptography.hazmat.primitives import serialization

    from bastion.tee.attestation.tdx_tcb import TdxPcsCollateralProvider

    expected = pki.tdx_collateral()
    chain = quote(pki.pem(pki.tcb_signer, pki.root).decode())
    der = serialization.Encoding.DER
    asked: list[str] = []

    def get(url: str) -> tuple[bytes, dict[str, str]]:
        asked.append(url)
        if "/tdx/certification/v4/tcb?" in url:
            return expected.tcb_info, {"TCB-Info-Issuer-Chain": chain}
        if url.endswith("/tdx/certification/v4/qe/identity"):
            return expected.qe_identity, {"SGX-Enclave-Identity-Issuer-Chain": chain}
        if "/sgx/certification/v4/pckcrl?ca=processor" in url:
            return expected.pck_crl.public_bytes(der), {}
        return expected.root_ca_crl.public_bytes(der), {}

    provider = TdxPcsCollateralProvider("https://pccs.example", http_get=get)
    verified = verify(
        pki,
        pki.td_quote(report_data=REPORT_DATA),
        collateral_policy(pki),
        collateral_provider=provider,
    )
    assert verified.tcb_status == "UpToDate"
    assert asked[:3] == [
        f"https://pccs.example/tdx/certification/v4/tcb?fmspc={pki.FMSPC.hex().upper()}",
        "https://pccs.example/tdx/certification/v4/qe/identity",
        "https://pccs.example/sgx/certification/v4/pckcrl?ca=processor&encoding=der",
    ]
