"""Truncated, mutated and random TDX quotes and SNP evidence give verification errors only."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.tee.attestation import AttestationError, AttestationPolicy
from bastion.tee.attestation.evidence import TrustAnchors, verify_evidence

DATA = Path(__file__).parent / "data"
REAL_TDX = (DATA / "tdx_v4_phala.quote").read_bytes()
REAL_SNP = (DATA / "snp_v2_milan_virtee.report").read_bytes()
POLICY = AttestationPolicy(
    required=True,
    collateral="none",
    mrenclave=["aa" * 32],
    tdx={"mrtd": ["11" * 48]},
    snp={"measurement": ["33" * 48]},
)
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def only_attestation_errors(data: bytes, anchors: TrustAnchors | None = None) -> None:
    try:
        verify_evidence(data, POLICY, bytes(64), anchors=anchors, now=dt.datetime(2025, 6, 20))
    except AttestationError as exc:
        assert exc.reason and str(exc)
        assert "\n" not in exc.reason


@pytest.fixture(scope="module")
def samples(pki: Any, snp_pki: Any) -> dict[str, bytes]:
    return {
        "tdx-v4": pki.td_quote(report_data=bytes(64)),
        "tdx-v5-td15": pki.td_quote(version=5, td15=True, report_data=bytes(64)),
        "snp": snp_pki.evidence(report_data=bytes(64)),
        "real-tdx": REAL_TDX,
        "real-snp": REAL_SNP,
    }


def anchors(pki: Any, snp_pki: Any) -> TrustAnchors:
    return TrustAnchors(intel_root=pki.root, amd_roots=snp_pki.roots())


@pytest.mark.parametrize("name", ["tdx-v4", "tdx-v5-td15", "snp", "real-tdx", "real-snp"])
def test_every_truncation_is_a_verification_error(
    pki: Any, snp_pki: Any, samples: dict[str, bytes], name: str
) -> None:
    data = samples[name]
    step = max(1, len(data) // 400)
    for length in range(0, len(data), step):
        only_attestation_errors(data[:length], anchors(pki, snp_pki))


@FUZZ
@given(data=st.data())
def test_mutations_are_verification_errors_or_verdicts(
    pki: Any, snp_pki: Any, samples: dict[str, bytes], data: Any
) -> None:
    original = bytearray(samples[data.draw(st.sampled_from(sorted(samples)))])
    for _ in range(data.draw(st.integers(1, 4))):
        original[data.draw(st.integers(0, len(original) - 1))] = data.draw(st.integers(0, 255))
    only_attestation_errors(bytes(original), anchors(pki, snp_pki))


@FUZZ
@given(
    head=st.sampled_from(
        [
            b"\x04\x00\x02\x00\x81\x00\x00\x00",
            b"\x05\x00\x02\x00\x81\x00\x00\x00",
            b"\x02\x00\x00\x00",
            b"\x05\x00\x00\x00",
        ]
    ),
    tail=st.binary(max_size=6000),
)
def test_random_bodies_behind_valid_headers_are_verification_errors(
    head: bytes, tail: bytes
) -> None:
    only_attestation_errors(head + tail)


@FUZZ
@given(
    table=st.binary(max_size=400),
)
def test_random_snp_certificate_tables_are_verification_errors(snp_pki: Any, table: bytes) -> None:
    report = snp_pki.report(report_data=bytes(64))
    only_attestation_errors(report + table, TrustAnchors(amd_roots=snp_pki.roots()))
