"""Layer ops the ONNX frontend needs beyond the core nn ops: reductions whose axes are known only
at run time, max-pool argmax indices and unpooling, rotary embedding from cos/sin caches,
detection ops (NonMaxSuppression, RoiAlign), deformable convolution, and linear attention with
its recurrent state."""
from __future__ import annotations

import math

import numpy as np

from ckir import dtypes as dt
from ckir.errors import ShapeError
from ckir.opdef import (
    BOOL,
    FLOAT,
    NUMERIC,
    Arg,
    Attr,
    Cost,
    Ex,
    Operand,
    Result,
    declare,
    not_differentiable,
)
from ckir.rewrite import Rule
from ckir.types import ANY as ANYDIM
from ckir.types import TensorType, concrete, fmt_shape

from ._util import broadcasts_to, numel, same_dtype, unbroadcast, wide
from .conv import (
    CONV_ATTRS,
    POOL_ATTRS,
    _compute_dtype,
    _conv_type,
    _geometry,
    _out_dims,
    _pad,
    _pool_cost,
    _pool_geometry,
    _pool_type,
    _spatial_rank,
    _windows,
)

INDEX = (dt.i32, dt.i64)


# --- reductions over run-time axes ------------------------------------------------------------
REDUCE_KINDS = ("sum", "mean", "max", "min", "prod", "l1", "l2", "log_sum", "log_sum_exp",
                "sum_square")
# FLOPs per input element (exp counts 8, as nn.exp)
_REDUCE_FLOPS = {"sum": 1, "mean": 1, "max": 1, "min": 1, "prod": 1, "l1": 2, "l2": 2,
                 "log_sum": 1, "log_sum_exp": 11, "sum_square": 2}


def _extreme_initial(dtype, kind):
    """The identity of max/min for a numpy dtype: what an empty reduction gives."""
    lo = kind == "max"
    if dtype == np.bool_:
        return not lo
    if dtype.kind == "f":
        return -np.inf if lo else np.inf
    info = np.iinfo(dtype)
    return info.min if lo else info.max


def reduce_np(x, axes: tuple, kind: str, keepdims: bool):
    """The reduction `kind` of x over `axes` (normalized) in numpy, in x's dtype; an empty set of
    elements gives the identity (0 for sums and norms, 1 for prod, -inf / +inf for max / min and
    the log reductions, NaN for mean)."""
    w = wide(x)
    kw = {"axis": axes, "keepdims": keepdims}
    with np.errstate(all="ignore"):
        if kind in ("max", "min"):
            fn = np.max if kind == "max" else np.min
            r = fn(w, initial=_extreme_initial(w.dtype, kind), **kw)
        elif kind == "sum":
            r = np.sum(w, **kw)
        elif kind == "mean":
            r = np.mean(w, **kw) if w.size else np.full(np.sum(w, **kw).shape, np.nan)
        elif kind == "prod":
            r = np.prod(w, **kw)
        elif kind == "l1":
            r = np.sum(np.abs(w), **kw)
        elif kind == "l2":
            r = np.sqrt(np.sum(w * w, **kw))
        elif kind == "sum_square":
            r = np.sum(w * w, **kw)
        elif kind == "log_sum":
            r = np.log(np.sum(w, **kw))
        else:   # log_sum_exp, shifted by the maximum so that large inputs stay finite
            m = np.max(w, axis=axes, keepdims=True, initial=-np.inf)
            m = np.where(np.isfinite(m), m, 0)
            r = np.log(np.sum(np.exp(w - m), **kw)) + (m if keepdims else np.squeeze(m, axes))
    return np.asarray(r).astype(x.dtype)


def build_reduce(b, x, kind, axes, keepdims):
    """The reduction `kind` over axes known when building (normalized, sorted), from the static
    nn reductions: sum, mean, max, min, prod directly, the norms and logs composed (log_sum_exp
    shifted by the maximum). A reduction over a static empty axis is its identity constant; bool
    max/min go through u8; integer means, norms and logs through f64, truncated back."""
    t = x.type
    if any(t.shape[a] == 0 for a in axes) and t.is_static:
        return b.constant(reduce_np(np.zeros(t.shape, t.dtype.np), tuple(axes), kind, keepdims))
    kw = {"axes": list(axes), "keepdims": keepdims}
    if t.dtype.is_bool:
        if kind not in ("max", "min"):
            raise ShapeError(f"a {kind} reduction of a bool tensor is not defined")
        return b.nn.cast(getattr(b.nn, kind)(b.nn.cast(x, to=dt.u8), **kw), to=dt.bool_)
    if kind in ("sum", "max", "min", "prod") or kind == "mean" and t.dtype.is_float:
        return getattr(b.nn, kind)(x, **kw)
    if not t.dtype.is_float:
        return b.nn.cast(build_reduce(b, b.nn.cast(x, to=dt.f64), kind, axes, keepdims), to=t.dtype)
    if kind == "l1":
        return b.nn.sum(b.nn.abs(x), **kw)
    if kind == "sum_square":
        return b.nn.sum(b.nn.mul(x, x), **kw)
    if kind == "l2":
        return b.nn.sqrt(b.nn.sum(b.nn.mul(x, x), **kw))
    if kind == "log_sum":
        return b.nn.log(b.nn.sum(x, **kw))
    m = b.nn.max(x, axes=list(axes), keepdims=True)
    m = b.nn.where(b.nn.eq(b.nn.abs(m), float("inf")), 0.0, m)       # rows of -inf shift by 0
    s = b.nn.log(b.nn.sum(b.nn.exp(b.nn.sub(x, m)), **kw))
    return b.nn.add(s, m if keepdims else b.nn.squeeze(m, axes=list(axes)))


def _reduce_canon(op, b):
    """nn.reduce_dyn with constant axes: the static reductions (build_reduce)."""
    x, axes = op.operands
    d = axes.op
    if d is None or d.opdef.name != "nn.constant":
        return None
    at = op.attrs
    try:
        a = d.attrs["value"].array
        if a.size == 0:
            if at["noop_with_empty_axes"]:
                return x
            ax = tuple(range(x.type.rank))
        else:
            ax = _dyn_axes(a, x.type.rank)
        return build_reduce(b, x, at["kind"], ax, at["keepdims"])
    except ShapeError:
        return None      # left for run time, where the error names the bad axes


def _dyn_axes(axes, rank):
    """Run-time axes as a sorted tuple, checked."""
    out = []
    for a in np.asarray(axes).reshape(-1).tolist():
        if not -rank <= a < rank:
            raise ShapeError(f"axis {a} is out of range for rank {rank}")
        out.append(a % rank)
    if len(set(out)) != len(out):
        raise ShapeError(f"repeated axis in {np.asarray(axes).tolist()}")
    return tuple(sorted(out))


@declare
class reduce_dyn:
    """A reduction over axes given at run time (ONNX Reduce* with a computed `axes` input).
    `kind` picks the reduction of the selected elements:

        sum, mean, max, min, prod; l1 = sum |x|; l2 = sqrt(sum x^2); sum_square = sum x^2;
        log_sum = log(sum x); log_sum_exp = log(sum exp x) (computed shifted by the maximum)

    `axes` is a 1-D i64 vector (negative counts from the end, no repeats). An empty `axes`
    reduces every axis, or returns x unchanged with `noop_with_empty_axes`. `keepdims` keeps
    reduced axes as size 1 (canonicalize rewrites the op into the static reductions once `axes` is
    a constant). An empty set of elements gives the identity: 0 (sum, l1, l2,
    sum_square), 1 (prod), -inf (max, log_sum, log_sum_exp), +inf (min), NaN (mean); for bool
    max/min false/true and for integers their extreme values. bool x is allowed for max and min
    only. f16/bf16 compute in f32.

    The result's dims are `?` where the types cannot tell (without keepdims the result rank is
    x's rank minus the length of `axes`, which must then be static). The gradient recomputes the
    reduction with keepdims to put the reduced axes back (max/min split it among ties)."""
    name = "nn.reduce_dyn"
    operands = (Operand("x", NUMERIC + BOOL), Operand("axes", (dt.i64,)))
    attrs = (Attr("kind", "str", choices=REDUCE_KINDS),
             Attr("keepdims", "bool", True, doc="keep reduced axes as size 1"),
             Attr("noop_with_empty_axes", "bool", False, doc="empty axes return x unchanged"))
    traits = {"pure", "reduction"}
    patterns = (Rule("nn.reduce_dyn", _reduce_canon, "nn.reduce_dyn with constant axes"),)
    examples = (Ex("f32[3,4,5]", np.array([1], np.int64), kind="sum"),
                Ex("f32[3,4,5]", np.array([-1, 0], np.int64), kind="log_sum_exp", keepdims=False),
                Ex("f32[3,4]", np.array([-1, 0], np.int64), kind="sum", keepdims=False),
                Ex("f32[3,4]", np.array([1, 0], np.int64), kind="mean", keepdims=False),
                Ex("f32[6]", np.array([0], np.int64), kind="max", keepdims=False),
                Ex("f32[2,3]", np.zeros(0, np.int64), kind="min"),
                Ex(Arg("f32[2,3]", 0.5, 2.0), np.array([1, 0], np.int64), kind="prod", keepdims=False),
                Ex("f32[4,2]", np.array([0, -1], np.int64), kind="l1", keepdims=False),
                Ex("f32[5]", np.zeros(0, np.int64), kind="l2"),
                Ex(Arg("f32[3,2]", 0.1, 2.0), np.array([0, 1], np.int64), kind="log_sum", keepdims=False),
                Ex("f32[2,4]", np.zeros(0, np.int64), kind="log_sum_exp"),
                Ex("f32[3,2]", np.array([0, 1], np.int64), kind="sum_square", keepdims=False),
                Ex("f32[3,2]", np.zeros(0, np.int64), kind="sum", noop_with_empty_axes=True),
                Ex("f32[3,2]", np.zeros(0, np.int64), kind="mean", keepdims=False),
                Ex("f32[2,0,4]", np.array([1, 0, 2], np.int64), kind="max", keepdims=False),
                Ex("i64[3,4,5]", np.array([1], np.int64), kind="sum", keepdims=False),
                Ex("bool[4,2]", np.array([1], np.int64), kind="min"),
                Ex("i32[3,4]", np.array([0], np.int64), kind="prod"))

    def infer(x, axes, *, kind, keepdims, noop_with_empty_axes):
        if axes.rank != 1:
            raise ShapeError(f"axes must be a 1-D vector, got {axes}")
        if x.dtype.is_bool and kind not in ("max", "min"):
            raise ShapeError(f"kind {kind!r} needs a numeric x, got {x}")
        n = axes.shape[0]
        if n == 0:
            if noop_with_empty_axes:
                return x
            return x.with_shape((1,) * x.rank if keepdims else ())
        if keepdims:
            return x.with_shape([1 if d == 1 else ANYDIM for d in x.shape])
        if type(n) is not int:
            raise ShapeError(f"without keepdims the number of axes must be static, axes is {axes}")
        if n > x.rank:
            raise ShapeError(f"{n} axes for rank {x.rank}")
        ones = all(d == 1 for d in x.shape)
        return x.with_shape([1 if ones else ANYDIM] * (x.rank - n))

    def ref(x, axes, *, kind, keepdims, noop_with_empty_axes):
        if axes.size == 0 and noop_with_empty_axes:
            return x.copy()
        ax = _dyn_axes(axes, x.ndim) if axes.size else tuple(range(x.ndim))
        return reduce_np(x, ax, kind, keepdims)

    def vjp(b, op, g):
        x, axes = op.operands
        if g is None or not x.type.dtype.is_float:
            return [None, None]
        at = op.attrs
        kind = at["kind"]
        same = {"keepdims": True, "noop_with_empty_axes": at["noop_with_empty_axes"]}
        y = op.results[0] if at["keepdims"] else b.nn.reduce_dyn(x, axes, kind=kind, **same)
        gk = b.nn.broadcast_like(b.nn.reshape_like(g, y), x)
        yk = b.nn.broadcast_like(y, x)
        if kind == "sum":
            dx = gk
        elif kind == "mean":
            dx = b.nn.div(b.nn.mul(gk, b.nn.size(y, dtype=x.type.dtype)), b.nn.size(x, dtype=x.type.dtype))
        elif kind in ("max", "min"):
            hit = b.nn.cast(b.nn.eq(x, yk), to=x.type.dtype)
            count = b.nn.reduce_dyn(hit, axes, kind="sum", **same)
            dx = b.nn.mul(b.nn.div(gk, b.nn.broadcast_like(count, x)), hit)
        elif kind == "prod":
            dx = b.nn.div(b.nn.mul(gk, yk), x)
        elif kind == "l1":
            dx = b.nn.mul(gk, b.nn.sign(x))
        elif kind == "l2":
            dx = b.nn.div(b.nn.mul(gk, x), yk)
        elif kind == "sum_square":
            dx = b.nn.mul(b.nn.mul(gk, x), 2.0)
        elif kind == "log_sum":
            dx = b.nn.div(gk, b.nn.exp(yk))
        else:
            dx = b.nn.mul(gk, b.nn.exp(b.nn.sub(x, yk)))
        return [dx, None]

    def cost(op, bind):
        x = op.operands[0].type
        return Cost(_REDUCE_FLOPS[op.attrs["kind"]] * numel(x, bind), x.nbytes(bind) + op.operands[1].type.nbytes(bind),
                    op.results[0].type.nbytes(bind))


# --- max pooling indices and unpooling -----------------------------------------------------------
def _flat_index(coords, spatial, column_major):
    """Flat offsets of spatial coordinates (a list of arrays) within one (n, c) plane."""
    order = range(len(spatial)) if column_major else reversed(range(len(spatial)))
    idx, mul = 0, 1
    for i in order:
        idx = idx + coords[i] * mul
        mul *= spatial[i]
    return idx


@declare
class max_pool_indices:
    """Where nn.max_pool (same attributes) finds each window's maximum, as ONNX MaxPool's
    Indices output: an i64 tensor of the pooled shape holding the flat index into x of the first
    maximum of the window in row-major tap order (padding never wins; a NaN counts as the
    maximum, as nn.max_pool propagates it). The index counts over the whole x (N, C, *S):
    (n * C + c) * prod(S) + the spatial offset, which is row-major, or column-major over the
    spatial dims with `storage_order = 1`. A window holding only padding gives -1."""
    name = "nn.max_pool_indices"
    operands = (Operand("x", FLOAT),)
    attrs = POOL_ATTRS + (Attr("storage_order", "int", 0, doc="0: row-major, 1: column-major spatial offsets"),)
    traits = {"pure"}
    vjp = not_differentiable("integer indices")
    cost = _pool_cost(0, (0,))
    examples = (Ex("f32[2,3,7]", kernel=[3], strides=[2]),
                Ex("f32[1,2,5,5]", kernel=[2, 2], strides=[2, 2], storage_order=1),
                Ex("f32[2,1,6,7]", kernel=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=True),
                Ex(np.array([[[1, 3, 3, 2, 2, 0]]], np.float32), kernel=[3]),
                Ex("f32[1,1,4,5,3]", kernel=[2, 2, 2], strides=[2, 1, 2], pads=[0, 1, 0, 0, 0, 1],
                   dilations=[1, 2, 1], storage_order=1))

    def infer(x, *, kernel, strides, pads, dilations, ceil_mode, storage_order):
        if storage_order not in (0, 1):
            raise ShapeError(f"storage_order must be 0 or 1, got {storage_order}")
        return _pool_type(x, kernel, strides, pads, dilations, ceil_mode).with_dtype(dt.i64)

    def ref(x, *, kernel, strides, pads, dilations, ceil_mode, storage_order):
        out, s, pb, _, pe_all, d = _pool_geometry(x, kernel, strides, pads, dilations, ceil_mode)
        n, kk = len(kernel), math.prod(kernel)
        v = _windows(_pad(x.astype(_compute_dtype(x)), pb, pe_all, -np.inf), out, kernel, s, d)
        v = v.reshape(x.shape[:2] + out + (kk,))
        real = _windows(_pad(np.ones((1, 1) + x.shape[2:], bool), pb, pe_all, False), out, kernel, s, d)
        real = real.reshape((1, 1) + out + (kk,))
        top = v.max(axis=-1, keepdims=True)
        hit = ((v == top) | np.isnan(v)) & real
        tap = hit.argmax(axis=-1)                        # (N, C, *out)
        taps = np.unravel_index(tap, tuple(kernel))
        grid = np.meshgrid(*[np.arange(o) for o in out], indexing="ij")
        coords = [grid[i] * s[i] + taps[i] * d[i] - pb[i] for i in range(n)]
        spatial = _flat_index(coords, x.shape[2:], storage_order == 1)
        plane = np.arange(x.shape[0] * x.shape[1]).reshape(x.shape[:2] + (1,) * n) * math.prod(x.shape[2:])
        return np.where(hit.any(axis=-1), plane + spatial, -1).astype(np.int64)


def _unpool_size(sizes, kernel, strides, pads):
    n = len(kernel)
    s = (1,) * n if strides is None else strides
    p = (0,) * (2 * n) if pads is None else pads
    return [(m - 1) * si + k - p[i] - p[n + i] if type(m) is int else ANYDIM
            for i, (m, k, si) in enumerate(zip(sizes, kernel, s))]


@declare
class max_unpool:
    """ONNX MaxUnpool: scatter x into zeros at `indices` (flat indices as nn.max_pool_indices
    gives them, same shape as x). The unpooled size per spatial axis is (S - 1) * stride +
    kernel - pad_begin - pad_end; indices address that tensor (N, C, *unpooled) flattened.
    When an index repeats, the element of x that comes last in row-major order wins. With
    `output_shape` (the full N, C, *sizes, each spatial size at least the unpooled one) the
    result is that tensor zero-padded at the end of each spatial axis; the operand `shape` gives
    the same when it is only known at run time (then the result's spatial dims are `?`). An index
    outside the unpooled tensor is an error.

    The gradient with respect to x reads g at each index, for the elements that won their
    position (it needs a static x)."""
    name = "nn.max_unpool"
    operands = (Operand("x", FLOAT), Operand("indices", (dt.i64,)),
                Operand("shape", (dt.i64,), optional=True, doc="run-time output_shape"))
    attrs = (Attr("kernel", "ints"), Attr("strides", "ints", None), Attr("pads", "ints", None),
             Attr("output_shape", "ints", None, doc="(N, C, *sizes) of the result; absent: unpooled"))
    traits = {"pure"}
    examples = (Ex("f32[1,1,2,2]", np.array([[[[5, 7], [13, 15]]]], np.int64), kernel=[2, 2], strides=[2, 2]),
                Ex("f32[1,1,2,2]", np.array([[[[5, 7], [13, 15]]]], np.int64), kernel=[2, 2], strides=[2, 2],
                   output_shape=[1, 1, 5, 5]),
                Ex("f32[2,1,3]", np.array([[[0, 2, 2]], [[4, 4, 5]]], np.int64), kernel=[2], strides=[1]),
                Ex("f32[1,2,2,2,1]", np.array([[[[[0], [4]], [[9], [15]]], [[[16], [20]], [[27], [31]]]]],
                                              np.int64), kernel=[2, 2, 2], strides=[2, 2, 2],
                   pads=[0, 0, 0, 0, 0, 1]),
                Ex("f32[1,1,2,2]", np.array([[[[0, 3], [12, 15]]]], np.int64), np.array([1, 1, 4, 6], np.int64),
                   kernel=[2, 2], strides=[2, 2]))

    def infer(x, indices, shape, *, kernel, strides, pads, output_shape):
        n = _spatial_rank(x)
        if len(kernel) != n:
            raise ShapeError(f"kernel {list(kernel)} must have {n} entries")
        _geometry(n, strides, pads, None)
        if indices.rank != x.rank or not all(type(a) is not int or type(c) is not int or a == c
                                             for a, c in zip(indices.shape, x.shape)):
            raise ShapeError(f"indices {indices} must have the shape of x {x}")
        sizes = _unpool_size(x.shape[2:], kernel, strides, pads)
        if any(type(m) is int and m < 1 for m in sizes):
            raise ShapeError(f"the unpooled size {sizes} is empty")
        if shape is not None:
            n = shape.shape[0] if shape.rank == 1 else None
            if output_shape is not None or n is None or type(n) is int and n != x.rank:
                raise ShapeError(f"shape must be a vector of {x.rank} sizes, and not given with "
                                 f"the output_shape attribute; got {shape}")
            return x.with_shape(x.shape[:2] + (ANYDIM,) * len(sizes))
        if output_shape is None:
            return x.with_shape(x.shape[:2] + tuple(sizes))
        if len(output_shape) != x.rank or any(type(m) is int and o < m for o, m in zip(output_shape[2:], sizes)):
            raise ShapeError(f"output_shape {list(output_shape)} must be (N, C, *sizes) with sizes at "
                             f"least the unpooled {sizes}")
        return x.with_shape(output_shape)

    def ref(x, indices, shape, *, kernel, strides, pads, output_shape):
        if shape is not None:
            output_shape = [int(v) for v in shape]
            if len(output_shape) != x.ndim or output_shape[:2] != list(x.shape[:2]):
                raise ShapeError(f"shape {output_shape} must be (N, C, *sizes) for x {list(x.shape)}")
        unpooled = x.shape[:2] + tuple(_unpool_size(x.shape[2:], kernel, strides, pads))
        total = math.prod(unpooled)
        flat = indices.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= total):
            bad = flat[(flat < 0) | (flat >= total)][0]
            raise ShapeError(f"index {int(bad)} is outside the unpooled tensor of {total} elements")
        y = np.zeros(total, x.dtype)
        y[flat] = x.reshape(-1)      # numpy assigns repeated indices in order: the last wins
        y = y.reshape(unpooled)
        if output_shape is None:
            return y
        if any(o < m for o, m in zip(output_shape, unpooled)):
            raise ShapeError(f"output_shape {list(output_shape)} is smaller than the unpooled {list(unpooled)}")
        out = np.zeros(tuple(output_shape), x.dtype)
        out[tuple(slice(0, m) for m in unpooled)] = y
        return out

    def vjp(b, op, g):
        if g is None:
            return [None] * len(op.operands)
        x, idx = op.operands[:2]
        if not x.type.is_static:
            raise ShapeError(f"nn.max_unpool: the gradient needs a static x, got {x.type}")
        at = op.attrs
        shape = list(x.type.shape[:2]) + _unpool_size(x.type.shape[2:], at["kernel"], at["strides"], at["pads"])
        if at["output_shape"] is not None or len(op.operands) == 3:
            g = b.nn.slice(g, starts=[0] * len(shape), ends=shape)
        flat_idx = b.nn.reshape(idx, shape=[-1])
        picked = b.nn.gather(b.nn.reshape(g, shape=[-1]), flat_idx)
        # an element overwritten by a later one with the same index gets no gradient
        ids = b.nn.reshape(b.nn.arange(start=0, limit=x.type.numel, dtype=x.type.dtype), shape=list(x.type.shape))
        unpooled = b.nn.max_unpool(ids, idx, kernel=at["kernel"], strides=at["strides"], pads=at["pads"])
        won = b.nn.eq(b.nn.gather(b.nn.reshape(unpooled, shape=[-1]), flat_idx), b.nn.reshape(ids, shape=[-1]))
        dx = b.nn.reshape(b.nn.where(won, picked, 0.0), shape=list(x.type.shape))
        return [dx] + [None] * (len(op.operands) - 1)

    def cost(op, bind):
        x, y = op.operands[0].type, op.results[0].type
        return Cost(0, x.nbytes(bind) + op.operands[1].type.nbytes(bind), y.nbytes(bind))


# --- rotary embedding from cos / sin caches ------------------------------------------------------
def _pair_slices(interleaved, r):
    """nn.slice attributes of the two halves of the rotated pairs along the last axis."""
    if interleaved:
        return ({"starts": [0], "ends": [2 * r], "axes": [-1], "steps": [2]},
                {"starts": [1], "ends": [2 * r], "axes": [-1], "steps": [2]})
    return {"starts": [0], "ends": [r], "axes": [-1]}, {"starts": [r], "ends": [2 * r], "axes": [-1]}


@declare
class rope_cached:
    """Rotary position embedding with precomputed angles (ONNX RotaryEmbedding once the caches
    are gathered at the positions): x is (..., D); cos and sin (..., R) hold cos and sin of the
    angle of each of R rotated pairs and broadcast (numpy rules, right-aligned) against
    x.shape[:-1] + (R,) without enlarging it. The first 2R channels (2R <= D) are rotated, the
    rest pass through:

        (a, b) -> (a cos - b sin, b cos + a sin)

    with pairs (i, i + R) (`interleaved = false`, rotate-half / NEOX) or (2i, 2i + 1)
    (`interleaved = true`, GPT-J). cos and sin are used as given (they need not be a rotation).
    x, cos and sin share one float dtype; f16/bf16 compute in f32. nn.rope computes the angles
    itself from positions.

    Gradient: x through the same op with -sin (the transposed rotation); cos and sin get
    a.g_a + b.g_b and a.g_b - b.g_a summed over their broadcast dims (needs a static R)."""
    name = "nn.rope_cached"
    operands = (Operand("x", FLOAT), Operand("cos", FLOAT), Operand("sin", FLOAT))
    attrs = (Attr("interleaved", "bool", False, doc="pair (2i, 2i+1) instead of (i, i + R)"),)
    traits = {"pure"}
    examples = (Ex("f32[2,4,3,8]", "f32[2,1,3,4]", "f32[2,1,3,4]"),
                Ex("f32[2,3,2,8]", "f32[2,3,1,4]", "f32[2,3,1,4]", interleaved=True),
                Ex("f32[2,4,3,8]", "f32[2,1,3,2]", "f32[2,1,3,2]"),
                Ex("f32[3,2,6]", "f32[3,1,2]", "f32[3,1,2]", interleaved=True),
                Ex("f32[5,4]", "f32[2]", "f32[2]"),
                Ex("f16[2,3,4]", "f16[3,2]", "f16[3,2]"))

    def infer(x, cos, sin, *, interleaved):
        same_dtype(x, cos, sin)
        if x.rank < 1 or cos.rank < 1:
            raise ShapeError(f"x and cos need rank >= 1, got {x} and {cos}")
        r, d = cos.shape[-1], x.shape[-1]
        if type(r) is int and type(d) is int and 2 * r > d:
            raise ShapeError(f"cos {cos} rotates {2 * r} channels, x {x} has {d}")
        for what, t in (("cos", cos), ("sin", sin)):
            if t.shape != cos.shape or not broadcasts_to(t.shape[:-1], x.shape[:-1]):
                raise ShapeError(f"{what} {t} must match cos {cos} and broadcast to x.shape[:-1] = "
                                 f"{fmt_shape(x.shape[:-1])}")
        return x

    def ref(x, cos, sin, *, interleaved):
        r = cos.shape[-1]
        if cos.shape != sin.shape or 2 * r > x.shape[-1]:
            raise ShapeError(f"cos {list(cos.shape)} and sin {list(sin.shape)} must agree and rotate "
                             f"at most the {x.shape[-1]} channels of x")
        w, c, s = wide(x), wide(cos), wide(sin)
        ia, ib = ((..., slice(0, 2 * r, 2)), (..., slice(1, 2 * r, 2))) if interleaved else \
            ((..., slice(0, r)), (..., slice(r, 2 * r)))
        y = w.copy()
        y[ia] = w[ia] * c - w[ib] * s
        y[ib] = w[ib] * c + w[ia] * s
        return y.astype(x.dtype)

    def vjp(b, op, g):
        if g is None:
            return [None, None, None]
        x, cos, sin = op.operands
        il = op.attrs["interleaved"]
        dx = b.nn.rope_cached(g, cos, b.nn.neg(sin), interleaved=il)
        r = cos.type.shape[-1]
        if type(r) is not int:
            raise ShapeError(f"nn.rope_cached: the gradient of cos and sin needs a static last dim, "
                             f"cos is {cos.type}")
        sa, sb = _pair_slices(il, r)
        xa, xb, ga, gb = b.nn.slice(x, **sa), b.nn.slice(x, **sb), b.nn.slice(g, **sa), b.nn.slice(g, **sb)
        dcos = b.nn.add(b.nn.mul(ga, xa), b.nn.mul(gb, xb))
        dsin = b.nn.sub(b.nn.mul(gb, xa), b.nn.mul(ga, xb))
        return [dx, unbroadcast(b, dcos, cos), unbroadcast(b, dsin, sin)]

    def cost(op, bind):
        x, cos = op.operands[0].type, op.operands[1].type
        d = max(numel(x.with_shape(x.shape[-1:]), bind), 1)
        pairs = numel(x, bind) // d * numel(cos.with_shape(cos.shape[-1:]), bind)
        return Cost(6 * pairs, sum(v.type.nbytes(bind) for v in op.operands), op.results[0].type.nbytes(bind))


# --- detection ---------------------------------------------------------------------------------
def _box_edges(boxes, center):
    """(y_min, x_min, y_max, x_max) of boxes (..., 4) given as corners (either order) or as
    (x_center, y_center, width, height)."""
    if center:
        xc, yc, w, h = (boxes[..., i] for i in range(4))
        return yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2
    y1, x1, y2, x2 = (boxes[..., i] for i in range(4))
    return np.minimum(y1, y2), np.minimum(x1, x2), np.maximum(y1, y2), np.maximum(x1, x2)


def _iou(boxes, center):
    """The (N, N) intersection-over-union of boxes (N, 4); pairs that do not overlap, or with
    an empty box, have 0."""
    y0, x0, y1, x1 = _box_edges(boxes.astype(np.float64), center)
    iy = np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None])
    ix = np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None])
    inter = np.where((iy > 0) & (ix > 0), iy * ix, 0.0)
    area = (y1 - y0) * (x1 - x0)
    union = area[:, None] + area[None] - inter
    ok = (inter > 0) & (area[:, None] > 0) & (area[None] > 0) & (union > 0)
    with np.errstate(all="ignore"):
        return np.where(ok, inter / union, 0.0)


def _scalar(a, what, default):
    if a is None or a.size == 0:
        return default
    if a.size != 1:
        raise ShapeError(f"{what} must hold one value, got shape {list(a.shape)}")
    return a.reshape(-1)[0]


@declare
class non_max_suppression:
    """ONNX NonMaxSuppression: greedy per (batch, class) selection of boxes (B, N, 4) by scores
    (B, C, N). Boxes are corners [y1, x1, y2, x2] (either diagonal) or, with
    `center_point_box`, [x_center, y_center, width, height]. Per batch and class, the boxes whose
    score exceeds `score_threshold` (when given) are visited by decreasing score (ties: lower
    index first); a box is kept unless its IoU with an already kept box of that class exceeds
    `iou_threshold` (default 0), until `max_output_boxes_per_class` (default 0: none) are kept.
    The result is an i64 (K, 3) list of [batch, class, box] in selection order, batch-major then
    class; K is known only at run time. The three limits are one-element tensors (run-time
    inputs in ONNX)."""
    name = "nn.non_max_suppression"
    operands = (Operand("boxes", FLOAT), Operand("scores", FLOAT),
                Operand("max_output_boxes_per_class", INDEX, optional=True),
                Operand("iou_threshold", FLOAT, optional=True),
                Operand("score_threshold", FLOAT, optional=True))
    attrs = (Attr("center_point_box", "bool", False, doc="boxes are [x_center, y_center, w, h]"),)
    traits = {"pure"}
    vjp = not_differentiable("integer indices chosen by comparisons")
    examples = (Ex(np.array([[[0, 0, 1, 1], [0, 0.1, 1, 1.1], [0, -0.1, 1, 0.9], [0, 10, 1, 11],
                              [0, 10.1, 1, 11.1], [0, 100, 1, 101]]], np.float32),
                   np.array([[[0.9, 0.75, 0.6, 0.95, 0.5, 0.3]]], np.float32),
                   np.array([3], np.int64), np.array([0.5], np.float32), np.array([0.0], np.float32)),
                Ex(np.array([[[0.5, 0.5, 1, 1], [0.5, 0.6, 1, 1], [0.5, 0.4, 1, 1], [0.5, 10.5, 1, 1]]],
                            np.float32), np.array([[[0.9, 0.75, 0.6, 0.95], [0.1, 0.2, 0.3, 0.4]]], np.float32),
                   np.array([2], np.int64), np.array([0.4], np.float32), center_point_box=True),
                Ex("f32[2,5,4]", "f32[2,3,5]", np.array(4, np.int64)))

    def infer(boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold, *, center_point_box):
        same_dtype(boxes, scores)
        if boxes.rank != 3 or type(boxes.shape[2]) is int and boxes.shape[2] != 4:
            raise ShapeError(f"boxes must be (B, N, 4), got {boxes}")
        if scores.rank != 3 or any(type(a) is int and type(c) is int and a != c
                                   for a, c in ((scores.shape[0], boxes.shape[0]), (scores.shape[2], boxes.shape[1]))):
            raise ShapeError(f"scores must be (B, C, N) for boxes {boxes}, got {scores}")
        for what, t in (("iou_threshold", iou_threshold), ("score_threshold", score_threshold)):
            if t is not None and t.dtype is not boxes.dtype:
                raise ShapeError(f"{what} must have the boxes' dtype {boxes.dtype}, got {t}")
        return TensorType((ANYDIM, 3), dt.i64)

    def ref(boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold, *, center_point_box):
        if boxes.shape[0] != scores.shape[0] or boxes.shape[1] != scores.shape[2] or boxes.shape[2] != 4:
            raise ShapeError(f"boxes {list(boxes.shape)} and scores {list(scores.shape)} must be "
                             "(B, N, 4) and (B, C, N)")
        limit = max(int(_scalar(max_output_boxes_per_class, "max_output_boxes_per_class", 0)), 0)
        iou_t = float(_scalar(iou_threshold, "iou_threshold", 0.0))
        score_t = _scalar(score_threshold, "score_threshold", None)
        out = []
        for bi in range(boxes.shape[0]):
            iou = _iou(boxes[bi], center_point_box) if limit else None
            for ci in range(scores.shape[1]):
                s = scores[bi, ci]
                cand = np.arange(s.shape[0]) if score_t is None else np.nonzero(s > score_t)[0]
                order = cand[np.lexsort((cand, -s[cand].astype(np.float64)))]
                kept = []
                for i in order:
                    if len(kept) >= limit:
                        break
                    if all(iou[i, j] <= iou_t for j in kept):
                        kept.append(i)
                        out.append((bi, ci, i))
        return np.asarray(out, np.int64).reshape(-1, 3)

    def cost(op, bind):
        boxes, scores = op.operands[0].type, op.operands[1].type
        n = numel(boxes.with_shape(boxes.shape[1:2]), bind)
        return Cost(numel(scores, bind) * max(n, 1) * 8, sum(v.type.nbytes(bind) for v in op.operands),
                    op.results[0].type.nbytes(bind))


def _roi_axis(start, bin_size, bins, grid, size):
    """Bilinear taps along one axis for `bins` bins of `grid` samples each: (low, high, weight
    of low, weight of high), each (bins * grid,); samples beyond [-1, size] get zero weights."""
    pos = start + np.arange(bins)[:, None] * bin_size + (np.arange(grid)[None, :] + 0.5) * bin_size / grid
    pos = pos.reshape(-1)
    inside = (pos >= -1.0) & (pos <= size)
    p = np.maximum(pos, 0.0)
    low = np.floor(p).astype(np.int64)
    edge = low >= size - 1
    low = np.where(edge, size - 1, low)
    high = np.where(edge, size - 1, low + 1)
    frac = np.where(edge, 0.0, p - low)
    return low, high, np.where(inside, 1.0 - frac, 0.0), np.where(inside, frac, 0.0)


@declare
class roi_align:
    """ONNX RoiAlign over x (N, C, H, W): for each region rois[r] = [x1, y1, x2, y2] (scaled by
    `spatial_scale`, shifted by -0.5 with coordinate_transformation_mode "half_pixel") of image
    batch_indices[r], an output_height x output_width grid of bins; each bin samples a grid of
    sampling_ratio x sampling_ratio points (0: ceil(roi size / bins) per axis) at bin-relative
    offsets (i + 0.5) / grid, reads x there by bilinear interpolation (points beyond [-1, size]
    read 0; coordinates below 0 clamp to 0, at or past size - 1 to the last pixel) and
    averages them ("avg"), or ("max") takes the largest of the weighted corner terms of all its
    points, as the ONNX reference does. With "output_half_pixel" a region is at least 1 x 1.
    The result is (R, C, output_height, output_width); computed in float64, rounded to x's
    dtype."""
    name = "nn.roi_align"
    operands = (Operand("x", FLOAT), Operand("rois", FLOAT), Operand("batch_indices", INDEX))
    attrs = (Attr("mode", "str", "avg", choices=("avg", "max")),
             Attr("output_height", "int", 1), Attr("output_width", "int", 1),
             Attr("sampling_ratio", "int", 0, doc="samples per bin and axis; 0: adaptive"),
             Attr("spatial_scale", "float", 1.0, doc="multiplies the roi coordinates"),
             Attr("coordinate_transformation_mode", "str", "half_pixel",
                  choices=("half_pixel", "output_half_pixel")))
    traits = {"pure"}
    vjp = not_differentiable("the gradient (a scatter of bilinear weights into x, and with respect "
                             "to the boxes through the sample positions) is not implemented")
    examples = (Ex("f32[1,2,10,10]", np.array([[0, 0, 9, 9], [0, 5, 4, 9], [5, 5, 9, 9]], np.float32),
                   np.array([0, 0, 0], np.int64), output_height=5, output_width=5, sampling_ratio=2),
                Ex("f32[2,3,6,7]", np.array([[1.5, 0.2, 5.1, 4.4], [-2, -1, 3, 8]], np.float32),
                   np.array([1, 0], np.int32), output_height=3, output_width=2,
                   coordinate_transformation_mode="output_half_pixel", spatial_scale=0.8),
                Ex("f32[1,1,8,8]", np.array([[1, 1, 6, 5]], np.float32), np.array([0], np.int64),
                   mode="max", output_height=2, output_width=3, sampling_ratio=2))

    def infer(x, rois, batch_indices, *, mode, output_height, output_width, sampling_ratio,
              spatial_scale, coordinate_transformation_mode):
        same_dtype(x, rois)
        if x.rank != 4:
            raise ShapeError(f"x must be (N, C, H, W), got {x}")
        if rois.rank != 2 or type(rois.shape[1]) is int and rois.shape[1] != 4:
            raise ShapeError(f"rois must be (R, 4), got {rois}")
        r = rois.shape[0]
        if batch_indices.rank != 1 or type(r) is int and type(batch_indices.shape[0]) is int \
                and batch_indices.shape[0] != r:
            raise ShapeError(f"batch_indices must be ({r},), got {batch_indices}")
        if output_height < 1 or output_width < 1 or sampling_ratio < 0:
            raise ShapeError(f"output sizes must be >= 1 and sampling_ratio >= 0, got "
                             f"{output_height}, {output_width}, {sampling_ratio}")
        return x.with_shape((r, x.shape[1], output_height, output_width))

    def ref(x, rois, batch_indices, *, mode, output_height, output_width, sampling_ratio,
            spatial_scale, coordinate_transformation_mode):
        n, c, h, w = x.shape
        ph, pw = output_height, output_width
        half = coordinate_transformation_mode == "half_pixel"
        out = np.zeros((rois.shape[0], c, ph, pw))
        for r, (roi, bi) in enumerate(zip(rois.astype(np.float64), batch_indices)):
            if not 0 <= bi < n:
                raise ShapeError(f"batch index {int(bi)} is out of range for {n} images")
            x0, y0, x1, y1 = roi * spatial_scale - (0.5 if half else 0.0)
            rw, rh = x1 - x0, y1 - y0
            if not half:
                rw, rh = max(rw, 1.0), max(rh, 1.0)
            gh = sampling_ratio or int(np.ceil(rh / ph))
            gw = sampling_ratio or int(np.ceil(rw / pw))
            ylo, yhi, wylo, wyhi = _roi_axis(y0, rh / ph, ph, gh, h)
            xlo, xhi, wxlo, wxhi = _roi_axis(x0, rw / pw, pw, gw, w)
            img = x[bi].astype(np.float64)
            terms = [wy[:, None] * wx[None, :] * img[:, yi][:, :, xi]
                     for yi, wy in ((ylo, wylo), (yhi, wyhi)) for xi, wx in ((xlo, wxlo), (xhi, wxhi))]
            if mode == "avg":
                v = sum(terms).reshape(c, ph, gh, pw, gw)
                out[r] = v.sum(axis=(2, 4)) / max(gh * gw, 1)
            else:
                v = np.max(terms, axis=0).reshape(c, ph, gh, pw, gw)
                out[r] = v.max(axis=(2, 4)) if gh * gw else 0.0
        return out.astype(x.dtype)

    def cost(op, bind):
        y = op.results[0].type
        s = op.attrs["sampling_ratio"] or 2
        return Cost(numel(y, bind) * s * s * 8, sum(v.type.nbytes(bind) for v in op.operands), y.nbytes(bind))


def _bilinear_zero(img, y, x):
    """img (N, C, H, W) read at float coordinates y, x (N, C, ...) by bilinear interpolation;
    taps outside the image read 0."""
    n, c, h, w = img.shape
    y0, x0 = np.floor(y), np.floor(x)
    ni = np.arange(n).reshape((n,) + (1,) * (y.ndim - 1))
    ci = np.arange(c).reshape((1, c) + (1,) * (y.ndim - 2))
    out = 0.0
    for dy in (0, 1):
        for dx in (0, 1):
            yy, xx = y0 + dy, x0 + dx
            wgt = (1 - np.abs(y - yy)) * (1 - np.abs(x - xx))
            ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            v = img[ni, ci, np.clip(yy, 0, h - 1).astype(np.int64), np.clip(xx, 0, w - 1).astype(np.int64)]
            out = out + np.where(ok, wgt * v, 0.0)
    return out


@declare
class deform_conv:
    """Deformable 2-D convolution (ONNX DeformConv, DCNv2): nn.conv whose kernel taps read x at
    shifted positions. x is (N, C, H, W), w (O, C/groups, kH, kW), offset
    (N, offset_groups * kH * kW * 2, oH, oW) holding per tap the (dy, dx) shift, ordered
    (offset group, kh, kw, [dy, dx]); mask (N, offset_groups * kH * kW, oH, oW) optional
    (absent: 1). Tap (a, b) of output position (i, j) reads x at
    (i * stride_h - pad_top + a * dilation_h + dy, j * stride_w - pad_left + b * dilation_w + dx)
    by bilinear interpolation (taps outside x read 0), times the mask; channel c uses offset
    group c // (C / offset_groups). The output size (oH, oW) is nn.conv's and must match the
    offset's. Computed in float64, rounded to x's dtype."""
    name = "nn.deform_conv"
    operands = (Operand("x", FLOAT), Operand("w", FLOAT), Operand("offset", FLOAT),
                Operand("bias", FLOAT, optional=True), Operand("mask", FLOAT, optional=True))
    attrs = CONV_ATTRS + (Attr("offset_groups", "int", 1),)
    traits = {"pure"}
    vjp = not_differentiable("the gradients with respect to x, the offsets and the mask (scatters "
                             "of bilinear weights) are not implemented")
    examples = (Ex("f32[1,1,3,3]", "f32[1,1,2,2]", "f32[1,8,2,2]"),
                Ex("f32[2,4,5,6]", "f32[6,2,3,2]", Arg("f32[2,24,3,3]", -1.5, 1.5), "f32[6]",
                   Arg("f32[2,12,3,3]", 0.0, 1.0), strides=[2, 2], pads=[1, 0, 1, 1], groups=2,
                   offset_groups=2),
                Ex("f32[1,2,6,6]", "f32[3,2,2,2]", "f32[1,8,4,4]", dilations=[2, 2]))

    def infer(x, w, offset, bias, mask, *, strides, pads, dilations, groups, offset_groups):
        same_dtype(x, w, offset, *[t for t in (bias, mask) if t is not None])
        if x.rank != 4:
            raise ShapeError(f"only 2-D deformable convolution is supported, x is {x}")
        y = _conv_type(x, w, strides, pads, dilations, groups)
        kk = w.shape[2] * w.shape[3] if type(w.shape[2]) is int and type(w.shape[3]) is int else None
        c = x.shape[1]
        if offset_groups < 1 or type(c) is int and c % offset_groups:
            raise ShapeError(f"channels {c} are not divisible by offset_groups {offset_groups}")
        for what, t, per in (("offset", offset, 2), ("mask", mask, 1)):
            if t is None:
                continue
            want = (y.shape[0], offset_groups * kk * per if kk else ANYDIM) + y.shape[2:]
            if t.rank != 4 or any(type(a) is int and type(b_) is int and a != b_ for a, b_ in zip(t.shape, want)):
                raise ShapeError(f"{what} {t} must be {fmt_shape(want)}")
        if bias is not None and (bias.rank != 1 or type(bias.shape[0]) is int and type(w.shape[0]) is int
                                 and bias.shape[0] != w.shape[0]):
            raise ShapeError(f"bias must be ({w.shape[0]},), got {bias}")
        return y

    def ref(x, w, offset, bias, mask, *, strides, pads, dilations, groups, offset_groups):
        s, pb, pe, d = _geometry(2, strides, pads, dilations)
        n, c = x.shape[:2]
        o, cg, kh, kw = w.shape
        oh, ow = _out_dims(x.shape[2:], w.shape[2:], s, pb, pe, d)
        if offset.shape != (n, offset_groups * kh * kw * 2, oh, ow):
            raise ShapeError(f"offset has shape {list(offset.shape)}, want "
                             f"{[n, offset_groups * kh * kw * 2, oh, ow]}")
        off = offset.astype(np.float64).reshape(n, offset_groups, kh, kw, 2, oh, ow)
        m = np.ones((n, offset_groups, kh, kw, oh, ow)) if mask is None else \
            mask.astype(np.float64).reshape(n, offset_groups, kh, kw, oh, ow)
        base_y = (np.arange(oh) * s[0] - pb[0])[None, :, None] + (np.arange(kh) * d[0])[:, None, None]
        base_x = (np.arange(ow) * s[1] - pb[1])[None, None, :] + (np.arange(kw) * d[1])[:, None, None]
        yy = base_y[None, None, :, None, :, :] + off[:, :, :, :, 0]      # (n, G, kh, kw, oh, ow)
        xx = base_x[None, None, None, :, :, :] + off[:, :, :, :, 1]
        rep = c // offset_groups
        cols = _bilinear_zero(x.astype(np.float64), np.repeat(yy, rep, axis=1), np.repeat(xx, rep, axis=1))
        cols = cols * np.repeat(m, rep, axis=1)                           # (n, C, kh, kw, oh, ow)
        cols = cols.reshape(n, groups, cg, kh, kw, oh, ow)
        wg = w.astype(np.float64).reshape(groups, o // groups, cg, kh, kw)
        y = np.einsum("ngckhij,gockh->ngoij", cols, wg).reshape(n, o, oh, ow)
        if bias is not None:
            y = y + bias.astype(np.float64).reshape(1, -1, 1, 1)
        return y.astype(x.dtype)

    def cost(op, bind):
        x, w = op.operands[0].type, op.operands[1].type
        y = op.results[0].type
        taps = numel(w.with_shape(w.shape[2:]), bind) * numel(y.with_shape(y.shape[2:]), bind)
        # a multiply-add per weight and output element, and a 4-tap bilinear read (12 FLOPs)
        # per (image, channel, tap, output position)
        return Cost(2 * numel(y, bind) * numel(w.with_shape(w.shape[1:]), bind)
                    + 12 * numel(x.with_shape(x.shape[:2]), bind) * taps,
                    sum(v.type.nbytes(bind) for v in op.operands), y.nbytes(bind))


# --- linear attention ---------------------------------------------------------------------------
def _la_shapes(q, k, v):
    """(B, Hq, T, dk, Hkv, dv) of linear attention operands (arrays or types), checked."""
    for what, t in (("q", q), ("k", k), ("v", v)):
        if len(t.shape) != 4:
            raise ShapeError(f"{what} must be (B, heads, T, dim), got shape {list(t.shape)}")
    bsz, hq, tt, dk = q.shape
    hkv, dv = k.shape[1], v.shape[3]
    for what, a, c in (("k's batch", k.shape[0], bsz), ("k's length", k.shape[2], tt),
                       ("k's head size", k.shape[3], dk), ("v's batch", v.shape[0], bsz),
                       ("v's heads", v.shape[1], hkv), ("v's length", v.shape[2], tt)):
        if type(a) is int and type(c) is int and a != c:
            raise ShapeError(f"{what} is {a}, expected {c}")
    if type(hq) is int and type(hkv) is int and (hkv == 0 or hq % hkv):
        raise ShapeError(f"query heads {hq} are not a multiple of kv heads {hkv}")
    return bsz, hq, tt, dk, hkv, dv


def _la_run(q, k, v, state, decay, beta, delta, scale):
    """Linear attention in float64: (y, final state, states before each step's decay, states
    after it)."""
    f = np.float64
    bsz, hq, tt, dk, hkv, dv = _la_shapes(q, k, v)
    grp = hq // hkv
    scale = 1 / np.sqrt(dk) if scale is None else scale
    q, k, v = (t.astype(f) for t in (q, k, v))
    s = np.broadcast_to(state.astype(f), (bsz, hkv, dk, dv)).copy()
    a = np.exp(np.broadcast_to(decay.astype(f), (bsz, hkv, tt, dk)))
    be = np.broadcast_to(beta.astype(f), (bsz, hkv, tt, 1))
    y = np.zeros((bsz, hq, tt, dv))
    before, after = [], []
    for t in range(tt):
        before.append(s)
        s = s * a[:, :, t, :, None]
        after.append(s)
        u = v[:, :, t]
        if delta:
            u = be[:, :, t] * (u - np.einsum("bhdm,bhd->bhm", s, k[:, :, t]))
        s = s + k[:, :, t, :, None] * u[:, :, None, :]
        y[:, :, t] = scale * np.einsum("bhd,bhdm->bhm", q[:, :, t], np.repeat(s, grp, axis=1))
    return y, s, before, after


def _la_check(q, k, v, state, decay, beta):
    bsz, hq, tt, dk, hkv, dv = _la_shapes(q, k, v)
    for what, t, want in (("state", state, (bsz, hkv, dk, dv)), ("decay", decay, (bsz, hkv, tt, dk)),
                          ("beta", beta, (bsz, hkv, tt, 1))):
        if len(t.shape) != 4 or not broadcasts_to(t.shape, want):
            raise ShapeError(f"{what} of shape {fmt_shape(t.shape)} does not broadcast to {fmt_shape(want)}")
    return bsz, hq, tt, dk, hkv, dv


@declare
class linear_attention:
    """Linear attention with a recurrent state (ONNX LinearAttention, in heads-major layout):
    q (B, Hq, T, dk), k (B, Hkv, T, dk), v (B, Hkv, T, dv) with Hq a multiple of Hkv (query head
    h reads kv state h // (Hq / Hkv)); state (B, Hkv, dk, dv), decay (B, Hkv, T, dk) and beta
    (B, Hkv, T, 1) broadcast (numpy rules) to those shapes. For t = 0 .. T-1:

        S = exp(decay_t) * S                          (per key dim; decay is in log space)
        u = v_t,  or with `delta`:  u = beta_t * (v_t - S^T k_t)
        S = S + k_t u^T
        y_t = scale * S^T q_t                         (scale absent: 1 / sqrt(dk))

    starting from S = state. Results: y (B, Hq, T, dv) and the final state (B, Hkv, dk, dv).
    ONNX's update rules map to decay = 0 ("linear", "delta") and delta = false ("linear",
    "gated"); beta only matters with delta. Computed in float64, rounded to q's dtype.

    Gradient: backpropagation through the recurrence, by nn.linear_attention_grad."""
    name = "nn.linear_attention"
    operands = (Operand("q", FLOAT), Operand("k", FLOAT), Operand("v", FLOAT), Operand("state", FLOAT),
                Operand("decay", FLOAT), Operand("beta", FLOAT))
    results = (Result("y"), Result("final_state"))
    attrs = (Attr("delta", "bool", False, doc="delta-rule correction of the written value"),
             Attr("scale", "float", None, doc="output scale; absent: 1/sqrt(dk)"))
    traits = {"pure"}
    examples = (Ex("f32[2,2,3,4]", "f32[2,2,3,4]", "f32[2,2,3,5]", "f32[1,1,1,1]",
                   Arg("f32[2,2,3,4]", -0.5, 0.0), "f32[1,1,1,1]"),
                Ex("f32[1,4,3,2]", "f32[1,2,3,2]", "f32[1,2,3,3]", "f32[1,2,2,3]",
                   Arg("f32[1,2,3,1]", -0.5, 0.0), Arg("f32[1,2,3,1]", 0.1, 0.9), delta=True, scale=0.5),
                Ex("f32[2,2,4,2]", "f32[2,1,4,2]", "f32[2,1,4,2]", "f32[2,1,2,2]",
                   Arg("f32[2,1,4,2]", -0.3, 0.0), Arg("f32[2,1,4,1]", 0.2, 1.0), delta=True),
                Ex("f16[1,1,2,4]", "f16[1,1,2,4]", "f16[1,1,2,4]", "f16[1,1,1,1]", "f16[1,1,1,1]",
                   "f16[1,1,1,1]"))

    def infer(q, k, v, state, decay, beta, *, delta, scale):
        same_dtype(q, k, v, state, decay, beta)
        bsz, hq, tt, dk, hkv, dv = _la_check(q, k, v, state, decay, beta)
        return q.with_shape((bsz, hq, tt, dv)), q.with_shape((bsz, hkv, dk, dv))

    def ref(q, k, v, state, decay, beta, *, delta, scale):
        _la_check(q, k, v, state, decay, beta)
        y, s, _, _ = _la_run(q, k, v, state, decay, beta, delta, scale)
        return y.astype(q.dtype), s.astype(q.dtype)

    def vjp(b, op, gy, gs):
        if gy is None and gs is None:
            return [None] * 6
        gy = gy if gy is not None else b.nn.broadcast_like(b.constant(0, op.results[0].type.dtype.np), op.results[0])
        gs = gs if gs is not None else b.nn.broadcast_like(b.constant(0, op.results[1].type.dtype.np), op.results[1])
        grads = b.nn.linear_attention_grad(*op.operands, gy, gs, **op.attrs)
        return [g if g.type is x.type else unbroadcast(b, g, x) for g, x in zip(grads, op.operands)]

    def cost(op, bind):
        q, k, v = (x.type for x in op.operands[:3])
        bsz, hq, tt, dk = concrete(q.shape, bind)
        hkv, dv = concrete(k.shape, bind)[1], concrete(v.shape, bind)[3]
        # per step and kv head: decay dk*dv, correction 3*dk*dv, write 2*dk*dv; per query head
        # the read 2*dk*dv
        flops = bsz * tt * dk * dv * (6 * hkv + 2 * hq)
        return Cost(flops, sum(x.type.nbytes(bind) for x in op.operands), sum(r.type.nbytes(bind) for r in op.results))


@declare
class linear_attention_grad:
    """The gradient of nn.linear_attention (same attributes): given its six operands and the
    cotangents gy of y and gs of the final state, the gradients with respect to q, k, v and,
    before broadcasting, state (B, Hkv, dk, dv), decay (B, Hkv, T, dk) and beta (B, Hkv, T, 1),
    by running the recurrence backwards (the states are recomputed forwards first). Computed in
    float64, rounded to q's dtype."""
    name = "nn.linear_attention_grad"
    operands = linear_attention.operands + (Operand("gy", FLOAT), Operand("gs", FLOAT))
    results = tuple(Result("d" + o.name) for o in linear_attention.operands)
    attrs = tuple(linear_attention.attrs.values())
    traits = {"pure"}
    vjp = not_differentiable("second derivatives of the linear-attention recurrence are not supported")
    examples = (Ex("f32[2,2,3,4]", "f32[2,2,3,4]", "f32[2,2,3,5]", "f32[1,1,1,1]", "f32[2,2,3,4]",
                   "f32[1,1,1,1]", "f32[2,2,3,5]", "f32[2,2,4,5]"),
                Ex("f32[1,4,3,2]", "f32[1,2,3,2]", "f32[1,2,3,3]", "f32[1,2,2,3]", "f32[1,2,3,1]",
                   "f32[1,2,3,1]", "f32[1,4,3,3]", "f32[1,2,2,3]", delta=True))

    def infer(q, k, v, state, decay, beta, gy, gs, *, delta, scale):
        same_dtype(q, k, v, state, decay, beta, gy, gs)
        bsz, hq, tt, dk, hkv, dv = _la_check(q, k, v, state, decay, beta)
        for what, t, want in (("gy", gy, (bsz, hq, tt, dv)), ("gs", gs, (bsz, hkv, dk, dv))):
            if t.rank != 4 or any(type(a) is int and type(c) is int and a != c for a, c in zip(t.shape, want)):
                raise ShapeError(f"{what} {t} must be {fmt_shape(want)}")
        return (q, k, v, q.with_shape((bsz, hkv, dk, dv)), q.with_shape((bsz, hkv, tt, dk)),
                q.with_shape((bsz, hkv, tt, 1)))

    def ref(q, k, v, state, decay, beta, gy, gs, *, delta, scale):
        _la_check(q, k, v, state, decay, beta)
        f = np.float64
        bsz, hq, tt, dk, hkv, dv = _la_shapes(q, k, v)
        grp = hq // hkv
        sc = 1 / np.sqrt(dk) if scale is None else scale
        _, _, before, after = _la_run(q, k, v, state, decay, beta, delta, scale)
        q_, k_, v_, gy_ = (t.astype(f) for t in (q, k, v, gy))
        a = np.exp(np.broadcast_to(decay.astype(f), (bsz, hkv, tt, dk)))
        be = np.broadcast_to(beta.astype(f), (bsz, hkv, tt, 1))
        dq, dk_, dv_ = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)
        dde, dbe = np.zeros((bsz, hkv, tt, dk)), np.zeros((bsz, hkv, tt, 1))
        ds = gs.astype(f).copy()
        for t in reversed(range(tt)):
            sp, kt, vt = after[t], k_[:, :, t], v_[:, :, t]
            r = np.einsum("bhdm,bhd->bhm", sp, kt)
            u = be[:, :, t] * (vt - r) if delta else vt
            st = sp + kt[..., None] * u[..., None, :]
            dq[:, :, t] = sc * np.einsum("bhdm,bhm->bhd", np.repeat(st, grp, axis=1), gy_[:, :, t])
            ds = ds + (sc * q_[:, :, t, :, None] * gy_[:, :, t, None, :]).reshape(
                bsz, hkv, grp, dk, dv).sum(axis=2)
            du = np.einsum("bhdm,bhd->bhm", ds, kt)
            dk_[:, :, t] = np.einsum("bhdm,bhm->bhd", ds, u)
            dsp = ds
            if delta:
                dv_[:, :, t] = be[:, :, t] * du
                dbe[:, :, t] = np.sum((vt - r) * du, axis=-1, keepdims=True)
                dr = -be[:, :, t] * du
                dsp = ds + kt[..., None] * dr[..., None, :]
                dk_[:, :, t] += np.einsum("bhdm,bhm->bhd", sp, dr)
            else:
                dv_[:, :, t] = du
            dde[:, :, t] = np.sum(dsp * before[t], axis=-1) * a[:, :, t]
            ds = dsp * a[:, :, t, :, None]
        return tuple(x.astype(q.dtype) for x in (dq, dk_, dv_, ds, dde, dbe))

    def cost(op, bind):
        c = linear_attention.cost(op, bind)
        return Cost(3 * c.flops, sum(x.type.nbytes(bind) for x in op.operands),
                    sum(r.type.nbytes(bind) for r in op.results))
