"""Math functions for kernels, on compute-type scalars (f32 or f64).

These use LLVM intrinsics and libm for now: exact to libm's accuracy but not vectorized for the
transcendental ones. Vectorizable polynomial versions replace them per function as they land
(each checked against the f64 reference over wide random ranges and special values).
"""
from __future__ import annotations

import llvmlite.ir as ir

from ..codegen import F32


def _intrinsic(s, name, x, n=1):
    t = x.type
    suffix = "f32" if t == F32 else "f64"
    fn = s.cg.declare(f"llvm.{name}.{suffix}", ir.FunctionType(t, [t] * n))
    return fn


def _call1(s, name, x):
    return s.b.call(_intrinsic(s, name, x), [x])


def _libm(s, base, x):
    t = x.type
    name = base + "f" if t == F32 else base
    return s.b.call(s.cg.declare(name, ir.FunctionType(t, [t])), [x])


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


def exp(s, x):
    return _call1(s, "exp", x)


def log(s, x):
    return _call1(s, "log", x)


def sin(s, x):
    return _call1(s, "sin", x)


def cos(s, x):
    return _call1(s, "cos", x)


def pow(s, a, c):
    t = a.type
    fn = s.cg.declare(f"llvm.pow.{'f32' if t == F32 else 'f64'}", ir.FunctionType(t, [t, t]))
    return s.b.call(fn, [a, c])


def tanh(s, x):
    return _libm(s, "tanh", x)


def erf(s, x):
    return _libm(s, "erf", x)


def sigmoid(s, x):
    one = ir.Constant(x.type, 1.0)
    return s.b.fdiv(one, s.b.fadd(one, exp(s, s.b.fneg(x))))


