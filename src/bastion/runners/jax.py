"""The JAX adapter: a model is a pytree of parameters and a pure ``apply`` function.

Leaves are named by their path in the pytree (``params.dense1.w``), in
``jax.tree_util`` flattening order, which is stable for dicts (sorted keys), lists and
registered nodes, so Flax and Equinox parameter trees work unchanged. An optional
``state`` pytree holds non-trainable statistics (BatchNorm); the plan federates it or
keeps it local. Optimizers follow optax's ``init``/``update`` protocol, so any optax
optimizer works; ``MomentumSGD`` is built in so that optax is not required.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from bastion.data.types import DataShard
from bastion.errors import BastionError, MissingDependency
from bastion.runners.base import TaskResult
from bastion.runners.checks import check_incoming
from bastion.runners.options import TensorSelection, optimizer_state_policy
from bastion.runners.wire_dtypes import to_wire
from bastion.spec.names import repeated
from bastion.tensors import Weights

try:
    import jax
    import jax.numpy as jnp
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without jax
    raise MissingDependency("jax", "jax", "the JAX task runner") from exc

PyTree = Any
ApplyFn = Callable[..., Any]
"""``apply(params, x) -> logits``, or with state ``apply(params, state, x, train) -> (logits, state)``."""


class GradientTransformation(Protocol):
    """optax's optimizer protocol."""

    def init(self, params: PyTree) -> PyTree: ...

    def update(
        self, updates: PyTree, state: PyTree, params: PyTree | None = None
    ) -> tuple[PyTree, PyTree]: ...


@dataclass(frozen=True)
class MomentumSGD:
    """SGD with heavy-ball momentum (Polyak 1964), as an optax-style transformation."""

    learning_rate: float
    momentum: float = 0.0

    def init(self, params: PyTree) -> PyTree:
        return jax.tree_util.tree_map(jnp.zeros_like, params)

    def update(
        self, updates: PyTree, state: PyTree, params: PyTree | None = None
    ) -> tuple[PyTree, PyTree]:
        velocity = jax.tree_util.tree_map(lambda v, g: self.momentum * v + g, state, updates)
        steps = jax.tree_util.tree_map(
            lambda v: (-self.learning_rate * v).astype(v.dtype), velocity
        )
        return steps, velocity


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of integer labels, computed in float32 whatever the logits' dtype."""
    log_probabilities = jax.nn.log_softmax(logits.astype(jnp.float32))
    picked = jnp.take_along_axis(log_probabilities, labels[:, None], axis=1)
    return -jnp.mean(picked)


def leaf_name(path: Sequence[Any]) -> str:
    """``('params', 'dense1', 'w')`` for dict keys, list indices and attribute names alike."""
    parts = []
    for key in path:
        for attribute in ("key", "idx", "name"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return ".".join(parts)


def flatten(tree: PyTree) -> tuple[dict[str, jax.Array], Any]:
    """Named leaves in flattening order, and the tree structure to rebuild from them."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    named = {leaf_name(path): leaf for path, leaf in leaves}
    if len(named) != len(leaves):
        names = [leaf_name(path) for path, _ in leaves]
        shared = repeated(names)
        raise BastionError(f"pytree leaves share the names {shared[:5]}; rename the keys")
    return named, treedef


def resolve_device(device: str) -> jax.Device:
    """``auto`` is JAX's default device (a GPU when jaxlib has CUDA and sees one), else
    ``cpu`` or ``cuda[:N]``/``gpu[:N]``."""
    if device == "auto":
        return jax.devices()[0]
    kind, _, index = device.partition(":")
    platform = "gpu" if kind in ("cuda", "gpu") else kind
    try:
        return jax.devices(platform)[int(index or 0)]
    except (RuntimeError, IndexError, ValueError):
        raise BastionError(
            f"task_runner.args.device: JAX has no device {device!r} here "
            f"(it sees {', '.join(str(d) for d in jax.devices())}); use auto or cpu"
        ) from None


class JaxRunner:
    """A ``TaskRunner`` for classifiers written as JAX pytrees and pure functions."""

    def __init__(
        self,
        params: PyTree,
        apply_fn: ApplyFn,
        *,
        state: PyTree | None = None,
        loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = softmax_cross_entropy,
        optimizer: GradientTransformation | None = None,
        lr: float = 0.1,
        momentum: float = 0.9,
        federate: str | Sequence[str] = ("*",),
        keep_local: str | Sequence[str] = (),
        local_buffers: bool = False,
        optimizer_state: str = "reset",
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        self.device = resolve_device(device)
        tree = {"params": params, "state": state if state is not None else {}}
        self._tree = jax.device_put(tree, self.device)
        leaves, self._treedef = flatten(self._tree)
        self._dtypes = {name: leaf.dtype for name, leaf in leaves.items()}
        selection = TensorSelection.from_args(federate, keep_local, local_buffers)
        buffers = [name for name in leaves if name.startswith("state.")]
        self.names = selection.choose(list(leaves), buffers)
        self.shapes = {name: tuple(leaves[name].shape) for name in self.names}
        self.optimizer: GradientTransformation = optimizer or MomentumSGD(lr, momentum)
        self.optimizer_state = optimizer_state_policy(optimizer_state)
        self._opt_state: PyTree | None = None
        self._rng = np.random.default_rng(seed)
        stateful = state is not None
        self._train_step = jax.jit(_make_train_step(apply_fn, loss_fn, self.optimizer, stateful))
        self._evaluate = jax.jit(_make_evaluate(apply_fn, loss_fn, stateful))

    @property
    def params(self) -> PyTree:
        return self._tree["params"]

    @property
    def state(self) -> PyTree:
        return self._tree["state"]

    # ------------------------------------------------------------------ weights

    def get_weights(self) -> Weights:
        leaves, _ = flatten(self._tree)
        return {name: to_wire(name, np.array(leaves[name], copy=True)) for name in self.names}

    def set_weights(self, weights: Weights) -> None:
        check_incoming(weights, self.shapes)
        leaves, _ = flatten(self._tree)
        for name in self.names:
            value = jnp.asarray(np.asarray(weights[name]), dtype=self._dtypes[name])
            leaves[name] = jax.device_put(value, self.device)
        self._tree = jax.tree_util.tree_unflatten(self._treedef, list(leaves.values()))

    # ------------------------------------------------------------------ tasks

    def train(
        self,
        data: DataShard,
        epochs: int = 1,
        batch_size: int = 32,
        max_batches: int | None = None,
        **_: Any,
    ) -> TaskResult:
        """Local epochs of mini-batch training on seeded shuffles of the shard."""
        params, state = self.params, self.state
        if self._opt_state is None or self.optimizer_state == "reset":
            self._opt_state = self.optimizer.init(params)
        opt_state = self._opt_state
        total_loss, correct, seen, batches = 0.0, 0, 0, 0
        for _epoch in range(int(epochs)):
            order = self._rng.permutation(data.train_count)
            for start in range(0, len(order), int(batch_size)):
                if max_batches is not None and batches >= max_batches:
                    break
                index = order[start : start + int(batch_size)]
                x = jax.device_put(data.x_train[index], self.device)
                y = jax.device_put(data.y_train[index], self.device)
                params, state, opt_state, loss, hits = self._train_step(
                    params, state, opt_state, x, y
                )
                total_loss += float(loss) * len(index)
                correct += int(hits)
                seen += len(index)
                batches += 1
        if seen and not math.isfinite(total_loss):
            raise BastionError("training diverged (loss is not finite); lower the learning rate")
        self._tree = {"params": params, "state": state}
        self._opt_state = opt_state
        metrics = {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1)}
        return TaskResult(data.train_count, metrics)

    def validate(self, data: DataShard, batch_size: int = 1000, **_: Any) -> TaskResult:
        total_loss, correct = 0.0, 0
        for start in range(0, data.valid_count, int(batch_size)):
            x = jax.device_put(data.x_valid[start : start + int(batch_size)], self.device)
            y = jax.device_put(data.y_valid[start : start + int(batch_size)], self.device)
            loss, hits = self._evaluate(self.params, self.state, x, y)
            total_loss += float(loss) * len(y)
            correct += int(hits)
        count = data.valid_count
        metrics = {"loss": total_loss / max(count, 1), "accuracy": correct / max(count, 1)}
        return TaskResult(count, metrics)


def _forward(apply_fn: ApplyFn, stateful: bool) -> Callable[..., tuple[jax.Array, PyTree]]:
    def forward(params: PyTree, state: PyTree, x: jax.Array, train: bool) -> tuple[Any, PyTree]:
        if stateful:
            logits, new_state = apply_fn(params, state, x, train)
            return logits, new_state
        return apply_fn(params, x), state

    return forward


def _make_train_step(
    apply_fn: ApplyFn,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array],
    optimizer: GradientTransformation,
    stateful: bool,
) -> Callable[..., Any]:
    forward = _forward(apply_fn, stateful)

    def step(params: PyTree, state: PyTree, opt_state: PyTree, x: jax.Array, y: jax.Array) -> Any:
        def objective(p: PyTree) -> tuple[jax.Array, tuple[jax.Array, PyTree]]:
            logits, new_state = forward(p, state, x, True)
            return loss_fn(logits, y), (logits, new_state)

        (loss, (logits, new_state)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = jax.tree_util.tree_map(lambda p, u: (p + u).astype(p.dtype), params, updates)
        hits = jnp.sum(jnp.argmax(logits, axis=1) == y)
        return params, new_state, opt_state, loss, hits

    return step


def _make_evaluate(
    apply_fn: ApplyFn, loss_fn: Callable[[jax.Array, jax.Array], jax.Array], stateful: bool
) -> Callable[..., Any]:
    forward = _forward(apply_fn, stateful)

    def evaluate(params: PyTree, state: PyTree, x: jax.Array, y: jax.Array) -> Any:
        logits, _ = forward(params, state, x, False)
        return loss_fn(logits, y), jnp.sum(jnp.argmax(logits, axis=1) == y)

    return evaluate
