"""Matrix products."""
from __future__ import annotations

import numpy as np

from ckir.errors import ShapeError
from ckir.opdef import FLOAT, Attr, Cost, Ex, Operand, declare
from ckir.types import TensorType, broadcast_shapes, concrete

from ._util import is_low_float, numel, same_dtype, unbroadcast


def _mm_dims(a: TensorType, b: TensorType, ta: bool, tb: bool):
    """(batch shape, M, K, N, a was 1-D, b was 1-D) with numpy matmul's 1-D promotion."""
    if a.rank == 0 or b.rank == 0:
        raise ShapeError("matmul operands must have rank >= 1")
    if (ta and a.rank < 2) or (tb and b.rank < 2):
        raise ShapeError("transpose flags need operands of rank >= 2")
    a1, b1 = a.rank == 1, b.rank == 1
    ash = (1,) + a.shape if a1 else a.shape
    bsh = b.shape + (1,) if b1 else b.shape
    m, k = (ash[-1], ash[-2]) if ta else (ash[-2], ash[-1])
    k2, n = (bsh[-1], bsh[-2]) if tb else (bsh[-2], bsh[-1])
    if type(k) is int and type(k2) is int and k != k2:   # symbolic K is checked at run time
        raise ShapeError(f"contraction dims differ: {a} @ {b} (K = {k} vs {k2})")
    batch = broadcast_shapes(ash[:-2], bsh[:-2])
    return batch, m, k, n, a1, b1


@declare
class matmul:
    """Matrix product with numpy's matmul rules (batch dims broadcast; a 1-D operand is a row or
    column vector). `transpose_a`/`transpose_b` swap the last two dims of an operand first:
    with `transpose_b`, b is stored (N, K) as in a linear layer's weight."""
    name = "nn.matmul"
    operands = (Operand("a", FLOAT), Operand("b", FLOAT))
    attrs = (Attr("transpose_a", "bool", False), Attr("transpose_b", "bool", False))
    traits = {"pure"}
    examples = (Ex("f32[2,3]", "f32[3,4]"), Ex("f32[5,3]", "f32[4,3]", transpose_b=True),
                Ex("f32[3,2]", "f32[3,4]", transpose_a=True), Ex("f32[2,1,3,4]", "f32[5,4,2]"),
                Ex("f32[3]", "f32[2,3,4]"), Ex("f32[2,3]", "f32[3]"), Ex("f32[3]", "f32[3]"),
                Ex("f32[2,4,3]", "f32[2,5,4]", transpose_a=True, transpose_b=True))

    def infer(a, b, *, transpose_a, transpose_b):
        same_dtype(a, b)
        batch, m, k, n, a1, b1 = _mm_dims(a, b, transpose_a, transpose_b)
        return TensorType(batch + (() if a1 else (m,)) + (() if b1 else (n,)), a.dtype)

    def ref(a, b, *, transpose_a, transpose_b):
        if transpose_a:
            a = np.swapaxes(a, -1, -2)
        if transpose_b:
            b = np.swapaxes(b, -1, -2)
        if is_low_float(a.dtype):
            return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(a.dtype)
        return np.matmul(a, b)

    def vjp(bld, op, g):
        if g is None:
            return [None, None]
        a, b = op.operands
        ta, tb = op.attrs["transpose_a"], op.attrs["transpose_b"]
        a1, b1 = a.type.rank == 1, b.type.rank == 1
        a_ = bld.nn.unsqueeze(a, axes=[0]) if a1 else a
        b_ = bld.nn.unsqueeze(b, axes=[1]) if b1 else b
        g_ = g
        if a1 and b1:
            g_ = bld.nn.reshape(g, shape=[1, 1])
        elif a1:
            g_ = bld.nn.unsqueeze(g, axes=[-2])
        elif b1:
            g_ = bld.nn.unsqueeze(g, axes=[-1])
        mm = bld.nn.matmul
        da = mm(b_, g_, transpose_a=tb, transpose_b=True) if ta else mm(g_, b_, transpose_b=not tb)
        db = mm(g_, a_, transpose_a=True, transpose_b=ta) if tb else mm(a_, g_, transpose_a=not ta)
        da, db = unbroadcast(bld, da, a_), unbroadcast(bld, db, b_)
        if a1:
            da = bld.nn.squeeze(da, axes=[0])
        if b1:
            db = bld.nn.squeeze(db, axes=[1])
        return [da, db]

    def cost(op, bind):
        a, b = op.operands
        batch, m, k, n, _, _ = _mm_dims(a.type, b.type, op.attrs["transpose_a"], op.attrs["transpose_b"])
        macs = numel(TensorType(concrete(batch, bind) + concrete((m, k, n), bind), a.type.dtype))
        return Cost(2 * macs, a.type.nbytes(bind) + b.type.nbytes(bind), op.results[0].type.nbytes(bind))
