"""The LLVM convolution and pooling kernels (backends/llvm/kernels/conv.py) against the
interpreter: nn.conv (1-3 spatial dims, groups incl. depthwise, strides, dilations, asymmetric
pads, bias or none), nn.conv_transpose (the same plus output_padding), nn.max_pool and nn.avg_pool (kernel, strides, dilations, pads, ceil_mode,
count_include_pad), odd sizes (1, 3, 17), symbolic batch and spatial dims (one compile, many
sizes), NaN and -inf in max_pool, f32 and f64, on every target this CPU runs.

Tolerances, and why:
- max_pool: exact (a comparison, no rounding).
- conv, conv_transpose: the interpreter accumulates in f64 and rounds once; the kernel accumulates in the
  compute type tap by tap, so the difference is a dot product's rounding error, bounded by
  n * eps * sum |x * w| over the n taps of each output (n = C/groups * prod(kernel)), plus one
  rounding of the result.
- avg_pool: a sum of n taps in the compute type and one division: n * eps * sum |x| / count
  plus a rounding.
"""

import numpy as np
import pytest

import ckir
from ckir import Module, TensorType, new_graph
from ckir.backends.llvm.codegen import find_emitter
from ckir.backends.llvm.target import NAMES, runnable

TARGETS = [t for t in NAMES if runnable(t)]
F = {"f32": np.float32, "f64": np.float64}
EPS = {"f32": 2.0 ** -24, "f64": 2.0 ** -53}


def module(in_types: dict, fn):
    g, b = new_graph("main", in_types)
    y = fn(b, *g.inputs)
    g.set_outputs([y], ["y"])
    m = Module("t")
    m.add_graph(g)
    for op in g:
        if op is not g.terminator:
            assert find_emitter(op) is not None, f"{op.opdef.name} falls back"
    return m


def run(m, xs, target):
    want = ckir.compile(m)(*xs)["y"]
    got = ckir.compile(m, backend="llvm", target=target, cache=False)(*xs)["y"]
    assert got.dtype == want.dtype and got.shape == want.shape, (got.shape, want.shape)
    return got, want


def ttype(shape, dtype):
    return TensorType(tuple(shape), getattr(ckir.dtypes, dtype))


def check_conv(x, w, bias, attrs, dtype, target, sym=None, op="conv"):
    xt = ttype(sym or x.shape, dtype)
    ins = {"x": xt, "w": ttype(w.shape, dtype)}
    if bias is not None:
        ins["b"] = ttype(bias.shape, dtype)
    m = module(ins, lambda b, *v: getattr(b.nn, op)(*v, **attrs))
    xs = [x, w] + ([bias] if bias is not None else [])
    got, want = run(m, xs, target)
    # the error bound: taps * eps * sum |x * w| per output (the conv of |x| by |w|, + |bias|)
    absm = module({"x": ttype(x.shape, "f64"), "w": ttype(w.shape, "f64")},
                  lambda b, xv, wv: getattr(b.nn, op)(xv, wv, **attrs))
    mag = ckir.compile(absm)(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64))["y"]
    if bias is not None:
        mag = mag + np.abs(bias).astype(np.float64).reshape((-1,) + (1,) * (x.ndim - 2))
    taps = int(np.prod(w.shape[1:])) if op == "conv" else x.shape[1] * int(np.prod(w.shape[1:]))
    lim = (taps + 2) * EPS[dtype] * mag + 1e-300
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    assert np.all(err <= lim), (err - lim).max()


def rand(r, shape, dtype):
    return r.uniform(-1, 1, shape).astype(F[dtype])


# --- conv ------------------------------------------------------------------------------------------
CONV_CASES = [
    # (x shape, w shape, with bias, attrs)
    ((1, 1, 1), (1, 1, 1), False, {}),
    ((2, 3, 17), (4, 3, 3), True, {}),
    ((1, 3, 17), (5, 3, 4), True, dict(strides=[3], pads=[2, 1], dilations=[2])),
    ((2, 4, 9), (4, 1, 3), False, dict(groups=4, pads=[1, 1])),                 # depthwise
    ((1, 1, 3, 3), (1, 1, 3, 3), False, dict(pads=[1, 1, 1, 1])),
    ((1, 4, 17, 13), (6, 2, 3, 2), True, dict(strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2],
                                               groups=2)),
    ((2, 3, 7, 5), (8, 3, 1, 1), True, {}),                                        # pointwise
    ((1, 6, 9, 9), (6, 1, 3, 3), True, dict(groups=6, strides=[2, 2], pads=[1, 1, 1, 1])),
    ((1, 2, 5, 4), (2, 2, 5, 4), False, {}),                                       # kernel = input
    ((1, 2, 4, 4), (3, 2, 2, 2), False, dict(pads=[3, 0, 0, 3], strides=[3, 2])),  # windows of pads
    ((1, 2, 5, 4, 4), (4, 1, 2, 3, 2), True, dict(strides=[1, 2, 1], pads=[0, 1, 1, 1, 0, 0],
                                                   groups=2)),
    ((2, 3, 3, 5, 7), (2, 3, 3, 3, 3), False, dict(dilations=[1, 2, 3], pads=[1, 2, 3, 1, 2, 3])),
    ((1, 4, 9, 7), (8, 2, 3, 3), True, dict(groups=2, strides=[2, 1], pads=[1, 1, 0, 2])),  # 4 per block
    ((2, 6, 17), (12, 2, 3), True, dict(groups=3, dilations=[2])),                       # 4 per block, 1-d
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}x{c[1]}{c[3]}")
def test_conv_attrs(case, target):
    xs, ws, with_bias, attrs = case
    r = np.random.default_rng(len(xs) * 7 + ws[0])
    check_conv(rand(r, xs, "f32"), rand(r, ws, "f32"), rand(r, (ws[0],), "f32") if with_bias else None,
               attrs, "f32", target)


@pytest.mark.parametrize("target", TARGETS)
def test_conv_f64(target):
    r = np.random.default_rng(3)
    check_conv(rand(r, (2, 4, 11, 6), "f64"), rand(r, (6, 2, 3, 3), "f64"), rand(r, (6,), "f64"),
               dict(groups=2, strides=[2, 1], pads=[1, 2, 0, 1], dilations=[2, 1]), "f64", target)


@pytest.mark.parametrize("target", TARGETS)
def test_conv_random_geometry(target):
    """Random combinations of every attribute, 1-3 spatial dims, sizes 1 to 17."""
    r = np.random.default_rng(11)
    for _ in range(12):
        n = int(r.integers(1, 4))
        groups = int(r.choice([1, 2, 3]))
        cg, og = int(r.integers(1, 4)), int(r.integers(1, 3))
        k = [int(r.integers(1, 4)) for _ in range(n)]
        d = [int(r.integers(1, 3)) for _ in range(n)]
        s = [int(r.integers(1, 4)) for _ in range(n)]
        p = [int(r.integers(0, 3)) for _ in range(2 * n)]
        size = [int(r.integers(max(1, d[i] * (k[i] - 1) + 1 - p[i] - p[n + i]), 18 if n == 1 else 9))
                for i in range(n)]
        x = rand(r, [int(r.integers(1, 3)), cg * groups] + size, "f32")
        w = rand(r, [og * groups, cg] + k, "f32")
        bias = rand(r, (og * groups,), "f32") if r.integers(2) else None
        check_conv(x, w, bias, dict(strides=s, pads=p, dilations=d, groups=groups), "f32", target)


@pytest.mark.parametrize("target", TARGETS)
def test_conv_symbolic_dims(target):
    """Batch and spatial dims symbolic: one compiled module serves several sizes."""
    ins = {"x": TensorType(("N", 3, "H", "W"), ckir.dtypes.f32), "w": ttype((4, 3, 3, 3), "f32")}
    m = module(ins, lambda b, x, w: b.nn.conv(x, w, strides=[2, 1], pads=[1, 1, 0, 2]))
    want_c = ckir.compile(m)
    got_c = ckir.compile(m, backend="llvm", target=target, cache=False)
    r = np.random.default_rng(5)
    w = rand(r, (4, 3, 3, 3), "f32")
    for shape in [(1, 3, 3, 1), (2, 3, 17, 5), (3, 3, 8, 13)]:
        x = rand(r, shape, "f32")
        np.testing.assert_allclose(got_c(x, w)["y"], want_c(x, w)["y"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", TARGETS)
def test_conv_large(target):
    """A ResNet-like layer: 64 -> 64 channels, 3x3, 56x56, pads 1 (many rows, many threads)."""
    r = np.random.default_rng(9)
    check_conv(rand(r, (1, 64, 56, 56), "f32"), rand(r, (64, 64, 3, 3), "f32"), rand(r, (64,), "f32"),
               dict(pads=[1, 1, 1, 1]), "f32", target)


CONV_T_CASES = [
    ((1, 1, 1), (1, 1, 1), False, {}),
    ((2, 3, 4), (3, 2, 3), True, {}),
    ((1, 4, 3, 4), (4, 3, 3, 2), True, dict(strides=[2, 3], pads=[1, 0, 0, 1], dilations=[1, 2], groups=2,
                                             output_padding=[1, 2])),
    ((1, 2, 2, 3, 2), (2, 1, 2, 2, 3), True, dict(strides=[2, 1, 2], pads=[0, 0, 1, 1, 0, 0],
                                                   output_padding=[1, 0, 0])),
    ((2, 3, 5), (3, 1, 3), False, dict(groups=3, strides=[2], pads=[3, 2], dilations=[2])),
    ((1, 5, 17), (5, 3, 4), True, dict(strides=[3], pads=[1, 2], output_padding=[2])),
    ((1, 2, 7, 5), (2, 4, 3, 3), False, dict(strides=[2, 2], pads=[1, 1, 1, 1])),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CONV_T_CASES, ids=lambda c: f"{c[0]}x{c[1]}{c[3]}")
def test_conv_transpose_attrs(case, target):
    xs, ws, with_bias, attrs = case
    r = np.random.default_rng(len(xs) * 5 + ws[1])
    og = ws[1] * attrs.get("groups", 1)
    for dtype in ("f32", "f64"):
        check_conv(rand(r, xs, dtype), rand(r, ws, dtype), rand(r, (og,), dtype) if with_bias else None,
                   attrs, dtype, target, op="conv_transpose")


@pytest.mark.parametrize("target", TARGETS)
def test_conv_transpose_random_geometry(target):
    r = np.random.default_rng(17)
    for _ in range(10):
        n = int(r.integers(1, 4))
        groups = int(r.choice([1, 2]))
        cg, og = int(r.integers(1, 3)), int(r.integers(1, 3))
        k = [int(r.integers(1, 4)) for _ in range(n)]
        d = [int(r.integers(1, 3)) for _ in range(n)]
        s = [int(r.integers(1, 4)) for _ in range(n)]
        p = [int(r.integers(0, 2)) for _ in range(2 * n)]
        opad = [int(r.integers(0, si)) for si in s]
        size = [int(r.integers(2, 7)) for _ in range(n)]
        x = rand(r, [1, cg * groups] + size, "f32")
        w = rand(r, [cg * groups, og] + k, "f32")
        check_conv(x, w, None, dict(strides=s, pads=p, dilations=d, groups=groups, output_padding=opad),
                   "f32", target, op="conv_transpose")


def test_f16_falls_back():
    m = Module("t")
    g, b = new_graph("main", {"x": ttype((1, 2, 5), "f16"), "w": ttype((2, 2, 3), "f16")})
    g.set_outputs([b.nn.conv(*g.inputs)], ["y"])
    m.add_graph(g)
    op = next(iter(g))
    assert find_emitter(op) is None


# --- pooling ---------------------------------------------------------------------------------------
POOL_CASES = [
    ((1, 1, 1), dict(kernel=[1])),
    ((2, 3, 17), dict(kernel=[3])),
    ((1, 2, 17), dict(kernel=[4], strides=[3], pads=[2, 1], dilations=[2])),
    ((1, 2, 17), dict(kernel=[4], strides=[3], pads=[2, 1], ceil_mode=True)),
    ((1, 2, 6, 7), dict(kernel=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1])),
    ((1, 2, 5, 6), dict(kernel=[2, 3], strides=[2, 2], dilations=[2, 1], ceil_mode=True)),
    ((1, 1, 3, 3), dict(kernel=[3, 3], pads=[2, 2, 2, 2])),                    # windows of pads only
    ((2, 3, 17, 13), dict(kernel=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=True)),
    ((1, 1, 4, 5, 3), dict(kernel=[2, 2, 2], strides=[2, 1, 2], pads=[0, 1, 0, 0, 0, 1], ceil_mode=True)),
    ((1, 2, 5, 6, 7), dict(kernel=[3, 2, 3], dilations=[2, 1, 2], pads=[1, 1, 2, 1, 0, 2])),
]


def pool_check(kind, x, attrs, dtype):
    n = int(np.prod(attrs["kernel"]))
    if kind == "max_pool":
        def chk(g, w):
            assert np.array_equal(np.isnan(g), np.isnan(w))
            ok = ~np.isnan(w)
            np.testing.assert_array_equal(g[ok], w[ok])
        return chk

    def chk(g, w):
        # a mean of at most n taps of |x| <= max|x|: n * eps * max|x| + a rounding
        lim = (n + 2) * EPS[dtype] * np.nanmax(np.abs(x)) + EPS[dtype] * np.abs(w.astype(np.float64))
        np.testing.assert_array_less(np.abs(g.astype(np.float64) - w.astype(np.float64)), lim + 1e-300)
    return chk


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind,include_pad", [("max_pool", None), ("avg_pool", False), ("avg_pool", True)])
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: f"{c[0]}{c[1]}")
def test_pool_attrs(case, kind, include_pad, target):
    shape, attrs = case
    attrs = dict(attrs)
    if include_pad is not None:
        attrs["count_include_pad"] = include_pad
    for dtype in ("f32", "f64"):
        x = rand(np.random.default_rng(len(shape)), shape, dtype)
        m = module({"x": ttype(shape, dtype)}, lambda b, xv: getattr(b.nn, kind)(xv, **attrs))
        got, want = run(m, [x], target)
        pool_check(kind, x, attrs, dtype)(got, want)


@pytest.mark.parametrize("target", TARGETS)
def test_max_pool_nan_and_inf(target):
    x = np.random.default_rng(2).uniform(-1, 1, (1, 2, 9, 9)).astype(np.float32)
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 4, :] = -np.inf
    x[0, 1, 7, 7] = np.inf
    for attrs in (dict(kernel=[3, 3]), dict(kernel=[2, 3], strides=[2, 2], pads=[1, 1, 1, 1])):
        m = module({"x": ttype(x.shape, "f32")}, lambda b, xv: b.nn.max_pool(xv, **attrs))
        got, want = run(m, [x], target)
        pool_check("max_pool", x, attrs, "f32")(got, want)


@pytest.mark.parametrize("target", TARGETS)
def test_pool_symbolic_dims(target):
    for kind in ("max_pool", "avg_pool"):
        attrs = dict(kernel=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1])
        if kind == "avg_pool":
            attrs["count_include_pad"] = True
        m = module({"x": TensorType(("N", "C", "H", "W"), ckir.dtypes.f32)},
                   lambda b, xv: getattr(b.nn, kind)(xv, **attrs))
        want_c = ckir.compile(m)
        got_c = ckir.compile(m, backend="llvm", target=target, cache=False)
        for shape in [(1, 1, 2, 1), (2, 3, 17, 5), (1, 4, 9, 1000)]:
            x = rand(np.random.default_rng(1), shape, "f32")
            np.testing.assert_allclose(got_c(x)["y"], want_c(x)["y"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("target", TARGETS)
def test_pool_random_geometry(target):
    r = np.random.default_rng(21)
    for i in range(10):
        n = int(r.integers(1, 4))
        k = [int(r.integers(1, 4)) for _ in range(n)]
        d = [int(r.integers(1, 3)) for _ in range(n)]
        s = [int(r.integers(1, 4)) for _ in range(n)]
        p = [int(r.integers(0, k[j % n])) for j in range(2 * n)]
        size = [int(r.integers(max(1, d[j] * (k[j] - 1) + 1), 12)) for j in range(n)]
        x = rand(r, [1, 2] + size, "f32")
        for kind in ("max_pool", "avg_pool"):
            attrs = dict(kernel=k, strides=s, pads=p, dilations=d, ceil_mode=bool(i % 2))
            if kind == "avg_pool":
                attrs["count_include_pad"] = bool(r.integers(2))
            m = module({"x": ttype(x.shape, "f32")}, lambda b, xv: getattr(b.nn, kind)(xv, **attrs))
            got, want = run(m, [x], target)
            pool_check(kind, x, attrs, "f32")(got, want)


# LLVM picks the vector width for these short rows (ymm or zmm on AVX-512): either is vector code
@pytest.mark.parametrize("target,pattern", [("avx512", r"vfmadd\w*ps\s+%[yz]mm"), ("neon", r"fmla\s+v\d+\.4s")])
def test_compile_only_targets_vectorize(target, pattern):
    """AVX-512 and NEON (not runnable here): the conv inner loop compiles to vector FMAs and
    max_pool to vector max/compare code."""
    import re

    from ckir.backends.llvm.plan import emit
    f32 = ckir.dtypes.f32
    m = module({"x": TensorType((1, 16, 28, 28), f32), "w": TensorType((16, 16, 3, 3), f32)},
               lambda b, x, w: b.nn.conv(x, w, pads=[1, 1, 1, 1]))
    assert re.search(pattern, emit(m, target=target))
    m = module({"x": TensorType((1, 16, 28, 28), f32)}, lambda b, x: b.nn.max_pool(x, kernel=[3, 3]))
    asm = emit(m, target=target)
    assert re.search(r"%[yz]mm" if target == "avx512" else r"\bv\d+\.4s\b", asm)
