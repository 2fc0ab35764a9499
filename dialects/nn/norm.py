"""Normalizations: softmax, log_softmax, layer_norm, rms_norm.

References compute f16/bf16 in f32 (f32 and f64 in their own precision) and round the result
once to the operand dtype.
"""
from __future__ import annotations

import numpy as np

from ckir.errors import ShapeError
from ckir.opdef import FLOAT, Attr, Cost, Ex, Operand, declare
from ckir.types import fmt_shape

from ._util import broadcasts_to, norm_axis, numel, same_dtype, unbroadcast, wide


def _rows(t, axes, bind):
    """How many independent slices a reduction over `axes` of `t` has."""
    return numel(t.with_shape([d for i, d in enumerate(t.shape) if i not in axes]), bind)


# --- softmax -----------------------------------------------------------------------------------
def _softmax_ref(x, *, axis):
    a = norm_axis(axis, x.ndim)
    w = wide(x)
    e = np.exp(w - np.max(w, axis=a, keepdims=True, initial=-np.inf))
    return (e / np.sum(e, axis=a, keepdims=True)).astype(x.dtype)


def _log_softmax_ref(x, *, axis):
    a = norm_axis(axis, x.ndim)
    w = wide(x)
    z = w - np.max(w, axis=a, keepdims=True, initial=-np.inf)
    return (z - np.log(np.sum(np.exp(z), axis=a, keepdims=True))).astype(x.dtype)


def _axis_infer(x, *, axis):
    norm_axis(axis, x.rank)
    return x


def _softmax_cost(per_row):
    # per element: max 1, subtract 1, exp 8 (as nn.exp), sum 1, last step 1 (scale by the row's
    # reciprocal / subtract the log); per row: the reciprocal (4, as nn.div) or the log (8)
    def cost(op, bind):
        x = op.operands[0].type
        rows = _rows(x, (norm_axis(op.attrs["axis"], x.rank),), bind)
        return Cost(12 * numel(x, bind) + per_row * rows, x.nbytes(bind), op.results[0].type.nbytes(bind))
    return cost


_AXIS = Attr("axis", "int", -1, doc="the axis normalized over")
_SOFTMAX_EX = (Ex("f32[3,5]"), Ex("f32[2,3,4]", axis=1), Ex("f32[4,3]", axis=-2), Ex("f32[7]"),
               Ex("f16[2,6]"))


@declare
class softmax:
    """y = exp(x - max(x)) / sum(exp(x - max(x))) along `axis` (default the last). Subtracting
    the maximum keeps it finite for any finite input; a slice that is entirely -inf gives NaN
    (as numpy and torch do)."""
    name = "nn.softmax"
    operands = (Operand("x", FLOAT),)
    attrs = (_AXIS,)
    traits = {"pure", "inplace"}
    examples = _SOFTMAX_EX
    infer = _axis_infer
    ref = _softmax_ref
    cost = _softmax_cost(4)

    def vjp(b, op, g):
        if g is None:
            return [None]
        y, a = op.results[0], norm_axis(op.attrs["axis"], op.results[0].type.rank)
        s = b.nn.sum(b.nn.mul(g, y), axes=[a], keepdims=True)
        return [b.nn.mul(y, b.nn.sub(g, s))]


@declare
class log_softmax:
    """y = x - max(x) - log(sum(exp(x - max(x)))) along `axis` (default the last): the log of
    nn.softmax, computed without forming the softmax so it stays accurate for very negative
    outputs. A slice that is entirely -inf gives NaN."""
    name = "nn.log_softmax"
    operands = (Operand("x", FLOAT),)
    attrs = (_AXIS,)
    traits = {"pure", "inplace"}
    examples = _SOFTMAX_EX
    infer = _axis_infer
    ref = _log_softmax_ref
    cost = _softmax_cost(8)

    def vjp(b, op, g):
        if g is None:
            return [None]
        y, a = op.results[0], norm_axis(op.attrs["axis"], op.results[0].type.rank)
        return [b.nn.sub(g, b.nn.mul(b.nn.exp(y), b.nn.sum(g, axes=[a], keepdims=True)))]


# --- layer_norm, rms_norm ----------------------------------------------------------------------
def _norm_infer(x, params, axis):
    """Check the affine parameters against the normalized shape x.shape[axis:]."""
    a = norm_axis(axis, x.rank)
    tail = x.shape[a:]
    for name, p in params:
        if p is None:
            continue
        same_dtype(x, p)
        if not broadcasts_to(p.shape, tail):
            raise ShapeError(f"{name} {p} does not broadcast to the normalized shape {fmt_shape(tail)} "
                             f"(x {x}, axis {axis})")
    return x


def _check_params(x, a, params):
    tail = x.shape[a:]
    for name, p in params:
        if p is not None and np.broadcast_shapes(p.shape, tail) != tail:
            raise ShapeError(f"{name} of shape {list(p.shape)} does not broadcast to the normalized "
                             f"shape {list(tail)}")


def _affine(y, scale, bias):
    if scale is not None:
        y = y * wide(scale)
    if bias is not None:
        y = y + wide(bias)
    return y


def _norm_cost(per_elem, per_row):
    def cost(op, bind):
        x = op.operands[0].type
        a = norm_axis(op.attrs["axis"], x.rank)
        n = numel(x, bind)
        flops = n * (per_elem + len(op.operands) - 1) + per_row * _rows(x, range(a, x.rank), bind)
        return Cost(flops, sum(v.type.nbytes(bind) for v in op.operands), op.results[0].type.nbytes(bind))
    return cost


def _stats(b, x, axes, eps, center):
    """(normalized x, 1/sqrt(var + eps)) as IR, var the population variance (or mean square)."""
    xc = b.nn.sub(x, b.nn.mean(x, axes=axes, keepdims=True)) if center else x
    r = b.nn.rsqrt(b.nn.add(b.nn.mean(b.nn.mul(xc, xc), axes=axes, keepdims=True), eps))
    return b.nn.mul(xc, r), r


@declare
class layer_norm:
    """Layer normalization over the trailing axes [axis, rank) (ONNX LayerNormalization's `axis`;
    default -1, the last axis):

        y = (x - mean) / sqrt(var + eps) * scale + bias

    with mean and population variance (divide by N) taken over those axes. `scale` and `bias`
    are optional and broadcast (numpy rules, right-aligned) against x.shape[axis:]; they may not
    enlarge it. Operands are positional: to give a bias without a scale, pass a scale of ones.
    All operands share one float dtype; f16/bf16 are computed in f32."""
    name = "nn.layer_norm"
    operands = (Operand("x", FLOAT), Operand("scale", FLOAT, optional=True),
                Operand("bias", FLOAT, optional=True))
    attrs = (Attr("axis", "int", -1, doc="first normalized axis"),
             Attr("eps", "float", 1e-5, doc="added to the variance"))
    traits = {"pure", "inplace"}
    # per element: sum 1, subtract 1, square and sum 2, normalize 1, + 1 per affine operand;
    # per row: two divisions by N, add eps, rsqrt (5)
    cost = _norm_cost(5, 8)
    examples = (Ex("f32[3,5]"), Ex("f32[2,3,4]", "f32[4]", "f32[4]"),
                Ex("f32[2,3,4]", "f32[3,4]", "f32[1,4]", axis=-2),
                Ex("f32[2,3,4]", "f32[3,1]", axis=1, eps=0.1), Ex("f32[6]", "f32[6]"),
                Ex("f16[2,6]", "f16[6]", "f16[6]"))

    def infer(x, scale, bias, *, axis, eps):
        return _norm_infer(x, (("scale", scale), ("bias", bias)), axis)

    def ref(x, scale, bias, *, axis, eps):
        a = norm_axis(axis, x.ndim)
        _check_params(x, a, (("scale", scale), ("bias", bias)))
        axes = tuple(range(a, x.ndim))
        w = wide(x)
        xc = w - w.mean(axis=axes, keepdims=True)
        y = xc / np.sqrt((xc * xc).mean(axis=axes, keepdims=True) + eps)
        return _affine(y, scale, bias).astype(x.dtype)

    def vjp(b, op, g):
        x, scale, bias = (list(op.operands) + [None, None])[:3]
        if g is None:
            return [None] * len(op.operands)
        axes = list(range(norm_axis(op.attrs["axis"], x.type.rank), x.type.rank))
        xhat, r = _stats(b, x, axes, op.attrs["eps"], center=True)
        dxhat = g if scale is None else b.nn.mul(g, scale)
        mean = lambda v: b.nn.mean(v, axes=axes, keepdims=True)  # noqa: E731
        dx = b.nn.mul(r, b.nn.sub(b.nn.sub(dxhat, mean(dxhat)), b.nn.mul(xhat, mean(b.nn.mul(dxhat, xhat)))))
        grads = [dx]
        if scale is not None:
            grads.append(unbroadcast(b, b.nn.mul(g, xhat), scale))
        if bias is not None:
            grads.append(unbroadcast(b, g, bias))
        return grads


@declare
class rms_norm:
    """Root-mean-square normalization over the trailing axes [axis, rank) (default -1, the last
    axis), as in llama and ONNX RMSNormalization:

        y = x / sqrt(mean(x^2) + eps) * scale

    `scale` is optional and broadcasts (numpy rules, right-aligned) against x.shape[axis:]
    without enlarging it. Models that scale by (1 + w) (gemma) add the 1 to the weight first.
    All operands share one float dtype; f16/bf16 are computed in f32."""
    name = "nn.rms_norm"
    operands = (Operand("x", FLOAT), Operand("scale", FLOAT, optional=True))
    attrs = (Attr("axis", "int", -1, doc="first normalized axis"),
             Attr("eps", "float", 1e-6, doc="added to the mean square"))
    traits = {"pure", "inplace"}
    # per element: square and sum 2, normalize 1, + 1 with a scale; per row: divide by N, add
    # eps, rsqrt (5)
    cost = _norm_cost(3, 7)
    examples = (Ex("f32[3,5]", "f32[5]"), Ex("f32[2,3,4]"), Ex("f32[2,3,4]", "f32[3,1]", axis=-2),
                Ex("f32[4,6]", "f32[6]", eps=0.5), Ex("bf16[2,8]", "bf16[8]"))

    def infer(x, scale, *, axis, eps):
        return _norm_infer(x, (("scale", scale),), axis)

    def ref(x, scale, *, axis, eps):
        a = norm_axis(axis, x.ndim)
        _check_params(x, a, (("scale", scale),))
        w = wide(x)
        y = w / np.sqrt((w * w).mean(axis=tuple(range(a, x.ndim)), keepdims=True) + eps)
        return _affine(y, scale, None).astype(x.dtype)

    def vjp(b, op, g):
        x, scale = (list(op.operands) + [None])[:2]
        if g is None:
            return [None] * len(op.operands)
        axes = list(range(norm_axis(op.attrs["axis"], x.type.rank), x.type.rank))
        xhat, r = _stats(b, x, axes, op.attrs["eps"], center=False)
        dxhat = g if scale is None else b.nn.mul(g, scale)
        m = b.nn.mean(b.nn.mul(dxhat, xhat), axes=axes, keepdims=True)
        dx = b.nn.mul(r, b.nn.sub(dxhat, b.nn.mul(xhat, m)))
        return [dx] if scale is None else [dx, unbroadcast(b, b.nn.mul(g, xhat), scale)]
