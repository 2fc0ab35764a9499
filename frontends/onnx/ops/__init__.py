"""ONNX converters, one module per op family; importing this package registers them all."""
from . import activation, basic, control, layers, math, quant, signal, strings, tensor  # noqa: F401
