"""Disk-backed rows of flattened updates, for rules that need every update at once.

Median, trimmed mean and Krum look at all updates of a round together. Holding 50
updates of a 100 MB model would take 5 GB of RAM, so each accepted update is written
as one flattened row to a per-round file and read back through ``numpy.memmap`` a
block of columns at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bastion.algorithms.errors import AggregationError
from bastion.errors import UpdateRejected

#: Elements converted and written per ``write`` call, so appending needs O(chunk) extra memory.
_WRITE_CHUNK = 1 << 20


@dataclass(frozen=True)
class TensorSlot:
    """Where one named tensor lives inside a flattened row."""

    name: str
    shape: tuple[int, ...]
    start: int
    stop: int


def row_layout(weights: Mapping[str, np.ndarray]) -> list[TensorSlot]:
    """The column range of each tensor of ``weights`` in a flattened row, in order."""
    slots: list[TensorSlot] = []
    start = 0
    for name, array in weights.items():
        stop = start + int(array.size)
        slots.append(TensorSlot(name, tuple(int(d) for d in array.shape), start, stop))
        start = stop
    return slots


def spill_dtype_for(weights: Mapping[str, np.ndarray]) -> np.dtype:
    """The narrowest float dtype that holds every tensor of ``weights`` exactly.

    float32 for float16/float32/int8/int16/bool models, float64 as soon as any tensor
    is float64 or a wider integer (e.g. BatchNorm's int64 ``num_batches_tracked``).
    """
    return np.dtype(np.result_type(np.float32, *(a.dtype for a in weights.values())))


class SpillFile:
    """One round's updates as rows of a raw file on disk.

    Rows are appended as results arrive; ``rows()`` maps the file read-only. The file
    is deleted by ``close()``.
    """

    def __init__(self, path: Path, layout: list[TensorSlot], dtype: np.dtype) -> None:
        self.path = Path(path)
        self.layout = layout
        self.dtype = np.dtype(dtype)
        self.columns = layout[-1].stop if layout else 0
        self.count = 0
        # Unbuffered, so a failed write can be undone by truncating to the last whole row.
        self._handle = open(self.path, "xb", buffering=0)  # noqa: SIM115 - open across appends

    def append(self, update: Mapping[str, np.ndarray]) -> None:
        """Write ``update`` as the next row; its tensors must match the layout's shapes."""
        for slot in self.layout:
            if slot.name not in update:
                raise UpdateRejected(f"update lacks tensor {slot.name!r}")
            shape = tuple(update[slot.name].shape)
            if shape != slot.shape:
                raise UpdateRejected(
                    f"tensor {slot.name!r} has shape {shape}, expected {slot.shape}"
                )
        try:
            for slot in self.layout:
                flat = np.asarray(update[slot.name]).reshape(-1)
                for begin in range(0, flat.size, _WRITE_CHUNK):
                    chunk = flat[begin : begin + _WRITE_CHUNK]
                    self._write_all(np.ascontiguousarray(chunk, dtype=self.dtype).data.cast("B"))
        except OSError as exc:
            os.ftruncate(self._handle.fileno(), self.count * self.columns * self.dtype.itemsize)
            self._handle.seek(0, os.SEEK_END)
            raise AggregationError(
                f"cannot spill an update to {self.path} ({exc.strerror}); free disk space "
                "there or point aggregation.args.spill_dir at a larger disk"
            ) from None
        self.count += 1

    def _write_all(self, data: memoryview) -> None:
        while data:
            data = data[self._handle.write(data) :]

    def rows(self) -> np.ndarray:
        """All rows written so far, shape (count, columns), mapped from disk read-only."""
        if self.count * self.columns == 0:
            return np.zeros((self.count, self.columns), dtype=self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.count, self.columns))

    def close(self) -> None:
        """Close and delete the file."""
        if not self._handle.closed:
            self._handle.close()
        self.path.unlink(missing_ok=True)


def column_blocks(
    rows: np.ndarray, block_bytes: int, row_index: np.ndarray | None = None
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(columns, block)``, ``block`` a float64 copy of ``rows[row_index, columns]``.

    Each block holds about ``block_bytes`` (at least one column), so the working set of
    a column-wise rule stays bounded however many updates or parameters there are.
    Without ``row_index`` every row is read.
    """
    height = rows.shape[0] if row_index is None else len(row_index)
    width = rows.shape[1]
    step = max(1, block_bytes // (8 * max(height, 1)))
    for begin in range(0, width, step):
        columns = slice(begin, min(begin + step, width))
        picked = rows[:, columns] if row_index is None else rows[row_index, columns]
        yield columns, np.array(picked, dtype=np.float64)


def unflatten(flat: np.ndarray, layout: list[TensorSlot]) -> dict[str, np.ndarray]:
    """Split a flattened row back into named tensors of the layout's shapes."""
    return {s.name: flat[s.start : s.stop].reshape(s.shape) for s in layout}
