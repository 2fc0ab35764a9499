"""Convolution and pooling: nn.conv, nn.conv_transpose, nn.max_pool, nn.avg_pool over 1, 2 or
3 spatial dims (channels first), f32 and f64.

Every op is computed one output row at a time: a row is y[n, o, od, oh, :] (1-d and 2-d ops
are taken as 3-d with leading spatial dims of size 1, stride 1, no pads). Rows are split across
threads (parallel_range). For a row, each (input channel, kd, kh) tap row of x that lies inside
x is swept once per kw with a plain loop over the output positions whose input is inside x:

    y[ow] += w[o, c, kd, kh, kw] * x[n, g*C/groups + c, id, ih, ow*stride + kw*dilation - pad]

so padding costs nothing (its taps are skipped by the loop bounds) and the innermost loop has no
branches and no calls: LLVM's loop vectorizer widens it (contiguous loads for stride 1, strided
ones otherwise), with a fused multiply-add where the target has one. The output rows stay in
L1 while they accumulate. nn.conv does OB (4 or 2 when they divide the channels per group)
output channels per row step, so each x element loaded feeds OB multiply-adds (1.5x faster
than one channel at a time on a 3x3 64-channel layer). Direct convolution, no im2col buffer;
not a register-tiled microkernel (see benchmarks/conv_bench.py for where that leaves it).

Accuracy: the interpreter accumulates in f64 and rounds once; these kernels accumulate f32 in
f32 in their own order (tap by tap), so a conv differs by the usual dot-product bound
~ (taps) * eps * sum |x * w| (see tests/test_llvm_conv.py). max_pool is exact; avg_pool sums in
the compute type and divides once.

Pooling follows the reference exactly: max_pool's padding never wins (a window of padding only
gives -inf) and NaN propagates; avg_pool divides by the taps inside x, or with
count_include_pad by the taps inside x plus the explicit pads (never the ceil_mode overhang),
at least 1. ceil_mode windows are just more rows/columns: their taps outside x are skipped.

f16/bf16 (which would need an f32 row of accumulators) are refused by supports() and run in
the interpreter. Shapes are validated by the ops' shape rules before the kernels run, so the
kernels trust them.
"""
from __future__ import annotations

import llvmlite.ir as ir

from ckir import dtypes as dt

from ..codegen import F32, F64, I64, emitter, tensor_types_supported

FLOATS = (dt.f32, dt.f64)
ROW_WORK = 8192      # multiply-adds per task at least (tasks are cheap, but not free)


def _ft(d):
    return F64 if d is dt.f64 else F32


def _geom(op, n):
    """(strides, pad begins, pad ends, dilations) as 3 python ints each, leading axes filled."""
    a = op.attrs
    s = list(a["strides"]) if a.get("strides") is not None else [1] * n
    p = list(a["pads"]) if a.get("pads") is not None else [0] * (2 * n)
    d = list(a["dilations"]) if a.get("dilations") is not None else [1] * n
    fill = 3 - n
    return [1] * fill + s, [0] * fill + p[:n], [0] * fill + p[n:], [1] * fill + d


def _spatial(k, v, n):
    """The 3 spatial dims of v (leading 1s for lower ranks) as LLVM values."""
    return [I64(1)] * (3 - n) + [k.dim(v, 2 + i) for i in range(n)]


def _floordiv(b, a, d: int):
    """floor(a / d) for a static d > 0 and any sign of a."""
    if d == 1:
        return a
    q = b.sdiv(a, I64(d))
    r = b.srem(a, I64(d))
    return b.sub(q, b.zext(b.icmp_signed("<", r, I64(0)), I64))


def _smax(b, a, c):
    return b.select(b.icmp_signed(">", a, c), a, c)


def _smin(b, a, c):
    return b.select(b.icmp_signed("<", a, c), a, c)


def _ow_range(b, kw, s, pb, d, W, OW):
    """[lo, hi): the output positions ow whose tap kw reads inside x: 0 <= ow*s + kw*d - pb < W."""
    start = b.sub(b.mul(kw, I64(d)), I64(pb))               # input index of ow = 0
    lo = _floordiv(b, b.sub(I64(s - 1), start), s)          # ceil(-start / s)
    lo = _smin(b, _smax(b, lo, I64(0)), OW)
    hi = _floordiv(b, b.add(b.sub(W, start), I64(s - 1)), s)  # ceil((W - start) / s)
    hi = _smax(b, _smin(b, hi, OW), lo)
    return lo, hi


def _count(b, p, s, pb, d, K, lo_bound, hi_bound):
    """How many taps t in [0, K) of window p land in [lo_bound, hi_bound) (padded coordinates
    shifted so that x starts at 0)."""
    a = b.sub(b.mul(p, I64(s)), I64(pb))                     # window start
    tmin = _floordiv(b, b.add(b.sub(lo_bound, a), I64(d - 1)), d)
    tmin = _smax(b, tmin, I64(0))
    tmax = _floordiv(b, b.sub(b.sub(hi_bound, I64(1)), a), d)
    tmax = _smin(b, tmax, b.sub(K, I64(1)))
    return _smax(b, b.add(b.sub(tmax, tmin), I64(1)), I64(0))


def _grain(work_per_row) -> int:
    return max(1, ROW_WORK // max(1, work_per_row)) if isinstance(work_per_row, int) else 1


def _static(v, axes):
    """Product of the static dims of v over axes, or None if one is symbolic."""
    out = 1
    for a in axes:
        d = v.type.shape[a]
        if type(d) is not int:
            return None
        out *= d
    return out


def _rows(k, y, n):
    """Number of output rows (everything but the last spatial axis) as an LLVM value."""
    r = k.mul(k.dim(y, 0), k.dim(y, 1))
    for d in _spatial(k, y, n)[:2]:
        r = k.mul(r, d)
    return r


def _split_row(b, row, C, OD, OH):
    """row -> (n, c, od, oh) for rows of y[N, C, OD, OH, :]."""
    oh = b.urem(row, OH)
    r = b.udiv(row, OH)
    od = b.urem(r, OD)
    r = b.udiv(r, OD)
    return b.udiv(r, C), b.urem(r, C), od, oh


def _tap_rows(k, od, oh, s, pb, d, D, H, KD, KH, body):
    """body(kd, kh, id, ih) for the kernel taps along d and h whose input row lies inside x."""
    b = k.b

    def over_kd(kd):
        id_ = b.add(b.sub(b.mul(od, I64(s[0])), I64(pb[0])), b.mul(kd, I64(d[0])))
        with b.if_then(b.icmp_unsigned("<", id_, D)):
            def over_kh(kh):
                ih = b.add(b.sub(b.mul(oh, I64(s[1])), I64(pb[1])), b.mul(kh, I64(d[1])))
                with b.if_then(b.icmp_unsigned("<", ih, H)):
                    body(kd, kh, id_, ih)
            k.loop(I64(0), KH, over_kh)
    k.loop(I64(0), KD, over_kd)


def _fmuladd(k, t):
    name = "llvm.fmuladd.f64" if t is F64 else "llvm.fmuladd.f32"
    return k.cg.declare(name, ir.FunctionType(t, [t, t, t]))


def _float_supports(op) -> bool:
    if not tensor_types_supported(op):
        return False
    vals = list(op.operands) + list(op.results)
    if any(v.type.dtype not in FLOATS for v in vals):
        return False
    return 1 <= op.operands[0].type.rank - 2 <= 3


# --- nn.conv -------------------------------------------------------------------------------------
@emitter("nn.conv")
def emit_conv(k, op):
    x, w = op.operands[:2]
    bias = op.operands[2] if len(op.operands) == 3 else None
    y = op.results[0]
    n = x.type.rank - 2
    s, pb, _, d = _geom(op, n)
    groups = int(op.attrs.get("groups") or 1)
    t = _ft(x.type.dtype)
    # OB output channels of one group per row: each x element loaded feeds OB rows of y
    og_static = w.type.shape[0] // groups if type(w.type.shape[0]) is int else None
    OB = next((c for c in (4, 2) if og_static and og_static % c == 0), 1)
    per_row = _static(w, range(1, w.type.rank))
    ow_static = y.type.shape[-1]
    grain = _grain(OB * per_row * ow_static if per_row is not None and type(ow_static) is int else None)

    def nrows(kk):
        r = _rows(kk, y, n)
        return kk.b.udiv(r, I64(OB)) if OB > 1 else r

    def task(kt, lo, hi):
        b = kt.b
        C = kt.dim(x, 1)
        O = kt.dim(y, 1)
        Cg = kt.dim(w, 1)
        Og = b.udiv(O, I64(groups)) if groups > 1 else O
        D, H, W = _spatial(kt, x, n)
        OD, OH, OW = _spatial(kt, y, n)
        KD, KH, KW = _spatial(kt, w, n)
        DHW = kt.mul(kt.mul(D, H), W)
        KK = kt.mul(kt.mul(KD, KH), KW)
        ODHW = kt.mul(kt.mul(OD, OH), OW)
        fma = _fmuladd(kt, t)
        xp, wp, yp = kt.ptr(x), kt.ptr(w), kt.ptr(y)
        OBLK = b.udiv(O, I64(OB)) if OB > 1 else O

        def row_body(row):
            nb, ob, od, oh = _split_row(b, row, OBLK, OD, OH)
            o0 = b.mul(ob, I64(OB)) if OB > 1 else ob
            g = b.udiv(o0, Og) if groups > 1 else I64(0)
            # y rows of channels o0 .. o0+OB-1 at (nb, od, oh)
            y0 = b.mul(b.add(b.mul(b.add(b.mul(b.add(b.mul(nb, O), o0), OD), od), OH), oh), OW)
            yoffs = [b.add(y0, b.mul(I64(j), ODHW)) for j in range(OB)]
            for j in range(OB):
                init = kt.load(bias, b.add(o0, I64(j))) if bias is not None else ir.Constant(t, 0.0)
                kt.loop(I64(0), OW, lambda ow, j=j, init=init: kt.store(y, b.add(yoffs[j], ow), init, yp))

            def over_c(c):
                ci = b.add(b.mul(g, Cg), c)
                xchan = b.mul(b.add(b.mul(nb, C), ci), DHW)
                wbase = b.mul(b.add(b.mul(o0, Cg), c), KK)
                wstep = kt.mul(Cg, KK)                    # from channel o to o + 1

                def tap_row(kd, kh, id_, ih):
                    xrow = b.add(xchan, b.mul(b.add(b.mul(id_, H), ih), W))
                    wrow = b.add(wbase, b.mul(b.add(b.mul(kd, KH), kh), KW))

                    def over_kw(kw):
                        wvs = [kt.load(w, b.add(b.add(wrow, kw), b.mul(I64(j), wstep)), wp) for j in range(OB)]
                        lo_, hi_ = _ow_range(b, kw, s[2], pb[2], d[2], W, OW)
                        xoff = b.add(xrow, b.sub(b.mul(kw, I64(d[2])), I64(pb[2])))

                        def inner(ow):
                            xv = kt.load(x, b.add(xoff, b.mul(ow, I64(s[2])) if s[2] != 1 else ow), xp)
                            for j in range(OB):
                                yi = b.add(yoffs[j], ow)
                                acc = kt.load(y, yi, yp)
                                kt.store(y, yi, b.call(fma, [wvs[j], xv, acc]), yp)
                        kt.loop(lo_, hi_, inner)
                    kt.loop(I64(0), KW, over_kw)
                _tap_rows(kt, od, oh, s, pb, d, D, H, KD, KH, tap_row)
            kt.loop(I64(0), Cg, over_c)
        kt.loop(lo, hi, row_body)

    k.parallel_range(nrows, task, grain=grain)


emit_conv.supports = _float_supports


# --- nn.conv_transpose ------------------------------------------------------------------------------
@emitter("nn.conv_transpose")
def emit_conv_transpose(k, op):
    """Output rows again (no two tasks write one element): y row (n, oc, od, oh) gathers, for
    each input channel of its group and each tap (kd, kh) whose input row id = (od + pad - kd*d)
    / stride is whole and inside x, and each kw, the input positions i that land in the row:
    y[i*stride + kw*d - pad] += w[c, o, kd, kh, kw] * x[n, c, id, ih, i]."""
    x, w = op.operands[:2]
    bias = op.operands[2] if len(op.operands) == 3 else None
    y = op.results[0]
    n = x.type.rank - 2
    s, pb, _, d = _geom(op, n)
    groups = int(op.attrs.get("groups") or 1)
    t = _ft(x.type.dtype)
    per_row = _static(w, range(2, w.type.rank))
    c_static = x.type.shape[1]
    w_static = x.type.shape[-1]
    grain = _grain(per_row * c_static * w_static // groups
                   if per_row is not None and type(c_static) is int and type(w_static) is int else None)

    def task(kt, lo, hi):
        b = kt.b
        C = kt.dim(x, 1)
        O = kt.dim(y, 1)
        Og = kt.dim(w, 1)
        Cg = b.udiv(C, I64(groups)) if groups > 1 else C
        D, H, W = _spatial(kt, x, n)
        OD, OH, OW = _spatial(kt, y, n)
        KD, KH, KW = _spatial(kt, w, n)
        DHW = kt.mul(kt.mul(D, H), W)
        KK = kt.mul(kt.mul(KD, KH), KW)
        fma = _fmuladd(kt, t)
        xp, wp, yp = kt.ptr(x), kt.ptr(w), kt.ptr(y)

        def in_row(o_, k_, i):
            """(valid, input index) of output position o_ through tap k_ on axis i."""
            num = b.sub(b.add(o_, I64(pb[i])), b.mul(k_, I64(d[i])))
            q = b.sdiv(num, I64(s[i]))
            ok = b.icmp_signed(">=", num, I64(0))
            if s[i] != 1:
                ok = b.and_(ok, b.icmp_signed("==", b.srem(num, I64(s[i])), I64(0)))
            return ok, q

        def row_body(row):
            nb, oc, od, oh = _split_row(b, row, O, OD, OH)
            g = b.udiv(oc, Og) if groups > 1 else I64(0)
            o = b.urem(oc, Og) if groups > 1 else oc
            yoff = b.mul(row, OW)
            init = kt.load(bias, oc) if bias is not None else ir.Constant(t, 0.0)
            kt.loop(I64(0), OW, lambda ow: kt.store(y, b.add(yoff, ow), init, yp))

            def over_c(c):
                ci = b.add(b.mul(g, Cg), c)
                xchan = b.mul(b.add(b.mul(nb, C), ci), DHW)
                wbase = b.mul(b.add(b.mul(ci, Og), o), KK)

                def over_kd(kd):
                    okd, id_ = in_row(od, kd, 0)
                    with b.if_then(b.and_(okd, b.icmp_signed("<", id_, D))):
                        def over_kh(kh):
                            okh, ih = in_row(oh, kh, 1)
                            with b.if_then(b.and_(okh, b.icmp_signed("<", ih, H))):
                                xrow = b.add(xchan, b.mul(b.add(b.mul(id_, H), ih), W))
                                wrow = b.add(wbase, b.mul(b.add(b.mul(kd, KH), kh), KW))

                                def over_kw(kw):
                                    wv = kt.load(w, b.add(wrow, kw), wp)
                                    # input positions i with 0 <= i*s + kw*d - pad < OW, i < W
                                    lo_, hi_ = _ow_range(b, kw, s[2], pb[2], d[2], OW, W)
                                    yo = b.add(yoff, b.sub(b.mul(kw, I64(d[2])), I64(pb[2])))

                                    def inner(i):
                                        yi = b.add(yo, b.mul(i, I64(s[2])) if s[2] != 1 else i)
                                        acc = kt.load(y, yi, yp)
                                        kt.store(y, yi, b.call(fma, [wv, kt.load(x, b.add(xrow, i), xp), acc]), yp)
                                    kt.loop(lo_, hi_, inner)
                                kt.loop(I64(0), KW, over_kw)
                        kt.loop(I64(0), KH, over_kh)
                kt.loop(I64(0), KD, over_kd)
            kt.loop(I64(0), Cg, over_c)
        kt.loop(lo, hi, row_body)

    k.parallel_range(lambda kk: _rows(kk, y, n), task, grain=grain)


emit_conv_transpose.supports = _float_supports


# --- pooling -------------------------------------------------------------------------------------
def _emit_pool(k, op, kind):
    x = op.operands[0]
    y = op.results[0]
    n = x.type.rank - 2
    s, pb, pe, d = _geom(op, n)
    kernel = [1] * (3 - n) + list(op.attrs["kernel"])
    include_pad = bool(op.attrs.get("count_include_pad"))
    t = _ft(x.type.dtype)
    ow_static = y.type.shape[-1]
    taps = kernel[0] * kernel[1] * kernel[2]
    grain = _grain(taps * ow_static if type(ow_static) is int else None)

    def task(kt, lo, hi):
        b = kt.b
        C = kt.dim(y, 1)
        D, H, W = _spatial(kt, x, n)
        OD, OH, OW = _spatial(kt, y, n)
        KD, KH, KW = (I64(v) for v in kernel)
        xp, yp = kt.ptr(x), kt.ptr(y)

        def row_body(row):
            nb, c, od, oh = _split_row(b, row, C, OD, OH)
            yoff = b.mul(row, OW)
            xchan = b.mul(b.add(b.mul(nb, C), c), kt.mul(kt.mul(D, H), W))
            init = ir.Constant(t, float("-inf") if kind == "max" else 0.0)
            kt.loop(I64(0), OW, lambda ow: kt.store(y, b.add(yoff, ow), init, yp))

            def tap_row(kd, kh, id_, ih):
                xrow = b.add(xchan, b.mul(b.add(b.mul(id_, H), ih), W))

                def over_kw(kw):
                    lo_, hi_ = _ow_range(b, kw, s[2], pb[2], d[2], W, OW)
                    xoff = b.add(xrow, b.sub(b.mul(kw, I64(d[2])), I64(pb[2])))

                    def inner(ow):
                        yi = b.add(yoff, ow)
                        xi = b.add(xoff, b.mul(ow, I64(s[2])) if s[2] != 1 else ow)
                        acc = kt.load(y, yi, yp)
                        v = kt.load(x, xi, xp)
                        if kind == "max":
                            # NaN propagates: a NaN tap wins, and a NaN already held stays
                            take = b.or_(b.fcmp_ordered(">", v, acc), b.fcmp_unordered("uno", v, v))
                            r = b.select(take, v, acc)
                        else:
                            r = b.fadd(acc, v)
                        kt.store(y, yi, r, yp)
                    kt.loop(lo_, hi_, inner)
                kt.loop(I64(0), KW, over_kw)
            _tap_rows(kt, od, oh, s, pb, d, D, H, KD, KH, tap_row)
            if kind == "avg":
                # divisor: taps inside x (or inside x and the explicit pads), per axis
                def bounds(size, i):
                    return (I64(-pb[i]), b.add(size, I64(pe[i]))) if include_pad else (I64(0), size)
                cd = _count(b, od, s[0], pb[0], d[0], KD, *bounds(D, 0))
                ch = _count(b, oh, s[1], pb[1], d[1], KH, *bounds(H, 1))
                cdh = b.mul(cd, ch)
                wl, wh = bounds(W, 2)

                def divide(ow):
                    cnt = _smax(b, b.mul(cdh, _count(b, ow, s[2], pb[2], d[2], KW, wl, wh)), I64(1))
                    yi = b.add(yoff, ow)
                    kt.store(y, yi, b.fdiv(kt.load(y, yi, yp), b.sitofp(cnt, t)), yp)
                kt.loop(I64(0), OW, divide)
        kt.loop(lo, hi, row_body)

    k.parallel_range(lambda kk: _rows(kk, y, n), task, grain=grain)


@emitter("nn.max_pool")
def emit_max_pool(k, op):
    _emit_pool(k, op, "max")


@emitter("nn.avg_pool")
def emit_avg_pool(k, op):
    _emit_pool(k, op, "avg")


emit_max_pool.supports = _float_supports
emit_avg_pool.supports = _float_supports
