"""The interpreter checks inputs against the signature and results against declared types."""
import numpy as np
import pytest

import ckir
from ckir import InputError, Sym
from helpers import module_from, rand


@pytest.fixture
def f():
    m = module_from(lambda b, x, y: b.nn.add(x, y), {"x": ((Sym("n", 8), 3), "f32"), "y": ((Sym("n", 8), 1), "f32")},
                    outputs=["sum"])
    return ckir.compile(m)


def test_call_by_position_and_name(f):
    x, y = rand(2, 3), rand(2, 1)
    np.testing.assert_array_equal(f(x, y)["sum"], x + y)
    np.testing.assert_array_equal(f(y=y, x=x)["sum"], x + y)
    np.testing.assert_array_equal(f(x, y=y)["sum"], x + y)
    assert f.input_names == ["x", "y"] and f.output_names == ["sum"]


@pytest.mark.parametrize("args,kw,msg", [
    ((), {}, "missing inputs x, y for graph @main"),
    ((rand(2, 3),), {}, "missing input y"),
    ((rand(2, 3), rand(2, 1), rand(1)), {}, "takes 2 inputs, got 3"),
    ((rand(2, 3),), {"z": rand(2, 1)}, r"has no input 'z' \(inputs: x, y\)"),
    ((rand(2, 3), rand(2, 1)), {"x": rand(2, 3)}, "input 'x' given twice"),
    ((rand(2, 3, dtype=np.float64), rand(2, 1)), {}, "input 'x': expected f32, got float64"),
    ((rand(2, 4), rand(2, 1)), {}, r"input 'x': dim 1 is 4, type tensor<\[n<=8\]x3xf32> says 3"),
    ((rand(3), rand(2, 1)), {}, "input 'x': expected rank 2"),
    ((rand(2, 3), rand(3, 1)), {}, r"input 'y': dim 0 \(n\) is 3, but n = 2 elsewhere"),
    ((rand(9, 3), rand(9, 1)), {}, r"input 'x': dim 0 \(n\) is 9, above its bound 8"),
    (("text", rand(2, 1)), {}, "input 'x': expected a numpy array, got str"),
])
def test_bad_inputs_are_named(f, args, kw, msg):
    with pytest.raises(InputError, match=msg):
        f(*args, **kw)


def test_lists_are_accepted_with_the_declared_dtype(f):
    out = f([[1, 2, 3]], [[1]])["sum"]
    assert out.dtype == np.float32 and out.tolist() == [[2, 3, 4]]


def test_wrong_shape_rule_is_caught_at_run_time(monkeypatch):
    """The interpreter checks every result against its declared type, so a shape rule that
    disagrees with the reference is caught the first time it runs."""
    m = module_from(lambda b, x: b.nn.exp(x), {"x": ((2, 3), "f32")})
    od = ckir.get_op("nn.exp")
    monkeypatch.setattr(od, "_ref", lambda x: np.exp(x).T.copy())
    with pytest.raises(ckir.CkirError, match=r"nn.exp: result 0: dim 0 is 3, type tensor<2x3xf32> says 2"):
        ckir.compile(m)(rand(2, 3))
    monkeypatch.setattr(od, "_ref", lambda x: np.exp(x).astype(np.float64))
    with pytest.raises(ckir.CkirError, match="nn.exp: result 0: expected f32, got float64"):
        ckir.compile(m)(rand(2, 3))


def test_run_time_errors_name_the_op():
    with pytest.raises(ckir.ShapeError, match=r"nn.reshape: cannot reshape tensor<\[n\]x3xf32> to \[n, 5\]: the sizes differ"):
        module_from(lambda b, x: b.nn.reshape(x, shape=["n", 5]), {"x": ((Sym("n"), 3), "f32")})
    m = module_from(lambda b, x: b.nn.reshape(x, shape=[-1, 5]), {"x": ((Sym("n"), 3), "f32")})
    with pytest.raises(ckir.CkirError, match=r"nn.reshape: cannot reshape an array of shape \[2, 3\] to \[-1, 5\]"):
        ckir.compile(m)(rand(2, 3))


def test_unknown_backend():
    m = module_from(lambda b, x: x, {"x": ((2,), "f32")})
    with pytest.raises(ckir.CkirError, match=r"unknown backend 'gpu' \(available: interp, llvm\)"):
        ckir.compile(m, backend="gpu")
    with pytest.raises(ckir.CkirError, match="compile expects a Module, got str"):
        ckir.compile("model.onnx")


def test_anonymous_bounded_dims_are_checked():
    """`[?<=n]` (e.g. what nn.slice_dyn gives for a slice of n) accepts any size up to n."""
    m = ckir.parse("""module @m {
  graph @main(%x: tensor<[?<=8]x4xf32>) -> (y: tensor<[?<=8]x4xf32>) {
    %0 = nn.neg %x : (tensor<[?<=8]x4xf32>) -> tensor<[?<=8]x4xf32>
    ckir.return %0 : (tensor<[?<=8]x4xf32>) -> ()
  }
}""")
    f = ckir.compile(m)
    assert f(np.ones((8, 4), np.float32))["y"].shape == (8, 4)
    with pytest.raises(ckir.CkirError, match=r"dim 0 is 9, above its bound 8"):
        f(np.ones((9, 4), np.float32))
