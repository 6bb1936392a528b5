"""Error feedback: the client keeps what compression dropped and adds it to the next delta.

Seide et al. 2014, "1-Bit Stochastic Gradient Descent and its Application to
Data-Parallel Distributed Training of Speech DNNs"; Karimireddy et al. 2019, "Error
Feedback Fixes SignSGD and other Gradient Compression Schemes". With memory e, the client
sends C(d + e) and keeps e <- (d + e) - decode(C(d + e)), so nothing is lost for good:
the sum of what was sent tracks the sum of the true deltas up to the last residual.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bastion.compression.errors import CompressionError
from bastion.compression.pipeline import Pipeline
from bastion.tensors import Weights


class ErrorFeedback:
    """A collaborator's compressor with memory; one per collaborator, kept across rounds."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.residual: Weights = {}

    def _corrected(self, delta: Mapping[str, np.ndarray]) -> Weights:
        corrected: Weights = {}
        for name, array in delta.items():
            if array.dtype.kind != "f":
                corrected[name] = array
                continue
            value = np.asarray(array, dtype=np.float64)
            memory = self.residual.get(name)
            if memory is not None and memory.shape != value.shape:
                raise CompressionError(
                    f"error-feedback memory for {name!r} has shape {memory.shape}, the delta "
                    f"{value.shape}: the model changed; call reset()"
                )
            corrected[name] = value if memory is None else value + memory
        return corrected

    def _remember(
        self, corrected: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray]
    ) -> None:
        self.residual = {
            name: value - sent[name] for name, value in corrected.items() if value.dtype.kind == "f"
        }

    def encode(self, delta: Mapping[str, np.ndarray], round_number: int) -> Weights:
        """The wire payload of ``delta`` plus the carried residual."""
        corrected = self._corrected(delta)
        # Encode at the delta's own width (float32 stays float32 on the wire).
        payload = self.pipeline.encode(
            {name: value.astype(delta[name].dtype) for name, value in corrected.items()},
            round_number,
        )
        self._remember(corrected, self.pipeline.decode(payload, delta, round_number))
        return payload

    def secure_aggregation_payload(
        self, delta: Mapping[str, np.ndarray], round_number: int
    ) -> Weights:
        """Like ``encode``, for the secure aggregation path (payloads summed under masks)."""
        corrected = self._corrected(delta)
        payload = self.pipeline.secure_aggregation_payload(corrected, round_number)
        self._remember(corrected, self.pipeline.decode_secure_sum(payload, corrected, round_number))
        return payload

    def reset(self) -> None:
        """Forget the residual (for example after the model's shape changed)."""
        self.residual = {}

    def state_dict(self) -> Weights:
        """The residual, to checkpoint with the collaborator's state."""
        return dict(self.residual)

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.residual = {name: np.asarray(value, dtype=np.float64) for name, value in state.items()}
