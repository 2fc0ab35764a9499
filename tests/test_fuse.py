"""The fuse pass (level 1: elementwise chains): fused == unfused on random graphs, gradients
through fused bodies, the cost model's refusals, statistics and the text form."""
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import ckir
from ckir import Module, TensorType, new_graph
from test_properties import graphs


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graphs())
def test_fused_equals_unfused(case):
    m, inputs, _ = case
    with np.errstate(all="ignore"):
        want = ckir.compile(m)(*inputs)
        ckir.run_pipeline(m, "fuse")
        got = ckir.compile(m)(*inputs)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def chain():
    g, b = new_graph("main", {"x": TensorType([4, 8], "f64"), "y": TensorType([8], "f64")})
    x, y = g.inputs
    z = b.nn.tanh(b.nn.mul(b.nn.add(x, y), 0.5))
    g.set_outputs([b.nn.sum(b.nn.mul(b.nn.exp(z), z))], ["loss"])
    m = Module()
    m.add_graph(g)
    return m


def test_chain_becomes_one_op_and_prints():
    m = chain()
    out = io.StringIO()
    ckir.PassManager("fuse", stats=True, out=out).run(m)
    names = [op.name for op in m.main]
    assert names.count("fused.elementwise") == 1 and "nn.tanh" not in names
    assert "elementwise groups" in out.getvalue() and "kernels after" in out.getvalue()
    text = m.print()
    assert ckir.parse(text).print() == text


def test_fuse_and_autodiff_commute():
    x, y = np.random.default_rng(0).standard_normal((4, 8)), np.random.default_rng(1).standard_normal(8)
    res = []
    for pipeline in ("autodiff{wrt=x,y}", "fuse,autodiff{wrt=x,y}", "autodiff{wrt=x,y},fuse"):
        m = chain()
        ckir.run_pipeline(m, pipeline + ",canonicalize,cse,dce")
        res.append(ckir.compile(m)(x, y))
    for r in res[1:]:
        for k in res[0]:
            np.testing.assert_allclose(r[k], res[0][k], rtol=1e-13, atol=1e-13)


def test_shared_intermediates_and_costly_broadcasts_stay_separate():
    g, b = new_graph("main", {"x": TensorType([1000, 1], "f32"), "y": TensorType([1, 1000], "f32")})
    x, y = g.inputs
    e = b.nn.exp(x)                        # 1000 values, broadcast to 10^6: recompute too costly
    z = b.nn.add(e, y)
    w = b.nn.neg(z)
    g.set_outputs([w, b.nn.abs(z)], ["a", "b"])     # z is used twice: it must be materialized
    m = Module()
    m.add_graph(g)
    ckir.run_pipeline(m, "fuse")
    names = [op.name for op in m.main]
    assert "nn.exp" in names and "nn.add" in names


def test_levels_not_implemented_are_errors():
    with pytest.raises(ckir.PassError, match="level 3 .* is not implemented yet"):
        ckir.run_pipeline(chain(), "fuse{level=3}")
