"""Pinning a pretrained base model by the SHA-256 of the files a site loads from it.

Adapters only make sense on top of the base they were trained on: a site whose copy of
the base differs (another revision, a corrupted download, a tampered file) would train
and report nonsense. The plan, which the model owner signs, lists each loaded file's
digest; every site checks its own copy against that list before it builds a model, and
a mismatch names the file. Only the standard library is used here.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Mapping
from pathlib import Path

from bastion.errors import BastionError, PlanError

#: What a Hugging Face loader reads from a model folder: weights (and their shard index),
#: the configuration and the tokenizer. Other files (README, ONNX exports) are not pinned.
PINNED_PATTERNS: tuple[str, ...] = (
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model*.bin.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "vocab*",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "*.model",
    "*.tiktoken",
)

#: The plan key the pins live under (errors name it).
PIN_KEY = "task_runner.args.base_sha256"

_CHUNK = 1 << 20


class BaseModelMismatch(BastionError):
    """This site's copy of the base model is not the one the signed plan pins."""


def pinned_files(folder: Path) -> list[Path]:
    """The files of ``folder`` (top level) that a loader reads, sorted by name."""
    return sorted(
        path
        for path in Path(folder).iterdir()
        if path.is_file() and any(fnmatch.fnmatchcase(path.name, p) for p in PINNED_PATTERNS)
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def pin_base(folder: Path) -> dict[str, str]:
    """File name to SHA-256 for every pinned file of ``folder``: what a plan lists."""
    files = pinned_files(folder)
    if not files:
        raise BastionError(
            f"{folder} holds no model files ({', '.join(PINNED_PATTERNS[:4])}, ...); "
            "point task_runner.args.base at a Hugging Face model folder"
        )
    return {path.name: file_sha256(path) for path in files}


def base_digest(pins: Mapping[str, str]) -> str:
    """One SHA-256 naming the whole base: over the sorted ``name sha256`` lines."""
    lines = "".join(f"{name} {pins[name]}\n" for name in sorted(pins))
    return hashlib.sha256(lines.encode()).hexdigest()


def check_pins(pinned: object) -> dict[str, str]:
    """The plan's pins as a dict of file name to lowercase hex, or a ``PlanError`` naming the key."""
    if not isinstance(pinned, Mapping) or not pinned:
        raise PlanError(
            f"key '{PIN_KEY}': expected a mapping of file name to SHA-256 (the base model's "
            f"files), got {pinned!r}"
        )
    checked: dict[str, str] = {}
    for name, value in pinned.items():
        text = str(value).lower().removeprefix("sha256:")
        if (
            not isinstance(name, str)
            or len(text) != 64
            or any(c not in "0123456789abcdef" for c in text)
        ):
            raise PlanError(f"key '{PIN_KEY}.{name}': {value!r} is not a SHA-256 in hex")
        checked[name] = text
    return checked


def verify_base(folder: Path, pinned: object) -> str:
    """Check ``folder`` against the plan's pins; return the base digest.

    Refuses with ``BaseModelMismatch`` naming each file that differs, is missing or is
    not pinned, so the site can fix its copy before anything trains on it.
    """
    folder = Path(folder)
    if pinned is None:
        shown = "".join(f"\n      {name}: {sha}" for name, sha in pin_base(folder).items())
        raise PlanError(
            f"key '{PIN_KEY}' is missing: the plan must pin the base model every site loads. "
            f"The files of {folder} are, to paste under task_runner.args:\n    base_sha256:{shown}"
        )
    expected = check_pins(pinned)
    found = pin_base(folder)
    problems = [
        f"{folder / name}: SHA-256 {found[name]}, the plan pins {expected[name]}"
        for name in sorted(expected)
        if name in found and found[name] != expected[name]
    ]
    problems += [
        f"{folder / name}: missing, the plan pins {expected[name]}"
        for name in sorted(expected)
        if name not in found
    ]
    problems += [
        f"{folder / name}: not pinned by the plan (a file the loader would read)"
        for name in sorted(found)
        if name not in expected
    ]
    if problems:
        raise BaseModelMismatch(
            "this site's base model is not the one the signed plan pins, refusing to train on "
            f"it: {'; '.join(problems)}. Install the exact base model the plan names (same "
            f"files), or ask the model owner to re-pin {PIN_KEY} and re-sign the workspace"
        )
    return base_digest(found)
