"""Elementwise ops, reductions, shape ops and matmul against torch: forward results (float64
unless a dtype says otherwise) and VJPs against torch.autograd in float64."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ckir
from ckir import Sym, TensorType
from oracle import check_grads, run_op, torch_vjp

R = np.random.default_rng(0)


def arr(*shape, low=None, high=None, dtype=np.float64):
    x = R.standard_normal(shape) if low is None else R.uniform(low, high, shape)
    return np.asarray(x, dtype=dtype)


UNARY = {
    "neg": (torch.neg, None), "abs": (torch.abs, None), "exp": (torch.exp, None),
    "log": (torch.log, (0.1, 3)), "sqrt": (torch.sqrt, (0.1, 3)), "rsqrt": (torch.rsqrt, (0.1, 3)),
    "reciprocal": (torch.reciprocal, (0.2, 3)), "sin": (torch.sin, None), "cos": (torch.cos, None),
    "tanh": (torch.tanh, None), "sigmoid": (torch.sigmoid, None), "relu": (torch.relu, None),
    "silu": (F.silu, None), "erf": (torch.erf, None), "floor": (torch.floor, None),
    "ceil": (torch.ceil, None), "round": (torch.round, None), "sign": (torch.sign, None),
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_against_torch(name):
    fn, dom = UNARY[name]
    x = arr(3, 5) if dom is None else arr(3, 5, low=dom[0], high=dom[1])
    c = arr(3, 5)
    (y,), grads = run_op(name, [x], {}, [c])
    ty, tg = torch_vjp(fn, [x], [c])
    np.testing.assert_allclose(y, ty[0], rtol=1e-13, atol=1e-15)
    check_grads(grads, tg, [x])


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_against_torch(approximate):
    x, c = arr(4, 7), arr(4, 7)
    (y,), grads = run_op("gelu", [x], {"approximate": approximate}, [c])
    ty, tg = torch_vjp(lambda t: F.gelu(t, approximate=approximate), [x], [c])
    np.testing.assert_allclose(y, ty[0], rtol=1e-13, atol=1e-15)
    check_grads(grads, tg, [x])


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-6), (np.float16, 1e-3)])
def test_unary_low_precision_rounds_once(dtype, tol):
    x = arr(64, dtype=dtype)
    (y,), _ = run_op("gelu", [x], {}, [None])
    assert y.dtype == dtype
    want = F.gelu(torch.tensor(x.astype(np.float64))).numpy()
    np.testing.assert_allclose(y.astype(np.float64), want, rtol=tol, atol=tol)


BINARY = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "pow": torch.pow,
          "maximum": torch.maximum, "minimum": torch.minimum, "mod": torch.remainder}
SHAPES = [((2, 3), (2, 3)), ((4, 1, 3), (2, 1)), ((3,), ()), ((), (2, 2))]


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize("sa,sb", SHAPES)
def test_binary_against_torch(name, sa, sb):
    pos = name in ("pow", "mod", "div")
    a = arr(*sa, low=0.5, high=2) if pos else arr(*sa)
    b = arr(*sb, low=0.5, high=2) if pos else arr(*sb)
    c = arr(*np.broadcast_shapes(sa, sb))
    (y,), grads = run_op(name, [a, b], {}, [c])
    ty, tg = torch_vjp(BINARY[name], [a, b], [c])
    np.testing.assert_allclose(y, ty[0], rtol=1e-13, atol=1e-15)
    check_grads(grads, tg, [a, b])


def test_integer_division_and_modulo_follow_c_and_python():
    a = np.array([7, -7, 7, -7, 0], np.int32)
    b = np.array([2, 2, -2, -2, 3], np.int32)
    (q,), _ = run_op("div", [a, b], {}, [None])
    (r,), _ = run_op("mod", [a, b], {}, [None])
    np.testing.assert_array_equal(q, torch.div(torch.tensor(a), torch.tensor(b), rounding_mode="trunc").numpy())
    np.testing.assert_array_equal(r, torch.remainder(torch.tensor(a), torch.tensor(b)).numpy())
    with pytest.raises(ckir.CkirError, match="integer division by zero"):
        run_op("div", [a, np.zeros(5, np.int32)], {}, [None])


@pytest.mark.parametrize("name,fn", [("eq", torch.eq), ("ne", torch.ne), ("lt", torch.lt), ("le", torch.le),
                                     ("gt", torch.gt), ("ge", torch.ge)])
def test_compare(name, fn):
    a = np.round(arr(4, 3)).astype(np.float32)
    b = np.round(arr(3)).astype(np.float32)
    (y,), _ = run_op(name, [a, b], {}, [None])
    assert y.dtype == np.bool_
    np.testing.assert_array_equal(y, fn(torch.tensor(a), torch.tensor(b)).numpy())


@pytest.mark.parametrize("name,fn", [("and", torch.logical_and), ("or", torch.logical_or),
                                     ("xor", torch.logical_xor)])
def test_logical(name, fn):
    a, b = R.random((3, 4)) < 0.5, R.random(4) < 0.5
    (y,), _ = run_op(name, [a, b], {}, [None])
    np.testing.assert_array_equal(y, fn(torch.tensor(a), torch.tensor(b)).numpy())
    (n,), _ = run_op("not", [a], {}, [None])
    np.testing.assert_array_equal(n, ~a)


def test_where_and_clip():
    cond, a, b = R.random((3, 4)) < 0.5, arr(3, 1), arr(4)
    c = arr(3, 4)
    (y,), grads = run_op("where", [cond, a, b], {}, [c])
    ty, tg = torch_vjp(lambda k, x, z: torch.where(k, x, z), [cond, a, b], [c])
    np.testing.assert_array_equal(y, ty[0])
    check_grads(grads, tg, [cond, a, b])
    x = arr(5, 6)
    (y,), grads = run_op("clip", [x], {"min": -0.5, "max": 0.7}, [c[:1, :1] * np.ones((5, 6))])
    ty, tg = torch_vjp(lambda t: torch.clamp(t, -0.5, 0.7), [x], [c[:1, :1] * np.ones((5, 6))])
    np.testing.assert_array_equal(y, ty[0])
    check_grads(grads, tg, [x])


@pytest.mark.parametrize("src,to", [(np.float32, "f16"), (np.float32, "i32"), (np.float64, "bf16"),
                                    (np.int64, "f32"), (np.bool_, "f32"), (np.float32, "bool")])
def test_cast_matches_torch(src, to):
    x = (arr(20) * 3).astype(src) if src is not np.bool_ else R.random(20) < 0.5
    (y,), _ = run_op("cast", [x], {"to": to}, [None])
    tdt = {"f16": torch.float16, "i32": torch.int32, "bf16": torch.bfloat16, "f32": torch.float32,
           "bool": torch.bool}[to]
    want = torch.tensor(x).to(tdt)
    np.testing.assert_array_equal(y.astype(np.float64), want.to(torch.float64).numpy())


RED = {"sum": torch.sum, "mean": torch.mean, "max": torch.amax, "min": torch.amin, "prod": torch.prod}


@pytest.mark.parametrize("name", sorted(RED))
@pytest.mark.parametrize("axes,keep", [([1], False), (None, False), ([0, -1], True), ([-2], True)])
def test_reductions(name, axes, keep):
    x = arr(3, 4, 5, low=0.5, high=1.5) if name == "prod" else arr(3, 4, 5)
    dims = tuple(range(3)) if axes is None else tuple(a % 3 for a in axes)
    if name == "prod":
        fn = lambda t: _prod(t, dims, keep)   # noqa: E731  (torch.prod takes one dim at a time)
    else:
        fn = lambda t: RED[name](t, dim=dims, keepdim=keep)   # noqa: E731
    shape = np.sum(x, axis=dims, keepdims=keep).shape
    c = arr(*shape)
    (y,), grads = run_op(name, [x], {"axes": axes, "keepdims": keep}, [c])
    ty, tg = torch_vjp(fn, [x], [c])
    np.testing.assert_allclose(y, ty[0], rtol=1e-13)
    check_grads(grads, tg, [x])


def _prod(t, dims, keep):
    for d in sorted(dims, reverse=True):
        t = torch.prod(t, dim=d, keepdim=keep)
    return t


def test_max_gradient_splits_ties_like_torch():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    c = np.array([1.0, 6.0])
    (y,), grads = run_op("max", [x], {"axes": [1]}, [c])
    ty, tg = torch_vjp(lambda t: torch.amax(t, dim=1), [x], [c])
    check_grads(grads, tg, [x])


@pytest.mark.parametrize("name,fn", [("argmax", torch.argmax), ("argmin", torch.argmin)])
def test_argmax(name, fn):
    x = arr(4, 6)
    for axis, keep in ((1, False), (0, True), (-1, True)):
        (y,), _ = run_op(name, [x], {"axis": axis, "keepdims": keep}, [None])
        np.testing.assert_array_equal(y, fn(torch.tensor(x), dim=axis, keepdim=keep).numpy())


SHAPE_OPS = [
    ("reshape", {"shape": [4, -1]}, lambda t: t.reshape(4, -1), (2, 3, 4)),
    ("transpose", {"perm": [2, 0, 1]}, lambda t: t.permute(2, 0, 1), (2, 3, 4)),
    ("transpose", {}, lambda t: t.permute(2, 1, 0), (2, 3, 4)),
    ("unsqueeze", {"axes": [0, -1]}, lambda t: t[None, ..., None], (2, 3)),
    ("squeeze", {"axes": [1]}, lambda t: t.squeeze(1), (2, 1, 3)),
    ("expand", {"shape": [2, 3, 4]}, lambda t: t.expand(2, 3, 4), (3, 1)),
]


@pytest.mark.parametrize("name,attrs,fn,shape", SHAPE_OPS)
def test_shape_ops(name, attrs, fn, shape):
    x = arr(*shape)
    c = arr(*fn(torch.tensor(x)).shape)
    (y,), grads = run_op(name, [x], attrs, [c])
    ty, tg = torch_vjp(fn, [x], [c])
    np.testing.assert_array_equal(y, ty[0])
    check_grads(grads, tg, [x])


MATMUL = [((2, 3), (3, 4), False, False), ((5, 3), (4, 3), False, True), ((3, 2), (3, 4), True, False),
          ((2, 1, 3, 4), (5, 4, 2), False, False), ((3,), (2, 3, 4), False, False), ((2, 3), (3,), False, False),
          ((3,), (3,), False, False), ((2, 4, 3), (2, 5, 4), True, True), ((1, 7), (6, 7), False, True)]


@pytest.mark.parametrize("sa,sb,ta,tb", MATMUL)
def test_matmul(sa, sb, ta, tb):
    a, b = arr(*sa), arr(*sb)

    def fn(x, y):
        return torch.matmul(x.transpose(-1, -2) if ta else x, y.transpose(-1, -2) if tb else y)
    c = arr(*fn(torch.tensor(a), torch.tensor(b)).shape)
    (y,), grads = run_op("matmul", [a, b], {"transpose_a": ta, "transpose_b": tb}, [c])
    ty, tg = torch_vjp(fn, [a, b], [c])
    np.testing.assert_allclose(y, ty[0], rtol=1e-12, atol=1e-12)
    check_grads(grads, tg, [a, b])


def test_matmul_symbolic_rows():
    x_t = TensorType([Sym("seq"), 8], "f32")
    w = arr(16, 8, dtype=np.float32)
    for n in (1, 5):
        x = arr(n, 8, dtype=np.float32)
        (y,), _ = run_op("matmul", [x, w], {"transpose_b": True}, [None],
                         types=[x_t, TensorType(w.shape, w.dtype)])
        np.testing.assert_allclose(y, torch.tensor(x) @ torch.tensor(w).T, rtol=1e-5, atol=1e-6)


def test_gradient_types_match_operands_with_anonymous_dims():
    # add([n,3], [?,3]) has type [?,3]; the gradient for x must still be typed [n,3]
    from oracle import op_module
    m, op = op_module("add", [TensorType([Sym("n"), 3], "f64"), TensorType([None, 3], "f64")], {})
    x, y = arr(4, 3), arr(4, 3)
    res = ckir.compile(m)(x, y, np.ones((4, 3)))
    np.testing.assert_array_equal(res["g0"], np.ones((4, 3)))
    assert [v.type for v in m.main.outputs][1:] == [TensorType([Sym("n"), 3], "f64"), TensorType([None, 3], "f64")]


def test_cast_from_f64_rounds_once():
    """f64 -> bf16 must round once, to nearest even. torch and ml_dtypes both go through f32 and
    round twice, so the oracle is brute force: every finite bf16 value, exactly in f64."""
    import ml_dtypes
    with np.errstate(invalid="ignore"):        # the NaN bit patterns
        table = np.arange(65536, dtype=np.uint16).view(ml_dtypes.bfloat16).astype(np.float64)
    bits = np.arange(65536)
    ok = np.isfinite(table)
    table, bits = table[ok], bits[ok]
    order = np.argsort(table, kind="stable")
    table, bits = table[order], bits[order]

    def nearest_even(v):
        i = np.searchsorted(table, v)
        lo, hi = table[max(i - 1, 0)], table[min(i, len(table) - 1)]
        if v - lo != hi - v:
            return lo if v - lo < hi - v else hi
        return lo if bits[max(i - 1, 0)] % 2 == 0 else hi

    x = np.concatenate([[1 + 2**-8 + 2**-40, -(1 + 2**-8 + 2**-40), 1 + 2**-8, 3.0],
                        R.standard_normal(200) * 10.0 ** R.integers(-20, 20, 200)])
    (y,), _ = run_op("cast", [x], {"to": "bf16"}, [None])
    want = np.array([nearest_even(v) for v in x])
    np.testing.assert_array_equal(y.astype(np.float64), want)
    assert y[0] == 1 + 2**-7        # torch.tensor(x).to(torch.bfloat16) gives 1.0 here
