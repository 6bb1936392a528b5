"""Update compression: sparsifiers and value codecs in validated pipelines, with error feedback."""

from bastion.compression.errors import CompressionError, IncompatibleCompression
from bastion.compression.feedback import ErrorFeedback
from bastion.compression.pipeline import (
    Pipeline,
    build_pipeline,
    check_secure_aggregation,
    compression_ratio,
)
from bastion.compression.stages import BFloat16, Float16, Quantize8, RandomK, Stage, TopK

__all__ = [
    "BFloat16",
    "CompressionError",
    "ErrorFeedback",
    "Float16",
    "IncompatibleCompression",
    "Pipeline",
    "Quantize8",
    "RandomK",
    "Stage",
    "TopK",
    "build_pipeline",
    "check_secure_aggregation",
    "compression_ratio",
]
