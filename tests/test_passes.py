"""canonicalize, cse, dce, specialize: each rewrite checked against the interpreter."""
import numpy as np
import pytest

import ckir
from ckir import CkirError, PassError, run_pipeline
from helpers import module_from, rand, run

F23 = ((2, 3), "f32")


def ops(m):
    return [op.name for op in m.walk() if op.name != "ckir.return"]


def same_results(build, inputs, pipeline, args, expect_ops=None):
    m = module_from(build, inputs)
    before = run(m, *args)
    run_pipeline(m, pipeline)
    after = run(m, *args)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    if expect_ops is not None:
        assert ops(m) == expect_ops
    return m


@pytest.mark.parametrize("build,expect", [
    (lambda b, x: b.nn.add(x, 0.0), []),
    (lambda b, x: b.nn.sub(x, 0.0), []),
    (lambda b, x: b.nn.mul(x, 1.0), []),
    (lambda b, x: b.nn.div(x, 1.0), []),
    (lambda b, x: b.nn.neg(b.nn.neg(x)), []),
    (lambda b, x: b.nn.cast(x, to="f32"), []),
    (lambda b, x: b.nn.reshape(x, shape=[2, 3]), []),
    (lambda b, x: b.nn.reshape(b.nn.reshape(x, shape=[6]), shape=[3, 2]), ["nn.reshape"]),
    (lambda b, x: b.nn.transpose(b.nn.transpose(x)), []),
    (lambda b, x: b.nn.transpose(x, perm=[0, 1]), []),
    (lambda b, x: b.nn.squeeze(b.nn.unsqueeze(x, axes=[1]), axes=[1]), []),
    (lambda b, x: b.nn.expand(x, shape=[2, 3]), []),
    (lambda b, x: b.nn.mul(x, b.nn.size(x, dtype="f32")), ["nn.constant", "nn.mul"]),
    (lambda b, x: b.nn.where(b.constant(np.ones((2, 3), bool)), x, 0.0), []),
])
def test_canonicalize_rules(build, expect):
    same_results(build, {"x": F23}, "canonicalize", [rand(2, 3)], expect)


def test_canonicalize_keeps_broadcasting_adds():
    # x + zeros((4,2,3)) broadcasts: it is not x, so it must stay
    m = same_results(lambda b, x: b.nn.add(x, b.constant(np.zeros((4, 2, 3), np.float32))),
                     {"x": F23}, "canonicalize", [rand(2, 3)])
    assert "nn.add" in ops(m)


def test_constant_folding_uses_reference_semantics():
    def build(b, x):
        c = b.nn.exp(b.constant(np.arange(3, dtype=np.float32)))
        return b.nn.mul(x, b.nn.sum(c))
    m = same_results(build, {"x": ((3,), "f32")}, "canonicalize", [rand(3)], ["nn.constant", "nn.mul"])
    const = next(op for op in m.main if op.name == "nn.constant")
    assert const.attrs["value"].array == np.float32(np.exp(np.arange(3, dtype=np.float32)).sum())


def test_folding_leaves_errors_for_run_time():
    m = module_from(lambda b: b.nn.div(b.constant(np.int32(1)), b.constant(np.int32(0))), {})
    run_pipeline(m, "canonicalize")
    assert "nn.div" in ops(m)
    with pytest.raises(CkirError, match="nn.div: integer division by zero"):
        run(m)


def test_fold_limit_and_options():
    m = module_from(lambda b: b.nn.neg(b.constant(np.ones(100, np.float32))), {})
    run_pipeline(m, "canonicalize{fold_limit=10}")
    assert "nn.neg" in ops(m)
    run_pipeline(m, "canonicalize{fold=false}")
    assert "nn.neg" in ops(m)
    run_pipeline(m, "canonicalize")
    assert ops(m) == ["nn.constant"]


def test_cse_merges_commutative_and_constants():
    def build(b, x, y):
        return b.nn.add(b.nn.mul(x, y), b.nn.mul(y, x)), b.nn.add(b.nn.exp(x), b.nn.exp(x))
    m = same_results(build, {"x": F23, "y": F23}, "cse", [rand(2, 3), rand(2, 3, seed=1)])
    assert ops(m).count("nn.mul") == 1 and ops(m).count("nn.exp") == 1


def test_cse_respects_attributes():
    m = same_results(lambda b, x: (b.nn.sum(x, axes=[0]), b.nn.sum(x, axes=[1]), b.nn.sum(x, axes=[0])),
                     {"x": F23}, "cse", [rand(2, 3)])
    assert ops(m).count("nn.sum") == 2


def test_dce_removes_dead_ops_and_weights():
    m = module_from(lambda b, x: (b.nn.exp(x), x)[1], {"x": F23})
    w = ckir.Module("w")
    w.add_graph(m.main)
    w.add_weight("unused", np.ones(3, np.float32))
    p = ckir.PassManager("dce")
    p.run(w)
    assert ops(w) == [] and "unused" not in w.weights
    assert p.records[0]["statistics"] == {"ops erased": 1, "weights removed": 1}


def test_specialize_binds_and_reinfers():
    def build(b, x):
        y = b.nn.reshape(x, shape=[-1])          # [?] until seq is known
        return b.nn.reshape(y, shape=["seq", 4])
    m = module_from(build, {"x": (("seq", 4), "f32")})
    assert "tensor<?xf32>" in m.print()
    run_pipeline(m, "specialize{seq=3}")
    text = m.print()
    assert "[seq]" not in text and "?" not in text and "tensor<12xf32>" in text
    x = rand(3, 4)
    np.testing.assert_array_equal(run(m, x)["y0"], x)
    with pytest.raises(ckir.InputError, match=r"input 'x': dim 0 is 5, type tensor<3x4xf32> says 3"):
        run(m, rand(5, 4))


def test_specialize_errors():
    m = module_from(lambda b, x: b.nn.neg(x), {"x": ((ckir.Sym("seq", 16), 4), "f32")})
    with pytest.raises(PassError, match="pass 'specialize{seq=17}' failed: dim 'seq' = 17 exceeds its bound 16"):
        run_pipeline(m, "specialize{seq=17}")
    with pytest.raises(PassError, match=r"module has no symbolic dim 'sq' \(dims: seq\)"):
        run_pipeline(m, "specialize{sq=1}")
    with pytest.raises(PassError, match="option 'seq' expects int, got 'abc'"):
        run_pipeline(m, "specialize{seq=abc}")
