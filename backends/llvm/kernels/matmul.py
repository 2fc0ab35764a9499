"""nn.matmul: packed, cache-blocked GEMM with register-tiled microkernels, and a GEMV path.

Semantics are numpy's matmul (batch dims broadcast, 1-D operands promoted, transpose flags swap
the last two dims). Every dtype is computed in its compute type: f32 and f64 natively, f16 and
bf16 converted to f32 while packing (or loading, in GEMV) and rounded once when the result is
stored, as the reference does.

GEMM (both M and N > 1) follows GotoBLAS/BLIS: for each NC-wide column block of B, each MCB-row
chunk of A and each KC-deep slice of K, A is packed into MR-row micro-panels and B into NR-column
micro-panels (contiguous, zero-padded at the edges, transposes and dtype conversion done here),
then a microkernel computes each MR x NR tile of C with MR*NR/L vector accumulators and one FMA
per (row, vector) per k. The first K slice stores C, later ones add to it; f16/bf16 results
accumulate in an f32 scratch tile and are rounded once after the last slice.

Parallelism: one packing phase and one compute phase per (column block, row chunk, K slice),
each a `ckir_parallel_for` job: packing splits over micro-panels, computing over a grid of
(row block of ~MC rows) x (group of column panels), so every packed byte is written once and
the threads share the packed B. When there are several small matrices (batched matmul, e.g.
attention heads), tasks take whole batch items instead and run the same loops serially, each in
its own scratch slot.

GEMV (M == 1 or N == 1, the decode case) reads B (or A) once, unpacked: either dot products of
contiguous rows (4 rows at a time) or y += v[k] * row_k over a column chunk kept in a stack
buffer; parallel over output chunks and batch items.

Packing buffers live in one module-level global (`ckir_mm_scratch`), zero-initialized, sized at
compile time for the largest need of the module's matmuls (the block sizes, or less when the
static dims are smaller) and shared by them, since the kernels of a graph run one at a time.
Why not malloc: a buffer malloc'ed once could never be freed (nothing runs when a compiled
module is dropped), and malloc per call is the allocation on the hot path we want to avoid;
the global is released with the compiled code. Stack space is used only for the small fixed
tiles (an edge tile of C, a GEMV column chunk). The cost: the loader commits the global's pages
(a few MB per compiled graph with big matmuls), and a compiled graph must not be run by two
threads at once (already true of the thread pool).
"""
from __future__ import annotations

from dataclasses import dataclass

import llvmlite.ir as ir

from ckir import dtypes as dt

from ..codegen import F32, F64, I8, I32, I64, PTR, TASK_TY, VOID, emitter, mem_type, tensor_types_supported
from .elementwise import _native_half, from_compute, to_compute

# --- blocking per target -----------------------------------------------------------------------


@dataclass(frozen=True)
class Blocking:
    L: int        # vector lanes of the compute type (1: scalar code)
    MR: int       # rows of the register tile
    NR: int       # columns of the register tile (a multiple of L)
    KC: int       # depth of a packed slice (A micro-panel MR*KC and B micro-panel KC*NR stay in L1/L2)
    MC: int       # rows per compute task (A block MC*KC in L2)
    NC: int       # columns per packed B block (KC*NC in L3)
    MCB: int      # rows of A packed per phase
    NCS: int      # columns per B block in the batch-parallel (serial per item) mode
    a_vec: bool   # load A as vectors and use lane splats (AArch64 fmla by element)


# (MR, NR in vectors) per target and compute type; the accumulators (MR * NR/L) plus the B
# vectors and a broadcast must fit in the register file: 16 ymm (avx2: 12 + 2 + 1), 32 zmm
# (avx512: 28 + 2 + 1), 32 q (neon: 24 + 3 + 2 A vectors), 16 xmm/GPR-ish for plain code.
_TILES = {
    ("avx2", "f32"): (6, 2), ("avx2", "f64"): (6, 2),
    ("avx512", "f32"): (14, 2), ("avx512", "f64"): (14, 2),
    ("neon", "f32"): (8, 3), ("neon", "f64"): (8, 3),
    ("scalar", "f32"): (4, 4), ("scalar", "f64"): (4, 4),
}


def blocking(target, ct: ir.Type, low: bool) -> Blocking:
    """Block sizes for `target` and compute type `ct`; `low`: f16/bf16 results (their f32
    accumulation tile MCB x NC is kept in the scratch, so the blocks are smaller)."""
    name = {"amx": "avx512"}.get(target.name, target.name)
    esz = 8 if ct == F64 else 4
    lanes = max(1, target.vector_bits // (8 * esz)) if name != "scalar" else 1
    mr, nv = _TILES[(name, "f64" if ct == F64 else "f32")]
    nr = nv * lanes
    kc = 256
    mc = mr * max(1, (144 if esz == 4 else 72) // mr) if name != "scalar" else 64
    nc_elems = (16 << 20) // (kc * esz * 4)              # B block of 4 MB
    nc = nr * max(1, nc_elems // nr)
    mcb = mr * (1024 // mr)
    if low:
        nc = nr * max(1, 2048 // nr)
        mcb = mr * (256 // mr)
    ncs = nr * max(1, 512 // nr)
    import os  # TUNING
    kc = int(os.environ.get("MM_KC", kc)); mc = int(os.environ.get("MM_MC", mc)); nc = nr * (int(os.environ.get("MM_NC", nc)) // nr)  # TUNING
    return Blocking(lanes, mr, nr, kc, mc, nc, mcb, ncs, name == "neon")


# --- small IR helpers --------------------------------------------------------------------------


class Fn:
    """A function being built: `entry` holds allocas (so they are static), `b` the code."""

    def __init__(self, cg, fn, entry, b):
        self.cg, self.fn, self.entry, self.b = cg, fn, entry, b

    @classmethod
    def new(cls, cg, name, argtys, noalias=()):
        fn = ir.Function(cg.mod, ir.FunctionType(VOID, argtys), cg.fresh(name))
        fn.linkage = "internal"
        for i in noalias:
            fn.args[i].add_attribute("noalias")
        entry = ir.IRBuilder(fn.append_basic_block("entry"))
        body = fn.append_basic_block("body")
        jump = entry.branch(body)
        entry.position_before(jump)
        return cls(cg, fn, entry, ir.IRBuilder(body))

    @classmethod
    def of_kernel(cls, k):
        return cls(k.cg, k.fn, k.head, k.b)

    def alloca(self, ty, n: int):
        """Stack space for n values of `ty`, in the entry block (static), as an opaque pointer."""
        a = self.entry.alloca(ty, I64(n))
        a.type = PTR        # llvmlite types allocas as typed pointers; stores of vectors need an opaque one
        return a

    @property
    def args(self):
        return self.fn.args

    def loop(self, start, end, body, step=None, carry=()):
        """for i in [start, end) by step: carry = body(i, *carry); returns the final carry."""
        b = self.b
        step = step if step is not None else I64(1)
        pre = b.block
        head = self.fn.append_basic_block("loop")
        exit_ = self.fn.append_basic_block("endloop")
        b.cbranch(b.icmp_signed("<", start, end), head, exit_)
        b.position_at_end(head)
        i = b.phi(I64)
        i.add_incoming(start, pre)
        phis = []
        for v in carry:
            p = b.phi(v.type)
            p.add_incoming(v, pre)
            phis.append(p)
        new = body(i, *phis) if carry else body(i)
        new = list(new) if carry else []
        nxt = b.add(i, step)
        latch = b.block
        i.add_incoming(nxt, latch)
        for p, v in zip(phis, new):
            p.add_incoming(v, latch)
        b.cbranch(b.icmp_signed("<", nxt, end), head, exit_)
        b.position_at_end(exit_)
        outs = []
        for v0, v1 in zip(carry, new):
            p = b.phi(v0.type)
            p.add_incoming(v0, pre)
            p.add_incoming(v1, latch)
            outs.append(p)
        return outs

    # integer helpers that fold constants
    def min(self, a, c):
        if isinstance(a, ir.Constant) and isinstance(c, ir.Constant):
            return I64(min(a.constant, c.constant))
        return self.b.select(self.b.icmp_signed("<", a, c), a, c)

    def max(self, a, c):
        if isinstance(a, ir.Constant) and isinstance(c, ir.Constant):
            return I64(max(a.constant, c.constant))
        return self.b.select(self.b.icmp_signed(">", a, c), a, c)

    def mul(self, a, c):
        if isinstance(a, ir.Constant) and isinstance(c, ir.Constant):
            return I64(a.constant * c.constant)
        if isinstance(a, ir.Constant) and a.constant == 1:
            return c
        if isinstance(c, ir.Constant) and c.constant == 1:
            return a
        if (isinstance(a, ir.Constant) and a.constant == 0) or (isinstance(c, ir.Constant) and c.constant == 0):
            return I64(0)
        return self.b.mul(a, c)

    def add(self, a, c):
        if isinstance(a, ir.Constant) and isinstance(c, ir.Constant):
            return I64(a.constant + c.constant)
        if isinstance(a, ir.Constant) and a.constant == 0:
            return c
        if isinstance(c, ir.Constant) and c.constant == 0:
            return a
        return self.b.add(a, c)

    def sub(self, a, c):
        if isinstance(a, ir.Constant) and isinstance(c, ir.Constant):
            return I64(a.constant - c.constant)
        if isinstance(c, ir.Constant) and c.constant == 0:
            return a
        return self.b.sub(a, c)

    def cdiv(self, a, c):
        """ceil(a / c) for a >= 0, c > 0."""
        if isinstance(a, ir.Constant) and isinstance(c, ir.Constant):
            return I64(-(-a.constant // c.constant))
        if isinstance(c, ir.Constant) and c.constant == 1:
            return a
        return self.b.sdiv(self.b.add(a, self.b.sub(c, I64(1))), c)

    def div(self, a, c):
        if isinstance(a, ir.Constant) and isinstance(c, ir.Constant):
            return I64(a.constant // c.constant)
        if isinstance(c, ir.Constant) and c.constant == 1:
            return a
        return self.b.sdiv(a, c)

    def rem(self, a, c):
        if isinstance(a, ir.Constant) and isinstance(c, ir.Constant):
            return I64(a.constant % c.constant)
        if isinstance(c, ir.Constant) and c.constant == 1:
            return I64(0)
        return self.b.srem(a, c)

    def gep(self, p, i, t):
        if isinstance(i, ir.Constant) and i.constant == 0:
            return p
        return self.b.gep(p, [i], source_etype=t, inbounds=True)


def _is_const(v, c=None):
    return isinstance(v, ir.Constant) and (c is None or v.constant == c)


def _cache(cg) -> dict:
    """Per-module store of the shared functions (microkernels, packing, ...) and the scratch."""
    return cg.__dict__.setdefault("_matmul", {})


def _vt(ct, L):
    return ir.VectorType(ct, L) if L > 1 else ct


def _zero(ct, L):
    return ir.Constant(_vt(ct, L), None) if L > 1 else ir.Constant(ct, 0.0)


def _splat(b, x, L):
    if L == 1:
        return x
    v = b.insert_element(ir.Constant(ir.VectorType(x.type, L), ir.Undefined), x, I32(0))
    return b.shuffle_vector(v, ir.Constant(ir.VectorType(x.type, L), ir.Undefined),
                            ir.Constant(ir.VectorType(I32, L), [0] * L))


def _sfx(t) -> str:
    if isinstance(t, ir.VectorType):
        return f"v{t.count}{_sfx(t.element)}"
    return "f64" if t == F64 else "f32"


def _fma(f, a, c, acc):
    """a * c + acc; an FMA where the target has one (llvm.fmuladd lets LLVM choose)."""
    t = acc.type
    fn = f.cg.declare(f"llvm.fmuladd.{_sfx(t)}", ir.FunctionType(t, [t, t, t]))
    return f.b.call(fn, [a, c, acc])


def _hsum(f, v):
    """Horizontal sum of a vector (any order: it is a dot product's partial sums)."""
    if not isinstance(v.type, ir.VectorType):
        return v
    et = v.type.element
    fn = f.cg.declare(f"llvm.vector.reduce.fadd.{_sfx(v.type)}", ir.FunctionType(et, [et, v.type]))
    return f.b.call(fn, [ir.Constant(et, -0.0), v], fastmath=("reassoc",))


def _load(f, p, i, mdt: dt.DType, n: int):
    """n elements of dtype `mdt` at p[i], in the compute type (a vector when n > 1)."""
    b = f.b
    mt = mem_type(mdt)
    q = f.gep(p, i, mt)
    esz = 8 if mdt is dt.f64 else (4 if mdt is dt.f32 else 2)
    if n == 1:
        return to_compute(b, b.load(q, typ=mt, align=esz), mdt, f.cg)
    x = b.load(q, typ=ir.VectorType(mt, n), align=esz)
    if mdt in (dt.f32, dt.f64):
        return x
    if mdt is dt.f16:
        assert _native_half(f.cg)       # vector code only on targets with half conversions
        return b.fpext(x, ir.VectorType(F32, n))
    w = b.shl(b.zext(x, ir.VectorType(I32, n)), ir.Constant(ir.VectorType(I32, n), [16] * n))
    return b.bitcast(w, ir.VectorType(F32, n))


def _store_c(f, p, i, x, ct, L):
    """Store a compute-type value (or vector) to p[i] (compute-type memory)."""
    esz = 8 if ct == F64 else 4
    f.b.store(x, f.gep(p, i, ct), align=esz)


def _transpose(b, rows):
    """Transpose an L x L block held as L vectors (log2 L rounds of interleaving)."""
    L = len(rows)
    if L == 8:
        # the AVX sequence (unpck within 128-bit lanes, shufps, vperm2f128): 24 shuffles
        # instead of the 48 the generic rounds become on x86
        def shuf(x, y, m):
            return b.shuffle_vector(x, y, ir.Constant(ir.VectorType(I32, 8), m))
        lo, hi = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
        t = []
        for i in range(0, 8, 2):
            t += [shuf(rows[i], rows[i + 1], lo), shuf(rows[i], rows[i + 1], hi)]
        s44, see = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
        u = []
        for g in (0, 4):
            u += [shuf(t[g], t[g + 2], s44), shuf(t[g], t[g + 2], see),
                  shuf(t[g + 1], t[g + 3], s44), shuf(t[g + 1], t[g + 3], see)]
        p20, p31 = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
        return ([shuf(u[q], u[q + 4], p20) for q in range(4)] + [shuf(u[q], u[q + 4], p31) for q in range(4)])
    h = L // 2
    lo = ir.Constant(ir.VectorType(I32, L), [x for j in range(h) for x in (j, j + L)])
    hi = ir.Constant(ir.VectorType(I32, L), [x for j in range(h, L) for x in (j, j + L)])
    r = list(rows)
    s = 1
    while s < L:
        new = []
        for i in range(h):
            new += [b.shuffle_vector(r[i], r[i + h], lo), b.shuffle_vector(r[i], r[i + h], hi)]
        r = new
        s *= 2
    return r


# --- the microkernel -----------------------------------------------------------------------------


def micro_kernel(cg, P: Blocking, ct):
    """void micro(A, B, kc, C, ldc, mr, nr, beta): C[0:mr, 0:nr] (=|+=) A_panel @ B_panel.

    A panel: kc groups of MR values, B panel: kc groups of NR values (zero-padded). The full
    MR x NR tile lives in registers; only the valid mr x nr corner is written (an edge tile goes
    through a stack tile)."""
    key = ("micro", str(ct), P.MR, P.NR, P.L, __import__("os").environ.get("MM_PF"))
    c = _cache(cg)
    if key in c:
        return c[key]
    MR, NR, L = P.MR, P.NR, P.L
    NV = NR // L
    VT = _vt(ct, L)
    esz = 8 if ct == F64 else 4
    f = Fn.new(cg, f"ckir_mm_micro_{_sfx(ct)}_{MR}x{NR}", [PTR, PTR, I64, PTR, I64, I64, I64, I64],
               noalias=(0, 1, 3))
    A, B, kc, C, ldc, mr, nr, beta = f.args
    b = f.b
    tile = f.alloca(ct, MR * NR)
    # fetch the C tile while the k loop runs (it is read and written once per K slice and
    # would otherwise stall the end of every call); prefetches never fault, even past the edge
    pf = cg.declare("llvm.prefetch.p0", ir.FunctionType(VOID, [PTR, I32, I32, I32]))
    import os  # TUNING
    PFV = int(os.environ.get("MM_PF", "1"))  # TUNING
    for i in range(MR if PFV else 0):
        row = b.gep(C, [b.mul(I64(i), ldc)], source_etype=ct)
        b.call(pf, [row, I32(1), I32(3 if PFV == 1 else 2), I32(1)])
        b.call(pf, [b.gep(row, [I64(NR - 1)], source_etype=ct), I32(1), I32(3 if PFV == 1 else 2), I32(1)])

    def step(p, pa, pb, *acc):
        bs = [b.load(f.gep(pb, I64(j * L), ct), typ=VT, align=esz) for j in range(NV)]
        if P.a_vec and L > 1 and MR % L == 0:
            avs = [b.load(f.gep(pa, I64(g * L), ct), typ=VT, align=esz) for g in range(MR // L)]
            asp = [b.shuffle_vector(avs[i // L], ir.Constant(VT, ir.Undefined),
                                    ir.Constant(ir.VectorType(I32, L), [i % L] * L)) for i in range(MR)]
        else:
            asp = [lambda i=i: _splat(b, b.load(f.gep(pa, I64(i), ct), typ=ct, align=esz), L) for i in range(MR)]
        new = []
        for i in range(MR):
            a = asp[i]() if callable(asp[i]) else asp[i]
            new += [_fma(f, a, bs[j], acc[i * NV + j]) for j in range(NV)]
        return [f.gep(pa, I64(MR), ct), f.gep(pb, I64(NR), ct)] + new

    out = f.loop(I64(0), kc, step, carry=[A, B] + [_zero(ct, L)] * (MR * NV))
    acc = out[2:]
    full = b.and_(b.icmp_signed("==", mr, I64(MR)), b.icmp_signed("==", nr, I64(NR)))
    add = b.icmp_signed("!=", beta, I64(0))
    with b.if_else(full, likely=True) as (then, otherwise):
        with then:
            with b.if_else(add) as (t2, o2):
                with t2:
                    for i in range(MR):
                        row = f.gep(C, b.mul(I64(i), ldc), ct)
                        for j in range(NV):
                            q = f.gep(row, I64(j * L), ct)
                            b.store(b.fadd(b.load(q, typ=VT, align=esz), acc[i * NV + j]), q, align=esz)
                with o2:
                    for i in range(MR):
                        row = f.gep(C, b.mul(I64(i), ldc), ct)
                        for j in range(NV):
                            b.store(acc[i * NV + j], f.gep(row, I64(j * L), ct), align=esz)
        with otherwise:
            for i in range(MR):
                for j in range(NV):
                    b.store(acc[i * NV + j], f.gep(tile, I64(i * NR + j * L), ct), align=esz)

            def row(i):
                crow = f.gep(C, b.mul(i, ldc), ct)
                trow = f.gep(tile, b.mul(i, I64(NR)), ct)

                def col(j):
                    x = b.load(f.gep(trow, j, ct), typ=ct)
                    q = f.gep(crow, j, ct)
                    old = b.select(add, b.load(q, typ=ct), ir.Constant(ct, 0.0))
                    b.store(b.fadd(x, old), q)
                f.loop(I64(0), nr, col)
            f.loop(I64(0), mr, row)
    b.ret_void()
    c[key] = f.fn
    return f.fn


# --- packing -------------------------------------------------------------------------------------


def pack_range(cg, P: Blocking, mdt: dt.DType, ct, R: int, trans: bool):
    """void pack(dst, src, ld, nvalid, kc, lo, hi): micro-panels lo..hi of R rows each.

    Element (r, p) of the source block is src[r*ld + p] when `trans` (rows contiguous in p:
    A not transposed, B transposed) else src[p*ld + r]. Panel q holds rows q*R .. q*R+R-1 as
    dst[q*R*kc + p*R + i], rows >= nvalid as zeros, in the compute type."""
    key = ("pack", mdt.name, str(ct), R, trans, P.L)
    c = _cache(cg)
    if key in c:
        return c[key]
    L = P.L
    mt = mem_type(mdt)
    f = Fn.new(cg, f"ckir_mm_pack{'T' if trans else 'N'}{R}_{mdt.name}", [PTR, PTR, I64, I64, I64, I64, I64],
               noalias=(0, 1))
    dst, src, ld, nvalid, kc, lo, hi = f.args
    b = f.b
    vec_ok = L > 1 and R % L == 0 and (mdt is not dt.f16 or _native_half(cg))

    def partial(q, d, s, nv):
        """A panel with fewer than R valid rows (only the last one): zeros past the edge,
        loads from a clamped (valid) row."""
        last = b.sub(nv, I64(1))

        def prow(p):
            for i in range(R):
                ic = f.min(I64(i), last)
                idx = b.add(b.mul(ic, ld), p) if trans else b.add(b.mul(p, ld), ic)
                x = _load(f, s, idx, mdt, 1)
                x = b.select(b.icmp_signed("<", I64(i), nv), x, ir.Constant(ct, 0.0))
                _store_c(f, d, b.add(b.mul(p, I64(R)), I64(i)), x, ct, 1)
        f.loop(I64(0), kc, prow)

    def where(q):
        """(destination panel, source of its row 0, valid rows)"""
        r0 = b.mul(q, I64(R))
        return (f.gep(dst, b.mul(r0, kc), ct), f.gep(src, b.mul(r0, ld) if trans else r0, mt),
                f.min(I64(R), b.sub(nvalid, r0)))

    nfull = f.min(hi, f.max(lo, b.sdiv(nvalid, I64(R))))       # panels [lo, nfull) are full
    if trans:
        # each panel reads R rows sequentially
        def panel(q):
            d, s, _ = where(q)
            _pack_full_T(f, P, d, s, ld, kc, mdt, ct, R, vec_ok)
        f.loop(lo, nfull, panel)
    else:
        # a few source rows at a time across all panels: the reads stream along the rows
        # (panel by panel, each read would touch a new line, and with long rows a new page)
        PB = 8

        def pblock(p0):
            pe = f.min(b.add(p0, I64(PB)), kc)

            def panel(q):
                d, s, _ = where(q)
                _pack_rows_N(f, P, d, s, ld, p0, pe, mdt, ct, R, vec_ok)
            f.loop(lo, nfull, panel)
        f.loop(I64(0), kc, pblock, step=I64(PB))

    def tail(q):
        d, s, nv = where(q)
        partial(q, d, s, nv)
    f.loop(nfull, hi, tail)
    b.ret_void()
    c[key] = f.fn
    return f.fn


def _pack_rows_N(f, P, d, s, ld, p0, pe, mdt, ct, R, vec_ok):
    """dst[p*R + i] = src[p*ld + i] for p in [p0, pe) of a full panel."""
    b, L = f.b, P.L

    def prow(p):
        row = f.gep(s, b.mul(p, ld), mem_type(mdt))
        drow = f.gep(d, b.mul(p, I64(R)), ct)
        if vec_ok:
            for j in range(R // L):
                _store_c(f, drow, I64(j * L), _load(f, row, I64(j * L), mdt, L), ct, L)
        else:
            for i in range(R):
                _store_c(f, drow, I64(i), _load(f, row, I64(i), mdt, 1), ct, 1)
    f.loop(p0, pe, prow)


def _pack_full_T(f, P, d, s, ld, kc, mdt, ct, R, vec_ok):
    """dst[p*R + i] = src[i*ld + p] for a full panel: a transpose, done L x L in registers."""
    b, L = f.b, P.L
    mt = mem_type(mdt)
    rows = [f.gep(s, b.mul(I64(i), ld), mt) for i in range(R)]
    start = I64(0)
    if vec_ok:
        kv = b.mul(b.sdiv(kc, I64(L)), I64(L))

        def pblock(p):
            for g in range(R // L):
                vs = [_load(f, rows[g * L + i], p, mdt, L) for i in range(L)]
                for qq, w in enumerate(_transpose(b, vs)):
                    _store_c(f, d, b.add(b.mul(b.add(p, I64(qq)), I64(R)), I64(g * L)), w, ct, L)
        f.loop(I64(0), kv, pblock, step=I64(L))
        start = kv

    def prow(p):
        drow = f.gep(d, b.mul(p, I64(R)), ct)
        for i in range(R):
            _store_c(f, drow, I64(i), _load(f, rows[i], p, mdt, 1), ct, 1)
    f.loop(start, kc, prow)


# --- compute phase -------------------------------------------------------------------------------


def compute_range(cg, P: Blocking, ct, low_dt):
    """void compute(Ap, Bp, kc, C, ldc, mcb, nc, ip_lo, ip_hi, jp_lo, jp_hi, beta, out, ldo, conv):
    the tiles of A panels [ip_lo, ip_hi) x B panels [jp_lo, jp_hi). For f16/bf16 (`low_dt`), C
    is the f32 scratch and, when `conv`, the finished region is rounded into `out`."""
    key = ("compute", str(ct), low_dt.name if low_dt else None, P.MR, P.NR)
    c = _cache(cg)
    if key in c:
        return c[key]
    MR, NR = P.MR, P.NR
    mk = micro_kernel(cg, P, ct)
    f = Fn.new(cg, "ckir_mm_compute", [PTR, PTR, I64, PTR, I64, I64, I64, I64, I64, I64, I64, I64, PTR, I64, I64],
               noalias=(0, 1, 3, 12))
    Ap, Bp, kc, C, ldc, mcb, nc, ip_lo, ip_hi, jp_lo, jp_hi, beta, out, ldo, conv = f.args
    b = f.b

    # B micro-panel outer (it stays in L1), A panels inner (the A block stays in L2)
    def jloop(jp):
        bpan = f.gep(Bp, b.mul(b.mul(jp, I64(NR)), kc), ct)
        j0 = b.mul(jp, I64(NR))
        nr = f.min(I64(NR), b.sub(nc, j0))

        def iloop(ip):
            apan = f.gep(Ap, b.mul(b.mul(ip, I64(MR)), kc), ct)
            i0 = b.mul(ip, I64(MR))
            mr = f.min(I64(MR), b.sub(mcb, i0))
            cp = f.gep(C, b.add(b.mul(i0, ldc), j0), ct)
            b.call(mk, [apan, bpan, kc, cp, ldc, mr, nr, beta])
        f.loop(ip_lo, ip_hi, iloop)
    f.loop(jp_lo, jp_hi, jloop)
    if low_dt is not None:
        with b.if_then(b.icmp_signed("!=", conv, I64(0))):
            r0 = b.mul(ip_lo, I64(MR))
            r1 = f.min(b.mul(ip_hi, I64(MR)), mcb)
            c0 = b.mul(jp_lo, I64(NR))
            c1 = f.min(b.mul(jp_hi, I64(NR)), nc)
            omt = mem_type(low_dt)

            def crow(i):
                src = f.gep(C, b.mul(i, ldc), ct)
                dstr = f.gep(out, b.mul(i, ldo), omt)

                def ccol(j):
                    x = b.load(f.gep(src, j, ct), typ=ct)
                    b.store(from_compute(b, x, low_dt, cg), f.gep(dstr, j, omt))
                f.loop(c0, c1, ccol)
            f.loop(r0, r1, crow)
    b.ret_void()
    c[key] = f.fn
    return f.fn


# --- parallel phases: task functions with their own context ---------------------------------------


def _run_tasks(f, task_fn, ntasks, values):
    """ckir_parallel_for(task_fn, ctx, ntasks) with ctx = values (i64 or ptr, 8 bytes each)."""
    cell = f.alloca(I64, len(values))
    for i, v in enumerate(values):
        f.b.store(v, f.gep(cell, I64(i), I64))
    f.b.call(f.cg.parallel_for(), [task_fn, cell, ntasks])


def _task_fn(cg, name, types):
    """A task function (ctx, t) and its context values loaded, in a Fn."""
    fn = ir.Function(cg.mod, TASK_TY, cg.fresh(name))
    fn.linkage = "internal"
    entry = ir.IRBuilder(fn.append_basic_block("entry"))
    body = fn.append_basic_block("body")
    jump = entry.branch(body)
    entry.position_before(jump)
    f = Fn(cg, fn, entry, ir.IRBuilder(body))
    ctx, t = fn.args
    vals = [f.b.load(f.gep(ctx, I64(i), I64), typ=ty) for i, ty in enumerate(types)]
    return f, t, vals


def pack_task(cg, P, mdt, ct, a_trans, b_trans):
    """Task t < ntA packs A panels [t*GA, ...), the others B panels."""
    key = ("packtask", mdt.name, str(ct), a_trans, b_trans, P.MR, P.NR)
    c = _cache(cg)
    if key in c:
        return c[key]
    pa = pack_range(cg, P, mdt, ct, P.MR, a_trans)
    pb = pack_range(cg, P, mdt, ct, P.NR, b_trans)
    f, t, v = _task_fn(cg, "ckir_mm_pack_task", [PTR, PTR, I64, I64, I64, I64, I64, I64, PTR, PTR, I64, I64, I64, I64])
    dA, sA, ldA, nvA, kc, GA, npa, ntA, dB, sB, ldB, nvB, GB, npb = v
    b = f.b
    with b.if_else(b.icmp_signed("<", t, ntA)) as (then, otherwise):
        with then:
            lo = b.mul(t, GA)
            b.call(pa, [dA, sA, ldA, nvA, kc, lo, f.min(b.add(lo, GA), npa)])
        with otherwise:
            lo = b.mul(b.sub(t, ntA), GB)
            b.call(pb, [dB, sB, ldB, nvB, kc, lo, f.min(b.add(lo, GB), npb)])
    b.ret_void()
    c[key] = f.fn
    return f.fn


def compute_task(cg, P, ct, low_dt):
    """Task t computes row block t / nj (PI panels) x column group t % nj (PJ panels)."""
    key = ("computetask", str(ct), low_dt.name if low_dt else None, P.MR, P.NR)
    c = _cache(cg)
    if key in c:
        return c[key]
    comp = compute_range(cg, P, ct, low_dt)
    f, t, v = _task_fn(cg, "ckir_mm_compute_task",
                       [PTR, PTR, I64, PTR, I64, I64, I64, I64, I64, I64, I64, I64, I64, PTR, I64, I64])
    Ap, Bp, kc, C, ldc, mcb, nc, PI, npa, PJ, npb, nj, beta, out, ldo, conv = v
    b = f.b
    ib = b.sdiv(t, nj)
    jb = b.srem(t, nj)
    ilo = b.mul(ib, PI)
    jlo = b.mul(jb, PJ)
    b.call(comp, [Ap, Bp, kc, C, ldc, mcb, nc, ilo, f.min(b.add(ilo, PI), npa), jlo, f.min(b.add(jlo, PJ), npb),
                  beta, out, ldo, conv])
    b.ret_void()
    c[key] = f.fn
    return f.fn


# --- GEMV ----------------------------------------------------------------------------------------

AXPY_W = 512         # columns per GEMV (axpy form) task: the f32/f64 accumulators live on the stack
# Smallest work worth a task (waking a pool thread costs microseconds, more on a busy machine)
GEMV_GRAIN = 1 << 15        # multiply-adds
PACK_GRAIN = 1 << 14        # elements packed
COMPUTE_GRAIN = 1 << 18     # multiply-adds


def gemv_dot(cg, P, mdt, ct):
    """void dot(X, ldx, v, y, K, lo, hi): y[r] = sum_k X[r*ldx + k] * v[k] for r in [lo, hi)."""
    key = ("gemvdot", mdt.name, P.L)
    c = _cache(cg)
    if key in c:
        return c[key]
    L = P.L if (mdt is not dt.f16 or _native_half(cg)) else 1
    U = 2 if L > 1 else 4
    S = L * U
    mt = mem_type(mdt)
    omt = mt
    f = Fn.new(cg, f"ckir_mm_gemv_dot_{mdt.name}", [PTR, I64, PTR, PTR, I64, I64, I64], noalias=(0, 2, 3))
    X, ldx, v, y, K, lo, hi = f.args
    b = f.b
    kmain = b.mul(b.sdiv(K, I64(S)), I64(S))

    def rows(RB):
        def block(r):
            xr = [f.gep(X, b.mul(b.add(r, I64(q)), ldx), mt) for q in range(RB)]

            def kstep(k, *acc):
                vs = [_load(f, v, b.add(k, I64(u * L)), mdt, L) for u in range(U)]
                new = []
                for q in range(RB):
                    for u in range(U):
                        new.append(_fma(f, _load(f, xr[q], b.add(k, I64(u * L)), mdt, L), vs[u], acc[q * U + u]))
                return new
            acc = f.loop(I64(0), kmain, kstep, step=I64(S), carry=[_zero(ct, L)] * (RB * U))
            sums = []
            for q in range(RB):
                s = acc[q * U]
                for u in range(1, U):
                    s = b.fadd(s, acc[q * U + u])
                sums.append(_hsum(f, s))

            def ktail(k, *ss):
                x = _load(f, v, k, mdt, 1)
                return [_fma(f, _load(f, xr[q], k, mdt, 1), x, ss[q]) for q in range(RB)]
            sums = f.loop(kmain, K, ktail, carry=sums)
            for q in range(RB):
                b.store(from_compute(b, sums[q], mdt, cg), f.gep(y, b.add(r, I64(q)), omt))
        return block

    n4 = b.add(lo, b.mul(b.sdiv(b.sub(hi, lo), I64(4)), I64(4)))
    f.loop(lo, n4, rows(4), step=I64(4))
    f.loop(n4, hi, rows(1))
    b.ret_void()
    c[key] = f.fn
    return f.fn


def gemv_axpy(cg, P, mdt, ct):
    """void axpy(X, ldx, v, y, K, lo, hi): y[c] = sum_k v[k] * X[k*ldx + c] for c in [lo, hi),
    hi - lo <= AXPY_W; the sums stay in a stack buffer (L1) while the rows stream by."""
    key = ("gemvaxpy", mdt.name, P.L)
    c = _cache(cg)
    if key in c:
        return c[key]
    L = P.L if (mdt is not dt.f16 or _native_half(cg)) else 1
    mt = mem_type(mdt)
    esz = 8 if ct == F64 else 4
    f = Fn.new(cg, f"ckir_mm_gemv_axpy_{mdt.name}", [PTR, I64, PTR, PTR, I64, I64, I64], noalias=(0, 2, 3))
    X, ldx, v, y, K, lo, hi = f.args
    b = f.b
    acc = f.alloca(ct, AXPY_W)
    w = b.sub(hi, lo)
    wv = b.mul(b.sdiv(w, I64(L)), I64(L))
    VT = _vt(ct, L)
    f.loop(I64(0), w, lambda j: b.store(ir.Constant(ct, 0.0), f.gep(acc, j, ct)))
    x0 = f.gep(X, lo, mt)

    def krows(U):
        def step(k):
            s = [_splat(b, _load(f, v, b.add(k, I64(u)), mdt, 1), L) for u in range(U)]
            rows = [f.gep(x0, b.mul(b.add(k, I64(u)), ldx), mt) for u in range(U)]

            def cv(j):
                q = f.gep(acc, j, ct)
                a = b.load(q, typ=VT, align=esz)
                for u in range(U):
                    a = _fma(f, s[u], _load(f, rows[u], j, mdt, L), a)
                b.store(a, q, align=esz)
            f.loop(I64(0), wv, cv, step=I64(L))
            if L > 1:
                s1 = [_load(f, v, b.add(k, I64(u)), mdt, 1) for u in range(U)]

                def cs(j):
                    q = f.gep(acc, j, ct)
                    a = b.load(q, typ=ct)
                    for u in range(U):
                        a = _fma(f, s1[u], _load(f, rows[u], j, mdt, 1), a)
                    b.store(a, q)
                f.loop(wv, w, cs)
        return step

    k4 = b.mul(b.sdiv(K, I64(4)), I64(4))
    f.loop(I64(0), k4, krows(4), step=I64(4))
    f.loop(k4, K, krows(1))
    yo = f.gep(y, lo, mt)
    f.loop(I64(0), w, lambda j: b.store(from_compute(b, b.load(f.gep(acc, j, ct), typ=ct), mdt, cg),
                                        f.gep(yo, j, mt)))
    b.ret_void()
    c[key] = f.fn
    return f.fn


# --- the scratch global ----------------------------------------------------------------------------


def _scratch(cg, nbytes: int):
    """The module's packing scratch, grown to at least nbytes (its type is only printed when the
    module is turned into text, so growing it after use is fine with opaque pointers)."""
    c = _cache(cg)
    g = c.get("scratch")
    nbytes = max(64, -(-nbytes // 64) * 64)
    if g is None:
        ty = ir.ArrayType(I8, nbytes)
        g = ir.GlobalVariable(cg.mod, ty, "ckir_mm_scratch")
        g.linkage = "internal"
        g.initializer = ir.Constant(ty, None)
        g.align = 64
        c["scratch"] = g
    elif g.value_type.count < nbytes:
        g.value_type = ir.ArrayType(I8, nbytes)
        g.initializer = ir.Constant(g.value_type, None)
    return g


def _r64(n):
    return -(-n // 64) * 64


@dataclass
class Scratch:
    """Where the packed B, packed A and (f16/bf16) the f32 C tile sit in a scratch region."""
    nc: int          # columns per B block (also the row length of the C tile)
    mcb: int         # rows of A per chunk
    kc: int          # deepest K slice
    off_a: int
    off_c: int
    size: int


def _layout(P, esz, low, ncap, mcap, kcap):
    nc, mcb, kc = ncap, mcap, kcap
    off_a = _r64(kc * nc * esz)
    off_c = off_a + _r64(mcb * kc * esz)
    size = off_c + (_r64(mcb * nc * 4) if low else 0)
    return Scratch(nc, mcb, kc, off_a, off_c, size)


# --- shapes ----------------------------------------------------------------------------------------


class Dims:
    """M, N, K, element strides and batch structure of one matmul, in a given function."""

    def __init__(self, k, f, op):
        a, bv = op.operands
        out = op.results[0]
        ta, tb = op.attrs["transpose_a"], op.attrs["transpose_b"]
        a1, b1 = a.type.rank == 1, bv.type.rank == 1
        ash = k.shape(a)
        bsh = k.shape(bv)
        if a1:
            ash = [I64(1)] + ash
        if b1:
            bsh = bsh + [I64(1)]
        self.M, self.K = (ash[-1], ash[-2]) if ta else (ash[-2], ash[-1])
        self.N = bsh[-2] if tb else bsh[-1]
        M, N, K = self.M, self.N, self.K
        # A(m, k) = a[m*ram + k*rak], B(k, n) = b[k*rbk + n*rbn]
        self.ram, self.rak = (I64(1), M) if ta else (K, I64(1))
        self.rbk, self.rbn = (I64(1), K) if tb else (N, I64(1))
        self.ta, self.tb = ta, tb
        nb = out.type.rank - (0 if a1 else 1) - (0 if b1 else 1)
        self.oshape = k.shape(out)[:nb]
        self.nbatch = I64(1)
        for d in self.oshape:
            self.nbatch = f.mul(self.nbatch, d)
        self.a_strides = self._strides(f, ash, nb)
        self.b_strides = self._strides(f, bsh, nb)
        self.omat = f.mul(M, N)

    @staticmethod
    def _strides(f, sh, nb):
        """Per output batch axis, the operand's element stride (0 where it broadcasts)."""
        bdims = sh[:-2]
        run = f.mul(sh[-1], sh[-2])
        st = []
        for ax in range(nb - 1, -1, -1):
            j = ax - (nb - len(bdims))
            if j < 0:
                st.append(I64(0))
                continue
            d = bdims[j]
            if _is_const(d):
                st.append(I64(0) if d.constant == 1 else run)
            else:
                st.append(f.b.select(f.b.icmp_signed("==", d, I64(1)), I64(0), run))
            run = f.mul(run, d)
        return st[::-1]

    def offsets(self, f, bi):
        """(a offset, b offset, out offset) in elements for batch item bi."""
        aoff, boff = I64(0), I64(0)
        rem = bi
        for ax in range(len(self.oshape) - 1, -1, -1):
            d = self.oshape[ax]
            if _is_const(d, 1):
                continue
            idx = f.rem(rem, d) if ax > 0 else rem
            rem = f.div(rem, d)
            aoff = f.add(aoff, f.mul(idx, self.a_strides[ax]))
            boff = f.add(boff, f.mul(idx, self.b_strides[ax]))
        return aoff, boff, f.mul(bi, self.omat)


def _static(v):
    return v.constant if isinstance(v, ir.Constant) else None


# --- the emitter -----------------------------------------------------------------------------------

DTYPES = (dt.f32, dt.f64, dt.f16, dt.bf16)


def _supports(op) -> bool:
    if not tensor_types_supported(op):
        return False
    return all(v.type.dtype in DTYPES for v in list(op.operands) + list(op.results))


@emitter("nn.matmul")
def emit_matmul(k, op):
    cg = k.cg
    mdt = op.operands[0].type.dtype
    low = mdt in (dt.f16, dt.bf16)
    ct = F64 if mdt is dt.f64 else F32
    esz = 8 if ct == F64 else 4
    P = blocking(cg.target, ct, low)
    f = Fn.of_kernel(k)
    d = Dims(k, f, op)
    M, N, K = d.M, d.N, d.K
    sM, sN, sK = _static(M), _static(N), _static(K)
    T = cg.max_tasks
    nslots = max(1, T // 2)

    # scratch: bounded by the static dims where they are known
    kcap = P.KC if sK is None else max(1, min(P.KC, sK))
    big = _layout(P, esz, low, P.NC if sN is None else min(P.NC, -(-max(sN, 1) // P.NR) * P.NR),
                  P.MCB if sM is None else min(P.MCB, -(-max(sM, 1) // P.MR) * P.MR), kcap)
    small = _layout(P, esz, low, P.NCS if sN is None else min(P.NCS, -(-max(sN, 1) // P.NR) * P.NR),
                    P.MC if sM is None else min(P.MC, -(-max(sM, 1) // P.MR) * P.MR), kcap)
    can_m1 = sM is None or sM == 1
    can_n1 = sN is None or sN == 1
    can_gemm = sM != 1 and sN != 1
    can_batch = not _is_const(d.nbatch, 1) and not _is_const(d.nbatch, 0)
    need = 0
    if can_gemm:
        need = max(big.size, nslots * small.size if can_batch else 0)
    g = _scratch(cg, need) if need else None
    b = k.b

    def gemm_paths():
        if not can_gemm:
            return
        scratch = g
        if can_batch:
            # several matrices of modest size: one task per slot takes whole batch items
            small_work = b.icmp_signed("<", f.mul(f.mul(M, N), K), I64(1 << 24))
            cond = b.and_(b.icmp_signed(">", d.nbatch, I64(1)),
                          b.or_(small_work, b.icmp_signed(">=", d.nbatch, I64(T))))
            with b.if_else(cond) as (then, otherwise):
                with then:
                    _batch_parallel(k, op, P, mdt, ct, low, small, nslots)
                with otherwise:
                    _big(f, k, op, d, P, mdt, ct, low, big, scratch, T)
        else:
            _big(f, k, op, d, P, mdt, ct, low, big, scratch, T)

    def after_m1():
        if can_n1 and can_gemm:
            with b.if_else(b.icmp_signed("==", N, I64(1))) as (then, otherwise):
                with then:
                    _gemv(k, op, P, mdt, ct, "n1")
                with otherwise:
                    gemm_paths()
        elif can_n1:
            _gemv(k, op, P, mdt, ct, "n1")
        else:
            gemm_paths()

    def nonzero_k():
        if can_m1 and (can_n1 or can_gemm):
            with b.if_else(b.icmp_signed("==", M, I64(1))) as (then, otherwise):
                with then:
                    _gemv(k, op, P, mdt, ct, "m1")
                with otherwise:
                    after_m1()
        elif can_m1:
            _gemv(k, op, P, mdt, ct, "m1")
        else:
            after_m1()

    out = op.results[0]
    if sK == 0:
        _zero_fill(f, k, out)
    elif sK is None:
        with b.if_else(b.icmp_signed("==", K, I64(0))) as (then, otherwise):
            with then:
                _zero_fill(f, k, out)
            with otherwise:
                nonzero_k()
    else:
        nonzero_k()


emit_matmul.supports = _supports


def _zero_fill(f, k, out):
    """K == 0: every result is an empty sum."""
    zero = ir.Constant(mem_type(out.type.dtype), None)
    p = k.ptr(out)
    f.loop(I64(0), k.numel(out), lambda i: f.b.store(zero, f.gep(p, i, mem_type(out.type.dtype))))


def _big(f, k, op, d, P, mdt, ct, low, lay, scratch, T):
    """Batch items one after another, each a GEMM split over the thread pool."""
    a, bv = op.operands
    out = op.results[0]
    pa, pb, po = k.ptr(a), k.ptr(bv), k.ptr(out)

    def item(bi):
        aoff, boff, ooff = d.offsets(f, bi)
        _gemm(f, P, mdt, ct, low, lay, scratch, d, f.gep(pa, aoff, mem_type(mdt)), f.gep(pb, boff, mem_type(mdt)),
              f.gep(po, ooff, mem_type(mdt)), T, parallel=True)
    f.loop(I64(0), d.nbatch, item)


def _batch_parallel(k, op, P, mdt, ct, low, lay, nslots):
    """Tasks over batch items; task t runs its items' GEMMs serially in scratch slot t."""
    a, bv = op.operands
    out = op.results[0]

    def ntasks(kk, ff, dd):
        work = ff.b.mul(ff.b.mul(ff.b.mul(dd.nbatch, dd.M), dd.N), dd.K)
        return ff.max(I64(1), ff.min(ff.min(dd.nbatch, I64(nslots)), ff.b.sdiv(work, I64(COMPUTE_GRAIN))))

    def task(kt, t):
        ft = Fn.of_kernel(kt)
        dd = Dims(kt, ft, op)
        nt = ntasks(kt, ft, dd)
        chunk = ft.cdiv(dd.nbatch, nt)
        lo = ft.b.mul(t, chunk)
        hi = ft.min(ft.b.add(lo, chunk), dd.nbatch)
        slot = ft.gep(_cache(kt.cg)["scratch"], ft.b.mul(t, I64(lay.size)), I8)
        pa, pb, po = kt.ptr(a), kt.ptr(bv), kt.ptr(out)
        mt = mem_type(mdt)

        def item(bi):
            aoff, boff, ooff = dd.offsets(ft, bi)
            _gemm(ft, P, mdt, ct, low, lay, slot, dd, ft.gep(pa, aoff, mt), ft.gep(pb, boff, mt),
                  ft.gep(po, ooff, mt), 1, parallel=False)
        ft.loop(lo, hi, item)

    f = Fn.of_kernel(k)
    k.parallel(ntasks(k, f, Dims(k, f, op)), task)


def _gemm(f, P, mdt, ct, low, lay, scratch, d, pa, pb, po, T, parallel):
    """One matrix product C = A @ B (offsets applied) with the blocked loops; `parallel`: each
    packing and compute phase is a thread-pool job, else everything runs here."""
    b = f.b
    M, N, K = d.M, d.N, d.K
    MR, NR = P.MR, P.NR
    a_trans = not d.ta          # A rows contiguous in k -> transposing pack
    b_trans = d.tb
    ldA = d.ram if a_trans else d.rak
    ldB = d.rbn if b_trans else d.rbk
    Bp = scratch
    Ap = f.gep(scratch, I64(lay.off_a), I8)
    Cs = f.gep(scratch, I64(lay.off_c), I8)
    mt = mem_type(mdt)
    low_dt = mdt if low else None
    # K in equal slices of at most KC (no thin last slice)
    nks = f.cdiv(K, I64(lay.kc))
    kcu = f.cdiv(K, nks)
    packA = pack_range(f.cg, P, mdt, ct, MR, a_trans)
    packB = pack_range(f.cg, P, mdt, ct, NR, b_trans)
    comp = compute_range(f.cg, P, ct, low_dt)
    half = I64(max(1, T // 2))

    def jblock(jc):
        nc = f.min(I64(lay.nc), b.sub(N, jc))
        npb = f.cdiv(nc, I64(NR))

        def iblock(ic0):
            mcb = f.min(I64(lay.mcb), b.sub(M, ic0))
            npa = f.cdiv(mcb, I64(MR))
            cblk = f.gep(po, b.add(b.mul(ic0, N), jc), mt)

            def kslice(pc):
                kc = f.min(kcu, b.sub(K, pc))
                sA = f.gep(pa, b.add(b.mul(ic0, d.ram), b.mul(pc, d.rak)), mt)
                sB = f.gep(pb, b.add(b.mul(jc, d.rbn), b.mul(pc, d.rbk)), mt)
                beta = b.zext(b.icmp_signed(">", pc, I64(0)), I64)
                conv = b.zext(b.icmp_signed(">=", b.add(pc, kc), K), I64)
                C, ldc = (Cs, I64(lay.nc)) if low else (cblk, N)
                if not parallel:
                    b.call(packA, [Ap, sA, ldA, mcb, kc, I64(0), npa])
                    b.call(packB, [Bp, sB, ldB, nc, kc, I64(0), npb])
                    b.call(comp, [Ap, Bp, kc, C, ldc, mcb, nc, I64(0), npa, I64(0), npb, beta, cblk, N, conv])
                    return
                # packing tasks: up to T/2 per operand, each of PACK_GRAIN elements or more
                GA = f.max(f.cdiv(npa, half), f.cdiv(I64(PACK_GRAIN), b.mul(kc, I64(MR))))
                ntA = f.cdiv(npa, GA)
                GB = f.max(f.cdiv(npb, half), f.cdiv(I64(PACK_GRAIN), b.mul(kc, I64(NR))))
                ntB = f.cdiv(npb, GB)
                small = b.icmp_signed("<", b.mul(b.add(mcb, nc), kc), I64(2 * PACK_GRAIN if not __import__("os").environ.get("MM_NOPACK") else 1 << 60))  # TUNING
                with b.if_else(small) as (then, otherwise):
                    with then:
                        b.call(packA, [Ap, sA, ldA, mcb, kc, I64(0), npa])
                        b.call(packB, [Bp, sB, ldB, nc, kc, I64(0), npb])
                    with otherwise:
                        _run_tasks(f, pack_task(f.cg, P, mdt, ct, a_trans, b_trans), b.add(ntA, ntB),
                                   [Ap, sA, ldA, mcb, kc, GA, npa, ntA, Bp, sB, ldB, nc, GB, npb])
                # row blocks of about MC rows (equal sizes), then enough column groups for T tasks
                nib0 = f.cdiv(mcb, I64(P.MC))
                PI = f.cdiv(npa, nib0)
                nib = f.cdiv(npa, PI)
                # (no more tasks than the work is worth: COMPUTE_GRAIN multiply-adds each)
                tw = f.min(I64(T), f.max(I64(1), b.sdiv(b.mul(b.mul(mcb, nc), kc), I64(COMPUTE_GRAIN))))
                nj0 = f.max(I64(1), f.min(f.cdiv(tw, nib), npb))
                PJ = f.cdiv(npb, nj0)
                nj = f.cdiv(npb, PJ)
                _run_tasks(f, compute_task(f.cg, P, ct, low_dt), b.mul(nib, nj) if not __import__("os").environ.get("MM_NOCOMP") else I64(0),  # TUNING
                           [Ap, Bp, kc, C, ldc, mcb, nc, PI, npa, PJ, npb, nj, beta, cblk, N, conv])
            f.loop(I64(0), K, kslice, step=kcu)
        f.loop(I64(0), M, iblock, step=I64(lay.mcb))
    f.loop(I64(0), N, jblock, step=I64(lay.nc))


def _gemv(k, op, P, mdt, ct, which):
    """M == 1 ("m1": y = v @ B) or N == 1 ("n1": y = A @ w), parallel over output chunks and
    batch items. The vector is contiguous in both cases (a row of A with M == 1, a column of B
    with N == 1); the matrix is read either along its rows (dot form) or across them (axpy)."""
    a, bv = op.operands
    out = op.results[0]
    mt = mem_type(mdt)
    ta, tb = op.attrs["transpose_a"], op.attrs["transpose_b"]
    dot = tb if which == "m1" else not ta
    fn = (gemv_dot if dot else gemv_axpy)(k.cg, P, mdt, ct)
    T = k.cg.max_tasks
    L = max(1, P.L)

    def split(ff, dd):
        """Work units are (batch item, chunk of rows/columns); a task takes `per` consecutive
        units. Chunks are small enough to give every thread work, tasks big enough to pay."""
        R = dd.N if which == "m1" else dd.M
        b_ = ff.b
        tpb = ff.max(I64(1), ff.cdiv(I64(T), dd.nbatch))           # chunks per batch item
        if dot:
            chunk = b_.mul(ff.cdiv(ff.cdiv(R, tpb), I64(4)), I64(4))
        else:
            chunk = ff.min(I64(AXPY_W), b_.mul(ff.cdiv(ff.cdiv(R, tpb), I64(L)), I64(L)))
        chunk = ff.max(chunk, I64(1))
        nch = ff.cdiv(R, chunk)
        units = b_.mul(dd.nbatch, nch)
        work = b_.mul(b_.mul(chunk, ff.max(dd.K, I64(1))), units)
        ntasks = ff.max(I64(1), ff.min(ff.min(I64(T), units), b_.sdiv(work, I64(GEMV_GRAIN))))
        per = ff.cdiv(units, ntasks)
        return R, chunk, nch, units, per, ff.cdiv(units, per)

    def task(kt, t):
        ft = Fn.of_kernel(kt)
        dd = Dims(kt, ft, op)
        R, chunk, nch, units, per, _ = split(ft, dd)
        u0 = ft.b.mul(t, per)

        def unit(u):
            bi = ft.b.sdiv(u, nch)
            ci = ft.b.srem(u, nch)
            lo = ft.b.mul(ci, chunk)
            hi = ft.min(ft.b.add(lo, chunk), R)
            aoff, boff, ooff = dd.offsets(ft, bi)
            pa = ft.gep(kt.ptr(a), aoff, mt)
            pb = ft.gep(kt.ptr(bv), boff, mt)
            py = ft.gep(kt.ptr(out), ooff, mt)
            if which == "m1":
                X, v, ldx = pb, pa, (dd.rbn if dot else dd.rbk)
            else:
                X, v, ldx = pa, pb, (dd.ram if dot else dd.rak)
            ft.b.call(fn, [X, ldx, v, py, dd.K, lo, hi])
        ft.loop(u0, ft.min(ft.b.add(u0, per), units), unit)

    f = Fn.of_kernel(k)
    k.parallel(split(f, Dims(k, f, op))[-1], task)
