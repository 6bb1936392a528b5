"""A plan with YAML aliases is refused before it expands (issue 15: the alias bomb)."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from bastion.errors import PlanError
from bastion.plan import load_plan

BOMB = "\n".join(
    ["name: bomb", 'a0: &a0 ["xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]']
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
)


def test_alias_bomb_is_refused_within_100_mb(tmp_path: Path) -> None:
    (tmp_path / "plan.yaml").write_text(BOMB + "\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(PlanError) as caught:
        load_plan(tmp_path)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert "aliases (*name) are not allowed" in str(caught.value)
    assert grown_kib < 100 * 1024
    print(f"\nalias bomb (10^9 leaves) refused; peak RSS grew {grown_kib} KiB")
