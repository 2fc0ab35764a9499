"""Group A of the ONNX op coverage: activations, elementwise math, casts and small math ops.

First the nn ops declared for it (dialects/nn/activation.py) against independent
implementations: torch for forward results and (float64, autograd) VJPs; onnx.reference where
torch has no equivalent (Shrink with a general bias, out-of-range BitShift, Hardmax ties, the
float8e8m0 cast). Then the converters (frontends/onnx/ops/activation.py) on ONNX models the
backend suite does not cover, against onnxruntime or onnx.reference.

Tolerances: float64 forward results of transcendental functions from two libraries agree to a
few ulps (rtol 1e-13); exact ops (bit operations, selections, casts) must match exactly;
gradients use oracle.TOL (float64, summed in another order than torch sums them)."""
import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import ckir
from ckir import TensorType, new_graph
from ckir import dtypes as dt
from ckir.dialects.nn.activation import SELU_ALPHA, SELU_GAMMA
from ckir.frontends.onnx import import_onnx
from oracle import check_grads, op_module, run_op, torch_vjp

R = np.random.default_rng(0)
FWD = {"rtol": 1e-13, "atol": 1e-15}


def arr(*shape, low=None, high=None, dtype=np.float64):
    x = R.standard_normal(shape) if low is None else R.uniform(low, high, shape)
    return np.asarray(x, dtype=dtype)


def check_against_torch(name, fn, xs, attrs=None, tol=FWD):
    """nn.<name> on xs (float64) and its VJP against torch `fn` and autograd."""
    c = arr(*fn(*[torch.tensor(x) for x in xs]).shape)
    (y,), grads = run_op(name, xs, attrs or {}, [c])
    ty, tg = torch_vjp(fn, xs, [c])
    np.testing.assert_allclose(y, ty[0], **tol)
    check_grads(grads, tg, xs)


# --- unary math and activations ---------------------------------------------------------------------
UNARY = {
    "asin": (torch.asin, (-0.95, 0.95)), "acos": (torch.acos, (-0.95, 0.95)), "atan": (torch.atan, None),
    "tan": (torch.tan, (-1.3, 1.3)), "sinh": (torch.sinh, None), "cosh": (torch.cosh, None),
    "asinh": (torch.asinh, None), "acosh": (torch.acosh, (1.05, 4)), "atanh": (torch.atanh, (-0.95, 0.95)),
    "softplus": (F.softplus, (-15, 15)), "softsign": (F.softsign, None), "mish": (F.mish, (-6, 6)),
    "hard_swish": (F.hardswish, (-5, 5)),
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_against_torch(name):
    fn, dom = UNARY[name]
    x = arr(4, 6) if dom is None else arr(4, 6, low=dom[0], high=dom[1])
    check_against_torch(name, fn, [x])


def test_softplus_is_exact_for_large_inputs():
    x = np.array([-800.0, -40.0, 0.0, 40.0, 800.0])
    (y,), _ = run_op("softplus", [x], {}, [None])
    want = torch.logaddexp(torch.zeros(5, dtype=torch.float64), torch.tensor(x)).numpy()
    np.testing.assert_allclose(y, want, rtol=1e-15, atol=0)
    assert np.isfinite(y).all()


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-6), (np.float16, 1e-3)])
@pytest.mark.parametrize("name", ["asinh", "mish", "softplus", "tan"])
def test_low_precision_rounds_once(name, dtype, tol):
    x = arr(64, low=-1.2, high=1.2).astype(dtype)
    (y,), _ = run_op(name, [x], {}, [None])
    assert y.dtype == dtype
    want = UNARY[name][0](torch.tensor(x.astype(np.float64))).numpy()
    np.testing.assert_allclose(y.astype(np.float64), want, rtol=tol, atol=tol)


ACT = [
    ("elu", {}, lambda t: F.elu(t)),
    ("elu", {"alpha": 0.3}, lambda t: F.elu(t, alpha=0.3)),
    ("selu", {}, lambda t: SELU_GAMMA * F.elu(t, SELU_ALPHA)),
    ("selu", {"alpha": 2.0, "gamma": 3.0}, lambda t: 3.0 * F.elu(t, alpha=2.0)),
    ("celu", {}, F.celu),
    ("celu", {"alpha": 2.5}, lambda t: F.celu(t, alpha=2.5)),
    ("leaky_relu", {}, F.leaky_relu),
    ("leaky_relu", {"alpha": 0.2}, lambda t: F.leaky_relu(t, 0.2)),
    ("thresholded_relu", {}, lambda t: F.threshold(t, 1.0, 0.0)),
    ("thresholded_relu", {"alpha": -0.3}, lambda t: F.threshold(t, -0.3, 0.0)),
    ("hard_sigmoid", {"alpha": 1 / 6, "beta": 0.5}, lambda t: torch.clamp(t / 6 + 0.5, 0, 1)),
    ("hard_sigmoid", {}, lambda t: torch.clamp(0.2 * t + 0.5, 0, 1)),
    ("shrink", {"lambd": 0.7, "bias": 0.7}, lambda t: F.softshrink(t, 0.7)),
    ("shrink", {"lambd": 0.4, "bias": 0.0}, lambda t: F.hardshrink(t, 0.4)),
]


@pytest.mark.parametrize("name,attrs,fn", ACT, ids=[f"{n}-{a}" for n, a, _ in ACT])
def test_activation_against_torch(name, attrs, fn):
    x = arr(5, 7) * 3
    check_against_torch(name, fn, [x], attrs)


def test_selu_defaults_are_onnx_f32_constants():
    """ONNX gives SELU's constants as f32 attributes: within f32 rounding of torch's."""
    assert SELU_ALPHA == float(np.float32(1.6732632423543772)) and SELU_GAMMA == float(np.float32(1.0507009873554805))
    x = arr(50) * 3
    (y,), _ = run_op("selu", [x], {}, [None])
    np.testing.assert_allclose(y, F.selu(torch.tensor(x)).numpy(), rtol=1e-7, atol=0)


def onnx_ref_node(op_type, inputs, opset=22, **attrs):
    """One ONNX node run by onnx.reference; inputs: list of arrays (named i0, i1, ...)."""
    names = [f"i{k}" for k in range(len(inputs))]
    node = helper.make_node(op_type, names, ["y"], **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                                        for n, a in zip(names, inputs)],
                          [helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    return ReferenceEvaluator(m).run(None, dict(zip(names, inputs)))[0]


@pytest.mark.parametrize("x,lambd,bias", [
    (arr(4, 5) * 2, 0.5, 0.25), (arr(9), 1.0, -0.5),
    (np.arange(-6, 7, dtype=np.int32), 1.5, 1.0), (np.arange(-6, 7, dtype=np.int64), 2.0, 0.5)])
def test_shrink_against_onnx_reference(x, lambd, bias):
    (y,), _ = run_op("shrink", [x], {"lambd": lambd, "bias": bias}, [None])
    want = onnx_ref_node("Shrink", [x], opset=9, lambd=lambd, bias=bias)
    assert y.dtype == x.dtype
    np.testing.assert_allclose(y, want, **FWD)


def test_prelu_per_channel_against_torch():
    x, w = arr(2, 3, 4, 5), arr(3)
    c = arr(2, 3, 4, 5)
    (y,), grads = run_op("prelu", [x, w.reshape(3, 1, 1)], {}, [c])
    (ty,), tg = torch_vjp(lambda a, s: F.prelu(a, s), [x, w], [c])
    np.testing.assert_allclose(y, ty, **FWD)
    check_grads([grads[0], grads[1].reshape(3)], tg, [x, w])


def test_prelu_broadcast_and_ints():
    check_against_torch("prelu", lambda a, s: torch.where(a < 0, a * s, a), [arr(4, 3), arr(3)])
    x, s = np.arange(-4, 4, dtype=np.int32).reshape(2, 4), np.array([2, 3, 1, 5], np.int32)
    (y,), _ = run_op("prelu", [x, s], {}, [None])
    np.testing.assert_array_equal(y, onnx_ref_node("PRelu", [x, s], opset=16))


def test_fmod_against_torch():
    a, b = arr(4, 6) * 5, arr(6) * 2
    check_against_torch("fmod", torch.fmod, [a, b])
    for d in (np.int8, np.int32, np.int64, np.uint16):
        x = np.array([7, -7, 7, -7, 0, 13], np.int64).astype(d)
        y = np.array([3, 3, -3, -3, 5, 4], np.int64).astype(d)
        (r,), _ = run_op("fmod", [x, y], {}, [None])
        assert r.dtype == d
        np.testing.assert_array_equal(r, torch.fmod(torch.tensor(x.astype(np.int64)), torch.tensor(y.astype(np.int64))).numpy().astype(d))
    with pytest.raises(ckir.CkirError, match="integer fmod by zero"):
        run_op("fmod", [np.ones(3, np.int32), np.zeros(3, np.int32)], {}, [None])


SPECIAL = np.array([1.5, np.nan, -np.inf, 0.0, np.inf, -2.0, -np.nan])


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_isnan_isinf_against_torch(dtype):
    x = SPECIAL.astype(dtype)
    t = torch.tensor(x)
    (y,), _ = run_op("isnan", [x], {}, [None])
    np.testing.assert_array_equal(y, torch.isnan(t).numpy())
    for pos, neg, fn in ((True, True, torch.isinf), (True, False, torch.isposinf), (False, True, torch.isneginf),
                         (False, False, lambda v: torch.zeros_like(v, dtype=torch.bool))):
        (y,), _ = run_op("isinf", [x], {"detect_positive": pos, "detect_negative": neg}, [None])
        assert y.dtype == np.bool_
        np.testing.assert_array_equal(y, fn(t).numpy())


# --- bit operations ---------------------------------------------------------------------------------
INT_TYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]


def ints(shape, dtype, seed=0):
    info = np.iinfo(dtype)
    return np.random.default_rng(seed).integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("dtype", INT_TYPES)
def test_bitwise_against_torch(dtype):
    a, b = ints((3, 4), dtype), ints((4,), dtype, 1)
    for name, fn in (("bitwise_and", np.bitwise_and), ("bitwise_or", np.bitwise_or), ("bitwise_xor", np.bitwise_xor)):
        (y,), _ = run_op(name, [a, b], {}, [None])
        assert y.dtype == dtype
        if dtype in (np.uint16, np.uint32, np.uint64):      # torch lacks these bitwise kernels
            np.testing.assert_array_equal(y, fn(a, b))
        else:
            np.testing.assert_array_equal(y, getattr(torch, name)(torch.tensor(a), torch.tensor(b)).numpy())
    (y,), _ = run_op("bitwise_not", [a], {}, [None])
    np.testing.assert_array_equal(y, ~a)
    if dtype not in (np.uint16, np.uint32, np.uint64):
        np.testing.assert_array_equal(y, torch.bitwise_not(torch.tensor(a)).numpy())


@pytest.mark.parametrize("dtype", INT_TYPES)
def test_shifts_against_onnx_reference(dtype):
    bits = np.dtype(dtype).itemsize * 8
    a = ints((4, 1), dtype)
    s = np.array([-3, -1, 0, 1, bits - 1, bits, bits + 5], np.int64)
    s = s[s >= 0].astype(dtype) if np.dtype(dtype).kind == "u" else s.astype(dtype)
    for name, d in (("shift_left", "LEFT"), ("shift_right", "RIGHT")):
        (y,), _ = run_op(name, [a, s], {}, [None])
        np.testing.assert_array_equal(y, onnx_ref_node("BitShift", [a, s], opset=28, direction=d))
    # in range, torch agrees (torch's shifts are defined for in-range amounts only)
    if dtype in (np.int8, np.int16, np.int32, np.int64, np.uint8):
        k = (s[(s >= 0) & (s < bits)]).astype(dtype)
        (y,), _ = run_op("shift_right", [a, k], {}, [None])
        np.testing.assert_array_equal(y, torch.bitwise_right_shift(torch.tensor(a), torch.tensor(k)).numpy())


# --- cumulative ops ---------------------------------------------------------------------------------
def torch_cum(fn, axis, exclusive, reverse):
    def f(t):
        x = torch.flip(t, [axis]) if reverse else t
        y = fn(x, axis)
        if exclusive:
            ident = torch.zeros_like if fn is torch.cumsum else torch.ones_like
            head = ident(y.narrow(axis, 0, 1))
            y = torch.cat([head, y.narrow(axis, 0, y.shape[axis] - 1)], axis)
        return torch.flip(y, [axis]) if reverse else y
    return f


@pytest.mark.parametrize("name,fn", [("cumsum", torch.cumsum), ("cumprod", torch.cumprod)])
@pytest.mark.parametrize("axis,exclusive,reverse", [(1, False, False), (0, True, False), (-1, False, True),
                                                    (2, True, True), (-3, True, True)])
def test_cumulative_against_torch(name, fn, axis, exclusive, reverse):
    x = arr(3, 4, 5, low=0.5, high=1.5) * np.where(arr(3, 4, 5) < 0, -1, 1)
    attrs = {"axis": axis, "exclusive": exclusive, "reverse": reverse}
    check_against_torch(name, torch_cum(fn, axis % 3, exclusive, reverse), [x], attrs, tol={"rtol": 1e-12, "atol": 1e-14})
    # the axis as a run-time operand gives the same
    c = arr(3, 4, 5)
    (y,), grads = run_op(name, [x, np.array(axis, np.int64)], {"exclusive": exclusive, "reverse": reverse}, [c])
    (y2,), grads2 = run_op(name, [x], attrs, [c])
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(grads[0], grads2[0])


@pytest.mark.parametrize("op_type", ["CumSum", "CumProd"])
def test_cumulative_ints_against_onnx_reference(op_type):
    x = R.integers(-4, 5, (3, 5)).astype(np.int32)
    for axis, exclusive, reverse in ((1, 1, 0), (0, 0, 1), (-1, 1, 1)):
        (y,), _ = run_op(op_type.lower(), [x], {"axis": axis, "exclusive": bool(exclusive), "reverse": bool(reverse)}, [None])
        want = onnx_ref_node(op_type, [x, np.array(axis, np.int64)], opset=26, exclusive=exclusive, reverse=reverse)
        assert y.dtype == np.int32
        np.testing.assert_array_equal(y, want)


def test_cumsum_symbolic_dims():
    types = [TensorType(["seq", 4], "f64")]
    _, op = op_module("nn.cumsum", types, {"axis": 0, "exclusive": True})
    assert op.results[0].type is types[0]
    for seq in (3, 7):
        x, c = arr(seq, 4), arr(seq, 4)
        (y,), grads = run_op("cumsum", [x], {"axis": 0, "exclusive": True}, [c], types)
        (ty,), tg = torch_vjp(torch_cum(torch.cumsum, 0, True, False), [x], [c])
        np.testing.assert_allclose(y, ty, rtol=1e-13, atol=1e-15)
        check_grads(grads, tg, [x])


# --- einsum, det, inverse ---------------------------------------------------------------------------
EINSUM = [("ij,jk->ik", [(2, 3), (3, 4)]), ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]), ("ii->i", [(4, 4)]),
          ("bii->bi", [(2, 3, 3)]), ("ii", [(3, 3)]), ("i,i", [(5,), (5,)]), ("ij->", [(2, 3)]),
          ("...ij->...ji", [(2, 3, 4)]), ("ij,j,jk->ik", [(2, 3), (3,), (3, 4)]), ("ij->j", [(3, 4)]),
          ("...ij,...jk", [(1, 2, 3), (4, 3, 5)]), ("i,j->ij", [(3,), (4,)]), ("ba,ab->ba", [(2, 3), (3, 2)]),
          ("iij,jk->ki", [(3, 3, 2), (2, 4)]), ("Ab,bA->A", [(3, 2), (2, 3)]), ("i...,i", [(4, 2, 3), (4,)])]


@pytest.mark.parametrize("eq,shapes", EINSUM, ids=[e for e, _ in EINSUM])
def test_einsum_against_torch(eq, shapes):
    xs = [arr(*s) for s in shapes]
    out_shape = torch.einsum(eq, *[torch.tensor(x) for x in xs]).shape
    c = arr(*out_shape)
    (y,), grads = run_op("einsum", [xs], {"equation": eq}, [c])
    (ty,), tg = torch_vjp(lambda *ts: torch.einsum(eq, *ts), xs, [c])
    np.testing.assert_allclose(y, ty, rtol=1e-12, atol=1e-13)
    check_grads(grads, tg, xs)


def test_einsum_ints_and_symbolic_dims():
    a, b = R.integers(-5, 5, (3, 4)).astype(np.int64), R.integers(-5, 5, (4,)).astype(np.int64)
    (y,), _ = run_op("einsum", [[a, b]], {"equation": "ij,j->i"}, [None])
    np.testing.assert_array_equal(y, torch.einsum("ij,j->i", torch.tensor(a), torch.tensor(b)).numpy())
    types = [[TensorType(["batch", "seq", 4], "f64"), TensorType(["batch", 4, 5], "f64")]]
    _, op = op_module("nn.einsum", types, {"equation": "bsk,bkn->bsn"})
    assert str(op.results[0].type) == "tensor<[batch]x[seq]x5xf64>"
    for n, s in ((2, 3), (1, 6)):
        xs, c = [arr(n, s, 4), arr(n, 4, 5)], arr(n, s, 5)
        (y,), grads = run_op("einsum", [xs], {"equation": "bsk,bkn->bsn"}, [c], types)
        (ty,), tg = torch_vjp(lambda p, q: torch.einsum("bsk,bkn->bsn", p, q), xs, [c])
        np.testing.assert_allclose(y, ty, rtol=1e-12, atol=1e-13)
        check_grads(grads, tg, xs)


@pytest.mark.parametrize("shape", [(3, 3), (2, 4, 4), (2, 1, 2, 2), (1, 1)])
def test_det_and_inverse_against_torch(shape):
    x = arr(*shape) + 3 * np.eye(shape[-1])
    check_against_torch("det", torch.linalg.det, [x], tol={"rtol": 1e-12, "atol": 1e-13})
    check_against_torch("inverse", torch.linalg.inv, [x], tol={"rtol": 1e-12, "atol": 1e-13})


def test_inverse_of_singular_matrix_fails():
    with pytest.raises(ckir.CkirError, match="nn.inverse: Singular matrix"):
        run_op("inverse", [np.ones((2, 2))], {}, [None])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_hardmax_against_onnx_reference_and_torch(axis):
    x = np.array([[[1, 3, 3, 0], [2, 2, 0, 2], [5, 1, 5, 1]], [[0, 0, 0, 0], [1, 9, 2, 9], [4, 4, 4, 3]]], np.float32)
    (y,), _ = run_op("hardmax", [x], {"axis": axis}, [None])
    np.testing.assert_array_equal(y, onnx_ref_node("Hardmax", [x], opset=13, axis=axis))
    t = torch.tensor(x)
    want = F.one_hot(torch.argmax(t, axis), x.shape[axis]).movedim(-1, axis).numpy().astype(np.float32)
    np.testing.assert_array_equal(y, want)


# --- bitcast and the float8e8m0 cast ---------------------------------------------------------------
@pytest.mark.parametrize("src,to,tdt", [(np.float32, "i32", torch.int32), (np.int64, "f64", torch.float64),
                                        (np.float16, "i16", torch.int16), (np.uint8, "i8", torch.int8),
                                        (np.int32, "f32", torch.float32)])
def test_bitcast_against_torch(src, to, tdt):
    x = (arr(3, 5) * 1000).astype(src)
    (y,), _ = run_op("bitcast", [x], {"to": to}, [None])
    np.testing.assert_array_equal(y.view(np.uint8), torch.tensor(x).view(tdt).numpy().view(np.uint8))


def test_bitcast_bool():
    (y,), _ = run_op("bitcast", [np.array([0, 1, 2, 255], np.uint8)], {"to": "bool"}, [None])
    np.testing.assert_array_equal(y, [False, True, True, True])
    (y,), _ = run_op("bitcast", [np.array([True, False])], {"to": "u8"}, [None])
    np.testing.assert_array_equal(y, [1, 0])


@pytest.mark.parametrize("mode", ["up", "down", "nearest"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_cast_e8m0_against_onnx_reference(mode, dtype):
    # positive normal values, where ONNX's reference follows the spec
    x = np.concatenate([np.exp2(R.uniform(-14, 15, 64)), 2.0 ** np.arange(-14, 15), [1.5, 3.0, 0.75, 1.4999]])
    x = x.astype(dtype)
    (y,), _ = run_op("cast_e8m0", [x], {"round_mode": mode}, [None])
    want = onnx_ref_node("Cast", [x], opset=25, to=TensorProto.FLOAT8E8M0, round_mode=mode)
    np.testing.assert_array_equal(y.view(np.uint8), want.view(np.uint8))


def test_cast_e8m0_special_values_follow_the_spec():
    """ONNX Cast's table: saturate + up: 0 -> E8M0_MIN, inf and too large -> E8M0_MAX;
    non-saturating + nearest: 0, inf, out of range -> NaN; NaN stays NaN."""
    x = np.array([0.0, np.inf, 3e38, 1e-39, np.nan, 1.0], np.float32)
    (y,), _ = run_op("cast_e8m0", [x], {}, [None])
    np.testing.assert_array_equal(y.view(np.uint8), [0, 254, 254, 0, 255, 127])
    (y,), _ = run_op("cast_e8m0", [x], {"saturate": False, "round_mode": "nearest"}, [None])
    np.testing.assert_array_equal(y.view(np.uint8), [255, 255, 255, 255, 255, 127])


# --- bad input: every op names what is wrong ------------------------------------------------------
BAD = [
    ("acos", [("i32", [3])], {}, "operand 'x' has dtype i32"),
    ("softplus", [("bool", [3])], {}, "operand 'x' has dtype bool"),
    ("elu", [("i64", [3])], {}, "operand 'x' has dtype i64"),
    ("hard_sigmoid", [("f32", [3])], {"gamma": 1.0}, "unknown attribute 'gamma'"),
    ("prelu", [("f32", [2, 3]), ("f32", [4])], {}, "cannot broadcast"),
    ("fmod", [("f32", [3]), ("f64", [3])], {}, "different dtypes f32 and f64"),
    ("isnan", [("i32", [3])], {}, "operand 'x' has dtype i32"),
    ("isinf", [("bool", [3])], {}, "operand 'x' has dtype bool"),
    ("bitwise_and", [("f32", [3]), ("f32", [3])], {}, "operand 'a' has dtype f32"),
    ("bitwise_not", [("i4", [3])], {}, "operand 'x' has dtype i4"),
    ("shift_left", [("u8", [3]), ("u16", [3])], {}, "different dtypes u8 and u16"),
    ("shift_right", [("i32", [3]), ("i32", [4])], {}, "cannot broadcast"),
    ("cumsum", [("f32", [3, 4])], {}, "either as the `axis` attribute or as an operand"),
    ("cumsum", [("f32", [3, 4])], {"axis": 2}, "axis 2 is out of range for rank 2"),
    ("cumprod", [("f32", [3, 4]), ("i64", [2])], {}, "must be a scalar or hold one element"),
    ("einsum", [("f32", [2, 3]), ("f32", [4, 5])], {"equation": "ij,jk->ik"}, r"index 'j' has sizes \[3, 4\]"),
    ("einsum", [("f32", [2, 3])], {"equation": "ijk->i"}, "has 3 indices for an operand of rank 2"),
    ("einsum", [("f32", [2, 3])], {"equation": "ij->ii"}, "the output repeats an index"),
    ("einsum", [("f32", [2, 3])], {"equation": "ij->k"}, "output index 'k' is in no operand term"),
    ("einsum", [("f32", [2, 3])], {"equation": "i1->i"}, "may hold only letters"),
    ("det", [("f32", [3, 4])], {}, "the last two dims must be equal"),
    ("inverse", [("f32", [3])], {}, r"needs a \(..., M, M\) tensor"),
    ("hardmax", [("f32", [3, 4])], {"axis": 2}, "axis 2 is out of range"),
    ("bitcast", [("f32", [3])], {"to": "i64"}, "bitcast needs equal widths: f32 has 32 bits"),
    ("bitcast", [("f32", [3])], {"to": "i4"}, "cannot bitcast to i4"),
    ("cast_e8m0", [("f32", [3])], {"round_mode": "odd"}, "expected one of 'up', 'down', 'nearest'"),
]


@pytest.mark.parametrize("name,types,attrs,match", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_named(name, types, attrs, match):
    g, b = new_graph("main", {f"a{i}": TensorType(s, d) for i, (d, s) in enumerate(types)})
    with pytest.raises(ckir.CkirError, match=match):
        b.create("nn." + name, list(g.inputs), attrs)


# --- converters ----------------------------------------------------------------------------------
def vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def make(nodes, inputs, outputs, inits=(), opset=21):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def ckir_run(model, feeds):
    f = ckir.compile(import_onnx(model))
    res = f(**feeds)
    return [res[o.name] for o in model.graph.output]


def ort_run(model, feeds):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def op_types(model):
    return [op.opdef.name for op in import_onnx(model).main]


def test_cumsum_with_constant_axis_is_static():
    x = arr(3, 4).astype(np.float32)
    m = make([helper.make_node("CumSum", ["x", "axis"], ["y"], exclusive=1, reverse=1)], [vi("x", [3, 4])],
             [vi("y", [3, 4])], [numpy_helper.from_array(np.array(-1, np.int64), "axis")], opset=14)
    mod = import_onnx(m)
    op = next(o for o in mod.main if o.opdef.name == "nn.cumsum")
    assert op.attrs["axis"] == -1 and len(op.operands) == 1
    np.testing.assert_allclose(ckir_run(m, {"x": x})[0], ort_run(m, {"x": x})[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype,np_dt", [(TensorProto.FLOAT, np.float32), (TensorProto.INT8, np.int8),
                                         (TensorProto.INT64, np.int64)])
def test_clip_bounds(dtype, np_dt):
    x = (arr(3, 5) * 10).astype(np_dt)
    lo, hi = np.array(-3, np_dt), np.array(4, np_dt)
    # constant bounds: nn.clip for floats; one bound only; bounds given at run time
    m = make([helper.make_node("Clip", ["x", "lo", "hi"], ["y"]), helper.make_node("Clip", ["x", "", "hi"], ["z"])],
             [vi("x", [3, 5], dtype)], [vi("y", [3, 5], dtype), vi("z", [3, 5], dtype)],
             [numpy_helper.from_array(lo, "lo"), numpy_helper.from_array(hi, "hi")], opset=13)
    if np_dt is np.float32:
        assert "nn.clip" in op_types(m)
    for a, b in zip(ckir_run(m, {"x": x}), ort_run(m, {"x": x})):
        np.testing.assert_array_equal(a, b)
    m = make([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])],
             [vi("x", [3, 5], dtype), vi("lo", [], dtype), vi("hi", [], dtype)], [vi("y", [3, 5], dtype)], opset=13)
    feeds = {"x": x, "lo": lo, "hi": hi}
    np.testing.assert_array_equal(ckir_run(m, feeds)[0], ort_run(m, feeds)[0])


def test_clip_before_opset_11_uses_attributes():
    x = arr(4, 4).astype(np.float32) * 3
    m = make([helper.make_node("Clip", ["x"], ["y"], min=-1.0, max=0.5), helper.make_node("Clip", ["x"], ["z"], min=0.0)],
             [vi("x", [4, 4])], [vi("y", [4, 4]), vi("z", [4, 4])], opset=6)
    for a, b in zip(ckir_run(m, {"x": x}), ort_run(m, {"x": x})):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("tx,ty", [(TensorProto.INT32, TensorProto.FLOAT), (TensorProto.FLOAT, TensorProto.INT64),
                                   (TensorProto.INT64, TensorProto.INT64), (TensorProto.DOUBLE, TensorProto.FLOAT),
                                   (TensorProto.FLOAT16, TensorProto.FLOAT)])
def test_pow_mixed_dtypes(tx, ty):
    npx, npy = helper.tensor_dtype_to_np_dtype(tx), helper.tensor_dtype_to_np_dtype(ty)
    x = np.array([[1, 2, 3], [-2, 5, 0]]).astype(npx)
    y = np.array([2, 3, 1.5 if npy.kind == "f" else 1]).astype(npy)
    m = make([helper.make_node("Pow", ["x", "y"], ["z"])], [vi("x", [2, 3], tx), vi("y", [3], ty)],
             [vi("z", [2, 3], tx)], opset=15)
    got, want = ckir_run(m, {"x": x, "y": y})[0], ort_run(m, {"x": x, "y": y})[0]
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_mod_fmod_and_python_sign():
    a = np.array([7, -7, 7, -7, 0, 9], np.int32)
    b = np.array([3, 3, -3, -3, 2, 4], np.int32)
    for fmod in (0, 1):
        m = make([helper.make_node("Mod", ["a", "b"], ["c"], fmod=fmod)], [vi("a", [6], TensorProto.INT32),
                 vi("b", [6], TensorProto.INT32)], [vi("c", [6], TensorProto.INT32)], opset=13)
        feeds = {"a": a, "b": b}
        np.testing.assert_array_equal(ckir_run(m, feeds)[0], ort_run(m, feeds)[0])
    af, bf = arr(10).astype(np.float32) * 5, arr(10).astype(np.float32) * 2
    m = make([helper.make_node("Mod", ["a", "b"], ["c"], fmod=1)], [vi("a", [10]), vi("b", [10])], [vi("c", [10])], opset=13)
    np.testing.assert_allclose(ckir_run(m, {"a": af, "b": bf})[0], np.fmod(af, bf), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_hardmax_before_opset_13_flattens(axis):
    x = R.integers(0, 4, (2, 3, 4)).astype(np.float32)
    m = make([helper.make_node("Hardmax", ["x"], ["y"], axis=axis)], [vi("x", [2, 3, 4])], [vi("y", [2, 3, 4])], opset=11)
    np.testing.assert_array_equal(ckir_run(m, {"x": x})[0], ort_run(m, {"x": x})[0])


def test_hardmax_before_opset_13_with_a_symbolic_batch():
    m = make([helper.make_node("Hardmax", ["x"], ["y"], axis=1)], [vi("x", ["n", 3, 4])], [vi("y", ["n", 3, 4])], opset=11)
    f = ckir.compile(import_onnx(m))
    for n in (1, 3):
        x = R.standard_normal((n, 3, 4)).astype(np.float32)
        np.testing.assert_array_equal(f(x=x)["y"], ort_run(m, {"x": x})[0])


def test_dropout_inference_and_training_mode():
    x = arr(3, 4).astype(np.float32)
    ratio = numpy_helper.from_array(np.array(0.3, np.float32), "r")
    for training in (False, True):
        t = numpy_helper.from_array(np.array(training), "t")
        m = make([helper.make_node("Dropout", ["x", "r", "t"], ["y", "mask"])], [vi("x", [3, 4])],
                 [vi("y", [3, 4]), vi("mask", [3, 4], TensorProto.BOOL)], [ratio, t], opset=13)
        y, mask = ckir_run(m, {"x": x})
        assert mask.dtype == np.bool_
        if training:      # nn.dropout draws the mask (tests/test_onnx_strings.py checks it)
            np.testing.assert_allclose(y, np.where(mask, x / np.float32(0.7), 0), rtol=1e-6)
        else:
            np.testing.assert_array_equal(y, x)
            assert mask.all()
    # a run-time training_mode: nn.dropout, the identity when it is false
    m = make([helper.make_node("Dropout", ["x", "r", "t"], ["y"])], [vi("x", [3, 4]), vi("t", [], TensorProto.BOOL)],
             [vi("y", [3, 4])], [ratio], opset=13)
    np.testing.assert_array_equal(ckir_run(m, {"x": x, "t": np.array(False)})[0], x)
    # opset 7: the mask has x's dtype
    m = make([helper.make_node("Dropout", ["x"], ["y", "mask"], ratio=0.4)], [vi("x", [3, 4])],
             [vi("y", [3, 4]), vi("mask", [3, 4])], opset=7)
    y, mask = ckir_run(m, {"x": x})
    assert mask.dtype == np.float32 and (mask == 1).all()


def test_cast_saturates_narrow_float_sources():
    """float8e5m2 -> float8e4m3fnuz: the bound 240 is not an e5m2 value, so the clip must not
    happen in e5m2 (it would round the bound up to 256 and overflow to NaN)."""
    x = np.array([250.0, -300.0, 57344.0, 1.0, 0.4], np.float32).astype(dt.f8e5m2.np)
    for saturate in (1, 0):
        m = make([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT8E4M3FNUZ, saturate=saturate)],
                 [vi("x", [5], TensorProto.FLOAT8E5M2)], [vi("y", [5], TensorProto.FLOAT8E4M3FNUZ)], opset=21)
        got = ckir_run(m, {"x": x})[0]
        want = ReferenceEvaluator(m).run(None, {"x": x})[0]
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


@pytest.mark.parametrize("src", [TensorProto.INT8, TensorProto.INT16, TensorProto.UINT32, TensorProto.INT64,
                                 TensorProto.FLOAT16, TensorProto.DOUBLE])
@pytest.mark.parametrize("to", [TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2FNUZ])
def test_cast_to_float8_saturates_from_any_source(src, to):
    npd = helper.tensor_dtype_to_np_dtype(src)
    vals = np.array([-70000, -1000, -300, -100, -3, 0, 5, 127, 250, 1000, 60000, 70000], np.float64)
    if npd.kind in "iu":
        info = np.iinfo(npd)
        vals = vals[(vals >= info.min) & (vals <= info.max)]
    elif npd == np.float16:
        vals = vals[np.abs(vals) < 65000]
    x = vals.astype(npd)
    m = make([helper.make_node("Cast", ["x"], ["y"], to=to)], [vi("x", [len(x)], src)], [vi("y", [len(x)], to)], opset=21)
    want = ReferenceEvaluator(m).run(None, {"x": x})[0]
    np.testing.assert_array_equal(ckir_run(m, {"x": x})[0].view(np.uint8), want.view(np.uint8))


def test_cast_like_saturate_and_string_cast_error():
    x = np.array([1e6, -np.inf, 3.3], np.float32)
    like = np.zeros(1, dt.f8e4m3fn.np)
    m = make([helper.make_node("CastLike", ["x", "l"], ["y"])], [vi("x", [3]), vi("l", [1], TensorProto.FLOAT8E4M3FN)],
             [vi("y", [3], TensorProto.FLOAT8E4M3FN)], opset=19)
    np.testing.assert_array_equal(ckir_run(m, {"x": x, "l": like})[0].astype(np.float32), [448, -448, 3.25])
    m = make([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.STRING)], [vi("x", [3])],
             [vi("y", [3], TensorProto.STRING)], opset=19)
    with pytest.raises(ckir.CkirError, match="casts to and from strings .* are not supported"):
        import_onnx(m)


@pytest.mark.parametrize("opset", [6, 13])
@pytest.mark.parametrize("ta,tb,alpha,beta,cshape", [(0, 0, 1.0, 1.0, [4]), (1, 0, 0.5, 2.0, [3, 4]),
                                                     (0, 1, 1.0, 0.0, [1, 4]), (1, 1, 2.0, -1.0, [3, 1])])
def test_gemm(opset, ta, tb, alpha, beta, cshape):
    a = arr(*([5, 3] if ta else [3, 5])).astype(np.float32)
    b = arr(*([4, 5] if tb else [5, 4])).astype(np.float32)
    c = arr(*cshape).astype(np.float32)
    kw = {"broadcast": 1} if opset < 7 else {}
    m = make([helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=ta, transB=tb, alpha=alpha, beta=beta, **kw)],
             [vi("a", list(a.shape)), vi("b", list(b.shape))], [vi("y", [3, 4])],
             [numpy_helper.from_array(c, "c")], opset=opset)
    # onnxruntime has no Gemm-6 kernel: the formula, in float64
    want = alpha * (a.T if ta else a).astype(np.float64) @ (b.T if tb else b) + beta * c
    np.testing.assert_allclose(ckir_run(m, {"a": a, "b": b})[0], want, rtol=1e-5, atol=1e-5)
    if opset >= 7:
        np.testing.assert_allclose(ckir_run(m, {"a": a, "b": b})[0], ort_run(m, {"a": a, "b": b})[0], rtol=1e-5, atol=1e-5)


def test_gemm_and_matmul_errors():
    m = make([helper.make_node("Gemm", ["a", "b", "c"], ["y"])], [vi("a", [3, 5]), vi("b", [5, 4]), vi("c", [2, 4])],
             [vi("y", [3, 4])], opset=13)
    with pytest.raises(ckir.CkirError, match=r"C tensor<2x4xf32> does not broadcast to the product's shape"):
        import_onnx(m)
    m = make([helper.make_node("Gemm", ["a", "b"], ["y"])], [vi("a", [3, 5], TensorProto.INT32),
             vi("b", [5, 4], TensorProto.INT32)], [vi("y", [3, 4], TensorProto.INT32)], opset=13)
    with pytest.raises(ckir.CkirError, match=r"\(Gemm, .*Gemm of i32 is not supported \(float types only\)"):
        import_onnx(m)


@pytest.mark.parametrize("sa,sb", [([3, 5], [5, 4]), ([5], [2, 5, 3]), ([2, 3, 5], [5]), ([5], [5]),
                                   ([2, 1, 3, 5], [4, 5, 2])])
@pytest.mark.parametrize("dtype", [TensorProto.INT32, TensorProto.INT64, TensorProto.UINT64])
def test_integer_matmul(sa, sb, dtype):
    npd = helper.tensor_dtype_to_np_dtype(dtype)
    a, b = R.integers(0, 50, sa).astype(npd), R.integers(0, 50, sb).astype(npd)
    m = make([helper.make_node("MatMul", ["a", "b"], ["y"])], [vi("a", sa, dtype), vi("b", sb, dtype)],
             [vi("y", list(np.matmul(a, b).shape), dtype)], opset=13)
    got = ckir_run(m, {"a": a, "b": b})[0]
    assert got.dtype == npd
    np.testing.assert_array_equal(got, np.matmul(a, b))
    if dtype != TensorProto.UINT64:
        np.testing.assert_array_equal(got, ort_run(m, {"a": a, "b": b})[0])


@pytest.mark.parametrize("op_type,axis,bshape", [("Add", 1, [3]), ("Mul", 0, [2, 3]), ("Sub", None, [4]),
                                                 ("Div", 2, [4]), ("Pow", -2, [3, 4])])
def test_legacy_broadcast_before_opset_7(op_type, axis, bshape):
    a = arr(2, 3, 4, low=0.5, high=2).astype(np.float32)
    b = arr(*bshape, low=0.5, high=2).astype(np.float32)
    kw = {"broadcast": 1} | ({"axis": axis} if axis is not None else {})
    m = make([helper.make_node(op_type, ["a", "b"], ["y"], **kw)], [vi("a", [2, 3, 4]), vi("b", bshape)],
             [vi("y", [2, 3, 4])], opset=6)
    ax = 3 - len(bshape) if axis is None else axis % 3
    bb = b.reshape(bshape + [1] * (3 - ax - len(bshape)))
    want = {"Add": np.add, "Mul": np.multiply, "Sub": np.subtract, "Div": np.divide, "Pow": np.power}[op_type](a, bb)
    np.testing.assert_allclose(ckir_run(m, {"a": a, "b": b})[0], want, rtol=1e-6)


def test_prelu_before_opset_7_is_per_channel():
    x, s = arr(2, 3, 4, 5).astype(np.float32), arr(3).astype(np.float32)
    m = make([helper.make_node("PRelu", ["x", "s"], ["y"])], [vi("x", [2, 3, 4, 5])], [vi("y", [2, 3, 4, 5])],
             [numpy_helper.from_array(s, "s")], opset=6)
    want = F.prelu(torch.tensor(x), torch.tensor(s)).numpy()
    np.testing.assert_allclose(ckir_run(m, {"x": x})[0], want, rtol=1e-6)


def test_variadic_max_min_sum_mean():
    xs = {"a": arr(2, 1, 3), "b": arr(4, 1), "c": arr(3)}
    xs = {k: v.astype(np.float32) for k, v in xs.items()}
    nodes = [helper.make_node(op, ["a", "b", "c"], [op.lower()]) for op in ("Max", "Min", "Sum", "Mean")]
    m = make(nodes + [helper.make_node("Max", ["a"], ["one"])], [vi(k, list(v.shape)) for k, v in xs.items()],
             [vi(n, [2, 4, 3]) for n in ("max", "min", "sum", "mean")] + [vi("one", [2, 1, 3])], opset=13)
    for a, b in zip(ckir_run(m, xs), ort_run(m, xs)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_swish_gelu_and_activations_against_onnx_reference():
    x = arr(3, 5).astype(np.float32) * 3
    cases = [("Swish", {"alpha": 1.5}, 24), ("Swish", {}, 24), ("Gelu", {"approximate": "tanh"}, 20),
             ("Celu", {"alpha": 0.5}, 12), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, 6),
             ("ThresholdedRelu", {"alpha": 0.5}, 10), ("IsInf", {"detect_negative": 0}, 10),
             ("Shrink", {"lambd": 1.0, "bias": 0.5}, 9), ("Selu", {"alpha": 2.0, "gamma": 1.5}, 6)]
    for op_type, attrs, opset in cases:
        m = make([helper.make_node(op_type, ["x"], ["y"], **attrs)], [vi("x", [3, 5])],
                 [vi("y", [3, 5], TensorProto.BOOL if op_type == "IsInf" else TensorProto.FLOAT)], opset=opset)
        want = ReferenceEvaluator(m).run(None, {"x": x})[0]
        np.testing.assert_allclose(ckir_run(m, {"x": x})[0], want, rtol=1e-5, atol=1e-6, err_msg=op_type)


def test_einsum_model_with_symbolic_dims():
    m = make([helper.make_node("Einsum", ["a", "b"], ["y"], equation="...ij,...jk->...ik")],
             [vi("a", ["batch", 3, 4]), vi("b", ["batch", 4, 2])], [vi("y", ["batch", 3, 2])], opset=12)
    f = ckir.compile(import_onnx(m))
    for n in (1, 5):
        a, b = arr(n, 3, 4).astype(np.float32), arr(n, 4, 2).astype(np.float32)
        np.testing.assert_allclose(f(a=a, b=b)["y"], ort_run(m, {"a": a, "b": b})[0], rtol=1e-5, atol=1e-6)
