"""The PyTorch adapter: federates a ``torch.nn.Module``'s state dict.

Parameters and buffers (BatchNorm statistics) travel as named NumPy arrays in the
module's own order; ``local_buffers=True`` keeps buffers on the site instead.
Training loops over NumPy shards in seeded mini-batches. ``optimizer_state: reset``
(the usual federated default) creates the optimizer afresh for every training task;
``keep`` keeps it, and its momentum, on the site across rounds. bfloat16 and float8
tensors travel as float32 and come back exact (``bastion.runners.wire_dtypes``).

Client-side regularizers (``task_runner.args``; a train task's ``args`` may override
the coefficients for that task):

- ``proximal_mu`` adds FedProx's (μ/2)‖w − w_global‖² to the loss (Li et al. 2020,
  "Federated Optimization in Heterogeneous Networks"), w_global being the round's model.
- ``fedcurv_lambda`` adds FedCurv's penalty λ Σ [w²(U − u_s) − 2w(V − v_s)] (Shoham et
  al. 2019; see ``bastion.algorithms.fedcurv``) and makes the model carry the
  ``fedcurv/u/*`` and ``fedcurv/v/*`` tensors: zeros in the initial model, then after
  each training the diagonal Fisher information u = F of the local training data and
  v = F ⊙ w. Use it with ``aggregation.strategy: fedcurv``. The Fisher terms travel in
  float32 for half-precision and float8 models (float64 for float64 ones).

The runner is the training core; the regularizers are objects beside it
(``bastion.runners.torch_regularizers``, FedCurv's tensors in ``torch_fedcurv``) and local
DP-SGD is its own trainer (``bastion.runners.torch_dp``).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bastion.data.types import DataShard
from bastion.errors import BastionError, MissingDependency, PlanError
from bastion.privacy.dp.local import LocalDPTrainer
from bastion.runners.base import TaskResult
from bastion.runners.options import optimizer_state_policy
from bastion.runners.torch_state import resolve_device, tensor_to_numpy
from bastion.tensors import Weights

try:
    import torch
    from torch import nn
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without torch
    raise MissingDependency("torch", "torch", "the PyTorch task runner") from exc

# These need torch.
from bastion.runners.torch_dp import DPSGDTrainer, private_round_steps  # noqa: E402
from bastion.runners.torch_fedcurv import FedCurvTerms  # noqa: E402
from bastion.runners.torch_fisher import fisher_diagonal  # noqa: E402
from bastion.runners.torch_regularizers import (  # noqa: E402
    CurvaturePenalty,
    ProximalTerm,
    Regularizer,
    coefficient,
    penalty_dtype,
)

log = logging.getLogger("bastion.runners.torch")

OptimizerFactory = Callable[[list[nn.Parameter], float], torch.optim.Optimizer]


def _default_optimizer(name: str, momentum: float, weight_decay: float) -> OptimizerFactory:
    def build(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        if name == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        if name == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        raise BastionError(
            f"task_runner.args.optimizer: unknown optimizer {name!r}; use sgd or adam"
        )

    return build


@dataclass
class TorchClientState:
    """What one simulated client keeps between its rounds when collaborators share a runner."""

    numpy_rng: dict[str, Any]
    torch_rng: torch.Tensor
    local_tensors: dict[str, torch.Tensor]
    fisher_terms: tuple[Weights, Weights] | None
    accepted_round: int | None
    current_round: int | None
    local_dp_history: list[tuple[float, float, int]] | None = None
    optimizer: dict[str, Any] | None = None


class TorchRunner:
    """A ``TaskRunner`` for classification models in PyTorch.

    It is ``RoundAware`` (FedCurv's own terms follow the rounds), ``KeepsClientState``
    (a simulation can share it among clients) and ``LocalPrivacy`` (DP-SGD through Opacus).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float = 0.01,
        optimizer: str = "sgd",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        loss_fn: nn.Module | None = None,
        optimizer_factory: OptimizerFactory | None = None,
        device: str = "auto",
        threads: int | None = None,
        local_buffers: bool = False,
        optimizer_state: str = "reset",
        seed: int = 0,
        proximal_mu: float = 0.0,
        fedcurv_lambda: float | None = None,
        fisher_samples: int | None = None,
    ) -> None:
        if threads:
            torch.set_num_threads(int(threads))
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.lr = lr
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()
        self._optimizer_factory = optimizer_factory or _default_optimizer(
            optimizer, momentum, weight_decay
        )
        self.optimizer_state = optimizer_state_policy(optimizer_state)
        self._optimizer: torch.optim.Optimizer | None = None
        buffers = {name for name, _ in model.named_buffers()}
        self._federated = [
            name for name in model.state_dict() if not (local_buffers and name in buffers)
        ]
        self._seed = seed
        self._generator = np.random.default_rng(seed)

        self.proximal_mu = coefficient(proximal_mu, "task_runner.args.proximal_mu")
        self.fedcurv_lambda = (
            None
            if fedcurv_lambda is None
            else coefficient(fedcurv_lambda, "task_runner.args.fedcurv_lambda")
        )
        if fisher_samples is not None and (
            isinstance(fisher_samples, bool) or not isinstance(fisher_samples, int)
        ):
            raise PlanError(
                f"key 'task_runner.args.fisher_samples': must be a whole number, got {fisher_samples!r}"
            )
        if fisher_samples is not None and fisher_samples < 1:
            raise PlanError(
                f"key 'task_runner.args.fisher_samples': must be at least 1, got {fisher_samples}"
            )
        self.fisher_samples = fisher_samples
        self._fedcurv = FedCurvTerms(model, self._federated, self.fedcurv_lambda is not None)
        self._regularizers: list[Regularizer] = []  # set for each training by prepare_penalty
        self._penalty_dtype = torch.float32
        self._initial_local = {
            name: tensor.detach().clone()
            for name, tensor in model.state_dict().items()
            if name not in self._federated
        }
        self._initial_torch_rng = torch.random.get_rng_state()
        self._dp_sgd: DPSGDTrainer | None = None  # set by enable_local_dp

    # ------------------------------------------------------------------ local DP

    @property
    def local_dp(self) -> LocalDPTrainer | None:
        """The DP-SGD accountant once ``enable_local_dp`` ran, else None."""
        return None if self._dp_sgd is None else self._dp_sgd.accountant

    def enable_local_dp(
        self,
        noise_multiplier: float,
        max_grad_norm: float,
        delta: float,
        secure_mode: bool = False,
        accountant: str = "rdp",
    ) -> None:
        """Train with DP-SGD through Opacus from now on (``differential_privacy.local``)."""
        if self.proximal_mu > 0 or self.fedcurv_lambda is not None:
            raise PlanError(
                "differential_privacy.local: DP-SGD clips per-example gradients of the data "
                "loss, so FedProx/FedCurv penalties would bypass its noise; remove "
                "task_runner.args.proximal_mu / fedcurv_lambda or local DP"
            )
        self._dp_sgd = DPSGDTrainer(
            LocalDPTrainer(
                noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm,
                delta=delta,
                secure_mode=secure_mode,
                accountant=accountant,
            )
        )

    def local_dp_steps(self, data: DataShard, **task_args: Any) -> tuple[float, int]:
        """(sample rate, DP-SGD steps) a train task with ``task_args`` will charge (local DP)."""
        return private_round_steps(data, **task_args)

    # ------------------------------------------------------------------ weights

    def get_weights(self) -> Weights:
        state = self.model.state_dict()
        weights = {name: tensor_to_numpy(name, state[name]) for name in self._federated}
        weights.update(self._fedcurv.carried())
        return weights

    def set_weights(self, weights: Weights) -> None:
        state = self.model.state_dict()
        slots = self._fedcurv.slots
        missing = [n for n in [*self._federated, *slots] if n not in weights]
        if missing:
            hint = (
                "; FedCurv needs the fedcurv/* tensors: initialize the plan with this runner"
                if any(n in slots for n in missing)
                else ""
            )
            raise BastionError(f"weights lack tensors {missing[:5]} of the model{hint}")
        for name in self._federated:
            target = state[name]
            value = torch.from_numpy(np.array(weights[name], copy=True))  # keeps 0-d tensors 0-d
            if tuple(value.shape) != tuple(target.shape):
                raise BastionError(
                    f"tensor {name!r}: shape {tuple(value.shape)}, model has {tuple(target.shape)}"
                )
            with torch.no_grad():
                target.copy_(value.to(dtype=target.dtype))
        self._fedcurv.load(weights)

    # ------------------------------------------------------------------ tasks

    def train(
        self,
        data: DataShard,
        epochs: int = 1,
        batch_size: int = 32,
        lr: float | None = None,
        max_batches: int | None = None,
        proximal_mu: float | None = None,
        fedcurv_lambda: float | None = None,
        **_: Any,
    ) -> TaskResult:
        """Local epochs of mini-batch training; metrics: loss and accuracy on the batches seen.

        ``loss`` is the data loss alone; with FedProx, ``proximal_term`` is (μ/2)‖w − w_global‖²
        at the end of training.
        """
        mu = (
            self.proximal_mu
            if proximal_mu is None
            else coefficient(proximal_mu, "tasks.args.proximal_mu")
        )
        lam = (
            self.fedcurv_lambda
            if fedcurv_lambda is None
            else coefficient(fedcurv_lambda, "tasks.args.fedcurv_lambda")
        )
        if self._dp_sgd is not None:
            if mu > 0 or lam:
                raise PlanError(
                    "tasks.args: proximal_mu / fedcurv_lambda cannot run under "
                    "differential_privacy.local (DP-SGD would not noise the penalty)"
                )
            optimizer = self._optimizer_factory(list(self.model.parameters()), lr or self.lr)
            return self._dp_sgd.train(
                self.model,
                self.loss_fn,
                self.device,
                data,
                optimizer,
                epochs,
                batch_size,
                max_batches,
            )
        self.prepare_penalty(proximal_mu=mu, fedcurv_lambda=lam)
        self.model.train()
        optimizer = self._optimizer_for_task(lr or self.lr)
        x_all = torch.from_numpy(np.ascontiguousarray(data.x_train))
        y_all = torch.from_numpy(np.ascontiguousarray(data.y_train)).long()
        total_loss, correct, seen, batches = 0.0, 0, 0, 0
        for _epoch in range(int(epochs)):
            order = torch.from_numpy(self._generator.permutation(len(y_all)))
            for start in range(0, len(order), int(batch_size)):
                if max_batches is not None and batches >= max_batches:
                    break
                index = order[start : start + int(batch_size)]
                x = x_all[index].to(self.device)
                y = y_all[index].to(self.device)
                optimizer.zero_grad(set_to_none=True)
                logits = self.model(x)
                data_loss = self.loss_fn(logits, y)
                (data_loss + self.penalty() if self._regularizers else data_loss).backward()
                optimizer.step()
                total_loss += float(data_loss.detach()) * len(y)
                correct += int((logits.argmax(dim=1) == y).sum())
                seen += len(y)
                batches += 1
        if seen and not math.isfinite(total_loss):
            raise BastionError("training diverged (loss is not finite); lower the learning rate")
        metrics = {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1)}
        for regularizer in self._regularizers:
            metrics.update(regularizer.metrics(self.model))
        if self._fedcurv.slots:
            self._fedcurv.learn(self.model, self.fisher_diagonal(data.x_train, data.y_train))
        # Example count is the shard size, the weight FedAvg uses (n_k in McMahan et al.).
        return TaskResult(data.train_count, metrics)

    def _optimizer_for_task(self, lr: float) -> torch.optim.Optimizer:
        """A fresh optimizer (``reset``), or the site's previous one at this task's lr (``keep``)."""
        if self._optimizer is None or self.optimizer_state == "reset":
            self._optimizer = self._optimizer_factory(list(self.model.parameters()), lr)
        else:
            for group in self._optimizer.param_groups:
                group["lr"] = lr
        return self._optimizer

    @torch.no_grad()
    def validate(self, data: DataShard, batch_size: int = 512, **_: Any) -> TaskResult:
        self.model.eval()
        x_all = torch.from_numpy(np.ascontiguousarray(data.x_valid))
        y_all = torch.from_numpy(np.ascontiguousarray(data.y_valid)).long()
        total_loss, correct = 0.0, 0
        for start in range(0, len(y_all), int(batch_size)):
            x = x_all[start : start + int(batch_size)].to(self.device)
            y = y_all[start : start + int(batch_size)].to(self.device)
            logits = self.model(x)
            total_loss += float(self.loss_fn(logits, y)) * len(y)
            correct += int((logits.argmax(dim=1) == y).sum())
        count = len(y_all)
        return TaskResult(
            count, {"loss": total_loss / max(count, 1), "accuracy": correct / max(count, 1)}
        )

    # ------------------------------------------------------------------ regularizers

    def prepare_penalty(
        self, proximal_mu: float = 0.0, fedcurv_lambda: float | None = None
    ) -> None:
        """Anchor the regularizers at the weights loaded now: the round's global model."""
        regularizers: list[Regularizer] = []
        if proximal_mu > 0:
            regularizers.append(ProximalTerm(proximal_mu, self.device))
        if fedcurv_lambda is not None and fedcurv_lambda > 0:
            if not self._fedcurv.slots:
                raise PlanError(
                    "key 'tasks.args.fedcurv_lambda': FedCurv needs a model that carries the "
                    "fedcurv/* tensors; set task_runner.args.fedcurv_lambda instead"
                )
            regularizers.append(CurvaturePenalty(fedcurv_lambda, self._fedcurv, self.device))
        for regularizer in regularizers:
            regularizer.prepare(self.model)
        self._regularizers = regularizers
        self._penalty_dtype = penalty_dtype(self.model)

    def penalty(self) -> torch.Tensor:
        """The regularizers' loss term for the current weights: FedProx plus FedCurv, else zero."""
        total = torch.zeros((), device=self.device, dtype=self._penalty_dtype)
        for regularizer in self._regularizers:
            total = total + regularizer.penalty(self.model)
        return total

    def fisher_diagonal(self, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """FedCurv's empirical Fisher diagonal of the curved parameters on (x, y)."""
        return fisher_diagonal(
            self.model, self.loss_fn, self._fedcurv.curved, x, y, self.device, self.fisher_samples
        )

    # ------------------------------------------------------------------ round hooks

    def begin_round(self, round_number: int) -> None:
        """Called by the collaborator loop before the round's model is loaded."""
        self._fedcurv.current_round = round_number

    def update_accepted(self, round_number: int) -> None:
        """The aggregator accepted this round's update: its Fisher terms are in the next sums."""
        self._fedcurv.accepted_round = round_number

    # ------------------------------------------------------------------ simulated clients

    def client_state(self) -> TorchClientState:
        """This client's own state, so an in-process simulation can share one runner."""
        state = self.model.state_dict()
        accountant = self.local_dp
        return TorchClientState(
            numpy_rng=dict(self._generator.bit_generator.state),
            torch_rng=torch.random.get_rng_state(),
            local_tensors={n: state[n].detach().clone() for n in self._initial_local},
            fisher_terms=self._fedcurv.own,
            accepted_round=self._fedcurv.accepted_round,
            current_round=self._fedcurv.current_round,
            local_dp_history=accountant.history() if accountant is not None else None,
            optimizer=(
                copy.deepcopy(self._optimizer.state_dict())
                if self.optimizer_state == "keep" and self._optimizer is not None
                else None
            ),
        )

    def load_client_state(self, state: object | None) -> None:
        """Become the client ``state`` describes; None is a client that has not run yet."""
        if state is None:
            state = TorchClientState(
                numpy_rng=dict(np.random.default_rng(self._seed).bit_generator.state),
                torch_rng=self._initial_torch_rng,
                local_tensors=self._initial_local,
                fisher_terms=None,
                accepted_round=None,
                current_round=None,
            )
        if not isinstance(state, TorchClientState):
            raise TypeError(f"expected a TorchClientState, got {type(state).__name__}")
        self._generator.bit_generator.state = state.numpy_rng
        torch.random.set_rng_state(state.torch_rng)
        current = self.model.state_dict()
        with torch.no_grad():
            for name, tensor in state.local_tensors.items():
                current[name].copy_(tensor)
        self._fedcurv.own = state.fisher_terms
        self._fedcurv.accepted_round = state.accepted_round
        self._fedcurv.current_round = state.current_round
        accountant = self.local_dp
        if accountant is not None:  # each simulated client has its own privacy spend
            accountant.load_history(state.local_dp_history or [])
        self._optimizer = None
        if state.optimizer is not None:
            self._optimizer = self._optimizer_factory(list(self.model.parameters()), self.lr)
            self._optimizer.load_state_dict(copy.deepcopy(state.optimizer))
