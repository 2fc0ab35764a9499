"""String tensors (the `string` dtype: object arrays of str), the string ops of
dialects/nn/strings.py, string equality and string LabelEncoders, their ONNX converters
(frontends/onnx/ops/strings.py, signal.py), and nn.dropout with a run-time training flag.

Oracles: onnx.reference (Python's str and re, which produced the ONNX test data) and
onnxruntime (C++, RE2). Where the two disagree the ops follow the ONNX spec and the tests say
which oracle they match: RegexFullMatch uses ASCII classes as RE2 does (onnxruntime), string
splitting on whitespace uses str.split (onnx.reference; onnxruntime splits on spaces only),
StringNormalizer does not strip accents (onnx.reference does; the spec does not ask for it).
Strings compare exactly; dropout's float results to float32 rounding (rtol 1e-6).
"""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import ckir
from ckir import Module, TensorType, new_graph
from ckir.backends.interp import check_value
from ckir.dialects.nn.strings import strings
from ckir.errors import CkirError, InputError, ParseError
from ckir.frontends.onnx import backend
from ckir.frontends.onnx.importer import import_onnx
from ckir.opdef import Dense
from ckir.parser import parse_type
from ckir.printer import fmt_dense

S = TensorProto.STRING


# --- harness ----------------------------------------------------------------------------------------
def run(name, arrays, types=None, **attrs):
    """All results of one op run in the interpreter."""
    types = types or [TensorType(a.shape, a.dtype) for a in arrays]
    g, b = new_graph("main", {f"a{i}": t for i, t in enumerate(types)})
    op = b.create(name, list(g.inputs), attrs)
    g.set_outputs(op.results, [f"y{i}" for i in range(len(op.results))])
    m = Module("t")
    m.add_graph(g)
    out = ckir.compile(m)(*arrays)
    return [out[f"y{i}"] for i in range(len(op.results))]


def build(name, types, **attrs):
    g, b = new_graph("main", {f"a{i}": TensorType(*t) for i, t in enumerate(types)})
    return b.create(name, list(g.inputs), attrs)


def node_model(op_type, inputs, outputs, attrs=None, opset=20, domain="", inits=()):
    """inputs: {name: (elem type, shape)}; outputs: {name: elem type}."""
    node = helper.make_node(op_type, list(inputs), list(outputs), domain=domain, **(attrs or {}))
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(k, *v) for k, v in inputs.items()],
                          [helper.make_tensor_value_info(k, t, None) for k, t in outputs.items()],
                          list(inits))
    opsets = [helper.make_opsetid("", opset)]
    if domain:
        opsets = [helper.make_opsetid("", 20), helper.make_opsetid(domain, opset)]
    return finish(helper.make_model(g, opset_imports=opsets))


def finish(m):
    """Output shapes from ONNX shape inference (else the first input's: elementwise ops)."""
    m.ir_version = 9
    m = onnx.shape_inference.infer_shapes(m)
    for o in m.graph.output:
        if not o.type.tensor_type.HasField("shape"):
            o.type.tensor_type.shape.CopyFrom(m.graph.input[0].type.tensor_type.shape)
    onnx.checker.check_model(m)
    return m


def ckir_run(model, feeds):
    return list(backend.prepare(model).run(feeds))


def ref_run(model, feeds):
    return ReferenceEvaluator(model).run(None, feeds)


def ort_run(model, feeds):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def same(got, want):
    """Equal values, shapes and kinds: strings as object arrays of str."""
    want = np.asarray(want)
    if want.dtype.kind in "OU":
        assert got.dtype == object and all(type(s) is str for s in got.flat), got
        want = want.astype(object)
    else:
        assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_array_equal(got, want)


# --- text IR ------------------------------------------------------------------------------------------
NASTY = ["", "plain", 'quote " and \\ backslash', "中文 and café", "emoji \U0001F600", "tab\tnew\nline",
         "\x00\x01\x1f\x7f", "> closes dense<", '"0xAB"', "0xAB", "\u2028\u2029", "\ud800 lone surrogate",
         "/ slash", "{braces} [brackets] %value @sym"]


def roundtrip_text(m):
    text = m.print()
    again = ckir.parse(text)
    assert again.print() == text
    ckir.verify(again)
    return text, again


def test_string_type_text():
    t = parse_type("tensor<2x?x[seq]xstring>")
    assert t.dtype is ckir.dtypes.string and str(t) == "tensor<2x?x[seq]xstring>"
    assert ckir.dtypes.dtype(np.dtype(object)) is ckir.dtypes.string
    assert ckir.dtypes.string.nbytes(10) == 0 and TensorType([3], "string").nbytes() == 0


@pytest.mark.parametrize("shape", [(len(NASTY),), (2, 7), (), (2, 0), (0,)])
def test_dense_strings_roundtrip_exactly(shape):
    vals = NASTY[:int(np.prod(shape))] if shape != () else [NASTY[2]]
    arr = strings(*vals, shape=shape)
    g, b = new_graph("main", {})
    c = b.constant(arr)
    g.set_outputs([c], ["y"])
    m = Module("t")
    m.add_graph(g)
    _, again = roundtrip_text(m)
    got = next(iter(again.main)).attrs["value"].array
    assert got.dtype == object and got.shape == shape
    assert [type(s) for s in got.flat] == [str] * got.size and list(got.flat) == list(arr.flat)
    same(ckir.compile(again)()["y"], arr)


def test_dense_strings_print_as_json_and_never_as_hex():
    arr = strings(*[f"w{i}" for i in range(100)])
    text = fmt_dense(Dense(arr))
    body = text[len("dense<"):text.rindex("> : ")]
    assert json.loads(body) == list(arr) and text.endswith(": tensor<100xstring>")
    assert fmt_dense(Dense(strings("0xAB", shape=()))) == 'dense<"0xAB"> : tensor<string>'


def test_string_weight_is_printed_inline_and_saved_inline(tmp_path):
    arr = strings(*[f"token {i} é" for i in range(300)])
    m = Module("t")
    m.add_weight("vocab", TensorType([300], "string"), arr)
    g, b = new_graph("main", {"x": TensorType([300], "string")})
    y = b.nn.eq(g.inputs[0], b.weight(m, "vocab"))
    g.set_outputs([y], ["y"])
    m.add_graph(g)
    text, _ = roundtrip_text(m)
    assert "weight @vocab : tensor<300xstring> = dense<[" in text
    path = str(tmp_path / "m.ckir")
    ckir.save(m, path)
    assert not (tmp_path / "m.ckir.bin").exists()
    loaded = ckir.load(path)
    x = arr.copy()
    x[5] = "other"
    got = ckir.compile(loaded)(x)["y"]
    same(got, np.arange(300) != 5)


def test_dense_string_splat_and_unicode_escapes_parse():
    m = ckir.parse('module @t {\n  graph @main() -> (y: tensor<2x2xstring>) {\n'
                   '    %0 = nn.constant {value = dense<"\\u00e9>"> : tensor<2x2xstring>} : () -> tensor<2x2xstring>\n'
                   '    ckir.return %0 : (tensor<2x2xstring>) -> ()\n  }\n}\n')
    same(ckir.compile(m)()["y"], np.full((2, 2), "é>", object))


@pytest.mark.parametrize("body,typ,msg", [
    ("[1, 2]", "2xstring", "not a regular array of strings"),
    ('[["a"], ["b", "c"]]', "2x2xstring", "not a regular array of strings"),
    ('["a", null]', "2xstring", "not a regular array of strings"),
    ('["a", "b", "c"]', "2xstring", r"has shape \[3\], type tensor<2xstring> says \[2\]"),
    ('["a", "b"', "2xstring", "bad dense value"),
])
def test_bad_dense_strings_are_parse_errors(body, typ, msg):
    text = (f"module @t {{\n  graph @main() -> (y: tensor<{typ}>) {{\n"
            f"    %0 = nn.constant {{value = dense<{body}> : tensor<{typ}>}} : () -> tensor<{typ}>\n"
            f"    ckir.return %0 : (tensor<{typ}>) -> ()\n  }}\n}}\n")
    with pytest.raises(ParseError, match=msg):
        ckir.parse(text)


def test_string_weight_from_file_is_refused():
    with pytest.raises(ParseError, match="string weights have no byte form"):
        ckir.parse('module @t {\n  weight @w : tensor<2xstring> = file("w.bin", offset = 0)\n}\n')


def test_dense_attribute_holds_only_strings_and_compares_by_content():
    with pytest.raises(CkirError, match="must hold strings, got int"):
        Dense(np.array(["a", 1], dtype=object))
    a, b = Dense(strings("x", "yz")), Dense(np.array(["x", "yz"]))     # numpy text -> object
    assert a == b and hash(a) == hash(b) and b.array.dtype == object
    assert a != Dense(strings("x", "y"))


def test_cse_merges_equal_string_constants():
    g, b = new_graph("main", {"x": TensorType([2], "string")})
    c1 = b.constant(strings("a", "b"))
    c2 = b.constant(strings("a", "b"))
    c3 = b.constant(strings("a", "c"))
    ys = [b.nn.string_concat(g.inputs[0], c) for c in (c1, c2, c3)]
    g.set_outputs(ys, ["y0", "y1", "y2"])
    m = Module("t")
    m.add_graph(g)
    f = ckir.compile(m, passes="cse,dce")
    assert sum(op.opdef.name == "nn.constant" for op in m.main) == 2
    out = f(strings("1", "2"))
    same(out["y1"], ["1a", "2b"])
    same(out["y2"], ["1a", "2c"])


# --- inputs -------------------------------------------------------------------------------------------
def _concat_module(shape=(2,)):
    g, b = new_graph("main", {"x": TensorType(shape, "string")})
    y = b.nn.string_concat(g.inputs[0], b.constant(strings("!", shape=())))
    g.set_outputs([y], ["y"])
    m = Module("t")
    m.add_graph(g)
    return ckir.compile(m)


@pytest.mark.parametrize("given", [
    strings("a", "é"), np.array(["a", "é"]), np.array([b"a", "é".encode()], dtype=object),
    np.array([b"a", "é".encode()]), ["a", "é"], ("a", b"\xc3\xa9")])
def test_string_inputs_accept_str_bytes_and_numpy_text(given):
    same(_concat_module()(given)["y"], ["a!", "é!"])


@pytest.mark.parametrize("given,msg", [
    (np.array([b"a", b"\xff"], dtype=object), r"input 'x': element 1 is not valid UTF-8"),
    (np.array(["a", 3], dtype=object), r"input 'x': a string tensor holds Python str elements, got int 3"),
    (np.array([1.0, 2.0]), "input 'x': expected string, got float64"),
    (strings("a", "b", "c"), r"input 'x': dim 0 is 3, type tensor<2xstring> says 2"),
    (7, "expected a numpy array of strings, got int"),
])
def test_bad_string_inputs_are_input_errors(given, msg):
    with pytest.raises(InputError, match=msg):
        _concat_module()(given)


def test_interpreter_checks_string_results():
    check_value(strings("a", "b"), TensorType([2], "string"), {}, "r")
    with pytest.raises(CkirError, match="r: a string tensor holds Python str elements, got bytes"):
        check_value(np.array([b"a", "b"], dtype=object), TensorType([2], "string"), {}, "r")
    with pytest.raises(CkirError, match="r: expected string, got <U1"):
        check_value(np.array(["a", "b"]), TensorType([2], "string"), {}, "r")


def test_symbolic_string_dims_bind_per_call():
    g, b = new_graph("main", {"x": TensorType(["n"], "string"), "y": TensorType(["n"], "string")})
    z = b.nn.string_concat(*g.inputs)
    e = b.nn.eq(z, b.constant(strings("ab", shape=())))
    g.set_outputs([z, e], ["z", "e"])
    m = Module("t")
    m.add_graph(g)
    assert str(z.type) == "tensor<[n]xstring>"
    f = ckir.compile(m)
    out = f(strings("a", "x"), strings("b", "y"))
    same(out["z"], ["ab", "xy"])
    same(out["e"], [True, False])
    out = f(strings("a", "", "a"), strings("b", "ab", ""))
    same(out["e"], [True, True, False])
    with pytest.raises(InputError, match="but n = 2 elsewhere"):
        f(strings("a", "b"), strings("c"))


@pytest.mark.parametrize("name,n,attrs", [("nn.add", 2, {}), ("nn.lt", 2, {}), ("nn.sum", 1, {}),
                                           ("nn.reshape", 1, {"shape": [2]}), ("nn.cast", 1, {"to": "f32"})])
def test_numeric_ops_stay_numeric(name, n, attrs):
    with pytest.raises(CkirError, match=f"{name}: operand '.*' has dtype string, allowed"):
        build(name, [([2], "string")] * n, **attrs)


def test_no_cast_to_string():
    with pytest.raises(CkirError, match="cannot cast to string"):
        build("nn.cast", [([2], "f32")], to="string")


# --- nn.string_concat -----------------------------------------------------------------------------
@pytest.mark.parametrize("x,y", [
    (strings("abc", "def"), strings(".com", ".net")),
    (strings("cat", "dog", "snake"), strings("s")),
    (strings("cat", shape=()), strings("s", shape=())),
    (strings("abc", ""), strings("", "abc")),
    (strings("的", "中", "é", "\U0001F600"), strings("的", "中", "\u0301", "x")),
    (strings("a", "b", shape=(2, 1)), strings("x", "y", "z")),
    (strings(shape=(0, 3)), strings("x", "y", "z")),
])
def test_string_concat_matches_onnxruntime_and_reference(x, y):
    m = node_model("StringConcat", {"x": (S, x.shape), "y": (S, y.shape)}, {"z": S})
    got = ckir_run(m, [x, y])[0]
    same(got, ort_run(m, {"x": x, "y": y})[0])
    same(got, ref_run(m, {"x": x, "y": y})[0])
    same(run("nn.string_concat", [x, y])[0], got)


def test_string_concat_errors():
    with pytest.raises(CkirError, match="operand 'b' has dtype f32, allowed: string"):
        build("nn.string_concat", [([2], "string"), ([2], "f32")])
    with pytest.raises(CkirError, match=r"cannot broadcast shapes \[2\], \[3\]"):
        build("nn.string_concat", [([2], "string"), ([3], "string")])


# --- nn.string_split ------------------------------------------------------------------------------------
SPLIT_CASES = [
    (strings("abc.com", "def.net"), {"delimiter": "."}),
    (strings("hello world", "def.net", "o n n x", "the quick brown fox", shape=(2, 2)), {"maxsplit": 2}),
    (strings("o-n-n--x-", "o-n----nx"), {"delimiter": "-"}),
    (strings("o-n-n--x-", "o-n----nx", "--"), {"delimiter": "--"}),
    (strings("hello world !", "  hello   world !", " hello world   ! "), {"delimiter": ""}),
    (strings("hello world !", "  hello   world !", " hello world   ! "), {}),
    (strings(), {}),
    (strings(shape=(2, 0)), {"delimiter": ","}),
    (strings("a,b,,c", "x", ",,"), {"delimiter": ",", "maxsplit": 0}),
    (strings(" a\tb\n c\u3000d ", "\t", ""), {}),              # whitespace: str.isspace
    (strings("中,文", "é,,e"), {"delimiter": ","}),
]


@pytest.mark.parametrize("x,attrs", SPLIT_CASES)
def test_string_split_matches_reference(x, attrs):
    m = node_model("StringSplit", {"x": (S, x.shape)}, {"y": S, "n": TensorProto.INT64}, attrs)
    got = ckir_run(m, [x])
    want = ref_run(m, {"x": x})
    same(got[0], want[0])
    same(got[1], want[1].astype(np.int64))


@pytest.mark.parametrize("x,attrs", [c for c in SPLIT_CASES if "\t" not in "".join(c[0].flat)
                                     and "" not in list(c[0].flat)]
                         + [(strings("a b c", shape=()), {"maxsplit": 1})])     # onnx.reference fails on 0-d
def test_string_split_matches_onnxruntime_on_space_separated_text(x, attrs):
    # onnxruntime splits on ' ' only (not other whitespace) and gives no substring for ""
    m = node_model("StringSplit", {"x": (S, x.shape)}, {"y": S, "n": TensorProto.INT64}, attrs)
    got = ckir_run(m, [x])
    want = ort_run(m, {"x": x})
    same(got[0], want[0])
    same(got[1], want[1])


def test_string_split_types_and_errors():
    op = build("nn.string_split", [(["n", 3], "string")], delimiter=",")
    assert [str(r.type) for r in op.results] == ["tensor<[n]x3x?xstring>", "tensor<[n]x3xi64>"]
    op = build("nn.string_split", [([2, 0], "string")])
    assert str(op.results[0].type) == "tensor<2x0x0xstring>"
    with pytest.raises(CkirError, match="maxsplit must be >= 0, got -1"):
        build("nn.string_split", [([2], "string")], maxsplit=-1)
    with pytest.raises(CkirError, match="operand 'x' has dtype i64, allowed: string"):
        build("nn.string_split", [([2], "i64")])


# --- nn.string_normalizer ---------------------------------------------------------------------------
NORM_CASES = [
    (strings("monday", "tuesday", "wednesday", "thursday"),
     {"case_change_action": "LOWER", "is_case_sensitive": 1, "stopwords": ["monday"]}),
    (strings("monday", "tuesday", "wednesday", "thursday"), {"is_case_sensitive": 1, "stopwords": ["monday"]}),
    (strings("monday", "tuesday", "wednesday", "thursday"),
     {"case_change_action": "UPPER", "is_case_sensitive": 1, "stopwords": ["monday"]}),
    (strings("monday", "monday"), {"case_change_action": "UPPER", "is_case_sensitive": 0, "stopwords": ["monday"]}),
    (strings("Monday", "tuesday", "wednesday", "Monday", "tuesday", "wednesday", shape=(1, 6)),
     {"case_change_action": "UPPER", "stopwords": ["monday"]}),
    (strings("monday", "tuesday"), {"is_case_sensitive": 1}),
    (strings("MonDay", "monday", "y", shape=(1, 3)), {"is_case_sensitive": 1, "stopwords": ["monday"]}),
    (strings("a", shape=(1, 1)), {"stopwords": ["A"], "case_change_action": "LOWER"}),
]


@pytest.mark.parametrize("x,attrs", NORM_CASES)
def test_string_normalizer_matches_reference(x, attrs):
    m = node_model("StringNormalizer", {"x": (S, x.shape)}, {"y": S}, attrs, opset=10)
    same(ckir_run(m, [x])[0], ref_run(m, {"x": x})[0])


@pytest.mark.parametrize("x,attrs", NORM_CASES + [
    # whole elements are stopwords (onnx.reference removes space-separated words inside them)
    (strings("MonDay", "Tuesday", "x y"), {"case_change_action": "LOWER", "stopwords": ["mONDAY", "X Y", "z"]}),
    (strings("éa", "Ǆ", "ÀB", "Σσ", "über"), {"case_change_action": "UPPER", "stopwords": ["ÜBER"]}),
    (strings("éa", "Ǆ", "ÀB", "ÜBER", "Ab"), {"case_change_action": "LOWER", "stopwords": ["über"],
                                              "is_case_sensitive": 0}),
    (strings("中文", "中文", "é"), {"stopwords": ["中文"], "is_case_sensitive": 1}),
])
def test_string_normalizer_matches_onnxruntime(x, attrs):
    # onnxruntime needs an installed locale; C.UTF-8 always is. Non-ASCII text here has the
    # same full (Python) and per-character (C++) case mappings.
    m = node_model("StringNormalizer", {"x": (S, x.shape)}, {"y": S}, dict(attrs, locale="C.UTF-8"), opset=10)
    same(ckir_run(m, [x])[0], ort_run(m, {"x": x})[0])


def test_string_normalizer_full_case_mapping_and_caseless_stopwords():
    # Python's str.upper (full mapping: ß -> SS) and casefold matching; onnxruntime maps per
    # character and leaves ß
    y, = run("nn.string_normalizer", [strings("straße", "Straße", "ﬁx", "go")], case_change="UPPER",
             stopwords=strings("STRASSE"))
    same(y, ["FIX", "GO"])


def test_string_normalizer_types_and_errors():
    op = build("nn.string_normalizer", [([4], "string")])
    assert str(op.results[0].type) == "tensor<4xstring>"
    op = build("nn.string_normalizer", [([1, 4], "string")], stopwords=strings("a"))
    assert str(op.results[0].type) == "tensor<1x?xstring>"
    op = build("nn.string_normalizer", [(["c"], "string")])
    assert str(op.results[0].type) == "tensor<?xstring>"
    with pytest.raises(CkirError, match=r"x must have shape \[C\] or \[1, C\], got tensor<2x3xstring>"):
        build("nn.string_normalizer", [([2, 3], "string")])
    with pytest.raises(CkirError, match="stopwords must be a 1-D string tensor"):
        build("nn.string_normalizer", [([3], "string")], stopwords=np.array([1, 2]))
    with pytest.raises(CkirError, match="attribute 'case_change'.*expected one of"):
        build("nn.string_normalizer", [([3], "string")], case_change="TITLE")
    g, b = new_graph("main", {"x": TensorType(["r", 2], "string")})
    y = b.nn.string_normalizer(g.inputs[0])
    g.set_outputs([y], ["y"])
    m = Module("t")
    m.add_graph(g)
    f = ckir.compile(m)
    same(f(strings("a", "B", shape=(1, 2)))["y"], [["a", "B"]])
    with pytest.raises(CkirError, match=r"x must have shape \[C\] or \[1, C\], got \[2, 2\]"):
        f(strings("a", "b", "c", "d", shape=(2, 2)))


def test_string_normalizer_converter_refuses_special_casing_locales():
    m = node_model("StringNormalizer", {"x": (S, [2])}, {"y": S},
                   {"case_change_action": "UPPER", "locale": "tr_TR.UTF-8"}, opset=10)
    with pytest.raises(CkirError, match="locale 'tr_TR.UTF-8' has its own case rules"):
        backend.prepare(m)
    m = node_model("StringNormalizer", {"x": (S, [2])}, {"y": S}, {"locale": "tr_TR"}, opset=10)
    same(ckir_run(m, [strings("i", "I")])[0], ["i", "I"])      # no case change: locale unused


# --- nn.regex_full_match --------------------------------------------------------------------------
REGEX_CASES = [
    (strings("www.google.com", "www.facebook.com", "www.bbc.co.uk"), r"www\.[\w.-]+\.\bcom\b"),
    (strings("account@gmail.com", "account@hotmail.com", "not email", "account2@yahoo.com", shape=(2, 2)),
     r"(\W|^)[\w.\-]{0,25}@(yahoo|gmail)\.com(\W|$)"),
    (strings(shape=(2, 0)), r"(\W|^)[\w.\-]{0,25}@(yahoo|gmail)\.com(\W|$)"),
    (strings("abc", "ab", "", "abcabc"), r"(abc)*"),
    (strings("a\nb", "ab", "A"), r"(?i)a.?b?"),
    (strings("2024-01-31", "2024-1-31", "x2024-01-31"), r"\d{4}-\d{2}-\d{2}"),
    (strings("foo.bar", "foo"), r"foo|foo\.bar"),
]


@pytest.mark.parametrize("x,pattern", REGEX_CASES)
def test_regex_full_match_matches_reference(x, pattern):
    m = node_model("RegexFullMatch", {"x": (S, x.shape)}, {"y": TensorProto.BOOL}, {"pattern": pattern})
    same(ckir_run(m, [x])[0], ref_run(m, {"x": x})[0])


@pytest.mark.parametrize("x,pattern", REGEX_CASES + [
    (strings("abc", "é", "١٢٣", "a b", "a\u00a0b"), r"\w+"),        # RE2's \w, \d, \s are ASCII
    (strings("123", "١٢٣", "12٣"), r"\d+"),
    (strings("a b", "a\u00a0b", "a\u3000b"), r"a\sb"),
    (strings("héllo", "hello"), r"h.llo"),                           # . is one character
])
def test_regex_full_match_matches_onnxruntime_re2(x, pattern):
    m = node_model("RegexFullMatch", {"x": (S, x.shape)}, {"y": TensorProto.BOOL}, {"pattern": pattern})
    same(ckir_run(m, [x])[0], ort_run(m, {"x": x})[0])


@pytest.mark.parametrize("pattern,msg", [
    ("(ab", "is not a valid regular expression: missing \\)"),
    (r"\p{Greek}+", r"is not a valid regular expression: bad escape \\p"),
    ("[[:alpha:]]+", r"POSIX classes like \[\[:alpha:\]\] are not supported"),
])
def test_regex_full_match_refuses_bad_or_re2_only_patterns(pattern, msg):
    with pytest.raises(CkirError, match=msg):
        build("nn.regex_full_match", [([2], "string")], pattern=pattern)


# --- equality, LabelEncoder -------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["Equal", "Not"])
@pytest.mark.parametrize("x,y", [
    (strings("string1", "string2"), strings("string1", "string3")),
    (strings("string1", "string2"), strings("string1")),
    (strings("", "é", "e\u0301", shape=(3, 1)), strings("", "é", "e\u0301")),   # no normalization
    (strings("a", shape=()), strings("a", "b")),
])
def test_equal_and_not_equal_on_strings(op, x, y):
    nodes = [helper.make_node("Equal", ["x", "y"], ["z"])]
    if op == "Not":
        nodes.append(helper.make_node("Not", ["z"], ["w"]))
    out = "w" if op == "Not" else "z"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", S, x.shape),
                                       helper.make_tensor_value_info("y", S, y.shape)],
                          [helper.make_tensor_value_info(out, TensorProto.BOOL, None)])
    m = finish(helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)]))
    got = ckir_run(m, [x, y])[0]
    same(got, ort_run(m, {"x": x, "y": y})[0])
    same(got, ref_run(m, {"x": x, "y": y})[0])
    ne = run("nn.ne", [x, y])[0]
    same(ne, np.not_equal(x, y).astype(bool))


def test_only_equality_compares_strings():
    with pytest.raises(CkirError, match="nn.lt: operand 'a' has dtype string"):
        build("nn.lt", [([2], "string"), ([2], "string")])
    with pytest.raises(CkirError, match="operands have different dtypes string and i64"):
        build("nn.eq", [([2], "string"), ([2], "i64")])


ML = "ai.onnx.ml"


def _tensor(name, arr, typ):
    return helper.make_tensor(name, typ, [len(arr)], list(arr))


@pytest.mark.parametrize("x,attrs,out", [
    (strings("a", "b", "d", "c", "g"), {"keys_strings": ["a", "b", "c"], "values_int64s": [0, 1, 2],
                                        "default_int64": 42}, TensorProto.INT64),
    (strings("a", "b", "d", "c", "g"), {"keys_strings": ["a", "b", "c"], "values_int64s": [0, 1, 2]},
     TensorProto.INT64),
    (strings("a", "b", "d", "c", "g", "", shape=(2, 3)),
     {"keys_strings": ["a", "b", "c", ""], "values_floats": [0.5, 1.5, 2.5, -1.0]}, TensorProto.FLOAT),
    (strings("a", "b", "é", "c"), {"keys_strings": ["é", "a"], "values_strings": ["E", "A"]}, S),
    (strings("a", "b"), {"keys_strings": ["a"], "values_strings": ["A"], "default_string": "?"}, S),
    (np.array([1, 7, 3], np.int64), {"keys_int64s": [3, 1], "values_strings": ["three", "one"]}, S),
    (np.array([1.5, 7.0], np.float32), {"keys_floats": [1.5], "values_strings": ["x"],
                                        "default_string": "中"}, S),
    (strings("a", "b", "d", "c", "g"), {"keys_tensor": _tensor("k", [b"a", b"b", b"c"], S),
                                        "values_tensor": _tensor("v", [0, 1, 2], TensorProto.INT16),
                                        "default_tensor": helper.make_tensor("d", TensorProto.INT16, [1], [42])},
     TensorProto.INT16),
    (strings("a", "b", "d", "c", "g"), {"keys_strings": ["a", "b", "c"],
                                        "values_tensor": _tensor("v", [0, 1, 2], TensorProto.INT16),
                                        "default_tensor": helper.make_tensor("d", TensorProto.INT16, [1], [42])},
     TensorProto.INT16),
    (strings("a", "z"), {"keys_strings": ["a"], "values_tensor": _tensor("v", [b"x"], S),
                         "default_tensor": _tensor("d", [b"?"], S)}, S),
])
def test_label_encoder_strings_match_reference_and_onnxruntime(x, attrs, out):
    typ = S if x.dtype == object else helper.np_dtype_to_tensor_dtype(x.dtype)
    m = node_model("LabelEncoder", {"x": (typ, x.shape)}, {"y": out}, attrs, opset=4, domain=ML)
    got = ckir_run(m, [x])[0]
    same(got, ref_run(m, {"x": x})[0])
    if "values_tensor" not in attrs or out != S:      # onnxruntime lacks string values_tensor
        same(got, ort_run(m, {"x": x})[0])


def test_label_encoder_string_values_tensor_default_is_unused():
    # the spec's default; onnx.reference fails without default_tensor, onnxruntime lacks the case
    m = node_model("LabelEncoder", {"x": (S, [2])}, {"y": S},
                   {"keys_strings": ["a"], "values_tensor": _tensor("v", [b"x"], S)}, opset=4, domain=ML)
    same(ckir_run(m, [strings("a", "z")])[0], ["x", "_Unused"])


@pytest.mark.parametrize("x,attrs,out", [
    (strings("b", "zz", "a"), {"classes_strings": ["a", "b"], "default_int64": 7}, TensorProto.INT64),
    (strings("b", "zz"), {"classes_strings": ["a", "b"]}, TensorProto.INT64),
    (np.array([1, 5, 0], np.int64), {"classes_strings": ["a", "b"], "default_string": "none"}, S),
    (np.array([[1, -1]], np.int64), {"classes_strings": ["a", "b"]}, S),
])
def test_label_encoder_v1_matches_onnxruntime(x, attrs, out):
    typ = S if x.dtype == object else TensorProto.INT64
    m = node_model("LabelEncoder", {"x": (typ, x.shape)}, {"y": out}, attrs, opset=1, domain=ML)
    same(ckir_run(m, [x])[0], ort_run(m, {"x": x})[0])


def test_label_encoder_string_errors():
    with pytest.raises(CkirError, match="keys have dtype string, x i64"):
        build("nn.label_encoder", [([2], "i64")], keys=strings("a"), values=np.array([1]),
              default=np.array(0))
    with pytest.raises(CkirError, match="default must be one object value"):
        build("nn.label_encoder", [([2], "string")], keys=strings("a"), values=strings("b"),
              default=np.array(0))
    m = node_model("LabelEncoder", {"x": (TensorProto.INT64, [2])}, {"y": TensorProto.INT64},
                   {"keys_strings": ["a"], "values_int64s": [1]}, opset=4, domain=ML)
    with pytest.raises(CkirError, match="keys of dtype object do not match the input's i64"):
        backend.prepare(m)


# --- importer: string constants and initializers ------------------------------------------------------
def test_string_constants_initializers_and_import_time_folding():
    big = [f"w{i}" for i in range(100)]
    nodes = [helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", S, [1], ["-é".encode()])),
             helper.make_node("StringConcat", ["c", "c"], ["cc"]),
             helper.make_node("StringConcat", ["x", "cc"], ["y"]),
             helper.make_node("Equal", ["x", "vocab"], ["e"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", S, [100])],
                          [helper.make_tensor_value_info("y", S, None),
                           helper.make_tensor_value_info("e", TensorProto.BOOL, None)],
                          [helper.make_tensor("vocab", S, [100], [s.encode() for s in big])])
    m = finish(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]))
    x = strings(*big[:99], "é", shape=(100,))
    x = np.where(np.arange(100) % 2 == 0, x, x[::-1]).astype(object)
    got = ckir_run(m, [x])
    want = ort_run(m, {"x": x})
    same(got[0], want[0])
    same(got[1], want[1])
    mod = import_onnx(m)
    text = mod.print()
    assert "weight" not in text and 'dense<["w0", "w1",' in text     # strings are constants
    ckir.compile(mod, passes="canonicalize,cse,dce")                 # folds "c" + "c"
    assert [op.opdef.name for op in mod.main].count("nn.string_concat") == 1
    assert 'dense<["-\\u00e9-\\u00e9"]> : tensor<1xstring>' in mod.print()


def test_invalid_utf8_in_a_model_is_an_error():
    g = helper.make_graph([helper.make_node("Equal", ["x", "k"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", S, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.BOOL, None)],
                          [helper.make_tensor("k", S, [1], [b"\xff\xfe"])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    m.graph.output[0].type.tensor_type.shape.dim.add().dim_value = 1
    with pytest.raises(CkirError, match=r"initializer k: element 0 is not valid UTF-8"):
        backend.prepare(m)
    m = node_model("RegexFullMatch", {"x": (S, [1])}, {"y": TensorProto.BOOL}, {"pattern": b"\xffa"})
    with pytest.raises(CkirError, match=r"attribute 'pattern' is not valid UTF-8"):
        backend.prepare(m)


def test_cast_to_and_from_strings_is_refused():
    m = node_model("Cast", {"x": (TensorProto.FLOAT, [2])}, {"y": S}, {"to": S}, opset=21)
    with pytest.raises(CkirError, match="casts to and from strings"):
        backend.prepare(m)
    m = node_model("Cast", {"x": (S, [2])}, {"y": TensorProto.FLOAT}, {"to": TensorProto.FLOAT}, opset=21)
    with pytest.raises(CkirError, match="casts to and from strings"):
        backend.prepare(m)


# --- nn.dropout ---------------------------------------------------------------------------------------
def _dropout_model(x, ratio, training, seed, mask=True, opset=22):
    outs = {"y": helper.np_dtype_to_tensor_dtype(x.dtype)}
    if mask:
        outs["z"] = TensorProto.BOOL
    ins = {"x": (helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)}
    feeds = [x]
    if ratio is not None:
        ins["r"] = (helper.np_dtype_to_tensor_dtype(ratio.dtype), ratio.shape)
        feeds.append(ratio)
    ins["t"] = (TensorProto.BOOL, training.shape)
    feeds.append(training)
    attrs = {} if seed is None else {"seed": seed}
    node = helper.make_node("Dropout", list(ins) if ratio is not None else ["x", "", "t"], list(outs), **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(k, *v) for k, v in ins.items()],
                          [helper.make_tensor_value_info(k, t, None) for k, t in outs.items()])
    return finish(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])), feeds


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("ratio,training,seed", [(0.5, True, 0), (0.75, True, 3), (0.0, True, 1),
                                                 (0.3, False, 2), (None, True, 5), (0.9, True, 0)])
def test_dropout_with_run_time_training_matches_reference(dtype, ratio, training, seed):
    x = np.random.default_rng(seed).standard_normal((3, 4, 5)).astype(dtype)
    r = None if ratio is None else np.array(ratio, dtype)
    m, feeds = _dropout_model(x, r, np.array(training), seed)
    y, z = ckir_run(m, feeds)
    if r is None:       # onnx.reference fails on an omitted ratio: give it the default, 0.5
        m, feeds = _dropout_model(x, np.array(0.5, dtype), np.array(training), seed)
    ry, rz = ref_run(m, {k.name: v for k, v in zip(m.graph.input, feeds)})
    same(z, rz)
    assert y.dtype == dtype
    np.testing.assert_allclose(y.astype(np.float64), ry.astype(np.float64),
                               rtol={np.float16: 1e-3}.get(dtype, 1e-6))
    if not training or ratio == 0.0:
        same(y, x)
        assert z.all()


def test_dropout_without_seed_draws_fresh_masks_and_keeps_the_rate():
    x = np.ones(4000, np.float32)
    m, feeds = _dropout_model(x, np.array(0.25, np.float32), np.array(True), None)
    f = backend.prepare(m)
    (y1, z1), (_, z2) = f.run(feeds), f.run(feeds)
    assert (z1 != z2).any()
    assert abs(z1.mean() - 0.75) < 0.03        # 4000 draws: sd of the rate is ~0.007
    np.testing.assert_allclose(y1[z1], np.float32(1 / 0.75), rtol=1e-7)
    assert (y1[~z1] == 0).all()


def test_dropout_vjp_matches_torch_autograd_with_the_mask_fixed():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6))
    cot = rng.standard_normal((4, 6))
    for training in (True, False):
        g, b = new_graph("main", {"x": TensorType([4, 6], "f64"), "r": TensorType([], "f64"),
                                  "t": TensorType([], "bool"), "c": TensorType([4, 6], "f64")})
        xv, rv, tv, cv = g.inputs
        op = b.create("nn.dropout", [xv, rv, tv], {"seed": 7})
        gx, gr, gt = op.opdef.vjp(b, op, cv, None)
        assert gt is None
        g.set_outputs([op.results[0], op.results[1], gx, gr], ["y", "z", "gx", "gr"])
        m = Module("t")
        m.add_graph(g)
        out = ckir.compile(m)(x, np.float64(0.4), np.bool_(training), cot)
        tx = torch.tensor(x, requires_grad=True)
        tr = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
        mask = torch.tensor(out["z"])
        ty = tx * mask / (1 - tr) if training else tx * 1 + tr * 0
        ty.backward(torch.tensor(cot))
        np.testing.assert_allclose(out["y"], ty.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(out["gx"], tx.grad.numpy(), rtol=1e-12)
        np.testing.assert_allclose(out["gr"], tr.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_dropout_errors():
    with pytest.raises(CkirError, match="ratio and training must be scalars"):
        build("nn.dropout", [([3], "f32"), ([1], "f32"), ([], "bool")])
    with pytest.raises(CkirError, match="operands have different dtypes f32 and f64"):
        build("nn.dropout", [([3], "f32"), ([], "f64"), ([], "bool")])
    with pytest.raises(CkirError, match=r"dropout ratio must be in \[0, 1\), got 1.0"):
        run("nn.dropout", [np.ones(3, np.float32), np.array(1.0, np.float32), np.array(True)], seed=0)
    y, _ = run("nn.dropout", [np.ones(3, np.float32), np.array(1.5, np.float32), np.array(False)])
    same(y, np.ones(3, np.float32))                 # not training: ratio unused


def test_dropout_is_not_folded_merged_or_dropped():
    g, b = new_graph("main", {"x": TensorType([50], "f32")})
    r, t = b.constant(np.float32(0.5)), b.constant(np.bool_(True))
    y1, _ = b.nn.dropout(g.inputs[0], r, t)
    y2, _ = b.nn.dropout(g.inputs[0], r, t)
    g.set_outputs([y1, y2], ["y1", "y2"])
    m = Module("t")
    m.add_graph(g)
    f = ckir.compile(m, passes="canonicalize,cse,dce")
    assert sum(op.opdef.name == "nn.dropout" for op in m.main) == 2
    out = f(np.ones(50, np.float32))
    assert (out["y1"] != out["y2"]).any()


def test_dropout_ratio_as_one_element_tensor_and_mixed_dtype():
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float16)
    m, feeds = _dropout_model(x, np.array([0.5], np.float32), np.array(True), 4)
    y, z = ckir_run(m, feeds)
    mask = np.random.RandomState(4).uniform(0, 1, x.shape) >= 0.5
    same(z, mask)
    np.testing.assert_allclose(y.astype(np.float64), (x.astype(np.float32) * mask * 2).astype(np.float64),
                               rtol=1e-3)
