"""Reductions and normalizations: nn.sum/mean/max/min/prod, nn.argmax/argmin, nn.softmax and
nn.log_softmax, nn.layer_norm and nn.rms_norm, and the shape queries nn.size and nn.shape.

Every value is a contiguous row-major buffer, so a reduction only needs the layout of its
axes. Dims that are statically 1 are dropped and neighbouring dims of one kind merged, which
splits x into alternating groups of kept (K) and reduced (R) dims; two loop shapes cover
every axes set (symbolic dims are runtime values throughout):

- rows (the last group is reduced): each output element reduces contiguous runs of x with
  explicit vectors, UNROLL independent accumulators, a one-vector loop and a scalar tail;
  outputs are split across threads. A reduction over all axes (one output) splits the run
  itself across threads and combines the per-task partials in task order.
- columns (the last group is kept, e.g. a sum over axis 0 of [N, C]): units of up to CHUNK
  contiguous kept columns, each with a stack scratch row of accumulators that every reduced
  position updates with a contiguous loop (LLVM vectorizes it); units go to threads.

softmax/log_softmax over the last axis (and the norms, which always cover the trailing axes)
go one row per iteration: a vector max (NaN-propagating), then exp and sum, then the scale;
over another axis they use the column shape with scratch rows for max and sum. exp/log come
from mathf through the same Scalar helper the elementwise kernels use, in plain loops that
LLVM's loop vectorizer widens (the sum carries a `reassoc` flag so it can).

Accuracy: f32 sums (sum, mean, the softmax denominator, the norms' statistics) accumulate
in f64 (SUM_F64); numpy sums f32 pairwise in f32, so the two agree to about numpy's own error
(measured in benchmarks/reduce_bench.py; the f64 accumulators cost no time when the data
come from memory and little from cache). Products and max/min stay in the compute type. f16
and bf16 are computed in f32 and rounded once, as the references do; softmax of f16/bf16
recomputes exp in its last pass instead of rounding an intermediate into the output.

Run-time errors: numpy raises for max/min of an empty set and argmax/argmin over an empty
axis. With a static reduced dim, supports() refuses a 0 (the interpreter raises); with a
symbolic one the kernel checks at run time and reports through Kernel.fail, so plan.py runs
the reference, which raises.
"""
from __future__ import annotations

import math

import llvmlite.ir as ir
import numpy as np

from ckir import dtypes as dt
from ckir.dialects.nn._util import norm_axes, norm_axis

from ..codegen import F16, F32, F64, I1, I16, I32, I64, PTR, TASK_TY, Kernel, emitter, mem_type, \
    tensor_types_supported
from . import mathf
from .elementwise import Scalar, _native_half, compute_type, from_compute, to_compute

GRAIN = 16384        # elements of work per task
CHUNK = 1024         # kept columns per unit in column reductions (stack scratch per unit)
SPLIT_MAX = 1 << 16  # [N, C] reductions over N: private partial rows (heap) up to this C
UNROLL = 4           # independent vector accumulators in row reductions
SUM_F64 = True       # accumulate f32 (and f16/bf16) sums in f64
BLOCK = 512          # softmax: elements per f32 partial sum of exp (then added in f64)


# --- vectors or scalars ----------------------------------------------------------------------------
def vty(t, w: int):
    return t if w == 1 else ir.VectorType(t, w)


def const(t, w: int, v):
    return ir.Constant(vty(t, w), v)


def width(x) -> int:
    return x.type.count if isinstance(x.type, ir.VectorType) else 1


def splat(b, x, w: int):
    if w == 1:
        return x
    vt = ir.VectorType(x.type, w)
    if isinstance(x, ir.Constant):
        return ir.Constant(vt, x.constant)
    v = b.insert_element(ir.Constant(vt, ir.Undefined), x, I32(0))
    return b.shuffle_vector(v, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(I32, w), [0] * w))


def _nbytes(t) -> int:
    return {F32: 4, F64: 8, F16: 2}.get(t) or t.width // 8


def lanes(k, d: dt.DType) -> int:
    """Vector width for loading dtype `d` (1 on the scalar target, and for f16 without F16C,
    whose conversion is scalar integer code)."""
    tg = k.cg.target
    if tg.lanes_f32 == 1 or (d is dt.f16 and not _native_half(k.cg)):
        return 1
    et = compute_type(d)
    bits = 64 if et == F64 else 32 if et == F32 else et.width
    return max(1, tg.vector_bits // bits)


def vload(k, v, idx, w: int):
    """w elements of value v from `idx`, in the compute type (f32 for f16/bf16)."""
    d = v.type.dtype
    mt = mem_type(d)
    b = k.b
    p = b.gep(k.ptr(v), [idx], source_etype=mt, inbounds=True)
    if w == 1:
        return to_compute(b, b.load(p, typ=mt), d, k.cg)
    x = b.load(p, typ=ir.VectorType(mt, w), align=_nbytes(mt))
    if d is dt.f16:
        return b.fpext(x, vty(F32, w))
    if d is dt.bf16:
        return b.bitcast(b.shl(b.zext(x, vty(I32, w)), const(I32, w, 16)), vty(F32, w))
    return x


def vstore(k, v, idx, x, w: int):
    d = v.type.dtype
    mt = mem_type(d)
    b = k.b
    p = b.gep(k.ptr(v), [idx], source_etype=mt, inbounds=True)
    if w == 1:
        b.store(from_compute(b, x, d, k.cg), p)
        return
    if d is dt.f16:
        x = b.fptrunc(x, vty(F16, w))
    elif d is dt.bf16:
        x = _bf16_round(b, x, w)
    b.store(x, p, align=_nbytes(mt))


def _bf16_round(b, x, w):
    """f32 -> bf16 bits, round to nearest even, NaN kept quiet (elementwise.f32_to_bf16 on
    vectors)."""
    c = lambda v: const(I32, w, v)  # noqa: E731
    bits = b.bitcast(x, vty(I32, w))
    lsb = b.and_(b.lshr(bits, c(16)), c(1))
    rounded = b.lshr(b.add(bits, b.add(c(0x7FFF), lsb)), c(16))
    quiet = b.or_(b.lshr(bits, c(16)), c(0x40))
    return b.trunc(b.select(b.fcmp_unordered("uno", x, x), quiet, rounded), vty(I16, w))


def to_out(b, x, d: dt.DType):
    """A finished value (f64 accumulator, or the compute type) in d's compute type."""
    et = compute_type(d)
    if x.type != et and isinstance(x.type, (ir.DoubleType, ir.FloatType)):
        return b.fptrunc(x, et) if et == F32 else b.fpext(x, et)
    return x


def hreduce(b, v, fn):
    """Combine the lanes of vector v pairwise with fn (a tree), giving a scalar."""
    w = width(v)
    if w == 1:
        return v
    while w > 1:
        h = w // 2
        lo = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, h), list(range(h))))
        hi = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, h), list(range(h, w))))
        v = fn(lo, hi)
        w = h
    return b.extract_element(v, I32(0))


# --- loops -----------------------------------------------------------------------------------------
def loop(k, start, end, init, body, step=1):
    """for i in [start, end) by step, carrying the values `init`: vals = body(i, vals). Returns
    the final values. (end - start) must be a multiple of step."""
    b = k.b
    step = I64(step) if isinstance(step, int) else step
    pre = b.block
    head = k.fn.append_basic_block("r.loop")
    done = k.fn.append_basic_block("r.done")
    b.cbranch(b.icmp_signed("<", start, end), head, done)
    b.position_at_end(head)
    i = b.phi(I64)
    i.add_incoming(start, pre)
    phis = []
    for v in init:
        p = b.phi(v.type)
        p.add_incoming(v, pre)
        phis.append(p)
    new = body(i, phis)
    nxt = b.add(i, step)
    latch = b.block
    i.add_incoming(nxt, latch)
    for p, v in zip(phis, new):
        p.add_incoming(v, latch)
    b.cbranch(b.icmp_signed("<", nxt, end), head, done)
    b.position_at_end(done)
    outs = []
    for v0, v in zip(init, new):
        p = b.phi(v0.type)
        p.add_incoming(v0, pre)
        p.add_incoming(v, latch)
        outs.append(p)
    return outs


def floor_to(k, n, m: int):
    """n rounded down to a multiple of m (n >= 0)."""
    if m == 1:
        return n
    if m & (m - 1) == 0:
        return k.b.and_(n, I64(-m))
    return k.b.mul(k.b.udiv(n, I64(m)), I64(m))


def alloca(k, t, n: int):
    """A stack array of n t's in the function's entry block (so it is static)."""
    b = ir.IRBuilder(k.fn.entry_basic_block)
    b.position_at_start(k.fn.entry_basic_block)
    return b.alloca(t, size=I64(n))


def parallel(k, ntasks, body, extra=None):
    """Kernel.parallel with one more pointer (`extra`, e.g. a scratch array in the caller's
    frame) passed to body(kt, t, extra)."""
    tfn = ir.Function(k.mod, TASK_TY, k.cg.fresh(f"{k.fn.name}_task"))
    tfn.linkage = "internal"
    ctx, t = tfn.args
    eb = ir.IRBuilder(tfn.append_basic_block("unpack"))
    bufs = eb.load(eb.gep(ctx, [I64(0)], source_etype=PTR), typ=PTR)
    dims = eb.load(eb.gep(ctx, [I64(1)], source_etype=PTR), typ=PTR)
    ex = eb.load(eb.gep(ctx, [I64(2)], source_etype=PTR), typ=PTR)
    kt = Kernel(k.mod, tfn, k.layout, k.op, bufs, dims, k.cg)
    eb.branch(kt.head.block)
    body(kt, t, ex)
    kt.b.ret_void()
    b = k.b
    cell = alloca(k, PTR, 3)
    b.store(k.bufs, b.gep(cell, [I64(0)], source_etype=PTR))
    b.store(k.dims, b.gep(cell, [I64(1)], source_etype=PTR))
    b.store(extra if extra is not None else ir.Constant(PTR, None), b.gep(cell, [I64(2)], source_etype=PTR))
    b.call(k.cg.parallel_for(), [tfn, cell, ntasks])


def split(kk, n, work):
    """(ntasks, chunk): n units in tasks of about GRAIN elements of `work` each, at most
    max_tasks and at most n tasks, at least 1."""
    b = kk.b
    nt = b.udiv(b.add(work, I64(GRAIN - 1)), I64(GRAIN))
    for cap in (I64(kk.cg.max_tasks), n):
        nt = b.select(b.icmp_signed("<", nt, cap), nt, cap)
    nt = b.select(b.icmp_signed("<", nt, I64(1)), I64(1), nt)
    chunk = b.udiv(b.add(n, b.sub(nt, I64(1))), nt)
    return nt, chunk


def parallel_units(k, units_fn, work_fn, body):
    """Split [0, units) into contiguous ranges sized by work (elements); body(kt, lo, hi).
    units_fn/work_fn compute their values in a given Kernel (values do not cross functions)."""
    nt, _ = split(k, units_fn(k), work_fn(k))

    def task(kt, t, _):
        n = units_fn(kt)
        _, chunk = split(kt, n, work_fn(kt))
        lo = kt.b.mul(t, chunk)
        hi0 = kt.b.add(lo, chunk)
        hi = kt.b.select(kt.b.icmp_signed("<", hi0, n), hi0, n)
        body(kt, lo, hi)
    parallel(k, nt, task)


def prod(k, vals):
    n = I64(1)
    for d in vals:
        n = k.mul(n, d)
    return n


# --- what a reduction accumulates -------------------------------------------------------------------
class Acc:
    """The accumulator of one reduction kind over dtype d: identity, step, merge. Values may be
    vectors or scalars (the code is the same). sum/mean/sumsq accumulate in `at` (f64 for
    f32/f16/bf16 when SUM_F64), the others in the compute type `et`. max/min propagate NaN:
    once a NaN is in, comparisons keep it."""

    def __init__(self, kind: str, d: dt.DType):
        self.kind, self.d = kind, d
        self.et = compute_type(d)
        self.is_float = d.is_float
        self.signed = d.kind == "i"
        wide_sum = kind in ("sum", "mean", "sumsq") and self.et == F32 and SUM_F64
        self.at = F64 if wide_sum else self.et

    def ident(self, w: int):
        k, t = self.kind, self.at
        if k in ("sum", "mean", "sumsq"):
            return const(t, w, 0.0 if self.is_float else 0)
        if k == "prod":
            return const(t, w, 1.0 if self.is_float else 1)
        if self.is_float:
            return const(t, w, -math.inf if k == "max" else math.inf)
        bits = t.width
        if self.signed:
            lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        else:
            lo, hi = 0, (1 << bits) - 1
        return const(t, w, lo if k == "max" else hi)

    def widen(self, b, x):
        if self.at != self.et:
            return b.fpext(x, vty(self.at, width(x)))
        return x

    def step(self, b, acc, x):
        """acc updated with x (x in the compute type)."""
        if self.kind == "sumsq":
            x = self.widen(b, x)
            return b.fadd(acc, b.fmul(x, x))
        return self.merge(b, acc, self.widen(b, x))

    def merge(self, b, a, c):
        k = self.kind
        if k in ("sum", "mean", "sumsq"):
            return b.fadd(a, c) if self.is_float else b.add(a, c)
        if k == "prod":
            return b.fmul(a, c) if self.is_float else b.mul(a, c)
        if self.is_float:
            better = b.fcmp_ordered(">" if k == "max" else "<", c, a)
            m = b.select(better, c, a)
            return b.select(b.fcmp_unordered("uno", c, c), c, m)
        cmp = b.icmp_signed if self.signed else b.icmp_unsigned
        return b.select(cmp(">" if k == "max" else "<", c, a), c, a)


def reduce_run(k, acc: Acc, x, base, n, vaccs, sacc, pre=None):
    """Fold x[base : base + n] into the vector accumulators `vaccs` (UNROLL of them, or scalars
    on the scalar target) and the scalar one `sacc`. `pre(x)` transforms each loaded value."""
    b = k.b
    w = width(vaccs[0])
    u = len(vaccs)

    def ld(i, lanes_):
        v = vload(k, x, k.add(base, i), lanes_)
        return pre(v) if pre is not None else v

    nmain = floor_to(k, n, w * u)
    vaccs = loop(k, I64(0), nmain, vaccs,
                 lambda i, a: [acc.step(b, a[j], ld(k.add(i, I64(j * w)), w)) for j in range(u)], w * u)
    n1 = nmain
    if w > 1:
        n1 = floor_to(k, n, w)
        vaccs[0] = loop(k, nmain, n1, [vaccs[0]], lambda i, a: [acc.step(b, a[0], ld(i, w))], w)[0]
    sacc = loop(k, n1, n, [sacc], lambda i, a: [acc.step(b, a[0], ld(i, 1))])[0]
    return vaccs, sacc


def collapse(k, acc: Acc, vaccs, sacc):
    """One scalar from the vector accumulators and the scalar one."""
    b = k.b
    v = vaccs[0]
    for a in vaccs[1:]:
        v = acc.merge(b, v, a)
    return acc.merge(b, hreduce(b, v, lambda p, q: acc.merge(b, p, q)), sacc)


def reduce_contiguous(k, acc: Acc, x, base, n, pre=None):
    """The accumulated value of x[base : base + n] (a scalar in acc.at)."""
    w = lanes(k, x.type.dtype)
    vaccs = [acc.ident(w)] * UNROLL
    vaccs, sacc = reduce_run(k, acc, x, base, n, vaccs, acc.ident(1), pre)
    return collapse(k, acc, vaccs, sacc)


# --- layout of a reduction ----------------------------------------------------------------------
def groups(shape, axes):
    """[(kind, [axes])]: alternating 'K'/'R' groups of x's dims, static 1s dropped."""
    gs = []
    for a, d in enumerate(shape):
        if type(d) is int and d == 1:
            continue
        kind = "R" if a in axes else "K"
        if gs and gs[-1][0] == kind:
            gs[-1][1].append(a)
        else:
            gs.append((kind, [a]))
    return gs


class Layout:
    """Runtime sizes and strides of the groups, in one Kernel."""

    def __init__(self, k, x, gs):
        self.gs = gs
        self.dims = [prod(k, [k.dim(x, a) for a in g[1]]) for g in gs]
        self.strides = [None] * len(gs)
        run = I64(1)
        for i in range(len(gs) - 1, -1, -1):
            self.strides[i] = run
            run = k.mul(run, self.dims[i])

    def of(self, kind):
        return [i for i, g in enumerate(self.gs) if g[0] == kind]


def decompose(k, lay: Layout, idx, which):
    """The x offset of flat index `idx` over the groups `which` (row-major)."""
    b = k.b
    if len(which) == 1:
        return k.mul(idx, lay.strides[which[0]])
    off, rem = I64(0), idx
    for j, g in enumerate(reversed(which)):
        d = lay.dims[g]
        last = j == len(which) - 1
        i = rem if last else b.urem(rem, d)
        if not last:
            rem = b.udiv(rem, d)
        off = k.add(off, k.mul(i, lay.strides[g]))
    return off


def nest(k, lay: Layout, which, off, vals, inner):
    """Nested loops over the groups `which`, carrying vals; inner(off, vals) -> vals."""
    if not which:
        return inner(off, vals)
    g = which[0]
    return loop(k, I64(0), lay.dims[g], vals,
                lambda i, v: nest(k, lay, which[1:], k.add(off, k.mul(i, lay.strides[g])), v, inner))


def nest_plain(k, lay: Layout, which, off, inner):
    """Nested loops over the groups `which` with no carried values; inner(off)."""
    nest(k, lay, which, off, [], lambda o, v: (inner(o), [])[1])


def guard_empty(k, count, out_n, body):
    """Run body(); but when `count` (a reduced size) is 0 and the output is not empty, report
    a run-time error instead (numpy raises for max/min/argmax of an empty set)."""
    b = k.b
    if isinstance(count, ir.Constant):
        body()
        return
    bad = b.icmp_signed("==", count, I64(0))
    if out_n is not None:
        bad = b.and_(bad, b.icmp_signed(">", out_n, I64(0)))
    with b.if_else(bad) as (then, other):
        with then:
            k.fail()
        with other:
            body()


# --- nn.sum / mean / max / min / prod ---------------------------------------------------------------
def emit_reduce(k, op):
    x, y = op.operands[0], op.results[0]
    kind = op.opdef.name[3:]
    axes = norm_axes(op.attrs["axes"], x.type.rank)
    gs = groups(x.type.shape, axes)
    acc = Acc(kind, x.type.dtype)
    if not any(g[0] == "R" for g in gs):
        emit_copy(k, x, y)
        return

    def count(kk):
        return prod(kk, [kk.dim(x, a) for a in axes])

    def go():
        if gs[-1][0] == "R":
            reduce_rows(k, acc, x, y, gs, count)
        else:
            reduce_columns(k, acc, x, y, gs, count)
    if kind in ("max", "min"):
        guard_empty(k, count(k), k.numel(y), go)
    else:
        go()


def finish(k, acc: Acc, v, count_fn, d):
    """The output value (compute type of d) from an accumulated scalar."""
    if acc.kind == "mean":
        v = k.b.fdiv(v, k.b.uitofp(count_fn(k), acc.at))
    return to_out(k.b, v, d)


def emit_copy(k, x, y):
    """A reduction over no dims (or only size-1 dims): y = x. The references widen f16/bf16 to
    f32 and round back, which is exact, so the bits are copied."""
    def body(kt, lo, hi):
        kt.loop(lo, hi, lambda i: kt.store(y, i, kt.load(x, i)))
    parallel_units(k, lambda kk: kk.numel(y), lambda kk: kk.numel(y), body)


def reduce_rows(k, acc, x, y, gs, count_fn):
    d = x.type.dtype
    kept = [i for i, g in enumerate(gs) if g[0] == "K"]
    if not kept:
        reduce_all(k, acc, x, y, count_fn)
        return

    def body(kt, lo, hi):
        lay = Layout(kt, x, gs)
        reds = lay.of("R")
        w = lanes(kt, d)

        def one(o):
            base = decompose(kt, lay, o, kept)
            init = [acc.ident(w)] * UNROLL + [acc.ident(1)]

            def inner(off, vals):
                va, sa = reduce_run(kt, acc, x, off, lay.dims[reds[-1]], vals[:-1], vals[-1])
                return va + [sa]
            vals = nest(kt, lay, reds[:-1], base, init, inner)
            v = collapse(kt, acc, vals[:-1], vals[-1])
            vstore(kt, y, o, finish(kt, acc, v, count_fn, d), 1)
        kt.loop(lo, hi, one)
    parallel_units(k, lambda kk: kk.numel(y), lambda kk: kk.numel(x), body)


def reduce_all(k, acc, x, y, count_fn):
    """One output: the run [0, n) split across tasks, partials combined in task order."""
    d = x.type.dtype
    b = k.b
    scratch = alloca(k, acc.at, k.cg.max_tasks)
    nt, _ = split(k, k.numel(x), k.numel(x))

    def task(kt, t, part):
        n = kt.numel(x)
        _, chunk = split(kt, n, n)
        lo = kt.b.mul(t, chunk)
        hi0 = kt.b.add(lo, chunk)
        hi = kt.b.select(kt.b.icmp_signed("<", hi0, n), hi0, n)
        ln = kt.b.select(kt.b.icmp_signed("<", lo, hi), kt.b.sub(hi, lo), I64(0))
        v = reduce_contiguous(kt, acc, x, lo, ln)
        kt.b.store(v, kt.b.gep(part, [t], source_etype=acc.at, inbounds=True))
    parallel(k, nt, task, scratch)
    v = loop(k, I64(0), nt, [acc.ident(1)],
             lambda t, a: [acc.merge(b, a[0], b.load(b.gep(scratch, [t], source_etype=acc.at, inbounds=True),
                                                      typ=acc.at))])[0]
    vstore(k, y, I64(0), finish(k, acc, v, count_fn, d), 1)


def column_units(k, y_kept_outer, inner):
    """(units, nchunks): outer kept positions times chunks of CHUNK inner columns."""
    nch = k.b.udiv(k.b.add(inner, I64(CHUNK - 1)), I64(CHUNK))
    return k.mul(y_kept_outer, nch), nch


def for_column_units(k, x, gs, work_fn, body):
    """The column shape: for each unit, body(kt, lay, base, out_base, cw): x offset of the
    unit's first column at reduced position 0, the output offset, the column count."""
    def units_fn(kk):
        lay = Layout(kk, x, gs)
        kept = lay.of("K")
        return column_units(kk, prod(kk, [lay.dims[i] for i in kept[:-1]]), lay.dims[kept[-1]])[0]

    def run(kt, lo, hi):
        lay = Layout(kt, x, gs)
        kept = lay.of("K")
        inner = lay.dims[kept[-1]]
        _, nch = column_units(kt, I64(1), inner)

        def one(u):
            b = kt.b
            o = b.udiv(u, nch)
            c0 = b.mul(b.urem(u, nch), I64(CHUNK))
            left = b.sub(inner, c0)
            cw = b.select(b.icmp_signed("<", left, I64(CHUNK)), left, I64(CHUNK))
            base = kt.add(decompose(kt, lay, o, kept[:-1]) if len(kept) > 1 else I64(0), c0)
            body(kt, lay, base, b.add(b.mul(o, inner), c0), cw)
        kt.loop(lo, hi, one)
    parallel_units(k, units_fn, work_fn, run)


def scratch_at(k, p, t, j):
    return k.b.gep(p, [j], source_etype=t, inbounds=True)


def reduce_columns(k, acc, x, y, gs, count_fn):
    if [g[0] for g in gs] == ["R", "K"]:
        # e.g. a sum over axis 0 of [N, C]: tasks take bands of whole rows (contiguous
        # streams) into private partial rows when those fit SPLIT_MAX columns; a unit of
        # CHUNK columns per task instead jumps a row's length between short runs, which
        # costs memory bandwidth
        lay = Layout(k, x, gs)
        c = lay.dims[1]
        b = k.b
        small = b.icmp_signed("<=", c, I64(SPLIT_MAX))
        with b.if_else(small) as (then, other):
            with then:
                reduce_row_bands(k, acc, x, y, gs, count_fn)
            with other:
                reduce_column_units(k, acc, x, y, gs, count_fn)
        return
    reduce_column_units(k, acc, x, y, gs, count_fn)


def reduce_row_bands(k, acc, x, y, gs, count_fn):
    """[R, K] (N rows of C): task t folds rows [lo, hi) into its partial row part[t] (heap,
    nt * C accumulators), then the partial rows are merged in task order."""
    d = x.type.dtype
    b = k.b
    lay = Layout(k, x, gs)
    rows, c = lay.dims
    nt, _ = split(k, rows, k.numel(x))
    at_bytes = I64(_nbytes(acc.at))
    malloc = k.cg.declare("malloc", ir.FunctionType(PTR, [I64]))
    free = k.cg.declare("free", ir.FunctionType(ir.VoidType(), [PTR]))
    part = b.call(malloc, [b.mul(b.mul(nt, c), at_bytes)])
    with b.if_else(b.icmp_unsigned("==", part, ir.Constant(PTR, None))) as (then, other):
        with then:      # no memory for the partials: the column units need none
            reduce_column_units(k, acc, x, y, gs, count_fn)
        with other:
            def task(kt, t, pp):
                tb = kt.b
                tl = Layout(kt, x, gs)
                n, cc = tl.dims
                _, chunk = split(kt, n, kt.numel(x))
                lo = tb.mul(t, chunk)
                hi0 = tb.add(lo, chunk)
                hi = tb.select(tb.icmp_signed("<", hi0, n), hi0, n)
                mine = tb.gep(pp, [tb.mul(t, cc)], source_etype=acc.at, inbounds=True)
                kt.loop(I64(0), cc, lambda j: tb.store(acc.ident(1), scratch_at(kt, mine, acc.at, j)))

                def row(r):
                    off = tb.mul(r, cc)

                    def col(j):
                        p = scratch_at(kt, mine, acc.at, j)
                        tb.store(acc.step(tb, tb.load(p, typ=acc.at), vload(kt, x, tb.add(off, j), 1)), p)
                    kt.loop(I64(0), cc, col)
                kt.loop(lo, hi, row)
            parallel(k, nt, task, part)

            def out(j):
                v = loop(k, I64(1), nt, [b.load(scratch_at(k, part, acc.at, j), typ=acc.at)],
                         lambda t, a: [acc.merge(b, a[0], b.load(scratch_at(k, part, acc.at, b.add(b.mul(t, c), j)),
                                                                 typ=acc.at))])[0]
                vstore(k, y, j, finish(k, acc, v, count_fn, d), 1)
            k.loop(I64(0), c, out)
            b.call(free, [part])


def reduce_column_units(k, acc, x, y, gs, count_fn):
    d = x.type.dtype

    def body(kt, lay, base, obase, cw):
        b = kt.b
        s = alloca(kt, acc.at, CHUNK)
        kt.loop(I64(0), cw, lambda j: b.store(acc.ident(1), scratch_at(kt, s, acc.at, j)))

        def at_r(off):
            def col(j):
                p = scratch_at(kt, s, acc.at, j)
                b.store(acc.step(b, b.load(p, typ=acc.at), vload(kt, x, b.add(off, j), 1)), p)
            kt.loop(I64(0), cw, col)
        nest_plain(kt, lay, lay.of("R"), base, at_r)

        def out(j):
            v = b.load(scratch_at(kt, s, acc.at, j), typ=acc.at)
            vstore(kt, y, b.add(obase, j), finish(kt, acc, v, count_fn, d), 1)
        kt.loop(I64(0), cw, out)
    for_column_units(k, x, gs, lambda kk: kk.numel(x), body)


def _reduce_supports(op) -> bool:
    if not tensor_types_supported(op):
        return False
    x = op.operands[0]
    if op.opdef.name in ("nn.max", "nn.min"):
        return _empty_ok([x.type.shape[a] for a in norm_axes(op.attrs["axes"], x.type.rank)])
    return True


def _empty_ok(dims) -> bool:
    """Whether reduced dims that might be 0 can be handled: static ones must be > 0, symbolic
    ones need Kernel.fail (the run-time error path)."""
    for d in dims:
        if type(d) is int:
            if d == 0:
                return False
        elif not hasattr(Kernel, "fail"):
            return False
    return True


emitter("nn.sum", "nn.mean", "nn.max", "nn.min", "nn.prod")(emit_reduce)
emit_reduce.supports = _reduce_supports


# --- nn.argmax / nn.argmin ----------------------------------------------------------------------
class Arg:
    """Whether a later candidate replaces the best so far (an earlier index): when it is
    better, or equal and select_last_index. NaN beats everything: numpy returns the first NaN
    (the last with select_last_index, since the reference flips x)."""

    def __init__(self, is_max: bool, last: bool, d: dt.DType):
        self.op = ">" if is_max else "<"
        self.last, self.is_float = last, d.is_float
        self.signed = d.kind == "i"

    def _cmp(self, b, pred, a, c):
        if self.is_float:
            return b.fcmp_ordered(pred, a, c)
        return (b.icmp_signed if self.signed else b.icmp_unsigned)(pred, a, c)

    def replaces(self, b, later, best):
        if not self.is_float:
            return self._cmp(b, self.op + "=" if self.last else self.op, later, best)
        lnan = b.fcmp_unordered("uno", later, later)
        bnan = b.fcmp_unordered("uno", best, best)
        if self.last:
            return b.or_(lnan, b.and_(b.not_(bnan), self._cmp(b, self.op + "=", later, best)))
        return b.or_(self._cmp(b, self.op, later, best), b.and_(lnan, b.not_(bnan)))

    def combine(self, b, a, c):
        """Merge candidates a and c = (value, index) whose index sets interleave (vector lanes):
        the better value; on a tie the smaller index (the larger with select_last_index)."""
        (av, ai), (cv, ci) = a, c
        strictly = self._cmp(b, self.op, cv, av)
        equal = self._cmp(b, "==", cv, av)
        if self.is_float:
            cnan, anan = b.fcmp_unordered("uno", cv, cv), b.fcmp_unordered("uno", av, av)
            strictly = b.or_(strictly, b.and_(cnan, b.not_(anan)))
            equal = b.or_(equal, b.and_(cnan, anan))
        tie = b.icmp_signed(">" if self.last else "<", ci, ai)
        take = b.or_(strictly, b.and_(equal, tie))
        return b.select(take, cv, av), b.select(take, ci, ai)

    def step(self, b, state, xv, iv):
        best, idx = state
        take = self.replaces(b, xv, best)
        return [b.select(take, xv, best), b.select(take, iv, idx)]


def _axis_groups(rank, a):
    """[K outer, R the axis, K inner]; an empty group has size 1."""
    return [("K", list(range(a))), ("R", [a]), ("K", list(range(a + 1, rank)))]


def _inner_is_one(x, a) -> bool:
    tail = x.type.shape[a + 1:]
    return all(type(d) is int for d in tail) and math.prod(tail) == 1


def emit_arg(k, op):
    x, y = op.operands[0], op.results[0]
    a = norm_axis(op.attrs["axis"], x.type.rank)
    arg = Arg(op.opdef.name == "nn.argmax", op.attrs["select_last_index"], x.type.dtype)

    def go():
        if _inner_is_one(x, a):
            arg_rows(k, arg, x, y, a)
        else:
            arg_columns(k, arg, x, y, a)
    guard_empty(k, k.dim(x, a), None, go)


def arg_rows(k, arg, x, y, a):
    d = x.type.dtype

    def body(kt, lo, hi):
        b = kt.b
        n = kt.dim(x, a)
        w = lanes(kt, d)

        def one(o):
            base = b.mul(o, n)
            bv, bi, start = vload(kt, x, base, 1), I64(0), I64(1)        # n >= 1 here
            if w > 1:
                # rows of at least one vector: each lane keeps its own best (value, index)
                pre = b.block
                vec = kt.fn.append_basic_block("arg.vec")
                join = kt.fn.append_basic_block("arg.join")
                b.cbranch(b.icmp_signed(">=", n, I64(w)), vec, join)
                b.position_at_end(vec)
                iota = ir.Constant(ir.VectorType(I64, w), list(range(w)))
                nv = floor_to(kt, n, w)
                best, idx = loop(kt, I64(w), nv, [vload(kt, x, base, w), iota], lambda i, s: arg.step(
                    b, s, vload(kt, x, b.add(base, i), w), b.add(splat(b, i, w), iota)), w)
                vv, vi = _hreduce_arg(b, arg, best, idx)
                end = b.block
                b.branch(join)
                b.position_at_end(join)
                phis = []
                for t, p0, p1 in ((bv.type, bv, vv), (I64, I64(0), vi), (I64, I64(1), nv)):
                    p = b.phi(t)
                    p.add_incoming(p0, pre)
                    p.add_incoming(p1, end)
                    phis.append(p)
                bv, bi, start = phis
            bv, bi = loop(kt, start, n, [bv, bi], lambda i, s: arg.step(b, s, vload(kt, x, b.add(base, i), 1), i))
            kt.store(y, o, bi)
        kt.loop(lo, hi, one)
    parallel_units(k, lambda kk: kk.numel(y), lambda kk: kk.numel(x), body)


def _hreduce_arg(b, arg, v, i):
    w = width(v)
    while w > 1:
        h = w // 2
        lo_m = ir.Constant(ir.VectorType(I32, h), list(range(h)))
        hi_m = ir.Constant(ir.VectorType(I32, h), list(range(h, w)))
        a = (b.shuffle_vector(v, v, lo_m), b.shuffle_vector(i, i, lo_m))
        c = (b.shuffle_vector(v, v, hi_m), b.shuffle_vector(i, i, hi_m))
        v, i = arg.combine(b, a, c)
        w = h
    return b.extract_element(v, I32(0)), b.extract_element(i, I32(0))


def for_axis_columns(k, x, a, work_fn, body):
    """The column shape for one axis: x as [outer, n, inner] with inner > 1 (maybe only at run
    time); units of up to CHUNK inner columns; body(kt, lay, base, obase, cw) with the x offset
    of the unit's first column at position 0 of the axis and the offset of that column in an
    output laid out as [outer, inner]."""
    gs = _axis_groups(x.type.rank, a)

    def units_fn(kk):
        lay = Layout(kk, x, gs)
        return column_units(kk, lay.dims[0], lay.dims[2])[0]

    def run(kt, lo, hi):
        lay = Layout(kt, x, gs)
        inner = lay.dims[2]
        _, nch = column_units(kt, I64(1), inner)

        def one(u):
            b = kt.b
            o = b.udiv(u, nch)
            c0 = b.mul(b.urem(u, nch), I64(CHUNK))
            left = b.sub(inner, c0)
            cw = b.select(b.icmp_signed("<", left, I64(CHUNK)), left, I64(CHUNK))
            body(kt, lay, b.add(kt.mul(o, lay.strides[0]), c0), b.add(kt.mul(o, inner), c0), cw)
        kt.loop(lo, hi, one)
    parallel_units(k, units_fn, work_fn, run)


def arg_columns(k, arg, x, y, a):
    et = compute_type(x.type.dtype)

    def body(kt, lay, base, obase, cw):
        b = kt.b
        sv, si = alloca(kt, et, CHUNK), alloca(kt, I64, CHUNK)
        stride = lay.strides[1]

        def init(j):
            b.store(vload(kt, x, b.add(base, j), 1), scratch_at(kt, sv, et, j))
            b.store(I64(0), scratch_at(kt, si, I64, j))
        kt.loop(I64(0), cw, init)

        def at_r(r):
            off = b.add(base, b.mul(r, stride))

            def col(j):
                pv, pi = scratch_at(kt, sv, et, j), scratch_at(kt, si, I64, j)
                nb, ni = arg.step(b, [b.load(pv, typ=et), b.load(pi, typ=I64)], vload(kt, x, b.add(off, j), 1), r)
                b.store(nb, pv)
                b.store(ni, pi)
            kt.loop(I64(0), cw, col)
        kt.loop(I64(1), lay.dims[1], at_r)
        kt.loop(I64(0), cw, lambda j: kt.store(y, b.add(obase, j), b.load(scratch_at(kt, si, I64, j), typ=I64)))
    for_axis_columns(k, x, a, lambda kk: kk.numel(x), body)


def _arg_supports(op) -> bool:
    if not tensor_types_supported(op):
        return False
    x = op.operands[0]
    return _empty_ok([x.type.shape[norm_axis(op.attrs["axis"], x.type.rank)]])


emitter("nn.argmax", "nn.argmin")(emit_arg)
emit_arg.supports = _arg_supports


# --- nn.softmax / nn.log_softmax --------------------------------------------------------------------
def emit_softmax(k, op):
    x, y = op.operands[0], op.results[0]
    a = norm_axis(op.attrs["axis"], x.type.rank)
    log = op.opdef.name == "nn.log_softmax"
    if _inner_is_one(x, a):
        softmax_rows(k, x, y, a, log)
    else:
        softmax_columns(k, x, y, a, log)


def _math(k, t, d):
    """A Scalar for mathf in LLVM type t (the accumulator type, or d's compute type)."""
    dd = dt.f64 if t == F64 else d
    return Scalar(k.b, k.cg, dd, [dd])


def softmax_rows(k, x, y, a, log):
    d = x.type.dtype
    mx, sm = Acc("max", d), Acc("sum", d)
    # f32/f64: exp(x - max) goes into y and is scaled in place; f16/bf16 recompute it in the
    # last pass so the output is rounded once
    keep_e = not log and d not in (dt.f16, dt.bf16)

    def body(kt, lo, hi):
        b = kt.b
        n = kt.dim(x, a)

        def one(r):
            base = b.mul(r, n)
            m = reduce_contiguous(kt, mx, x, base, n)
            s = _math(kt, compute_type(d), d)

            def ex(j, acc):
                e = mathf.exp(s, b.fsub(vload(kt, x, b.add(base, j), 1), m))
                if keep_e:
                    vstore(kt, y, b.add(base, j), e, 1)
                return [b.fadd(acc[0], e if acc[0].type == e.type else sm.widen(b, e), flags=("reassoc",))]
            if sm.at == sm.et:
                tot = loop(kt, I64(0), n, [sm.ident(1)], ex)[0]
            else:
                # f32 partial sums over blocks, added up in f64: the exp loop keeps the full
                # f32 vector width (an f64 accumulator would halve it)
                def block(j0, acc):
                    j1 = b.add(j0, I64(BLOCK))
                    j1 = b.select(b.icmp_signed("<", j1, n), j1, n)
                    part = loop(kt, j0, j1, [ir.Constant(sm.et, 0.0)], ex)[0]
                    return [b.fadd(acc[0], sm.widen(b, part))]
                nb = b.mul(b.udiv(b.add(n, I64(BLOCK - 1)), I64(BLOCK)), I64(BLOCK))
                tot = loop(kt, I64(0), nb, [sm.ident(1)], block, BLOCK)[0]
            if log:
                lse = to_out(b, mathf.log(_math(kt, sm.at, d), tot), d)
                kt.loop(I64(0), n, lambda j: vstore(kt, y, b.add(base, j), b.fsub(
                    b.fsub(vload(kt, x, b.add(base, j), 1), m), lse), 1))
                return
            inv = to_out(b, b.fdiv(ir.Constant(sm.at, 1.0), tot), d)
            if keep_e:
                kt.loop(I64(0), n, lambda j: vstore(kt, y, b.add(base, j), b.fmul(
                    vload(kt, y, b.add(base, j), 1), inv), 1))
            else:
                kt.loop(I64(0), n, lambda j: vstore(kt, y, b.add(base, j), b.fmul(
                    mathf.exp(s, b.fsub(vload(kt, x, b.add(base, j), 1), m)), inv), 1))
        kt.loop(lo, hi, one)

    def rows(kk):
        return prod(kk, [kk.dim(x, i) for i in range(a)])
    parallel_units(k, rows, lambda kk: kk.numel(x), body)


def softmax_columns(k, x, y, a, log):
    d = x.type.dtype
    et = compute_type(d)
    mx, sm = Acc("max", d), Acc("sum", d)
    keep_e = not log and d not in (dt.f16, dt.bf16)

    def body(kt, lay, base, obase, cw):
        b = kt.b
        n, stride = lay.dims[1], lay.strides[1]
        sm_, ss, st = alloca(kt, et, CHUNK), alloca(kt, sm.at, CHUNK), alloca(kt, et, CHUNK)
        s = _math(kt, et, d)

        def over_axis(fn):
            kt.loop(I64(0), n, lambda r: kt.loop(I64(0), cw, lambda j: fn(b.add(b.add(base, b.mul(r, stride)), j), j)))

        def init(j):
            b.store(mx.ident(1), scratch_at(kt, sm_, et, j))
            b.store(sm.ident(1), scratch_at(kt, ss, sm.at, j))
        kt.loop(I64(0), cw, init)

        def upd_max(i, j):
            p = scratch_at(kt, sm_, et, j)
            b.store(mx.step(b, b.load(p, typ=et), vload(kt, x, i, 1)), p)
        over_axis(upd_max)

        def m_at(j):
            return b.load(scratch_at(kt, sm_, et, j), typ=et)

        def upd_sum(i, j):
            e = mathf.exp(s, b.fsub(vload(kt, x, i, 1), m_at(j)))
            if keep_e:
                vstore(kt, y, i, e, 1)
            p = scratch_at(kt, ss, sm.at, j)
            b.store(b.fadd(b.load(p, typ=sm.at), sm.widen(b, e)), p)
        over_axis(upd_sum)

        def per_col(j):
            tot = b.load(scratch_at(kt, ss, sm.at, j), typ=sm.at)
            v = mathf.log(_math(kt, sm.at, d), tot) if log else b.fdiv(ir.Constant(sm.at, 1.0), tot)
            b.store(to_out(b, v, d), scratch_at(kt, st, et, j))
        kt.loop(I64(0), cw, per_col)

        def t_at(j):
            return b.load(scratch_at(kt, st, et, j), typ=et)

        def out(i, j):
            if log:
                v = b.fsub(b.fsub(vload(kt, x, i, 1), m_at(j)), t_at(j))
            elif keep_e:
                v = b.fmul(vload(kt, y, i, 1), t_at(j))
            else:
                v = b.fmul(mathf.exp(s, b.fsub(vload(kt, x, i, 1), m_at(j))), t_at(j))
            vstore(kt, y, i, v, 1)
        over_axis(out)
    for_axis_columns(k, x, a, lambda kk: kk.numel(x), body)


emitter("nn.softmax", "nn.log_softmax")(emit_softmax)
emit_softmax.supports = tensor_types_supported


# --- nn.layer_norm / nn.rms_norm ------------------------------------------------------------------
def emit_norm(k, op):
    x, y = op.operands[0], op.results[0]
    params = list(op.operands[1:])              # scale, then bias (layer_norm)
    center = op.opdef.name == "nn.layer_norm"
    rank = x.type.rank
    a = norm_axis(op.attrs["axis"], rank)
    eps = float(op.attrs["eps"])
    d = x.type.dtype
    sm, sq = Acc("sum", d), Acc("sumsq", d)
    at = sm.at
    tail = x.type.shape[a:]
    static_fast = all(_same_tail(p.type.shape, tail) for p in params)

    def body(kt, lo, hi):
        b = kt.b
        tdims = [kt.dim(x, i) for i in range(a, rank)]
        n = prod(kt, tdims)
        nf = b.uitofp(n, at)

        def one(r):
            base = b.mul(r, n)
            mean = None
            pre = None
            if center:
                mean = to_out(b, b.fdiv(reduce_contiguous(kt, sm, x, base, n), nf), d)
                pre = lambda v: b.fsub(v, splat(b, mean, width(v)))  # noqa: E731
            ss = reduce_contiguous(kt, sq, x, base, n, pre)
            ms = b.fadd(b.fdiv(ss, nf), ir.Constant(at, eps))
            rs = to_out(b, b.fdiv(ir.Constant(at, 1.0), mathf.sqrt(_math(kt, at, d), ms)), d)

            def elem(xv, ps):
                v = b.fmul(b.fsub(xv, mean) if center else xv, rs)
                if len(ps) > 0:
                    v = b.fmul(v, ps[0])
                if len(ps) > 1:
                    v = b.fadd(v, ps[1])
                return v

            def fast():
                kt.loop(I64(0), n, lambda j: vstore(kt, y, b.add(base, j), elem(
                    vload(kt, x, b.add(base, j), 1), [vload(kt, p, j, 1) for p in params]), 1))

            if static_fast:
                fast()
                return
            same = I1(1)
            for p in params:
                same = b.and_(same, b.icmp_signed("==", kt.numel(p), n))
            with b.if_else(same) as (then, other):
                with then:
                    fast()
                with other:
                    norm_general(kt, x, y, params, a, base, elem)
        kt.loop(lo, hi, one)

    def rows(kk):
        return prod(kk, [kk.dim(x, i) for i in range(a)])
    parallel_units(k, rows, lambda kk: kk.numel(x), body)


def _same_tail(pshape, tail) -> bool:
    from ckir.types import same_dim
    pad = len(tail) - len(pshape)
    if pad < 0:
        return False
    return all(type(t) is int and t == 1 for t in tail[:pad]) and \
        all(same_dim(p, t) for p, t in zip(pshape, tail[pad:]))


def norm_general(kt, x, y, params, a, base, elem):
    """The write pass when a parameter broadcasts (numpy rules, right-aligned) over the
    normalized dims: nested loops over them with a stride per operand (0 where it is 1)."""
    b = kt.b
    rank = x.type.rank
    tdims = [kt.dim(x, i) for i in range(a, rank)]
    nt = len(tdims)
    xs = [None] * nt
    run = I64(1)
    for i in range(nt - 1, -1, -1):
        xs[i] = run
        run = kt.mul(run, tdims[i])
    pst = []
    for p in params:
        st, run = [I64(0)] * nt, I64(1)
        for i in range(nt - 1, -1, -1):
            pi = i - (nt - p.type.rank)
            if pi < 0:
                continue
            dd = kt.dim(p, pi)
            st[i] = b.select(b.icmp_signed("==", dd, I64(1)), I64(0), run)
            run = kt.mul(run, dd)
        pst.append(st)

    def level(i, xo, pos):
        if i == nt:
            vstore(kt, y, xo, elem(vload(kt, x, xo, 1), [vload(kt, p, o, 1) for p, o in zip(params, pos)]), 1)
            return
        kt.loop(I64(0), tdims[i], lambda j: level(i + 1, b.add(xo, kt.mul(j, xs[i])),
                                                  [b.add(o, b.mul(j, st[i])) for o, st in zip(pos, pst)]))
    level(0, base, [I64(0)] * len(params))


emitter("nn.layer_norm", "nn.rms_norm")(emit_norm)
emit_norm.supports = tensor_types_supported


# --- nn.size / nn.shape -----------------------------------------------------------------------------
def _store_bits(k, v, value):
    """Store the numpy scalar `value` (of v's dtype) as raw bits at element 0."""
    t = mem_type(v.type.dtype)
    it = ir.IntType(_nbytes(t) * 8)
    bits = int.from_bytes(np.asarray(value, dtype=v.type.dtype.np).tobytes(), "little")
    k.b.store(ir.Constant(it, bits), k.b.gep(k.ptr(v), [I64(0)], source_etype=it, inbounds=True))


_SIZE_RUNTIME = (dt.i64, dt.u64, dt.f64, dt.f32, dt.f16, dt.bf16)


def emit_size(k, op):
    x, y = op.operands[0], op.results[0]
    d = op.attrs["dtype"]
    dims = [x.type.shape[a] for a in norm_axes(op.attrs["axes"], x.type.rank)]
    if all(type(n) is int for n in dims):
        _store_bits(k, y, np.asarray(math.prod(dims), dtype=d.np))
        return
    b = k.b
    n = prod(k, [k.dim(x, a) for a in norm_axes(op.attrs["axes"], x.type.rank)])
    if d.is_float:
        # through f32 for f16/bf16: ml_dtypes converts a Python int that way
        n = b.sitofp(n, F64 if d is dt.f64 else F32)
    vstore(k, y, I64(0), n, 1)


def _size_supports(op) -> bool:
    if not tensor_types_supported(op):
        return False
    x = op.operands[0]
    dims = [x.type.shape[a] for a in norm_axes(op.attrs["axes"], x.type.rank)]
    d = op.attrs["dtype"]
    if all(type(n) is int for n in dims):
        try:
            np.asarray(math.prod(dims), dtype=d.np)       # the reference would raise too
        except (OverflowError, ValueError):
            return False
        return True
    return d in _SIZE_RUNTIME


def emit_shape(k, op):
    x, y = op.operands[0], op.results[0]
    for i, a in enumerate(range(x.type.rank)[slice(op.attrs["start"], op.attrs["end"])]):
        k.store(y, I64(i), k.dim(x, a))


emitter("nn.size")(emit_size)
emit_size.supports = _size_supports
emitter("nn.shape")(emit_shape)
emit_shape.supports = tensor_types_supported
