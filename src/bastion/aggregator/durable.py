"""What the aggregator writes down and resumes from: the round engine's durable side.

The engine decides what happened; ``DurableRecord`` is the one place that writes it: the
checkpoint of each closed round (the model, the strategy's state and ``RoundState``), the
best model so far, and the summary ``bastion status`` reads. A restart resumes from what
was saved here, and ``saved_round`` names that round, so an error that stops the engine
can tell the operator exactly where it will resume.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from bastion.aggregator.records import RoundProgress
from bastion.aggregator.status import StatusFile
from bastion.plan import Plan
from bastion.storage.checkpoints import CheckpointStore, RoundState
from bastion.tensors import Weights


class DurableRecord:
    """The checkpoints, best model and status summary of one federation's aggregator."""

    def __init__(
        self, plan: Plan, store: CheckpointStore, state: RoundState, status: StatusFile
    ) -> None:
        self.plan = plan
        self.store = store
        self.state = state
        #: the last round whose checkpoint is whole on disk
        self.saved_round = state.round_completed
        #: ``save/state.json``; the engine records who has been in contact in it
        self._status = status

    def checkpoint(
        self, model: Weights, strategy_state: Weights, anchors: Mapping[str, str]
    ) -> str:
        """Save the round's checkpoint with what observers anchor in it; the file's SHA-256."""
        self.state.anchors = dict(anchors)
        digest = self.store.save_round(model, strategy_state, self.state)
        self.saved_round = self.state.round_completed
        return digest

    def consider_best(
        self, summary: Mapping[str, Mapping[str, float]], model: Weights, model_round: int
    ) -> bool:
        """Keep ``model`` as the best one if the plan's best-model metric in ``summary`` (the
        global validation of round r measures the model of round r-1) beats the best so far.
        A non-finite value never does."""
        task = self.plan.best_task()
        metric = self.plan.best_model.metric
        if task is None or metric not in summary.get(task, {}):
            return False
        value = summary[task][metric]
        if not math.isfinite(value):
            return False
        best = self.state.best_value
        better = best is None or (
            value > best if self.plan.best_model.mode == "max" else value < best
        )
        if better:
            self.state.best_value = value
            self.state.best_round = model_round
            self.store.save_best(model, model_round, value)
        return better

    def write_status(
        self,
        progress: RoundProgress | None,
        phase: str,
        observer_fields: Iterable[Mapping[str, object]] = (),
    ) -> None:
        """Write the summary ``bastion status`` shows: the round in progress (if any), the
        phase, the best model, and what each observer adds."""
        summary: dict[str, object] = {
            "plan": self.plan.name,
            "rounds": self.plan.rounds,
            "round_completed": self.state.round_completed,
            "current_round": progress.number if progress else None,
            "phase": phase,
            "final_evaluation": bool(progress and progress.final_evaluation),
            "finished": self.state.finished,
            "best": {
                "round": self.state.best_round,
                "value": self.state.best_value,
                "metric": self.plan.best_model.metric,
            },
            "assigned": sorted(progress.pending) if progress else [],
        }
        for fields in observer_fields:
            summary.update(fields)
        self._status.write(summary)
