"""Control flow, sequences, optionals, recurrent layers and optimizer updates.

- nn.rnn / nn.gru / nn.lstm against torch.nn.RNN / GRU / LSTM in float64 (forward and
  torch.autograd gradients of every operand); the ONNX RNN / GRU / LSTM converters (directions,
  layout, activations, clip, peepholes, input_forget, sequence_lens) against onnxruntime in
  float32 (onnx.reference ignores sequence_lens and most activations).
- If, Loop, Scan (opset 8 and 9), SequenceMap, the Sequence* and Optional* ops and the
  ai.onnx.preview.training optimizers: ONNX models built with onnx.helper, run through ckir and
  through onnxruntime (onnx.reference for the optimizers), compared.

Oracles: onnxruntime for the ONNX models (onnx.reference for the training ops, which
onnxruntime lacks). Tolerances: float64 results differ from torch only by rounding order (1e-12 values, 1e-10
gradients, which take more steps); float32 results agree to a few ulps of O(1) values (1e-5);
sequence and control-flow results are exact copies or the same float32 arithmetic (1e-6).
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx.reference import ReferenceEvaluator

import ckir
from ckir import TensorType, new_graph
from ckir.frontends.onnx.backend import prepare
from ckir.frontends.onnx.importer import import_onnx
from ckir.frontends.onnx.ops.control import value_type
from ckir.types import OptType, SeqType
from oracle import run_op, torch_vjp

RNG = np.random.default_rng(11)
TRAINING = "ai.onnx.preview.training"


def rand(*shape, scale=1.0):
    return RNG.standard_normal(shape) * scale


# --- nn.rnn / nn.gru / nn.lstm against torch -------------------------------------------------
def _blocks(a, order, H):
    """Reorder the gate blocks of `a` along axis 0 (ONNX gate order -> torch's)."""
    return torch.cat([a[k * H:(k + 1) * H] for k in order])


# torch gate orders in terms of ONNX's: GRU r, z, n = ONNX (z, r, h)[1, 0, 2];
# LSTM i, f, g, o = ONNX (i, o, f, c)[0, 2, 3, 1]
TORCH = {"rnn": (torch.nn.RNN, [0]), "gru": (torch.nn.GRU, [1, 0, 2]), "lstm": (torch.nn.LSTM, [0, 2, 3, 1])}


def torch_layer(kind, x, w, r, b, h0, c0=None, reverse=False, nonlinearity="tanh"):
    cls, order = TORCH[kind]
    I, H = x.shape[2], r.shape[1]
    kw = {"nonlinearity": nonlinearity} if kind == "rnn" else {}
    mod = cls(I, H, **kw).double()
    GH = w.shape[0]
    params = {"weight_ih_l0": _blocks(w, order, H), "weight_hh_l0": _blocks(r, order, H),
              "bias_ih_l0": _blocks(b[:GH], order, H), "bias_hh_l0": _blocks(b[GH:], order, H)}
    xs = torch.flip(x, [0]) if reverse else x
    B = x.shape[1]
    state = h0.expand(B, H).unsqueeze(0)
    if kind == "lstm":
        state = (state, c0.expand(B, H).unsqueeze(0))
    y, st = torch.func.functional_call(mod, params, (xs, state))
    y = torch.flip(y, [0]) if reverse else y
    if kind == "lstm":
        return y, st[0][0], st[1][0]
    return y, st[0]


G = {"rnn": 1, "gru": 3, "lstm": 4}


def _inputs(kind, T, B, I, H, h0_batch=True):
    g = G[kind]
    xs = [rand(T, B, I), rand(g * H, I, scale=0.5), rand(g * H, H, scale=0.5), rand(2 * g * H, scale=0.5),
          rand(B if h0_batch else 1, H)]
    if kind == "lstm":
        xs += [rand(B if h0_batch else 1, H), np.zeros(3 * H)]
    return xs


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("T,B,I,H,reverse,h0_batch", [(4, 3, 5, 2, False, True), (3, 2, 2, 4, True, False),
                                                      (1, 1, 3, 3, False, False)])
def test_recurrent_matches_torch_f64(kind, T, B, I, H, reverse, h0_batch):
    xs = _inputs(kind, T, B, I, H, h0_batch)
    attrs = {"reverse": reverse}
    if kind == "gru":
        attrs["linear_before_reset"] = True      # torch's GRU applies the reset after the product
    n_res = 3 if kind == "lstm" else 2
    cots = [rand(T, B, H), rand(B, H)] + ([rand(B, H)] if kind == "lstm" else [])
    ys, grads = run_op(kind, xs, attrs, cots)

    def fn(x, w, r, b, h0, c0=None, p=None):
        return torch_layer(kind, x, w, r, b, h0, c0, reverse)
    ws, wgrads = torch_vjp(fn, xs, cots)
    for a, e in zip(ys, ws[:n_res]):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)
    n_torch = 6 if kind == "lstm" else 5      # torch has no peepholes: p's gradient is checked elsewhere
    for a, e in zip(grads[:n_torch], wgrads[:n_torch]):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-10)


def test_rnn_relu_matches_torch():
    xs = _inputs("rnn", 5, 2, 3, 4)
    cots = [rand(5, 2, 4), rand(2, 4)]
    ys, grads = run_op("rnn", xs, {"f": "relu"}, cots)
    ws, wgrads = torch_vjp(lambda *a: torch_layer("rnn", *a, nonlinearity="relu"), xs, cots)
    for a, e in zip(ys + grads, ws + wgrads):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-10)


def test_lstm_peephole_gradient_matches_torch_autograd_of_the_equations():
    # torch has no peephole LSTM: write the cell out in torch and differentiate that
    T, B, I, H = 3, 2, 3, 2
    xs = _inputs("lstm", T, B, I, H)
    xs[6] = rand(3 * H)
    cots = [rand(T, B, H), rand(B, H), rand(B, H)]
    ys, grads = run_op("lstm", xs, {}, cots)

    def fn(x, w, r, b, h0, c0, p):
        h, c, out = h0.expand(B, H), c0.expand(B, H), []
        for t in range(T):
            g = x[t] @ w.T + b[:4 * H] + h @ r.T + b[4 * H:]
            gi, go, gf, gc = g[:, :H], g[:, H:2 * H], g[:, 2 * H:3 * H], g[:, 3 * H:]
            i = torch.sigmoid(gi + p[:H] * c)
            f = torch.sigmoid(gf + p[2 * H:] * c)
            c = f * c + i * torch.tanh(gc)
            o = torch.sigmoid(go + p[H:2 * H] * c)
            h = o * torch.tanh(c)
            out.append(h)
        return torch.stack(out), h, c
    ws, wgrads = torch_vjp(fn, xs, cots)
    for a, e in zip(ys + grads, ws + wgrads):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-10)


def test_recurrent_symbolic_dims_run_with_two_sizes():
    H = 3
    g, b = new_graph("main", {"x": TensorType(["T", "B", 2], "f32"), "w": TensorType([12, 2], "f32"),
                              "r": TensorType([12, H], "f32"), "b": TensorType([24], "f32"),
                              "h0": TensorType(["B", H], "f32"), "c0": TensorType([1, H], "f32"),
                              "p": TensorType([9], "f32")})
    y, h, c = b.nn.lstm(*g.inputs)
    assert str(y.type) == "tensor<[T]x[B]x3xf32>" and str(h.type) == "tensor<[B]x3xf32>"
    g.set_outputs([y, h, c], ["y", "h", "c"])
    m = ckir.Module("t")
    m.add_graph(g)
    f = ckir.compile(m)
    for T, B in ((2, 3), (5, 1)):
        xs = [v.astype(np.float32) for v in _inputs("lstm", T, B, 2, H)]
        xs[5] = xs[5][:1]
        out = f(*xs)
        want = run_op("lstm", [v.astype(np.float64) for v in xs], {})[0]
        for k, e in zip("yhc", want):
            np.testing.assert_allclose(out[k], e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,operands,msg", [
    ("rnn", [[3, 2, 4], [5, 3], [5, 5], [10], [2, 5]], "w's last dim is 3, expects 4"),
    ("gru", [[3, 2, 4], [9, 4], [9, 3], [12], [2, 3]], "b's size is 12, expects 18"),
    ("lstm", [[3, 2, 4], [12, 4], [12, 3], [24], [4, 3], [2, 3], [9]], "h0's first dim is 4, expects 2"),
    ("lstm", [[3, 2, 4], [12, 4], [12, 3], [24], [2, 3], [2, 3], [6]], "p's size is 6, expects 9"),
])
def test_recurrent_shape_errors(kind, operands, msg):
    g, b = new_graph("main", {f"a{i}": TensorType(s, "f32") for i, s in enumerate(operands)})
    with pytest.raises(ckir.CkirError, match=msg):
        b.create(f"nn.{kind}", list(g.inputs), {})


def test_recurrent_bad_seq_lens_is_a_clear_error():
    xs = [v.astype(np.float32) for v in _inputs("rnn", 3, 2, 2, 2)] + [np.array([1, 4], np.int32)]
    with pytest.raises(ckir.CkirError, match=r"seq_lens \[1, 4\] must be in \[0, 3\]"):
        run_op("rnn", xs, {})


# --- ONNX RNN / GRU / LSTM against onnxruntime -----------------------------------------------------
def _onnx_recurrent(kind, T, B, I, H, direction="forward", layout=0, lens=None, with_h0=True,
                    peep=False, **attrs):
    nd = 2 if direction == "bidirectional" else 1
    g = G[kind]
    f32 = np.float32
    feeds = {"X": rand(B, T, I).astype(f32) if layout else rand(T, B, I).astype(f32),
             "W": rand(nd, g * H, I, scale=0.5).astype(f32), "R": rand(nd, g * H, H, scale=0.5).astype(f32),
             "B": rand(nd, 2 * g * H, scale=0.5).astype(f32)}
    names = ["X", "W", "R", "B", "", ""]
    if lens is not None:
        feeds["L"] = np.asarray(lens, np.int32)
        names[4] = "L"
    if with_h0:
        feeds["h0"] = (rand(B, nd, H) if layout else rand(nd, B, H)).astype(f32)
        names[5] = "h0"
    outs = ["Y", "Yh"]
    if kind == "lstm":
        feeds["c0"] = (rand(B, nd, H) if layout else rand(nd, B, H)).astype(f32)
        names.append("c0")
        if peep:
            feeds["P"] = rand(nd, 3 * H).astype(f32)
            names.append("P")
        outs.append("Yc")
    while names[-1] == "":
        names.pop()
    node = oh.make_node(kind.upper(), names, outs, hidden_size=H, direction=direction,
                        **({"layout": layout} if layout else {}), **attrs)
    vis = [oh.make_tensor_value_info(n, TP.INT32 if n == "L" else TP.FLOAT, feeds[n].shape) for n in names if n]
    ovis = [oh.make_tensor_value_info(o, TP.FLOAT, [None] * (4 if o == "Y" else 3)) for o in outs]
    m = oh.make_model(oh.make_graph([node], "g", vis, ovis), opset_imports=[oh.make_opsetid("", 14)])
    return m, feeds


def _vs_ort(m, feeds, rtol=1e-5, atol=1e-5):
    """ckir against onnxruntime; onnxruntime has no layout = 1, so that case runs the layout-0
    model on transposed inputs and transposes its outputs back."""
    node = m.graph.node[0]
    layout = any(a.name == "layout" and a.i == 1 for a in node.attribute)
    ref_m, ref_feeds = m, feeds
    if layout:
        ref_m = onnx.ModelProto()
        ref_m.CopyFrom(m)
        keep = [a for a in ref_m.graph.node[0].attribute if a.name != "layout"]
        del ref_m.graph.node[0].attribute[:]
        ref_m.graph.node[0].attribute.extend(keep)
        ref_feeds = {k: v.transpose(1, 0, 2) if k in ("X", "h0", "c0") else v for k, v in feeds.items()}
        for vi in ref_m.graph.input:
            if vi.name in ("X", "h0", "c0"):
                d = vi.type.tensor_type.shape.dim
                d[0].dim_value, d[1].dim_value = d[1].dim_value, d[0].dim_value
    sess = ort.InferenceSession(ref_m.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, ref_feeds)
    if layout:
        want = [w.transpose(2, 0, 1, 3) if w.ndim == 4 else w.transpose(1, 0, 2) for w in want]
    got = prepare(m).run(feeds)
    for a, e in zip(got, want):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout,lens", [(0, None), (1, None), (0, [4, 0, 2]), (1, [1, 4, 3])])
def test_onnx_recurrent_directions_layout_lens(kind, direction, layout, lens):
    _vs_ort(*_onnx_recurrent(kind, 4, 3, 2, 3, direction, layout, lens))


@pytest.mark.parametrize("kind,attrs", [
    ("rnn", {"activations": ["Relu"]}),
    ("rnn", {"activations": ["Softsign", "Softplus"]}),      # per direction (bidirectional)
    ("rnn", {"activations": ["LeakyRelu"], "activation_alpha": [0.3], "clip": 1.5}),
    ("gru", {"activations": ["HardSigmoid", "Elu"], "activation_alpha": [0.3, 0.8],
             "activation_beta": [0.45], "linear_before_reset": 1}),
    ("gru", {"activations": ["Sigmoid", "ScaledTanh"], "activation_alpha": [1.5], "activation_beta": [0.7]}),
    ("lstm", {"input_forget": 1, "clip": 0.8}),
    ("lstm", {"activations": ["Sigmoid", "Affine", "ThresholdedRelu"], "activation_alpha": [0.5, 0.2],
              "activation_beta": [0.3]}),
])
def test_onnx_recurrent_activations_against_ort(kind, attrs):
    direction = "bidirectional" if len(attrs.get("activations", [])) == 2 and kind == "rnn" else "forward"
    _vs_ort(*_onnx_recurrent(kind, 5, 2, 3, 4, direction, **attrs))


def test_onnx_lstm_peepholes_no_initial_state_against_ort():
    m, feeds = _onnx_recurrent("lstm", 3, 2, 3, 2, "bidirectional", peep=True, with_h0=False)
    _vs_ort(m, feeds)


def test_onnx_recurrent_unsupported_activation_is_a_clear_error():
    m, _ = _onnx_recurrent("rnn", 2, 1, 2, 2, activations=["Gelu"])
    with pytest.raises(ckir.CkirError, match="activation 'Gelu' is not supported"):
        import_onnx(m)


# --- helpers for ONNX models ---------------------------------------------------------------------
def tinfo(name, dtype, shape):
    return oh.make_tensor_value_info(name, dtype, shape)


def make(nodes, inputs, outputs, opset=18, training=False):
    ops = [oh.make_opsetid("", opset)] + ([oh.make_opsetid(TRAINING, 1)] if training else [])
    return oh.make_model(oh.make_graph(nodes, "g", inputs, outputs), opset_imports=ops)


def check(m, feeds, rtol=1e-6, atol=1e-6, oracle="ort"):
    """ckir's outputs equal onnxruntime's (or onnx.reference's: onnxruntime has no training
    ops; onnx.reference lacks most Scan attributes, zero-trip loops and captures in
    SequenceMap, and mis-handles SequenceErase/Insert positions and OptionalHasElement of an
    absent input), sequences elementwise. Returns ckir's."""
    if oracle == "ort":
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        want = sess.run(None, feeds)
    else:
        want = ReferenceEvaluator(m).run(None, feeds)
    got = list(prepare(m).run(feeds))
    assert len(got) == len(want)
    for a, e in zip(got, want):
        if isinstance(e, list):
            assert isinstance(a, list) and len(a) == len(e), (a, e)
            for ai, ei in zip(a, e):
                assert ai.dtype == ei.dtype
                np.testing.assert_allclose(ai, ei, rtol=rtol, atol=atol)
        elif e is None:
            assert a is None
        else:
            assert np.asarray(a).dtype == np.asarray(e).dtype, (a, e)
            np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)
    return got


def ops_of(m):
    return [op.name for op in import_onnx(m).walk()]


def const(name, value):
    return oh.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(np.asarray(value), name))


# --- If ------------------------------------------------------------------------------------------
def _if_model(cond_const=None):
    """Branches read outer values (x, y) and return outputs of different lengths."""
    then = oh.make_graph([oh.make_node("Add", ["x", "y"], ["t"]), oh.make_node("Concat", ["t", "x"], ["t2"], axis=0)],
                         "then", [], [tinfo("t2", TP.FLOAT, [None])])
    other = oh.make_graph([oh.make_node("Mul", ["x", "x"], ["e"])], "else", [], [tinfo("e", TP.FLOAT, [None])])
    nodes = [oh.make_node("If", ["c"], ["out"], then_branch=then, else_branch=other)]
    inputs = [tinfo("x", TP.FLOAT, [3]), tinfo("y", TP.FLOAT, [3])]
    if cond_const is None:
        inputs.insert(0, tinfo("c", TP.BOOL, []))
    else:
        nodes.insert(0, const("c", np.array(cond_const)))
    return make(nodes, inputs, [tinfo("out", TP.FLOAT, [None])])


@pytest.mark.parametrize("c", [True, False])
def test_if_runtime_condition(c):
    x, y = rand(3).astype(np.float32), rand(3).astype(np.float32)
    m = _if_model()
    (out,) = check(m, {"c": np.array(c), "x": x, "y": y})
    assert out.shape == ((6,) if c else (3,))
    if_op = next(op for op in import_onnx(m).walk() if op.name == "nn.if")
    assert str(if_op.results[0].type) == "tensor<?xf32>"      # the branches disagree: 6 vs 3
    assert len(if_op.operands) == 3                             # cond, x, y: x is passed once


@pytest.mark.parametrize("c", [True, False])
def test_if_known_condition_is_inlined(c):
    x, y = rand(3).astype(np.float32), rand(3).astype(np.float32)
    m = _if_model(c)
    check(m, {"x": x, "y": y})
    assert "nn.if" not in ops_of(m)


def test_if_with_sequence_and_empty_sequence_branches():
    then = oh.make_graph([oh.make_node("SequenceEmpty", [], ["s0"], dtype=TP.FLOAT)], "then", [],
                         [oh.make_tensor_sequence_value_info("s0", TP.FLOAT, None)])
    other = oh.make_graph([oh.make_node("SequenceConstruct", ["x", "x"], ["s1"])], "else", [],
                          [oh.make_tensor_sequence_value_info("s1", TP.FLOAT, None)])
    m = make([oh.make_node("If", ["c"], ["s"], then_branch=then, else_branch=other),
              oh.make_node("SequenceLength", ["s"], ["n"])],
             [tinfo("c", TP.BOOL, [1]), tinfo("x", TP.FLOAT, [2, 3])],
             [oh.make_tensor_sequence_value_info("s", TP.FLOAT, None), tinfo("n", TP.INT64, [])])
    for c in (True, False):
        check(m, {"c": np.array([c]), "x": rand(2, 3).astype(np.float32)})


def test_if_branches_of_different_rank_are_a_clear_error():
    then = oh.make_graph([oh.make_node("Identity", ["x"], ["a"])], "then", [], [tinfo("a", TP.FLOAT, [2])])
    other = oh.make_graph([oh.make_node("ReduceSum", ["x"], ["e"], keepdims=0)], "else", [], [tinfo("e", TP.FLOAT, [])])
    m = make([oh.make_node("If", ["c"], ["out"], then_branch=then, else_branch=other)],
             [tinfo("c", TP.BOOL, []), tinfo("x", TP.FLOAT, [2])], [tinfo("out", TP.FLOAT, [2])])
    with pytest.raises(ckir.CkirError, match=r"the branches give tensor<2xf32> and tensor<f32> for output 0: "
                                             "branches of different kinds, dtypes or ranks are not supported"):
        import_onnx(m)


def test_loop_carried_rank_change_is_a_clear_error():
    body = oh.make_graph([const("ax", np.array([0], np.int64)), oh.make_node("Unsqueeze", ["v", "ax"], ["v2"]),
                          oh.make_node("Identity", ["c"], ["c2"])],
                         "body", [tinfo("i", TP.INT64, []), tinfo("c", TP.BOOL, []), tinfo("v", TP.FLOAT, [2])],
                         [tinfo("c2", TP.BOOL, []), tinfo("v2", TP.FLOAT, [1, 2])])
    m = make([oh.make_node("Loop", ["M", "", "v0"], ["v"], body=body)],
             [tinfo("M", TP.INT64, []), tinfo("v0", TP.FLOAT, [2])], [tinfo("v", TP.FLOAT, [2])])
    with pytest.raises(ckir.CkirError, match=r"loop-carried value 0 is tensor<2xf32> on entry but the body "
                                             r"returns tensor<1x2xf32> \(a changing rank or dtype"):
        import_onnx(m)


def test_if_verifier_rejects_branch_type_mismatch():
    text = """module @t {
  graph @main(%c: tensor<bool>, %x: tensor<3xf32>) -> (y: tensor<3xf32>) {
    %0 = nn.if %c, %x (%a: tensor<3xf32>) {
      ckir.return %a : (tensor<3xf32>) -> ()
    } (%b: tensor<3xf32>) {
      %1 = nn.cast %b {to = i32} : (tensor<3xf32>) -> tensor<3xi32>
      ckir.return %1 : (tensor<3xi32>) -> ()
    } : (tensor<bool>, tensor<3xf32>) -> tensor<3xf32>
    ckir.return %0 : (tensor<3xf32>) -> ()
  }
}
"""
    with pytest.raises(ckir.VerifyError, match=r"nn.if.*region 1 output 0 is tensor<3xi32>, but result 0 is"):
        ckir.verify(ckir.parse(text))


# --- Loop ----------------------------------------------------------------------------------------
def _loop_body(cond_expr=True):
    """Body (i, cond, acc) -> (cond', acc + x * i, scan: acc); x is read from outside."""
    nodes = [oh.make_node("Cast", ["i"], ["fi"], to=TP.FLOAT), oh.make_node("Mul", ["x", "fi"], ["xi"]),
             oh.make_node("Add", ["acc", "xi"], ["acc2"]), oh.make_node("Identity", ["acc"], ["scan"])]
    if cond_expr:
        nodes += [oh.make_node("ReduceSum", ["acc2"], ["s"], keepdims=0), const("lim", np.float32(8.0)),
                  oh.make_node("Less", ["s", "lim"], ["c2"])]
    else:
        nodes.append(oh.make_node("Identity", ["c"], ["c2"]))
    return oh.make_graph(nodes, "body", [tinfo("i", TP.INT64, []), tinfo("c", TP.BOOL, []), tinfo("acc", TP.FLOAT, [2])],
                         [tinfo("c2", TP.BOOL, []), tinfo("acc2", TP.FLOAT, [2]), tinfo("scan", TP.FLOAT, [2])])


@pytest.mark.parametrize("trip,cond", [(5, True), (5, False), (0, True), (None, True), (7, None)])
def test_loop_trip_count_condition_and_scan_outputs(trip, cond):
    names = ["M" if trip is not None else "", "C" if cond is not None else "", "a0"]
    inputs = [tinfo("x", TP.FLOAT, [2]), tinfo("a0", TP.FLOAT, [2])]
    feeds = {"x": np.array([1.0, 0.5], np.float32), "a0": np.array([0.0, 1.0], np.float32)}
    if trip is not None:
        inputs.append(tinfo("M", TP.INT64, []))
        feeds["M"] = np.array(trip, np.int64)
    if cond is not None:
        inputs.append(tinfo("C", TP.BOOL, []))
        feeds["C"] = np.array(cond)
    m = make([oh.make_node("Loop", names, ["acc", "scan"], body=_loop_body())], inputs,
             [tinfo("acc", TP.FLOAT, [2]), tinfo("scan", TP.FLOAT, [None, 2])])
    if cond is None:
        # ONNX: without a cond input the body's cond output is ignored (onnxruntime obeys it)
        acc, scan = prepare(m).run(feeds)
        np.testing.assert_allclose(acc, feeds["a0"] + feeds["x"] * sum(range(trip)), rtol=1e-6)
        assert scan.shape == (trip, 2)
    else:
        check(m, feeds)


def test_loop_changing_shape_widens_the_carried_type():
    # the carried value grows by one element per iteration: its type becomes tensor<?xf32>
    body = oh.make_graph([oh.make_node("Concat", ["v", "one"], ["v2"], axis=0), oh.make_node("Identity", ["c"], ["c2"])],
                         "body", [tinfo("i", TP.INT64, []), tinfo("c", TP.BOOL, []), tinfo("v", TP.FLOAT, [1])],
                         [tinfo("c2", TP.BOOL, []), tinfo("v2", TP.FLOAT, [None])])
    m = make([const("one", np.ones(1, np.float32)), const("M", np.int64(3)), const("C", np.True_),
              oh.make_node("Loop", ["M", "C", "v0"], ["v"], body=body)],
             [tinfo("v0", TP.FLOAT, [1])], [tinfo("v", TP.FLOAT, [None])])
    (v,) = check(m, {"v0": np.array([2.0], np.float32)})
    assert v.shape == (4,)
    loop = next(op for op in import_onnx(m).walk() if op.name == "nn.loop")
    assert str(loop.results[0].type) == "tensor<?xf32>"


def test_loop_with_sequence_carried_from_empty():
    # SequenceEmpty has no element rank: the body's declared input type gives it one
    body = oh.make_graph([oh.make_node("Unsqueeze", ["i", "ax"], ["i1"]), oh.make_node("Cast", ["i1"], ["f"], to=TP.FLOAT),
                          oh.make_node("SequenceInsert", ["s", "f"], ["s2"]), oh.make_node("Identity", ["c"], ["c2"])],
                         "body", [tinfo("i", TP.INT64, []), tinfo("c", TP.BOOL, []),
                                  oh.make_tensor_sequence_value_info("s", TP.FLOAT, [None])],
                         [tinfo("c2", TP.BOOL, []), oh.make_tensor_sequence_value_info("s2", TP.FLOAT, None)])
    m = make([const("ax", np.array([0], np.int64)), oh.make_node("SequenceEmpty", [], ["e"]),
              oh.make_node("Loop", ["M", "", "e"], ["s"], body=body), oh.make_node("ConcatFromSequence", ["s"], ["y"], axis=0)],
             [tinfo("M", TP.INT64, [])], [tinfo("y", TP.FLOAT, [None])])
    (y,) = check(m, {"M": np.array(4, np.int64)})
    np.testing.assert_array_equal(y, [0, 1, 2, 3])


def test_loop_verifier_checks_the_body():
    text = """module @t {
  graph @main(%n: tensor<i64>, %c: tensor<bool>, %x: tensor<3xf32>) -> (y: tensor<3xf32>) {
    %0 = nn.loop %n, %c, %x {num_carried = 1} (%i: tensor<i64>, %k: tensor<bool>, %a: tensor<3xf32>) {
      ckir.return %a, %a : (tensor<3xf32>, tensor<3xf32>) -> ()
    } : (tensor<i64>, tensor<bool>, tensor<3xf32>) -> tensor<3xf32>
    ckir.return %0 : (tensor<3xf32>) -> ()
  }
}
"""
    with pytest.raises(ckir.VerifyError, match=r"nn.loop.*region 0 output 0 is tensor<3xf32>, but body argument 0"):
        ckir.verify(ckir.parse(text))


# --- Scan ----------------------------------------------------------------------------------------
def _scan_body():
    """(sum, x_t, y_t) -> (sum + x_t, x_t * y_t, sum)."""
    return oh.make_graph([oh.make_node("Add", ["s", "xt"], ["s2"]), oh.make_node("Mul", ["xt", "yt"], ["p"]),
                          oh.make_node("Identity", ["s"], ["o"])],
                         "body", [tinfo("s", TP.FLOAT, [2]), tinfo("xt", TP.FLOAT, [2]), tinfo("yt", TP.FLOAT, [2])],
                         [tinfo("s2", TP.FLOAT, [2]), tinfo("p", TP.FLOAT, [2]), tinfo("o", TP.FLOAT, [2])])


@pytest.mark.parametrize("attrs,xshape,yshape", [
    ({}, [4, 2], [4, 2]),
    ({"scan_input_axes": [1, 0], "scan_input_directions": [1, 0]}, [2, 4], [4, 2]),
    ({"scan_output_axes": [1, -2], "scan_output_directions": [0, 1]}, [3, 2], [3, 2]),
    ({"scan_input_axes": [-1, 1], "scan_output_axes": [-1, 0]}, [2, 1], [2, 1]),
])
def test_scan9_axes_and_directions(attrs, xshape, yshape):
    m = make([oh.make_node("Scan", ["s0", "x", "y"], ["s", "p", "o"], body=_scan_body(), num_scan_inputs=2, **attrs)],
             [tinfo("s0", TP.FLOAT, [2]), tinfo("x", TP.FLOAT, xshape), tinfo("y", TP.FLOAT, yshape)],
             [tinfo("s", TP.FLOAT, [2]), tinfo("p", TP.FLOAT, [None, None]), tinfo("o", TP.FLOAT, [None, None])])
    check(m, {"s0": rand(2).astype(np.float32), "x": rand(*xshape).astype(np.float32),
              "y": rand(*yshape).astype(np.float32)})


def test_scan9_zero_length_gives_empty_scan_outputs():
    m = make([oh.make_node("Scan", ["s0", "x", "y"], ["s", "p", "o"], body=_scan_body(), num_scan_inputs=2)],
             [tinfo("s0", TP.FLOAT, [2]), tinfo("x", TP.FLOAT, [None, 2]), tinfo("y", TP.FLOAT, [None, 2])],
             [tinfo("s", TP.FLOAT, [2]), tinfo("p", TP.FLOAT, [None, 2]), tinfo("o", TP.FLOAT, [None, 2])])
    s0 = rand(2).astype(np.float32)
    s, p, o = prepare(m).run({"s0": s0, "x": np.zeros((0, 2), np.float32), "y": np.zeros((0, 2), np.float32)})
    np.testing.assert_array_equal(s, s0)
    assert p.shape == o.shape == (0, 2) and p.dtype == np.float32


def test_scan8_batched_with_directions():
    # opset 8: batch axis 0, scan axis 1; sequence_lens empty
    m = make([oh.make_node("Scan", ["", "s0", "x", "y"], ["s", "p", "o"], body=_scan_body(), num_scan_inputs=2,
                           directions=[0, 1])],
             [tinfo("s0", TP.FLOAT, [3, 2]), tinfo("x", TP.FLOAT, [3, 4, 2]), tinfo("y", TP.FLOAT, [3, 4, 2])],
             [tinfo("s", TP.FLOAT, [3, 2]), tinfo("p", TP.FLOAT, [3, 4, 2]), tinfo("o", TP.FLOAT, [3, 4, 2])], opset=8)
    feeds = {"s0": rand(3, 2).astype(np.float32), "x": rand(3, 4, 2).astype(np.float32),
             "y": rand(3, 4, 2).astype(np.float32)}
    s, p, o = prepare(m).run(feeds)
    # the same scan per batch row, written out
    for bi in range(3):
        acc = feeds["s0"][bi].copy()
        for t in range(4):
            xt, yt = feeds["x"][bi, t], feeds["y"][bi, 3 - t]
            np.testing.assert_allclose(o[bi, t], acc, rtol=1e-6)
            np.testing.assert_allclose(p[bi, t], xt * yt, rtol=1e-6)
            acc = acc + xt
        np.testing.assert_allclose(s[bi], acc, rtol=1e-6)


def test_scan8_short_sequence_lens_is_unsupported():
    m = make([oh.make_node("Scan", ["L", "s0", "x", "y"], ["s", "p", "o"], body=_scan_body(), num_scan_inputs=2)],
             [tinfo("L", TP.INT64, [3]), tinfo("s0", TP.FLOAT, [3, 2]), tinfo("x", TP.FLOAT, [3, 4, 2]),
              tinfo("y", TP.FLOAT, [3, 4, 2])],
             [tinfo("s", TP.FLOAT, [3, 2]), tinfo("p", TP.FLOAT, [3, 4, 2]), tinfo("o", TP.FLOAT, [3, 4, 2])], opset=8)
    with pytest.raises(ckir.CkirError, match="sequence_lens shorter than the sequence axis are not supported"):
        import_onnx(m)


# --- sequences -----------------------------------------------------------------------------------
def seqinfo(name, dtype=TP.FLOAT):
    return oh.make_tensor_sequence_value_info(name, dtype, None)


def test_sequence_construct_insert_erase_at_length():
    nodes = [oh.make_node("SequenceConstruct", ["a", "b"], ["s1"]),
             oh.make_node("SequenceInsert", ["s1", "c", "p0"], ["s2"]),          # at the front
             oh.make_node("SequenceInsert", ["s2", "a"], ["s3"]),                # at the back
             oh.make_node("SequenceErase", ["s3", "pm2"], ["s4"]),               # the second to last
             oh.make_node("SequenceErase", ["s4"], ["s5"]),                      # the last
             oh.make_node("SequenceAt", ["s3", "pm1"], ["last"]),
             oh.make_node("SequenceLength", ["s5"], ["n"])]
    m = make([const("p0", np.array(0, np.int32)), const("pm2", np.array([-2], np.int64)),
              const("pm1", np.array(-1, np.int64))] + nodes,
             [tinfo("a", TP.FLOAT, [2, 3]), tinfo("b", TP.FLOAT, [4, 3]), tinfo("c", TP.FLOAT, [1, 3])],
             [seqinfo("s5"), tinfo("last", TP.FLOAT, [None, 3]), tinfo("n", TP.INT64, [])])
    s5, _, n = check(m, {"a": rand(2, 3).astype(np.float32), "b": rand(4, 3).astype(np.float32),
                            "c": rand(1, 3).astype(np.float32)})
    assert n == 2 and [x.shape for x in s5] == [(1, 3), (2, 3)]


def test_sequence_position_out_of_range_is_a_clear_error():
    m = make([oh.make_node("SequenceConstruct", ["a"], ["s"]), oh.make_node("SequenceAt", ["s", "p"], ["y"])],
             [tinfo("a", TP.FLOAT, [2]), tinfo("p", TP.INT64, [])], [tinfo("y", TP.FLOAT, [2])])
    with pytest.raises(ckir.CkirError, match=r"nn.seq_at.*position 3 is out of range \[-1, 0\]"):
        prepare(m).run({"a": rand(2).astype(np.float32), "p": np.array(3, np.int64)})


def test_seq_insert_dtype_mismatch_is_a_shape_error():
    g, b = new_graph("main", {"x": TensorType([2], "f32"), "y": TensorType([2], "i32")})
    s = b.nn.seq_construct([g.inputs[0]])
    with pytest.raises(ckir.CkirError, match=r"nn.seq_insert: cannot join tensor<2xf32> and tensor<2xi32>"):
        b.nn.seq_insert(s, g.inputs[1])


@pytest.mark.parametrize("split,attrs,dynamic", [
    (None, {}, False), (None, {"keepdims": 0, "axis": 1}, False), (np.array(2, np.int64), {}, False),
    (np.array([1, 4], np.int64), {"axis": -2}, False), (np.array(2, np.int64), {}, True),
    (np.array([3, 3], np.int64), {"axis": 1}, True), (None, {"axis": 1}, True)])
def test_split_to_sequence_static_and_dynamic(split, attrs, dynamic):
    x = rand(5, 6).astype(np.float32)
    inputs = [tinfo("x", TP.FLOAT, [None, 6] if dynamic and split is None else [5, 6])]
    feeds = {"x": x}
    nodes, names = [], ["x"]
    if split is not None:
        names.append("split")
        if dynamic:
            inputs.append(tinfo("split", TP.INT64, list(split.shape)))
            feeds["split"] = split
        else:
            nodes.append(const("split", split))
    if dynamic and split is None:
        attrs = {"axis": 0}
    nodes.append(oh.make_node("SplitToSequence", names, ["s"], **attrs))
    m = make(nodes, inputs, [seqinfo("s")])
    check(m, feeds)
    assert ("nn.split_to_seq" in ops_of(m)) == dynamic


@pytest.mark.parametrize("axis,new_axis", [(0, 0), (-1, 0), (1, 1), (-1, 1)])
def test_concat_from_sequence(axis, new_axis):
    shape_b = [2, 3] if new_axis else ([4, 3] if axis == 0 else [2, 5])
    m = make([oh.make_node("SequenceConstruct", ["a", "b"], ["s"]),
              oh.make_node("ConcatFromSequence", ["s"], ["y"], axis=axis, new_axis=new_axis)],
             [tinfo("a", TP.FLOAT, [2, 3]), tinfo("b", TP.FLOAT, shape_b)],
             [tinfo("y", TP.FLOAT, [None] * (2 + new_axis))])
    check(m, {"a": rand(2, 3).astype(np.float32), "b": rand(*shape_b).astype(np.float32)})


def test_sequence_empty_then_insert():
    m = make([oh.make_node("SequenceEmpty", [], ["e"], dtype=TP.INT32), oh.make_node("SequenceInsert", ["e", "a"], ["s1"]),
              oh.make_node("SequenceInsert", ["s1", "b", "p"], ["s2"]), oh.make_node("SequenceEmpty", [], ["e2"]),
              oh.make_node("SequenceInsert", ["e2", "f", "z"], ["s3"])],
             [tinfo("a", TP.INT32, [2]), tinfo("b", TP.INT32, [3]), tinfo("p", TP.INT64, []), tinfo("f", TP.FLOAT, [2, 2]),
              tinfo("z", TP.INT64, [])],
             [seqinfo("s2", TP.INT32), seqinfo("s3")])
    check(m, {"a": np.array([1, 2], np.int32), "b": np.array([3, 4, 5], np.int32), "p": np.array(0, np.int64),
              "f": rand(2, 2).astype(np.float32), "z": np.array(0, np.int64)})


@pytest.mark.parametrize("case", ["add", "shapes"])
def test_sequence_map(case):
    if case == "add":
        body = oh.make_graph([oh.make_node("Add", ["e", "t"], ["o"]), oh.make_node("Mul", ["e", "k"], ["o2"])], "body",
                             [tinfo("e", TP.FLOAT, [None]), tinfo("t", TP.FLOAT, [None])],
                             [tinfo("o", TP.FLOAT, [None]), tinfo("o2", TP.FLOAT, [None])])
        outs, extra = ["y", "y2"], ["t"]
    else:
        body = oh.make_graph([oh.make_node("Shape", ["e"], ["o"])], "body", [tinfo("e", TP.FLOAT, [None])],
                             [tinfo("o", TP.INT64, [1])])
        outs, extra = ["y"], []
    nodes = [const("k", np.float32(3.0)), oh.make_node("SequenceConstruct", ["a", "b"], ["s"]),
             oh.make_node("SequenceMap", ["s"] + extra, outs, body=body)]
    m = make(nodes, [tinfo("a", TP.FLOAT, [3]), tinfo("b", TP.FLOAT, [3]), tinfo("t", TP.FLOAT, [3])],
             [seqinfo(o, TP.FLOAT if case == "add" else TP.INT64) for o in outs])
    check(m, {"a": rand(3).astype(np.float32), "b": rand(3).astype(np.float32), "t": rand(3).astype(np.float32)})


# --- optionals -----------------------------------------------------------------------------------
def test_optional_some_none_has_get():
    tp = oh.make_tensor_type_proto(TP.FLOAT, [2])
    stp = oh.make_sequence_type_proto(tp)
    nodes = [oh.make_node("Optional", ["x"], ["o1"]), oh.make_node("Optional", [], ["o2"], type=tp),
             oh.make_node("Optional", [], ["o3"], type=stp),
             oh.make_node("OptionalHasElement", ["o1"], ["h1"]), oh.make_node("OptionalHasElement", ["o2"], ["h2"]),
             oh.make_node("OptionalHasElement", ["o3"], ["h3"]), oh.make_node("OptionalHasElement", ["x"], ["h4"]),
             oh.make_node("OptionalHasElement", [], ["h5"]),
             oh.make_node("OptionalGetElement", ["o1"], ["g1"]), oh.make_node("OptionalGetElement", ["x"], ["g2"])]
    m = make(nodes, [tinfo("x", TP.FLOAT, [2])],
             [tinfo(n, TP.BOOL, []) for n in ("h1", "h2", "h3", "h4", "h5")] +
             [tinfo("g1", TP.FLOAT, [2]), tinfo("g2", TP.FLOAT, [2])])
    got = check(m, {"x": rand(2).astype(np.float32)})
    assert [bool(h) for h in got[:5]] == [True, False, False, True, False]


def test_optional_get_element_of_empty_is_a_clear_error():
    tp = oh.make_tensor_type_proto(TP.FLOAT, [2])
    m = make([oh.make_node("Optional", [], ["o"], type=tp), oh.make_node("OptionalGetElement", ["o"], ["y"])],
             [], [tinfo("y", TP.FLOAT, [2])])
    with pytest.raises(ckir.CkirError, match="nn.opt_get.*the optional is empty"):
        prepare(m).run({})


def test_value_type_of_sequences_and_optionals():
    t = oh.make_tensor_type_proto(TP.FLOAT, [2, "N"])
    assert value_type(oh.make_sequence_type_proto(t), "x") is SeqType(TensorType([2, "N"], "f32"))
    assert value_type(oh.make_optional_type_proto(oh.make_sequence_type_proto(t)), "x") is \
        OptType(SeqType(TensorType([2, "N"], "f32")))
    with pytest.raises(ckir.CkirError, match="x .sequence element.: the rank is unknown"):
        value_type(oh.make_sequence_type_proto(oh.make_tensor_type_proto(TP.FLOAT, None)), "x")


# --- ai.onnx.preview.training ----------------------------------------------------------------------
def _opt_feeds(n_tensors, n_state, t):
    feeds = {"R": np.array(0.1, np.float32), "T": np.array(t, np.int64)}
    names = ["R", "T"]
    for grp in ["X", "G"] + [f"S{j}" for j in range(n_state)]:
        for i in range(n_tensors):
            k = f"{grp}{i}"
            v = rand(3, 2) if not grp.startswith("S") else np.abs(rand(3, 2))
            feeds[k] = v.astype(np.float32)
            names.append(k)
    return feeds, names


@pytest.mark.parametrize("op,n_state,attrs", [
    ("Adagrad", 1, {"decay_factor": 0.1, "epsilon": 1e-5, "norm_coefficient": 0.01}),
    ("Adam", 2, {"alpha": 0.9, "beta": 0.99, "epsilon": 1e-5, "norm_coefficient": 0.02,
                 "norm_coefficient_post": 0.01}),
    ("Adam", 2, {}),
    ("Momentum", 1, {"alpha": 0.9, "beta": 0.5, "mode": "standard", "norm_coefficient": 0.01}),
    ("Momentum", 1, {"alpha": 0.9, "beta": 0.5, "mode": "nesterov", "norm_coefficient": 0.0})])
@pytest.mark.parametrize("n,t", [(1, 0), (2, 3)])
def test_optimizers_match_onnx_reference(op, n_state, attrs, n, t):
    feeds, names = _opt_feeds(n, n_state, t)
    outs = [f"{g}{i}_new" for g in ["X"] + [f"S{j}" for j in range(n_state)] for i in range(n)]
    node = oh.make_node(op, names, outs, domain=TRAINING, **attrs)
    m = make([node], [tinfo(k, TP.FLOAT if k != "T" else TP.INT64, list(feeds[k].shape)) for k in names],
             [tinfo(o, TP.FLOAT, [3, 2]) for o in outs], training=True)
    check(m, feeds, rtol=1e-5, atol=1e-6, oracle="reference")


def test_training_gradient_needs_a_scalar_y_and_runs_autodiff():
    node = oh.make_node("Gradient", ["a"], ["da"], domain=TRAINING, xs=["a"], y="b")
    m = make([oh.make_node("Mul", ["a", "a"], ["b"]), node], [tinfo("a", TP.FLOAT, [2])],
             [tinfo("da", TP.FLOAT, [2])], training=True)
    with pytest.raises(ckir.CkirError, match=r"y must be a float scalar, it is tensor<2xf32>"):
        import_onnx(m)
    s = oh.make_node("ReduceSum", ["b"], ["s"], keepdims=0)
    node = oh.make_node("Gradient", ["a"], ["da"], domain=TRAINING, xs=["a"], y="s")
    m = make([oh.make_node("Mul", ["a", "a"], ["b"]), s, node], [tinfo("a", TP.FLOAT, [2])],
             [tinfo("da", TP.FLOAT, [2])], training=True)
    a = np.array([1.5, -2.0], np.float32)
    np.testing.assert_allclose(ckir.compile(import_onnx(m))(a)["da"], 2 * a)


def test_optimizer_shape_mismatch_is_a_shape_error():
    g, b = new_graph("main", {"r": TensorType([], "f32"), "t": TensorType([], "i64"), "x": TensorType([3], "f32"),
                              "g": TensorType([4], "f32"), "h": TensorType([3], "f32")})
    with pytest.raises(ckir.CkirError, match=r"train.adagrad: g has shape tensor<4xf32>, x has tensor<3xf32>"):
        b.create("train.adagrad", list(g.inputs), {})
