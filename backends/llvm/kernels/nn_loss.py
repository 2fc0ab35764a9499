"""nn.nll_loss: negative log-likelihood over class scores (softmax cross-entropy imports as
nn.log_softmax + nn.nll_loss), every reduction, optional class weights and ignore_index;
f32/f64/f16/bf16 (f16/bf16 computed in f32 and rounded once, as the reference).

One pass over the target positions (N * d1 * ... * dk), single-threaded: the op reads one
element of x per position, so it is a gather, far cheaper than the log_softmax that feeds it.
"sum" and "mean" accumulate the losses and the weights in f64 (the reference sums in the
compute type with numpy's pairwise sum; f64 keeps the kernel within that error) and divide
once; "mean" of nothing (every position ignored) is 0/0 = NaN, as the reference.

Run-time errors: a target outside [0, C) that is not ignore_index is an error in the
reference; the kernel reads nothing for it, reports it through Kernel.fail, and plan.py reruns
the reference, which raises.
"""
from __future__ import annotations

import llvmlite.ir as ir

from ckir import dtypes as dt

from ..codegen import F64, I64, emitter, tensor_types_supported
from .elementwise import compute_type, from_compute, to_compute

FLOATS = (dt.f32, dt.f64, dt.f16, dt.bf16)


@emitter("nn.nll_loss")
def emit_nll_loss(k, op):
    x, target = op.operands[:2]
    weight = op.operands[2] if len(op.operands) == 3 else None
    y = op.results[0]
    red = op.attrs.get("reduction") or "mean"
    ignore = op.attrs.get("ignore_index")
    fd = x.type.dtype
    ct = compute_type(fd)
    b = k.b
    N, C = k.dim(x, 0), k.dim(x, 1)
    inner = I64(1)
    for a in range(2, x.type.rank):
        inner = k.mul(inner, k.dim(x, a))
    P = k.mul(N, inner)
    acc_l = k.head.alloca(F64)       # in the entry block, so LLVM keeps them in registers
    acc_w = k.head.alloca(F64)
    b.store(ir.Constant(F64, 0.0), acc_l)
    b.store(ir.Constant(F64, 0.0), acc_w)
    bad = k.head.alloca(ir.IntType(1))
    b.store(ir.Constant(ir.IntType(1), 0), bad)

    def pos(p):
        t = k.load(target, p)
        t = b.sext(t, I64) if t.type != I64 else t
        keep = ir.Constant(ir.IntType(1), 1) if ignore is None else b.icmp_signed("!=", t, I64(ignore))
        inside = b.icmp_unsigned("<", t, C)
        with b.if_then(b.and_(keep, b.icmp_signed("==", inside, ir.Constant(ir.IntType(1), 0)))):
            b.store(ir.Constant(ir.IntType(1), 1), bad)
        take = b.and_(keep, inside)
        safe = b.select(take, t, I64(0))
        n_ = b.udiv(p, inner)
        d_ = b.urem(p, inner)
        xi = b.add(b.mul(b.add(b.mul(n_, C), safe), inner), d_)
        xv = to_compute(b, k.load(x, xi), fd, k.cg)
        if weight is not None:
            wv = to_compute(b, k.load(weight, safe), fd, k.cg)
        else:
            wv = ir.Constant(ct, 1.0)
        wv = b.select(take, wv, ir.Constant(ct, 0.0))
        xv = b.select(take, xv, ir.Constant(ct, 0.0))
        loss = b.fmul(b.fneg(xv), wv)
        if red == "none":
            k.store(y, p, from_compute(b, loss, fd, k.cg))
        else:
            wide = (lambda v: v) if ct is F64 else (lambda v: b.fpext(v, F64))
            b.store(b.fadd(b.load(acc_l, typ=F64), wide(loss)), acc_l)
            b.store(b.fadd(b.load(acc_w, typ=F64), wide(wv)), acc_w)
    k.loop(I64(0), P, pos)
    with b.if_then(b.load(bad, typ=ir.IntType(1))):
        k.fail()
    if red != "none":
        total = b.load(acc_l, typ=F64)
        if red == "mean":
            total = b.fdiv(total, b.load(acc_w, typ=F64))
        r = total if ct is F64 else b.fptrunc(total, ct)
        k.store(y, I64(0), from_compute(b, r, fd, k.cg))


def _supports(op) -> bool:
    if not tensor_types_supported(op):
        return False
    return op.operands[0].type.dtype in FLOATS and op.operands[1].type.dtype in (dt.i32, dt.i64)


emit_nll_loss.supports = _supports
