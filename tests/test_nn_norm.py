"""nn.softmax, nn.log_softmax, nn.layer_norm, nn.rms_norm against PyTorch (forward and
torch.autograd gradients) and onnx.reference (LayerNormalization / RMSNormalization `axis`).

Tolerances: float64 results differ from torch only by the order of a few roundings, so 1e-12
relative for values and 1e-10 for gradients (which go through more steps); float32 results by a
few float32 ulps (rtol 1e-5 on O(1) values); f16/bf16 results are one rounding of a float32
computation, so they agree with torch to one ulp of their format.
"""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import ckir
from ckir import TensorType, new_graph
from oracle import run, run_vjp, t64, torch_grads

RNG = np.random.default_rng(7)


# --- softmax, log_softmax ----------------------------------------------------------------------
SOFTMAX_CASES = [((3, 5), -1), ((2, 3, 4), 1), ((4, 3), -2), ((7,), 0), ((2, 1, 6), -1)]
TORCH_SOFTMAX = {"nn.softmax": torch.softmax, "nn.log_softmax": torch.log_softmax}


@pytest.mark.parametrize("op", list(TORCH_SOFTMAX))
@pytest.mark.parametrize("shape,axis", SOFTMAX_CASES)
def test_softmax_f64_forward_and_vjp(op, shape, axis):
    x = RNG.standard_normal(shape) * 3
    cot = RNG.standard_normal(shape)
    xt = t64(x, True)
    yt = TORCH_SOFTMAX[op](xt, axis)
    np.testing.assert_allclose(run(op, [x], axis=axis), yt.detach().numpy(), rtol=1e-12, atol=1e-15)
    (dx,) = run_vjp(op, [x], cot, axis=axis)
    np.testing.assert_allclose(dx, torch_grads(yt, [xt], cot)[0], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("op", list(TORCH_SOFTMAX))
def test_softmax_is_stable_for_large_logits(op):
    # exp(1000) overflows: only the max-subtracting form gives finite results
    x = np.array([[1000.0, 999.0, -1000.0], [-1e4, -1e4 + 1, -1e4 + 2]], np.float32)
    y = run(op, [x])
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, TORCH_SOFTMAX[op](torch.from_numpy(x), -1).numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("op", list(TORCH_SOFTMAX))
@pytest.mark.parametrize("dtype,torch_dtype,ulp", [(np.float32, torch.float32, 2 ** -23),
                                                   (np.float16, torch.float16, 2 ** -10),
                                                   ("bfloat16", torch.bfloat16, 2 ** -7)])
def test_softmax_low_precision(op, dtype, torch_dtype, ulp):
    x32 = (RNG.standard_normal((4, 9)) * 2).astype(np.float32)
    d = ckir.dtypes.dtype("bf16").np if dtype == "bfloat16" else np.dtype(dtype)
    x = x32.astype(d)
    y = run(op, [x]).astype(np.float32)
    want = TORCH_SOFTMAX[op](torch.from_numpy(x.astype(np.float32)), -1).to(torch_dtype).float().numpy()
    # log_softmax subtracts O(|x|) terms, so its error is absolute: a few ulps of the largest output
    np.testing.assert_allclose(y, want, rtol=4 * ulp, atol=4 * ulp * np.abs(want).max())


def test_softmax_all_minus_inf_row_is_nan():
    x = np.array([[-np.inf, -np.inf], [0.0, -np.inf]], np.float32)
    with np.errstate(invalid="ignore"):
        y = run("nn.softmax", [x])
    assert np.all(np.isnan(y[0])) and np.array_equal(y[1], [1.0, 0.0])


@pytest.mark.parametrize("op", list(TORCH_SOFTMAX))
def test_softmax_symbolic_dims(op):
    types = [TensorType(["n", 5], "f64")]
    for n in (3, 8):
        x = RNG.standard_normal((n, 5))
        cot = RNG.standard_normal((n, 5))
        xt = t64(x, True)
        yt = TORCH_SOFTMAX[op](xt, -1)
        np.testing.assert_allclose(run(op, [x], types), yt.detach().numpy(), rtol=1e-12)
        (dx,) = run_vjp(op, [x], cot, types, TensorType(["n", 5], "f64"))
        np.testing.assert_allclose(dx, torch_grads(yt, [xt], cot)[0], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("op", list(TORCH_SOFTMAX))
def test_softmax_errors(op):
    g, b = new_graph("main", {"x": TensorType([2, 3], "f32"), "i": TensorType([3], "i32")})
    with pytest.raises(ckir.CkirError, match=r"axis 2 is out of range for rank 2"):
        getattr(b.nn, op[3:])(g.inputs[0], axis=2)
    with pytest.raises(ckir.CkirError, match=r"operand 'x' has dtype i32, allowed: .*float types"):
        getattr(b.nn, op[3:])(g.inputs[1])


# --- layer_norm --------------------------------------------------------------------------------
# (x shape, axis, scale shape, bias shape, eps)
LN_CASES = [((3, 5), -1, None, None, 1e-5), ((2, 3, 4), -1, (4,), (4,), 1e-5),
            ((2, 3, 4), -2, (3, 4), (1, 4), 1e-5), ((2, 3, 4), 1, (3, 1), None, 0.1),
            ((6,), 0, (6,), None, 1e-3), ((2, 3, 2, 5), 2, (5,), (2, 5), 1e-5)]


def _ln_torch(x, scale, bias, axis, eps):
    norm_shape = tuple(x.shape[axis:])
    w = None if scale is None else scale.expand(norm_shape)
    bb = None if bias is None else bias.expand(norm_shape)
    return torch.nn.functional.layer_norm(x, norm_shape, w, bb, eps)


@pytest.mark.parametrize("shape,axis,sshape,bshape,eps", LN_CASES)
def test_layer_norm_f64_forward_and_vjp(shape, axis, sshape, bshape, eps):
    x = RNG.standard_normal(shape) * 2 + 0.5
    params = [RNG.standard_normal(s) for s in (sshape, bshape) if s is not None]
    cot = RNG.standard_normal(shape)
    leaves = [t64(a, True) for a in [x] + params]
    scale = leaves[1] if sshape else None
    bias = leaves[2] if bshape else None
    yt = _ln_torch(leaves[0], scale, bias, axis, eps)
    np.testing.assert_allclose(run("nn.layer_norm", [x] + params, axis=axis, eps=eps),
                               yt.detach().numpy(), rtol=1e-12, atol=1e-13)
    ours = run_vjp("nn.layer_norm", [x] + params, cot, axis=axis, eps=eps)
    for got, want in zip(ours, torch_grads(yt, leaves, cot)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_layer_norm_matches_onnx_axis_semantics():
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    scale = RNG.standard_normal((3, 4)).astype(np.float32)
    bias = RNG.standard_normal((3, 4)).astype(np.float32)
    node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=1, epsilon=1e-3)
    graph = helper.make_graph([node], "ln", [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape)
                                             for n, a in (("x", x), ("s", scale), ("b", bias))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    want = ReferenceEvaluator(model).run(None, {"x": x, "s": scale, "b": bias})[0]
    got = run("nn.layer_norm", [x, scale, bias], axis=1, eps=1e-3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype,torch_dtype,ulp", [(np.float32, torch.float32, 2 ** -23),
                                                   (np.float16, torch.float16, 2 ** -10),
                                                   ("bf16", torch.bfloat16, 2 ** -7)])
def test_layer_norm_low_precision(dtype, torch_dtype, ulp):
    d = ckir.dtypes.dtype(dtype).np if dtype == "bf16" else np.dtype(dtype)
    x, s, bb = (RNG.standard_normal(sh).astype(np.float32).astype(d) for sh in ((5, 16), (16,), (16,)))
    got = run("nn.layer_norm", [x, s, bb]).astype(np.float32)
    xt, st, bt = (torch.from_numpy(a.astype(np.float32)) for a in (x, s, bb))
    want = torch.nn.functional.layer_norm(xt, (16,), st, bt, 1e-5).to(torch_dtype).float().numpy()
    # y is O(|scale| * 3): allow one ulp of the largest output plus the reference's own rounding
    np.testing.assert_allclose(got, want, rtol=2 * ulp, atol=2 * ulp * np.abs(want).max())


def test_layer_norm_symbolic_dims():
    types = [TensorType(["b", "t", 8], "f64"), TensorType([8], "f64"), TensorType([8], "f64")]
    s, bb = RNG.standard_normal(8), RNG.standard_normal(8)
    for bsz, t in ((1, 3), (2, 5)):
        x = RNG.standard_normal((bsz, t, 8))
        cot = RNG.standard_normal((bsz, t, 8))
        leaves = [t64(a, True) for a in (x, s, bb)]
        yt = torch.nn.functional.layer_norm(leaves[0], (8,), leaves[1], leaves[2], 1e-5)
        np.testing.assert_allclose(run("nn.layer_norm", [x, s, bb], types), yt.detach().numpy(), rtol=1e-12,
                                   atol=1e-13)
        ours = run_vjp("nn.layer_norm", [x, s, bb], cot, types, TensorType(["b", "t", 8], "f64"))
        for got, want in zip(ours, torch_grads(yt, leaves, cot)):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_layer_norm_errors():
    g, b = new_graph("main", {"x": TensorType([2, 3, 4], "f32"), "s": TensorType([3], "f32"),
                              "h": TensorType([4], "f16")})
    x, s, h = g.inputs
    with pytest.raises(ckir.CkirError,
                       match=r"scale tensor<3xf32> does not broadcast to the normalized shape \[4\]"):
        b.nn.layer_norm(x, s)
    with pytest.raises(ckir.CkirError, match=r"different dtypes f32 and f16"):
        b.nn.layer_norm(x, h)
    with pytest.raises(ckir.CkirError, match=r"axis 3 is out of range for rank 3"):
        b.nn.layer_norm(x, axis=3)


# --- rms_norm ----------------------------------------------------------------------------------
RMS_CASES = [((3, 5), -1, (5,), 1e-6), ((2, 3, 4), -1, None, 1e-6), ((2, 3, 4), -2, (3, 1), 1e-6),
             ((4, 6), -1, (6,), 0.5), ((2, 2, 3, 4), 1, (3, 4), 1e-5)]


@pytest.mark.parametrize("shape,axis,sshape,eps", RMS_CASES)
def test_rms_norm_f64_forward_and_vjp(shape, axis, sshape, eps):
    x = RNG.standard_normal(shape) * 2 + 0.3
    params = [] if sshape is None else [RNG.standard_normal(sshape)]
    cot = RNG.standard_normal(shape)
    leaves = [t64(a, True) for a in [x] + params]
    norm_shape = tuple(shape[axis:])
    w = leaves[1].expand(norm_shape) if sshape else None
    yt = torch.nn.functional.rms_norm(leaves[0], norm_shape, w, eps)
    np.testing.assert_allclose(run("nn.rms_norm", [x] + params, axis=axis, eps=eps),
                               yt.detach().numpy(), rtol=1e-12, atol=1e-13)
    ours = run_vjp("nn.rms_norm", [x] + params, cot, axis=axis, eps=eps)
    for got, want in zip(ours, torch_grads(yt, leaves, cot)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_rms_norm_matches_onnx():
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    scale = RNG.standard_normal((3, 4)).astype(np.float32)
    node = helper.make_node("RMSNormalization", ["x", "s"], ["y"], axis=1, epsilon=1e-3)
    graph = helper.make_graph([node], "rms", [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape)
                                              for n, a in (("x", x), ("s", scale))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    want = ReferenceEvaluator(model).run(None, {"x": x, "s": scale})[0]
    np.testing.assert_allclose(run("nn.rms_norm", [x, scale], axis=1, eps=1e-3), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype,torch_dtype,ulp", [(np.float32, torch.float32, 2 ** -23),
                                                   (np.float16, torch.float16, 2 ** -10),
                                                   ("bf16", torch.bfloat16, 2 ** -7)])
def test_rms_norm_low_precision(dtype, torch_dtype, ulp):
    d = ckir.dtypes.dtype(dtype).np if dtype == "bf16" else np.dtype(dtype)
    x, s = (RNG.standard_normal(sh).astype(np.float32).astype(d) for sh in ((5, 16), (16,)))
    got = run("nn.rms_norm", [x, s]).astype(np.float32)
    xt, st = (torch.from_numpy(a.astype(np.float32)) for a in (x, s))
    want = torch.nn.functional.rms_norm(xt, (16,), st, 1e-6).to(torch_dtype).float().numpy()
    np.testing.assert_allclose(got, want, rtol=2 * ulp, atol=2 * ulp * np.abs(want).max())


def test_rms_norm_symbolic_dims():
    types = [TensorType(["t", 6], "f64"), TensorType([6], "f64")]
    s = RNG.standard_normal(6)
    for t in (2, 7):
        x = RNG.standard_normal((t, 6))
        cot = RNG.standard_normal((t, 6))
        leaves = [t64(a, True) for a in (x, s)]
        yt = torch.nn.functional.rms_norm(leaves[0], (6,), leaves[1], 1e-6)
        np.testing.assert_allclose(run("nn.rms_norm", [x, s], types), yt.detach().numpy(), rtol=1e-12)
        ours = run_vjp("nn.rms_norm", [x, s], cot, types, TensorType(["t", 6], "f64"))
        for got, want in zip(ours, torch_grads(yt, leaves, cot)):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_rms_norm_errors():
    g, b = new_graph("main", {"x": TensorType([2, 4], "f32"), "s": TensorType([2, 4], "f32"),
                              "i": TensorType([2, 4], "i32")})
    x, s, i = g.inputs
    # a (2, 4) scale would enlarge the normalized shape [4] (axis -1)
    with pytest.raises(ckir.CkirError,
                       match=r"scale tensor<2x4xf32> does not broadcast to the normalized shape \[4\]"):
        b.nn.rms_norm(x, s)
    with pytest.raises(ckir.CkirError, match=r"operand 'x' has dtype i32"):
        b.nn.rms_norm(i)
