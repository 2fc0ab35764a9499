"""Ops along one axis: nn.cumsum and nn.cumprod (axis attribute or run-time axis operand,
exclusive, reverse), nn.hardmax.

x is viewed as (outer, n, inner) around the axis. The scans walk the axis step by step with
the whole inner row per step (y[o, j, :] = y[o, prev, :] + x[o, j or prev, :]: a plain loop LLVM
vectorizes), in the order numpy's accumulate uses, so float results are exactly the
reference's: f32/f64 and every integer type (integers wrap, as numpy's accumulate in the
dtype). f16/bf16 would need an f32 running row (the reference rounds only the outputs): they
are refused by supports() and run in the interpreter. Outer rows go to threads.

A run-time axis (axis_t) out of range is an error in the reference: the kernel touches
nothing, reports it through Kernel.fail, and plan.py reruns the reference, which raises.

hardmax: 1 at the first maximum along the axis (a NaN counts as the maximum, as np.argmax),
0 elsewhere; every float dtype (compared in f32 for f16/bf16, exactly).
"""
from __future__ import annotations

import llvmlite.ir as ir

from ckir import dtypes as dt
from ckir.dialects.nn._util import norm_axis

from ..codegen import I1, I64, emitter, mem_type, tensor_types_supported
from .elementwise import compute_type, from_compute, to_compute

GRAIN = 16384


def _split(k, x, axis):
    """(outer, n, inner) of x around a static axis."""
    outer, inner = I64(1), I64(1)
    for a in range(axis):
        outer = k.mul(outer, k.dim(x, a))
    for a in range(axis + 1, x.type.rank):
        inner = k.mul(inner, k.dim(x, a))
    return outer, k.dim(x, axis), inner


def _split_runtime(k, x, a):
    """(outer, n, inner) of x around the axis held in the LLVM value a (0 <= a < rank)."""
    b = k.b
    outer, n, inner = I64(1), I64(1), I64(1)
    for i in range(x.type.rank):
        d = k.dim(x, i)
        outer = b.mul(outer, b.select(b.icmp_signed(">", a, I64(i)), d, I64(1)))
        inner = b.mul(inner, b.select(b.icmp_signed("<", a, I64(i)), d, I64(1)))
        n = b.select(b.icmp_signed("==", a, I64(i)), d, n)
    return outer, n, inner


def _axis_value(k, op):
    """The axis as an LLVM value and whether it is valid: (a, ok)."""
    x = op.operands[0]
    b = k.b
    if len(op.operands) == 1:
        return I64(norm_axis(op.attrs["axis"], x.type.rank)), ir.Constant(I1, 1)
    at = op.operands[1]
    a = k.load(at, I64(0))
    a = b.sext(a, I64) if a.type != I64 else a
    r = I64(x.type.rank)
    a = b.select(b.icmp_signed("<", a, I64(0)), b.add(a, r), a)
    ok = b.and_(b.icmp_signed(">=", a, I64(0)), b.icmp_signed("<", a, r))
    return b.select(ok, a, I64(0)), ok


def _emit_cum(k, op, kind):
    x = op.operands[0]
    y = op.results[0]
    d = x.type.dtype
    t = mem_type(d)
    exclusive, reverse = bool(op.attrs.get("exclusive")), bool(op.attrs.get("reverse"))
    ident = (ir.Constant(t, 0.0 if d.is_float else 0) if kind == "sum"
             else ir.Constant(t, 1.0 if d.is_float else 1))

    def combine(b, a, c):
        if kind == "sum":
            return b.fadd(a, c) if d.is_float else b.add(a, c)
        return b.fmul(a, c) if d.is_float else b.mul(a, c)

    _, ok = _axis_value(k, op)
    b0 = k.b
    with b0.if_then(b0.icmp_unsigned("==", ok, ir.Constant(I1, 0))):
        k.fail()

    def geometry(kk):
        if len(op.operands) == 1:
            return _split(kk, x, norm_axis(op.attrs["axis"], x.type.rank))
        a, _ = _axis_value(kk, op)
        return _split_runtime(kk, x, a)

    def task(kt, lo, hi):
        b = kt.b
        _, ok_t = _axis_value(kt, op)
        _, n, inner = geometry(kt)
        xp, yp = kt.ptr(x), kt.ptr(y)
        with b.if_then(ok_t):
            def row(o):
                base = b.mul(o, b.mul(n, inner))

                def step(s):
                    j = b.sub(b.sub(n, I64(1)), s) if reverse else s
                    prev = b.add(j, I64(1)) if reverse else b.sub(j, I64(1))
                    first = b.icmp_signed("==", s, I64(0))
                    jo = b.add(base, b.mul(j, inner))
                    po = b.add(base, b.mul(b.select(first, j, prev), inner))

                    def elem(i):
                        xv = kt.load(x, b.add(po if exclusive else jo, i), xp)
                        if exclusive:
                            acc = b.select(first, ident, kt.load(y, b.add(po, i), yp))
                            v = b.select(first, ident, combine(b, acc, xv))
                        else:
                            acc = kt.load(y, b.add(po, i), yp)
                            v = b.select(first, xv, combine(b, acc, xv))
                        kt.store(y, b.add(jo, i), v, yp)
                    kt.loop(I64(0), inner, elem)
                kt.loop(I64(0), n, step)
            kt.loop(lo, hi, row)

    k.parallel_range(lambda kk: geometry(kk)[0], task, grain=max(1, GRAIN // 64))


@emitter("nn.cumsum")
def emit_cumsum(k, op):
    _emit_cum(k, op, "sum")


@emitter("nn.cumprod")
def emit_cumprod(k, op):
    _emit_cum(k, op, "prod")


def _cum_supports(op) -> bool:
    if not tensor_types_supported(op):
        return False
    return op.operands[0].type.dtype not in (dt.f16, dt.bf16)


emit_cumsum.supports = _cum_supports
emit_cumprod.supports = _cum_supports


@emitter("nn.hardmax")
def emit_hardmax(k, op):
    x = op.operands[0]
    y = op.results[0]
    d = x.type.dtype
    ct = compute_type(d)
    axis = norm_axis(op.attrs["axis"], x.type.rank)

    def task(kt, lo, hi):
        b = kt.b
        # in the task function: a conversion may be instructions, which do not cross functions
        zero = from_compute(kt.head, ir.Constant(ct, 0.0), d, kt.cg)
        one = from_compute(kt.head, ir.Constant(ct, 1.0), d, kt.cg)
        _, n, inner = _split(kt, x, axis)
        best = kt.head.alloca(ct)
        at = kt.head.alloca(I64)
        xp, yp = kt.ptr(x), kt.ptr(y)

        def line(r):
            o = b.udiv(r, inner)
            i = b.urem(r, inner)
            base = b.add(b.mul(b.mul(o, n), inner), i)
            kt.loop(I64(0), n, lambda j: kt.store(y, b.add(base, b.mul(j, inner)), zero, yp))
            with b.if_then(b.icmp_signed(">", n, I64(0))):
                b.store(to_compute(b, kt.load(x, base, xp), d, kt.cg), best)
                b.store(I64(0), at)

                def scan(j):
                    v = to_compute(b, kt.load(x, b.add(base, b.mul(j, inner)), xp), d, kt.cg)
                    m = b.load(best, typ=ct)
                    take = b.or_(b.fcmp_ordered(">", v, m),
                                 b.and_(b.fcmp_unordered("uno", v, v), b.fcmp_ordered("ord", m, m)))
                    b.store(b.select(take, v, m), best)
                    b.store(b.select(take, j, b.load(at, typ=I64)), at)
                kt.loop(I64(1), n, scan)
                kt.store(y, b.add(base, b.mul(b.load(at, typ=I64), inner)), one, yp)
        kt.loop(lo, hi, line)

    def lines(kk):
        outer, _, inner = _split(kk, x, axis)
        return kk.mul(outer, inner)
    k.parallel_range(lines, task, grain=256)


emit_hardmax.supports = tensor_types_supported
