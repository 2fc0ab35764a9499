"""Quantized tensors: ONNX-style linear quantization (int8/uint8 with scales and zero points)
and GGML block-quantized weights (llama.cpp's q4_0 ... q8_k)."""
from . import ggml, linear  # noqa: F401
