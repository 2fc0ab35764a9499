"""Elementwise math: unary and binary ops with numpy broadcasting (ONNX opset >= 7)."""
from __future__ import annotations

from ..registry import converter

UNARY = {
    "Neg": "neg", "Abs": "abs", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Reciprocal": "reciprocal",
    "Sin": "sin", "Cos": "cos", "Tanh": "tanh", "Sigmoid": "sigmoid", "Relu": "relu", "Erf": "erf",
    "Floor": "floor", "Ceil": "ceil", "Round": "round", "Sign": "sign", "Not": "not",
}
BINARY = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow", "And": "and", "Or": "or",
    "Xor": "xor", "Equal": "eq", "Less": "lt", "LessOrEqual": "le", "Greater": "gt",
    "GreaterOrEqual": "ge",
}


def _unary(name):
    return lambda ctx: ctx.b.op("nn." + name, ctx.x(0))


def _binary(name):
    return lambda ctx: ctx.b.op("nn." + name, ctx.x(0), ctx.x(1))


for _onnx, _nn in UNARY.items():
    converter(_onnx, since=6)(_unary(_nn))
for _onnx, _nn in BINARY.items():
    converter(_onnx, since=7)(_binary(_nn))
