"""Streaming intake: a training result is folded into the strategy chunk by chunk as its
frames arrive, never assembled into a whole update, with every check the whole-update
path makes.

For strategies whose ``accumulate`` is a sum of folds (``FoldsChunks``: FedAvg and the
FedOpt family) on plain streaming rounds without compression, the aggregator holds the
global model and one accumulator whatever the number of collaborators or concurrent
uploads: O(model), not O(uploads x model).

The frames pass the same reader as the whole-update path (``framing.FrameAssembler``:
order, headers against the model's specs, size limit) and the same content checks, made
incrementally: finiteness per chunk, the squared L2 distance to the global model summed
per chunk for ``InfluenceBounds`` to judge at the end, the update's digest hashed per
chunk.

A result can be refused after some of its chunks were folded (a later chunk is not
finite, the stream breaks, the round closes). Each chunk is also written to the
upload's own copy (its per-update scratch: in memory for small models, an unlinked spill
file for larger ones, handed to a later upload when it is done: ``aggregator.upload_copies``),
from which a refused upload's folded chunks are read back and subtracted: the same float
operations with the weight negated. Subtracting is only as exact as the values are
small next to the sum, so an upload folds live only while its distance to the global
model stays within the norm bound (``fold_guard``); past it, what it folded is taken
back and it is *deferred*: its chunks only go to its copy, and if it is accepted
(clipped onto the bound, or no bound is set) it is folded from the copy at the end. A
hostile update of huge values therefore never enters the sum before it is judged.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import blake3
import numpy as np

from bastion.aggregator.influence import InfluenceBounds, clipped, l2_norm
from bastion.aggregator.upload_copies import IN_MEMORY_UP_TO_BYTES, UploadCopies, UploadCopy
from bastion.algorithms.base import FoldsChunks
from bastion.errors import UpdateRejected
from bastion.framing import Frame, FrameAssembler
from bastion.tensors import (
    WIRE_DTYPES,
    Scratch,
    TensorSpec,
    Weights,
    all_finite,
    digest_header,
    hash_values,
    squared_distance64,
    tensor_hasher,
)

#: Elements per step of the per-chunk checks: each upload streaming in holds one float64
#: block of them (512 KiB), however large its chunks.
CHECK_ELEMENTS = 1 << 16

ValuesSink = Callable[[str, int, np.ndarray], None]


class ChunkReader(FrameAssembler):
    """The whole-update reader's checks, handing each tensor's element-aligned chunks to a
    sink instead of a buffer: nothing model-sized is allocated."""

    _RECEIVED = np.empty(0, np.uint8)

    def __init__(
        self,
        max_total_bytes: int,
        expected: Sequence[TensorSpec],
        on_tensor: Callable[[str, str, tuple[int, ...]], None],
        on_values: ValuesSink,
    ) -> None:
        super().__init__(max_total_bytes, expected=expected)
        self._on_tensor = on_tensor
        self._on_values = on_values
        self._dtype = np.dtype(np.uint8)
        self._carry = b""  # the bytes of an element split across two chunks

    def received(self) -> set[str]:
        """Names of the tensors whose bytes all arrived."""
        return set(self._weights)

    def _allocate(
        self, name: str, dtype: np.dtype, shape: tuple[int, ...], nbytes: int
    ) -> np.ndarray | None:
        self._dtype, self._carry = dtype, b""
        self._on_tensor(name, dtype.name, shape)
        return None

    def _write(self, buffer: np.ndarray | None, start: int, data: bytes | memoryview) -> None:
        assert self._current is not None
        if self._carry:
            start -= len(self._carry)
            data = self._carry + bytes(data)
        itemsize = self._dtype.itemsize
        usable = len(data) - len(data) % itemsize
        self._carry = bytes(data[usable:])
        if usable:
            values = np.frombuffer(data, dtype=self._dtype, count=usable // itemsize)
            self._on_values(self._current[0], start // itemsize, values)

    def _store(
        self, name: str, dtype: np.dtype, shape: tuple[int, ...], buffer: np.ndarray | None
    ) -> None:
        self._weights[name] = self._RECEIVED


#: With no norm bound in the plan, an upload still folds live only within this multiple
#: of the global model's norm (past it, it is folded from its copy once accepted).
FOLD_GUARD_RATIO = 1000.0


def fold_guard(limit: float | None, model_norm: float) -> float:
    """The distance from the global model (of L2 norm ``model_norm``) within which an
    upload folds as it streams."""
    if limit is not None:
        return limit
    return FOLD_GUARD_RATIO * max(model_norm, 1.0)


@dataclass
class Upload:
    """One result as it streams in: its chunks in its own copy, how many of them are
    folded, its distance to the global model, its digest.

    ``mode``: ``live`` (folds as it arrives), ``deferred`` (past the fold guard: copied
    only, folded at the end if accepted), ``dead`` (refused or its round is over: only
    read), ``committed``.
    """

    collaborator: str
    weight: float
    generation: int
    copy: UploadCopy
    mode: str = "live"
    #: (name, dtype, shape) of each tensor in arrival order
    tensors: list[tuple[str, str, tuple[int, ...]]] = field(default_factory=list)
    #: (tensor, first element, element count, offset in the copy) of every copied chunk
    chunks: list[tuple[str, int, int, int]] = field(default_factory=list)
    #: how many of ``chunks`` (from the first) are folded into the strategy
    folded: int = 0
    copied: int = 0
    distance_squared: float = 0.0
    not_finite: list[str] = field(default_factory=list)
    hasher: blake3.blake3 = field(default_factory=tensor_hasher)
    #: the per-chunk checks' temporary block (uploads are checked on their own threads)
    scratch: Scratch = field(default_factory=Scratch)

    @property
    def digest(self) -> str:
        """``tensors.weights_digest`` of the update as it was folded."""
        return self.hasher.hexdigest()

    def copy_values(self, values: np.ndarray) -> int:
        """Append ``values`` to the upload's copy; their offset there."""
        offset = self.copied
        self.copy.write_at(offset, values.data)
        self.copied += values.nbytes
        return offset

    def read_back(self, dtype: np.dtype, offset: int, count: int) -> np.ndarray:
        """A chunk's values from the copy (positional: safe beside appends)."""
        return np.frombuffer(self.copy.read_at(offset, count * dtype.itemsize), dtype=dtype)

    def rewrite(self, offset: int, values: np.ndarray) -> None:
        """Replace a chunk's values in the copy (clipped ones, for a later take-back)."""
        self.copy.write_at(offset, values.data)

    def close(self) -> None:
        """Done with the copy: it goes back to the pool for a later upload (once: two
        uploads must never share a copy)."""
        self.copy.close()


class StreamingIntake:
    """Folds streamed training results into a ``FoldsChunks`` strategy; one per aggregator.

    The engine calls ``begin_round`` and ``close`` under its lock; uploads call ``receive``
    from transport threads, then the engine commits or takes them back under its lock.
    """

    def __init__(
        self,
        strategy: FoldsChunks,
        spec: Sequence[TensorSpec],
        bounds: InfluenceBounds,
        concurrent_uploads: int = 2,
        in_memory_up_to: int = IN_MEMORY_UP_TO_BYTES,
    ) -> None:
        """``in_memory_up_to``: uploads of at most this many bytes keep their copies in
        memory, larger ones on disk (``aggregator.upload_copies``)."""
        self._strategy = strategy
        self._copies = UploadCopies(keep=concurrent_uploads, in_memory_up_to=in_memory_up_to)
        self._spec = list(spec)
        self._value_bytes = sum(s.nbytes for s in self._spec)
        self._dtypes = {s.name: WIRE_DTYPES[s.dtype] for s in spec}
        self._bounds = bounds
        self._lock = threading.Lock()
        self._model: Weights = {}
        self._limit: float | None = None
        self._guard = 0.0
        self._generation = 0
        self._open = False
        self._in_flight: list[Upload] = []

    # ------------------------------------------------------------ the round's life

    def begin_round(self, model: Weights, round_number: int, norm: float | None = None) -> None:
        """Start the strategy's round; uploads of an earlier round can no longer fold.
        ``norm``: the model's L2 norm where the caller knows it (else a pass computes it)."""
        if norm is None:
            norm = l2_norm(model)  # a pass over the model, outside the lock
        limit = self._bounds.norm_limit(model, norm)
        guard = fold_guard(limit, norm)
        with self._lock:
            for upload in self._in_flight:
                upload.mode = "dead"  # what it folded is dropped with the old sums
            self._in_flight = []
            self._model = {}  # the last round's model goes before the new accumulator comes
            self._strategy.begin_round(model, round_number)
            self._model, self._limit, self._guard = model, limit, guard
            self._generation += 1
            self._open = True

    def close(self) -> None:
        """No more folds this round; what unfinished uploads folded is taken back."""
        with self._lock:
            for upload in list(self._in_flight):
                self._take_back(upload)
            self._open = False

    def shut_down(self) -> None:
        """The federation is over: the kept copies are closed (their space freed)."""
        self.close()
        self._copies.close()

    # ------------------------------------------------------------ one upload

    def receive(
        self,
        collaborator: str,
        weight: float,
        frames: Iterable[Frame],
        max_bytes: int,
        refusal: str | None = None,
    ) -> Upload:
        """Read and fold ``frames``; an ``Upload`` for the engine to commit.

        Raises ``ProtocolError`` (a malformed stream) or ``UpdateRejected`` (``refusal``,
        found by the header checks; missing tensors; values that are not finite; too far
        from the global model) in the whole-update path's order, having taken back what was
        folded. With a ``refusal`` nothing is folded; the frames are still read and checked.
        """
        copy = self._copies.take(self._value_bytes)
        with self._lock:
            upload = Upload(collaborator, weight, self._generation, copy)
            if self._open and refusal is None:
                self._in_flight.append(upload)
            else:
                upload.mode = "dead"
            model, limit, guard = self._model, self._limit, self._guard
        try:
            reader = ChunkReader(
                max_bytes,
                self._spec,
                lambda name, dtype, shape: self._on_tensor(upload, name, dtype, shape),
                lambda name, start, values: self._on_values(
                    upload, model, guard, name, start, values
                ),
            )
            for frame in frames:
                reader.add(frame)
            reader.result()
            if refusal is not None:
                raise UpdateRejected(refusal)
            self._check_content(upload, reader.received())
            self._bound(upload, model, limit)
        except BaseException:
            self.take_back(upload)
            upload.close()
            raise
        return upload

    def commit(self, upload: Upload) -> bool:
        """Count a fully folded upload (under the engine's lock); False if its round is gone."""
        with self._lock:
            if upload.mode != "live" or not self._current(upload):
                return False
            self._strategy.count_folded(upload.weight)
            upload.mode = "committed"
            self._in_flight.remove(upload)
            return True

    def take_back(self, upload: Upload) -> None:
        """Subtract what ``upload`` folded (nothing once committed or its round is over)."""
        with self._lock:
            self._take_back(upload)

    def _take_back(self, upload: Upload) -> None:
        if upload.mode == "committed":
            return
        self._unfold(upload)
        upload.mode = "dead"
        if upload in self._in_flight:
            self._in_flight.remove(upload)

    def _unfold(self, upload: Upload) -> None:
        """Subtract the folded chunks (under the lock); the upload stays in its round."""
        if self._current(upload):
            for name, start, count, offset in upload.chunks[: upload.folded]:
                values = upload.read_back(self._dtypes[name], offset, count)
                self._strategy.fold(name, start, values, -upload.weight)
        upload.folded = 0

    def _current(self, upload: Upload) -> bool:
        """Whether ``upload``'s round is the open one (under the lock)."""
        return upload.generation == self._generation and self._open

    # ------------------------------------------------------------ per chunk

    def _on_tensor(self, upload: Upload, name: str, dtype: str, shape: tuple[int, ...]) -> None:
        upload.tensors.append((name, dtype, shape))
        upload.hasher.update(digest_header(name, dtype, shape))

    def _on_values(
        self,
        upload: Upload,
        model: Weights,
        guard: float,
        name: str,
        start: int,
        values: np.ndarray,
    ) -> None:
        hash_values(upload.hasher, values)
        if upload.mode == "dead":
            return
        if values.dtype.kind == "f":
            base = model[name].reshape(-1)[start : start + values.size]
            squared = _checked_distance(values, base, upload.scratch)
            if squared is None:
                upload.not_finite.append(name)
                self.take_back(upload)  # it will be refused: nothing more of it is kept
                return
            upload.distance_squared += squared
        offset = upload.copy_values(values)
        upload.chunks.append((name, start, values.size, offset))
        with self._lock:
            if upload.mode == "dead" or not self._current(upload):
                upload.mode = "dead"  # the round closed: the engine refuses it at the end
            elif upload.mode == "live" and upload.distance_squared > guard * guard:
                self._unfold(upload)  # a small prefix: taken back exactly enough
                upload.mode = "deferred"
            elif upload.mode == "live":
                self._strategy.fold(name, start, values, upload.weight)
                upload.folded = len(upload.chunks)

    # ------------------------------------------------------------ at the end

    def _check_content(self, upload: Upload, received: set[str]) -> None:
        """The checks ``tensors.validate_update`` makes on a whole update, same messages."""
        missing = sorted(s.name for s in self._spec if s.name not in received)
        if missing:
            raise UpdateRejected(f"missing tensors {missing[:5]}")
        for spec in self._spec:
            if spec.name in upload.not_finite:
                raise UpdateRejected(f"tensor {spec.name!r} contains NaN or infinite values")

    def _bound(self, upload: Upload, model: Weights, limit: float | None) -> None:
        """``InfluenceBounds``' norm bound: refused, or clipped; a deferred upload is folded
        from its copy now that it is accepted."""
        scale = None
        if limit is not None:
            distance = math.sqrt(upload.distance_squared)
            scale = self._bounds.clip_scale(upload.collaborator, distance, limit)
        if scale is not None and upload.mode == "live":  # at the guard to a rounding
            with self._lock:
                self._unfold(upload)
                upload.mode = "deferred"
        if upload.mode == "deferred":
            self._fold_copied(upload, model, scale)

    def _fold_copied(self, upload: Upload, model: Weights, scale: float | None) -> None:
        """Fold every copied chunk, clipped onto the bound by ``scale`` if given, and rehash
        so the digest is of what was folded, as on the whole-update path."""
        hasher = tensor_hasher()
        for name, dtype, shape in upload.tensors:
            hasher.update(digest_header(name, dtype, shape))
            for index, (tensor, start, count, offset) in enumerate(upload.chunks):
                if tensor != name:
                    continue
                values = upload.read_back(self._dtypes[name], offset, count)
                if scale is not None and values.dtype.kind == "f":
                    base = model[name].reshape(-1)[start : start + count]
                    values = clipped(values, base, scale)
                    upload.rewrite(offset, values)  # for a take-back
                with self._lock:
                    if upload.mode != "deferred" or not self._current(upload):
                        return  # the round closed: the engine refuses it
                    self._strategy.fold(name, start, values, upload.weight)
                    upload.folded = index + 1
                hash_values(hasher, values)
        with self._lock:
            if upload.mode == "deferred":
                upload.mode = "live"
        upload.hasher = hasher


def _checked_distance(values: np.ndarray, base: np.ndarray, scratch: Scratch) -> float | None:
    """||values - base||^2 in float64, or None if ``values`` holds a NaN or infinity."""
    squared = squared_distance64(values, base, scratch, CHECK_ELEMENTS)
    if math.isfinite(squared) or all_finite(values):  # finite values can square past float64
        return squared
    return None
