"""The count of collaborators still working, kept as a round's pending tasks change: the
engine asks for it at every request and result, so it must never drift from a recount."""

from __future__ import annotations

import copy
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.aggregator.records import PendingTasks, RoundProgress

NAMES = st.sampled_from(["site-1", "site-2", "site-3", "site-4"])
CHANGES = st.lists(
    st.tuples(NAMES, st.none() | st.lists(st.sampled_from(["train", "validate"]), max_size=2)),
    max_size=40,
)


def _recount(pending: PendingTasks) -> int:
    return sum(1 for tasks in pending.values() if tasks)


@settings(max_examples=200, deadline=None)
@given(start=st.dictionaries(NAMES, st.lists(st.just("train"), max_size=1)), changes=CHANGES)
def test_the_working_count_matches_a_recount_after_any_assignments_and_removals(
    start: dict[str, list[str]], changes: list[tuple[str, list[str] | None]]
) -> None:
    progress = RoundProgress(1, False, {}, start, 0.0)  # a plain dict is taken in, counted
    assert progress.working() == _recount(progress.pending)
    for name, tasks in changes:
        if tasks is None:
            if name in progress.pending:
                del progress.pending[name]
        else:
            progress.pending[name] = tasks
        assert progress.working() == _recount(progress.pending)
    for clone in (copy.deepcopy(progress.pending), pickle.loads(pickle.dumps(progress.pending))):
        assert clone == progress.pending and clone.working == progress.working()


def test_changes_that_would_bypass_the_count_are_refused() -> None:
    pending = PendingTasks({"site-1": ["train"]})
    for change in (
        lambda: pending.update({"site-2": ["train"]}),
        lambda: pending.setdefault("site-2", ["train"]),
        lambda: pending.pop("site-1"),
        pending.clear,
    ):
        with pytest.raises(TypeError, match="item assignment or del"):
            change()
    assert pending.working == 1
