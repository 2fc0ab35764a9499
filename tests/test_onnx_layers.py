"""Group C of the ONNX op coverage: layers, normalizations, reductions, losses and attention.

First the nn ops declared for it against independent implementations:
- dialects/nn/layers.py: nn.reduce_dyn (torch reductions and autograd; onnx.reference for the
  empty-set identities; its canonicalize rewrite), nn.max_pool_indices and nn.max_unpool
  (torch max_pool / max_unpool with autograd; onnx.reference for column-major indices and the
  unpool output_shape), nn.rope_cached (torch rotate-half / GPT-J with autograd),
  nn.non_max_suppression, nn.roi_align and nn.deform_conv (onnx.reference; torchvision is not
  installed; deform_conv with zero offsets also against torch conv2d), nn.linear_attention and
  nn.linear_attention_grad (onnx.reference for the four update rules, a torch float64
  recurrence with autograd for the gradient);
- dialects/nn/loss.py: nn.nll_loss and nn.nll_loss_grad (torch nll_loss and cross_entropy with
  autograd, weights, ignore_index, every reduction).
Then the converters (frontends/onnx/ops/layers.py) on models the backend suite does not cover:
older opsets, symbolic dims, attribute forms and corner cases, against onnxruntime or
onnx.reference.

Tolerances: float64 results agree with torch up to rounding order (oracle.TOL, 1e-12; 1e-10
where a recurrence or a few hundred products accumulate); float32 models agree with
onnxruntime / onnx.reference to a few float32 ulps of the largest value (1e-5); integer and
index results exactly."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from ckir.frontends.onnx.backend import prepare
from ckir.frontends.onnx.importer import import_onnx
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from oracle import TOL, check_grads, op_module, run_op, torch_vjp

import ckir
from ckir import TensorType, new_graph
from ckir.types import ANY

R = np.random.default_rng(23)
F32 = {"rtol": 1e-5, "atol": 1e-5}
LOOSE = {"rtol": 1e-10, "atol": 1e-10}
NP2ONNX = {np.dtype(np.float32): TP.FLOAT, np.dtype(np.float64): TP.DOUBLE, np.dtype(np.float16): TP.FLOAT16,
           np.dtype(np.int64): TP.INT64, np.dtype(np.int32): TP.INT32, np.dtype(np.bool_): TP.BOOL,
           np.dtype(np.uint8): TP.UINT8}


def rand(*shape):
    return R.standard_normal(shape)


def i64(*v):
    return np.array(v, np.int64)


def f32(a):
    return np.asarray(a, np.float32)


def build_error(name, types, *consts, **attrs):
    """Build nn.<name> on graph inputs of `types` followed by constant operands."""
    g, b = new_graph("main", {f"a{i}": TensorType(*t) for i, t in enumerate(types)})
    return getattr(b.nn, name)(*g.inputs, *[b.constant(c) for c in consts], **attrs)


def close(got, want, tol=TOL):
    want = np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, **tol)


def node_model(op_type, inputs, n_out=1, opset=19, domain="", shapes=None, inits=None, **attrs):
    """A one-node model on graph inputs `inputs` (name -> array; None leaves an input out) and
    initializers `inits`; `shapes` overrides input shapes (names or None for symbolic dims).
    Output types come from ONNX shape inference (else: the first input's type, dims unknown)."""
    names = list(inputs) + list(inits or {})
    node = oh.make_node(op_type, [k if (inits and k in inits) or inputs.get(k) is not None else "" for k in names],
                        [f"y{i}" for i in range(n_out)], domain=domain, **attrs)
    vis = [oh.make_tensor_value_info(k, NP2ONNX[v.dtype], (shapes or {}).get(k, v.shape))
           for k, v in inputs.items() if v is not None]
    g = oh.make_graph([node], "g", vis, [], [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    opsets = [oh.make_opsetid("", opset)] + ([oh.make_opsetid(domain, 1)] if domain else [])
    m = oh.make_model(g, opset_imports=opsets)
    typed = {v.name: v for v in onnx.shape_inference.infer_shapes(m).graph.value_info}
    first = vis[0].type.tensor_type      # where inference cannot tell: like the first input, dims unknown
    for i in range(n_out):
        t = typed.get(f"y{i}")
        if t is None or not t.type.tensor_type.HasField("shape"):
            t = oh.make_tensor_value_info(f"y{i}", t.type.tensor_type.elem_type if t is not None else first.elem_type,
                                          [None] * len(first.shape.dim))
        m.graph.output.append(t)
    return m


def feeds_of(inputs):
    return {k: v for k, v in inputs.items() if v is not None}


def ckir_run(model, inputs):
    return list(prepare(model).run(feeds_of(inputs)))


def onnx_ref(model, inputs):
    return ReferenceEvaluator(model).run(None, feeds_of(inputs))


def ort_run(model, inputs):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds_of(inputs))


def canonical_ops(build, inputs):
    """The op names left after canonicalize,dce in a module built by `build(b, *inputs)`, and it."""
    g, b = new_graph("main", inputs)
    outs = build(b, *g.inputs)
    g.set_outputs(list(outs) if isinstance(outs, (list, tuple)) else [outs])
    m = ckir.Module("t")
    m.add_graph(g)
    ckir.PassManager("canonicalize,dce").run(m)
    return [op.name for op in m.main if op.name != "ckir.return"], m


# === nn.reduce_dyn ===================================================================================
def _torch_reduce(kind, axes, keepdims):
    def fn(t, _):
        dims = tuple(axes) if axes else tuple(range(t.dim()))
        if kind == "sum":
            return t.sum(dims, keepdim=keepdims)
        if kind == "mean":
            return t.mean(dims, keepdim=keepdims)
        if kind in ("max", "min"):
            return torch.amax(t, dims, keepdim=keepdims) if kind == "max" else torch.amin(t, dims, keepdim=keepdims)
        if kind == "prod":
            y = t
            for d in sorted((d % t.dim() for d in dims), reverse=True):
                y = y.prod(d, keepdim=keepdims)
            return y
        if kind == "l1":
            return t.abs().sum(dims, keepdim=keepdims)
        if kind == "l2":
            return torch.sqrt((t * t).sum(dims, keepdim=keepdims))
        if kind == "sum_square":
            return (t * t).sum(dims, keepdim=keepdims)
        if kind == "log_sum":
            return torch.log(t.sum(dims, keepdim=keepdims))
        return torch.logsumexp(t, dims, keepdim=keepdims)
    return fn


@pytest.mark.parametrize("kind", ["sum", "mean", "max", "min", "prod", "l1", "l2", "sum_square",
                                  "log_sum", "log_sum_exp"])
@pytest.mark.parametrize("axes,keepdims", [([1], True), ([-1, 0], False), ([2], False), ([], True)])
def test_reduce_dyn_matches_torch(kind, axes, keepdims):
    x = R.uniform(0.5, 2.0, (3, 4, 5)) if kind in ("log_sum", "prod") else rand(3, 4, 5)
    a = np.array(axes, np.int64)
    fn = _torch_reduce(kind, axes, keepdims)
    want = fn(torch.tensor(x), None).numpy()
    cot = rand(*want.shape)
    (y,), grads = run_op("nn.reduce_dyn", [x, a], {"kind": kind, "keepdims": keepdims}, [cot])
    _, tgrads = torch_vjp(fn, [x, a], [cot])
    close(y, want)
    check_grads(grads, tgrads, [x, a])


def test_reduce_dyn_empty_sets_match_onnx_reference():
    x = np.zeros((2, 0, 4), np.float32)
    for op_type, kind in (("ReduceSum", "sum"), ("ReduceMax", "max"), ("ReduceMin", "min"),
                          ("ReduceProd", "prod"), ("ReduceL2", "l2"), ("ReduceLogSum", "log_sum"),
                          ("ReduceLogSumExp", "log_sum_exp"), ("ReduceSumSquare", "sum_square")):
        want = onnx_ref(node_model(op_type, {"x": x, "a": i64(1)}, opset=18), {"x": x, "a": i64(1)})[0]
        (y,), _ = run_op("nn.reduce_dyn", [x, i64(1)], {"kind": kind}, [None])
        np.testing.assert_array_equal(y, want)
    xb = np.zeros((3, 0), bool)
    (y,), _ = run_op("nn.reduce_dyn", [xb, i64(1)], {"kind": "max", "keepdims": False}, [None])
    np.testing.assert_array_equal(y, np.zeros(3, bool))
    (y,), _ = run_op("nn.reduce_dyn", [rand(3, 2), i64()], {"kind": "sum", "noop_with_empty_axes": True}, [None])
    assert y.shape == (3, 2)


def test_reduce_dyn_symbolic_dims_and_errors():
    types = [TensorType(["n", 4], "f64"), TensorType([1], "i64")]
    _m, op = op_module("nn.reduce_dyn", types, {"kind": "l2", "keepdims": False})
    assert op.results[0].type is TensorType([ANY], "f64")
    for n in (2, 5):
        x = rand(n, 4)
        (y,), _ = run_op("nn.reduce_dyn", [x, i64(0)], {"kind": "l2", "keepdims": False}, [rand(4)], types)
        close(y, np.sqrt((x * x).sum(0)))
    with pytest.raises(ckir.CkirError, match="kind 'sum' needs a numeric x"):
        build_error("reduce_dyn", [([2, 3], "bool"), ([1], "i64")], kind="sum")
    with pytest.raises(ckir.CkirError, match="the number of axes must be static"):
        build_error("reduce_dyn", [([2, 3], "f32"), (["k"], "i64")], kind="sum", keepdims=False)
    with pytest.raises(ckir.CkirError, match="axis 2 is out of range for rank 2"):
        run_op("nn.reduce_dyn", [rand(2, 3), i64(2)], {"kind": "sum"}, [None])
    with pytest.raises(ckir.CkirError, match="repeated axis"):
        run_op("nn.reduce_dyn", [rand(2, 3), i64(1, -1)], {"kind": "max"}, [None])


@pytest.mark.parametrize("kind", ["sum", "mean", "l1", "log_sum_exp", "max"])
def test_canonicalize_rewrites_reduce_dyn_with_constant_axes(kind):
    x = rand(3, 4)
    names, m = canonical_ops(lambda b, v: b.nn.reduce_dyn(v, b.constant(i64(-1)), kind=kind, keepdims=False),
                             {"x": TensorType([3, 4], "f64")})
    assert "nn.reduce_dyn" not in names
    assert m.main.outputs[0].type is TensorType([3], "f64")
    want = _torch_reduce(kind, [-1], False)(torch.tensor(x), None).numpy()
    close(ckir.compile(m)(x)[m.main.output_names[0]], want)
    names, _ = canonical_ops(lambda b, v: b.nn.reduce_dyn(v, b.constant(i64()), kind="sum",
                                                          noop_with_empty_axes=True),
                             {"x": TensorType([3, 4], "f64")})
    assert names == []


# === nn.max_pool_indices, nn.max_unpool ===============================================================
POOL_CASES = [  # x shape, kernel, strides, torch padding, dilation, ceil_mode
    ((2, 3, 7, 6), [3, 2], [2, 1], [1, 1], [1, 1], False),
    ((1, 2, 9, 8), [3, 3], [2, 3], [1, 0], [2, 1], True),
    ((2, 2, 11), [4], [3], [2], [1], True),
    ((1, 2, 5, 6, 4), [2, 3, 2], [2, 2, 1], [1, 1, 0], [1, 1, 2], False),
]


def _torch_pool(x, kernel, strides, pad, dil, ceil):
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(kernel)]
    return fn(x, kernel, strides, pad, dil, ceil_mode=ceil, return_indices=True)


@pytest.mark.parametrize("shape,kernel,strides,pad,dil,ceil", POOL_CASES)
def test_max_pool_indices_match_torch(shape, kernel, strides, pad, dil, ceil):
    x = rand(*shape)
    attrs = {"kernel": kernel, "strides": strides, "pads": pad + pad, "dilations": dil, "ceil_mode": ceil}
    (idx,), _ = run_op("nn.max_pool_indices", [x], attrs, [None])
    _, tidx = _torch_pool(torch.tensor(x), kernel, strides, pad, dil, ceil)
    plane = np.arange(shape[0] * shape[1]).reshape(shape[:2] + (1,) * len(kernel)) * np.prod(shape[2:])
    np.testing.assert_array_equal(idx - plane, tidx.numpy())
    # the values at the indices are nn.max_pool's results
    (y,), _ = run_op("nn.max_pool", [x], attrs, [None])
    np.testing.assert_array_equal(x.reshape(-1)[idx], y)


def test_max_pool_indices_storage_order_matches_onnx():
    x = f32(rand(2, 2, 5, 6))
    inputs = {"x": x}
    model = node_model("MaxPool", inputs, n_out=2, opset=12, kernel_shape=[2, 3], strides=[2, 2],
                       storage_order=1)
    want = onnx_ref(model, inputs)
    got = ckir_run(model, inputs)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(ckir.CkirError, match="storage_order must be 0 or 1, got 2"):
        build_error("max_pool_indices", [([1, 1, 4, 4], "f32")], kernel=[2, 2], storage_order=2)


@pytest.mark.parametrize("shape,kernel,strides,pad", [((2, 3, 4, 5), [2, 2], [2, 2], [0, 0]),
                                                      ((1, 2, 3, 3), [3, 3], [2, 2], [1, 1]),
                                                      ((2, 2, 6), [3], [2], [1])])
def test_max_unpool_matches_torch(shape, kernel, strides, pad):
    n = len(kernel)
    # `shape` is the pooled shape: pool a tensor of the unpooled size with torch to get indices
    tx = torch.tensor(rand(*shape[:2], *((s - 1) * st + k - 2 * p for s, st, k, p in zip(shape[2:], strides, kernel, pad))))
    pooled, tidx = _torch_pool(tx, kernel, strides, pad, [1] * n, False)
    x = pooled.numpy()
    plane = np.arange(shape[0] * shape[1]).reshape(shape[:2] + (1,) * n) * np.prod(tx.shape[2:])
    idx = tidx.numpy() + plane
    attrs = {"kernel": kernel, "strides": strides, "pads": pad + pad}
    unpool = {1: F.max_unpool1d, 2: F.max_unpool2d, 3: F.max_unpool3d}[n]
    fn = lambda t, _: unpool(t, tidx, kernel, strides, pad, output_size=tx.shape[2:])
    cot = rand(*tx.shape)
    (y,), grads = run_op("nn.max_unpool", [x, idx], attrs, [cot])
    ty, tgrads = torch_vjp(fn, [x, idx], [cot])
    np.testing.assert_array_equal(y, ty[0])
    # torch's backward reads g at every index even where a repeated index was overwritten (those
    # elements do not reach the output: their true gradient is 0, which ckir gives)
    won = np.zeros(x.size, bool)
    won[np.unique(idx.reshape(-1)[::-1], return_index=True)[1]] = True
    won = won[::-1].reshape(x.shape)
    check_grads(grads, [np.where(won, tgrads[0], 0.0), None], [x, idx])


def test_max_unpool_repeated_indices_and_output_shape():
    # overlapping windows pick the same element twice: the later one wins, and only it gets the
    # gradient (torch's max_unpool has the same rule)
    x = np.array([[[1.0, 2.0, 3.0]]])
    idx = i64(1, 1, 2).reshape(1, 1, 3)
    cot = np.array([[[10.0, 20.0, 30.0, 40.0]]])
    (y,), (gx, _) = run_op("nn.max_unpool", [x, idx], {"kernel": [2], "strides": [1]}, [cot])
    np.testing.assert_array_equal(y, [[[0.0, 2.0, 3.0, 0.0]]])
    np.testing.assert_array_equal(gx, [[[0.0, 20.0, 30.0]]])
    # output_shape as an attribute and as a run-time operand, against onnx.reference
    xs, ids = f32(rand(1, 1, 2, 2)), i64(5, 7, 13, 15).reshape(1, 1, 2, 2)
    inputs = {"x": xs, "i": ids, "s": i64(1, 1, 5, 6)}
    model = node_model("MaxUnpool", inputs, opset=11, kernel_shape=[2, 2], strides=[2, 2])
    np.testing.assert_array_equal(ckir_run(model, inputs)[0], onnx_ref(model, inputs)[0])
    (y,), _ = run_op("nn.max_unpool", [xs, ids], {"kernel": [2, 2], "strides": [2, 2], "output_shape": [1, 1, 5, 6]},
                     [None])
    np.testing.assert_array_equal(y, onnx_ref(model, inputs)[0])
    with pytest.raises(ckir.CkirError, match="index 16 is outside the unpooled tensor of 16 elements"):
        run_op("nn.max_unpool", [xs, i64(5, 7, 13, 16).reshape(1, 1, 2, 2)], {"kernel": [2, 2], "strides": [2, 2]},
               [None])
    with pytest.raises(ckir.CkirError, match="output_shape .* must be .* at least the unpooled"):
        build_error("max_unpool", [([1, 1, 2, 2], "f32"), ([1, 1, 2, 2], "i64")], kernel=[2, 2], strides=[2, 2],
                    output_shape=[1, 1, 3, 4])


# === nn.rope_cached =================================================================================
def _torch_rope_cached(interleaved):
    """HF rotate-half (or GPT-J rotate-every-two) with the caches as given, torch ops."""
    def fn(x, cos, sin):
        r = cos.shape[-1]
        xr, xp = x[..., :2 * r], x[..., 2 * r:]
        if interleaved:
            a, b = xr[..., 0::2], xr[..., 1::2]
            rot = torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)
        else:
            a, b = xr[..., :r], xr[..., r:]
            rot = torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)
        return torch.cat((rot, xp), dim=-1)
    return fn


@pytest.mark.parametrize("xs,cs,interleaved", [((2, 4, 3, 8), (2, 1, 3, 4), False), ((2, 3, 2, 8), (2, 3, 1, 4), True),
                                               ((2, 4, 3, 10), (3, 3), False), ((5, 6), (5, 2), True),
                                               ((3, 2, 6), (2, 3), False)])
def test_rope_cached_matches_torch(xs, cs, interleaved):
    x, cos, sin = rand(*xs), rand(*cs), rand(*cs)
    fn = _torch_rope_cached(interleaved)
    cot = rand(*xs)
    (y,), grads = run_op("nn.rope_cached", [x, cos, sin], {"interleaved": interleaved}, [cot])
    ty, tgrads = torch_vjp(fn, [x, cos, sin], [cot])
    close(y, ty[0])
    check_grads(grads, tgrads, [x, cos, sin])


def test_rope_cached_is_nn_rope_with_its_angles():
    x, pos = rand(3, 2, 8), R.integers(0, 40, (3, 1))
    ang = pos[..., None] * (1.0 / 10000.0 ** (np.arange(0, 8, 2) / 8))
    for il in (False, True):
        (y,), _ = run_op("nn.rope_cached", [x, np.cos(ang), np.sin(ang)], {"interleaved": il}, [None])
        (want,), _ = run_op("nn.rope", [x, pos], {"interleaved": il}, [None])
        close(y, want)


def test_rope_cached_symbolic_dims_and_errors():
    types = [TensorType(["seq", 2, 8], "f64"), TensorType(["seq", 1, 4], "f64"), TensorType(["seq", 1, 4], "f64")]
    _m, op = op_module("nn.rope_cached", types, {})
    assert op.results[0].type is types[0]
    fn = _torch_rope_cached(False)
    for seq in (1, 4):
        x, c, s = rand(seq, 2, 8), rand(seq, 1, 4), rand(seq, 1, 4)
        (y,), _ = run_op("nn.rope_cached", [x, c, s], {}, [None], types)
        close(y, fn(*map(torch.tensor, (x, c, s))).numpy())
    with pytest.raises(ckir.CkirError, match="rotates 10 channels, x tensor<2x8xf32> has 8"):
        build_error("rope_cached", [([2, 8], "f32"), ([2, 5], "f32"), ([2, 5], "f32")])
    with pytest.raises(ckir.CkirError, match=r"sin tensor<3x4xf32> must match cos"):
        build_error("rope_cached", [([3, 8], "f32"), ([3, 2], "f32"), ([3, 4], "f32")])


# === nn.nll_loss, nn.nll_loss_grad ==================================================================
NLL_CASES = [  # x shape, classes in target, weight, reduction, ignore_index
    ((4, 5), None, "mean", None), ((4, 5), True, "mean", None), ((3, 5, 2, 3), True, "sum", 1),
    ((3, 4, 6), None, "none", 2), ((3, 4, 6), True, "none", -1), ((6, 3), True, "mean", 0),
    ((2, 3, 2, 2, 2), None, "mean", 10)]


@pytest.mark.parametrize("shape,weighted,reduction,ii", NLL_CASES)
def test_nll_loss_matches_torch(shape, weighted, reduction, ii):
    x = rand(*shape)
    t = R.integers(0, shape[1], (shape[0],) + shape[2:]).astype(np.int64)
    if ii is not None:
        t.reshape(-1)[::3] = ii          # some positions are ignored, even outside [0, C)
    w = R.uniform(0.2, 2.0, shape[1]) if weighted else None
    ops = [x, t] + ([w] if weighted else [])
    attrs = {"reduction": reduction, "ignore_index": ii}

    def fn(xt, tt, wt=None):
        # torch's nll_loss has no weight gradient: the same loss from torch ops, for autograd
        keep = tt != (-100 if ii is None else ii)
        safe = torch.where(keep, tt, 0)
        picked = torch.gather(xt, 1, safe.unsqueeze(1)).squeeze(1)
        per = torch.where(keep, torch.ones_like(picked) if wt is None else wt[safe], 0.0)
        loss = -picked * per
        return {"none": loss, "sum": loss.sum(), "mean": loss.sum() / per.sum()}[reduction]
    want = F.nll_loss(*map(torch.tensor, ops[:2]), weight=torch.tensor(w) if weighted else None,
                      reduction=reduction, ignore_index=-100 if ii is None else ii).numpy()
    close(fn(*map(torch.tensor, ops)).numpy(), want)
    cot = rand(*want.shape)
    (y,), grads = run_op("nn.nll_loss", ops, attrs, [cot])
    _, tgrads = torch_vjp(fn, ops, [cot])
    close(y, want)
    check_grads(grads, tgrads, ops)


def test_softmax_cross_entropy_gradient_matches_torch():
    # SoftmaxCrossEntropyLoss is nn.log_softmax then nn.nll_loss: its gradient through both VJPs
    x, t, w = rand(5, 4, 3), R.integers(0, 4, (5, 3)), R.uniform(0.5, 1.5, 4)
    g, b = new_graph("main", {"x": TensorType([5, 4, 3], "f64"), "t": TensorType([5, 3], "i64"),
                              "w": TensorType([4], "f64")})
    lp = b.nn.log_softmax(g.inputs[0], axis=1)
    loss = b.nn.nll_loss(lp, g.inputs[1], g.inputs[2], ignore_index=2)
    (dlp, _, _) = loss.op.opdef.vjp(b, loss.op, b.constant(np.float64(1.0)))
    (dx,) = lp.op.opdef.vjp(b, lp.op, dlp)
    g.set_outputs([loss, dx], ["loss", "dx"])
    m = ckir.Module("t")
    m.add_graph(g)
    res = ckir.compile(m)(x, t, w)
    tx = torch.tensor(x, requires_grad=True)
    tl = F.cross_entropy(tx, torch.tensor(t), weight=torch.tensor(w), ignore_index=2)
    tl.backward()
    close(res["loss"], tl.detach().numpy())
    close(res["dx"], tx.grad.numpy())


def test_nll_loss_symbolic_batch_and_errors():
    types = [TensorType(["n", 3], "f64"), TensorType(["n"], "i64")]
    _m, op = op_module("nn.nll_loss", types, {"reduction": "none"})
    assert op.results[0].type is TensorType(["n"], "f64")
    for n in (2, 7):
        x, t = rand(n, 3), R.integers(0, 3, n)
        (y,), _ = run_op("nn.nll_loss", [x, t], {"reduction": "none"}, [None], types)
        close(y, -x[np.arange(n), t])
    with pytest.raises(ckir.CkirError, match=r"target tensor<4xi64> must have the shape \(N, d1, ...\)"):
        build_error("nll_loss", [([3, 5], "f32"), ([4], "i64")])
    with pytest.raises(ckir.CkirError, match="weight tensor<4xf32> must have one entry per class"):
        build_error("nll_loss", [([3, 5], "f32"), ([3], "i64"), ([4], "f32")])
    with pytest.raises(ckir.CkirError, match="target 5 is out of range for 5 classes"):
        run_op("nn.nll_loss", [rand(2, 5), i64(1, 5)], {}, [None])
    with pytest.raises(ckir.CkirError, match="coef tensor<3xf32> must have target's shape"):
        build_error("nll_loss_grad", [([3], "f32"), ([2], "i64"), ([2, 4], "f32")])


# === detection: nn.non_max_suppression, nn.roi_align, nn.deform_conv ===================================
def _boxes(b, n, center=False):
    xy = R.uniform(0, 10, (b, n, 2))
    wh = R.uniform(0.5, 4, (b, n, 2))
    if center:
        return f32(np.concatenate([xy, wh], -1))
    corners = np.concatenate([xy[..., ::-1], xy[..., ::-1] + wh[..., ::-1]], -1)      # y1, x1, y2, x2
    corners[..., [0, 2]] = corners[..., [2, 0]] * (R.random((b, n, 1)) < 0.3) + corners[..., [0, 2]] * 1
    return f32(corners)


@pytest.mark.parametrize("center,limits", [(False, (3, 0.5, 0.2)), (True, (10, 0.3, None)),
                                           (False, (2, None, None)), (False, (0, 0.5, 0.0)),
                                           (False, (20, 0.0, -1.0))])
def test_non_max_suppression_matches_onnxruntime(center, limits):
    boxes, scores = _boxes(2, 12, center), f32(R.random((2, 3, 12)))
    scores[0, 0, 3] = scores[0, 0, 5]       # a tie: the lower index first
    names = ("m", "iou", "s")
    vals = (i64(limits[0]), f32([limits[1]]) if limits[1] is not None else None,
            f32([limits[2]]) if limits[2] is not None else None)
    inputs = {"b": boxes, "sc": scores, **{k: v for k, v in zip(names, vals)}}
    model = node_model("NonMaxSuppression", inputs, opset=11, center_point_box=int(center))
    got, want = ckir_run(model, inputs)[0], ort_run(model, inputs)[0]
    np.testing.assert_array_equal(got, want.reshape(-1, 3))


def test_non_max_suppression_errors():
    with pytest.raises(ckir.CkirError, match=r"boxes must be \(B, N, 4\), got tensor<1x5x3xf32>"):
        build_error("non_max_suppression", [([1, 5, 3], "f32"), ([1, 1, 5], "f32")])
    with pytest.raises(ckir.CkirError, match=r"scores must be \(B, C, N\) for boxes"):
        build_error("non_max_suppression", [([1, 5, 4], "f32"), ([1, 1, 6], "f32")])
    with pytest.raises(ckir.CkirError, match="max_output_boxes_per_class must hold one value"):
        run_op("nn.non_max_suppression", [_boxes(1, 3), f32(R.random((1, 1, 3))), i64(1, 2)], {}, [None])


@pytest.mark.parametrize("attrs", [
    {"output_height": 3, "output_width": 4, "sampling_ratio": 2},
    {"output_height": 2, "output_width": 2, "sampling_ratio": 0, "spatial_scale": 0.5},
    {"output_height": 3, "output_width": 2, "coordinate_transformation_mode": "output_half_pixel"},
    {"output_height": 2, "output_width": 3, "mode": "max", "sampling_ratio": 3}])
def test_roi_align_matches_onnx(attrs):
    x = f32(rand(2, 3, 9, 11))
    rois = f32([[0.5, 1.0, 8.0, 7.5], [-2.0, -1.0, 4.0, 3.0], [3.0, 2.0, 3.2, 2.1], [6.0, 5.0, 14.0, 12.0]])
    idx = i64(1, 0, 1, 0)
    inputs = {"x": x, "r": rois, "i": idx}
    model = node_model("RoiAlign", inputs, opset=16, **attrs)
    close(ckir_run(model, inputs)[0], onnx_ref(model, inputs)[0], F32)
    with pytest.raises(ckir.CkirError, match=r"rois must be \(R, 4\)"):
        build_error("roi_align", [([1, 1, 4, 4], "f32"), ([2, 5], "f32"), ([2], "i64")])
    with pytest.raises(ckir.CkirError, match="batch index 2 is out of range for 2 images"):
        run_op("nn.roi_align", [x, rois, i64(0, 2, 0, 0)], {}, [None])


def test_roi_align_opset10_is_output_half_pixel():
    x, rois, idx = f32(rand(1, 2, 6, 6)), f32([[1.0, 1.0, 4.5, 5.0]]), i64(0)
    inputs = {"x": x, "r": rois, "i": idx}
    got = ckir_run(node_model("RoiAlign", inputs, opset=10, output_height=2, output_width=2), inputs)[0]
    want = onnx_ref(node_model("RoiAlign", inputs, opset=16, output_height=2, output_width=2,
                               coordinate_transformation_mode="output_half_pixel"), inputs)[0]
    close(got, want, F32)


@pytest.mark.parametrize("xs,ws,attrs,bias,mask", [
    ((1, 2, 6, 7), (3, 2, 3, 3), {}, True, True),
    ((2, 4, 7, 6), (4, 2, 2, 3), {"strides": [2, 1], "pads": [1, 0, 0, 1], "group": 2, "offset_group": 2}, False, True),
    ((1, 2, 8, 8), (2, 1, 2, 2), {"dilations": [2, 3], "group": 2}, True, False)])
def test_deform_conv_matches_onnx(xs, ws, attrs, bias, mask):
    x, w = f32(rand(*xs)), f32(rand(*ws))
    kk = ws[2] * ws[3]
    g = attrs.get("offset_group", 1)
    s, p, d = attrs.get("strides", [1, 1]), attrs.get("pads", [0] * 4), attrs.get("dilations", [1, 1])
    out = [(xs[2 + i] + p[i] + p[2 + i] - d[i] * (ws[2 + i] - 1) - 1) // s[i] + 1 for i in range(2)]
    inputs = {"x": x, "w": w, "o": f32(R.uniform(-2, 2, (xs[0], g * kk * 2, *out))),
              "b": f32(rand(ws[0])) if bias else None,
              "m": f32(R.random((xs[0], g * kk, *out))) if mask else None}
    model = node_model("DeformConv", inputs, opset=19, **attrs)
    close(ckir_run(model, inputs)[0], onnx_ref(model, inputs)[0], F32)


def test_deform_conv_without_offsets_is_conv():
    x, w, b = rand(2, 4, 6, 5), rand(6, 2, 3, 2), rand(6)
    at = {"strides": [2, 1], "pads": [1, 1, 0, 1], "groups": 2}
    off = np.zeros((2, 12, 3, 6))
    (y,), _ = run_op("nn.deform_conv", [x, w, off, b], at, [None])
    want = F.conv2d(F.pad(torch.tensor(x), (1, 1, 1, 0)), torch.tensor(w), torch.tensor(b), stride=(2, 1), groups=2)
    close(y, want.numpy())
    with pytest.raises(ckir.CkirError, match=r"offset tensor<2x10x3x6xf32> must be \[2, 12, 3, 6\]"):
        build_error("deform_conv", [([2, 4, 6, 5], "f32"), ([6, 2, 3, 2], "f32"), ([2, 10, 3, 6], "f32")], **at)
    with pytest.raises(ckir.CkirError, match="only 2-D deformable convolution"):
        build_error("deform_conv", [([2, 4, 6], "f32"), ([6, 4, 3], "f32"), ([2, 6, 4], "f32")])


# === nn.linear_attention ============================================================================
def _torch_linear_attention(delta, scale=None):
    def fn(q, k, v, s, decay, beta):
        bsz, hq, tt, dk = q.shape
        hkv = k.shape[1]
        s = s.expand(bsz, hkv, dk, v.shape[-1])
        a = torch.exp(decay.expand(bsz, hkv, tt, dk))
        be = beta.expand(bsz, hkv, tt, 1)
        sc = dk ** -0.5 if scale is None else scale
        ys = []
        for t in range(tt):
            s = s * a[:, :, t, :, None]
            u = v[:, :, t]
            if delta:
                u = be[:, :, t] * (u - torch.einsum("bhdm,bhd->bhm", s, k[:, :, t]))
            s = s + k[:, :, t, :, None] * u[:, :, None, :]
            ys.append(sc * torch.einsum("bhd,bhdm->bhm", q[:, :, t], s.repeat_interleave(hq // hkv, 1)))
        return torch.stack(ys, 2), s
    return fn


@pytest.mark.parametrize("qs,ks,vs,ss,ds,bs,delta,scale", [
    ((2, 2, 4, 3), (2, 2, 4, 3), (2, 2, 4, 2), (1, 1, 1, 1), (2, 2, 4, 3), (1, 1, 1, 1), False, None),
    ((1, 4, 3, 2), (1, 2, 3, 2), (1, 2, 3, 3), (1, 2, 2, 3), (1, 2, 3, 1), (1, 2, 3, 1), True, 0.7),
    ((2, 3, 5, 2), (2, 1, 5, 2), (2, 1, 5, 2), (2, 1, 2, 2), (1, 1, 1, 1), (2, 1, 5, 1), True, None)])
def test_linear_attention_matches_torch(qs, ks, vs, ss, ds, bs, delta, scale):
    ops = [rand(*qs), rand(*ks) / 2, rand(*vs), rand(*ss), R.uniform(-0.5, 0.0, ds), R.uniform(0.1, 1.0, bs)]
    fn = _torch_linear_attention(delta, scale)
    cots = [rand(*y.shape) for y in fn(*map(torch.tensor, ops))]
    ys, grads = run_op("nn.linear_attention", ops, {"delta": delta, "scale": scale}, cots)
    ty, tgrads = torch_vjp(fn, ops, cots)
    for y, t in zip(ys, ty):
        close(y, t, LOOSE)
    for gv, t in zip(grads, tgrads):
        close(gv, t, LOOSE)


@pytest.mark.parametrize("rule,hq,decay_last,beta_last,past", [
    ("linear", 2, None, None, False), ("gated", 2, "dk", None, True), ("gated", 4, "h", None, False),
    ("delta", 2, None, "h", True), ("gated_delta", 4, "dk", "1", True), ("gated_delta", 2, "h", "h", False)])
def test_linear_attention_converter_matches_onnx(rule, hq, decay_last, beta_last, past):
    b, t, hkv, dk, dv = 2, 3, 2, 4, 3
    inputs = {"q": f32(rand(b, t, hq * dk)), "k": f32(rand(b, t, hkv * dk) / 2), "v": f32(rand(b, t, hkv * dv)),
              "p": f32(rand(b, hkv, dk, dv)) if past else None,
              "d": f32(R.uniform(-0.5, 0, (b, t, hkv * dk if decay_last == "dk" else hkv))) if decay_last else None,
              "be": f32(R.uniform(0.1, 1, (b, t, hkv if beta_last == "h" else 1))) if beta_last else None}
    model = node_model("LinearAttention", inputs, n_out=2, opset=27, q_num_heads=hq, kv_num_heads=hkv,
                       update_rule=rule)
    for got, want in zip(ckir_run(model, inputs), onnx_ref(model, inputs)):
        close(got, want, F32)


def test_linear_attention_errors():
    with pytest.raises(ckir.CkirError, match="query heads 3 are not a multiple of kv heads 2"):
        build_error("linear_attention", [([1, 3, 2, 4], "f32"), ([1, 2, 2, 4], "f32"), ([1, 2, 2, 4], "f32"),
                                         ([1, 1, 1, 1], "f32"), ([1, 1, 1, 1], "f32"), ([1, 1, 1, 1], "f32")])
    with pytest.raises(ckir.CkirError, match=r"decay of shape \[1, 2, 3, 4\] does not broadcast"):
        build_error("linear_attention", [([1, 2, 2, 4], "f32"), ([1, 2, 2, 4], "f32"), ([1, 2, 2, 4], "f32"),
                                         ([1, 1, 1, 1], "f32"), ([1, 2, 3, 4], "f32"), ([1, 1, 1, 1], "f32")])


# === converters =====================================================================================
def X(*shape):
    return f32(rand(*shape))


def U(*shape, lo=0.5, hi=2.0):
    return f32(R.uniform(lo, hi, shape))


# (id, op type, inputs, initializers, opset, attrs, number of outputs, oracle)
CONVERTER_CASES = [
    ("reduce_l2_v11_attr", "ReduceL2", {"x": X(3, 4, 5)}, {}, 11, {"axes": [0, -1], "keepdims": 0}, 1, "ort"),
    ("reduce_lse_v13_attr", "ReduceLogSumExp", {"x": X(3, 4, 5) * 30}, {}, 13, {"axes": [1]}, 1, "ort"),
    ("reduce_sumsq_v1_all", "ReduceSumSquare", {"x": X(2, 3)}, {}, 1, {}, 1, "ort"),
    ("reduce_prod_v18_const", "ReduceProd", {"x": U(2, 3, 4)}, {"a": i64(-1, 0)}, 18, {"keepdims": 0}, 1, "ort"),
    ("reduce_sum_v13_const", "ReduceSum", {"x": X(2, 3, 4)}, {"a": i64(1)}, 13, {}, 1, "ort"),
    ("reduce_mean_int", "ReduceMean", {"x": np.arange(12, dtype=np.int32).reshape(3, 4)}, {}, 13,
     {"axes": [1], "keepdims": 0}, 1, "ort"),
    ("reduce_max_bool", "ReduceMax", {"x": R.random((3, 4)) < 0.3}, {"a": i64(0)}, 20, {}, 1, "ref"),
    ("argmin_last_v12", "ArgMin", {"x": f32([[1, 0, 0, 2], [3, 3, 1, 1]])}, {}, 12,
     {"axis": 1, "select_last_index": 1}, 1, "ort"),
    ("softmax_v11_axis1", "Softmax", {"x": X(2, 3, 4, 5)}, {}, 11, {"axis": 1}, 1, "ort"),
    ("logsoftmax_v1_default", "LogSoftmax", {"x": X(2, 3, 4)}, {}, 1, {}, 1, "ort"),
    ("conv_same_lower_s2", "Conv", {"x": X(1, 2, 7, 8), "w": X(3, 2, 3, 2)}, {}, 11,
     {"auto_pad": "SAME_LOWER", "strides": [2, 3]}, 1, "ort"),
    ("conv_valid_dil_group", "Conv", {"x": X(2, 4, 9, 7), "w": X(6, 2, 2, 3), "b": X(6)}, {}, 11,
     {"auto_pad": "VALID", "dilations": [2, 1], "group": 2}, 1, "ort"),
    ("convt_output_shape", "ConvTranspose", {"x": X(1, 2, 3, 3), "w": X(2, 3, 2, 2), "b": X(3)}, {}, 11,
     {"strides": [2, 2], "output_shape": [7, 5]}, 1, "ort"),
    ("convt_same_lower_extends_begin", "ConvTranspose", {"x": X(1, 2, 3, 4), "w": X(2, 2, 1, 1), "b": X(2)}, {}, 11,
     {"strides": [3, 3], "auto_pad": "SAME_LOWER"}, 1, "ref"),
    ("convt_same_lower", "ConvTranspose", {"x": X(1, 2, 3, 4), "w": X(2, 2, 3, 3)}, {}, 11,
     {"strides": [2, 3], "auto_pad": "SAME_LOWER"}, 1, "ort"),
    ("convt_1d_group_pads", "ConvTranspose", {"x": X(2, 4, 5), "w": X(4, 3, 3), "b": X(6)}, {}, 11,
     {"strides": [2], "pads": [1, 2], "group": 2, "output_padding": [1], "dilations": [2]}, 1, "ort"),
    ("maxpool_same_lower", "MaxPool", {"x": X(1, 2, 8, 9)}, {}, 12,
     {"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"}, 1, "ort"),
    ("maxpool_3d_indices", "MaxPool", {"x": X(2, 2, 4, 5, 3)}, {}, 12,
     {"kernel_shape": [2, 2, 2], "strides": [2, 2, 1], "pads": [0, 1, 0, 0, 1, 1]}, 2, "ort"),
    ("maxpool_u8_ceil", "MaxPool", {"x": R.integers(0, 255, (1, 2, 7, 7)).astype(np.uint8)}, {}, 12,
     {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, 1, "ort"),
    ("avgpool_same_upper_pad", "AveragePool", {"x": X(1, 2, 7, 6)}, {}, 11,
     {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER", "count_include_pad": 1}, 1, "ort"),
    ("lppool_v2_p1", "LpPool", {"x": X(1, 3, 6)}, {}, 11, {"kernel_shape": [2], "p": 1}, 1, "ort"),
    ("global_lppool", "GlobalLpPool", {"x": X(2, 3, 4, 5)}, {}, 2, {"p": 3}, 1, "ort"),
    ("batchnorm_v7_2d", "BatchNormalization", {"x": X(4, 3), "s": X(3), "b": X(3), "m": X(3), "v": U(3)}, {}, 7,
     {"epsilon": 1e-3}, 1, "ort"),
    ("batchnorm_training_v15", "BatchNormalization", {"x": X(3, 2, 4, 5), "s": X(2), "b": X(2), "m": X(2),
                                                      "v": U(2)}, {}, 15,
     {"training_mode": 1, "momentum": 0.7}, 3, "ref"),
    ("instancenorm_3d", "InstanceNormalization", {"x": X(2, 3, 4, 2, 3), "s": X(3), "b": X(3)}, {}, 6,
     {"epsilon": 1e-3}, 1, "ort"),
    ("groupnorm_v21", "GroupNormalization", {"x": X(2, 6, 5), "s": X(6), "b": X(6)}, {}, 21,
     {"num_groups": 2, "epsilon": 1e-2}, 1, "ort"),
    ("layernorm_stats_no_bias", "LayerNormalization", {"x": X(2, 3, 4), "s": X(3, 4)}, {}, 17, {"axis": 1}, 3,
     "ort"),
    ("rmsnorm_axis1", "RMSNormalization", {"x": X(2, 3, 4), "s": X(3, 4)}, {}, 23, {"axis": 1}, 1, "ref"),
    ("lpnorm_p1_axis0", "LpNormalization", {"x": X(3, 4)}, {}, 1, {"axis": 0, "p": 1}, 1, "ort"),
    ("mvn_axes", "MeanVarianceNormalization", {"x": X(3, 4, 5)}, {}, 13, {"axes": [1, 2]}, 1, "ort"),
    ("nll_v12_weight", "NegativeLogLikelihoodLoss", {"x": X(3, 4, 2), "t": i64(0, 3, 1, 2, 3, 0).reshape(3, 2),
                                                     "w": U(4)}, {}, 12, {"reduction": "sum"}, 1, "ort"),
    ("sce_v12_log_prob", "SoftmaxCrossEntropyLoss", {"x": X(4, 5), "t": i64(1, 4, 0, 4)}, {}, 12,
     {"ignore_index": 4}, 2, "ort"),
    ("swiglu_alpha", "SwiGLU", {"a": X(3, 4), "b": X(3, 4)}, {}, 28, {"alpha": 1.7}, 1, "ref"),
    ("causal_conv_k1_bias", "CausalConvWithState", {"x": X(2, 3, 5), "w": X(3, 1, 1), "b": X(3)}, {}, 27,
     {"activation": "silu"}, 2, "ref"),
    ("rotary_3d_interleaved_partial", "RotaryEmbedding", {"x": X(2, 3, 16), "c": U(9, 2, lo=-1, hi=1),
                                                          "s": U(9, 2, lo=-1, hi=1),
                                                          "p": i64(0, 4, 8, 1, 2, 3).reshape(2, 3)}, {}, 23,
     {"num_heads": 2, "interleaved": 1, "rotary_embedding_dim": 4}, 1, "ref"),
    ("attention_3d_gqa_float_mask_scale", "Attention", {"q": X(2, 3, 8), "k": X(2, 5, 4), "v": X(2, 5, 6),
                                                         "m": X(3, 5)}, {}, 23,
     {"q_num_heads": 4, "kv_num_heads": 2, "scale": 0.3, "softcap": 2.5}, 1, "ref"),
    ("attention_cross_causal_qk_mode0", "Attention", {"q": X(1, 2, 4, 3), "k": X(1, 1, 6, 3), "v": X(1, 1, 6, 2)},
     {}, 23, {"is_causal": 1}, 4, "ref"),
]


@pytest.mark.parametrize("case", CONVERTER_CASES, ids=[c[0] for c in CONVERTER_CASES])
def test_converter_matches_oracle(case):
    _, op_type, inputs, inits, opset, attrs, n_out, oracle = case
    model = node_model(op_type, inputs, n_out=n_out, opset=opset, inits=inits, **attrs)
    got = ckir_run(model, inputs)
    want = (ort_run if oracle == "ort" else onnx_ref)(model, inputs)
    for gv, w in zip(got, want):
        w = np.asarray(w)
        if w.dtype.kind in "iub":
            np.testing.assert_array_equal(gv, w)
        else:
            assert gv.dtype == w.dtype, (gv.dtype, w.dtype)
            close(gv, w, {"rtol": 1e-5, "atol": 1e-5 * max(1.0, float(np.abs(w).max(initial=0)))})
    # constant shape inputs leave no dynamic op behind
    assert not [op.name for op in prepare(model).compiled.module.main if op.name.endswith("_dyn")] or \
        not inits


def test_lppool_ceil_mode_is_the_norm_of_each_window():
    # ceil_mode's last window along H hangs over the end (along W a window that would start in
    # the end padding is dropped): LpPool is the p-norm of the elements each window holds, i.e.
    # torch's lp_pool2d of the input zero-padded to full windows (torch itself and onnx.reference
    # scale a partial window's mean by the full kernel size instead)
    x = X(1, 2, 7, 8)
    inputs = {"x": x}
    model = node_model("LpPool", inputs, opset=18, kernel_shape=[3, 2], strides=[2, 3], p=3, ceil_mode=1,
                       pads=[1, 0, 0, 1])
    got = ckir_run(model, inputs)[0]
    xp = F.pad(torch.tensor(x, dtype=torch.float64), (0, 1, 1, 1))      # W: the end pad; H: 1 pad, 1 overhang
    want = F.lp_pool2d(xp.abs(), 3, (3, 2), stride=(2, 3)).numpy()
    assert got.shape == want.shape == (1, 2, 4, 3)
    close(got, want, F32)


@pytest.mark.parametrize("shape,size", [((2, 7, 6), 5), ((2, 6, 5, 3), 4), ((1, 5, 3, 3), 1)])
def test_lrn_matches_torch(shape, size):
    # an even window has one more channel after the centre in ONNX, one more before it in torch:
    # torch on the channels reversed is ONNX's window (odd sizes agree either way)
    x = X(*shape)
    inputs = {"x": x}
    got = ckir_run(node_model("LRN", inputs, opset=13, size=size, alpha=0.02, beta=0.7, bias=1.2), inputs)[0]
    flip = torch.flip(torch.tensor(x, dtype=torch.float64), [1])
    want = torch.flip(F.local_response_norm(flip, size, alpha=0.02, beta=0.7, k=1.2), [1]).numpy()
    close(got, want, F32)


def test_converters_with_symbolic_dims():
    # Softmax before opset 13 over symbolic trailing dims (composed), Conv SAME_UPPER with stride
    # 1, GroupNormalization with a named batch, CausalConvWithState over a symbolic length,
    # ReduceMean with run-time axes, against onnxruntime at two sizes
    cases = [
        ("Softmax", {"x": ["n", 3, "t"]}, {}, 11, {"axis": 1}, lambda n, t: {"x": X(n, 3, t)}),
        ("LogSoftmax", {"x": ["n", "t", 4]}, {}, 11, {"axis": 1}, lambda n, t: {"x": X(n, t, 4)}),
        ("Conv", {"x": ["n", 2, "t", "t"]}, {"w": X(3, 2, 3, 2)}, 11, {"auto_pad": "SAME_UPPER"},
         lambda n, t: {"x": X(n, 2, t, t)}),
        ("GroupNormalization", {"x": ["n", 4, "t", 2]}, {"s": X(4), "b": X(4)}, 21, {"num_groups": 2},
         lambda n, t: {"x": X(n, 4, t, 2)}),
        ("CausalConvWithState", {"x": ["n", 3, "t"]}, {"w": X(3, 1, 3)}, 27, {},
         lambda n, t: {"x": X(n, 3, t)}),
        ("ReduceMean", {"x": ["n", "t"], "a": [1]}, {}, 18, {"keepdims": 0},
         lambda n, t: {"x": X(n, t), "a": i64(-1)}),
    ]
    for op_type, shapes, inits, opset, attrs, make in cases:
        proto = make(2, 3)
        model = node_model(op_type, proto, n_out=2 if op_type == "CausalConvWithState" else 1, opset=opset,
                           shapes=shapes, inits=inits, **attrs)
        rep = prepare(model)
        for n, t in ((2, 3), (1, 5)):
            feeds = make(n, t)
            want = (onnx_ref if op_type in ("CausalConvWithState",) else ort_run)(model, feeds)
            for gv, w in zip(rep.run(feeds), want):
                close(gv, w, F32)


def test_attention_symbolic_length_uses_the_causal_flag():
    # queries and keys of one named length: nn.attention's own causal alignment is ONNX's, so no
    # explicit mask is built, and one compile serves every length
    q = X(1, 2, 3, 4)
    inputs = {"q": q, "k": X(1, 2, 3, 4), "v": X(1, 2, 3, 4)}
    shapes = {k: [1, 2, "seq", 4] for k in inputs}
    model = node_model("Attention", inputs, opset=23, shapes=shapes, is_causal=1)
    rep = prepare(model)
    ops = [op for op in rep.compiled.module.main if op.name == "nn.attention"]
    assert len(ops) == 1 and ops[0].attrs["causal"] and len(ops[0].operands) == 3
    for t in (3, 6):
        feeds = {k: X(1, 2, t, 4) for k in inputs}
        close(rep.run(feeds)[0], onnx_ref(model, feeds)[0], F32)


def test_converter_errors():
    def fails(op_type, inputs, match, opset=19, n_out=1, shapes=None, **attrs):
        with pytest.raises(ckir.CkirError, match=match):
            import_onnx(node_model(op_type, inputs, n_out=n_out, opset=opset, shapes=shapes, **attrs))

    fails("Conv", {"x": X(1, 2, 5, 5), "w": X(3, 2, 3, 3)}, "auto_pad SAME_UPPER with stride 2 needs a static size",
          shapes={"x": [1, 2, "h", 5]}, auto_pad="SAME_UPPER", strides=[2, 2])
    fails("GroupNormalization", {"x": X(2, 6, 3), "s": X(6), "b": X(6)}, "must be static and divisible by num_groups 4",
          opset=21, num_groups=4)
    fails("GroupNormalization", {"x": X(2, 6, 3), "s": X(6), "b": X(6)}, "anonymous batch dim and symbolic spatial",
          opset=21, shapes={"x": [None, 6, "t"]}, num_groups=2)
    fails("LRN", {"x": X(1, 3, 2, 2, 2)}, r"only \(N, C, L\) and \(N, C, H, W\)", opset=13, size=3)
    fails("Attention", {"q": X(1, 3, 8), "k": X(1, 3, 8), "v": X(1, 3, 8)}, "3-D Q needs the q_num_heads", opset=23)
    fails("LpNormalization", {"x": X(2, 3)}, "p must be 1 or 2, got 3", opset=1, p=3)
    fails("RotaryEmbedding", {"x": X(2, 3, 4, 5, 8), "c": X(2, 3, 4), "s": X(2, 3, 4)},
          r"input must be \(B, H, S, D\) or \(B, S, hidden\)", opset=23)
    fails("CausalConvWithState", {"x": X(1, 2, 4), "w": X(2, 1, 2)}, "unknown activation 'relu'", opset=27, n_out=2,
          activation="relu")
    fails("LinearAttention", {"q": X(1, 2, 8), "k": X(1, 2, 8), "v": X(1, 2, 8)}, "update_rule 'gated_delta' needs decay",
          opset=27, n_out=2, q_num_heads=2, kv_num_heads=2)
    fails("ReduceSum", {"x": R.random((2, 3)) < 0.5}, "a sum reduction of a bool tensor is not defined", opset=11)
    fails("ConvTranspose", {"x": X(1, 1, 3, 3), "w": X(1, 1, 2, 2)}, "output_shape / auto_pad SAME_UPPER need static",
          opset=11, shapes={"x": [1, 1, "h", 3]}, auto_pad="SAME_UPPER", strides=[2, 2])


def test_linear_attention_grad_errors():
    la = [([1, 2, 3, 4], "f32"), ([1, 2, 3, 4], "f32"), ([1, 2, 3, 5], "f32"), ([1, 1, 1, 1], "f32"),
          ([1, 1, 1, 1], "f32"), ([1, 1, 1, 1], "f32")]
    with pytest.raises(ckir.CkirError, match=r"gy tensor<1x2x3x4xf32> must be \[1, 2, 3, 5\]"):
        build_error("linear_attention_grad", la + [([1, 2, 3, 4], "f32"), ([1, 2, 4, 5], "f32")])
    with pytest.raises(ckir.CkirError, match="operands have different dtypes"):
        build_error("linear_attention_grad", la + [([1, 2, 3, 5], "f64"), ([1, 2, 4, 5], "f32")])


def test_imported_training_graph_gradient_matches_torch():
    # Conv -> BatchNormalization (training mode) -> Relu -> MaxPool -> ReduceMean ->
    # SoftmaxCrossEntropyLoss, differentiated by the autodiff pass through the converters' ops
    x, w = X(2, 3, 8, 8), X(4, 3, 3, 3) * 0.3
    s, b = U(4), X(4)
    t = i64(1, 3)
    nodes = [oh.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             oh.make_node("BatchNormalization", ["c", "s", "b", "rm", "rv"], ["n", "om", "ov"], training_mode=1),
             oh.make_node("Relu", ["n"], ["r"]),
             oh.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             oh.make_node("ReduceMean", ["p"], ["m"], axes=[2, 3], keepdims=0),
             oh.make_node("SoftmaxCrossEntropyLoss", ["m", "t"], ["loss"], ignore_index=0)]
    inits = [numpy_helper.from_array(v, k) for k, v in
             (("w", w), ("rm", np.zeros(4, np.float32)), ("rv", np.ones(4, np.float32)))]
    ins = [oh.make_tensor_value_info(k, TP.FLOAT, v.shape) for k, v in (("x", x), ("s", s), ("b", b))]
    g = oh.make_graph(nodes, "g", ins + [oh.make_tensor_value_info("t", TP.INT64, [2])],
                      [oh.make_tensor_value_info("loss", TP.FLOAT, [])], inits)
    m = import_onnx(oh.make_model(g, opset_imports=[oh.make_opsetid("", 15)]))
    ckir.PassManager("autodiff{wrt=w,s,b,loss=loss}").run(m)
    res = ckir.compile(m)(x, s, b, t)
    tw, ts, tb = (torch.tensor(v, requires_grad=True) for v in (w, s, b))
    c = F.conv2d(torch.tensor(x), tw, padding=1)
    n = F.batch_norm(c, None, None, ts, tb, training=True, eps=1e-5)
    tl = F.cross_entropy(F.max_pool2d(F.relu(n), 2).mean((2, 3)), torch.tensor(t), ignore_index=0)
    tl.backward()
    close(res["loss"], tl.detach().numpy(), F32)
    for name, tv in (("w", tw), ("s", ts), ("b", tb)):
        close(res[f"grad.{name}"], tv.grad.numpy(), F32)
