"""Evidence providers: Gramine's /dev/attestation files, and the clearly-marked simulator."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from bastion.tee.attestation import (
    AttestationError,
    AttestationPolicy,
    EvidenceUnavailable,
    GramineDcapProvider,
    SimulatedEvidenceRefused,
    SimulatedHierarchy,
    SimulatedProvider,
    build_simulated_hierarchy,
    verify_quote,
)

REPORT_DATA = bytes(range(64))


@pytest.fixture(scope="module")
def hierarchy() -> SimulatedHierarchy:
    return build_simulated_hierarchy()


def simulated_policy(**fields) -> AttestationPolicy:
    return AttestationPolicy(mrenclave=["aa" * 32], collateral="none", **fields)


def provider(hierarchy: SimulatedHierarchy, **fields) -> SimulatedProvider:
    return SimulatedProvider(hierarchy, mr_enclave="aa" * 32, mr_signer="bb" * 32, **fields)


def test_gramine_provider_outside_an_enclave_says_so(tmp_path: Path) -> None:
    with pytest.raises(
        EvidenceUnavailable, match="not running inside a Gramine SGX enclave with DCAP"
    ):
        GramineDcapProvider(tmp_path / "attestation").quote(REPORT_DATA)


def test_gramine_default_path_is_dev_attestation() -> None:
    assert GramineDcapProvider().attestation_dir == Path("/dev/attestation")


def test_gramine_provider_refuses_non_dcap_attestation(tmp_path: Path) -> None:
    (tmp_path / "attestation_type").write_text("none\n")
    with pytest.raises(EvidenceUnavailable, match="'none'"):
        GramineDcapProvider(tmp_path).quote(REPORT_DATA)


def test_gramine_provider_writes_report_data_and_reads_the_quote(tmp_path: Path, hierarchy) -> None:
    (tmp_path / "attestation_type").write_text("dcap")
    made_by_enclave = provider(hierarchy).quote(REPORT_DATA).quote
    (tmp_path / "quote").write_bytes(made_by_enclave)

    evidence = GramineDcapProvider(tmp_path).quote(REPORT_DATA)

    assert (tmp_path / "user_report_data").read_bytes() == REPORT_DATA
    assert evidence.kind == "sgx-dcap"
    assert evidence.quote == made_by_enclave


def test_gramine_provider_reports_an_empty_quote(tmp_path: Path) -> None:
    (tmp_path / "attestation_type").write_text("dcap")
    (tmp_path / "quote").write_bytes(b"")
    with pytest.raises(EvidenceUnavailable, match="0-byte quote"):
        GramineDcapProvider(tmp_path).quote(REPORT_DATA)


def test_gramine_provider_reports_a_missing_quote_file(tmp_path: Path) -> None:
    (tmp_path / "attestation_type").write_text("dcap")
    with pytest.raises(EvidenceUnavailable, match="could not produce"):
        GramineDcapProvider(tmp_path).quote(REPORT_DATA)


def test_providers_require_64_bytes_of_report_data(tmp_path: Path, hierarchy) -> None:
    with pytest.raises(EvidenceUnavailable, match="64 bytes"):
        GramineDcapProvider(tmp_path).quote(b"short")
    with pytest.raises(EvidenceUnavailable, match="64 bytes"):
        provider(hierarchy).quote(b"short")


def test_simulated_evidence_is_refused_without_allow_simulated(hierarchy) -> None:
    quote = provider(hierarchy).quote(REPORT_DATA).quote
    with pytest.raises(SimulatedEvidenceRefused, match="allow_simulated"):
        verify_quote(quote, simulated_policy(), REPORT_DATA)
    with pytest.raises(SimulatedEvidenceRefused, match="allow_simulated"):
        verify_quote(
            quote, simulated_policy(), REPORT_DATA, simulated_root=hierarchy.root_certificate
        )


def test_simulated_evidence_needs_the_simulated_root(hierarchy) -> None:
    quote = provider(hierarchy).quote(REPORT_DATA).quote
    with pytest.raises(SimulatedEvidenceRefused, match="simulated root"):
        verify_quote(quote, simulated_policy(allow_simulated=True), REPORT_DATA)


def test_simulated_evidence_from_another_hierarchy_is_refused(hierarchy) -> None:
    other = build_simulated_hierarchy()
    quote = provider(other).quote(REPORT_DATA).quote
    with pytest.raises(AttestationError):
        verify_quote(
            quote,
            simulated_policy(allow_simulated=True),
            REPORT_DATA,
            simulated_root=hierarchy.root_certificate,
        )


def test_allowed_simulated_evidence_is_accepted_and_logged_as_simulated(hierarchy, caplog) -> None:
    caplog.set_level(logging.INFO, logger="bastion.tee.attestation")
    evidence = provider(hierarchy, isv_prod_id=4, isv_svn=2).quote(REPORT_DATA)
    assert evidence.kind == "simulated-sgx-dcap"
    result = verify_quote(
        evidence.quote,
        simulated_policy(allow_simulated=True),
        REPORT_DATA,
        simulated_root=hierarchy.root_certificate,
    )
    assert result.simulated is True
    assert result.tcb_checked is False
    assert (result.isv_prod_id, result.isv_svn) == (4, 2)
    attestation_lines = [r.getMessage() for r in caplog.records if "attestation" in r.name]
    assert attestation_lines
    assert all("SIMULATED attestation" in line for line in attestation_lines)


def test_simulated_debug_enclave_obeys_allow_debug(hierarchy) -> None:
    quote = provider(hierarchy, debug=True).quote(REPORT_DATA).quote
    kwargs = {"simulated_root": hierarchy.root_certificate}
    with pytest.raises(AttestationError) as info:
        verify_quote(quote, simulated_policy(allow_simulated=True), REPORT_DATA, **kwargs)
    assert info.value.reason == "debug"
    allowed = simulated_policy(allow_simulated=True, allow_debug=True)
    assert verify_quote(quote, allowed, REPORT_DATA, **kwargs).debug is True


def test_hierarchy_round_trips_through_a_directory(tmp_path: Path, hierarchy) -> None:
    hierarchy.save(tmp_path / "sim")
    loaded = SimulatedHierarchy.load(tmp_path / "sim")
    for key_file in ("pck-key.pem", "attestation-key.pem"):
        assert stat.S_IMODE((tmp_path / "sim" / key_file).stat().st_mode) == 0o600
    quote = provider(loaded).quote(REPORT_DATA).quote
    result = verify_quote(
        quote,
        simulated_policy(allow_simulated=True),
        REPORT_DATA,
        simulated_root=hierarchy.root_certificate,
    )
    assert result.simulated


def test_loading_a_missing_hierarchy_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(AttestationError, match="build_simulated_hierarchy"):
        SimulatedHierarchy.load(tmp_path / "nothing")


def test_simulated_provider_validates_measurements(hierarchy) -> None:
    with pytest.raises(AttestationError, match="mr_enclave"):
        SimulatedProvider(hierarchy, mr_enclave="abcd", mr_signer="bb" * 32)
    with pytest.raises(AttestationError, match="not hex"):
        SimulatedProvider(hierarchy, mr_enclave="zz" * 32, mr_signer="bb" * 32)
