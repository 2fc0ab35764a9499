"""Fused ops on the LLVM backend: every fusion case of test_fuse.py and random elementwise graphs,
fused vs unfused, on the interpreter and on each runnable target.

What must hold, and why:
- fused == unfused on the interpreter, exactly: the interpreter runs a fused op's body op by op;
- fused == unfused on the llvm backend, exactly (NaNs at the same places): the fused kernel
  evaluates the same scalar functions as the single-op kernels and rounds every intermediate to
  its declared dtype (f16/bf16 through their storage format), so only the loop nest differs;
- llvm vs interpreter within the single-op tolerances of test_llvm_ops.py (rtol=atol 1e-5 f32,
  1e-12 f64, 1e-2 f16/bf16: kernels use other ~1 ulp formulas for transcendental functions),
  checked on the fixed, well-conditioned cases only: random chains can amplify a 1-ulp
  difference without bound (a - b with a ~ b), which says nothing about fusion.
"""
import io

import numpy as np
import pytest
from ckir.backends.llvm.target import NAMES, runnable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuse import chain
from test_properties import graphs

import ckir
from ckir import Module, Sym, TensorType, new_graph
from ckir import dtypes as dt

TARGETS = [t for t in NAMES if runnable(t)]
TOL = {dt.f32: 1e-5, dt.f64: 1e-12, dt.f16: 1e-2, dt.bf16: 1e-2}


def llvm(m, xs, target):
    f = ckir.compile(m, backend="llvm", target=target, cache=False)
    return f(*xs), f._run.plan


def fused_kinds(plan):
    return [kind for op, kind in plan.kinds.items() if op.opdef.name.startswith("fused.")]


def same(got, want):
    for k in want:
        a, b = np.asarray(got[k]), np.asarray(want[k])
        assert a.dtype == b.dtype and a.shape == b.shape, (k, a.dtype, b.dtype, a.shape, b.shape)
        if dt.dtype(b.dtype).is_float:       # via f64: numpy's NaN check misses bfloat16 NaNs
            a, b = a.astype(np.float64), b.astype(np.float64)
        np.testing.assert_array_equal(a, b, err_msg=k)


def close(got, want):
    for k in want:
        a, b = np.asarray(got[k]), np.asarray(want[k])
        assert a.dtype == b.dtype and a.shape == b.shape
        d = dt.dtype(b.dtype)
        if d in TOL:
            np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=TOL[d], atol=TOL[d])
        else:
            np.testing.assert_array_equal(a, b)


def check(make, xs, targets=TARGETS, pipeline="fuse", expect_native=True, tolerant=True):
    """Fused vs unfused: interpreter (exact), llvm per target (exact), llvm vs interpreter."""
    with np.errstate(all="ignore"):
        m = make()
        interp_unfused = ckir.compile(m)(*xs)
        llvm_unfused = {t: llvm(m, xs, t)[0] for t in targets}
        ckir.run_pipeline(m, pipeline)
        ckir.verify(m)
        interp_fused = ckir.compile(m)(*xs)
        same(interp_fused, interp_unfused)
        for t in targets:
            got, plan = llvm(m, xs, t)
            kinds = fused_kinds(plan)
            if expect_native:           # True: some fused op, all native; "all": any number
                assert (kinds or expect_native == "all") and all(k == "native" for k in kinds), kinds
            same(got, llvm_unfused[t])
            if tolerant:
                close(got, interp_unfused)
    return m


# --- the cases of test_fuse.py ------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_chain(target):
    r = np.random.default_rng(0)
    m = check(chain, [r.standard_normal((4, 8)), r.standard_normal(8)], [target])
    assert [op.name for op in m.main].count("fused.elementwise") == 1


def shared_and_costly():
    g, b = new_graph("main", {"x": TensorType([1000, 1], "f32"), "y": TensorType([1, 1000], "f32")})
    x, y = g.inputs
    z = b.nn.add(b.nn.exp(x), y)
    g.set_outputs([b.nn.neg(z), b.nn.abs(z)], ["a", "b"])
    m = Module()
    m.add_graph(g)
    return m


def test_shared_intermediates_and_costly_broadcasts():
    # nothing fuses here (the pass refuses): the llvm results must still agree
    r = np.random.default_rng(1)
    check(shared_and_costly, [r.standard_normal((1000, 1)).astype(np.float32),
                              r.standard_normal((1, 1000)).astype(np.float32)], expect_native=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graphs())
def test_property_graphs_of_test_fuse(case):
    m, inputs, _ = case
    text = m.print()
    check(lambda: ckir.parse(text), inputs, expect_native="all", tolerant=False)


# --- sizes, broadcasting corners, symbolic dims, dtypes ------------------------------------------
SHAPES = [((1,), (1,)), ((3,), (3,)), ((17,), (17,)), ((1000,), (1000,)), ((17, 3), (3,)),
          ((3, 1, 17), (5, 1)), ((1000,), ()), ((), ()), ((2, 1), (1, 1000)), ((0, 3), (3,)),
          ((1, 1), (4, 5)), ((257, 1031), (1031,))]


def gelu_chain(sa, sb, dtype):
    def make():
        g, b = new_graph("main", {"a": TensorType(list(sa), dtype), "b": TensorType(list(sb), dtype)})
        a, c = g.inputs
        h = b.nn.add(b.nn.mul(a, 0.5), c)
        y = b.nn.where(b.nn.gt(h, 0.25), b.nn.gelu(h), b.nn.sub(b.nn.tanh(h), c))
        g.set_outputs([b.nn.mul(y, y)], ["y"])
        m = Module()
        m.add_graph(g)
        return m
    return make


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("sa,sb", SHAPES, ids=str)
def test_sizes_and_broadcasting(sa, sb, target):
    r = np.random.default_rng(2)
    check(gelu_chain(sa, sb, "f32"), [r.standard_normal(sa).astype(np.float32),
                                      r.standard_normal(sb).astype(np.float32)], [target])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", ["f32", "f64", "f16", "bf16"])
def test_float_dtypes_round_each_intermediate(dtype, target):
    r = np.random.default_rng(3)
    npd = dt.dtype(dtype).np
    xs = [(r.standard_normal((33, 70)) * 3).astype(npd), r.standard_normal(70).astype(npd)]
    check(gelu_chain((33, 70), (70,), dtype), xs, [target])


def int_chain(dtype):
    def make():
        g, b = new_graph("main", {"a": TensorType([9, 31], dtype), "b": TensorType([31], dtype)})
        a, c = g.inputs
        h = b.nn.mul(b.nn.add(a, c), 3)
        h = b.nn.where(b.nn.lt(h, c), b.nn.neg(h), b.nn.maximum(h, c))
        h = b.nn.bitwise_xor(b.nn.shift_left(h, 2), b.nn.clip(a, min=-5, max=7))
        f = b.nn.mul(b.nn.cast(h, to="f32"), 0.25)              # int -> float inside the body
        g.set_outputs([b.nn.cast(b.nn.gt(f, 1.0), to=dtype), h], ["y", "h"])
        m = Module()
        m.add_graph(g)
        return m
    return make


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", ["i32", "i64", "i8", "u8"])
def test_integer_chains_wrap_exactly(dtype, target):
    r = np.random.default_rng(4)
    npd = dt.dtype(dtype).np
    lo, hi = (0, 100) if dtype.startswith("u") else (-100, 100)
    xs = [r.integers(lo, hi, (9, 31)).astype(npd), r.integers(lo, hi, 31).astype(npd)]
    check(int_chain(dtype), xs, [target])


@pytest.mark.parametrize("target", TARGETS)
def test_symbolic_dims_one_compile_every_size(target):
    g, b = new_graph("main", {"x": TensorType([Sym("n"), 7], "f32"), "y": TensorType([Sym("n"), 1], "f32")})
    x, y = g.inputs
    g.set_outputs([b.nn.sigmoid(b.nn.sub(b.nn.exp(x), y))], ["z"])
    m = Module()
    m.add_graph(g)
    ckir.run_pipeline(m, "fuse")
    f = ckir.compile(m, backend="llvm", target=target, cache=False)
    assert fused_kinds(f._run.plan) == ["native"]
    for n in (1, 5, 300):
        x = np.random.default_rng(n).standard_normal((n, 7)).astype(np.float32)
        y = np.random.default_rng(1).standard_normal((n, 1)).astype(np.float32)
        np.testing.assert_allclose(f(x, y)["z"], 1 / (1 + np.exp(-(np.exp(x) - y))), rtol=1e-5, atol=1e-6)


def test_unsupported_body_ops_run_in_the_interpreter():
    """Integer division has no kernel (numpy raises on zero): the whole fused op falls back."""
    def make():
        g, b = new_graph("main", {"a": TensorType([5], "i32"), "b": TensorType([5], "i32")})
        a, c = g.inputs
        g.set_outputs([b.nn.add(b.nn.div(a, c), a)], ["y"])
        m = Module()
        m.add_graph(g)
        return m
    xs = [np.arange(5, dtype=np.int32), np.array([1, 2, 3, 4, 5], np.int32)]
    m = check(make, xs, expect_native=False)
    assert fused_kinds(llvm(m, xs, TARGETS[0])[1]) == ["ref"]


# --- random elementwise graphs --------------------------------------------------------------------
FLOAT_UNARY = ["neg", "abs", "exp", "tanh", "sigmoid", "relu", "silu", "gelu", "sin", "floor", "sign",
               "sqrt", "log", "erf", "softplus", "reciprocal"]
FLOAT_BINARY = ["add", "sub", "mul", "div", "maximum", "minimum", "pow"]
INT_UNARY = ["neg", "abs", "relu", "sign", "bitwise_not"]
INT_BINARY = ["add", "sub", "mul", "maximum", "minimum", "bitwise_and", "bitwise_or", "bitwise_xor"]
COMPARE = ["eq", "ne", "lt", "le", "gt", "ge"]
FLOATS = ["f32", "f64", "f16", "bf16"]
INTS = ["i32", "i64", "i8"]


ROW = ["softmax", "log_softmax", "layer_norm", "rms_norm"]


@st.composite
def elementwise_graphs(draw, level2=False):
    """(module, inputs): a random DAG of natively supported elementwise ops over broadcasting
    shapes and mixed dtypes (casts between them, compares feeding where), several outputs.
    With `level2`, also normalizations (mostly over the last axis; over the first they run in
    the interpreter) with optional scale/bias, and matmuls by a constant square matrix."""
    full = draw(st.sampled_from([(5,), (3, 4), (2, 3, 17), (1, 40), (64, 33)]))
    symbolic = draw(st.booleans())
    n_in = draw(st.integers(1, 4))
    types = {}
    for i in range(n_in):
        keep = len(full) - draw(st.integers(0, len(full)))            # leading dims dropped
        shape = [d if draw(st.booleans()) or d == 1 else 1 for d in full[len(full) - keep:]]
        if symbolic and shape and shape[-1] == full[-1]:
            shape[-1] = Sym("w")
        types[f"x{i}"] = TensorType(shape, draw(st.sampled_from(FLOATS + INTS)))
    g, b = new_graph("main", types)
    vals = list(g.inputs)

    def pick(pred=lambda v: True):
        c = [v for v in vals if pred(v)]
        return draw(st.sampled_from(c)) if c else None

    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["unary", "binary", "binary", "cast", "where", "const"]
                                    + ["row", "row", "row", "matmul", "matmul", "matmul"] * level2))
        a = pick()
        d = a.type.dtype
        last = a.type.shape[-1] if a.type.rank else None
        try:
            if kind == "row" and d.is_float and a.type.rank:
                name = draw(st.sampled_from(ROW))
                axis = draw(st.sampled_from([-1, -1, -1, 0]))
                params = []
                if name.endswith("norm") and type(last) is int:
                    params = [b.constant((1 + 0.2 * np.random.default_rng(last).standard_normal(last)).astype(d.np))
                              for _ in range(draw(st.integers(0, 2 if name == "layer_norm" else 1)))]
                vals.append(b.op("nn." + name, a, *params, axis=axis))
            elif kind == "matmul" and d.is_float and type(last) is int:
                w = (np.random.default_rng(last).standard_normal((last, last)) / np.sqrt(last)).astype(d.np)
                vals.append(b.nn.matmul(a, b.constant(w)))
            elif kind == "unary" and not d.is_bool:
                names = FLOAT_UNARY if d.is_float else INT_UNARY
                vals.append(b.op("nn." + draw(st.sampled_from(names)), a))
            elif kind == "binary" and not d.is_bool:
                c = pick(lambda v, d=d: v.type.dtype is d)
                names = FLOAT_BINARY if d.is_float else INT_BINARY
                vals.append(b.op("nn." + draw(st.sampled_from(names)), a, c))
            elif kind == "cast":
                # no float -> int casts: out-of-range conversions are platform-defined in numpy
                to = draw(st.sampled_from(FLOATS + ([] if d.is_float else INTS)))
                vals.append(b.nn.cast(a, to=to))
            elif kind == "where" and not d.is_bool:
                c = pick(lambda v, d=d: v.type.dtype is d)
                cond = b.op("nn." + draw(st.sampled_from(COMPARE)), a, c)
                x, y = pick(lambda v, d=d: v.type.dtype is d), pick(lambda v, d=d: v.type.dtype is d)
                vals.append(b.nn.where(cond, x, y))
            elif kind == "const" and not d.is_bool:
                k = draw(st.sampled_from([0.5, 2.0, -3.0])) if d.is_float else draw(st.sampled_from([2, -3, 7]))
                vals.append(b.op("nn." + draw(st.sampled_from(["add", "mul"])), a, k))
        except ckir.ShapeError:
            pass                                  # shapes that do not broadcast
    made = vals[n_in:] or vals
    outs = draw(st.lists(st.sampled_from(made), min_size=1, max_size=3, unique_by=id))
    g.set_outputs(outs, [f"y{i}" for i in range(len(outs))])
    m = Module("random")
    m.add_graph(g)
    w = draw(st.sampled_from([1, full[-1]]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    inputs = []
    for t in types.values():
        shape = [w if type(x) is Sym else x for x in t.shape]
        if t.dtype.is_float:
            inputs.append((rng.standard_normal(shape) * 2).astype(t.dtype.np))
        else:
            inputs.append(rng.integers(-60, 60, shape).astype(t.dtype.np))
    return m, inputs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(elementwise_graphs(), st.sampled_from(TARGETS))
def test_random_elementwise_graphs(case, target):
    m, inputs = case
    text = m.print()
    check(lambda: ckir.parse(text), inputs, [target], expect_native="all", tolerant=False)


def loosely_equal(got, want):
    """NaNs at the same places, other values within 1e-3 (f32/f64) or 3e-2 (f16/bf16) relative
    and absolute: a normalization's sum order differs between the fused and unfused kernels,
    and random ops after it may amplify that last-bit difference."""
    for k in want:
        a, b = np.asarray(got[k]), np.asarray(want[k])
        assert a.dtype == b.dtype and a.shape == b.shape
        d = dt.dtype(b.dtype)
        if not d.is_float:
            np.testing.assert_array_equal(a, b, err_msg=k)
            continue
        t = 3e-2 if d in (dt.f16, dt.bf16) else 1e-3
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=t, atol=t, err_msg=k)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(elementwise_graphs(level2=True), st.sampled_from(TARGETS))
def test_random_graphs_with_normalizations_and_matmuls(case, target):
    m, inputs = case
    text = m.print()
    with np.errstate(all="ignore"):
        m = ckir.parse(text)
        want_i, want_l = ckir.compile(m)(*inputs), llvm(m, inputs, target)[0]
        ckir.run_pipeline(m, "fuse{level=2}")
        ckir.verify(m)
        same(ckir.compile(m)(*inputs), want_i)
        loosely_equal(llvm(m, inputs, target)[0], want_l)


# --- level 2: normalizations with prologue/epilogue, matmul epilogues -------------------------------
# fused.reduction sums in another order than nn.softmax/nn.*_norm's kernels (both in f64 for
# f32): fused vs unfused agree within TOL, not bit for bit; fused.matmul runs the same matmul
# kernel and the same scalar epilogue, so it agrees exactly
MM_TOL = {dt.f32: 1e-4, dt.f64: 1e-12, dt.f16: 2e-2, dt.bf16: 3e-2}   # K-long sums vs numpy's


def check2(make, xs, targets=TARGETS, kinds=("fused.reduction",), exact_llvm=False, tol=TOL):
    with np.errstate(all="ignore"):
        m = make()
        interp_unfused = ckir.compile(m)(*xs)
        llvm_unfused = {t: llvm(m, xs, t)[0] for t in targets}
        ckir.run_pipeline(m, "fuse{level=2}")
        ckir.verify(m)
        text = m.print()
        assert ckir.parse(text).print() == text
        names = [op.name for op in m.main]
        for kind in kinds:
            assert kind in names, (kind, names)
        same(ckir.compile(m)(*xs), interp_unfused)
        for t in targets:
            got, plan = llvm(m, xs, t)
            assert all(k == "native" for k in fused_kinds(plan)), plan.kinds
            if exact_llvm:
                same(got, llvm_unfused[t])
            else:
                close_tol(got, llvm_unfused[t], TOL)
            close_tol(got, interp_unfused, tol)
    return m


def close_tol(got, want, tol):
    for k in want:
        a, b = np.asarray(got[k]), np.asarray(want[k])
        assert a.dtype == b.dtype and a.shape == b.shape
        d = dt.dtype(b.dtype)
        t = tol.get(d, 0)
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=t, atol=t, err_msg=k)


def module(types, build):
    g, b = new_graph("main", types)
    outs = build(b, *g.inputs)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    g.set_outputs(list(outs), [f"y{i}" for i in range(len(outs))])
    m = Module()
    m.add_graph(g)
    return m


def rand(shape, dtype, r, scale=1.0):
    return (r.standard_normal(shape) * scale).astype(dt.dtype(dtype).np)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_softmax_with_scale_and_mask(dtype, target):
    """Attention scores: scale, additive mask (broadcast over heads and rows), softmax."""
    def build(b, s, mask):
        return b.nn.softmax(b.nn.add(b.nn.mul(s, 0.125), mask), axis=-1)
    r = np.random.default_rng(5)
    make = lambda: module({"s": TensorType([2, 3, 5, 17], dtype), "mask": TensorType([2, 1, 1, 17], dtype)}, build)
    mask = np.where(r.random((2, 1, 1, 17)) < 0.3, -1e4, 0.0).astype(dt.dtype(dtype).np)
    m = check2(make, [rand((2, 3, 5, 17), dtype, r, 4.0), mask], [target])
    assert [op.name for op in m.main].count("fused.reduction") == 1


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["nn.layer_norm", "nn.rms_norm", "nn.log_softmax"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_norms_with_residual_prologue_and_affine_epilogue(name, dtype, target):
    """(x + bias + residual) -> norm (with its own scale where it has one) -> * gamma + beta -> gelu."""
    def build(b, x, res, bias, gamma, beta):
        h = b.nn.add(b.nn.add(x, bias), res)
        if name == "nn.layer_norm":
            y = b.nn.layer_norm(h, gamma, axis=-1, eps=1e-5)
        elif name == "nn.rms_norm":
            y = b.nn.rms_norm(h, gamma, axis=-1, eps=1e-6)
        else:
            y = b.nn.log_softmax(h, axis=-1)
        return b.nn.gelu(b.nn.add(b.nn.mul(y, gamma), beta))
    r = np.random.default_rng(6)
    n = 70
    types = {"x": TensorType([3, 9, n], dtype), "res": TensorType([3, 9, n], dtype), "bias": TensorType([n], dtype),
             "gamma": TensorType([n], dtype), "beta": TensorType([n], dtype)}
    xs = [rand((3, 9, n), dtype, r), rand((3, 9, n), dtype, r), rand((n,), dtype, r), 1 + rand((n,), dtype, r, 0.1),
          rand((n,), dtype, r)]
    m = check2(lambda: module(types, build), xs, [target])
    fused = [op for op in m.main if op.name == "fused.reduction"]
    assert len(fused) == 1 and len(list(fused[0].regions[0])) == 7     # 2 adds, norm, mul, add, gelu, return


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("n", [1, 3, 17, 1000])
def test_reduction_row_lengths_and_symbolic_rows(n, target):
    def build(b, x, y):
        return b.nn.mul(b.nn.softmax(b.nn.sub(x, y)), 3.0)
    r = np.random.default_rng(n)
    types = {"x": TensorType([Sym("rows"), n], "f32"), "y": TensorType([Sym("rows"), 1], "f32")}
    for rows in (1, 7):
        check2(lambda: module(types, build), [rand((rows, n), "f32", r, 3), rand((rows, 1), "f32", r)], [target])


def test_normalizations_not_over_the_last_axis_run_in_the_interpreter():
    def build(b, x):
        return b.nn.mul(b.nn.softmax(b.nn.exp(x), axis=0), 2.0)
    m = module({"x": TensorType([4, 6], "f32")}, build)
    ckir.run_pipeline(m, "fuse{level=2}")
    x = rand((4, 6), "f32", np.random.default_rng(0))
    got, plan = llvm(m, [x], TARGETS[0])
    assert fused_kinds(plan) == ["ref"]
    e = np.exp(x)
    np.testing.assert_allclose(got["y0"], 2 * np.exp(e - e.max(0)) / np.exp(e - e.max(0)).sum(0), rtol=1e-6)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_matmul_bias_gelu_residual_scale(dtype, target):
    """Linear layer epilogues: bias, erf GELU (reads the sum twice: a DAG), residual, scale."""
    def build(b, x, w, bias, res):
        h = b.nn.add(b.nn.matmul(x, w), bias)
        g = b.nn.mul(b.nn.mul(h, 0.5), b.nn.add(b.nn.erf(b.nn.mul(h, 0.7071067811865476)), 1.0))
        return b.nn.mul(b.nn.add(g, res), 0.5)
    r = np.random.default_rng(7)
    types = {"x": TensorType([2, 33, 48], dtype), "w": TensorType([48, 40], dtype), "bias": TensorType([40], dtype),
             "res": TensorType([2, 33, 40], dtype)}
    xs = [rand((2, 33, 48), dtype, r), rand((48, 40), dtype, r, 0.2), rand((40,), dtype, r), rand((2, 33, 40), dtype, r)]
    m = check2(lambda: module(types, build), xs, [target], kinds=("fused.matmul",), exact_llvm=True, tol=MM_TOL)
    fused = [op for op in m.main if op.name == "fused.matmul"]
    body = [o.name for o in fused[0].regions[0] if o.name not in ("nn.constant", "ckir.return")]
    assert len(fused) == 1 and len(body) == 9, body          # matmul + the 8 ops after it


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("m_,k_,n_", [(1, 64, 300), (5, 3, 1), (130, 70, 33)])
def test_matmul_epilogue_shapes(m_, k_, n_, target):
    """GEMV (decode) and GEMM paths, a symbolic row count, a transposed weight."""
    def build(b, x, w, bias):
        return b.nn.silu(b.nn.add(b.nn.matmul(x, w, transpose_b=True), bias))
    r = np.random.default_rng(8)
    types = {"x": TensorType([Sym("m"), k_], "f32"), "w": TensorType([n_, k_], "f32"), "bias": TensorType([n_], "f32")}
    xs = [rand((m_, k_), "f32", r), rand((n_, k_), "f32", r, 0.3), rand((n_,), "f32", r)]
    check2(lambda: module(types, build), xs, [target], kinds=("fused.matmul",), exact_llvm=True, tol=MM_TOL)


def test_level2_statistics_and_autodiff():
    def build(b, x, w, bias, mask):
        h = b.nn.matmul(x, w)
        s = b.nn.softmax(b.nn.add(b.nn.mul(h, 0.3), mask))
        y = b.nn.layer_norm(b.nn.add(b.nn.tanh(b.nn.add(b.nn.matmul(s, w), bias)), x), axis=-1)
        z = b.nn.sigmoid(b.nn.add(b.nn.matmul(y, w), bias))
        return b.nn.sum(b.nn.mul(z, z))
    types = {"x": TensorType([6, 8], "f64"), "w": TensorType([8, 8], "f64"), "bias": TensorType([8], "f64"),
             "mask": TensorType([1, 8], "f64")}
    r = np.random.default_rng(9)
    xs = [r.standard_normal((6, 8)), r.standard_normal((8, 8)), r.standard_normal(8), r.standard_normal((1, 8))]
    out = io.StringIO()
    m = module(types, build)
    ckir.PassManager("fuse{level=2}", stats=True, out=out).run(m)
    text = out.getvalue()
    for s in ("reduction groups", "matmul epilogue groups", "bytes saved", "kernels after"):
        assert s in text
    res = []
    for pipeline in ("autodiff{wrt=x,w,bias}", "fuse{level=2},autodiff{wrt=x,w,bias}",
                     "autodiff{wrt=x,w,bias},fuse{level=2}"):
        m = module(types, build)
        ckir.run_pipeline(m, pipeline + ",canonicalize,cse,dce")
        res.append(ckir.compile(m)(*xs))
        if "fuse" in pipeline:
            res.append(ckir.compile(m, backend="llvm", cache=False)(*xs))
    for got in res[1:]:
        for k in res[0]:
            np.testing.assert_allclose(got[k], res[0][k], rtol=1e-10, atol=1e-10)
