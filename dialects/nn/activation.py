"""Activations and the rest of the elementwise math ONNX has (inverse trig and hyperbolic
functions, parametrized activations, NaN/Inf tests, fmod, bitwise ops and shifts), plus the
small math ops that go with them: cumulative sums and products, einsum, determinant and
inverse, hardmax, bitcast and the float8e8m0 cast; and dropout with a run-time training flag.

Unary math is declared from a table with elementwise.py's `unary`; activations with parameters
carry them as attributes. f16/bf16 (and narrower floats) are computed in f32 and rounded once.
"""
from __future__ import annotations

import math
import string

import numpy as np

from ckir import dtypes as dt
from ckir.errors import ShapeError
from ckir.opdef import (BOOL, FLOAT, INT, NUMERIC, Arg, Attr, Cost, Ex, OpDef, Operand, Result,
                        declare, not_differentiable, register)
from ckir.types import TensorType, broadcast_shapes, concrete

from ._util import norm_axis, numel, same_dtype, unbroadcast, wide
from .elementwise import UNARY_TRAITS, binary, f32_compute, unary

# --- unary math ----------------------------------------------------------------------------------


def _inv_sqrt_1mx2(b, x):
    return b.nn.rsqrt(b.nn.sub(1.0, b.nn.mul(x, x)))


unary("asin", np.arcsin, lambda b, x, y, g: b.nn.mul(g, _inv_sqrt_1mx2(b, x)),
      "Inverse sine, in [-pi/2, pi/2]; NaN outside [-1, 1].", flops=10, low=-0.9, high=0.9)
unary("acos", np.arccos, lambda b, x, y, g: b.nn.neg(b.nn.mul(g, _inv_sqrt_1mx2(b, x))),
      "Inverse cosine, in [0, pi]; NaN outside [-1, 1].", flops=10, low=-0.9, high=0.9)
unary("atan", np.arctan, lambda b, x, y, g: b.nn.div(g, b.nn.add(b.nn.mul(x, x), 1.0)),
      "Inverse tangent, in (-pi/2, pi/2).", flops=10)
unary("tan", np.tan, lambda b, x, y, g: b.nn.mul(g, b.nn.add(b.nn.mul(y, y), 1.0)),
      "Tangent.", flops=10, low=-1.2, high=1.2)
unary("sinh", np.sinh, lambda b, x, y, g: b.nn.mul(g, b.nn.cosh(x)), "Hyperbolic sine.", flops=10)
unary("cosh", np.cosh, lambda b, x, y, g: b.nn.mul(g, b.nn.sinh(x)), "Hyperbolic cosine.",
      flops=10)
unary("asinh", np.arcsinh, lambda b, x, y, g: b.nn.mul(g, b.nn.rsqrt(b.nn.add(b.nn.mul(x, x), 1.0))),
      "Inverse hyperbolic sine.", flops=12)
unary("acosh", np.arccosh, lambda b, x, y, g: b.nn.mul(g, b.nn.rsqrt(b.nn.sub(b.nn.mul(x, x), 1.0))),
      "Inverse hyperbolic cosine, >= 0; NaN below 1.", flops=12, low=1.1, high=3.0)
unary("atanh", np.arctanh, lambda b, x, y, g: b.nn.div(g, b.nn.sub(1.0, b.nn.mul(x, x))),
      "Inverse hyperbolic tangent; +-inf at +-1, NaN outside [-1, 1].", flops=12, low=-0.9,
      high=0.9)
unary("softplus", lambda x: np.logaddexp(0, x), lambda b, x, y, g: b.nn.mul(g, b.nn.sigmoid(x)),
      "y = ln(1 + e^x), computed without overflow for large x (no threshold: exact for every x).",
      flops=10)


def _sq(b, v):
    return b.nn.mul(v, v)


unary("softsign", lambda x: x / (1 + np.abs(x)),
      lambda b, x, y, g: b.nn.div(g, _sq(b, b.nn.add(b.nn.abs(x), 1.0))), "y = x / (1 + |x|)",
      flops=3)


def _mish_grad(b, x, g):
    # y = x tanh(sp(x)): dy/dx = tanh(sp) + x (1 - tanh(sp)^2) sigmoid(x)
    t = b.nn.tanh(b.nn.softplus(x))
    return b.nn.mul(g, b.nn.add(t, b.nn.mul(b.nn.mul(x, b.nn.sub(1.0, _sq(b, t))), b.nn.sigmoid(x))))


unary("mish", lambda x: x * np.tanh(np.logaddexp(0, x)), lambda b, x, y, g: _mish_grad(b, x, g),
      "y = x * tanh(softplus(x))", flops=20)
unary("hard_swish", lambda x: x * np.clip(x / 6 + 0.5, 0, 1),
      lambda b, x, y, g: b.nn.where(b.nn.lt(x, -3.0), 0.0,
                                    b.nn.where(b.nn.gt(x, 3.0), g,
                                               b.nn.mul(g, b.nn.add(b.nn.div(x, 3.0), 0.5)))),
      "y = x * clip(x / 6 + 1/2, 0, 1) (ONNX HardSwish, torch hardswish).", flops=5, low=-5.0,
      high=5.0)


# --- activations with parameters ------------------------------------------------------------------
def activation(name, fn, grad, doc, attrs, *, examples, flops=4, dtypes=FLOAT, raw=False):
    """Declare nn.<name>: y = fn(x, **attrs). `grad(b, x, y, g, **attrs)` returns dL/dx."""
    def vjp(b, op, g):
        if g is None or not op.operands[0].type.dtype.is_float:
            return [None]
        return [grad(b, op.operands[0], op.results[0], g, **op.attrs)]
    return register(OpDef(
        f"nn.{name}", doc=doc, operands=(Operand("x", dtypes),), attrs=attrs, traits=UNARY_TRAITS,
        infer=lambda x, **kw: x, ref=fn if raw else f32_compute(fn), vjp=vjp, flops=flops,
        examples=examples))


def _neg_part(x):
    return np.minimum(x, 0)    # exp of it never overflows


SELU_ALPHA = 1.67326319217681884765625
SELU_GAMMA = 1.05070102214813232421875

activation(
    "elu", lambda x, *, alpha: np.where(x > 0, x, alpha * np.expm1(_neg_part(x))),
    lambda b, x, y, g, *, alpha: b.nn.where(b.nn.gt(x, 0.0), g, b.nn.mul(g, b.nn.mul(b.nn.exp(x), alpha))),
    "y = x for x > 0, else alpha * (e^x - 1).", (Attr("alpha", "float", 1.0),),
    examples=(Ex("f32[2,5]"), Ex("f32[7]", alpha=0.3), Ex("f32[]", alpha=2.0)))
activation(
    "selu", lambda x, *, alpha, gamma: gamma * np.where(x > 0, x, alpha * np.expm1(_neg_part(x))),
    lambda b, x, y, g, *, alpha, gamma: b.nn.mul(
        b.nn.where(b.nn.gt(x, 0.0), g, b.nn.mul(g, b.nn.mul(b.nn.exp(x), alpha))), gamma),
    "y = gamma * (x for x > 0, else alpha * (e^x - 1)); the defaults are SELU's constants "
    "(alpha = 1.6732632, gamma = 1.0507010, as ONNX gives them in f32).",
    (Attr("alpha", "float", SELU_ALPHA), Attr("gamma", "float", SELU_GAMMA)),
    examples=(Ex("f32[2,5]"), Ex("f32[6]", alpha=2.0, gamma=3.0)))
activation(
    "celu", lambda x, *, alpha: np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(_neg_part(x) / alpha)),
    lambda b, x, y, g, *, alpha: b.nn.where(b.nn.gt(x, 0.0), g, b.nn.mul(g, b.nn.exp(b.nn.div(x, alpha)))),
    "y = max(0, x) + min(0, alpha * (e^(x / alpha) - 1)); alpha must not be 0.",
    (Attr("alpha", "float", 1.0),),
    examples=(Ex("f32[2,5]"), Ex("f32[6]", alpha=2.0)))
activation(
    "leaky_relu", lambda x, *, alpha: np.where(x < 0, alpha * x, x),
    lambda b, x, y, g, *, alpha: b.nn.where(b.nn.lt(x, 0.0), b.nn.mul(g, alpha), g),
    "y = x for x >= 0, else alpha * x.", (Attr("alpha", "float", 0.01),),
    examples=(Ex("f32[2,5]"), Ex("f32[6]", alpha=0.2)), flops=2)
activation(
    "thresholded_relu", lambda x, *, alpha: np.where(x > alpha, x, 0),
    lambda b, x, y, g, *, alpha: b.nn.where(b.nn.gt(x, alpha), g, 0.0),
    "y = x for x > alpha, else 0.", (Attr("alpha", "float", 1.0),),
    examples=(Ex("f32[2,5]"), Ex("f32[6]", alpha=0.3)), flops=1)


def _hard_sigmoid_grad(b, x, y, g, *, alpha, beta):
    z = b.nn.add(b.nn.mul(x, alpha), beta)
    inside = b.nn.and_(b.nn.gt(z, 0.0), b.nn.lt(z, 1.0))
    return b.nn.where(inside, b.nn.mul(g, alpha), 0.0)


activation(
    "hard_sigmoid", lambda x, *, alpha, beta: np.clip(alpha * x + beta, 0, 1), _hard_sigmoid_grad,
    "y = max(0, min(1, alpha * x + beta)).",
    (Attr("alpha", "float", 0.2), Attr("beta", "float", 0.5)),
    examples=(Ex(Arg("f32[2,5]", -4.0, 4.0)), Ex(Arg("f32[6]", -2.0, 2.0), alpha=0.5, beta=0.4)),
    flops=3)


def _shrink_ref(x, *, lambd, bias):
    w = x.astype(np.float64) if x.dtype.kind in "iu" else wide(x)
    y = np.where(w < -lambd, w + bias, np.where(w > lambd, w - bias, 0))
    return np.asarray(y).astype(x.dtype)


def _shrink_grad(b, x, y, g, *, lambd, bias):
    return b.nn.where(b.nn.or_(b.nn.lt(x, -lambd), b.nn.gt(x, lambd)), g, 0.0)


activation(
    "shrink", _shrink_ref, _shrink_grad,
    "y = x + bias for x < -lambd, x - bias for x > lambd, else 0 (ONNX Shrink: soft shrink with "
    "bias = lambd, hard shrink with bias = 0). Integer inputs are computed in f64 and converted "
    "back (truncating toward zero).",
    (Attr("lambd", "float", 0.5), Attr("bias", "float", 0.0)),
    examples=(Ex("f32[2,5]"), Ex("f32[7]", lambd=0.3, bias=0.3), Ex("i32[6]", lambd=1.5, bias=1.0)),
    dtypes=NUMERIC, raw=True, flops=2)


def _prelu_grads(b, x, slope, y, g):
    neg = b.nn.lt(x, 0.0)
    return b.nn.where(neg, b.nn.mul(g, slope), g), b.nn.where(neg, b.nn.mul(g, x), 0.0)


binary("prelu", lambda x, slope: np.where(x < 0, x * slope, x), _prelu_grads,
       "y = x for x >= 0, else slope * x; slope broadcasts against x (ONNX PRelu: usually one "
       "slope per channel, shaped to broadcast).", flops=2)


def _fmod(a, b):
    if a.dtype.kind in "iu":
        if np.any(b == 0):
            raise ShapeError("integer fmod by zero")
        return np.fmod(a, b)
    return f32_compute(np.fmod)(a, b)


binary("fmod", _fmod,
       lambda b, x, y, out, g: (g, b.nn.neg(b.nn.mul(g, b.nn.div(b.nn.sub(x, out), y)))),
       "Remainder of truncated division (C fmod): the sign of the dividend a. Floats: NaN for "
       "b = 0 or infinite a; integer fmod by zero fails. Compare nn.mod (sign of the divisor).",
       flops=4, low=0.5, high=3.0, raw=True)


# --- NaN / Inf tests -------------------------------------------------------------------------------
@declare
class isnan:
    """True where x is NaN (a bool tensor)."""
    name = "nn.isnan"
    operands = (Operand("x", FLOAT),)
    traits = {"pure", "elementwise"}
    flops = 1
    vjp = not_differentiable("boolean result")
    examples = (Ex(np.array([1.0, np.nan, -np.inf, 0.0, np.inf], np.float32)), Ex("f16[2,3]"))

    def infer(x):
        return x.with_dtype(dt.bool_)

    def ref(x):
        return np.isnan(wide(x))


@declare
class isinf:
    """True where x is +inf (when `detect_positive`) or -inf (when `detect_negative`)."""
    name = "nn.isinf"
    operands = (Operand("x", FLOAT),)
    attrs = (Attr("detect_positive", "bool", True), Attr("detect_negative", "bool", True))
    traits = {"pure", "elementwise"}
    flops = 1
    vjp = not_differentiable("boolean result")
    examples = (Ex(np.array([1.0, np.nan, -np.inf, 0.0, np.inf], np.float32)),
                Ex(np.array([[np.inf, -np.inf], [2.0, -1.0]], np.float64), detect_negative=False),
                Ex(np.array([np.inf, -np.inf, 3.0], np.float16), detect_positive=False))

    def infer(x, *, detect_positive, detect_negative):
        return x.with_dtype(dt.bool_)

    def ref(x, *, detect_positive, detect_negative):
        w = wide(x)
        return np.isinf(w) & (((w > 0) & detect_positive) | ((w < 0) & detect_negative))


# --- bitwise ops ---------------------------------------------------------------------------------
BITS = (dt.i8, dt.i16, dt.i32, dt.i64, dt.u8, dt.u16, dt.u32, dt.u64)
_BITWISE = not_differentiable("integer bit operation")


def _int_binary(name, fn, doc, *, examples, commutative=False):
    traits = {"pure", "elementwise", "broadcasting", "inplace"} | ({"commutative"} if commutative else set())
    return register(OpDef(
        f"nn.{name}", doc=doc, operands=(Operand("a", BITS), Operand("b", BITS)), traits=traits,
        infer=lambda a, b: TensorType(broadcast_shapes(a.shape, b.shape), same_dtype(a, b)),
        ref=fn, vjp=_BITWISE, flops=1, examples=examples))


_BIT_EX = (Ex(Arg("i32[2,3]", -100, 100), Arg("i32[2,3]", -100, 100)),
           Ex(Arg("u8[4,1,3]", 0, 256), Arg("u8[2,1]", 0, 256)),
           Ex(Arg("i64[3]", -9, 9), Arg("i64[]", -9, 9)))
for _n, _f, _s in (("bitwise_and", np.bitwise_and, "&"), ("bitwise_or", np.bitwise_or, "|"),
                   ("bitwise_xor", np.bitwise_xor, "^")):
    _int_binary(_n, _f, f"a {_s} b, bit by bit (two's complement for signed types).",
                examples=_BIT_EX, commutative=True)

register(OpDef(
    "nn.bitwise_not", doc="~x, every bit flipped (for signed types: -x - 1).",
    operands=(Operand("x", BITS),), traits=UNARY_TRAITS, infer=lambda x: x, ref=np.invert,
    vjp=_BITWISE, flops=1,
    examples=(Ex(Arg("i32[2,3]", -100, 100)), Ex(Arg("u8[5]", 0, 256)), Ex(Arg("u64[]", 0, 1000)))))


def _shift_parts(a, s):
    a, s = np.broadcast_arrays(a, s)
    bits = a.dtype.itemsize * 8
    ok = (s >= 0) & (s < bits)
    return a, np.where(ok, s, 0).astype(np.uint64), ok


def _shift_left(a, s):
    a, s, ok = _shift_parts(a, s)
    u = np.dtype(f"u{a.dtype.itemsize}")
    r = np.left_shift(a.view(u) if a.flags.c_contiguous else a.astype(u), s.astype(u)).astype(a.dtype)
    return np.where(ok, r, 0).astype(a.dtype)


def _shift_right(a, s):
    a, s, ok = _shift_parts(a, s)
    r = np.right_shift(a, s.astype(a.dtype))
    fill = np.where(a < 0, -1, 0) if a.dtype.kind == "i" else 0
    return np.where(ok, r, fill).astype(a.dtype)


_SHIFT_EX = (Ex(Arg("u8[2,3]", 0, 256), Arg("u8[2,3]", 0, 10)),
             Ex(Arg("i32[4,1]", -1000, 1000), Arg("i32[3]", -2, 40)),
             Ex(Arg("i64[5]", -50, 50), Arg("i64[]", 0, 70)))
_int_binary("shift_left", _shift_left,
            "a << b: bits move toward the high end, bits shifted out are lost (for signed types "
            "also into and past the sign bit). A shift b < 0 or b >= the bit width gives 0.",
            examples=_SHIFT_EX)
_int_binary("shift_right", _shift_right,
            "a >> b: arithmetic (sign-extending) for signed types, logical for unsigned. A shift "
            "b < 0 or b >= the bit width gives what the sign fill alone gives: -1 for negative a, "
            "else 0.", examples=_SHIFT_EX)


# --- cumulative sum and product --------------------------------------------------------------------
def _axis_value(axis_t):
    a = np.asarray(axis_t).reshape(-1)
    if a.size != 1:
        raise ShapeError(f"the axis operand must hold one value, got {a.size}")
    return int(a[0])


def _cum_infer(x, axis_t, *, axis, exclusive, reverse):
    if (axis is None) == (axis_t is None):
        raise ShapeError("give the axis either as the `axis` attribute or as an operand, not both "
                         "or neither")
    if axis_t is not None:
        if axis_t.rank > 1 or any(d != 1 for d in axis_t.shape):
            raise ShapeError(f"the axis operand must be a scalar or hold one element, got {axis_t}")
    else:
        norm_axis(axis, x.rank)
    if x.rank == 0:
        raise ShapeError("x must have rank >= 1")
    return x


def _cum_ref(fn, ident):
    def ref(x, axis_t, *, axis, exclusive, reverse):
        ax = norm_axis(_axis_value(axis_t) if axis_t is not None else axis, x.ndim)
        w = wide(x)
        if reverse:
            w = np.flip(w, ax)
        y = fn(w, axis=ax, dtype=w.dtype)
        if exclusive and y.shape[ax]:
            head = np.full_like(np.take(y, [0], axis=ax), ident)
            y = np.concatenate([head, np.take(y, np.arange(y.shape[ax] - 1), axis=ax)], axis=ax)
        if reverse:
            y = np.flip(y, ax)
        return np.ascontiguousarray(y).astype(x.dtype)
    return ref


def _cum_cost(op, bind):
    x = op.operands[0].type
    return Cost(numel(x, bind), x.nbytes(bind), op.results[0].type.nbytes(bind))


def _cumsum_vjp(b, op, g):
    x = op.operands[0]
    if g is None or not x.type.dtype.is_float:
        return [None] * len(op.operands)
    a = op.attrs
    # dx_j = sum of g_i over the outputs that included x_j: the cumsum in the other direction
    return [b.nn.cumsum(g, *op.operands[1:], axis=a["axis"], exclusive=a["exclusive"],
                        reverse=not a["reverse"])] + [None] * (len(op.operands) - 1)


def _cumprod_vjp(b, op, g):
    x = op.operands[0]
    if g is None or not x.type.dtype.is_float:
        return [None] * len(op.operands)
    a = op.attrs
    gy = b.nn.mul(g, op.results[0])
    s = b.nn.cumsum(gy, *op.operands[1:], axis=a["axis"], exclusive=a["exclusive"],
                    reverse=not a["reverse"])
    return [b.nn.div(s, x)] + [None] * (len(op.operands) - 1)


_CUM_ATTRS = (Attr("axis", "int", None, doc="the axis (negative counts from the end), unless the "
                   "axis operand gives it"),
              Attr("exclusive", "bool", False, doc="leave out the element itself"),
              Attr("reverse", "bool", False, doc="accumulate from the end of the axis"))
_CUM_OPERANDS = (Operand("x", NUMERIC),
                 Operand("axis_t", (dt.i32, dt.i64), optional=True,
                         doc="the axis as a run-time scalar (ONNX's axis input), instead of `axis`"))

register(OpDef(
    "nn.cumsum", doc="Running sum along an axis: y[i] = x[0] + ... + x[i]; `exclusive` gives "
    "x[0] + ... + x[i-1] (0 first); `reverse` sums from the end instead. The axis is the `axis` "
    "attribute or, when it is only known at run time, the scalar `axis_t` operand.",
    operands=_CUM_OPERANDS, attrs=_CUM_ATTRS, traits={"pure"}, infer=_cum_infer,
    ref=_cum_ref(np.cumsum, 0), vjp=_cumsum_vjp, cost=_cum_cost,
    examples=(Ex("f32[3,4]", axis=1), Ex("f32[5]", axis=0, exclusive=True),
              Ex("f32[2,3,4]", axis=-2, reverse=True), Ex("f32[6]", axis=0, exclusive=True, reverse=True),
              Ex("i32[2,5]", axis=1), Ex("f32[3,4]", np.array(0, np.int64)),
              Ex("f32[2,3]", np.array([-1], np.int32), exclusive=True, reverse=True))))
register(OpDef(
    "nn.cumprod", doc="Running product along an axis, with the same `axis`/`axis_t`, `exclusive` "
    "(1 first) and `reverse` as nn.cumsum. Its gradient divides by x, so it assumes no zero "
    "elements (as nn.prod's does).",
    operands=_CUM_OPERANDS, attrs=_CUM_ATTRS, traits={"pure"}, infer=_cum_infer,
    ref=_cum_ref(np.cumprod, 1), vjp=_cumprod_vjp, cost=_cum_cost,
    examples=(Ex(Arg("f32[3,4]", 0.5, 1.5), axis=1), Ex(Arg("f32[5]", 0.5, 1.5), axis=0, exclusive=True),
              Ex(Arg("f32[2,3,4]", 0.5, 1.5), axis=0, reverse=True),
              Ex(Arg("f32[6]", -1.5, -0.5), axis=0, exclusive=True, reverse=True),
              Ex(Arg("i64[2,5]", -3, 4), axis=-1), Ex(Arg("f32[3,4]", 0.5, 1.5), np.array(1, np.int32)))))


# --- einsum --------------------------------------------------------------------------------------
_LETTERS = string.ascii_letters


def einsum_terms(equation: str, ranks) -> tuple[list[str], str]:
    """The operand terms and the output term of an einsum equation, with each ellipsis spelled
    out as letters the equation does not use (right-aligned, numpy's broadcasting)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ShapeError(f"equation {equation!r} has {len(terms)} operand terms for {len(ranks)} operands")
    for t in terms + ([rhs] if arrow else []):
        core = t.replace("...", "", 1)
        if any(c not in _LETTERS for c in core):
            raise ShapeError(f"equation {equation!r}: term {t!r} may hold only letters and one '...'")
    free = [c for c in _LETTERS if c not in eq]
    n_ell = 0
    for t, r in zip(terms, ranks):
        n = len(t.replace("...", ""))
        if "..." in t:
            if r < n:
                raise ShapeError(f"equation {equation!r}: term {t!r} needs rank >= {n}, got {r}")
            n_ell = max(n_ell, r - n)
        elif r != n:
            raise ShapeError(f"equation {equation!r}: term {t!r} has {n} indices for an operand of rank {r}")
    ell = "".join(free[:n_ell])
    out_terms = []
    for t, r in zip(terms, ranks):
        k = r - len(t.replace("...", ""))
        out_terms.append(t.replace("...", ell[n_ell - k:] if k else ""))
    if arrow:
        if "..." not in rhs and n_ell and any("..." in t for t in terms):
            # numpy sums broadcast dims an explicit output leaves out; ONNX does not define it
            raise ShapeError(f"equation {equation!r}: the output must keep the '...' dims")
        out = rhs.replace("...", ell)
    else:
        once = sorted(c for c in set("".join(terms).replace("...", "")) if "".join(terms).count(c) == 1)
        out = ell + "".join(once)
    if len(set(out)) != len(out):
        raise ShapeError(f"equation {equation!r}: the output repeats an index")
    known = set("".join(out_terms))
    for c in out:
        if c not in known:
            raise ShapeError(f"equation {equation!r}: output index {c!r} is in no operand term")
    return out_terms, out


def _letter_dims(terms, types):
    dims = {}
    for t, ty in zip(terms, types):
        for c, d in zip(t, ty.shape):
            dims.setdefault(c, []).append(d)
    try:
        return {c: broadcast_shapes(*[(d,) for d in ds])[0] for c, ds in dims.items()}
    except ShapeError:
        bad = next(c for c, ds in dims.items() if len({d for d in ds if type(d) is int and d != 1}) > 1)
        raise ShapeError(f"index {bad!r} has sizes {[d for d in dims[bad]]} in different operands") from None


@declare
class einsum:
    """Einstein summation (numpy/ONNX einsum): `equation` names each operand's dims with
    letters, e.g. "bij,bjk->bik". Indices missing from the output are summed; an index repeated
    in one term takes the diagonal; "..." stands for the same broadcast dims in every term.
    Without "->" the output is the "..." dims followed by the indices that appear once, in
    alphabetical order (upper case first). f16/bf16 accumulate in f32."""
    name = "nn.einsum"
    operands = (Operand("xs", NUMERIC, variadic=True),)
    attrs = (Attr("equation", "str"),)
    traits = {"pure"}
    examples = (Ex(["f32[2,3]", "f32[3,4]"], equation="ij,jk->ik"),
                Ex(["f32[2,3,4]", "f32[2,4,5]"], equation="bij,bjk->bik"),
                Ex(["f32[3,3]"], equation="ii->i"), Ex(["f32[2,4,4]"], equation="bii"),
                Ex(["f32[5]", "f32[5]"], equation="i,i"), Ex(["f32[2,3]"], equation="ij->"),
                Ex(["f32[2,3,4]"], equation="...ij->...ji"), Ex(["f32[3,4]"], equation="ij->j"),
                Ex(["f32[2,3]", "f32[3]", "f32[3,4]"], equation="ij, j, jk -> ik"),
                Ex(["f32[1,2,3]", "f32[4,3,5]"], equation="...ij,...jk"),
                Ex(["i32[2,3]", "i32[3]"], equation="ij,j->i"))

    def infer(xs, *, equation):
        if not xs:
            raise ShapeError("needs at least one operand")
        d = same_dtype(*xs)
        terms, out = einsum_terms(equation, [x.rank for x in xs])
        dims = _letter_dims(terms, xs)
        return TensorType([dims[c] for c in out], d)

    def ref(xs, *, equation):
        ws = [wide(x) for x in xs]
        y = np.einsum(equation, *ws, optimize=len(ws) > 2)
        return np.asarray(y).astype(xs[0].dtype)

    def vjp(b, op, g):
        xs = op.operands
        if g is None or not xs[0].type.dtype.is_float:
            return [None] * len(xs)
        terms, out = einsum_terms(op.attrs["equation"], [x.type.rank for x in xs])
        return [_einsum_grad(b, g, xs, terms, out, k) for k in range(len(xs))]

    def cost(op, bind):
        xs = op.operands
        terms, out = einsum_terms(op.attrs["equation"], [x.type.rank for x in xs])
        dims = _letter_dims(terms, [x.type for x in xs])
        letters = sorted(set("".join(terms)))
        work = math.prod(_concrete_dim(dims[c], bind) for c in letters)
        return Cost(work * len(xs), sum(x.type.nbytes(bind) for x in xs), op.results[0].type.nbytes(bind))


def _concrete_dim(d, bind):
    return concrete((d,), bind)[0]


def _einsum_grad(b, g, xs, terms, out, k):
    """d(sum(g * einsum))/d xs[k] as one einsum: g and the other operands contracted onto xs[k]'s
    term. Indices only xs[k] has come back through a ones tensor shaped like xs[k]; a repeated
    index (a diagonal) is written onto the diagonal through identity matrices."""
    x, term = xs[k], terms[k]
    others = [j for j in range(len(xs)) if j != k]
    ins, vals = [out], [g]
    for j in others:
        ins.append(terms[j])
        vals.append(xs[j])
    seen = set(out).union(*[terms[j] for j in others])
    if any(c not in seen for c in term):
        ins.append(term)
        vals.append(b.nn.broadcast_like(b.constant(np.ones((), g.type.dtype.np)), x))
    used = set("".join(terms)) | set(out)
    fresh = iter(c for c in _LETTERS if c not in used)
    res, first = [], set()
    for i, c in enumerate(term):
        if c not in first:
            first.add(c)
            res.append(c)
            continue
        n = x.type.shape[i]
        if type(n) is not int:
            raise ShapeError(f"nn.einsum gradient: the diagonal index {c!r} needs a static size")
        e = next(fresh)
        ins.append(c + e)
        vals.append(b.constant(np.eye(n, dtype=g.type.dtype.np)))
        res.append(e)
    gx = b.nn.einsum(*vals, equation=",".join(ins) + "->" + "".join(res))
    return unbroadcast(b, gx, x)


# --- determinant and inverse ---------------------------------------------------------------------
def _square_infer(x):
    if x.rank < 2:
        raise ShapeError(f"needs a (..., M, M) tensor, got {x}")
    m, n = x.shape[-2:]
    if type(m) is int and type(n) is int and m != n:
        raise ShapeError(f"the last two dims must be equal (square matrices), got {x}")
    return x


def _mt(b, v):
    r = v.type.rank
    return b.nn.transpose(v, perm=list(range(r - 2)) + [r - 1, r - 2])


def _linalg_cost(op, bind):
    x = op.operands[0].type
    n = numel(x, bind)
    m = _concrete_dim(x.shape[-1], bind)
    return Cost(2 * n * m, x.nbytes(bind), op.results[0].type.nbytes(bind))


def _linalg(fn, what):
    def ref(x):
        try:
            return np.asarray(fn(wide(x))).astype(x.dtype)
        except np.linalg.LinAlgError as e:
            raise ShapeError(f"{what}: {e}") from None
    return ref


@declare
class det:
    """Determinant of each square matrix in the last two dims: (..., M, M) -> (...). Computed
    by LU factorization (numpy.linalg.det), f16/bf16 in f32. Its gradient is det * inverse(x)^T,
    so it needs non-singular matrices."""
    name = "nn.det"
    operands = (Operand("x", FLOAT),)
    traits = {"pure"}
    cost = _linalg_cost
    examples = (Ex("f32[3,3]"), Ex("f32[2,4,4]"), Ex("f32[2,1,2,2]"), Ex("f32[1,1]"))

    def infer(x):
        return x.with_shape(_square_infer(x).shape[:-2])

    ref = staticmethod(_linalg(np.linalg.det, "nn.det"))

    def vjp(b, op, g):
        if g is None:
            return [None]
        x = op.operands[0]
        gy = b.nn.unsqueeze(b.nn.mul(g, op.results[0]), axes=[-1, -2])
        return [b.nn.mul(gy, _mt(b, b.nn.inverse(x)))]


@declare
class inverse:
    """Inverse of each square matrix in the last two dims (numpy.linalg.inv); a singular matrix
    is an error."""
    name = "nn.inverse"
    operands = (Operand("x", FLOAT),)
    traits = {"pure"}
    cost = _linalg_cost
    examples = (Ex("f32[3,3]"), Ex("f32[2,4,4]"), Ex("f32[1,1]"))

    def infer(x):
        return _square_infer(x)

    ref = staticmethod(_linalg(np.linalg.inv, "nn.inverse"))

    def vjp(b, op, g):
        if g is None:
            return [None]
        y = op.results[0]
        # d(inv) = -Y dX Y  =>  dX = -Y^T g Y^T
        return [b.nn.neg(b.nn.matmul(b.nn.matmul(y, g, transpose_a=True), y, transpose_b=True))]


# --- hardmax -------------------------------------------------------------------------------------
@declare
class hardmax:
    """1 at the first maximum along `axis`, 0 elsewhere (a one-hot argmax, in x's dtype). Its
    gradient is zero (the result is piecewise constant)."""
    name = "nn.hardmax"
    operands = (Operand("x", FLOAT),)
    attrs = (Attr("axis", "int", -1),)
    traits = {"pure"}
    examples = (Ex("f32[3,4]"), Ex("f32[2,3,4]", axis=1), Ex("f32[5]", axis=0))

    def infer(x, *, axis):
        norm_axis(axis, x.rank)
        return x

    def ref(x, *, axis):
        ax = norm_axis(axis, x.ndim)
        y = np.zeros_like(x)
        if x.size:
            np.put_along_axis(y, np.expand_dims(np.argmax(wide(x), axis=ax), ax), 1, axis=ax)
        return y

    def vjp(b, op, g):
        return [None]

    def cost(op, bind):
        x = op.operands[0].type
        return Cost(numel(x, bind), x.nbytes(bind), op.results[0].type.nbytes(bind))


# --- bit reinterpretation and the float8e8m0 cast ---------------------------------------------------
_SUB_BYTE = (dt.i4, dt.u4, dt.i2, dt.u2, dt.f4e2m1)
_BITCASTABLE = tuple(d for d in FLOAT + INT + (dt.bool_,) if d not in _SUB_BYTE)


@declare
class bitcast:
    """The bits of each element reinterpreted as dtype `to` of the same width (ONNX BitCast;
    little endian). To bool, a zero byte is false and any other byte true. Sub-byte types
    (int4, uint4, int2, uint2, float4) are not supported."""
    name = "nn.bitcast"
    operands = (Operand("x", _BITCASTABLE),)
    attrs = (Attr("to", "dtype"),)
    traits = {"pure", "elementwise"}
    vjp = not_differentiable("reinterprets bits")
    examples = (Ex("f32[2,3]", to="i32"), Ex("i64[4]", to="f64"), Ex("u16[3]", to="f16"),
                Ex("bool[5]", to="u8"), Ex(Arg("u8[4]", 0, 3), to="bool"), Ex("f32[]", to="u32"),
                Ex("bf16[3]", to="i16"))

    def infer(x, *, to):
        if to not in _BITCASTABLE:
            raise ShapeError(f"cannot bitcast to {to}")
        if to.bits != x.dtype.bits:
            raise ShapeError(f"bitcast needs equal widths: {x.dtype} has {x.dtype.bits} bits, "
                             f"{to} has {to.bits}")
        return x.with_dtype(to)

    def ref(x, *, to):
        if not x.flags.c_contiguous:
            x = x.copy()
        if to is dt.bool_:
            return x.view(np.uint8) != 0
        return x.view(to.np)

    def cost(op, bind):
        x = op.operands[0].type
        return Cost(0, x.nbytes(bind), op.results[0].type.nbytes(bind))


def _e8m0_ref(x, *, saturate, round_mode):
    w = np.abs(wide(x).astype(np.float64))      # the sign is unspecified by ONNX: ignored
    m, e = np.frexp(w)                           # w = m 2^e, m in [0.5, 1)
    e = e.astype(np.int64) - 1                   # w in [2^e, 2^(e+1))
    frac = m * 2 - 1
    if round_mode == "up":
        e = e + (frac > 0)
    elif round_mode == "nearest":
        e = e + (frac >= 0.5)
    biased = e + 127
    nan = np.isnan(w)
    low = (biased < 0) | (w == 0)
    high = (biased > 254) | np.isinf(w)
    if saturate:
        biased = np.where(low, 0, np.where(high, 254, biased))
    else:
        nan = nan | low | high
    bits = np.where(nan, 255, np.clip(biased, 0, 254)).astype(np.uint8)
    return bits.view(dt.f8e8m0.np)


@declare
class cast_e8m0:
    """Cast floats to f8e8m0 (a power of two 2^(E-127), E in 0..254; 255 is NaN), as ONNX Cast
    does: `round_mode` "up" (the next power of two at or above |x|), "down" (at or below) or
    "nearest" (ties up, i.e. up from 1.5 * 2^e). With `saturate`, values below 2^-127 (and 0)
    give 2^-127 and values above 2^127 (and inf) give 2^127; without it they give NaN. NaN stays
    NaN; the sign is ignored (ONNX leaves negative inputs unspecified)."""
    name = "nn.cast_e8m0"
    operands = (Operand("x", FLOAT),)
    attrs = (Attr("saturate", "bool", True),
             Attr("round_mode", "str", "up", choices=("up", "down", "nearest")))
    traits = {"pure", "elementwise"}
    flops = 4
    vjp = not_differentiable("rounds to powers of two")
    examples = (Ex(Arg("f32[2,4]", 0.01, 100.0)),
                Ex(np.array([0.0, 1.0, 1.5, 1.4, 3.0, np.inf, 1e-40], np.float32), round_mode="nearest"),
                Ex(np.array([0.3, 1.2, 6e37, 2.0 ** -120], np.float64), saturate=False),
                Ex(Arg("f16[5]", 0.1, 10.0), round_mode="down"))

    def infer(x, *, saturate, round_mode):
        return x.with_dtype(dt.f8e8m0)

    ref = staticmethod(_e8m0_ref)


# --- dropout -------------------------------------------------------------------------------------
@declare
class dropout:
    """Dropout whose training flag is known only at run time (ONNX Dropout-12+). When
    `training` is true and ratio > 0, each element is kept with probability 1 - ratio: with u
    drawn from numpy's RandomState(seed).uniform(0, 1, x.shape) (the draws onnx.reference
    makes), mask = u >= ratio and y = x * mask * (1 / (1 - ratio)) (f16/bf16 computed in f32).
    Otherwise y = x exactly and mask is all true (nothing is drawn). `ratio` (x's dtype) and
    `training` are scalars; in training ratio must be in [0, 1). Without `seed` every run draws
    fresh values. Not pure: passes never fold, merge or drop it. Gradients, the mask held fixed:
    dx = g * mask / (1 - ratio) in training, else g; dratio = sum(g * y) / (1 - ratio) in
    training, else 0."""
    name = "nn.dropout"
    operands = (Operand("x", FLOAT), Operand("ratio", FLOAT), Operand("training", BOOL))
    results = (Result("y"), Result("mask"))
    attrs = (Attr("seed", "int", None, doc="seed of RandomState; absent: fresh values every run"),)
    traits = set()       # random: not pure
    examples = (Ex("f32[3,4]", np.array(0.3, np.float32), np.array(True), seed=3),
                Ex("f64[2,5]", np.array(0.5), np.array(False)),
                Ex("f32[6]", np.array(0.9, np.float32), np.array(True), seed=0),
                Ex("f16[2,3]", np.array(0.25, np.float16), np.array(True), seed=1),
                Ex("f64[2,0]", np.array(0.5), np.array(True), seed=2))

    def infer(x, ratio, training, *, seed):
        if ratio.rank or training.rank:
            raise ShapeError(f"ratio and training must be scalars, got {ratio} and {training}")
        same_dtype(x, ratio)
        return x, x.with_dtype(dt.bool_)

    def ref(x, ratio, training, *, seed):
        r = float(ratio)
        if not training or r == 0:
            return x, np.ones(x.shape, np.bool_)
        if not 0 <= r < 1:
            raise ShapeError(f"dropout ratio must be in [0, 1), got {r}")
        rng = np.random.RandomState(seed) if seed is not None else np.random.RandomState()
        mask = rng.uniform(0, 1.0, x.shape) >= r
        w = wide(x)
        scale = w.dtype.type(1) / (w.dtype.type(1) - w.dtype.type(r))
        return (w * mask * scale).astype(x.dtype), mask

    def vjp(b, op, gy, gmask):
        x, ratio, training = op.operands
        if gy is None:
            return [None, None, None]
        y, mask = op.results
        keep = b.nn.sub(1.0, ratio)
        gx = b.nn.where(training, b.nn.div(b.nn.mul(gy, b.nn.cast(mask, to=x.type.dtype)), keep), gy)
        gr = b.nn.where(training, b.nn.div(b.nn.sum(b.nn.mul(gy, y)), keep), 0.0)
        return [gx, gr, None]

    def cost(op, bind):
        x = op.operands[0].type
        return Cost(3 * numel(x, bind), x.nbytes(bind),
                    sum(r.type.nbytes(bind) for r in op.results))
