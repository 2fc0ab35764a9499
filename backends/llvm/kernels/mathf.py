"""Math functions for kernels, on compute-type scalars (f32 or f64).

f32 (also what f16/bf16 compute in): branch-free code written in LLVM IR, with no calls, so
that LLVM's loop vectorizer turns an elementwise loop into ymm/zmm/NEON code. Each function is
range reduction by bit manipulation, a polynomial, and selects (not branches) for the special
values. The hot ones (exp, log, tanh, sigmoid, erf, gelu's cdf) compute in f32; the others
compute in f64 internally and round once at the end: f64's 29 spare bits let simple formulas
(log1p(2x/(1-x)) for atanh, ...) stay accurate where they would cancel in f32, at half the
vector width. Every f32 function is within 2 ulp of the f64 reference over the whole float
range (special values, denormals, overflow and underflow included) -- tests/test_llvm_math.py
sweeps it and prints the max error per function.

f64: libm and LLVM intrinsics (accuracy first; those calls are not vectorized).

Polynomial coefficients are Chebyshev fits (mpmath.chebyfit, 200-bit arithmetic) of the
reduced function on the stated interval, or Taylor coefficients where those converge fast.
"""
from __future__ import annotations

import math

import llvmlite.ir as ir

from ..codegen import F32, F64, I32, I64

INF = float("inf")
NAN = float("nan")


# --- helpers ----------------------------------------------------------------------------------------
def _sfx(t):
    return "f32" if t == F32 else "f64"


def _c(t, v):
    return ir.Constant(t, v)


def _int_t(t):
    return I32 if t == F32 else I64


def _intrinsic(s, name, t, n=1):
    return s.cg.declare(f"llvm.{name}.{_sfx(t)}", ir.FunctionType(t, [t] * n))


def _call1(s, name, x):
    return s.b.call(_intrinsic(s, name, x.type), [x])


def _libm(s, base, *xs):
    t = xs[0].type
    name = base + "f" if t == F32 else base
    return s.b.call(s.cg.declare(name, ir.FunctionType(t, [t] * len(xs))), list(xs))


def _fma(s, a, x, c):
    """a * x + c, fused where the target has FMA (llvm.fmuladd), else a multiply and an add."""
    return s.b.call(_intrinsic(s, "fmuladd", a.type, 3), [a, x, c])


def _poly(s, x, coeffs):
    """Horner: coeffs from the highest degree down."""
    acc = _c(x.type, coeffs[0])
    for k in coeffs[1:]:
        acc = _fma(s, acc, x, _c(x.type, k))
    return acc


def _bits(s, x):
    return s.b.bitcast(x, _int_t(x.type))


def _float(s, i):
    return s.b.bitcast(i, F32 if i.type == I32 else F64)


def _abs(s, x):
    return _call1(s, "fabs", x)


def _sel(s, cond, a, c):
    return s.b.select(cond, a, c)


def _clamp(s, x, lo, hi):
    """min(max(x, lo), hi) with NaN passed through (ordered compares are false for NaN)."""
    b, t = s.b, x.type
    x = b.select(b.fcmp_ordered("<", x, _c(t, lo)), _c(t, lo), x)
    return b.select(b.fcmp_ordered(">", x, _c(t, hi)), _c(t, hi), x)


def _signbit_of(s, x):
    """The sign bit of f32 `x` as an i32 mask."""
    return s.b.and_(_bits(s, x), I32(0x80000000))


def _xorsign(s, v, x):
    """f32 `v` with its sign flipped where f32 `x` has its sign bit set (odd functions on |x|;
    keeps -0 -> -0)."""
    return _float(s, s.b.xor(_bits(s, v), _signbit_of(s, x)))


def _is_nan(s, x):
    return s.b.fcmp_unordered("uno", x, x)


def _nan_if(s, cond, v):
    return _sel(s, cond, _c(v.type, NAN), v)


def _f64(s, x):
    return s.b.fpext(x, F64)


def _f32(s, x):
    return s.b.fptrunc(x, F32)


# --- f32 exp ---------------------------------------------------------------------------------------
_LOG2E = 1.4426950408889634
# (e^r - 1 - r) / r^2 on |r| <= ln2/2 (x1.01), error 1.5e-9
_EXP_Q = [0.0001989198131397769, 0.0013934541928270264, 0.008333310024225292, 0.04166645680967788,
          0.16666666682534356, 0.5000000014286223]


def _exp32(s, x, normal_range=False):
    """e^x: x = n ln2 + r, |r| <= ln2/2; e^r by a polynomial; times 2^n built in the exponent
    bits, in two steps so that results down to the smallest denormal round once.
    `normal_range`: the caller guarantees -87 < x < 88 (normal results); then one scaling step
    and a plain 1 + p (~1 ulp instead of ~0.6) do."""
    b = s.b
    if normal_range:
        t = _fma(s, x, F32(_LOG2E), F32(12582912.0))
        n = b.fsub(t, F32(12582912.0))
        ni = b.sub(_bits(s, t), I32(0x4B400000))
        r = _fma(s, n, F32(-0.693359375), x)
        r = _fma(s, n, F32(2.12194440e-4), r)
        y = b.fadd(_fma(s, b.fmul(r, r), _poly(s, r, _EXP_Q), r), F32(1.0))
        return b.fmul(y, _float(s, b.shl(b.add(ni, I32(127)), I32(23))))
    x = _clamp(s, x, -104.0, 89.0)          # beyond: 0 / inf come out of the scaling
    magic = 12582912.0                      # 1.5 * 2^23: adding it rounds to an integer
    t = _fma(s, x, F32(_LOG2E), F32(magic))
    n = b.fsub(t, F32(magic))
    ni = b.sub(_bits(s, t), I32(0x4B400000))
    r1 = _fma(s, n, F32(-0.693359375), x)   # ln2 = 0.693359375 - 2.12194440e-4, hi part exact
    r = _fma(s, n, F32(2.12194440e-4), r1)
    rl = _fma(s, n, F32(2.12194440e-4), b.fsub(r1, r))   # r's rounding error
    # 1 + r + r^2 Q(r) + rl with 1 + r split exactly (Fast2Sum): the only rounding that
    # matters is the last one, so e^x is within ~0.6 ulp (instead of ~1 ulp)
    yh = b.fadd(F32(1.0), r)
    e1 = b.fadd(b.fsub(F32(1.0), yh), r)
    y = b.fadd(yh, b.fadd(e1, _fma(s, b.fmul(r, r), _poly(s, r, _EXP_Q), rl)))
    n1 = b.ashr(ni, I32(1))
    n2 = b.sub(ni, n1)
    s1 = _float(s, b.shl(b.add(n1, I32(127)), I32(23)))
    s2 = _float(s, b.shl(b.add(n2, I32(127)), I32(23)))
    return b.fmul(b.fmul(y, s1), s2)


# --- f32 log (FreeBSD/musl logf, with selects for the special cases) --------------------------------
_LG = [0.66666662693, 0.40000972152, 0.28498786688, 0.24279078841]


def _log32(s, x):
    b = s.b
    ix = _bits(s, x)
    sub = b.icmp_unsigned("<", ix, I32(0x00800000))      # +0 and positive denormals
    xs = _sel(s, sub, b.fmul(x, F32(2.0 ** 25)), x)
    k0 = _sel(s, sub, I32(-25), I32(0))
    ix = b.add(_bits(s, xs), I32(0x3F800000 - 0x3F3504F3))  # mantissa into [sqrt(2)/2, sqrt(2))
    k = b.add(k0, b.sub(b.lshr(ix, I32(23)), I32(0x7F)))
    m = _float(s, b.add(b.and_(ix, I32(0x007FFFFF)), I32(0x3F3504F3)))
    f = b.fsub(m, F32(1.0))
    sv = b.fdiv(f, b.fadd(F32(2.0), f))
    z = b.fmul(sv, sv)
    w = b.fmul(z, z)
    t1 = b.fmul(w, b.fadd(F32(_LG[1]), b.fmul(w, F32(_LG[3]))))
    t2 = b.fmul(z, b.fadd(F32(_LG[0]), b.fmul(w, F32(_LG[2]))))
    rr = b.fadd(t2, t1)
    hfsq = b.fmul(b.fmul(F32(0.5), f), f)
    dk = b.sitofp(k, F32)
    res = b.fadd(b.fmul(sv, b.fadd(hfsq, rr)), b.fmul(dk, F32(9.0580006145e-06)))
    res = b.fadd(b.fadd(b.fsub(res, hfsq), f), b.fmul(dk, F32(6.9313812256e-01)))
    res = _sel(s, b.fcmp_ordered("==", x, F32(INF)), F32(INF), res)
    res = _sel(s, b.fcmp_ordered("==", x, F32(0.0)), F32(-INF), res)
    return _nan_if(s, b.fcmp_unordered("<", x, F32(0.0)), res)     # negative or NaN


# --- f32 tanh, sigmoid ----------------------------------------------------------------------------
# (tanh(x) - x) / x^3 as a polynomial in x^2, |x| <= 0.625, error 1.6e-9
_TANH_P = [0.002292744816178142, -0.008343945515839153, 0.02176891865102821, -0.053959259577204544,
           0.1333330355691574, -0.3333333317214036]


def _tanh32(s, x):
    """tanh |x| (then x's sign, which also keeps -0): a polynomial below 0.625, else
    (1 - t) / (1 + t) with t = e^(-2|x|)."""
    b = s.b
    ax = _abs(s, x)
    z = b.fmul(ax, ax)
    small = _fma(s, ax, b.fmul(z, _poly(s, z, _TANH_P)), ax)
    t = _exp32(s, b.fmul(ax, F32(-2.0)))
    big = b.fdiv(b.fsub(F32(1.0), t), b.fadd(F32(1.0), t))
    return _xorsign(s, _sel(s, b.fcmp_ordered("<", ax, F32(0.625)), small, big), x)


def _sigmoid32(s, x):
    """1 / (1 + e^-x) for x >= 0, e^x / (1 + e^x) below: e^-|x| never overflows, and the
    denormal results for x < -87 come out right."""
    b = s.b
    e = _exp32(s, b.fneg(_abs(s, x)))
    num = _sel(s, b.fcmp_ordered(">=", x, F32(0.0)), F32(1.0), e)
    d = b.fadd(F32(1.0), e)
    q = b.fdiv(num, d)
    # fold d's rounding error back in, num / (d + err) ~ q - q err / d (err exact since
    # e <= 1): without it the result is off by up to 2.4 ulp, with it below 2. err / d only
    # needs a few bits of 1 / d: a quadratic on [1, 2] (1% error)
    err = b.fsub(e, b.fsub(d, F32(1.0)))
    rcp = _poly(s, d, [0.32323232323232326, -1.4545454545454546, 2.121212121212121])
    return _fma(s, b.fneg(q), b.fmul(err, rcp), q)


# --- f32 erf ---------------------------------------------------------------------------------------
_ERF_T = 1.0
# (erf(x) - x) / x as a polynomial in x^2, |x| <= 1, error 1.2e-9
_ERF_P = [7.875875062685488e-05, -0.000801686428716587, 0.005189087423433974, -0.026854212010626412,
          0.11283594715160218, -0.37612626666720334, 0.12837916584835093]
# log(erfc(x)) + x^2 as a polynomial in t = (x - 2) / 2, x in [1, 4], error 8.0e-9. x - 2 is
# exact for x in [1, 4] (Sterbenz); the polynomial stays small (|h| < 2), so its rounding
# errors stay small next to erfc = exp(h - x^2).
_ERFC_C = 2.0
_ERFC_H = [-3.8823331684993406e-05, 0.0005009412700623802, -0.0025690191150478533, 0.008622898484115182,
           -0.023447058210429052, 0.057140306666622356, -0.13172082051024916, 0.3049961229188,
           -0.8363215984209611, -1.3649412597102624]


def _erf_parts(s, u):
    """(erf(u) for |u| < 1, erfc(min(|u|, 4)), whether |u| < 1). Both halves are
    computed (no branches); erfc = exp(poly) keeps its relative accuracy, which gelu's negative
    tail uses directly."""
    b = s.b
    au = _abs(s, u)
    small = _fma(s, u, _poly(s, b.fmul(u, u), _ERF_P), u)
    xb = b.select(b.fcmp_ordered("<", au, F32(4.0)), au, F32(4.0))
    t = b.fmul(b.fsub(xb, F32(_ERFC_C)), F32(0.5))
    ec = _exp32(s, b.fsub(_poly(s, t, _ERFC_H), b.fmul(xb, xb)))
    return small, ec, b.fcmp_ordered("<", au, F32(_ERF_T))


def _erf32(s, x):
    small, ec, use_small = _erf_parts(s, x)
    big = _xorsign(s, s.b.fsub(F32(1.0), ec), x)
    res = _sel(s, use_small, small, big)
    return _sel(s, _is_nan(s, x), x, res)


# log(erfc(z)) + z^2 as a polynomial in t = z/2 - 1, z in [0, 4], error 2.8e-9 (gelu only
# needs Phi(x) = erfc(-x/sqrt 2)/2 to a relative accuracy, so one branch covers every x)
_ERFC_H0 = [-5.158556086640498e-05, 0.00016143553460667802, -0.0001935049737484587, 6.368469476090841e-05,
            0.0005122355349900449, -0.002630399180649834, 0.008655703795966327, -0.023441886480895964,
            0.05713264431567306, -0.1317203579549962, 0.30499661287308044, -0.836321632217847,
            -1.3649412646166377]


def gelu_erf(s, x):
    """0.5 x (1 + erf(x / sqrt 2)) = 0.5 x erfc(-u), u = x / sqrt 2: with E = erfc(|u|) =
    exp(h(|u|) - u^2) from one polynomial, 1 + erf(u) is E for u < 0 (no cancellation, so
    the negative tail keeps its relative accuracy) and 2 - E above. Exactly 0 below u = -4
    (|gelu| < 4.4e-8 there), so that -inf gives NaN as the reference does."""
    b = s.b
    if x.type != F32:
        return b.fmul(b.fmul(_c(x.type, 0.5), x),
                      b.fadd(_c(x.type, 1.0), erf(s, b.fmul(x, _c(x.type, 0.7071067811865476)))))
    u = b.fmul(x, F32(0.7071067811865476))
    au = _abs(s, u)
    z = b.select(b.fcmp_ordered("<", au, F32(4.0)), au, F32(4.0))     # NaN -> 4 (x stays NaN)
    h = _poly(s, _fma(s, z, F32(0.5), F32(-1.0)), _ERFC_H0)
    e = _exp32(s, _fma(s, b.fneg(z), z, h), normal_range=True)          # in [1.5e-8, 1]
    onep = _sel(s, b.fcmp_ordered(">", u, F32(0.0)), b.fsub(F32(2.0), e), e)
    onep = _sel(s, b.fcmp_ordered("<=", u, F32(-4.0)), F32(0.0), onep)
    return b.fmul(b.fmul(F32(0.5), x), onep)


def gelu_tanh(s, x):
    """0.5 x (1 + tanh(v)), v = sqrt(2/pi) (x + 0.044715 x^3), as x / (1 + e^(-2v)): the same
    value without 1 + tanh's cancellation for negative x, and one exp instead of a tanh."""
    b = s.b
    t = x.type
    v = b.fmul(_c(t, 0.7978845608028654), b.fadd(x, b.fmul(_c(t, 0.044715), b.fmul(x, b.fmul(x, x)))))
    if t != F32:
        return b.fmul(b.fmul(_c(t, 0.5), x), b.fadd(_c(t, 1.0), tanh(s, v)))
    return b.fdiv(x, b.fadd(F32(1.0), _exp32(s, b.fmul(v, F32(-2.0)))))


# --- f64 building blocks (for the f32 functions that compute in f64) ----------------------------------
_LN2_HI = 6.93147180369123816490e-01     # 32 significant bits: n * hi is exact
_LN2_LO = 1.90821492927058770002e-10
_M52 = 6755399441055744.0                 # 1.5 * 2^52


def _exp64(s, y):
    """e^y in f64 to ~2^-47 relative, y clamped to [-300, 300] (NaN passes through)."""
    b = s.b
    y = _clamp(s, y, -300.0, 300.0)
    t = _fma(s, y, F64(_LOG2E), F64(_M52))
    n = b.fsub(t, F64(_M52))
    ni = b.sub(_bits(s, t), _bits(s, F64(_M52)))
    r = _fma(s, n, F64(-_LN2_HI), y)
    r = _fma(s, n, F64(-_LN2_LO), r)
    return b.fmul(_exp64_poly(s, r), _float(s, b.shl(b.add(ni, I64(1023)), I64(52))))


def _exp64_poly(s, r):
    """e^r for |r| <= ln2/2: Taylor to r^11 (truncation 2^-47); exactly 1 at r = 0."""
    return _poly(s, r, [1.0 / math.factorial(k) for k in range(11, -1, -1)])


def _exp2_64(s, y):
    """2^y in f64, y clamped to [-400, 400]: 2^n 2^f with f = y - n exact, so integer y give
    exact powers of two (pow(2, -150) rounds to 0 as it should)."""
    b = s.b
    y = _clamp(s, y, -400.0, 400.0)
    t = b.fadd(y, F64(_M52))
    n = b.fsub(t, F64(_M52))
    ni = b.sub(_bits(s, t), _bits(s, F64(_M52)))
    p = _exp64_poly(s, b.fmul(b.fsub(y, n), F64(math.log(2))))
    return b.fmul(p, _float(s, b.shl(b.add(ni, I64(1023)), I64(52))))


def _log64(s, v, base2=False):
    """log(v) (or log2(v)) in f64 to ~2^-50 relative, for positive normal finite v (callers
    select the special cases): v = 2^k m, m in [sqrt(2)/2, sqrt(2)), log m = 2 atanh(f / (2 + f))."""
    b = s.b
    sq = 0x3FE6A09E667F3BCD
    iv = b.add(_bits(s, v), I64(0x3FF0000000000000 - sq))
    k = b.sub(b.lshr(iv, I64(52)), I64(0x3FF))
    m = _float(s, b.add(b.and_(iv, I64(0x000FFFFFFFFFFFFF)), I64(sq)))
    f = b.fsub(m, F64(1.0))
    s2 = b.fmul(F64(2.0), b.fdiv(f, b.fadd(F64(2.0), f)))      # 2s
    z = b.fmul(s2, s2)                                           # 4s^2
    # 2 atanh(s) = 2s (1 + s^2/3 + s^4/5 + ...), |s| <= 0.1716: 9 terms reach 2^-52
    q = _poly(s, z, [1.0 / ((2 * j + 1) * 4.0 ** j) for j in range(9, 0, -1)])
    lp = _fma(s, b.fmul(s2, z), q, s2)
    dk = b.fsub(_float(s, b.add(k, _bits(s, F64(_M52)))), F64(_M52))   # small int -> f64
    if base2:
        return b.fadd(dk, b.fmul(lp, F64(1 / math.log(2))))
    return b.fadd(b.fmul(dk, F64(_LN2_HI)), b.fadd(lp, b.fmul(dk, F64(_LN2_LO))))


def _log1p64(s, u):
    """log(1 + u) for finite u from f32 data: a Taylor polynomial below 2^-12 (where 1 + u
    would lose bits), else log(1 + u); -inf at u = -1, NaN below or for NaN."""
    b = s.b
    small = b.fmul(u, _poly(s, u, [-0.25, 1.0 / 3.0, -0.5, 1.0]))
    one_u = b.fadd(F64(1.0), u)
    ok = b.fcmp_ordered(">", one_u, F64(0.0))
    big = _log64(s, _sel(s, ok, one_u, F64(1.0)))
    big = _sel(s, ok, big, _sel(s, b.fcmp_ordered("==", one_u, F64(0.0)), F64(-INF), F64(NAN)))
    return _sel(s, b.fcmp_ordered("<", _abs(s, u), F64(2.0 ** -12)), small, big)


def _expm1_64(s, y):
    b = s.b
    small = _fma(s, b.fmul(y, y), _poly(s, y, [1.0 / 24.0, 1.0 / 6.0, 0.5]), y)
    small = _sel(s, b.fcmp_ordered("==", y, F64(0.0)), y, small)      # keep -0
    big = b.fsub(_exp64(s, y), F64(1.0))
    return _sel(s, b.fcmp_ordered("<", _abs(s, y), F64(2.0 ** -12)), small, big)


# atan(t) = t + t^3 P(t^2), |t| <= tan(pi/8), error 2.4e-14 in P
_ATAN_P = [-0.02723288406057488, 0.05168834935919362, -0.0655090730756309, 0.07681045202742948,
           -0.09090255952690657, 0.11111089649211055, -0.14285713930378566, 0.19999999997724888,
           -0.3333333333333093]


def _atan64(s, v):
    """atan(v) for v >= 0 (inf and NaN allowed): v <= tan(pi/8): atan v; up to tan(3pi/8):
    pi/4 + atan((v-1)/(v+1)); beyond: pi/2 + atan(-1/v). One division."""
    b = s.b
    mid = b.fcmp_ordered(">", v, F64(0.41421356237309503))
    big = b.fcmp_ordered(">", v, F64(2.414213562373095))
    num = _sel(s, big, F64(-1.0), _sel(s, mid, b.fsub(v, F64(1.0)), v))
    den = _sel(s, big, v, _sel(s, mid, b.fadd(v, F64(1.0)), F64(1.0)))
    t = b.fdiv(num, den)
    z = b.fmul(t, t)
    a = _fma(s, t, b.fmul(z, _poly(s, z, _ATAN_P)), t)
    off = _sel(s, big, F64(math.pi / 2), _sel(s, mid, F64(math.pi / 4), F64(0.0)))
    return b.fadd(off, a)


# --- sin, cos, tan: full-range reduction in f64 -----------------------------------------------------
# 2/pi = sum of these 28-bit pieces (to 2^-224): x * piece is exact in f64 for any f32 x
_TWO_OVER_PI = [170891318, 240010261, 44024437, 131200308, 232525238, 43358524, 70845471, 240214955]


def _reduce_pio2(s, ax):
    """ax >= 0 finite (f64 holding an f32): (r, q) with ax = (q + r / (pi/2)) * pi/2 mod 2pi,
    |r| <= pi/4 (a hair more), q in 0..3 (i64). Payne-Hanek without a table: each product
    ax * piece is exact and taken mod 4 exactly; the pieces are summed with TwoSum, so the
    reduced argument keeps ~2^-100 absolute accuracy even for x near multiples of pi/2."""
    b = s.b
    hi, lo = None, F64(0.0)
    for i, d in enumerate(_TWO_OVER_PI):
        p = b.fmul(ax, F64(d * 2.0 ** (-28 * (i + 1))))
        if i < 5:                      # pieces 5.. give products < 2 even for the largest f32
            t = b.fmul(p, F64(0.25))
            k = _sel(s, b.fcmp_ordered("<", t, F64(2.0 ** 52)),
                     b.fsub(b.fadd(t, F64(2.0 ** 52)), F64(2.0 ** 52)), t)
            p = b.fsub(p, b.fmul(k, F64(4.0)))          # exact: in [-2, 2]
        if hi is None:
            hi = p
            continue
        sm = b.fadd(hi, p)                                 # TwoSum(hi, p)
        bb = b.fsub(sm, hi)
        err = b.fadd(b.fsub(hi, b.fsub(sm, bb)), b.fsub(p, bb))
        hi, lo = sm, b.fadd(lo, err)
    tq = b.fadd(hi, F64(_M52))
    q = b.fsub(tq, F64(_M52))
    qi = b.and_(b.sub(_bits(s, tq), _bits(s, F64(_M52))), I64(3))
    r = b.fmul(b.fadd(b.fsub(hi, q), lo), F64(math.pi / 2))
    return r, qi


def _sin_cos_poly(s, r):
    b = s.b
    z = b.fmul(r, r)
    # Taylor to r^13 / r^14 for |r| <= pi/4: truncation below 2^-44
    ps = _poly(s, z, [(-1) ** k / math.factorial(2 * k + 1) for k in range(6, 0, -1)])
    sn = _fma(s, b.fmul(r, z), ps, r)
    pc = _poly(s, z, [(-1) ** k / math.factorial(2 * k) for k in range(7, 1, -1)])
    cs = _fma(s, b.fmul(z, z), pc, _fma(s, z, F64(-0.5), F64(1.0)))
    return sn, cs


def _trig32(s, x, which):
    b = s.b
    ax = _abs(s, _f64(s, x))
    finite = b.fcmp_ordered("<", ax, F64(INF))
    r, qi = _reduce_pio2(s, _sel(s, finite, ax, F64(0.0)))
    sn, cs = _sin_cos_poly(s, r)
    odd = b.icmp_unsigned("!=", b.and_(qi, I64(1)), I64(0))
    if which == "tan":
        num = _sel(s, odd, b.fneg(cs), sn)
        den = _sel(s, odd, sn, cs)
        v = _xorsign(s, _f32(s, b.fdiv(num, den)), x)
    elif which == "sin":
        v = _sel(s, odd, cs, sn)
        v = _sel(s, b.icmp_unsigned("!=", b.and_(qi, I64(2)), I64(0)), b.fneg(v), v)
        v = _xorsign(s, _f32(s, v), x)
    else:
        v = _sel(s, odd, sn, cs)
        neg = b.icmp_unsigned("!=", b.and_(b.add(qi, I64(1)), I64(2)), I64(0))
        v = _f32(s, _sel(s, neg, b.fneg(v), v))
    return _sel(s, finite, v, F32(NAN))


# --- f32 functions computed in f64 -------------------------------------------------------------------
def _is_snan32(s, x):
    m = s.b.and_(_bits(s, x), I32(0x7FFFFFFF))
    return s.b.and_(s.b.icmp_unsigned(">", m, I32(0x7F800000)),
                    s.b.icmp_unsigned("==", s.b.and_(m, I32(0x00400000)), I32(0)))


def _pow32(s, a, c):
    """a ** c = 2^(c log2|a|) in f64 (powers of two come out exact), with the special cases
    of numpy's float32 power (C99 powf, where a signaling NaN stays NaN even in NaN ** 0)."""
    b = s.b
    A, C = _f64(s, a), _f64(s, c)
    ax = _abs(s, A)
    ok = b.and_(b.fcmp_ordered(">", ax, F64(0.0)), b.fcmp_ordered("<", ax, F64(INF)))
    lg = _log64(s, _sel(s, ok, ax, F64(1.0)), base2=True)
    lg = _sel(s, ok, lg, _sel(s, b.fcmp_ordered("==", ax, F64(0.0)), F64(-INF),
                               _sel(s, b.fcmp_ordered("==", ax, F64(INF)), F64(INF), F64(NAN))))
    r = _f32(s, _exp2_64(s, b.fmul(C, lg)))        # 0 * inf and NaN stay NaN
    # is c an integer, an odd one? (c + 2^52 rounds it; its last bit is the parity)
    ac = _abs(s, C)
    t = b.fadd(ac, F64(2.0 ** 52))
    below = b.fcmp_ordered("<", ac, F64(2.0 ** 52))
    cint = _sel(s, below, b.fcmp_ordered("==", b.fsub(t, F64(2.0 ** 52)), ac),
                b.fcmp_ordered("==", ac, ac))
    codd = b.and_(b.and_(below, cint),
                  b.icmp_unsigned("!=", b.and_(_bits(s, t), I64(1)), I64(0)))
    r = _sel(s, b.and_(codd, b.icmp_unsigned("!=", _signbit_of(s, a), I32(0))), b.fneg(r), r)
    neg_finite = b.and_(b.fcmp_ordered("<", a, F32(0.0)), b.fcmp_ordered(">", a, F32(-INF)))
    r = _nan_if(s, b.and_(neg_finite, b.not_(cint)), r)
    one = b.or_(b.and_(b.fcmp_ordered("==", c, F32(0.0)), b.not_(_is_snan32(s, a))),
                b.and_(b.fcmp_ordered("==", a, F32(1.0)), b.not_(_is_snan32(s, c))))
    one = b.or_(one, b.and_(b.fcmp_ordered("==", ax, F64(1.0)), b.fcmp_ordered("==", ac, F64(INF))))
    return _sel(s, one, F32(1.0), r)


def _sinh32(s, x):
    b = s.b
    em = _expm1_64(s, _abs(s, _f64(s, x)))
    v = b.fmul(F64(0.5), b.fadd(em, b.fdiv(em, b.fadd(em, F64(1.0)))))
    return _xorsign(s, _f32(s, v), x)


def _cosh32(s, x):
    b = s.b
    e = _exp64(s, _abs(s, _f64(s, x)))
    return _f32(s, b.fmul(F64(0.5), b.fadd(e, b.fdiv(F64(1.0), e))))


def _atan32(s, x):
    return _xorsign(s, _f32(s, _atan64(s, _abs(s, _f64(s, x)))), x)


def _asin32(s, x):
    b = s.b
    v = _abs(s, _f64(s, x))
    d = _call1(s, "sqrt", b.fmul(b.fsub(F64(1.0), v), b.fadd(F64(1.0), v)))   # NaN for |x| > 1
    return _xorsign(s, _f32(s, _atan64(s, b.fdiv(v, d))), x)


def _acos32(s, x):
    b = s.b
    v = _f64(s, x)
    t = _call1(s, "sqrt", b.fdiv(b.fsub(F64(1.0), v), b.fadd(F64(1.0), v)))
    return _f32(s, b.fmul(F64(2.0), _atan64(s, t)))


def _asinh32(s, x):
    b = s.b
    v = _abs(s, _f64(s, x))
    v2 = b.fmul(v, v)
    d = b.fadd(F64(1.0), _call1(s, "sqrt", b.fadd(F64(1.0), v2)))
    a = _log1p64(s, b.fadd(v, b.fdiv(v2, d)))
    a = _sel(s, b.fcmp_ordered("==", v, F64(INF)), F64(INF), a)
    return _xorsign(s, _f32(s, a), x)


def _acosh32(s, x):
    b = s.b
    y = _f64(s, x)
    u = b.fsub(y, F64(1.0))
    a = _log1p64(s, b.fadd(u, _call1(s, "sqrt", b.fmul(u, b.fadd(u, F64(2.0))))))
    a = _sel(s, b.fcmp_ordered("==", y, F64(INF)), F64(INF), a)
    return _f32(s, _nan_if(s, b.fcmp_unordered("<", y, F64(1.0)), a))


def _atanh32(s, x):
    b = s.b
    v = _abs(s, _f64(s, x))
    below = b.fcmp_ordered("<", v, F64(1.0))
    arg = b.fdiv(b.fmul(F64(2.0), v), b.fsub(F64(1.0), _sel(s, below, v, F64(0.0))))
    a = b.fmul(F64(0.5), _log1p64(s, arg))
    a = _sel(s, below, a, _sel(s, b.fcmp_ordered("==", v, F64(1.0)), F64(INF), F64(NAN)))
    return _xorsign(s, _f32(s, a), x)


def _expm1_32(s, x):
    return _f32(s, _expm1_64(s, _f64(s, x)))


def _softplus32(s, x):
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|), as numpy's logaddexp(0, x)."""
    b = s.b
    y = _f64(s, x)
    l = _log1p64(s, _exp64(s, b.fneg(_abs(s, y))))
    m = _sel(s, b.fcmp_ordered(">", y, F64(0.0)), y, F64(0.0))
    return _sel(s, _is_nan(s, x), x, _f32(s, b.fadd(m, l)))


# --- the public functions: f32 inline code, f64 libm ---------------------------------------------------
def fabs(s, x):
    return _call1(s, "fabs", x)


def sqrt(s, x):
    return _call1(s, "sqrt", x)


def floor(s, x):
    return _call1(s, "floor", x)


def ceil(s, x):
    return _call1(s, "ceil", x)


def rint(s, x):
    return _call1(s, "rint", x)      # round half to even, as numpy.round


def _dispatch(f32_fn, libm_name):
    def fn(s, x):
        if x.type == F32:
            return f32_fn(s, x)
        return _libm(s, libm_name, x)
    fn.__name__ = libm_name
    return fn


exp = _dispatch(_exp32, "exp")
log = _dispatch(_log32, "log")
tanh = _dispatch(_tanh32, "tanh")
erf = _dispatch(_erf32, "erf")
sin = _dispatch(lambda s, x: _trig32(s, x, "sin"), "sin")
cos = _dispatch(lambda s, x: _trig32(s, x, "cos"), "cos")
tan = _dispatch(lambda s, x: _trig32(s, x, "tan"), "tan")
atan = _dispatch(_atan32, "atan")
asin = _dispatch(_asin32, "asin")
acos = _dispatch(_acos32, "acos")
sinh = _dispatch(_sinh32, "sinh")
cosh = _dispatch(_cosh32, "cosh")
asinh = _dispatch(_asinh32, "asinh")
acosh = _dispatch(_acosh32, "acosh")
atanh = _dispatch(_atanh32, "atanh")
expm1 = _dispatch(_expm1_32, "expm1")


def pow(s, a, c):
    if a.type == F32:
        return _pow32(s, a, c)
    return _libm(s, "pow", a, c)


def sigmoid(s, x):
    if x.type == F32:
        return _sigmoid32(s, x)
    b = s.b
    e = exp(s, b.fneg(fabs(s, x)))
    num = b.select(b.fcmp_ordered(">=", x, _c(x.type, 0.0)), _c(x.type, 1.0), e)
    return b.fdiv(num, b.fadd(_c(x.type, 1.0), e))


def softplus(s, x):
    if x.type == F32:
        return _softplus32(s, x)
    b = s.b
    l = _libm(s, "log1p", exp(s, b.fneg(fabs(s, x))))
    m = b.select(b.fcmp_ordered(">", x, _c(x.type, 0.0)), x, _c(x.type, 0.0))
    return b.select(_is_nan(s, x), x, b.fadd(m, l))
