"""Secure aggregation: the server learns the sum of the clients' inputs and nothing else.

See ``protocol`` for the round structure, ``quantize`` and ``encoding`` for turning
weighted float updates into ring vectors and back.
"""

from bastion.privacy.errors import KeySubstitutionDetected, QuantizationOverflow, SecAggAborted
from bastion.privacy.secagg.encoding import WeightedSum, WeightedUpdateEncoder
from bastion.privacy.secagg.protocol import (
    SecAggClient,
    SecAggConfig,
    SecAggResult,
    SecAggServer,
    session_id_for,
)
from bastion.privacy.secagg.quantize import FixedPointQuantizer

__all__ = [
    "FixedPointQuantizer",
    "KeySubstitutionDetected",
    "QuantizationOverflow",
    "SecAggAborted",
    "SecAggClient",
    "SecAggConfig",
    "SecAggResult",
    "SecAggServer",
    "WeightedSum",
    "WeightedUpdateEncoder",
    "session_id_for",
]
