"""Sequences and optionals (ONNX Sequence* and Optional* ops).

A sequence `seq<tensor<...>>` holds any number of tensors of one dtype and rank; at run time it
is a Python list of arrays. Its element type's dims describe every element, but a named dim there
is per element (not bound across elements or to the same name outside), so ops that take a
tensor out of a sequence give it anonymous dims where the element type has names. An optional
`optional<T>` holds a T or nothing; at run time the value or None.
"""
from __future__ import annotations

import numpy as np

from ckir import dtypes as dt
from ckir.errors import ShapeError
from ckir.opdef import ANY, INT, Attr, Cost, Ex, Operand, declare, not_differentiable
from ckir.types import ANY as ANYDIM
from ckir.types import OptType, SeqType, Sym, TensorType

from ._util import data_movement_cost, norm_axis, same_dtype

NO_VJP = not_differentiable("sequences and optionals carry no gradients yet (autodiff of them "
                            "is not implemented)")
POS = (dt.i32, dt.i64)


def join_types(a, b):
    """The most precise type both `a` and `b` are instances of: dims they disagree on become
    `?`. Kinds, dtypes and ranks must match (ShapeError naming both otherwise)."""
    if a is b:
        return a
    if type(a) is not type(b):
        raise ShapeError(f"cannot join {a} and {b}")
    if type(a) is SeqType:
        return SeqType(join_types(a.elem, b.elem))
    if type(a) is OptType:
        return OptType(join_types(a.elem, b.elem))
    if a.dtype is not b.dtype or a.rank != b.rank:
        raise ShapeError(f"cannot join {a} and {b} (dtype or rank differ)")
    return TensorType([x if x == y else ANYDIM for x, y in zip(a.shape, b.shape)], a.dtype)


def free_dims(t: TensorType) -> TensorType:
    """`t` with its named dims made anonymous: the type of a tensor taken out of a sequence."""
    if not any(type(d) is Sym and d.name is not None for d in t.shape):
        return t
    return t.with_shape([ANYDIM if type(d) is Sym else d for d in t.shape])


def _seq(t, what="seq") -> TensorType:
    if type(t) is not SeqType:
        raise ShapeError(f"{what} must be a sequence, got {t}")
    return t.elem


def _pos_type(p):
    if p is not None and any(type(d) is int and d != 1 for d in p.shape):
        raise ShapeError(f"position must hold one element, got {p}")


def _pos(p, n, lo, hi, what) -> int:
    p = np.asarray(p)
    if p.size != 1:
        raise ShapeError(f"{what} must hold one element, got shape {list(p.shape)}")
    i = int(p.reshape(()))
    if not lo <= i <= hi:
        raise ShapeError(f"{what} {i} is out of range [{lo}, {hi}] for a sequence of {n}")
    return i + n if i < 0 else i


def _elem_type_from(dtype, shape) -> TensorType:
    return TensorType([ANYDIM if d == -1 else d for d in shape], dtype)


# --- sequences ---------------------------------------------------------------------------------
@declare
class seq_construct:
    """A sequence of the given tensors, in order (at least one). They share a dtype and rank;
    the element type keeps the dims they agree on and has `?` elsewhere."""
    name = "nn.seq_construct"
    operands = (Operand("xs", ANY, variadic=True),)
    traits = {"pure"}
    cost = data_movement_cost
    vjp = NO_VJP
    examples = (Ex(["f32[2,3]", "f32[2,3]"]), Ex(["i64[4]"]), Ex(["bool[2]", "bool[2]", "bool[2]"]))

    def infer(xs):
        if not xs:
            raise ShapeError("needs at least one tensor")
        same_dtype(*xs)
        t = xs[0]
        for x in xs[1:]:
            t = join_types(t, x)
        return SeqType(t)

    def ref(xs):
        return (list(xs),)        # a list alone would read as several results


@declare
class seq_empty:
    """An empty sequence whose elements would have dtype `dtype` and dims `shape` (-1 = `?`)."""
    name = "nn.seq_empty"
    attrs = (Attr("dtype", "dtype", "f32"), Attr("shape", "shape", (), doc="element dims; -1 is `?`"))
    traits = {"pure"}
    vjp = NO_VJP
    examples = (Ex(), Ex(dtype="i64", shape=[2, -1]))

    def infer(*, dtype, shape):
        return SeqType(_elem_type_from(dtype, shape))

    def ref(*, dtype, shape):
        return ([],)

    def cost(op, bind):
        return Cost()


@declare
class seq_insert:
    """`seq` with `x` inserted before position `pos` (one element, i32/i64, in [-n, n]; negative
    counts from the end; absent = append). x has the sequence's dtype and rank; the result's
    element type has `?` where x's dims differ from it."""
    name = "nn.seq_insert"
    operands = (Operand("seq", ANY, kind="seq"), Operand("x", ANY), Operand("pos", POS, optional=True))
    traits = {"pure"}
    cost = data_movement_cost
    vjp = NO_VJP

    def infer(seq, x, pos):
        _pos_type(pos)
        return SeqType(join_types(_seq(seq), x))

    def ref(seq, x, pos):
        n = len(seq)
        i = n if pos is None else _pos(pos, n, -n, n, "position")
        return (seq[:i] + [x] + seq[i:],)


@declare
class seq_erase:
    """`seq` without the tensor at `pos` (one element, i32/i64, in [-n, n-1]; absent = the
    last one)."""
    name = "nn.seq_erase"
    operands = (Operand("seq", ANY, kind="seq"), Operand("pos", POS, optional=True))
    traits = {"pure"}
    cost = data_movement_cost
    vjp = NO_VJP

    def infer(seq, pos):
        _seq(seq)
        _pos_type(pos)
        return seq

    def ref(seq, pos):
        n = len(seq)
        if n == 0:
            raise ShapeError("cannot erase from an empty sequence")
        i = n - 1 if pos is None else _pos(pos, n, -n, n - 1, "position")
        return (seq[:i] + seq[i + 1:],)


@declare
class seq_at:
    """The tensor at `pos` (one element, i32/i64, in [-n, n-1]; negative counts from the end)."""
    name = "nn.seq_at"
    operands = (Operand("seq", ANY, kind="seq"), Operand("pos", POS))
    traits = {"pure"}
    cost = data_movement_cost
    vjp = NO_VJP

    def infer(seq, pos):
        _pos_type(pos)
        return free_dims(_seq(seq))

    def ref(seq, pos):
        n = len(seq)
        return seq[_pos(pos, n, -n, n - 1, "position")]


@declare
class seq_length:
    """The number of tensors in `seq`, as an i64 scalar."""
    name = "nn.seq_length"
    operands = (Operand("seq", ANY, kind="seq"),)
    traits = {"pure"}
    vjp = NO_VJP

    def infer(seq):
        _seq(seq)
        return TensorType((), dt.i64)

    def ref(seq):
        return np.asarray(len(seq), np.int64)

    def cost(op, bind):
        return Cost(0, 0, 8)


def split_sizes(n, split, axis_what):
    if split is None:
        return [1] * n
    s = np.asarray(split)
    if s.ndim == 0:
        k = int(s)
        if k <= 0:
            raise ShapeError(f"split {k} must be positive")
        return [k] * (n // k) + ([n % k] if n % k else [])
    sizes = [int(v) for v in s.reshape(-1)]
    if any(v < 0 for v in sizes) or sum(sizes) != n:
        raise ShapeError(f"split sizes {sizes} must be >= 0 and add up to {axis_what} ({n})")
    return sizes


@declare
class split_to_seq:
    """Cut `x` along `axis` into a sequence (ONNX SplitToSequence). `split` absent: pieces of
    size 1, with the axis removed when `keepdims` is false; a scalar k: pieces of k (the last
    one smaller when k does not divide the axis); a 1-D tensor: pieces of those sizes, adding
    up to the axis size. The element type has `?` along `axis` when `split` is given."""
    name = "nn.split_to_seq"
    operands = (Operand("x", ANY), Operand("split", INT, optional=True))
    attrs = (Attr("axis", "int", 0), Attr("keepdims", "bool", True, doc="only without split"))
    traits = {"pure"}
    cost = data_movement_cost
    vjp = NO_VJP
    examples = (Ex("f32[3,2]"), Ex("f32[2,4]", axis=-1, keepdims=False),
                Ex("f32[4,3]", np.array(2, np.int64)), Ex("i32[2,6]", np.array([3, 3], np.int64), axis=1))

    def infer(x, split, *, axis, keepdims):
        a = norm_axis(axis, x.rank)
        if split is not None:
            if split.rank > 1:
                raise ShapeError(f"split must be a scalar or 1-D, got {split}")
            return SeqType(x.with_shape(x.shape[:a] + (ANYDIM,) + x.shape[a + 1:]))
        if keepdims:
            return SeqType(x.with_shape(x.shape[:a] + (1,) + x.shape[a + 1:]))
        return SeqType(x.with_shape(x.shape[:a] + x.shape[a + 1:]))

    def ref(x, split, *, axis, keepdims):
        a = norm_axis(axis, x.ndim)
        sizes = split_sizes(x.shape[a], split, f"axis {a}")
        pieces = np.split(x, np.cumsum(sizes)[:-1], axis=a) if sizes else []
        if split is None and not keepdims:
            pieces = [np.squeeze(p, axis=a) for p in pieces]
        return (list(pieces),)


@declare
class concat_from_seq:
    """Join the tensors of `seq` along `axis` (ONNX ConcatFromSequence); with `new_axis`, stack
    them along a new axis `axis` of the result instead. The sequence must not be empty; the
    joined dim is `?`."""
    name = "nn.concat_from_seq"
    operands = (Operand("seq", ANY, kind="seq"),)
    attrs = (Attr("axis", "int"), Attr("new_axis", "bool", False))
    traits = {"pure"}
    cost = data_movement_cost
    vjp = NO_VJP

    def infer(seq, *, axis, new_axis):
        e = free_dims(_seq(seq))
        if new_axis:
            a = norm_axis(axis, e.rank + 1)
            return e.with_shape(e.shape[:a] + (ANYDIM,) + e.shape[a:])
        if e.rank == 0:
            raise ShapeError("cannot concatenate scalars without new_axis")
        a = norm_axis(axis, e.rank)
        return e.with_shape(e.shape[:a] + (ANYDIM,) + e.shape[a + 1:])

    def ref(seq, *, axis, new_axis):
        if not seq:
            raise ShapeError("cannot concatenate an empty sequence")
        if new_axis:
            return np.stack(seq, axis=norm_axis(axis, seq[0].ndim + 1))
        return np.concatenate(seq, axis=norm_axis(axis, seq[0].ndim))


# --- optionals ---------------------------------------------------------------------------------
@declare
class opt_some:
    """An optional holding `x` (a tensor or a sequence)."""
    name = "nn.opt_some"
    operands = (Operand("x", ANY, kind="any"),)
    traits = {"pure"}
    vjp = NO_VJP
    examples = (Ex("f32[2,3]"), Ex("i64[]"))

    def infer(x):
        if type(x) is OptType:
            raise ShapeError(f"an optional cannot hold an optional ({x})")
        return OptType(x)

    def ref(x):
        return (x,)

    def cost(op, bind):
        return Cost()


@declare
class opt_none:
    """An empty optional of a tensor type (`dtype`, dims `shape`, -1 = `?`), or, with `seq`, of
    a sequence of such tensors."""
    name = "nn.opt_none"
    attrs = (Attr("dtype", "dtype", "f32"), Attr("shape", "shape", (), doc="dims; -1 is `?`"),
             Attr("seq", "bool", False, doc="an optional sequence"))
    traits = {"pure"}
    vjp = NO_VJP
    examples = (Ex(shape=[3]), Ex(dtype="i32", shape=[-1, 2], seq=True))

    def infer(*, dtype, shape, seq):
        t = _elem_type_from(dtype, shape)
        return OptType(SeqType(t) if seq else t)

    def ref(*, dtype, shape, seq):
        return None

    def cost(op, bind):
        return Cost()


@declare
class opt_has:
    """Whether the optional `x` holds a value (a bool scalar)."""
    name = "nn.opt_has"
    operands = (Operand("x", ANY, kind="optional"),)
    traits = {"pure"}
    vjp = NO_VJP

    def infer(x):
        return TensorType((), dt.bool_)

    def ref(x):
        return np.asarray(x is not None)

    def cost(op, bind):
        return Cost(0, 0, 1)


@declare
class opt_get:
    """The value the optional `x` holds; an error naming the op if it is empty."""
    name = "nn.opt_get"
    operands = (Operand("x", ANY, kind="optional"),)
    traits = {"pure"}
    vjp = NO_VJP

    def infer(x):
        return x.elem

    def ref(x):
        if x is None:
            raise ShapeError("the optional is empty")
        return (x,)

    def cost(op, bind):
        return Cost()
