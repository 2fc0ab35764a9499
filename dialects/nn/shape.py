"""Shape ops that every gradient rule needs: reshape, transpose, unsqueeze, squeeze, expand,
broadcast_like, size."""
from __future__ import annotations

import math

import numpy as np

from ckir import dtypes as dt
from ckir.errors import ShapeError
from ckir.opdef import ANY, FLOAT, Attr, Cost, Ex, Operand, declare, not_differentiable
from ckir.types import ANY as ANYDIM
from ckir.types import TensorType, broadcast_shapes, fmt_shape, with_bounds

from ._util import data_movement_cost, norm_axes, numel, unbroadcast, view_cost


def _sym_counts(dims):
    """(product of static dims, sorted names of symbolic dims, any anonymous dims)."""
    static, names, anon = 1, [], False
    for d in dims:
        if type(d) is int:
            static *= d
        elif d.name is None:
            anon = True
        else:
            names.append(d.name)
    return static, sorted(names), anon


def _one_more_sym(xdims, xs, xn, xa, ss, sn):
    """The -1 of a reshape when x has exactly one named dim more than the known sizes and the
    same static product (e.g. [seq, 256] to [-1, 4, 64] gives seq), else `?`."""
    if xa or not ss or xs != ss or len(xn) != len(sn) + 1:
        return ANYDIM
    rest = list(xn)
    for n in sn:
        if n not in rest:
            return ANYDIM
        rest.remove(n)
    return next(d for d in xdims if type(d) is not int and d.name == rest[0])


@declare
class reshape:
    """Same elements, new shape. `shape` holds sizes, symbolic dim names, and at most one -1
    (inferred from the element count)."""
    name = "nn.reshape"
    operands = (Operand("x", ANY),)
    attrs = (Attr("shape", "shape"),)
    traits = {"pure", "view"}
    cost = view_cost
    examples = (Ex("f32[2,3,4]", shape=[6, 4]), Ex("f32[2,3,4]", shape=[-1]),
                Ex("f32[6]", shape=[2, -1, 1]), Ex("i64[4]", shape=[2, 2]), Ex("f32[1]", shape=[]))

    def infer(x, *, shape):
        shape = with_bounds(shape, x)
        if sum(1 for d in shape if d == -1) > 1:
            raise ShapeError(f"shape {fmt_shape(shape)} has more than one -1")
        xs, xn, xa = _sym_counts(x.shape)
        known = [d for d in shape if d != -1]
        ss, sn, _ = _sym_counts(known)
        same_syms = not xa and xn == sn
        out = []
        for d in shape:
            if d == -1:
                if same_syms and ss and xs % ss == 0:
                    d = xs // ss
                elif same_syms and ss:
                    raise ShapeError(f"cannot reshape {x} to {fmt_shape(shape)}")
                elif same_syms and xs == 0:
                    raise ShapeError(f"-1 is ambiguous when reshaping an empty {x}")
                else:
                    d = _one_more_sym(x.shape, xs, xn, xa, ss, sn)
            out.append(d)
        if -1 not in shape and same_syms and xs != ss:
            raise ShapeError(f"cannot reshape {x} to {fmt_shape(shape)}: the sizes differ")
        return x.with_shape(out)

    def ref(x, *, shape):
        try:
            return x.reshape(shape)
        except ValueError:
            raise ShapeError(f"cannot reshape an array of shape {list(x.shape)} to {list(shape)}") from None

    def vjp(b, op, g):
        if g is None:
            return [None]
        x = op.operands[0]
        return [b.nn.reshape_like(g, x)]


@declare
class reshape_like:
    """Reshape `x` to the shape of `like` (only `like`'s shape is read). Gradient rules use it
    where a shape is only known at run time."""
    name = "nn.reshape_like"
    operands = (Operand("x", ANY), Operand("like", ANY))
    traits = {"pure", "view"}
    cost = view_cost
    examples = (Ex("f32[6]", "f32[2,3]"), Ex("f32[2,3,4]", "i32[4,6]"))

    def infer(x, like):
        xs, xn, xa = _sym_counts(x.shape)
        ls, ln, la = _sym_counts(like.shape)
        if not xa and not la and xn == ln and xs != ls:
            raise ShapeError(f"cannot reshape {x} to the shape of {like}")
        return x.with_shape(like.shape)

    def ref(x, like):
        if x.size != like.size:
            raise ShapeError(f"cannot reshape {list(x.shape)} to {list(like.shape)}")
        return x.reshape(like.shape)

    def vjp(b, op, g):
        if g is None:
            return [None, None]
        return [b.nn.reshape_like(g, op.operands[0]), None]


def _perm(perm, rank):
    p = tuple(reversed(range(rank))) if perm is None else tuple(perm)
    if sorted(p) != list(range(rank)):
        raise ShapeError(f"perm {list(p)} is not a permutation of {rank} axes")
    return p


@declare
class transpose:
    """Permute axes: result dim i is input dim perm[i]. No perm reverses the axes."""
    name = "nn.transpose"
    operands = (Operand("x", ANY),)
    attrs = (Attr("perm", "ints", None),)
    traits = {"pure"}
    cost = data_movement_cost
    examples = (Ex("f32[2,3]"), Ex("f32[2,3,4]", perm=[1, 0, 2]), Ex("f32[2,3,4,5]", perm=[0, 2, 3, 1]),
                Ex("f32[]"))

    def infer(x, *, perm):
        p = _perm(perm, x.rank)
        return x.with_shape([x.shape[i] for i in p])

    def ref(x, *, perm):
        return np.array(np.transpose(x, _perm(perm, x.ndim)), order="C")   # ascontiguousarray makes 0-d 1-d

    def vjp(b, op, g):
        if g is None:
            return [None]
        p = _perm(op.attrs["perm"], op.operands[0].type.rank)
        return [b.nn.transpose(g, perm=list(np.argsort(p)))]


def _unsq_axes(axes, rank_out):
    return norm_axes(axes, rank_out)


@declare
class unsqueeze:
    """Insert size-1 dims; `axes` index the result."""
    name = "nn.unsqueeze"
    operands = (Operand("x", ANY),)
    attrs = (Attr("axes", "ints"),)
    traits = {"pure", "view"}
    cost = view_cost
    examples = (Ex("f32[3]", axes=[0]), Ex("f32[2,3]", axes=[1, -1]), Ex("f32[]", axes=[0]))

    def infer(x, *, axes):
        rank = x.rank + len(axes)
        ax = _unsq_axes(axes, rank)
        it = iter(x.shape)
        return x.with_shape([1 if i in ax else next(it) for i in range(rank)])

    def ref(x, *, axes):
        return np.expand_dims(x, _unsq_axes(axes, x.ndim + len(axes)))

    def vjp(b, op, g):
        if g is None:
            return [None]
        return [b.nn.squeeze(g, axes=list(op.attrs["axes"]))]


@declare
class squeeze:
    """Remove size-1 dims at `axes` (all static size-1 dims when absent)."""
    name = "nn.squeeze"
    operands = (Operand("x", ANY),)
    attrs = (Attr("axes", "ints", None),)
    traits = {"pure", "view"}
    cost = view_cost
    examples = (Ex("f32[1,3,1]"), Ex("f32[2,1,3]", axes=[1]), Ex("f32[1]", axes=[-1]))

    def infer(x, *, axes):
        if axes is None:
            ax = tuple(i for i, d in enumerate(x.shape) if d == 1)
        else:
            ax = norm_axes(axes, x.rank)
            for a in ax:
                if type(x.shape[a]) is int and x.shape[a] != 1:
                    raise ShapeError(f"cannot squeeze axis {a} of {x}: its size is {x.shape[a]}")
        return x.with_shape([d for i, d in enumerate(x.shape) if i not in ax])

    def ref(x, *, axes):
        if axes is None:
            return np.squeeze(x)
        ax = norm_axes(axes, x.ndim)
        if any(x.shape[a] != 1 for a in ax):
            raise ShapeError(f"cannot squeeze axes {list(ax)} of shape {list(x.shape)}")
        return np.squeeze(x, ax)

    def vjp(b, op, g):
        if g is None:
            return [None]
        return [b.nn.reshape_like(g, op.operands[0])]


@declare
class expand:
    """Broadcast to `shape` (ONNX Expand: the result is x's shape and `shape` broadcast
    together)."""
    name = "nn.expand"
    operands = (Operand("x", ANY),)
    attrs = (Attr("shape", "shape"),)
    traits = {"pure", "broadcasting"}
    cost = data_movement_cost
    examples = (Ex("f32[3,1]", shape=[3, 4]), Ex("f32[3]", shape=[2, 1, 3]), Ex("f32[2,1]", shape=[1, 5]))

    def infer(x, *, shape):
        if any(d == -1 for d in shape):
            raise ShapeError("expand shapes cannot hold -1")
        return x.with_shape(broadcast_shapes(x.shape, with_bounds(shape, x)))

    def ref(x, *, shape):
        return np.array(np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(shape))), order="C")

    def vjp(b, op, g):
        if g is None:
            return [None]
        return [unbroadcast(b, g, op.operands[0])]


@declare
class broadcast_like:
    """Broadcast `x` to the shape of `like` (only its shape is read)."""
    name = "nn.broadcast_like"
    operands = (Operand("x", ANY), Operand("like", ANY))
    traits = {"pure", "broadcasting"}
    cost = data_movement_cost
    examples = (Ex("f32[3,1]", "f32[3,4]"), Ex("f32[]", "i64[2,2]"), Ex("f32[4]", "f32[2,3,4]"),
                Ex("f32[]", "f32[]"))

    def infer(x, like):
        out = broadcast_shapes(x.shape, like.shape)
        if len(out) != like.rank:
            raise ShapeError(f"{x} has more dims than {like}")
        for o, d in zip(out, like.shape):
            if type(o) is int and type(d) is int and o != d:
                raise ShapeError(f"cannot broadcast {x} to the shape of {like}")
        return x.with_shape(like.shape)

    def ref(x, like):
        return np.array(np.broadcast_to(x, like.shape), order="C")

    def vjp(b, op, g):
        if g is None:
            return [None, None]
        return [unbroadcast(b, g, op.operands[0]), None]


@declare
class sum_to_like:
    """The reverse of broadcasting: `g` summed down to the shape of `like` (only its shape is
    read), over g's leading extra dims and over every axis where like has size 1 and g does not,
    decided at run time. It is how a gradient goes back to an operand whose dims are not all
    known statically (a `[d]` that is 1 in one call and 3 in the next). Sums of f16/bf16 run in
    f32 and round once."""
    name = "nn.sum_to_like"
    operands = (Operand("g", FLOAT), Operand("like", ANY))
    traits = {"pure", "reduction"}
    examples = (Ex("f32[2,3]", "f32[1,3]"), Ex("f64[4,2,3]", "f64[3]"), Ex("f32[2,3]", "i64[2,1]"),
                Ex("f64[3]", "f64[3]"), Ex("f16[2,5]", "f16[5]"))

    def infer(g, like):
        if like.rank > g.rank:
            raise ShapeError(f"{like} has more dims than {g}")
        for d, e in zip(like.shape, g.shape[g.rank - like.rank:]):
            if type(d) is int and type(e) is int and d not in (1, e):
                raise ShapeError(f"{g} cannot be summed to the shape of {like}")
        return g.with_shape(like.shape)

    def ref(g, like):
        lead = g.ndim - like.ndim
        if lead < 0 or any(d not in (1, e) for d, e in zip(like.shape, g.shape[lead:])):
            raise ShapeError(f"an array of shape {list(g.shape)} cannot be summed to {list(like.shape)}")
        axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(like.shape)
                                          if d == 1 and g.shape[lead + i] != 1)
        w = g.astype(np.float32) if g.dtype.itemsize < 4 else g
        return np.asarray(w.sum(axis=axes)).reshape(like.shape).astype(g.dtype)

    def vjp(b, op, grad):
        if grad is None:
            return [None, None]
        return [b.nn.broadcast_like(grad, op.operands[0]), None]

    def cost(op, bind):
        g = op.operands[0].type
        return Cost(numel(g, bind), g.nbytes(bind), op.results[0].type.nbytes(bind))


@declare
class size:
    """The number of elements of `x` along `axes` (all when absent), as a scalar of `dtype`."""
    name = "nn.size"
    operands = (Operand("x", ANY),)
    attrs = (Attr("axes", "ints", None), Attr("dtype", "dtype", dt.i64))
    traits = {"pure"}
    examples = (Ex("f32[3,4]"), Ex("f32[3,4,5]", axes=[0, 2], dtype="f32"), Ex("f32[2,5]", dtype="f64"))

    def vjp(b, op, g):
        return [None]      # it depends only on the shape: the gradient is exactly zero

    def infer(x, *, axes, dtype):
        norm_axes(axes, x.rank)
        return TensorType((), dtype)

    def ref(x, *, axes, dtype):
        return np.asarray(math.prod(x.shape[a] for a in norm_axes(axes, x.ndim)), dtype=dtype.np)

    def cost(op, bind):
        return Cost(0, 0, op.results[0].type.nbytes())


@declare
class shape:
    """The dims of `x` from `start` to `end` (Python slice bounds; `end` absent = the rank) as an
    i64 vector: ONNX Shape. Static dims fold to a constant; symbolic ones are read at run time."""
    name = "nn.shape"
    operands = (Operand("x", ANY),)
    attrs = (Attr("start", "int", 0), Attr("end", "int", None))
    traits = {"pure"}
    vjp = not_differentiable("depends only on the shape")
    examples = (Ex("f32[3,4]"), Ex("f32[2,3,4]", start=1), Ex("i64[2,3,4,5]", start=-3, end=-1),
                Ex("f32[]"))

    def infer(x, *, start, end):
        return TensorType((len(range(x.rank)[slice(start, end)]),), dt.i64)

    def ref(x, *, start, end):
        return np.asarray(x.shape[slice(start, end)], dtype=np.int64)

    def cost(op, bind):
        return Cost(0, 0, op.results[0].type.nbytes())
