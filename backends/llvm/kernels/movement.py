"""Data movement kernels: transpose, expand/broadcast_like, concat, split/split_like, slice,
gather, gather_elements, pad, tile, arange.

Moving data does not depend on what the bytes mean, so every dtype the backend stores is
moved as an integer of its width (1, 2, 4 or 8 bytes): results are exact, NaN payloads
included.

Most ops are a *strided copy*: element (i0, ..., in-1) of the contiguous result is element
off + sum(i_a * stride_a) of the source. `strided_copy` walks the result row by row (the last
axis), with an odometer over the outer axes (no divisions per row), copying each row with
memcpy when its source stride is 1, a fill when it is 0, a strided loop otherwise. Before
that, each op drops static size-1 axes and merges neighbouring axes that stay contiguous in
the source, so rows are as long as possible. A transpose that moves the source's last axis
takes a cache-blocked path instead: tiles of N x N elements are loaded as N vectors along the
source's contiguous axis, transposed in registers with log2(N) rounds of interleaving
shuffles and stored as N vectors along the result's rows.

Work is split over the thread pool by flat result position (so tasks get equal bytes, however
the rows are shaped); `walk_rows` turns a flat range into (partial) rows.

Indices (gather, gather_elements) are checked in the kernel: an index outside [-n, n) makes
the kernel report through `Kernel.fail` (nothing is read out of bounds), and plan.py reruns
the op's reference, which raises the interpreter's CkirError naming the index.
"""
from __future__ import annotations

import math

import llvmlite.ir as ir
import numpy as np

from ckir import dtypes as dt
from ckir.dialects.nn.data import _pad_pairs, _slice_spec

from ..codegen import F32, F64, I1, I8, I32, I64, PTR, VOID, emitter, tensor_types_supported

GRAIN_BYTES = 1 << 16          # bytes per task: a task of 64 KiB costs far more than its dispatch
ARANGE_TABLE_MAX = 1 << 16     # f16/bf16 aranges are emitted as constant tables up to this size


# --- elements as integers of their width --------------------------------------------------------
def _et(v) -> ir.IntType:
    return ir.IntType(v.type.dtype.bits)


def _es(v) -> int:
    return v.type.dtype.bits // 8


def _grain(v) -> int:
    return max(1, GRAIN_BYTES // _es(v))


def _at(kt, v, index, ptr=None):
    """Pointer to element `index` of value v."""
    return kt.b.gep(ptr if ptr is not None else kt.ptr(v), [index], source_etype=_et(v), inbounds=True)


def _ld(kt, v, index):
    return kt.b.load(_at(kt, v, index), typ=_et(v))


def _st(kt, v, index, x):
    kt.b.store(x, _at(kt, v, index))


def _memcpy(kt, dst, src, nbytes):
    fn = kt.cg.declare("llvm.memcpy.p0.p0.i64", ir.FunctionType(VOID, [PTR, PTR, I64, I1]))
    kt.b.call(fn, [dst, src, nbytes, I1(0)])


def _min(b, a, c):
    return b.select(b.icmp_signed("<", a, c), a, c)


def _max(b, a, c):
    return b.select(b.icmp_signed(">", a, c), a, c)


def _var(kt, ty, init):
    """A mutable local (an alloca in the entry block, so LLVM turns it into registers)."""
    entry = kt.fn.entry_basic_block
    hb = ir.IRBuilder(entry)
    hb.position_at_start(entry)
    p = hb.alloca(ty)
    kt.b.store(init, p)
    return p


def _prod(kt, vals):
    n = I64(1)
    for d in vals:
        n = kt.mul(n, d)
    return n


def _static(d) -> bool:
    return type(d) is int


# --- walking a flat range row by row ------------------------------------------------------------
def walk_rows(kt, lo, hi, dims, strides, row):
    """Visit the flat range [lo, hi) (lo < hi) of the row-major box `dims` (i64 values, rank
    >= 1) row by row: row(pos, c0, c1, bases, idx) for each piece of a row, where [c0, c1) are
    the columns visited, pos the flat position of column c0, idx the row's index over the outer
    axes and bases[k] = sum_a idx[a] * strides[k][a]. The outer index advances like an odometer,
    so there is no division per row."""
    b = kt.b
    n = len(dims)
    W = dims[-1]
    r = b.udiv(lo, W)
    c = b.urem(lo, W)
    idx = [None] * (n - 1)
    for a in range(n - 2, -1, -1):
        if a == 0:
            idx[a] = r                     # r < dims[0] since lo < numel
        else:
            idx[a] = b.urem(r, dims[a])
            r = b.udiv(r, dims[a])
    bases = []
    for st in strides:
        s = I64(0)
        for a in range(n - 1):
            s = kt.add(s, kt.mul(idx[a], st[a]))
        bases.append(s)
    v_pos, v_c0 = _var(kt, I64, lo), _var(kt, I64, c)
    v_idx = [_var(kt, I64, i) for i in idx]
    v_bases = [_var(kt, I64, s) for s in bases]
    body = kt.fn.append_basic_block("rows")
    done = kt.fn.append_basic_block("rows_done")
    b.branch(body)
    b.position_at_end(body)
    pos, c0 = b.load(v_pos, typ=I64), b.load(v_c0, typ=I64)
    cur_idx = [b.load(p, typ=I64) for p in v_idx]
    cur_bases = [b.load(p, typ=I64) for p in v_bases]
    ln = _min(b, b.sub(W, c0), b.sub(hi, pos))
    row(pos, c0, b.add(c0, ln), cur_bases, cur_idx)
    nxt = b.add(pos, ln)
    b.store(nxt, v_pos)
    b.store(I64(0), v_c0)
    carry = I1(1)
    nb = list(cur_bases)
    for a in range(n - 2, -1, -1):
        inc = b.add(cur_idx[a], b.zext(carry, I64))
        wrap = b.and_(carry, b.icmp_signed("==", inc, dims[a]))
        b.store(b.select(wrap, I64(0), inc), v_idx[a])
        for j, st in enumerate(strides):
            step = b.select(carry, st[a], I64(0))
            back = b.select(wrap, kt.mul(st[a], dims[a]), I64(0))
            nb[j] = b.sub(b.add(nb[j], step), back)
        carry = wrap
    for vb, x in zip(v_bases, nb):
        b.store(x, vb)
    b.cbranch(b.icmp_signed("<", nxt, hi), body, done)
    b.position_at_end(done)


def _if_nonempty(kt, lo, hi, fn):
    with kt.b.if_then(kt.b.icmp_signed("<", lo, hi)):
        fn()


# --- strided copies -------------------------------------------------------------------------------
class Ax:
    """One axis of a strided copy: its size, its source stride (functions of a Kernel, since
    every task computes them again), and the stride when it is known statically (0, 1, k)."""

    def __init__(self, dim, stride, known=None):
        self.dim, self.stride, self.known = dim, stride, known


def merge_axes(axes, joins):
    """Merge axis a into a+1 where joins[a] says stride[a] == stride[a+1] * dim[a+1] holds
    whatever the sizes (the two axes stay contiguous in the source)."""
    out = [axes[0]] if axes else []
    for a in range(1, len(axes)):
        if joins[a - 1]:
            p, q = out[-1], axes[a]
            out[-1] = Ax(lambda kt, p=p, q=q: kt.mul(p.dim(kt), q.dim(kt)), q.stride, q.known)
        else:
            out.append(axes[a])
    return out


def _copy_row(kt, out, src, pos, c0, c1, sbase, ax):
    """out[pos + j] = src[sbase + (c0 + j) * stride] for j in [0, c1 - c0)."""
    b = kt.b
    n = b.sub(c1, c0)
    dst = _at(kt, out, pos)
    et = _et(src)

    def unit():
        _memcpy(kt, dst, _at(kt, src, b.add(sbase, c0)), b.mul(n, I64(_es(src))))

    def zero():
        x = _ld(kt, src, sbase)
        kt.loop(I64(0), n, lambda j: b.store(x, b.gep(dst, [j], source_etype=et, inbounds=True)))

    def strided(st):
        s0 = b.add(sbase, b.mul(c0, st))
        kt.loop(I64(0), n, lambda j: b.store(_ld(kt, src, b.add(s0, b.mul(j, st))),
                                               b.gep(dst, [j], source_etype=et, inbounds=True)))

    if ax.known == 1:
        unit()
    elif ax.known == 0:
        zero()
    elif ax.known is not None:
        strided(I64(ax.known))
    else:
        st = ax.stride(kt)
        with b.if_else(b.icmp_signed("==", st, I64(1))) as (is_unit, other):
            with is_unit:
                unit()
            with other:
                with b.if_else(b.icmp_signed("==", st, I64(0))) as (is_zero, general):
                    with is_zero:
                        zero()
                    with general:
                        strided(st)


def strided_copy(k, out, src, axes, offset=None):
    """out (contiguous, the shape of `axes`) = src[offset + sum_a i_a * stride_a]."""
    off = offset or (lambda kt: I64(0))
    if not axes:
        _st(k, out, I64(0), _ld(k, src, off(k)))
        return

    def body(kt, lo, hi):
        def run():
            dims = [a.dim(kt) for a in axes]
            strides = [a.stride(kt) for a in axes[:-1]]
            o = off(kt)
            walk_rows(kt, lo, hi, dims, [strides],
                      lambda pos, c0, c1, bases, idx: _copy_row(kt, out, src, pos, c0, c1,
                                                                kt.b.add(o, bases[0]), axes[-1]))
        _if_nonempty(kt, lo, hi, run)

    k.parallel_range(lambda kk: _prod(kk, [a.dim(kk) for a in axes]), body, _grain(out))


def _row_major(shape_fns):
    """Strides (functions) of a contiguous array with these dims."""
    n = len(shape_fns)
    out = []
    for a in range(n):
        out.append(lambda kt, a=a: _prod(kt, [f(kt) for f in shape_fns[a + 1:]]))
    return out


# --- transpose --------------------------------------------------------------------------------------
def _perm(perm, rank):
    return tuple(reversed(range(rank))) if perm is None else tuple(perm)


def transpose_plan(shape, perm):
    """(groups, order): the source's axes without static size-1 ones, cut into groups of axes
    that stay adjacent in the result (each group moves as one axis), and the result's order of
    the groups. The group holding the source's last axis has stride 1."""
    keep = [a for a in range(len(shape)) if shape[a] != 1]
    pos = {a: i for i, a in enumerate(keep)}
    runs = []
    for p in perm:
        if p not in pos:
            continue
        if runs and pos[runs[-1][-1]] + 1 == pos[p]:
            runs[-1].append(p)
        else:
            runs.append([p])
    groups = sorted(runs, key=lambda g: g[0])
    order = [groups.index(r) for r in runs]
    return groups, order


@emitter("nn.transpose")
def emit_transpose(k, op):
    x, out = op.operands[0], op.results[0]
    shape = x.type.shape
    groups, order = transpose_plan(shape, _perm(op.attrs["perm"], x.type.rank))
    dims = [lambda kt, g=g: _prod(kt, [kt.dim(x, a) for a in g]) for g in groups]
    strides = _row_major(dims)
    last = len(groups) - 1                   # the group with the source's last axis
    axes = [Ax(dims[g], strides[g], 1 if g == last else None) for g in order]
    if not axes or order[-1] == last:
        strided_copy(k, out, x, axes)        # rows stay contiguous: memcpy per row
        return
    _transpose_blocked(k, out, x, axes, order.index(last))


def _tile_n(k, v) -> int:
    """Micro-tile size N (N x N elements, N vectors of N lanes); 0: no vectors (scalar)."""
    bits = k.cg.target.vector_bits
    if bits < 128:
        return 0
    return max(2, min(16, bits // v.type.dtype.bits))


def _transpose_in_registers(b, rows, n):
    """Transpose n vectors of n lanes: log2(n) rounds of pairwise interleaving."""
    h = n // 2
    lo = ir.Constant(ir.VectorType(I32, n), [x for i in range(h) for x in (i, n + i)])
    hi = ir.Constant(ir.VectorType(I32, n), [x for i in range(h, n) for x in (i, n + i)])
    for _ in range(int(math.log2(n))):
        nxt = []
        for i in range(h):
            nxt += [b.shuffle_vector(rows[i], rows[i + h], lo), b.shuffle_vector(rows[i], rows[i + h], hi)]
        rows = nxt
    return rows


def _transpose_blocked(k, out, x, axes, q):
    """out[i over axes] with the source's unit-stride axis at result position q, not last.

    Tiles are TI x TJ elements, whole cache lines on both sides, so every source and result
    line a tile touches is used whole, at once (with power-of-two row strides all the rows of a
    tile fall in one cache set, so nothing may be left for later). A tile is N x N register
    transposes (N vectors of N lanes) into a contiguous buffer, which then fills TI result
    line runs. Work items are (batch, column chunk, row strip): TI result rows times C result
    columns, strips fastest, so consecutive items read on along the same source rows. (Tile
    shapes were timed on a busy 2-core machine; the differences were within its noise.)"""
    n = len(axes)
    et, es = _et(x), _es(x)
    N = _tile_n(k, x)
    TI = max(N, 128 // es, 2)          # result rows per tile: two cache lines of source
    TJ = max(N, 64 // es, 2)           # result columns per tile: one cache line of result
    C = max(TJ, 1024 // es)            # result columns per work item
    batch = [a for a in range(n) if a not in (q, n - 1)]
    vt = ir.VectorType(et, N) if N else None

    def geometry(kt):
        D = [a.dim(kt) for a in axes]
        S = [a.stride(kt) for a in axes]
        OS = [_prod(kt, D[a + 1:]) for a in range(n)]
        b = kt.b
        nst = b.udiv(b.add(D[q], I64(TI - 1)), I64(TI))
        nch = b.udiv(b.add(D[-1], I64(C - 1)), I64(C))
        nb = _prod(kt, [D[a] for a in batch])
        return D, S, OS, nst, nch, nb

    def items(kt):
        *_, nst, nch, nb = geometry(kt)
        return kt.mul(kt.mul(nb, nch), nst)

    def body(kt, lo, hi):
        D, S, OS, nst, nch, _ = geometry(kt)
        b = kt.b
        src, dst = kt.ptr(x), kt.ptr(out)
        Sl, OSq = S[-1], OS[q]
        if N:
            entry = kt.fn.entry_basic_block
            hb = ir.IRBuilder(entry)
            hb.position_at_start(entry)
            buf = hb.alloca(vt, size=I64(TI * TJ // N))
            buf.align = 64

        def scalar_tile(ib, ob, i0, i1, j0, j1):
            def row(i):
                s0 = b.add(ib, i)
                d0 = b.add(ob, b.mul(i, OSq))
                kt.loop(j0, j1, lambda j: _st(kt, out, b.add(d0, j), _ld(kt, x, b.add(s0, b.mul(j, Sl)))))
            kt.loop(i0, i1, row)

        def full_tile(ib, ob, i0, j0):
            # result rows i0..i0+TI, columns j0..j0+TJ; source rows j0.., columns i0..
            sbase = b.add(ib, b.add(i0, b.mul(j0, Sl)))
            for jb in range(0, TJ, N):
                for ibk in range(0, TI, N):
                    rows = [b.load(b.gep(src, [b.add(sbase, b.add(I64(ibk), b.mul(I64(jb + r), Sl)))],
                                         source_etype=et, inbounds=True), typ=vt, align=es)
                            for r in range(N)]
                    cols = _transpose_in_registers(b, rows, N)
                    for c in range(N):
                        at = b.gep(buf, [I64(((ibk + c) * TJ + jb) // N)], source_etype=vt, inbounds=True)
                        b.store(cols[c], at, align=es)
            obase = b.add(ob, b.add(b.mul(i0, OSq), j0))
            for c in range(TI):
                at = b.gep(buf, [I64(c * TJ // N)], source_etype=vt, inbounds=True)
                _memcpy(kt, b.gep(dst, [b.add(obase, b.mul(I64(c), OSq))], source_etype=et, inbounds=True),
                        at, I64(TJ * es))

        def micro(ib, ob, i0, j0):
            # an N x N block straight to the result (strips shorter than a tile)
            sbase = b.add(ib, b.add(i0, b.mul(j0, Sl)))
            rows = [b.load(b.gep(src, [b.add(sbase, b.mul(I64(r), Sl))], source_etype=et, inbounds=True),
                           typ=vt, align=es) for r in range(N)]
            cols = _transpose_in_registers(b, rows, N)
            obase = b.add(ob, b.add(b.mul(i0, OSq), j0))
            for c in range(N):
                b.store(cols[c], b.gep(dst, [b.add(obase, b.mul(I64(c), OSq))], source_etype=et, inbounds=True),
                        align=es)

        def short_strip(ib, ob, i_lo, i_hi, j_lo, j_hi):
            i_end = b.add(i_lo, b.mul(b.udiv(b.sub(i_hi, i_lo), I64(N)), I64(N)))
            j_end = b.add(j_lo, b.mul(b.udiv(b.sub(j_hi, j_lo), I64(N)), I64(N)))
            kt.loop(i_lo, i_end, lambda i0: kt.loop(j_lo, j_end, lambda j0: micro(ib, ob, i0, j0), step=I64(N)),
                    step=I64(N))
            scalar_tile(ib, ob, i_lo, i_end, j_end, j_hi)
            scalar_tile(ib, ob, i_end, i_hi, j_lo, j_hi)

        def item(t):
            s = b.urem(t, nst)
            rest = b.udiv(t, nst)
            ch = b.urem(rest, nch)
            bi = b.udiv(rest, nch)
            ib, ob = I64(0), I64(0)
            for a in reversed(batch):
                ia = b.urem(bi, D[a])
                bi = b.udiv(bi, D[a])
                ib = b.add(ib, b.mul(ia, S[a]))
                ob = b.add(ob, b.mul(ia, OS[a]))
            i_lo = b.mul(s, I64(TI))
            i_hi = _min(b, b.add(i_lo, I64(TI)), D[q])
            j_lo = b.mul(ch, I64(C))
            j_hi = _min(b, b.add(j_lo, I64(C)), D[-1])
            if not N:
                scalar_tile(ib, ob, i_lo, i_hi, j_lo, j_hi)
                return
            j_end = b.add(j_lo, b.mul(b.udiv(b.sub(j_hi, j_lo), I64(TJ)), I64(TJ)))
            with b.if_else(b.icmp_signed("==", b.sub(i_hi, i_lo), I64(TI))) as (whole, part):
                with whole:
                    kt.loop(j_lo, j_end, lambda j0: full_tile(ib, ob, i_lo, j0), step=I64(TJ))
                    scalar_tile(ib, ob, i_lo, i_hi, j_end, j_hi)
                with part:
                    short_strip(ib, ob, i_lo, i_hi, j_lo, j_hi)

        kt.loop(lo, hi, item)

    k.parallel_range(items, body, max(1, GRAIN_BYTES // (TI * C * es)))


# --- expand / broadcast_like ----------------------------------------------------------------------
def _broadcast(k, x, out):
    xs, os_ = x.type.shape, out.type.shape
    pad = len(os_) - len(xs)
    axes, kinds = [], []
    run = []                                  # x's dims after the current one (for its stride)
    for a in range(len(os_) - 1, -1, -1):
        s = a - pad
        od = os_[a]
        if s < 0 or xs[s] == 1:
            kind = "b"
        elif _static(xs[s]) or xs[s] == od:
            kind = "c"
        else:
            kind = "r"                         # a symbolic dim: 1 (broadcast) or not, at run time
        if od == 1:
            if s >= 0:
                run.append(s)
            continue
        inner = list(run)

        def stride(kt, s=s, inner=inner, kind=kind):
            if kind == "b":
                return I64(0)
            st = _prod(kt, [kt.dim(x, i) for i in inner])
            if kind == "c":
                return st
            return kt.b.select(kt.b.icmp_signed("==", kt.dim(x, s), I64(1)), I64(0), st)
        known = 0 if kind == "b" else (1 if kind == "c" and not inner else None)
        if kind == "c" and inner and all(_static(xs[i]) for i in inner):
            known = int(np.prod([xs[i] for i in inner]))
        axes.append(Ax(lambda kt, a=a: kt.dim(out, a), stride, known))
        kinds.append(kind)
        if s >= 0:
            run.append(s)
    axes.reverse()
    kinds.reverse()
    joins = [kinds[a] == kinds[a + 1] and kinds[a] in "bc" for a in range(len(kinds) - 1)]
    strided_copy(k, out, x, merge_axes(axes, joins))


@emitter("nn.expand", "nn.broadcast_like")
def emit_broadcast(k, op):
    _broadcast(k, op.operands[0], op.results[0])


# --- slice -------------------------------------------------------------------------------------------
def _slice_start(kt, d, start, step):
    """The first source index along an axis of runtime size d (as nn.slice's reference)."""
    b = kt.b
    s = b.add(I64(start), d) if start < 0 else I64(start)
    hi = d if step > 0 else b.sub(d, I64(1))
    return _max(b, _min(b, s, hi), I64(0))


@emitter("nn.slice")
def emit_slice(k, op):
    x, out = op.operands[0], op.results[0]
    rank = x.type.rank
    a_ = op.attrs
    spec = _slice_spec(rank, a_["starts"], a_["ends"], a_["axes"], a_["steps"])
    xst = _row_major([lambda kt, a=a: kt.dim(x, a) for a in range(rank)])

    def offset(kt):
        o = I64(0)
        for a, (s, e, st) in spec.items():
            o = kt.add(o, kt.b.mul(_slice_start(kt, kt.dim(x, a), s, st), xst[a](kt)))
        return o

    axes, keep = [], []
    for a in range(rank):
        step = spec[a][2] if a in spec else 1
        if out.type.shape[a] == 1:
            continue
        known = step if a == rank - 1 else None
        if a < rank - 1 and all(_static(d) for d in x.type.shape[a + 1:]):
            known = step * int(np.prod(x.type.shape[a + 1:]))
        axes.append(Ax(lambda kt, a=a: kt.dim(out, a),
                       lambda kt, a=a, step=step: kt.mul(I64(step), xst[a](kt)), known))
        keep.append(a)
    # axis a joins the next kept one when every axis after a up to it is whole (untouched) or
    # a dropped size-1 axis, and a itself steps by 1
    joins = []
    for i in range(len(keep) - 1):
        a, c = keep[i], keep[i + 1]
        ok = (spec.get(a, (0, 0, 1))[2] == 1 and c not in spec
              and all(x.type.shape[m] == 1 for m in range(a + 1, c)))
        joins.append(ok)
    strided_copy(k, out, x, merge_axes(axes, joins), offset)


# --- tile ---------------------------------------------------------------------------------------------
@emitter("nn.tile")
def emit_tile(k, op):
    """The result, seen as [r0, d0, r1, d1, ...], is a strided copy with stride 0 on the repeats."""
    x, out = op.operands[0], op.results[0]
    reps = op.attrs["repeats"]
    rank = x.type.rank
    xst = _row_major([lambda kt, a=a: kt.dim(x, a) for a in range(rank)])
    axes, kinds = [], []
    for a in range(rank):
        if reps[a] != 1:
            axes.append(Ax(lambda kt, r=reps[a]: I64(r), lambda kt: I64(0), 0))
            kinds.append("r")
        if x.type.shape[a] != 1:
            known = 1 if a == rank - 1 else None
            axes.append(Ax(lambda kt, a=a: kt.dim(x, a), xst[a], known))
            kinds.append("d")
    joins = [kinds[i] == kinds[i + 1] for i in range(len(kinds) - 1)]
    strided_copy(k, out, x, merge_axes(axes, joins))


# --- concat / split ------------------------------------------------------------------------------------
def _pieces(k, op, whole, parts, axis, part_size):
    """Concat (parts -> whole) or split (whole -> parts) along `axis`: whole is [outer, T, inner],
    part i is [outer, size_i, inner] at offset sum(size_<i) along axis. The flat positions of all
    parts, one after another, are split over the tasks."""
    a = axis
    into_whole = whole is op.results[0]

    def geometry(kt):
        sh = kt.shape(whole)
        outer, inner = _prod(kt, sh[:a]), _prod(kt, sh[a + 1:])
        widths = [kt.mul(part_size(kt, i), inner) for i in range(len(parts))]
        return outer, kt.mul(sh[a], inner), widths

    def total(kt):
        outer, _, widths = geometry(kt)
        return kt.mul(outer, _prod_sum(kt, widths))

    def body(kt, lo, hi):
        outer, rowlen, widths = geometry(kt)
        b = kt.b
        base, off = I64(0), I64(0)
        for i, p in enumerate(parts):
            n_i = kt.mul(outer, widths[i])
            l = _max(b, b.sub(lo, base), I64(0))
            h = _min(b, b.sub(hi, base), n_i)

            def run(p=p, w=widths[i], off=off, l=l, h=h):
                es = I64(_es(p))

                def row(pos, c0, c1, bases, idx):
                    at_whole = _at(kt, whole, b.add(b.add(bases[0], off), c0))
                    at_part = _at(kt, p, pos)
                    nb = b.mul(b.sub(c1, c0), es)
                    if into_whole:
                        _memcpy(kt, at_whole, at_part, nb)
                    else:
                        _memcpy(kt, at_part, at_whole, nb)
                walk_rows(kt, l, h, [outer, w], [[rowlen]], row)
            _if_nonempty(kt, l, h, run)
            base = kt.add(base, n_i)
            off = kt.add(off, widths[i])

    k.parallel_range(total, body, _grain(whole))


def _prod_sum(kt, vals):
    s = I64(0)
    for v in vals:
        s = kt.add(s, v)
    return s


def _norm(axis, rank):
    return axis % rank


@emitter("nn.concat")
def emit_concat(k, op):
    out = op.results[0]
    a = _norm(op.attrs["axis"], out.type.rank)
    xs = list(op.operands)
    _pieces(k, op, out, xs, a, lambda kt, i: kt.dim(xs[i], a))


@emitter("nn.split")
def emit_split(k, op):
    x = op.operands[0]
    a = _norm(op.attrs["axis"], x.type.rank)
    sizes = op.attrs["sizes"]
    if _static(x.type.shape[a]):
        _pieces(k, op, x, list(op.results), a, lambda kt, i: I64(sizes[i]))
        return
    # a symbolic axis must add up to the sizes at run time (the reference raises otherwise)
    with k.b.if_else(k.b.icmp_signed("!=", k.dim(x, a), I64(sum(sizes)))) as (bad, ok):
        with bad:
            k.fail()
        with ok:
            _pieces(k, op, x, list(op.results), a, lambda kt, i: I64(sizes[i]))


@emitter("nn.split_like")
def emit_split_like(k, op):
    x = op.operands[0]
    a = _norm(op.attrs["axis"], x.type.rank)
    ys = list(op.results)
    # the pieces must tile x's axis exactly (the shape rule checks it; stay in bounds regardless)
    b = k.b
    tot = I64(0)
    for y in ys:
        tot = k.add(tot, k.dim(y, a))
    bad = b.icmp_signed("!=", tot, k.dim(x, a))
    for y in ys:
        for ax in range(x.type.rank):
            if ax != a:
                bad = b.or_(bad, b.icmp_signed("!=", k.dim(y, ax), k.dim(x, ax)))
    with b.if_else(bad) as (fail, ok):
        with fail:
            k.fail()
        with ok:
            _pieces(k, op, x, ys, a, lambda kt, i: kt.dim(ys[i], a))


# --- gather ----------------------------------------------------------------------------------------------
def _index(kt, idx, j, n):
    """indices[j] as i64, negative ones counted from the end (validated before)."""
    b = kt.b
    i = kt.load(idx, j)
    if idx.type.dtype is not dt.i64:
        i = b.sext(i, I64)
    return b.select(b.icmp_signed("<", i, I64(0)), b.add(i, n), i)


def _bad_index(kt, idx, j, n):
    b = kt.b
    i = kt.load(idx, j)
    if idx.type.dtype is not dt.i64:
        i = b.sext(i, I64)
    return b.or_(b.icmp_signed("<", i, b.neg(n)), b.icmp_signed(">=", i, n))


def _any_bad(k, idx, count, n):
    """Whether any of the first `count` indices is outside [-n, n) (a vectorizable OR-reduction)."""
    acc = _var(k, I8, I8(0))
    k.loop(I64(0), count, lambda j: k.b.store(
        k.b.or_(k.b.load(acc, typ=I8), k.b.zext(_bad_index(k, idx, j, n), I8)), acc))
    return k.b.icmp_unsigned("!=", k.b.load(acc, typ=I8), I8(0))


@emitter("nn.gather")
def emit_gather(k, op):
    """out[o, j, :] = x[o, indices[j], :] with x seen as [outer, n, inner]: rows of `inner`
    elements copied with memcpy (the embedding lookup is outer = 1: whole table rows)."""
    x, idx = op.operands
    out = op.results[0]
    a = _norm(op.attrs["axis"], x.type.rank)
    es = I64(_es(x))

    def geometry(kt):
        sh = kt.shape(x)
        return _prod(kt, sh[:a]), sh[a], _prod(kt, sh[a + 1:]), kt.numel(idx)

    _, n, _, m = geometry(k)
    inner_static = x.type.shape[a + 1:]
    inner_known = int(np.prod(inner_static)) if all(_static(d) for d in inner_static) else None

    def body(kt, lo, hi):
        outer, n, inner, m = geometry(kt)
        b = kt.b

        def rows():
            def row(pos, c0, c1, bases, ix):
                src = b.add(b.add(bases[0], b.mul(_index(kt, idx, ix[1], n), inner)), c0)
                _memcpy(kt, _at(kt, out, pos), _at(kt, x, src), b.mul(b.sub(c1, c0), es))
            walk_rows(kt, lo, hi, [outer, m, inner], [[kt.mul(n, inner), I64(0)]], row)

        def elements():
            def row(pos, c0, c1, bases, ix):
                def one(j):
                    v = _ld(kt, x, b.add(bases[0], _index(kt, idx, j, n)))
                    _st(kt, out, b.add(pos, b.sub(j, c0)), v)
                kt.loop(c0, c1, one)
            walk_rows(kt, lo, hi, [outer, m], [[n]], row)

        def run():
            if inner_known == 1:
                elements()
            elif inner_known is not None:
                rows()
            else:
                with b.if_else(b.icmp_signed("==", inner, I64(1))) as (one, many):
                    with one:
                        elements()
                    with many:
                        rows()
        _if_nonempty(kt, lo, hi, run)

    # every index is checked (as the reference does, even when the result is empty)
    with k.b.if_else(_any_bad(k, idx, m, n)) as (bad, ok):
        with bad:
            k.fail()
        with ok:
            k.parallel_range(lambda kk: kk.numel(out), body, _grain(x))


@emitter("nn.gather_elements")
def emit_gather_elements(k, op):
    """out[p] = x[p with p[axis] = indices[p]]: a walk over the indices' rows; bad indices read
    element 0 of the axis instead (in bounds) and make the kernel fail."""
    x, idx = op.operands
    out = op.results[0]
    rank = x.type.rank
    a = _norm(op.attrs["axis"], rank)
    xst = _row_major([lambda kt, i=i: kt.dim(x, i) for i in range(rank)])
    b = k.b
    # indices must fit x in every other dim (the shape rule checks; stay in bounds regardless),
    # and an empty axis has no valid index at all
    bad = b.and_(b.icmp_signed("==", k.dim(x, a), I64(0)), b.icmp_signed(">", k.numel(idx), I64(0)))
    for i in range(rank):
        if i != a:
            bad = b.or_(bad, b.icmp_signed(">", k.dim(idx, i), k.dim(x, i)))

    def body(kt, lo, hi):
        def run():
            bb = kt.b
            n = kt.dim(x, a)
            st_a = xst[a](kt)
            dims = kt.shape(idx)
            strides = [I64(0) if i == a else xst[i](kt) for i in range(rank - 1)]
            seen = _var(kt, I8, I8(0))

            def row(pos, c0, c1, bases, ix):
                def one(c):
                    p = bb.add(pos, bb.sub(c, c0))
                    i = kt.load(idx, p)
                    if idx.type.dtype is not dt.i64:
                        i = bb.sext(i, I64)
                    wrong = bb.or_(bb.icmp_signed("<", i, bb.neg(n)), bb.icmp_signed(">=", i, n))
                    bb.store(bb.or_(bb.load(seen, typ=I8), bb.zext(wrong, I8)), seen)
                    w = bb.select(bb.icmp_signed("<", i, I64(0)), bb.add(i, n), i)
                    w = bb.select(wrong, I64(0), w)
                    src = bb.add(bases[0], bb.mul(w, st_a))
                    if a != rank - 1:
                        src = bb.add(src, c)
                    _st(kt, out, p, _ld(kt, x, src))
                kt.loop(c0, c1, one)
            walk_rows(kt, lo, hi, dims, [strides], row)
            with bb.if_then(bb.icmp_unsigned("!=", bb.load(seen, typ=I8), I8(0))):
                kt.fail()
        _if_nonempty(kt, lo, hi, run)

    with b.if_else(bad) as (no, ok):
        with no:
            k.fail()
        with ok:
            k.parallel_range(lambda kk: kk.numel(out), body, _grain(x))


# --- pad ---------------------------------------------------------------------------------------------------
def _pad_map(kt, t, m, klo, mode):
    """Source index (and whether it is one: constant mode) of padded position t - plo, for an
    axis keeping m source elements from klo on (the formulas of numpy's pad modes)."""
    b = kt.b
    if mode == "constant":
        ok = b.and_(b.icmp_signed(">=", t, I64(0)), b.icmp_signed("<", t, m))
        return b.add(I64(klo), t), ok
    if mode == "edge":
        return b.add(I64(klo), _max(b, _min(b, t, b.sub(m, I64(1))), I64(0))), None
    # reflect: period 2(m-1), mirrored in its second half; m == 1 repeats the element
    p = _max(b, b.mul(b.sub(m, I64(1)), I64(2)), I64(1))
    u = b.urem(_max(b, t, b.neg(t)), p)
    u = b.select(b.icmp_signed(">=", u, m), b.sub(p, u), u)
    u = b.select(b.icmp_signed("==", m, I64(1)), I64(0), u)
    return b.add(I64(klo), u), None


@emitter("nn.pad")
def emit_pad(k, op):
    """Row by row over the result: outer positions map to a source row (or to the constant);
    each row is [left pad | memcpy of the kept source elements | right pad]."""
    x, out = op.operands[0], op.results[0]
    rank = x.type.rank
    mode = op.attrs["mode"]
    pairs = _pad_pairs(rank, op.attrs["pads"])
    fill = np.asarray(op.attrs["value"]).astype(x.type.dtype.np)
    fill = ir.Constant(_et(x), int(fill.reshape(1).view(f"u{_es(x)}")[0]))
    xst = _row_major([lambda kt, i=i: kt.dim(x, i) for i in range(rank)])

    def kept(kt, i):
        lo, hi = pairs[i]
        return kt.b.sub(kt.dim(x, i), I64(max(-lo, 0) + max(-hi, 0)))

    def body(kt, lo_, hi_):
        def run():
            b = kt.b
            dims = kt.shape(out)
            ms = [kept(kt, i) for i in range(rank)]
            strides = [xst[i](kt) for i in range(rank)]
            lo_l = pairs[-1][0]
            klo, plo = max(-lo_l, 0), max(lo_l, 0)
            m = ms[-1]

            def row(pos, c0, c1, bases, ix):
                src, valid = I64(0), I1(1)
                for i in range(rank - 1):
                    s, ok = _pad_map(kt, b.sub(ix[i], I64(max(pairs[i][0], 0))), ms[i], max(-pairs[i][0], 0), mode)
                    src = b.add(src, b.mul(s, strides[i]))
                    if ok is not None:
                        valid = b.and_(valid, ok)

                def mapped(j):
                    s, ok = _pad_map(kt, b.sub(j, I64(plo)), m, klo, mode)
                    dst = b.add(pos, b.sub(j, c0))
                    if ok is None:
                        _st(kt, out, dst, _ld(kt, x, b.add(src, s)))
                    else:
                        _st(kt, out, dst, fill)      # outside the kept part: the constant

                def copy_row():
                    mid0 = _max(b, c0, I64(plo))
                    mid1 = _min(b, c1, b.add(I64(plo), m))
                    kt.loop(c0, _min(b, c1, I64(plo)), mapped)
                    with b.if_then(b.icmp_signed("<", mid0, mid1)):
                        _memcpy(kt, _at(kt, out, b.add(pos, b.sub(mid0, c0))),
                                _at(kt, x, b.add(src, b.add(I64(klo), b.sub(mid0, I64(plo))))),
                                b.mul(b.sub(mid1, mid0), I64(_es(x))))
                    kt.loop(_max(b, c0, b.add(I64(plo), m)), c1, mapped)

                if mode == "constant":
                    with b.if_else(valid) as (yes, no):
                        with yes:
                            copy_row()
                        with no:
                            kt.loop(c0, c1, lambda j: _st(kt, out, b.add(pos, b.sub(j, c0)), fill))
                else:
                    copy_row()
            walk_rows(kt, lo_, hi_, dims, [], row)
        _if_nonempty(kt, lo_, hi_, run)

    k.parallel_range(lambda kk: kk.numel(out), body, _grain(x))


# --- arange --------------------------------------------------------------------------------------------
@emitter("nn.arange")
def emit_arange(k, op):
    out = op.results[0]
    d = out.type.dtype
    start, delta = op.attrs["start"], op.attrs["delta"]
    if d in (dt.f16, dt.bf16):
        # f64 -> f16/bf16 must round once; the values are known now, so they are a table
        bits = np.asarray(op.opdef.ref([], op.attrs)[0]).view(np.uint16)
        n = len(bits)
        if n == 0:
            return
        ty = ir.ArrayType(ir.IntType(16), n)
        g = ir.GlobalVariable(k.mod, ty, k.cg.fresh("arange_table"))
        g.linkage = "internal"
        g.global_constant = True
        g.initializer = ir.Constant(ty, [int(v) for v in bits])
        _memcpy(k, k.ptr(out), g, I64(2 * n))
        return

    def body(kt, lo, hi):
        b = kt.b

        def one(i):
            if d.is_int:
                v = b.add(I64(int(start)), b.mul(i, I64(int(delta))))
                v = v if d.bits == 64 else b.trunc(v, _et(out))
            else:
                v = b.fadd(F64(float(start)), b.fmul(b.sitofp(i, F64), F64(float(delta))))
                if d is dt.f32:
                    v = b.bitcast(b.fptrunc(v, F32), I32)
                else:
                    v = b.bitcast(v, I64)
            _st(kt, out, i, v)
        kt.loop(lo, hi, one)

    k.parallel_range(lambda kk: kk.numel(out), body, _grain(out))


# --- which instances run natively -------------------------------------------------------------------
def _supports(op) -> bool:
    if not tensor_types_supported(op):
        return False
    if op.opdef.name == "nn.expand" and not all(type(d) is int for d in op.attrs["shape"]):
        return False          # plan.py sizes results from unbound attributes: names stay unknown
    if op.opdef.name == "nn.pad" and op.operands[0].type.rank == 0:
        return False          # the reference (np.pad) rejects 0-d tensors; let it say so
    if op.opdef.name == "nn.arange":
        t = op.results[0].type
        if not t.is_static:
            return False
        if t.dtype in (dt.f16, dt.bf16) and t.numel > ARANGE_TABLE_MAX:
            return False
        if not (t.dtype.is_int or t.dtype in (dt.f32, dt.f64, dt.f16, dt.bf16)):
            return False
    return True


for _fn in (emit_transpose, emit_broadcast, emit_slice, emit_tile, emit_concat, emit_split,
            emit_split_like, emit_gather, emit_gather_elements, emit_pad, emit_arange):
    _fn.supports = _supports
