"""Property tests: random graphs round-trip through the text IR, and canonicalize, cse, dce
and specialize never change what the interpreter computes."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckir
from ckir import Module, Sym, TensorType, new_graph

UNARY = ["neg", "abs", "exp", "tanh", "sigmoid", "relu", "silu", "gelu", "sin", "floor", "sign"]
BINARY = ["add", "sub", "mul", "maximum", "minimum"]
SHAPES = [(), (1,), (3,), (2, 1), (2, 3), (1, 3)]


@st.composite
def graphs(draw):
    """(module, inputs): a random DAG of elementwise ops, reductions, reshapes and constants,
    with the waste optimizers remove (identities, duplicates, dead ops)."""
    n_in = draw(st.integers(1, 3))
    shapes = [draw(st.sampled_from(SHAPES)) for _ in range(n_in)]
    symbolic = draw(st.booleans())
    types = {}
    for i, s in enumerate(shapes):
        dims = list(s)
        if symbolic and dims and dims[-1] == 3:
            dims[-1] = Sym("d", 8)          # one named dim shared by inputs of width 3
        types[f"x{i}"] = TensorType(dims, "f32")
    g, b = new_graph("main", types)
    vals = list(g.inputs)
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    for _ in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["unary", "binary", "const", "identity", "dup", "reduce", "reshape", "dead"]))
        a = draw(st.sampled_from(vals))
        if kind == "unary":
            vals.append(b.op("nn." + draw(st.sampled_from(UNARY)), a))
        elif kind == "binary":
            c = draw(st.sampled_from(vals))
            try:
                vals.append(b.op("nn." + draw(st.sampled_from(BINARY)), a, c))
            except ckir.ShapeError:
                pass                        # shapes that do not broadcast
        elif kind == "const":
            shape = draw(st.sampled_from(SHAPES))
            vals.append(b.nn.mul(b.constant(rng.standard_normal(shape).astype(np.float32)),
                                 b.constant(np.float32(draw(st.sampled_from([1.0, 2.0, -0.5]))))))
        elif kind == "identity":
            vals.append(draw(st.sampled_from([lambda: b.nn.add(a, 0.0), lambda: b.nn.mul(a, 1.0),
                                              lambda: b.nn.neg(b.nn.neg(a))]))())
        elif kind == "dup":
            vals.append(b.nn.add(b.nn.exp(b.nn.tanh(a)), b.nn.exp(b.nn.tanh(a))))
        elif kind == "reduce" and a.type.rank:
            vals.append(b.op("nn." + draw(st.sampled_from(["sum", "max", "mean"])), a,
                             axes=[draw(st.integers(-a.type.rank, a.type.rank - 1))],
                             keepdims=draw(st.booleans())))
        elif kind == "reshape" and a.type.is_static:
            vals.append(b.nn.reshape(b.nn.reshape(a, shape=[-1]), shape=list(a.type.shape)))
        elif kind == "dead":
            b.nn.exp(a)
    outs = draw(st.lists(st.sampled_from(vals), min_size=1, max_size=3, unique_by=id))
    g.set_outputs(outs, [f"y{i}" for i in range(len(outs))])
    m = Module("random")
    m.add_graph(g)
    d = draw(st.sampled_from([1, 3]))
    inputs = [rng.standard_normal([d if type(x) is Sym else x for x in t.shape]).astype(np.float32)
              for t in types.values()]
    return m, inputs, d


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graphs(), st.sampled_from(["canonicalize", "cse", "dce", "canonicalize,cse,dce", "cse,canonicalize,dce"]))
def test_passes_preserve_semantics(case, pipeline):
    m, inputs, d = case
    ckir.verify(m)
    text = m.print()
    assert ckir.parse(text).print() == text
    with np.errstate(all="ignore"):
        before = ckir.compile(m)(*inputs)
        ckir.run_pipeline(m, pipeline)
        after = ckir.compile(m)(*inputs)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    assert m.num_ops() <= ckir.parse(text).num_ops()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graphs())
def test_specialize_preserves_semantics(case):
    m, inputs, d = case
    with np.errstate(all="ignore"):
        before = ckir.compile(m)(*inputs)
        from ckir.passes.specialize import module_dims
        dims = set(module_dims(m))
        ckir.run_pipeline(m, "specialize{" + ",".join(f"{n}={d}" for n in dims) + "}" if dims else "")
        after = ckir.compile(m)(*inputs)
    if dims:
        assert "[d<=8]" not in m.print()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
