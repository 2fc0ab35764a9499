"""The LLVM kernels of backends/llvm/kernels/nn_axis.py against the interpreter: nn.cumsum and
nn.cumprod over every axis of ranks 1 to 4 (exclusive, reverse, both; the axis as attribute or
run-time operand, negative too; an out-of-range run-time axis raising CkirError), sizes 1, 3,
17, 1000, empty axes, f32/f64/i32/i64/u8 (integers wrap); nn.hardmax over every axis with NaN,
ties and every float dtype; symbolic dims.

Tolerances: exact everywhere. The scans add/multiply in the order numpy's accumulate does, in
the same type; hardmax is a comparison.
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
F = {"f32": np.float32, "f64": np.float64, "f16": np.float16, "bf16": ml_dtypes.bfloat16,
     "i32": np.int32, "i64": np.int64, "u8": np.uint8}


def compile_both(types, fn, target):
    g, b = new_graph("main", {n: TensorType(tuple(s), getattr(ckir.dtypes, d)) for n, (s, d) in types.items()})
    outs = fn(b, *g.inputs)
    g.set_outputs(outs, [f"y{i}" for i in range(len(outs))])
    m = Module("t")
    m.add_graph(g)
    assert all(find_emitter(op) is not None for op in g if op is not g.terminator)
    return ckir.compile(m), ckir.compile(m, backend="llvm", target=target, cache=False)


def same(got, want):
    for n in want:
        g, w = got[n], want[n]
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)      # NaN == NaN for assert_array_equal


def data(r, shape, dtype, kind="sum"):
    if dtype.startswith("f"):
        lo, hi = (0.5, 1.5) if kind == "prod" else (-1, 1)
        return r.uniform(lo, hi, shape).astype(F[dtype])
    return r.integers(-100 if dtype[0] == "i" else 0, 100, shape).astype(F[dtype])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("shape", [(1,), (17,), (1000,), (3, 17), (2, 3, 4), (3, 1, 5, 2), (2, 0, 3)], ids=str)
def test_cum_every_axis(shape, target):
    r = np.random.default_rng(len(shape))
    rank = len(shape)
    for kind in ("cumsum", "cumprod"):
        x = data(r, shape, "f32", "prod" if kind == "cumprod" else "sum")

        def fn(b, xv):
            return [getattr(b.nn, kind)(xv, axis=a, exclusive=e, reverse=rv)
                    for a in list(range(rank)) + [-1] for e in (False, True) for rv in (False, True)]
        ref, llvm = compile_both({"x": (shape, "f32")}, fn, target)
        same(llvm(x), ref(x))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", ["f64", "i32", "i64", "u8"])
def test_cum_dtypes(dtype, target):
    r = np.random.default_rng(7)
    x = data(r, (3, 17), dtype)

    def fn(b, xv):
        return [op(xv, axis=a, exclusive=e, reverse=rv) for op in (b.nn.cumsum, b.nn.cumprod)
                for a in (0, 1) for e in (False, True) for rv in (False, True)]
    ref, llvm = compile_both({"x": ((3, 17), dtype)}, fn, target)
    same(llvm(x), ref(x))


@pytest.mark.parametrize("target", TARGETS)
def test_cum_runtime_axis(target):
    x = data(np.random.default_rng(1), (2, 3, 5), "f32")
    ref, llvm = compile_both({"x": ((2, 3, 5), "f32"), "a": ((), "i64")},
                             lambda b, xv, av: [b.nn.cumsum(xv, av, exclusive=True),
                                                b.nn.cumprod(xv, av, reverse=True)], target)
    for a in (0, 1, 2, -1, -3):
        same(llvm(x, np.array(a)), ref(x, np.array(a)))
    for bad in (3, -4):
        with pytest.raises(CkirError):
            ref(x, np.array(bad))
        with pytest.raises(CkirError):
            llvm(x, np.array(bad))


@pytest.mark.parametrize("target", TARGETS)
def test_cum_symbolic(target):
    ref, llvm = compile_both({"x": (("N", "M"), "f32")},
                             lambda b, xv: [b.nn.cumsum(xv, axis=0), b.nn.cumsum(xv, axis=1, reverse=True)], target)
    r = np.random.default_rng(2)
    for shape in [(1, 1), (3, 17), (1000, 3)]:
        x = data(r, shape, "f32")
        same(llvm(x), ref(x))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", ["f32", "f64", "f16", "bf16"])
def test_hardmax(dtype, target):
    r = np.random.default_rng(3)
    shape = (3, 4, 17)
    x = r.integers(-3, 4, shape).astype(F[dtype])       # many ties: the first maximum wins
    x[0, 1, 5] = np.nan
    x[2, :, 3] = np.nan
    x[1, 2, :] = -np.inf
    ref, llvm = compile_both({"x": (shape, dtype)},
                             lambda b, xv: [b.nn.hardmax(xv, axis=a) for a in (0, 1, 2, -1)], target)
    same(llvm(x), ref(x))
    x1 = r.uniform(-1, 1, (1000,)).astype(F[dtype])
    ref, llvm = compile_both({"x": ((1000,), dtype)}, lambda b, xv: [b.nn.hardmax(xv, axis=0)], target)
    same(llvm(x1), ref(x1))
