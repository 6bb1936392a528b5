"""`bastion tee simulated-keys`: development keys for simulated attestation, and the policy to use."""

from __future__ import annotations

import secrets
import stat
import subprocess
from pathlib import Path

import yaml
from support.cli import run_bastion

from bastion.pki import Role, init_ca, issue, load_certificate
from bastion.spec.attestation import AttestationSpec
from bastion.tee.attestation.parties import build_party

KEYS = "pki/attestation-sim"


def simulated_keys(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_bastion("tee", "simulated-keys", *args, cwd=cwd)


def printed_plan_section(stdout: str) -> dict:
    """The indented ``attestation:`` block the command prints, parsed as YAML."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "attestation:")
    return yaml.safe_load("\n".join(lines[start:]))


def test_the_printed_policy_accepts_quotes_signed_with_the_written_keys(tmp_path: Path) -> None:
    done = simulated_keys(KEYS, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "never allow it in production" in done.stdout
    keys = tmp_path / KEYS
    for private in ("pck-key.pem", "attestation-key.pem"):
        assert stat.S_IMODE((keys / private).stat().st_mode) == 0o600

    spec = AttestationSpec.model_validate(printed_plan_section(done.stdout)["attestation"])
    assert spec.provider == "simulated" and spec.policy.required
    party = build_party(spec.policy, spec.provider, spec.simulated_dir, tmp_path, "ab" * 32)

    init_ca(tmp_path / "pki")
    issue(tmp_path / "pki", "site-1", Role.COLLABORATOR)
    certificate = load_certificate(tmp_path / "pki" / "site-1.crt")
    nonce = secrets.token_bytes(32)
    verified = party.verify(
        "simulated", party.evidence(certificate, nonce).quote, certificate, nonce
    )
    assert verified.simulated
    assert verified.mr_signer.hex() == spec.policy.mrsigner


def test_existing_keys_are_kept_unless_forced(tmp_path: Path) -> None:
    assert simulated_keys(KEYS, cwd=tmp_path).returncode == 0
    root = tmp_path / KEYS / "simulated-root-ca.pem"
    first = root.read_bytes()

    again = simulated_keys(KEYS, cwd=tmp_path)
    assert again.returncode == 2
    assert "already holds files" in again.stderr and "Traceback" not in again.stderr
    assert root.read_bytes() == first

    assert simulated_keys(KEYS, "--force", cwd=tmp_path).returncode == 0
    assert root.read_bytes() != first
