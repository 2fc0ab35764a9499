"""GGML block-quantized weights: quant.dequantize, quant.get_rows and quant.matmul.

Weights stay quantized: every kernel reads the raw blocks and decodes one block at a time into
registers (or a block-sized stack buffer); no dequantized weight matrix is ever made.

Each block type has an `unpack` that turns one block into the integer form llama.cpp's dot
products use (see _int_parts in dialects/quant/ggml.py): <32 x i8> vectors of quantized values
(q, 32 elements each), sub-block scales and mins (i16 vectors), and the f32 block
scale d (and dmin, or the additive m of q4_1/q5_1).

- dequantize / get_rows decode a block as d*sc*q [- dmin*mn | + m], operation by operation in
  f32 as the reference does (no FMA contraction), so results are bit-identical to it.
- matmul with act="q8" (llama.cpp's numerics): each chunk of up to MB rows of x is quantized
  once into a scratch buffer (q8_0/q8_1 blocks of 32 for the 32-element types, q8_K blocks of
  256 with 16-element sums for the K-quants), then every weight block gives an exact integer
  dot product per output: on x86 (avx2, avx512) `vpmaddubsw` (unsigned x signed bytes -> i16
  pairs; signed weights use the abs/sign trick) then `vpmaddwd` with the sub-block scales ->
  i32 lanes; elsewhere sign-extended i16 products and pairwise i32 sums. The i32 lanes of a
  block are converted to f32 and multiplied by d_w*d_a into f32 accumulators; the K-quants'
  mins (mn times the activation sums, again by vpmaddwd) go into the same accumulators with
  -dmin_w*d_a. Nothing saturates: |q| <= 128 and |qa| <= 127 keep each i16 pair below 2^15.
  AVX-512 uses the same 256-bit instructions (its VNNI vpdpbusd is not used: the avx512
  target does not enable the VNNI feature, and this machine could not run it).
- matmul with act="f32" (the exact default): a weight block is decoded to f32 (as dequantize)
  into a stack buffer and dotted with the f32 rows of x.
Decode vs prefill: the output columns (weight rows) are split across threads; each task takes
a weight row, unpacks each block once and uses it for a tile of 8 rows of x (prefill; then 4,
then single rows for the rest), or for the single row (decode: M == 1, a GEMV reading every
weight byte once, split over N only).
Rows of x are processed in chunks of MB, so the weights are read M/MB times.
"""
from __future__ import annotations

import llvmlite.ir as ir

from ckir import dtypes as dt

from ..codegen import (
    F16,
    F32,
    F64,
    I1,
    I8,
    I16,
    I32,
    I64,
    PTR,
    TASK_TY,
    Kernel,
    emitter,
    mem_type,
)
from .elementwise import _native_half, f16_to_f32, from_compute, to_compute
from .matmul import Fn

MB = 64              # rows of x quantized per chunk (scratch: MB rows of K bytes + scales)
TILES = (8, 4, 1)    # rows of x per register tile in the dot loops: 8 (prefill), then the rest


def V(n, t):
    return ir.VectorType(t, n)


def vconst(t, vals):
    return ir.Constant(V(len(vals), t), list(vals))


def splat(b, x, n):
    v = b.insert_element(ir.Constant(V(n, x.type), ir.Undefined), x, I32(0))
    return b.shuffle_vector(v, ir.Constant(V(n, x.type), ir.Undefined), vconst(I32, [0] * n))


def shuffle(b, v, idx):
    return b.shuffle_vector(v, ir.Constant(v.type, ir.Undefined), vconst(I32, idx))


def concat(b, x, y):
    n = x.type.count
    return b.shuffle_vector(x, y, vconst(I32, range(2 * n)))


def load_at(b, p, off, ty, align=1):
    q = b.gep(p, [off if isinstance(off, ir.Value) else I64(off)], source_etype=I8, inbounds=True)
    return b.load(q, typ=ty, align=align)


def h2f(k, bits):
    """f16 bits (i16) -> f32, exactly."""
    h = k.b.bitcast(bits, F16)
    return k.b.fpext(h, F32) if _native_half(k.cg) else f16_to_f32(k.b, h)


def f16_round(k, x):
    """f32 -> nearest f16 -> f32."""
    b = k.b
    if _native_half(k.cg):
        return b.fpext(b.fptrunc(x, F16), F32)
    return f16_to_f32(b, from_compute(b, x, dt.f16, k.cg))


# --- block types ------------------------------------------------------------------------------


class Unpacked:
    """One block in integer form: q (list of <32 x i8>), sc (<ng x i16> or None: all 1), mn
    (<ng x i16> or None), d, dm (f32 or None), group size g."""

    def __init__(self, q, sc, mn, d, dm, g):
        self.q, self.sc, self.mn, self.d, self.dm, self.g = q, sc, mn, d, dm, g


class Spec:
    """A block type: sizes, which activation quantization pairs with it, and its unpack."""

    def __init__(self, d, g, unsigned, minkind, unpack):
        self.dtype, self.g, self.unsigned, self.minkind, self._unpack = d, g, unsigned, minkind, unpack
        self.bs, self.bb = d.block_size, d.block_bytes
        self.ab = 32 if self.bs == 32 else 256            # activation block: q8_0/q8_1 or q8_K
        self.ng = self.bs // g

    def unpack(self, k, p):
        return self._unpack(k, k.b, p)


V32, V16 = V(32, I8), V(16, I8)


def _c8(x, n=32):
    return vconst(I8, [x] * n)


def _nib(b, qs):
    """<16 x i8> bytes -> <32 x i8>: low nibbles then high nibbles."""
    return concat(b, b.and_(qs, _c8(15, 16)), b.lshr(qs, _c8(4, 16)))


def _bits32(b, word):
    """i32 word -> <32 x i8> with bit j of the word in lane j, shifted to bit 4 (the 5th bit)."""
    w = splat(b, word, 32)
    bits = b.and_(b.lshr(w, vconst(I32, range(32))), vconst(I32, [1] * 32))
    return b.shl(b.trunc(bits, V32), _c8(4))


def _f16at(k, p, at):
    return h2f(k, load_at(k.b, p, at, I16))


def _u_q4_0(k, b, p):
    return Unpacked([b.sub(_nib(b, load_at(b, p, 2, V16)), _c8(8))], None, None, _f16at(k, p, 0), None, 32)


def _u_q4_1(k, b, p):
    return Unpacked([_nib(b, load_at(b, p, 4, V16))], None, None, _f16at(k, p, 0), _f16at(k, p, 2), 32)


def _u_q5_0(k, b, p):
    q = b.or_(_nib(b, load_at(b, p, 6, V16)), _bits32(b, load_at(b, p, 2, I32)))
    return Unpacked([b.sub(q, _c8(16))], None, None, _f16at(k, p, 0), None, 32)


def _u_q5_1(k, b, p):
    q = b.or_(_nib(b, load_at(b, p, 8, V16)), _bits32(b, load_at(b, p, 4, I32)))
    return Unpacked([q], None, None, _f16at(k, p, 0), _f16at(k, p, 2), 32)


def _u_q8_0(k, b, p):
    return Unpacked([load_at(b, p, 2, V32)], None, None, _f16at(k, p, 0), None, 32)


def _u_q8_k(k, b, p):
    q = [load_at(b, p, 4 + 32 * v, V32) for v in range(8)]
    return Unpacked(q, None, None, load_at(b, p, 0, F32), None, 32)


def _crumb(b, x, j):
    return b.and_(b.lshr(x, _c8(2 * j)), _c8(3))


def _u_q2_k(k, b, p):
    qs = [load_at(b, p, 16 + 32 * h, V32) for h in range(2)]
    q = [_crumb(b, qs[h], j) for h in range(2) for j in range(4)]
    s = load_at(b, p, 0, V16)
    sc = b.zext(b.and_(s, _c8(15, 16)), V(16, I16))
    mn = b.zext(b.lshr(s, _c8(4, 16)), V(16, I16))
    return Unpacked(q, sc, mn, _f16at(k, p, 80), _f16at(k, p, 82), 16)


def _u_q3_k(k, b, p):
    hm = load_at(b, p, 0, V32)
    qs = [load_at(b, p, 32 + 32 * h, V32) for h in range(2)]
    q = []
    for h in range(2):
        for j in range(4):
            hbit = b.and_(b.lshr(hm, _c8(4 * h + j)), _c8(1))
            # a clear high bit means -4
            q.append(b.sub(_crumb(b, qs[h], j), b.shl(b.xor(hbit, _c8(1)), _c8(2))))
    lo8 = load_at(b, p, 96, V(8, I8))
    low = b.and_(b.lshr(concat(b, lo8, lo8), vconst(I8, [0] * 8 + [4] * 8)), _c8(15, 16))
    hi4 = load_at(b, p, 104, V(4, I8))
    high = b.and_(b.lshr(shuffle(b, hi4, [i % 4 for i in range(16)]), vconst(I8, [2 * (i // 4) for i in range(16)])),
                  _c8(3, 16))
    sc = b.sub(b.zext(b.or_(low, b.shl(high, _c8(4, 16))), V(16, I16)), vconst(I16, [32] * 16))
    return Unpacked(q, sc, None, _f16at(k, p, 108), None, 16)


def _scale_min_k4(b, p, at):
    """get_scale_min_k4 for j = 0..7 from the 12 bytes at `at`: (<8 x i16> scales, <8 x i16> mins)."""
    lo = load_at(b, p, at, V(4, I8))
    mid = load_at(b, p, at + 4, V(4, I8))
    hi = load_at(b, p, at + 8, V(4, I8))
    c = lambda x: _c8(x, 4)
    sc = concat(b, b.and_(lo, c(63)), b.or_(b.and_(hi, c(15)), b.shl(b.lshr(lo, c(6)), c(4))))
    mn = concat(b, b.and_(mid, c(63)), b.or_(b.lshr(hi, c(4)), b.shl(b.lshr(mid, c(6)), c(4))))
    return b.zext(sc, V(8, I16)), b.zext(mn, V(8, I16))


def _u_q4_k(k, b, p):
    q = []
    for c in range(4):
        x = load_at(b, p, 16 + 32 * c, V32)
        q += [b.and_(x, _c8(15)), b.lshr(x, _c8(4))]
    sc, mn = _scale_min_k4(b, p, 4)
    return Unpacked(q, sc, mn, _f16at(k, p, 0), _f16at(k, p, 2), 32)


def _u_q5_k(k, b, p):
    qh = load_at(b, p, 16, V32)
    q = []
    for c in range(4):
        x = load_at(b, p, 48 + 32 * c, V32)
        for s, low in ((2 * c, b.and_(x, _c8(15))), (2 * c + 1, b.lshr(x, _c8(4)))):
            high = b.shl(b.and_(b.lshr(qh, _c8(s)), _c8(1)), _c8(4))
            q.append(b.or_(low, high))
    sc, mn = _scale_min_k4(b, p, 4)
    return Unpacked(q, sc, mn, _f16at(k, p, 0), _f16at(k, p, 2), 32)


def _u_q6_k(k, b, p):
    q = []
    for h in range(2):
        l0, l1 = load_at(b, p, 64 * h, V32), load_at(b, p, 64 * h + 32, V32)
        qh = load_at(b, p, 128 + 32 * h, V32)
        lows = [b.and_(l0, _c8(15)), b.and_(l1, _c8(15)), b.lshr(l0, _c8(4)), b.lshr(l1, _c8(4))]
        for j in range(4):
            q.append(b.sub(b.or_(lows[j], b.shl(_crumb(b, qh, j), _c8(4))), _c8(32)))
    sc = b.sext(load_at(b, p, 192, V16), V(16, I16))
    return Unpacked(q, sc, None, _f16at(k, p, 208), None, 16)


SPECS = {s.dtype: s for s in (
    Spec(dt.q4_0, 32, False, None, _u_q4_0), Spec(dt.q4_1, 32, True, "add", _u_q4_1),
    Spec(dt.q5_0, 32, False, None, _u_q5_0), Spec(dt.q5_1, 32, True, "add", _u_q5_1),
    Spec(dt.q8_0, 32, False, None, _u_q8_0),
    Spec(dt.q2_k, 16, True, "sub", _u_q2_k), Spec(dt.q3_k, 16, False, None, _u_q3_k),
    Spec(dt.q4_k, 32, True, "sub", _u_q4_k), Spec(dt.q5_k, 32, True, "sub", _u_q5_k),
    Spec(dt.q6_k, 16, False, None, _u_q6_k), Spec(dt.q8_k, 32, False, None, _u_q8_k))}


# --- decoding to f32 (dequantize, get_rows, act="f32") ----------------------------------------------


def decode_block(k, spec, p, out):
    """Write the block at p as bs f32 values at out, exactly as the reference computes them."""
    b = k.b
    u = spec.unpack(k, p)
    ng = spec.ng
    dl = ml = None
    if u.sc is not None:
        dl = b.fmul(splat(b, u.d, ng), b.sitofp(u.sc, V(ng, F32)))
    if u.mn is not None:
        ml = b.fmul(splat(b, u.dm, ng), b.sitofp(u.mn, V(ng, F32)))
    for v, q in enumerate(u.q):
        qf = b.sitofp(q, V(32, F32))
        grp = [(32 * v + e) // u.g for e in range(32)]
        scale = shuffle(b, dl, grp) if dl is not None else splat(b, u.d, 32)
        val = b.fmul(scale, qf)
        if ml is not None:
            val = b.fsub(val, shuffle(b, ml, grp))
        elif spec.minkind == "add":
            val = b.fadd(val, splat(b, u.dm, 32))
        dst = b.gep(out, [I64(32 * v)], source_etype=F32, inbounds=True)
        b.store(val, dst, align=4)


def _store_row(k, f, buf, dst, dst_off, n, d):
    """Store n f32 from buf to dst[dst_off:] converted to dtype d."""
    def body(i):
        x = f.b.load(f.b.gep(buf, [i], source_etype=F32, inbounds=True), typ=F32)
        x = f.b.fpext(x, F64) if d is dt.f64 else from_compute(f.b, x, d, k.cg)
        f.b.store(x, f.b.gep(dst, [f.b.add(dst_off, i)], source_etype=mem_type(d), inbounds=True))
    k.loop(I64(0), I64(n), body)


def _static_rank2(v):
    return v.type.rank == 2 and all(type(s) is int for s in v.type.shape)


def _deq_supports(op):
    w = op.operands[0]
    return w.type.dtype in SPECS and w.type.rank >= 1 and type(w.type.shape[-1]) is int


@emitter("quant.dequantize")
def emit_dequantize(k, op):
    w, y = op.operands[0], op.results[0]
    spec = SPECS[w.type.dtype]
    K = w.type.shape[-1]
    nb = K // spec.bs

    def count(kk):
        n = I64(nb)
        for ax in range(w.type.rank - 1):
            n = kk.mul(n, kk.dim(w, ax))
        return n

    def body(kt, lo, hi):
        f = Fn.of_kernel(kt)
        buf = f.alloca(F32, spec.bs)
        wp, yp = kt.ptr(w), kt.ptr(y)

        def blk(i):
            decode_block(kt, spec, kt.b.gep(wp, [kt.b.mul(i, I64(spec.bb))], source_etype=I8), buf)
            _store_row(kt, f, buf, yp, kt.b.mul(i, I64(spec.bs)), spec.bs, y.type.dtype)
        kt.loop(lo, hi, blk)

    k.parallel_range(count, body, grain=64)


emit_dequantize.supports = _deq_supports


def _rows_supports(op):
    w = op.operands[0]
    return w.type.dtype in SPECS and _static_rank2(w)


@emitter("quant.get_rows")
def emit_get_rows(k, op):
    w, ids, y = op.operands[0], op.operands[1], op.results[0]
    spec = SPECS[w.type.dtype]
    V_, K = w.type.shape
    nb, rowb = K // spec.bs, K // spec.bs * spec.bb

    def body(kt, lo, hi):
        f = Fn.of_kernel(kt)
        b = kt.b
        buf = f.alloca(F32, spec.bs)
        wp, yp = kt.ptr(w), kt.ptr(y)

        def row(i):
            idx = kt.load(ids, i)
            idx = b.sext(idx, I64) if idx.type != I64 else idx
            bad = b.or_(b.icmp_signed("<", idx, I64(0)), b.icmp_signed(">=", idx, I64(V_)))
            with b.if_else(bad) as (then, otherwise):
                with then:
                    kt.fail()       # no read; plan.py reruns the reference, which names the id
                with otherwise:
                    src = b.gep(wp, [b.mul(idx, I64(rowb))], source_etype=I8)

                    def blk(j):
                        decode_block(kt, spec, b.gep(src, [b.mul(j, I64(spec.bb))], source_etype=I8), buf)
                        _store_row(kt, f, buf, yp, b.add(b.mul(i, I64(K)), b.mul(j, I64(spec.bs))),
                                   spec.bs, y.type.dtype)
                    kt.loop(I64(0), I64(nb), blk)
        kt.loop(lo, hi, row)

    k.parallel_range(lambda kk: kk.numel(ids), body, grain=max(1, 4096 // K))


emit_get_rows.supports = _rows_supports


# --- matmul ---------------------------------------------------------------------------------------


def _parallel(k, ntasks, extras, body):
    """k.parallel with extra i64 values (computed in k) handed to each task: body(kt, t, extras)."""
    cg = k.cg
    tfn = ir.Function(k.mod, TASK_TY, cg.fresh(f"{k.fn.name}_task"))
    tfn.linkage = "internal"
    ctx, t = tfn.args
    eb = ir.IRBuilder(tfn.append_basic_block("unpack"))
    bufs = eb.load(eb.gep(ctx, [I64(0)], source_etype=PTR), typ=PTR)
    dims = eb.load(eb.gep(ctx, [I64(1)], source_etype=PTR), typ=PTR)
    ex = [eb.load(eb.gep(ctx, [I64(2 + i)], source_etype=I64), typ=I64) for i in range(len(extras))]
    kt = Kernel(k.mod, tfn, k.layout, k.op, bufs, dims, cg)
    eb.branch(kt.head.block)
    body(kt, t, ex)
    kt.b.ret_void()
    cell = k.head.alloca(I64, I64(2 + len(extras)))
    cell.type = PTR
    b = k.b
    b.store(k.bufs, b.gep(cell, [I64(0)], source_etype=PTR))
    b.store(k.dims, b.gep(cell, [I64(1)], source_etype=PTR))
    for i, e in enumerate(extras):
        b.store(e, b.gep(cell, [I64(2 + i)], source_etype=I64))
    b.call(cg.parallel_for(), [tfn, cell, ntasks])


def _split(kt, t, n, nt):
    """Task t's share [lo, hi) of n items over nt tasks."""
    b = kt.b
    chunk = b.sdiv(b.add(n, b.sub(nt, I64(1))), nt)
    lo = b.mul(t, chunk)
    hi0 = b.add(lo, chunk)
    return lo, b.select(b.icmp_signed("<", hi0, n), hi0, n)


class Act:
    """Layout of one quantized activation row in the scratch: q int8 [K], d f32 [K/ab], then
    s f32 [K/32] (q8_1, for q4_1/q5_1) or 16-element sums i16 [K/16] (q8_K's bsums)."""

    def __init__(self, spec, K):
        self.K, self.ab = K, spec.ab
        self.d_off = K
        self.x_off = K + 4 * (K // spec.ab)
        extra = 4 * (K // 32) if spec.ab == 32 else 2 * (K // 16)
        self.stride = -(-(self.x_off + extra) // 64) * 64


def _scratch(cg, nbytes):
    store = cg.__dict__.setdefault("_quant", {})
    g = store.get("scratch")
    nbytes = max(64, -(-nbytes // 64) * 64)
    if g is None:
        ty = ir.ArrayType(I8, nbytes)
        g = ir.GlobalVariable(cg.mod, ty, "ckir_q8_scratch")
        g.linkage = "internal"
        g.initializer = ir.Constant(ty, None)
        g.align = 64
        g.type = ir.PointerType()       # opaque, so geps into it give plain pointers
        store["scratch"] = g
    elif g.value_type.count < nbytes:
        g.value_type = ir.ArrayType(I8, nbytes)
        g.type = ir.PointerType()
        g.initializer = ir.Constant(g.value_type, None)
    return g


def _nearest_int(b, x):
    """llama.cpp's nearest_int: round half to even via the 1.5*2^23 trick (|x| < 2^22)."""
    v = b.bitcast(b.fadd(x, F32(12582912.0)), I32)
    return b.sub(b.and_(v, I32(0x007FFFFF)), I32(0x00400000))


def _quantize_row(k, f, x, xoff, act, dst):
    """Quantize K values of x (starting at element xoff) into the activation row at dst."""
    b = k.b
    K, ab = act.K, act.ab
    xd = x.type.dtype

    def xat(j):
        v = k.load(x, b.add(xoff, j))
        return to_compute(b, v, xd, k.cg)

    def block(ib):
        base = b.mul(ib, I64(ab))

        def scan(j, amax, mx):
            v = xat(b.add(base, j))
            a = b.call(k.cg.declare("llvm.fabs.f32", ir.FunctionType(F32, [F32])), [v])
            gt = b.fcmp_ordered(">", a, amax)
            return b.select(gt, a, amax), b.select(gt, v, mx)
        amax, mx = f.loop(I64(0), I64(ab), scan, carry=(F32(0.0), F32(0.0)))
        nz = b.fcmp_ordered("!=", amax, F32(0.0))
        if ab == 32:
            d = b.fdiv(amax, F32(127.0))
            inv = b.select(nz, b.fdiv(F32(127.0), amax), F32(0.0))
        else:
            inv = b.select(nz, b.fdiv(F32(-127.0), mx), F32(0.0))
            d = b.select(nz, b.fdiv(F32(1.0), inv), F32(0.0))
        bdst = b.gep(dst, [base], source_etype=I8)

        def quant(j, s):
            q = _nearest_int(b, b.fmul(xat(b.add(base, j)), inv))
            if ab == 256:
                q = b.select(b.icmp_signed(">", q, I32(127)), I32(127), q)
            b.store(b.trunc(q, I8), b.gep(bdst, [j], source_etype=I8))
            return [b.add(s, q)]
        if ab == 32:
            (s,) = f.loop(I64(0), I64(32), quant, carry=(I32(0),))
            dh = f16_round(k, d)
            b.store(dh, b.gep(b.gep(dst, [I64(act.d_off)], source_etype=I8), [ib], source_etype=F32))
            sv = f16_round(k, b.fmul(d, b.sitofp(s, F32)))
            b.store(sv, b.gep(b.gep(dst, [I64(act.x_off)], source_etype=I8), [ib], source_etype=F32))
        else:
            for g in range(16):
                (s,) = f.loop(I64(16 * g), I64(16 * g + 16), quant, carry=(I32(0),))
                b.store(b.trunc(s, I16), b.gep(b.gep(dst, [I64(act.x_off)], source_etype=I8),
                                               [b.add(b.mul(ib, I64(16)), I64(g))], source_etype=I16))
            b.store(d, b.gep(b.gep(dst, [I64(act.d_off)], source_etype=I8), [ib], source_etype=F32))
    k.loop(I64(0), I64(K // ab), block)


def _x86(cg):
    return cg.target.name in ("avx2", "avx512", "amx")


def _pair_scales(b, u, v):
    """The scale of each i16 pair lane l (elements 32v+2l, +1) of q[v], as <16 x i16>."""
    return shuffle(b, u.sc, [(32 * v + 2 * l) // u.g for l in range(16)])


def _madd16(k, x, y):
    """<16 x i16> x, y -> <8 x i32>: x[2l]*y[2l] + x[2l+1]*y[2l+1] (vpmaddwd on x86)."""
    b, cg = k.b, k.cg
    if _x86(cg):
        fn = cg.declare("llvm.x86.avx2.pmadd.wd", ir.FunctionType(V(8, I32), [V(16, I16), V(16, I16)]))
        return b.call(fn, [x, y])
    p = b.mul(b.sext(x, V(16, I32)), b.sext(y, V(16, I32)))
    return b.add(shuffle(b, p, range(0, 16, 2)), shuffle(b, p, range(1, 16, 2)))


def _int_dot(k, spec, u, ap):
    """sum over the block of sc * q * qa as <8 x i32> lanes (ap: the block's activations)."""
    b, cg = k.b, k.cg
    acc = None
    for v, q in enumerate(u.q):
        a = load_at(b, ap, 32 * v, V32)
        if _x86(cg):
            maddubs = cg.declare("llvm.x86.avx2.pmadd.ub.sw", ir.FunctionType(V(16, I16), [V32, V32]))
            maddwd = cg.declare("llvm.x86.avx2.pmadd.wd", ir.FunctionType(V(8, I32), [V(16, I16), V(16, I16)]))
            if spec.unsigned:
                p16 = b.call(maddubs, [q, a])
            else:
                # |q| as unsigned times a with q's sign: the same products, maddubs' operand kinds
                absf = cg.declare("llvm.abs.v32i8", ir.FunctionType(V32, [V32, I1]))
                sign = cg.declare("llvm.x86.avx2.psign.b", ir.FunctionType(V32, [V32, V32]))
                p16 = b.call(maddubs, [b.call(absf, [q, I1(0)]), b.call(sign, [a, q])])
            sc = _pair_scales(b, u, v) if u.sc is not None else vconst(I16, [1] * 16)
            p32 = b.call(maddwd, [p16, sc])
        else:
            p = b.mul(b.sext(q, V(32, I16)), b.sext(a, V(32, I16)))
            pairs = b.add(b.sext(shuffle(b, p, range(0, 32, 2)), V(16, I32)),
                          b.sext(shuffle(b, p, range(1, 32, 2)), V(16, I32)))
            if u.sc is not None:
                pairs = b.mul(pairs, b.sext(_pair_scales(b, u, v), V(16, I32)))
            p32 = b.add(shuffle(b, pairs, range(8)), shuffle(b, pairs, range(8, 16)))
        acc = p32 if acc is None else b.add(acc, p32)
    return acc


def _fmuladd(k, a, x, c):
    t = a.type
    name = f"llvm.fmuladd.v{t.count}f32" if isinstance(t, ir.VectorType) else "llvm.fmuladd.f32"
    return k.b.call(k.cg.declare(name, ir.FunctionType(t, [t, t, t])), [a, x, c])


def _hsum(k, v):
    fn = k.cg.declare("llvm.vector.reduce.fadd.v8f32", ir.FunctionType(F32, [F32, V(8, F32)]))
    return k.b.call(fn, [F32(-0.0), v])


def _q8_rows(kt, f, spec, act, arow, nrows, wrow):
    """Dot the weight row at wrow with nrows quantized activation rows starting at arow (in the
    scratch): the f32 results."""
    b = kt.b
    nb = act.K // spec.bs

    def blk(i, *carry):
        wp = b.gep(wrow, [b.mul(i, I64(spec.bb))], source_etype=I8)
        u = spec.unpack(kt, wp)
        out = []
        for r in range(nrows):
            acc, macc = carry[2 * r], carry[2 * r + 1]
            ar = b.gep(arow, [I64(r * act.stride)], source_etype=I8)
            ap = b.gep(ar, [b.mul(i, I64(spec.bs))], source_etype=I8)
            da = b.load(b.gep(b.gep(ar, [I64(act.d_off)], source_etype=I8), [i], source_etype=F32), typ=F32)
            isum = _int_dot(kt, spec, u, ap)
            acc = _fmuladd(kt, splat(b, b.fmul(u.d, da), 8), b.sitofp(isum, V(8, F32)), acc)
            if spec.minkind == "add":
                sa = b.load(b.gep(b.gep(ar, [I64(act.x_off)], source_etype=I8), [i], source_etype=F32), typ=F32)
                macc = b.fadd(macc, b.fmul(u.dm, sa))
            elif spec.minkind == "sub":
                # mins times the activation's 16-element sums, as 8 i32 lanes, into the same
                # accumulator with -(dmin*d_a)
                bs = load_at(b, ar, b.add(I64(act.x_off), b.mul(i, I64(32))), V(16, I16), align=2)
                mins = u.mn if spec.ng == 16 else shuffle(b, u.mn, [l // 2 for l in range(16)])
                ms = _madd16(kt, mins, bs)
                acc = _fmuladd(kt, splat(b, b.fneg(b.fmul(u.dm, da)), 8), b.sitofp(ms, V(8, F32)), acc)
            out += [acc, macc]
        return out
    zero = ir.Constant(V(8, F32), [0.0] * 8)
    res = f.loop(I64(0), I64(nb), blk, carry=[zero, F32(0.0)] * nrows)
    ys = []
    for r in range(nrows):
        s = _hsum(kt, res[2 * r])
        ys.append(b.fadd(s, res[2 * r + 1]) if spec.minkind == "add" else s)
    return ys


def _f32_rows(kt, f, spec, x, K, xrow0, nrows, wrow, buf):
    """act="f32": decode each block of the weight row at wrow into buf and dot it with nrows f32
    rows of x (element offset xrow0, stride K)."""
    b = kt.b
    nb = K // spec.bs
    xp = kt.ptr(x)

    def blk(i, *accs):
        decode_block(kt, spec, b.gep(wrow, [b.mul(i, I64(spec.bb))], source_etype=I8), buf)
        out = list(accs)
        for v in range(spec.bs // 8):
            wv = b.load(b.gep(buf, [I64(8 * v)], source_etype=F32), typ=V(8, F32), align=4)
            for r in range(nrows):
                off = b.add(b.add(xrow0, I64(r * K)), b.add(b.mul(i, I64(spec.bs)), I64(8 * v)))
                xv = b.load(b.gep(xp, [off], source_etype=F32), typ=V(8, F32), align=4)
                out[r] = _fmuladd(kt, xv, wv, out[r])
        return out
    zero = ir.Constant(V(8, F32), [0.0] * 8)
    res = f.loop(I64(0), I64(nb), blk, carry=[zero] * nrows)
    return [_hsum(kt, a) for a in res]


def _mm_supports(op):
    x, w = op.operands
    if w.type.dtype not in SPECS or not _static_rank2(w):
        return False
    if op.attrs["act"] == "q8":
        return x.type.dtype in (dt.f32, dt.f16, dt.bf16)
    return x.type.dtype is dt.f32


@emitter("quant.matmul")
def emit_matmul(k, op):
    x, w, y = op.operands[0], op.operands[1], op.results[0]
    spec = SPECS[w.type.dtype]
    N, K = w.type.shape
    rowb = K // spec.bs * spec.bb
    q8 = op.attrs["act"] == "q8"
    act = Act(spec, K)
    cg = k.cg
    b = k.b

    def rows(kk):
        m = I64(1)
        for ax in range(x.type.rank - 1):
            m = kk.mul(m, kk.dim(x, ax))
        return m

    M = rows(k)
    if q8:
        g = _scratch(cg, MB * act.stride)
    # columns per task: enough weight bytes (~64 KB) to make a task worth its dispatch
    grain = max(1, min(N, (64 << 10) // max(rowb, 1)))

    def chunk(m0):
        mc = b.sub(M, m0)
        mc = b.select(b.icmp_signed("<", mc, I64(MB)), mc, I64(MB))
        if q8:
            def qtask(kt, t, ex):
                f = Fn.of_kernel(kt)
                lo, hi = _split(kt, t, ex[1], kt.ntasks(ex[1], 1))

                def one(r):
                    dst = kt.b.gep(g, [kt.b.mul(r, I64(act.stride))], source_etype=I8)
                    _quantize_row(kt, f, x, kt.b.mul(kt.b.add(ex[0], r), I64(K)), act, dst)
                kt.loop(lo, hi, one)
            _parallel(k, k.ntasks(mc, 1), [m0, mc], qtask)

        def ctask(kt, t, ex):
            f = Fn.of_kernel(kt)
            kb = kt.b
            m0t, mct = ex
            lo, hi = _split(kt, t, I64(N), kt.ntasks(I64(N), grain))
            wp = kt.ptr(w)
            buf = None if q8 else f.alloca(F32, spec.bs)

            def col(n):
                wrow = kb.gep(wp, [kb.mul(n, I64(rowb))], source_etype=I8)

                def tile(r0, nrows):
                    if q8:
                        arow = kb.gep(g, [kb.mul(r0, I64(act.stride))], source_etype=I8)
                        ys = _q8_rows(kt, f, spec, act, arow, nrows, wrow)
                    else:
                        ys = _f32_rows(kt, f, spec, x, K, kb.mul(kb.add(m0t, r0), I64(K)), nrows, wrow, buf)
                    for r, v in enumerate(ys):
                        idx = kb.add(kb.mul(kb.add(kb.add(m0t, r0), I64(r)), I64(N)), n)
                        kt.store(y, idx, from_compute(kb, v, y.type.dtype, kt.cg))
                # prefill: tiles of 8 rows share each unpacked block (then 4, then single rows);
                # decode (M == 1) runs only the single-row loop
                start = I64(0)
                for rt in TILES:
                    end = kb.add(start, kb.mul(kb.sdiv(kb.sub(mct, start), I64(rt)), I64(rt)))
                    f.loop(start, end, lambda r0, rt=rt: tile(r0, rt), step=I64(rt))
                    start = end
            kt.loop(lo, hi, col)
        _parallel(k, k.ntasks(I64(N), grain), [m0, mc], ctask)

    k.loop(I64(0), M, chunk, step=I64(MB))


emit_matmul.supports = _mm_supports
