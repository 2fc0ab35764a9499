"""nn.attention: scaled dot-product attention with grouped-query heads, broadcast batch dims,
bool or float masks, causal and sliding-window masking, softcap; f32/f64/f16/bf16 (f16/bf16
computed in f32 and rounded once, as the reference).

One query row (batch, head, i) per iteration, rows split across threads. Two sweeps over the
keys, no Tq x Tk buffer: the first computes each logit (q . k_j * scale, softcap, mask) and
their max m; the second recomputes them, and adds e_j = exp(logit_j - m) into z and e_j * v_j
into the output row; the row is divided by z at the end. Computing the logits twice costs
2 Tk D more FLOPs per row, which is the price of not holding Tk logits anywhere. The dot
products and the v sweep are plain loops (the dot product's sum carries `reassoc` so LLVM
vectorizes it).

Masking as the reference: a key that is not visible gets logit -inf; a row that sees no key
outputs zeros (m = -inf is replaced by 0 and z = 0 by 1). exp comes from mathf (2 ulp).

Accuracy: the reference computes p = e / z with numpy (matmuls in BLAS order, pairwise sums),
then p @ v; the kernel accumulates e_j * v_j and divides once, z in f64. Both are a few ulps of
O(1) values apart (tests/test_llvm_attention.py: rtol = atol = 1e-5 for f32).

f16/bf16 need an f32 row of accumulators: a stack array, so supports() refuses them unless Dv
is static and at most MAX_DV_LOW (they then run in the interpreter).
"""
from __future__ import annotations

import math

import llvmlite.ir as ir

from ckir import dtypes as dt

from ..codegen import F32, F64, I64, emitter, tensor_types_supported
from . import mathf
from .elementwise import Scalar, compute_type, from_compute, to_compute

FLOATS = (dt.f32, dt.f64, dt.f16, dt.bf16)
MAX_DV_LOW = 1024
GRAIN_WORK = 16384


def _entry_alloca(k, ty, n=None):
    """An alloca at the start of the function's entry block (so LLVM promotes it)."""
    blk = k.fn.blocks[0]
    bb = ir.IRBuilder(blk)
    bb.position_at_start(blk)
    return bb.alloca(ty, size=None if n is None else I64(n))


def _aligned_strides(k, v, R, nb_only: bool):
    """Strides of v over the R axes of the result (numpy alignment at the end): 0 where v has no
    such axis or its dim is 1. With nb_only, only the R - 3 batch axes (the rest are used
    directly)."""
    r = v.type.rank
    dims = k.shape(v)
    cs = [I64(1)] * r
    for a in range(r - 2, -1, -1):
        cs[a] = k.mul(cs[a + 1], dims[a + 1])
    out = []
    for a in range(R - 3 if nb_only else R):
        a2 = a - (R - r)
        if a2 < 0:
            out.append(I64(0))
            continue
        d = v.type.shape[a2]
        if type(d) is int:
            out.append(I64(0) if d == 1 else cs[a2])
        else:
            out.append(k.b.select(k.b.icmp_unsigned("==", dims[a2], I64(1)), I64(0), cs[a2]))
    return out


@emitter("nn.attention")
def emit_attention(k, op):
    q, kk, v = op.operands[:3]
    mask = op.operands[3] if len(op.operands) == 4 else None
    y = op.results[0]
    at = op.attrs
    causal, window, softcap = bool(at.get("causal")), at.get("window"), at.get("softcap")
    fd = q.type.dtype
    ct = compute_type(fd)
    low = fd in (dt.f16, dt.bf16)
    R = y.type.rank
    nb = R - 3
    masked = mask is not None or causal
    bool_mask = mask is not None and mask.type.dtype.is_bool
    dq_static = q.type.shape[-1]
    rows_static = 1
    for d in (kk.type.shape[-2], q.type.shape[-1], v.type.shape[-1]):
        rows_static = rows_static * d if type(d) is int and type(rows_static) is int else None
    grain = max(1, GRAIN_WORK // max(1, rows_static)) if rows_static else 1

    def nrows(kx):
        n = I64(1)
        for a in range(R - 1):
            n = kx.mul(n, kx.dim(y, a))
        return n

    def task(kt, lo, hi):
        b = kt.b
        s = Scalar(b, kt.cg, fd, [fd])
        Hq, Tq, Dv = kt.dim(y, R - 3), kt.dim(y, R - 2), kt.dim(y, R - 1)
        Hkv, Tk, D = kt.dim(kk, kk.type.rank - 3), kt.dim(kk, kk.type.rank - 2), kt.dim(q, q.type.rank - 1)
        group = b.udiv(Hq, Hkv)
        ydims = [kt.dim(y, a) for a in range(nb)]
        sq, sk, sv = (_aligned_strides(kt, t, R, True) for t in (q, kk, v))
        sm = _aligned_strides(kt, mask, R, False) if mask is not None else None
        if at.get("scale") is not None:
            scale = ir.Constant(ct, float(at["scale"]))
        elif type(dq_static) is int:
            scale = ir.Constant(ct, 1 / math.sqrt(dq_static))
        else:
            sqrt = kt.cg.declare("llvm.sqrt.f64", ir.FunctionType(F64, [F64]))
            r = b.fdiv(ir.Constant(F64, 1.0), b.call(sqrt, [b.sitofp(D, F64)]))
            scale = r if ct is F64 else b.fptrunc(r, ct)
        qp, kp, vp, yp = kt.ptr(q), kt.ptr(kk), kt.ptr(v), kt.ptr(y)
        mp = kt.ptr(mask) if mask is not None else None
        acc_row = _entry_alloca(kt, F32, v.type.shape[-1]) if low else None
        dot_acc = _entry_alloca(kt, ct)
        m_acc = _entry_alloca(kt, ct)
        z_acc = _entry_alloca(kt, F64)
        shift = b.sub(Tk, Tq)                      # queries are the last Tq of the Tk positions
        ninf = ir.Constant(ct, float("-inf"))

        def row_body(row):
            i = b.urem(row, Tq)
            r1 = b.udiv(row, Tq)
            h = b.urem(r1, Hq)
            bi = b.udiv(r1, Hq)
            offs = [I64(0)] * 4
            for a in range(nb - 1, -1, -1):
                idx = b.urem(bi, ydims[a])
                bi = b.udiv(bi, ydims[a])
                for j, st in enumerate((sq, sk, sv, sm)):
                    if st is not None:
                        offs[j] = b.add(offs[j], b.mul(idx, st[a]))
            kvh = b.udiv(h, group)
            qrow = b.add(offs[0], b.mul(b.add(b.mul(h, Tq), i), D))
            kbase = b.add(offs[1], b.mul(b.mul(kvh, Tk), D))
            vbase = b.add(offs[2], b.mul(b.mul(kvh, Tk), Dv))
            yrow = b.mul(row, Dv)
            if mask is not None:
                mrow = b.add(offs[3], b.add(b.mul(h, sm[R - 3]), b.mul(i, sm[R - 2])))
            hi_vis = b.add(i, shift)               # causal: keys j <= i + Tk - Tq

            def logit(j):
                b.store(ir.Constant(ct, 0.0), dot_acc)
                krow = b.add(kbase, b.mul(j, D))

                def dot(d):
                    a = to_compute(b, kt.load(q, b.add(qrow, d), qp), fd, kt.cg)
                    c = to_compute(b, kt.load(kk, b.add(krow, d), kp), fd, kt.cg)
                    acc = b.load(dot_acc, typ=ct)
                    b.store(b.fadd(acc, b.fmul(a, c, flags=("contract",)), flags=("reassoc", "contract")),
                            dot_acc)
                kt.loop(I64(0), D, dot)
                x = b.fmul(b.load(dot_acc, typ=ct), scale)
                if softcap is not None:
                    cap = ir.Constant(ct, float(softcap))
                    x = b.fmul(mathf.tanh(s, b.fdiv(x, cap)), cap)
                visible = None
                if mask is not None:
                    mv = kt.load(mask, b.add(mrow, b.mul(j, sm[R - 1])), mp)
                    if bool_mask:
                        visible = b.icmp_unsigned("!=", mv, ir.Constant(mv.type, 0))
                    else:
                        x = b.fadd(x, to_compute(b, mv, fd, kt.cg))
                if causal:
                    c = b.icmp_signed("<=", j, hi_vis)
                    if window is not None:
                        c = b.and_(c, b.icmp_signed(">", j, b.sub(hi_vis, I64(int(window)))))
                    visible = c if visible is None else b.and_(visible, c)
                if visible is not None:
                    x = b.select(visible, x, ninf)
                return x

            # sweep 1: the max logit (NaN propagates, as numpy's max)
            b.store(ninf, m_acc)

            def sweep_max(j):
                x = logit(j)
                m = b.load(m_acc, typ=ct)
                take = b.or_(b.fcmp_ordered(">", x, m), b.fcmp_unordered("uno", x, x))
                b.store(b.select(take, x, m), m_acc)
            kt.loop(I64(0), Tk, sweep_max)
            m = b.load(m_acc, typ=ct)
            if masked:
                m = b.select(b.fcmp_ordered("==", m, ninf), ir.Constant(ct, 0.0), m)

            # sweep 2: z and sum_j e_j v_j
            zero = ir.Constant(F32 if low else ct, 0.0)
            if low:
                kt.loop(I64(0), Dv, lambda d: b.store(zero, b.gep(acc_row, [d], source_etype=F32)))
            else:
                kt.loop(I64(0), Dv, lambda d: kt.store(y, b.add(yrow, d), zero, yp))
            b.store(ir.Constant(F64, 0.0), z_acc)

            def sweep_sum(j):
                e = mathf.exp(s, b.fsub(logit(j), m))
                ew = e if ct is F64 else b.fpext(e, F64)
                b.store(b.fadd(b.load(z_acc, typ=F64), ew), z_acc)
                vrow = b.add(vbase, b.mul(j, Dv))

                def axpy(d):
                    vv = to_compute(b, kt.load(v, b.add(vrow, d), vp), fd, kt.cg)
                    if low:
                        p = b.gep(acc_row, [d], source_etype=F32)
                        b.store(b.fadd(b.load(p, typ=F32), b.fmul(e, vv, flags=("contract",)),
                                       flags=("contract",)), p)
                    else:
                        yi = b.add(yrow, d)
                        kt.store(y, yi, b.fadd(kt.load(y, yi, yp), b.fmul(e, vv, flags=("contract",)),
                                               flags=("contract",)), yp)
                kt.loop(I64(0), Dv, axpy)
            kt.loop(I64(0), Tk, sweep_sum)
            z = b.load(z_acc, typ=F64)
            z = b.select(b.fcmp_ordered("==", z, ir.Constant(F64, 0.0)), ir.Constant(F64, 1.0), z)
            zc = z if ct is F64 else b.fptrunc(z, ct)

            def scale_out(d):
                yi = b.add(yrow, d)
                if low:
                    a = b.load(b.gep(acc_row, [d], source_etype=F32), typ=F32)
                    kt.store(y, yi, from_compute(b, b.fdiv(a, zc), fd, kt.cg), yp)
                else:
                    kt.store(y, yi, b.fdiv(kt.load(y, yi, yp), zc), yp)
            kt.loop(I64(0), Dv, scale_out)
        kt.loop(lo, hi, row_body)

    k.parallel_range(nrows, task, grain=grain)


def _supports(op) -> bool:
    if not tensor_types_supported(op):
        return False
    q, kk, v = op.operands[:3]
    fd = q.type.dtype
    if fd not in FLOATS or kk.type.dtype is not fd or v.type.dtype is not fd:
        return False
    if len(op.operands) == 4:
        md = op.operands[3].type.dtype
        if not (md.is_bool or md is fd):
            return False
    if fd in (dt.f16, dt.bf16):
        dv = v.type.shape[-1]
        return type(dv) is int and dv <= MAX_DV_LOW
    return True


emit_attention.supports = _supports
