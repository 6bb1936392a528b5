"""Work that outlives its round: the bookkeeping of overlapping round protocols (FedBuff).

When such a round closes while sites still train, their tasks carry over with the model
the round started from: a late download is served that model, a late result is decoded
against it and folded with its staleness. This book holds both, and lets a starting model
go as soon as no carried task refers to it. The engine calls it under its own lock.
"""

from __future__ import annotations

from bastion.aggregator.records import CarriedWork, RoundProgress
from bastion.tensors import Weights


class CarriedWorkBook:
    """Each site's carried-over work (at most one closed round's tasks per site) and the
    starting model of every round that carried work still refers to."""

    def __init__(self) -> None:
        self._work: dict[str, CarriedWork] = {}
        self._origins: dict[int, Weights] = {}

    def __contains__(self, collaborator: object) -> bool:
        return collaborator in self._work

    def __len__(self) -> int:
        return len(self._work)

    def sites(self) -> list[str]:
        """The sites with carried-over work, sorted."""
        return sorted(self._work)

    def of(self, collaborator: str, round_number: int) -> CarriedWork | None:
        """``collaborator``'s carried-over work of the closed round ``round_number``, if any."""
        work = self._work.get(collaborator)
        return work if work is not None and work.round == round_number else None

    def models_kept(self) -> set[int]:
        """The rounds whose starting models are held for carried work (one model each)."""
        return set(self._origins)

    def origin(self, work: CarriedWork) -> Weights:
        """The model the round of ``work`` started from (replaced, never mutated, since)."""
        return self._origins[work.round]

    def carry(self, progress: RoundProgress, model: Weights) -> list[str]:
        """The round closes while sites still work: their tasks carry over, with ``model``
        (the round's starting model) kept for them; the sites, in round order."""
        waiting = progress.waiting_for()
        for name in waiting:
            tasks = tuple(progress.assignments[name])
            self._work[name] = CarriedWork(progress.number, tasks, list(progress.pending[name]))
            progress.pending[name] = []
        if waiting:
            self._origins[progress.number] = model
        return waiting

    def done(self, collaborator: str, work: CarriedWork, task_name: str) -> None:
        """``task_name`` of ``work`` is in; the work ends with its last task."""
        work.pending.remove(task_name)
        if not work.pending:
            self.drop(collaborator)

    def drop(self, collaborator: str, round_number: int | None = None) -> bool:
        """Forget ``collaborator``'s carried-over work (only of ``round_number`` if given);
        whether there was any."""
        work = self._work.get(collaborator)
        if work is None or (round_number is not None and work.round != round_number):
            return False
        del self._work[collaborator]
        self._prune()
        return True

    def clear(self) -> None:
        """Training is over: no carried work will be used."""
        self._work.clear()
        self._origins.clear()

    def _prune(self) -> None:
        wanted = {work.round for work in self._work.values()}
        for number in [n for n in self._origins if n not in wanted]:
            del self._origins[number]
