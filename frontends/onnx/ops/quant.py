"""Quantization: QuantizeLinear / DequantizeLinear (opsets 10-25: per-tensor, per-axis, blocked;
int2..int16, float8 and float4 targets), DynamicQuantizeLinear, MatMulInteger, ConvInteger,
QLinearMatMul and QLinearConv. The QLinear ops are the exact integer product followed by a
requantization: y = quantize_linear(acc * (a_scale * b_scale / y_scale), 1, y_zero_point)."""
from __future__ import annotations

import numpy as np
from ckir.dialects.quant.linear import BYTE_INTS, FLOAT8, granularity

from ckir import dtypes as dt

from ..importer import onnx_dtype
from ..registry import converter
from .layers import auto_pads, conv_window, window_geometry


def _scale(ctx, i):
    s = ctx.x(i)
    if not s.type.dtype.is_float:
        raise ctx.fail(f"input {i}: {s.type.dtype} scales are not supported (float scales only)")
    return s


def _check_opset(ctx, x, scale, axis, block):
    if ctx.opset < 13 and granularity(x.type, scale.type, axis, block, "scale") != "tensor":
        raise ctx.fail(f"opset {ctx.opset} allows only a per-tensor scale, got {scale.type}")


def _axis(x, axis):
    # ONNX: a 1-D input is quantized per tensor or along its only axis, whatever `axis` says
    return 0 if x.type.rank == 1 else axis


@converter("QuantizeLinear", since=10)
def quantize_linear(ctx):
    x, scale, zp = ctx.x(0), _scale(ctx, 1), ctx.opt(2)
    axis, block = _axis(x, ctx.attr("axis", 1)), ctx.attr("block_size", 0)
    _check_opset(ctx, x, scale, axis, block)
    code = ctx.attr("output_dtype", 0)
    out = onnx_dtype(code, ctx.where) if code else None
    if zp is not None:
        if out is not None and out is not zp.type.dtype:
            raise ctx.fail(f"output_dtype {out} disagrees with the zero point's {zp.type.dtype}")
        out = zp.type.dtype
    prec = ctx.attr("precision", 0)
    return ctx.b.quant.quantize_linear(
        x, scale, *([zp] if zp is not None else []), axis=axis, block_size=block,
        dtype=out or dt.u8, saturate=bool(ctx.attr("saturate", 1)),
        precision=onnx_dtype(prec, ctx.where) if prec else None)


@converter("DequantizeLinear", since=10)
def dequantize_linear(ctx):
    x, scale, zp = ctx.x(0), _scale(ctx, 1), ctx.opt(2)
    axis, block = _axis(x, ctx.attr("axis", 1)), ctx.attr("block_size", 0)
    _check_opset(ctx, x, scale, axis, block)
    code = ctx.attr("output_dtype", 0)
    return ctx.b.quant.dequantize_linear(
        x, scale, *([zp] if zp is not None else []), axis=axis, block_size=block,
        dtype=onnx_dtype(code, ctx.where) if code else None)


@converter("DynamicQuantizeLinear", since=11)
def dynamic_quantize_linear(ctx):
    return list(ctx.b.quant.dynamic_quantize_linear(ctx.x(0)))


def _zero_points(ctx, x, w, i, j):
    """The optional zero points of inputs i and j; a missing first one becomes 0 when the
    second is given (operands are positional)."""
    zx, zw = ctx.opt(i), ctx.opt(j)
    if zx is None and zw is not None:
        zx = ctx.b.constant(np.zeros((), x.type.dtype.np))
    return [z for z in (zx, zw) if z is not None]


def _check_bytes(ctx, *vals):
    for v in vals:
        if v.type.dtype not in BYTE_INTS:
            raise ctx.fail(f"{v.type.dtype} operands are not supported (int8 and uint8 only)")


@converter("MatMulInteger", since=10)
def matmul_integer(ctx):
    a, b = ctx.x(0), ctx.x(1)
    _check_bytes(ctx, a, b)
    return ctx.b.quant.matmul_integer(a, b, *_zero_points(ctx, a, b, 2, 3))


def _conv_geometry(ctx, x, w):
    kernel, strides, dilations = conv_window(ctx, x, w)
    pads = auto_pads(ctx, x, kernel, strides, dilations)
    return dict(groups=ctx.attr("group", 1), **window_geometry(strides, pads, dilations))


@converter("ConvInteger", since=10)
def conv_integer(ctx):
    x, w = ctx.x(0), ctx.x(1)
    _check_bytes(ctx, x, w)
    return ctx.b.quant.conv_integer(x, w, *_zero_points(ctx, x, w, 2, 3), **_conv_geometry(ctx, x, w))


def _f32(b, v):
    return v if v.type.dtype is dt.f32 else b.nn.cast(v, to=dt.f32)


def _requantize(ctx, acc, multiplier, y_zp):
    """quantize(acc * multiplier) onto y_zp's grid: rounding after the f32 product, the zero
    point added to the rounded value, as ONNX Runtime's requantization does."""
    b = ctx.b
    if y_zp.type.numel != 1:
        raise ctx.fail(f"the output zero point must be a single value, got {y_zp.type}")
    v = b.nn.mul(b.nn.cast(acc, to=dt.f32), multiplier)
    return b.quant.quantize_linear(v, b.constant(np.float32(1)), y_zp, dtype=y_zp.type.dtype)


def _per_row(b, s, rank):
    """A 1-D per-row scale of a (M entries) as (M, 1) so it broadcasts over the columns."""
    if s.type.rank == 1 and s.type.shape[0] != 1 and rank >= 2:
        return b.nn.unsqueeze(s, axes=[-1])
    return s


@converter("QLinearMatMul", since=10)
def qlinear_matmul(ctx):
    b = ctx.b
    a, sa, za, w, sw, zw, sy, zy = (ctx.x(i) for i in range(8))
    if a.type.dtype in FLOAT8 or w.type.dtype in FLOAT8:
        # float8 operands: no integer product; dequantize, multiply in f32, quantize
        fa = b.quant.dequantize_linear(a, _f32(b, sa), za, axis=-2 if a.type.rank >= 2 else 0, dtype=dt.f32)
        fw = b.quant.dequantize_linear(w, _f32(b, sw), zw, axis=-1, dtype=dt.f32)
        return b.quant.quantize_linear(b.nn.matmul(fa, fw), _f32(b, sy), zy, dtype=zy.type.dtype)
    _check_bytes(ctx, a, w)
    acc = b.quant.matmul_integer(a, w, za, zw)
    m = b.nn.div(b.nn.mul(_per_row(b, _f32(b, sa), a.type.rank), _f32(b, sw)), _f32(b, sy))
    return _requantize(ctx, acc, m, zy)


@converter("QLinearConv", since=10)
def qlinear_conv(ctx):
    b = ctx.b
    x, sx, zx, w, sw, zw, sy, zy = (ctx.x(i) for i in range(8))
    bias = ctx.opt(8)
    _check_bytes(ctx, x, w)
    acc = b.quant.conv_integer(x, w, zx, zw, **_conv_geometry(ctx, x, w))
    spatial = [1] * (x.type.rank - 2)
    if bias is not None:
        if bias.type.dtype is not dt.i32 or bias.type.rank != 1:
            raise ctx.fail(f"the bias must be 1-D int32, got {bias.type}")
        acc = b.nn.add(acc, b.nn.reshape(bias, shape=[-1] + spatial))
    swf = _f32(b, sw)
    if sw.type.numel != 1:
        swf = b.nn.reshape(swf, shape=[-1] + spatial)
    m = b.nn.div(b.nn.mul(_f32(b, sx), swf), _f32(b, sy))
    return _requantize(ctx, acc, m, zy)
