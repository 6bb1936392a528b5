"""The carried-work book of overlapping rounds (FedBuff): a closed round's unfinished tasks
carry over with the model it started from, and that model goes as soon as nothing needs it
(a 10 MB model per round kept too long is a leak, one kept too short a crash)."""

from __future__ import annotations

import numpy as np

from bastion.aggregator.carried_work import CarriedWorkBook
from bastion.aggregator.records import RoundProgress
from bastion.spec.tasks import TaskSpec

TRAIN = TaskSpec(name="train", kind="train")
VALIDATE = TaskSpec(name="validate_local", kind="validate", model="local")


def _round(number: int, pending: dict[str, list[str]]) -> RoundProgress:
    tasks = {"train": TRAIN, "validate_local": VALIDATE}
    assignments = {name: [tasks[t] for t in names] for name, names in pending.items()}
    return RoundProgress(number, False, assignments, {k: list(v) for k, v in pending.items()}, 0.0)


def test_unfinished_tasks_carry_over_with_their_starting_model() -> None:
    book = CarriedWorkBook()
    model_3 = {"w": np.full(4, 3.0, np.float32)}
    progress = _round(3, {"slow": ["train", "validate_local"], "fast": []})
    assert book.carry(progress, model_3) == ["slow"]
    assert progress.pending["slow"] == []  # no longer the closed round's to wait for
    work = book.of("slow", 3)
    assert work is not None and work.pending == ["train", "validate_local"]
    assert book.of("slow", 4) is None and book.of("fast", 3) is None
    assert book.origin(work) is model_3 and "slow" in book and len(book) == 1

    book.done("slow", work, "train")
    assert book.of("slow", 3) is work and book.origin(work) is model_3
    book.done("slow", work, "validate_local")  # its last task: the work and its model go
    assert "slow" not in book and len(book) == 0
    assert book.models_kept() == set()


def test_a_model_stays_while_any_site_still_works_from_it() -> None:
    book = CarriedWorkBook()
    book.carry(_round(5, {"a": ["train"], "b": ["train"]}), {"w": np.zeros(2)})
    book.carry(_round(6, {"c": ["train"]}), {"w": np.ones(2)})
    assert book.sites() == ["a", "b", "c"]
    assert not book.drop("a", round_number=6)  # a's work is of round 5, not 6
    assert book.drop("a", round_number=5) and book.models_kept() == {5, 6}
    assert book.drop("b") and book.models_kept() == {6}
    book.clear()
    assert len(book) == 0 and book.models_kept() == set()
