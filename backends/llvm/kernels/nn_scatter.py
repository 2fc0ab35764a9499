"""nn.scatter_elements, nn.scatter_nd and nn.gather_nd.

nn.scatter_elements (ONNX ScatterElements, torch scatter/scatter_reduce): y = x, then for
every position p of indices, in row-major order, y[p with p[axis] = indices[p]] (reduction)=
updates[p]; reductions none (the last write wins), add, mul, max, min.

The copy of x is a plain loop split across threads; the scatter itself runs in one thread, in
the reference's order, because repeated indices make the order visible (the last write wins;
float add/mul round in that order, as numpy's ufunc.at). Negative indices count from the end.
Every dtype for "none"; add/mul/max/min for f32/f64 and integers (f16/bf16 would round at every
step where the reference computes in f32 and rounds once: they run in the interpreter). max/min
propagate NaN like np.maximum/np.minimum.

Run-time errors: an index outside [-n, n) is an error in the reference; the kernel skips it,
reports it through Kernel.fail, and plan.py reruns the reference, which raises. (Indices and
updates shapes are checked by the shape rules on the concrete shapes before the kernel runs.)

nn.scatter_nd / nn.gather_nd (ONNX ScatterND / GatherND, with batch_dims): each k-tuple of
indices (the last dim) picks a block of x, the dims after batch_dims + k; scatter_nd applies the
updates blocks in order in one thread (same reasons and reductions as scatter_elements),
gather_nd copies the blocks, split across threads. Indices are checked and wrapped the same way.
"""
from __future__ import annotations

import llvmlite.ir as ir

from ckir import dtypes as dt
from ckir.dialects.nn._util import norm_axis

from ..codegen import I1, I64, emitter, tensor_types_supported


def _combine(b, d, red, a, u):
    if red == "add":
        return b.fadd(a, u) if d.is_float else b.add(a, u)
    if red == "mul":
        return b.fmul(a, u) if d.is_float else b.mul(a, u)
    if d.is_float:
        cmp = ">" if red == "max" else "<"
        # NaN wins from either side, as np.maximum / np.minimum
        take_u = b.or_(b.fcmp_ordered(cmp, u, a), b.fcmp_unordered("uno", u, u))
        take_u = b.and_(take_u, b.fcmp_ordered("ord", a, a))
        return b.select(take_u, u, a)
    signed = d.kind == "i"
    f = b.icmp_signed if signed else b.icmp_unsigned
    return b.select(f(">" if red == "max" else "<", u, a), u, a)


@emitter("nn.scatter_elements")
def emit_scatter_elements(k, op):
    x, idx, upd = op.operands
    y = op.results[0]
    d = x.type.dtype
    red = op.attrs.get("reduction") or "none"
    r = x.type.rank
    axis = norm_axis(op.attrs["axis"], r)

    def copy(kt, lo, hi):
        kt.loop(lo, hi, lambda i: kt.store(y, i, kt.load(x, i)))
    k.parallel_range(lambda kk: kk.numel(x), copy, grain=1 << 16)

    b = k.b
    xd = k.shape(x)
    idims = k.shape(idx)
    xs = [I64(1)] * r                 # x's strides
    for a in range(r - 2, -1, -1):
        xs[a] = k.mul(xs[a + 1], xd[a + 1])
    n_ax = xd[axis]
    bad = k.head.alloca(I1)
    b.store(ir.Constant(I1, 0), bad)

    def pos(p):
        off = I64(0)
        rest = p
        for a in range(r - 1, -1, -1):
            c = b.urem(rest, idims[a]) if a else rest
            rest = b.udiv(rest, idims[a]) if a else rest
            if a != axis:
                off = b.add(off, b.mul(c, xs[a]))
        iv = k.load(idx, p)
        iv = b.sext(iv, I64) if iv.type != I64 else iv
        iv = b.select(b.icmp_signed("<", iv, I64(0)), b.add(iv, n_ax), iv)
        ok = b.icmp_unsigned("<", iv, n_ax)
        with b.if_else(ok) as (then, other):
            with then:
                yi = b.add(off, b.mul(iv, xs[axis]))
                u = k.load(upd, p)
                if red != "none":
                    u = _combine(b, d, red, k.load(y, yi), u)
                k.store(y, yi, u)
            with other:
                b.store(ir.Constant(I1, 1), bad)
    k.loop(I64(0), k.numel(idx), pos)
    with b.if_then(b.load(bad, typ=I1)):
        k.fail()


def _supports(op) -> bool:
    if not tensor_types_supported(op):
        return False
    d = op.operands[0].type.dtype
    red = op.attrs.get("reduction") or "none"
    if red != "none" and (d in (dt.f16, dt.bf16) or d.is_bool):
        return False
    return True


emit_scatter_elements.supports = _supports


def _nd_offsets(k, kt, x, idx, bd, p, bad):
    """x's element offset of the block that position p of indices[..., :] addresses (its batch
    coordinates and its k-tuple), and records an out-of-range index in `bad` (offset 0 then)."""
    b = kt.b
    r = x.type.rank
    xd = kt.shape(x)
    xs = [I64(1)] * r
    for a in range(r - 2, -1, -1):
        xs[a] = kt.mul(xs[a + 1], xd[a + 1])
    lead = kt.shape(idx)[:-1]
    kk = idx.type.shape[-1]
    off = I64(0)
    if bd:
        rest = p
        coords = [None] * len(lead)
        for a in range(len(lead) - 1, -1, -1):
            coords[a] = b.urem(rest, lead[a]) if a else rest
            rest = b.udiv(rest, lead[a]) if a else rest
        for a in range(bd):
            off = b.add(off, b.mul(coords[a], xs[a]))
    ok = ir.Constant(I1, 1)
    for j in range(kk):
        n = xd[bd + j]
        iv = kt.load(idx, b.add(b.mul(p, I64(kk)), I64(j)))
        iv = b.sext(iv, I64) if iv.type != I64 else iv
        iv = b.select(b.icmp_signed("<", iv, I64(0)), b.add(iv, n), iv)
        inside = b.icmp_unsigned("<", iv, n)
        ok = b.and_(ok, inside)
        off = b.add(off, b.mul(b.select(inside, iv, I64(0)), xs[bd + j]))
    with b.if_then(b.icmp_unsigned("==", ok, ir.Constant(I1, 0))):
        b.store(ir.Constant(I1, 1), bad)
    return b.select(ok, off, I64(0)), ok


def _nd_block(kt, x, idx, bd):
    """Elements per block: the dims of x after batch_dims + k."""
    n = I64(1)
    for a in range(bd + idx.type.shape[-1], x.type.rank):
        n = kt.mul(n, kt.dim(x, a))
    return n


def _nd_count(kt, idx):
    n = I64(1)
    for a in range(idx.type.rank - 1):
        n = kt.mul(n, kt.dim(idx, a))
    return n


@emitter("nn.scatter_nd")
def emit_scatter_nd(k, op):
    x, idx, upd = op.operands
    y = op.results[0]
    d = x.type.dtype
    red = op.attrs.get("reduction") or "none"
    bd = int(op.attrs.get("batch_dims") or 0)

    def copy(kt, lo, hi):
        kt.loop(lo, hi, lambda i: kt.store(y, i, kt.load(x, i)))
    k.parallel_range(lambda kk: kk.numel(x), copy, grain=1 << 16)
    b = k.b
    bad = k.head.alloca(I1)
    b.store(ir.Constant(I1, 0), bad)
    T = _nd_block(k, x, idx, bd)

    def pos(p):
        off, ok = _nd_offsets(k, k, x, idx, bd, p, bad)
        with b.if_then(ok):
            ubase = b.mul(p, T)

            def elem(e):
                yi = b.add(off, e)
                u = k.load(upd, b.add(ubase, e))
                if red != "none":
                    u = _combine(b, d, red, k.load(y, yi), u)
                k.store(y, yi, u)
            k.loop(I64(0), T, elem)
    k.loop(I64(0), _nd_count(k, idx), pos)
    with b.if_then(b.load(bad, typ=I1)):
        k.fail()


emit_scatter_nd.supports = _supports


@emitter("nn.gather_nd")
def emit_gather_nd(k, op):
    x, idx = op.operands
    y = op.results[0]
    bd = int(op.attrs.get("batch_dims") or 0)
    b0 = k.b
    bad0 = k.head.alloca(I1)
    b0.store(ir.Constant(I1, 0), bad0)

    # validate first (in this thread), so the copy tasks only need to stay in bounds
    def check(p):
        _nd_offsets(k, k, x, idx, bd, p, bad0)
    k.loop(I64(0), _nd_count(k, idx), check)
    with b0.if_then(b0.load(bad0, typ=I1)):
        k.fail()

    def task(kt, lo, hi):
        b = kt.b
        bad = kt.head.alloca(I1)
        T = _nd_block(kt, x, idx, bd)

        def pos(p):
            off, _ = _nd_offsets(kt, kt, x, idx, bd, p, bad)
            ybase = b.mul(p, T)
            kt.loop(I64(0), T, lambda e: kt.store(y, b.add(ybase, e), kt.load(x, b.add(off, e))))
        kt.loop(lo, hi, pos)
    k.parallel_range(lambda kk: _nd_count(kk, idx), task, grain=64)


emit_gather_nd.supports = tensor_types_supported
