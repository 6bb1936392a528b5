"""TCB and revocation checks against Intel-format collateral signed under the test root."""

from __future__ import annotations

import datetime as dt
import urllib.parse

import pytest
from cryptography.hazmat.primitives import serialization

from bastion.tee.attestation import (
    AttestationPolicy,
    CertificateChainError,
    Collateral,
    CollateralError,
    PcsCollateralProvider,
    QeIdentityMismatch,
    TcbStatusRejected,
    verify_quote,
)
from bastion.tee.attestation.collateral import parse_crl
from bastion.tee.attestation.pck import sgx_pck_info

REPORT_DATA = b"\x5a" * 64
UP_TO_DATE = ((20, 20, 2, 4, 1, 128, 14, 0, 0, 0, 0, 0, 0, 0, 0, 0), 13, "UpToDate")
NEWER = ((21, 21, 2, 4, 1, 128, 14, 0, 0, 0, 0, 0, 0, 0, 0, 0), 13, "UpToDate")
OLDER = ((19, 19, 2, 4, 1, 128, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0), 13, "OutOfDate")


class FakeProvider:
    def __init__(self, collateral: Collateral) -> None:
        self.collateral = collateral
        self.requests: list[tuple[bytes, str]] = []

    def fetch(self, fmspc: bytes, pck_ca: str) -> Collateral:
        self.requests.append((fmspc, pck_ca))
        return self.collateral


def collateral(pki, *, levels=(UP_TO_DATE, OLDER), **changes) -> Collateral:
    return pki.collateral(levels=levels, **changes)


def verify(pki, provider, raw=None, **policy_fields):
    policy = AttestationPolicy(mrenclave=["aa" * 32], **policy_fields)
    quote = raw if raw is not None else pki.quote(report_data=REPORT_DATA)
    return verify_quote(quote, policy, REPORT_DATA, pki.root, pki.now, collateral_provider=provider)


def test_pck_certificate_sgx_fields_are_read(pki) -> None:
    info = sgx_pck_info(pki.pck)
    assert info.fmspc == pki.FMSPC
    assert info.pce_id == b"\x00\x00"
    assert info.tcb_components == pki.TCB_COMPONENTS
    assert info.pce_svn == pki.PCE_SVN
    assert info.cpu_svn == bytes(pki.TCB_COMPONENTS)


def test_up_to_date_platform_is_accepted_with_tcb_checked(pki) -> None:
    provider = FakeProvider(collateral(pki))
    result = verify(pki, provider)
    assert result.tcb_checked is True
    assert (result.tcb_status, result.qe_tcb_status) == ("UpToDate", "UpToDate")
    assert provider.requests == [(pki.FMSPC, "processor")]
    assert result.notes == ()


def test_out_of_date_platform_is_refused_unless_allowed(pki) -> None:
    provider = FakeProvider(collateral(pki, levels=(NEWER, OLDER)))
    with pytest.raises(TcbStatusRejected, match="OutOfDate"):
        verify(pki, provider)
    result = verify(pki, provider, allowed_tcb_statuses=["UpToDate", "OutOfDate"])
    assert result.tcb_status == "OutOfDate"
    assert result.advisory_ids == ("INTEL-SA-00000",)


def test_platform_below_every_level_is_refused(pki) -> None:
    provider = FakeProvider(collateral(pki, levels=(NEWER,)))
    with pytest.raises(TcbStatusRejected, match="below every level"):
        verify(pki, provider)


def test_out_of_date_quoting_enclave_is_refused(pki) -> None:
    raw = pki.quote(report_data=REPORT_DATA, qe_isv_svn=7)
    with pytest.raises(TcbStatusRejected, match="QE TCB status is 'OutOfDate'"):
        verify(pki, FakeProvider(collateral(pki)), raw)


def test_tcb_info_version_2_is_understood(pki) -> None:
    components, pce_svn, status = UP_TO_DATE
    tcb = {f"sgxtcbcomp{i + 1:02d}svn": svn for i, svn in enumerate(components)}
    level = {
        "tcb": {**tcb, "pcesvn": pce_svn},
        "tcbDate": "2024-03-13T00:00:00Z",
        "tcbStatus": status,
    }
    info = pki.tcb_info([], version=2, tcbLevels=[level])
    del info["id"]
    assert verify(pki, FakeProvider(collateral(pki, tcb=info))).tcb_status == "UpToDate"


def test_revoked_pck_certificate_is_refused(pki) -> None:
    provider = FakeProvider(collateral(pki, pck_crl=pki.crl(pki.ca, pki.ca_key, (pki.pck,))))
    with pytest.raises(CertificateChainError) as info:
        verify(pki, provider)
    assert info.value.reason == "certificate_revoked"


def test_revoked_intermediate_is_refused(pki) -> None:
    provider = FakeProvider(collateral(pki, root_ca_crl=pki.crl(pki.root, pki.root_key, (pki.ca,))))
    with pytest.raises(CertificateChainError, match="revoked"):
        verify(pki, provider)


def test_crl_not_signed_by_its_issuer_is_refused(pki, other_pki) -> None:
    forged = pki.crl(pki.ca, other_pki.ca_key)
    with pytest.raises(CollateralError, match="PCK CRL is not signed"):
        verify(pki, FakeProvider(collateral(pki, pck_crl=forged)))


def test_stale_crl_is_refused(pki) -> None:
    stale = pki.crl(pki.ca, pki.ca_key, next_update=pki.now - dt.timedelta(minutes=1))
    with pytest.raises(CollateralError, match="not current"):
        verify(pki, FakeProvider(collateral(pki, pck_crl=stale)))


def test_tampered_tcb_info_is_refused(pki) -> None:
    good = collateral(pki)
    tampered = good.tcb_info.replace(b'"OutOfDate"', b'"UpToDate"')
    assert tampered != good.tcb_info
    with pytest.raises(CollateralError, match="signature does not verify"):
        verify(pki, FakeProvider(collateral(pki, tcb_info=tampered)))


def test_tcb_info_signed_outside_the_root_is_refused(pki, other_pki) -> None:
    provider = FakeProvider(
        collateral(pki, tcb_info_issuer_chain=(other_pki.tcb_signer, other_pki.root))
    )
    with pytest.raises(CertificateChainError, match="tcbInfo signing chain"):
        verify(pki, provider)


def test_expired_tcb_info_is_refused(pki) -> None:
    info = pki.tcb_info([UP_TO_DATE], nextUpdate="2020-01-01T00:00:00Z")
    with pytest.raises(CollateralError, match="refetch"):
        verify(pki, FakeProvider(collateral(pki, tcb=info)))


def test_tcb_info_for_another_fmspc_is_refused(pki) -> None:
    info = pki.tcb_info([UP_TO_DATE], fmspc="00A06F000000")
    with pytest.raises(CollateralError, match="FMSPC"):
        verify(pki, FakeProvider(collateral(pki, tcb=info)))


def test_quoting_enclave_not_matching_intel_identity_is_refused(pki) -> None:
    qe = pki.qe_identity(isvprodid=2)
    with pytest.raises(QeIdentityMismatch):
        verify(pki, FakeProvider(collateral(pki, qe=qe)))


def test_malformed_collateral_json_is_a_collateral_error(pki) -> None:
    deeply_nested = b'{"tcbInfo":' + b"[" * 100_000 + b"}"
    bodies = (
        b"not json",
        b'{"tcbInfo": {}}',
        b'{"tcbInfo": 1, "signature": "00"} x',
        deeply_nested,
    )
    for body in bodies:
        with pytest.raises(CollateralError):
            verify(pki, FakeProvider(collateral(pki, tcb_info=body)))
    broken = pki.tcb_info([UP_TO_DATE], tcbLevels=[{"tcb": {}}])
    with pytest.raises(CollateralError, match="format"):
        verify(pki, FakeProvider(collateral(pki, tcb=broken)))


def test_pcs_provider_requests_v4_paths_and_parses_responses(pki) -> None:
    calls: list[str] = []
    chain_header = urllib.parse.quote(pki.pem(pki.tcb_signer, pki.root).decode())
    der = serialization.Encoding.DER
    pck_crl = pki.crl(pki.ca, pki.ca_key).public_bytes(der)
    root_crl_hex = pki.crl(pki.root, pki.root_key).public_bytes(der).hex().encode()
    source = collateral(pki)

    def http_get(url: str):
        calls.append(url)
        if "/tcb?" in url:
            return source.tcb_info, {"TCB-Info-Issuer-Chain": chain_header}
        if url.endswith("/qe/identity"):
            return source.qe_identity, {"sgx-enclave-identity-issuer-chain": chain_header}
        if "/pckcrl?" in url:
            return pck_crl, {}
        return root_crl_hex, {}

    provider = PcsCollateralProvider("https://pccs.example:8081/", http_get=http_get)
    assert verify(pki, provider).tcb_status == "UpToDate"
    assert calls == [
        "https://pccs.example:8081/sgx/certification/v4/tcb?fmspc=00906ED50000",
        "https://pccs.example:8081/sgx/certification/v4/qe/identity",
        "https://pccs.example:8081/sgx/certification/v4/pckcrl?ca=processor&encoding=der",
        "https://pccs.example:8081/sgx/certification/v4/rootcacrl",
    ]


def test_intel_pcs_uses_the_root_ca_crl_distribution_point() -> None:
    provider = PcsCollateralProvider()
    assert (
        provider.root_ca_crl_url
        == "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
    )


def test_pcs_provider_needs_issuer_chain_headers(pki) -> None:
    source = collateral(pki)
    provider = PcsCollateralProvider(http_get=lambda url: (source.tcb_info, {}))
    with pytest.raises(CollateralError, match="TCB-Info-Issuer-Chain"):
        provider.fetch(pki.FMSPC, "processor")


def test_unparseable_crl_is_a_collateral_error() -> None:
    with pytest.raises(CollateralError, match="PCK CRL"):
        parse_crl(b"\x30\x03garbage", "PCK CRL")
