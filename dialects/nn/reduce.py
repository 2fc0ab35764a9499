"""Reductions over axes (`axes` absent = all axes), with `keepdims`."""
from __future__ import annotations

import numpy as np

from ckir import dtypes as dt
from ckir.opdef import FLOAT, NUMERIC, Attr, Cost, Ex, OpDef, Operand, not_differentiable, register
from ckir.types import TensorType

from ._util import norm_axes, norm_axis, numel, wide

AXES = Attr("axes", "ints", None, doc="axes to reduce; absent means all")
KEEPDIMS = Attr("keepdims", "bool", False, doc="keep reduced axes as size 1")


def reduced_shape(shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _infer(x, *, axes, keepdims):
    return x.with_shape(reduced_shape(x.shape, norm_axes(axes, x.rank), keepdims))


def _np_reduce(fn):
    def ref(x, *, axes, keepdims):
        ax = norm_axes(axes, x.ndim)
        y = wide(x)
        return np.asarray(fn(y, axis=ax, keepdims=keepdims)).astype(x.dtype)
    return ref


def _restore(b, g, op):
    """The gradient of a reduction's result, with reduced axes put back as size 1."""
    x = op.operands[0]
    axes = norm_axes(op.attrs["axes"], x.type.rank)
    if not op.attrs["keepdims"] and axes:
        g = b.nn.unsqueeze(g, axes=list(axes))
    return g


def _sum_vjp(b, op, g):
    if g is None:
        return [None]
    return [b.nn.broadcast_like(_restore(b, g, op), op.operands[0])]


def _mean_vjp(b, op, g):
    if g is None:
        return [None]
    x = op.operands[0]
    n = b.nn.size(x, axes=list(norm_axes(op.attrs["axes"], x.type.rank)), dtype=x.type.dtype)
    return [b.nn.div(b.nn.broadcast_like(_restore(b, g, op), x), n)]


def _extreme_vjp(b, op, g):
    # the gradient goes to the elements equal to the result, split evenly among ties
    if g is None:
        return [None]
    x = op.operands[0]
    y = b.nn.broadcast_like(_restore(b, op.results[0], op), x)
    mask = b.nn.cast(b.nn.eq(x, y), to=x.type.dtype)
    count = b.nn.sum(mask, axes=list(norm_axes(op.attrs["axes"], x.type.rank)), keepdims=True)
    share = b.nn.div(b.nn.broadcast_like(_restore(b, g, op), x), b.nn.broadcast_like(count, x))
    return [b.nn.mul(share, mask)]


def _prod_vjp(b, op, g):
    if g is None:
        return [None]
    x = op.operands[0]
    y = b.nn.broadcast_like(_restore(b, op.results[0], op), x)
    return [b.nn.div(b.nn.mul(b.nn.broadcast_like(_restore(b, g, op), x), y), x)]


def _cost(op, bind):
    x = op.operands[0].type
    return Cost(numel(x, bind), x.nbytes(bind), op.results[0].type.nbytes(bind))


_EX = (Ex("f32[3,4,5]", axes=[1]), Ex("f32[3,4]"), Ex("f32[2,3,4]", axes=[0, -1], keepdims=True),
       Ex("f32[6]", axes=[0]))

for name, fn, vjp, doc, dtypes in (
        ("sum", np.sum, _sum_vjp, "Sum over axes.", NUMERIC),
        ("mean", np.mean, _mean_vjp, "Arithmetic mean over axes.", FLOAT),
        ("max", np.max, _extreme_vjp, "Maximum over axes (gradient split among ties).", NUMERIC),
        ("min", np.min, _extreme_vjp, "Minimum over axes (gradient split among ties).", NUMERIC),
        ("prod", np.prod, _prod_vjp,
         "Product over axes. Its gradient y/x assumes no zero elements.", NUMERIC)):
    register(OpDef(f"nn.{name}", doc=doc, operands=(Operand("x", dtypes),), attrs=(AXES, KEEPDIMS),
                   traits={"pure", "reduction"}, infer=_infer, ref=_np_reduce(fn), vjp=vjp,
                   cost=_cost, examples=_EX + ((Ex("i32[3,4]", axes=[1]),) if dtypes == NUMERIC else ())))


def _arg_infer(x, *, axis, keepdims, select_last_index):
    a = norm_axis(axis, x.rank)
    return TensorType(reduced_shape(x.shape, (a,), keepdims), dt.i64)


def _arg_ref(fn):
    def ref(x, *, axis, keepdims, select_last_index):
        a = norm_axis(axis, x.ndim)
        if select_last_index:
            r = x.shape[a] - 1 - fn(np.flip(x, a), axis=a, keepdims=keepdims)
        else:
            r = fn(x, axis=a, keepdims=keepdims)
        return np.asarray(r, dtype=np.int64)
    return ref


for name, fn in (("argmax", np.argmax), ("argmin", np.argmin)):
    register(OpDef(
        f"nn.{name}", doc=f"Index (i64) of the {name[3:]}imum along `axis`; the first one on ties "
        "unless `select_last_index`.", operands=(Operand("x", NUMERIC),),
        attrs=(Attr("axis", "int", 0), KEEPDIMS, Attr("select_last_index", "bool", False)),
        traits={"pure", "reduction"}, infer=_arg_infer, ref=_arg_ref(fn),
        vjp=not_differentiable("integer result"), cost=_cost,
        examples=(Ex("f32[3,4]", axis=1), Ex("f32[2,3,4]", axis=-1, keepdims=True),
                  Ex(np.array([[1, 3, 3], [2, 2, 0]], np.int32), axis=1, select_last_index=True))))
