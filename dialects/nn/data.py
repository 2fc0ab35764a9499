"""Data movement: concat, split, slice, gather and scatter_add, pad, tile, arange.

Gradients that put values back into an operand's shape go through helper ops taking that operand
as `like` (only its shape is read: nn.split_like, nn.slice_grad, nn.pad_grad, nn.tile_grad), so
they stay exact when dims are symbolic.
"""
from __future__ import annotations

import math

import numpy as np

from ckir import dtypes as dt
from ckir.errors import CkirError, ShapeError
from ckir.opdef import (
    ANY,
    NUMERIC,
    Attr,
    Cost,
    Ex,
    Operand,
    Result,
    declare,
    not_differentiable,
)
from ckir.types import ANY as ANYDIM
from ckir.types import Sym, TensorType, fmt_shape

from ._util import data_movement_cost, norm_axis, numel, same_dtype, wide

INT64_MAX, INT64_MIN = 2**63 - 1, -2**63
INDEX = (dt.i32, dt.i64)


def _zeros_like(b, v):
    """Zeros of v's type, symbolic dims included."""
    return b.nn.broadcast_like(b.constant(0, v.type.dtype.np), v)


def _as_type_of(b, v, like):
    """v with exactly like's type (a view) where inference lost a symbolic dim."""
    return v if v.type is like.type else b.nn.reshape_like(v, like)


def _agree(dims, names, i):
    """The common size of dim i of several operands (named `names`): static sizes must match."""
    k = next((j for j, d in enumerate(dims) if type(d) is int), None)
    if k is None:
        return dims[0] if all(d is dims[0] for d in dims) else ANYDIM
    for j, d in enumerate(dims):
        if type(d) is int and d != dims[k]:
            raise ShapeError(f"{names[j]} has size {d} in dim {i}, but {names[k]} has {dims[k]}")
    return dims[k]


def _sum_dims(dims):
    static = sum(d for d in dims if type(d) is int)
    syms = [d for d in dims if type(d) is Sym]
    if not syms:
        return static
    return syms[0] if len(syms) == 1 and static == 0 else ANYDIM


def _check_ranks(ts, names, rank):
    for t, n in zip(ts, names):
        if t.rank != rank:
            raise ShapeError(f"{n} is {t}, want rank {rank}")


def _check_shape(t, want, what):
    """t's shape must fit `want` (dims known on both sides must be equal)."""
    if t.rank != len(want) or any(type(a) is int and type(w) is int and a != w
                                  for a, w in zip(t.shape, want)):
        raise ShapeError(f"{what} is {t}, want shape {fmt_shape(want)}")


def _join_grads(b, op, grads, axis):
    """The gradient of a split: the result gradients concatenated (zeros where None)."""
    if all(g is None for g in grads):
        return None
    parts = [g if g is not None else _zeros_like(b, r) for g, r in zip(grads, op.results)]
    return _as_type_of(b, b.nn.concat(parts, axis=axis), op.operands[0])


def _split_at(x, sizes, a):
    return np.split(x, np.cumsum(sizes)[:-1].astype(np.int64), axis=a)


def _split_like_cost(op, bind):
    x = op.operands[0].type
    return Cost(0, x.nbytes(bind), sum(r.type.nbytes(bind) for r in op.results))


# --- concat / split -----------------------------------------------------------------------------
@declare
class concat:
    """Join tensors along `axis` (negative counts from the end). All inputs have the same dtype
    and rank, and the same size in every other dim; the result's `axis` size is the sum of
    theirs. At least one input."""
    name = "nn.concat"
    operands = (Operand("xs", ANY, variadic=True),)
    attrs = (Attr("axis", "int", doc="the axis to join along"),)
    traits = {"pure"}
    cost = data_movement_cost
    examples = (Ex(["f32[2,3]", "f32[4,3]"], axis=0),
                Ex(["f32[2,1,3]", "f32[2,4,3]", "f32[2,2,3]"], axis=-2),
                Ex(["f32[3]", "f32[0]", "f32[2]"], axis=0), Ex(["f32[2,5]"], axis=1),
                Ex(["i32[2,2]", "i32[2,1]"], axis=1), Ex(["bool[1,2]", "bool[2,2]"], axis=0))

    def infer(xs, *, axis):
        if not xs:
            raise ShapeError("needs at least one input")
        d = same_dtype(*xs)
        names = [f"xs[{j}]" for j in range(len(xs))]
        _check_ranks(xs, names, xs[0].rank)
        a = norm_axis(axis, xs[0].rank)
        return TensorType([_sum_dims([x.shape[i] for x in xs]) if i == a
                           else _agree([x.shape[i] for x in xs], names, i)
                           for i in range(xs[0].rank)], d)

    def ref(xs, *, axis):
        return np.concatenate(xs, axis=norm_axis(axis, xs[0].ndim))

    def vjp(b, op, g):
        if g is None:
            return [None] * len(op.operands)
        return list(b.create("nn.split_like", [g, *op.operands], {"axis": op.attrs["axis"]}).results)


@declare
class split:
    """Cut `x` along `axis` into consecutive pieces of the given `sizes` (one result per size);
    the sizes must add up to the axis size."""
    name = "nn.split"
    operands = (Operand("x", ANY),)
    results = (Result("ys", variadic=True),)
    attrs = (Attr("axis", "int", 0), Attr("sizes", "ints", doc="size of each piece along axis"))
    traits = {"pure"}
    cost = data_movement_cost
    examples = (Ex("f32[5,3]", sizes=[2, 3]), Ex("f32[2,7]", axis=-1, sizes=[1, 0, 4, 2]),
                Ex("f32[4]", sizes=[4]), Ex("i64[3,2]", axis=1, sizes=[1, 1]))

    def infer(x, *, axis, sizes):
        a = norm_axis(axis, x.rank)
        if not sizes or min(sizes) < 0:
            raise ShapeError(f"sizes {list(sizes)} must be one or more sizes >= 0")
        d = x.shape[a]
        if type(d) is int and sum(sizes) != d:
            raise ShapeError(f"sizes {list(sizes)} add up to {sum(sizes)}, but axis {a} of {x} has {d}")
        return tuple(x.with_shape(x.shape[:a] + (s,) + x.shape[a + 1:]) for s in sizes)

    def ref(x, *, axis, sizes):
        a = norm_axis(axis, x.ndim)
        if sum(sizes) != x.shape[a]:
            raise ShapeError(f"sizes {list(sizes)} add up to {sum(sizes)}, but axis {a} of "
                             f"shape {list(x.shape)} has {x.shape[a]}")
        return tuple(_split_at(x, sizes, a))

    def vjp(b, op, *grads):
        return [_join_grads(b, op, grads, op.attrs["axis"])]


@declare
class split_like:
    """Cut `x` along `axis` into pieces shaped like `likes` (only their shapes are read): piece i
    has the shape of likes[i] and x's dtype. The likes' sizes along `axis` add up to x's and
    their other dims equal x's. The gradient of nn.concat, where sizes may be symbolic."""
    name = "nn.split_like"
    operands = (Operand("x", ANY), Operand("likes", ANY, variadic=True))
    results = (Result("ys", variadic=True),)
    attrs = (Attr("axis", "int", 0),)
    traits = {"pure"}
    cost = _split_like_cost
    examples = (Ex("f32[5,3]", ["f32[2,3]", "i32[3,3]"]),
                Ex("f32[2,6]", ["f32[2,1]", "f32[2,0]", "f32[2,5]"], axis=-1))

    def infer(x, likes, *, axis):
        if not likes:
            raise ShapeError("needs at least one like")
        names = ["x"] + [f"likes[{j}]" for j in range(len(likes))]
        _check_ranks(likes, names[1:], x.rank)
        a = norm_axis(axis, x.rank)
        for i in range(x.rank):
            if i != a:
                _agree([x.shape[i]] + [t.shape[i] for t in likes], names, i)
        total = _sum_dims([t.shape[a] for t in likes])
        if type(total) is int and type(x.shape[a]) is int and total != x.shape[a]:
            raise ShapeError(f"the likes' sizes along axis {a} add up to {total}, but x has {x.shape[a]}")
        return tuple(TensorType(t.shape, x.dtype) for t in likes)

    def ref(x, likes, *, axis):
        a = norm_axis(axis, x.ndim)
        ys = _split_at(x, [t.shape[a] for t in likes], a)
        if any(y.shape != t.shape for y, t in zip(ys, likes)):
            raise ShapeError(f"cannot split shape {list(x.shape)} along axis {a} into "
                             f"{[list(t.shape) for t in likes]}")
        return tuple(ys)

    def vjp(b, op, *grads):
        return [_join_grads(b, op, grads, op.attrs["axis"])] + [None] * (len(op.operands) - 1)


# --- slice --------------------------------------------------------------------------------------
SLICE_ATTRS = (Attr("starts", "ints"), Attr("ends", "ints"),
               Attr("axes", "ints", None, doc="absent: 0, 1, ... len(starts)-1"),
               Attr("steps", "ints", None, doc="absent: all 1"))


def _slice_spec(rank, starts, ends, axes, steps):
    """{axis: (start, end, step)} as given, after checking the attributes."""
    n = len(starts)
    axes = tuple(range(n)) if axes is None else axes
    steps = (1,) * n if steps is None else steps
    if not len(ends) == len(axes) == len(steps) == n:
        raise ShapeError(f"starts, ends, axes and steps have lengths {n}, {len(ends)}, {len(axes)}, "
                         f"{len(steps)}; they must be equal")
    if 0 in steps:
        raise ShapeError("slice steps cannot be 0")
    ax = [norm_axis(a, rank) for a in axes]
    if len(set(ax)) != n:
        raise ShapeError(f"repeated axis in {list(axes)}")
    return dict(zip(ax, zip(starts, ends, steps)))


def _slice_range(d, start, end, step):
    """ONNX Slice: negative start/end count from the end, then start is clamped to [0, d]
    ([0, d-1] for a negative step) and end to [0, d] ([-1, d-1]). Returns a Python range."""
    if d == 0:
        return range(0)
    start, end = start + d if start < 0 else start, end + d if end < 0 else end
    if step > 0:
        return range(min(max(start, 0), d), min(max(end, 0), d), step)
    return range(min(max(start, 0), d - 1), min(max(end, -1), d - 1), step)


def _whole(start, end, step):
    """Whether a slice keeps every element whatever the dim (so a symbolic dim survives)."""
    if step == 1:
        return start == 0 and end >= INT64_MAX
    return step == -1 and (start == -1 or start >= INT64_MAX) and end <= INT64_MIN


def _slice_shape(shape, spec):
    out = list(shape)
    for a, (s, e, st) in spec.items():
        d = shape[a]
        if type(d) is int:
            out[a] = len(_slice_range(d, s, e, st))
        elif not _whole(s, e, st):
            bound = _slice_bound(d.bound, s, e, st)
            out[a] = ANYDIM if bound is None else Sym(None, bound)
    return out


def _slice_bound(n, start, end, step):
    """The most elements the slice can take from an axis of any size up to n (None: unbounded
    n), from where start and end fall once negative ones count from the end."""
    if step > 0:
        span = {(False, False): end - start, (True, True): end - start, (True, False): -start,
                (False, True): None if n is None else n + end - start}[start < 0, end < 0]
    else:
        # both negative: a start before the axis clamps to 0 and an end to -1, one element
        span = {(False, False): start - end, (True, True): max(start - end, 1), (False, True): start + 1,
                (True, False): None if n is None else n + start - end}[start < 0, end < 0]
    cands = [c for c in (n, None if span is None else -(-max(span, 0) // abs(step))) if c is not None]
    return min(cands) if cands else None


def _slice_index(shape, spec):
    """The numpy index selecting the slice from an array of `shape`."""
    idx = [slice(None)] * len(shape)
    for a, (s, e, st) in spec.items():
        r = _slice_range(shape[a], s, e, st)
        idx[a] = slice(r.start, r.stop if r.stop >= 0 else None, r.step)
    return tuple(idx)


def _slice_attrs(op):
    return {k: op.attrs[k] for k in ("starts", "ends", "axes", "steps")}


@declare
class slice_:     # not `slice`, which would hide the builtin from the helpers above
    """ONNX Slice: along each axes[i], take elements starts[i], starts[i] + steps[i], ... up to
    but excluding ends[i]. Negative starts/ends count from the end of the axis; then a start is
    clamped to [0, dim] ([0, dim-1] for a negative step) and an end to [0, dim] ([-1, dim-1] for a
    negative step), so INT64_MAX / INT64_MIN mean "to the end" forward / backward. Steps may be
    negative, never 0. Axes absent: 0, 1, ...; steps absent: all 1. A slice of a symbolic dim has
    an unknown size with the bound the slice implies (`[?<=k]`: e.g. starts -1 takes at most one
    element, a bounded dim at most its bound), unless it provably keeps the whole axis (start 0,
    end INT64_MAX, step 1; or start -1 or INT64_MAX, end INT64_MIN, step -1)."""
    name = "nn.slice"
    operands = (Operand("x", ANY),)
    attrs = SLICE_ATTRS
    traits = {"pure"}
    examples = (Ex("f32[5,6]", starts=[1, 0], ends=[4, 6]),
                Ex("f32[4,7]", starts=[-1], ends=[INT64_MIN], axes=[1], steps=[-2]),
                Ex("f32[6,5]", starts=[0, INT64_MAX], ends=[INT64_MAX, -4], axes=[-2, 1], steps=[2, -1]),
                Ex("f32[5]", starts=[-100], ends=[100]),
                Ex("f32[6]", starts=[-10], ends=[INT64_MIN], steps=[-1]),
                Ex("f32[3,4,5]", starts=[3, 1], ends=[0, 100], axes=[2, 0], steps=[-3, 3]),
                Ex("i32[3,4]", starts=[2], ends=[1], axes=[0]))

    def infer(x, *, starts, ends, axes, steps):
        return x.with_shape(_slice_shape(x.shape, _slice_spec(x.rank, starts, ends, axes, steps)))

    def ref(x, *, starts, ends, axes, steps):
        return x[_slice_index(x.shape, _slice_spec(x.ndim, starts, ends, axes, steps))]

    def vjp(b, op, g):
        if g is None:
            return [None]
        return [b.nn.slice_grad(g, op.operands[0], **_slice_attrs(op))]

    def cost(op, bind):
        n = op.results[0].type.nbytes(bind)
        return Cost(0, n, n)


@declare
class slice_grad:
    """Zeros shaped like `like` (only its shape is read) with `g` written where nn.slice with the
    same attributes reads: y[slice] = g. The gradient of nn.slice; `g` has the slice's shape."""
    name = "nn.slice_grad"
    operands = (Operand("g", NUMERIC), Operand("like", ANY))
    attrs = SLICE_ATTRS
    traits = {"pure"}
    examples = (Ex("f32[3,6]", "f32[5,6]", starts=[1], ends=[4], axes=[0]),
                Ex("f32[4,2]", "f32[4,7]", starts=[-1], ends=[INT64_MIN], axes=[1], steps=[-4]),
                Ex("i32[2]", "bool[5]", starts=[0], ends=[INT64_MAX], steps=[3]))

    def infer(g, like, *, starts, ends, axes, steps):
        spec = _slice_spec(like.rank, starts, ends, axes, steps)
        _check_shape(g, _slice_shape(like.shape, spec), "g")
        return TensorType(like.shape, g.dtype)

    def ref(g, like, *, starts, ends, axes, steps):
        idx = _slice_index(like.shape, _slice_spec(like.ndim, starts, ends, axes, steps))
        y = np.zeros(like.shape, g.dtype)
        if y[idx].shape != g.shape:
            raise ShapeError(f"g has shape {list(g.shape)}, the slice has {list(y[idx].shape)}")
        y[idx] = g
        return y

    def vjp(b, op, dy):
        if dy is None:
            return [None, None]
        g = op.operands[0]
        return [_as_type_of(b, b.nn.slice(dy, **_slice_attrs(op)), g), None]

    def cost(op, bind):
        return Cost(0, op.operands[0].type.nbytes(bind), op.results[0].type.nbytes(bind))


# --- gather / scatter_add -----------------------------------------------------------------------
def _check_indices(idx, n, axis):
    bad = (idx < -n) | (idx >= n)
    if bad.any():
        raise CkirError(f"index {int(idx[bad][0])} is out of range for axis {axis} of size {n}")


def _gathered(x, idx, a):
    return x.shape[:a] + idx.shape + x.shape[a + 1:]


@declare
class gather:
    """np.take / ONNX Gather: y = x indexed along `axis` by every element of `indices` (i32 or
    i64; negative counts from the end). The result's shape is x.shape[:axis] + indices.shape +
    x.shape[axis+1:]. An index outside [-size, size) is an error naming it, never a read out of
    bounds."""
    name = "nn.gather"
    operands = (Operand("x", ANY), Operand("indices", INDEX))
    attrs = (Attr("axis", "int", 0),)
    traits = {"pure"}
    examples = (Ex("f32[5,3]", np.array([0, -1, 2, 2], np.int64)),
                Ex("f32[2,4,3]", np.array([[3, 0], [-4, 1]], np.int32), axis=1),
                Ex("f32[4,3]", np.array(2, np.int64), axis=-1),
                Ex("i64[6]", np.array([5, 0], np.int32)), Ex("bool[3,2]", np.array([-3], np.int64)))

    def infer(x, indices, *, axis):
        a = norm_axis(axis, x.rank)
        return x.with_shape(_gathered(x, indices, a))

    def ref(x, indices, *, axis):
        a = norm_axis(axis, x.ndim)
        _check_indices(indices, x.shape[a], a)
        return np.take(x, indices, axis=a)

    def vjp(b, op, g):
        if g is None:
            return [None, None]
        x, idx = op.operands
        return [b.nn.scatter_add(_zeros_like(b, x), idx, g, axis=op.attrs["axis"]), None]

    def cost(op, bind):
        y = op.results[0].type.nbytes(bind)
        return Cost(0, op.operands[1].type.nbytes(bind) + y, y)


@declare
class scatter_add:
    """y = x, then y[..., indices[j], ...] += updates[..., j, ...] along `axis` for every index
    j (np.add.at: repeated indices accumulate). `updates` has shape x.shape[:axis] +
    indices.shape + x.shape[axis+1:]; indices as in nn.gather (negative counts from the end, out
    of range is an error). f16/bf16 accumulate in f32. The gradient of nn.gather."""
    name = "nn.scatter_add"
    operands = (Operand("x", NUMERIC), Operand("indices", INDEX), Operand("updates", NUMERIC))
    attrs = (Attr("axis", "int", 0),)
    traits = {"pure", "inplace"}
    examples = (Ex("f32[5,3]", np.array([0, 4, 0, -1], np.int64), "f32[4,3]"),
                Ex("f32[2,4]", np.array([[1, 1], [3, -4]], np.int32), "f32[2,2,2]", axis=-1),
                Ex("i32[4]", np.array(2, np.int64), "i32[]"),
                Ex("f16[3,2]", np.array([2, 2, 1], np.int32), "f16[3,2]"))

    def infer(x, indices, updates, *, axis):
        same_dtype(x, updates)
        a = norm_axis(axis, x.rank)
        _check_shape(updates, _gathered(x, indices, a), "updates")
        return x

    def ref(x, indices, updates, *, axis):
        a = norm_axis(axis, x.ndim)
        _check_indices(indices, x.shape[a], a)
        if updates.shape != _gathered(x, indices, a):
            raise ShapeError(f"updates have shape {list(updates.shape)}, want "
                             f"{list(_gathered(x, indices, a))}")
        y = wide(x).copy()
        np.add.at(y, (np.s_[:],) * a + (indices,), wide(updates))
        return y.astype(x.dtype, copy=False)

    def vjp(b, op, g):
        if g is None:
            return [None, None, None]
        return [g, None, b.nn.gather(g, op.operands[1], axis=op.attrs["axis"])]

    def cost(op, bind):
        x, idx, u = (v.type for v in op.operands)
        return Cost(numel(u, bind), x.nbytes(bind) + idx.nbytes(bind) + u.nbytes(bind), x.nbytes(bind))


# --- pad ------------------------------------------------------------------------------------------
PAD_ATTRS = (Attr("pads", "ints", doc="begin pads of every axis, then end pads; negative crops"),
             Attr("mode", "str", "constant", choices=("constant", "reflect", "edge")))


def _pad_pairs(rank, pads):
    if len(pads) != 2 * rank:
        raise ShapeError(f"pads has {len(pads)} entries; a rank-{rank} tensor needs {2 * rank}")
    return list(zip(pads[:rank], pads[rank:]))


def _pad_dim(d, lo, hi, mode, i):
    """The padded size of axis i (size d), checking what a static size allows."""
    if type(d) is not int:
        return d if lo + hi == 0 else ANYDIM
    kept = d + min(lo, 0) + min(hi, 0)
    if kept < 0:
        raise ShapeError(f"pads ({lo}, {hi}) crop more than the {d} elements of axis {i}")
    if kept == 0 and mode != "constant" and max(lo, hi) > 0:
        raise ShapeError(f"{mode} padding of axis {i} needs elements, it has none after cropping")
    return kept + max(lo, 0) + max(hi, 0)


def _pad_source(n, lo, hi, mode):
    """For each position along a padded axis of source size n, the source index it copies
    (-1 for the constant)."""
    kept = np.arange(n)[max(-lo, 0):n - max(-hi, 0)]
    width = (max(lo, 0), max(hi, 0))
    if mode == "constant":
        return np.pad(kept, width, constant_values=-1)
    return np.pad(kept, width, mode=mode)


@declare
class pad:
    """ONNX Pad. `pads` holds the begin pad of every axis, then the end pad of every axis; a
    negative pad removes that many elements first (as ONNX Runtime does), then the positive pads
    are added by `mode`: "constant" fills with `value` (converted to x's dtype), "reflect"
    mirrors the elements next to the edge without repeating the edge (numpy 'reflect', repeating
    the reflection when the pad is longer than the axis), "edge" repeats the edge element.
    reflect and edge need at least one element left on a padded axis. A padded symbolic dim
    becomes `?` unless its pads add up to 0."""
    name = "nn.pad"
    operands = (Operand("x", ANY),)
    attrs = PAD_ATTRS + (Attr("value", "float", 0.0, doc="the fill of constant mode"),)
    traits = {"pure"}
    cost = data_movement_cost
    examples = (Ex("f32[2,3]", pads=[1, 0, 2, 3]),
                Ex("f32[3,4]", pads=[0, 2, 1, 3], mode="reflect"),
                Ex("f32[2,5]", pads=[1, 2, 2, 4], mode="edge"),
                Ex("f32[4,5]", pads=[-1, 2, 1, -2], mode="reflect"),
                Ex("f32[3]", pads=[5, 4], mode="reflect"),
                Ex("f32[4,3]", pads=[-1, 0, -2, 1], value=-1.5),
                Ex("f32[3,2]", pads=[-1, -1, 2, 0], mode="edge"),
                Ex("i32[2,2]", pads=[1, 1, 0, 0], value=7.0))

    def infer(x, *, pads, mode, value):
        return x.with_shape([_pad_dim(d, lo, hi, mode, i)
                             for i, (d, (lo, hi)) in enumerate(zip(x.shape, _pad_pairs(x.rank, pads)))])

    def ref(x, *, pads, mode, value):
        pairs = _pad_pairs(x.ndim, pads)
        for i, (d, (lo, hi)) in enumerate(zip(x.shape, pairs)):
            _pad_dim(d, lo, hi, mode, i)
        x = x[tuple(np.s_[max(-lo, 0):d - max(-hi, 0)] for d, (lo, hi) in zip(x.shape, pairs))]
        width = [(max(lo, 0), max(hi, 0)) for lo, hi in pairs]
        if mode == "constant":
            return np.pad(x, width, constant_values=np.asarray(value).astype(x.dtype))
        return np.pad(x, width, mode=mode)

    def vjp(b, op, g):
        if g is None:
            return [None]
        return [b.nn.pad_grad(g, op.operands[0], pads=op.attrs["pads"], mode=op.attrs["mode"])]


@declare
class pad_grad:
    """The gradient of nn.pad: a tensor shaped like `like` (only its shape is read; it is pad's
    input) where each element is the sum of the elements of `g` (shaped like pad's result) that
    nn.pad with the same `pads` and `mode` copied from it; cropped elements get 0. f16/bf16
    accumulate in f32."""
    name = "nn.pad_grad"
    operands = (Operand("g", NUMERIC), Operand("like", ANY))
    attrs = PAD_ATTRS
    traits = {"pure"}
    examples = (Ex("f32[5,7]", "f32[3,4]", pads=[0, 2, 2, 1], mode="reflect"),
                Ex("f32[5,4]", "f32[2,5]", pads=[1, 2, 2, -3], mode="edge"),
                Ex("f32[12]", "f32[3]", pads=[5, 4], mode="reflect"),
                Ex("f32[4,2]", "i64[3,3]", pads=[-1, 0, 2, -1]))

    def infer(g, like, *, pads, mode):
        want = [_pad_dim(d, lo, hi, mode, i)
                for i, (d, (lo, hi)) in enumerate(zip(like.shape, _pad_pairs(like.rank, pads)))]
        _check_shape(g, want, "g")
        return TensorType(like.shape, g.dtype)

    def ref(g, like, *, pads, mode):
        if g.ndim != like.ndim:
            raise ShapeError(f"g has rank {g.ndim}, like has {like.ndim}")
        y = wide(g)
        for i, (n, (lo, hi)) in enumerate(zip(like.shape, _pad_pairs(like.ndim, pads))):
            _pad_dim(n, lo, hi, mode, i)
            src = _pad_source(n, lo, hi, mode)
            if y.shape[i] != len(src):
                raise ShapeError(f"g has size {y.shape[i]} in dim {i}, the padded axis has {len(src)}")
            part = np.moveaxis(y, i, 0)
            acc = np.zeros((n,) + part.shape[1:], y.dtype)
            np.add.at(acc, src[src >= 0], part[src >= 0])
            y = np.moveaxis(acc, 0, i)
        return np.array(y.astype(g.dtype, copy=False), order="C")

    def vjp(b, op, dy):
        if dy is None:
            return [None, None]
        padded = b.nn.pad(dy, pads=op.attrs["pads"], mode=op.attrs["mode"])
        return [_as_type_of(b, padded, op.operands[0]), None]

    def cost(op, bind):
        g = op.operands[0].type
        return Cost(numel(g, bind), g.nbytes(bind), op.results[0].type.nbytes(bind))


# --- tile ---------------------------------------------------------------------------------------
def _tile_shape(shape, repeats):
    if len(repeats) != len(shape):
        raise ShapeError(f"repeats {list(repeats)} must have one entry per dim of {fmt_shape(shape)}")
    if repeats and min(repeats) < 0:
        raise ShapeError(f"repeats {list(repeats)} must be >= 0")
    return [d * r if type(d) is int else d if r == 1 else 0 if r == 0 else ANYDIM
            for d, r in zip(shape, repeats)]


@declare
class tile:
    """np.tile / ONNX Tile: repeat x `repeats[i]` times along each dim i (one entry per dim,
    each >= 0); result dim i is dim i times repeats[i]."""
    name = "nn.tile"
    operands = (Operand("x", ANY),)
    attrs = (Attr("repeats", "ints"),)
    traits = {"pure"}
    cost = data_movement_cost
    examples = (Ex("f32[2,3]", repeats=[2, 3]), Ex("f32[3,1,2]", repeats=[1, 4, 0]),
                Ex("i32[4]", repeats=[3]), Ex("f32[]", repeats=[]))

    def infer(x, *, repeats):
        return x.with_shape(_tile_shape(x.shape, repeats))

    def ref(x, *, repeats):
        _tile_shape(x.shape, repeats)
        return np.asarray(np.tile(x, repeats), x.dtype)

    def vjp(b, op, g):
        if g is None:
            return [None]
        return [b.nn.tile_grad(g, op.operands[0], repeats=op.attrs["repeats"])]


@declare
class tile_grad:
    """The gradient of nn.tile: `g` (shaped like the tiled result) summed over the repeats,
    giving a tensor shaped like `like` (only its shape is read; it is tile's input). f16/bf16
    accumulate in f32."""
    name = "nn.tile_grad"
    operands = (Operand("g", NUMERIC), Operand("like", ANY))
    attrs = (Attr("repeats", "ints"),)
    traits = {"pure"}
    examples = (Ex("f32[4,9]", "f32[2,3]", repeats=[2, 3]),
                Ex("f32[3,0,2]", "f32[3,1,2]", repeats=[1, 0, 1]), Ex("i32[6]", "i32[2]", repeats=[3]))

    def infer(g, like, *, repeats):
        _check_shape(g, _tile_shape(like.shape, repeats), "g")
        return TensorType(like.shape, g.dtype)

    def ref(g, like, *, repeats):
        if list(g.shape) != _tile_shape(like.shape, repeats):
            raise ShapeError(f"g has shape {list(g.shape)}, want {_tile_shape(like.shape, repeats)}")
        dims = [v for r, d in zip(repeats, like.shape) for v in (r, d)]
        y = wide(g).reshape(dims).sum(axis=tuple(range(0, len(dims), 2)))
        return np.asarray(y, g.dtype)

    def vjp(b, op, dy):
        if dy is None:
            return [None, None]
        g = op.operands[0]
        return [_as_type_of(b, b.nn.tile(dy, repeats=op.attrs["repeats"]), g), None]

    def cost(op, bind):
        g = op.operands[0].type
        return Cost(numel(g, bind), g.nbytes(bind), op.results[0].type.nbytes(bind))


# --- arange -------------------------------------------------------------------------------------
def _arange_len(start, limit, delta, dtype):
    if delta == 0:
        raise ShapeError("delta cannot be 0")
    if not (dtype.is_float or dtype.is_int):
        raise ShapeError(f"dtype must be a float or int type, got {dtype}")
    if dtype.is_int and not all(float(v).is_integer() for v in (start, limit, delta)):
        raise ShapeError(f"{dtype} range needs whole start, limit and delta, got {start}, {limit}, {delta}")
    return max(math.ceil((limit - start) / delta), 0)


@declare
class arange:
    """ONNX Range: the 1-D tensor start, start + delta, ... with ceil((limit - start) / delta)
    elements (none if that is <= 0); delta may be negative, not 0. Values are computed as
    start + i * delta in f64 and rounded to `dtype` (int dtypes need whole start, limit, delta)."""
    name = "nn.arange"
    attrs = (Attr("start", "float"), Attr("limit", "float"), Attr("delta", "float", 1.0),
             Attr("dtype", "dtype"))
    traits = {"pure"}
    vjp = not_differentiable("no operands: its values come from attributes")
    examples = (Ex(start=0, limit=5, dtype="i64"), Ex(start=1.0, limit=2.0, delta=0.3, dtype="f32"),
                Ex(start=5, limit=-4, delta=-2, dtype="i32"), Ex(start=3, limit=1, dtype="f32"),
                Ex(start=-1.5, limit=1.0, delta=0.5, dtype="f16"))

    def infer(*, start, limit, delta, dtype):
        return TensorType((_arange_len(start, limit, delta, dtype),), dtype)

    def ref(*, start, limit, delta, dtype):
        n = _arange_len(start, limit, delta, dtype)
        if dtype.is_int:
            return (int(start) + np.arange(n, dtype=np.int64) * int(delta)).astype(dtype.np)
        return (start + np.arange(n, dtype=np.float64) * delta).astype(dtype.np)

    def cost(op, bind):
        t = op.results[0].type
        return Cost(numel(t, bind), 0, t.nbytes(bind))


@declare
class update_slice:
    """`dst` with `src` written at `start` along `axis`: dst[..., start:start+n, ...] = src where n
    is src's size on that axis (the other dims match). `start` is an i32/i64 scalar read at run
    time; a slice that does not fit inside dst is an error, never an out-of-bounds write. The KV
    cache update: new keys written at the current position."""
    name = "nn.update_slice"
    operands = (Operand("dst", ANY), Operand("src", ANY), Operand("start", INDEX))
    attrs = (Attr("axis", "int", doc="the axis the slice runs along"),)
    traits = {"pure", "inplace"}
    examples = (Ex("f32[6,4]", "f32[2,4]", np.array(3, np.int64), axis=0),
                Ex("f32[2,8,3]", "f32[2,1,3]", np.array(7, np.int32), axis=-2),
                Ex("i64[5]", "i64[5]", np.array(0, np.int64), axis=0))

    def infer(dst, src, start, *, axis):
        same_dtype(dst, src)
        if start.rank != 0:
            raise ShapeError(f"start must be a scalar, got {start}")
        if dst.rank != src.rank:
            raise ShapeError(f"dst is {dst} but src is {src}: ranks differ")
        a = norm_axis(axis, dst.rank)
        for i, (d, s) in enumerate(zip(dst.shape, src.shape)):
            if i == a:
                if type(d) is int and type(s) is int and s > d:
                    raise ShapeError(f"src has {s} entries on axis {a}, dst only {d}")
            elif type(d) is int and type(s) is int and d != s:
                raise ShapeError(f"dst is {dst} but src is {src}: dim {i} differs")
        return dst

    def ref(dst, src, start, *, axis):
        a = norm_axis(axis, dst.ndim)
        s, n = int(start), src.shape[a]
        if s < 0 or s + n > dst.shape[a]:
            raise CkirError(f"slice [{s}, {s + n}) does not fit axis {a} of size {dst.shape[a]}")
        out = np.array(dst)
        idx = [slice(None)] * dst.ndim
        idx[a] = slice(s, s + n)
        out[tuple(idx)] = src
        return out

    def vjp(b, op, g):
        if g is None:
            return [None, None, None]
        dst, src, start = op.operands
        a = norm_axis(op.attrs["axis"], dst.type.rank)
        zeros = b.nn.broadcast_like(b.constant(0, src.type.dtype.np), src)
        gd = b.nn.update_slice(g, zeros, start, axis=a)
        s1 = b.nn.reshape(b.nn.cast(start, to=dt.i64), shape=[1])
        e1 = b.nn.add(s1, b.nn.reshape(b.nn.size(src, axes=[a]), shape=[1]))
        gs = b.nn.reshape_like(b.nn.slice_dyn(g, s1, e1, axes=[a]), src)
        return [gd, gs, None]

    def cost(op, bind):
        src = op.operands[1].type
        return Cost(0, src.nbytes(bind), src.nbytes(bind))
