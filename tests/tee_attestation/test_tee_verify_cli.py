"""`bastion tee verify QUOTE --policy plan.yaml`: checking a quote by hand, through the command."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from support.cli import run_bastion

from bastion.pki import Role, init_ca, issue, load_certificate
from bastion.tee.attestation import SimulatedProvider, build_simulated_hierarchy
from bastion.tee.attestation.binding import report_data_for, tls_public_key_der

MRENCLAVE = "aa" * 32
MRSIGNER = "bb" * 32


def bastion(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_bastion("tee", "verify", *args, cwd=cwd)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    """A simulated hierarchy, a party certificate, a quote bound to it and a plan pinning it."""
    folder = tmp_path_factory.mktemp("verify")
    hierarchy = build_simulated_hierarchy()
    root = folder / "sim-root.pem"
    root.write_bytes(hierarchy.root_certificate.public_bytes(serialization.Encoding.PEM))
    init_ca(folder / "pki")
    issue(folder / "pki", "aggregator", Role.AGGREGATOR, hosts=["127.0.0.1"])
    cert = folder / "pki" / "aggregator.crt"
    nonce = secrets.token_bytes(32)
    provider = SimulatedProvider(hierarchy, mr_enclave=MRENCLAVE, mr_signer=MRSIGNER)
    report_data = report_data_for(tls_public_key_der(load_certificate(cert)), nonce)
    quote = folder / "quote.bin"
    quote.write_bytes(provider.quote(report_data).quote)
    policy = {"mrenclave": [MRENCLAVE], "allow_simulated": True, "collateral": "none"}
    plan = folder / "plan.yaml"
    plan.write_text(yaml.safe_dump({"name": "x", "attestation": {"policy": policy}}))
    rogue = folder / "rogue.yaml"
    rogue.write_text(yaml.safe_dump({**policy, "mrenclave": ["cc" * 32]}))
    return {
        "folder": folder,
        "root": root,
        "cert": cert,
        "nonce": nonce.hex(),
        "quote": quote,
        "plan": plan,
        "rogue": rogue,
        "report_data": report_data.hex(),
    }


def test_accepts_a_bound_quote_and_prints_the_identity(setup: dict) -> None:
    result = bastion(
        str(setup["quote"]),
        "--policy",
        str(setup["plan"]),
        "--cert",
        str(setup["cert"]),
        "--nonce",
        setup["nonce"],
        "--simulated-root",
        str(setup["root"]),
        "--json",
        cwd=setup["folder"],
    )
    assert result.returncode == 0, result.stderr + result.stdout
    verdict = json.loads(result.stdout)
    assert verdict["accepted"] and verdict["simulated"] and verdict["binding_checked"]
    assert verdict["mrenclave"] == MRENCLAVE and verdict["mrsigner"] == MRSIGNER
    assert verdict["debug"] is False


def test_explicit_report_data_is_an_independent_binding(setup: dict) -> None:
    result = bastion(
        str(setup["quote"]),
        "--policy",
        str(setup["plan"]),
        "--report-data",
        setup["report_data"],
        "--simulated-root",
        str(setup["root"]),
        cwd=setup["folder"],
    )
    assert result.returncode == 0, result.stderr
    assert "ACCEPTED (SIMULATED" in result.stdout and "WARNING" not in result.stdout


def test_unbound_check_says_the_binding_was_not_checked(setup: dict) -> None:
    result = bastion(
        str(setup["quote"]),
        "--policy",
        str(setup["plan"]),
        "--simulated-root",
        str(setup["root"]),
        cwd=setup["folder"],
    )
    assert result.returncode == 0, result.stderr
    assert "report data not checked" in result.stdout


def test_another_nonce_is_rejected(setup: dict) -> None:
    result = bastion(
        str(setup["quote"]),
        "--policy",
        str(setup["plan"]),
        "--cert",
        str(setup["cert"]),
        "--nonce",
        "00" * 32,
        "--simulated-root",
        str(setup["root"]),
        "--json",
        cwd=setup["folder"],
    )
    assert result.returncode == 1
    assert json.loads(result.stdout)["accepted"] is False


def test_measurement_outside_the_policy_is_rejected_with_the_reason(setup: dict) -> None:
    result = bastion(
        str(setup["quote"]),
        "--policy",
        str(setup["rogue"]),
        "--simulated-root",
        str(setup["root"]),
        cwd=setup["folder"],
    )
    assert result.returncode == 1
    assert result.stdout.startswith("REJECTED (") and "MRENCLAVE" in result.stdout.upper()


def test_simulated_evidence_without_its_root_is_rejected(setup: dict) -> None:
    result = bastion(str(setup["quote"]), "--policy", str(setup["plan"]), cwd=setup["folder"])
    assert result.returncode == 1
    assert "REJECTED" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nonce", "00" * 32], "--cert and --nonce go together"),
        (["--report-data", "abcd"], "--report-data must be 64 bytes"),
        (["--report-data", "zz"], "--report-data must be hexadecimal"),
    ],
)
def test_bad_arguments_give_one_clear_line(setup: dict, args: list[str], message: str) -> None:
    result = bastion(
        str(setup["quote"]), "--policy", str(setup["plan"]), *args, cwd=setup["folder"]
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr


def test_a_plan_without_a_policy_is_a_clear_error(setup: dict, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("name: x\nattestation:\n  provider: sgx-dcap\n")
    result = bastion(str(setup["quote"]), "--policy", str(plan), cwd=tmp_path)
    assert result.returncode == 2 and "has no `policy`" in result.stderr
