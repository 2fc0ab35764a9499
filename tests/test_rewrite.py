"""Patterns and the greedy driver: matching, convergence, the iteration cap, statistics."""
import numpy as np
import pytest

import ckir
from ckir import CkirError, P, Rule, apply_patterns
from helpers import module_from, rand, run

F3 = ((3,), "f32")


def ops(m):
    return [op.name for op in m.main if op.name != "ckir.return"]


def test_pattern_matches_and_captures():
    m = module_from(lambda b, x: b.nn.mul(b.nn.sigmoid(x), x), {"x": F3})
    rules = [P("nn.mul", P.var("x"), P("nn.sigmoid", P.var("x"))) >> (lambda b, x: b.nn.silu(x))]
    res = apply_patterns(m, rules)
    assert ops(m) == ["nn.silu"]                     # matched with operands swapped (commutative)
    assert res.converged and res.applied == {"nn.mul(x, nn.sigmoid(x))": 1} and res.erased == 1


def test_same_name_must_bind_the_same_value():
    m = module_from(lambda b, x, y: b.nn.mul(x, b.nn.sigmoid(y)), {"x": F3, "y": F3})
    rules = [P("nn.mul", P.var("x"), P("nn.sigmoid", P.var("x"))) >> (lambda b, x: b.nn.silu(x))]
    assert not apply_patterns(m, rules).changed
    assert ops(m) == ["nn.sigmoid", "nn.mul"]


def test_attribute_constraints_and_const_capture():
    def build(b, x):
        return b.nn.add(b.nn.sum(x, axes=[0]), b.nn.sum(x, axes=[0], keepdims=True))
    m = module_from(build, {"x": ((2, 3), "f32")})
    seen = []
    rules = [P("nn.sum", P.var("x"), keepdims=True) >> (lambda x: seen.append("keep")),
             P("nn.sum", P.var("x"), axes=lambda a: a == (0,), keepdims=False) >> (lambda x: seen.append("drop"))]
    apply_patterns(m, rules)
    assert sorted(seen) == ["drop", "keep"]
    m2 = module_from(lambda b, x: b.nn.mul(x, 3.0), {"x": F3})
    got = []
    apply_patterns(m2, [P("nn.mul", P.var("x"), P.const(name="c")) >> (lambda x, c: got.append(c))])
    assert got and got[0] == np.float32(3.0)


def test_iteration_cap_and_non_convergence():
    # two rules that undo each other: neg(x) -> neg(neg(neg(x))) -> ... never converges
    m = module_from(lambda b, x: b.nn.exp(x), {"x": F3})
    flip = [Rule("nn.exp", lambda op, b: b.nn.sin(op.operands[0]), "exp->sin"),
            Rule("nn.sin", lambda op, b: b.nn.exp(op.operands[0]), "sin->exp")]
    res = apply_patterns(m, flip, max_iterations=3, max_rewrites=5)
    assert not res.converged
    assert sum(res.applied.values()) == 6          # capped at max_rewrites + 1 in the first iteration
    ckir.verify(m)                                   # still valid IR


def test_converges_in_bounded_iterations_with_statistics():
    def build(b, x):
        y = x
        for _ in range(5):
            y = b.nn.neg(b.nn.neg(y))
        return y
    m = module_from(build, {"x": F3})
    res = apply_patterns(m, [P("nn.neg", P("nn.neg", P.var("x"))) >> (lambda x: x)])
    assert res.converged and res.iterations == 2 and res.applied["nn.neg(nn.neg(x))"] == 5
    assert ops(m) == []


def test_replacement_type_is_checked():
    m = module_from(lambda b, x: b.nn.exp(x), {"x": F3})
    bad = [Rule("nn.exp", lambda op, b: b.nn.sum(op.operands[0]), "bad")]
    with pytest.raises(CkirError, match=r"rule bad replaced a tensor<3xf32> result of .*nn.exp with a tensor<f32> value"):
        apply_patterns(m, bad)
    wrong_count = [Rule("nn.exp", lambda op, b: [op.operands[0], op.operands[0]], "two")]
    with pytest.raises(CkirError, match="rule two returned 2 values for nn.exp with 1 results"):
        apply_patterns(m, wrong_count)


def test_rule_that_creates_ops_must_return_them():
    m = module_from(lambda b, x: b.nn.exp(x), {"x": F3})
    sloppy = [Rule("nn.exp", lambda op, b: (b.nn.sin(op.operands[0]), None)[1], "sloppy")]
    with pytest.raises(CkirError, match="rule sloppy created ops but returned None"):
        apply_patterns(m, sloppy)


def test_rewrite_keeps_semantics_on_users_of_the_replacement():
    # the replacement uses the matched op's own operand; other users must be rewired too
    def build(b, x):
        n = b.nn.neg(b.nn.neg(x))
        return b.nn.add(n, n), b.nn.exp(n)
    m = module_from(build, {"x": F3})
    x = rand(3)
    before = run(m, x)
    apply_patterns(m, [P("nn.neg", P("nn.neg", P.var("x"))) >> (lambda x: x)])
    after = run(m, x)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    assert ops(m) == ["nn.add", "nn.exp"]


def test_rewrites_inside_regions():
    from test_ir import REGION_IR
    m = ckir.parse(REGION_IR.replace("%2 = nn.exp %1", "%9 = nn.neg %1 : (tensor<3xf32>) -> tensor<3xf32>\n"
                                     "      %8 = nn.neg %9 : (tensor<3xf32>) -> tensor<3xf32>\n      %2 = nn.exp %8"))
    ckir.verify(m)
    res = apply_patterns(m, [P("nn.neg", P("nn.neg", P.var("x"))) >> (lambda x: x)])
    assert res.applied["nn.neg(nn.neg(x))"] == 1
    ckir.verify(m)
    assert "nn.neg" not in m.print()
