"""The LLVM reduction and normalization kernels (backends/llvm/kernels/reduce.py) against the
interpreter: nn.sum/mean/max/min/prod over every axes set of ranks 0..4 (keepdims, empty
axes), nn.argmax/argmin, nn.softmax/log_softmax over every axis, nn.layer_norm/rms_norm with
broadcast parameters, nn.size/nn.shape; odd sizes (1, 3, 17, 1000), symbolic dims (one compile,
many sizes), NaN/inf rows, large rows, every supported dtype, on every target this CPU runs;
AVX-512 and NEON code is compiled to assembly and checked for vector instructions.

Tolerances, and why:
- max, min, argmax, argmin, nn.size, nn.shape and every integer result: exact (no rounding;
  integer sums and products wrap like numpy's, which sums in 64 bits and casts back).
- sum/mean: the kernels accumulate f32 in f64 in their own order; numpy sums f32 pairwise in
  f32 (naively, row after row, over outer axes). The difference is numpy's rounding error,
  bounded by c * eps * sum(|x|) over the reduced elements: c = 32 (eps = 2^-23 for f32,
  2^-52 for f64), plus one rounding of the output (f16/bf16: their own eps).
- prod: relative error n * eps (n factors, each multiply rounds in another order).
- softmax, log_softmax, layer_norm, rms_norm: rtol = atol = 1e-5 in f32 (a few ulps of O(1)
  values: exp/log/sqrt are ~1 ulp, a reciprocal multiply replaces a division), 1e-12 in f64,
  one ulp of the output type for f16/bf16 (computed in f32 and rounded once, as the references).
"""
import itertools

import ml_dtypes
import numpy as np
import pytest

import ckir
from ckir import Module, TensorType, new_graph
from ckir.backends.llvm.codegen import find_emitter
from ckir.backends.llvm.target import NAMES, runnable

TARGETS = [t for t in NAMES if runnable(t)]
F = {"f32": np.float32, "f64": np.float64, "f16": np.float16, "bf16": ml_dtypes.bfloat16}
EPS = {"f32": 2.0 ** -23, "f64": 2.0 ** -52, "f16": 2.0 ** -10, "bf16": 2.0 ** -7}
SMOOTH_TOL = {"f32": 1e-5, "f64": 1e-12, "f16": 2.0 ** -10, "bf16": 2.0 ** -7}


def build(inputs: dict, fn, native=True):
    """A module whose graph takes `inputs` (name -> TensorType) and returns fn(b, *values)
    (a list of (value, check) pairs); returns (module, checks). Every op must have a kernel."""
    g, b = new_graph("main", inputs)
    pairs = fn(b, *g.inputs)
    g.set_outputs([v for v, _ in pairs], [f"y{i}" for i in range(len(pairs))])
    m = Module("t")
    m.add_graph(g)
    for op in g:
        if native and op is not g.terminator:
            assert find_emitter(op) is not None, f"{op.opdef.name} has no kernel here"
    return m, [c for _, c in pairs]


def run_both(m, xs, target):
    want = ckir.compile(m)(*xs)
    got = ckir.compile(m, backend="llvm", target=target, cache=False)(*xs)
    return got, want


def check_all(m, checks, xs, target):
    got, want = run_both(m, xs, target)
    for i, chk in enumerate(checks):
        g, w = got[f"y{i}"], want[f"y{i}"]
        assert g.dtype == w.dtype and g.shape == w.shape, (i, chk, g.dtype, w.dtype, g.shape, w.shape)
        chk(g, w)


def f64(a):
    return np.asarray(a).astype(np.float64)


def exact(g, w):
    if g.dtype.kind in "fV" or g.dtype == ml_dtypes.bfloat16:
        g, w = f64(g), f64(w)
        assert np.array_equal(np.isnan(g), np.isnan(w))
        ok = ~np.isnan(w)
        np.testing.assert_array_equal(g[ok], w[ok])
    else:
        np.testing.assert_array_equal(g, w)


def smooth(dtype):
    tol = SMOOTH_TOL[dtype]

    def chk(g, w):
        np.testing.assert_allclose(f64(g), f64(w), rtol=tol, atol=tol)
    return chk


def summed(x, axes, keepdims, dtype, mean=False):
    """Checks a sum/mean of x over axes against numpy's within its rounding error."""
    a = np.abs(f64(x))
    bound = np.sum(a, axis=axes, keepdims=keepdims)
    if mean:
        n = np.prod([x.shape[i] for i in (range(x.ndim) if axes is None else axes)])
        bound = bound / max(n, 1)
    eps = EPS["f32"] if dtype in ("f16", "bf16") else EPS[dtype]

    def chk(g, w):
        g, w = f64(g), f64(w)
        assert np.array_equal(np.isnan(g), np.isnan(w))
        ok = ~np.isnan(w)
        err = np.abs(g - w)[ok]
        lim = (32 * eps * bound + EPS[dtype] * np.abs(w) + 1e-300)[ok]
        assert np.all(err <= lim), (err - lim).max()
    return chk


def producted(n, dtype):
    def chk(g, w):
        np.testing.assert_allclose(f64(g), f64(w), rtol=max(n, 1) * 2 * EPS[dtype] + EPS[dtype], atol=0)
    return chk


def axes_sets(rank):
    for r in range(rank + 1):
        yield from itertools.combinations(range(rank), r)


# --- sum / mean / max / min / prod ----------------------------------------------------------------
SHAPES = {0: (), 1: (17,), 2: (3, 17), 3: (3, 1, 17), 4: (3, 5, 1, 17)}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("shape", list(SHAPES.values()) + [(2, 3, 4, 5)], ids=str)
def test_every_axes_set(shape, target):
    """All axes sets (contiguous or not, empty, all, None) with and without keepdims."""
    rank = len(shape)
    r = np.random.default_rng(rank)
    x = (r.uniform(0.5, 1.5, shape) * r.choice([-1, 1], shape)).astype(np.float32)

    def fn(b, xv):
        out = []
        for axes in list(axes_sets(rank)) + [None]:
            for keep in (False, True):
                ax = None if axes is None else list(axes)
                n = int(np.prod([shape[i] for i in (range(rank) if axes is None else axes)]))
                for name in ("sum", "mean", "max", "min", "prod"):
                    v = getattr(b.nn, name)(xv, axes=ax, keepdims=keep)
                    npax = None if axes is None else tuple(axes)
                    chk = {"sum": summed(x, npax, keep, "f32"), "mean": summed(x, npax, keep, "f32", True),
                           "prod": producted(n, "f32")}.get(name, exact)
                    out.append((v, chk))
        return out
    m, checks = build({"x": TensorType(shape, "f32")}, fn)
    check_all(m, checks, [x], target)


ODD = [(1,), (3,), (17,), (1000,), (4099,), (7, 1000), (1000, 3), (1000, 17), (17, 1000), (3, 1, 1000),
       (2, 3, 17, 33)]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("shape", ODD, ids=str)
def test_odd_sizes(shape, dtype, target):
    r = np.random.default_rng(len(shape))
    x = r.standard_normal(shape).astype(F[dtype])
    rank = len(shape)
    sets = {(rank - 1,), (0,), None, tuple(range(1, rank))} - {()}

    def fn(b, xv):
        out = []
        for axes in sets:
            ax = None if axes is None else list(axes)
            out += [(b.nn.sum(xv, axes=ax), summed(x, axes, False, dtype)),
                    (b.nn.mean(xv, axes=ax, keepdims=True), summed(x, axes, True, dtype, True)),
                    (b.nn.max(xv, axes=ax), exact), (b.nn.min(xv, axes=ax), exact)]
        return out
    m, checks = build({"x": TensorType(shape, dtype)}, fn)
    check_all(m, checks, [x], target)


INTS = ["i8", "u8", "i16", "u16", "i32", "u32", "i64", "u64"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", INTS + ["f16", "bf16", "f64"])
def test_dtypes(dtype, target):
    """Integer sums and products wrap like numpy's; f16/bf16 are computed in f32, rounded once."""
    r = np.random.default_rng(0)
    shape = (17, 33)
    if dtype in INTS:
        info = np.iinfo(ckir.dtypes.dtype(dtype).np)
        x = r.integers(info.min, info.max, shape, dtype=ckir.dtypes.dtype(dtype).np, endpoint=True)
    else:
        x = r.standard_normal(shape).astype(F[dtype])

    def fn(b, xv):
        out = []
        for axes in ([1], [0], None):
            npax = None if axes is None else tuple(axes)
            n = int(np.prod([shape[i] for i in (npax or (0, 1))]))
            if dtype in INTS:
                out += [(getattr(b.nn, o)(xv, axes=axes), exact) for o in ("sum", "prod", "max", "min")]
            else:
                out += [(b.nn.sum(xv, axes=axes), summed(x, npax, False, dtype)),
                        (b.nn.mean(xv, axes=axes), summed(x, npax, False, dtype, True)),
                        (b.nn.prod(xv, axes=axes), producted(n, dtype)),
                        (b.nn.max(xv, axes=axes), exact), (b.nn.min(xv, axes=axes), exact)]
        return out
    m, checks = build({"x": TensorType(shape, dtype)}, fn)
    check_all(m, checks, [x], target)


def _specials(shape, seed):
    """Rows with NaN, +-inf, all -inf, all equal, and plain random values."""
    r = np.random.default_rng(seed)
    x = r.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1, shape[-1])
    n = flat.shape[1]
    flat[0, n // 2] = np.nan
    flat[1, :] = -np.inf
    flat[2, n - 1] = np.inf
    flat[3, 0] = np.nan
    flat[3, n - 1] = np.nan
    flat[4, :] = 2.5
    flat[5, 1 % n] = -np.inf
    flat[6, :] = np.nan
    return x


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("shape", [(8, 3), (8, 17), (8, 1000), (2, 4, 33)], ids=str)
def test_nan_and_inf(shape, target):
    x = _specials(shape, 0)
    rank = len(shape)

    def fn(b, xv):
        out = []
        for axis in range(rank):
            out += [(b.nn.max(xv, axes=[axis]), exact), (b.nn.min(xv, axes=[axis]), exact),
                    (b.nn.sum(xv, axes=[axis]), exact_nan_pattern),
                    (b.nn.argmax(xv, axis=axis), exact), (b.nn.argmin(xv, axis=axis), exact),
                    (b.nn.argmax(xv, axis=axis, select_last_index=True), exact),
                    (b.nn.argmin(xv, axis=axis, select_last_index=True), exact),
                    (b.nn.softmax(xv, axis=axis), smooth("f32")), (b.nn.log_softmax(xv, axis=axis), smooth("f32"))]
        out += [(b.nn.max(xv), exact), (b.nn.min(xv), exact), (b.nn.sum(xv), exact_nan_pattern)]
        return out
    m, checks = build({"x": TensorType(shape, "f32")}, fn)
    check_all(m, checks, [x], target)


def exact_nan_pattern(g, w):
    """NaN and inf where numpy has them; finite values within sum tolerance (loose)."""
    g, w = f64(g), f64(w)
    assert np.array_equal(np.isnan(g), np.isnan(w))
    fin = np.isfinite(w)
    np.testing.assert_array_equal(g[~fin & ~np.isnan(w)], w[~fin & ~np.isnan(w)])
    np.testing.assert_allclose(g[fin], w[fin], rtol=1e-4, atol=1e-4)


# --- argmax / argmin ------------------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", ["f32", "f64", "f16", "bf16", "i32", "u8", "i64"])
@pytest.mark.parametrize("shape", [(1,), (3,), (17,), (1000,), (5, 3), (3, 17, 5), (2, 1000), (2, 3, 4, 5)], ids=str)
def test_argmax_argmin(shape, dtype, target):
    """Ties (few distinct values) take the first index, or the last with select_last_index."""
    r = np.random.default_rng(len(shape))
    npd = F.get(dtype) or ckir.dtypes.dtype(dtype).np
    x = r.integers(0, 4, shape).astype(npd)
    rank = len(shape)

    def fn(b, xv):
        out = []
        for axis in range(-rank, rank):
            for keep, last in itertools.product((False, True), (False, True)):
                for name in ("argmax", "argmin"):
                    out.append((getattr(b.nn, name)(xv, axis=axis, keepdims=keep, select_last_index=last), exact))
        return out
    m, checks = build({"x": TensorType(shape, dtype)}, fn)
    check_all(m, checks, [x], target)


# --- softmax / log_softmax ------------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", ["f32", "f64", "f16", "bf16"])
@pytest.mark.parametrize("shape", [(1,), (3,), (17,), (1000,), (3, 17), (1000, 3), (2, 1, 17, 5), (2, 3, 4, 1000)],
                         ids=str)
def test_softmax_every_axis(shape, dtype, target):
    x = (np.random.default_rng(len(shape)).standard_normal(shape) * 4).astype(F[dtype])

    def fn(b, xv):
        out = []
        for axis in range(len(shape)):
            out += [(b.nn.softmax(xv, axis=axis), smooth(dtype)), (b.nn.log_softmax(xv, axis=axis), smooth(dtype))]
        return out
    m, checks = build({"x": TensorType(shape, dtype)}, fn)
    check_all(m, checks, [x], target)


@pytest.mark.parametrize("target", TARGETS)
def test_large_rows(target):
    """Rows of 100003 (softmax), 1M elements reduced to one value (split across threads), and a
    [1000, 4099] sum over axis 0 (column units). The f64 accumulator makes the all-axes sum
    correctly rounded where numpy's f32 pairwise sum is off by a few ulps."""
    r = np.random.default_rng(0)
    row = (r.standard_normal((2, 100003)) * 10).astype(np.float32)
    big = r.random(1 << 20).astype(np.float32)
    mat = r.standard_normal((1000, 4099)).astype(np.float32)
    m, checks = build({"a": TensorType(row.shape, "f32"), "b": TensorType(big.shape, "f32"),
                       "c": TensorType(mat.shape, "f32")},
                      lambda b, a, bb, c: [(b.nn.softmax(a), smooth("f32")), (b.nn.log_softmax(a), smooth("f32")),
                                           (b.nn.rms_norm(a), smooth("f32")), (b.nn.sum(bb), summed(big, None, False, "f32")),
                                           (b.nn.max(bb), exact),
                                           (b.nn.sum(c, axes=[0]), summed(mat, (0,), False, "f32")),
                                           (b.nn.argmax(c, axis=0), exact), (b.nn.argmin(c, axis=1), exact)])
    check_all(m, checks, [row, big, mat], target)
    got = ckir.compile(m, backend="llvm", target=target, cache=False)(row, big, mat)
    exact_sum = np.sum(big.astype(np.float64))
    assert abs(float(got["y3"]) - exact_sum) <= 0.5 * np.spacing(np.float32(exact_sum))


# --- layer_norm / rms_norm ------------------------------------------------------------------------
NORM_CASES = [  # (x shape, axis, scale shape, bias shape)
    ((3, 17), -1, None, None), ((3, 17), -1, (17,), (17,)), ((1000, 3), -1, (3,), None),
    ((2, 1000), -1, (1000,), (1000,)), ((1, 1), -1, (1,), (1,)), ((3,), 0, (3,), (3,)),
    ((2, 3, 4), -2, (3, 4), (1, 4)), ((2, 3, 4), -2, (3, 1), (4,)), ((2, 3, 4), 1, (1,), None),
    ((2, 3, 17), 0, (3, 17), (1, 1, 17)), ((4, 17), -1, (1,), (17,)), ((5, 4099), -1, (4099,), (4099,)),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", ["f32", "f64", "f16", "bf16"])
@pytest.mark.parametrize("case", NORM_CASES, ids=str)
def test_norms(case, dtype, target):
    xs_, axis, ss, bs = case
    r = np.random.default_rng(1)
    x = (r.standard_normal(xs_) * 3 + 1).astype(F[dtype])
    s = None if ss is None else r.standard_normal(ss).astype(F[dtype])
    bb = None if bs is None else r.standard_normal(bs).astype(F[dtype])
    inputs = {"x": TensorType(xs_, dtype)}
    if s is not None:
        inputs["s"] = TensorType(ss, dtype)
    if bb is not None:
        inputs["b"] = TensorType(bs, dtype)

    def fn(b, *vs):
        return [(b.nn.layer_norm(*vs, axis=axis, eps=1e-3), smooth(dtype)),
                (b.nn.rms_norm(*vs[:2], axis=axis), smooth(dtype))]
    m, checks = build(inputs, fn)
    check_all(m, checks, [a for a in (x, s, bb) if a is not None], target)


# --- symbolic dims ------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_symbolic_dims_one_compile(target):
    """One compile serves every size; a parameter dim `k` may be 1 at run time (broadcast)."""
    def fn(b, x, s):
        return [(b.nn.sum(x, axes=[0]), None), (b.nn.sum(x, axes=[1], keepdims=True), None),
                (b.nn.mean(x), None), (b.nn.prod(x, axes=[1]), None), (b.nn.sum(x, axes=[0, 2]), None),
                (b.nn.softmax(x, axis=1), None), (b.nn.log_softmax(x, axis=-1), None),
                (b.nn.rms_norm(x, s), None), (b.nn.layer_norm(x, s, s, axis=-1), None),
                (b.nn.size(x, axes=[0, 2]), None), (b.nn.size(x, dtype="f32"), None), (b.nn.shape(x, start=1), None)]
    m, _ = build({"x": TensorType(["n", "m", "p"], "f32"), "s": TensorType(["k"], "f32")}, fn)
    f_ref = ckir.compile(m)
    f = ckir.compile(m, backend="llvm", target=target, cache=False)
    for n, mm, p, k in ((1, 1, 1, 1), (3, 17, 5, 5), (3, 17, 5, 1), (1000, 3, 2, 2), (2, 1000, 7, 7), (0, 3, 4, 4),
                        (3, 0, 4, 1), (2, 3, 0, 1)):
        r = np.random.default_rng(n + mm)
        x = r.standard_normal((n, mm, p)).astype(np.float32)
        s = r.standard_normal(k).astype(np.float32)
        got, want = f(x, s), f_ref(x, s)
        for name in want:
            assert got[name].shape == want[name].shape and got[name].dtype == want[name].dtype, name
            np.testing.assert_allclose(f64(got[name]), f64(want[name]), rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("target", TARGETS)
def test_empty_max_and_argmax_raise_like_numpy(target):
    """numpy raises for max/min of an empty set and argmax over an empty axis: so does the
    compiled module (a run-time check with symbolic dims, the interpreter with static ones);
    an empty output is fine."""
    for name, kw in (("max", {"axes": [1]}), ("min", {"axes": [1]}), ("argmax", {"axis": 1}), ("argmin", {"axis": 1})):
        m, _ = build({"x": TensorType(["n", "m"], "f32")}, lambda b, x: [(getattr(b.nn, name)(x, **kw), None)])
        f = ckir.compile(m, backend="llvm", target=target, cache=False)
        with pytest.raises(ckir.CkirError):
            f(np.zeros((3, 0), np.float32))
        assert f(np.ones((3, 2), np.float32))["y0"].shape == (3,)
        if name in ("max", "min"):
            assert f(np.zeros((0, 0), np.float32))["y0"].shape == (0,)
    # a static empty axis: the interpreter runs the op (and raises)
    g, b = new_graph("main", {"x": TensorType([3, 0], "f32")})
    y = b.nn.max(g.inputs[0], axes=[1])
    g.set_outputs([y], ["y0"])
    m = Module("t")
    m.add_graph(g)
    assert find_emitter(next(iter(g))) is None
    with pytest.raises(ckir.CkirError):
        ckir.compile(m, backend="llvm", target=target, cache=False)(np.zeros((3, 0), np.float32))


# --- nn.size / nn.shape ---------------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_size_and_shape(target):
    def fn(b, x):
        out = [(b.nn.size(x, dtype=d), exact) for d in ("i64", "u64", "f64", "f32", "f16", "bf16")]
        out += [(b.nn.size(x, axes=[1], dtype="i32"), exact), (b.nn.shape(x), exact),
                (b.nn.shape(x, start=-2, end=-1), exact), (b.nn.size(x, axes=[1], dtype="bool"), exact)]
        return out
    m, checks = build({"x": TensorType(["n", 3, "p"], "f32")}, fn)
    for n, p in ((1, 1), (17, 1000), (300, 300), (0, 5)):
        check_all(m, checks, [np.zeros((n, 3, p), np.float32)], target)
    # a symbolic size as i32 could overflow where numpy raises: the interpreter runs it
    g, b = new_graph("main", {"x": TensorType(["n"], "f32")})
    b.nn.size(g.inputs[0], dtype="i32")
    assert find_emitter(next(iter(g))) is None


# --- code for targets this CPU cannot run ---------------------------------------------------------
@pytest.mark.parametrize("target,needle", [("avx512", r"%zmm"), ("neon", r"\bv\d+\.(4s|2d)"), ("avx2", r"%ymm")])
def test_vector_code_for_every_target(target, needle):
    import re

    from ckir.backends.llvm.plan import emit
    for fn in (lambda b, x: b.nn.sum(x, axes=[1]), lambda b, x: b.nn.max(x, axes=[1]),
               lambda b, x: b.nn.rms_norm(x), lambda b, x: b.nn.argmax(x, axis=1),
               lambda b, x: b.nn.sum(x, axes=[0])):
        m, _ = build({"x": TensorType(["n", 4096], "f32")}, lambda b, x: [(fn(b, x), None)])
        asm = emit(m, target=target, kind="asm")
        assert re.search(needle, asm), (target, fn)
