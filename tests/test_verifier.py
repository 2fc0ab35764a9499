"""Verifier messages name the op (with file:line:col when parsed) and say what is wrong."""
import pytest

import ckir
from ckir import TensorType, VerifyError, new_graph
from ckir.ir import Op

HEAD = "module @m {\n  graph @g(%x: tensor<2x3xf32>, %y: tensor<3xf32>) -> (out: tensor<2x3xf32>) {\n"
TAIL = "    %r = nn.neg %x : (tensor<2x3xf32>) -> tensor<2x3xf32>\n    ckir.return %r : (tensor<2x3xf32>) -> ()\n  }\n}\n"


@pytest.mark.parametrize("body,msg", [
    ("    %0 = nn.add %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x4xf32>\n",
     r"m.ckir:3:5 nn.add: result 0 has type tensor<2x4xf32>, but the operands give tensor<2x3xf32>"),
    ("    %0 = nn.matmul %x, %x : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>\n",
     r"m.ckir:3:5 nn.matmul: contraction dims differ: tensor<2x3xf32> @ tensor<2x3xf32> \(K = 3 vs 2\)"),
    ("    %0 = nn.sum %x {axes = [5]} : (tensor<2x3xf32>) -> tensor<2x3xf32>\n",
     r"m.ckir:3:5 nn.sum: axis 5 is out of range for rank 2"),
    ("    %0 = nn.not %x : (tensor<2x3xf32>) -> tensor<2x3xf32>\n",
     r"m.ckir:3:5 nn.not: operand 'x' has dtype f32, allowed: bool"),
    ("    %0 = nn.add %x : (tensor<2x3xf32>) -> tensor<2x3xf32>\n",
     r"m.ckir:3:5 nn.add: expects 2 operands, got 1"),
    ("    %0 = nn.neg %x : (tensor<2x3xf32>) -> tensor<2x3xf32> loc(\"Neg_7\")\n    ckir.return %0 : (tensor<2x3xf32>) -> ()\n",
     r"m.ckir:4:5 ckir.return: terminator in the middle of graph @g"),
])
def test_verifier_messages(body, msg):
    # the parser accepts these (it checks syntax and annotations); the verifier rejects them
    m = ckir.parse(HEAD + body + TAIL, filename="m.ckir")
    with pytest.raises(VerifyError, match=msg):
        ckir.verify(m)


def test_location_appears_in_messages():
    m = ckir.parse(HEAD + "    %0 = nn.add %x, %y : (tensor<2x3xf32>, tensor<3xf32>) -> tensor<2x4xf32> loc(\"Add_3\")\n"
                   + TAIL, filename="m.ckir")
    with pytest.raises(VerifyError, match=r'm.ckir:3:5 nn.add loc\("Add_3"\): result 0 has type'):
        ckir.verify(m)


def _graph():
    g, b = new_graph("main", {"x": TensorType([3], "f32")})
    return g, b


def _module(g):
    m = ckir.Module()
    m.add_graph(g)
    return m


def test_missing_terminator_and_names():
    g, b = _graph()
    b.nn.neg(g.inputs[0])
    with pytest.raises(VerifyError, match="graph @main: does not end with ckir.return"):
        ckir.verify(_module(g))
    g2 = ckir.Graph("g", [TensorType([3], "f32")] * 2, ["a", "a"])
    g2.set_outputs([g2.inputs[0]], ["y"])
    with pytest.raises(VerifyError, match=r"graph @g: duplicate input names \['a'\]"):
        ckir.verify(_module(g2))
    with pytest.raises(VerifyError, match="module @module has no graph"):
        ckir.verify(ckir.Module())


def test_use_before_definition():
    g, b = _graph()
    a = b.nn.neg(g.inputs[0])
    c = b.nn.exp(a)
    g.set_outputs([c], ["y"])
    # move exp before neg: now it uses a value defined later
    g.detach(c.op)
    g.insert_before(a.op, c.op)
    with pytest.raises(VerifyError, match=r"nn.exp: operand 0 \(value #0 of nn.neg\) is not defined before this use"):
        ckir.verify(_module(g))


def test_value_from_another_graph():
    g, b = _graph()
    other, ob = _graph()
    v = ob.nn.neg(other.inputs[0])
    y = b.create("nn.exp", [v]).results[0]
    g.set_outputs([y], ["y"])
    with pytest.raises(VerifyError, match="nn.exp: operand 0 .* is not defined before this use"):
        ckir.verify(_module(g))


def test_stale_use_is_caught():
    g, b = _graph()
    a = b.nn.neg(g.inputs[0])
    g.set_outputs([a], ["y"])
    ghost = Op(ckir.get_op("nn.exp"), [a], [a.type])   # never inserted: a dangling use
    assert ghost.parent is None
    with pytest.raises(VerifyError, match="nn.neg: result 0 has a stale use by nn.exp"):
        ckir.verify(_module(g))


def test_symbol_bounds_must_agree():
    text = """module @m {
  graph @g(%x: tensor<[n<=4]xf32>, %y: tensor<[n<=8]xf32>) -> (y: tensor<[n<=4]xf32>) {
    ckir.return %x : (tensor<[n<=4]xf32>) -> ()
  }
}"""
    with pytest.raises(VerifyError, match="dim 'n' has bound 8 here but 4 elsewhere"):
        ckir.verify(ckir.parse(text))
