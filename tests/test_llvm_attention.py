"""The LLVM nn.attention kernel (backends/llvm/kernels/nn_attention.py) against the interpreter:
multi-head, grouped-query and multi-query heads, broadcast batch dims (q, k, v, mask), bool and
float masks of every broadcast shape, causal with Tq < Tk (decode), sliding windows, softcap,
explicit scale, rows that see no key, Tk = 1, odd sizes (1, 3, 17) and long rows (1000 keys),
symbolic dims (one compile, many sizes), f32/f64/f16/bf16.

Tolerances, and why: the reference computes p = e / z and p @ v with numpy (BLAS order), the
kernel accumulates e_j * v_j and divides once, with exp from mathf (2 ulp): outputs are
convex combinations of v, O(1), a few ulps apart: rtol = atol = 2e-5 in f32 (1000-key rows add
up ~1000 roundings of each order), 1e-12 in f64, one ulp of the output type for f16/bf16
(computed in f32 and rounded once, as the reference).
"""
import ml_dtypes
import numpy as np
import pytest

import ckir
from ckir import Module, TensorType, new_graph
from ckir.backends.llvm.codegen import find_emitter
from ckir.backends.llvm.target import NAMES, runnable

TARGETS = [t for t in NAMES if runnable(t)]
F = {"f32": np.float32, "f64": np.float64, "f16": np.float16, "bf16": ml_dtypes.bfloat16,
     "bool": np.bool_}
TOL = {"f32": 2e-5, "f64": 1e-12, "f16": 2.0 ** -10, "bf16": 2.0 ** -7}


def build(types: dict, attrs):
    g, b = new_graph("main", {n: TensorType(tuple(s), getattr(ckir.dtypes, "bool_" if d == "bool" else d))
                              for n, (s, d) in types.items()})
    g.set_outputs([b.nn.attention(*g.inputs, **attrs)], ["y"])
    m = Module("t")
    m.add_graph(g)
    assert all(find_emitter(op) is not None for op in g if op is not g.terminator)
    return m


def data(r, shape, dtype):
    if dtype == "bool":
        return r.random(shape) < 0.6
    return r.uniform(-1, 1, shape).astype(F[dtype])


def check(shapes, attrs, target, dtype="f32", mask_dtype=None, seed=0, sym=None):
    r = np.random.default_rng(seed)
    names = ["q", "k", "v", "mask"][:len(shapes)]
    dts = [dtype] * 3 + ([mask_dtype or dtype] if len(shapes) == 4 else [])
    xs = [data(r, s, d) for s, d in zip(shapes, dts)]
    types = {n: (sym[i] if sym else s, d) for i, (n, s, d) in enumerate(zip(names, shapes, dts))}
    m = build(types, attrs)
    want = ckir.compile(m)(*xs)["y"]
    got = ckir.compile(m, backend="llvm", target=target, cache=False)(*xs)["y"]
    assert got.dtype == want.dtype and got.shape == want.shape, (got.shape, want.shape)
    tol = TOL[dtype]
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol)


CASES = [
    # (shapes, attrs, mask dtype)
    ([(1, 1, 1), (1, 1, 1), (1, 1, 1)], {}, None),
    ([(2, 3, 17, 5), (2, 3, 17, 5), (2, 3, 17, 3)], {}, None),                   # multi-head
    ([(2, 4, 3, 5), (2, 2, 6, 5), (2, 2, 6, 3)], dict(causal=True), None),       # GQA, causal
    ([(1, 6, 4, 8), (1, 1, 9, 8), (1, 1, 9, 7)], dict(causal=True), None),       # MQA, Tq < Tk
    ([(3, 4, 2), (1, 3, 2), (1, 3, 4), (4, 3)], {}, "bool"),                       # broadcast batch
    ([(2, 1, 2, 5, 3), (3, 1, 7, 3), (3, 1, 7, 2), (2, 5, 7)], dict(scale=0.7, softcap=2.0), "f32"),
    ([(2, 6, 4), (2, 6, 4), (2, 6, 4)], dict(causal=True, window=2), None),
    ([(4, 1, 3), (2, 5, 3), (2, 5, 3), (4, 1, 5)], dict(causal=True), "f32"),
    ([(2, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 4), (2, 1, 1, 5)], {}, "bool"),       # mask over keys only
    ([(2, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 4), (1, 2, 3, 1)], {}, "f32"),        # mask over rows only
    ([(1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 4), (3, 5)], dict(causal=True, window=1), "bool"),
    ([(1, 1, 17, 16), (1, 1, 1000, 16), (1, 1, 1000, 17)], dict(causal=True), None),
    ([(2, 3, 1, 8), (2, 1, 3, 8), (2, 1, 3, 8)], dict(softcap=0.5), None),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}{c[1]}{c[2]}")
def test_attention_cases(case, target):
    shapes, attrs, md = case
    check(shapes, attrs, target, mask_dtype=md)


@pytest.mark.parametrize("target", TARGETS)
def test_rows_that_see_nothing(target):
    """An all-false bool mask row and an all -inf float row give zeros, as the reference."""
    for md in ("bool", "f32"):
        r = np.random.default_rng(1)
        q, k, v = (r.uniform(-1, 1, s).astype(np.float32) for s in ((1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 4)))
        mask = (r.random((1, 2, 3, 5)) < 0.5) if md == "bool" else r.uniform(-1, 1, (1, 2, 3, 5)).astype(np.float32)
        mask[0, 1, 2, :] = False if md == "bool" else -np.inf
        m = build({"q": (q.shape, "f32"), "k": (k.shape, "f32"), "v": (v.shape, "f32"), "mask": (mask.shape, md)}, {})
        want = ckir.compile(m)(q, k, v, mask)["y"]
        got = ckir.compile(m, backend="llvm", target=target, cache=False)(q, k, v, mask)["y"]
        assert np.all(got[0, 1, 2] == 0)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", ["f64", "f16", "bf16"])
def test_dtypes(dtype, target):
    check([(2, 4, 3, 8), (2, 2, 7, 8), (2, 2, 7, 5), (2, 1, 3, 7)], dict(causal=True, softcap=3.0),
          target, dtype=dtype, mask_dtype=dtype)
    check([(2, 4, 3, 8), (2, 2, 7, 8), (2, 2, 7, 5), (3, 7)], {}, target, dtype=dtype, mask_dtype="bool")


@pytest.mark.parametrize("target", TARGETS)
def test_symbolic_dims(target):
    """Batch, sequence lengths and head dim symbolic: one compile, several sizes (scale read at
    run time from D)."""
    types = {"q": (("B", 4, "T", "D"), "f32"), "k": (("B", 2, "S", "D"), "f32"),
             "v": (("B", 2, "S", "E"), "f32")}
    m = build(types, dict(causal=True))
    ref = ckir.compile(m)
    llvm = ckir.compile(m, backend="llvm", target=target, cache=False)
    r = np.random.default_rng(3)
    for bsz, t, s, d, e in [(1, 1, 1, 1, 1), (2, 3, 17, 5, 3), (1, 17, 17, 16, 9)]:
        xs = [data(r, sh, "f32") for sh in ((bsz, 4, t, d), (bsz, 2, s, d), (bsz, 2, s, e))]
        np.testing.assert_allclose(llvm(*xs)["y"], ref(*xs)["y"], rtol=2e-5, atol=2e-5)
