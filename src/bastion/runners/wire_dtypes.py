"""How tensors whose dtype NumPy lacks (bfloat16, float8) travel: widened to float32.

Every bfloat16 and float8 value is exactly a float32 value, so widening is lossless and
narrowing back on arrival restores the bits exactly. Averaging then happens in float32
(bit patterns as uint16 would average to garbage). The price is twice the bytes on the
wire for those tensors; the model's own dtype is restored by the adapter's ``set_weights``.
"""

from __future__ import annotations

import numpy as np

from bastion.errors import BastionError
from bastion.tensors import WIRE_DTYPES

#: dtypes (by NumPy name, as ml_dtypes spells them) that travel as float32.
WIDENED_TO_FLOAT32 = frozenset(
    {
        "bfloat16",
        "float8_e4m3fn",
        "float8_e4m3fnuz",
        "float8_e4m3b11fnuz",
        "float8_e5m2",
        "float8_e5m2fnuz",
    }
)


def to_wire(name: str, array: np.ndarray) -> np.ndarray:
    """``array`` as a dtype the wire carries; ``name`` only makes the error precise."""
    dtype = np.dtype(array.dtype).name
    if dtype in WIRE_DTYPES:
        return array
    if dtype in WIDENED_TO_FLOAT32:
        return array.astype(np.float32)
    raise BastionError(
        f"tensor {name!r} has dtype {dtype}, which cannot be federated "
        f"(allowed: {', '.join(sorted(WIRE_DTYPES))}, and {', '.join(sorted(WIDENED_TO_FLOAT32))} "
        "as float32); cast the model or keep the tensor local with task_runner.args.keep_local"
    )


def wire_dtype_of(dtype_name: str) -> str:
    """The wire dtype name a model dtype travels as."""
    return "float32" if dtype_name in WIDENED_TO_FLOAT32 else dtype_name
