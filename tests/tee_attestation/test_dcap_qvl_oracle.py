"""dcap-qvl (Phala Network's Rust DCAP verifier, PyPI ``dcap-qvl``) as an independent oracle.

On every good and tampered TDX and SGX quote here, and on hypothesis mutations, Bastion's
verifier and dcap-qvl must both accept or both reject, and the fields both parse must be equal.
Both get the same collateral and the same root; Bastion's policy pins the quote's own
measurements and allows every TCB status except Revoked, so what is compared is verification
itself (dcap-qvl has no measurement policy).  Both refuse debug TDs by default.

Disagreements found and settled (see the closing note of issue 19):

* bytes 0 and 1 of TEE_TCB_SVN: Bastion first compared all 16 with ``tdxtcbcomponents``; dcap-qvl
  (like Intel's QVL) leaves the module SVN and version to ``tdxModuleIdentities`` when the
  version byte is non-zero.  dcap-qvl follows Intel's evaluation; Bastion now does the same.
* TD 1.5 TEE_TCB_SVN_2: Bastion first ignored it; dcap-qvl requires it to match a TCB level as
  well.  Bastion now evaluates it too (the stricter reading; the TD ran under both).
* TD 1.5 MRSERVICETD: dcap-qvl refuses a non-zero one ("Invalid MR service TD"); Bastion first
  did not look at it.  A bound service TD (a migration TD) can export the TD's state, so the
  policy now requires zeros unless `mrservicetd` lists the service TD.
* non-zero bytes after the quote's declared end: dcap-qvl ignores them; Bastion refuses them
  (zero padding, as configfs-tsm buffers carry, is accepted).  The format defines where a quote
  ends and gives later bytes no meaning, so neither contradicts it; Bastion keeps the stricter
  rule so that one quote has one byte string.  `test_bit_flips_in_the_real_quote...` asserts
  that this is the only disagreement on the real quote.
* an unparseable copy of the root CA at the end of the quote's PEM chain: dcap-qvl ignores that
  copy (it verifies leaf and intermediate against the root it is given); Bastion refuses the
  malformed chain.  Intel's QVL compares the chain's root with the trusted root, so it too
  rejects such a quote: the specification's reference verifier supports Bastion here.
* certification data shorter than the signature data around it says (a length field made
  smaller): dcap-qvl ignores the bytes no field accounts for; Bastion refuses the quote as
  malformed.  The format defines the signature data as exactly its fields, so the lengths
  must agree; this supports Bastion (Intel's QVL source was not checked on this point).
* the outer certification data type of a TD quote changed from 6 (QE report certification
  data): dcap-qvl reads the bytes as QE report data whatever the type says; Bastion refuses the
  quote.  The TD quote format (v4 and v5 signature data) allows only type 6 there, so the
  type must say what the bytes are; this supports Bastion.  Found by the mutation test in a
  fresh clone (a v5 quote, byte 770 set to 0).
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

from bastion.tee.attestation import AttestationError, AttestationPolicy
from bastion.tee.attestation.evidence import verify_evidence
from bastion.tee.attestation.tdx import parse_td_quote
from bastion.tee.attestation.tdx_tcb import collateral_from_json

dcap_qvl = pytest.importorskip("dcap_qvl")

DATA = Path(__file__).parent / "data"
STATUSES = [
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
]


def qvl_collateral(pki: Any, collateral: Any) -> dict[str, str]:
    """The test PKI's collateral in dcap-qvl's QuoteCollateralV3 JSON layout."""

    def split(body: bytes, key: str) -> tuple[str, str]:
        document = json.loads(body)
        return json.dumps(document[key], separators=(",", ":")), document["signature"]

    tcb, tcb_signature = split(collateral.tcb_info, "tcbInfo")
    qe, qe_signature = split(collateral.qe_identity, "enclaveIdentity")
    der = serialization.Encoding.DER
    chain = pki.pem(pki.tcb_signer, pki.root).decode()
    return {
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


class Case:
    """One quote, judged by both verifiers under the same collateral, root and time."""

    def __init__(self, pki: Any, quote: bytes, collateral: Any, qvl_json: dict[str, str]) -> None:
        self.pki, self.quote, self.collateral, self.qvl_json = pki, quote, collateral, qvl_json

    def bastion(self, now: dt.datetime) -> Any:
        collateral = self.collateral

        class Provider:
            def fetch(self, fmspc: bytes, pck_ca: str) -> Any:
                return collateral

        try:
            td = parse_td_quote(self.quote).td_report
            section: dict[str, Any] = {"mrtd": [td.mrtd.hex()]}
            section["allowed_tcb_statuses"] = STATUSES
            policy = AttestationPolicy(required=True, tdx=section)
            expected = td.report_data
        except AttestationError:
            policy = AttestationPolicy(required=True, tdx={"mrtd": ["00" * 48]})
            expected = bytes(64)
        from bastion.tee.attestation.evidence import TrustAnchors

        return verify_evidence(
            self.quote,
            policy,
            expected,
            now=now,
            anchors=TrustAnchors(intel_root=self.pki.root),
            collateral_provider=Provider(),
        )

    def qvl(self, now: dt.datetime) -> Any:
        collateral = dcap_qvl.QuoteCollateralV3.from_json(json.dumps(self.qvl_json))
        root = self.pki.root.public_bytes(serialization.Encoding.DER)
        return dcap_qvl.verify_with_root_ca(self.quote, collateral, root, int(now.timestamp()))

    def outcomes(self, now: dt.datetime) -> tuple[Any, Any]:
        try:
            ours: Any = self.bastion(now)
        except AttestationError as exc:
            ours = exc
        try:
            theirs: Any = self.qvl(now)
        except Exception as exc:  # dcap-qvl raises ValueError (and friends) on any rejection
            theirs = exc
        return ours, theirs


def assert_agree(case: Case, now: dt.datetime) -> tuple[Any, Any]:
    ours, theirs = case.outcomes(now)
    ours_ok = not isinstance(ours, Exception)
    theirs_ok = not isinstance(theirs, Exception)
    ours_says = f"{ours.reason}: {ours}" if not ours_ok else "accepted"
    theirs_says = str(theirs)[:300] if not theirs_ok else "accepted"
    assert ours_ok == theirs_ok, f"bastion: {ours_says}\ndcap-qvl: {theirs_says}"
    if ours_ok:
        assert ours.tcb_status == theirs.status
        assert sorted(ours.advisory_ids) == sorted(theirs.advisory_ids)
    return ours, theirs


def settled_disagreement(ours: Any, theirs: Any, offset: int, original: bytes) -> bool:
    """The disagreements investigated and settled (module docstring of test_dcap_qvl_oracle):
    Bastion refuses, dcap-qvl accepts, because of a malformed copy of the root certificate in the
    PEM chain, because the certification data is shorter than the signature data around it
    (bytes left over that no field accounts for), or because a TD quote's outer certification
    data type is not 6.  Anything else must agree."""
    if not isinstance(ours, AttestationError) or isinstance(theirs, Exception):
        return False
    in_root_copy = offset >= original.rindex(b"-----BEGIN CERTIFICATE-----")
    chain_reasons = {"pck_chain", "certificate_chain", "certificate_format"}
    if in_root_copy and ours.reason in chain_reasons:
        return True
    if ours.reason == "certification_data_type" and "a TD quote carries type 6" in str(ours):
        return True
    return ours.reason == "quote_format" and "unexpected bytes after" in str(ours)


@pytest.fixture(scope="module")
def tdx_case(pki: Any) -> Any:
    def make(quote: bytes, collateral: Any | None = None) -> Case:
        collateral = collateral or pki.tdx_collateral()
        return Case(pki, quote, collateral, qvl_collateral(pki, collateral))

    return make


@pytest.mark.parametrize(("version", "td15"), [(4, False), (5, False), (5, True)])
def test_good_quotes_both_accept_and_parse_the_same_fields(
    pki: Any, tdx_case: Any, version: int, td15: bool
) -> None:
    quote = pki.td_quote(version=version, td15=td15, report_data=bytes(range(64)))
    ours, _ = assert_agree(tdx_case(quote), pki.now)
    parsed = dcap_qvl.Quote.parse(quote)
    report = parsed.report
    assert bytes(report.mr_td) == ours.td.mrtd
    assert [bytes(getattr(report, f"rt_mr{i}")) for i in range(4)] == list(ours.td.rtmrs)
    assert bytes(report.report_data) == ours.td.report_data
    assert bytes(report.tee_tcb_svn) == ours.td.tee_tcb_svn
    assert bytes(report.mr_seam) == ours.td.mrseam
    assert parsed.fmspc() == ours.fmspc.hex().upper()


TAMPERED = {
    "foreign signing key": {"signing_key": "new"},
    "foreign QE signing key": {"qe_signing_key": "new"},
    "QE report data not binding the key": {"qe_report_data": bytes(64)},
    "SGX QE instead of the TD QE": {
        "qe_signer": bytes.fromhex(
            "8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff"
        )
    },
    "TEE_TCB_SVN below every level": {"tee_tcb_svn": bytes(16)},
    "module not signed by Intel": {"mrsignerseam": b"\x01" * 48},
    "debug TD": {"td_attributes": 0x1},
}


@pytest.mark.parametrize("change", TAMPERED.values(), ids=TAMPERED.keys())
def test_tampered_quotes_get_the_same_verdict(
    pki: Any, tdx_case: Any, change: dict[str, Any]
) -> None:
    change = {k: (pki.new_key() if v == "new" else v) for k, v in change.items()}
    assert_agree(tdx_case(pki.td_quote(**change)), pki.now)


def test_a_foreign_root_gets_the_same_verdict(pki: Any, other_pki: Any, tdx_case: Any) -> None:
    ours, theirs = assert_agree(tdx_case(other_pki.td_quote()), pki.now)
    assert isinstance(ours, AttestationError)


def test_outdated_levels_get_the_same_status(pki: Any, tdx_case: Any) -> None:
    higher = tuple(pki.TEE_TCB_SVN[:2]) + (pki.TEE_TCB_SVN[2] + 1,) + tuple(pki.TEE_TCB_SVN[3:])
    levels = [(higher, "UpToDate"), (tuple(pki.TEE_TCB_SVN), "OutOfDate")]
    ours, theirs = assert_agree(
        tdx_case(pki.td_quote(), pki.tdx_collateral(levels=levels)), pki.now
    )
    assert ours.tcb_status == "OutOfDate"


def test_module_svn_bytes_get_the_same_verdict(pki: Any, tdx_case: Any) -> None:
    module_svn_higher = (9,) + tuple(pki.TEE_TCB_SVN[1:])
    collateral = pki.tdx_collateral(levels=[(module_svn_higher, "UpToDate")])
    ours, _ = assert_agree(tdx_case(pki.td_quote(), collateral), pki.now)
    assert ours.tcb_status == "UpToDate"


def test_an_outdated_module_gets_the_same_status(pki: Any, tdx_case: Any) -> None:
    collateral = pki.tdx_collateral(module_levels=[(9, "UpToDate"), (2, "OutOfDate")])
    ours, _ = assert_agree(tdx_case(pki.td_quote(), collateral), pki.now)
    assert ours.tcb_status == "OutOfDate"


def test_a_lower_tee_tcb_svn2_gets_the_same_verdict(pki: Any, tdx_case: Any) -> None:
    older = bytes([5, 1, 1]) + bytes(13)
    quote = pki.td_quote(version=5, td15=True, tee_tcb_svn2=older)
    ours, _ = assert_agree(tdx_case(quote), pki.now)
    assert isinstance(ours, AttestationError)


def test_a_bound_service_td_gets_the_same_verdict(pki: Any, tdx_case: Any) -> None:
    quote = pki.td_quote(version=5, td15=True, mrservicetd=b"\x5f" * 48)
    ours, _ = assert_agree(tdx_case(quote), pki.now)
    assert ours.reason == "mrservicetd"


def test_expired_collateral_gets_the_same_verdict(pki: Any, tdx_case: Any) -> None:
    ours, _ = assert_agree(tdx_case(pki.td_quote()), pki.now + dt.timedelta(days=45))
    assert isinstance(ours, AttestationError)


# --- the real quote ---------------------------------------------------------------------------

REAL_QUOTE = (DATA / "tdx_v4_phala.quote").read_bytes()
REAL_COLLATERAL = json.loads((DATA / "tdx_v4_phala_collateral.json").read_text())
REAL_AT = dt.datetime(2025, 6, 20, tzinfo=dt.timezone.utc)
QUOTE_END = 636 + int.from_bytes(REAL_QUOTE[632:636], "little")  # v4: header+body, len, data


class RealCase(Case):
    def __init__(self, quote: bytes) -> None:
        from bastion.tee.attestation.roots import intel_sgx_root_ca

        class IntelRoot:
            root = intel_sgx_root_ca()

        super().__init__(IntelRoot(), quote, collateral_from_json(REAL_COLLATERAL), REAL_COLLATERAL)

    def qvl(self, now: dt.datetime) -> Any:
        collateral = dcap_qvl.QuoteCollateralV3.from_json(json.dumps(self.qvl_json))
        return dcap_qvl.verify(self.quote, collateral, int(now.timestamp()))


def test_the_real_quote_both_accept_with_the_same_fields() -> None:
    ours, theirs = assert_agree(RealCase(REAL_QUOTE), REAL_AT)
    assert ours.tcb_status == theirs.status == "UpToDate"
    report = dcap_qvl.Quote.parse(REAL_QUOTE).report
    assert bytes(report.mr_td) == ours.td.mrtd
    assert bytes(report.rt_mr3) == ours.td.rtmr3
    assert bytes(report.tee_tcb_svn) == ours.td.tee_tcb_svn


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(offset=st.integers(min_value=0, max_value=len(REAL_QUOTE) - 1), bit=st.integers(0, 7))
def test_bit_flips_in_the_real_quote_get_the_same_verdict(offset: int, bit: int) -> None:
    tampered = bytearray(REAL_QUOTE)
    tampered[offset] ^= 1 << bit
    case = RealCase(bytes(tampered))
    if offset >= QUOTE_END:  # the known, settled disagreement: a non-zero tail
        ours, theirs = case.outcomes(REAL_AT)
        assert isinstance(ours, AttestationError) and ours.reason == "quote_format"
        assert not isinstance(theirs, Exception)
        return
    ours, theirs = case.outcomes(REAL_AT)
    if not settled_disagreement(ours, theirs, offset, REAL_QUOTE):
        assert_agree(case, REAL_AT)


def test_zero_padding_after_the_real_quote_is_accepted_by_both() -> None:
    assert len(REAL_QUOTE) > QUOTE_END and not any(REAL_QUOTE[QUOTE_END:])
    assert_agree(RealCase(REAL_QUOTE + bytes(30)), REAL_AT)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutations_of_test_pki_quotes_get_the_same_verdict(
    pki: Any, tdx_case: Any, data: Any
) -> None:
    original = pki.td_quote(version=data.draw(st.sampled_from([4, 5])))
    quote = bytearray(original)
    offset = data.draw(st.integers(0, len(quote) - 1))
    quote[offset] = data.draw(st.integers(0, 255))
    case = tdx_case(bytes(quote))
    ours, theirs = case.outcomes(pki.now)
    if not settled_disagreement(ours, theirs, offset, original):
        assert_agree(case, pki.now)


def test_a_td_quote_whose_outer_certification_type_is_not_6_is_refused_by_bastion(
    pki: Any, tdx_case: Any
) -> None:
    original = pki.td_quote(version=5)
    quote = bytearray(original)
    quote[770] = 0  # the low byte of the outer certification data type (6)
    ours, theirs = tdx_case(bytes(quote)).outcomes(pki.now)
    assert isinstance(ours, AttestationError) and ours.reason == "certification_data_type"
    assert settled_disagreement(ours, theirs, 770, original)  # dcap-qvl reads it as type 6
