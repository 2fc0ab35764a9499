"""Quantized tensors: ONNX-style linear quantization (int8/uint8 with scales and zero points).
GGML block-quantized weights join later."""
from . import linear  # noqa: F401
