"""Compression pipelines: encode an update delta on the client, decode it on the server.

Compress the *delta* (local model minus global), not the model: deltas are small and
sparse-friendly, and the server adds the decoded delta back to the global model. The
payload is an ordinary ``dict[str, ndarray]`` (keys ``"<tensor>::<part>"``), so it
travels with the normal tensor framing. Non-float tensors pass through as ``::raw``.

Which pipelines compose (``Pipeline`` refuses the rest):

- at most one sparsifier, first, then at most one value codec: coordinates are chosen
  from the exact values, and a value is coded once (float16 of 8-bit codes means nothing).
- with secure aggregation (``check_secure_aggregation``), the server never sees one
  client's payload, only the sum of masked ring vectors, so compression runs *before*
  masking and every client's vector must mean the same coordinates. ``RandomK`` (a
  pattern shared through a public seed) composes and shortens the masked vector.
  ``TopK`` does not: clients keep different coordinates, and vectors with different
  supports cannot be summed under masks. Value codecs (float16, bfloat16, 8-bit) compose
  as rounding applied on the client before masking; they save nothing on the wire,
  since secure aggregation sends its own fixed-point words (set their width with
  ``FixedPointQuantizer.bits`` instead). Block quantizers (``blockwise8``,
  ``blockwise4``, ``nf4``) are refused there: each client's blocks carry their own
  scales, which masked fixed-point sums cannot carry.

``delta_chunks`` decodes one tensor at a time, and a streaming codec (the block
quantizers) chunk by chunk, so the aggregator never holds a float64 copy of the model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from bastion.compression.errors import IncompatibleCompression
from bastion.compression.stages import (
    VALUES,
    BFloat16,
    BlockQuantizer,
    Blockwise4,
    Blockwise8,
    Float16,
    NormalFloat4,
    Parts,
    Quantize8,
    RandomK,
    Stage,
    StageContext,
    StageKind,
    StreamingCodec,
    TopK,
    with_size,
)
from bastion.errors import UpdateRejected
from bastion.spec.compression import (
    CompressionSpec,
    StageSpec,
    composition_problem,
    masking_problem,
)
from bastion.tensors import Weights, total_bytes

SEPARATOR = "::"
RAW = "raw"


def _is_float(array: np.ndarray) -> bool:
    return np.dtype(array.dtype).kind == "f"


class Pipeline:
    """An ordered, validated list of stages: an optional sparsifier, then an optional codec."""

    def __init__(self, stages: Sequence[Stage] = ()) -> None:
        self.stages = tuple(stages)
        for stage in self.stages:
            if not isinstance(stage, Stage):
                raise IncompatibleCompression(f"{stage!r} is not a compression stage")
        problem = composition_problem([(s.name, s.kind.value) for s in self.stages])
        if problem is not None:
            raise IncompatibleCompression(problem)
        sparsifiers = [s for s in self.stages if s.kind is StageKind.SPARSIFIER]
        codecs = [s for s in self.stages if s.kind is StageKind.VALUE_CODEC]
        self.sparsifier = sparsifiers[0] if sparsifiers else None
        self.codec = codecs[0] if codecs else None

    @property
    def names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    def _parts(self) -> list[str]:
        return [VALUES] + [part for stage in self.stages for part in stage.side_parts]

    def encode(self, tensors: Mapping[str, np.ndarray], round_number: int) -> Weights:
        """The wire payload of ``tensors`` (a delta) for ``round_number``."""
        payload: Weights = {}
        for name, array in tensors.items():
            if not _is_float(array):
                payload[f"{name}{SEPARATOR}{RAW}"] = np.asarray(array)
                continue
            context = StageContext(name, int(array.size), round_number)
            parts: Parts = {VALUES: np.asarray(array, dtype=np.float64).reshape(-1)}
            for stage in self.stages:
                parts = stage.encode(parts, context)
            if parts[VALUES].dtype == np.float64:  # uncoded values go back to their own width
                parts[VALUES] = parts[VALUES].astype(array.dtype)
            for part, value in parts.items():
                payload[f"{name}{SEPARATOR}{part}"] = value
        return payload

    def check_payload_names(
        self, payload: Mapping[str, np.ndarray], like: Mapping[str, np.ndarray]
    ) -> None:
        """Refuse a payload whose parts are not exactly those of tensors shaped like ``like``."""
        expected = {
            f"{name}{SEPARATOR}{part}"
            for name, array in like.items()
            for part in (self._parts() if _is_float(array) else [RAW])
        }
        if set(payload) != expected:
            extra, missing = sorted(set(payload) - expected), sorted(expected - set(payload))
            raise UpdateRejected(
                f"compressed update does not match pipeline {self.names}: "
                f"missing {missing[:3]}, unexpected {extra[:3]}"
            )

    def raw_tensor(
        self, payload: Mapping[str, np.ndarray], name: str, reference: np.ndarray
    ) -> np.ndarray:
        """A non-float tensor, sent as it is; checked against the model's shape."""
        raw = np.asarray(payload[f"{name}{SEPARATOR}{RAW}"])
        if raw.shape != reference.shape:
            raise UpdateRejected(
                f"tensor {name!r} has shape {raw.shape}, expected {reference.shape}"
            )
        return raw

    def delta_chunks(
        self,
        payload: Mapping[str, np.ndarray],
        name: str,
        reference: np.ndarray,
        round_number: int,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(offset, float64 values) of the float tensor ``name``, covering it once, in order.

        A streaming codec without a sparsifier yields chunks; otherwise one dense tensor.
        Each chunk is checked finite; the payload's names were checked before.
        """
        context = StageContext(name, int(reference.size), round_number)
        parts = {part: np.asarray(payload[f"{name}{SEPARATOR}{part}"]) for part in self._parts()}
        if self.sparsifier is None and isinstance(self.codec, StreamingCodec):
            chunks: Iterator[tuple[int, np.ndarray]] = self.codec.decode_chunks(parts, context)
        else:
            chunks = iter([(0, self._decode_dense(parts, context))])
        covered = 0
        for start, values in chunks:
            if start != covered or not np.isfinite(values).all():
                raise UpdateRejected(f"compressed tensor {name!r} decodes to non-finite values")
            covered += values.size
            yield start, values
        if covered != reference.size:
            raise UpdateRejected(
                f"compressed tensor {name!r} decodes to {covered} values "
                f"(expected {reference.size})"
            )

    def _decode_dense(self, parts: Parts, context: StageContext) -> np.ndarray:
        coded = with_size(context, self.coded_size(context.size))
        for stage in reversed(self.stages):
            parts = stage.decode(parts, coded if stage is self.codec else context)
        return np.asarray(parts[VALUES], dtype=np.float64).reshape(-1)

    def coded_size(self, size: int) -> int:
        """How many values the codec codes for a tensor of ``size`` (after the sparsifier)."""
        return size if self.sparsifier is None else self.sparsifier.coded_size(size)

    def decode(
        self, payload: Mapping[str, np.ndarray], like: Mapping[str, np.ndarray], round_number: int
    ) -> Weights:
        """Dense float64 tensors shaped like ``like`` from an untrusted payload."""
        self.check_payload_names(payload, like)
        out: Weights = {}
        for name, reference in like.items():
            if not _is_float(reference):
                out[name] = self.raw_tensor(payload, name, reference)
                continue
            values = np.empty(reference.size, dtype=np.float64)
            for start, chunk in self.delta_chunks(payload, name, reference, round_number):
                values[start : start + chunk.size] = chunk
            out[name] = values.reshape(reference.shape)
        return out

    # ------------------------------------------------------------------ secure aggregation

    def secure_aggregation_payload(
        self, tensors: Mapping[str, np.ndarray], round_number: int
    ) -> Weights:
        """What the client hands secure aggregation: float64 values on the shared coordinates.

        Value codecs are applied as rounding (encode, then decode on the client), and the
        sparsifier keeps the shared coordinates, so payloads of different clients add up.
        """
        check_secure_aggregation(self)
        out: Weights = {}
        for name, array in tensors.items():
            flat = np.asarray(array, dtype=np.float64).reshape(-1)
            if not _is_float(array):
                out[name] = flat
                continue
            context = StageContext(name, int(array.size), round_number)
            parts: Parts = {VALUES: flat}
            if self.sparsifier is not None:
                parts = self.sparsifier.encode(parts, context)
            if self.codec is not None:
                parts = self.codec.decode(self.codec.encode(parts, context), context)
            out[name] = parts[VALUES]
        return out

    def secure_aggregation_like(self, like: Mapping[str, np.ndarray]) -> Weights:
        """Zero arrays with the shapes of the secure aggregation payload (to size its vector)."""
        return self.secure_aggregation_payload(
            {n: np.zeros(a.shape, dtype=a.dtype) for n, a in like.items()}, round_number=0
        )

    def decode_secure_sum(
        self, summed: Mapping[str, np.ndarray], like: Mapping[str, np.ndarray], round_number: int
    ) -> Weights:
        """Dense float64 tensors from the (dequantized) sum of the clients' payloads."""
        check_secure_aggregation(self)
        out: Weights = {}
        for name, reference in like.items():
            values = np.asarray(summed[name], dtype=np.float64)
            if _is_float(reference) and self.sparsifier is not None:
                context = StageContext(name, int(reference.size), round_number)
                values = self.sparsifier.decode({VALUES: values}, context)[VALUES]
            out[name] = values.reshape(reference.shape)
        return out


def check_secure_aggregation(pipeline: Pipeline) -> None:
    """Refuse a pipeline whose clients' vectors could not be summed under masks."""
    if isinstance(pipeline.codec, BlockQuantizer):
        raise IncompatibleCompression(
            f"{pipeline.codec.name!r} scales each block of each client's update by its own "
            "factor, and secure aggregation can only sum words of one shared fixed-point "
            "field: drop it, or turn off secure aggregation"
        )
    sparsifier = pipeline.sparsifier
    problem = masking_problem(
        sparsifier.name if sparsifier else None,
        sparsifier.shared_pattern if sparsifier else True,
    )
    if problem is not None:
        raise IncompatibleCompression(problem)


def build_stage(spec: StageSpec) -> Stage:
    """The stage a plan's ``compression.stages`` entry names."""
    if spec.stage == "topk":
        assert spec.fraction is not None
        return TopK(spec.fraction)
    if spec.stage == "randomk":
        assert spec.fraction is not None
        return RandomK(spec.fraction, spec.seed)
    if spec.stage == "float16":
        return Float16()
    if spec.stage == "bfloat16":
        return BFloat16()
    blocks = {"blockwise8": Blockwise8, "blockwise4": Blockwise4, "nf4": NormalFloat4}
    if spec.stage in blocks:
        if spec.block_size is None:
            return blocks[spec.stage]()
        return blocks[spec.stage](block_size=spec.block_size)
    return Quantize8()


def build_pipeline(spec: CompressionSpec) -> Pipeline:
    """The validated pipeline of a plan's ``compression`` section."""
    return Pipeline([build_stage(stage) for stage in spec.stages])


def compression_ratio(
    payload: Mapping[str, np.ndarray], original: Mapping[str, np.ndarray]
) -> float:
    """Original bytes over payload bytes (higher is smaller on the wire)."""
    return total_bytes(original) / max(1, total_bytes(payload))
