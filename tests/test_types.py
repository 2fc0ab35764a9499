import pickle

import numpy as np
import pytest

from ckir import CkirError, Sym, TensorType, dtypes as dt
from ckir.errors import ShapeError
from ckir.parser import parse_type
from ckir.types import ANY, broadcast_shapes


def test_ggml_block_layouts_match_gguf():
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as Q
    for d in dt.QUANTS:
        assert GGML_QUANT_SIZES[Q[d.name.upper()]] == (d.block_size, d.block_bytes), d.name


def test_dtype_lookup_and_nbytes():
    assert dt.dtype("f32") is dt.f32
    assert dt.dtype(np.float16) is dt.f16
    assert dt.dtype(dt.bf16.np) is dt.bf16
    assert dt.q4_k.nbytes(512) == 288
    assert dt.f32.nbytes(10) == 40 and dt.bool_.nbytes(3) == 3
    with pytest.raises(CkirError, match="unknown dtype 'f33'"):
        dt.dtype("f33")


def test_types_are_interned_and_print():
    a = TensorType([2, "seq", None], "f32")
    assert a is TensorType((2, Sym("seq"), ANY), dt.f32)
    assert str(a) == "tensor<2x[seq]x?xf32>"
    assert str(TensorType([], "bool")) == "tensor<bool>"
    assert str(TensorType([Sym("seq", 2048), 640], "q4_k".replace("q4_k", "f16"))) == "tensor<[seq<=2048]x640xf16>"
    assert pickle.loads(pickle.dumps(a)) is a
    assert a.numel is None and TensorType([2, 3], "f32").numel == 6


@pytest.mark.parametrize("text", ["tensor<f32>", "tensor<1x2x3xi8>", "tensor<?x640xf32>",
                                  "tensor<[seq<=2048]x[batch]x?xbf16>", "tensor<[?<=16]xbool>",
                                  "tensor<2048x768xq4_k>"])
def test_type_text_roundtrip(text):
    assert str(parse_type(text)) == text


@pytest.mark.parametrize("text,msg", [
    ("tensor<2x3xf33>", "'f33' is not a dtype"),
    ("tensor<2xx3xf32>", "'x3xf32' is not a dtype"),
    ("tensor<[1seq]xf32>", "is not a dtype"),
])
def test_bad_type_text(text, msg):
    with pytest.raises(CkirError, match=msg):
        parse_type(text)


def test_quantized_types_need_whole_blocks():
    TensorType([4, 512], "q4_k")
    with pytest.raises(CkirError, match="innermost dim 100 is not a multiple"):
        TensorType([4, 100], "q4_k")
    assert TensorType([3, 64], "q8_0").nbytes() == 3 * 2 * 34


def test_bad_dims():
    with pytest.raises(CkirError, match="dims must be >= 0"):
        TensorType([-1], "f32")
    with pytest.raises(CkirError, match="must be an identifier"):
        Sym("a b")


def test_broadcast_with_symbols():
    s, n = Sym("seq"), Sym("n")
    assert broadcast_shapes((s, 1), (4,)) == (s, 4)
    assert broadcast_shapes((s,), (1,)) == (s,)
    assert broadcast_shapes((s,), (s,)) == (s,)
    assert broadcast_shapes((s,), (n,)) == (ANY,)
    assert broadcast_shapes((3, 1), (2, 1, 5)) == (2, 3, 5)
    with pytest.raises(ShapeError, match=r"cannot broadcast shapes \[2\], \[3\]"):
        broadcast_shapes((2,), (3,))


def test_sequence_and_optional_types():
    from ckir.types import OptType, SeqType
    s = SeqType(TensorType([None, 3], "f32"))
    o = OptType(s)
    assert str(s) == "seq<tensor<?x3xf32>>" and str(o) == "optional<seq<tensor<?x3xf32>>>"
    assert parse_type(str(o)) is o and parse_type("optional<tensor<2xi64>>") is OptType(TensorType([2], "i64"))
    assert s.dtype is dt.f32 and pickle.loads(pickle.dumps(o)) is o
    with pytest.raises(CkirError, match="a sequence holds tensors"):
        SeqType(s)
    text = f"""module @m {{
  graph @main(%s: {s}, %o: {o}) -> (s: {s}, o: {o}) {{
    ckir.return %s, %o : ({s}, {o}) -> ()
  }}
}}
"""
    import ckir
    m = ckir.parse(text)
    assert m.print() == text
    f = ckir.compile(m)
    out = f([np.zeros((1, 3), np.float32), np.ones((4, 3), np.float32)], None)
    assert len(out["s"]) == 2 and out["o"] is None
    with pytest.raises(ckir.InputError, match=r"input 's'\[1\]: dim 1 is 2"):
        f([np.zeros((1, 3), np.float32), np.ones((4, 2), np.float32)], None)
