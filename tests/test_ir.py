"""The IR's mutation API keeps use-def chains consistent; weights; regions; save/load."""
import os

import numpy as np
import pytest

import ckir
from ckir import Builder, CkirError, Module, TensorType, new_graph
from ckir.ir import FileSource, Op
from helpers import rand, run

F = (lambda *s: TensorType(s, "f32"))


def test_build_insert_erase_and_uses():
    g, b = new_graph("main", {"x": F(3)})
    x = g.inputs[0]
    e = b.nn.exp(x)
    n = b.nn.neg(e)
    g.set_outputs([n], ["y"])
    assert [op.name for op in g] == ["nn.exp", "nn.neg", "ckir.return"]
    assert e.users == [n.op] and len(g) == 3
    # insert before/after
    t = Builder.before(n.op).nn.tanh(e)
    assert [op.name for op in g] == ["nn.exp", "nn.tanh", "nn.neg", "ckir.return"]
    Builder.after(n.op).nn.sin(n)
    assert [op.name for op in g] == ["nn.exp", "nn.tanh", "nn.neg", "nn.sin", "ckir.return"]
    # replace uses: neg now reads tanh
    n.op.set_operand(0, t)
    assert e.users == [t.op] and t.users == [n.op]
    with pytest.raises(CkirError, match="cannot erase nn.tanh: result 0 is still used by nn.neg"):
        t.op.erase()
    t.op.set_operand(0, x)
    e.op.erase()
    assert [op.name for op in g] == ["nn.tanh", "nn.neg", "nn.sin", "ckir.return"]
    assert x.users == [t.op]
    ckir.verify(_wrap(g))
    n.replace_all_uses_with(t)
    n.op.erase()
    assert g.outputs == (t,)


def _wrap(g):
    m = Module("w")
    m.add_graph(g)
    return m


def test_erase_while_iterating_and_reversed():
    g, b = new_graph("main", {"x": F(2)})
    vals = [g.inputs[0]]
    for _ in range(5):
        vals.append(b.nn.neg(vals[-1]))
    g.set_outputs([vals[1]], ["y"])
    for op in g.reversed():
        if op.name == "nn.neg" and not op.results[0].uses:
            op.erase()
    assert [op.name for op in g] == ["nn.neg", "ckir.return"]


def test_replace_with_checks_arity_and_detach_moves():
    g, b = new_graph("main", {"x": F(2)})
    a = b.nn.exp(g.inputs[0])
    c = b.nn.sin(a)
    g.set_outputs([c], ["y"])
    with pytest.raises(CkirError, match="1 results, got 2 values"):
        a.op.replace_with([g.inputs[0], g.inputs[0]])
    op = g.detach(c.op)
    g.insert_before(g.terminator, op)
    ckir.verify(_wrap(g))
    with pytest.raises(CkirError, match="already in a block"):
        g.append(op)


def test_operands_must_be_values():
    with pytest.raises(CkirError, match="operand 0 is ndarray, not a Value"):
        Op(ckir.get_op("nn.neg"), [np.zeros(2)], [F(2)])


def test_builder_infers_and_reports_shape_errors():
    g, b = new_graph("main", {"x": F(2, 3), "w": F(4, 5)})
    with pytest.raises(ckir.ShapeError, match=r"nn.matmul: contraction dims differ"):
        b.nn.matmul(*g.inputs)
    with pytest.raises(CkirError, match="nn.add: operands have different dtypes f32 and i32"):
        b.nn.add(g.inputs[0], b.constant(np.int32(1)))
    with pytest.raises(CkirError, match="nn.transpose: unknown attribute 'axes'"):
        b.nn.transpose(g.inputs[0], axes=[1, 0])
    with pytest.raises(CkirError, match="unknown op 'nn.frobnicate'"):
        b.nn.frobnicate(g.inputs[0])


def test_weight_op_roundtrip_and_run(tmp_path):
    w = rand(3, 40, seed=1)
    m = Module("wt")
    m.add_weight("w", w)
    g, b = new_graph("main", {"x": F(2, 3)})
    y = b.nn.matmul(g.inputs[0], b.weight(m, "w"))
    g.set_outputs([y], ["y"])
    m.add_graph(g)
    ckir.verify(m)
    x = rand(2, 3)
    np.testing.assert_allclose(run(m, x)["y"], x @ w, rtol=1e-6)
    # save writes the weight to a sidecar file; loading memory-maps it back
    path = tmp_path / "wt.ckir"
    ckir.save(m, str(path))
    text = path.read_text()
    assert 'weight @w : tensor<3x40xf32> = file("wt.ckir.bin", offset = 0)' in text
    m2 = ckir.load(str(path))
    arr = m2.weights["w"].array(m2.base_dir)
    assert isinstance(arr, np.memmap)
    np.testing.assert_array_equal(run(m2, x)["y"], run(m, x)["y"])
    # printing from memory keeps big weights out of the text; tiny ones print inline
    assert "weight @w : tensor<3x40xf32> = memory" in m.print()
    m.add_weight("tiny", np.ones(4, np.float32))
    assert "weight @tiny : tensor<4xf32> = dense<[1.0, 1.0, 1.0, 1.0]>" in m.print()


def test_weight_errors(tmp_path):
    m = ckir.parse("""module @m {
  weight @w : tensor<1024xf32> = file("missing.bin", offset = 0)
  weight @v : tensor<1024xf32> = memory
  graph @main() -> (y: tensor<1024xf32>) {
    %0 = ckir.weight {name = @w} : () -> tensor<1024xf32>
    ckir.return %0 : (tensor<1024xf32>) -> ()
  }
}""")
    m.base_dir = str(tmp_path)
    with pytest.raises(CkirError, match="weight @w: cannot open .*missing.bin"):
        run(m)
    (tmp_path / "missing.bin").write_bytes(b"\0" * 100)
    with pytest.raises(CkirError, match=r"weight @w: .*missing.bin has 100 bytes, needs 4096"):
        m.weights["w"]._cached = None
        run(m)
    with pytest.raises(CkirError, match="weight @v has no data: it was printed from memory"):
        m.weights["v"].array()


def test_weight_type_checked_by_verifier():
    m = ckir.parse("""module @m {
  weight @w : tensor<2xf32> = dense<[1.0, 2.0]>
  graph @main() -> (y: tensor<3xf32>) {
    %0 = ckir.weight {name = @w} : () -> tensor<3xf32>
    ckir.return %0 : (tensor<3xf32>) -> ()
  }
}""", filename="m.ckir")
    with pytest.raises(ckir.VerifyError, match=r"m.ckir:4:5 ckir.weight: weight @w is tensor<2xf32>, the op says tensor<3xf32>"):
        ckir.verify(m)


REGION_IR = """module @r {
  graph @main(%x: tensor<3xf32>, %y: tensor<3xf32>) -> (z: tensor<3xf32>) {
    %0 = test.call %x, %y (%a: tensor<3xf32>, %b: tensor<3xf32>) {
      %1 = nn.mul %a, %b : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32>
      %2 = nn.exp %1 : (tensor<3xf32>) -> tensor<3xf32>
      ckir.return %2 : (tensor<3xf32>) -> ()
    } : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32>
    ckir.return %0 : (tensor<3xf32>) -> ()
  }
}
"""


def test_region_roundtrip_run_and_walk():
    m = ckir.parse(REGION_IR)
    assert m.print() == REGION_IR
    ckir.verify(m)
    assert [op.name for op in m.walk()] == ["test.call", "nn.mul", "nn.exp", "ckir.return", "ckir.return"]
    x, y = rand(3), rand(3, seed=2)
    np.testing.assert_allclose(run(m, x, y)["z"], np.exp(x * y), rtol=1e-6)
    # cse/dce/canonicalize look inside regions
    ckir.run_pipeline(m, "canonicalize,cse,dce")
    ckir.verify(m)


def test_region_is_isolated_from_above():
    bad = REGION_IR.replace("%1 = nn.mul %a, %b", "%1 = nn.mul %a, %x")
    m = ckir.parse(bad)
    with pytest.raises(ckir.VerifyError, match=r"operand 1 \(%x\) is defined outside this region"):
        ckir.verify(m)


def test_clone_is_independent():
    m = ckir.load(os.path.join(os.path.dirname(__file__), "..", "examples", "mlp.ckir"))
    c = m.clone()
    ckir.run_pipeline(c, "canonicalize,cse,dce")
    assert c.num_ops() < m.num_ops()
    x = rand(2, 4)
    np.testing.assert_allclose(run(c, x)["logits"], run(m, x)["logits"], rtol=1e-6)


def test_file_source_offsets(tmp_path):
    data = np.arange(10, dtype=np.float32)
    (tmp_path / "w.bin").write_bytes(b"\xff" * 8 + data.tobytes())
    m = Module("f")
    m.add_weight("w", TensorType([10], "f32"), FileSource("w.bin", 8))
    m.base_dir = str(tmp_path)
    g, b = new_graph("main", {})
    g.set_outputs([b.weight(m, "w")], ["w"])
    m.add_graph(g)
    np.testing.assert_array_equal(run(m)["w"], data)
