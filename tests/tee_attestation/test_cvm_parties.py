"""CVM parties end to end in one process: simulated TDX and SNP evidence bound to a TLS key, a
nonce and the plan; the aggregator's gate refuses replayed and expired nonces."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bastion.aggregator.attestation import AttestationGate
from bastion.metrics.log import MetricsLog
from bastion.tee.attestation import (
    AttestationError,
    AttestationPolicy,
    NonceRegistry,
    build_simulated_hierarchy,
    tls_public_key_der,
)
from bastion.tee.attestation.cvm_binding import cvm_report_data_for
from bastion.tee.attestation.parties import build_party
from bastion.tee.attestation.simulated_cvm import (
    SIMULATED_MRTD,
    SIMULATED_SNP_MEASUREMENT,
    build_simulated_snp_hierarchy,
)

PLAN_HASH = hashlib.sha256(b"a plan").hexdigest()
OTHER_PLAN = hashlib.sha256(b"another plan").hexdigest()


def certificate(name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def policy(**changes: Any) -> AttestationPolicy:
    values: dict[str, Any] = {
        "required": True,
        "allow_simulated": True,
        "collateral": "none",
        "tdx": {"mrtd": [SIMULATED_MRTD.hex()]},
        "snp": {"measurement": [SIMULATED_SNP_MEASUREMENT.hex()]},
    }
    values.update(changes)
    return AttestationPolicy(**values)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workspace")
    build_simulated_hierarchy().save(root / "sim")
    build_simulated_snp_hierarchy().save(root / "sim")
    return root


def party(
    workspace: Path, provider: str, pol: AttestationPolicy | None = None, plan: str = PLAN_HASH
) -> Any:
    return build_party(pol or policy(), provider, "sim", workspace, plan)


AGGREGATOR = certificate("aggregator")
SITE = certificate("site-1")


def test_report_data_is_sha512_of_key_nonce_and_plan() -> None:
    nonce = bytes(32)
    spki = tls_public_key_der(SITE)
    expected = hashlib.sha512(spki + nonce + bytes.fromhex(PLAN_HASH)).digest()
    assert cvm_report_data_for(spki, nonce, bytes.fromhex(PLAN_HASH)) == expected


def test_a_tdx_aggregator_and_an_snp_site_verify_each_other(workspace: Path) -> None:
    aggregator = party(workspace, "simulated-tdx")
    site = party(workspace, "simulated-snp")
    nonce = secrets.token_bytes(32)
    verdict = site.verify("x", aggregator.evidence(AGGREGATOR, nonce).quote, AGGREGATOR, nonce)
    assert verdict.kind == "tdx" and verdict.simulated and verdict.mr_enclave == SIMULATED_MRTD
    nonce = secrets.token_bytes(32)
    verdict = aggregator.verify("x", site.evidence(SITE, nonce).quote, SITE, nonce)
    assert verdict.kind == "snp" and verdict.simulated
    assert verdict.mr_enclave == SIMULATED_SNP_MEASUREMENT


@pytest.mark.parametrize("provider", ["simulated-tdx", "simulated-snp"])
def test_evidence_for_another_key_nonce_or_plan_is_refused(workspace: Path, provider: str) -> None:
    prover = party(workspace, provider)
    nonce = secrets.token_bytes(32)
    quote = prover.evidence(SITE, nonce).quote
    verifier = party(workspace, "simulated-tdx")
    for cert, used_nonce, checker in (
        (AGGREGATOR, nonce, verifier),
        (SITE, secrets.token_bytes(32), verifier),
        (SITE, nonce, party(workspace, "simulated-tdx", plan=OTHER_PLAN)),
    ):
        with pytest.raises(AttestationError) as caught:
            checker.verify(provider, quote, cert, used_nonce)
        assert caught.value.reason == "report_data"


def test_simulated_cvm_evidence_is_refused_unless_the_policy_allows_it(workspace: Path) -> None:
    prover = party(workspace, "simulated-snp")
    strict = party(workspace, "simulated-tdx", policy(allow_simulated=False))
    nonce = secrets.token_bytes(32)
    with pytest.raises(AttestationError) as caught:
        strict.verify("snp", prover.evidence(SITE, nonce).quote, SITE, nonce)
    assert caught.value.reason in {"vcek_chain", "simulated_refused"}
    prover = party(workspace, "simulated-tdx")
    with pytest.raises(AttestationError) as caught:
        strict.verify("tdx", prover.evidence(SITE, nonce).quote, SITE, nonce)
    assert caught.value.reason == "simulated_refused"


def test_a_tdx_only_policy_refuses_an_snp_site(workspace: Path) -> None:
    tdx_only = party(workspace, "simulated-tdx", policy(snp=None))
    prover = party(workspace, "simulated-snp")
    nonce = secrets.token_bytes(32)
    with pytest.raises(AttestationError) as caught:
        tdx_only.verify("snp", prover.evidence(SITE, nonce).quote, SITE, nonce)
    assert caught.value.reason == "evidence_kind"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_gate_refuses_replayed_and_expired_nonces(workspace: Path, tmp_path: Path) -> None:
    aggregator = party(workspace, "simulated-tdx")
    site = party(workspace, "simulated-snp")
    metrics = tmp_path / "metrics.jsonl"
    gate = AttestationGate(aggregator, AGGREGATOR, MetricsLog(metrics))
    clock = Clock()
    gate._nonces = NonceRegistry(ttl_seconds=60, clock=clock)  # a controllable clock
    _, nonce = gate.prove("site-1", secrets.token_bytes(32))
    evidence = site.evidence(SITE, nonce)
    admission = gate.admit("site-1", SITE, evidence.kind, evidence.quote, nonce)
    assert admission.simulated and admission.mr_enclave == SIMULATED_SNP_MEASUREMENT.hex()
    with pytest.raises(AttestationError) as caught:
        gate.admit("site-1", SITE, evidence.kind, evidence.quote, nonce)
    assert caught.value.reason == "nonce_replayed"
    _, late = gate.prove("site-1", secrets.token_bytes(32))
    clock.now += 61
    evidence = site.evidence(SITE, late)
    with pytest.raises(AttestationError) as caught:
        gate.admit("site-1", SITE, evidence.kind, evidence.quote, late)
    assert caught.value.reason == "nonce_expired"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert records[0]["accepted"] and records[0]["evidence"] == "snp"
    assert [r["accepted"] for r in records] == [True, False, False]
