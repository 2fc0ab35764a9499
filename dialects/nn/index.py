"""Indexing: element-wise gather/scatter along an axis, N-d gather/scatter, top-k, nonzero,
unique.

Indices are i32 or i64; a negative index counts from the end of its axis; an index out of range
is an error naming it, never a read or write out of bounds. Scatter reductions: "none"
(assignment; with repeated indices the last update in row-major order wins), "add", "mul",
"max", "min"; f16/bf16 accumulate in f32.
"""
from __future__ import annotations

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
from ckir.types import TensorType, fmt_shape

from ._util import norm_axis, numel, same_dtype, wide

INDEX = (dt.i32, dt.i64)
REDUCTIONS = ("none", "add", "mul", "max", "min")
_UFUNC = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}
REDUCTION = Attr("reduction", "str", "none", choices=REDUCTIONS,
                 doc="how an update combines with the element: replace it, or add/mul/max/min")


def _checked(idx, n, what):
    """Indices made non-negative after checking they are in [-n, n)."""
    idx = idx.astype(np.int64)
    bad = (idx < -n) | (idx >= n)
    if bad.any():
        raise CkirError(f"{what} {int(idx[bad][0])} is out of range for size {n}")
    return np.where(idx < 0, idx + n, idx)


def _dims_fit(small, big, skip, what):
    """Each dim of `small` (but `skip`) is at most the same dim of `big` where both are known."""
    for i, (s, d) in enumerate(zip(small.shape, big.shape)):
        if i != skip and type(s) is int and type(d) is int and s > d:
            raise ShapeError(f"{what} has size {s} in dim {i}, above x's {d}")


def _zeros_like(b, v):
    return b.nn.broadcast_like(b.constant(0, v.type.dtype.np), v)


def _scatter(y, where, updates, reduction):
    """y[where] (reduction)= updates, in place; `where` is a numpy index tuple."""
    if reduction == "none":
        y[where] = updates     # numpy assigns repeated positions in order: the last one wins
    else:
        _UFUNC[reduction].at(y, where, updates)


def _scatter_vjp(b, op, g, gather, scatter):
    """Gradients of a scatter y = scatter(x, idx, u, reduction), given `gather(t)` (read t at
    the indices, shaped like u) and `scatter(t, u, reduction)` (with the same indices)."""
    x, _, u = op.operands
    if g is None or not x.type.dtype.is_float:
        return [None, None, None]
    red = op.attrs["reduction"]
    zero = b.constant(0, g.type.dtype.np)
    if red == "add":
        return [g, None, gather(g)]
    if red == "none":
        # x keeps the gradient where nothing was written; only the update that won a position
        # (the last one) gets its gradient
        n = b.nn.size(u)
        iota = b.nn.reshape_like(b.nn.arange_dyn(b.constant(np.int64(0)), n, b.constant(np.int64(1))), u)
        owner = scatter(b.nn.broadcast_like(b.constant(np.int64(-1)), x), iota, "none")
        won = b.nn.eq(gather(owner), iota)
        return [scatter(g, _zeros_like(b, u), "none"), None, b.nn.where(won, gather(g), zero)]
    y = op.results[0]
    if red == "mul":
        # y = x * prod(updates at the position): d/dx = that product; d/du_j = g x prod(others),
        # the product of the others taken without dividing by u_j (exact when u_j = 0)
        gx = scatter(g, u, "mul")
        is0 = b.nn.eq(u, zero)
        ones = b.nn.broadcast_like(b.constant(1, g.type.dtype.np), x)
        zeros_at = scatter(_zeros_like(b, x), b.nn.cast(is0, to=g.type.dtype), "add")
        nonzero_prod = scatter(ones, b.nn.where(is0, b.constant(1, g.type.dtype.np), u), "mul")
        zc, pn = gather(zeros_at), gather(nonzero_prod)
        others = b.nn.where(is0, b.nn.where(b.nn.eq(zc, b.constant(1, g.type.dtype.np)), pn, zero),
                            b.nn.where(b.nn.eq(zc, zero), b.nn.div(pn, b.nn.where(is0, b.constant(1, g.type.dtype.np), u)), zero))
        return [gx, None, b.nn.mul(b.nn.mul(gather(g), gather(x)), others)]
    # max / min: the gradient goes to the elements equal to the result, split evenly among ties
    x_hit = b.nn.cast(b.nn.eq(x, y), to=g.type.dtype)
    u_hit = b.nn.cast(b.nn.eq(u, gather(y)), to=g.type.dtype)
    count = scatter(x_hit, u_hit, "add")
    share = b.nn.div(g, count)
    return [b.nn.mul(share, x_hit), None, b.nn.mul(gather(share), u_hit)]


def _scatter_cost(op, bind):
    x, idx, u = (v.type for v in op.operands)
    return Cost(numel(u, bind), x.nbytes(bind) + idx.nbytes(bind) + u.nbytes(bind), x.nbytes(bind))


# --- gather_elements / scatter_elements ---------------------------------------------------------
def _elements_index(x_shape, indices, a):
    """The numpy index tuple addressing x at `indices` along axis a (other axes: positions)."""
    idx = _checked(indices, x_shape[a], f"index along axis {a}")
    grid = list(np.indices(indices.shape, sparse=True))
    grid[a] = idx
    return tuple(grid)


@declare
class gather_elements:
    """ONNX GatherElements / torch.gather: y[i0, ..., in] = x[i0, ..., indices[i0, ..., in], ...,
    in] with the index replacing position `axis`. indices has x's rank; its dims other than
    `axis` are at most x's; the result has indices' shape."""
    name = "nn.gather_elements"
    operands = (Operand("x", ANY), Operand("indices", INDEX))
    attrs = (Attr("axis", "int", 0),)
    traits = {"pure"}
    examples = (Ex("f32[3,4]", np.array([[0, 3, -1], [2, 2, 0]], np.int64), axis=1),
                Ex("f32[3,2,2]", np.array([[[2, 0]], [[-3, 1]]], np.int32), axis=0),
                Ex("i64[5]", np.array([4, 0, 0], np.int64), axis=-1))

    def infer(x, indices, *, axis):
        a = norm_axis(axis, x.rank)
        if indices.rank != x.rank:
            raise ShapeError(f"indices is {indices}, want rank {x.rank} like x {x}")
        _dims_fit(indices, x, a, "indices")
        return x.with_shape(indices.shape)

    def ref(x, indices, *, axis):
        a = norm_axis(axis, x.ndim)
        if any(i > d for k, (i, d) in enumerate(zip(indices.shape, x.shape)) if k != a):
            raise ShapeError(f"indices shape {list(indices.shape)} exceeds x shape {list(x.shape)}")
        return x[_elements_index(x.shape, indices, a)]

    def vjp(b, op, g):
        if g is None:
            return [None, None]
        x, idx = op.operands
        return [b.nn.scatter_elements(_zeros_like(b, x), idx, g, axis=op.attrs["axis"], reduction="add"), None]

    def cost(op, bind):
        y = op.results[0].type.nbytes(bind)
        return Cost(0, op.operands[1].type.nbytes(bind) + y, y)


@declare
class scatter_elements:
    """ONNX ScatterElements / torch.scatter(_reduce): y = x, then for every position p of
    `indices`: y[p with p[axis] replaced by indices[p]] (reduction)= updates[p]. indices and
    updates have the same shape, of x's rank, at most x's size in the dims other than `axis`."""
    name = "nn.scatter_elements"
    operands = (Operand("x", NUMERIC), Operand("indices", INDEX), Operand("updates", NUMERIC))
    attrs = (Attr("axis", "int", 0), REDUCTION)
    traits = {"pure", "inplace"}
    cost = _scatter_cost
    examples = (Ex("f32[3,3]", np.array([[1, 0, 2], [0, 2, 1]], np.int64), "f32[2,3]"),
                Ex("f32[1,5]", np.array([[1, -2, 1]], np.int32), "f32[1,3]", axis=1, reduction="add"),
                Ex(np.array([[1.5, -2.0, 3.0, 0.5]]), np.array([[1, 3, 1]], np.int64),
                   np.array([[2.0, -0.5, 1.25]]), axis=1, reduction="mul"),
                Ex(np.array([[0.1, 0.7, -0.3, 0.2]]), np.array([[2, 0, 2]], np.int64),
                   np.array([[0.5, -0.2, -0.9]]), axis=1, reduction="max"),
                Ex(np.array([[0.1, 0.7, -0.3, 0.2]]), np.array([[3, 3, 1]], np.int64),
                   np.array([[0.5, -0.2, 0.9]]), axis=1, reduction="min"),
                Ex("i32[4]", np.array([3, 3], np.int64), "i32[2]"))

    def infer(x, indices, updates, *, axis, reduction):
        same_dtype(x, updates)
        a = norm_axis(axis, x.rank)
        if indices.rank != x.rank:
            raise ShapeError(f"indices is {indices}, want rank {x.rank} like x {x}")
        if updates.rank != indices.rank or any(type(u) is int and type(i) is int and u != i
                                               for u, i in zip(updates.shape, indices.shape)):
            raise ShapeError(f"updates {updates} must have the shape of indices {indices}")
        _dims_fit(indices, x, a, "indices")
        return x

    def ref(x, indices, updates, *, axis, reduction):
        a = norm_axis(axis, x.ndim)
        if updates.shape != indices.shape:
            raise ShapeError(f"updates have shape {list(updates.shape)}, indices {list(indices.shape)}")
        if any(i > d for k, (i, d) in enumerate(zip(indices.shape, x.shape)) if k != a):
            raise ShapeError(f"indices shape {list(indices.shape)} exceeds x shape {list(x.shape)}")
        y = wide(x).copy()
        _scatter(y, _elements_index(x.shape, indices, a), wide(updates), reduction)
        return y.astype(x.dtype, copy=False)

    def vjp(b, op, g):
        idx = op.operands[1]
        a = op.attrs["axis"]
        return _scatter_vjp(b, op, g, lambda t: b.nn.gather_elements(t, idx, axis=a),
                            lambda t, u, r: b.nn.scatter_elements(t, idx, u, axis=a, reduction=r))


# --- gather_nd / scatter_nd ---------------------------------------------------------------------
def _nd_types(x, indices, batch_dims, what):
    """(k, the shape that updates / the gathered result have) for N-d indexing."""
    if indices.rank < 1:
        raise ShapeError(f"indices must have rank >= 1, got {indices}")
    if not 0 <= batch_dims < min(x.rank, indices.rank):
        raise ShapeError(f"batch_dims {batch_dims} must be below the ranks of x {x} and indices {indices}")
    k = indices.shape[-1]
    if type(k) is not int:
        raise ShapeError(f"the last dim of indices {indices} must be static")
    if batch_dims + k > x.rank:
        raise ShapeError(f"indices {indices} address {k} dims after {batch_dims} batch dims; x {x} has {x.rank}")
    for i in range(batch_dims):
        a, c = x.shape[i], indices.shape[i]
        if type(a) is int and type(c) is int and a != c:
            raise ShapeError(f"batch dim {i}: x has {a}, indices {c}")
    return k, tuple(indices.shape[:-1]) + tuple(x.shape[batch_dims + k:])


def _nd_index(x_shape, indices, batch_dims):
    """The numpy index tuple addressing x at N-d `indices` (shape [*batch, *q, k])."""
    k = indices.shape[-1]
    lead = indices.shape[:-1]
    parts = []
    for i in range(batch_dims):
        shape = [1] * len(lead)
        shape[i] = lead[i]
        parts.append(np.arange(lead[i]).reshape(shape))
    for j in range(k):
        a = batch_dims + j
        parts.append(_checked(indices[..., j], x_shape[a], f"index for dim {a}"))
    return tuple(parts)


def _unit_index(x, indices, batch_dims):
    """Empty index tuples (k = 0) address all of x[b]: numpy would drop the q dims for them,
    so index a unit dim inserted after the batch dims instead (k = 1, always 0)."""
    if indices.shape[-1]:
        return x, indices
    return (x.reshape(x.shape[:batch_dims] + (1,) + x.shape[batch_dims:]),
            np.zeros(indices.shape[:-1] + (1,), indices.dtype))


def _check_batch(x, indices, batch_dims):
    if x.shape[:batch_dims] != indices.shape[:batch_dims]:
        raise ShapeError(f"batch dims differ: x {list(x.shape)}, indices {list(indices.shape)}")


@declare
class gather_nd:
    """ONNX GatherND: indices has shape [*B, *Q, k] where B are the first `batch_dims` dims
    (equal to x's); each k-tuple indexes dims batch_dims .. batch_dims+k-1 of x (within the same
    batch entry). The result has shape [*B, *Q, *x.shape[batch_dims + k:]]."""
    name = "nn.gather_nd"
    operands = (Operand("x", ANY), Operand("indices", INDEX))
    attrs = (Attr("batch_dims", "int", 0),)
    traits = {"pure"}
    examples = (Ex("f32[2,3]", np.array([[0, 2], [1, -1]], np.int64)),
                Ex("f32[2,3,4]", np.array([[[1]], [[0]]], np.int32)),
                Ex("f32[2,3,4]", np.array([[2, 1], [0, -4]], np.int64), batch_dims=1),
                Ex("i32[2,2,2]", np.array([[1, 0, 1]], np.int64)),
                Ex("f32[2,3]", np.zeros((4, 0), np.int64)),
                Ex("f32[2,3,2]", np.zeros((2, 3, 0), np.int64), batch_dims=1))

    def infer(x, indices, *, batch_dims):
        return x.with_shape(_nd_types(x, indices, batch_dims, "indices")[1])

    def ref(x, indices, *, batch_dims):
        _check_batch(x, indices, batch_dims)
        xk, ik = _unit_index(x, indices, batch_dims)
        return np.asarray(xk[_nd_index(xk.shape, ik, batch_dims)])

    def vjp(b, op, g):
        if g is None:
            return [None, None]
        x, idx = op.operands
        return [b.nn.scatter_nd(_zeros_like(b, x), idx, g, reduction="add",
                                batch_dims=op.attrs["batch_dims"]), None]

    def cost(op, bind):
        y = op.results[0].type.nbytes(bind)
        return Cost(0, op.operands[1].type.nbytes(bind) + y, y)


@declare
class scatter_nd:
    """ONNX ScatterND (with gather_nd's `batch_dims` as an extension; ONNX has 0): y = x, then
    for every position q of indices[..., :] (shape [*B, *Q, k]):
    y[b, indices[b, q]] (reduction)= updates[b, q], where updates has shape
    [*B, *Q, *x.shape[batch_dims + k:]]."""
    name = "nn.scatter_nd"
    operands = (Operand("x", NUMERIC), Operand("indices", INDEX), Operand("updates", NUMERIC))
    attrs = (REDUCTION, Attr("batch_dims", "int", 0))
    traits = {"pure", "inplace"}
    cost = _scatter_cost
    examples = (Ex("f32[4,3]", np.array([[1], [3]], np.int64), "f32[2,3]"),
                Ex("f32[2,3]", np.array([[0, 2], [1, -1], [0, 2]], np.int32), "f32[3]", reduction="add"),
                Ex(np.array([[1.5, -2.0], [3.0, 0.5]]), np.array([[0, 1], [1, 0], [0, 1]], np.int64),
                   np.array([2.0, -0.5, 1.25]), reduction="mul"),
                Ex(np.array([[0.1, 0.7], [-0.3, 0.2]]), np.array([[1, 1], [0, 0]], np.int64),
                   np.array([0.5, -0.2]), reduction="max"),
                Ex(np.array([[0.1, 0.7], [-0.3, 0.2]]), np.array([[0, 1], [1, 0]], np.int64),
                   np.array([0.5, -0.9]), reduction="min"),
                Ex("f32[2,3,4]", np.array([[2], [0]], np.int64), "f32[2,4]", batch_dims=1),
                Ex("f32[2,3]", np.zeros((1, 0), np.int64), "f32[1,2,3]", reduction="add"))

    def infer(x, indices, updates, *, reduction, batch_dims):
        same_dtype(x, updates)
        want = _nd_types(x, indices, batch_dims, "indices")[1]
        if updates.rank != len(want) or any(type(u) is int and type(w) is int and u != w
                                            for u, w in zip(updates.shape, want)):
            raise ShapeError(f"updates is {updates}, want shape {fmt_shape(want)}")
        return x

    def ref(x, indices, updates, *, reduction, batch_dims):
        _check_batch(x, indices, batch_dims)
        k = indices.shape[-1]
        want = indices.shape[:-1] + x.shape[batch_dims + k:]
        if updates.shape != want:
            raise ShapeError(f"updates have shape {list(updates.shape)}, want {list(want)}")
        y, ik = _unit_index(wide(x).copy(), indices, batch_dims)
        _scatter(y, _nd_index(y.shape, ik, batch_dims), wide(updates), reduction)
        return y.reshape(x.shape).astype(x.dtype, copy=False)

    def vjp(b, op, g):
        idx = op.operands[1]
        bd = op.attrs["batch_dims"]
        return _scatter_vjp(b, op, g, lambda t: b.nn.gather_nd(t, idx, batch_dims=bd),
                            lambda t, u, r: b.nn.scatter_nd(t, idx, u, reduction=r, batch_dims=bd))


# --- topk ---------------------------------------------------------------------------------------
def topk_ref(x, k, axis, largest):
    a = norm_axis(axis, x.ndim)
    n = x.shape[a]
    if not 0 <= k <= n:
        raise ShapeError(f"k = {k} is out of range for axis {a} of size {n}")
    pos = np.indices(x.shape, sparse=True)[a] + np.zeros(x.shape, np.int64)
    # sort by value, ties by position: lexsort's last key is the primary one
    order = np.lexsort((-pos, x), axis=a) if largest else np.lexsort((pos, x), axis=a)
    if largest:
        order = np.flip(order, axis=a)
    idx = np.take(order, np.arange(k), axis=a).astype(np.int64)
    return np.take_along_axis(x, idx, axis=a), idx


def topk_infer(x, axis, k):
    a = norm_axis(axis, x.rank)
    d = x.shape[a]
    if type(k) is int and type(d) is int and k > d:
        raise ShapeError(f"k = {k} exceeds axis {a} of {x}")
    shape = x.shape[:a] + (k,) + x.shape[a + 1:]
    return x.with_shape(shape), TensorType(shape, dt.i64)


def topk_vjp(b, op, g, *_):
    x = op.operands[0]
    if g is None or not x.type.dtype.is_float:
        return [None] * len(op.operands)
    gx = b.nn.scatter_elements(_zeros_like(b, x), op.results[1], g, axis=op.attrs["axis"], reduction="add")
    return [gx] + [None] * (len(op.operands) - 1)


TOPK_ATTRS = (Attr("axis", "int", -1), Attr("largest", "bool", True, doc="the largest (else smallest) k"),
              Attr("sorted", "bool", True, doc="accepted for ONNX; results are always sorted"))
TOPK_DOC = """ONNX TopK: the k largest (or smallest) elements along `axis` and their i64 positions,
    sorted by value (descending for largest), equal values in increasing position order; NaN counts
    as larger than every number. `sorted` = false allows any order in ONNX; this op always
    sorts."""


@declare
class topk:
    __doc__ = TOPK_DOC + " k is static, 0 <= k <= the axis size."
    name = "nn.topk"
    operands = (Operand("x", NUMERIC),)
    results = (Result("values"), Result("indices"))
    attrs = (Attr("k", "int"),) + TOPK_ATTRS
    traits = {"pure"}
    examples = (Ex("f32[3,5]", k=2), Ex("f32[4,3]", k=3, axis=0, largest=False),
                Ex(np.array([[3, 1, 3, 2], [0, 0, 5, 5]], np.int32), k=3),
                Ex(np.array([4, 4, 2, 4], np.int64), k=2, largest=False), Ex("f32[2,3]", k=0))

    def infer(x, *, k, axis, largest, sorted):
        if k < 0:
            raise ShapeError(f"k must be >= 0, got {k}")
        return topk_infer(x, axis, k)

    def ref(x, *, k, axis, largest, sorted):
        return topk_ref(x, k, axis, largest)

    vjp = topk_vjp

    def cost(op, bind):
        x = op.operands[0].type
        n = numel(x, bind)
        return Cost(n * max(1, int(np.log2(max(n, 2)))), x.nbytes(bind),
                    sum(r.type.nbytes(bind) for r in op.results))


# --- nonzero / unique ---------------------------------------------------------------------------
@declare
class nonzero:
    """ONNX NonZero: the positions of the nonzero (true) elements of x in row-major order, as an
    i64 tensor [rank, count] (column j is the index tuple of the j-th nonzero element). count is
    `?`. A scalar gives [0, 1] or [0, 0]."""
    name = "nn.nonzero"
    operands = (Operand("x", ANY),)
    traits = {"pure"}
    vjp = not_differentiable("integer positions")
    examples = (Ex("bool[3,4]"), Ex(np.array([0.0, 1.5, 0.0, -2.0], np.float32)), Ex("i32[2,2,2]"),
                Ex(np.array(3, np.int64)))

    def infer(x):
        return TensorType((x.rank, ANYDIM), dt.i64)

    def ref(x):
        if x.ndim == 0:
            return np.zeros((0, int(x != 0)), np.int64)
        return np.asarray(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)

    def cost(op, bind):
        x = op.operands[0].type
        return Cost(numel(x, bind), x.nbytes(bind), op.results[0].type.nbytes(bind))


@declare
class unique:
    """ONNX Unique: the distinct elements of x (flattened when `axis` is absent) or the distinct
    slices of x along `axis`, with i64 `indices` (position of each one's first occurrence),
    `inverse` (for each element / slice of x, its position in y) and `counts`. Sorted ascending
    (slices lexicographically) when `sorted`, else in order of first occurrence. NaNs are equal to
    each other. Sizes that depend on the values are `?`."""
    name = "nn.unique"
    operands = (Operand("x", NUMERIC),)
    results = (Result("y"), Result("indices"), Result("inverse"), Result("counts"))
    attrs = (Attr("axis", "int", None), Attr("sorted", "bool", True))
    traits = {"pure"}
    vjp = not_differentiable("selects elements by equality: not continuous where elements are equal")
    examples = (Ex(np.array([2, 1, 1, 3, 4, 3], np.int64), sorted=False),
                Ex(np.array([[1, 3], [2, 3]], np.float32)),
                Ex(np.array([[1, 0, 0], [1, 0, 0], [2, 3, 4]], np.int32), axis=0),
                Ex(np.array([[[1., 1.], [0., 1.], [2., 1.], [0., 1.]]] * 2, np.float32), axis=-2, sorted=False))

    def infer(x, *, axis, sorted):
        i64 = dt.i64
        if axis is None:
            n = x.numel if x.is_static else ANYDIM
            y = x.with_shape([ANYDIM])
        else:
            a = norm_axis(axis, x.rank)
            n = x.shape[a]
            y = x.with_shape(x.shape[:a] + (ANYDIM,) + x.shape[a + 1:])
        return y, TensorType([ANYDIM], i64), TensorType([n], i64), TensorType([ANYDIM], i64)

    def ref(x, *, axis, sorted):
        a = None if axis is None else norm_axis(axis, x.ndim)
        y, first, inverse, counts = np.unique(x, True, True, True, axis=a)
        inverse = inverse.reshape(-1)
        if not sorted:
            order = np.argsort(first, kind="stable")
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order))
            first, counts, inverse = first[order], counts[order], rank[inverse]
            y = np.take(x.reshape(-1) if a is None else x, first, axis=0 if a is None else a)
        return (np.asarray(y, x.dtype), first.astype(np.int64), inverse.astype(np.int64),
                counts.astype(np.int64))

    def cost(op, bind):
        x = op.operands[0].type
        n = numel(x, bind)
        return Cost(n * max(1, int(np.log2(max(n, 2)))), x.nbytes(bind),
                    sum(r.type.nbytes(bind) for r in op.results))
