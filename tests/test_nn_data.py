"""Data movement ops (dialects/nn/data.py) against independent implementations: torch for the
forward results and (float64, autograd) the VJPs; onnx.reference and onnxruntime for the ONNX
Slice / Pad / Range corner cases.

Forward results of data movement are copies, so they must match exactly. Gradients are sums of a
few O(1) float64 cotangents, summed in a different order than torch sums them: rtol 1e-12 leaves
room for that reordering (a few ulps) and nothing else."""
import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import ckir
from ckir import TensorType, new_graph
from ckir.types import ANY
from oracle import TOL, check_grads, op_module, run_op, torch_vjp

I64_MAX, I64_MIN = 2**63 - 1, -2**63


def rng_arrays(shapes, seed=0):
    r = np.random.default_rng(seed)
    return [r.standard_normal(s) for s in shapes]


def build_error(name, types, **attrs):
    g, b = new_graph("main", {f"a{i}": TensorType(*t) for i, t in enumerate(types)})
    return getattr(b.nn, name)(*g.inputs, **attrs)


def onnx_run(op_type, inputs, runtime="reference", **attrs):
    """Run one ONNX node (inputs: {name: array}, the first named x) with onnx.reference or
    onnxruntime."""
    types = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
             np.dtype(np.int64): TensorProto.INT64, np.dtype(np.int32): TensorProto.INT32}
    node = helper.make_node(op_type, list(inputs), ["y"], **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(k, types[v.dtype], None)
                                        for k, v in inputs.items()],
                          [helper.make_tensor_value_info("y", types[inputs["x"].dtype], None)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    if runtime == "reference":
        return ReferenceEvaluator(model).run(None, inputs)[0]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)[0]


# --- concat ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shapes,axis", [
    ([(2, 3), (4, 3)], 0), ([(2, 1, 3), (2, 4, 3), (2, 2, 3)], -2), ([(3,), (0,), (2,)], 0),
    ([(2, 5)], 1), ([(3, 2), (3, 1)], 1)])
def test_concat_matches_torch(shapes, axis):
    xs = rng_arrays(shapes)
    y_shape = torch.cat([torch.tensor(x) for x in xs], axis).shape
    cot = rng_arrays([y_shape], 1)[0]
    (y,), gs = run_op("nn.concat", [xs], {"axis": axis}, [cot])
    (ty,), tg = torch_vjp(lambda *ts: torch.cat(ts, axis), xs, [cot])
    np.testing.assert_array_equal(y, ty)
    check_grads(gs, tg, xs)


def test_concat_symbolic_dims():
    types = [[TensorType(["seq", 4], "f64"), TensorType([2, 4], "f64")]]
    m, op = op_module("nn.concat", types, {"axis": 0})
    assert op.results[0].type is TensorType([ANY, 4], "f64")
    for seq in (3, 6):
        xs = rng_arrays([(seq, 4), (2, 4)], seq)
        cot = rng_arrays([(seq + 2, 4)], 1)[0]
        (y,), gs = run_op("nn.concat", [xs], {"axis": 0}, [cot], types)
        (ty,), tg = torch_vjp(lambda a, b: torch.cat([a, b], 0), xs, [cot])
        np.testing.assert_array_equal(y, ty)
        check_grads(gs, tg, xs)
    # named dims survive where they can: agreeing non-axis dims, and sums with one symbolic term
    g, b = new_graph("main", {"x": TensorType(["seq", 4], "f32"), "y": TensorType(["seq", 1], "f32"),
                              "e": TensorType([0, 4], "f32")})
    x, y, e = g.inputs
    assert b.nn.concat(x, y, axis=1).type is TensorType(["seq", 5], "f32")
    assert b.nn.concat(e, x, axis=0).type is TensorType(["seq", 4], "f32")


def test_concat_errors():
    with pytest.raises(ckir.CkirError, match=r"nn.concat: xs\[1\] has size 4 in dim 1, but xs\[0\] has 3"):
        build_error("concat", [([2, 3], "f32"), ([2, 4], "f32")], axis=0)
    with pytest.raises(ckir.CkirError, match=r"xs\[1\] is tensor<3xf32>, want rank 2"):
        build_error("concat", [([2, 3], "f32"), ([3], "f32")], axis=0)
    with pytest.raises(ckir.CkirError, match="different dtypes f32 and i32"):
        build_error("concat", [([2], "f32"), ([3], "i32")], axis=0)
    with pytest.raises(ckir.CkirError, match="needs at least one input"):
        build_error("concat", [], axis=0)


# --- split ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,axis,sizes,mask", [
    ((5, 3), 0, [2, 3], [1, 1]), ((2, 7), -1, [1, 0, 4, 2], [1, 1, 0, 1]),
    ((4,), 0, [4], [1]), ((3, 6, 2), 1, [3, 3], [0, 1])])
def test_split_matches_torch(shape, axis, sizes, mask):
    (x,) = rng_arrays([shape])
    pieces = torch.split(torch.tensor(x), sizes, axis)
    cots = [rng_arrays([p.shape], 1 + i)[0] if keep else None for i, (p, keep) in enumerate(zip(pieces, mask))]
    ys, gs = run_op("nn.split", [x], {"axis": axis, "sizes": sizes}, cots)
    tys, tg = torch_vjp(lambda t: torch.split(t, sizes, axis), [x], cots)
    for y, ty in zip(ys, tys):
        np.testing.assert_array_equal(y, ty)
    check_grads(gs, tg, [x])


def test_split_symbolic_dims():
    types = [TensorType(["seq", 6], "f64")]
    m, op = op_module("nn.split", types, {"axis": 1, "sizes": [2, 4]})
    assert [r.type for r in op.results] == [TensorType(["seq", 2], "f64"), TensorType(["seq", 4], "f64")]
    for seq in (2, 5):
        (x,) = rng_arrays([(seq, 6)], seq)
        cots = [None, rng_arrays([(seq, 4)], 1)[0]]        # a None gradient means zeros
        ys, gs = run_op("nn.split", [x], {"axis": 1, "sizes": [2, 4]}, cots, types)
        tys, tg = torch_vjp(lambda t: torch.split(t, [2, 4], 1), [x], cots)
        for y, ty in zip(ys, tys):
            np.testing.assert_array_equal(y, ty)
        check_grads(gs, tg, [x])
    # splitting a symbolic axis: the sizes are checked at run time
    types = [TensorType(["n"], "f64")]
    (x,) = rng_arrays([(5,)])
    cots = rng_arrays([(2,), (3,)], 1)
    ys, gs = run_op("nn.split", [x], {"sizes": [2, 3]}, cots, types)
    check_grads(gs, torch_vjp(lambda t: torch.split(t, [2, 3]), [x], cots)[1], [x])
    with pytest.raises(ckir.CkirError, match=r"sizes \[2, 3\] add up to 5, but axis 0 of shape \[6\] has 6"):
        run_op("nn.split", [np.zeros(6)], {"sizes": [2, 3]}, types=types)


def test_split_errors():
    with pytest.raises(ckir.CkirError, match=r"nn.split: sizes \[2, 2\] add up to 4, but axis 1 of "
                                             r"tensor<3x5xf32> has 5"):
        build_error("split", [([3, 5], "f32")], axis=1, sizes=[2, 2])
    with pytest.raises(ckir.CkirError, match="sizes >= 0"):
        build_error("split", [([3], "f32")], sizes=[4, -1])


def test_split_like_matches_torch_and_checks_shapes():
    (x,) = rng_arrays([(2, 6)])
    likes = [np.zeros((2, 1)), np.zeros((2, 0), np.int32), np.zeros((2, 5))]
    cots = rng_arrays([(2, 1), (2, 0), (2, 5)], 1)
    ys, gs = run_op("nn.split_like", [x, likes], {"axis": -1}, cots)
    tys, tg = torch_vjp(lambda t: torch.split(t, [1, 0, 5], 1), [x], cots)
    for y, ty in zip(ys, tys):
        np.testing.assert_array_equal(y, ty)
    check_grads(gs[:1], tg, [x])
    assert gs[1:] == [None, None, None]
    with pytest.raises(ckir.CkirError, match=r"nn.split_like: the likes' sizes along axis 0 add up to 4, but x has 5"):
        build_error("split_like", [([5, 3], "f32"), ([1, 3], "f32"), ([3, 3], "f32")], axis=0)
    with pytest.raises(ckir.CkirError, match=r"likes\[0\] has size 2 in dim 1, but x has 3"):
        build_error("split_like", [([5, 3], "f32"), ([5, 2], "f32")], axis=0)
    types = [TensorType(["n", 3], "f32"), [TensorType(["m", 3], "f32")]]
    with pytest.raises(ckir.CkirError, match=r"cannot split shape \[4, 3\] along axis 0 into \[\[2, 3\]\]"):
        run_op("nn.split_like", [np.zeros((4, 3), np.float32), [np.zeros((2, 3), np.float32)]],
               {"axis": 0}, types=types)


# --- slice ----------------------------------------------------------------------------------------
SLICES = [  # shape, starts, ends, axes, steps
    ((5, 6), [1, 0], [4, 6], None, None),
    ((4, 7), [-1], [I64_MIN], [1], [-2]),
    ((6, 5), [0, I64_MAX], [I64_MAX, -4], [-2, 1], [2, -1]),
    ((5,), [-100], [100], None, None),
    ((3, 4, 5), [3, 1], [0, 100], [2, 0], [-3, 3]),
    ((3, 4), [2], [1], [0], None),
    ((7,), [5], [-9], None, [-2]),
    ((4,), [I64_MIN], [I64_MAX], None, [3]),
    ((0, 3), [0, 1], [1, 3], None, None),
    ((2, 3, 4), [-2, 10], [-1, -10], [-1, 1], [1, -1]),
]


def slice_attrs(starts, ends, axes, steps):
    return {"starts": starts, "ends": ends, "axes": axes, "steps": steps}


def onnx_slice(x, starts, ends, axes, steps, runtime="reference"):
    ins = {"x": x, "s": np.array(starts, np.int64), "e": np.array(ends, np.int64)}
    if axes is not None or steps is not None:
        ins["a"] = np.array(axes if axes is not None else range(len(starts)), np.int64)
    if steps is not None:
        ins["t"] = np.array(steps, np.int64)
    return onnx_run("Slice", ins, runtime)


def torch_slice(t, shape, starts, ends, axes, steps):
    """The slice as torch index_selects, each axis's indices picked by ONNX Slice on arange."""
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    for s, e, a, st in zip(starts, ends, axes, steps):
        idx = onnx_slice(np.arange(shape[a], dtype=np.int64), [s], [e], None, [st])
        t = torch.index_select(t, a, torch.from_numpy(idx.copy()))
    return t


@pytest.mark.parametrize("shape,starts,ends,axes,steps", SLICES)
def test_slice_matches_onnx_and_torch(shape, starts, ends, axes, steps):
    (x,) = rng_arrays([shape])
    want = onnx_slice(x, starts, ends, axes, steps)
    np.testing.assert_array_equal(want, onnx_slice(x, starts, ends, axes, steps, runtime="ort"))
    cot = rng_arrays([want.shape], 1)[0]
    (y,), gs = run_op("nn.slice", [x], slice_attrs(starts, ends, axes, steps), [cot])
    np.testing.assert_array_equal(y, want)
    (ty,), tg = torch_vjp(lambda t: torch_slice(t, shape, starts, ends, axes, steps), [x], [cot])
    np.testing.assert_array_equal(ty, want)
    check_grads(gs, tg, [x])


def test_slice_clamps_start_to_zero_for_negative_steps():
    # The ONNX spec clamps an adjusted start to [0, dim-1] for a negative step, so start -10 of a
    # size-6 axis is 0 and the slice keeps x[0]; onnxruntime agrees. Python slicing (and with it
    # onnx.reference) maps it to -1 and keeps nothing.
    (x,) = rng_arrays([(6,)])
    attrs = slice_attrs([-10], [I64_MIN], None, [-1])
    want = onnx_slice(x, [-10], [I64_MIN], None, [-1], runtime="ort")
    np.testing.assert_array_equal(want, x[:1])
    cot = np.array([0.75])
    (y,), (g,) = run_op("nn.slice", [x], attrs, [cot])
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(g, [0.75, 0, 0, 0, 0, 0])


def test_slice_symbolic_dims():
    types = [TensorType(["seq", 5], "f64")]
    cases = [(([1, 0], [-1, I64_MAX], [0, 1], None), [ANY, 5]),
             (([0], [I64_MAX], None, None), ["seq", 5]),                  # whole axis
             (([-1, 1], [I64_MIN, 4], None, [-1, 2]), ["seq", 2])]       # whole axis, reversed
    for args, rtype in cases:
        attrs = slice_attrs(*args)
        m, op = op_module("nn.slice", types, attrs)
        assert op.results[0].type is TensorType(rtype, "f64")
        for seq in (4, 7):
            (x,) = rng_arrays([(seq, 5)], seq)
            want = onnx_slice(x, *args)
            cot = rng_arrays([want.shape], 1)[0]
            (y,), gs = run_op("nn.slice", [x], attrs, [cot], types)
            np.testing.assert_array_equal(y, want)
            check_grads(gs, torch_vjp(lambda t: torch_slice(t, x.shape, *args), [x], [cot])[1], [x])


def test_slice_errors():
    with pytest.raises(ckir.CkirError, match="nn.slice: slice steps cannot be 0"):
        build_error("slice", [([4], "f32")], starts=[0], ends=[2], steps=[0])
    with pytest.raises(ckir.CkirError, match="starts, ends, axes and steps have lengths 2, 1, 2, 2"):
        build_error("slice", [([4, 4], "f32")], starts=[0, 0], ends=[2])
    with pytest.raises(ckir.CkirError, match=r"repeated axis in \[1, -1\]"):
        build_error("slice", [([4, 4], "f32")], starts=[0, 0], ends=[2, 2], axes=[1, -1])
    with pytest.raises(ckir.CkirError, match="axis 2 is out of range for rank 2"):
        build_error("slice", [([4, 4], "f32")], starts=[0], ends=[2], axes=[2])


def test_slice_grad_matches_torch_and_checks_shapes():
    # slice_grad is linear in g; its VJP is the slice again
    (g,) = rng_arrays([(4, 2)])
    like = np.zeros((4, 7), np.float32)
    attrs = slice_attrs([-1], [I64_MIN], [1], [-4])
    cot = rng_arrays([(4, 7)], 1)[0]
    (y,), gs = run_op("nn.slice_grad", [g, like], attrs, [cot])
    want = torch.zeros(4, 7, dtype=torch.float64)
    want[:, [6, 2]] = torch.from_numpy(g)
    np.testing.assert_array_equal(y, want.numpy())
    np.testing.assert_allclose(gs[0], cot[:, [6, 2]], **TOL)
    with pytest.raises(ckir.CkirError, match=r"nn.slice_grad: g is tensor<3x2xf32>, want shape \[4, 2\]"):
        build_error("slice_grad", [([3, 2], "f32"), ([4, 7], "f32")], **attrs)


# --- gather / scatter_add -------------------------------------------------------------------------
def torch_gather(t, idx, axis):
    """np.take with torch.index_select: flatten the indices, wrap negatives, reshape."""
    a = axis % t.dim()
    n = t.shape[a]
    i = torch.from_numpy((idx.reshape(-1).astype(np.int64) + n) % n)
    y = torch.index_select(t, a, i)
    return y.reshape(t.shape[:a] + idx.shape + t.shape[a + 1:])


GATHERS = [((5, 3), np.array([0, -1, 2, 2], np.int64), 0),
           ((2, 4, 3), np.array([[3, 0], [-4, 1]], np.int32), 1),
           ((4, 3), np.array(2, np.int64), -1),
           ((3,), np.array([[1, 1, 1], [0, -1, 2]], np.int32), 0)]


@pytest.mark.parametrize("shape,idx,axis", GATHERS)
def test_gather_matches_torch(shape, idx, axis):
    (x,) = rng_arrays([shape])
    cot = rng_arrays([torch_gather(torch.tensor(x), idx, axis).shape], 1)[0]
    (y,), gs = run_op("nn.gather", [x, idx], {"axis": axis}, [cot])
    (ty,), tg = torch_vjp(lambda t, i: torch_gather(t, idx, axis), [x, idx], [cot])
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(y, onnx_run("Gather", {"x": x, "i": idx}, axis=axis))
    check_grads(gs, tg, [x, idx])
    assert gs[1] is None


def test_gather_ints_and_symbolic_dims():
    x = np.arange(12, dtype=np.int64).reshape(6, 2)
    (y,), _ = run_op("nn.gather", [x, np.array([5, -6], np.int32)], {"axis": 0})
    np.testing.assert_array_equal(y, torch_gather(torch.tensor(x), np.array([5, -6]), 0).numpy())
    # an embedding lookup: table [n, 4], token ids [seq]
    types = [TensorType(["n", 4], "f64"), TensorType(["seq"], "i64")]
    m, op = op_module("nn.gather", types, {"axis": 0})
    assert op.results[0].type is TensorType(["seq", 4], "f64")
    for n, ids in ((5, [4, 0, 4]), (7, [-1, 3])):
        (x,) = rng_arrays([(n, 4)], n)
        idx = np.array(ids, np.int64)
        cot = rng_arrays([(len(ids), 4)], 1)[0]
        (y,), gs = run_op("nn.gather", [x, idx], {"axis": 0}, [cot], types)
        (ty,), tg = torch_vjp(lambda t, i: torch_gather(t, idx, 0), [x, idx], [cot])
        np.testing.assert_array_equal(y, ty)
        check_grads(gs, tg, [x, idx])


@pytest.mark.parametrize("bad,n", [(5, 5), (-6, 5), (0, 0)])
def test_gather_out_of_range_index_is_an_error(bad, n):
    x = np.zeros((n, 2), np.float32)
    idx = np.array([bad] if n == 0 else [0, bad, 1], np.int64)
    with pytest.raises(ckir.CkirError, match=rf"nn.gather.*: index {bad} is out of range for axis 0 of size {n}"):
        run_op("nn.gather", [x, idx], {"axis": 0})
    with pytest.raises(ckir.CkirError, match=rf"index {bad} is out of range for axis 1 of size {n}"):
        run_op("nn.scatter_add", [x.T.copy(), idx, np.zeros((2,) + idx.shape, np.float32)], {"axis": 1})


def test_gather_errors():
    with pytest.raises(ckir.CkirError, match="nn.gather: axis 2 is out of range for rank 2"):
        build_error("gather", [([4, 4], "f32"), ([3], "i64")], axis=2)
    with pytest.raises(ckir.CkirError, match="operand 'indices' has dtype f32"):
        build_error("gather", [([4, 4], "f32"), ([3], "f32")])


def torch_scatter_add(t, idx, u, axis):
    a = axis % t.dim()
    n = t.shape[a]
    i = torch.from_numpy((idx.reshape(-1).astype(np.int64) + n) % n)
    return torch.index_add(t, a, i, u.reshape(t.shape[:a] + (-1,) + t.shape[a + 1:]))


@pytest.mark.parametrize("shape,idx,axis", [
    ((5, 3), np.array([0, 4, 0, -1], np.int64), 0),
    ((2, 4), np.array([[1, 1], [3, -4]], np.int32), -1),
    ((4,), np.array(2, np.int64), 0),
    ((3, 2, 2), np.array([[2, 2], [2, 0]], np.int64), 0)])
def test_scatter_add_matches_torch(shape, idx, axis):
    a = axis % len(shape)
    x, u, cot = rng_arrays([shape, shape[:a] + idx.shape + shape[a + 1:], shape])
    (y,), gs = run_op("nn.scatter_add", [x, idx, u], {"axis": axis}, [cot])
    (ty,), tg = torch_vjp(lambda t, i, v: torch_scatter_add(t, idx, v, axis), [x, idx, u], [cot])
    np.testing.assert_allclose(y, ty, **TOL)
    check_grads(gs, tg, [x, idx, u])
    assert gs[1] is None


def test_scatter_add_ints_and_errors():
    x = np.arange(4, dtype=np.int32)
    idx = np.array([1, 1, -1], np.int64)
    u = np.array([10, 20, 30], np.int32)
    (y,), _ = run_op("nn.scatter_add", [x, idx, u], {"axis": 0})
    np.testing.assert_array_equal(y, torch_scatter_add(torch.tensor(x), idx, torch.tensor(u), 0).numpy())
    with pytest.raises(ckir.CkirError, match=r"nn.scatter_add: updates is tensor<3x3xf32>, want shape \[4, 3\]"):
        build_error("scatter_add", [([5, 3], "f32"), ([4], "i64"), ([3, 3], "f32")])
    types = [TensorType([4], "i32"), TensorType(["k"], "i64"), TensorType([ANY], "i32")]
    with pytest.raises(ckir.CkirError, match=r"updates have shape \[2\], want \[3\]"):
        run_op("nn.scatter_add", [x, idx, u[:2]], {"axis": 0}, types=types)


# --- pad ------------------------------------------------------------------------------------------
TORCH_MODE = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


def torch_pad(t, pads, mode, value):
    """ONNX Pad with torch: crop the negative pads by slicing, then F.pad the positive ones
    (torch's reflect/replicate pad all but the first dim: add a leading dim)."""
    r = t.dim()
    lo, hi = pads[:r], pads[r:]
    t = t[tuple(slice(max(-a, 0), t.shape[i] - max(-b, 0)) for i, (a, b) in enumerate(zip(lo, hi)))]
    flat = [p for i in reversed(range(r)) for p in (max(lo[i], 0), max(hi[i], 0))]
    if mode == "constant":
        return F.pad(t, flat, value=value)
    return F.pad(t[None], flat, mode=TORCH_MODE[mode])[0]


PADS = [((2, 3), [1, 0, 2, 3], "constant", 0.0),
        ((4, 3), [-1, 0, -2, 1], "constant", -1.5),
        ((2, 3, 4), [0, 1, -1, 2, 0, 1], "constant", 2.5),
        ((2, 5), [0, 2, 0, 3], "reflect", 0.0),
        ((1, 3, 4), [0, 1, 2, 0, 2, 3], "reflect", 0.0),
        ((1, 4, 5), [0, -1, 2, 0, 1, -2], "reflect", 0.0),
        ((2, 5), [0, 3, 0, 4], "edge", 0.0),
        ((1, 2, 3), [0, 2, 1, 0, 3, 4], "edge", 0.0),
        ((2, 3, 2), [0, -1, -1, 0, 2, 2], "edge", 0.0)]


@pytest.mark.parametrize("shape,pads,mode,value", PADS)
def test_pad_matches_torch_and_onnx(shape, pads, mode, value):
    (x,) = rng_arrays([shape])
    t_y = torch_pad(torch.tensor(x), pads, mode, value)
    cot = rng_arrays([t_y.shape], 1)[0]
    attrs = {"pads": pads, "mode": mode, "value": value}
    (y,), gs = run_op("nn.pad", [x], attrs, [cot])
    (ty,), tg = torch_vjp(lambda t: torch_pad(t, pads, mode, value), [x], [cot])
    np.testing.assert_array_equal(y, ty)
    ins = {"x": x, "p": np.array(pads, np.int64), "v": np.array(value)}
    if min(pads) >= 0:        # onnx.reference rejects negative pads
        np.testing.assert_array_equal(y, onnx_run("Pad", ins, mode=mode))
    np.testing.assert_array_equal(y, onnx_run("Pad", ins, "ort", mode=mode))
    check_grads(gs, tg, [x])


def test_pad_reflect_longer_than_the_axis_follows_numpy():
    # onnx.reference (np.pad) reflects again past the far edge; torch and onnxruntime refuse.
    # The VJP is checked against the transposed Jacobian of that oracle (pad is linear).
    x = np.array([1.0, 2.0, 3.0])
    pads = [5, 4]
    ins = lambda v: {"x": v, "p": np.array(pads, np.int64)}
    want = onnx_run("Pad", ins(x), mode="reflect")
    cot = rng_arrays([want.shape], 1)[0]
    (y,), (g,) = run_op("nn.pad", [x], {"pads": pads, "mode": "reflect"}, [cot])
    np.testing.assert_array_equal(y, want)
    jac_t = np.stack([onnx_run("Pad", ins(e), mode="reflect") for e in np.eye(3)])
    np.testing.assert_allclose(g, jac_t @ cot, **TOL)


def test_pad_symbolic_dims():
    types = [TensorType(["seq", 3], "f64")]
    for pads, mode, rtype in (([0, 1, 0, 2], "reflect", ["seq", 6]), ([1, 0, 1, 0], "edge", [ANY, 3]),
                              ([-1, 0, 1, 0], "constant", ["seq", 3])):
        attrs = {"pads": pads, "mode": mode}
        m, op = op_module("nn.pad", types, attrs)
        assert op.results[0].type is TensorType(rtype, "f64")
        for seq in (2, 5):
            (x,) = rng_arrays([(seq, 3)], seq)
            cot = rng_arrays([torch_pad(torch.tensor(x), pads, mode, 0.0).shape], 1)[0]
            (y,), gs = run_op("nn.pad", [x], attrs, [cot], types)
            (ty,), tg = torch_vjp(lambda t: torch_pad(t, pads, mode, 0.0), [x], [cot])
            np.testing.assert_array_equal(y, ty)
            check_grads(gs, tg, [x])


def test_pad_ints_and_errors():
    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    (y,), _ = run_op("nn.pad", [x], {"pads": [1, -1, 0, 2], "value": 7.0})
    np.testing.assert_array_equal(y, torch_pad(torch.tensor(x), [1, -1, 0, 2], "constant", 7).numpy())
    with pytest.raises(ckir.CkirError, match=r"nn.pad: pads \(-3, -1\) crop more than the 3 elements of axis 1"):
        build_error("pad", [([2, 3], "f32")], pads=[0, -3, 0, -1])
    with pytest.raises(ckir.CkirError, match="pads has 2 entries; a rank-2 tensor needs 4"):
        build_error("pad", [([2, 3], "f32")], pads=[1, 1])
    with pytest.raises(ckir.CkirError, match="reflect padding of axis 0 needs elements"):
        build_error("pad", [([0, 3], "f32")], pads=[1, 0, 0, 0], mode="reflect")
    with pytest.raises(ckir.CkirError, match="attribute 'mode'.*expected one of"):
        build_error("pad", [([2], "f32")], pads=[1, 1], mode="wrap")
    types = [TensorType(["n"], "f32")]
    with pytest.raises(ckir.CkirError, match=r"pads \(-2, 0\) crop more than the 1 elements of axis 0"):
        run_op("nn.pad", [np.zeros(1, np.float32)], {"pads": [-2, 0]}, types=types)


def test_pad_grad_matches_torch():
    # pad_grad is pad's VJP: torch's gradient of sum(g * pad(x)); its own VJP is pad again
    g, cot = rng_arrays([(1, 5, 7), (1, 3, 4)])
    pads = [0, 0, 2, 0, 2, 1]
    attrs = {"pads": pads, "mode": "reflect"}
    (y,), gs = run_op("nn.pad_grad", [g, np.zeros((1, 3, 4))], attrs, [cot])
    _, (want,) = torch_vjp(lambda t: torch_pad(t, pads, "reflect", 0.0), [np.zeros((1, 3, 4))], [g])
    np.testing.assert_allclose(y, want, **TOL)
    np.testing.assert_array_equal(gs[0], torch_pad(torch.tensor(cot), pads, "reflect", 0.0).numpy())
    assert gs[1] is None
    with pytest.raises(ckir.CkirError, match=r"nn.pad_grad: g is tensor<5x6xf32>, want shape \[5, 7\]"):
        build_error("pad_grad", [([5, 6], "f32"), ([3, 4], "f32")], pads=[0, 2, 2, 1], mode="edge")


# --- tile -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,reps", [((2, 3), [2, 3]), ((3, 1, 2), [1, 4, 0]), ((4,), [3]),
                                        ((), []), ((2, 1), [1, 1])])
def test_tile_matches_torch(shape, reps):
    (x,) = rng_arrays([shape])
    cot = rng_arrays([torch.tile(torch.tensor(x), reps).shape], 1)[0]
    (y,), gs = run_op("nn.tile", [x], {"repeats": reps}, [cot])
    (ty,), tg = torch_vjp(lambda t: torch.tile(t, reps), [x], [cot])
    np.testing.assert_array_equal(y, ty)
    check_grads(gs, tg, [x])


def test_tile_symbolic_dims_and_errors():
    types = [TensorType(["seq", 2], "f64")]
    for reps, rtype in (([1, 3], ["seq", 6]), ([2, 1], [ANY, 2]), ([0, 1], [0, 2])):
        m, op = op_module("nn.tile", types, {"repeats": reps})
        assert op.results[0].type is TensorType(rtype, "f64")
        for seq in (1, 4):
            (x,) = rng_arrays([(seq, 2)], seq)
            cot = rng_arrays([torch.tile(torch.tensor(x), reps).shape], 1)[0]
            (y,), gs = run_op("nn.tile", [x], {"repeats": reps}, [cot], types)
            (ty,), tg = torch_vjp(lambda t: torch.tile(t, reps), [x], [cot])
            np.testing.assert_array_equal(y, ty)
            check_grads(gs, tg, [x])
    with pytest.raises(ckir.CkirError, match=r"nn.tile: repeats \[2\] must have one entry per dim of \[2, 3\]"):
        build_error("tile", [([2, 3], "f32")], repeats=[2])
    with pytest.raises(ckir.CkirError, match=r"nn.tile_grad: g is tensor<4x8xf32>, want shape \[4, 9\]"):
        build_error("tile_grad", [([4, 8], "f32"), ([2, 3], "f32")], repeats=[2, 3])


# --- arange ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("start,limit,delta,dtype", [
    (0, 5, 1, "i64"), (5, -4, -2, "i32"), (-3, 7, 4, "i64"), (3, 1, 1, "f32"), (1.0, 2.0, 0.3, "f32"),
    (-1.5, 1.0, 0.1, "f64"), (-1.5, 1.0, 0.1, "f32"), (2.0, -1.0, -0.7, "f64")])
def test_arange_matches_torch_and_onnx(start, limit, delta, dtype):
    (y,), _ = run_op("nn.arange", [], {"start": start, "limit": limit, "delta": delta, "dtype": dtype})
    npd = ckir.dtypes.dtype(dtype).np
    assert y.dtype == npd
    ref = onnx_run("Range", {"x": np.array(start, npd), "l": np.array(limit, npd), "d": np.array(delta, npd)})
    assert ref.shape == y.shape
    if not y.size:
        return
    want = torch.arange(start, limit, delta, dtype=torch.float64).numpy()
    if npd.kind == "i":
        np.testing.assert_array_equal(y, want.astype(npd))
        np.testing.assert_array_equal(y, ref)
        return
    # start + i * delta rounds differently in each implementation: torch counts back from the
    # limit in its second half (a couple of roundings of terms no larger than the range's
    # magnitude), numpy (onnx.reference) steps by (start + delta) - start, whose rounding error
    # grows with i; then at most one rounding to the dtype
    ulp = np.finfo(npd).eps * max(abs(start), abs(limit), abs(delta))
    np.testing.assert_allclose(y, want, rtol=0, atol=4 * ulp)
    np.testing.assert_allclose(y, ref, rtol=0, atol=(y.size + 4) * ulp)


def test_arange_errors():
    g, b = new_graph("main", {})
    with pytest.raises(ckir.CkirError, match="nn.arange: delta cannot be 0"):
        b.nn.arange(start=0.0, limit=1.0, delta=0.0, dtype="f32")
    with pytest.raises(ckir.CkirError, match="i32 range needs whole start, limit and delta"):
        b.nn.arange(start=0.5, limit=3.0, dtype="i32")
    with pytest.raises(ckir.CkirError, match="dtype must be a float or int type, got bool"):
        b.nn.arange(start=0.0, limit=3.0, dtype="bool")
