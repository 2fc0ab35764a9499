"""The LLVM backend's f32 math (kernels/mathf.py) and the elementwise kernels built on it.

Accuracy: every f32 function is swept over the whole float range -- every 2^11-th bit pattern
(all signs and exponents, NaNs, infinities and denormals included), 2^20 random bit patterns
and a dense random sample of the range where the function varies -- on each runnable target,
and compared with the f64 reference (numpy/scipy in f64, rounded to f32). The error is the
distance in f32 steps (ulps) between our result and the rounded reference; the limit is 2 ulp
for every function (`test_zz_accuracy_report` prints the max per function and target, e.g.
`pytest tests/test_llvm_math.py -k report -s`). NaN must come out exactly where the reference
has NaN. Special values (0, -0, +-inf, NaN, denormals, the overflow and underflow boundaries)
must equal numpy's own float32 results bit for bit (any NaN payload), with one exception:
scipy's float32 expit (nn.sigmoid's reference) underflows to 0 below x = -88.7 where the true
value is a denormal; the kernel gives the f64 reference's value there.

Op kernels against the interpreter: floats compare with rtol 1e-5 (f32: the interpreter's own
numpy float32 functions are a few ulps off the true value too, and the kernels may evaluate
another formula, e.g. gelu's erfc tail), 1e-12 for f64 (libm), 1e-2 for f16/bf16 (both round
one f32 result to their 8- or 11-bit mantissa, which may differ by one of their ulps); results
that are 0, +-inf or NaN must match exactly (sign of zero included where the op is a pure
select/multiply); integers and bools must be equal.

Assembly: the f32 math must vectorize with no calls left, on targets this CPU cannot run too:
zmm registers for AVX-512, v*.4s (and v*.2d for the functions that compute in f64) for NEON.
"""
from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import pytest
from scipy import special

import ckir
from ckir import dtypes as dt
from ckir.backends.llvm.codegen import find_emitter
from ckir.backends.llvm.target import NAMES, runnable
from opcheck import one_op_module

TARGETS = [t for t in NAMES if runnable(t)]
RESULTS: dict = {}          # (function, target) -> max ulp, printed by test_zz_accuracy_report


def _logaddexp0(x):
    return np.logaddexp(0, x)


# f32 function -> (op, attrs, f64 reference, numpy/scipy float32 function, dense range)
FUNCS = {
    "exp": ("nn.exp", {}, np.exp, np.exp, (-104, 89)),
    "log": ("nn.log", {}, np.log, np.log, (0, 10)),
    "tanh": ("nn.tanh", {}, np.tanh, np.tanh, (-10, 10)),
    "sigmoid": ("nn.sigmoid", {}, special.expit, None, (-105, 30)),
    "erf": ("nn.erf", {}, special.erf, special.erf, (-5, 5)),
    "sin": ("nn.sin", {}, np.sin, np.sin, (-100, 100)),
    "cos": ("nn.cos", {}, np.cos, np.cos, (-100, 100)),
    "tan": ("nn.tan", {}, np.tan, np.tan, (-100, 100)),
    "atan": ("nn.atan", {}, np.arctan, np.arctan, (-10, 10)),
    "asin": ("nn.asin", {}, np.arcsin, np.arcsin, (-1, 1)),
    "acos": ("nn.acos", {}, np.arccos, np.arccos, (-1, 1)),
    "sinh": ("nn.sinh", {}, np.sinh, np.sinh, (-90, 90)),
    "cosh": ("nn.cosh", {}, np.cosh, np.cosh, (-90, 90)),
    "asinh": ("nn.asinh", {}, np.arcsinh, np.arcsinh, (-10, 10)),
    "acosh": ("nn.acosh", {}, np.arccosh, np.arccosh, (1, 10)),
    "atanh": ("nn.atanh", {}, np.arctanh, np.arctanh, (-1, 1)),
    "softplus (log1p)": ("nn.softplus", {}, _logaddexp0, _logaddexp0, (-100, 100)),
    # elu with alpha = 1 is expm1 for x <= 0 and x itself above
    "expm1 (elu)": ("nn.elu", {"alpha": 1.0}, lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
                    lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))), (-20, 1)),
}

SPECIALS = np.array(
    [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1.1754942e-38, 1.1754944e-38, -1.1754944e-38,
     3.4028235e38, -3.4028235e38, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 88.72283, 88.722839, 88.72284, 89.0,
     -87.33654, -103.97207, -103.97208, -103.97209, -104.0, 9.0, 9.1, -9.1, 20.0, 44.5, -44.5, 3.9, 4.1,
     -4.1, -6.0, 0.921875, 1.0000001, 0.99999994, -0.99999994, 1e-8, -1e-8, 1e30, -1e30, 89.41599, 89.416,
     -89.416, 1e-20, 1.5707964, 3.1415927, 1e5, 16367173 * 2.0 ** 72], np.float32)


def _kernel(name, attrs, target, n_in=1, dtype="f32"):
    g, b = ckir.new_graph("main", {f"x{i}": ckir.TensorType(["n"], dtype) for i in range(n_in)})
    op = b.create(ckir.get_op(name), list(g.inputs), attrs)
    g.set_outputs(op.results, ["y"])
    m = ckir.Module("t")
    m.add_graph(g)
    f = ckir.compile(m, backend="llvm", target=target, cache=False)
    return lambda *xs: f(*xs)["y"]


def _order(a):
    """f32 values -> integers in the same order, one apart per f32 step (+0 and -0 both 0)."""
    i = a.view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF), i)


def ulp_error(got, ref64):
    """Per element: distance in f32 steps from the f64 reference rounded to f32 (NaN where the
    reference is NaN), and where NaN appears on one side only."""
    with np.errstate(over="ignore", invalid="ignore"):
        ref = ref64.astype(np.float32)
    nan = np.isnan(ref)
    d = np.abs(_order(got) - _order(ref))
    d[nan] = 0
    return d, np.isnan(got) != nan


def sweep_inputs(lo, hi):
    r = np.random.default_rng(12345)
    pats = np.arange(0, 2 ** 32, 2 ** 11, dtype=np.uint64).astype(np.uint32)
    rand = r.integers(0, 2 ** 32, 2 ** 20, dtype=np.uint64).astype(np.uint32)
    dense = r.uniform(lo, hi, 2 ** 20).astype(np.float32)
    return np.concatenate([pats.view(np.float32), rand.view(np.float32), dense, SPECIALS])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("fname", list(FUNCS))
def test_f32_accuracy_over_the_float_range(fname, target):
    op, attrs, ref, _, (lo, hi) = FUNCS[fname]
    x = sweep_inputs(lo, hi)
    got = _kernel(op, attrs, target)(x)
    with np.errstate(all="ignore"):
        d, nan_bad = ulp_error(got, ref(x.astype(np.float64)))
    assert not nan_bad.any(), f"NaN mismatch at {x[nan_bad][:5]}: got {got[nan_bad][:5]}"
    i = int(np.argmax(d))
    RESULTS[(fname, target)] = (int(d[i]), float(x[i]))
    assert d[i] <= 2, f"{fname}: {d[i]} ulp at x = {x[i]!r} (got {got[i]!r}, want {ref(np.float64(x[i]))!r})"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("fname", list(FUNCS))
def test_f32_special_values_as_numpy(fname, target):
    op, attrs, ref, np32, _ = FUNCS[fname]
    x = SPECIALS
    got = _kernel(op, attrs, target)(x)
    with np.errstate(all="ignore"):
        want = np32(x) if np32 is not None else ref(x.astype(np.float64)).astype(np.float32)
    want = np.asarray(want, np.float32)
    special_ = ~np.isfinite(want) | (want == 0) | ~np.isfinite(got) | (got == 0)
    same = (np.isnan(got) & np.isnan(want)) | ((got == want) & (np.signbit(got) == np.signbit(want)))
    bad = special_ & ~same
    assert not bad.any(), list(zip(x[bad], got[bad], want[bad]))


def test_sigmoid_follows_the_true_value_where_scipy_float32_underflows():
    x = np.array([-90.0, -100.0, -103.9], np.float32)
    got = _kernel("nn.sigmoid", {}, TARGETS[-1])(x)
    assert (special.expit(x) == 0).all()
    np.testing.assert_array_equal(got, special.expit(x.astype(np.float64)).astype(np.float32))


# --- pow ---------------------------------------------------------------------------------------------
POW_SPECIALS = np.array(
    [0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 3.0, -3.0, 0.5, -0.5, np.inf, -np.inf, np.nan, 1e-45, -1e-45,
     1.17549435e-38, 3.4028235e38, -3.4028235e38, 2 ** 23 + 1, -(2 ** 23 + 1), 2 ** 24, 2 ** 24 + 2, 1.5,
     0.999999, 1.000001, 127, 128, -149, -150, 1e10, -1e10], np.float32)


def _pow_grid():
    r = np.random.default_rng(7)
    def pats(k):
        return np.arange(0, 2 ** 32, 2 ** 32 // k, dtype=np.uint64).astype(np.uint32).view(np.float32)
    a = np.concatenate([POW_SPECIALS, pats(1500),
                        r.uniform(0, 4, 300).astype(np.float32)])
    b = np.concatenate([POW_SPECIALS, pats(600),
                        r.integers(-200, 200, 200).astype(np.float32), r.uniform(-40, 40, 200).astype(np.float32)])
    A, B = np.meshgrid(a, b)
    return A.ravel().copy(), B.ravel().copy()


def _is_snan(x):
    u = x.view(np.uint32) & 0x7FFFFFFF
    return (u > 0x7F800000) & ((u & 0x00400000) == 0)


@pytest.mark.parametrize("target", TARGETS)
def test_pow_accuracy_and_special_cases(target):
    """a ** b within 2 ulp of f64 pow on a grid of bit patterns; every result numpy's float32
    power gives as 0, +-1, +-inf or NaN (negative bases with integer exponents, zeros, infs,
    NaN ** 0, 1 ** NaN, and signaling NaNs, which C's powf keeps NaN) is matched bit for bit."""
    a, b = _pow_grid()
    got = _kernel("nn.pow", {}, target, n_in=2)(a, b)
    with np.errstate(all="ignore"):
        np32 = np.power(a, b)
        d, nan_bad = ulp_error(got, np.power(a.astype(np.float64), b.astype(np.float64)))
    snan = _is_snan(a) | _is_snan(b)       # f64 conversion quiets them: compare with numpy f32
    assert not (nan_bad & ~snan).any()
    i = int(np.argmax(np.where(snan, 0, d)))
    RESULTS[("pow", target)] = (int(d[i]), (float(a[i]), float(b[i])))
    assert d[i] <= 2, (a[i], b[i], got[i])
    special_ = ~np.isfinite(np32) | (np32 == 0) | (np.abs(np32) == 1) | snan
    same = (np.isnan(got) & np.isnan(np32)) | (got.view(np.uint32) == np32.view(np.uint32))
    bad = special_ & ~same
    assert not bad.any(), list(zip(a[bad][:8], b[bad][:8], got[bad][:8], np32[bad][:8]))


def test_pow_of_two_is_exact_at_the_underflow_boundary():
    a = np.full(4, 2.0, np.float32)
    b = np.array([-149, -150, 127, 128], np.float32)
    got = _kernel("nn.pow", {}, TARGETS[-1], n_in=2)(a, b)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(got, np.power(a, b))


def test_zz_accuracy_report():
    """Prints the max ulp error per function and target (run with -s to see it)."""
    if not RESULTS:
        pytest.skip("run together with the accuracy tests")
    lines = ["max error vs the f64 reference rounded to f32 (ulps):"]
    for (fname, target), (err, where) in sorted(RESULTS.items()):
        lines.append(f"  {fname:<18} {target:<7} {err} ulp   (at {where})")
    print("\n" + "\n".join(lines))
    assert max(e for e, _ in RESULTS.values()) <= 2


# --- the elementwise kernels against the interpreter -------------------------------------------------------
TOL = {dt.f32: 1e-5, dt.f64: 1e-12, dt.f16: 1e-2, dt.bf16: 1e-2}
FLOATS = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16]
INTS = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]

UNARY_FLOAT = ["nn.asin", "nn.acos", "nn.atan", "nn.tan", "nn.sinh", "nn.cosh", "nn.asinh", "nn.acosh",
               "nn.atanh", "nn.softplus", "nn.softsign", "nn.mish", "nn.hard_swish", "nn.exp", "nn.log",
               "nn.tanh", "nn.sigmoid", "nn.silu", "nn.erf", "nn.sin", "nn.cos", "nn.isnan"]
WITH_ATTRS = [("nn.elu", {}), ("nn.elu", {"alpha": 0.3}), ("nn.selu", {}), ("nn.selu", {"alpha": 2.0, "gamma": 3.0}),
              ("nn.celu", {}), ("nn.celu", {"alpha": 2.0}), ("nn.leaky_relu", {}), ("nn.leaky_relu", {"alpha": 0.2}),
              ("nn.thresholded_relu", {}), ("nn.thresholded_relu", {"alpha": 0.1}), ("nn.hard_sigmoid", {}),
              ("nn.hard_sigmoid", {"alpha": 0.5, "beta": 0.4}), ("nn.shrink", {}),
              ("nn.shrink", {"lambd": 0.3, "bias": 0.3}),
              ("nn.isinf", {}), ("nn.isinf", {"detect_negative": False}), ("nn.isinf", {"detect_positive": False}),
              ("nn.gelu", {}), ("nn.gelu", {"approximate": "tanh"})]
BINARY_FLOAT = ["nn.prelu", "nn.fmod", "nn.mod", "nn.pow", "nn.maximum", "nn.minimum"]
BINARY_INT = ["nn.bitwise_and", "nn.bitwise_or", "nn.bitwise_xor", "nn.shift_left", "nn.shift_right", "nn.prelu"]


def compare(name, arrays, attrs, target, exact_specials=True):
    m, op, xs = one_op_module(ckir.get_op(name), arrays, attrs)
    assert find_emitter(op) is not None, f"{name} {attrs} {[a.dtype for a in arrays]} has no kernel"
    want = ckir.compile(m)(*xs)["y0"]
    got = ckir.compile(m, backend="llvm", target=target, cache=False)(*xs)["y0"]
    assert got.dtype == want.dtype and got.shape == want.shape
    d = dt.dtype(want.dtype)
    if d not in TOL:
        np.testing.assert_array_equal(got, want)
        return
    g, w = got.astype(np.float64), want.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
    ok = np.isnan(w) | np.isclose(g, w, rtol=TOL[d], atol=TOL[d])
    assert ok.all(), (name, attrs, np.argwhere(~ok)[:5].tolist(), g[~ok][:5], w[~ok][:5])
    if exact_specials:
        spec = ~np.isfinite(w) | ~np.isfinite(g)
        assert np.array_equal(g[spec & ~np.isnan(w)], w[spec & ~np.isnan(w)])


def float_inputs(n, dtype, seed=0, scale=3.0):
    r = np.random.default_rng(seed)
    x = (r.standard_normal(n) * scale).astype(np.float32)
    x[: min(n, 6)] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 0.5][: min(n, 6)]
    return x.astype(dtype)


SIZES = [1, 3, 17, 1000]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", UNARY_FLOAT)
def test_unary_float_kernels(name, dtype, target):
    lo_hi = {"nn.asin": 1.0, "nn.acos": 1.0, "nn.atanh": 1.0}
    for n in SIZES:
        x = float_inputs(n, dtype, seed=n, scale=lo_hi.get(name, 3.0) * 1.2)
        if name == "nn.acosh":
            x = (np.abs(x.astype(np.float32)) + np.float32(0.9)).astype(dtype)
        compare(name, [x], {}, target)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name,attrs", WITH_ATTRS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(WITH_ATTRS)])
def test_activation_kernels_with_attributes(name, attrs, dtype, target):
    for n in SIZES:
        compare(name, [float_inputs(n, dtype, seed=n)], attrs, target)


def _binary_inputs(name, sa, sb, dtype, seed):
    r = np.random.default_rng(seed)
    a = (r.standard_normal(sa) * 4).astype(np.float32)
    c = (r.standard_normal(sb) * 4).astype(np.float32)
    if name == "nn.pow":
        a = np.abs(a) + np.float32(0.1) if a.ndim else np.float32(abs(a) + 0.1)
        c = np.clip(c, -6, 6)
    return np.asarray(a).astype(dtype), np.asarray(c).astype(dtype)


BROADCAST = [((1,), (1,)), ((3,), (3,)), ((17,), (17,)), ((1000,), (1000,)), ((17, 3), (3,)),
             ((3, 1, 17), (5, 1)), ((1000,), ()), ((), ()), ((2, 1), (1, 1000)), ((0, 3), (3,))]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", BINARY_FLOAT)
def test_binary_float_kernels_broadcasting(name, dtype, target):
    for i, (sa, sb) in enumerate(BROADCAST):
        a, c = _binary_inputs(name, sa, sb, dtype, i)
        compare(name, [a, c], {}, target)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", ["nn.prelu", "nn.fmod", "nn.mod", "nn.pow", "nn.maximum", "nn.minimum"])
def test_binary_float_special_values_exact(name, dtype, target):
    """Every pair of special values: NaN where the reference has NaN, and bit-identical zeros
    (with their sign) and infinities -- e.g. numpy's mod gives a zero the divisor's sign,
    maximum(+0, -0) is -0 for f32 but +0 for numpy's float16 loop."""
    sp = np.array([0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 3.0, -3.0, 1e-45, np.inf, -np.inf, np.nan, 1e30, -1e30, 7.0, -0.5],
                  np.float32)
    A, B = np.meshgrid(sp, sp)
    with np.errstate(over="ignore"):
        a, b = A.ravel().astype(dtype), B.ravel().astype(dtype)
    m, _op, xs = one_op_module(ckir.get_op(name), [a, b], {})
    with np.errstate(all="ignore"):
        want = ckir.compile(m)(*xs)["y0"].astype(np.float64)
    got = ckir.compile(m, backend="llvm", target=target, cache=False)(*xs)["y0"].astype(np.float64)
    same = (np.isnan(got) & np.isnan(want)) | ((got == want) & (np.signbit(got) == np.signbit(want)))
    if name == "nn.pow":
        same |= np.isclose(got, want, rtol=TOL[dt.dtype(a.dtype)], atol=0)
    assert same.all(), list(zip(a[~same][:6], b[~same][:6], got[~same][:6], want[~same][:6]))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name,attrs", [("nn.elu", {}), ("nn.selu", {}), ("nn.celu", {}), ("nn.leaky_relu", {}),
                                        ("nn.thresholded_relu", {}), ("nn.hard_sigmoid", {}), ("nn.hard_swish", {}),
                                        ("nn.shrink", {"lambd": 0.5, "bias": 0.5}), ("nn.softsign", {}),
                                        ("nn.clip", {"min": 0.0, "max": 1.0}), ("nn.clip", {"min": -0.0})])
def test_activation_zero_signs_and_specials_exact(name, attrs, dtype, target):
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, -3.0, 3.0, 1.0, -1.0, 0.5, -0.5], np.float32)
    m, _op, xs = one_op_module(ckir.get_op(name), [x.astype(dtype)], attrs)
    want = ckir.compile(m)(*xs)["y0"].astype(np.float64)
    got = ckir.compile(m, backend="llvm", target=target, cache=False)(*xs)["y0"].astype(np.float64)
    spec = (want == 0) | ~np.isfinite(want)
    same = (np.isnan(got) & np.isnan(want)) | ((got == want) & (np.signbit(got) == np.signbit(want)))
    assert same[spec].all(), list(zip(x[spec & ~same], got[spec & ~same], want[spec & ~same]))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", INTS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", BINARY_INT)
def test_integer_bitwise_and_shift_kernels(name, dtype, target):
    info = np.iinfo(dtype)
    bits = info.bits
    r = np.random.default_rng(bits)
    for i, (sa, sb) in enumerate(BROADCAST):
        a = r.integers(info.min, info.max, sa, dtype=dtype, endpoint=True)
        if name.startswith("nn.shift"):      # in range, and out of range both ways
            c = r.integers(-3 if info.min < 0 else 0, bits + 3, sb).astype(dtype)
        else:
            c = r.integers(info.min, info.max, sb, dtype=dtype, endpoint=True)
        compare(name, [np.asarray(a), np.asarray(c)], {}, target)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", INTS, ids=lambda d: np.dtype(d).name)
def test_bitwise_not(dtype, target):
    info = np.iinfo(dtype)
    for n in SIZES:
        x = np.random.default_rng(n).integers(info.min, info.max, n, dtype=dtype, endpoint=True)
        compare("nn.bitwise_not", [x], {}, target)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.uint8, np.uint16, np.uint32],
                         ids=lambda d: np.dtype(d).name)
def test_integer_shrink(dtype, target):
    info = np.iinfo(dtype)
    x = np.random.default_rng(0).integers(info.min, info.max, 1000, dtype=dtype, endpoint=True)
    x[:6] = np.array([0, 1, 2, info.max, info.min, info.max - 1]).astype(dtype)
    for attrs in ({"lambd": 1.5, "bias": 1.0}, {"lambd": 0.5, "bias": 0.0}, {"lambd": 2.0, "bias": 2.7},
                  {"lambd": -1.0, "bias": 0.0}):
        compare("nn.shrink", [x], attrs, target)


def test_unsafe_integer_ops_stay_in_the_interpreter():
    """Integer div/mod/fmod would have to report division by zero (the reference raises), and
    integer shrink whose results could leave the type hits numpy's platform-defined float->int
    conversion: those instances have no kernel, run in the interpreter, and still raise."""
    a = np.array([1, 2, 3], np.int32)
    b = np.array([1, 0, 2], np.int32)
    for name in ("nn.div", "nn.mod", "nn.fmod"):
        m, op, xs = one_op_module(ckir.get_op(name), [a, b], {})
        assert find_emitter(op) is None
        with pytest.raises(ckir.CkirError, match="by zero"):
            ckir.compile(m, backend="llvm", cache=False)(*xs)
    for dtype, attrs in ((np.int64, {}), (np.int32, {"bias": -1.0}), (np.int32, {"lambd": 0.5, "bias": 3.0})):
        m, op, xs = one_op_module(ckir.get_op("nn.shrink"), [np.arange(5, dtype=dtype)], attrs)
        assert find_emitter(op) is None
        got = ckir.compile(m, backend="llvm", cache=False)(*xs)["y0"]
        np.testing.assert_array_equal(got, ckir.compile(m)(*xs)["y0"])


@pytest.mark.parametrize("target", TARGETS)
def test_symbolic_dims_and_large_sizes(target):
    """One compile serves every size (the dim is a runtime value); sizes past one task's grain
    run split over the threads; a chain of the new ops stays one native segment."""
    g, b = ckir.new_graph("main", {"x": ckir.TensorType(["n", 3], "f32"), "s": ckir.TensorType([3], "f32")})
    x, s = g.inputs
    y = b.nn.prelu(b.nn.mish(b.nn.atan(x)), s)
    y = b.nn.hard_swish(b.nn.softplus(b.nn.sinh(y)))
    g.set_outputs([y, b.nn.isinf(b.nn.cosh(b.nn.mul(x, 30.0)))], ["y", "isinf"])
    m = ckir.Module()
    m.add_graph(g)
    f = ckir.compile(m, backend="llvm", target=target, cache=False)
    assert all(st.kind in ("native", "source") for st in f._run.plan.steps)
    ref = ckir.compile(m)
    for n in (1, 17, 100003):
        xs = (np.random.default_rng(n).standard_normal((n, 3)).astype(np.float32) * 3,
              np.array([0.1, -0.2, 0.3], np.float32))
        got, want = f(*xs), ref(*xs)
        np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got["isinf"], want["isinf"])


# --- the code: vectorized, no calls ---------------------------------------------------------------------------
def _asm(name, target, attrs=None, dtype="f32", n_in=1):
    from ckir.backends.llvm.plan import emit
    g, b = ckir.new_graph("main", {f"x{i}": ckir.TensorType(["n"], dtype) for i in range(n_in)})
    op = b.create(ckir.get_op(name), list(g.inputs), attrs or {})
    g.set_outputs(op.results, ["y"])
    m = ckir.Module("t")
    m.add_graph(g)
    return emit(m, target=target, kind="asm")


def _calls(asm):
    """Functions called (or tail-called) other than the thread pool's entry."""
    targets = re.findall(r"^\s*(?:callq?|jmpq?|bl|b)\s+\*?([A-Za-z_][\w.@]*)", asm, re.MULTILINE)
    return set(targets) - {"ckir_parallel_for", "ckir_parallel_for@PLT"}


HOT = ["nn.exp", "nn.tanh", "nn.erf", "nn.gelu", "nn.sigmoid", "nn.log", "nn.silu"]
VIA_F64 = ["nn.sin", "nn.cos", "nn.tan", "nn.atan", "nn.asin", "nn.acos", "nn.sinh", "nn.cosh", "nn.asinh",
           "nn.acosh", "nn.atanh", "nn.softplus", "nn.elu", "nn.mish", "nn.hard_swish"]


@pytest.mark.parametrize("name", HOT + VIA_F64)
def test_avx512_code_is_zmm_and_has_no_calls(name):
    asm = _asm(name, "avx512")
    assert "zmm" in asm and re.search(r"v\w+ps\s.*%zmm", asm), f"{name}: no zmm arithmetic"
    assert not _calls(asm), f"{name}: calls {_calls(asm)}"


@pytest.mark.parametrize("name", HOT + VIA_F64)
def test_neon_code_is_vectorized_and_has_no_calls(name):
    asm = _asm(name, "neon")
    pattern = r"v\d+\.4s" if name in HOT else r"v\d+\.(?:4s|2d)"
    assert re.search(r"\bf(?:mla|mul|add|div)\s+" + pattern, asm), f"{name}: no vector arithmetic"
    assert not _calls(asm), f"{name}: calls {_calls(asm)}"


@pytest.mark.parametrize("target", ["avx2", "scalar"])
def test_runnable_targets_have_no_calls_either(target):
    for name in HOT + VIA_F64:
        assert not _calls(_asm(name, target)), name


def test_pow_is_vectorized():
    asm = _asm("nn.pow", "avx512", n_in=2)
    assert re.search(r"v\w+pd\s.*%zmm", asm) and not _calls(asm)
