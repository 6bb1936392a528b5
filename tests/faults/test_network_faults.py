"""Network faults: each site reaches the aggregator through a misbehaving proxy on 127.0.0.1."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from faults.harness import FaultFederation, full_only
from faults.results import record


@pytest.mark.slow
def test_latency_jitter_and_bandwidth_cap(tmp_path: Path, baseline: dict[str, np.ndarray]) -> None:
    run = FaultFederation(tmp_path)
    try:
        run.start_behind_proxies(latency=0.02, jitter=0.015, bandwidth=2_000_000)
        codes = run.finish()
        run.assert_invariants(codes, baseline)
        record(
            "network",
            "latency 20 ms ± 15 ms, 2 MB/s cap, both sites",
            "finished, = undisturbed",
            run.lost_rounds(),
        )
    finally:
        run.close()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["drop_mid_stream", *full_only("reset_all", "half_open")])
def test_connection_faults_lose_nothing(
    tmp_path: Path, baseline: dict[str, np.ndarray], how: str
) -> None:
    run = FaultFederation(tmp_path)
    try:
        proxies = run.start_behind_proxies()
        run.wait_round(1)
        started = time.monotonic()
        if how == "drop_mid_stream":  # in the middle of site-1's round-2 model download
            proxies["site-1"].drop_after = 200_000
        elif how == "reset_all":
            for _ in range(3):
                assert sum(p.reset_all() for p in proxies.values()) >= 0
                time.sleep(0.3)
        else:  # bytes stop for 4 s, sockets stay open, then flow again
            proxies["site-1"].partition()
            time.sleep(4.0)
            proxies["site-1"].heal()
        codes = run.finish()
        run.assert_invariants(codes, baseline)
        if how == "drop_mid_stream":
            assert proxies["site-1"].dropped == 1
        record(
            "network",
            how,
            "finished, = undisturbed",
            run.lost_rounds(),
            time.monotonic() - started,
        )
    finally:
        run.close()


@pytest.mark.slow
def test_partition_longer_than_round_timeout_then_heal(tmp_path: Path) -> None:
    """Site 2 is cut off past the round timeout: the round closes without it, unblamed, and
    the site takes part again once the network heals."""
    run = FaultFederation(tmp_path, rounds=4, plan_changes={"timeouts": {"round_seconds": 6}})
    try:
        proxies = run.start_behind_proxies()
        run.wait_round(1)
        proxies["site-2"].partition()
        cut = time.monotonic()
        run.wait_for(
            lambda: any(r.get("timed_out") for r in run.records() if r.get("event") == "round"),
            60,
            "a round closing without site-2",
        )
        time.sleep(max(0.0, 10 - (time.monotonic() - cut)))
        proxies["site-2"].heal()
        healed = time.monotonic()
        codes = run.finish(timeout=180)
        run.assert_invariants(codes)
        rounds = [r for r in run.records() if r.get("event") == "round"]
        assert any(r["timed_out"] == ["site-2"] for r in rounds), rounds
        # Every round's aggregate is of exactly the train results that round accepted
        # (counted from the round's last start: a restarted round discards its first try).
        since_start: list[str] = []
        for entry in run.records():
            if entry.get("event") == "round_start":
                since_start = []
            elif entry.get("event") == "task" and entry["task"] == "train":
                since_start.append(entry["collaborator"])
            elif entry.get("event") == "round" and not entry["final_evaluation"]:
                assert entry["accepted"] == len(since_start), (entry, since_start)
                assert "site-2" not in since_start or "site-2" not in entry["timed_out"]
        # Site 2 came back after the heal: it validated the final model.
        final = rounds[-1]
        assert final["final_evaluation"] and "site-2" not in final["timed_out"], final
        record(
            "network",
            "site-2 partitioned 10 s > round timeout 6 s, healed",
            "finished; a round closed without site-2 (timed out, unblamed); each round = "
            "its accepted results; site-2 back for the final evaluation",
            run.lost_rounds(),
            time.monotonic() - healed,
        )
    finally:
        run.close()
