"""Quantization, signal processing, random and classical-ML ops (dialects/quant/linear.py,
dialects/nn/signal.py) and their ONNX converters (frontends/onnx/ops/quant.py, signal.py),
against independent implementations: torch (quantize/dequantize, integer matmul and conv in
int64/float64, torch.fft with autograd, torch windows and stft), onnx.reference (ONNX
corners torch does not have: blocked scales, int4/int2/float8/float4 targets, MelWeightMatrix,
seeded random ops, TfIdfVectorizer, TreeEnsemble) and onnxruntime (quantized models, including
models made by onnxruntime.quantization.quantize_dynamic).

Tolerances: quantized results are integers and must match exactly; dequantized values are one
f32 product (exact in float64 oracles up to that rounding: rtol 1e-7); float64 FFTs agree with
torch to ~1e-12 of the signal's magnitude; float32 FFTs to 1e-5.
"""
import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import ckir
from ckir import Module, Sym, TensorType, new_graph
from ckir.frontends.onnx import backend
from ckir.frontends.onnx.importer import TO_ONNX_DTYPE

F64 = dict(rtol=1e-10, atol=1e-10)
F32 = dict(rtol=1e-5, atol=1e-5)


def rng(seed=0):
    return np.random.default_rng(seed)


# --- harness ----------------------------------------------------------------------------------------
def run(name, arrays, types=None, **attrs):
    """All results of one op run in the interpreter (a list)."""
    types = types or [TensorType(a.shape, a.dtype) for a in arrays]
    g, b = new_graph("main", {f"a{i}": t for i, t in enumerate(types)})
    op = b.create(name, list(g.inputs), attrs)
    g.set_outputs(op.results, [f"y{i}" for i in range(len(op.results))])
    m = Module("t")
    m.add_graph(g)
    out = ckir.compile(m)(*arrays)
    return [out[f"y{i}"] for i in range(len(op.results))]


def run1(name, arrays, **attrs):
    return run(name, arrays, **attrs)[0]


def run_vjp(name, arrays, cot, **attrs):
    g, b = new_graph("main", {f"a{i}": TensorType(a.shape, a.dtype) for i, a in enumerate(arrays)})
    op = b.create(name, list(g.inputs), attrs)
    c = g.add_arg(TensorType(cot.shape, cot.dtype), "cot")
    grads = op.opdef.vjp(b, op, c)
    outs = [(f"g{i}", v) for i, v in enumerate(grads) if v is not None]
    g.set_outputs([v for _, v in outs], [n for n, _ in outs])
    m = Module("t")
    m.add_graph(g)
    res = ckir.compile(m)(*arrays, cot)
    return [res.get(f"g{i}") for i in range(len(grads))]


def build(name, types, **attrs):
    g, b = new_graph("main", {f"a{i}": TensorType(*t) for i, t in enumerate(types)})
    return b.create(name, list(g.inputs), attrs)


def onnx_model(nodes, inputs, outputs, inits=(), opsets=(("", 21),)):
    """inputs: {name: array or (onnx elem type, shape)}; outputs: names. Output types come from
    ONNX shape inference, or where it cannot tell (run-time shape inputs) from running
    onnx.reference on the arrays given."""
    vis = []
    for k, v in inputs.items():
        if isinstance(v, np.ndarray):
            vis.append(helper.make_tensor_value_info(k, TO_ONNX_DTYPE[ckir.dtypes.dtype(v.dtype)], v.shape))
        else:
            vis.append(helper.make_tensor_value_info(k, *v))
    outs = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs]
    g = helper.make_graph(nodes, "g", vis, outs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    m.ir_version = 10
    m = onnx.shape_inference.infer_shapes(m)
    if all(o.type.tensor_type.elem_type and o.type.tensor_type.HasField("shape") for o in m.graph.output):
        return m
    arrays = ReferenceEvaluator(m).run(None, {k: v for k, v in inputs.items() if isinstance(v, np.ndarray)})
    del m.graph.output[:]
    for o, a in zip(outputs, arrays):
        m.graph.output.append(helper.make_tensor_value_info(o, TO_ONNX_DTYPE[ckir.dtypes.dtype(a.dtype)], a.shape))
    return m


def ckir_run(model, feeds):
    return backend.prepare(model).run([feeds[i.name] for i in model.graph.input])


def ref_run(model, feeds):
    return ReferenceEvaluator(model).run(None, feeds)


def ort_run(model, feeds):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def node_model(op_type, feeds, attrs=None, opset=21, n_out=1, domain="", inits=()):
    names = list(feeds)
    node = helper.make_node(op_type, names, [f"y{i}" for i in range(n_out)], domain=domain, **(attrs or {}))
    opsets = (("", opset),) if not domain else (("", 21), (domain, opset))
    live = {k: v for k, v in feeds.items() if k not in {i.name for i in inits}}
    return onnx_model([node], live, [f"y{i}" for i in range(n_out)], inits, opsets)


def same(got, want):
    want = np.asarray(want)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_array_equal(got.view(np.uint8) if got.dtype.itemsize == 1 and got.dtype.kind == "V"
                                  else got, want)


def same_bits(got, want):
    """Equal including NaN positions, compared bit for bit (narrow float dtypes)."""
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, want.dtype, got.shape, want.shape)
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


# --- quant.quantize_linear / dequantize_linear ------------------------------------------------------
TORCH_Q = {np.uint8: torch.quint8, np.int8: torch.qint8}


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
@pytest.mark.parametrize("npd", [np.uint8, np.int8])
def test_quantize_per_tensor_matches_torch(npd):
    # no ties: torch rounds them away from zero, ONNX to even (test_quantize_nan_... checks ties)
    x = (rng(1).standard_normal((4, 7)) * 3).astype(np.float32)
    s, zp = np.float32(0.5), npd(3)
    got = run1("quant.quantize_linear", [x, np.array(s), np.array(zp)], dtype=ckir.dtypes.dtype(npd))
    want = torch.quantize_per_tensor(torch.from_numpy(x), float(s), int(zp), TORCH_Q[npd]).int_repr().numpy()
    same(got, want)
    back = run1("quant.dequantize_linear", [got, np.array(s), np.array(zp)])
    same(back, torch.quantize_per_tensor(torch.from_numpy(x), float(s), int(zp), TORCH_Q[npd])
         .dequantize().numpy())


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_quantize_per_axis_matches_torch(axis):
    x = (rng(2).standard_normal((3, 4, 5)) * 4).astype(np.float32)
    n = x.shape[axis]
    s = rng(3).uniform(0.05, 0.5, n).astype(np.float32)
    zp = rng(4).integers(-10, 10, n).astype(np.int8)
    got = run1("quant.quantize_linear", [x, s, zp], axis=axis, dtype="i8")
    tq = torch.quantize_per_channel(torch.from_numpy(x), torch.from_numpy(s.astype(np.float64)),
                                    torch.from_numpy(zp.astype(np.int64)), axis % 3, torch.qint8)
    same(got, tq.int_repr().numpy())
    back = run1("quant.dequantize_linear", [got, s, zp], axis=axis)
    np.testing.assert_allclose(back, tq.dequantize().numpy(), rtol=1e-7)


CASES = [   # (x dtype, scale shape, zp dtype or None, attrs)
    (np.float32, (), np.uint8, {}),
    (np.float32, (4,), np.int8, dict(axis=1)),
    (np.float32, (3, 2), np.uint8, dict(axis=1, block_size=2)),
    (np.float32, (2, 4), np.int8, dict(axis=0, block_size=2)),
    (np.float32, (3, 2), None, dict(axis=1, block_size=3, output_dtype=TensorProto.INT4)),
    (np.float32, (), np.uint16, {}), (np.float32, (4,), np.int16, dict(axis=-1)),
    (np.float32, (3,), ml_dtypes.int4, dict(axis=0)), (np.float32, (3,), ml_dtypes.uint4, dict(axis=0)),
    (np.float32, (), ml_dtypes.int2, {}), (np.float32, (), ml_dtypes.uint2, {}),
    (np.float16, (), np.uint8, {}), (np.int32, (), np.int8, {}),
    (np.float32, (), ml_dtypes.float8_e4m3fn, {}), (np.float32, (), ml_dtypes.float8_e5m2, {}),
    (np.float32, (), ml_dtypes.float8_e4m3fn, dict(saturate=0)),
    (np.float32, (), ml_dtypes.float8_e5m2, dict(saturate=0)),
    (np.float32, (), ml_dtypes.float8_e4m3fnuz, {}), (np.float32, (), ml_dtypes.float8_e5m2fnuz, {}),
    (np.float32, (3,), ml_dtypes.float4_e2m1fn, dict(axis=0)),
]


def _q_inputs(xd, sshape, zpd, seed):
    r = rng(seed)
    x = (r.standard_normal((3, 4)) * 40)
    big = 6e4 if xd == np.float16 else 1e6       # saturates every target; inf is another test
    x[0, :3] = [big, -big, 0.5]
    x = x.astype(xd)
    s = r.uniform(0.5, 3.0, sshape).astype(np.float32)
    if zpd is None:
        return x, s, None
    if np.dtype(zpd).kind in "iu":
        info = np.iinfo(zpd) if zpd in (np.uint8, np.int8, np.uint16, np.int16) else ml_dtypes.iinfo(zpd)
        zp = r.integers(int(info.min), int(info.max) + 1, sshape).astype(zpd)
    else:
        zp = np.zeros(sshape, zpd)
    return x, s, zp


@pytest.mark.parametrize("xd,sshape,zpd,attrs", CASES, ids=[f"{i}" for i in range(len(CASES))])
def test_quantize_and_dequantize_match_onnx_reference(xd, sshape, zpd, attrs):
    x, s, zp = _q_inputs(xd, sshape, zpd, 5)
    feeds = {"x": x, "s": s} | ({"zp": zp} if zp is not None else {})
    m = node_model("QuantizeLinear", feeds, attrs, opset=25)
    got, want = ckir_run(m, feeds)[0], ref_run(m, feeds)[0]
    same_bits(got, want)
    dattrs = {k: v for k, v in attrs.items() if k in ("axis", "block_size")}
    dfeeds = {"q": got, "s": s} | ({"zp": zp} if zp is not None else {})
    dm = node_model("DequantizeLinear", dfeeds, dattrs, opset=25)
    same_bits(ckir_run(dm, dfeeds)[0], ref_run(dm, dfeeds)[0])


def test_quantize_nan_goes_to_zero_point_and_precision_attribute():
    x = np.array([np.nan, 1.0, 2.5, 3.5, -np.inf], np.float32)
    got = run1("quant.quantize_linear", [x, np.array(1.0, np.float32), np.array(7, np.uint8)], dtype="u8")
    same(got, np.array([7, 8, 9, 11, 0], np.uint8))
    # x / scale rounded to f16 first: 1.0005 / 1 is 1.0 in f16, then 2049 / 2 = 1024.5 -> 1024
    x = np.array([2049.0, 1.0005], np.float32)
    got = run1("quant.quantize_linear", [x, np.array(2.0, np.float32)], dtype="u16", precision="f16")
    same(got, np.array([1024, 1], np.uint16))


def test_dequantize_output_dtype_and_e8m0_scale_match_onnx_reference():
    x = np.array([[1, -2, 3, 0], [4, 5, -6, 7]], ml_dtypes.int4)
    s = np.array([[0.5], [4.0]], ml_dtypes.float8_e8m0fnu)
    feeds = {"x": x, "s": s}
    m = node_model("DequantizeLinear", feeds, dict(axis=1, block_size=4, output_dtype=TensorProto.FLOAT16),
                   opset=25)
    same(ckir_run(m, feeds)[0], ref_run(m, feeds)[0])


def test_dequantize_int32_bias_is_exact():
    x = np.array([2**30 + 1, -(2**30) - 3], np.int32)
    got = run1("quant.dequantize_linear", [x, np.array(1.0, np.float64), np.array(1, np.int32)])
    same(got, np.array([2.0**30, -(2.0**30) - 4]))


@pytest.mark.parametrize("xd", [ml_dtypes.float8_e4m3fn, ml_dtypes.int4, ml_dtypes.uint2, ml_dtypes.float4_e2m1fn])
def test_dequantize_narrow_initializers_match_onnx_reference(xd):
    """Weights and zero points of narrow dtypes stored in the model (constants in the IR, which
    every compiled module round-trips through text)."""
    w = np.arange(-3, 5).reshape(2, 4).astype(xd)
    code = TO_ONNX_DTYPE[ckir.dtypes.dtype(np.dtype(xd))]
    inits = [helper.make_tensor("w", code, w.shape, w.astype(np.float32).reshape(-1).tolist()),
             helper.make_tensor("zp", code, [], [1 if np.dtype(xd).kind in "iu" else 0]),
             numpy_helper.from_array(np.array(0.5, np.float32), "s")]
    nodes = [helper.make_node("DequantizeLinear", ["w", "s", "zp"], ["y"]), helper.make_node("Add", ["y", "x"], ["z"])]
    feeds = {"x": np.ones((2, 4), np.float32)}
    m = onnx_model(nodes, feeds, ["z"], inits, opsets=(("", 25),))
    same(ckir_run(m, feeds)[0], ref_run(m, feeds)[0])


@pytest.mark.parametrize("axis,block", [(None, 0), (1, 0), (0, 2), (1, 3)])
def test_dequantize_scale_gradient_matches_torch(axis, block):
    r = rng(7)
    q = r.integers(0, 256, (4, 5)).astype(np.uint8)
    if axis is None:
        s, zp, kw = r.uniform(0.1, 1, ()), np.array(3, np.uint8), {}
        ts = lambda t: t
    elif block == 0:
        s, zp, kw = r.uniform(0.1, 1, q.shape[axis]), r.integers(0, 9, q.shape[axis]).astype(np.uint8), dict(axis=axis)
        ts = lambda t: t.reshape([-1 if i == axis else 1 for i in range(2)])
    else:
        nb = -(-q.shape[axis] // block)
        shp = list(q.shape)
        shp[axis] = nb
        s, zp = r.uniform(0.1, 1, shp), r.integers(0, 9, shp).astype(np.uint8)
        kw = dict(axis=axis, block_size=block)
        ts = lambda t: torch.repeat_interleave(t, block, dim=axis).narrow(axis, 0, q.shape[axis])
    cot = r.standard_normal(q.shape)
    tsc = torch.tensor(np.asarray(s, np.float64), requires_grad=True)
    zt = torch.tensor(np.asarray(zp, np.float64))
    y = (torch.tensor(q, dtype=torch.float64) - ts(zt)) * ts(tsc)
    (want,) = torch.autograd.grad(y, [tsc], torch.from_numpy(cot))
    np.testing.assert_allclose(run1("quant.dequantize_linear", [q, np.asarray(s, np.float64), zp], **kw),
                               y.detach().numpy(), **F64)
    grads = run_vjp("quant.dequantize_linear", [q, np.asarray(s, np.float64), zp], cot, **kw)
    assert grads[0] is None and grads[2] is None
    np.testing.assert_allclose(grads[1], want.numpy(), **F64)


def test_quantize_symbolic_dims():
    g, b = new_graph("main", {"x": TensorType([Sym("seq"), 4], "f32")})
    s = b.constant(np.array([0.1, 0.2, 0.3, 0.4], np.float32))
    y = b.quant.quantize_linear(g.inputs[0], s, axis=1, dtype="i8")
    assert y.type.shape == (Sym("seq"), 4)
    g.set_outputs([y], ["y"])
    m = Module("t")
    m.add_graph(g)
    f = ckir.compile(m)
    for n in (1, 6):
        x = rng(n).standard_normal((n, 4)).astype(np.float32)
        want = np.clip(np.rint(x / np.array([0.1, 0.2, 0.3, 0.4], np.float32)), -128, 127).astype(np.int8)
        same(f(x)["y"], want)


@pytest.mark.parametrize("types,attrs,msg", [
    ([([3, 4], "f32"), ([5], "f32")], dict(dtype="u8"), "one entry per index of axis 1"),
    ([([3, 4], "f32"), ([3, 3], "f32")], dict(dtype="u8", block_size=2), "should be 2"),
    ([([3, 4], "f32"), ([], "f32"), ([], "i8")], dict(dtype="u8"), "zero_point has dtype i8"),
    ([([3, 4], "f32"), ([], "f32")], dict(dtype="f32"), "not a quantized type"),
    ([([3, 4], "f32"), ([4], "f32"), ([], "u8")], dict(dtype="u8"), "must have the same shape"),
])
def test_quantize_errors(types, attrs, msg):
    with pytest.raises(ckir.CkirError, match=msg):
        build("quant.quantize_linear", types, **attrs)


def test_dequantize_errors():
    with pytest.raises(ckir.CkirError, match="give dtype for an f8e8m0 scale"):
        build("quant.dequantize_linear", [([4], "u8"), ([], "f8e8m0")])
    with pytest.raises(ckir.CkirError, match="zero_point has dtype u8, x i8"):
        build("quant.dequantize_linear", [([4], "i8"), ([], "f32"), ([], "u8")])


# --- dynamic_quantize_linear -------------------------------------------------------------------------
@pytest.mark.parametrize("x", [
    np.array([0, 2, -3, -2.5, 1.34, 0.5], np.float32),
    np.array([-1, -2.1, -1.3, -2.5, -3.34, -4], np.float32),
    np.array([[1, 2.1, 1.3], [2.5, 3.34, 4]], np.float32),
    (np.random.default_rng(3).standard_normal((5, 7)) * 3).astype(np.float32),
    np.zeros((2, 3), np.float32),
])
def test_dynamic_quantize_linear_matches_onnxruntime(x):
    m = node_model("DynamicQuantizeLinear", {"x": x}, n_out=3, opset=11)
    got, want = ckir_run(m, {"x": x}), ort_run(m, {"x": x})
    for a, b in zip(got, want):
        same(a, b)
    if x.any():
        for a, b in zip(got, ref_run(m, {"x": x})):
            same(a, b)


# --- matmul_integer / conv_integer --------------------------------------------------------------------
@pytest.mark.parametrize("ash,bsh,azp,bzp", [
    ((3, 4), (4, 5), (), ()), ((2, 3, 40), (40, 6), (3,), (6,)), ((5,), (5, 2), None, (2,)),
    ((2, 1, 3, 8), (4, 8, 2), (2, 1, 3, 1), (4, 1, 2)), ((3, 300), (300, 2), None, None),
])
def test_matmul_integer_is_exact(ash, bsh, azp, bzp):
    r = rng(11)
    a = r.integers(0, 256, ash).astype(np.uint8)
    b = r.integers(-128, 128, bsh).astype(np.int8)
    ops = [a, b]
    ta, tb = torch.from_numpy(a.astype(np.int64)), torch.from_numpy(b.astype(np.int64))
    if azp is not None:
        za = r.integers(0, 256, azp).astype(np.uint8)
        ops.append(za)
        z = torch.from_numpy(za.astype(np.int64))
        ta = ta - (z.reshape(-1, 1) if len(azp) == 1 else z)
    if bzp is not None:
        if azp is None:
            ops.append(np.array(0, np.uint8))
        zb = r.integers(-128, 128, bzp).astype(np.int8)
        ops.append(zb)
        tb = tb - torch.from_numpy(zb.astype(np.int64))
    want = torch.matmul(ta, tb).numpy().astype(np.int32)
    same(run1("quant.matmul_integer", ops), want)


def test_matmul_integer_wraps_like_int32():
    a = np.full((1, 70000), 255, np.uint8)
    b = np.full((70000, 1), -128, np.int8)
    want = np.array([[np.int64(255 * -128 * 70000)]]).astype(np.int32)      # wraps around
    same(run1("quant.matmul_integer", [a, b]), want)


def test_matmul_integer_converter_and_onnxruntime():
    # onnxruntime's u8 x s8 kernel on AVX2 without VNNI saturates pairs of products to int16
    # (vpmaddubsw); keep the operands in 7 bits, where it is exact, to compare with it.
    r = rng(12)
    feeds = {"a": r.integers(0, 128, (2, 3, 16)).astype(np.uint8),
             "b": r.integers(-64, 64, (16, 5)).astype(np.int8),
             "za": np.array(9, np.uint8), "zb": r.integers(-5, 5, (5,)).astype(np.int8)}
    m = node_model("MatMulInteger", feeds, opset=10)
    same(ckir_run(m, feeds)[0], ort_run(m, feeds)[0])
    f2 = {k: feeds[k] for k in ("a", "b", "zb")}          # b's zero point without a's
    node = helper.make_node("MatMulInteger", ["a", "b", "", "zb"], ["y0"])
    m2 = onnx_model([node], f2, ["y0"], opsets=(("", 10),))
    same(ckir_run(m2, f2)[0], ref_run(m2, f2)[0])


@pytest.mark.parametrize("shape,wshape,attrs", [
    ((1, 2, 6, 7), (3, 2, 3, 3), dict(pads=[1, 0, 2, 1], strides=[2, 1])),
    ((2, 4, 9), (4, 2, 3), dict(group=2, dilations=[2])),
    ((1, 1, 5, 5), (2, 1, 2, 2), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
])
def test_conv_integer_matches_torch(shape, wshape, attrs):
    r = rng(13)
    x = r.integers(0, 256, shape).astype(np.uint8)
    w = r.integers(0, 256, wshape).astype(np.uint8)
    zx, zw = np.array(128, np.uint8), r.integers(100, 150, (wshape[0],)).astype(np.uint8)
    feeds = {"x": x, "w": w, "zx": zx, "zw": zw}
    m = node_model("ConvInteger", feeds, attrs, opset=10)
    got = ckir_run(m, feeds)[0]
    if len(shape) == 4:     # onnxruntime lacks per-channel weight zero points, onnx.reference 1-D ones
        same(got, ref_run(m, feeds)[0])
    if "auto_pad" in attrs:
        return
    n = len(shape) - 2
    pads = attrs.get("pads", [0] * 2 * n)
    tx = torch.from_numpy(x.astype(np.float64) - 128)
    tp = []
    for i in reversed(range(n)):
        tp += [pads[i], pads[n + i]]
    tx = torch.nn.functional.pad(tx, tp)
    tw = torch.from_numpy(w.astype(np.float64) - zw.reshape((-1,) + (1,) * (len(wshape) - 1)))
    conv = torch.nn.functional.conv2d if n == 2 else torch.nn.functional.conv1d
    want = conv(tx, tw, stride=attrs.get("strides", 1), dilation=attrs.get("dilations", 1),
                groups=attrs.get("group", 1))
    same(got, want.numpy().astype(np.int32))


def test_matmul_and_conv_integer_errors():
    with pytest.raises(ckir.CkirError, match="contraction dims differ"):
        build("quant.matmul_integer", [([2, 3], "u8"), ([4, 2], "i8")])
    with pytest.raises(ckir.CkirError, match="b_zero_point has dtype u8, b i8"):
        build("quant.matmul_integer", [([2, 3], "u8"), ([3, 2], "i8"), ([], "u8"), ([], "u8")])
    with pytest.raises(ckir.CkirError, match="one per output channel"):
        build("quant.conv_integer", [([1, 2, 5, 5], "u8"), ([3, 2, 3, 3], "u8"), ([], "u8"), ([2], "u8")])


# --- QLinearMatMul / QLinearConv ------------------------------------------------------------------------
@pytest.mark.parametrize("qt,per", [(np.uint8, False), (np.int8, False), (np.uint8, True), (np.int8, True)])
def test_qlinear_matmul_matches_onnxruntime(qt, per):
    r = rng(14)
    lo, hi = (0, 128) if qt == np.uint8 else (-64, 64)
    a = r.integers(lo, hi, (2, 3, 8)).astype(qt)
    b = r.integers(-64, 64, (8, 4)).astype(np.int8)
    sa, za = np.float32(0.02), qt(r.integers(lo, hi))
    sb = r.uniform(0.01, 0.03, 4 if per else ()).astype(np.float32)
    zb = np.zeros(sb.shape, np.int8)
    sy, zy = np.float32(0.05), qt(r.integers(lo, hi))
    feeds = {"a": a, "sa": np.array(sa), "za": np.array(za), "b": b, "sb": sb, "zb": zb,
             "sy": np.array(sy), "zy": np.array(zy)}
    m = node_model("QLinearMatMul", feeds, opset=21)
    same(ckir_run(m, feeds)[0], ort_run(m, feeds)[0])


def test_qlinear_matmul_float8_is_dequantize_matmul_quantize():
    r = rng(16)
    f8 = ml_dtypes.float8_e4m3fn
    feeds = {"a": r.standard_normal((3, 4)).astype(f8), "sa": np.array(0.5, np.float32),
             "za": np.zeros((), f8), "b": r.standard_normal((4, 2)).astype(f8),
             "sb": np.array(2.0, np.float32), "zb": np.zeros((), f8),
             "sy": np.array(0.25, np.float32), "zy": np.zeros((), f8)}
    m = node_model("QLinearMatMul", feeds, opset=21)
    composed = onnx_model(
        [helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["fa"]),
         helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["fb"]),
         helper.make_node("MatMul", ["fa", "fb"], ["p"]),
         helper.make_node("QuantizeLinear", ["p", "sy", "zy"], ["y0"])], feeds, ["y0"], opsets=(("", 21),))
    same_bits(ckir_run(m, feeds)[0], ref_run(composed, feeds)[0])


def test_qlinear_conv_matches_onnxruntime():
    r = rng(15)
    x = r.integers(0, 128, (1, 3, 7, 6)).astype(np.uint8)
    w = r.integers(-64, 64, (4, 3, 3, 3)).astype(np.int8)
    feeds = {"x": x, "sx": np.array(0.03, np.float32), "zx": np.array(60, np.uint8), "w": w,
             "sw": r.uniform(0.01, 0.02, 4).astype(np.float32), "zw": np.zeros(4, np.int8),
             "sy": np.array(0.2, np.float32), "zy": np.array(100, np.uint8),
             "bias": r.integers(-500, 500, 4).astype(np.int32)}
    m = node_model("QLinearConv", feeds, dict(pads=[1, 1, 1, 0], strides=[1, 2]), opset=10)
    same(ckir_run(m, feeds)[0], ort_run(m, feeds)[0])


# --- models quantized by onnxruntime.quantization.quantize_dynamic --------------------------------
def _init(r, name, shape, scale=0.25):
    return numpy_helper.from_array((r.standard_normal(shape) * scale).astype(np.float32), name)


def _mlp(r):
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"]), helper.make_node("Add", ["h1", "b1"], ["h2"]),
             helper.make_node("Relu", ["h2"], ["h3"]), helper.make_node("MatMul", ["h3", "w2"], ["h4"]),
             helper.make_node("Add", ["h4", "b2"], ["y"])]
    inits = [_init(r, "w1", (16, 32)), _init(r, "b1", (32,)), _init(r, "w2", (32, 8)), _init(r, "b2", (8,))]
    return nodes, inits, ["batch", 16]


def _block(r, d=16, f=32):
    mm = lambda a, b, o: helper.make_node("MatMul", [a, b], [o])
    add = lambda a, b, o: helper.make_node("Add", [a, b], [o])
    nodes = [mm("x", "wq", "q"), mm("x", "wk", "k"), mm("x", "wv", "v"),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), mm("q", "kt", "s0"),
             helper.make_node("Mul", ["s0", "scale"], ["s"]), helper.make_node("Softmax", ["s"], ["p"], axis=-1),
             mm("p", "v", "o"), mm("o", "wo", "o2"), add("o2", "bo", "o3"), add("x", "o3", "r1"),
             mm("r1", "w1", "f1"), add("f1", "b1", "f2"), helper.make_node("Relu", ["f2"], ["f3"]),
             mm("f3", "w2", "f4"), add("f4", "b2", "f5"), add("r1", "f5", "y")]
    inits = [_init(r, n, (d, d)) for n in ("wq", "wk", "wv", "wo")] + [
        _init(r, "bo", (d,)), _init(r, "w1", (d, f)), _init(r, "b1", (f,)), _init(r, "w2", (f, d)),
        _init(r, "b2", (d,)), numpy_helper.from_array(np.float32(d ** -0.5), "scale")]
    return nodes, inits, ["batch", "seq", d]


@pytest.mark.parametrize("arch", ["mlp", "block"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_dynamic_model_matches_onnxruntime(tmp_path, arch, per_channel):
    """A float model quantized by onnxruntime (int8 weights; activations quantized at run time
    by DynamicQuantizeLinear, MatMulInteger, Cast, Mul) gives the same outputs in ckir as in
    onnxruntime. Every step is exact or one f32 operation in the same order, so the outputs
    agree to the last bit here; the bound 1e-6 * max|y| only leaves room for another f32
    summation order. reduce_range=True keeps the weights in 7 bits, as onnxruntime recommends on
    CPUs without VNNI, where its u8 x s8 kernel saturates (see
    test_matmul_integer_converter_and_onnxruntime); ckir computes the exact ONNX result."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    r = rng(20)
    nodes, inits, xshape = _mlp(r) if arch == "mlp" else _block(r)
    yshape = xshape[:-1] + [8 if arch == "mlp" else xshape[-1]]
    g = helper.make_graph(nodes, arch, [helper.make_tensor_value_info("x", TensorProto.FLOAT, xshape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, yshape)], inits)
    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), src)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                     reduce_range=True)
    q = onnx.load(dst)
    ops = {n.op_type for n in q.graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    assert any(i.data_type == TensorProto.INT8 for i in q.graph.initializer)
    rep = backend.prepare(str(dst))
    sess = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    shapes = [(1, 16), (5, 16), (33, 16)] if arch == "mlp" else [(1, 3, 16), (2, 7, 16)]
    for shape in shapes:
        x = r.standard_normal(shape).astype(np.float32)
        want = sess.run(None, {"x": x})[0]
        got = rep.run([x])[0]
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * float(np.abs(want).max()))


# --- DFT --------------------------------------------------------------------------------------------------
def _torch_dft(x, axis, length, inverse, onesided):
    t = torch.tensor(x, requires_grad=True)
    z = torch.view_as_complex(t) if x.shape[-1] == 2 else t[..., 0]
    axis %= x.ndim
    if inverse and onesided:
        y = torch.fft.irfft(z, n=length, dim=axis)[..., None]
    else:
        fn = torch.fft.rfft if onesided else (torch.fft.ifft if inverse else torch.fft.fft)
        y = torch.view_as_real(fn(z, n=length, dim=axis))
    return t, y


DFT_CASES = [((2, 6, 1), 1, None, False, False), ((3, 5, 2), -2, None, True, False),
             ((2, 7, 3, 2), 1, 9, False, False), ((4, 6, 1), 0, 3, False, False),
             ((2, 8, 1), 1, None, False, True), ((2, 7, 1), 1, 6, False, True),
             ((3, 4, 2), 1, None, True, True), ((2, 4, 2), 1, 7, True, True),
             ((3, 5, 2), 0, 4, True, False), ((2, 5, 2), 1, 3, True, True)]


@pytest.mark.parametrize("shape,axis,length,inverse,onesided", DFT_CASES)
def test_dft_and_its_vjp_match_torch(shape, axis, length, inverse, onesided):
    x = rng(21).standard_normal(shape)
    attrs = dict(axis=axis, length=length, inverse=inverse, onesided=onesided)
    got = run1("nn.dft", [x], **attrs)
    t, y = _torch_dft(x, axis, length, inverse, onesided)
    np.testing.assert_allclose(got, y.detach().numpy(), **F64)
    cot = rng(22).standard_normal(got.shape)
    (want,) = torch.autograd.grad(y, [t], torch.from_numpy(cot))
    (g,) = run_vjp("nn.dft", [x], cot, **attrs)
    np.testing.assert_allclose(g, want.numpy(), **F64)
    g32 = run1("nn.dft", [x.astype(np.float32)], **attrs)
    np.testing.assert_allclose(g32, y.detach().numpy(), **F32)


def test_dft_symbolic_dims():
    g, b = new_graph("main", {"x": TensorType([2, Sym("n"), 1], "f64")})
    y = b.nn.dft(g.inputs[0], axis=1)
    assert y.type.shape == (2, Sym("n"), 2)
    z = b.nn.dft(g.inputs[0], axis=1, onesided=True)
    assert z.type.shape[1] == ckir.types.ANY
    g.set_outputs([y, z], ["y", "z"])
    m = Module("t")
    m.add_graph(g)
    f = ckir.compile(m)
    for n in (3, 8):
        x = rng(n).standard_normal((2, n, 1))
        out = f(x)
        np.testing.assert_allclose(out["y"], torch.view_as_real(torch.fft.fft(torch.tensor(x[..., 0]), dim=1)).numpy(), **F64)
        np.testing.assert_allclose(out["z"], torch.view_as_real(torch.fft.rfft(torch.tensor(x[..., 0]), dim=1)).numpy(), **F64)


@pytest.mark.parametrize("types,attrs,msg", [
    ([([2, 5, 3], "f32")], {}, "must be 1 or 2"),
    ([([2, 5, 1], "f32")], dict(axis=-1), "transform a signal dim"),
    ([([2, 5, 2], "f32")], dict(onesided=True), "needs real input"),
    ([([2, 5, 1], "f32")], dict(onesided=True, inverse=True), "needs a complex"),
    ([([2, 5, 1], "f32")], dict(length=0), "length must be >= 1"),
])
def test_dft_errors(types, attrs, msg):
    with pytest.raises(ckir.CkirError, match=msg):
        build("nn.dft", types, **attrs)


@pytest.mark.parametrize("opset,axis,attrs,shape", [
    (17, 1, {}, (2, 6, 5, 1)), (17, 2, dict(inverse=1), (2, 6, 5, 2)), (17, 1, dict(onesided=1), (1, 8, 3, 1)),
    (20, -2, {}, (2, 6, 5, 1)), (20, 1, dict(inverse=1, onesided=1), (1, 4, 3, 2)),
])
@pytest.mark.parametrize("runtime_inputs", [False, True])
def test_dft_converter_matches_onnx_reference(opset, axis, attrs, shape, runtime_inputs):
    x = rng(23).standard_normal(shape).astype(np.float32)
    feeds = {"x": x}
    length = np.array(7, np.int64)
    ins = ["x", "n"]
    if runtime_inputs:
        feeds["n"] = length
        inits = []
    else:
        inits = [numpy_helper.from_array(length, "n")]
    if opset == 17:
        attrs = dict(attrs, axis=axis)
    else:
        ins.append("a")
        ax = np.array(axis, np.int64)
        if runtime_inputs:
            feeds["a"] = ax
        else:
            inits.append(numpy_helper.from_array(ax, "a"))
    node = helper.make_node("DFT", ins, ["y"], **attrs)
    m = onnx_model([node], feeds, ["y"], inits, opsets=(("", opset),))
    got = ckir_run(m, feeds)[0]
    np.testing.assert_allclose(got, ref_run(m, feeds)[0], rtol=1e-4, atol=1e-4)


# --- STFT and windows ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n,hop,win,onesided", [(32, 4, 8, True), (27, 3, 10, False), (16, 16, 16, True)])
def test_stft_matches_torch(n, hop, win, onesided):
    sig = rng(24).standard_normal((2, n))
    w = torch.hann_window(win, dtype=torch.float64)
    want = torch.view_as_real(torch.stft(torch.tensor(sig), win, hop_length=hop, win_length=win, window=w,
                                         center=False, onesided=onesided, return_complex=True))
    want = want.transpose(1, 2).numpy()                     # (B, frames, bins, 2)
    got = run1("nn.stft", [sig[..., None], w.numpy()], frame_step=hop, onesided=onesided)
    np.testing.assert_allclose(got, want, **F64)


def test_stft_converter_with_runtime_parameters_matches_onnx_reference():
    sig = rng(25).standard_normal((1, 40, 1)).astype(np.float32)
    feeds = {"s": sig, "step": np.array(6, np.int64), "len": np.array(10, np.int64)}
    node = helper.make_node("STFT", ["s", "step", "", "len"], ["y"], onesided=0)
    m = onnx_model([node], feeds, ["y"], opsets=(("", 17),))
    got = ckir_run(m, feeds)[0]
    assert got.shape == (1, 6, 10, 2)
    np.testing.assert_allclose(got, ref_run(m, feeds)[0], rtol=1e-4, atol=1e-4)
    cplx = rng(26).standard_normal((2, 20, 2)).astype(np.float32)
    win = np.hamming(5).astype(np.float32)
    feeds = {"s": cplx, "w": win}
    node = helper.make_node("STFT", ["s", "step", "w"], ["y"], onesided=0)
    m = onnx_model([node], feeds, ["y"], [numpy_helper.from_array(np.array(3, np.int64), "step")],
                   opsets=(("", 17),))
    np.testing.assert_allclose(ckir_run(m, feeds)[0], ref_run(m, feeds)[0], rtol=1e-4, atol=1e-4)


def test_stft_errors():
    with pytest.raises(ckir.CkirError, match="does not fit|do not fit"):
        build("nn.stft", [([1, 5, 1], "f32")], frame_step=1, frame_length=8)
    with pytest.raises(ckir.CkirError, match="the window has 4 entries, frame_length is 5"):
        build("nn.stft", [([1, 9, 1], "f32"), ([4], "f32")], frame_step=1, frame_length=5)
    with pytest.raises(ckir.CkirError, match="needs a real signal"):
        build("nn.stft", [([1, 9, 2], "f32")], frame_step=1)


TORCH_WINDOWS = {"hann": torch.hann_window, "blackman": torch.blackman_window,
                 "hamming": lambda n, periodic, dtype: torch.hamming_window(n, periodic, 25 / 46, 21 / 46, dtype=dtype)}


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide")   # onnx.reference, size 1
@pytest.mark.parametrize("kind", ["hann", "hamming", "blackman"])
@pytest.mark.parametrize("size", [1, 2, 7, 16])
@pytest.mark.parametrize("periodic", [True, False])
def test_windows_match_torch(kind, size, periodic):
    want = TORCH_WINDOWS[kind](size, periodic=periodic, dtype=torch.float64).numpy()
    if size == 1 and periodic:      # torch returns [1]; ONNX the first point of a 2-point window
        want = {"hann": [0.0], "hamming": [4 / 46], "blackman": [0.0]}[kind]
    got = run1("nn.window", [np.array(size, np.int64)], kind=kind, periodic=periodic, dtype="f64")
    np.testing.assert_allclose(got, want, **F64)
    op = {"hann": "HannWindow", "hamming": "HammingWindow", "blackman": "BlackmanWindow"}[kind]
    for runtime in (False, True):
        feeds = {"n": np.array(size, np.int64)} if runtime else {}
        inits = [] if runtime else [numpy_helper.from_array(np.array(size, np.int64), "n")]
        node = helper.make_node(op, ["n"], ["y"], periodic=int(periodic), output_datatype=TensorProto.DOUBLE)
        m = onnx_model([node], feeds, ["y"], inits, opsets=(("", 17),))
        np.testing.assert_allclose(ckir_run(m, feeds)[0], want, **F64)


def test_window_error():
    with pytest.raises(ckir.CkirError, match="size must be a scalar"):
        build("nn.window", [([3], "i64")], kind="hann")


@pytest.mark.parametrize("args", [(8, 16, 8192, 0.0, 4096.0), (10, 64, 16000, 30.0, 7600.0), (3, 31, 100, 1.0, 49.0)])
@pytest.mark.parametrize("runtime", [False, True])
def test_mel_weight_matrix_matches_onnx_reference(args, runtime):
    names = ["bins", "dft", "rate", "lo", "hi"]
    arrays = [np.array(v, np.int64 if i < 3 else np.float32) for i, v in enumerate(args)]
    feeds = dict(zip(names, arrays)) if runtime else {}
    inits = [] if runtime else [numpy_helper.from_array(a, n) for n, a in zip(names, arrays)]
    node = helper.make_node("MelWeightMatrix", names, ["y"])
    m = onnx_model([node], feeds, ["y"], inits, opsets=(("", 17),))
    got = ckir_run(m, feeds)[0]
    ref_feeds = dict(zip(names, arrays))
    want = ReferenceEvaluator(onnx_model([node], ref_feeds, ["y"], opsets=(("", 17),))).run(None, ref_feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


# --- random ops -------------------------------------------------------------------------------------------
def test_seeded_random_ops_match_onnx_reference_bit_for_bit():
    x = rng(27).standard_normal((3, 4)).astype(np.float32)
    p = rng(28).uniform(0, 1, (5, 6)).astype(np.float32)
    cases = [("RandomUniformLike", {"x": x}, dict(low=-2.0, high=3.0, seed=7.0)),
             ("RandomNormalLike", {"x": x}, dict(mean=1.0, scale=0.5, seed=3.0, dtype=TensorProto.DOUBLE)),
             ("RandomUniform", {}, dict(shape=[2, 5], seed=1.0)),
             ("RandomNormal", {}, dict(shape=[4], seed=2.0, dtype=TensorProto.DOUBLE)),
             ("Bernoulli", {"p": p}, dict(seed=5.0)), ("Bernoulli", {"p": p}, dict(seed=0.0, dtype=TensorProto.INT32))]
    for op, feeds, attrs in cases:
        node = helper.make_node(op, list(feeds), ["y"], **attrs)
        m = onnx_model([node], feeds, ["y"], opsets=(("", 22),))
        got = ckir_run(m, feeds)[0]
        same(got, ref_run(m, feeds)[0])
        same(ckir_run(m, feeds)[0], got)               # the seed makes every run the same


def test_unseeded_random_ops_differ_between_runs_and_have_the_right_moments():
    m = onnx_model([helper.make_node("RandomNormal", [], ["y"], shape=[200000], mean=2.0, scale=3.0)],
                   {}, ["y"], opsets=(("", 22),))
    rep = backend.prepare(m)
    a, b = rep.run([])[0], rep.run([])[0]
    assert not np.array_equal(a, b)
    # mean and std of 200000 samples: standard errors 3/sqrt(n) = 0.0067 and ~0.0047
    assert abs(a.mean() - 2.0) < 0.04 and abs(a.std() - 3.0) < 0.03
    u = run1("nn.random_uniform", [], shape=[200000], low=-1.0, high=5.0)
    assert u.min() >= -1.0 and u.max() < 5.0 and abs(u.mean() - 2.0) < 0.05 and abs(u.var() - 3.0) < 0.05


def test_bernoulli_and_multinomial_frequencies():
    p = np.array([0.1, 0.5, 0.9])
    draws = run1("nn.bernoulli", [np.tile(p, (20000, 1))], seed=1)
    np.testing.assert_allclose(draws.mean(axis=0), p, atol=0.015)       # 5 standard errors
    logits = np.log(np.array([[0.2, 0.5, 0.3], [0.7, 0.1, 0.2]]))
    s = run1("nn.multinomial", [logits], sample_size=30000, seed=3, dtype="i64")
    assert s.dtype == np.int64 and s.shape == (2, 30000)
    freq = np.stack([np.bincount(row, minlength=3) / row.size for row in s])
    np.testing.assert_allclose(freq, np.exp(logits), atol=0.015)
    same(run1("nn.multinomial", [logits], sample_size=30000, seed=3, dtype="i64"), s)
    want = torch.softmax(torch.tensor(logits), -1).numpy()
    np.testing.assert_allclose(freq, want, atol=0.015)


def test_random_errors():
    with pytest.raises(ckir.CkirError, match="exactly one of"):
        build("nn.random_uniform", [([2], "f32")], shape=[2])
    with pytest.raises(ckir.CkirError, match="samples floats"):
        build("nn.random_normal", [], shape=[2], dtype="i32")
    with pytest.raises(ckir.CkirError, match="logits must be"):
        build("nn.multinomial", [([3], "f32")])


def test_random_like_gradient_is_zero():
    x = rng(29).standard_normal((2, 3))
    assert run_vjp("nn.random_uniform", [x], np.ones((2, 3)), seed=1) == [None]


# --- TfIdfVectorizer -----------------------------------------------------------------------------------------
TFIDF = [
    dict(mode="TF", min_gram_length=2, max_gram_length=2, max_skip_count=0, ngram_counts=[0, 4],
         ngram_indexes=[0, 1, 2, 3, 4, 5, 6], pool_int64s=[2, 3, 5, 4, 5, 6, 7, 8, 6, 7]),
    dict(mode="TF", min_gram_length=1, max_gram_length=2, max_skip_count=5, ngram_counts=[0, 4],
         ngram_indexes=[0, 1, 2, 3, 4, 5, 6], pool_int64s=[2, 3, 5, 4, 5, 6, 7, 8, 6, 7]),
    dict(mode="TFIDF", min_gram_length=1, max_gram_length=3, max_skip_count=2, ngram_counts=[0, 3, 7],
         ngram_indexes=[4, 3, 2, 1, 0, 6, 5], pool_int64s=[1, 2, 3, 1, 2, 2, 3, 1, 2, 3, 2, 3, 1],
         weights=[0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]),
    dict(mode="IDF", min_gram_length=2, max_gram_length=3, max_skip_count=1, ngram_counts=[0, 3, 7],
         ngram_indexes=[0, 1, 2, 3, 4, 5, 6], pool_int64s=[1, 2, 3, 1, 2, 2, 3, 1, 2, 3, 2, 3, 1],
         weights=[0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]),
    dict(mode="IDF", min_gram_length=1, max_gram_length=1, max_skip_count=0, ngram_counts=[0],
         ngram_indexes=[1, 0], pool_int64s=[7, 3]),
]


@pytest.mark.parametrize("attrs", TFIDF, ids=[str(i) for i in range(len(TFIDF))])
@pytest.mark.parametrize("shape,dtype", [((12,), np.int64), ((3, 9), np.int32)])
def test_tfidf_matches_onnx_reference(attrs, shape, dtype):
    x = rng(30).integers(1, 5, shape).astype(dtype)
    if 7 in attrs["pool_int64s"]:
        x.flat[::3] = 7
    m = node_model("TfIdfVectorizer", {"x": x}, attrs, opset=9)
    got = ckir_run(m, {"x": x})[0]
    same(got, ort_run(m, {"x": x})[0])
    # onnx.reference indexes weights by column, not by n-gram, and needs weights for IDF/TFIDF
    if attrs["mode"] == "TF" or "weights" in attrs and attrs["ngram_indexes"] == sorted(attrs["ngram_indexes"]):
        same(got, ref_run(m, {"x": x})[0])


def test_tfidf_errors():
    with pytest.raises(ckir.CkirError, match="not a multiple of 2"):
        build("nn.tfidf_vectorizer", [([5], "i64")], mode="TF", min_gram_length=1, max_gram_length=2,
              ngram_counts=[0, 1], ngram_indexes=[0, 1], pool=[1, 2, 3, 4])


# --- ai.onnx.ml: Binarizer, ArrayFeatureExtractor, LabelEncoder, TreeEnsemble ----------------------------
ML = "ai.onnx.ml"


@pytest.mark.parametrize("x", [rng(31).standard_normal((3, 4)).astype(np.float32),
                               rng(32).integers(-3, 3, (5,)).astype(np.int64)])
def test_binarizer_matches_onnx_reference(x):
    m = node_model("Binarizer", {"x": x}, dict(threshold=0.5), opset=1, domain=ML)
    same(ckir_run(m, {"x": x})[0], ref_run(m, {"x": x})[0])


@pytest.mark.parametrize("shape,idx", [((3, 4), [0, 3, 1]), ((2, 3, 5), [[4], [0]]), ((6,), [5, 0])])
def test_array_feature_extractor_matches_onnx_reference(shape, idx):
    x = rng(33).standard_normal(shape).astype(np.float32)
    feeds = {"x": x, "i": np.array(idx, np.int64)}
    m = node_model("ArrayFeatureExtractor", feeds, opset=1, domain=ML)
    same(ckir_run(m, feeds)[0], ref_run(m, feeds)[0])


@pytest.mark.parametrize("x,attrs", [
    (np.array([[1, 5, 3], [7, 1, 2]], np.int64), dict(keys_int64s=[1, 2, 3], values_int64s=[10, 20, 30])),
    (np.array([1, 9, 3], np.int64), dict(keys_int64s=[3, 1], values_floats=[0.5, 1.5], default_float=7.0)),
    (np.array([0.5, 2.0, 1.25], np.float32), dict(keys_floats=[2.0, 0.5], values_int64s=[4, 5], default_int64=9)),
    (np.array([4, 9, 1], np.int32), dict(keys_tensor=numpy_helper.from_array(np.array([9, 1], np.int32)),
                                         values_tensor=numpy_helper.from_array(np.array([2, 3], np.int16)),
                                         default_tensor=numpy_helper.from_array(np.array([-5], np.int16)))),
])
def test_label_encoder_numeric_matches_onnx_reference(x, attrs):
    m = node_model("LabelEncoder", {"x": x}, attrs, opset=4, domain=ML)
    same(ckir_run(m, {"x": x})[0], ref_run(m, {"x": x})[0])


def test_label_encoder_maps_to_strings_and_refuses_duplicate_keys():
    x = np.array([1, 2, 3], np.int64)       # string label maps: tests/test_onnx_strings.py
    m = node_model("LabelEncoder", {"x": x}, dict(keys_int64s=[1, 2], values_strings=["a", "b"]), opset=2, domain=ML)
    np.testing.assert_array_equal(ckir_run(m, {"x": x})[0], np.array(["a", "b", "_Unused"], object))
    with pytest.raises(ckir.CkirError, match="keys must be unique"):
        build("nn.label_encoder", [([2], "i64")], keys=np.array([1, 1]), values=np.array([1, 2]),
              default=np.array(0))


def _tree_attrs(n_nodes, n_features, seed, n_targets=3):
    """Two random trees in heap layout (node j's children are 2j+1 and 2j+2 within its tree, or
    leaves), with every comparison mode but membership."""
    r = rng(seed)
    half = n_nodes // 2
    ids = {"true": [], "false": []}
    flags = {"true": [], "false": []}
    leaves = 0
    for i in range(n_nodes):
        root, end = (0, half) if i < half else (half, n_nodes)
        for k, side in enumerate(("true", "false")):
            child = root + 2 * (i - root) + 1 + k
            if child < end and r.random() < 0.8:
                ids[side].append(child)
                flags[side].append(0)
            else:
                ids[side].append(leaves)
                flags[side].append(1)
                leaves += 1
    return dict(nodes_featureids=r.integers(0, n_features, n_nodes).tolist(),
                nodes_splits=numpy_helper.from_array(r.integers(-2, 3, n_nodes).astype(np.float32) / 2),
                nodes_modes=numpy_helper.from_array(r.integers(0, 6, n_nodes).astype(np.uint8)),
                nodes_truenodeids=ids["true"], nodes_trueleafs=flags["true"],
                nodes_falsenodeids=ids["false"], nodes_falseleafs=flags["false"],
                nodes_missing_value_tracks_true=r.integers(0, 2, n_nodes).tolist(),
                leaf_targetids=r.integers(0, n_targets, leaves).tolist(),
                leaf_weights=numpy_helper.from_array(r.standard_normal(leaves).astype(np.float32)),
                tree_roots=[0, half], n_targets=n_targets)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("agg", [0, 1, 2, 3])
def test_tree_ensemble_matches_onnx_reference(seed, agg):
    attrs = _tree_attrs(14, 3, seed)
    x = (rng(seed + 100).integers(-2, 3, (40, 3)) / 2).astype(np.float32)
    x[::7, 0] = np.nan
    attrs["aggregate_function"] = agg
    m = node_model("TreeEnsemble", {"x": x}, attrs, opset=5, domain=ML)
    got, want = ckir_run(m, {"x": x})[0], ref_run(m, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_tree_ensemble_post_transform_and_errors():
    x = np.array([[0.5], [2.0]], np.float32)
    attrs = dict(nodes_featureids=[0], nodes_splits=numpy_helper.from_array(np.array([1.0], np.float32)),
                 nodes_modes=numpy_helper.from_array(np.array([0], np.uint8)), nodes_truenodeids=[0],
                 nodes_trueleafs=[1], nodes_falsenodeids=[1], nodes_falseleafs=[1], leaf_targetids=[0, 1],
                 leaf_weights=numpy_helper.from_array(np.array([1.0, 2.0], np.float32)), tree_roots=[0],
                 n_targets=2, post_transform=1)
    m = node_model("TreeEnsemble", {"x": x}, attrs, opset=5, domain=ML)
    want = torch.softmax(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), -1).numpy()
    np.testing.assert_allclose(ckir_run(m, {"x": x})[0], want, **F32)
    with pytest.raises(ckir.CkirError, match="a true branch points to leaf 5"):
        build("nn.tree_ensemble", [([2, 1], "f32")], nodes_featureids=[0], nodes_splits=np.array([1.0]),
              nodes_modes=[0], nodes_truenodeids=[5], nodes_trueleafs=[1], nodes_falsenodeids=[0],
              nodes_falseleafs=[1], leaf_targetids=[0], leaf_weights=np.array([1.0]), tree_roots=[0],
              n_targets=1)


# --- what stays unsupported, and says so ---------------------------------------------------------------------
def test_string_pools_are_refused_with_the_reason():
    x = np.array([1, 2], np.int64)
    m = node_model("TfIdfVectorizer", {"x": x}, dict(mode="TF", min_gram_length=1, max_gram_length=1, max_skip_count=0,
                                                      ngram_counts=[0], ngram_indexes=[0], pool_strings=["a"]), opset=9)
    with pytest.raises(ckir.CkirError, match="pool_strings is not supported"):
        backend.prepare(m)
