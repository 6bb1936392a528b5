"""Checkpoints: safetensors files written atomically, and the aggregator's durable state.

Every round is one atomic safetensors file.

``last.safetensors`` holds the global model, the strategy's state (under the
``strategy/`` prefix) and the round counter in its metadata, written with temp file,
fsync and rename; so after a crash at any instant it holds one whole round. Resuming
needs nothing else. ``state.json`` is a human-readable summary for ``bastion status``.
The round before's ``last.safetensors`` stays beside it as ``.last.safetensors.spare``,
the file the next round's checkpoint is written into (``atomic_writer``'s ``reuse``).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from bastion.errors import BastionError
from bastion.storage.atomic import atomic_write_bytes, atomic_writer, discard_temporaries
from bastion.tensors import WIRE_DTYPES, Weights, dtype_name

INITIAL = "initial.safetensors"
LAST = "last.safetensors"
BEST = "best.safetensors"
STATE = "state.json"
STRATEGY_PREFIX = "strategy/"
#: The one key of a safetensors header that is not a tensor.
RESERVED_NAME = "__metadata__"
#: Checkpoints and the aggregator's summary are readable by their owner only, as before.
PRIVATE_MODE = 0o600
#: Tensors from this size are hashed on a second thread while they are written.
PARALLEL_HASH_BYTES = 4 * 1024 * 1024


_SAFETENSORS_DTYPES = {
    "float16": "F16",
    "float32": "F32",
    "float64": "F64",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
    "uint8": "U8",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "bool": "BOOL",
}


def save_checkpoint(
    path: Path,
    weights: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
    *,
    reuse: bool = False,
) -> str:
    """Atomically write ``weights`` as a safetensors file; metadata values are strings.
    Returns the file's SHA-256 (hex), hashed as it is written, not read back.

    The file is streamed tensor by tensor (8-byte header length, JSON header, raw
    little-endian buffers), so saving a model never builds a second copy of it in memory.
    Each tensor is hashed on a second thread while it is written (both release the GIL).
    ``reuse``: overwrite the spare of the last write (``atomic_writer``), for a file
    rewritten every round.
    """
    if RESERVED_NAME in weights:
        raise BastionError(
            f"cannot write checkpoint {path}: a tensor is named {RESERVED_NAME!r}, which the "
            "safetensors format reserves for its metadata; give it another name in the runner"
        )
    meta = {"bastion.order": json.dumps(list(weights)), **dict(metadata or {})}
    header: dict[str, object] = {RESERVED_NAME: meta}
    offset = 0
    for name, array in weights.items():
        dtype = dtype_name(array.dtype)
        size = int(array.size) * WIRE_DTYPES[dtype].itemsize
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[dtype],
            "shape": [int(d) for d in array.shape],
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data section to 8 bytes
    digest = hashlib.sha256()
    with (
        atomic_writer(path, PRIVATE_MODE, reuse=reuse) as handle,
        ThreadPoolExecutor(1, thread_name_prefix="checkpoint-hash") as hasher,
    ):
        for prefix in (struct.pack("<Q", len(encoded)), encoded):
            digest.update(prefix)
            handle.write(prefix)
        for array in weights.values():
            wire = WIRE_DTYPES[dtype_name(array.dtype)]
            data = np.ascontiguousarray(array, dtype=wire).reshape(-1).view(np.uint8).data
            if data.nbytes < PARALLEL_HASH_BYTES:
                digest.update(data)
                handle.write(data)
                continue
            hashed = hasher.submit(digest.update, data)
            handle.write(data)
            hashed.result()
    return digest.hexdigest()


def load_checkpoint(path: Path) -> tuple[Weights, dict[str, str]]:
    """Read a safetensors checkpoint tensor by tensor, keeping the order it was saved with.

    safetensors checks the header (dtypes, shapes, offsets inside the file); each tensor is
    then read straight into an array of its own: writable, owning its memory, one copy of
    the model at most. safetensors' own arrays are read-only views of a buffer, which the
    engine's buffer reuse cannot take (``bastion.buffers``): the first round after a
    start faulted in a fresh accumulator, and a 1 GiB run's second round took 13-18 s
    against 8-9 s for the rounds after it (8.3 s now, on the 2-core development VM).
    """
    path = Path(path)
    if not path.exists():
        raise BastionError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = dict(handle.metadata() or {})
            names = list(handle.keys())  # noqa: SIM118
            foreign = {n: handle.get_tensor(n) for n in names if not _readable(handle, n)}
    except Exception as exc:  # safetensors raises its own error types
        raise BastionError(f"checkpoint {path} is not a valid safetensors file: {exc}") from None
    arrays = _read_tensors(path, [n for n in names if n not in foreign])
    arrays.update(foreign)
    order = [n for n in json.loads(metadata.pop("bastion.order", "[]")) if n in arrays]
    ordered = order + [n for n in arrays if n not in order]
    return {n: arrays[n] for n in ordered}, metadata


_NUMPY_NAMES = {code: name for name, code in _SAFETENSORS_DTYPES.items()}


def _readable(handle: Any, name: str) -> bool:
    """Whether ``name``'s dtype is one we read ourselves (the rest go through safetensors)."""
    return handle.get_slice(name).get_dtype() in _NUMPY_NAMES


def _read_tensors(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """``names`` read from ``path`` into fresh arrays, each the exact size its header says."""
    arrays: dict[str, np.ndarray] = {}
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
        for name in names:
            entry = header[name]
            array = np.empty(entry["shape"], dtype=WIRE_DTYPES[_NUMPY_NAMES[entry["dtype"]]])
            start, stop = (int(v) for v in entry["data_offsets"])
            if stop - start != array.nbytes:
                raise BastionError(f"checkpoint {path}: tensor {name!r} has a wrong size")
            file.seek(8 + length + start)
            if (
                array.nbytes
                and file.readinto(array.reshape(-1).view(np.uint8).data) != array.nbytes
            ):
                raise BastionError(f"checkpoint {path} is truncated (tensor {name!r})")
            arrays[name] = array
    return arrays


@dataclass
class RoundState:
    """Where the federation stands; stored in the checkpoint's metadata."""

    round_completed: int = 0
    finished: bool = False
    best_value: float | None = None
    best_round: int | None = None
    #: What observers anchor in the checkpoint (the audit log's head: see ``bastion.audit``).
    anchors: dict[str, str] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        return {"bastion.state": json.dumps(asdict(self))}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> RoundState:
        raw = json.loads(metadata.get("bastion.state", "{}"))
        return cls(**raw)


@dataclass
class Resumed:
    model: Weights
    strategy_state: Weights
    state: RoundState
    source: Path
    extra: dict[str, Any] = field(default_factory=dict)


class CheckpointStore:
    """Reads and writes the checkpoints of one workspace's aggregator."""

    def __init__(self, directory: Path, plan_hash: str) -> None:
        self.directory = Path(directory)
        self.plan_hash = plan_hash

    def path(self, name: str) -> Path:
        return self.directory / name

    def save_initial(self, model: Weights) -> Path:
        path = self.path(INITIAL)
        save_checkpoint(
            path, model, {"bastion.plan_hash": self.plan_hash, **RoundState().to_metadata()}
        )
        return path

    def load(self) -> Resumed:
        """The newest whole state: the last round if any, else the initial model.

        Temporary files of writes a crash interrupted are removed first (whole-model size each).
        """
        for name in (LAST, BEST, STATE, INITIAL):
            discard_temporaries(self.path(name))
        for name in (LAST, INITIAL):
            path = self.path(name)
            if path.exists():
                tensors, metadata = load_checkpoint(path)
                saved_hash = metadata.get("bastion.plan_hash")
                if saved_hash != self.plan_hash:
                    raise BastionError(
                        f"{path} was written for a different plan (plan hash {str(saved_hash)[:12]}…, "
                        f"this plan {self.plan_hash[:12]}…); run `bastion plan initialize --force` "
                        "to start over, or restore the plan it was made with"
                    )
                model = {k: v for k, v in tensors.items() if not k.startswith(STRATEGY_PREFIX)}
                strategy = {
                    k[len(STRATEGY_PREFIX) :]: v
                    for k, v in tensors.items()
                    if k.startswith(STRATEGY_PREFIX)
                }
                return Resumed(model, strategy, RoundState.from_metadata(metadata), path)
        raise BastionError(
            f"no initial model in {self.directory}; run `bastion plan initialize` in the workspace first"
        )

    def save_round(self, model: Weights, strategy_state: Weights, state: RoundState) -> str:
        """Write the round's checkpoint over the spare of the last one; its SHA-256."""
        tensors = dict(model)
        for name, value in strategy_state.items():
            tensors[STRATEGY_PREFIX + name] = value
        metadata = {"bastion.plan_hash": self.plan_hash, **state.to_metadata()}
        return save_checkpoint(self.path(LAST), tensors, metadata, reuse=True)

    def save_best(self, model: Weights, round_number: int, value: float) -> None:
        metadata = {
            "bastion.plan_hash": self.plan_hash,
            "bastion.best_round": str(round_number),
            "bastion.best_value": repr(value),
        }
        save_checkpoint(self.path(BEST), model, metadata)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_bytes(self.path(STATE), json.dumps(summary, indent=2).encode(), PRIVATE_MODE)

    def read_summary(self) -> dict[str, Any] | None:
        path = self.path(STATE)
        if not path.exists():
            return None
        return dict(json.loads(path.read_text(encoding="utf-8")))
