"""Text IR: round-trips, parse errors with file:line:col, and fuzzing (only CkirError escapes)."""
import glob
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckir
from ckir import CkirError, ParseError

GOOD = """module @m {
  weight @w : tensor<2x2xf32> = dense<[[1.0, 2.0], [3.0, 4.0]]>
  graph @main(%x: tensor<[n<=8]x2xf32>, %"odd name": tensor<2xf32>) -> (y: tensor<[n<=8]x2xf32>, "out:2": tensor<2xf32>) {
    %0 = ckir.weight {name = @w} : () -> tensor<2x2xf32>
    %1 = nn.matmul %x, %0 {transpose_b = true} : (tensor<[n<=8]x2xf32>, tensor<2x2xf32>) -> tensor<[n<=8]x2xf32> loc("MatMul_0")
    %2 = nn.constant {value = dense<[inf, -inf]> : tensor<2xf32>} : () -> tensor<2xf32>
    %3 = nn.minimum %"odd name", %2 : (tensor<2xf32>, tensor<2xf32>) -> tensor<2xf32>
    %4 = nn.sum %1 {axes = [-1], keepdims = true} : (tensor<[n<=8]x2xf32>) -> tensor<[n<=8]x1xf32>
    %5 = nn.reshape %4 {shape = [n, 1]} : (tensor<[n<=8]x1xf32>) -> tensor<[n<=8]x1xf32>
    %6 = nn.add %1, %5 : (tensor<[n<=8]x2xf32>, tensor<[n<=8]x1xf32>) -> tensor<[n<=8]x2xf32>
    ckir.return %6, %3 : (tensor<[n<=8]x2xf32>, tensor<2xf32>) -> ()
  }
}
"""


def test_roundtrip_identical_and_runs():
    m = ckir.parse(GOOD)
    assert m.print() == GOOD
    ckir.verify(m)
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = ckir.compile(m)(x, np.array([1, 2], np.float32))
    w = np.array([[1, 2], [3, 4]], np.float32)
    y = x @ w.T
    np.testing.assert_allclose(out["y"], y + y.sum(-1, keepdims=True))
    np.testing.assert_array_equal(out["out:2"], [1, -np.inf])
    assert ckir.compile(m).input_names == ["x", "odd name"]


def test_names_are_made_unique_and_stable():
    g, b = ckir.new_graph("main", {"x": ckir.TensorType([2], "f32")})
    a = b.nn.neg(g.inputs[0])
    a.name = "x"                     # clashes with the input
    c = b.nn.neg(a)
    c.name = "x_1"
    g.set_outputs([c], ["y"])
    m = ckir.Module()
    m.add_graph(g)
    text = m.print()
    assert "%x_1 = nn.neg %x :" in text and "%x_1_1 = nn.neg %x_1 :" in text
    assert ckir.parse(text).print() == text


def test_large_constants_print_as_hex_and_roundtrip():
    arr = np.random.default_rng(0).standard_normal((10, 10)).astype(np.float32)
    g, b = ckir.new_graph("main", {})
    g.set_outputs([b.constant(arr), b.constant(arr.astype(ckir.dtypes.bf16.np)),
                   b.constant(np.array([True, False])), b.constant(np.int8(-3))], ["a", "b", "c", "d"])
    m = ckir.Module()
    m.add_graph(g)
    text = m.print()
    assert 'dense<"0x' in text
    out = ckir.compile(ckir.parse(text))()
    np.testing.assert_array_equal(out["a"], arr)
    assert out["b"].dtype == ckir.dtypes.bf16.np and out["d"] == -3


def test_examples_dir_roundtrips():
    files = glob.glob(os.path.join(os.path.dirname(__file__), "..", "examples", "*.ckir"))
    assert files
    for f in files:
        m = ckir.load(f)
        assert ckir.parse(m.print()).print() == m.print()


BAD = [
    ("", r"<string>:1:1: expected 'module', got end of input"),
    ("module m {}", r"1:8: expected a module name like @model, got 'm'"),
    ("module @m {\n  graph @g() -> () {\n  }\n}", r"2:9: graph @g does not end with ckir.return"),
    ("module @m {\n  graph @g(%x: tensor<2xf32>) -> (y: tensor<2xf32>) {\n    %0 = nn.nope %x : (tensor<2xf32>) -> tensor<2xf32>\n",
     r"3:10: unknown op 'nn.nope'"),
    ("module @m {\n  graph @g(%x: tensor<2xf32>) -> (y: tensor<2xf32>) {\n    %0 = nn.neg %z : (tensor<2xf32>) -> tensor<2xf32>\n",
     r"3:17: use of undefined value %z"),
    ("module @m {\n  graph @g(%x: tensor<2xf32>) -> (y: tensor<2xf32>) {\n    %x = nn.neg %x : (tensor<2xf32>) -> tensor<2xf32>\n",
     r"3:5: value %x defined twice"),
    ("module @m {\n  graph @g(%x: tensor<2xf32>) -> (y: tensor<2xf32>) {\n    %0 = nn.neg %x : (tensor<3xf32>) -> tensor<2xf32>\n",
     r"3:10: nn.neg: operand 0 has type tensor<2xf32>, annotated as tensor<3xf32>"),
    ("module @m {\n  graph @g(%x: tensor<2xf32>) -> (y: tensor<2xf32>) {\n    %0 = nn.sum %x {axis = 1} : (tensor<2xf32>) -> tensor<f32>\n",
     r"3:10: nn.sum: unknown attribute 'axis' \(attributes: axes, keepdims\)"),
    ("module @m {\n  graph @g(%x: tensor<2xf32>) -> (y: tensor<2xf32>) {\n    %0 = nn.sum %x {keepdims = 3} : (tensor<2xf32>) -> tensor<f32>\n",
     r"3:10: nn.sum: attribute 'keepdims' \(bool\): expected true or false, got 3"),
    ("module @m {\n  graph @g(%x: tensor<2xf32>) -> (y: tensor<2xf32>) {\n    %0 = nn.gelu %x {approximate = tanh} : (tensor<2xf32>) -> tensor<2xf32>\n",
     r"nn.gelu: attribute 'approximate' \(str\): expected a quoted string, got tanh"),
    ("module @m {\n  graph @g(%x: tensor<2xf32>) -> (y: tensor<2xf32>) {\n    %0 = nn.cast %x : (tensor<2xf32>) -> tensor<2xf32>\n",
     r"3:10: nn.cast: missing required attribute 'to'"),
    ("module @m {\n  graph @g(%x: tensor<2xf32>) -> (y: tensor<2xf32>) {\n    %0 = nn.neg %x : (tensor<2xf33>) -> tensor<2xf32>\n",
     r"3:23: bad tensor type 'tensor<2xf33>': 'f33' is not a dtype"),
    ("module @m {\n  graph @g(%x: tensor<2xf32>) -> (y: tensor<2xf32>) {\n    %0 = nn.neg %x : (tensor<2xf32>) -> tensor<2xf32>\n",
     r"4:1: unexpected end of input: missing '}'"),
    ("module @m {\n  graph @g(%x: tensor<2xf32>) -> (y: tensor<3xf32>) {\n    ckir.return %x : (tensor<2xf32>) -> ()\n  }\n}",
     r"2:9: graph @g: output y is declared tensor<3xf32> but returns tensor<2xf32>"),
    ("module @m {\n  weight @w : tensor<2xf32> = dense<[1.0]>\n}", r"2:31: dense value has shape \[1\], type tensor<2xf32> says \[2\]"),
    ("module @m {\n  weight @w : tensor<2xf32> = file(\"a.bin\", offset = -3)\n}", r"2:54: offset must be a non-negative integer"),
    ("module @m {\n  weight @w : tensor<2xf32> = dense<[1.0, 2.0]>\n  weight @w : tensor<2xf32> = memory\n}",
     r"3:10: weight @w defined twice"),
    ("module @m {\n  graph @g(%x: tensor<2xf32>) -> (y: tensor<2xf32>) {\n    %0 = nn.neg %x : (tensor<2xf32>) -> tensor<2xf32> loc(3)\n",
     r"3:59: expected a location string, got '3'"),
    ("module @m {\n  graph @g(%x: tensor<2xf32>) -> (y: tensor<2xf32>) {\n    %0 = nn.neg %x # : (tensor<2xf32>) -> tensor<2xf32>\n",
     r"3:20: expected ':' and the type signature of nn.neg, got invalid character '#'"),
    ("module @m {\n  weight @w : tensor<f16> = dense<1.0e10>\n}", r"2:29: dense value <1.0e10> is out of range for f16"),
    ("module @m {\n  weight @w : tensor<i8> = dense<300>\n}", r"2:28: dense value <300> is not a regular array of i8"),
    ("module @m {} trailing", r"1:14: unexpected 'trailing' after the module"),
]


@pytest.mark.parametrize("text,msg", BAD)
def test_parse_errors_name_the_place(text, msg):
    with pytest.raises(ParseError, match=msg):
        ckir.parse(text)


def test_filename_in_errors(tmp_path):
    p = tmp_path / "bad.ckir"
    p.write_text("module @m {\n  oops\n}\n")
    with pytest.raises(ParseError, match=r"bad.ckir:2:3: expected 'weight', 'state', 'graph' or '}', got 'oops'"):
        ckir.load(str(p))


def test_non_utf8_file(tmp_path):
    p = tmp_path / "bin.ckir"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CkirError, match="not a text IR file"):
        ckir.load(str(p))


def test_deep_nesting_is_an_error_not_a_crash():
    with pytest.raises(ParseError):
        ckir.parse("module @m { graph @g() -> () { %0 = nn.constant {value = " + "[" * 5000 + "]" * 5000 + "} ")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data):
    try:
        ckir.parse(data.decode("utf-8", errors="replace"))
    except CkirError:
        pass


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_valid_ir(data):
    text = GOOD
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 12)))
        repl = data.draw(st.sampled_from(["", "%", "@", "{", "}", "(", ")", "[", "]", ",", "=", ":", "->",
                                          "x", "?", "-1", "1e999", '"', "tensor<", "dense<", "0x", "nn.add",
                                          "%0", "%99", "true", "nan", "\n", "\\", "<=", "9" * 30]))
        text = text[:i] + repl + text[j:]
    try:
        m = ckir.parse(text)
        ckir.verify(m)
        m.print()
    except CkirError:
        pass


def test_narrow_float_and_empty_literals_roundtrip():
    import ml_dtypes
    g, b = ckir.new_graph("main", {})
    vals = [np.array([2.0, -0.5], ml_dtypes.bfloat16), np.float16(1.5), np.zeros((0, 5), np.int64),
            np.zeros((2, 0), np.float32), np.array([0.25], ml_dtypes.float8_e4m3fn)]
    g.set_outputs([b.constant(v) for v in vals], [f"c{i}" for i in range(len(vals))])
    m = ckir.Module()
    m.add_graph(g)
    text = m.print()
    assert ckir.parse(text).print() == text
    out = ckir.compile(ckir.parse(text))()
    for i, v in enumerate(vals):
        assert out[f"c{i}"].dtype == np.asarray(v).dtype and out[f"c{i}"].shape == np.shape(v)
        np.testing.assert_array_equal(out[f"c{i}"].astype(np.float64), np.asarray(v).astype(np.float64))
