"""Convolution and pooling against independent implementations: torch.nn.functional (forward and
torch.autograd backward, float64) and onnx.reference for ONNX corners torch cannot express
(asymmetric pads with ceil_mode or count_include_pad, dilated average pooling)."""
import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import ckir
from ckir import Sym, TensorType, new_graph
from opcheck import one_op_module, roundtrip

F64 = 1e-10   # float64: sums of a few dozen O(1) products agree to ~1e-14
F32 = 1e-5    # float32: same sums, float32 rounding and another summation order


def close(got, want, tol):
    want = np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, float(np.abs(want).max(initial=0))))


def run_op(name, arrays, **attrs):
    m, op, xs = one_op_module(ckir.get_op(name), arrays, attrs)
    roundtrip(m)
    out = ckir.compile(m)(*xs)["y0"]
    assert out.dtype == arrays[0].dtype
    return out


def run_vjp(name, arrays, cot, **attrs):
    """The gradients (None for zero) that op `name`'s VJP IR computes for cotangent `cot`."""
    opdef = ckir.get_op(name)
    m, op, xs = one_op_module(opdef, arrays, attrs)
    g = m.main
    g.terminator.erase()
    c = g.add_arg(TensorType(cot.shape, cot.dtype), "c")
    grads = opdef.vjp(ckir.Builder.at_end(g), op, c)
    keep = [(i, v) for i, v in enumerate(grads) if v is not None]
    g.set_outputs([v for _, v in keep], [f"g{i}" for i, _ in keep])
    roundtrip(m)
    res = ckir.compile(m)(*xs, cot)
    return [res.get(f"g{i}") for i in range(len(grads))]


def t(a, grad=False):
    return torch.tensor(a, requires_grad=grad)


def torch_pad(pads, n):
    """ONNX pads (begins, then ends) in F.pad order (last axis first)."""
    out = []
    for i in reversed(range(n)):
        out += [pads[i], pads[n + i]]
    return out


def geometry(n, a):
    s = a.get("strides") or [1] * n
    p = a.get("pads") or [0] * (2 * n)
    d = a.get("dilations") or [1] * n
    return s, p, d


# --- conv -------------------------------------------------------------------------------------
CONV = [  # x shape, w shape, with bias, attrs
    ((2, 3, 10), (4, 3, 3), True, dict(strides=[2], pads=[1, 2], dilations=[2])),
    ((2, 4, 9), (6, 2, 4), False, dict(groups=2, pads=[0, 3])),
    ((2, 3, 8, 7), (4, 3, 3, 2), True, dict(strides=[1, 2], pads=[1, 0, 0, 1])),
    ((1, 4, 7, 7), (4, 1, 3, 3), False, dict(groups=4, strides=[2, 2], pads=[1, 1, 1, 1], dilations=[2, 1])),
    ((3, 5, 4, 4), (2, 5, 1, 1), True, {}),
    ((1, 4, 5, 6, 4), (6, 2, 2, 3, 2), True,
     dict(groups=2, strides=[2, 1, 2], pads=[1, 0, 1, 0, 2, 0], dilations=[1, 2, 1])),
    ((2, 3, 3, 3), (2, 3, 3, 3), False, {}),
]


def torch_conv(x, w, b, a):
    n = x.dim() - 2
    s, p, d = geometry(n, a)
    f = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    return f(F.pad(x, torch_pad(p, n)), w, b, stride=s, dilation=d, groups=a.get("groups", 1))


def conv_case(case, dtype, rng, transpose=False):
    xs, ws, has_b, a = case
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    out_channels = ws[1] * a.get("groups", 1) if transpose else ws[0]
    b = rng.standard_normal(out_channels).astype(dtype) if has_b else None
    return x, w, b, a


@pytest.mark.parametrize("dtype,tol", [(np.float64, F64), (np.float32, F32)])
@pytest.mark.parametrize("case", CONV)
def test_conv_forward(case, dtype, tol):
    x, w, b, a = conv_case(case, dtype, np.random.default_rng(0))
    got = run_op("nn.conv", [x, w] + ([b] if b is not None else []), **a)
    want = torch_conv(t(x), t(w), None if b is None else t(b), a).numpy()
    close(got, want, tol)


@pytest.mark.parametrize("case", CONV)
def test_conv_vjp(case):
    rng = np.random.default_rng(1)
    x, w, b, a = conv_case(case, np.float64, rng)
    tx, tw = t(x, True), t(w, True)
    tb = None if b is None else t(b, True)
    y = torch_conv(tx, tw, tb, a)
    g = rng.standard_normal(tuple(y.shape))
    leaves = [tx, tw] + ([tb] if b is not None else [])
    want = torch.autograd.grad(y, leaves, t(g))
    got = run_vjp("nn.conv", [x, w] + ([b] if b is not None else []), g, **a)
    for gv, wv in zip(got, want):
        close(gv, wv.numpy(), F64)


@pytest.mark.parametrize("case", CONV[:4] + CONV[5:6])
def test_conv_grad_helpers_second_order(case):
    """conv_input_grad(g, w) and conv_weight_grad(x, g) and their own VJPs against torch
    double backward."""
    rng = np.random.default_rng(2)
    x, w, _, a = conv_case(case, np.float64, rng)
    tx, tw = t(x, True), t(w, True)
    y = torch_conv(tx, tw, None, a)
    g = rng.standard_normal(tuple(y.shape))
    tg = t(g, True)
    dx, dw = torch.autograd.grad(y, (tx, tw), tg, create_graph=True)
    close(run_op("nn.conv_input_grad", [g, w, x], **a), dx.detach().numpy(), F64)
    close(run_op("nn.conv_weight_grad", [x, g, w], **a), dw.detach().numpy(), F64)

    h = rng.standard_normal(x.shape)
    want_g, want_w = torch.autograd.grad(dx, (tg, tw), t(h), retain_graph=True)
    got = run_vjp("nn.conv_input_grad", [g, w, x], h, **a)
    assert got[2] is None
    close(got[0], want_g.numpy(), F64)
    close(got[1], want_w.numpy(), F64)

    hw = rng.standard_normal(w.shape)
    want_x, want_g = torch.autograd.grad(dw, (tx, tg), t(hw))
    got = run_vjp("nn.conv_weight_grad", [x, g, w], hw, **a)
    assert got[2] is None
    close(got[0], want_x.numpy(), F64)
    close(got[1], want_g.numpy(), F64)


# --- conv_transpose ---------------------------------------------------------------------------
CONV_T = [  # x shape, w shape, with bias, attrs
    ((2, 3, 5), (3, 2, 3), True, dict(strides=[2], pads=[1, 1], output_padding=[1])),
    ((2, 4, 6), (4, 3, 4), False, dict(groups=2, strides=[3], pads=[2, 0], dilations=[2], output_padding=[2])),
    ((1, 4, 3, 4), (4, 3, 3, 2), True,
     dict(strides=[2, 3], pads=[1, 0, 0, 1], dilations=[1, 2], groups=2, output_padding=[1, 2])),
    ((2, 2, 4, 4), (2, 3, 3, 3), False, dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])),
    ((1, 2, 2, 3, 2), (2, 2, 2, 2, 3), True, dict(strides=[2, 1, 2], pads=[0, 0, 1, 1, 0, 0], output_padding=[1, 0, 0])),
    ((1, 1, 6), (1, 1, 2), False, dict(pads=[2, 3])),
    ((2, 3, 4), (3, 2, 3), False, {}),
]


def torch_conv_t(x, w, b, a):
    n = x.dim() - 2
    s, p, d = geometry(n, a)
    op = a.get("output_padding") or [0] * n
    f = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
    groups = a.get("groups", 1)
    if p[:n] == p[n:]:   # torch's own symmetric padding
        return f(x, w, b, stride=s, padding=p[:n], output_padding=op, groups=groups, dilation=d)
    # asymmetric: the full result, zeros appended for output_padding, then cropped by the pads
    y = f(x, w, None, stride=s, groups=groups, dilation=d)
    y = F.pad(y, [v for i in reversed(range(n)) for v in (0, op[i])])
    y = y[(slice(None), slice(None)) + tuple(slice(p[i], y.shape[2 + i] - p[n + i]) for i in range(n))]
    return y if b is None else y + b.reshape((-1,) + (1,) * n)


@pytest.mark.parametrize("dtype,tol", [(np.float64, F64), (np.float32, F32)])
@pytest.mark.parametrize("case", CONV_T)
def test_conv_transpose_forward(case, dtype, tol):
    x, w, b, a = conv_case(case, dtype, np.random.default_rng(3), transpose=True)
    got = run_op("nn.conv_transpose", [x, w] + ([b] if b is not None else []), **a)
    want = torch_conv_t(t(x), t(w), None if b is None else t(b), a).numpy()
    close(got, want, tol)


@pytest.mark.parametrize("case", CONV_T)
def test_conv_transpose_vjp(case):
    rng = np.random.default_rng(4)
    x, w, b, a = conv_case(case, np.float64, rng, transpose=True)
    tx, tw = t(x, True), t(w, True)
    tb = None if b is None else t(b, True)
    y = torch_conv_t(tx, tw, tb, a)
    g = rng.standard_normal(tuple(y.shape))
    leaves = [tx, tw] + ([tb] if b is not None else [])
    want = torch.autograd.grad(y, leaves, t(g))
    got = run_vjp("nn.conv_transpose", [x, w] + ([b] if b is not None else []), g, **a)
    for gv, wv in zip(got, want):
        close(gv, wv.numpy(), F64)


# --- pooling: torch -----------------------------------------------------------------------------
MAX_TORCH = [  # x shape, attrs; non-ceil cases pad with -inf first, ceil cases use torch padding
    ((2, 3, 9), dict(kernel=[3], strides=[2], pads=[1, 0])),
    ((2, 2, 7, 8), dict(kernel=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1], dilations=[1, 2])),
    ((1, 2, 5, 6, 7), dict(kernel=[2, 3, 2], strides=[1, 2, 2], pads=[0, 1, 1, 1, 0, 1])),
    ((2, 3, 8), dict(kernel=[2])),
    ((2, 3, 5), dict(kernel=[2], strides=[2], pads=[1, 1], ceil_mode=True)),      # drops a window
    ((2, 3, 7, 6), dict(kernel=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=True)),
    ((1, 2, 6, 5, 7), dict(kernel=[3, 2, 3], strides=[2, 2, 3], pads=[1, 0, 1, 1, 0, 1],
                           dilations=[1, 1, 2], ceil_mode=True)),
]


def torch_max_pool(x, a):
    n = x.dim() - 2
    s, p, d = geometry(n, a)
    f = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
    if a.get("ceil_mode"):
        assert p[:n] == p[n:]
        return f(x, a["kernel"], s, p[:n], d, ceil_mode=True)
    return f(F.pad(x, torch_pad(p, n), value=-np.inf), a["kernel"], s, 0, d)


AVG_TORCH = [  # symmetric pads, no dilation: torch's own avg_pool
    ((2, 3, 9), dict(kernel=[3], strides=[2], pads=[1, 1])),
    ((2, 3, 8), dict(kernel=[3], strides=[2], pads=[1, 1], count_include_pad=True, ceil_mode=True)),
    ((2, 2, 8, 7), dict(kernel=[3, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=True)),
    ((1, 2, 5, 6, 7), dict(kernel=[2, 3, 2], strides=[1, 2, 2], pads=[1, 1, 0, 1, 1, 0], count_include_pad=True)),
    ((2, 3, 5), dict(kernel=[2], strides=[2], pads=[1, 1], ceil_mode=True)),
    ((2, 3, 5), dict(kernel=[2], strides=[2], pads=[1, 1], ceil_mode=True, count_include_pad=True)),
    ((2, 3, 6, 6), dict(kernel=[2, 2])),
]


def torch_avg_pool(x, a):
    n = x.dim() - 2
    s, p, _ = geometry(n, a)
    assert p[:n] == p[n:] and not a.get("dilations")
    f = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
    return f(x, a["kernel"], s, p[:n], ceil_mode=a.get("ceil_mode", False),
             count_include_pad=a.get("count_include_pad", False))


POOLS = [("nn.max_pool", torch_max_pool, c) for c in MAX_TORCH] + \
        [("nn.avg_pool", torch_avg_pool, c) for c in AVG_TORCH]


@pytest.mark.parametrize("dtype,tol", [(np.float64, F64), (np.float32, F32)])
@pytest.mark.parametrize("name,fn,case", POOLS, ids=[f"{p[0]}-{i}" for i, p in enumerate(POOLS)])
def test_pool_forward_torch(name, fn, case, dtype, tol):
    shape, a = case
    x = np.random.default_rng(5).standard_normal(shape).astype(dtype)
    close(run_op(name, [x], **a), fn(t(x), a).numpy(), tol)


@pytest.mark.parametrize("name,fn,case", POOLS, ids=[f"{p[0]}-{i}" for i, p in enumerate(POOLS)])
def test_pool_vjp_torch(name, fn, case):
    shape, a = case
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape)
    tx = t(x, True)
    y = fn(tx, a)
    g = rng.standard_normal(tuple(y.shape))
    (want,) = torch.autograd.grad(y, tx, t(g))
    (got,) = run_vjp(name, [x], g, **a)
    close(got, want.numpy(), F64)


@pytest.mark.parametrize("case", MAX_TORCH)
def test_max_pool_grad_ties_go_to_first_max(case):
    """With many equal values, the gradient goes where torch sends it: the first maximum."""
    shape, a = case
    rng = np.random.default_rng(7)
    x = rng.integers(0, 3, shape).astype(np.float64)
    tx = t(x, True)
    y = torch_max_pool(tx, a)
    g = rng.standard_normal(tuple(y.shape))
    (want,) = torch.autograd.grad(y, tx, t(g))
    close(run_op("nn.max_pool_grad", [x, g], **a), want.numpy(), F64)


def test_avg_pool_grad_vjp_is_avg_pool():
    shape, a = AVG_TORCH[2]
    rng = np.random.default_rng(8)
    x = rng.standard_normal(shape)
    g = rng.standard_normal(run_op("nn.avg_pool", [x], **a).shape)
    h = rng.standard_normal(shape)
    gx, gg = run_vjp("nn.avg_pool_grad", [x, g], h, **a)
    assert gx is None
    close(gg, torch_avg_pool(t(h), a).numpy(), F64)


# --- pooling: onnx.reference -------------------------------------------------------------------
def onnx_pool(kind, x, a, indices=False):
    n = x.ndim - 2
    s, p, d = geometry(n, a)
    attrs = dict(kernel_shape=a["kernel"], strides=s, pads=p, dilations=d,
                 ceil_mode=int(a.get("ceil_mode", False)))
    if kind == "AveragePool":
        attrs["count_include_pad"] = int(a.get("count_include_pad", False))
    outs = ["y", "i"] if indices else ["y"]
    node = helper.make_node(kind, ["x"], outs, **attrs)
    vi = [helper.make_tensor_value_info(o, TensorProto.DOUBLE if o == "y" else TensorProto.INT64, None)
          for o in outs]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, x.shape)], vi)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    return ReferenceEvaluator(model).run(None, {"x": x})


MAX_ONNX = [  # ceil_mode with asymmetric pads; strides > 1 so the reference also returns indices
    ((1, 2, 7, 6), dict(kernel=[3, 2], strides=[2, 3], pads=[2, 0, 0, 1], ceil_mode=True)),
    ((2, 1, 10), dict(kernel=[2], strides=[3], pads=[0, 2], dilations=[3], ceil_mode=True)),
    ((1, 1, 5, 4, 6), dict(kernel=[2, 2, 3], strides=[2, 3, 2], pads=[1, 0, 0, 0, 1, 2],
                           dilations=[2, 1, 1], ceil_mode=True)),
]

AVG_ONNX = [  # asymmetric pads, dilations, with and without counting pads
    ((1, 2, 7, 6), dict(kernel=[3, 2], strides=[2, 1], pads=[2, 0, 0, 1], count_include_pad=True)),
    ((1, 2, 8, 6), dict(kernel=[3, 2], strides=[2, 1], pads=[2, 0, 0, 1], ceil_mode=True)),
    ((2, 1, 9), dict(kernel=[3], strides=[2], pads=[1, 2], dilations=[2], ceil_mode=True)),
    ((2, 1, 9), dict(kernel=[3], strides=[2], pads=[1, 2], dilations=[2], ceil_mode=True, count_include_pad=True)),
    ((1, 1, 5, 4, 6), dict(kernel=[2, 2, 3], pads=[1, 0, 0, 0, 1, 2], dilations=[2, 1, 1], count_include_pad=True)),
    ((1, 2, 9), dict(kernel=[3], strides=[2], pads=[0, 1], ceil_mode=True, count_include_pad=True)),
]


@pytest.mark.parametrize("case", MAX_ONNX)
def test_max_pool_onnx(case):
    """Forward against onnx.reference; the gradient against the reference's argmax indices."""
    shape, a = case
    rng = np.random.default_rng(9)
    x = rng.standard_normal(shape)
    want, idx = onnx_pool("MaxPool", x, a, indices=True)
    close(run_op("nn.max_pool", [x], **a), want, F64)
    g = rng.standard_normal(want.shape)
    dx = np.zeros(x.size)
    np.add.at(dx, idx.ravel(), g.ravel())
    (got,) = run_vjp("nn.max_pool", [x], g, **a)
    close(got, dx.reshape(x.shape), F64)


@pytest.mark.parametrize("case", AVG_ONNX)
def test_avg_pool_onnx(case):
    """Forward against onnx.reference; the gradient against the Jacobian that onnx.reference
    gives on basis inputs (average pooling is linear), one basis input per batch entry."""
    shape, a = case
    rng = np.random.default_rng(10)
    x = rng.standard_normal(shape)
    (want,) = onnx_pool("AveragePool", x, a)
    close(run_op("nn.avg_pool", [x], **a), want, F64)
    spatial = shape[2:]
    m = int(np.prod(spatial))
    (jac,) = onnx_pool("AveragePool", np.eye(m).reshape((m, 1) + spatial), a)   # (m, 1, *out)
    g = rng.standard_normal(want.shape)
    dx = np.einsum("jo,nco->ncj", jac.reshape(m, -1), g.reshape(g.shape[:2] + (-1,)))
    (got,) = run_vjp("nn.avg_pool", [x], g, **a)
    close(got, dx.reshape(shape), F64)


# --- low precision ------------------------------------------------------------------------------
def test_conv_f16_rounds_an_f32_result():
    x, w, b, a = conv_case(CONV[2], np.float16, np.random.default_rng(11))
    got = run_op("nn.conv", [x, w, b], **a)
    want = torch_conv(*(t(v.astype(np.float32)) for v in (x, w, b)), a).numpy()
    # the f32 sums agree to ~1e-6; rounding to f16 then costs at most one f16 ulp (2^-10 relative)
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=2 ** -10, atol=2 ** -14)


def test_max_pool_bf16_is_exact():
    shape, a = MAX_TORCH[1]
    x = np.random.default_rng(12).standard_normal(shape).astype(ml_dtypes.bfloat16)
    got = run_op("nn.max_pool", [x], **a)
    want = torch_max_pool(torch.tensor(x.astype(np.float32)).to(torch.bfloat16), a)
    np.testing.assert_array_equal(got.astype(np.float32), want.float().numpy())


# --- symbolic dims ------------------------------------------------------------------------------
def test_symbolic_batch_and_length():
    """One graph over (n, 3, len) runs at two sizes; 'same' convs and pools keep `len`."""
    g, b = new_graph("main", {"x": TensorType(["n", 3, "len"], "f64"), "w": TensorType([4, 3, 3], "f64"),
                              "w2": TensorType([4, 2, 2], "f64")})
    x, w, w2 = g.inputs
    y1 = b.nn.conv(x, w, pads=[1, 1])
    y2 = b.nn.avg_pool(y1, kernel=[3], pads=[2, 0])
    y3 = b.nn.max_pool(y2, kernel=[2], strides=[2])
    y4 = b.nn.conv_transpose(y3, w2, strides=[2], output_padding=[1])
    assert y1.type.shape == (Sym("n"), 4, Sym("len"))
    assert y2.type.shape == (Sym("n"), 4, Sym("len"))
    assert y3.type.shape == (Sym("n"), 4, Sym(None)) and y4.type.shape == (Sym("n"), 2, Sym(None))
    g.set_outputs([y4], ["y"])
    m = ckir.Module("sym")
    m.add_graph(g)
    f = ckir.compile(roundtrip(m))
    rng = np.random.default_rng(13)
    wv, w2v = rng.standard_normal((4, 3, 3)), rng.standard_normal((4, 2, 2))
    for n, length in ((2, 8), (3, 11)):
        xv = rng.standard_normal((n, 3, length))
        r = torch_conv(t(xv), t(wv), None, dict(pads=[1, 1]))
        # average over the taps inside the input: window sums over window counts
        ones = torch.ones_like(r)
        r = F.avg_pool1d(F.pad(r, [2, 0]), 3, 1) / F.avg_pool1d(F.pad(ones, [2, 0]), 3, 1)
        r = F.max_pool1d(r, 2, 2)
        r = F.conv_transpose1d(r, t(w2v), stride=2, output_padding=1)
        close(f(xv, wv, w2v)["y"], r.numpy(), F64)


@pytest.mark.parametrize("length", [8, 9])
def test_symbolic_conv_vjp(length):
    """The conv gradient graph built for a symbolic length is right for lengths whose remainder
    modulo the stride differs (the rounded-away input elements get zero gradient)."""
    g, b = new_graph("main", {"x": TensorType(["n", 3, "len"], "f64"), "w": TensorType([4, 3, 3], "f64")})
    x, w = g.inputs
    a = dict(strides=[2], pads=[1, 0])
    op = b.create("nn.conv", [x, w], a)
    c = g.add_arg(TensorType(op.results[0].type.shape, "f64"), "c")
    gx, gw = ckir.get_op("nn.conv").vjp(b, op, c)
    assert gx.type is x.type and gw.type is w.type
    g.set_outputs([gx, gw], ["gx", "gw"])
    m = ckir.Module("sym")
    m.add_graph(g)
    f = ckir.compile(roundtrip(m))
    rng = np.random.default_rng(14)
    xv, wv = rng.standard_normal((2, 3, length)), rng.standard_normal((4, 3, 3))
    tx, tw = t(xv, True), t(wv, True)
    y = torch_conv(tx, tw, None, a)
    cv = rng.standard_normal(tuple(y.shape))
    want = torch.autograd.grad(y, (tx, tw), t(cv))
    res = f(xv, wv, cv)
    close(res["gx"], want[0].numpy(), F64)
    close(res["gw"], want[1].numpy(), F64)


# --- cost -------------------------------------------------------------------------------------
def test_conv_cost_counts_multiply_adds():
    g, b = new_graph("main", {"x": TensorType(["n", 4, 10, 9], "f32"), "w": TensorType([6, 2, 3, 2], "f32")})
    op = b.create("nn.conv", list(g.inputs), dict(groups=2, strides=[2, 1]))
    out = 4 * 8   # floor((10-3)/2)+1 by floor((9-2)/1)+1
    c = op.opdef.cost(op, {"n": 5})
    assert c.flops == 2 * (5 * 6 * out) * 2 * (3 * 2)
    assert c.bytes_read == 4 * (5 * 4 * 10 * 9 + 6 * 2 * 3 * 2) and c.bytes_written == 4 * 5 * 6 * out


# --- bad input ----------------------------------------------------------------------------------
BAD = [
    ("nn.conv", [(1, 3, 8), (4, 2, 3)], {}, r"w has 2 input channels per group, but x has 3 channels"),
    ("nn.conv", [(1, 4, 8), (4, 2, 3)], dict(groups=3), r"input channels 4 are not divisible by groups 3"),
    ("nn.conv", [(1, 3, 8), (4, 3, 3)], dict(pads=[1]), r"pads \[1\] must have 2 entries for 1 spatial dims"),
    ("nn.conv", [(1, 3, 4, 2), (4, 3, 3, 3)], {}, r"spatial axis 1: a window of 3 .* does not fit in 2"),
    ("nn.conv", [(1, 3, 8), (4, 3, 3), (3,)], {}, r"bias must be \(4,\)"),
    ("nn.conv", [(3, 8), (4, 3, 3)], {}, r"x must be \(N, C, spatial...\)"),
    ("nn.conv_transpose", [(1, 3, 5), (3, 2, 3)], dict(strides=[2], output_padding=[2]),
     r"output_padding \[2\] .* smaller than its stride \[2\]"),
    ("nn.conv_transpose", [(1, 3, 5), (4, 2, 3)], {}, r"w has 4 input channels, x has 3"),
    ("nn.conv_input_grad", [(1, 4, 5), (4, 3, 3), (1, 3, 8)], {}, r"g has shape \[1, 4, 5\], expected \[1, 4, 6\]"),
    ("nn.conv_weight_grad", [(1, 3, 8), (1, 5, 6), (4, 3, 3)], {}, r"g has shape \[1, 5, 6\], expected \[1, 4, 6\]"),
    ("nn.max_pool", [(1, 3, 8, 8)], dict(kernel=[3]), r"kernel \[3\] must have 2 entries"),
    ("nn.max_pool_grad", [(1, 3, 8), (1, 3, 8)], dict(kernel=[3]), r"g has shape \[1, 3, 8\], expected \[1, 3, 6\]"),
    ("nn.avg_pool", [(1, 3, 8)], dict(kernel=[2], dilations=[0]), r"dilations \[0\] must be >= 1"),
    ("nn.avg_pool_grad", [(1, 3, 8), (1, 2, 7)], dict(kernel=[2]), r"g has shape \[1, 2, 7\], expected \[1, 3, 7\]"),
]


@pytest.mark.parametrize("name,shapes,attrs,msg", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_rejected(name, shapes, attrs, msg):
    g, b = new_graph("main", {f"a{i}": TensorType(s, "f32") for i, s in enumerate(shapes)})
    with pytest.raises(ckir.CkirError, match=f"{name}: .*{msg}"):
        b.create(name, list(g.inputs), attrs)


def test_too_short_at_run_time_is_an_error():
    g, b = new_graph("main", {"x": TensorType([1, 3, "len"], "f32"), "w": TensorType([4, 3, 5], "f32")})
    g.set_outputs([b.nn.conv(*g.inputs)], ["y"])
    m = ckir.Module("m")
    m.add_graph(g)
    f = ckir.compile(m)
    assert f(np.ones((1, 3, 5), np.float32), np.ones((4, 3, 5), np.float32))["y"].shape == (1, 4, 1)
    with pytest.raises(ckir.CkirError, match=r"nn.conv.*a window of 5 .* does not fit in 4"):
        f(np.ones((1, 3, 4), np.float32), np.ones((4, 3, 5), np.float32))
