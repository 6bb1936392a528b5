"""Model-sized buffers that outlive their round, reused once nothing else holds them.

A model-sized allocation every round is fresh memory every round: the kernel zeroes each
page on first touch and, on a virtual machine that reports free memory to its host, the
host backs it again first (measured on a 2-core VM: about 0.4 GB/s, 2.5 s for 1 GiB).
Writing into a buffer that is still resident runs at memory speed. Two users: the
strategy's accumulator (``algorithms.fedavg``) and the model a site downloads
(``transport.client``, through ``framing.FrameAssembler``).

Whether something still holds a buffer is read from CPython's reference count, as numpy's
own ``ndarray.resize(refcheck=True)`` reads it: a view, a ``memoryview`` or any other
reference keeps the buffer out of reach, and a new one is allocated as before.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import numpy as np


def unshared(array: np.ndarray, holders: int) -> bool:
    """Whether ``array`` owns its memory and nothing but the caller's ``holders``
    references reach it (no view, no exported buffer, no other owner)."""
    # Beside the caller's, two references: this call's parameter and getrefcount's own.
    return array.base is None and sys.getrefcount(array) - 2 <= holders


class RetiredBuffers:
    """Arrays one round is done with, held to be reused by the next."""

    def __init__(self) -> None:
        self._arrays: list[np.ndarray] = []

    def zeros(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A zeroed array: a retired one of this shape and dtype, else a new one."""
        reused = self.take(shape, dtype)
        if reused is None:
            return np.zeros(shape, dtype=dtype)
        reused.fill(0)
        return reused

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An array whose every element the caller overwrites: a retired one (holding an
        earlier round's values until then), else a new one."""
        reused = self.take(shape, dtype)
        return np.empty(shape, dtype=dtype) if reused is None else reused

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        """A retired array of this shape and dtype that nothing else holds, as it is."""
        for index in range(len(self._arrays)):
            candidate = self._arrays[index]
            # held by the list and by `candidate`
            if candidate.shape == shape and candidate.dtype == dtype and unshared(candidate, 2):
                del self._arrays[index]
                return candidate
        return None

    def hold(self, arrays: Iterable[np.ndarray]) -> None:
        """Hold exactly ``arrays`` (they may still be in use elsewhere): the ones held
        before go."""
        self._arrays = list(arrays)

    def clear(self) -> None:
        """Let every kept array go."""
        self._arrays = []

    def __len__(self) -> int:
        return len(self._arrays)
