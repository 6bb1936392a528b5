"""The model the aggregator sends to the sites, coded with one value codec (``downstream``).

The aggregator codes its exact global model afresh for each training round and keeps
the exact model; a site trains from the decoded model and sends its delta to *that*
model, which the aggregator adds to the exact one. So the downstream error never
accumulates over rounds (there is no residual to feed back), and any site can join any
round: nothing is kept per site on either side. The final evaluation gets the exact
model, so the federation's reported accuracy is the accuracy of the model it saves.

The payload describes itself, since a site does not know the model before receiving
it: next to each float tensor's coded parts goes ``<name>::layout``, an empty array of
shape ``(0, *shape)`` in the tensor's dtype, whose wire header carries both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from bastion.compression.errors import IncompatibleCompression
from bastion.compression.pipeline import RAW, SEPARATOR, Pipeline, build_stage
from bastion.compression.stages import Stage, StageKind
from bastion.errors import ProtocolError, UpdateRejected
from bastion.spec.compression import CompressionSpec, StageSpec
from bastion.tensors import Weights

LAYOUT = "layout"


def _is_float(array: np.ndarray) -> bool:
    return np.dtype(array.dtype).kind == "f"


class ModelCodec:
    """Codes a whole model with one value codec, and decodes it with no model at hand."""

    def __init__(self, stage: Stage) -> None:
        if stage.kind is not StageKind.VALUE_CODEC:
            raise IncompatibleCompression(
                f"{stage.name!r} is not a value codec: the model sent to the sites takes one"
            )
        self.pipeline = Pipeline([stage])

    @property
    def name(self) -> str:
        return self.pipeline.names[0]

    def encode(self, model: Mapping[str, np.ndarray], round_number: int) -> Weights:
        """The wire payload of ``model`` (float tensors coded, the rest as they are)."""
        payload: Weights = {}
        for name, array in model.items():  # layout first: the decoded model keeps the order
            if _is_float(array):
                payload[f"{name}{SEPARATOR}{LAYOUT}"] = np.empty((0, *array.shape), array.dtype)
            payload.update(self.pipeline.encode({name: array}, round_number))
        return payload

    def decode(self, payload: Mapping[str, np.ndarray], round_number: int) -> Weights:
        """The model a payload from the aggregator stands for, at each tensor's own dtype."""
        try:
            return self._decode(payload, round_number)
        except UpdateRejected as exc:
            raise ProtocolError(f"the model from the aggregator: {exc}") from None

    def _decode(self, payload: Mapping[str, np.ndarray], round_number: int) -> Weights:
        like = self._layout(payload)
        coded = {k: v for k, v in payload.items() if not k.endswith(SEPARATOR + LAYOUT)}
        self.pipeline.check_payload_names(coded, like)
        model: Weights = {}
        for name, reference in like.items():
            if not _is_float(reference):
                model[name] = self.pipeline.raw_tensor(coded, name, reference)
                continue
            out = np.empty(reference.shape, dtype=reference.dtype)
            flat = out.reshape(-1)
            for start, values in self.pipeline.delta_chunks(coded, name, reference, round_number):
                flat[start : start + values.size] = values
            model[name] = out
        return model

    @staticmethod
    def _layout(payload: Mapping[str, np.ndarray]) -> Weights:
        """Zero-memory stand-ins with each tensor's shape and dtype, in the payload's order."""
        like: Weights = {}
        for key, array in payload.items():
            name, _, part = key.rpartition(SEPARATOR)
            if part == RAW:
                like[name] = array
            elif part == LAYOUT:
                if array.ndim < 1 or array.shape[0] != 0 or not _is_float(array):
                    raise ProtocolError(f"the model from the aggregator: bad layout for {name!r}")
                like[name] = np.broadcast_to(np.zeros((), array.dtype), array.shape[1:])
        return like


def build_model_codec(spec: StageSpec) -> ModelCodec:
    """The codec of a plan's ``compression.downstream``."""
    return ModelCodec(build_stage(spec))


def codes_round(task_kinds: Iterable[str]) -> bool:
    """Whether a site's model is coded this round: when it trains; a round that only
    validates (the final evaluation) gets the exact model, whose accuracy is reported."""
    return "train" in task_kinds


class Downlink:
    """Both ends of the model's way down: ``payload`` on the aggregator (coded once per
    round, shared by every site) and ``receive`` on a site. Without a codec, both pass
    the model through."""

    def __init__(self, codec: ModelCodec | None = None) -> None:
        self.codec = codec
        # (round, its coded model): a round's model never changes, and keeping no reference
        # to the model itself lets the previous one go as soon as the engine replaces it.
        self._cached: tuple[int, Weights] | None = None

    @classmethod
    def for_spec(cls, spec: CompressionSpec | None) -> Downlink:
        """The downlink of a plan's ``compression`` section (plain without ``downstream``)."""
        if spec is None or spec.downstream is None:
            return cls()
        return cls(build_model_codec(spec.downstream))

    def payload(
        self, model: Mapping[str, np.ndarray], round_number: int, task_kinds: Iterable[str]
    ) -> Mapping[str, np.ndarray]:
        """What a site with these tasks downloads: the model, or its coding for the round
        (``model`` must be the round's model: the coding is kept per round number)."""
        if self.codec is None or not codes_round(task_kinds):
            return model
        if self._cached is None or self._cached[0] != round_number:
            self._cached = None  # the old coding goes before the new one is built
            self._cached = (round_number, self.codec.encode(model, round_number))
        return self._cached[1]

    def receive(self, payload: Weights, round_number: int, task_kinds: Iterable[str]) -> Weights:
        """The model a site trains from (``ProtocolError`` if the payload is malformed)."""
        if self.codec is None or not codes_round(task_kinds):
            return payload
        return self.codec.decode(payload, round_number)
