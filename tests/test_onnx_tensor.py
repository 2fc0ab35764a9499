"""Group B of the ONNX op coverage: shapes, indexing, data movement and resampling.

First the nn ops declared for it against independent implementations:
- dialects/nn/dynamic.py (reshape/expand/squeeze/unsqueeze/slice/pad/tile/arange/split/topk/
  resize/col2im with run-time shape operands): torch (forward and float64 autograd VJPs), with
  onnx.reference / onnxruntime for ONNX's own corner cases (Reshape's 0, Slice clamping, Pad's
  wrap and negative pads, Resize's axes / roi / keep_aspect_ratio_policy, 1-D and 3-D Col2Im);
  each one's canonicalize pattern (rewriting it to the static op once its operand is constant);
- dialects/nn/index.py (gather_elements, scatter_elements, gather_nd, scatter_nd, topk, nonzero,
  unique): torch.gather / scatter / scatter_reduce / topk / nonzero / unique and autograd;
  onnx.reference for GatherND, ScatterND, ties and Unique's first-occurrence indices;
- dialects/nn/image.py (resize, resize_grad, grid_sample, grid_sample_grad): torch's
  F.interpolate and F.grid_sample with autograd (the *_grad ops are their VJPs), onnx.reference
  for the coordinate modes and antialiasing torch has no equivalent for.
Then the converters (frontends/onnx/ops/tensor.py) on models the backend suite does not cover:
shape inputs given as initializers (the static ops), older opsets, symbolic input dims, against
onnxruntime.

Tolerances: data movement copies values, so forward results match exactly; float64
interpolation agrees with torch to rounding (rtol 1e-12); gradients use oracle.TOL (float64
sums in another order). float32 models agree with onnxruntime to a few ulps (1e-5)."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

import ckir
from ckir import TensorType, new_graph
from ckir.frontends.onnx.backend import prepare
from ckir.frontends.onnx.importer import import_onnx
from ckir.types import ANY, Sym
from oracle import check_grads, op_module, run_op, torch_vjp

R = np.random.default_rng(7)
I64_MAX, I64_MIN = 2**63 - 1, -2**63
INTERP = {"rtol": 1e-12, "atol": 1e-12}
F32 = {"rtol": 1e-5, "atol": 1e-5}
NP2ONNX = {np.dtype(np.float32): TP.FLOAT, np.dtype(np.float64): TP.DOUBLE, np.dtype(np.int64): TP.INT64,
           np.dtype(np.int32): TP.INT32, np.dtype(np.bool_): TP.BOOL, np.dtype(np.uint8): TP.UINT8}


def rand(*shape):
    return R.standard_normal(shape)


def i64(*v):
    return np.array(v, np.int64)


def build_error(name, types, *consts, **attrs):
    """Build nn.<name> on graph inputs of `types` followed by constant operands."""
    g, b = new_graph("main", {f"a{i}": TensorType(*t) for i, t in enumerate(types)})
    return getattr(b.nn, name)(*g.inputs, *[b.constant(c) for c in consts], **attrs)


def onnx_node_model(op_type, inputs, n_out=1, opset=19, **attrs):
    """A one-node model; `inputs` maps names to arrays (graph inputs)."""
    node = oh.make_node(op_type, list(inputs), [f"y{i}" for i in range(n_out)], **attrs)
    ins = {k: (NP2ONNX[v.dtype], list(v.shape)) for k, v in inputs.items()}
    return model([node], ins, list(node.output), opset=opset)


def onnx_ref(op_type, inputs, n_out=1, opset=19, **attrs):
    return ReferenceEvaluator(onnx_node_model(op_type, inputs, n_out, opset, **attrs)).run(None, inputs)


def ort_run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def check_torch(name, operands, attrs, fn, exact=True, cot_mask=None):
    """nn.<name> on `operands` and its VJP against torch `fn` with autograd (float64 operands
    get gradients). Returns the results."""
    tys = fn(*[torch.tensor(x) for x in operands])
    tys = list(tys) if isinstance(tys, (list, tuple)) else [tys]
    cots = [rand(*t.shape) if t.dtype == torch.float64 and (cot_mask is None or cot_mask[i]) else None
            for i, t in enumerate(tys)]
    ys, grads = run_op(name, operands, attrs, cots)
    tys, tgrads = torch_vjp(fn, operands, cots)
    for y, ty in zip(ys, tys):
        if exact:
            np.testing.assert_array_equal(y, ty)
        else:
            np.testing.assert_allclose(y, ty, **INTERP)
    check_grads(grads, tgrads, operands)
    return ys


def canonical_ops(build, inputs):
    """The op names left after canonicalize in a module built by `build(b, *inputs)`."""
    g, b = new_graph("main", inputs)
    outs = build(b, *g.inputs)
    g.set_outputs(list(outs) if isinstance(outs, (list, tuple)) else [outs])
    m = ckir.Module("t")
    m.add_graph(g)
    ckir.PassManager("canonicalize,dce").run(m)
    return [op.name for op in m.main if op.name != "ckir.return"], m


# === dialects/nn/dynamic.py =========================================================================
@pytest.mark.parametrize("shape,target,allowzero", [
    ((2, 3, 4), [4, 0, -1], False), ((6,), [3, 2], False), ((2, 3, 4), [-1], False),
    ((2, 3, 4), [0, 0, 2, 2], False), ((0, 3), [3, 0], True), ((1, 6), [-1, 3], True)])
def test_reshape_dyn_matches_onnx_and_torch(shape, target, allowzero):
    x = rand(*shape)
    s = np.array(target, np.int64)
    want = onnx_ref("Reshape", {"x": x, "s": s}, allowzero=int(allowzero))[0]
    check_torch("nn.reshape_dyn", [x, s], {"allowzero": allowzero}, lambda t, _: t.reshape(want.shape))


def test_reshape_dyn_symbolic_dims_and_errors():
    types = [TensorType(["seq", 4], "f64"), TensorType([3], "i64")]
    _m, op = op_module("nn.reshape_dyn", types, {"allowzero": False})
    assert op.results[0].type is TensorType([ANY, ANY, ANY], "f64")
    for seq in (3, 5):
        x, s = rand(seq, 4), i64(0, 2, -1)
        (y,), (_g, _) = run_op("nn.reshape_dyn", [x, s], {}, [rand(seq, 2, 2)], types)
        np.testing.assert_array_equal(y, x.reshape(seq, 2, 2))
    with pytest.raises(ckir.CkirError, match="shape must have a static length"):
        build_error("reshape_dyn", [([2, 3], "f32"), (["n"], "i64")])
    with pytest.raises(ckir.CkirError, match=r"cannot reshape \[2, 3\] \(6 elements\) to \[4\]"):
        run_op("nn.reshape_dyn", [rand(2, 3), i64(4)], {}, [None])
    with pytest.raises(ckir.CkirError, match="both 0 and -1, which allowzero forbids"):
        run_op("nn.reshape_dyn", [rand(2, 3), i64(0, -1)], {"allowzero": True}, [None])


@pytest.mark.parametrize("shape,target", [((3, 1), [2, 1, 4]), ((), [2, 3]), ((2, 3), [3]),
                                          ((4, 1, 2), [4, 5, 1]), ((1,), [0])])
def test_expand_dyn_matches_torch(shape, target):
    x = rand(*shape)
    out = torch.broadcast_shapes(tuple(shape), tuple(target))
    check_torch("nn.expand_dyn", [x, np.array(target, np.int64)], {},
                lambda t, _: torch.broadcast_to(t, out))


def test_expand_dyn_shape_rule_and_errors():
    g, b = new_graph("main", {"x": TensorType([3, 1, "n"], "f32"), "s": TensorType([4], "i64")})
    assert b.nn.expand_dyn(*g.inputs).type is TensorType([ANY, 3, ANY, ANY], "f32")
    with pytest.raises(ckir.CkirError, match=r"cannot expand shape \[3, 2\] to \[4, 4\]"):
        run_op("nn.expand_dyn", [rand(3, 2), i64(4, 4)], {}, [None])


@pytest.mark.parametrize("shape,axes", [((1, 3, 1, 5), [-2, 0]), ((2, 1), [1]), ((1, 1), [0])])
def test_squeeze_dyn_matches_torch(shape, axes):
    x = rand(*shape)
    check_torch("nn.squeeze_dyn", [x, np.array(axes, np.int64)], {}, lambda t, _: t.squeeze(tuple(axes)))


@pytest.mark.parametrize("shape,axes", [((3, 4), [0, -1]), ((), [0]), ((2, 3), [1]), ((2,), [2, 0])])
def test_unsqueeze_dyn_matches_torch(shape, axes):
    x = rand(*shape)
    rank = len(shape) + len(axes)
    norm = sorted(a % rank for a in axes)

    def fn(t, _):
        for a in norm:
            t = t.unsqueeze(a)
        return t
    check_torch("nn.unsqueeze_dyn", [x, np.array(axes, np.int64)], {}, fn)


def test_squeeze_unsqueeze_dyn_shape_rules_and_errors():
    g, b = new_graph("main", {"x": TensorType([1, 3, 1], "f32"), "a": TensorType([2], "i64"),
                              "c": TensorType([1], "i64")})
    x, a, c = g.inputs
    assert b.nn.squeeze_dyn(x, a).type is TensorType([3], "f32")
    assert b.nn.squeeze_dyn(x, c).type is TensorType([ANY, ANY], "f32")
    assert b.nn.unsqueeze_dyn(x, a).type is TensorType([ANY] * 5, "f32")
    with pytest.raises(ckir.CkirError, match="cannot squeeze 2 axes of tensor<2x1xf32>: only 1 can have size 1"):
        build_error("squeeze_dyn", [([2, 1], "f32"), ([2], "i64")])
    with pytest.raises(ckir.CkirError, match=r"cannot squeeze axes \[0\] of shape \[2, 1\]"):
        run_op("nn.squeeze_dyn", [rand(2, 1), i64(0)], {}, [None])
    with pytest.raises(ckir.CkirError, match="repeated axis"):
        run_op("nn.unsqueeze_dyn", [rand(2), i64(0, -3)], {}, [None])


def _torch_slice(t, shape, starts, ends, axes, steps):
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = a % len(shape)
        idx = list(range(*slice(s, e, st).indices(shape[a])))
        t = torch.index_select(t, a, torch.tensor(idx, dtype=torch.int64))
    return t


@pytest.mark.parametrize("shape,starts,ends,axes,steps", [
    ((5, 6), [1, -2], [4, 100], [0, 1], None), ((4, 7), [-1], [I64_MIN], [-1], [-2]),
    ((6, 5), [0, I64_MAX], [I64_MAX, -4], [-2, 1], [2, -1]), ((3, 4, 5), [3, 1], [0, 100], [2, 0], [-3, 3]),
    ((5,), [-100], [100], [0], [1]), ((3, 4), [2], [1], [0], None)])
def test_slice_dyn_matches_onnx_and_torch(shape, starts, ends, axes, steps):
    x = rand(*shape)
    ops = [x, np.array(starts, np.int64), np.array(ends, np.int64)]
    feeds = {"x": x, "s": ops[1], "e": ops[2], "a": np.array(axes, np.int64)}
    if steps is not None:
        ops.append(np.array(steps, np.int64))
        feeds["st"] = ops[3]
    want = onnx_ref("Slice", feeds)[0]
    st = steps or [1] * len(starts)
    ys = check_torch("nn.slice_dyn", ops, {"axes": axes},
                     lambda t, *_: _torch_slice(t, shape, starts, ends, axes, st))
    np.testing.assert_array_equal(ys[0], want)


def test_slice_dyn_symbolic_dims_and_errors():
    types = [TensorType(["seq", 4], "f64"), TensorType([1], "i64"), TensorType([1], "i64")]
    _m, op = op_module("nn.slice_dyn", types, {"axes": [1]})
    assert op.results[0].type is TensorType(["seq", Sym(None, 4)], "f64")    # at most 4
    for seq in (2, 5):
        x = rand(seq, 4)
        cot = rand(seq, 2)
        (y,), (g, _, _) = run_op("nn.slice_dyn", [x, i64(1), i64(3)], {"axes": [1]}, [cot], types)
        np.testing.assert_array_equal(y, x[:, 1:3])
        want = np.zeros_like(x)
        want[:, 1:3] = cot
        np.testing.assert_array_equal(g, want)
    with pytest.raises(ckir.CkirError, match=r"ends is tensor<2xi64>; it needs one entry per axis in \[1\]"):
        build_error("slice_dyn", [([2, 3], "f32"), ([1], "i64"), ([2], "i64")], axes=[1])
    with pytest.raises(ckir.CkirError, match="slice steps cannot be 0"):
        run_op("nn.slice_dyn", [rand(3), i64(0), i64(2), i64(0)], {"axes": [0]}, [None])


def _pad_model(x, pads, value, mode, axes=None):
    feeds = {"x": x, "p": np.array(pads, np.int64), "v": np.array(value, x.dtype)}
    ins = ["x", "p", "v"]
    if axes is not None:
        feeds["a"] = np.array(axes, np.int64)
        ins.append("a")
    node = oh.make_node("Pad", ins, ["y"], mode=mode)
    g = oh.make_graph([node], "g", [oh.make_tensor_value_info(k, NP2ONNX[v.dtype], v.shape) for k, v in feeds.items()],
                      [oh.make_tensor_value_info("y", NP2ONNX[x.dtype], None)])
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 19)]), feeds


@pytest.mark.parametrize("shape,pads,mode,axes", [
    ((2, 3), [1, 0, 2, -1], "constant", None), ((3, 4), [0, 2, 1, 3], "reflect", None),
    ((2, 5), [2, 3], "edge", [-1]), ((3, 4), [4, -1, 5, 2], "wrap", None), ((2, 3, 4), [1, -2, 2, 0], "constant", [0, 2]),
    ((4, 5), [-1, 2, 1, -2], "reflect", None), ((3, 2), [-1, -1, 2, 0], "edge", None)])
def test_pad_dyn_matches_onnxruntime(shape, pads, mode, axes):
    x = rand(*shape).astype(np.float32)
    model, feeds = _pad_model(x, pads, 1.5, mode, axes)
    want = ort_run(model, feeds)[0]
    (y,), _ = run_op("nn.pad_dyn", [x, feeds["p"], feeds["v"]], {"mode": mode, "axes": axes}, [None])
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("pads,mode,tmode", [
    ([1, 2, 0, -1], "constant", "constant"), ([2, 1, 1, 2], "reflect", "reflect"),
    ([2, 0, 1, 3], "edge", "replicate"), ([2, 1, 3, 2], "wrap", "circular")])
def test_pad_dyn_gradients_match_torch(pads, mode, tmode):
    x, v = rand(2, 3, 4), np.array(0.75)
    p = np.array(pads, np.int64)            # axes 1 and 2: begin pads, then end pads
    tpads = [pads[1], pads[3], pads[0], pads[2]]  # torch: last axis first

    def fn(t, _, tv):
        if tmode != "constant":
            return F.pad(t, tpads, mode=tmode)
        return F.pad(t, tpads) + tv * F.pad(torch.zeros_like(t), tpads, value=1.0)
    check_torch("nn.pad_dyn", [x, p, v], {"mode": mode, "axes": [1, 2]}, fn, exact=False)


def test_pad_dyn_errors():
    with pytest.raises(ckir.CkirError, match="pads has 2 entries; 2 axes need 4"):
        build_error("pad_dyn", [([2, 3], "f32"), ([2], "i64"), ([], "f32")])
    with pytest.raises(ckir.CkirError, match="value has dtype i32, x has f32"):
        build_error("pad_dyn", [([2, 3], "f32"), ([4], "i64"), ([], "i32")])
    with pytest.raises(ckir.CkirError, match="reflect padding of axis 0 needs elements"):
        run_op("nn.pad_dyn", [rand(2), i64(-2, 1), np.array(0.0)], {"mode": "reflect"}, [None])


@pytest.mark.parametrize("shape,reps", [((2, 3), [2, 1]), ((3, 1, 2), [1, 3, 0]), ((4,), [3])])
def test_tile_dyn_matches_torch(shape, reps):
    x = rand(*shape)
    check_torch("nn.tile_dyn", [x, np.array(reps, np.int64)], {}, lambda t, _: torch.tile(t, tuple(reps)))
    with pytest.raises(ckir.CkirError, match="repeats is tensor<1xi64>; it needs one entry per dim"):
        build_error("tile_dyn", [([2, 3], "f32"), ([1], "i64")])


@pytest.mark.parametrize("start,limit,delta", [(1.0, 2.0, 0.3), (5.0, -4.2, -2.0), (3.0, 3.5, 1.0),
                                               (-1.5, 1.2, 0.5)])
def test_arange_dyn_matches_torch(start, limit, delta):
    ops = [np.array(start), np.array(limit), np.array(delta)]
    n = len(torch.arange(start, limit, delta, dtype=torch.float64))
    check_torch("nn.arange_dyn", ops, {},
                lambda s, lim, d: s + torch.arange(n, dtype=torch.float64) * d, exact=False)


def test_arange_dyn_integers_and_errors():
    for s, e, d in ((0, 5, 1), (10, 4, -2), (3, 3, 1), (3, 1, 1), (2**62, 2**62 + 7, 3)):
        (y,), _ = run_op("nn.arange_dyn", [np.int64(s), np.int64(e), np.int64(d)], {}, [None])
        np.testing.assert_array_equal(y, np.arange(s, e, d, dtype=np.int64))
    with pytest.raises(ckir.CkirError, match="limit has dtype i32, start has i64"):
        build_error("arange_dyn", [([], "i64"), ([], "i32"), ([], "i64")])
    with pytest.raises(ckir.CkirError, match="delta cannot be 0"):
        run_op("nn.arange_dyn", [np.int64(0), np.int64(3), np.int64(0)], {}, [None])


@pytest.mark.parametrize("shape,sizes,axis,mask", [((5, 3), [2, 3], 0, [1, 1]), ((2, 7), [1, 0, 4, 2], -1, [1, 0, 1, 1])])
def test_split_dyn_matches_torch(shape, sizes, axis, mask):
    x = rand(*shape)
    check_torch("nn.split_dyn", [x, np.array(sizes, np.int64)], {"axis": axis},
                lambda t, _: torch.split(t, sizes, axis), cot_mask=mask)
    with pytest.raises(ckir.CkirError, match=r"sizes \[2, 2\] add up to 4, but axis 0"):
        run_op("nn.split_dyn", [x, i64(2, 2)], {"axis": 0}, [None, None])


@pytest.mark.parametrize("shape,k,axis,largest", [((3, 5), 2, -1, True), ((4, 3), 3, 0, False), ((6,), 0, 0, True)])
def test_topk_and_topk_dyn_match_torch(shape, k, axis, largest):
    x = R.permutation(int(np.prod(shape))).reshape(shape) + rand(*shape) * 0.1  # distinct values
    fn = lambda t, *_: torch.topk(t, k, axis, largest)
    at = {"axis": axis, "largest": largest}
    check_torch("nn.topk", [x], dict(at, k=k), fn, cot_mask=[1, 0])
    check_torch("nn.topk_dyn", [x, i64(k)], at, fn, cot_mask=[1, 0])


def test_topk_ties_nan_and_errors_match_onnx():
    x = np.array([[3, 1, 3, 2, 3], [0, 0, 5, 5, 1]], np.int32)
    for largest in (1, 0):
        want = onnx_ref("TopK", {"x": x, "k": i64(3)}, n_out=2, largest=largest)
        ys, _ = run_op("nn.topk_dyn", [x, i64(3)], {"largest": bool(largest)}, [None, None])
        for y, w in zip(ys, want):
            np.testing.assert_array_equal(y, w)
    xn = np.array([1.0, np.nan, 3.0])
    (_v, i), _ = run_op("nn.topk", [xn], {"k": 2}, [None, None])
    np.testing.assert_array_equal(i, [1, 2])
    with pytest.raises(ckir.CkirError, match="k = 4 exceeds axis 0 of tensor<3xf32>"):
        build_error("topk", [([3], "f32")], k=4, axis=0)
    with pytest.raises(ckir.CkirError, match="k = 4 is out of range for axis 0 of size 3"):
        run_op("nn.topk_dyn", [xn, i64(4)], {}, [None, None])


@pytest.mark.parametrize("shape,target,attrs,feeds", [
    ((1, 2, 3, 4), [1, 2, 5, 7], {"mode": "linear"}, {}),
    ((1, 2, 4, 4), np.array([0.6, 0.8], np.float32), {"mode": "cubic", "axes": [2, 3]}, {}),
    ((1, 1, 4, 4), [3, 3], {"mode": "linear", "axes": [2, 3], "coordinate_transformation_mode": "tf_crop_and_resize",
                            "extrapolation_value": 7.0}, {"roi": np.array([0.4, 0.6, 1.2, 0.8], np.float32)}),
    ((1, 1, 2, 4), [3, 3], {"axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"}, {}),
    ((1, 1, 2, 4), [3, 3], {"axes": [3, 2], "keep_aspect_ratio_policy": "not_smaller"}, {}),
    ((2, 3, 5), np.array([1.0, 1.0, 1.7], np.float32), {"mode": "cubic", "antialias": True,
                                                        "exclude_outside": True, "cubic_coeff_a": -0.5}, {})])
def test_resize_dyn_matches_onnx(shape, target, attrs, feeds):
    x = rand(*shape).astype(np.float32)
    t = np.asarray(target) if isinstance(target, np.ndarray) else np.array(target, np.int64)
    kind = "scales" if t.dtype.kind == "f" else "sizes"
    roi = feeds.get("roi")
    inputs = {"x": x, "roi": roi if roi is not None else np.zeros(0, np.float32),
              "scales": t if kind == "scales" else np.zeros(0, np.float32)}
    if kind == "sizes":
        inputs["sizes"] = t
    want = onnx_ref("Resize", inputs, **attrs)[0]
    ops = [x, t] + ([roi] if roi is not None else [])
    (y,), _ = run_op("nn.resize_dyn", ops, attrs, [None])
    np.testing.assert_allclose(y, want, **F32)


def test_resize_dyn_errors():
    with pytest.raises(ckir.CkirError, match="target has 2 entries for 4 axes"):
        build_error("resize_dyn", [([1, 1, 2, 2], "f32"), ([2], "i64")])
    with pytest.raises(ckir.CkirError, match="roi has 3 entries; 2 axes need 4"):
        run_op("nn.resize_dyn", [rand(2, 2), i64(3, 3), np.array([0.0, 0.0, 1.0])],
               {"coordinate_transformation_mode": "tf_crop_and_resize"}, [None])


@pytest.mark.parametrize("image,block,at", [((5, 5), (1, 5), {}),
                                            ((6, 5), (3, 2), {"strides": [2, 1], "pads": [1, 0, 1, 0], "dilations": [1, 2]})])
def test_col2im_dyn_matches_torch_fold(image, block, at):
    d, p, s = at.get("dilations", [1, 1]), at.get("pads", [0] * 4), at.get("strides", [1, 1])
    blocks = [(image[i] + 2 * p[i] - d[i] * (block[i] - 1) - 1) // s[i] + 1 for i in range(2)]
    x = rand(2, 3 * block[0] * block[1], blocks[0] * blocks[1])
    fn = lambda t, *_: F.fold(t, image, block, dilation=d, padding=p[:2], stride=s)
    check_torch("nn.col2im_dyn", [x, np.array(image, np.int64), np.array(block, np.int64)], at, fn, exact=False)


@pytest.mark.parametrize("image,block,at", [((7,), (3,), {"strides": [2], "pads": [1, 2]}),
                                            ((3, 4), (2, 2), {"strides": [1, 2], "pads": [1, 0, 0, 1], "dilations": [2, 1]}),
                                            ((3, 4, 3), (2, 1, 2), {"dilations": [1, 1, 2]})])
def test_col2im_dyn_matches_onnx(image, block, at):
    n = len(image)
    d, p, s = at.get("dilations", [1] * n), at.get("pads", [0] * 2 * n), at.get("strides", [1] * n)
    blocks = [(image[i] + p[i] + p[n + i] - d[i] * (block[i] - 1) - 1) // s[i] + 1 for i in range(n)]
    x = rand(1, 2 * int(np.prod(block)), int(np.prod(blocks)))
    feeds = {"x": x, "i": np.array(image, np.int64), "b": np.array(block, np.int64)}
    want = onnx_ref("Col2Im", feeds, opset=18, **at)[0]
    (y,), _ = run_op("nn.col2im_dyn", list(feeds.values()), at, [None])
    np.testing.assert_allclose(y, want, **INTERP)
    with pytest.raises(ckir.CkirError, match="does not hold"):
        run_op("nn.col2im_dyn", [x[:, :-1], feeds["i"], feeds["b"]], at, [None])


CANON = [
    (lambda b, x: b.nn.reshape_dyn(x, b.constant(i64(0, 2, -1))), "nn.reshape"),
    (lambda b, x: b.nn.expand_dyn(x, b.constant(i64(2, 1, 4))), "nn.expand"),
    (lambda b, x: b.nn.squeeze_dyn(b.nn.unsqueeze(x, axes=[0]), b.constant(i64(0))), None),
    (lambda b, x: b.nn.unsqueeze_dyn(x, b.constant(i64(1))), "nn.unsqueeze"),
    (lambda b, x: b.nn.slice_dyn(x, b.constant(i64(1)), b.constant(i64(3)), axes=[1]), "nn.slice"),
    (lambda b, x: b.nn.pad_dyn(x, b.constant(i64(1, 0, 0, 2)), b.constant(np.float32(2.5)), mode="edge"), "nn.pad"),
    (lambda b, x: b.nn.pad_dyn(x, b.constant(i64(1, 3)), b.constant(np.float32(0)), mode="wrap", axes=[1]), "nn.gather"),
    (lambda b, x: b.nn.tile_dyn(x, b.constant(i64(2, 1))), "nn.tile"),
    (lambda b, x: b.nn.split_dyn(x, b.constant(i64(1, 3)), axis=1)[1], "nn.split"),
    (lambda b, x: b.nn.topk_dyn(x, b.constant(i64(2)))[0], "nn.topk"),
    (lambda b, x: b.nn.resize_dyn(x, b.constant(i64(6, 3)), mode="linear"), "nn.resize"),
    (lambda b, x: b.nn.add(x, b.nn.reshape_dyn(b.nn.arange_dyn(b.constant(np.float32(0)), b.constant(np.float32(4)),
                                                               b.constant(np.float32(1))), b.constant(i64(1, 4)))), None),
]


@pytest.mark.parametrize("build,static", CANON)
def test_canonicalize_rewrites_dynamic_ops_with_constant_operands(build, static):
    x = rand(3, 4).astype(np.float32)
    g, b = new_graph("main", {"x": TensorType([3, 4], "f32")})
    y = build(b, g.inputs[0])
    g.set_outputs([y])
    m = ckir.Module("t")
    m.add_graph(g)
    before = ckir.compile(m)(x)
    names, m2 = canonical_ops(build, {"x": TensorType([3, 4], "f32")})
    assert not any(n.endswith("_dyn") for n in names), names
    if static is not None:
        assert static in names
    out = m2.main.outputs[0]
    assert out.type.is_static
    after = ckir.compile(m2)(x)
    np.testing.assert_array_equal(next(iter(after.values())), next(iter(before.values())))


def test_canonicalize_keeps_dynamic_ops_it_cannot_express():
    names, _ = canonical_ops(lambda b, x: b.nn.reshape_dyn(x, b.constant(i64(0, 0, -1))),
                             {"x": TensorType([ANY, ANY, 2], "f32")})
    assert names.count("nn.reshape_dyn") == 1          # two copied `?` dims and a -1
    names, _ = canonical_ops(lambda b, x: b.nn.pad_dyn(x, b.constant(i64(1, 1)), b.constant(np.float32(0)),
                                                       mode="wrap"), {"x": TensorType(["n"], "f32")})
    assert "nn.pad_dyn" in names                       # wrap of a symbolic dim


# === dialects/nn/index.py ===========================================================================
@pytest.mark.parametrize("shape,idx,axis", [
    ((3, 4), [[0, 3, -1], [2, 2, 0]], 1), ((3, 2, 2), [[[2, 0]], [[-3, 1]]], 0), ((5,), [4, 0, 0], -1)])
def test_gather_elements_matches_torch(shape, idx, axis):
    x, idx = rand(*shape), np.array(idx, np.int64)
    pos = np.where(idx < 0, idx + shape[axis], idx)
    check_torch("nn.gather_elements", [x, idx], {"axis": axis}, lambda t, _: torch.gather(t, axis, torch.tensor(pos)))


def test_gather_elements_symbolic_dims_and_errors():
    types = [TensorType(["n", 3], "f64"), TensorType(["n", 2], "i64")]
    for n in (2, 4):
        x, idx = rand(n, 3), R.integers(0, 3, (n, 2))
        (y,), _ = run_op("nn.gather_elements", [x, idx], {"axis": 1}, [None], types)
        np.testing.assert_array_equal(y, np.take_along_axis(x, idx, 1))
    with pytest.raises(ckir.CkirError, match="indices has size 4 in dim 1, above x's 3"):
        build_error("gather_elements", [([2, 3], "f32"), ([2, 4], "i64")], axis=0)
    with pytest.raises(ckir.CkirError, match="index along axis 1 3 is out of range for size 3"):
        run_op("nn.gather_elements", [rand(2, 3), i64(0, 3).reshape(1, 2)], {"axis": 1}, [None])


TORCH_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


@pytest.mark.parametrize("reduction", ["add", "mul", "max", "min"])
def test_scatter_elements_reductions_match_torch(reduction):
    x, u = rand(3, 5), rand(3, 4)
    idx = np.array([[0, 4, 0, 2], [1, 1, 3, 3], [4, 4, 4, 0]])
    u[0, 0] = 0.0 if reduction == "mul" else u[0, 0]     # a zero update: mul's gradient stays exact
    check_torch("nn.scatter_elements", [x, idx, u], {"axis": 1, "reduction": reduction},
                lambda t, i, v: t.scatter_reduce(1, i, v, TORCH_REDUCE[reduction], include_self=True), exact=False)


def test_scatter_elements_assignment():
    x, u = rand(4, 3), rand(2, 3)
    idx = np.array([[1, 0, 3], [2, -1, 0]])
    pos = np.where(idx < 0, idx + 4, idx)
    check_torch("nn.scatter_elements", [x, idx, u], {}, lambda t, _, v: t.scatter(0, torch.tensor(pos), v))
    # repeated positions: the last update wins (onnx.reference), and only it gets a gradient
    idx = np.array([[1, 3, 1, 0, 1]])
    x, u = rand(1, 4), rand(1, 5)
    want = onnx_ref("ScatterElements", {"x": x, "i": idx, "u": u}, axis=1)[0]
    cot = rand(1, 4)
    (y,), (gx, _, gu) = run_op("nn.scatter_elements", [x, idx, u], {"axis": 1}, [cot])
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(gx, [[0, 0, cot[0, 2], 0]])
    np.testing.assert_array_equal(gu, [[0, cot[0, 3], 0, cot[0, 0], cot[0, 1]]])
    with pytest.raises(ckir.CkirError, match="updates tensor<2xf32> must have the shape of indices tensor<3xi64>"):
        build_error("scatter_elements", [([4], "f32"), ([3], "i64"), ([2], "f32")])


def _torch_gather_nd(t, idx, batch_dims):
    if batch_dims == 0:
        return t[tuple(torch.tensor(idx[..., j]) for j in range(idx.shape[-1]))]
    return torch.stack([_torch_gather_nd(t[b], idx[b], batch_dims - 1) for b in range(t.shape[0])])


@pytest.mark.parametrize("shape,idx,batch_dims", [
    ((2, 3), [[0, 2], [1, 1]], 0), ((2, 3, 4), [[[1]], [[0]]], 0), ((2, 3, 4), [[2, 1], [0, 3]], 1),
    ((2, 2, 3), [[[1, 2]], [[0, 0]]], 1)])
def test_gather_nd_matches_onnx_and_torch(shape, idx, batch_dims):
    x, idx = rand(*shape), np.array(idx, np.int64)
    want = onnx_ref("GatherND", {"x": x, "i": idx}, batch_dims=batch_dims)[0]
    ys = check_torch("nn.gather_nd", [x, idx], {"batch_dims": batch_dims},
                     lambda t, _: _torch_gather_nd(t, idx, batch_dims))
    np.testing.assert_array_equal(ys[0], want)
    with pytest.raises(ckir.CkirError, match="batch dim 0: x has 2, indices 3"):
        build_error("gather_nd", [(list(shape), "f32"), ([3, 1], "i64")], batch_dims=1)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_nd_matches_onnx(reduction):
    x = rand(4, 3, 2)
    idx = np.array([[1, 0], [3, 2], [1, 0]]) if reduction != "none" else np.array([[1, 0], [3, 2], [0, 1]])
    u = rand(3, 2)
    want = onnx_ref("ScatterND", {"x": x, "i": idx, "u": u}, reduction=reduction)[0]
    (y,), _ = run_op("nn.scatter_nd", [x, idx, u], {"reduction": reduction}, [None])
    np.testing.assert_allclose(y, want, **INTERP)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_nd_gradients_match_torch(reduction):
    # element indices: the same as scatter_reduce on the flattened tensor
    x, u = rand(3, 4), rand(5)
    idx = np.array([[0, 1], [2, 3], [0, 1], [1, 0], [2, 3]]) if reduction != "none" else \
        np.array([[0, 1], [2, 3], [1, 1], [1, 0], [2, 0]])
    flat = torch.tensor(idx[:, 0] * 4 + idx[:, 1])

    def fn(t, _, v):
        if reduction == "none":
            return t.reshape(-1).scatter(0, flat, v).reshape(3, 4)
        return t.reshape(-1).scatter_reduce(0, flat, v, TORCH_REDUCE[reduction], include_self=True).reshape(3, 4)
    check_torch("nn.scatter_nd", [x, idx, u], {"reduction": reduction}, fn, exact=False)


def test_scatter_nd_slices_batch_dims_and_errors():
    x, u = rand(2, 3, 4), rand(2, 2, 4)
    idx = np.array([[[2], [0]], [[1], [1]]])
    want = x.copy()
    for b in range(2):
        want[b] = onnx_ref("ScatterND", {"x": x[b], "i": idx[b], "u": u[b]}, reduction="add")[0]
    check_torch("nn.scatter_nd", [x, idx, u], {"reduction": "add", "batch_dims": 1},
                lambda t, _, v: t.index_put((torch.arange(2)[:, None], torch.tensor(idx[..., 0])), v, accumulate=True),
                exact=False)
    (y,), _ = run_op("nn.scatter_nd", [x, idx, u], {"reduction": "add", "batch_dims": 1}, [None])
    np.testing.assert_allclose(y, want, **INTERP)
    with pytest.raises(ckir.CkirError, match=r"updates is tensor<2x3xf32>, want shape \[2, 4\]"):
        build_error("scatter_nd", [([4, 4], "f32"), ([2, 1], "i64"), ([2, 3], "f32")])
    with pytest.raises(ckir.CkirError, match="index for dim 0 4 is out of range for size 4"):
        run_op("nn.scatter_nd", [rand(4), i64(4).reshape(1, 1), rand(1)], {}, [None])


@pytest.mark.parametrize("x", [R.random((3, 4)) < 0.5, np.array([0.0, 1.5, 0.0, -2.0]), R.integers(0, 2, (2, 2, 3))])
def test_nonzero_matches_torch(x):
    (y,), _ = run_op("nn.nonzero", [x], {}, [None])
    np.testing.assert_array_equal(y, torch.nonzero(torch.tensor(x)).T.numpy())


def test_nonzero_shape_rule():
    g, b = new_graph("main", {"x": TensorType(["n", 3], "bool")})
    assert b.nn.nonzero(g.inputs[0]).type is TensorType([2, ANY], "i64")
    (y,), _ = run_op("nn.nonzero", [np.array(2.0)], {}, [None])
    assert y.shape == (0, 1)


@pytest.mark.parametrize("x,axis,sorted_", [
    (np.array([2, 1, 1, 3, 4, 3], np.int64), None, False), (np.array([[1, 3], [2, 3]], np.float32), None, True),
    (np.array([[1, 0, 0], [1, 0, 0], [2, 3, 4]], np.int64), 0, True),
    (np.array([[[1., 1.], [0., 1.], [2., 1.], [0., 1.]]] * 2, np.float32), -2, False),
    (np.array([[5, 1, 5], [0, 2, 0]], np.int64), 1, False)])
def test_unique_matches_onnxruntime_and_torch(x, axis, sorted_):
    at = {"sorted": int(sorted_)} | ({} if axis is None else {"axis": axis})
    want = ort_run(onnx_node_model("Unique", {"x": x}, n_out=4, opset=11, **at), {"x": x})
    ys, _ = run_op("nn.unique", [x], {"axis": axis, "sorted": sorted_}, [None] * 4)
    for y, w in zip(ys, want):
        np.testing.assert_array_equal(y, w)
    if sorted_:
        ty, tinv, tcnt = torch.unique(torch.tensor(x), sorted=True, return_inverse=True, return_counts=True,
                                      dim=axis)
        np.testing.assert_array_equal(ys[0], ty.numpy())
        np.testing.assert_array_equal(ys[2], tinv.numpy().reshape(-1))
        np.testing.assert_array_equal(ys[3], tcnt.numpy())


def test_unique_nans_are_equal():
    x = np.array([3.0, np.nan, 1.0, np.nan, 3.0])
    want = onnx_ref("Unique", {"x": x}, n_out=4)
    ys, _ = run_op("nn.unique", [x], {}, [None] * 4)
    for y, w in zip(ys, want):
        np.testing.assert_array_equal(y, w)


def test_unique_shape_rule():
    g, b = new_graph("main", {"x": TensorType([4, "n"], "f32")})
    y, _first, inv, _counts = b.nn.unique(g.inputs[0], axis=1)
    assert (y.type, inv.type) == (TensorType([4, ANY], "f32"), TensorType(["n"], "i64"))
    with pytest.raises(ckir.CkirError, match="axis 2 is out of range for rank 2"):
        build_error("unique", [([4, 2], "f32")], axis=2)


# === dialects/nn/image.py ===========================================================================
RESIZE_TORCH = [
    ({"sizes": [1, 2, 9, 5], "mode": "linear"}, {"size": (9, 5), "mode": "bilinear", "align_corners": False}),
    ({"sizes": [1, 2, 9, 5], "mode": "linear", "coordinate_transformation_mode": "align_corners"},
     {"size": (9, 5), "mode": "bilinear", "align_corners": True}),
    ({"sizes": [1, 2, 4, 11], "mode": "cubic"}, {"size": (4, 11), "mode": "bicubic", "align_corners": False}),
    ({"sizes": [1, 2, 9, 5], "mode": "cubic", "coordinate_transformation_mode": "align_corners"},
     {"size": (9, 5), "mode": "bicubic", "align_corners": True}),
    ({"sizes": [1, 2, 9, 5], "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
     {"size": (9, 5), "mode": "nearest"}),
    ({"sizes": [1, 2, 9, 5], "nearest_mode": "round_prefer_ceil"}, {"size": (9, 5), "mode": "nearest-exact"}),
    ({"scales": [1.0, 1.0, 1.7, 0.6], "mode": "linear"},
     {"scale_factor": (1.7, 0.6), "mode": "bilinear", "align_corners": False, "recompute_scale_factor": False}),
]


@pytest.mark.parametrize("attrs,targs", RESIZE_TORCH)
def test_resize_and_resize_grad_match_torch(attrs, targs):
    x = rand(1, 2, 6, 7)
    check_torch("nn.resize", [x], attrs, lambda t: F.interpolate(t, **targs), exact=False)


def test_resize_3d_linear_matches_torch():
    x = rand(1, 2, 3, 4, 5)
    check_torch("nn.resize", [x], {"sizes": [1, 2, 5, 3, 6], "mode": "linear"},
                lambda t: F.interpolate(t, size=(5, 3, 6), mode="trilinear", align_corners=False), exact=False)


ONNX_RESIZE = [
    {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel", "sizes": [1, 1, 1, 3]},
    {"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric", "scales": [1.0, 1.0, 0.6, 1.45]},
    {"mode": "cubic", "coordinate_transformation_mode": "asymmetric", "cubic_coeff_a": -0.5, "exclude_outside": 1,
         "scales": [1.0, 1.0, 2.3, 0.8]},
    {"mode": "linear", "antialias": 1, "sizes": [1, 1, 3, 2]},
    {"mode": "cubic", "antialias": 1, "scales": [1.0, 1.0, 0.45, 0.6]},
    {"mode": "nearest", "coordinate_transformation_mode": "align_corners", "nearest_mode": "ceil", "sizes": [1, 1, 7, 3]},
    {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize", "extrapolation_value": -3.0,
         "roi": [0, 0, -0.2, 0.3, 1, 1, 0.9, 1.4], "sizes": [1, 1, 4, 5]},
]


@pytest.mark.parametrize("attrs", ONNX_RESIZE)
def test_resize_modes_match_onnx_reference(attrs):
    attrs = dict(attrs)
    x = rand(1, 1, 5, 6)
    sizes, scales, roi = attrs.pop("sizes", None), attrs.pop("scales", None), attrs.pop("roi", None)
    feeds = {"x": x, "roi": np.array(roi if roi else [], np.float64),
             "scales": np.array(scales if scales else [], np.float32)}
    if sizes:
        feeds["sizes"] = np.array(sizes, np.int64)
    want = onnx_ref("Resize", feeds, **attrs)[0]
    nn = {k: (bool(v) if k in ("antialias", "exclude_outside") else v) for k, v in attrs.items()}
    f32_list = lambda v: None if v is None else [float(np.float32(a)) for a in v]
    nn.update(sizes=sizes, scales=f32_list(scales), roi=roi)
    c = rand(*want.shape)
    (y,), (g,) = run_op("nn.resize", [x], nn, [c])
    # the reference rounds cubic weights to float32 (its cubic_coeff_a is a float32 scalar)
    np.testing.assert_allclose(y, want, **(F32 if attrs["mode"] == "cubic" else INTERP))
    # the gradient is the transpose of the (linear) map x -> y - fill: check <c, dy> = <g, dx>
    dx = rand(*x.shape)
    (y2,), _ = run_op("nn.resize", [x + dx], nn, [None])
    np.testing.assert_allclose(np.sum(c * (y2 - y)), np.sum(g * dx), rtol=1e-10)


def test_resize_integers_and_errors():
    x = R.integers(0, 255, (1, 1, 3, 4)).astype(np.uint8)
    want = onnx_ref("Resize", {"x": x, "roi": np.zeros(0, np.float32), "scales": np.zeros(0, np.float32),
                               "sizes": i64(1, 1, 5, 7)}, mode="linear")[0]
    (y,), _ = run_op("nn.resize", [x], {"sizes": [1, 1, 5, 7], "mode": "linear"}, [None])
    np.testing.assert_array_equal(y, want)
    g, b = new_graph("main", {"x": TensorType(["n", 3, 4], "f32")})
    assert b.nn.resize(g.inputs[0], scales=[1.0, 2.0, 0.5]).type is TensorType(["n", 6, 2], "f32")
    assert b.nn.resize(g.inputs[0], scales=[2.0, 1.0, 1.0]).type is TensorType([ANY, 3, 4], "f32")
    with pytest.raises(ckir.CkirError, match="scales has 2 entries; a rank-3 input needs 3"):
        build_error("resize", [([2, 3, 4], "f32")], scales=[1.0, 2.0])
    with pytest.raises(ckir.CkirError, match="needs sizes or scales"):
        build_error("resize", [([2, 3], "f32")])
    with pytest.raises(ckir.CkirError, match=r"g is tensor<2x2xf32>, the resize of tensor<2x3xf32> gives shape \[2, 6\]"):
        build_error("resize_grad", [([2, 2], "f32"), ([2, 3], "f32")], scales=[1.0, 2.0])


GRID = [(m, p, a) for m in ("linear", "nearest", "cubic") for p in ("zeros", "border", "reflection")
        for a in (False, True)]
TORCH_MODE = {"linear": "bilinear", "nearest": "nearest", "cubic": "bicubic"}


@pytest.mark.parametrize("mode,pad,align", GRID)
def test_grid_sample_and_its_gradient_match_torch(mode, pad, align):
    x, grid = rand(2, 3, 5, 6), rand(2, 4, 3, 2) * 0.8
    check_torch("nn.grid_sample", [x, grid], {"mode": mode, "padding_mode": pad, "align_corners": align},
                lambda t, gr: F.grid_sample(t, gr, mode=TORCH_MODE[mode], padding_mode=pad, align_corners=align),
                exact=False)


@pytest.mark.parametrize("mode,pad", [("linear", "reflection"), ("nearest", "border"), ("linear", "zeros")])
def test_grid_sample_volumetric_matches_torch(mode, pad):
    x, grid = rand(1, 2, 3, 4, 5), rand(1, 2, 3, 2, 3)
    check_torch("nn.grid_sample", [x, grid], {"mode": mode, "padding_mode": pad},
                lambda t, gr: F.grid_sample(t, gr, mode=TORCH_MODE[mode], padding_mode=pad, align_corners=False),
                exact=False)


def test_grid_sample_1d_and_f32_match_onnx():
    x, grid = rand(2, 3, 5).astype(np.float32), rand(2, 4, 1).astype(np.float32)
    for mode in ("linear", "cubic", "nearest"):
        want = onnx_ref("GridSample", {"x": x, "g": grid}, opset=22, mode=mode, padding_mode="reflection")[0]
        (y,), _ = run_op("nn.grid_sample", [x, grid], {"mode": mode, "padding_mode": "reflection"}, [None])
        np.testing.assert_allclose(y, want, **F32)
    with pytest.raises(ckir.CkirError, match=r"grid must be \(N, D1_out, ..., 2\) for x tensor<1x2x3x4xf32>"):
        build_error("grid_sample", [([1, 2, 3, 4], "f32"), ([1, 3, 3], "f32")])
    with pytest.raises(ckir.CkirError, match="g is tensor<1x2x3xf32>, grid_sample gives"):
        build_error("grid_sample_grad", [([1, 2, 3], "f32"), ([1, 2, 4, 4], "f32"), ([1, 3, 3, 2], "f32")])


def test_grid_sample_symbolic_batch():
    types = [TensorType(["n", 2, 4, 4], "f64"), TensorType(["n", 3, 3, 2], "f64")]
    _m, op = op_module("nn.grid_sample", types, {})
    assert op.results[0].type is TensorType(["n", 2, 3, 3], "f64")
    for n in (1, 3):
        x, grid = rand(n, 2, 4, 4), rand(n, 3, 3, 2)
        (y,), _ = run_op("nn.grid_sample", [x, grid], {}, [None], types)
        want = F.grid_sample(torch.tensor(x), torch.tensor(grid), align_corners=False).numpy()
        np.testing.assert_allclose(y, want, **INTERP)


# === converters ======================================================================================
def model(nodes, inputs, outputs, inits=(), opset=19, ranks=None):
    """A model from nodes; inputs: {name: (onnx type, shape)}; initializers from arrays; output
    types from ONNX shape inference, else the first input's element type with `ranks[name]`
    unknown dims."""
    ins = [oh.make_tensor_value_info(k, t, s) for k, (t, s) in inputs.items()]
    g = oh.make_graph(nodes, "g", ins, [], [numpy_helper.from_array(v, k) for k, v in dict(inits).items()])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)])
    typed = {v.name: v for v in onnx.shape_inference.infer_shapes(m).graph.value_info}
    elem = next(iter(inputs.values()))[0] if inputs else TP.FLOAT
    ranks = ranks or {}

    def info(o):
        v = typed.get(o)
        if v is not None and v.type.tensor_type.HasField("shape"):
            return v
        t = v.type.tensor_type.elem_type if v is not None else elem
        return oh.make_tensor_value_info(o, t, [None] * ranks[o] if o in ranks else None)
    m.graph.output.extend(info(o) for o in outputs)
    return m


def run_both(m, feeds, tol=None, check_static=True):
    """The model through ckir and onnxruntime; no dynamic op may survive canonicalize when every
    shape input is an initializer."""
    rep = prepare(m)
    got = rep.run(feeds)
    if check_static:
        dyn = [op.name for op in rep.compiled.module.main if op.name.endswith("_dyn")]
        assert not dyn, dyn
    want = ort_run(m, feeds)
    for g_, w in zip(got, want):
        if tol is None:
            np.testing.assert_array_equal(g_, w)
        else:
            np.testing.assert_allclose(g_, w, **tol)
    return rep


X34 = {"x": (TP.FLOAT, [3, 4])}


def f32(*shape):
    return rand(*shape).astype(np.float32)


STATIC_CASES = [
    ("reshape", [oh.make_node("Reshape", ["x", "s"], ["y"])], {"x": (TP.FLOAT, [2, 3, 4])}, {"s": i64(0, -1)}, 19),
    ("reshape_allowzero", [oh.make_node("Reshape", ["x", "s"], ["y"], allowzero=1)], {"x": (TP.FLOAT, [2, 0, 4])},
     {"s": i64(0, 8)}, 19),
    ("flatten_v1", [oh.make_node("Flatten", ["x"], ["y"], axis=2)], {"x": (TP.FLOAT, [2, 3, 4])}, {}, 7),
    ("squeeze_v11", [oh.make_node("Squeeze", ["x"], ["y"], axes=[1])], {"x": (TP.FLOAT, [3, 1, 4])}, {}, 11),
    ("squeeze_all", [oh.make_node("Squeeze", ["x"], ["y"])], {"x": (TP.FLOAT, [1, 3, 1])}, {}, 13),
    ("unsqueeze_v13", [oh.make_node("Unsqueeze", ["x", "a"], ["y"])], X34, {"a": i64(-1, 0)}, 13),
    ("unsqueeze_v9", [oh.make_node("Unsqueeze", ["x"], ["y"], axes=[1])], X34, {}, 9),
    ("split_v11", [oh.make_node("Split", ["x"], ["y", "z"], axis=1, split=[1, 3])], X34, {}, 11),
    ("split_v2_equal", [oh.make_node("Split", ["x"], ["y", "z"], axis=1)], X34, {}, 2),
    ("split_v13", [oh.make_node("Split", ["x", "s"], ["y", "z"], axis=0)], X34, {"s": i64(2, 1)}, 13),
    ("split_v18_uneven", [oh.make_node("Split", ["x"], ["y", "z", "w"], axis=1, num_outputs=3)],
     {"x": (TP.FLOAT, [2, 7])}, {}, 18),
    ("slice_v9", [oh.make_node("Slice", ["x"], ["y"], starts=[1, -3], ends=[100, -1], axes=[0, 1])], X34, {}, 9),
    ("slice_v13", [oh.make_node("Slice", ["x", "s", "e", "a", "t"], ["y"])], X34,
     {"s": i64(-1, 0), "e": i64(I64_MIN, 4), "a": i64(1, 0), "t": i64(-2, 2)}, 13),
    ("pad_v2", [oh.make_node("Pad", ["x"], ["y"], pads=[1, 0, 0, 2], mode="reflect")], X34, {}, 2),
    ("pad_v11", [oh.make_node("Pad", ["x", "p", "v"], ["y"])], X34, {"p": i64(1, 2, 0, 1),
                                                                      "v": np.array(-2.5, np.float32)}, 11),
    ("pad_v18_axes", [oh.make_node("Pad", ["x", "p", "", "a"], ["y"], mode="edge")], X34,
     {"p": i64(2, 1), "a": i64(-1)}, 18),
    ("pad_wrap", [oh.make_node("Pad", ["x", "p"], ["y"], mode="wrap")], X34, {"p": i64(2, 5, 1, 3)}, 19),
    ("tile", [oh.make_node("Tile", ["x", "r"], ["y"])], X34, {"r": i64(2, 3)}, 13),
    ("expand", [oh.make_node("Expand", ["x", "s"], ["y"])], {"x": (TP.FLOAT, [3, 1])}, {"s": i64(2, 1, 5)}, 13),
    ("constant_of_shape", [oh.make_node("ConstantOfShape", ["s"], ["y"],
                                        value=numpy_helper.from_array(np.array([7], np.int32)))], {},
     {"s": i64(2, 3)}, 19),
    ("range", [oh.make_node("Range", ["a", "b", "c"], ["y"])], {},
     {"a": np.array(1.0, np.float32), "b": np.array(4.0, np.float32), "c": np.array(0.7, np.float32)}, 11),
    ("onehot", [oh.make_node("OneHot", ["i", "d", "v"], ["y"], axis=0)], {"i": (TP.INT64, [2, 3])},
     {"d": np.array(4.0, np.float32), "v": np.array([-1.0, 2.0], np.float32)}, 11),
    ("trilu", [oh.make_node("Trilu", ["x", "k"], ["y"], upper=0)], {"x": (TP.FLOAT, [2, 3, 4])},
     {"k": np.array(-1, np.int64)}, 14),
    ("topk", [oh.make_node("TopK", ["x", "k"], ["y", "i"], largest=0)], X34, {"k": i64(2)}, 11),
    ("topk_v1", [oh.make_node("TopK", ["x"], ["y", "i"], k=3)], X34, {}, 9),
    ("resize_v10", [oh.make_node("Resize", ["x", "s"], ["y"], mode="nearest")], {"x": (TP.FLOAT, [1, 1, 3, 4])},
     {"s": np.array([1, 1, 2, 1.5], np.float32)}, 10),
    ("resize_v11_sizes", [oh.make_node("Resize", ["x", "r", "s", "z"], ["y"], mode="linear")],
     {"x": (TP.FLOAT, [1, 1, 3, 4])}, {"r": np.zeros(0, np.float32), "s": np.zeros(0, np.float32),
                                       "z": i64(1, 1, 5, 3)}, 11),
    ("resize_v11_tf_half_pixel_for_nn", [oh.make_node("Resize", ["x", "r", "s"], ["y"],
                                                      coordinate_transformation_mode="tf_half_pixel_for_nn")],
     {"x": (TP.FLOAT, [1, 1, 5, 6])}, {"r": np.zeros(0, np.float32), "s": np.array([1, 1, 1.5, 0.5], np.float32)}, 11),
    ("resize_v13_scales", [oh.make_node("Resize", ["x", "", "s"], ["y"], mode="cubic")],
     {"x": (TP.FLOAT, [1, 1, 4, 4])}, {"s": np.array([1, 1, 0.6, 1.5], np.float32)}, 13),
    ("resize_v18_axes", [oh.make_node("Resize", ["x", "", "", "z"], ["y"], axes=[3, 2],
                                      keep_aspect_ratio_policy="not_smaller")],
     {"x": (TP.FLOAT, [1, 1, 2, 4])}, {"z": i64(3, 3)}, 18),
    ("upsample_v7", [oh.make_node("Upsample", ["x"], ["y"], scales=[1.0, 1.0, 2.0, 3.0])],
     {"x": (TP.FLOAT, [1, 1, 2, 2])}, {}, 7),
    ("upsample_v9_linear", [oh.make_node("Upsample", ["x", "s"], ["y"], mode="linear")],
     {"x": (TP.FLOAT, [1, 1, 2, 3])}, {"s": np.array([1, 1, 2, 2], np.float32)}, 9),
    ("col2im", [oh.make_node("Col2Im", ["x", "i", "b"], ["y"], strides=[2, 1], pads=[1, 0, 0, 1])],
     {"x": (TP.FLOAT, [2, 6, 8])}, {"i": i64(4, 3), "b": i64(3, 1)}, 18),
    ("center_crop_pad", [oh.make_node("CenterCropPad", ["x", "s"], ["y"], axes=[0, -1])],
     {"x": (TP.FLOAT, [5, 3, 4])}, {"s": i64(2, 7)}, 18),
    ("affine_grid", [oh.make_node("AffineGrid", ["t", "s"], ["y"], align_corners=1)], {"t": (TP.FLOAT, [2, 2, 3])},
     {"s": i64(2, 3, 4, 5)}, 20),
    ("affine_grid_3d", [oh.make_node("AffineGrid", ["t", "s"], ["y"])], {"t": (TP.FLOAT, [1, 3, 4])},
     {"s": i64(1, 1, 2, 3, 4)}, 20),
    ("tensor_scatter_circular", [oh.make_node("TensorScatter", ["c", "u", "w"], ["y"], mode="circular", axis=1)],
     {"c": (TP.FLOAT, [2, 4, 3]), "u": (TP.FLOAT, [2, 3, 3])}, {"w": i64(1, 3)}, 24),
    ("depth_to_space_crd", [oh.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode="CRD")],
     {"x": (TP.FLOAT, [1, 8, 2, 3])}, {}, 13),
    ("space_to_depth", [oh.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2)], {"x": (TP.FLOAT, [2, 2, 4, 6])}, {}, 13),
    ("compress", [oh.make_node("Compress", ["x", "c"], ["y"])], X34, {"c": np.array([1, 0, 1, 1, 0], bool)}, 11),
    ("eyelike", [oh.make_node("EyeLike", ["x"], ["y"], k=-1, dtype=TP.INT32)], X34, {}, 9),
    ("gather_nd_batch", [oh.make_node("GatherND", ["x", "i"], ["y"], batch_dims=1)], {"x": (TP.FLOAT, [2, 3, 4])},
     {"i": np.array([[[1, 2]], [[0, 3]]], np.int64)}, 12),
    ("scatter_v9", [oh.make_node("Scatter", ["x", "i", "u"], ["y"], axis=1)], X34,
     {"i": np.array([[3, 0]], np.int64), "u": np.array([[5.0, 6.0]], np.float32)}, 9),
    ("reverse_sequence", [oh.make_node("ReverseSequence", ["x", "l"], ["y"], batch_axis=0, time_axis=1)],
     {"x": (TP.FLOAT, [3, 4, 2])}, {"l": i64(4, 0, 2)}, 10),
    ("grid_sample_v16", [oh.make_node("GridSample", ["x", "g"], ["y"], mode="bicubic", padding_mode="border")],
     {"x": (TP.FLOAT, [1, 2, 4, 5]), "g": (TP.FLOAT, [1, 3, 2, 2])}, {}, 16),
]


@pytest.mark.parametrize("case", STATIC_CASES, ids=lambda c: c[0])
def test_converter_with_known_shape_inputs_matches_onnxruntime(case):
    _, nodes, inputs, inits, opset = case
    m = model(nodes, inputs, list(nodes[-1].output), inits, opset)
    feeds = {}
    for k, (t, shape) in inputs.items():
        feeds[k] = R.integers(-2, 3, shape).astype(np.int64) if t == TP.INT64 else f32(*shape)
    run_both(m, feeds, tol=F32)


def test_converters_with_symbolic_dims():
    nodes = [oh.make_node("Flatten", ["x"], ["f"], axis=2),
             oh.make_node("DepthToSpace", ["x"], ["d"], blocksize=2),
             oh.make_node("Reshape", ["x", "s"], ["r"]),
             oh.make_node("Split", ["x"], ["p", "q"], axis=0, num_outputs=2),
             oh.make_node("Trilu", ["x"], ["t"]),
             oh.make_node("Slice", ["x", "b", "e"], ["sl"])]
    inputs = {"x": (TP.FLOAT, ["N", 4, "H", 3])}
    m = model(nodes, inputs, ["f", "d", "r", "p", "q", "t", "sl"], {"s": i64(0, -1), "b": i64(1), "e": i64(-1)}, 18)
    rep = None
    for n, h in ((2, 3), (4, 1), (3, 2)):
        feeds = {"x": f32(n, 4, h, 3)}
        rep = run_both(m, feeds, check_static=False)
    names = {op.name for op in rep.compiled.module.main}
    assert "nn.reshape_dyn" in names and "nn.split_dyn" in names   # sizes from the run-time dims


def test_converters_with_run_time_shape_inputs():
    """Shape inputs computed at run time (from a symbolic dim) take the dynamic ops."""
    nodes = [oh.make_node("Shape", ["x"], ["sh"]),
             oh.make_node("Gather", ["sh", "zero"], ["n"], axis=0),
             oh.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
             oh.make_node("ConstantOfShape", ["n1"], ["c"], value=numpy_helper.from_array(np.array([2.0], np.float32))),
             oh.make_node("Range", ["zero", "n", "one"], ["rg"]),
             oh.make_node("TopK", ["x", "n1"], ["tv", "ti"], axis=0),
             oh.make_node("Concat", ["n1", "n1"], ["reps"], axis=0),
             oh.make_node("Tile", ["x", "reps"], ["tl"]),
             oh.make_node("OneHot", ["rg", "n", "vals"], ["oh"]),
             oh.make_node("Concat", ["n1", "zero1", "zero1", "n1"], ["pads"], axis=0),
             oh.make_node("Pad", ["x", "pads"], ["pd"], mode="wrap")]
    inits = {"zero": np.array(0, np.int64), "one": np.array(1, np.int64), "zero1": i64(0),
             "vals": np.array([0.0, 1.0], np.float32)}
    m = model(nodes, {"x": (TP.FLOAT, ["n", "n"])}, ["c", "rg", "tv", "ti", "tl", "oh", "pd"], inits, 19)
    for n in (2, 3):
        run_both(m, {"x": f32(n, n)}, check_static=False)


def test_symbolic_shape_vectors_give_static_ops():
    """Shape -> Gather -> Concat chains over named dims stay known: Reshape, Expand and
    ConstantOfShape take the static ops with the dims' names."""
    nodes = [oh.make_node("Shape", ["x"], ["sh"]), oh.make_node("Gather", ["sh", "z"], ["n"], axis=0),
             oh.make_node("Unsqueeze", ["n", "z1"], ["n1"]), oh.make_node("Concat", ["n1", "m1"], ["s"], axis=0),
             oh.make_node("Reshape", ["x", "s"], ["y"]), oh.make_node("Expand", ["v", "sh"], ["e"]),
             oh.make_node("ConstantOfShape", ["sh"], ["c"])]
    m = model(nodes, {"x": (TP.FLOAT, ["N", 4, 8]), "v": (TP.FLOAT, [1, 8])}, ["y", "e", "c"],
              {"z": np.array(0, np.int64), "z1": i64(0), "m1": i64(-1)}, 13, ranks={"y": 2, "e": 3, "c": 3})
    for n in (1, 3):
        rep = run_both(m, {"x": f32(n, 4, 8), "v": f32(1, 8)})
    outs = rep.compiled.module.main.outputs
    assert [v.type for v in outs] == [TensorType(["N", 32], "f32"), TensorType(["N", 4, 8], "f32"),
                                      TensorType(["N", 4, 8], "f32")]


def test_runtime_slice_and_pad_axes():
    nodes = [oh.make_node("Slice", ["x", "s", "e", "a", "t"], ["y"]),
             oh.make_node("Pad", ["x", "p", "v", "a"], ["z"])]
    ins = {"x": (TP.FLOAT, [4, 5, 6]), "s": (TP.INT64, [2]), "e": (TP.INT64, [2]), "a": (TP.INT64, [2]),
           "t": (TP.INT64, [2]), "p": (TP.INT64, [4]), "v": (TP.FLOAT, [])}
    m = model(nodes, ins, ["y", "z"], opset=19, ranks={"y": 3, "z": 3})
    feeds = {"x": f32(4, 5, 6), "s": i64(-1, 1), "e": i64(0, 100), "a": i64(2, -3), "t": i64(-2, 2),
             "p": i64(1, 0, 2, 3), "v": np.array(0.5, np.float32)}
    run_both(m, feeds, check_static=False)


def test_converter_errors():
    m = model([oh.make_node("Resize", ["x", "", "s", "z"], ["y"])], {"x": (TP.FLOAT, [1, 1, 2, 2])}, ["y"],
              {"s": np.array([1, 1, 2, 2], np.float32), "z": i64(1, 1, 4, 4)}, 13, ranks={"y": 4})
    with pytest.raises(ckir.CkirError, match=r"\(Resize, domain ai.onnx, opset 13\): needs exactly one of scales and sizes"):
        import_onnx(m)
    m = model([oh.make_node("DepthToSpace", ["x"], ["y"], blocksize=2)], {"x": (TP.FLOAT, [1, 6, 2, 2])}, ["y"], opset=13)
    with pytest.raises(ckir.CkirError, match="channels 6 are not a multiple of blocksize"):
        import_onnx(m)
    m = model([oh.make_node("Split", ["x"], ["y", "z"], axis=0)], {"x": (TP.FLOAT, [5])}, ["y", "z"], opset=13,
              ranks={"y": 1, "z": 1})
    with pytest.raises(ckir.CkirError, match="axis 0 of size 5 does not split evenly into 2 pieces"):
        import_onnx(m)
    m = model([oh.make_node("Pad", ["x", "p"], ["y"], mode="mirror")], X34, ["y"], {"p": i64(0, 0, 0, 0)}, 19)
    with pytest.raises(ckir.CkirError, match="unsupported mode 'mirror'"):
        import_onnx(m)
