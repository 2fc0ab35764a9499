"""Dynamic-shape ops: the shape-moving ops with their shape, sizes, axes or counts read at run
time from integer tensors (ONNX passes these as tensors; a frontend uses the static op when the
value is known while importing and one of these otherwise).

Each means exactly the static op with the operand's values as attributes, and each declares a
canonicalize pattern that rewrites it to the static op once that operand is an nn.constant. Dims
that depend on the run-time values are `?`.

Gradients of ops that only move elements (slice, pad, tile) scatter the cotangent back to where
its elements came from: the op is applied to the element positions 1..n of x (0 for a fill) and
nn.scatter_add sums the cotangent into those positions, so the rule stays exact with run-time
shapes.
"""
from __future__ import annotations

import math

import numpy as np

from ckir import dtypes as dt
from ckir.errors import ShapeError
from ckir.opdef import (
    ANY,
    FLOAT,
    NUMERIC,
    Attr,
    Cost,
    Ex,
    Operand,
    Result,
    declare,
    get_op,
    not_differentiable,
)
from ckir.rewrite import Rule
from ckir.types import ANY as ANYDIM
from ckir.types import Sym, TensorType

from ._util import (
    data_movement_cost,
    norm_axes,
    norm_axis,
    numel,
    unbroadcast,
    view_cost,
)
from .image import RESIZE_ATTRS
from .index import TOPK_ATTRS, TOPK_DOC, topk_infer, topk_ref, topk_vjp

INDEX = (dt.i32, dt.i64)
INT64_MAX = 2**63 - 1


def _static(name, arrays, **attrs):
    """The static op's reference semantics (the meaning a dynamic op shares)."""
    od = get_op(name)
    return od.ref(arrays, od.make_attrs(attrs))


def _length(t: TensorType, what: str) -> int:
    """The static length of a 1-D operand whose length decides the result's rank or arity."""
    if t.rank != 1:
        raise ShapeError(f"{what} must be 1-D, got {t}")
    n = t.shape[0]
    if type(n) is not int:
        raise ShapeError(f"{what} must have a static length, got {t}")
    return n


def _ints(a, what: str) -> list[int]:
    a = np.asarray(a)
    if a.ndim > 1:
        raise ShapeError(f"{what} must be 1-D, got shape {list(a.shape)}")
    return [int(v) for v in a.reshape(-1)]


def _scalar(a, what: str):
    a = np.asarray(a)
    if a.size != 1 or a.ndim > 1:
        raise ShapeError(f"{what} must hold one element, got shape {list(a.shape)}")
    return a.reshape(())[()]


def _rule(op_name, fn, data=1):
    """A canonicalize rule: `fn(b, op, *operands)` for `op_name`, where the operands after the
    first `data` (the shape-like ones) are given as arrays when they are nn.constant. A
    ShapeError (the values do not fit) leaves the op for run time, where the error names them."""
    def apply(op, b):
        args = list(op.operands[:data])
        for v in op.operands[data:]:
            d = v.op
            args.append(d.attrs["value"].array if d is not None and d.opdef.name == "nn.constant" else v)
        try:
            return fn(b, op, *args)
        except ShapeError:
            return None
    return Rule(op_name, apply, f"{op_name} with constant operands")


def _const(x) -> bool:
    return isinstance(x, np.ndarray)


def _moved_positions_vjp(b, op, g, select):
    """The gradient of y = select(x) for an op that only copies elements of x (or fills):
    select applied to positions 1..n of x (fills give 0), then g scatter-added into them."""
    if g is None:
        return None
    x = op.operands[0]
    n = b.nn.size(x)
    one = b.constant(np.int64(1))
    pos = b.nn.reshape_like(b.nn.arange_dyn(one, b.nn.add(n, one), one), x)
    idx = b.nn.reshape(select(pos), shape=[-1])
    slots = b.nn.reshape(b.nn.add(n, one), shape=[1])
    acc = b.nn.expand_dyn(b.constant(0, g.type.dtype.np), slots)
    acc = b.nn.scatter_add(acc, idx, b.nn.reshape(g, shape=[-1]))
    return b.nn.reshape_like(b.nn.slice(acc, starts=[1], ends=[INT64_MAX]), x)


# --- reshape ------------------------------------------------------------------------------------
def reshape_target(xshape, shape, allowzero: bool) -> list[int]:
    """ONNX Reshape's result shape for an input of concrete shape `xshape`."""
    s = list(shape)
    if allowzero and 0 in s and -1 in s:
        raise ShapeError(f"shape {s} has both 0 and -1, which allowzero forbids")
    if any(v < -1 for v in s):
        raise ShapeError(f"shape {s} has an entry below -1")
    if not allowzero:
        for i, v in enumerate(s):
            if v == 0:
                if i >= len(xshape):
                    raise ShapeError(f"shape {list(shape)}: 0 at position {i} copies a dim "
                                     f"the input {list(xshape)} does not have")
                s[i] = xshape[i]
    if s.count(-1) > 1:
        raise ShapeError(f"shape {list(shape)} has more than one -1")
    total = math.prod(xshape)
    known = math.prod(v for v in s if v != -1)
    if -1 in s:
        if known == 0 or total % known:
            raise ShapeError(f"cannot reshape {list(xshape)} to {list(shape)}")
        s[s.index(-1)] = total // known
    elif known != total:
        raise ShapeError(f"cannot reshape {list(xshape)} ({total} elements) to {list(shape)}")
    return s


def static_reshape_shape(x: TensorType, shape, allowzero: bool):
    """The `shape` attribute of an nn.reshape equal to ONNX Reshape(x, shape) (entries are ints or
    named symbolic dims), or None when x's anonymous dims make it inexpressible (a 0 copying a
    `?` dim, besides a -1)."""
    out = []
    for i, v in enumerate(shape):
        v = v if type(v) is Sym else int(v)
        if v == 0 and not allowzero:
            if i >= x.rank:
                raise ShapeError(f"shape {list(shape)}: 0 at position {i} copies a dim {x} does not have")
            v = x.shape[i]
        out.append(v)
    if allowzero and 0 in out and -1 in out:
        raise ShapeError(f"shape {list(shape)} has both 0 and -1, which allowzero forbids")
    anon = [i for i, d in enumerate(out) if type(d) is Sym and d.name is None]
    if anon:
        if len(anon) > 1 or -1 in out:
            return None
        out[anon[0]] = -1
    return out


@declare
class reshape_dyn:
    """ONNX Reshape with the target shape read at run time from the 1-D integer tensor `shape`:
    an entry 0 copies x's size in the same dim (unless `allowzero`, where 0 is a size and may not
    appear with -1), at most one -1 is inferred from the element count. The result's rank is the
    (static) length of `shape`; its dims are `?` (a rank-1 result of a static x is x's element
    count). canonicalize rewrites it to nn.reshape when `shape` is a constant."""
    name = "nn.reshape_dyn"
    operands = (Operand("x", ANY), Operand("shape", INDEX))
    attrs = (Attr("allowzero", "bool", False, doc="0 means a size of 0, not 'copy the input dim'"),)
    traits = {"pure", "view"}
    cost = view_cost
    examples = (Ex("f32[2,3,4]", np.array([4, 0, -1], np.int64)),
                Ex("f32[6]", np.array([3, 2], np.int32)),
                Ex("f32[0,3]", np.array([3, 0], np.int64), allowzero=True),
                Ex("i64[2,3]", np.array([-1], np.int64)))

    def infer(x, shape, *, allowzero):
        n = _length(shape, "shape")
        if n == 1 and x.is_static:
            return x.with_shape([x.numel])
        return x.with_shape([ANYDIM] * n)

    def ref(x, shape, *, allowzero):
        return x.reshape(reshape_target(x.shape, _ints(shape, "shape"), allowzero))

    def vjp(b, op, g):
        if g is None:
            return [None, None]
        return [b.nn.reshape_like(g, op.operands[0]), None]

    def _canon(b, op, x, shape):
        if not _const(shape):
            return None
        s = static_reshape_shape(x.type, shape.reshape(-1), op.attrs["allowzero"])
        return None if s is None else b.nn.reshape(x, shape=s)

    patterns = (_rule("nn.reshape_dyn", _canon),)


# --- expand -------------------------------------------------------------------------------------
@declare
class expand_dyn:
    """ONNX Expand with the shape read at run time: x broadcast to x's shape and `shape` (1-D
    integers) broadcast together (numpy rules). The result's rank is the larger of x's rank and
    the length of `shape`; a dim is x's where x has a static size other than 1 (broadcasting
    cannot change it), `?` elsewhere. With a scalar x this is ONNX ConstantOfShape.
    canonicalize rewrites it to nn.expand when `shape` is a constant."""
    name = "nn.expand_dyn"
    operands = (Operand("x", ANY), Operand("shape", INDEX))
    traits = {"pure", "broadcasting"}
    cost = data_movement_cost
    examples = (Ex("f32[3,1]", np.array([2, 1, 4], np.int64)), Ex("f32[]", np.array([2, 3], np.int64)),
                Ex("i32[2,3]", np.array([3], np.int32)), Ex("f32[1]", np.array([0], np.int64)))

    def infer(x, shape):
        n = _length(shape, "shape")
        rank = max(x.rank, n)
        lead = rank - x.rank
        return x.with_shape([ANYDIM if i < lead or x.shape[i - lead] == 1 or type(x.shape[i - lead]) is not int
                             else x.shape[i - lead] for i in range(rank)])

    def ref(x, shape):
        s = _ints(shape, "shape")
        try:
            out = np.broadcast_shapes(x.shape, tuple(s))
        except ValueError:
            raise ShapeError(f"cannot expand shape {list(x.shape)} to {s}") from None
        return np.array(np.broadcast_to(x, out), order="C")

    def vjp(b, op, g):
        if g is None:
            return [None, None]
        return [unbroadcast(b, g, op.operands[0]), None]

    def _canon(b, op, x, shape):
        return b.nn.expand(x, shape=[int(v) for v in shape.reshape(-1)]) if _const(shape) else None

    patterns = (_rule("nn.expand_dyn", _canon),)


# --- squeeze / unsqueeze ------------------------------------------------------------------------
@declare
class squeeze_dyn:
    """ONNX Squeeze with the axes read at run time from the 1-D integer tensor `axes` (negative
    counts from the end; each axis must have size 1). The result has rank - len(axes) dims; they
    are known when x has exactly len(axes) dims that can be 1 (static 1 or symbolic), else `?`.
    canonicalize rewrites it to nn.squeeze when `axes` is a constant."""
    name = "nn.squeeze_dyn"
    operands = (Operand("x", ANY), Operand("axes", INDEX))
    traits = {"pure", "view"}
    cost = view_cost
    examples = (Ex("f32[1,3,1,5]", np.array([-2, 0], np.int64)), Ex("f32[2,1]", np.array([1], np.int32)),
                Ex("f32[1,1]", np.array([0], np.int64)))

    def infer(x, axes):
        n = _length(axes, "axes")
        can = [i for i, d in enumerate(x.shape) if d == 1 or type(d) is Sym]
        if len(can) < n:
            raise ShapeError(f"cannot squeeze {n} axes of {x}: only {len(can)} can have size 1")
        if len(can) == n:
            return x.with_shape([d for i, d in enumerate(x.shape) if i not in can])
        return x.with_shape([ANYDIM] * (x.rank - n))

    def ref(x, axes):
        return _static("nn.squeeze", [x], axes=_ints(axes, "axes"))[0]

    def vjp(b, op, g):
        if g is None:
            return [None, None]
        return [b.nn.reshape_like(g, op.operands[0]), None]

    def _canon(b, op, x, axes):
        return b.nn.squeeze(x, axes=_ints(axes, "axes")) if _const(axes) else None

    patterns = (_rule("nn.squeeze_dyn", _canon),)


@declare
class unsqueeze_dyn:
    """ONNX Unsqueeze with the axes read at run time from the 1-D integer tensor `axes` (they
    index the result, negative counts from its end, no repeats). The result has rank + len(axes)
    dims, `?` unless every dim of x is 1. canonicalize rewrites it to nn.unsqueeze when `axes` is
    a constant."""
    name = "nn.unsqueeze_dyn"
    operands = (Operand("x", ANY), Operand("axes", INDEX))
    traits = {"pure", "view"}
    cost = view_cost
    examples = (Ex("f32[3,4]", np.array([0, -1], np.int64)), Ex("f32[]", np.array([0], np.int32)),
                Ex("i64[2,3]", np.array([1], np.int64)))

    def infer(x, axes):
        rank = x.rank + _length(axes, "axes")
        if all(d == 1 for d in x.shape):
            return x.with_shape([1] * rank)
        return x.with_shape([ANYDIM] * rank)

    def ref(x, axes):
        return _static("nn.unsqueeze", [x], axes=_ints(axes, "axes"))[0]

    def vjp(b, op, g):
        if g is None:
            return [None, None]
        return [b.nn.reshape_like(g, op.operands[0]), None]

    def _canon(b, op, x, axes):
        return b.nn.unsqueeze(x, axes=_ints(axes, "axes")) if _const(axes) else None

    patterns = (_rule("nn.unsqueeze_dyn", _canon),)


# --- slice --------------------------------------------------------------------------------------
def _at_most(d):
    """An unknown size no larger than d: `[?<=d]` (what a memory plan needs), or `?`."""
    bound = d if type(d) is int else d.bound
    return ANYDIM if bound is None else Sym(None, bound)


@declare
class slice_dyn:
    """nn.slice (ONNX Slice) with starts, ends and steps (absent: all 1) read at run time from
    1-D integer tensors with one entry per axis in `axes`; `axes` itself is static. Sliced dims
    are unknown sizes bounded by the input's (`[?<=n]`), the others keep their size. canonicalize rewrites it to nn.slice when starts, ends
    and steps are constants."""
    name = "nn.slice_dyn"
    operands = (Operand("x", ANY), Operand("starts", INDEX), Operand("ends", INDEX),
                Operand("steps", INDEX, optional=True))
    attrs = (Attr("axes", "ints", doc="the sliced axes, one per entry of starts (negative counts "
                                      "from the end)"),)
    traits = {"pure"}
    examples = (Ex("f32[5,6]", np.array([1, -2], np.int64), np.array([4, 100], np.int64), axes=[0, 1]),
                Ex("f32[4,7]", np.array([-1], np.int64), np.array([-2**63], np.int64),
                   np.array([-2], np.int64), axes=[-1]),
                Ex("i32[6,3]", np.array([0], np.int32), np.array([6], np.int32), np.array([3], np.int32),
                   axes=[0]))

    def infer(x, starts, ends, steps, *, axes):
        ax = norm_axes(axes, x.rank)
        for t, what in ((starts, "starts"), (ends, "ends"), (steps, "steps")):
            if t is not None and _length(t, what) != len(ax):
                raise ShapeError(f"{what} is {t}; it needs one entry per axis in {list(axes)}")
        return x.with_shape([_at_most(d) if i in ax and d != 0 else d for i, d in enumerate(x.shape)])

    def ref(x, starts, ends, steps, *, axes):
        st = None if steps is None else _ints(steps, "steps")
        return _static("nn.slice", [x], starts=_ints(starts, "starts"), ends=_ints(ends, "ends"),
                       axes=list(axes), steps=st)[0]

    def vjp(b, op, g):
        rest = op.operands[1:]
        return [_moved_positions_vjp(b, op, g, lambda p: b.nn.slice_dyn(p, *rest, axes=op.attrs["axes"]))] \
            + [None] * len(rest)

    def cost(op, bind):
        n = op.results[0].type.nbytes(bind)
        return Cost(0, n, n)

    def _canon(b, op, x, starts, ends, steps=None):
        if not (_const(starts) and _const(ends) and (steps is None or _const(steps))):
            return None
        return b.nn.slice(x, starts=_ints(starts, "starts"), ends=_ints(ends, "ends"), axes=list(op.attrs["axes"]),
                          steps=None if steps is None else _ints(steps, "steps"))

    patterns = (_rule("nn.slice_dyn", _canon),)


# --- pad ----------------------------------------------------------------------------------------
def pad_pairs(rank, pads, axes):
    """(begin, end) per dim of a rank-`rank` tensor from ONNX pads over `axes` (None: all)."""
    ax = list(range(rank)) if axes is None else [norm_axis(a, rank) for a in axes]
    if len(set(ax)) != len(ax):
        raise ShapeError(f"repeated axis in {list(axes)}")
    if len(pads) != 2 * len(ax):
        raise ShapeError(f"pads has {len(pads)} entries; {len(ax)} axes need {2 * len(ax)}")
    pairs = [(0, 0)] * rank
    for i, a in enumerate(ax):
        pairs[a] = (int(pads[i]), int(pads[len(ax) + i]))
    return pairs


def pad_array(x, pairs, mode, value):
    """ONNX Pad on an array: negative pads crop first, then mode pads (numpy's modes)."""
    for i, (d, (lo, hi)) in enumerate(zip(x.shape, pairs)):
        kept = d + min(lo, 0) + min(hi, 0)
        if kept < 0:
            raise ShapeError(f"pads ({lo}, {hi}) crop more than the {d} elements of axis {i}")
        if kept == 0 and mode != "constant" and max(lo, hi) > 0:
            raise ShapeError(f"{mode} padding of axis {i} needs elements, it has none after cropping")
    x = x[tuple(np.s_[max(-lo, 0):d - max(-hi, 0)] for d, (lo, hi) in zip(x.shape, pairs))]
    width = [(max(lo, 0), max(hi, 0)) for lo, hi in pairs]
    if mode == "constant":
        return np.pad(x, width, constant_values=value)
    return np.pad(x, width, mode=mode)


def wrap_pad_static(b, x, pairs):
    """ONNX wrap padding with known pads as nn.gather with constant source positions per padded
    axis; None when a padded axis has a symbolic size."""
    sources = {}
    for i, (lo, hi) in enumerate(pairs):
        if (lo, hi) == (0, 0):
            continue
        d = x.type.shape[i]
        if type(d) is not int:
            return None
        sources[i] = pad_array(np.arange(d, dtype=np.int64), [(lo, hi)], "wrap", 0)
    for i, src in sources.items():       # no op is built before every axis checked out
        x = b.nn.gather(x, b.constant(src), axis=i)
    return x


@declare
class pad_dyn:
    """ONNX Pad with the pads and the fill read at run time. `pads` (1-D integers) holds the begin
    pad of each axis in `axes` (absent: all axes), then the end pads; `value` (one element of x's
    dtype) fills constant mode. Negative pads crop first (as nn.pad), then `mode` pads: constant,
    reflect (mirror without repeating the edge), edge (repeat the edge element) or wrap (continue
    periodically from the other end, numpy 'wrap'); reflect, edge and wrap need at least one
    element left on a padded axis. Padded dims are `?`. canonicalize rewrites it to nn.pad when
    pads and value are constants (constant, reflect and edge modes), and wrap padding of static
    dims to nn.gather."""
    name = "nn.pad_dyn"
    operands = (Operand("x", ANY), Operand("pads", INDEX), Operand("value", ANY))
    attrs = (Attr("mode", "str", "constant", choices=("constant", "reflect", "edge", "wrap")),
             Attr("axes", "ints", None, doc="the padded axes (negative counts from the end); absent: all"))
    traits = {"pure"}
    cost = data_movement_cost
    examples = (Ex("f32[2,3]", np.array([1, 0, 2, -1], np.int64), np.array(1.5, np.float32)),
                Ex("f32[3,4]", np.array([0, 2, 1, 3], np.int64), np.array(0, np.float32), mode="reflect"),
                Ex("f32[2,5]", np.array([2, 3], np.int32), np.array([0], np.float32), mode="edge", axes=[-1]),
                Ex("f32[3,4]", np.array([4, -1, 5, 2], np.int64), np.array(0, np.float32), mode="wrap"),
                Ex("i64[2,2]", np.array([1, 1], np.int64), np.array(7, np.int64), axes=[0]))

    def infer(x, pads, value, *, mode, axes):
        if value.dtype is not x.dtype:
            raise ShapeError(f"value has dtype {value.dtype}, x has {x.dtype}")
        if value.rank > 1 or value.is_static and value.numel != 1:
            raise ShapeError(f"value must hold one element, got {value}")
        ax = norm_axes(axes, x.rank)
        n = _length(pads, "pads")
        if n != 2 * len(ax):
            raise ShapeError(f"pads has {n} entries; {len(ax)} axes need {2 * len(ax)}")
        return x.with_shape([ANYDIM if i in ax else d for i, d in enumerate(x.shape)])

    def ref(x, pads, value, *, mode, axes):
        pairs = pad_pairs(x.ndim, _ints(pads, "pads"), axes)
        return pad_array(x, pairs, mode, _scalar(value, "value"))

    def vjp(b, op, g):
        x, pads, value = op.operands
        if g is None or not x.type.dtype.is_float:
            return [None, None, None]
        zero = b.constant(np.int64(0))
        gx = _moved_positions_vjp(b, op, g, lambda p: b.nn.pad_dyn(p, pads, zero, mode=op.attrs["mode"],
                                                                  axes=op.attrs["axes"]))
        gv = None
        if op.attrs["mode"] == "constant":
            # the fill's share: the cotangent where no element of x landed
            filled = b.nn.pad_dyn(b.nn.broadcast_like(b.constant(False), x), pads, b.constant(True),
                                  axes=op.attrs["axes"])
            gv = b.nn.reshape_like(b.nn.sum(b.nn.where(filled, g, b.constant(0, g.type.dtype.np))), value)
        return [gx, None, gv]

    def _canon(b, op, x, pads, value):
        if not (_const(pads) and _const(value)):
            return None
        pairs = pad_pairs(x.type.rank, _ints(pads, "pads"), op.attrs["axes"])
        mode = op.attrs["mode"]
        if mode == "wrap":
            return wrap_pad_static(b, x, pairs)
        v = _scalar(value, "value")
        if np.asarray(float(v)).astype(v.dtype) != v:
            return None             # the fill does not survive nn.pad's float attribute
        flat = [lo for lo, _ in pairs] + [hi for _, hi in pairs]
        return b.nn.pad(x, pads=flat, mode=mode, value=float(v))

    patterns = (_rule("nn.pad_dyn", _canon),)


# --- tile ---------------------------------------------------------------------------------------
@declare
class tile_dyn:
    """ONNX Tile with the repeats read at run time from a 1-D integer tensor with one entry (>= 0)
    per dim of x: result dim i is x's dim i times repeats[i]. Dims are `?` (0 stays 0).
    canonicalize rewrites it to nn.tile when `repeats` is a constant."""
    name = "nn.tile_dyn"
    operands = (Operand("x", ANY), Operand("repeats", INDEX))
    traits = {"pure"}
    cost = data_movement_cost
    examples = (Ex("f32[2,3]", np.array([2, 1], np.int64)), Ex("i32[3,1,2]", np.array([1, 3, 0], np.int32)),
                Ex("f32[4]", np.array([3], np.int64)))

    def infer(x, repeats):
        if _length(repeats, "repeats") != x.rank:
            raise ShapeError(f"repeats is {repeats}; it needs one entry per dim of {x}")
        return x.with_shape([0 if d == 0 else ANYDIM for d in x.shape])

    def ref(x, repeats):
        return _static("nn.tile", [x], repeats=_ints(repeats, "repeats"))[0]

    def vjp(b, op, g):
        reps = op.operands[1]
        return [_moved_positions_vjp(b, op, g, lambda p: b.nn.tile_dyn(p, reps)), None]

    def _canon(b, op, x, repeats):
        return b.nn.tile(x, repeats=_ints(repeats, "repeats")) if _const(repeats) else None

    patterns = (_rule("nn.tile_dyn", _canon),)


# --- arange -------------------------------------------------------------------------------------
def arange_count(start, limit, delta) -> int:
    """max(ceil((limit - start) / delta), 0), exactly for integers."""
    if delta == 0:
        raise ShapeError("delta cannot be 0")
    if isinstance(start, (int, np.integer)) and isinstance(limit, (int, np.integer)) \
            and isinstance(delta, (int, np.integer)):
        return max(-((int(start) - int(limit)) // int(delta)), 0)
    n = math.ceil((float(limit) - float(start)) / float(delta))
    return max(n, 0)


@declare
class arange_dyn:
    """ONNX Range with start, limit and delta read at run time (one element each, all of one
    dtype, which is the result's): start, start + delta, ... with max(ceil((limit - start) /
    delta), 0) elements; delta may be negative, not 0. Floats are computed as start + i * delta
    in f64 and rounded to the dtype; integers exactly. The length is `?`. canonicalize rewrites it
    to nn.arange when all three are constants (and exact as f64)."""
    name = "nn.arange_dyn"
    operands = (Operand("start", NUMERIC), Operand("limit", NUMERIC), Operand("delta", NUMERIC))
    traits = {"pure"}
    examples = (Ex(np.array(0, np.int64), np.array(5, np.int64), np.array(1, np.int64)),
                Ex(np.array(1.0, np.float64), np.array(2.0, np.float64), np.array(0.3, np.float64)),
                Ex(np.array(10, np.int32), np.array(4, np.int32), np.array(-2, np.int32)),
                Ex(np.array(3.0, np.float32), np.array(1.0, np.float32), np.array(1.0, np.float32)),
                Ex(np.array([-1.5], np.float16), np.array([1.2], np.float16), np.array([0.5], np.float16)))

    def infer(start, limit, delta):
        for t, what in ((start, "start"), (limit, "limit"), (delta, "delta")):
            if t.dtype is not start.dtype:
                raise ShapeError(f"{what} has dtype {t.dtype}, start has {start.dtype}")
            if t.rank > 1 or t.is_static and t.numel != 1:
                raise ShapeError(f"{what} must hold one element, got {t}")
        return TensorType([ANYDIM], start.dtype)

    def ref(start, limit, delta):
        s, e, d = (_scalar(v, w) for v, w in ((start, "start"), (limit, "limit"), (delta, "delta")))
        if start.dtype.kind in "iu":
            s, e, d = int(s), int(e), int(d)
            n = arange_count(s, e, d)
            return (s + np.arange(n, dtype=np.int64) * d).astype(start.dtype)
        s, e, d = float(s), float(e), float(d)
        return (s + np.arange(arange_count(s, e, d), dtype=np.float64) * d).astype(start.dtype)

    def vjp(b, op, g):
        start, _, delta = op.operands
        if g is None or not start.type.dtype.is_float:
            return [None, None, None]
        i = b.nn.arange_dyn(b.constant(np.int64(0)), b.nn.size(g), b.constant(np.int64(1)))
        gd = b.nn.sum(b.nn.mul(g, b.nn.cast(i, to=g.type.dtype)))
        return [b.nn.reshape_like(b.nn.sum(g), start), None, b.nn.reshape_like(gd, delta)]

    def cost(op, bind):
        t = op.results[0].type
        return Cost(numel(t, bind), 0, t.nbytes(bind))

    def _canon(b, op, start, limit, delta):
        if not (_const(start) and _const(limit) and _const(delta)):
            return None
        vals = [_scalar(v, "operand") for v in (start, limit, delta)]
        if any(np.asarray(float(v)).astype(v.dtype) != v for v in vals):
            return None
        return b.nn.arange(start=float(vals[0]), limit=float(vals[1]), delta=float(vals[2]),
                           dtype=op.results[0].type.dtype)

    patterns = (_rule("nn.arange_dyn", _canon, data=0),)


# --- split --------------------------------------------------------------------------------------
@declare
class split_dyn:
    """nn.split with the piece sizes read at run time: x cut along `axis` into consecutive pieces
    of sizes[0], sizes[1], ... (1-D integers, >= 0, adding up to the axis size), one result per
    entry (the length of `sizes` is static). The pieces' `axis` dims are `?`. canonicalize
    rewrites it to nn.split when `sizes` is a constant."""
    name = "nn.split_dyn"
    operands = (Operand("x", ANY), Operand("sizes", INDEX))
    results = (Result("ys", variadic=True),)
    attrs = (Attr("axis", "int", 0),)
    traits = {"pure"}
    examples = (Ex("f32[5,3]", np.array([2, 3], np.int64)),
                Ex("f32[2,7]", np.array([1, 0, 4, 2], np.int32), axis=-1),
                Ex("i64[4]", np.array([4], np.int64)))

    def infer(x, sizes, *, axis):
        n = _length(sizes, "sizes")
        if n == 0:
            raise ShapeError("sizes needs at least one entry")
        a = norm_axis(axis, x.rank)
        d = 0 if x.shape[a] == 0 else ANYDIM
        return tuple(x.with_shape(x.shape[:a] + (d,) + x.shape[a + 1:]) for _ in range(n))

    def ref(x, sizes, *, axis):
        s = _ints(sizes, "sizes")
        if min(s) < 0:
            raise ShapeError(f"sizes {s} must be >= 0")
        return _static("nn.split", [x], axis=axis, sizes=s)

    def vjp(b, op, *grads):
        if all(g is None for g in grads):
            return [None, None]
        parts = [g if g is not None else b.nn.broadcast_like(b.constant(0, r.type.dtype.np), r)
                 for g, r in zip(grads, op.results)]
        x = op.operands[0]
        return [b.nn.reshape_like(b.nn.concat(parts, axis=op.attrs["axis"]), x), None]

    def cost(op, bind):
        x = op.operands[0].type
        return Cost(0, x.nbytes(bind), sum(r.type.nbytes(bind) for r in op.results))

    def _canon(b, op, x, sizes):
        return b.nn.split(x, axis=op.attrs["axis"], sizes=_ints(sizes, "sizes")) if _const(sizes) else None

    patterns = (_rule("nn.split_dyn", _canon),)


# --- topk ---------------------------------------------------------------------------------------
@declare
class topk_dyn:
    __doc__ = TOPK_DOC + """ k is read at run time from a one-element integer tensor (0 <= k <=
    the axis size); the results' `axis` dim is `?`. canonicalize rewrites it to nn.topk when k is
    a constant."""
    name = "nn.topk_dyn"
    operands = (Operand("x", NUMERIC), Operand("k", INDEX))
    results = (Result("values"), Result("indices"))
    attrs = TOPK_ATTRS
    traits = {"pure"}
    examples = (Ex("f32[3,5]", np.array([2], np.int64)),
                Ex("f32[4,3]", np.array(3, np.int32), axis=0, largest=False),
                Ex(np.array([[3, 1, 3, 2], [0, 0, 5, 5]], np.int32), np.array([3], np.int64)))

    def infer(x, k, *, axis, largest, sorted):
        if k.rank > 1 or k.is_static and k.numel != 1:
            raise ShapeError(f"k must hold one element, got {k}")
        return topk_infer(x, axis, ANYDIM)

    def ref(x, k, *, axis, largest, sorted):
        return topk_ref(x, int(_scalar(k, "k")), axis, largest)

    vjp = topk_vjp

    def cost(op, bind):
        x = op.operands[0].type
        n = numel(x, bind)
        return Cost(n * max(1, int(np.log2(max(n, 2)))), x.nbytes(bind),
                    sum(r.type.nbytes(bind) for r in op.results))

    def _canon(b, op, x, k):
        if not _const(k):
            return None
        at = {a: op.attrs[a] for a in ("axis", "largest", "sorted")}
        return b.nn.topk(x, k=int(_scalar(k, "k")), **at)

    patterns = (_rule("nn.topk_dyn", _canon),)


# --- resize -------------------------------------------------------------------------------------
def resize_static_attrs(shape, target, roi, axes, policy, is_scales):
    """nn.resize's sizes / scales / roi attributes for ONNX Resize on an input of concrete
    `shape` with `target` (scales or sizes for `axes`, absent: all), `roi` (start and end per
    axis, or None) and keep_aspect_ratio_policy `policy`."""
    r = len(shape)
    ax = list(range(r)) if axes is None else [norm_axis(a, r) for a in axes]
    if len(set(ax)) != len(ax):
        raise ShapeError(f"repeated axis in {list(axes)}")
    target = list(target)
    if len(target) != len(ax):
        raise ShapeError(f"{'scales' if is_scales else 'sizes'} has {len(target)} entries for {len(ax)} axes")
    out = {"sizes": None, "scales": None, "roi": None}
    if roi is not None and len(roi):
        if len(roi) != 2 * len(ax):
            raise ShapeError(f"roi has {len(roi)} entries; {len(ax)} axes need {2 * len(ax)}")
        full = [0.0] * r + [1.0] * r
        for i, a in enumerate(ax):
            full[a], full[r + a] = float(roi[i]), float(roi[len(ax) + i])
        out["roi"] = full
    if is_scales:
        scales = [1.0] * r
        for i, a in enumerate(ax):
            scales[a] = float(target[i])
        out["scales"] = scales
        return out
    sizes = [-1] * r
    for i, a in enumerate(ax):
        sizes[a] = int(target[i])
    if policy != "stretch":
        if any(type(shape[a]) is not int for a in ax):
            raise ShapeError(f"keep_aspect_ratio_policy {policy} needs the input size of each resized axis")
        ratios = [sizes[a] / shape[a] for a in ax]
        s = min(ratios) if policy == "not_larger" else max(ratios)
        for a in ax:
            sizes[a] = int(s * shape[a] + 0.5)
        out["scales"] = [s if a in ax else 1.0 for a in range(r)]
    out["sizes"] = sizes
    return out


@declare
class resize_dyn:
    """ONNX Resize with the scales or sizes (and the roi) read at run time. `target` is the
    scales when it is a float tensor, else the sizes (integers), with one entry per axis in
    `axes` (absent: all axes; the others keep their size and scale 1); `roi` (optional, float)
    holds a start per axis in `axes`, then an end. `keep_aspect_ratio_policy` (sizes only):
    "not_larger" / "not_smaller" replace the sizes by round(s * input size) with s the smallest /
    largest of the sizes' ratios to the input, and use s as the scale. Everything else is
    nn.resize's meaning. Resized dims are `?`. canonicalize rewrites it to nn.resize when target
    and roi are constants."""
    name = "nn.resize_dyn"
    operands = (Operand("x", NUMERIC), Operand("target", FLOAT + INDEX), Operand("roi", FLOAT, optional=True))
    attrs = (Attr("axes", "ints", None),
             Attr("keep_aspect_ratio_policy", "str", "stretch", choices=("stretch", "not_larger", "not_smaller"))
             ) + tuple(a for a in RESIZE_ATTRS if a.name not in ("sizes", "scales", "roi"))
    traits = {"pure"}
    examples = (Ex("f32[1,1,3,4]", np.array([1, 1, 5, 7], np.int64), mode="linear"),
                Ex("f32[1,2,4,4]", np.array([0.6, 0.8], np.float32), axes=[2, 3], mode="cubic"),
                Ex("f32[1,1,4,4]", np.array([3, 3], np.int64), np.array([0.4, 0.6, 1.2, 0.8], np.float32),
                   axes=[-2, -1], mode="linear", coordinate_transformation_mode="tf_crop_and_resize"),
                Ex("f32[1,1,2,4]", np.array([3, 3], np.int64), axes=[2, 3], keep_aspect_ratio_policy="not_larger"))

    def infer(x, target, roi, *, axes, keep_aspect_ratio_policy, **at):
        n = _length(target, "target")
        ax = norm_axes(axes, x.rank) if axes is not None else tuple(range(x.rank))
        if n != len(ax):
            raise ShapeError(f"target has {n} entries for {len(ax)} axes")
        if roi is not None and roi.rank != 1:
            raise ShapeError(f"roi must be 1-D, got {roi}")
        return x.with_shape([ANYDIM if i in ax else d for i, d in enumerate(x.shape)])

    def ref(x, target, roi, *, axes, keep_aspect_ratio_policy, **at):
        st = resize_static_attrs(x.shape, target.reshape(-1), None if roi is None else roi.reshape(-1),
                                 axes, keep_aspect_ratio_policy, target.dtype.kind == "f")
        return _static("nn.resize", [x], **st, **at)[0]

    vjp = not_differentiable("its interpolation weights depend on run-time scales; canonicalize turns it "
                             "into nn.resize, which is differentiable, once they are constants")

    def cost(op, bind):
        y = op.results[0].type
        taps = {"nearest": 1, "linear": 2, "cubic": 4}[op.attrs["mode"]]
        return Cost(2 * taps * y.rank * numel(y, bind), op.operands[0].type.nbytes(bind), y.nbytes(bind))

    def _canon(b, op, x, target, roi=None):
        if not _const(target) or (roi is not None and not _const(roi)):
            return None
        at = dict(op.attrs)
        axes, policy = at.pop("axes"), at.pop("keep_aspect_ratio_policy")
        st = resize_static_attrs(x.type.shape, target.reshape(-1), None if roi is None else roi.reshape(-1),
                                 axes, policy, target.dtype.kind == "f")
        return b.nn.resize(x, **st, **at)

    patterns = (_rule("nn.resize_dyn", _canon),)


# --- col2im -------------------------------------------------------------------------------------
def col2im_geometry(image, block, dilations, pads, strides):
    """(dilations, begin pads, end pads, strides, block counts per axis) of ONNX Col2Im."""
    n = len(image)
    if len(block) != n:
        raise ShapeError(f"block_shape has {len(block)} entries, image_shape {n}")
    d = [1] * n if dilations is None else list(dilations)
    p = [0] * (2 * n) if pads is None else list(pads)
    s = [1] * n if strides is None else list(strides)
    if len(d) != n or len(s) != n or len(p) != 2 * n:
        raise ShapeError(f"dilations, strides need {n} entries and pads {2 * n}")
    counts = [(image[i] + p[i] + p[n + i] - d[i] * (block[i] - 1) - 1) // s[i] + 1 for i in range(n)]
    if min(counts, default=1) < 1 or min(block, default=1) < 1:
        raise ShapeError(f"block {list(block)} does not fit image {list(image)} with these pads")
    return d, p[:n], p[n:], s, counts


def col2im_array(x, image, block, dilations, pads, strides):
    d, pb, _, s, counts = col2im_geometry(image, block, dilations, pads, strides)
    k = math.prod(block)
    nb, ck, total = x.shape
    if ck % k or total != math.prod(counts):
        raise ShapeError(f"input {list(x.shape)} does not hold (C * {k}) columns of {math.prod(counts)} blocks")
    c = ck // k
    xr = x.reshape((nb, c) + tuple(block) + tuple(counts))
    y = np.zeros((nb, c) + tuple(image), x.dtype)
    for kk in np.ndindex(*block):
        sel, put = [], []
        for i, ki in enumerate(kk):
            pos = np.arange(counts[i]) * s[i] + ki * d[i] - pb[i]
            ok = (pos >= 0) & (pos < image[i])
            sel.append(np.nonzero(ok)[0])
            put.append(pos[ok])
        y[(slice(None), slice(None)) + np.ix_(*put)] += xr[(slice(None), slice(None)) + kk][
            (slice(None), slice(None)) + np.ix_(*sel)]
    return y


COL2IM_ATTRS = (Attr("dilations", "ints", None), Attr("pads", "ints", None, doc="begin pads, then end pads"),
                Attr("strides", "ints", None))


@declare
class col2im_dyn:
    """ONNX Col2Im with image_shape and block_shape read at run time (1-D integers of the same
    static length r): x is (N, C * prod(block), L), holding for each of the L block positions (in
    row-major order over the grid of positions a block takes in the padded image, given strides
    and dilations) the block's C * prod(block) values; the result (N, C, *image_shape) sums every
    value into the pixel it came from (values in the padding are dropped). Dims but N are `?`.
    canonicalize rewrites it to an nn.conv_transpose with 0/1 weights when both shapes are
    constants."""
    name = "nn.col2im_dyn"
    operands = (Operand("x", NUMERIC), Operand("image_shape", INDEX), Operand("block_shape", INDEX))
    attrs = COL2IM_ATTRS
    traits = {"pure"}
    examples = (Ex("f32[1,5,5]", np.array([5, 5], np.int64), np.array([1, 5], np.int64)),
                Ex("f32[2,8,4]", np.array([3, 4], np.int64), np.array([2, 2], np.int64), strides=[1, 2],
                   pads=[1, 0, 0, 1], dilations=[2, 1]),
                Ex("f32[1,6,3]", np.array([5], np.int32), np.array([3], np.int32), strides=[2], pads=[1, 2]))

    def infer(x, image_shape, block_shape, *, dilations, pads, strides):
        n = _length(image_shape, "image_shape")
        if _length(block_shape, "block_shape") != n:
            raise ShapeError(f"block_shape {block_shape} and image_shape {image_shape} differ in length")
        if x.rank != 3:
            raise ShapeError(f"x must be (N, C * prod(block), L), got {x}")
        return x.with_shape([x.shape[0]] + [ANYDIM] * (n + 1))

    def ref(x, image_shape, block_shape, *, dilations, pads, strides):
        return col2im_array(x, _ints(image_shape, "image_shape"), _ints(block_shape, "block_shape"),
                            dilations, pads, strides)

    def vjp(b, op, g):
        if g is None or not op.operands[0].type.dtype.is_float:
            return [None, None, None]
        return [_col2im_adjoint(b, op, g), None, None]

    def cost(op, bind):
        x = op.operands[0].type
        return Cost(numel(x, bind), x.nbytes(bind), op.results[0].type.nbytes(bind))

    def _canon(b, op, x, image, block):
        if not (_const(image) and _const(block)):
            return None
        return col2im_static(b, x, _ints(image, "image_shape"), _ints(block, "block_shape"),
                             op.attrs["dilations"], op.attrs["pads"], op.attrs["strides"])

    patterns = (_rule("nn.col2im_dyn", _canon),)


def _col2im_adjoint(b, op, g):
    """im2col of g (N, C, *image): zero-pad it, then gather each axis at block position * stride
    + kernel offset * dilation, giving (N, C, k1, L1, k2, L2, ...) -> (N, C * K, L)."""
    x, image, block = op.operands
    at = op.attrs
    n = image.type.shape[0]
    d, pb, pe, s, _ = col2im_geometry([1] * n, [1] * n, at["dilations"], at["pads"], at["strides"])
    i64 = lambda v: b.constant(np.int64(v))
    img, blk = b.nn.cast(image, to=dt.i64), b.nn.cast(block, to=dt.i64)
    t = b.nn.pad(g, pads=[0, 0] + pb + [0, 0] + pe)
    for i in range(n):
        ki = b.nn.reshape(b.nn.slice(blk, starts=[i], ends=[i + 1]), shape=[])
        hi = b.nn.reshape(b.nn.slice(img, starts=[i], ends=[i + 1]), shape=[])
        span = b.nn.sub(b.nn.add(hi, i64(pb[i] + pe[i] - 1)), b.nn.mul(b.nn.sub(ki, i64(1)), i64(d[i])))
        count = b.nn.add(b.nn.div(span, i64(s[i])), i64(1))
        offs = b.nn.mul(b.nn.arange_dyn(i64(0), ki, i64(1)), i64(d[i]))
        starts = b.nn.mul(b.nn.arange_dyn(i64(0), count, i64(1)), i64(s[i]))
        pos = b.nn.add(b.nn.unsqueeze(offs, axes=[1]), b.nn.unsqueeze(starts, axes=[0]))
        t = b.nn.gather(t, pos, axis=2 + 2 * i)          # (N, C, k1, L1, ..., ki, Li, rest...)
    perm = [0, 1] + [2 + 2 * i for i in range(n)] + [3 + 2 * i for i in range(n)]
    t = b.nn.transpose(t, perm=perm)
    return b.nn.reshape_like(t, x)


def col2im_static(b, x, image, block, dilations, pads, strides):
    """Col2Im with known shapes as nn.conv_transpose: x viewed as (N, C * K, L1, ..., Lr), with
    groups = C and a 0/1 weight (C * K, 1, *block) sending input channel c * K + k to offset k
    of output channel c. None when C is not static."""
    d, pb, pe, s, counts = col2im_geometry(image, block, dilations, pads, strides)
    k = math.prod(block)
    ck = x.type.shape[1]
    if type(ck) is not int:
        return None
    if ck % k:
        raise ShapeError(f"x {x.type} does not hold C * {k} columns")
    c = ck // k
    lead = x.type.shape[0]
    cols = b.nn.reshape(x, shape=[lead if type(lead) is int or lead.name else -1, ck] + counts)
    eye = np.eye(k, dtype=x.type.dtype.np).reshape((k, 1) + tuple(block))
    w = b.constant(np.tile(eye, (c, 1) + (1,) * len(block)))
    extra = [image[i] - ((counts[i] - 1) * s[i] + d[i] * (block[i] - 1) + 1 - pb[i] - pe[i])
             for i in range(len(image))]
    return b.nn.conv_transpose(cols, w, strides=s, pads=pb + pe, dilations=d, groups=c,
                               output_padding=extra if any(extra) else None)
