"""The LLVM nn.nll_loss kernel (backends/llvm/kernels/nn_loss.py) against the interpreter: every
reduction, with and without class weights, ignore_index (absent, a class, negative), ranks 2 to
4, i32/i64 targets, symbolic dims, every position ignored, f32/f64/f16/bf16, and an
out-of-range target raising CkirError like the interpreter.

Tolerances, and why: "none" is exact (one product of the picked score and its weight, as the
reference). "sum"/"mean" accumulate in f64 where the reference sums in the compute type
(pairwise); the difference is the reference's rounding error, bounded by n * eps * sum |loss|
(+ the same for the summed weights in "mean"), plus one rounding of the result (f16/bf16: their
own eps).
"""
import ml_dtypes
import numpy as np
import pytest

import ckir
from ckir import Module, TensorType, new_graph
from ckir.backends.llvm.codegen import find_emitter
from ckir.backends.llvm.target import NAMES, runnable
from ckir.errors import CkirError

TARGETS = [t for t in NAMES if runnable(t)]
F = {"f32": np.float32, "f64": np.float64, "f16": np.float16, "bf16": ml_dtypes.bfloat16}
EPS = {"f32": 2.0 ** -24, "f64": 2.0 ** -53, "f16": 2.0 ** -11, "bf16": 2.0 ** -8}


def compiled(x_t, t_t, w_t, attrs, target):
    ins = {"x": x_t, "t": t_t}
    if w_t is not None:
        ins["w"] = w_t
    g, b = new_graph("main", ins)
    g.set_outputs([b.nn.nll_loss(*g.inputs, **attrs)], ["y"])
    m = Module("t")
    m.add_graph(g)
    assert all(find_emitter(op) is not None for op in g if op is not g.terminator)
    return ckir.compile(m), ckir.compile(m, backend="llvm", target=target, cache=False)


def check(x, t, w, attrs, dtype, target, sym=None):
    dt_ = getattr(ckir.dtypes, dtype)
    x_t = TensorType(sym or x.shape, dt_)
    t_t = TensorType((sym[0],) + tuple(sym[2:]) if sym else t.shape, getattr(ckir.dtypes, str(t.dtype).replace("int", "i")))
    w_t = None if w is None else TensorType(w.shape, dt_)
    ref, llvm = compiled(x_t, t_t, w_t, attrs, target)
    xs = [x, t] + ([w] if w is not None else [])
    want, got = ref(*xs)["y"], llvm(*xs)["y"]
    assert got.dtype == want.dtype and got.shape == want.shape
    g64, w64 = got.astype(np.float64), want.astype(np.float64)
    assert np.array_equal(np.isnan(g64), np.isnan(w64))
    ok = ~np.isnan(w64)
    if attrs.get("reduction") == "none":
        np.testing.assert_array_equal(g64[ok], w64[ok])
        return
    n = t.size
    ceps = EPS["f32"] if dtype in ("f16", "bf16") else EPS[dtype]
    xmax = np.abs(x.astype(np.float64)).max()
    wmax = 1.0 if w is None else np.abs(w.astype(np.float64)).max()
    if attrs.get("reduction", "mean") == "sum":
        bound = n * ceps * n * xmax * wmax          # n terms of at most xmax * wmax
    else:
        bound = 2 * n * ceps * xmax                 # |mean| <= xmax; both sums err by n * eps
    lim = bound + EPS[dtype] * np.abs(w64) + 1e-300
    assert np.all(np.abs(g64 - w64)[ok] <= lim[ok]), (g64, w64)


def data(r, shape, c, dtype, tdtype=np.int64, ignore=None):
    x = r.uniform(-3, 0, shape).astype(F[dtype])
    t = r.integers(0, c, (shape[0],) + tuple(shape[2:])).astype(tdtype)
    if ignore is not None:
        t.flat[::3] = ignore
    return x, t


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (17, 3), (2, 4, 3), (2, 3, 2, 5), (1000, 7)], ids=str)
def test_reductions_weights_ignore(shape, reduction, target):
    r = np.random.default_rng(len(shape) * 100 + shape[0])
    c = shape[1]
    for with_w in (False, True):
        for ignore in (None, 0, -100):
            x, t = data(r, shape, c, "f32", ignore=ignore)
            w = r.uniform(0.5, 2, (c,)).astype(np.float32) if with_w else None
            check(x, t, w, dict(reduction=reduction, ignore_index=ignore), "f32", target)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", ["f64", "f16", "bf16"])
def test_dtypes(dtype, target):
    r = np.random.default_rng(4)
    for reduction in ("none", "sum", "mean"):
        x, t = data(r, (5, 4, 3), 4, dtype, np.int32, ignore=2)
        w = r.uniform(0.5, 2, (4,)).astype(F[dtype])
        check(x, t, w, dict(reduction=reduction, ignore_index=2), dtype, target)


@pytest.mark.parametrize("target", TARGETS)
def test_symbolic_and_all_ignored(target):
    x_t = TensorType(("N", 4, "D"), ckir.dtypes.f32)
    t_t = TensorType(("N", "D"), ckir.dtypes.i64)
    ref, llvm = compiled(x_t, t_t, None, dict(reduction="mean", ignore_index=1), target)
    r = np.random.default_rng(0)
    for n, d in [(1, 1), (3, 17), (8, 5)]:
        x, t = data(r, (n, 4, d), 4, "f32")
        np.testing.assert_allclose(llvm(x, t)["y"], ref(x, t)["y"], rtol=1e-6)
    x, t = data(r, (2, 4, 3), 4, "f32")
    t[:] = 1
    assert np.isnan(llvm(x, t)["y"]) and np.isnan(ref(x, t)["y"])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("bad", [4, -1, 1 << 40])
def test_out_of_range_target_raises(bad, target):
    x_t = TensorType((3, 4), ckir.dtypes.f32)
    t_t = TensorType((3,), ckir.dtypes.i64)
    ref, llvm = compiled(x_t, t_t, None, dict(reduction="sum"), target)
    x = np.zeros((3, 4), np.float32)
    t = np.array([0, bad, 2], np.int64)
    with pytest.raises(CkirError, match="out of range"):
        ref(x, t)
    with pytest.raises(CkirError, match="out of range"):
        llvm(x, t)
