"""The masks of Bonawitz et al. 2017: y_u = x_u + PRG(b_u) + sum_v sign(u, v) PRG(s_uv) mod 2^k.

The pairwise mask of u and v enters u's input with ``+`` when u sorts before v and with
``-`` otherwise, so it cancels in the sum when both contribute.
"""

from __future__ import annotations

import numpy as np

from bastion.privacy.secagg.config import SecAggConfig
from bastion.privacy.secagg.prg import MaskPurpose, expand_mask


def self_mask(config: SecAggConfig, seed: bytes, out: np.ndarray | None = None) -> np.ndarray:
    """PRG(b_u): the self-mask of a client, into ``out`` when given (a reusable scratch buffer)."""
    return expand_mask(
        seed,
        config.vector_length,
        config.dtype,
        MaskPurpose.SELF,
        config.session_id,
        config.round_number,
        out,
    )


def pairwise_mask(config: SecAggConfig, seed: bytes, out: np.ndarray | None = None) -> np.ndarray:
    """PRG(s_uv): the mask two clients share, into ``out`` when given."""
    return expand_mask(
        seed,
        config.vector_length,
        config.dtype,
        MaskPurpose.PAIRWISE,
        config.session_id,
        config.round_number,
        out,
    )


def scratch(config: SecAggConfig) -> np.ndarray:
    """One reusable buffer for expanding masks of this session."""
    return np.empty(config.vector_length, dtype=config.dtype)


def add_pairwise(total: np.ndarray, mask: np.ndarray, owner: str, peer: str) -> None:
    """Add, in place, the pairwise mask as it appears in ``owner``'s masked input."""
    if owner < peer:
        total += mask
    else:
        total -= mask


def remove_pairwise(total: np.ndarray, mask: np.ndarray, owner: str, peer: str) -> None:
    """Undo, in place, what ``add_pairwise(total, mask, owner, peer)`` added."""
    add_pairwise(total, mask, peer, owner)
