"""Buffered asynchronous aggregation (FedBuff, Nguyen et al. 2022) as a round protocol.

Each engine round is one model version: it closes as soon as K = ``buffer_size`` training
updates are buffered, while the other sites keep training; their work carries over and
is folded into whichever later version is open when it arrives, weighted by the
staleness s(τ) of the version it started from (``bastion.algorithms.staleness``) and
translated onto the current model (``bastion.algorithms.fedbuff``). The plan's strategy
(FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad) makes the server step.
"""

from __future__ import annotations

from bastion.aggregator.events import ProtocolReported, RoundEvent
from bastion.aggregator.round_protocol import RoundContext
from bastion.algorithms.base import Strategy
from bastion.algorithms.fedbuff import translated_update
from bastion.algorithms.staleness import StalenessFunction, staleness_function
from bastion.spec.asynchronous import AsynchronousSpec
from bastion.spec.tasks import TaskSpec
from bastion.tensors import Weights

#: The metrics-log record each version writes (``logs/metrics.jsonl``).
RECORD = "buffered_version"


class BufferedRound:
    """One version of a FedBuff federation: buffer K updates, then the server step."""

    def __init__(self, context: RoundContext, spec: AsynchronousSpec) -> None:
        self._spec = spec
        self._weight: StalenessFunction = staleness_function(spec.staleness)
        self._strategy: Strategy = context.strategy
        self._model = context.model
        self._number = context.progress.number
        self._final = context.progress.final_evaluation
        self._publish = context.publish
        self._staleness: list[int] = []
        self._weights: list[float] = []

    # -------------------------------------------------------------- RoundProtocol

    def refusal(self, collaborator: str, task: TaskSpec) -> str | None:
        return None

    def on_result(
        self, collaborator: str, task: TaskSpec, example_count: int, weights: Weights | None
    ) -> None:
        if task.kind == "train":
            assert weights is not None
            self._fold(collaborator, weights, self._model, 0)

    def exclude(self, collaborator: str, reason: str) -> None:
        return None

    def is_settled(self) -> bool:
        return self._final or len(self._staleness) >= self._spec.buffer_size

    def blocks_timeout(self) -> bool:
        return False

    def closes_late_round(self) -> bool:
        return False

    def close(self, summary: dict[str, dict[str, float]]) -> None:
        if not self._final:  # the final evaluation publishes no version
            self._publish(self._report(len(self._staleness)))

    # -------------------------------------------------------------- OverlappingRound

    def admits(self, busy: int) -> bool:
        cap = self._spec.max_concurrency
        return cap is None or busy < cap

    def carried_refusal(self, collaborator: str, task: TaskSpec, origin: int) -> str | None:
        tau = self._number - origin
        if tau > self._spec.max_staleness:
            return (
                f"{collaborator}'s {task.name} result started from the model of round {origin}, "
                f"{tau} versions before the current round {self._number}; "
                f"asynchronous.max_staleness is {self._spec.max_staleness}, so it is not used "
                "(the site gets the latest model with its next task)"
            )
        return None

    def on_carried_result(
        self,
        collaborator: str,
        task: TaskSpec,
        example_count: int,
        weights: Weights | None,
        origin: int,
        origin_model: Weights,
    ) -> None:
        if task.kind == "train":
            assert weights is not None
            self._fold(collaborator, weights, origin_model, self._number - origin)

    # -------------------------------------------------------------- the buffer

    def _fold(self, collaborator: str, local: Weights, start: Weights, tau: int) -> None:
        """Add s(τ) Δ_k to the buffer, as y' = w^t + η_g s(τ) (y_k - w^τ) with weight 1."""
        weight = self._weight(tau)
        scale = self._spec.server_learning_rate * weight
        self._strategy.accumulate(
            collaborator, translated_update(self._model, start, local, scale), 1.0
        )
        self._staleness.append(tau)
        self._weights.append(weight)

    def _report(self, count: int) -> RoundEvent:
        return ProtocolReported(
            self._number,
            RECORD,
            {
                "round": self._number,
                "version": self._number,
                "buffered": count,
                "buffer_size": self._spec.buffer_size,
                "staleness": list(self._staleness),
                "staleness_weights": [round(w, 6) for w in self._weights],
                "max_staleness_seen": max(self._staleness, default=0),
            },
        )


class BufferedRounds:
    """The protocol factory for a plan's ``asynchronous`` section."""

    def __init__(self, spec: AsynchronousSpec) -> None:
        self.spec = spec

    def __call__(self, context: RoundContext) -> BufferedRound:
        return BufferedRound(context, self.spec)
