"""Shape, indexing and data-movement ops.

Inputs that ONNX passes as tensors but that are shapes, axes, sizes or counts (Reshape's shape,
Slice's starts, Pad's pads, TopK's K, Resize's sizes, ...) give the static nn op when their value
is known at import time, and the dynamic op of dialects/nn/dynamic.py (reading the tensor at run
time, `?` dims where the result depends on it) when it is not.
"""
from __future__ import annotations

import math

import numpy as np

from ckir import dtypes as dt
from ckir.dialects.nn.dynamic import pad_pairs, static_reshape_shape, wrap_pad_static
from ckir.errors import CkirError
from ckir.ir import Value
from ckir.types import TensorType

from ..importer import onnx_dtype
from ..registry import converter

I64_MAX = 2**63 - 1


# --- helpers ------------------------------------------------------------------------------------
def _i64(b, v: Value) -> Value:
    return v if v.type.dtype is dt.i64 else b.nn.cast(v, to=dt.i64)


def _vec(b, v: Value) -> Value:
    """A shape-like input as a 1-D i64 tensor (a scalar becomes one element)."""
    v = _i64(b, v)
    return b.nn.reshape(v, shape=[1]) if v.type.rank == 0 else v


def _scalar(b, v: Value) -> Value:
    """A one-element input as a rank-0 tensor."""
    return v if v.type.rank == 0 else b.nn.reshape(v, shape=[])


def _const_vec(b, vals) -> Value:
    return b.constant(np.asarray(vals, dtype=np.int64).reshape(-1))


def _known(ctx, i: int) -> np.ndarray | None:
    """Input i's numeric value when known at import time (not a shape vector holding symbolic
    dims), else None."""
    a = ctx.const(i)
    return None if a is None or a.dtype == object else a


def _axis(ctx, a: int, rank: int) -> int:
    if not -rank <= a < rank:
        raise ctx.fail(f"axis {a} is out of range for rank {rank}")
    return a % rank


def _iota(b, x: Value, axis: int) -> Value:
    """0, 1, ... dim-1 (i64) along dim `axis` of x: a constant when the dim is static."""
    d = x.type.shape[axis]
    if type(d) is int:
        return b.constant(np.arange(d, dtype=np.int64))
    n = b.nn.reshape(b.nn.shape(x, start=axis, end=axis + 1), shape=[])
    return b.nn.arange_dyn(b.constant(np.int64(0)), n, b.constant(np.int64(1)))


def _dim_value(b, x: Value, axis: int) -> Value:
    """Dim `axis` of x as an i64 scalar tensor."""
    d = x.type.shape[axis]
    if type(d) is int:
        return b.constant(np.int64(d))
    return b.nn.reshape(b.nn.shape(x, start=axis, end=axis + 1), shape=[])


def _reshape_dims(b, x: Value, dims, src: Value | None = None) -> Value:
    """Reshape x to dims given as (num, den, axes): num * prod(dims of src at axes) // den, src
    defaulting to x. A static nn.reshape when each dim is static, a named dim, or the one -1;
    otherwise nn.reshape_dyn with the sizes computed from nn.shape at run time."""
    src = x if src is None else src
    shape, unknown = [], 0
    for num, den, axes in dims:
        ds = [src.type.shape[a] for a in axes]
        syms = [d for d in ds if type(d) is not int]
        rest = math.prod(d for d in ds if type(d) is int)
        if not syms:
            shape.append(num * rest // den)
        elif len(syms) == 1 and syms[0].name is not None and num == den == rest == 1:
            shape.append(syms[0])
        else:
            shape.append(-1)
            unknown += 1
    if unknown <= 1:
        return b.nn.reshape(x, shape=shape)
    shp = b.nn.shape(src)
    parts = []
    for num, den, axes in dims:
        v = _const_vec(b, [1]) if not axes else b.nn.prod(b.nn.gather(shp, _const_vec(b, axes)), axes=[0],
                                                          keepdims=True)
        if num != 1:
            v = b.nn.mul(v, num)
        if den != 1:
            v = b.nn.div(v, den)
        parts.append(v)
    return b.nn.reshape_dyn(x, b.nn.concat(parts, axis=0))


def _scatter_axes(b, vals: Value, axes: Value, rank: int, fill: int) -> Value:
    """Per-axis values given for run-time `axes` (1-D, negative counts from the end) spread over
    all `rank` axes: vals[j] at axis axes[j], `fill` at the others."""
    vals, axes = _vec(b, vals), _vec(b, axes)
    axes = b.nn.where(b.nn.lt(axes, 0), b.nn.add(axes, rank), axes)
    mask = b.nn.eq(b.nn.unsqueeze(axes, axes=[1]), b.constant(np.arange(rank, dtype=np.int64).reshape(1, -1)))
    picked = b.nn.sum(b.nn.where(mask, b.nn.unsqueeze(vals, axes=[1]), b.constant(np.int64(0))), axes=[0])
    hit = b.nn.gt(b.nn.sum(b.nn.cast(mask, to=dt.i64), axes=[0]), b.constant(np.int64(0)))
    return b.nn.where(hit, picked, b.constant(np.int64(fill)))


def _axes_input_or_attr(ctx, since: int, i: int = 1):
    """(axes as ints or None, axes Value or None) from the attribute before opset `since`, the
    input from then on."""
    if ctx.opset < since:
        a = ctx.attr("axes", None)
        return (None if a is None else list(a)), None
    if ctx.opt(i) is None:
        return None, None
    return ctx.ints(i, "axes"), ctx.x(i)


# --- reshape family -----------------------------------------------------------------------------
@converter("Reshape", since=1)
def reshape_v1(ctx):
    x = ctx.x(0)
    s = static_reshape_shape(x.type, ctx.attr("shape"), False)
    if s is None:
        raise ctx.fail(f"cannot express shape {list(ctx.attr('shape'))} for input {x.type}")
    return ctx.b.nn.reshape(x, shape=s)


@converter("Reshape", since=5)
def reshape(ctx):
    x, allowzero = ctx.x(0), bool(ctx.attr("allowzero", 0))
    s = ctx.dims(1)
    if s is not None:
        st = static_reshape_shape(x.type, s, allowzero)
        if st is not None:
            return ctx.b.nn.reshape(x, shape=st)
    return ctx.b.nn.reshape_dyn(x, ctx.x(1), allowzero=allowzero)


@converter("Flatten", since=1)
def flatten(ctx):
    x = ctx.x(0)
    r = x.type.rank
    a = ctx.attr("axis", 1)
    if not -r <= a <= r:
        raise ctx.fail(f"axis {a} is out of range for rank {r}")
    a = a + r if a < 0 else a
    return _reshape_dims(ctx.b, x, [(1, 1, list(range(a))), (1, 1, list(range(a, r)))])


@converter("Transpose", since=1)
def transpose(ctx):
    perm = ctx.attr("perm", None)
    return ctx.b.nn.transpose(ctx.x(0), perm=None if perm is None else list(perm))


@converter("Squeeze", since=1)
def squeeze(ctx):
    x = ctx.x(0)
    axes, v = _axes_input_or_attr(ctx, 13)
    if axes is not None or v is None:
        return ctx.b.nn.squeeze(x, axes=axes)
    return ctx.b.nn.squeeze_dyn(x, _vec(ctx.b, v))


@converter("Unsqueeze", since=1)
def unsqueeze(ctx):
    x = ctx.x(0)
    axes, v = _axes_input_or_attr(ctx, 13)
    if axes is not None:
        return ctx.b.nn.unsqueeze(x, axes=axes)
    if v is None:
        raise ctx.fail("needs axes")
    return ctx.b.nn.unsqueeze_dyn(x, _vec(ctx.b, v))


@converter("Expand", since=8)
def expand(ctx):
    x, s = ctx.x(0), ctx.dims(1)
    if s is not None:
        return ctx.b.nn.expand(x, shape=s)
    return ctx.b.nn.expand_dyn(x, _vec(ctx.b, ctx.x(1)))


@converter("ConstantOfShape", since=9)
def constant_of_shape(ctx):
    v = ctx.attr("value", None)
    v = np.zeros((), np.float32) if v is None else np.asarray(v)
    if v.size != 1:
        raise ctx.fail(f"value must hold one element, got shape {list(v.shape)}")
    fill = ctx.b.constant(v.reshape(()))
    s = ctx.dims(0)
    if s is not None:
        return ctx.b.nn.expand(fill, shape=s)
    return ctx.b.nn.expand_dyn(fill, _vec(ctx.b, ctx.x(0)))


@converter("Tile", since=6)
def tile(ctx):
    x, r = ctx.x(0), ctx.ints(1, "repeats")
    if r is not None:
        return ctx.b.nn.tile(x, repeats=r)
    return ctx.b.nn.tile_dyn(x, _vec(ctx.b, ctx.x(1)))


# --- concat / split / slice ---------------------------------------------------------------------
@converter("Concat", since=1)
def concat(ctx):
    xs = [v for v in ctx.inputs if v is not None]
    return ctx.b.nn.concat(xs, axis=ctx.attr("axis", 1) if ctx.opset < 4 else ctx.attr("axis"))


def _split_sizes(ctx, x, a, n, uneven):
    """Sizes for an equal split of axis a into n pieces (uneven: ONNX 18's ceil chunks, the
    last one smaller): ints, or an i64 Value when the dim is symbolic."""
    d = x.type.shape[a]
    if type(d) is int:
        if uneven:
            c = -(-d // n)
            sizes = [c] * (n - 1) + [d - c * (n - 1)]
            if sizes[-1] < 0:
                raise ctx.fail(f"cannot split axis {a} of size {d} into {n} pieces")
            return sizes
        if d % n:
            raise ctx.fail(f"axis {a} of size {d} does not split evenly into {n} pieces")
        return [d // n] * n
    b = ctx.b
    dv = b.nn.shape(x, start=a, end=a + 1)
    c = b.nn.div(b.nn.add(dv, n - 1), n) if uneven else b.nn.div(dv, n)
    parts = [c] * (n - 1) + [b.nn.sub(dv, b.nn.mul(c, n - 1))]
    return b.nn.concat(parts, axis=0)


@converter("Split", since=1)
def split(ctx):
    x = ctx.x(0)
    a = _axis(ctx, ctx.attr("axis", 0), x.type.rank)
    sizes, sv = None, None
    if ctx.opset < 13 and ctx.has("split"):
        sizes = list(ctx.attr("split"))
    elif (ctx.opset < 2 or ctx.opset >= 13) and ctx.opt(1) is not None:
        sizes, sv = ctx.ints(1, "split"), ctx.x(1)
    n = ctx.n_out
    if sizes is None and sv is not None:
        ys = ctx.b.nn.split_dyn(x, _vec(ctx.b, sv), axis=a)
    else:
        if sizes is None:
            if ctx.opset >= 18:
                if not ctx.has("num_outputs"):
                    raise ctx.fail("needs the split input or the num_outputs attribute")
                n = ctx.attr("num_outputs")
            sizes = _split_sizes(ctx, x, a, n, ctx.opset >= 18)
        if isinstance(sizes, Value):
            ys = ctx.b.nn.split_dyn(x, sizes, axis=a)
        else:
            ys = ctx.b.nn.split(x, axis=a, sizes=sizes)
    ys = list(ys) if isinstance(ys, (tuple, list)) else [ys]
    if len(ys) != ctx.n_out:
        raise ctx.fail(f"splits into {len(ys)} pieces but has {ctx.n_out} outputs")
    return ys


@converter("Slice", since=1)
def slice_v1(ctx):
    x = ctx.x(0)
    starts, ends = list(ctx.attr("starts")), list(ctx.attr("ends"))
    axes = ctx.attr("axes", None)
    return ctx.b.nn.slice(x, starts=starts, ends=ends, axes=None if axes is None else list(axes))


@converter("Slice", since=10)
def slice_(ctx):
    b, x = ctx.b, ctx.x(0)
    r = x.type.rank
    starts, ends = ctx.ints(1, "starts"), ctx.ints(2, "ends")
    axes, steps = ctx.ints(3, "axes"), ctx.ints(4, "steps")
    if starts is not None and ends is not None and (axes is not None or ctx.opt(3) is None) \
            and (steps is not None or ctx.opt(4) is None):
        return b.nn.slice(x, starts=starts, ends=ends, axes=axes, steps=steps)
    sv, ev = _vec(b, ctx.x(1)), _vec(b, ctx.x(2))
    stv = None if ctx.opt(4) is None else _vec(b, ctx.x(4))
    if ctx.opt(3) is None:
        n = sv.type.shape[0]
        if type(n) is not int:
            raise ctx.fail("starts needs a static length when axes are absent")
        axes = list(range(n))
    if axes is not None:
        return b.nn.slice_dyn(x, sv, ev, *([stv] if stv is not None else []), axes=axes)
    # axes known only at run time: spread starts/ends/steps over all axes
    av = ctx.x(3)
    full_s = _scatter_axes(b, sv, av, r, 0)
    full_e = _scatter_axes(b, ev, av, r, I64_MAX)
    full_st = _scatter_axes(b, stv if stv is not None else b.nn.broadcast_like(b.constant(np.int64(1)), sv),
                            av, r, 1)
    return b.nn.slice_dyn(x, full_s, full_e, full_st, axes=list(range(r)))


# --- pad ----------------------------------------------------------------------------------------
def _pad(ctx, x, pads, pads_v, value, value_v, axes, axes_v, mode):
    """Pad with whatever is known at import time (pads/value/axes as Python values) or else the
    run-time Values."""
    b = ctx.b
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise ctx.fail(f"unsupported mode '{mode}'")
    if pads is not None and (axes is not None or axes_v is None):
        pairs = pad_pairs(x.type.rank, pads, axes)
        flat = [lo for lo, _ in pairs] + [hi for _, hi in pairs]
        if mode == "wrap":
            y = wrap_pad_static(b, x, pairs)
            if y is not None:
                return y
        elif value is not None and np.asarray(float(value)).astype(x.type.dtype.np) == value:
            return b.nn.pad(x, pads=flat, mode=mode, value=float(value))
    if pads_v is None:
        pads_v = _const_vec(b, pads)
    if value_v is None:
        value_v = b.constant(np.asarray(0 if value is None else value, dtype=x.type.dtype.np))
    if axes is None and axes_v is not None:
        n = pads_v.type.shape[0]
        if type(n) is not int or n % 2:
            raise ctx.fail(f"pads {pads_v.type} needs a static, even length")
        half = n // 2
        begin = b.nn.slice(pads_v, starts=[0], ends=[half])
        end = b.nn.slice(pads_v, starts=[half], ends=[n])
        r = x.type.rank
        pads_v = b.nn.concat([_scatter_axes(b, begin, axes_v, r, 0), _scatter_axes(b, end, axes_v, r, 0)], axis=0)
    return b.nn.pad_dyn(x, _vec(b, pads_v), value_v, mode=mode, axes=axes)


@converter("Pad", since=1)
def pad_v1(ctx):
    x = ctx.x(0)
    pads = list(ctx.attr("paddings" if ctx.opset < 2 else "pads"))
    value = np.asarray(ctx.attr("value", 0.0)).astype(x.type.dtype.np)[()]
    return _pad(ctx, x, pads, None, value, None, None, None, ctx.attr("mode", "constant"))


@converter("Pad", since=11)
def pad(ctx):
    x = ctx.x(0)
    pads = ctx.ints(1, "pads")
    value, value_v = np.asarray(0).astype(x.type.dtype.np)[()], None
    if ctx.opt(2) is not None:
        c = _known(ctx, 2)
        if c is not None:
            if c.size != 1:
                raise ctx.fail(f"constant_value must hold one element, got shape {list(c.shape)}")
            value = c.reshape(())[()]
        else:
            value, value_v = None, _scalar(ctx.b, ctx.x(2))
    axes, axes_v = None, None
    if ctx.opt(3) is not None:
        axes, axes_v = ctx.ints(3, "axes"), ctx.x(3)
    return _pad(ctx, x, pads, ctx.x(1), value, value_v, axes, axes_v, ctx.attr("mode", "constant"))


@converter("CenterCropPad", since=18)
def center_crop_pad(ctx):
    b, x = ctx.b, ctx.x(0)
    r = x.type.rank
    axes = ctx.attr("axes", None)
    axes = list(range(r)) if axes is None else [_axis(ctx, a, r) for a in axes]
    shape = ctx.ints(1, "shape")
    dims = [x.type.shape[a] for a in axes]
    if shape is not None and all(type(d) is int for d in dims):
        if len(shape) != len(axes):
            raise ctx.fail(f"shape has {len(shape)} entries for {len(axes)} axes")
        # begin pad = diff / 2 truncated toward zero (a negative pad crops), the end gets the rest
        begin = [int((s - d) / 2) for s, d in zip(shape, dims)]
        end = [s - d - bg for s, d, bg in zip(shape, dims, begin)]
        full = [0] * (2 * r)
        for i, a in enumerate(axes):
            full[a], full[r + a] = begin[i], end[i]
        return b.nn.pad(x, pads=full, value=0.0)
    have = b.nn.gather(b.nn.shape(x), _const_vec(b, axes))
    diff = b.nn.sub(_vec(b, ctx.x(1)), have)
    begin = b.nn.div(diff, 2)                  # integer division truncates toward zero
    pads_v = b.nn.concat([begin, b.nn.sub(diff, begin)], axis=0)
    return b.nn.pad_dyn(x, pads_v, b.constant(np.zeros((), x.type.dtype.np)), axes=axes)


# --- generated values -----------------------------------------------------------------------------
@converter("Range", since=11)
def range_(ctx):
    b = ctx.b
    vals = [_known(ctx, i) for i in range(3)]
    d = ctx.x(0).type.dtype
    if all(v is not None for v in vals):
        s = [np.asarray(v).reshape(())[()] for v in vals]
        if all(np.asarray(float(v)).astype(d.np) == v for v in s):
            return b.nn.arange(start=float(s[0]), limit=float(s[1]), delta=float(s[2]), dtype=d)
    operands = [_scalar(b, ctx.x(i)) for i in range(3)]
    lim = ctx.const(1)
    if vals[0] is not None and vals[2] is not None and lim is not None and lim.dtype == object \
            and np.asarray(vals[0]).reshape(-1)[0] == 0 and np.asarray(vals[2]).reshape(-1)[0] == 1:
        # range(0, n) over a symbolic dim n (e.g. positions 0..seq-1): its length is n
        n = lim.reshape(-1)[0]
        return b.create("nn.arange_dyn", operands, result_types=[TensorType([n], d)]).results[0]
    return b.nn.arange_dyn(*operands)


@converter("OneHot", since=9)
def one_hot(ctx):
    b = ctx.b
    idx, values = ctx.x(0), ctx.x(2)
    r = idx.type.rank
    a = ctx.attr("axis", -1)
    if not -r - 1 <= a <= r:
        raise ctx.fail(f"axis {a} is out of range for rank {r + 1}")
    a = a % (r + 1)
    idx = b.nn.cast(idx, to=dt.i64) if idx.type.dtype is not dt.i64 else idx
    dk = _known(ctx, 1)
    if dk is not None:
        depth = int(np.asarray(dk).reshape(-1)[0])
        dv = b.constant(np.int64(depth))
        targets = b.constant(np.arange(depth, dtype=np.int64))
    else:
        dv = b.nn.cast(_scalar(b, ctx.x(1)), to=dt.i64)
        targets = b.nn.arange_dyn(b.constant(np.int64(0)), dv, b.constant(np.int64(1)))
    idx = b.nn.where(b.nn.lt(idx, 0), b.nn.add(idx, dv), idx)
    others = [i for i in range(r + 1) if i != a]
    if others:
        targets = b.nn.unsqueeze(targets, axes=others)
    hit = b.nn.eq(b.nn.unsqueeze(idx, axes=[a]), targets)
    values = b.nn.reshape(values, shape=[2]) if values.type.rank != 1 else values
    off = b.nn.gather(values, b.constant(np.int64(0)))
    on = b.nn.gather(values, b.constant(np.int64(1)))
    return b.nn.where(hit, on, off)


def _diag_offsets(b, x):
    """col - row (i64) over the last two dims of x, shaped [rows, cols]."""
    rows, cols = _iota(b, x, x.type.rank - 2), _iota(b, x, x.type.rank - 1)
    return b.nn.sub(b.nn.unsqueeze(cols, axes=[0]), b.nn.unsqueeze(rows, axes=[1]))


@converter("Trilu", since=14)
def trilu(ctx):
    b, x = ctx.b, ctx.x(0)
    if x.type.rank < 2:
        raise ctx.fail(f"needs rank >= 2, got {x.type}")
    k = b.constant(np.int64(0)) if ctx.opt(1) is None else _scalar(b, _i64(b, ctx.x(1)))
    off = _diag_offsets(b, x)
    keep = b.nn.ge(off, k) if ctx.attr("upper", 1) else b.nn.le(off, k)
    y = b.nn.where(keep, x, b.constant(np.zeros((), x.type.dtype.np)))
    return y if y.type is x.type else b.nn.reshape_like(y, x)


@converter("EyeLike", since=9)
def eye_like(ctx):
    b, x = ctx.b, ctx.x(0)
    if x.type.rank != 2:
        raise ctx.fail(f"needs a 2-D input, got {x.type}")
    d = ctx.attr("dtype", None)
    d = x.type.dtype if d is None else onnx_dtype(d, ctx.where)
    on = b.nn.eq(_diag_offsets(b, x), b.constant(np.int64(ctx.attr("k", 0))))
    y = b.nn.cast(on, to=d)
    return y if y.type.shape == x.type.shape else b.nn.reshape_like(y, x)


# --- depth <-> space ----------------------------------------------------------------------------
def _block(ctx, x):
    if x.type.rank != 4:
        raise ctx.fail(f"needs a 4-D input, got {x.type}")
    bs = ctx.attr("blocksize")
    if bs < 1:
        raise ctx.fail(f"blocksize must be >= 1, got {bs}")
    return bs


@converter("DepthToSpace", since=1)
def depth_to_space(ctx):
    b, x = ctx.b, ctx.x(0)
    bs = _block(ctx, x)
    c = x.type.shape[1]
    if type(c) is int and c % (bs * bs):
        raise ctx.fail(f"channels {c} are not a multiple of blocksize^2 = {bs * bs}")
    one = lambda a: (1, 1, [a])
    if ctx.attr("mode", "DCR") == "DCR":
        t = _reshape_dims(b, x, [one(0), (bs, 1, []), (bs, 1, []), (1, bs * bs, [1]), one(2), one(3)])
        t = b.nn.transpose(t, perm=[0, 3, 4, 1, 5, 2])
    else:
        t = _reshape_dims(b, x, [one(0), (1, bs * bs, [1]), (bs, 1, []), (bs, 1, []), one(2), one(3)])
        t = b.nn.transpose(t, perm=[0, 1, 4, 2, 5, 3])
    return _reshape_dims(b, t, [one(0), (1, bs * bs, [1]), (bs, 1, [2]), (bs, 1, [3])], src=x)


@converter("SpaceToDepth", since=1)
def space_to_depth(ctx):
    b, x = ctx.b, ctx.x(0)
    bs = _block(ctx, x)
    for a in (2, 3):
        d = x.type.shape[a]
        if type(d) is int and d % bs:
            raise ctx.fail(f"dim {a} of size {d} is not a multiple of blocksize {bs}")
    one = lambda a: (1, 1, [a])
    t = _reshape_dims(b, x, [one(0), one(1), (1, bs, [2]), (bs, 1, []), (1, bs, [3]), (bs, 1, [])])
    perm = [0, 3, 5, 1, 2, 4] if ctx.attr("mode", "DCR") == "DCR" else [0, 1, 3, 5, 2, 4]
    t = b.nn.transpose(t, perm=perm)
    return _reshape_dims(b, t, [one(0), (bs * bs, 1, [1]), (1, bs, [2]), (1, bs, [3])], src=x)


# --- gather / selection -----------------------------------------------------------------------------
@converter("Gather", since=1)
def gather(ctx):
    return ctx.b.nn.gather(ctx.x(0), ctx.x(1), axis=ctx.attr("axis", 0))


@converter("Compress", since=9)
def compress(ctx):
    b, x, cond = ctx.b, ctx.x(0), ctx.x(1)
    if cond.type.rank != 1:
        raise ctx.fail(f"condition must be 1-D, got {cond.type}")
    if not cond.type.dtype.is_bool:
        cond = b.nn.ne(cond, b.constant(np.zeros((), cond.type.dtype.np)))
    a = ctx.attr("axis", None)
    if a is None:
        x, a = _reshape_dims(b, x, [(1, 1, list(range(x.type.rank)))]), 0
    else:
        a = _axis(ctx, a, x.type.rank)
    idx = b.nn.reshape(b.nn.nonzero(cond), shape=[-1])
    return b.nn.gather(x, idx, axis=a)


@converter("ReverseSequence", since=10)
def reverse_sequence(ctx):
    b, x = ctx.b, ctx.x(0)
    ba, ta = ctx.attr("batch_axis", 1), ctx.attr("time_axis", 0)
    if sorted((ba, ta)) != [0, 1] or x.type.rank < 2:
        raise ctx.fail(f"batch_axis {ba} and time_axis {ta} must be 0 and 1 of a rank >= 2 input")
    t = _iota(b, x, ta)
    lens = _i64(b, ctx.x(1))
    t = b.nn.unsqueeze(t, axes=[1 - ta])
    lens = b.nn.unsqueeze(lens, axes=[1 - ba])
    idx = b.nn.where(b.nn.lt(t, lens), b.nn.sub(b.nn.sub(lens, 1), t), t)
    if x.type.rank > 2:
        idx = b.nn.unsqueeze(idx, axes=list(range(2, x.type.rank)))
    idx = b.nn.broadcast_like(idx, x)
    return b.nn.gather_elements(x, idx, axis=ta)


@converter("GatherElements", since=11)
def gather_elements(ctx):
    return ctx.b.nn.gather_elements(ctx.x(0), ctx.x(1), axis=ctx.attr("axis", 0))


@converter("GatherND", since=11)
def gather_nd(ctx):
    return ctx.b.nn.gather_nd(ctx.x(0), ctx.x(1), batch_dims=ctx.attr("batch_dims", 0))


@converter("NonZero", since=9)
def nonzero(ctx):
    return ctx.b.nn.nonzero(ctx.x(0))


@converter("Unique", since=11)
def unique(ctx):
    return list(ctx.b.nn.unique(ctx.x(0), axis=ctx.attr("axis", None), sorted=bool(ctx.attr("sorted", 1))))


def _topk(ctx, k, kv):
    at = {"axis": ctx.attr("axis", -1), "largest": bool(ctx.attr("largest", 1)), "sorted": bool(ctx.attr("sorted", 1))}
    if k is not None:
        return list(ctx.b.nn.topk(ctx.x(0), k=k, **at))
    return list(ctx.b.nn.topk_dyn(ctx.x(0), kv, **at))


@converter("TopK", since=1)
def topk_v1(ctx):
    return _topk(ctx, ctx.attr("k"), None)


@converter("TopK", since=10)
def topk(ctx):
    k = ctx.ints(1, "K")
    if k is not None and len(k) != 1:
        raise ctx.fail(f"K must hold one element, got {k}")
    return _topk(ctx, None if k is None else k[0], _vec(ctx.b, ctx.x(1)))


# --- scatter ------------------------------------------------------------------------------------
@converter("Scatter", since=9)
def scatter(ctx):
    return ctx.b.nn.scatter_elements(ctx.x(0), ctx.x(1), ctx.x(2), axis=ctx.attr("axis", 0))


@converter("ScatterElements", since=11)
def scatter_elements(ctx):
    return ctx.b.nn.scatter_elements(ctx.x(0), ctx.x(1), ctx.x(2), axis=ctx.attr("axis", 0),
                                     reduction=ctx.attr("reduction", "none"))


@converter("ScatterND", since=11)
def scatter_nd(ctx):
    return ctx.b.nn.scatter_nd(ctx.x(0), ctx.x(1), ctx.x(2), reduction=ctx.attr("reduction", "none"))


@converter("TensorScatter", since=24)
def tensor_scatter(ctx):
    b, cache, update = ctx.b, ctx.x(0), ctx.x(1)
    r = cache.type.rank
    a = _axis(ctx, ctx.attr("axis", -2), r)
    if a == 0 or update.type.rank != r:
        raise ctx.fail(f"axis {a} must not be the batch axis, and update {update.type} needs cache's rank {r}")
    if ctx.opt(2) is not None:
        w = b.nn.unsqueeze(_i64(b, ctx.x(2)), axes=list(range(1, r)))
    else:
        w = b.constant(np.zeros((1,) * r, np.int64))
    # the write position of update[b, ..., i, ...] is write_indices[b] + i (mod the cache length)
    pos = b.nn.add(w, b.nn.unsqueeze(_iota(b, update, a), axes=[i for i in range(r) if i != a]))
    mode = ctx.attr("mode", "linear")
    if mode == "circular":
        pos = b.nn.mod(pos, _dim_value(b, cache, a))
    elif mode != "linear":
        raise ctx.fail(f"unsupported mode '{mode}'")
    return b.nn.scatter_elements(cache, b.nn.broadcast_like(pos, update), update, axis=a)


# --- resampling ---------------------------------------------------------------------------------
def _resize(ctx, x, target, target_v, is_scales, roi, roi_v, axes, **at):
    """nn.resize when target (and roi) are known and fit the input's static dims, else
    nn.resize_dyn."""
    from ckir.dialects.nn.dynamic import resize_static_attrs
    b = ctx.b
    policy = at.pop("keep_aspect_ratio_policy", "stretch")
    if target is not None and (roi is not None or roi_v is None):
        try:
            st = resize_static_attrs(x.type.shape, target, roi, axes, policy, is_scales)
        except CkirError:
            st = None
        if st is not None:
            return b.nn.resize(x, **st, **at)
    if target_v is None:
        target_v = b.constant(np.asarray(target, np.float32 if is_scales else np.int64))
    ops = [x, target_v] + ([roi_v] if roi_v is not None else [])
    return b.nn.resize_dyn(*ops, axes=axes, keep_aspect_ratio_policy=policy, **at)


def _present(ctx, i):
    """Input i unless it is absent or statically empty (Resize passes "" or an empty tensor)."""
    v = ctx.opt(i)
    if v is None or v.type.rank == 1 and v.type.shape[0] == 0:
        return None
    return v


@converter("Resize", since=10)
def resize_v10(ctx):
    scales = _known(ctx, 1)
    mode = ctx.attr("mode", "nearest")
    at = {"mode": mode, "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    return _resize(ctx, ctx.x(0), None if scales is None else [float(s) for s in scales.reshape(-1)],
                   ctx.x(1), True, None, None, None, **at)


@converter("Resize", since=11)
def resize(ctx):
    x = ctx.x(0)
    mode = ctx.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "cubic"):
        raise ctx.fail(f"unsupported mode '{mode}'")
    at = {"mode": mode,
              "coordinate_transformation_mode": ctx.attr("coordinate_transformation_mode", "half_pixel"),
              "nearest_mode": ctx.attr("nearest_mode", "round_prefer_floor"),
              "cubic_coeff_a": float(ctx.attr("cubic_coeff_a", -0.75)),
              "exclude_outside": bool(ctx.attr("exclude_outside", 0)),
              "extrapolation_value": float(ctx.attr("extrapolation_value", 0.0)),
              "antialias": bool(ctx.attr("antialias", 0)),
              "keep_aspect_ratio_policy": ctx.attr("keep_aspect_ratio_policy", "stretch")}
    if at["antialias"] and mode == "nearest":
        raise ctx.fail("antialias is not defined for nearest mode")
    axes = ctx.attr("axes", None)
    axes = None if axes is None else list(axes)
    sv, zv = _present(ctx, 2), _present(ctx, 3)
    if (sv is None) == (zv is None):
        raise ctx.fail("needs exactly one of scales and sizes")
    is_scales = sv is not None
    i = 2 if is_scales else 3
    c = _known(ctx, i)
    target = None if c is None else [float(v) if is_scales else int(v) for v in c.reshape(-1)]
    roi_v = None
    roi = None
    if at["coordinate_transformation_mode"] == "tf_crop_and_resize":
        roi_v = _present(ctx, 1)
        if roi_v is None:
            raise ctx.fail("tf_crop_and_resize needs roi")
        rc = _known(ctx, 1)
        roi = None if rc is None else [float(v) for v in rc.reshape(-1)]
    return _resize(ctx, x, target, ctx.x(i), is_scales, roi, roi_v, axes, **at)


def _upsample(ctx, scales, scales_v):
    mode = ctx.attr("mode", "nearest")
    if mode == "bilinear":
        mode = "linear"
    if mode not in ("nearest", "linear"):
        raise ctx.fail(f"unsupported mode '{mode}'")
    at = {"mode": mode, "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    return _resize(ctx, ctx.x(0), scales, scales_v, True, None, None, None, **at)


@converter("Upsample", since=7)
def upsample_v7(ctx):
    return _upsample(ctx, [float(s) for s in ctx.attr("scales")], None)


@converter("Upsample", since=9)
def upsample(ctx):
    c = _known(ctx, 1)
    return _upsample(ctx, None if c is None else [float(s) for s in c.reshape(-1)], ctx.x(1))


@converter("GridSample", since=16)
def grid_sample(ctx):
    mode = ctx.attr("mode", "bilinear" if ctx.opset < 20 else "linear")
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    if mode not in ("nearest", "linear", "cubic"):
        raise ctx.fail(f"unsupported mode '{mode}'")
    return ctx.b.nn.grid_sample(ctx.x(0), ctx.x(1), mode=mode, padding_mode=ctx.attr("padding_mode", "zeros"),
                                align_corners=bool(ctx.attr("align_corners", 0)))


def _grid_line(b, n, align):
    """The normalized pixel-center positions (f64) of an axis of n pixels: -1 + 2 i / (n - 1)
    with align_corners, else (2 i + 1) / n - 1. n is an int or an i64 scalar Value."""
    if isinstance(n, int):
        i = np.arange(n, dtype=np.float64)
        return b.constant(i * (2 / (n - 1)) - 1 if align and n > 1 else
                          np.full(n, -1.0) if align else (2 * i + 1) / n - 1)
    f = dt.f64
    i = b.nn.cast(b.nn.arange_dyn(b.constant(np.int64(0)), n, b.constant(np.int64(1))), to=f)
    nf = b.nn.cast(n, to=f)
    one, two = b.constant(np.float64(1)), b.constant(np.float64(2))
    if align:
        return b.nn.sub(b.nn.mul(i, b.nn.div(two, b.nn.sub(nf, one))), one)
    return b.nn.sub(b.nn.div(b.nn.add(b.nn.mul(i, two), one), nf), one)


@converter("AffineGrid", since=20)
def affine_grid(ctx):
    b, theta = ctx.b, ctx.x(0)
    align = bool(ctx.attr("align_corners", 0))
    size = ctx.ints(1, "size")
    r = theta.type.shape[1]
    if theta.type.rank != 3 or r not in (2, 3) or theta.type.shape[2] != r + 1:
        raise ctx.fail(f"theta must be (N, 2, 3) or (N, 3, 4), got {theta.type}")
    if size is not None:
        if len(size) != r + 2:
            raise ctx.fail(f"size has {len(size)} entries; theta {theta.type} needs {r + 2}")
        dims = list(size[2:])
    else:
        sv = _vec(b, ctx.x(1))
        dims = [b.nn.reshape(b.nn.slice(sv, starts=[2 + i], ends=[3 + i]), shape=[]) for i in range(r)]
    # grid[..., j] over the spatial dims (d1, ..., dr): coordinate j runs along dim r - 1 - j
    lines = [_grid_line(b, dims[r - 1 - j], align) for j in range(r)]
    cols = [b.nn.unsqueeze(line, axes=[k for k in range(r + 1) if k != r - 1 - j]) for j, line in enumerate(lines)]
    cols.append(b.constant(np.ones((1,) * (r + 1), np.float64)))
    if size is not None:
        cols = [b.nn.expand(c, shape=dims + [1]) for c in cols]
    else:
        grid_shape = b.nn.concat([b.nn.reshape(d, shape=[1]) for d in dims] + [_const_vec(b, [1])], axis=0)
        cols = [b.nn.expand_dyn(c, grid_shape) for c in cols]
    base = b.nn.concat(cols, axis=r)                        # (d1, ..., dr, r + 1): x, y, (z,) 1
    flat = b.nn.reshape(base, shape=[-1, r + 1])
    # grid[n, p, i] = sum_j base[p, j] * theta[n, i, j]
    t = b.nn.cast(theta, to=dt.f64) if theta.type.dtype is not dt.f64 else theta
    g = b.nn.matmul(b.nn.unsqueeze(flat, axes=[0]), t, transpose_b=True)             # (N, P, r)
    g = g if g.type.dtype is theta.type.dtype else b.nn.cast(g, to=theta.type.dtype)
    if size is not None:
        return b.nn.reshape(g, shape=[theta.type.shape[0] if type(theta.type.shape[0]) is int or
                                      theta.type.shape[0].name else -1] + list(size[2:]) + [r])
    shape = b.nn.concat([b.nn.shape(theta, start=0, end=1)] + [b.nn.reshape(d, shape=[1]) for d in dims]
                        + [_const_vec(b, [r])], axis=0)
    return b.nn.reshape_dyn(g, shape)


@converter("Col2Im", since=18)
def col2im(ctx):
    from ckir.dialects.nn.dynamic import col2im_static
    b, x = ctx.b, ctx.x(0)
    image, block = ctx.ints(1, "image_shape"), ctx.ints(2, "block_shape")
    at = {"dilations": ctx.attr("dilations", None), "pads": ctx.attr("pads", None), "strides": ctx.attr("strides", None)}
    at = {k: None if v is None else list(v) for k, v in at.items()}
    if image is not None and block is not None:
        y = col2im_static(b, x, image, block, **at)
        if y is not None:
            return y
    return b.nn.col2im_dyn(x, _vec(b, ctx.x(1)), _vec(b, ctx.x(2)), **at)
