"""Compressed training results on the wire: collaborators encode deltas, the aggregator decodes.

A collaborator sends ``pipeline.encode(local - global)`` (through error feedback when
the plan asks for it) instead of its model; the aggregator decodes the payload against
the round's global model and rebuilds ``global + delta`` at the model's dtypes, so
every strategy, central DP included, sees an ordinary update and validates it as such.
Non-float tensors (counters) are not deltas: they travel raw, as the model has them.
Decoding goes tensor by tensor, and chunk by chunk for the block quantizers, adding each
decoded piece to the model as it goes: besides the payload and the rebuilt update, the
aggregator holds at most one chunk (or, behind a sparsifier, one tensor) in float64.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bastion.compression.feedback import ErrorFeedback
from bastion.compression.pipeline import Pipeline, build_pipeline
from bastion.errors import UpdateRejected
from bastion.spec.compression import CompressionSpec
from bastion.tensors import Weights


def _is_float(array: np.ndarray) -> bool:
    return np.dtype(array.dtype).kind == "f"


class UpdateEncoder:
    """One collaborator's encoder; keep it across rounds (it holds the error-feedback residual)."""

    def __init__(self, spec: CompressionSpec) -> None:
        self.pipeline = build_pipeline(spec)
        self.feedback = ErrorFeedback(self.pipeline) if spec.error_feedback else None

    def encode(
        self, local: Mapping[str, np.ndarray], global_weights: Weights, round_number: int
    ) -> Weights:
        """The wire payload for the model ``local`` trained from ``global_weights``."""
        delta: Weights = {}
        for name, value in local.items():
            reference = global_weights.get(name)
            if _is_float(value) and reference is not None and reference.shape == value.shape:
                delta[name] = (value - reference).astype(value.dtype, copy=False)
            else:
                delta[name] = value
        if self.feedback is not None:
            return self.feedback.encode(delta, round_number)
        return self.pipeline.encode(delta, round_number)


def decode_update(
    pipeline: Pipeline,
    payload: Mapping[str, np.ndarray],
    global_weights: Weights,
    round_number: int,
) -> Weights:
    """The full model a compressed payload stands for; ``UpdateRejected`` if it is malformed."""
    pipeline.check_payload_names(payload, global_weights)
    model: Weights = {}
    for name, reference in global_weights.items():
        if not _is_float(reference):
            model[name] = pipeline.raw_tensor(payload, name, reference)
            continue
        out = np.empty(reference.shape, dtype=reference.dtype)
        flat, base = out.reshape(-1), reference.reshape(-1)
        for start, delta in pipeline.delta_chunks(payload, name, reference, round_number):
            stop = start + delta.size
            with np.errstate(over="ignore", invalid="ignore"):
                flat[start:stop] = base[start:stop].astype(np.float64) + delta
            if not np.isfinite(flat[start:stop]).all():
                raise UpdateRejected(f"compressed update for {name!r} overflows {reference.dtype}")
        model[name] = out
    return model
