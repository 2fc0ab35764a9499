"""The ONNX importer: sources, weights by reference, external data safety, symbolic dims, and a
CkirError naming what is wrong for every kind of bad input."""
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ckir
from ckir import CkirError, InputError
from ckir.frontends.onnx import import_onnx
from ckir.ir import FileSource


def model(nodes, inputs, outputs, inits=(), opset=21, name="g"):
    g = helper.make_graph(nodes, name, inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


W = np.arange(12, dtype=np.float32).reshape(3, 4) / 10


def mlp_model():
    return model([helper.make_node("Add", ["x", "w"], ["h"], name="add0"),
                  helper.make_node("Relu", ["h"], ["y"], name="relu0")],
                 [vi("x", ["batch", 4])], [vi("y", ["batch", 4])],
                 [numpy_helper.from_array(W[:1], "w")])


def test_sources_path_bytes_proto(tmp_path):
    m = mlp_model()
    p = tmp_path / "mlp.onnx"
    onnx.save(m, p)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    want = np.maximum(x + W[:1], 0)
    for src in (str(p), m, m.SerializeToString()):
        mod = ckir.load(src) if not isinstance(src, bytes) else import_onnx(src)
        np.testing.assert_array_equal(ckir.compile(mod)(x)["y"], want)
    mod = ckir.load(str(p))
    assert "tensor<[batch]x4xf32>" in mod.print() and 'loc("add0")' in mod.print()


def test_symbolic_dims_run_at_any_size():
    f = ckir.compile(import_onnx(mlp_model()))
    for n in (1, 7):
        x = np.ones((n, 4), np.float32)
        assert f(x)["y"].shape == (n, 4)
    with pytest.raises(InputError, match=r"input 'x': dim 1 is 5, type tensor<\[batch\]x4xf32> says 4"):
        f(np.ones((2, 5), np.float32))
    with pytest.raises(InputError, match="input 'x': expected f32, got float64"):
        f(np.ones((2, 4)))
    with pytest.raises(InputError, match=r"has no input 'z' \(inputs: x\)"):
        f(z=np.ones((2, 4), np.float32))


def test_float_initializers_are_weights_small_integer_ones_constants():
    """A float initializer is a parameter however small (a bias must get a gradient); a small
    integer one (a shape, an axis list) is a constant passes can fold."""
    big = np.ones((20, 20), np.float32)
    m = model([helper.make_node("Add", ["x", "big"], ["h"]), helper.make_node("Mul", ["h", "s"], ["h2"]),
               helper.make_node("Reshape", ["h2", "shape"], ["y"])],
              [vi("x", [20, 20])], [vi("y", [400])],
              [numpy_helper.from_array(big, "big"), numpy_helper.from_array(np.float32(2), "s"),
               numpy_helper.from_array(np.array([400], np.int64), "shape")])
    mod = import_onnx(m)
    assert list(mod.weights) == ["big", "s"]
    text = mod.print()
    assert "weight @big : tensor<20x20xf32> = memory" in text and "nn.constant" in text
    assert ckir.compile(mod)(big)["y"].shape == (400,)     # the shape was known statically


def _external_model(tmp_path, location):
    t = numpy_helper.from_array(np.arange(100, dtype=np.float32), "w")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "64"), ("length", "400")):
        e = t.external_data.add()
        e.key, e.value = k, v
    m = model([helper.make_node("Add", ["x", "w"], ["y"])], [vi("x", [100])], [vi("y", [100])], [t])
    path = tmp_path / "model.onnx"
    onnx.save(m, path)
    return path


def test_external_data_is_memory_mapped(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 64 + np.arange(100, dtype=np.float32).tobytes())
    mod = ckir.load(str(_external_model(tmp_path, "weights.bin")))
    w = mod.weights["w"]
    assert isinstance(w.data, FileSource) and w.data.offset == 64
    assert isinstance(w.array(mod.base_dir), np.memmap)
    np.testing.assert_array_equal(ckir.compile(mod)(np.ones(100, np.float32))["y"], np.arange(100) + 1)


@pytest.mark.parametrize("location,msg", [
    ("../secret.bin", "leaves the model's directory"),
    ("/etc/passwd", "must be relative to the model's directory"),
    ("sub/../../x.bin", "leaves the model's directory"),
    ("missing.bin", "external data file 'missing.bin' not found"),
])
def test_external_data_paths_are_confined(tmp_path, location, msg):
    with pytest.raises(CkirError, match=f"initializer w: .*{msg}"):
        ckir.load(str(_external_model(tmp_path, location)))


def test_external_data_symlink_out_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w.bin").write_bytes(b"\0" * 464)
    inside = tmp_path / "model"
    inside.mkdir()
    os.symlink(outside / "w.bin", inside / "w.bin")
    with pytest.raises(CkirError, match="resolves outside the model's directory"):
        ckir.load(str(_external_model(inside, "w.bin")))


def test_external_data_too_short(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"\0" * 100)
    with pytest.raises(CkirError, match="w.bin is too short for offset 64 \\+ 400 bytes"):
        ckir.load(str(_external_model(tmp_path, "w.bin")))


def test_garbage_and_truncated_files(tmp_path):
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"\x08\x07garbage\xff\xff\xff")
    with pytest.raises(CkirError, match="bad.onnx: not an ONNX model"):
        ckir.load(str(p))
    good = mlp_model().SerializeToString()
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(CkirError, match="bad.onnx: not an ONNX model"):
        ckir.load(str(p))
    with pytest.raises(CkirError, match="no such file"):
        ckir.load(str(tmp_path / "none.onnx"))


def test_checker_failures_are_reported():
    m = mlp_model()
    m.graph.node[0].input[1] = "nowhere"          # an input no one defines
    with pytest.raises(CkirError, match="fails onnx.checker: .*nowhere"):
        import_onnx(m)


def test_unknown_op_and_domain_name_the_node():
    m = model([helper.make_node("FrobnicateTensor", ["x"], ["y"], name="frob1")],
              [vi("x", [2])], [vi("y", [2])])
    with pytest.raises(CkirError, match=r"checker"):
        import_onnx(m)   # the checker already refuses an unknown ai.onnx op
    m = helper.make_model(helper.make_graph([helper.make_node("Frob", ["x"], ["y"], name="n7", domain="com.acme")],
                                            "g", [vi("x", [2])], [vi("y", [2])]),
                          opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.acme", 3)])
    with pytest.raises(CkirError, match=r"node 'n7' \(Frob, domain com.acme, opset 3\): unsupported op"):
        import_onnx(m)


def test_unsupported_types_are_named():
    m = model([helper.make_node("Identity", ["x"], ["y"])], [vi("x", [2], TensorProto.COMPLEX64)],
              [vi("y", [2], TensorProto.COMPLEX64)])
    with pytest.raises(CkirError, match="graph input x: ONNX element type COMPLEX64 is not supported"):
        import_onnx(m)


def test_backend_api():
    from ckir.frontends.onnx import backend
    assert backend.supports_device("CPU") and not backend.supports_device("CUDA")
    rep = backend.prepare(mlp_model())
    x = np.ones((3, 4), np.float32)
    np.testing.assert_array_equal(rep.run([x])[0], np.maximum(x + W[:1], 0))
    node = helper.make_node("Add", ["a", "b"], ["c"])
    out = backend.run_node(node, [np.ones(3, np.float32), np.full(3, 2, np.float32)])
    np.testing.assert_array_equal(out[0], [3, 3, 3])


def test_cli_opt_and_run_on_onnx(tmp_path, capsys):
    from ckir.cli import main
    p = tmp_path / "mlp.onnx"
    onnx.save(mlp_model(), p)
    assert main(["opt", str(p), "--passes", "canonicalize,cse,dce", "-o", str(tmp_path / "out.ckir")]) == 0
    back = ckir.load(str(tmp_path / "out.ckir"))
    np.testing.assert_array_equal(ckir.compile(back)(np.ones((2, 4), np.float32))["y"],
                                  np.maximum(1 + W[:1], 0).repeat(2, 0))
    assert main(["run", str(p), "--random", "--bind", "batch=3"]) == 0
    assert "y: float32[3, 4]" in capsys.readouterr().out
