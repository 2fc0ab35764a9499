"""Elementwise kernels: one loop nest over the result, operands broadcast by stride.

`SCALAR[name](s, xs, op)` computes one element of an op from its operands' elements in the
compute type (f32 for f16/bf16 and narrower floats, otherwise the dtype itself; bool as i1).
`emit_map` turns any such scalar function into a kernel: a flat vectorizable loop when every
operand has the result's shape or is a scalar, else a loop over rows (the last dim) with
per-operand strides; the outer loop runs on the thread pool. Fusion reuses `emit_map` with a
scalar function built from a whole expression.
"""
from __future__ import annotations

import llvmlite.ir as ir

from ckir import dtypes as dt

from ..codegen import F16, F32, F64, I1, I8, I16, I32, I64, emitter, mem_type, tensor_types_supported
from . import mathf

GRAIN = 16384       # elements per task


# --- compute types and conversions ---------------------------------------------------------------
def compute_type(d: dt.DType) -> ir.Type:
    if d.is_float:
        return F64 if d is dt.f64 else F32
    if d.is_bool:
        return I1
    return mem_type(d)


def _native_half(cg) -> bool:
    # without F16C, LLVM lowers half conversions to compiler-rt calls the JIT cannot resolve
    return "+f16c" in cg.target.features or cg.target.name == "neon"


def to_compute(b, x, d: dt.DType, cg):
    if d is dt.f16:
        return b.fpext(x, F32) if _native_half(cg) else f16_to_f32(b, x)
    if d is dt.bf16:
        return b.bitcast(b.shl(b.zext(x, I32), I32(16)), F32)
    if d.is_bool:
        return b.icmp_unsigned("!=", x, I8(0))
    return x


def from_compute(b, x, d: dt.DType, cg):
    if d is dt.f16:
        return b.fptrunc(x, F16) if _native_half(cg) else b.bitcast(f32_to_f16(b, x), F16)
    if d is dt.bf16:
        return f32_to_bf16(b, x)
    if d.is_bool:
        return b.zext(x, I8)
    return x


def f16_to_f32(b, h):
    """IEEE half (as LLVM half) -> float, exactly, with integer operations."""
    u = b.zext(b.bitcast(h, I16), I32)
    sign = b.shl(b.and_(u, I32(0x8000)), I32(16))
    exp = b.and_(b.lshr(u, I32(10)), I32(0x1F))
    mant = b.and_(u, I32(0x3FF))
    normal = b.or_(b.shl(b.add(exp, I32(112)), I32(23)), b.shl(mant, I32(13)))
    special = b.or_(I32(0x7F800000), b.shl(mant, I32(13)))
    sub = b.bitcast(b.fmul(b.uitofp(mant, F32), F32(2.0 ** -24)), I32)
    bits = b.select(b.icmp_unsigned("==", exp, I32(0)), sub,
                    b.select(b.icmp_unsigned("==", exp, I32(31)), special, normal))
    return b.bitcast(b.or_(bits, sign), F32)


def f32_to_f16(b, x):
    """float -> IEEE half bits, rounding to nearest even (F. Giesen's float_to_half_rtne)."""
    bits = b.bitcast(x, I32)
    sign = b.and_(bits, I32(0x80000000))
    a = b.xor(bits, sign)
    # overflow, inf and NaN
    big = b.select(b.icmp_unsigned(">", a, I32(255 << 23)), I32(0x7E00), I32(0x7C00))
    # subnormal results: let the FPU round by adding a magic number
    magic = I32(((127 - 15) + (23 - 10) + 1) << 23)
    f = b.fadd(b.bitcast(a, F32), b.bitcast(magic, F32))
    small = b.sub(b.bitcast(f, I32), magic)
    # normal results: rebias, round to nearest even on the 13 dropped bits
    odd = b.and_(b.lshr(a, I32(13)), I32(1))
    n = b.add(b.add(a, I32(((15 - 127) << 23) + 0xFFF)), odd)
    normal = b.lshr(n, I32(13))
    o = b.select(b.icmp_unsigned(">=", a, I32((127 + 16) << 23)), big,
                 b.select(b.icmp_unsigned("<", a, I32(113 << 23)), small, normal))
    return b.trunc(b.or_(o, b.lshr(sign, I32(16))), I16)


def f32_to_bf16(b, x):
    """Round to nearest even, NaN kept quiet (as ml_dtypes does)."""
    bits = b.bitcast(x, I32)
    lsb = b.and_(b.lshr(bits, I32(16)), I32(1))
    rounded = b.lshr(b.add(bits, b.add(I32(0x7FFF), lsb)), I32(16))
    nan = b.fcmp_unordered("uno", x, x)
    quiet = b.or_(b.lshr(bits, I32(16)), I32(0x40))
    return b.trunc(b.select(nan, quiet, rounded), I16)


def convert(b, x, src: dt.DType, dst: dt.DType):
    """A compute-type value of dtype `src` as a compute-type value of dtype `dst` (nn.cast)."""
    st, tt = compute_type(src), compute_type(dst)
    if src.is_bool:
        if dst.is_float:
            return b.uitofp(x, tt)
        return x if tt == I1 else b.zext(x, tt)
    if dst.is_bool:
        return b.fcmp_unordered("une", x, ir.Constant(st, 0.0)) if src.is_float else b.icmp_unsigned("!=", x, ir.Constant(st, 0))
    if src.is_float and dst.is_float:
        if st == tt:
            return x
        return b.fpext(x, tt) if tt == F64 else b.fptrunc(x, tt)
    if src.is_float:
        return b.fptosi(x, tt) if dst.kind == "i" else b.fptoui(x, tt)
    if dst.is_float:
        return b.sitofp(x, tt) if src.kind == "i" else b.uitofp(x, tt)
    if st.width == tt.width:
        return x
    if tt.width < st.width:
        return b.trunc(x, tt)
    return b.sext(x, tt) if src.kind == "i" else b.zext(x, tt)


# --- the scalar semantics of each op ---------------------------------------------------------------
class Scalar:
    """What a scalar function sees: the builder, the op's dtypes, the codegen (for math)."""

    def __init__(self, b, cg, dtype: dt.DType, in_dtypes):
        self.b, self.cg, self.dtype, self.in_dtypes = b, cg, dtype, in_dtypes
        self.t = compute_type(in_dtypes[0] if in_dtypes else dtype)
        self.is_float = (in_dtypes[0] if in_dtypes else dtype).is_float
        self.signed = (in_dtypes[0] if in_dtypes else dtype).kind == "i"

    def c(self, v):
        return ir.Constant(self.t, v)


def _f(fn_float, fn_int=None):
    def run(s, xs, op):
        if s.is_float:
            return fn_float(s, *xs)
        if fn_int is None:
            raise NotImplementedError
        return fn_int(s, *xs)
    return run


def _cmp(fop, iop_signed, iop_unsigned):
    def run(s, xs, op):
        a, c = xs
        if s.in_dtypes[0].is_float:
            return s.b.fcmp_ordered(fop, a, c) if fop != "!=" else s.b.fcmp_unordered("!=", a, c)
        if s.in_dtypes[0].is_bool:
            return s.b.icmp_unsigned(iop_unsigned, a, c)
        return (s.b.icmp_signed(iop_signed, a, c) if s.signed else s.b.icmp_unsigned(iop_unsigned, a, c))
    return run


def _fmax(s, a, c, ties_first=False):
    """numpy maximum: a NaN on either side wins; on ties (+0 vs -0) the second operand, as
    numpy's f32/f64 loops (x86 maxps) and ml_dtypes' bfloat16 give; numpy's float16 loop
    gives the first (`ties_first`)."""
    b = s.b
    if ties_first:
        m = b.select(b.fcmp_unordered("uge", a, c), a, c)  # a when a >= c or a is NaN
        return b.select(b.fcmp_unordered("uno", c, c), c, m)
    m = b.select(b.fcmp_ordered(">", a, c), a, c)          # c when c is NaN
    return b.select(b.fcmp_unordered("uno", a, a), a, m)


def _fmin(s, a, c, ties_first=False):
    b = s.b
    if ties_first:
        m = b.select(b.fcmp_unordered("ule", a, c), a, c)
        return b.select(b.fcmp_unordered("uno", c, c), c, m)
    m = b.select(b.fcmp_ordered("<", a, c), a, c)
    return b.select(b.fcmp_unordered("uno", a, a), a, m)


def _f16_ties(s) -> bool:
    """Whether the reference runs numpy's float16 maximum/minimum (first operand on ties)."""
    return s.in_dtypes[0] is dt.f16


def _imax(s, a, c):
    return s.b.select((s.b.icmp_signed if s.signed else s.b.icmp_unsigned)(">=", a, c), a, c)


def _imin(s, a, c):
    return s.b.select((s.b.icmp_signed if s.signed else s.b.icmp_unsigned)("<=", a, c), a, c)


def _relu(s, x):
    b = s.b
    return b.select(b.fcmp_unordered("ugt", x, s.c(0.0)), x, s.c(0.0))


def _sign(s, x):
    b = s.b
    one, zero = s.c(1.0), s.c(0.0)
    pos = b.select(b.fcmp_ordered(">", x, zero), one, zero)
    res = b.select(b.fcmp_ordered("<", x, zero), s.c(-1.0), pos)
    return b.select(b.fcmp_unordered("uno", x, x), x, res)


def _isign(s, x):
    b = s.b
    pos = b.select(b.icmp_signed(">", x, s.c(0)), s.c(1), s.c(0))
    return b.select(b.icmp_signed("<", x, s.c(0)), s.c(-1), pos)


def _gelu(s, x, op):
    if op.attrs["approximate"] == "tanh":
        return mathf.gelu_tanh(s, x)
    return mathf.gelu_erf(s, x)


def _clip(s, x, op):
    b = s.b
    lo, hi = op.attrs["min"], op.attrs["max"]
    if s.is_float:
        # np.maximum(x, lo) then np.minimum(.., hi): ties (+0 vs -0) go to the bound, except
        # in numpy's float16 loops; NaN stays
        lt, gt = ("<", ">") if _f16_ties(s) else ("<=", ">=")
        if lo is not None:
            x = b.select(b.fcmp_ordered(lt, x, s.c(lo)), s.c(lo), x)
        if hi is not None:
            x = b.select(b.fcmp_ordered(gt, x, s.c(hi)), s.c(hi), x)
        return x
    cmp = b.icmp_signed if s.signed else b.icmp_unsigned
    if lo is not None:
        x = b.select(cmp("<", x, s.c(int(lo))), s.c(int(lo)), x)
    if hi is not None:
        x = b.select(cmp(">", x, s.c(int(hi))), s.c(int(hi)), x)
    return x


def _softsign(s, x):
    return s.b.fdiv(x, s.b.fadd(s.c(1.0), mathf.fabs(s, x)))


def _mish(s, x):
    """x tanh(log(1 + e^x)) = x n / (n + 2) with n = e^x (e^x + 2); e^x is capped at e^20,
    where the ratio is already 1 (and n cannot overflow)."""
    b = s.b
    e = mathf.exp(s, b.select(b.fcmp_ordered("<", x, s.c(20.0)), x, s.c(20.0)))
    n = b.fmul(e, b.fadd(e, s.c(2.0)))
    return b.fmul(x, b.fdiv(n, b.fadd(n, s.c(2.0))))


def _clip01(s, v):
    """np.clip(v, 0, 1): NaN stays NaN."""
    return _fmin(s, _fmax(s, v, s.c(0.0)), s.c(1.0))


def _hard_swish(s, x):
    b = s.b
    return b.fmul(x, _clip01(s, b.fadd(b.fdiv(x, s.c(6.0)), s.c(0.5))))


def _prelu(s, x, slope):
    b = s.b
    if s.is_float:
        neg = b.fcmp_ordered("<", x, s.c(0.0))
    elif s.signed:
        neg = b.icmp_signed("<", x, s.c(0))
    else:
        return x
    return b.select(neg, b.fmul(x, slope) if s.is_float else b.mul(x, slope), x)


def _py_mod(s, a, c):
    """numpy's float remainder: fmod, moved to the divisor's sign; a zero takes the divisor's
    sign; b == 0 gives fmod's NaN."""
    b = s.b
    m = b.frem(a, c)
    flip = b.xor(b.fcmp_ordered("<", c, s.c(0.0)), b.fcmp_ordered("<", m, s.c(0.0)))
    adj = b.select(flip, b.fadd(m, c), m)
    it = I32 if s.t == F32 else I64
    sign = b.and_(b.bitcast(c, it), ir.Constant(it, 1 << (it.width - 1)))
    zero = b.bitcast(sign, s.t)
    r = b.select(b.fcmp_unordered("!=", m, s.c(0.0)), adj, zero)
    return b.select(b.fcmp_ordered("==", c, s.c(0.0)), m, r)


def _shift(left):
    def run(s, xs, op):
        a, c = xs
        b = s.b
        w = s.t.width
        ok = b.icmp_unsigned("<", c, s.c(w))            # negative shifts are huge unsigned
        sh = b.select(ok, c, s.c(0))
        if left:
            return b.select(ok, b.shl(a, sh), s.c(0))
        if s.signed:
            return b.select(ok, b.ashr(a, sh), b.ashr(a, s.c(w - 1)))
        return b.select(ok, b.lshr(a, sh), s.c(0))
    return run


def _elu_neg(s, x, alpha):
    """alpha * expm1(min(x, 0)) (the x <= 0 side of elu/selu; min(-0, 0) is +0 in numpy)."""
    return s.b.fmul(s.c(alpha), mathf.expm1(s, _fmin(s, x, s.c(0.0))))


def _elu(s, x, op):
    b = s.b
    return b.select(b.fcmp_ordered(">", x, s.c(0.0)), x, _elu_neg(s, x, op.attrs["alpha"]))


def _selu(s, x, op):
    b = s.b
    v = b.select(b.fcmp_ordered(">", x, s.c(0.0)), x, _elu_neg(s, x, op.attrs["alpha"]))
    return b.fmul(s.c(op.attrs["gamma"]), v)


def _celu(s, x, op):
    """max(x, 0) + min(0, alpha * expm1(min(x, 0) / alpha)), operation by operation."""
    b = s.b
    alpha = s.c(op.attrs["alpha"])
    neg = _fmin(s, x, s.c(0.0))
    v = b.fmul(alpha, mathf.expm1(s, b.fdiv(neg, alpha)))
    return b.fadd(_fmax(s, x, s.c(0.0)), _fmin(s, s.c(0.0), v))


def _leaky_relu(s, x, op):
    b = s.b
    return b.select(b.fcmp_ordered("<", x, s.c(0.0)), b.fmul(s.c(op.attrs["alpha"]), x), x)


def _thresholded_relu(s, x, op):
    b = s.b
    return b.select(b.fcmp_ordered(">", x, s.c(op.attrs["alpha"])), x, s.c(0.0))


def _hard_sigmoid(s, x, op):
    b = s.b
    return _clip01(s, b.fadd(b.fmul(s.c(op.attrs["alpha"]), x), s.c(op.attrs["beta"])))


def _shrink(s, x, op):
    """Floats in their compute type; integers in f64 and truncated back, as the reference
    (_supports only lets through attributes whose results fit the integer type)."""
    b = s.b
    lambd, bias = op.attrs["lambd"], op.attrs["bias"]
    if s.is_float:
        w, t = x, s.t
    else:
        w, t = (b.sitofp(x, F64) if s.signed else b.uitofp(x, F64)), F64
    inner = b.select(b.fcmp_ordered(">", w, ir.Constant(t, lambd)), b.fsub(w, ir.Constant(t, bias)),
                     ir.Constant(t, 0.0))
    y = b.select(b.fcmp_ordered("<", w, ir.Constant(t, -lambd)), b.fadd(w, ir.Constant(t, bias)), inner)
    if s.is_float:
        return y
    return b.trunc(b.fptosi(y, I64), s.t) if s.t.width < 64 else b.fptosi(y, I64)


def _isinf(s, x, op):
    b = s.b
    r = ir.Constant(I1, 0)
    if op.attrs["detect_positive"]:
        r = b.or_(r, b.fcmp_ordered("==", x, s.c(float("inf"))))
    if op.attrs["detect_negative"]:
        r = b.or_(r, b.fcmp_ordered("==", x, s.c(float("-inf"))))
    return r


SCALAR = {
    "nn.neg": _f(lambda s, x: s.b.fneg(x), lambda s, x: s.b.neg(x)),
    "nn.abs": _f(lambda s, x: mathf.fabs(s, x),
                 lambda s, x: s.b.select(s.b.icmp_signed("<", x, s.c(0)), s.b.neg(x), x) if s.signed else x),
    "nn.exp": _f(lambda s, x: mathf.exp(s, x)),
    "nn.log": _f(lambda s, x: mathf.log(s, x)),
    "nn.sqrt": _f(lambda s, x: mathf.sqrt(s, x)),
    "nn.rsqrt": _f(lambda s, x: s.b.fdiv(s.c(1.0), mathf.sqrt(s, x))),
    "nn.reciprocal": _f(lambda s, x: s.b.fdiv(s.c(1.0), x)),
    "nn.sin": _f(lambda s, x: mathf.sin(s, x)),
    "nn.cos": _f(lambda s, x: mathf.cos(s, x)),
    "nn.tanh": _f(lambda s, x: mathf.tanh(s, x)),
    "nn.sigmoid": _f(lambda s, x: mathf.sigmoid(s, x)),
    "nn.relu": _f(_relu, lambda s, x: s.b.select(s.b.icmp_signed(">", x, s.c(0)), x, s.c(0)) if s.signed else x),
    "nn.silu": _f(lambda s, x: s.b.fmul(x, mathf.sigmoid(s, x))),
    "nn.erf": _f(lambda s, x: mathf.erf(s, x)),
    "nn.floor": _f(lambda s, x: mathf.floor(s, x)),
    "nn.ceil": _f(lambda s, x: mathf.ceil(s, x)),
    "nn.round": _f(lambda s, x: mathf.rint(s, x)),
    "nn.sign": _f(_sign, _isign),
    "nn.add": _f(lambda s, a, c: s.b.fadd(a, c), lambda s, a, c: s.b.add(a, c)),
    "nn.sub": _f(lambda s, a, c: s.b.fsub(a, c), lambda s, a, c: s.b.sub(a, c)),
    "nn.mul": _f(lambda s, a, c: s.b.fmul(a, c), lambda s, a, c: s.b.mul(a, c)),
    "nn.div": _f(lambda s, a, c: s.b.fdiv(a, c)),
    "nn.pow": _f(lambda s, a, c: mathf.pow(s, a, c)),
    "nn.maximum": _f(lambda s, a, c: _fmax(s, a, c, _f16_ties(s)), _imax),
    "nn.minimum": _f(lambda s, a, c: _fmin(s, a, c, _f16_ties(s)), _imin),
    "nn.mod": _f(_py_mod),
    "nn.fmod": _f(lambda s, a, c: s.b.frem(a, c)),
    "nn.prelu": lambda s, xs, op: _prelu(s, *xs),
    "nn.asin": _f(lambda s, x: mathf.asin(s, x)),
    "nn.acos": _f(lambda s, x: mathf.acos(s, x)),
    "nn.atan": _f(lambda s, x: mathf.atan(s, x)),
    "nn.tan": _f(lambda s, x: mathf.tan(s, x)),
    "nn.sinh": _f(lambda s, x: mathf.sinh(s, x)),
    "nn.cosh": _f(lambda s, x: mathf.cosh(s, x)),
    "nn.asinh": _f(lambda s, x: mathf.asinh(s, x)),
    "nn.acosh": _f(lambda s, x: mathf.acosh(s, x)),
    "nn.atanh": _f(lambda s, x: mathf.atanh(s, x)),
    "nn.softplus": _f(lambda s, x: mathf.softplus(s, x)),
    "nn.softsign": _f(_softsign),
    "nn.mish": _f(_mish),
    "nn.hard_swish": _f(_hard_swish),
    "nn.isnan": _f(lambda s, x: s.b.fcmp_unordered("uno", x, x)),
    "nn.bitwise_and": lambda s, xs, op: s.b.and_(*xs),
    "nn.bitwise_or": lambda s, xs, op: s.b.or_(*xs),
    "nn.bitwise_xor": lambda s, xs, op: s.b.xor(*xs),
    "nn.bitwise_not": lambda s, xs, op: s.b.not_(xs[0]),
    "nn.shift_left": _shift(True),
    "nn.shift_right": _shift(False),
    "nn.eq": _cmp("==", "==", "=="), "nn.ne": _cmp("!=", "!=", "!="),
    "nn.lt": _cmp("<", "<", "<"), "nn.le": _cmp("<=", "<=", "<="),
    "nn.gt": _cmp(">", ">", ">"), "nn.ge": _cmp(">=", ">=", ">="),
}

BOOL_OPS = {
    "nn.and": lambda s, xs, op: s.b.and_(*xs), "nn.or": lambda s, xs, op: s.b.or_(*xs),
    "nn.xor": lambda s, xs, op: s.b.xor(*xs), "nn.not": lambda s, xs, op: s.b.not_(xs[0]),
}
WITH_ATTRS = {"nn.gelu": lambda s, xs, op: _gelu(s, xs[0], op), "nn.clip": lambda s, xs, op: _clip(s, xs[0], op)}


def _unary_with_attrs(f):
    return lambda s, xs, op: f(s, xs[0], op)


for _name, _fn in (("elu", _elu), ("selu", _selu), ("celu", _celu), ("leaky_relu", _leaky_relu),
                   ("thresholded_relu", _thresholded_relu), ("hard_sigmoid", _hard_sigmoid),
                   ("shrink", _shrink), ("isinf", _isinf)):
    WITH_ATTRS["nn." + _name] = _unary_with_attrs(_fn)


def scalar_fn(op):
    """The scalar function of an elementwise op: fn(s, xs) -> result in compute type."""
    name = op.opdef.name
    if name in BOOL_OPS:
        return BOOL_OPS[name]
    if name in WITH_ATTRS:
        return WITH_ATTRS[name]
    if name == "nn.where":
        return lambda s, xs, op: s.b.select(*xs)
    if name == "nn.cast":
        return lambda s, xs, op: convert(s.b, xs[0], op.operands[0].type.dtype, op.attrs["to"])
    return SCALAR[name]


# --- the loop nest ---------------------------------------------------------------------------------
def _same_shape(v, out) -> bool:
    return v.type.shape == out.type.shape


def emit_map(k, op, out, ins, fn, dtype_in=None):
    """out[i] = fn(s, [ins[j][i'] ...]) with numpy broadcasting of `ins` against `out`."""
    in_dtypes = [v.type.dtype for v in ins] if dtype_in is None else dtype_in
    flat = all(_same_shape(v, out) or v.type.rank == 0 or (v.type.is_static and v.type.numel == 1)
               for v in ins)

    def element(kt, idxs):
        s = Scalar(kt.b, kt.cg, out.type.dtype, in_dtypes)
        xs = [to_compute(kt.b, kt.load(v, ix), v.type.dtype, kt.cg) for v, ix in zip(ins, idxs)]
        return from_compute(kt.b, fn(s, xs, op), out.type.dtype, kt.cg)

    if flat:
        def body(kt, lo, hi):
            def one(i):
                idxs = [i if _same_shape(v, out) else I64(0) for v in ins]
                kt.store(out, i, element(kt, idxs))
            kt.loop(lo, hi, one)
        k.parallel_range(lambda kk: kk.numel(out), body, GRAIN)
        return

    rank = out.type.rank

    def rows_body(kt, lo, hi):
        oshape = kt.shape(out)
        inner = oshape[-1]
        # per operand: its strides over the result's dims (0 where it broadcasts)
        strides = []
        for v in ins:
            vsh = kt.shape(v)
            pad = rank - len(vsh)
            st, run = [], I64(1)
            for ax in range(rank - 1, -1, -1):
                if ax < pad:
                    st.append(I64(0))
                    continue
                d = vsh[ax - pad]
                bcast = kt.b.icmp_signed("==", d, I64(1))
                st.append(kt.b.select(bcast, I64(0), run))
                run = kt.mul(run, d)
            strides.append(st[::-1])

        def row(r):
            # decompose the row index over the outer dims
            rem = r
            bases = [I64(0)] * len(ins)
            for ax in range(rank - 2, -1, -1):
                d = oshape[ax]
                idx = kt.b.srem(rem, d)
                rem = kt.b.sdiv(rem, d)
                bases = [kt.b.add(bs, kt.b.mul(idx, st[ax])) for bs, st in zip(bases, strides)]
            obase = kt.b.mul(r, inner)

            def col(j):
                idxs = [kt.b.add(bs, kt.b.mul(j, st[-1])) for bs, st in zip(bases, strides)]
                kt.store(out, kt.b.add(obase, j), element(kt, idxs))
            kt.loop(I64(0), inner, col)
        kt.loop(lo, hi, row)

    def nrows(kk):
        n = I64(1)
        for d in kk.shape(out)[:-1]:
            n = kk.mul(n, d)
        return n
    k.parallel_range(nrows, rows_body, max(1, GRAIN // 256))


ELEMENTWISE = sorted(set(SCALAR) | set(BOOL_OPS) | set(WITH_ATTRS) | {"nn.where", "nn.cast"})


def _supports(op) -> bool:
    if not tensor_types_supported(op):
        return False
    name = op.opdef.name
    d = op.operands[-1].type.dtype if name == "nn.where" else op.operands[0].type.dtype
    if name in BOOL_OPS:
        return True
    if name == "nn.cast":
        return True
    if d.is_float:
        return True
    if name == "nn.shrink":
        return _int_shrink_fits(op)
    # integer ops whose numpy semantics raise (div, mod, fmod by zero) or need care stay in
    # the interpreter
    return name in {"nn.neg", "nn.abs", "nn.add", "nn.sub", "nn.mul", "nn.relu", "nn.sign", "nn.maximum",
                    "nn.minimum", "nn.eq", "nn.ne", "nn.lt", "nn.le", "nn.gt", "nn.ge", "nn.where", "nn.clip",
                    "nn.prelu", "nn.bitwise_and", "nn.bitwise_or", "nn.bitwise_xor", "nn.bitwise_not",
                    "nn.shift_left", "nn.shift_right"}


def _int_shrink_fits(op) -> bool:
    """Integer shrink computes in f64 and converts back; numpy's out-of-range float->int
    conversions are platform-defined, so only attributes that keep every result in range
    (0 <= bias <= lambd + 1: results lie in (-1, x] or [x, 1)) and types f64 holds exactly
    compile; the rest runs in the interpreter."""
    d = op.operands[0].type.dtype
    lambd, bias = op.attrs["lambd"], op.attrs["bias"]
    return d.bits <= 32 and 0.0 <= bias <= lambd + 1.0


@emitter(*ELEMENTWISE)
def emit_elementwise(k, op):
    fn = scalar_fn(op)
    ins = list(op.operands)
    in_dtypes = [v.type.dtype for v in ins]
    if op.opdef.name == "nn.where":
        in_dtypes = [ins[1].type.dtype] * 3        # the compute type follows the branches
    emit_map(k, op, op.results[0], ins, fn, in_dtypes)


emit_elementwise.supports = _supports
