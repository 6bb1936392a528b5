"""`bastion tee verify` on TDX and SNP evidence, `simulated-keys --kind tdx|snp` and
`expected-measurement`, through the command (one-line errors, never a traceback)."""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
from pathlib import Path

import yaml
from support.cli import run_bastion

from bastion.pki import Role, init_ca, issue, load_certificate
from bastion.spec.attestation import AttestationSpec
from bastion.tee.attestation.parties import build_party
from bastion.tee.attestation.snp import parse_snp_report
from bastion.tee.attestation.tdx import parse_td_quote

DATA = Path(__file__).parent / "data"
TDX = DATA / "tdx_v4_phala.quote"
SNP = DATA / "snp_v2_milan_virtee.report"
VCEK = DATA / "snp_v2_milan_virtee_vcek.der"


def tee(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_bastion("tee", *args, cwd=cwd)


def write_policy(folder: Path, name: str, policy: dict) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump({"name": "x", "attestation": {"policy": policy}}))
    return path


def test_verify_detects_and_accepts_the_real_tdx_quote_with_saved_collateral(
    tmp_path: Path,
) -> None:
    td = parse_td_quote(TDX.read_bytes()).td_report
    plan = write_policy(tmp_path, "plan.yaml", {"tdx": {"mrtd": [td.mrtd.hex()]}})
    result = tee(
        "verify", str(TDX), "--policy", str(plan), "--collateral",
        str(DATA / "tdx_v4_phala_collateral.json"), "--at", "2025-06-20T00:00:00Z",
        "--report-data", td.report_data.hex(), "--json", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    verdict = json.loads(result.stdout)
    assert verdict["evidence"] == "tdx" and verdict["mrtd"] == td.mrtd.hex()
    assert verdict["tcb_status"] == "UpToDate" and verdict["fmspc"] == "b0c06f000000"
    assert verdict["binding_checked"] and not verdict["simulated"]


def test_verify_refuses_a_changed_tdx_byte_in_one_line(tmp_path: Path) -> None:
    data = bytearray(TDX.read_bytes())
    data[48 + 136] ^= 1  # MRTD
    tampered = tmp_path / "tampered.quote"
    tampered.write_bytes(bytes(data))
    td = parse_td_quote(TDX.read_bytes()).td_report
    plan = write_policy(
        tmp_path, "plan.yaml", {"tdx": {"mrtd": [td.mrtd.hex()]}, "collateral": "none"}
    )
    result = tee("verify", str(tampered), "--policy", str(plan), "--at", "2025-06-20", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.startswith("REJECTED (quote_signature)") and result.stdout.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_verify_accepts_the_real_snp_report_with_its_vcek(tmp_path: Path) -> None:
    report = parse_snp_report(SNP.read_bytes())
    plan = write_policy(tmp_path, "plan.yaml", {"snp": {"measurement": [report.measurement.hex()]}})
    result = tee(
        "verify", str(SNP), "--policy", str(plan), "--vcek", str(VCEK),
        "--at", "2025-01-01", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    verdict = json.loads(result.stdout)
    assert verdict["evidence"] == "snp" and verdict["product"] == "Milan"
    assert verdict["measurement"] == report.measurement.hex()
    assert verdict["binding_checked"] is False  # no --report-data: said, not hidden


def test_verify_refuses_an_snp_report_without_its_vcek(tmp_path: Path) -> None:
    plan = write_policy(tmp_path, "plan.yaml", {"snp": {"measurement": ["00" * 48]}})
    result = tee("verify", str(SNP), "--policy", str(plan), cwd=tmp_path)
    assert result.returncode == 1 and result.stdout.startswith("REJECTED (vcek_missing)")


def test_unknown_evidence_is_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x07" * 100)
    plan = write_policy(tmp_path, "plan.yaml", {"snp": {"measurement": ["00" * 48]}})
    result = tee("verify", str(junk), "--policy", str(plan), cwd=tmp_path)
    assert result.returncode == 1 and result.stdout.startswith("REJECTED (quote_format)")
    assert "Traceback" not in result.stderr


def printed_section(stdout: str) -> dict:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "attestation:")
    return yaml.safe_load("\n".join(lines[start:]))["attestation"]


def test_simulated_keys_for_tdx_and_snp_print_policies_that_accept_their_evidence(
    tmp_path: Path,
) -> None:
    init_ca(tmp_path / "pki")
    issue(tmp_path / "pki", "site-1", Role.COLLABORATOR)
    cert = load_certificate(tmp_path / "pki" / "site-1.crt")
    plan_hash = hashlib.sha256(b"plan").hexdigest()
    for kind in ("tdx", "snp"):
        done = tee("simulated-keys", "pki/sim", "--kind", kind, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        spec = AttestationSpec.model_validate(printed_section(done.stdout))
        assert spec.provider == f"simulated-{kind}" and spec.policy.allow_simulated
        party = build_party(spec.policy, spec.provider, spec.simulated_dir, tmp_path, plan_hash)
        nonce = secrets.token_bytes(32)
        verdict = party.verify(kind, party.evidence(cert, nonce).quote, cert, nonce)
        assert verdict.simulated and verdict.kind == kind
    again = tee("simulated-keys", "pki/sim", "--kind", "snp", cwd=tmp_path)
    assert again.returncode == 2 and "already holds files" in again.stderr


def test_simulated_cvm_evidence_is_refused_without_allow_simulated(tmp_path: Path) -> None:
    assert tee("simulated-keys", "sim", "--kind", "snp", cwd=tmp_path).returncode == 0
    init_ca(tmp_path / "pki")
    issue(tmp_path / "pki", "site-1", Role.COLLABORATOR)
    from bastion.tee.attestation.simulated_cvm import SimulatedSnpHierarchy

    evidence = SimulatedSnpHierarchy.load(tmp_path / "sim").sign_report(report_data=bytes(64))
    (tmp_path / "evidence.bin").write_bytes(evidence)
    from bastion.tee.attestation.simulated_cvm import SIMULATED_SNP_MEASUREMENT

    strict = write_policy(
        tmp_path, "strict.yaml", {"snp": {"measurement": [SIMULATED_SNP_MEASUREMENT.hex()]}}
    )
    result = tee("verify", "evidence.bin", "--policy", str(strict), cwd=tmp_path)
    assert result.returncode == 1 and result.stdout.startswith("REJECTED (vcek_chain)")
    refused = tee(
        "verify", "evidence.bin", "--policy", str(strict), "--simulated-root", "sim", cwd=tmp_path
    )
    assert refused.returncode == 2 and "allow_simulated" in refused.stderr
    lenient = write_policy(
        tmp_path,
        "lenient.yaml",
        {"allow_simulated": True, "snp": {"measurement": [SIMULATED_SNP_MEASUREMENT.hex()]}},
    )
    ok = tee(
        "verify", "evidence.bin", "--policy", str(lenient), "--simulated-root", "sim", cwd=tmp_path
    )
    assert ok.returncode == 0 and "SIMULATED evidence" in ok.stdout


def test_expected_measurement_replays_an_rtmr(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"first event")
    (tmp_path / "b").write_bytes(b"second event")
    result = tee("expected-measurement", "rtmr", "--file", "a", "--file", "b", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    value = bytes(48)
    for event in (b"first event", b"second event"):
        value = hashlib.sha384(value + hashlib.sha384(event).digest()).digest()
    assert result.stdout.strip() == value.hex()


def test_expected_measurement_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "not-ovmf.fd").write_bytes(b"\x00" * 4096)
    for args in (
        ("snp",),
        ("snp", "--ovmf", "missing.fd"),
        ("snp", "--ovmf", "not-ovmf.fd"),
        ("snp", "--ovmf", "not-ovmf.fd", "--vcpu-type", "Pentium"),
        ("rtmr",),
        ("rtmr", "--file", "missing"),
        ("tpm",),
    ):
        result = tee("expected-measurement", *args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, args


def test_verify_checks_the_cvm_binding_of_key_nonce_and_plan(tmp_path: Path) -> None:
    from bastion.tee.attestation import tls_public_key_der
    from bastion.tee.attestation.cvm_binding import cvm_report_data_for
    from bastion.tee.attestation.simulated_cvm import (
        SIMULATED_SNP_MEASUREMENT,
        SimulatedSnpHierarchy,
    )

    assert tee("simulated-keys", "sim", "--kind", "snp", cwd=tmp_path).returncode == 0
    init_ca(tmp_path / "pki")
    issue(tmp_path / "pki", "site-1", Role.COLLABORATOR)
    cert = tmp_path / "pki" / "site-1.crt"
    nonce = secrets.token_bytes(32)
    plan_hash = hashlib.sha256(b"the plan").hexdigest()
    bound = cvm_report_data_for(
        tls_public_key_der(load_certificate(cert)), nonce, bytes.fromhex(plan_hash)
    )
    evidence = SimulatedSnpHierarchy.load(tmp_path / "sim").sign_report(report_data=bound)
    (tmp_path / "evidence.bin").write_bytes(evidence)
    plan = write_policy(
        tmp_path,
        "plan.yaml",
        {"allow_simulated": True, "snp": {"measurement": [SIMULATED_SNP_MEASUREMENT.hex()]}},
    )
    base = ("verify", "evidence.bin", "--policy", str(plan), "--simulated-root", "sim")
    base += ("--cert", str(cert), "--nonce", nonce.hex())
    ok = tee(*base, "--plan-hash", plan_hash, "--json", cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["binding_checked"] is True
    other_plan = tee(*base, "--plan-hash", "00" * 32, cwd=tmp_path)
    assert other_plan.returncode == 1 and other_plan.stdout.startswith("REJECTED (report_data)")
    missing = tee(*base, cwd=tmp_path)
    assert missing.returncode == 2 and "--plan-hash" in missing.stderr
