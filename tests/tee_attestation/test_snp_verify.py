"""SEV-SNP report verification against a test ARK -> ASK -> VCEK: a good report accepted; each
broken link refused with its own reason."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from bastion.tee.attestation import AttestationError, AttestationPolicy
from bastion.tee.attestation.evidence import detect_format, verify_evidence
from bastion.tee.attestation.snp_verify import VerifiedSnpReport, verify_snp_evidence

REPORT_DATA = bytes(range(64, 128))


def policy(snp_pki: Any, **snp: Any) -> AttestationPolicy:
    section: dict[str, Any] = {"measurement": [snp_pki.MEASUREMENT.hex()]}
    section.update(snp)
    return AttestationPolicy(required=True, snp=section)


def verify(snp_pki: Any, evidence: bytes, pol: AttestationPolicy | None = None, **kw: Any) -> Any:
    return verify_snp_evidence(
        evidence,
        pol or policy(snp_pki),
        kw.pop("expected", REPORT_DATA),
        snp_pki.now,
        trusted_roots=kw.pop("roots", snp_pki.roots()),
        **kw,
    )


def reason_of(
    snp_pki: Any, evidence: bytes, pol: AttestationPolicy | None = None, **kw: Any
) -> str:
    with pytest.raises(AttestationError) as caught:
        verify(snp_pki, evidence, pol, **kw)
    return caught.value.reason


@pytest.mark.parametrize("version", [2, 3, 5])
def test_a_good_report_is_accepted_with_its_fields(snp_pki: Any, version: int) -> None:
    evidence = snp_pki.evidence(version=version, report_data=REPORT_DATA)
    assert detect_format(evidence) == "snp"
    verified = verify(snp_pki, evidence)
    assert isinstance(verified, VerifiedSnpReport)
    report = verified.report
    assert report.version == version and report.measurement == snp_pki.MEASUREMENT
    assert report.report_data == REPORT_DATA and report.chip_id == snp_pki.CHIP_ID
    assert report.reported_tcb.as_dict() == {**snp_pki.TCB, "fmc": 0}
    assert verified.product == "Milan" and not verified.simulated
    if version >= 3:
        assert (report.cpuid_family, report.cpuid_model) == (0x19, 0x01)


def test_a_bare_report_is_accepted_with_the_vcek_given_separately(snp_pki: Any) -> None:
    report = snp_pki.report(report_data=REPORT_DATA)
    assert verify(snp_pki, report, vcek=snp_pki.vcek).report.measurement == snp_pki.MEASUREMENT
    assert reason_of(snp_pki, report) == "vcek_missing"


def test_the_pinned_amd_roots_refuse_a_test_chain(snp_pki: Any) -> None:
    evidence = snp_pki.evidence(report_data=REPORT_DATA)
    with pytest.raises(AttestationError) as caught:
        verify_snp_evidence(evidence, policy(snp_pki), REPORT_DATA, snp_pki.now)
    assert caught.value.reason == "vcek_chain"


@pytest.mark.parametrize(
    ("change", "policy_change", "reason"),
    [
        ({"measurement": bytes(48)}, {}, "measurement"),
        ({"policy": 0x30000 | (1 << 19)}, {}, "debug"),
        ({"policy": 0x30000 | (1 << 18)}, {}, "migration_agent"),
        ({}, {"allow_smt": False}, "smt"),
        ({"vmpl": 2}, {}, "vmpl"),
        ({}, {"host_data": ["ab" * 32]}, "host_data"),
        ({}, {"id_key_digest": ["cd" * 48]}, "id_key_digest"),
        ({}, {"min_tcb": {"snp": 23}}, "min_tcb"),
        ({}, {"min_tcb": {"microcode": 211}}, "min_tcb"),
        ({}, {"min_guest_svn": 1}, "guest_svn"),
    ],
    ids=[
        "measurement",
        "debug",
        "migration-agent",
        "smt",
        "vmpl",
        "host-data",
        "id-key",
        "tcb-snp",
        "tcb-microcode",
        "guest-svn",
    ],
)
def test_policy_mismatches_have_their_own_reason(
    snp_pki: Any, change: dict[str, Any], policy_change: dict[str, Any], reason: str
) -> None:
    evidence = snp_pki.evidence(report_data=REPORT_DATA, **change)
    assert reason_of(snp_pki, evidence, policy(snp_pki, **policy_change)) == reason


def test_debug_and_matching_host_data_accepted_when_allowed(snp_pki: Any) -> None:
    evidence = snp_pki.evidence(
        report_data=REPORT_DATA, policy=0x30000 | (1 << 19), host_data=b"\x42" * 32
    )
    lenient = policy(snp_pki, allow_debug=True, host_data=["42" * 32], min_tcb={"snp": 22})
    assert verify(snp_pki, evidence, lenient).debug


def test_a_report_signed_by_another_key_is_refused(snp_pki: Any) -> None:
    evidence = snp_pki.evidence(
        report_data=REPORT_DATA, key=ec.generate_private_key(ec.SECP384R1())
    )
    assert reason_of(snp_pki, evidence) == "quote_signature"


def test_a_flipped_report_byte_is_refused(snp_pki: Any) -> None:
    evidence = bytearray(snp_pki.evidence(report_data=REPORT_DATA))
    evidence[0x90] ^= 0x01  # MEASUREMENT
    pol = policy(snp_pki, measurement=[bytes(evidence[0x90:0xC0]).hex()])
    assert reason_of(snp_pki, bytes(evidence), pol) == "quote_signature"


def test_a_vcek_for_another_tcb_is_refused(snp_pki: Any) -> None:
    vcek = snp_pki.vcek_cert(tcb={**snp_pki.TCB, "snp": 21})
    assert reason_of(snp_pki, snp_pki.evidence(report_data=REPORT_DATA, vcek=vcek)) == "vcek_tcb"


def test_a_vcek_for_another_chip_is_refused(snp_pki: Any) -> None:
    vcek = snp_pki.vcek_cert(chip_id=bytes(64))
    evidence = snp_pki.evidence(report_data=REPORT_DATA, vcek=vcek)
    assert reason_of(snp_pki, evidence) == "vcek_chip_id"
    masked = snp_pki.evidence(report_data=REPORT_DATA, vcek=vcek, flags=0x2, chip_id=bytes(64))
    assert verify(snp_pki, masked).report.chip_id_masked  # MASK_CHIP_ID: HWID not compared


def test_a_vcek_not_signed_by_the_ask_is_refused(snp_pki: Any, other_snp_pki: Any) -> None:
    vcek = snp_pki.vcek_cert(signer=other_snp_pki.ask_key)
    assert reason_of(snp_pki, snp_pki.evidence(report_data=REPORT_DATA, vcek=vcek)) == "vcek_chain"


def test_an_ask_in_the_evidence_that_is_not_the_pinned_one_is_refused(
    snp_pki: Any, other_snp_pki: Any
) -> None:
    evidence = snp_pki.evidence(report_data=REPORT_DATA, ask=other_snp_pki.ask)
    assert reason_of(snp_pki, evidence) == "ask_mismatch"


def test_an_ark_in_the_evidence_that_is_not_the_pinned_one_is_refused(
    snp_pki: Any, other_snp_pki: Any
) -> None:
    evidence = snp_pki.evidence(report_data=REPORT_DATA, ark=other_snp_pki.ark)
    assert reason_of(snp_pki, evidence) == "ark_mismatch"


def test_a_chain_to_a_foreign_root_is_refused(snp_pki: Any, other_snp_pki: Any) -> None:
    evidence = other_snp_pki.evidence(report_data=REPORT_DATA)
    assert reason_of(snp_pki, evidence) == "vcek_chain"


def test_report_data_of_another_connection_is_refused(snp_pki: Any) -> None:
    evidence = snp_pki.evidence(report_data=REPORT_DATA)
    assert reason_of(snp_pki, evidence, expected=bytes(64)) == "report_data"


def test_vlek_signed_reports_are_refused_plainly(snp_pki: Any) -> None:
    evidence = snp_pki.evidence(report_data=REPORT_DATA, flags=1 << 2)
    assert reason_of(snp_pki, evidence) == "vlek_unsupported"


def test_an_expired_vcek_is_refused(snp_pki: Any) -> None:
    evidence = snp_pki.evidence(report_data=REPORT_DATA)
    with pytest.raises(AttestationError) as caught:
        verify_snp_evidence(
            evidence,
            policy(snp_pki),
            REPORT_DATA,
            snp_pki.now + dt.timedelta(days=400),
            trusted_roots=snp_pki.roots(),
        )
    assert caught.value.reason == "certificate_expired"


def test_a_revoked_vcek_is_refused_with_amds_crl(snp_pki: Any) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    def crl(revoked: bool) -> x509.CertificateRevocationList:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(snp_pki.ark.subject)
            .last_update(snp_pki.now - dt.timedelta(hours=1))
            .next_update(snp_pki.now + dt.timedelta(days=7))
        )
        if revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(snp_pki.vcek.serial_number)
                .revocation_date(snp_pki.now - dt.timedelta(hours=2))
                .build()
            )
        return builder.sign(snp_pki.ark_key, hashes.SHA384())

    evidence = snp_pki.evidence(report_data=REPORT_DATA)
    verify(snp_pki, evidence, crl=crl(False))
    assert reason_of(snp_pki, evidence, crl=crl(True)) == "certificate_revoked"


def test_a_policy_without_an_snp_section_refuses_snp(snp_pki: Any) -> None:
    sgx_only = AttestationPolicy(required=True, mrenclave=["aa" * 32], collateral="none")
    with pytest.raises(AttestationError) as caught:
        verify_evidence(snp_pki.evidence(report_data=REPORT_DATA), sgx_only, REPORT_DATA)
    assert caught.value.reason == "evidence_kind"


def test_amd_roots_are_pinned_for_three_products() -> None:
    from bastion.tee.attestation.amd_roots import PRODUCTS, amd_root

    for product in PRODUCTS:
        root = amd_root(product)
        root.ask.verify_directly_issued_by(root.ark)
        assert root.ark.subject.rfc4514_string().startswith(f"CN=ARK-{product}")


def test_a_der_certificate_ending_in_zero_bytes_is_read_whole(snp_pki: Any) -> None:
    """Found by the end-to-end test: a DER certificate whose signature ends in 0x00 was cut
    short by stripping padding; DER's own length is what says where it ends."""
    from cryptography.hazmat.primitives import serialization

    from bastion.tee.attestation.snp_verify import _der_without_padding

    for _ in range(4000):
        vcek = snp_pki.vcek_cert()
        raw = vcek.public_bytes(serialization.Encoding.DER)
        if raw.endswith(b"\x00"):
            break
    else:
        pytest.skip("no VCEK with a trailing zero byte in 4000 draws")
    assert _der_without_padding(raw + bytes(7)) == raw
    evidence = snp_pki.evidence(report_data=REPORT_DATA, vcek=vcek)
    assert verify(snp_pki, evidence).report.measurement == snp_pki.MEASUREMENT


@pytest.mark.parametrize("version", [3, 5])
def test_a_turin_report_uses_turins_tcb_layout_and_8_byte_chip_id(
    turin_pki: Any, version: int
) -> None:
    tcb = {**turin_pki.TCB, "fmc": 2}
    vcek = turin_pki.vcek_cert(tcb=tcb)
    evidence = turin_pki.evidence(version=version, report_data=REPORT_DATA, tcb=tcb, vcek=vcek)
    verified = verify(turin_pki, evidence, roots=turin_pki.roots())
    assert verified.product == "Turin" and verified.report.is_turin
    assert verified.report.reported_tcb.as_dict() == tcb
    assert reason_of(turin_pki, evidence, policy(turin_pki, min_tcb={"fmc": 3})) == "min_tcb"
    other_fmc = turin_pki.evidence(version=version, report_data=REPORT_DATA, tcb=tcb)  # fmc 0 VCEK
    assert reason_of(turin_pki, other_fmc) == "vcek_tcb"


def test_a_turin_report_under_a_milan_root_is_refused(turin_pki: Any, snp_pki: Any) -> None:
    evidence = turin_pki.evidence(version=3, report_data=REPORT_DATA)
    assert reason_of(turin_pki, evidence, roots=snp_pki.roots()) == "vcek_chain"


def test_the_real_turin_vcek_chains_to_the_pinned_turin_root() -> None:
    """data/snp_turin_virtee_vcek.der: virtee/sev tests/certs_data/vcek_turin.der at commit
    1fe938f3936b7f8e94c5d0de01c59e02152bd2ae (a VCEK AMD's KDS issued for a Turin chip)."""
    import warnings
    from pathlib import Path

    from cryptography import x509

    from bastion.tee.attestation.amd_roots import amd_root
    from bastion.tee.attestation.snp_verify import _extension_bytes, _verify_chain

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = (Path(__file__).parent / "data" / "snp_turin_virtee_vcek.der").read_bytes()
        vcek = x509.load_der_x509_certificate(raw)
    anchor = _verify_chain(vcek, {}, [amd_root(p) for p in ("Milan", "Genoa", "Turin")], NOW_TURIN)
    assert anchor.product == "Turin"
    assert _extension_bytes(vcek, "1.3.6.1.4.1.3704.1.3.9") == b"\x02\x01\x00"  # fmcSPL
    assert len(_extension_bytes(vcek, "1.3.6.1.4.1.3704.1.4") or b"") == 8  # Turin HWID


NOW_TURIN = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
