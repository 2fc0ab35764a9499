"""Linear (affine) quantization as ONNX defines it: q = saturate(round(x / scale) + zero_point),
x = (q - zero_point) * scale, and the integer products quantized models are built from.

A scale and its zero point (same shape, except that a per-tensor pair may mix a scalar and a
one-element vector) apply at one of three granularities, chosen by the scale's shape:

- per tensor: a scalar, or a 1-D tensor of one element;
- per axis: a 1-D tensor with one entry per index of x along `axis`;
- blocked (`block_size` B > 0): x's rank and shape except along `axis`, where it has
  ceil(D / B) entries; entry j covers indices j*B ... j*B + B - 1 (the last block may be short).

Integer products are exact: they are computed in float64, where every partial sum of 8-bit
products is an integer below 2^53, and wrap to int32 as 32-bit accumulators do.
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np

from ckir import dtypes as dt
from ckir.errors import CkirError, ShapeError
from ckir.opdef import Arg, Attr, Cost, Ex, Operand, Result, declare, not_differentiable
from ckir.types import TensorType, broadcast_shapes, concrete

from ..nn._util import norm_axis, numel
from ..nn.conv import CONV_ATTRS, _conv_np, _conv_type, _macs_cost
from ..nn.linalg import _mm_dims

INT_TARGETS = (dt.i8, dt.u8, dt.i16, dt.u16, dt.i4, dt.u4, dt.i2, dt.u2)
FLOAT8 = (dt.f8e4m3fn, dt.f8e4m3fnuz, dt.f8e5m2, dt.f8e5m2fnuz)
TARGETS = INT_TARGETS + FLOAT8 + (dt.f4e2m1,)
SCALES = (dt.f32, dt.f16, dt.bf16, dt.f64, dt.f8e8m0)
WIDE = (dt.f32, dt.f16, dt.bf16, dt.f64)
BYTE_INTS = (dt.i8, dt.u8)
_RANGE = {dt.i8: (-128, 127), dt.u8: (0, 255), dt.i16: (-32768, 32767), dt.u16: (0, 65535),
          dt.i4: (-8, 7), dt.u4: (0, 15), dt.i2: (-2, 1), dt.u2: (0, 3)}

AXIS = Attr("axis", "int", 1, doc="the quantized axis of x (per-axis and blocked scales)")
BLOCK = Attr("block_size", "int", 0, doc="block length along `axis`; 0: not blocked")


def _same(a, b) -> bool:
    return type(a) is not int or type(b) is not int or a == b


def granularity(x: TensorType, p: TensorType, axis: int, block_size: int, what: str) -> str:
    """'tensor', 'axis' or 'block' for a scale (or zero point) of type p on x; ShapeError if p
    fits none."""
    if block_size < 0:
        raise ShapeError(f"block_size must be >= 0, got {block_size}")
    if p.rank == 0 or (p.rank == 1 and p.shape[0] == 1 and block_size == 0):
        return "tensor"
    if x.rank == 0:
        raise ShapeError(f"{what} {p} must be a scalar for a scalar x")
    a = norm_axis(axis, x.rank)
    if block_size == 0:
        if p.rank != 1 or not _same(p.shape[0], x.shape[a]):
            raise ShapeError(f"{what} {p} is neither a scalar nor one entry per index of axis "
                             f"{axis} of x {x} (blocked scales need block_size)")
        return "axis"
    if p.rank != x.rank:
        raise ShapeError(f"blocked {what} {p} must have the rank of x {x}")
    for i, (d, s) in enumerate(zip(x.shape, p.shape)):
        want = -(-d // block_size) if i == a and type(d) is int else (None if i == a else d)
        if want is not None and not _same(s, want):
            raise ShapeError(f"blocked {what} {p} does not fit x {x} with block_size {block_size} "
                             f"along axis {axis}: dim {i} should be {want}")
    return "block"


def expand(p: np.ndarray, shape, axis: int, block_size: int) -> np.ndarray:
    """A scale or zero point as an array that broadcasts against x of `shape`."""
    if p.ndim == 0 or (p.ndim == 1 and p.size == 1 and block_size == 0):
        return p.reshape(())
    a = axis % len(shape)
    if block_size == 0:
        dims = [1] * len(shape)
        dims[a] = p.size
        return p.reshape(dims)
    if p.shape[a] * block_size < shape[a] or (p.shape[a] - 1) * block_size >= shape[a]:
        raise ShapeError(f"a blocked scale of {p.shape[a]} blocks of {block_size} does not cover "
                         f"{shape[a]} elements")
    return np.repeat(p, block_size, axis=a).take(np.arange(shape[a]), axis=a)


def _check_params(x, scale, zero_point, axis, block_size):
    mode = granularity(x, scale, axis, block_size, "scale")
    if zero_point is not None:
        zmode = granularity(x, zero_point, axis, block_size, "zero_point")
        if zmode != mode or mode != "tensor" and (zero_point.rank != scale.rank or not all(
                _same(a, b) for a, b in zip(zero_point.shape, scale.shape))):
            raise ShapeError(f"zero_point {zero_point} and scale {scale} must have the same shape")
    return mode


def _elementwise_cost(per):
    def cost(op, bind):
        n = numel(op.operands[0].type, bind)
        return Cost(per * n, sum(v.type.nbytes(bind) for v in op.operands),
                    sum(v.type.nbytes(bind) for v in op.results))
    return cost


def _compute_dtype(d):
    return np.float64 if d is dt.f64 else np.float32


@declare
class quantize_linear:
    """ONNX QuantizeLinear: y = saturate(round(x / scale) + zero_point) in dtype `dtype`.

    The division runs in `precision` if given, else in the scale's dtype (f16/bf16 are
    computed in f32 and rounded to that dtype; an f8e8m0 scale divides in f32); int32 x is
    converted to that precision first. For integer targets the quotient is rounded half to
    even, the zero point added, and the sum clipped to the target's range (uint8 [0, 255],
    int8 [-128, 127], int16, uint16, int4 [-8, 7], uint4 [0, 15], int2 [-2, 1], uint2 [0, 3]);
    NaN maps to the zero point. For float targets (float8 types, float4e2m1) the zero point
    (normally 0) is added and the sum cast with round-to-nearest-even: `saturate` clamps
    out-of-range values (and infinities) to the largest finite value; without it they become
    inf where the type has one, else NaN. float4e2m1 always saturates. zero_point, when given,
    has dtype `dtype`.

    Granularity, from the scale's shape (the zero point's matches): a scalar or one-element
    vector applies to all of x; a 1-D tensor of x.shape[axis] entries is per axis; with
    `block_size` B, a tensor of x's shape except ceil(D / B) entries along `axis` gives each
    run of B elements along that axis its own entry (the last run may be shorter)."""
    name = "quant.quantize_linear"
    operands = (Operand("x", (dt.f32, dt.f16, dt.bf16, dt.f64, dt.i32)), Operand("scale", SCALES),
                Operand("zero_point", TARGETS, optional=True))
    attrs = (AXIS, BLOCK, Attr("dtype", "dtype", doc="the quantized dtype"),
             Attr("saturate", "bool", True, doc="float8 targets: clamp instead of inf/NaN"),
             Attr("precision", "dtype", None, doc="dtype of the division; absent: the scale's"))
    traits = {"pure"}
    vjp = not_differentiable("rounds onto a quantization grid: the gradient is zero almost "
                             "everywhere (use a straight-through estimator explicitly)")
    cost = _elementwise_cost(4)
    examples = (
        Ex("f32[2,5]", Arg("f32[]", 0.05, 0.5), Arg("u8[]", 100, 150), dtype="u8"),
        Ex("f32[2,3,4]", Arg("f32[3]", 0.05, 0.5), Arg("i8[3]", -5, 5), axis=-2, dtype="i8"),
        Ex("f32[3,5]", Arg("f32[3,2]", 0.5, 2.0), Arg("u4[3,2]", 0, 15), axis=1, block_size=3,
           dtype="u4"),
        Ex("f16[4]", Arg("f16[1]", 0.01, 0.1), dtype="i16"),
        Ex("bf16[2,3]", Arg("f32[2]", 0.3, 1.0), axis=0, dtype="i4"),
        Ex("i32[6]", Arg("f32[]", 0.5, 2.0), Arg("u16[]", 1000, 2000), dtype="u16"),
        Ex("f32[3,4]", Arg("f32[3]", 0.1, 0.2), axis=0, dtype="u2", precision="f16"),
        Ex(Arg("f32[7]", -1000, 1000), Arg("f32[]", 0.5, 2.0), dtype="f8e4m3fn"),
        Ex(Arg("f32[7]", -1e6, 1e6), Arg("f32[]", 0.5, 2.0), dtype="f8e5m2", saturate=False),
        Ex("f32[2,4]", Arg("f16[2]", 0.2, 1.0), axis=0, dtype="f4e2m1"),
        Ex("f32[5]", Arg("f8e8m0[]", 0.5, 3.0), dtype="i2"),
        Ex("f32[]", Arg("f32[]", 0.1, 1.0), Arg("i8[]", -5, 5), dtype="i8"),
    )

    def infer(x, scale, zero_point, *, axis, block_size, dtype, saturate, precision):
        if dtype not in TARGETS:
            raise ShapeError(f"dtype {dtype} is not a quantized type (one of "
                             f"{', '.join(map(str, TARGETS))})")
        if zero_point is not None and zero_point.dtype is not dtype:
            raise ShapeError(f"zero_point has dtype {zero_point.dtype}, the result {dtype}")
        if precision is not None and precision not in WIDE:
            raise ShapeError(f"precision must be one of f32, f16, bf16, f64, got {precision}")
        _check_params(x, scale, zero_point, axis, block_size)
        return TensorType(x.shape, dtype)

    def ref(x, scale, zero_point, *, axis, block_size, dtype, saturate, precision):
        prec = precision or (dt.dtype(scale.dtype) if dt.dtype(scale.dtype) in WIDE else dt.f32)
        c = _compute_dtype(prec)
        s = expand(scale, x.shape, axis, block_size).astype(c)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            v = np.asarray(np.divide(x, s, dtype=c))
            if prec.np != c:
                v = np.asarray(v.astype(prec.np).astype(c))
            zp = None if zero_point is None else expand(zero_point, x.shape, axis, block_size)
            if dtype in INT_TARGETS:
                lo, hi = _RANGE[dtype]
                q = np.rint(v, out=v)
                if zp is not None:
                    q += zp.astype(c)
                np.clip(q, lo, hi, out=q)
                if np.isnan(q.min(initial=0.0)):
                    nan = np.isnan(q)
                    q[nan] = 0 if zp is None else np.broadcast_to(zp, q.shape)[nan]
                return q.astype(dtype.np)
            if zp is not None:
                v += zp.astype(c)
            if saturate or dtype is dt.f4e2m1:
                big = float(ml_dtypes.finfo(dtype.np).max)
                np.clip(v, -big, big, out=v)
            return v.astype(dtype.np)


@declare
class dequantize_linear:
    """ONNX DequantizeLinear: y = (x - zero_point) * scale, in dtype `dtype` (absent: the
    scale's dtype, which must then be f32, f16, bf16 or f64). The difference and the product
    are computed in f32 (f64 for an f64 result) and rounded once to `dtype`; for f16/bf16
    results that equals rounding the exact product. int32 x (a bias) subtracts its zero point
    exactly before the conversion. zero_point, when given, has x's dtype. Scale and zero point
    granularity as in quant.quantize_linear: per tensor, per axis, or blocked with
    `block_size`. Gradient: none for x (quantized), and for the scale the sum of
    g * (x - zero_point) over the elements each scale entry covers."""
    name = "quant.dequantize_linear"
    operands = (Operand("x", TARGETS + (dt.i32,)), Operand("scale", SCALES),
                Operand("zero_point", TARGETS + (dt.i32,), optional=True))
    attrs = (AXIS, BLOCK, Attr("dtype", "dtype", None, doc="the result dtype; absent: the scale's"))
    traits = {"pure"}
    cost = _elementwise_cost(2)
    examples = (
        Ex("u8[2,5]", Arg("f32[]", 0.05, 0.5), Arg("u8[]", 100, 150)),
        Ex("i8[2,3,4]", Arg("f32[3]", 0.05, 0.5), Arg("i8[3]", -5, 5), axis=-2),
        Ex("u4[3,5]", Arg("f32[3,2]", 0.5, 2.0), Arg("u4[3,2]", 0, 15), axis=1, block_size=3),
        Ex("i16[4]", Arg("f16[1]", 0.01, 0.1)),
        Ex("i32[3,2]", Arg("f32[2]", 0.3, 1.0), axis=1, dtype="bf16"),
        Ex("f8e4m3fn[5]", Arg("f16[]", 0.5, 2.0)),
        Ex("f4e2m1[2,4]", Arg("f8e8m0[2,1]", 0.5, 3.0), axis=-1, block_size=4, dtype="f32"),
        Ex("u2[4,3]", Arg("f32[]", 0.5, 2.0), Arg("u2[]", 0, 4), dtype="f16"),
        Ex("i8[]", Arg("f32[]", 0.1, 1.0), Arg("i8[]", -5, 5)),
    )

    def infer(x, scale, zero_point, *, axis, block_size, dtype):
        out = dtype or scale.dtype
        if out not in WIDE:
            raise ShapeError(f"the result dtype {out} must be f32, f16, bf16 or f64 (give dtype "
                             "for an f8e8m0 scale)")
        if zero_point is not None and zero_point.dtype is not x.dtype:
            raise ShapeError(f"zero_point has dtype {zero_point.dtype}, x {x.dtype}")
        _check_params(x, scale, zero_point, axis, block_size)
        return TensorType(x.shape, out)

    def ref(x, scale, zero_point, *, axis, block_size, dtype):
        out = dtype or dt.dtype(scale.dtype)
        c = _compute_dtype(out)
        if zero_point is None:
            d = x.astype(c)
        elif x.dtype == np.int32:
            d = (x.astype(np.int64) - expand(zero_point, x.shape, axis, block_size)).astype(c)
        else:
            d = x.astype(c) - expand(zero_point, x.shape, axis, block_size).astype(c)
        with np.errstate(over="ignore", invalid="ignore"):
            y = d * expand(scale, x.shape, axis, block_size).astype(c)
        return np.asarray(y).astype(out.np, copy=False)

    def vjp(b, op, g):
        x, scale = op.operands[0], op.operands[1]
        zp = op.operands[2] if len(op.operands) > 2 else None
        if g is None:
            return [None] * len(op.operands)
        axis, block = op.attrs["axis"], op.attrs["block_size"]
        ones = b.nn.broadcast_like(b.constant(np.ones((), scale.type.dtype.np)), scale)
        u = b.create("quant.dequantize_linear", [x, ones] + ([zp] if zp is not None else []),
                     dict(op.attrs)).results[0]
        gu = b.nn.mul(g, u)
        mode = granularity(x.type, scale.type, axis, block, "scale")
        if mode == "tensor":
            gs = b.nn.sum(gu)
        elif mode == "axis":
            a = norm_axis(axis, x.type.rank)
            gs = b.nn.sum(gu, axes=[i for i in range(x.type.rank) if i != a])
        else:
            a = norm_axis(axis, x.type.rank)
            d = x.type.shape[a]
            if type(d) is not int:
                raise CkirError("the scale gradient of blocked dequantization needs a static size "
                                f"along axis {axis}, got {x.type}")
            extra = -d % block
            if extra:
                pads = [0] * (2 * x.type.rank)
                pads[x.type.rank + a] = extra
                gu = b.nn.pad(gu, pads=pads)
            gs = b.nn.group_sum(gu, size=block, axis=a)
        if gs.type.dtype is not scale.type.dtype:
            gs = b.nn.cast(gs, to=scale.type.dtype)
        if gs.type is not scale.type:
            gs = b.nn.reshape_like(gs, scale)
        return [None, gs] + ([None] if zp is not None else [])


@declare
class dynamic_quantize_linear:
    """ONNX DynamicQuantizeLinear: uint8 quantization of f32 x with a scale and zero point
    computed from x's range, which is widened to include 0:
    lo = min(0, min(x)), hi = max(0, max(x)), scale = (hi - lo) / 255 (1 when hi == lo, as
    ONNX Runtime does), zero_point = round(clip(-lo / scale, 0, 255)),
    y = clip(round(x / scale) + zero_point, 0, 255), all in f32 with ties rounded to even.
    Results: y (u8, x's shape), scale (f32 scalar), zero_point (u8 scalar). An empty x gives
    scale 1 and zero point 0."""
    name = "quant.dynamic_quantize_linear"
    operands = (Operand("x", (dt.f32,)),)
    results = (Result("y"), Result("scale"), Result("zero_point"))
    traits = {"pure"}
    vjp = not_differentiable("its results are quantized integers and a scale chosen from the "
                             "range of x")
    cost = _elementwise_cost(6)
    examples = (Ex("f32[2,5]"), Ex(Arg("f32[7]", 0.5, 3.0)), Ex(Arg("f32[3,1,2]", -4.0, -0.5)),
                Ex(np.zeros((3,), np.float32)))

    def infer(x):
        return (TensorType(x.shape, dt.u8), TensorType((), dt.f32), TensorType((), dt.u8))

    def ref(x):
        f = np.float32
        hi = f(max(0.0, float(x.max()))) if x.size else f(0)
        lo = f(min(0.0, float(x.min()))) if x.size else f(0)
        scale = f(1.0) if hi == lo else f(hi - lo) / f(255)
        zp = np.rint(np.clip(f(0) - lo / scale, f(0), f(255)))
        with np.errstate(invalid="ignore"):
            y = np.clip(np.rint(x / scale) + zp, 0, 255)
        return y.astype(np.uint8), np.asarray(scale, np.float32), np.asarray(zp).astype(np.uint8)


def _int_operand(p, shape, row: bool):
    """A zero point as f64, shaped to broadcast against an operand of `shape`: a 1-D one on the
    left operand is per row (M), on the right per column (N)."""
    p = p.astype(np.float64)
    if p.ndim == 1 and p.size > 1 and row and len(shape) >= 2:
        return p.reshape(-1, 1)
    return p


def _zp_type(zp: TensorType, row: bool) -> tuple:
    if zp.rank == 1 and row:
        return zp.shape + (1,)
    return zp.shape


def _to_int32(acc: np.ndarray) -> np.ndarray:
    return acc.astype(np.int64).astype(np.int32)      # wraps as a 32-bit accumulator does


@declare
class matmul_integer:
    """ONNX MatMulInteger: (a - a_zero_point) @ (b - b_zero_point) in int32, numpy matmul rules.
    a and b are int8 or uint8. A zero point is a scalar, or per row of a (a 1-D tensor of M
    entries, or [..., M, 1]) / per column of b (N entries, or [..., 1, N]). Exact: the products
    are summed in float64 (exact below 2^53) and the sum wraps to int32 like a 32-bit
    accumulator."""
    name = "quant.matmul_integer"
    operands = (Operand("a", BYTE_INTS), Operand("b", BYTE_INTS),
                Operand("a_zero_point", BYTE_INTS, optional=True),
                Operand("b_zero_point", BYTE_INTS, optional=True))
    traits = {"pure"}
    vjp = not_differentiable("integer operands and result")
    examples = (Ex(Arg("u8[3,4]", 0, 256), Arg("i8[4,5]", -128, 128)),
                Ex(Arg("i8[2,3,4]", -128, 128), Arg("u8[4,2]", 0, 256), Arg("i8[]", -3, 3),
                   Arg("u8[]", 120, 130)),
                Ex(Arg("u8[3,4]", 0, 256), Arg("u8[2,4,5]", 0, 256), Arg("u8[3]", 0, 256),
                   Arg("u8[5]", 0, 256)),
                Ex(Arg("i8[4]", -128, 128), Arg("i8[4,2]", -128, 128)))

    def infer(a, b, a_zero_point, b_zero_point):
        batch, m, _, n, a1, b1 = _mm_dims(a, b, False, False)
        if a_zero_point is not None:
            if a_zero_point.dtype is not a.dtype:
                raise ShapeError(f"a_zero_point has dtype {a_zero_point.dtype}, a {a.dtype}")
            broadcast_shapes(a.shape, _zp_type(a_zero_point, a.rank >= 2))
        if b_zero_point is not None:
            if b_zero_point.dtype is not b.dtype:
                raise ShapeError(f"b_zero_point has dtype {b_zero_point.dtype}, b {b.dtype}")
            broadcast_shapes(b.shape, _zp_type(b_zero_point, False))
        return TensorType(batch + (() if a1 else (m,)) + (() if b1 else (n,)), dt.i32)

    def ref(a, b, a_zero_point, b_zero_point):
        af, bf = a.astype(np.float64), b.astype(np.float64)
        if a_zero_point is not None:
            af = af - _int_operand(a_zero_point, a.shape, True)
        if b_zero_point is not None:
            bf = bf - _int_operand(b_zero_point, b.shape, False)
        return _to_int32(np.matmul(af, bf))

    def cost(op, bind):
        a, b = op.operands[:2]
        batch, m, k, n, _, _ = _mm_dims(a.type, b.type, False, False)
        macs = math.prod(concrete(tuple(batch) + (m, k, n), bind))
        return Cost(2 * macs, sum(v.type.nbytes(bind) for v in op.operands),
                    op.results[0].type.nbytes(bind))


@declare
class conv_integer:
    """ONNX ConvInteger: nn.conv of (x - x_zero_point) by (w - w_zero_point) with int32 results
    (same geometry attributes: strides, pads, dilations, groups). x and w are int8 or uint8;
    x_zero_point is a scalar, w_zero_point a scalar or one per output channel. Padding is
    with zeros of the shifted input, i.e. with x_zero_point in x's terms, as ONNX specifies.
    Exact: computed in float64 and wrapped to int32."""
    name = "quant.conv_integer"
    operands = (Operand("x", BYTE_INTS), Operand("w", BYTE_INTS),
                Operand("x_zero_point", BYTE_INTS, optional=True),
                Operand("w_zero_point", BYTE_INTS, optional=True))
    attrs = CONV_ATTRS
    traits = {"pure"}
    vjp = not_differentiable("integer operands and result")
    examples = (Ex(Arg("u8[1,2,5,5]", 0, 256), Arg("i8[3,2,3,3]", -128, 128)),
                Ex(Arg("u8[2,4,6]", 0, 256), Arg("u8[4,2,3]", 0, 256), Arg("u8[]", 100, 150),
                   Arg("u8[4]", 100, 150), strides=[2], pads=[1, 2], dilations=[1], groups=2),
                Ex(Arg("i8[1,1,4,5]", -128, 128), Arg("i8[2,1,2,2]", -128, 128),
                   Arg("i8[]", -3, 3), Arg("i8[]", -3, 3), pads=[1, 0, 1, 1], dilations=[2, 1]))

    def infer(x, w, x_zero_point, w_zero_point, *, strides, pads, dilations, groups):
        if x_zero_point is not None and (x_zero_point.dtype is not x.dtype or x_zero_point.numel != 1):
            raise ShapeError(f"x_zero_point must be a single {x.dtype} value, got {x_zero_point}")
        if w_zero_point is not None:
            if w_zero_point.dtype is not w.dtype:
                raise ShapeError(f"w_zero_point has dtype {w_zero_point.dtype}, w {w.dtype}")
            per_channel = w_zero_point.rank == 1 and _same(w_zero_point.shape[0], w.shape[0])
            if w_zero_point.numel != 1 and not per_channel:
                raise ShapeError(f"w_zero_point {w_zero_point} must be a scalar or one per output "
                                 f"channel of w {w}")
        return _conv_type(x, w, strides, pads, dilations, groups).with_dtype(dt.i32)

    def ref(x, w, x_zero_point, w_zero_point, *, strides, pads, dilations, groups):
        xf, wf = x.astype(np.float64), w.astype(np.float64)
        if x_zero_point is not None:
            xf -= float(x_zero_point.reshape(-1)[0])
        if w_zero_point is not None:
            z = w_zero_point.astype(np.float64)
            wf -= z.reshape((-1,) + (1,) * (w.ndim - 1)) if z.size > 1 else z.reshape(())
        return _to_int32(_conv_np(xf, wf, strides, pads, dilations, groups))

    def cost(op, bind):
        return _macs_cost(op.results[0], op.operands[1], op.operands, op, bind)
