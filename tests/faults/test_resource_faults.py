"""Resource faults: a full checkpoint disk, and a clock stepped across a certificate's validity."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from faults.harness import FaultFederation, full_only
from faults.results import record
from support.federations import checkpoint_state

ENOSPC_POINTS = [
    "atomic.before_fsync@last.safetensors:enospc:2",
    *full_only("atomic.before_fsync@best.safetensors:enospc:2", "engine.checkpoint:enospc:2"),
]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ENOSPC_POINTS)
def test_disk_full_at_checkpoint_stops_with_one_reason_and_resumes(
    tmp_path: Path, baseline: dict[str, np.ndarray], fault: str
) -> None:
    """ENOSPC while writing round 2's checkpoint: the aggregator stops, saying so, with round
    1's checkpoint whole; once the disk has room again, a restart finishes the same model."""
    run = FaultFederation(tmp_path)
    try:
        port = run.start(aggregator_fault=fault)
        run.wait_fired(fault.split(":")[0].split("@")[0])
        code = run.wait_exit("aggregator", timeout=30)
        stopped = time.monotonic()
        log = run.federation.log_text("aggregator")
        assert code != 0, log[-3000:]
        assert "No space left on device" in log, log[-3000:]
        assert checkpoint_state(run.last)["round_completed"] == 1
        run.start_aggregator(port=port)  # the disk has room again
        codes = run.finish()
        run.assert_invariants(codes, baseline)
        record(
            "disk full (ENOSPC)",
            fault,
            "stopped: writing its state failed (No space left on device), round 1 on disk; "
            "restart finished, = undisturbed",
            run.lost_rounds(),
            time.monotonic() - stopped,
        )
    finally:
        run.close()


def reissue(pki: Path, name: str, not_before: datetime, not_after: datetime) -> None:
    """``name``'s certificate again, same key and extensions, with another validity window:
    what the clock stepping outside the window looks like to everyone who checks it."""
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate((pki / f"{name}.crt").read_bytes())
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(ca_cert.subject)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    signed = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    (pki / f"{name}.crt").write_bytes(signed.public_bytes(serialization.Encoding.PEM))


@pytest.mark.slow
@pytest.mark.parametrize("step", ["forward_past_expiry", *full_only("back_before_validity")])
def test_clock_step_across_a_site_certificate(tmp_path: Path, step: str) -> None:
    """Site 2's clock (or the world's) is outside its certificate's window: site 2 stops
    with one clear reason, unblamed, and the federation finishes with site 1."""
    run = FaultFederation(tmp_path, plan_changes={"timeouts": {"round_seconds": 8}})
    now = datetime.now(timezone.utc)
    if step == "forward_past_expiry":
        window, reason = (now - timedelta(days=2), now - timedelta(minutes=1)), "expired on"
    else:
        window, reason = (now + timedelta(days=1), now + timedelta(days=30)), "not valid yet"
    reissue(run.workspace / "pki", "site-2", *window)
    try:
        run.start()
        assert run.wait_exit("site-2", timeout=60) != 0
        site_log = run.federation.log_text("site-2")
        assert reason in site_log, site_log[-2000:]
        codes = run.finish(timeout=180)
        assert codes["aggregator"] == 0 and codes["site-1"] == 0, codes
        state = checkpoint_state(run.last)
        assert state["round_completed"] == run.rounds and state["finished"]
        assert not run.watcher.violations
        for entry in run.records():
            if entry.get("event") == "round":
                assert not entry["rejected"] and not entry["failed"], entry
        record(
            "clock step across site-2's certificate",
            step,
            f"site-2 stopped: '... {reason} ...'; federation finished with site-1, nobody blamed",
            0,
        )
    finally:
        run.close()


@pytest.mark.slow
def test_read_only_log_directory_stops_with_one_reason_then_resumes(
    tmp_path: Path, baseline: dict[str, np.ndarray]
) -> None:
    """The metrics log becomes unwritable after round 1 (chattr +i: read-only even for root):
    the aggregator stops naming it; made writable again, a restart finishes the same model."""
    import shutil
    import subprocess

    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    run = FaultFederation(tmp_path)
    metrics = run.metrics_path
    try:
        port = run.start()
        run.wait_round(1)
        if subprocess.run(["chattr", "+i", str(metrics)], capture_output=True).returncode:
            pytest.skip("this file system does not support chattr +i")
        try:
            code = run.wait_exit("aggregator", timeout=60)
            stopped = time.monotonic()
        finally:
            subprocess.run(["chattr", "-i", str(metrics)], check=True)
        log = run.federation.log_text("aggregator")
        assert code != 0 and "writing its state failed" in log, log[-3000:]
        run.start_aggregator(port=port)
        codes = run.finish()
        run.assert_invariants(codes, baseline)
        record(
            "read-only log directory",
            "chattr +i logs/metrics.jsonl after round 1",
            "stopped: writing its state failed (EPERM); restart finished, = undisturbed",
            run.lost_rounds(),
            time.monotonic() - stopped,
        )
    finally:
        subprocess.run(["chattr", "-i", str(metrics)], capture_output=True)
        run.close()
