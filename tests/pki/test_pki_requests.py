"""Requests: made where the key lives, with validated names and hosts, and a fingerprint
the two sides can compare by phone."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.pki import PKIError, Role, create_request, csr_fingerprint, load_csr, validate_name


def test_request_writes_a_private_key_and_a_csr_with_name_role_and_hosts(tmp_path: Path) -> None:
    csr_path = create_request(tmp_path, "agg-1", Role.AGGREGATOR, ["10.0.0.5", "agg.example.org"])

    assert csr_path == tmp_path / "agg-1.csr"
    assert stat.S_IMODE((tmp_path / "agg-1.key").stat().st_mode) == 0o600
    csr = load_csr(csr_path)
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "agg-1"
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == (
        "aggregator"
    )
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert sans.get_values_for_type(x509.DNSName) == ["agg.example.org"]


def test_ipv6_hosts_become_ip_sans(tmp_path: Path) -> None:
    csr = load_csr(create_request(tmp_path, "agg", "aggregator", ["::1", "[fe80::1]"]))
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("fe80::1"),
    ]


def test_aggregator_request_without_host_suggests_one(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match=r"--host 127\.0\.0\.1"):
        create_request(tmp_path, "agg", Role.AGGREGATOR)
    assert not (tmp_path / "agg.key").exists()


@pytest.mark.parametrize("host", ["*.example.org", "bad host", "-lead.example", "a..b", ""])
def test_bad_hosts_are_refused(tmp_path: Path, host: str) -> None:
    with pytest.raises(PKIError, match="invalid host"):
        create_request(tmp_path, "alice", Role.COLLABORATOR, [host])


@pytest.mark.parametrize("name", ["", "bad name", "../etc", ".hidden", "a/b", "x" * 65, "é"])
def test_bad_names_are_refused_with_the_rule(tmp_path: Path, name: str) -> None:
    with pytest.raises(PKIError, match="invalid identity name.*letters, digits"):
        create_request(tmp_path, name, Role.COLLABORATOR)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["ca", "CA"])
def test_names_that_would_overwrite_the_ca_are_reserved(tmp_path: Path, name: str) -> None:
    with pytest.raises(PKIError, match="reserved"):
        create_request(tmp_path, name, Role.COLLABORATOR)


def test_unknown_role_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match="aggregator, collaborator, model-owner"):
        create_request(tmp_path, "alice", "admin")


def test_existing_key_is_kept_unless_forced(tmp_path: Path) -> None:
    create_request(tmp_path, "alice", Role.COLLABORATOR)
    key = (tmp_path / "alice.key").read_bytes()
    with pytest.raises(PKIError, match="already exists.*--force"):
        create_request(tmp_path, "alice", Role.COLLABORATOR)
    assert (tmp_path / "alice.key").read_bytes() == key

    create_request(tmp_path, "alice", Role.COLLABORATOR, force=True)
    assert (tmp_path / "alice.key").read_bytes() != key


def test_csr_fingerprint_is_stable_and_matches_sha256_of_the_der(tmp_path: Path) -> None:
    csr_path = create_request(tmp_path, "alice", Role.COLLABORATOR)

    pem = csr_path.read_text()
    body = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
    independent = hashlib.sha256(base64.b64decode(body)).hexdigest().upper()

    printed = csr_fingerprint(csr_path)
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", printed)
    assert printed.replace(":", "") == independent
    assert csr_fingerprint(load_csr(csr_path)) == printed == csr_fingerprint(str(csr_path))


def test_two_requests_for_one_name_have_different_fingerprints(tmp_path: Path) -> None:
    first = csr_fingerprint(create_request(tmp_path / "a", "alice", Role.COLLABORATOR))
    second = csr_fingerprint(create_request(tmp_path / "b", "alice", Role.COLLABORATOR))
    assert first != second


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(codec="ascii"), max_size=70))
def test_valid_names_are_exactly_safe_file_names(name: str) -> None:
    try:
        validate_name(name)
    except PKIError:
        accepted = False
    else:
        accepted = True
    expected = bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name)) and (
        name.lower() != "ca"
    )
    assert accepted == expected
    if accepted:
        assert "/" not in name and "\\" not in name and not name.startswith(".")
