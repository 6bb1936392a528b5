"""A site's local DP ledger: a restarted collaborator continues from what its records spent.

The ledger is a JSON file in the site's workspace, bound to the collaborator and to the
federation's CA; a corrupt or foreign one is refused with one line naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from support.workspaces import issue_identities

from bastion.collaborator.local_privacy import LocalPrivacyGuard
from bastion.pki import certificate_fingerprint, load_certificate
from bastion.plan import Plan, parse_plan
from bastion.privacy.dp.site_ledger import (
    LEDGER_FORMAT,
    LedgerError,
    SiteLedger,
    federation_id,
    ledger_path,
)

Z, CLIP, DELTA = 1.0, 1.0, 1e-5
HISTORY = [(1.0, 1 / 7, 21), (0.8, 0.1, 3)]


def _plan(budget: float | None = None) -> Plan:
    local: dict[str, Any] = {"noise_multiplier": Z, "max_grad_norm": CLIP}
    if budget is not None:
        local["epsilon_budget"] = budget
    return parse_plan(
        {
            "name": "local-dp",
            "rounds": 3,
            "collaborators": ["site-1", "site-2"],
            "tasks": [{"name": "train", "kind": "train"}],
            "task_runner": {"path": "task:build_runner"},
            "data": {"loader": "digits"},
            "differential_privacy": {"delta": DELTA, "local": local},
        }
    )


def _ledger(tmp_path: Path, name: str = "site-1", federation: str = "ca-sha256:AA") -> SiteLedger:
    return SiteLedger(tmp_path / "logs" / "local_dp" / f"{name}.json", name, federation)


def test_a_saved_history_loads_back_exactly(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    assert ledger.load() == []  # a site that never trained
    ledger.save(HISTORY, epsilon=3.5, delta=DELTA, plan_hash="ab" * 32)
    assert ledger.load() == HISTORY
    document = json.loads(ledger.path.read_text())
    assert document["format"] == LEDGER_FORMAT
    assert (document["collaborator"], document["federation"]) == ("site-1", "ca-sha256:AA")
    assert document["epsilon"] == 3.5 and document["delta"] == DELTA


@pytest.mark.filterwarnings("ignore:Secure RNG turned off", "ignore:Full backward hook is firing")
def test_a_restarted_site_continues_from_its_ledger(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("opacus")
    import numpy as np

    from bastion.data.types import DataShard
    from bastion.runners.torch import TorchRunner

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    data = DataShard(x, y, x, y, num_classes=2)
    plan = _plan()

    def start() -> tuple[TorchRunner, LocalPrivacyGuard]:
        """A fresh process: new runner, history from the ledger (as collaborator start does)."""
        runner = TorchRunner(torch.nn.Linear(4, 2), threads=1)
        runner.enable_local_dp(Z, CLIP, DELTA)
        guard = LocalPrivacyGuard.for_plan(plan, "site-1", runner, _ledger(tmp_path))
        assert guard is not None
        return runner, guard

    first, guard = start()
    assert guard.spent() == 0.0
    for _ in range(2):
        first.train(data, batch_size=8)
        guard.record()
    spent = first.local_dp.epsilon()
    assert spent > 0

    second, guard = start()  # the process was killed and started again
    assert guard.spent() == pytest.approx(spent, rel=1e-12)
    assert second.local_dp.history() == first.local_dp.history()
    second.train(data, batch_size=8)
    first.train(data, batch_size=8)  # had it never stopped
    assert second.local_dp.epsilon() == pytest.approx(first.local_dp.epsilon(), rel=1e-12)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "Expecting property name"),
        (b"\xff\xfe", "codec can't decode"),
        (b"[]", "expected the fields"),
        ({"format": "other/2"}, "format 'other/2'"),
        ({"history": [[1.0, 0.1]]}, "is not [z, q, steps]"),
        ({"history": [[0.0, 0.1, 3]]}, "need a noise multiplier > 0"),
        ({"history": [[1.0, 1.5, 3]]}, "sample rate in (0, 1]"),
        ({"history": [[1.0, 0.1, 2.5]]}, "steps must be a whole number"),
        ({"history": [[1.0, 0.1, True]]}, "steps must be a whole number"),
        ({"history": "[[1.0, 0.1, 3]]"}, "must be a list"),
        ({"epsilon": "small"}, "epsilon must be a number"),
    ],
)
def test_a_corrupt_ledger_is_one_clear_error(
    tmp_path: Path, content: bytes | dict[str, Any], problem: str
) -> None:
    ledger = _ledger(tmp_path)
    ledger.save(HISTORY, epsilon=3.5, delta=DELTA, plan_hash="")
    if isinstance(content, dict):
        document = json.loads(ledger.path.read_text())
        document.update(content)
        content = json.dumps(document).encode()
    ledger.path.write_bytes(content)
    with pytest.raises(LedgerError) as caught:
        ledger.load()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"local DP ledger {ledger.path} is corrupt (")
    assert problem in message
    assert "restore it from a backup" in message


def test_a_ledger_of_another_site_or_federation_is_refused(tmp_path: Path) -> None:
    _ledger(tmp_path, federation="ca-sha256:AA").save(
        HISTORY, epsilon=3.5, delta=DELTA, plan_hash=""
    )
    other_federation = _ledger(tmp_path, federation="ca-sha256:BB")
    with pytest.raises(LedgerError, match=r"another federation \(ca-sha256:AA, epsilon 3\.5\)"):
        other_federation.load()
    moved = SiteLedger(_ledger(tmp_path).path, "site-2", "ca-sha256:AA")
    with pytest.raises(LedgerError, match="belongs to collaborator 'site-1', not 'site-2'"):
        moved.load()


def test_a_write_that_fails_leaves_the_previous_ledger_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = _ledger(tmp_path)
    ledger.save(HISTORY[:1], epsilon=1.0, delta=DELTA, plan_hash="")

    def crash(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="No space left"):
        ledger.save(HISTORY, epsilon=3.5, delta=DELTA, plan_hash="")
    monkeypatch.undo()
    assert ledger.load() == HISTORY[:1]
    assert sorted(p.name for p in ledger.path.parent.iterdir()) == ["site-1.json"]


def test_the_ledger_is_bound_to_the_federations_ca(tmp_path: Path) -> None:
    plan = _plan()
    assert ledger_path(tmp_path, plan, "site-2") == tmp_path / "logs" / "local_dp" / "site-2.json"
    assert federation_id(tmp_path, plan) == f"plan-sha256:{plan.canonical_hash()}"  # no CA yet
    pki = issue_identities(tmp_path, ["site-1"])
    fingerprint = certificate_fingerprint(load_certificate(pki / "ca.crt"))
    assert federation_id(tmp_path, plan) == f"ca-sha256:{fingerprint}"
