"""Helpers shared by nn declarations: axis handling, dtype checks, gradient plumbing, costs."""
from __future__ import annotations

import math

import numpy as np

from ckir import dtypes as dt
from ckir.errors import ShapeError
from ckir.opdef import Cost
from ckir.types import TensorType, concrete


def is_low_float(dtype) -> bool:
    """Floats narrower than f32 (f16, bf16, the f8/f4 types): the reference semantics compute
    them in f32 and round once."""
    d = dt.dtype(dtype)
    return d.is_float and d.bits < 32


def wide(a):
    """`a` in the precision its reference computes in: f32 for f16/bf16, itself otherwise."""
    return a.astype(np.float32) if is_low_float(a.dtype) else a


def norm_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ShapeError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank


def norm_axes(axes, rank: int) -> tuple[int, ...]:
    """Sorted, non-negative axes; None means all axes. Duplicates are an error."""
    if axes is None:
        return tuple(range(rank))
    out = sorted(norm_axis(a, rank) for a in axes)
    if len(set(out)) != len(out):
        raise ShapeError(f"repeated axis in {list(axes)}")
    return tuple(out)


def same_dtype(*types: TensorType):
    d = types[0].dtype
    for t in types[1:]:
        if t.dtype is not d:
            raise ShapeError(f"operands have different dtypes {d} and {t.dtype}; insert nn.cast")
    return d


def _maybe_broadcast(t: TensorType, gt: TensorType) -> bool:
    """Whether an operand of type t may have been broadcast to gt along an axis that is not
    statically 1: a symbolic dim of t is 1 in some call while gt's dim there is not known to be
    the same size."""
    lead = gt.rank - t.rank
    for d, e in zip(t.shape, gt.shape[lead:]):
        if type(d) is not int and not (type(e) is not int and e.name is not None and e.name == d.name):
            return True
    return False


def unbroadcast(b, g, x):
    """Sum the gradient `g` of a broadcast result back to operand `x` (a Value, or just its
    TensorType)."""
    t = x if isinstance(x, TensorType) else x.type
    if not isinstance(x, TensorType) and _maybe_broadcast(t, g.type):
        return b.nn.sum_to_like(g, x)      # which axes were broadcast is known only at run time
    if g.type is t:
        return g
    lead = g.type.rank - t.rank
    if lead:
        g = b.nn.sum(g, axes=list(range(lead)))
    axes = [i for i, d in enumerate(t.shape) if d == 1 and g.type.shape[i] != 1]
    if axes:
        g = b.nn.sum(g, axes=axes, keepdims=True)
    if g.type is not t and not isinstance(x, TensorType):
        g = b.nn.reshape_like(g, x)   # the result can be vaguer than x: `?` where x has a name
    return g


def numel(t: TensorType, bind=None) -> int:
    return math.prod(concrete(t.shape, bind))


def data_movement_cost(op, bind) -> Cost:
    """Copies: no FLOPs, reads the operands, writes the results."""
    return Cost(0, sum(v.type.nbytes(bind) for v in op.operands),
                sum(v.type.nbytes(bind) for v in op.results))


def view_cost(op, bind) -> Cost:
    """Reinterprets bytes: moves nothing."""
    return Cost()


def broadcasts_to(shape, target) -> bool:
    """Whether `shape` broadcasts to `target` (numpy rules, right-aligned) without enlarging it.
    Symbolic dims that cannot be compared statically are assumed to fit; the interpreter checks
    them at run time."""
    if len(shape) > len(target):
        return False
    for s, t in zip(reversed(shape), reversed(target)):
        if s != 1 and s != t and type(s) is int and type(t) is int:
            return False
    return True
