"""Element types: plain numeric types, GGML block-quantized types and strings.

A block-quantized type packs `block_size` consecutive elements of the innermost dimension into
`block_bytes` bytes. Values of such types are stored as raw bytes: a tensor of logical shape
(..., K) is held in memory as uint8 of shape (..., K // block_size * block_bytes).

`string` elements are variable-length Unicode text (ONNX's UTF-8 strings): values are numpy
object arrays whose elements are Python `str`. Their size is not a property of the type, so
`nbytes` counts 0 bytes for them (cost and memory reports leave strings out).
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from .errors import CkirError


class DType:
    __slots__ = ("name", "kind", "bits", "np", "block_size", "block_bytes")

    def __init__(self, name, kind, bits, np_dtype=None, block_size=1, block_bytes=None):
        self.name = name
        # 'f' float, 'i' signed int, 'u' unsigned int, 'b' bool, 'q' block-quantized, 's' string
        self.kind = kind
        self.bits = bits  # bits per element (for 'q': effective, informational)
        self.np = np.dtype(np_dtype) if np_dtype is not None else None
        self.block_size = block_size
        self.block_bytes = block_bytes if block_bytes is not None else bits // 8

    is_float = property(lambda self: self.kind == "f")
    is_int = property(lambda self: self.kind in "iu")
    is_bool = property(lambda self: self.kind == "b")
    is_quant = property(lambda self: self.kind == "q")
    is_string = property(lambda self: self.kind == "s")

    def nbytes(self, numel: int) -> int:
        if self.kind == "s":
            return 0        # variable length: unknown from the type
        if self.kind == "q":
            return numel // self.block_size * self.block_bytes
        if self.kind == "b":
            return numel
        return numel * self.bits // 8

    def __repr__(self):
        return self.name

    __str__ = __repr__

    def __reduce__(self):
        return (dtype, (self.name,))


_DTYPES: dict[str, DType] = {}


def _add(*args, **kw) -> DType:
    d = DType(*args, **kw)
    _DTYPES[d.name] = d
    return d


f64 = _add("f64", "f", 64, np.float64)
f32 = _add("f32", "f", 32, np.float32)
f16 = _add("f16", "f", 16, np.float16)
bf16 = _add("bf16", "f", 16, ml_dtypes.bfloat16)
i64 = _add("i64", "i", 64, np.int64)
i32 = _add("i32", "i", 32, np.int32)
i16 = _add("i16", "i", 16, np.int16)
i8 = _add("i8", "i", 8, np.int8)
u64 = _add("u64", "u", 64, np.uint64)
u32 = _add("u32", "u", 32, np.uint32)
u16 = _add("u16", "u", 16, np.uint16)
u8 = _add("u8", "u", 8, np.uint8)
bool_ = _add("bool", "b", 8, np.bool_)
# Narrow floats and ints (ONNX's float8/float4/int4 families). Values hold one element per
# byte, as ml_dtypes stores them; `bits` is that storage width, not the packed file width.
f8e4m3fn = _add("f8e4m3fn", "f", 8, ml_dtypes.float8_e4m3fn)
f8e4m3fnuz = _add("f8e4m3fnuz", "f", 8, ml_dtypes.float8_e4m3fnuz)
f8e5m2 = _add("f8e5m2", "f", 8, ml_dtypes.float8_e5m2)
f8e5m2fnuz = _add("f8e5m2fnuz", "f", 8, ml_dtypes.float8_e5m2fnuz)
f8e8m0 = _add("f8e8m0", "f", 8, ml_dtypes.float8_e8m0fnu)
f4e2m1 = _add("f4e2m1", "f", 8, ml_dtypes.float4_e2m1fn)
i4 = _add("i4", "i", 8, ml_dtypes.int4)
u4 = _add("u4", "u", 8, ml_dtypes.uint4)
i2 = _add("i2", "i", 8, ml_dtypes.int2)
u2 = _add("u2", "u", 8, ml_dtypes.uint2)

# GGML block layouts (ggml-common.h): (elements per block, bytes per block).
_QUANT = {
    "q4_0": (32, 18), "q4_1": (32, 20), "q5_0": (32, 22), "q5_1": (32, 24), "q8_0": (32, 34),
    "q2_k": (256, 84), "q3_k": (256, 110), "q4_k": (256, 144), "q5_k": (256, 176),
    "q6_k": (256, 210), "q8_k": (256, 292),
}
for _n, (_bs, _bb) in _QUANT.items():
    globals()[_n] = _add(_n, "q", _bb * 8 // _bs, None, block_size=_bs, block_bytes=_bb)
string = _add("string", "s", 0, object)

_BY_NP = {d.np: d for d in _DTYPES.values() if d.np is not None}
_BY_NP.update({d.np.type: d for d in _DTYPES.values() if d.np is not None})
FLOATS = tuple(d for d in _DTYPES.values() if d.kind == "f")
INTS = tuple(d for d in _DTYPES.values() if d.kind in "iu")
QUANTS = tuple(d for d in _DTYPES.values() if d.kind == "q")
STRINGS = (string,)
ALL = tuple(_DTYPES.values())


def dtype(x) -> DType:
    """Look up a DType by name ('f32'), by numpy dtype, or pass one through."""
    if isinstance(x, DType):
        return x
    if isinstance(x, str) and x in _DTYPES:
        return _DTYPES[x]
    d = _BY_NP.get(x)
    if d is not None:
        return d
    try:
        npd = np.dtype(x)
    except TypeError:
        raise CkirError(f"unknown dtype {x!r}; known: {', '.join(_DTYPES)}") from None
    d = _BY_NP.get(npd)
    if d is None:
        raise CkirError(f"numpy dtype {npd} has no ckir equivalent")
    return d


def names() -> list[str]:
    return list(_DTYPES)

