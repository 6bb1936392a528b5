"""Helpers for strategies that keep per-tensor server state (momentum, moments) across rounds.

State lives in float64 arrays named ``<slot>/<tensor>``; these helpers split a
checkpointed ``state_dict`` back into slots and check it against the model it resumes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bastion.algorithms.errors import AggregationError


def float_tensor_names(weights: Mapping[str, np.ndarray]) -> list[str]:
    """Names of floating-point tensors: the ones a server optimizer moves.

    Integer and boolean tensors (BatchNorm's ``num_batches_tracked``) are averaged
    instead, since a momentum or moment of a counter means nothing.
    """
    return [name for name, array in weights.items() if array.dtype.kind == "f"]


def split_state(
    strategy: str, state: Mapping[str, np.ndarray], slots: tuple[str, ...]
) -> dict[str, dict[str, np.ndarray]]:
    """Group ``<slot>/<tensor>`` arrays by slot (float64 copies); slots must share tensors."""
    grouped: dict[str, dict[str, np.ndarray]] = {slot: {} for slot in slots}
    for key, array in state.items():
        slot, _, tensor = key.partition("/")
        if slot not in grouped or not tensor:
            raise AggregationError(
                f"checkpointed state of strategy {strategy!r} has an unexpected entry {key!r}; "
                f"expected names starting with {', '.join(s + '/' for s in slots)}"
            )
        grouped[slot][tensor] = np.array(array, dtype=np.float64)
    names = [sorted(grouped[slot]) for slot in slots]
    if any(n != names[0] for n in names):
        raise AggregationError(
            f"checkpointed state of strategy {strategy!r} is incomplete: "
            f"{', '.join(slots)} do not cover the same tensors"
        )
    return grouped


def check_state_fits(
    strategy: str, state: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray]
) -> None:
    """Refuse state whose tensor names or shapes differ from the model's floating-point tensors."""
    expected = {n: tuple(weights[n].shape) for n in float_tensor_names(weights)}
    found = {n: tuple(a.shape) for n, a in state.items()}
    if expected != found:
        differing = sorted(set(expected) ^ set(found)) or sorted(
            n for n in expected if expected[n] != found[n]
        )
        raise AggregationError(
            f"saved state of strategy {strategy!r} does not match the model "
            f"(first differing tensors: {differing[:3]}); resume from the checkpoint that "
            "wrote it, or start the federation afresh"
        )
