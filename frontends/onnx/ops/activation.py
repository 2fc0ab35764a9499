"""Activations, elementwise math beyond math.py's table, casts, and a few math ops (MatMul,
Gemm, Einsum, Det, CumSum/CumProd, Hardmax, Dropout)."""
from __future__ import annotations

import ml_dtypes
import numpy as np
from onnx import TensorProto

from ckir import dtypes as dt
from ckir.dialects.nn._util import broadcasts_to

from ..importer import onnx_dtype
from ..registry import converter

UNARY = {  # ONNX op: (nn op, first opset)
    "Acos": ("acos", 7), "Asin": ("asin", 7), "Atan": ("atan", 7), "Tan": ("tan", 7),
    "Cosh": ("cosh", 9), "Sinh": ("sinh", 9), "Asinh": ("asinh", 9), "Acosh": ("acosh", 9),
    "Atanh": ("atanh", 9), "Softplus": ("softplus", 1), "Softsign": ("softsign", 1),
    "Mish": ("mish", 18), "HardSwish": ("hard_swish", 14), "IsNaN": ("isnan", 9),
    "Not": ("not", 1),
}
ACTIVATIONS = {  # ONNX op: (nn op, first opset, {ONNX attribute: nn attribute})
    "Elu": ("elu", 1, {"alpha": "alpha"}),
    "Selu": ("selu", 1, {"alpha": "alpha", "gamma": "gamma"}),
    "Celu": ("celu", 12, {"alpha": "alpha"}),
    "LeakyRelu": ("leaky_relu", 1, {"alpha": "alpha"}),
    "ThresholdedRelu": ("thresholded_relu", 10, {"alpha": "alpha"}),
    "HardSigmoid": ("hard_sigmoid", 1, {"alpha": "alpha", "beta": "beta"}),
    "Shrink": ("shrink", 9, {"lambd": "lambd", "bias": "bias"}),
    "IsInf": ("isinf", 10, {"detect_positive": "detect_positive", "detect_negative": "detect_negative"}),
}
BITWISE = {"BitwiseAnd": "bitwise_and", "BitwiseOr": "bitwise_or", "BitwiseXor": "bitwise_xor"}


def _unary(name):
    return lambda ctx: ctx.b.op("nn." + name, ctx.x(0))


def _activation(name, attrs):
    def conv(ctx):
        kw = {nn: ctx.attr(o) for o, nn in attrs.items() if ctx.has(o)}
        for k in ("detect_positive", "detect_negative"):
            if k in kw:
                kw[k] = bool(kw[k])
        return ctx.b.op("nn." + name, ctx.x(0), **kw)
    return conv


for _onnx, (_nn, _since) in UNARY.items():
    converter(_onnx, since=_since)(_unary(_nn))
for _onnx, (_nn, _since, _attrs) in ACTIVATIONS.items():
    converter(_onnx, since=_since)(_activation(_nn, _attrs))
for _onnx, _nn in BITWISE.items():
    converter(_onnx, since=18)(lambda ctx, _nn=_nn: ctx.b.op("nn." + _nn, ctx.x(0), ctx.x(1)))
converter("BitwiseNot", since=18)(_unary("bitwise_not"))


@converter("Gelu", since=20)
def gelu(ctx):
    return ctx.b.nn.gelu(ctx.x(0), approximate=ctx.attr("approximate", "none"))


@converter("Swish", since=24)
def swish(ctx):
    x, alpha = ctx.x(0), ctx.attr("alpha", 1.0)
    if alpha == 1.0:
        return ctx.b.nn.silu(x)
    return ctx.b.nn.mul(x, ctx.b.nn.sigmoid(ctx.b.nn.mul(x, alpha)))


@converter("PRelu", since=1)
def prelu(ctx):
    x, slope = ctx.x(0), ctx.x(1)
    if ctx.opset < 7 and slope.type.rank == 1 and slope.type.shape[0] != 1 and x.type.rank > 2:
        # before opset 7 a 1-D slope holds one value per channel (dim 1), not numpy broadcasting
        slope = ctx.b.nn.unsqueeze(slope, axes=list(range(1, x.type.rank - 1)))
    return ctx.b.nn.prelu(x, slope)


# --- Clip, variadic Max/Min/Sum/Mean, Mod, BitShift, Pow, Where ----------------------------------
@converter("Clip", since=1)
def clip_attrs(ctx):
    lo, hi = ctx.attr("min", None), ctx.attr("max", None)
    return ctx.b.nn.clip(ctx.x(0), min=lo, max=hi)


@converter("Clip", since=11)
def clip(ctx):
    """Bounds are optional scalar inputs: known float bounds become nn.clip's attributes; bounds
    computed at run time (and integer bounds, which a float attribute may not hold exactly) are
    applied with nn.maximum / nn.minimum."""
    x, b = ctx.x(0), ctx.b
    bounds = []
    for i in (1, 2):
        v = ctx.opt(i)
        if v is not None:
            if v.type.rank != 0 and v.type.shape != (1,):
                raise ctx.fail(f"input {i} ({'min' if i == 1 else 'max'}) must be a scalar, got {v.type}")
            if v.type.dtype is not x.type.dtype:
                raise ctx.fail(f"the bounds must have x's dtype {x.type.dtype}, got {v.type.dtype}")
        bounds.append(v)
    known = [None if v is None else ctx.const(i + 1) for i, v in enumerate(bounds)]
    if x.type.dtype.is_float and all(k is not None or v is None for k, v in zip(known, bounds)):
        lo, hi = (None if k is None else float(np.asarray(k).reshape(-1)[0]) for k in known)
        return x if lo is None and hi is None else b.nn.clip(x, min=lo, max=hi)
    y = x
    for v, fn in zip(bounds, (b.nn.maximum, b.nn.minimum)):
        if v is not None:
            y = fn(y, b.nn.reshape(v, shape=[]) if v.type.rank else v)
    return y


def _fold(ctx, name):
    xs = [ctx.x(i) for i in range(ctx.n_in)]
    if not xs:
        raise ctx.fail("needs at least one input")
    y = xs[0]
    for v in xs[1:]:
        y = ctx.b.op("nn." + name, y, v)
    return y


@converter("Max", since=6)
def max_(ctx):
    return _fold(ctx, "maximum")


@converter("Min", since=6)
def min_(ctx):
    return _fold(ctx, "minimum")


@converter("Sum", since=6)
def sum_(ctx):
    return _fold(ctx, "add")


@converter("Mean", since=6)
def mean(ctx):
    y = _fold(ctx, "add")
    if ctx.n_in == 1:
        return y
    if not y.type.dtype.is_float:
        raise ctx.fail(f"Mean of {y.type.dtype} is not defined (float types only)")
    return ctx.b.nn.div(y, float(ctx.n_in))


@converter("Mod", since=10)
def mod(ctx):
    a, b = ctx.x(0), ctx.x(1)
    fmod = ctx.attr("fmod", 0)
    if fmod not in (0, 1):
        raise ctx.fail(f"fmod must be 0 or 1, got {fmod}")
    return ctx.b.nn.fmod(a, b) if fmod else ctx.b.nn.mod(a, b)


@converter("BitShift", since=11)
def bitshift(ctx):
    d = ctx.attr("direction")
    if d not in ("LEFT", "RIGHT"):
        raise ctx.fail(f"direction must be LEFT or RIGHT, got {d!r}")
    fn = ctx.b.nn.shift_left if d == "LEFT" else ctx.b.nn.shift_right
    return fn(ctx.x(0), ctx.x(1))


@converter("Pow", since=12)
def pow_(ctx):
    """From opset 12 the exponent may have another dtype than the base, and the base may be an
    integer: the result has the base's dtype."""
    x, y, b = ctx.x(0), ctx.x(1), ctx.b
    xd = x.type.dtype
    if xd.is_float:
        yd = y.type.dtype
        if yd.is_float and yd.bits > xd.bits:     # a wider exponent: compute in its precision
            return b.nn.cast(b.nn.pow(b.nn.cast(x, to=yd), y), to=xd)
        return b.nn.pow(x, y if yd is xd else b.nn.cast(y, to=xd))
    if not xd.is_int:
        raise ctx.fail(f"Pow of {xd} is not supported")
    # an integer base: computed in f64 and truncated back, as numpy's power then astype does;
    # exact while the result fits f64's 53-bit mantissa
    r = b.nn.pow(b.nn.cast(x, to=dt.f64), y if y.type.dtype is dt.f64 else b.nn.cast(y, to=dt.f64))
    return b.nn.cast(r, to=xd)


LEGACY_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow", "And": "and",
                 "Or": "or", "Xor": "xor", "Equal": "eq", "Less": "lt", "Greater": "gt"}


def _legacy_binary(name):
    def conv(ctx):
        """Before opset 7: with `broadcast` = 1 and an `axis`, B's dims line up with A's from
        `axis` on (not from the right, as numpy's do)."""
        a, b = ctx.x(0), ctx.x(1)
        axis = ctx.attr("axis", None)
        if ctx.attr("broadcast", 0) and axis is not None:
            r = a.type.rank
            if not -r <= axis < r:
                raise ctx.fail(f"axis {axis} is out of range for rank {r}")
            trail = r - axis % r - b.type.rank
            if trail < 0:
                raise ctx.fail(f"B {b.type} does not fit into A {a.type} from axis {axis}")
            if trail:
                b = ctx.b.nn.unsqueeze(b, axes=list(range(b.type.rank, b.type.rank + trail)))
        return ctx.b.op("nn." + name, a, b)
    return conv


for _onnx, _nn in LEGACY_BINARY.items():
    converter(_onnx, since=1)(_legacy_binary(_nn))


@converter("Where", since=9)
def where(ctx):
    return ctx.b.nn.where(ctx.x(0), ctx.x(1), ctx.x(2))


# --- casts ---------------------------------------------------------------------------------------
F8_SATURATING = (dt.f8e4m3fn, dt.f8e4m3fnuz, dt.f8e5m2, dt.f8e5m2fnuz)


def cast_to(ctx, x, to, saturate: bool, round_mode: str):
    """ONNX Cast semantics onto nn ops: float8 targets saturate to the largest finite value
    (inf included) unless `saturate` is off; float8e8m0 has its own rounding."""
    b = ctx.b
    if to is dt.f8e8m0:
        src = x.type.dtype
        if not src.is_float:
            x = b.nn.cast(x, to=dt.f64 if src.bits > 16 else dt.f32)
        return b.nn.cast_e8m0(x, saturate=saturate, round_mode=round_mode)
    src = x.type.dtype
    if to in F8_SATURATING and saturate and not src.is_bool:
        hi = float(ml_dtypes.finfo(to.np).max)
        if src.is_float:
            if src.bits < 16:
                x = b.nn.cast(x, to=dt.f32)    # narrow sources cannot hold the bound exactly
            x = b.nn.clip(x, min=-hi, max=hi)
        else:
            # integer sources: clip only where the type reaches past the bound (and can hold it)
            info = ml_dtypes.iinfo(src.np)
            lo_b = -hi if info.min < -hi else None
            hi_b = hi if info.max > hi else None
            if lo_b is not None or hi_b is not None:
                x = b.nn.clip(x, min=lo_b, max=hi_b)
    if x.type.dtype is to:
        return x
    return b.nn.cast(x, to=to)


@converter("Cast", since=19)
def cast(ctx):
    if ctx.attr("to") == TensorProto.STRING or ctx.x(0).type.dtype.is_string:
        raise ctx.fail("casts to and from strings (number formatting and parsing) are not supported")
    to = onnx_dtype(ctx.attr("to"), ctx.where)
    return cast_to(ctx, ctx.x(0), to, bool(ctx.attr("saturate", 1)), ctx.attr("round_mode", "up"))


@converter("CastLike", since=19)
def cast_like(ctx):
    return cast_to(ctx, ctx.x(0), ctx.x(1).type.dtype, bool(ctx.attr("saturate", 1)),
                   ctx.attr("round_mode", "up"))


@converter("BitCast", since=26)
def bitcast(ctx):
    return ctx.b.nn.bitcast(ctx.x(0), to=onnx_dtype(ctx.attr("to"), ctx.where))


# --- matrix products -------------------------------------------------------------------------------
def _float_only(ctx, *vals):
    for v in vals:
        if not v.type.dtype.is_float:
            raise ctx.fail(f"{ctx.op_type} of {v.type.dtype} is not supported (float types only)")


@converter("MatMul", since=1)
def matmul(ctx):
    """Floats: nn.matmul. Integers: the same product as an exact integer nn.einsum (wrapping on
    overflow like numpy's)."""
    a, b = ctx.x(0), ctx.x(1)
    if a.type.dtype.is_float:
        return ctx.b.nn.matmul(a, b)
    if not a.type.dtype.is_int or a.type.dtype is not b.type.dtype:
        raise ctx.fail(f"MatMul of {a.type.dtype} and {b.type.dtype} is not supported")
    if a.type.rank == 0 or b.type.rank == 0:
        raise ctx.fail("MatMul operands must have rank >= 1")
    lhs = "j" if a.type.rank == 1 else "...ij"
    rhs = "j" if b.type.rank == 1 else "...jk"
    out = ("..." if a.type.rank > 1 or b.type.rank > 1 else "") + ("i" if a.type.rank > 1 else "") + \
        ("k" if b.type.rank > 1 else "")
    return ctx.b.nn.einsum(a, b, equation=f"{lhs},{rhs}->{out}")


@converter("Gemm", since=1)
def gemm(ctx):
    a, bm, c = ctx.x(0), ctx.x(1), ctx.opt(2)
    _float_only(ctx, a, bm)
    b = ctx.b
    if a.type.rank != 2 or bm.type.rank != 2:
        raise ctx.fail(f"A and B must be matrices, got {a.type} and {bm.type}")
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    y = b.nn.matmul(a, bm, transpose_a=bool(ctx.attr("transA", 0)), transpose_b=bool(ctx.attr("transB", 0)))
    if alpha != 1.0:
        y = b.nn.mul(y, alpha)
    if c is not None and beta != 0.0:
        if not broadcasts_to(c.type.shape, y.type.shape):
            raise ctx.fail(f"C {c.type} does not broadcast to the product's shape {y.type}")
        if beta != 1.0:
            c = b.nn.mul(c, beta)
        y = b.nn.add(y, c)
    return y


@converter("Einsum", since=12)
def einsum(ctx):
    xs = [ctx.x(i) for i in range(ctx.n_in)]
    return ctx.b.nn.einsum(*xs, equation=ctx.attr("equation"))


@converter("Det", since=11)
def det(ctx):
    return ctx.b.nn.det(ctx.x(0))


# --- cumulative ops --------------------------------------------------------------------------------
def _cumulative(name):
    def conv(ctx):
        x = ctx.x(0)
        kw = {"exclusive": bool(ctx.attr("exclusive", 0)), "reverse": bool(ctx.attr("reverse", 0))}
        axis = ctx.ints(1, "axis")
        if axis is not None:
            if len(axis) != 1:
                raise ctx.fail(f"axis must hold one value, got {axis}")
            return ctx.b.op("nn." + name, x, axis=axis[0], **kw)
        return ctx.b.op("nn." + name, x, ctx.x(1), **kw)
    return conv


converter("CumSum", since=11)(_cumulative("cumsum"))
converter("CumProd", since=26)(_cumulative("cumprod"))


# --- Hardmax ---------------------------------------------------------------------------------------
@converter("Hardmax", since=1)
def hardmax_2d(ctx):
    """Before opset 13 the input is seen as a matrix: dims before `axis` are rows."""
    x = ctx.x(0)
    r = x.type.rank
    axis = ctx.attr("axis", 1)
    if not -r <= axis < r or r == 0:
        raise ctx.fail(f"axis {axis} is out of range for rank {r}")
    axis %= r
    if axis == r - 1:
        return ctx.b.nn.hardmax(x, axis=-1)
    head, tail = x.type.shape[:axis], x.type.shape[axis:]
    static = all(type(d) is int for d in tail)
    if not static and not all(type(d) is int for d in head):
        raise ctx.fail(f"needs static dims on one side of axis {axis}, got {x.type}")
    cols = int(np.prod(tail)) if static else -1
    rows = -1 if static else int(np.prod(head))
    m = ctx.b.nn.hardmax(ctx.b.nn.reshape(x, shape=[rows, cols]), axis=1)
    return ctx.b.nn.reshape_like(m, x)


@converter("Hardmax", since=13)
def hardmax(ctx):
    return ctx.b.nn.hardmax(ctx.x(0), axis=ctx.attr("axis", -1))


# --- Dropout ---------------------------------------------------------------------------------------
@converter("Dropout", since=1)
def dropout(ctx):
    """Inference (no training_mode, or a false one known at import): the identity, and a mask
    of all ones. Otherwise (opset >= 12) nn.dropout, which draws its mask at run time when
    training_mode is true."""
    x, b = ctx.x(0), ctx.b
    training = ctx.opt(2) if ctx.opset >= 12 else None
    known = ctx.const(2) if training is not None else None
    if training is not None and (known is None or bool(np.asarray(known).reshape(-1)[0])):
        ratio = ctx.opt(1)
        ratio = (b.constant(np.asarray(0.5, x.type.dtype.np)) if ratio is None
                 else _scalar(b, ratio, x.type.dtype))
        return list(b.nn.dropout(x, ratio, _scalar(b, training, dt.bool_), seed=ctx.attr("seed", None)))
    outs = [x]
    if ctx.out_used(1):
        mask_dtype = dt.bool_ if ctx.opset >= 10 else x.type.dtype
        one = b.constant(np.ones((), mask_dtype.np))
        outs.append(b.nn.broadcast_like(one, x))
    return outs


def _scalar(b, v, dtype):
    """v (one element) as a rank-0 value of `dtype`."""
    if v.type.rank:
        v = b.nn.reshape(v, shape=[])
    return v if v.type.dtype is dtype else b.nn.cast(v, to=dtype)
