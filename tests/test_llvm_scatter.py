"""The LLVM nn.scatter_elements, nn.scatter_nd and nn.gather_nd kernels (backends/llvm/kernels/nn_scatter.py) against the
interpreter: every reduction, every axis of ranks 1 to 3, repeated and negative indices (order
matters: the last write wins, float sums round in the reference's order), indices smaller than
x in the other dims, NaN in max/min, f32/f64/i32/i64/u8 (f16 for "none" only),
symbolic dims, and out-of-range indices raising CkirError like the interpreter.

Tolerance: exact (the same operations in the same order and type as numpy's ufunc.at)."""
import numpy as np
import pytest

import ckir
from ckir import Module, TensorType, new_graph
from ckir.backends.llvm.codegen import find_emitter
from ckir.backends.llvm.target import NAMES, runnable
from ckir.errors import CkirError

TARGETS = [t for t in NAMES if runnable(t)]
NP = {"f32": np.float32, "f64": np.float64, "f16": np.float16, "i32": np.int32, "i64": np.int64,
      "u8": np.uint8, "bool_": np.bool_}


def both(xs, is_, dtype, attrs, target, sym=None):
    g, b = new_graph("main", {"x": TensorType(sym[0] if sym else xs, getattr(ckir.dtypes, dtype)),
                              "i": TensorType(sym[1] if sym else is_, ckir.dtypes.i64),
                              "u": TensorType(sym[1] if sym else is_, getattr(ckir.dtypes, dtype))})
    g.set_outputs([b.nn.scatter_elements(*g.inputs, **attrs)], ["y"])
    m = Module("t")
    m.add_graph(g)
    assert all(find_emitter(op) is not None for op in g if op is not g.terminator)
    return ckir.compile(m), ckir.compile(m, backend="llvm", target=target, cache=False)


def data(r, shape, dtype):
    if dtype == "bool_":
        return r.random(shape) < 0.5
    if dtype[0] == "f":
        return r.uniform(-2, 2, shape).astype(NP[dtype])
    return r.integers(0 if dtype == "u8" else -50, 50, shape).astype(NP[dtype])


def same(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


CASES = [((1,), (1,), 0), ((17,), (40,), 0), ((5, 7), (3, 4), 0), ((5, 7), (5, 20), 1),
         ((3, 4, 5), (2, 3, 9), 2), ((3, 4, 5), (6, 2, 1), 0), ((3, 4, 5), (1, 9, 5), -2)]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_scatter_elements(case, reduction, target):
    xs, is_, axis = case
    r = np.random.default_rng(len(xs) + is_[0])
    n = xs[axis]
    for dtype in ("f32", "f64", "i32", "i64", "u8"):
        ref, llvm = both(xs, is_, dtype, dict(axis=axis, reduction=reduction), target)
        x, u = data(r, xs, dtype), data(r, is_, dtype)
        i = r.integers(-n, n, is_).astype(np.int64)          # repeats and negatives
        same(llvm(x, i, u)["y"], ref(x, i, u)["y"])


@pytest.mark.parametrize("target", TARGETS)
def test_none_for_every_dtype_and_nan(target):
    r = np.random.default_rng(5)
    for dtype in ("f16",):
        ref, llvm = both((4, 6), (4, 9), dtype, dict(axis=1), target)
        x, u, i = data(r, (4, 6), dtype), data(r, (4, 9), dtype), r.integers(-6, 6, (4, 9))
        same(llvm(x, i, u)["y"], ref(x, i, u)["y"])
    for red in ("max", "min"):
        ref, llvm = both((8,), (6,), "f32", dict(axis=0, reduction=red), target)
        x = np.array([1, np.nan, 3, 4, 5, 6, 7, 8], np.float32)
        u = np.array([np.nan, 2, 9, -9, np.nan, 0], np.float32)
        i = np.array([0, 1, 2, 2, 7, 7])
        same(llvm(x, i, u)["y"], ref(x, i, u)["y"])


@pytest.mark.parametrize("target", TARGETS)
def test_symbolic_and_out_of_range(target):
    ref, llvm = both(None, None, "f32", dict(axis=1, reduction="add"), target,
                     sym=(("N", "M"), ("N", "K")))
    r = np.random.default_rng(2)
    for n, m, kk in [(1, 1, 1), (3, 17, 5), (2, 1000, 3000)]:
        x, u = data(r, (n, m), "f32"), data(r, (n, kk), "f32")
        i = r.integers(-m, m, (n, kk))
        same(llvm(x, i, u)["y"], ref(x, i, u)["y"])
    x, u = data(r, (2, 4), "f32"), data(r, (2, 2), "f32")
    for bad in (4, -5):
        i = np.array([[0, 1], [bad, 2]])
        with pytest.raises(CkirError, match="out of range"):
            ref(x, i, u)
        with pytest.raises(CkirError, match="out of range"):
            llvm(x, i, u)


# --- scatter_nd / gather_nd ---------------------------------------------------------------------
def nd_module(op, xs, is_, us, dtype, attrs):
    ins = {"x": TensorType(xs, getattr(ckir.dtypes, dtype)), "i": TensorType(is_, ckir.dtypes.i64)}
    if us is not None:
        ins["u"] = TensorType(us, getattr(ckir.dtypes, dtype))
    g, b = new_graph("main", ins)
    g.set_outputs([getattr(b.nn, op)(*g.inputs, **attrs)], ["y"])
    m = Module("t")
    m.add_graph(g)
    assert all(find_emitter(o) is not None for o in g if o is not g.terminator)
    return m


ND_CASES = [  # (x shape, indices shape, batch_dims)
    ((1,), (1, 1), 0), ((5, 3), (4, 1), 0), ((5, 3), (7, 2), 0), ((4, 3, 17), (2, 3, 2), 0),
    ((2, 3, 4), (2, 1), 1), ((2, 3, 4), (2, 5, 2), 1), ((2, 3, 4, 5), (2, 3, 4, 1), 2),
]


def nd_indices(r, xs, is_, bd):
    k = is_[-1]
    cols = [r.integers(-xs[bd + j], xs[bd + j], is_[:-1]) for j in range(k)]
    return np.stack(cols, -1).astype(np.int64) if k else np.zeros(is_, np.int64)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", ND_CASES, ids=str)
def test_scatter_nd_gather_nd(case, target):
    xs, is_, bd = case
    r = np.random.default_rng(len(xs) * 10 + is_[0])
    us = tuple(is_[:-1]) + tuple(xs[bd + is_[-1]:])
    for dtype in ("f32", "i64"):
        x, i = data(r, xs, dtype), nd_indices(r, xs, is_, bd)
        m = nd_module("gather_nd", xs, is_, None, dtype, dict(batch_dims=bd))
        same(ckir.compile(m, backend="llvm", target=target, cache=False)(x, i)["y"], ckir.compile(m)(x, i)["y"])
        for red in ("none", "add", "mul", "max", "min"):
            u = data(r, us, dtype)
            m = nd_module("scatter_nd", xs, is_, us, dtype, dict(batch_dims=bd, reduction=red))
            same(ckir.compile(m, backend="llvm", target=target, cache=False)(x, i, u)["y"],
                 ckir.compile(m)(x, i, u)["y"])


@pytest.mark.parametrize("target", TARGETS)
def test_nd_out_of_range(target):
    x = np.zeros((3, 4), np.float32)
    i = np.array([[0, 1], [3, 0]])
    for op, us in (("gather_nd", None), ("scatter_nd", (2,))):
        m = nd_module(op, (3, 4), (2, 2), us, "f32", {})
        args = (x, i) + ((np.ones(2, np.float32),) if us else ())
        with pytest.raises(CkirError, match="out of range"):
            ckir.compile(m)(*args)
        with pytest.raises(CkirError, match="out of range"):
            ckir.compile(m, backend="llvm", target=target, cache=False)(*args)
