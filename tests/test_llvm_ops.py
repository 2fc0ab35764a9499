"""Every op with an LLVM kernel, on every target this CPU runs, against the interpreter: the
op's declared examples, plus odd sizes (1, 3, 17, 1000) and broadcasting corners for
elementwise ops.

Tolerance: kernels may evaluate transcendental functions with other (still ~1 ulp) formulas
and sum in another order, so floats compare with rtol=atol=1e-5 in f32 (a few ulps of O(1)
values), 1e-12 in f64, 1e-2 for f16/bf16 (their own ulp); everything else must be equal."""
import numpy as np
import pytest

import ckir
from ckir import dtypes as dt
from ckir.backends.llvm.codegen import emitter_names, find_emitter
from ckir.backends.llvm.target import NAMES, runnable
from opcheck import one_op_module

TARGETS = [t for t in NAMES if runnable(t)]
TOL = {dt.f32: 1e-5, dt.f64: 1e-12, dt.f16: 1e-2, dt.bf16: 1e-2}


def compare(m, xs, target):
    want = ckir.compile(m)(*xs)
    got = ckir.compile(m, backend="llvm", target=target, cache=False)(*xs)
    for k in want:
        a, b = got[k], want[k]
        assert a.dtype == b.dtype and a.shape == b.shape, (k, a.dtype, b.dtype, a.shape, b.shape)
        d = ckir.dtypes.dtype(b.dtype)
        if d in TOL:
            np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=TOL[d], atol=TOL[d])
        else:
            np.testing.assert_array_equal(a, b)


def native_ops(m):
    return [op for op in m.main if find_emitter(op) is not None]


CASES = [(ckir.get_op(n), i) for n in emitter_names() for i in range(len(ckir.get_op(n).examples))]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("opdef,i", CASES, ids=[f"{o.name}-{i}" for o, i in CASES])
def test_declared_examples(opdef, i, target):
    ex = opdef.examples[i]
    arrays = ex.arrays(np.random.default_rng(i))
    m, op, xs = one_op_module(opdef, arrays, ex.attrs, ex.types(arrays))
    if find_emitter(op) is None:
        pytest.skip(f"{opdef.name} with these dtypes/attributes runs in the interpreter (no kernel)")
    compare(m, xs, target)


ELEMENTWISE_SHAPES = [((1,), (1,)), ((3,), (3,)), ((17,), (17,)), ((1000,), (1000,)), ((17, 3), (3,)),
                      ((3, 1, 17), (5, 1)), ((1000,), ()), ((), ()), ((2, 1), (1, 1000)), ((0, 3), (3,))]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["nn.add", "nn.mul", "nn.maximum", "nn.where", "nn.gelu", "nn.exp"])
@pytest.mark.parametrize("sa,sb", ELEMENTWISE_SHAPES)
def test_elementwise_sizes_and_broadcasting(name, sa, sb, target):
    r = np.random.default_rng(0)
    a = r.standard_normal(sa).astype(np.float32)
    b = r.standard_normal(sb).astype(np.float32)
    od = ckir.get_op(name)
    if name == "nn.where":
        arrays = [np.asarray(r.random(sa) < 0.5), a, b]
    elif len(od.operands) == 1:
        arrays = [a]
    else:
        arrays = [a, b]
    m, op, xs = one_op_module(od, arrays, {})
    compare(m, xs, target)


@pytest.mark.parametrize("target", TARGETS)
def test_symbolic_dims_one_compile_every_size(target):
    g, b = ckir.new_graph("main", {"x": ckir.TensorType(["n", 7], "f32"), "y": ckir.TensorType([7], "f32")})
    g.set_outputs([b.nn.tanh(b.nn.add(*g.inputs))], ["z"])
    m = ckir.Module()
    m.add_graph(g)
    f = ckir.compile(m, backend="llvm", target=target, cache=False)
    for n in (1, 5, 300):
        x = np.random.default_rng(n).standard_normal((n, 7)).astype(np.float32)
        y = np.random.default_rng(1).standard_normal(7).astype(np.float32)
        np.testing.assert_allclose(f(x, y)["z"], np.tanh(x + y), rtol=1e-6, atol=1e-6)


def test_unsupported_ops_fall_back_to_the_interpreter():
    m = ckir.load(__import__("os").path.join(__import__("os").path.dirname(__file__), "..", "examples", "mlp.ckir"))
    f = ckir.compile(m, backend="llvm", cache=False)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(f(x)["logits"], ckir.compile(m)(x)["logits"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target", TARGETS)
def test_half_and_bfloat_conversions_are_exact(target):
    """Every f16/bf16 bit pattern to f32, and f32 specials, subnormals and ties back to them,
    must equal numpy/ml_dtypes bit for bit (with and without F16C)."""
    import ml_dtypes
    halves = np.arange(65536, dtype=np.uint16).view(np.float16)
    bfs = np.arange(65536, dtype=np.uint16).view(ml_dtypes.bfloat16)
    r = np.random.default_rng(0)
    f32 = np.concatenate([r.standard_normal(10000).astype(np.float32) * np.float32(10.0) ** r.integers(-9, 6, 10000),
                          np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504, 65520, 65519.99, 6e-8, 3e-8, 1e-40,
                                    2.0 ** -24, 2.0 ** -25, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11], np.float32)])
    for src, to in ((halves, "f32"), (bfs, "f32"), (f32, "f16"), (f32, "bf16")):
        m, op, xs = one_op_module(ckir.get_op("nn.cast"), [src], {"to": to})
        got = ckir.compile(m, backend="llvm", target=target, cache=False)(*xs)["y0"]
        want = ckir.compile(m)(*xs)["y0"]
        nan = np.isnan(want.astype(np.float32))
        assert np.array_equal(np.isnan(got.astype(np.float32)), nan)
        assert np.array_equal(got[~nan].view(np.uint8), want[~nan].view(np.uint8)), (src.dtype, to)
