"""Real evidence from real CPUs (TDX, SEV-SNP, and one SGX quote), published in public
repositories, verified under the pinned vendor roots (no test PKI), and refused after a one-byte
change.

* ``data/tdx_v4_phala.quote`` and ``data/tdx_v4_phala_collateral.json``: a TDX DCAP v4 quote from
  a real Intel TDX host (FMSPC B0C06F000000) and the Intel PCS collateral fetched for it, from
  Phala-Network/dcap-qvl, ``sample/tdx_quote`` and ``sample/tdx_quote_collateral.json`` at
  commit 23e1f94dd73dec276dc59ca16d4577de36ba768e (collateral issued 2025-06-19, valid to
  2025-07-19; the quote is verified at 2025-06-20).
* ``data/snp_v2_milan_virtee.report`` and ``data/snp_v2_milan_virtee_vcek.der``: an SEV-SNP
  attestation report (version 2) from an AMD Milan CPU and that chip's VCEK, from virtee/sev,
  ``tests/certs_data/report_milan.hex`` (hex-decoded here) and ``tests/certs_data/vcek_milan.der``
  at commit c10a378624e1d69d32f79658b72685961ee7ab17.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from bastion.tee.attestation import AttestationError, AttestationPolicy
from bastion.tee.attestation.evidence import detect_format, verify_evidence
from bastion.tee.attestation.snp import parse_snp_report
from bastion.tee.attestation.tdx import parse_td_quote
from bastion.tee.attestation.tdx_tcb import collateral_from_json

DATA = Path(__file__).parent / "data"
TDX_QUOTE = (DATA / "tdx_v4_phala.quote").read_bytes()
TDX_COLLATERAL = json.loads((DATA / "tdx_v4_phala_collateral.json").read_text())
TDX_AT = dt.datetime(2025, 6, 20, tzinfo=dt.timezone.utc)
SNP_REPORT = (DATA / "snp_v2_milan_virtee.report").read_bytes()
SNP_VCEK = x509.load_der_x509_certificate((DATA / "snp_v2_milan_virtee_vcek.der").read_bytes())
SNP_AT = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


class _Collateral:
    def fetch(self, fmspc: bytes, pck_ca: str) -> Any:
        return collateral_from_json(TDX_COLLATERAL)


def tdx_policy() -> AttestationPolicy:
    td = parse_td_quote(TDX_QUOTE).td_report
    return AttestationPolicy(
        required=True,
        tdx={
            "mrtd": [td.mrtd.hex()],
            "rtmr0": [td.rtmr0.hex()],
            "rtmr1": [td.rtmr1.hex()],
            "rtmr2": [td.rtmr2.hex()],
            "rtmr3": [td.rtmr3.hex()],
            "mrsignerseam": ["00" * 48],
        },
    )


def snp_policy() -> AttestationPolicy:
    report = parse_snp_report(SNP_REPORT)
    return AttestationPolicy(required=True, snp={"measurement": [report.measurement.hex()]})


def verify_tdx(quote: bytes) -> Any:
    expected = parse_td_quote(TDX_QUOTE).td_report.report_data
    return verify_evidence(
        quote, tdx_policy(), expected, now=TDX_AT, collateral_provider=_Collateral()
    )


def verify_snp(report: bytes) -> Any:
    expected = parse_snp_report(SNP_REPORT).report_data
    return verify_evidence(report, snp_policy(), expected, now=SNP_AT, vcek=SNP_VCEK)


def test_the_real_tdx_quote_is_accepted_under_intels_root_with_its_collateral() -> None:
    assert detect_format(TDX_QUOTE) == "tdx"
    verified = verify_tdx(TDX_QUOTE)
    assert verified.tcb_checked and verified.tcb_status == "UpToDate"
    assert verified.qe_tcb_status == "UpToDate"
    assert verified.fmspc.hex().upper() == "B0C06F000000"
    assert verified.td.mrtd.hex().startswith("91eb2b44d141d4ec")
    assert not verified.simulated and not verified.debug


def test_the_real_snp_report_is_accepted_under_amds_pinned_milan_root() -> None:
    assert detect_format(SNP_REPORT) == "snp"
    verified = verify_snp(SNP_REPORT)
    assert verified.product == "Milan" and verified.report.version == 2
    assert verified.report.measurement.hex().startswith("7a1e5c266c0108db")
    assert verified.report.reported_tcb.as_dict() == {
        "bootloader": 3,
        "tee": 0,
        "snp": 8,
        "microcode": 115,
        "fmc": 0,
    }


def test_the_real_tdx_quote_is_refused_by_a_policy_for_another_td() -> None:
    td = parse_td_quote(TDX_QUOTE).td_report
    other = AttestationPolicy(required=True, tdx={"mrtd": ["00" * 48]}, collateral="none")
    with pytest.raises(AttestationError) as caught:
        verify_evidence(TDX_QUOTE, other, td.report_data, now=TDX_AT)
    assert caught.value.reason == "mrtd"


# One byte changed in each part of the real quote (offsets in the 5006-byte file).
TDX_OFFSETS = {
    "header user data": 30,
    "TEE_TCB_SVN": 48,
    "MRTD": 48 + 136 + 7,
    "RTMR3": 48 + 472 + 3,
    "REPORTDATA": 48 + 520 + 60,
    "quote signature": 636 + 10,
    "attestation key": 636 + 64 + 10,
    "QE report": 636 + 128 + 6 + 100,
    "QE report signature": 636 + 128 + 6 + 384 + 5,
    "QE auth data": 636 + 128 + 6 + 448 + 2 + 3,
    "PCK chain (base64)": 2001,
    "zero padding after the quote": len(TDX_QUOTE) - 5,
}


@pytest.mark.parametrize("offset", TDX_OFFSETS.values(), ids=TDX_OFFSETS.keys())
def test_one_changed_byte_in_the_real_tdx_quote_is_refused(offset: int) -> None:
    tampered = bytearray(TDX_QUOTE)
    tampered[offset] ^= 0x01
    with pytest.raises(AttestationError):
        verify_tdx(bytes(tampered))


SNP_OFFSETS = {
    "version": 0,
    "policy": 0x08,
    "vmpl": 0x30,
    "report data": 0x50 + 9,
    "measurement": 0x90 + 1,
    "host data": 0xC0,
    "reported tcb": 0x180,
    "chip id": 0x1A0 + 5,
    "signature r": 0x2A0 + 3,
    "signature s": 0x2E8 + 3,
}


@pytest.mark.parametrize("offset", SNP_OFFSETS.values(), ids=SNP_OFFSETS.keys())
def test_one_changed_byte_in_the_real_snp_report_is_refused(offset: int) -> None:
    tampered = bytearray(SNP_REPORT)
    tampered[offset] ^= 0x01
    with pytest.raises(AttestationError):
        verify_snp(bytes(tampered))


def test_pem_whitespace_in_the_unsigned_pck_chain_is_neutral() -> None:
    """Byte 2000 is a newline inside the PEM chain; as a vertical tab it is still whitespace, the
    certificates decode to the same DER, so nothing signed changed.  Both this verifier and
    dcap-qvl accept it (see test_dcap_qvl_oracle): this is the one byte flip that is not refused."""
    assert TDX_QUOTE[2000:2001] == b"\n"
    tampered = bytearray(TDX_QUOTE)
    tampered[2000] ^= 0x01
    assert verify_tdx(bytes(tampered)).tcb_status == "UpToDate"


# --- and a real SGX quote, through the same entry point ---------------------------------------
# data/sgx_v3_phala.quote and data/sgx_v3_phala_collateral.json: Phala-Network/dcap-qvl,
# sample/sgx_quote and sample/sgx_quote_collateral.json at commit
# 23e1f94dd73dec276dc59ca16d4577de36ba768e (a DCAP v3 quote from a real SGX CPU).

SGX_QUOTE = (DATA / "sgx_v3_phala.quote").read_bytes()
SGX_COLLATERAL = json.loads((DATA / "sgx_v3_phala_collateral.json").read_text())
SGX_AT = dt.datetime(2025, 6, 20, 12, tzinfo=dt.timezone.utc)


def verify_sgx(quote: bytes, statuses: list[str]) -> Any:
    from bastion.tee.attestation import parse_quote

    body = parse_quote(SGX_QUOTE).report_body

    class Saved:
        def fetch(self, fmspc: bytes, pck_ca: str) -> Any:
            return collateral_from_json(SGX_COLLATERAL)

    policy = AttestationPolicy(
        required=True, mrenclave=[body.mr_enclave.hex()], allowed_tcb_statuses=statuses
    )
    return verify_evidence(quote, policy, body.report_data, now=SGX_AT, collateral_provider=Saved())


def test_the_real_sgx_quote_is_accepted_only_when_its_tcb_status_is_allowed() -> None:
    assert detect_format(SGX_QUOTE) == "sgx"
    with pytest.raises(AttestationError) as caught:
        verify_sgx(SGX_QUOTE, ["UpToDate"])
    assert caught.value.reason == "tcb_status"  # this platform needs configuration and SW hardening
    verified = verify_sgx(SGX_QUOTE, ["UpToDate", "ConfigurationAndSWHardeningNeeded"])
    assert verified.tcb_status == "ConfigurationAndSWHardeningNeeded"
    assert set(verified.advisory_ids) == {"INTEL-SA-00289", "INTEL-SA-00615"}


@pytest.mark.parametrize("offset", [60, 48 + 64 + 3, 48 + 320 + 1, 440, 600, 1000, 2000])
def test_one_changed_byte_in_the_real_sgx_quote_is_refused(offset: int) -> None:
    tampered = bytearray(SGX_QUOTE)
    tampered[offset] ^= 0x01
    with pytest.raises(AttestationError):
        verify_sgx(bytes(tampered), ["UpToDate", "ConfigurationAndSWHardeningNeeded"])
