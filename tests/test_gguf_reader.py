"""The GGUF reader and the GGML block-quantized ops (quant.dequantize, quant.matmul,
quant.get_rows).

Oracles not written by us: gguf.quants.dequantize / quantize (llama.cpp's Python package) for
every block type it decodes, gguf.GGUFReader for metadata and tensor placement, torch.autograd
for quant.matmul's gradient. GGUF files are written into tmp_path by gguf.GGUFWriter; corrupt
ones by patching the bytes of written ones."""
import json
import os
import struct

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

import ckir
from ckir import CkirError, Module, TensorType, new_graph
from ckir import dtypes as dt
from ckir.dialects.quant.ggml import decode, random_blocks
from ckir.frontends.gguf import GGUFError, Reader, load_weights
from ckir.frontends.gguf.reader import GGML_TYPES, UNSUPPORTED_TYPES

# gguf.quants decodes every block type but q8_k (an activation format llama.cpp never stores
# in files), and quantizes the 32-element ones
DECODED = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
QUANTIZED = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]
F32_EPS = float(np.finfo(np.float32).eps)


def ggml_type(name: str) -> T:
    return T[name.upper()]


def oracle(raw, name):
    return gguf.quants.dequantize(raw, ggml_type(name))


def bits(a):
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def run_op(name, inputs, **attrs):
    """Run one op on typed inputs [(TensorType, array)] in the interpreter."""
    g, b = new_graph("main", {f"a{i}": t for i, (t, _) in enumerate(inputs)})
    y = b.op(name, *g.inputs, **attrs)
    g.set_outputs([y], ["y"])
    m = Module("t")
    m.add_graph(g)
    return ckir.compile(m)(*[a for _, a in inputs])["y"]


def write_bytes(path, data) -> str:
    with open(path, "wb") as f:
        f.write(bytes(data))
    return str(path)


def read_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def build_error(name, types, **attrs):
    g, b = new_graph("main", {f"a{i}": t for i, t in enumerate(types)})
    b.op(name, *g.inputs, **attrs)


# --- the block layouts ---------------------------------------------------------------------------
def test_type_tables_match_gguf():
    for tid, (name, d) in GGML_TYPES.items():
        assert T(tid).name == name
        if d.is_quant:
            assert gguf.GGML_QUANT_SIZES[T(tid)] == (d.block_size, d.block_bytes)
    for tid, name in UNSUPPORTED_TYPES.items():
        if tid in T._value2member_map_:
            assert T(tid).name == name


@pytest.mark.parametrize("name", DECODED)
@pytest.mark.parametrize("shape_blocks", [(1, 1), (7, 3), (2, 3, 2)])
def test_decode_bit_identical_on_random_blocks(name, shape_blocks):
    d = dt.dtype(name)
    rng = np.random.default_rng(len(name) * 100 + len(shape_blocks))
    shape = shape_blocks[:-1] + (shape_blocks[-1] * d.block_size,)
    for low, high in [(1e-4, 1e-2), (0.01, 1.0), (1.0, 300.0)]:
        raw = random_blocks(d, shape, rng, low, high)
        got, want = decode(raw, d), oracle(raw, name)
        assert got.shape == want.shape == shape and got.dtype == np.float32
        np.testing.assert_array_equal(bits(got), bits(want))


@pytest.mark.parametrize("name", DECODED)
def test_decode_bit_identical_on_any_bytes(name):
    """Arbitrary bytes, so scales include subnormals, infinities and NaNs: still bit for bit."""
    d = dt.dtype(name)
    raw = np.random.default_rng(7).integers(0, 256, (64, 4 * d.block_bytes), np.uint8)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(bits(decode(raw, d)), bits(oracle(raw, name)))


@pytest.mark.parametrize("name", QUANTIZED)
def test_decode_bit_identical_on_quantized_weights(name):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((6, 128)) * rng.uniform(0.01, 5.0, (6, 1))).astype(np.float32)
    raw = gguf.quants.quantize(x, ggml_type(name))
    got = decode(raw, name)
    np.testing.assert_array_equal(bits(got), bits(oracle(raw, name)))
    # and the decoded weights are the ones that were quantized, to within a quantization step
    levels = {"q4": 7, "q5": 15, "q8": 127}[name[:2]]
    step = np.abs(x).max(axis=1, keepdims=True) / levels
    assert (np.abs(got - x) <= step * 1.01).all()


def test_q8_k_layout():
    """q8_k (no gguf decoder): block_q8_K {float d; int8 qs[256]; int16 bsums[16]}, y = d * q,
    decoded here element by element with struct."""
    raw = random_blocks(dt.q8_k, (3, 512), np.random.default_rng(5), 0.01, 2.0)
    want = np.empty((3, 512), np.float32)
    for r in range(3):
        for blk in range(2):
            b = raw[r, blk * 292:(blk + 1) * 292].tobytes()
            d = np.float32(struct.unpack("<f", b[:4])[0])
            qs = struct.unpack("<256b", b[4:260])
            want[r, blk * 256:(blk + 1) * 256] = [d * np.float32(q) for q in qs]
    np.testing.assert_array_equal(bits(decode(raw, "q8_k")), bits(want))


def test_decode_rejects_bad_buffers():
    with pytest.raises(CkirError, match="whole number of 18-byte blocks"):
        decode(np.zeros((2, 20), np.uint8), "q4_0")
    with pytest.raises(CkirError, match="f32 is not a GGML block type"):
        decode(np.zeros((2, 20), np.uint8), "f32")


# --- quant.dequantize ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,to", [(n, "f32") for n in DECODED]
                         + [("q4_k", "f16"), ("q8_0", "bf16"), ("q6_k", "f64"), ("q5_0", "f16")])
def test_dequantize_op(name, to):
    d = dt.dtype(name)
    raw = random_blocks(d, (3, 2 * d.block_size), np.random.default_rng(11))
    y = run_op("quant.dequantize", [(TensorType((3, 2 * d.block_size), d), raw)], to=to)
    assert y.dtype == dt.dtype(to).np
    np.testing.assert_array_equal(y, oracle(raw, name).astype(dt.dtype(to).np))


# --- quant.matmul ----------------------------------------------------------------------------------
def _check_product(y, x, wf, dtype, bias=None):
    """y against the exact (f64) product of the same values: a dot product of K terms computed
    in f32 (f64 for f64 x) is within K * eps * sum|x||w| of it in any summation order; adding a
    bias, or rounding to an f16/bf16 result, costs at most one more rounding of the result."""
    x64, w64 = x.astype(np.float64), wf.astype(np.float64)
    exact = x64 @ w64.T
    eps = float(np.finfo(np.float64).eps) if dtype is dt.f64 else F32_EPS
    bound = x.shape[-1] * eps * (np.abs(x64) @ np.abs(w64).T)
    if bias is not None:
        exact = exact + bias
        bound = bound + eps * np.abs(exact)
    if dtype in (dt.f16, dt.bf16):
        u = 2.0 ** -11 if dtype is dt.f16 else 2.0 ** -8      # half an ulp, relative
        bound = bound * (1 + u) + u * np.abs(exact) + 2.0 ** -25   # (f16 subnormals: absolute)
    assert y.dtype == dtype.np
    err = np.abs(y.astype(np.float64) - exact)
    assert (err <= bound).all(), f"error {err.max()} above the bound"


@pytest.mark.parametrize("name", DECODED + ["q8_k"])
def test_matmul_matches_dequantize_then_matmul_with_symbolic_rows(name):
    d = dt.dtype(name)
    k, n = 2 * d.block_size, 5
    rng = np.random.default_rng(13)
    raw = random_blocks(d, (n, k), rng, 0.01, 0.5)
    wf = oracle(raw, name) if name in DECODED else decode(raw, d)
    g, b = new_graph("main", {"x": TensorType(["seq", k], "f32"), "w": TensorType((n, k), d)})
    y = b.quant.matmul(*g.inputs)
    assert y.type == TensorType(["seq", n], "f32")
    g.set_outputs([y], ["y"])
    m = Module("t")
    m.add_graph(g)
    f = ckir.compile(m)
    for rows in (1, 4):
        x = rng.standard_normal((rows, k)).astype(np.float32)
        _check_product(f(x, raw)["y"], x, wf, dt.f32)


@pytest.mark.parametrize("xdtype", ["f16", "bf16", "f64"])
def test_matmul_in_x_dtype(xdtype):
    d = dt.q4_k
    rng = np.random.default_rng(17)
    raw = random_blocks(d, (3, 256), rng, 0.01, 0.1)
    x = rng.standard_normal((2, 256)).astype(dt.dtype(xdtype).np)
    y = run_op("quant.matmul", [(TensorType(x.shape, xdtype), x), (TensorType((3, 256), d), raw)])
    _check_product(y, x, oracle(raw, "q4_k"), dt.dtype(xdtype))


def test_matmul_rank1_and_batched():
    rng = np.random.default_rng(19)
    raw = random_blocks(dt.q8_0, (4, 64), rng)
    wf = oracle(raw, "q8_0")
    wt = TensorType((4, 64), "q8_0")
    x1 = rng.standard_normal(64).astype(np.float32)
    y1 = run_op("quant.matmul", [(TensorType((64,), "f32"), x1), (wt, raw)])
    assert y1.shape == (4,)
    _check_product(y1[None], x1[None], wf, dt.f32)
    x3 = rng.standard_normal((2, 3, 64)).astype(np.float32)
    y3 = run_op("quant.matmul", [(TensorType(x3.shape, "f32"), x3), (wt, raw)])
    assert y3.shape == (2, 3, 4)
    _check_product(y3.reshape(6, 4), x3.reshape(6, 64), wf, dt.f32)


@pytest.mark.parametrize("name", ["q4_0", "q4_k", "q6_k"])
def test_matmul_vjp_matches_torch(name):
    d = dt.dtype(name)
    k, n = d.block_size * 2, 3
    rng = np.random.default_rng(23)
    raw = random_blocks(d, (n, k), rng)
    x = rng.standard_normal((4, k))
    gy = rng.standard_normal((4, n))
    g, b = new_graph("main", {"x": TensorType(["seq", k], "f64"), "w": TensorType((n, k), d),
                              "g": TensorType(["seq", n], "f64")})
    xv, wv, gv = g.inputs
    op = b.create("quant.matmul", [xv, wv])
    dx, dw = op.opdef.vjp(b, op, gv)
    assert dw is None                     # quantized weights get no gradient
    assert dx.type == xv.type
    g.set_outputs([dx], ["dx"])
    m = Module("t")
    m.add_graph(g)
    got = ckir.compile(m)(x, raw, gy)["dx"]
    xt = torch.tensor(x, requires_grad=True)
    (xt @ torch.tensor(oracle(raw, name).astype(np.float64)).T).backward(torch.tensor(gy))
    np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_quantized_operands_are_declared_not_differentiable():
    from ckir.opdef import get_op
    assert "not differentiable" in get_op("quant.matmul").doc
    for name in ("quant.dequantize", "quant.get_rows"):
        assert not callable(get_op(name).vjp)


# --- quant.get_rows --------------------------------------------------------------------------------
@pytest.mark.parametrize("name,ids,to", [
    ("q4_k", np.array([[0, 4], [2, 2]], np.int64), "f32"),
    ("q8_0", np.array([1], np.int32), "f16"),
    ("q6_k", np.array(3, np.int64), "f32"),
    ("q5_1", np.array([4, 0, 0, 1], np.int32), "f64"),
])
def test_get_rows(name, ids, to):
    d = dt.dtype(name)
    raw = random_blocks(d, (5, d.block_size * 2), np.random.default_rng(29))
    y = run_op("quant.get_rows", [(TensorType(raw.shape[:1] + (d.block_size * 2,), d), raw),
                                  (TensorType(ids.shape, ids.dtype), ids)], to=to)
    np.testing.assert_array_equal(y, oracle(raw, name)[ids].astype(dt.dtype(to).np))


@pytest.mark.parametrize("bad", [5, -1, 1 << 40])
def test_get_rows_rejects_out_of_range_ids(bad):
    raw = random_blocks(dt.q4_0, (5, 32), np.random.default_rng(0))
    ids = np.array([0, bad], np.int64)
    with pytest.raises(CkirError, match=rf"quant.get_rows.*row id {bad} is out of range for a table of 5 rows"):
        run_op("quant.get_rows", [(TensorType((5, 32), "q4_0"), raw), (TensorType((2,), "i64"), ids)])


@pytest.mark.parametrize("name,types,attrs,msg", [
    ("quant.matmul", [TensorType((2, 64), "f32"), TensorType((3, 96), "q4_0")], {},
     r"x tensor<2x64xf32> has K = 64 but w tensor<3x96xq4_0> has K = 96"),
    ("quant.matmul", [TensorType((2, 64), "f32"), TensorType((2, 3, 64), "q4_0")], {},
     r"w must be a 2-D \[N, K\] block-quantized tensor, got tensor<2x3x64xq4_0>"),
    ("quant.matmul", [TensorType((2, 64), "i32"), TensorType((3, 64), "q4_0")], {},
     r"operand 'x' has dtype i32"),
    ("quant.matmul", [TensorType((2, 64), "f32"), TensorType((3, 64), "f32")], {},
     r"operand 'w' has dtype f32, allowed: quantized types"),
    ("quant.dequantize", [TensorType((3, 64), "q8_0")], {"to": "i8"},
     r"to must be f32, f16, bf16 or f64, got i8"),
    ("quant.get_rows", [TensorType((3, 64), "q8_0"), TensorType((2,), "f32")], {},
     r"operand 'ids' has dtype f32"),
    ("quant.get_rows", [TensorType((64,), "q8_0"), TensorType((2,), "i32")], {},
     r"w must be a 2-D"),
])
def test_bad_operands_name_the_problem(name, types, attrs, msg):
    with pytest.raises(CkirError, match=msg):
        build_error(name, types, **attrs)


def test_costs_count_quantized_bytes():
    g, b = new_graph("main", {"x": TensorType(["seq", 256], "f32"), "w": TensorType((6, 256), "q4_k"),
                              "t": TensorType((10, 64), "q8_0"), "ids": TensorType((5,), "i32")})
    x, w, t, ids = g.inputs
    mm = b.create("quant.matmul", [x, w])
    gr = b.create("quant.get_rows", [t, ids])
    dq = b.create("quant.dequantize", [w], {"to": "f16"})
    bind = {"seq": 4}
    c = mm.opdef.cost(mm, bind)
    assert (c.flops, c.bytes_read, c.bytes_written) == (2 * 4 * 6 * 256 + 2 * 6 * 256, 4 * 256 * 4 + 6 * 144, 4 * 6 * 4)
    c = gr.opdef.cost(gr, bind)
    assert (c.flops, c.bytes_read, c.bytes_written) == (2 * 5 * 64, 5 * 4 + 5 * 2 * 34, 5 * 64 * 4)
    c = dq.opdef.cost(dq, bind)
    assert (c.flops, c.bytes_read, c.bytes_written) == (2 * 6 * 256, 6 * 144, 6 * 256 * 2)


# --- the reader ------------------------------------------------------------------------------------
def write_gguf(path, tensors=(), kvs=(), alignment=None):
    """tensors: (name, array, raw GGML type or None); kvs: (key, value, GGUFValueType[, sub type])."""
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, val, vtype, *sub in kvs:
        w.add_key_value(key, val, vtype, *sub)
    for name, arr, raw in tensors:
        w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def every_type_tensors(rng):
    out = [("f32", rng.standard_normal((3, 5)).astype(np.float32), None),
           ("f16", rng.standard_normal((4,)).astype(np.float16), None),
           ("bf16", rng.standard_normal((2, 3, 4)).astype(dt.bf16.np).view(np.uint16), T.BF16),
           ("f64", rng.standard_normal((2, 2)), None),
           ("i8", rng.integers(-128, 128, (5,), np.int8), None),
           ("i16", rng.integers(-999, 999, (2, 3), np.int16), None),
           ("i32", rng.integers(-9999, 9999, (1, 2, 2, 3), np.int32), None),
           ("i64", rng.integers(-9999, 9999, (3,), np.int64), None)]
    for i, name in enumerate(DECODED + ["q8_k"]):
        d = dt.dtype(name)
        shape = [(2, d.block_size), (3, 2 * d.block_size), (d.block_size,), (2, 1, 2, d.block_size)][i % 4]
        out.append((f"blk.{i}.{name}.weight", random_blocks(d, shape, rng), ggml_type(name)))
    return out


def test_reader_every_tensor_type_matches_gguf_reader(tmp_path):
    tensors = every_type_tensors(np.random.default_rng(31))
    path = write_gguf(tmp_path / "all.gguf", tensors)
    r = Reader(path)
    g = gguf.GGUFReader(path)
    assert list(r.tensors) == [t.name for t in g.tensors]
    for (name, arr, raw), gt in zip(tensors, g.tensors):
        t = r.tensors[name]
        assert t.ggml_type == gt.tensor_type.name
        assert t.shape == tuple(reversed(gt.shape.tolist()))
        assert (t.offset, t.nbytes) == (gt.data_offset, gt.n_bytes)
        assert t.offset % 32 == 0
        a = r.array(name)
        assert not a.flags.writeable                  # a read-only view of the mapped file
        assert a.tobytes() == np.asarray(gt.data).tobytes() == arr.tobytes()
        if t.dtype.is_quant:
            assert t.type == TensorType(t.shape, t.dtype) and a.dtype == np.uint8
            np.testing.assert_array_equal(a, arr)
        elif t.dtype is dt.bf16:
            np.testing.assert_array_equal(a.view(np.uint16), arr)
        else:
            assert a.dtype == arr.dtype and a.shape == arr.shape
            np.testing.assert_array_equal(a, arr)


KVS = [("t.u8", 255, V.UINT8), ("t.i8", -128, V.INT8), ("t.u16", 65535, V.UINT16),
       ("t.i16", -32768, V.INT16), ("t.u32", 2 ** 32 - 1, V.UINT32), ("t.i32", -2 ** 31, V.INT32),
       ("t.f32", 0.1, V.FLOAT32), ("t.bool", True, V.BOOL), ("t.false", False, V.BOOL),
       ("t.str", "héllo ✓ 🦙 中文", V.STRING), ("t.u64", 2 ** 64 - 1, V.UINT64),
       ("t.i64", -2 ** 63, V.INT64), ("t.f64", 1e-300, V.FLOAT64),
       ("t.arr.i32", [1, -2, 3], V.ARRAY, V.INT32), ("t.arr.f32", [0.5, -1.25, 3.0e38], V.ARRAY, V.FLOAT32),
       ("t.arr.str", ["a", "", "ü🦙", " \n\t"], V.ARRAY, V.STRING),
       ("t.arr.bool", [True, False, True], V.ARRAY, V.BOOL), ("t.arr.u8", [0, 255], V.ARRAY, V.UINT8),
       ("t.arr.i64", [2 ** 62, -5], V.ARRAY, V.INT64), ("t.arr.f64", [1.5, -2.5], V.ARRAY, V.FLOAT64),
       ("ключ.🦙", "unicode key", V.STRING)]


def test_reader_metadata_every_value_type(tmp_path):
    path = write_gguf(tmp_path / "kv.gguf", [("x", np.zeros(4, np.float32), None)], KVS)
    r = Reader(path)
    g = gguf.GGUFReader(path)
    want = {k: f.contents() for k, f in g.fields.items() if not k.startswith("GGUF.")}
    assert r.metadata == want
    assert list(r.metadata) == list(want)
    assert r.metadata["t.f32"] == float(np.float32(0.1))
    assert r.metadata["t.arr.str"] == ["a", "", "ü🦙", " \n\t"]
    assert type(r.metadata["t.bool"]) is bool and r.metadata["t.arr.bool"] == [True, False, True]
    assert r.metadata["general.architecture"] == "llama" and r.version == 3
    assert r.info_offset == g.tensors[0].field.offset      # the metadata ends where the infos start


def test_reader_custom_alignment_and_no_tensors(tmp_path):
    tensors = every_type_tensors(np.random.default_rng(37))[:6]
    path = write_gguf(tmp_path / "a64.gguf", tensors, alignment=64)
    r, g = Reader(path), gguf.GGUFReader(path)
    assert r.alignment == 64 and r.data_offset == g.data_offset
    assert [t.offset for t in r.tensors.values()] == [t.data_offset for t in g.tensors]
    assert all(t.offset % 64 == 0 for t in r.tensors.values())
    vocab = write_gguf(tmp_path / "vocab.gguf", kvs=[("tokenizer.ggml.tokens", ["a", "b"], V.ARRAY, V.STRING)])
    r = Reader(vocab)
    assert r.tensors == {} and r.metadata["tokenizer.ggml.tokens"] == ["a", "b"]


def test_reader_field_checks(tmp_path):
    path = write_gguf(tmp_path / "kv.gguf", kvs=KVS)
    r = Reader(path)
    assert r.field("t.u32", int) == 2 ** 32 - 1 and r.field("t.u32", float) == 2 ** 32 - 1
    assert r.field("t.f32", float) == r.metadata["t.f32"]
    assert r.field("t.arr.str", list)[1] == "" and r.field("nope", int, default=3) == 3
    with pytest.raises(GGUFError, match=rf"{path}: missing metadata key 'llama.block_count'"):
        r.field("llama.block_count", int)
    with pytest.raises(GGUFError, match=r"key 't.str' should be int, got str"):
        r.field("t.str", int)
    with pytest.raises(GGUFError, match=r"key 't.bool' should be int, got bool"):
        r.field("t.bool", int)
    with pytest.raises(GGUFError, match=rf"{path}: no tensor 'missing'"):
        r.array("missing")


def test_invalid_utf8_strings_keep_their_bytes(tmp_path):
    path = write_gguf(tmp_path / "u.gguf", kvs=[("t.toks", ["ab\x7f", "ok"], V.ARRAY, V.STRING)])
    data = bytearray(read_bytes(path))
    at = data.find(b"ab\x7f")
    data[at + 2] = 0xFF                               # not UTF-8 (GGUFReader fails on it)
    write_bytes(path, data)
    toks = Reader(path).metadata["t.toks"]
    assert toks[0].encode("utf-8", "surrogateescape") == b"ab\xff" and toks[1] == "ok"


def test_load_weights_and_a_quantized_module_round_trip(tmp_path):
    rng = np.random.default_rng(41)
    emb = random_blocks(dt.q6_k, (10, 256), rng)
    w = random_blocks(dt.q4_k, (6, 256), rng, 0.01, 0.05)
    bias = rng.standard_normal(6).astype(np.float32)
    path = write_gguf(tmp_path / "tiny.gguf", [("token_embd.weight", emb, T.Q6_K),
                                               ("blk.0.ffn_down.weight", w, T.Q4_K),
                                               ("blk.0.ffn_down.bias", bias, None)])
    r = Reader(path)
    m = Module("tiny")
    load_weights(m, r)
    assert {n: str(wt.type) for n, wt in m.weights.items()} == {
        "token_embd.weight": "tensor<10x256xq6_k>", "blk.0.ffn_down.weight": "tensor<6x256xq4_k>",
        "blk.0.ffn_down.bias": "tensor<6xf32>"}
    assert isinstance(m.weights["token_embd.weight"].array(), np.memmap)
    g, b = new_graph("main", {"ids": TensorType(["seq"], "i32")})
    h = b.quant.get_rows(b.weight(m, "token_embd.weight"), g.inputs[0])
    y = b.nn.add(b.quant.matmul(h, b.weight(m, "blk.0.ffn_down.weight")), b.weight(m, "blk.0.ffn_down.bias"))
    g.set_outputs([y], ["y"])
    m.add_graph(g)
    text = m.print()
    off = r.tensors["blk.0.ffn_down.weight"].offset
    assert (f"weight @blk.0.ffn_down.weight : tensor<6x256xq4_k> = "
            f"file({json.dumps(os.path.abspath(path))}, offset = {off})") in text
    assert "quant.matmul" in text and "quant.get_rows" in text
    m2 = ckir.parse(text)
    assert m2.print() == text
    ckir.verify(m2)
    ef, wf = oracle(emb, "q6_k"), oracle(w, "q4_k")
    for ids in (np.array([3], np.int32), np.array([0, 9, 3, 3], np.int32)):
        for mod in (m, m2):
            _check_product(ckir.compile(mod)(ids)["y"], ef[ids], wf, dt.f32, bias=bias)


# --- corrupt files ---------------------------------------------------------------------------------
def base_file(tmp_path):
    rng = np.random.default_rng(43)
    tensors = [("tensor_a", random_blocks(dt.q4_0, (2, 64), rng), T.Q4_0),
               ("tensor_b", rng.standard_normal((3, 4)).astype(np.float32), None),
               ("tensor_c", random_blocks(dt.q4_k, (1, 256), rng), T.Q4_K)]
    kvs = [("test.count", 7, V.UINT32), ("test.tokens", ["<s>", "hello", "🦙"], V.ARRAY, V.STRING),
           ("test.ids", [1, 2, 3], V.ARRAY, V.INT32), ("test.a", 1, V.UINT8), ("test.b", 2, V.UINT8)]
    path = write_gguf(tmp_path / "base.gguf", tensors, kvs, alignment=64)
    return path, read_bytes(path)


def _key(data, key):
    """Offset of a metadata entry's value type (just after its key)."""
    kb = key.encode()
    at = data.find(struct.pack("<Q", len(kb)) + kb)
    assert at >= 0
    return at + 8 + len(kb)


def _tensor(data, name):
    """Offset of a tensor info's dim count (just after its name)."""
    nb = name.encode()
    at = data.find(struct.pack("<Q", len(nb)) + nb)
    assert at >= 0
    return at + 8 + len(nb)


def _put(data, at, fmt, value):
    struct.pack_into(fmt, data, at, value)


def _tensor_field(data, name, field):
    at = _tensor(data, name)
    nd = struct.unpack_from("<I", data, at)[0]
    return {"ndims": at, "ne0": at + 4, "type": at + 4 + 8 * nd, "offset": at + 8 + 8 * nd}[field]


MUTATIONS = {
    "magic": (lambda d: d.__setitem__(slice(0, 4), b"GGML"), r"not a GGUF file \(bad magic number\)"),
    "version": (lambda d: _put(d, 4, "<I", 1), r"GGUF version 1 is not supported"),
    "big-endian": (lambda d: _put(d, 4, ">I", 3), r"big-endian GGUF files are not supported"),
    "tensor count": (lambda d: _put(d, 8, "<Q", 2 ** 40), r"1099511627776 tensor infos cannot fit"),
    "metadata count": (lambda d: _put(d, 16, "<Q", 2 ** 63), r"metadata entries cannot fit"),
    "value type": (lambda d: _put(d, _key(d, "test.count"), "<I", 77),
                   r"key 'test.count' has unknown value type 77"),
    "string array length": (lambda d: _put(d, _key(d, "test.tokens") + 8, "<Q", 2 ** 40),
                            r"truncated: key 'test.tokens' holds 1099511627776 strings"),
    "string length": (lambda d: _put(d, _key(d, "test.tokens") + 16, "<Q", 2 ** 62),
                      r"truncated: key 'test.tokens'\[0\] needs 4611686018427387904 bytes"),
    "int array length": (lambda d: _put(d, _key(d, "test.ids") + 8, "<Q", 2 ** 61),
                         r"truncated: key 'test.ids' holds 2305843009213693952 i32 values"),
    "nested array": (lambda d: _put(d, _key(d, "test.ids") + 4, "<I", 9), r"key 'test.ids' is an array of arrays"),
    "array element type": (lambda d: _put(d, _key(d, "test.ids") + 4, "<I", 13),
                           r"key 'test.ids' is an array of unknown value type 13"),
    "key length": (lambda d: _put(d, _key(d, "test.count") - 8 - 10, "<Q", 2 ** 40),
                   r"truncated: the key of metadata entry #\d+ needs 1099511627776 bytes"),
    "duplicate key": (lambda d: d.__setitem__(slice(_key(d, "test.b") - 1, _key(d, "test.b")), b"a"),
                      r"key 'test.a' appears twice"),
    "alignment": (lambda d: _put(d, _key(d, "general.alignment") + 4, "<I", 48),
                  r"key 'general.alignment' must be a power of two, got 48"),
    "dim count": (lambda d: _put(d, _tensor_field(d, "tensor_b", "ndims"), "<I", 5),
                  r"tensor 'tensor_b' has 5 dims \(1 to 4 allowed\)"),
    "zero dim": (lambda d: _put(d, _tensor_field(d, "tensor_b", "ne0"), "<Q", 0), r"tensor 'tensor_b' has a zero dim"),
    "iq type": (lambda d: _put(d, _tensor_field(d, "tensor_a", "type"), "<I", 16),
                r"tensor 'tensor_a' has type IQ2_XXS \(16\), which ckir does not support; supported: F32, F16, Q4_0"),
    "mxfp4 type": (lambda d: _put(d, _tensor_field(d, "tensor_c", "type"), "<I", 39),
                   r"tensor 'tensor_c' has type MXFP4 \(39\)"),
    "unknown type": (lambda d: _put(d, _tensor_field(d, "tensor_b", "type"), "<I", 99),
                     r"tensor 'tensor_b' has unknown GGML type 99"),
    "block multiple": (lambda d: _put(d, _tensor_field(d, "tensor_a", "ne0"), "<Q", 48),
                       r"tensor 'tensor_a': Q4_0 packs blocks of 32 elements, but its innermost dim is 48"),
    "misaligned offset": (lambda d: _put(d, _tensor_field(d, "tensor_b", "offset"), "<Q", 4),
                          r"tensor 'tensor_b': offset 4 is not a multiple of the alignment 64"),
    "offset past the end": (lambda d: _put(d, _tensor_field(d, "tensor_b", "offset"), "<Q", 2 ** 40),
                            r"tensor 'tensor_b': its 48 bytes at offset \d+ run past the end of the file"),
    "overlap": (lambda d: _put(d, _tensor_field(d, "tensor_c", "offset"), "<Q", 0),
                r"tensors 'tensor_a' and 'tensor_c' overlap in the file"),
    "duplicate tensor": (lambda d: d.__setitem__(slice(_tensor(d, "tensor_b") - 1, _tensor(d, "tensor_b")), b"a"),
                         r"tensor 'tensor_a' appears twice"),
    "empty name": (lambda d: d.__setitem__(slice(_tensor(d, "tensor_b") - 16, _tensor(d, "tensor_b")),
                                           struct.pack("<Q", 0) + b"\x00" * 8), r"tensor #1 has an empty name"),
    "truncated data": (lambda d: d.__delitem__(slice(len(d) - 100, None)),
                       r"tensor 'tensor_c': its 144 bytes at offset \d+ run past the end of the file \(\d+ bytes\)"),
    "truncated header": (lambda d: d.__delitem__(slice(150, None)),
                         r"truncated: .* needs \d+ bytes at offset \d+, the file has 150"),
    "empty file": (lambda d: d.clear(), r"truncated: the magic number needs 4 bytes at offset 0, the file has 0"),
}


@pytest.mark.parametrize("case", list(MUTATIONS))
def test_corrupt_files_raise_gguf_errors_naming_the_problem(tmp_path, case):
    path, data = base_file(tmp_path)
    Reader(path)                                        # the unmodified file reads
    mutate, msg = MUTATIONS[case]
    bad = bytearray(data)
    mutate(bad)
    bad_path = write_bytes(tmp_path / "bad.gguf", bad)
    with pytest.raises(GGUFError, match=msg) as e:
        Reader(bad_path)
    assert str(e.value).startswith(bad_path + ": ")
    assert isinstance(e.value, CkirError)


def test_unsupported_types_written_by_gguf_writer(tmp_path):
    for qt, name in ((T.IQ4_NL, "IQ4_NL"), (T.TQ2_0, "TQ2_0"), (T.MXFP4, "MXFP4")):
        bb = gguf.GGML_QUANT_SIZES[qt][1]
        path = write_gguf(tmp_path / f"{name}.gguf", [("blk.0.attn_q.weight", np.zeros((2, bb), np.uint8), qt)])
        with pytest.raises(GGUFError, match=rf"tensor 'blk.0.attn_q.weight' has type {name} \({int(qt)}\), "
                                            "which ckir does not support"):
            Reader(path)


def test_missing_files_and_directories(tmp_path):
    with pytest.raises(GGUFError, match=r"nope.gguf: cannot open: No such file"):
        Reader(tmp_path / "nope.gguf")
    with pytest.raises(GGUFError, match=r"cannot open"):
        Reader(tmp_path)


def _read_everything(path):
    """Parse, and on success touch every tensor: decode the block-quantized ones and map each as
    a module weight (which checks the file size again)."""
    r = Reader(path)
    m = Module("fuzz")
    load_weights(m, r)
    for t in r.tensors.values():
        a = r.array(t.name)
        assert a.nbytes == t.nbytes and t.offset + t.nbytes <= os.path.getsize(path)
        if t.dtype.is_quant:
            with np.errstate(all="ignore"):
                decode(a, t.dtype)
        assert m.weights[t.name].array().tobytes() == a.tobytes()
    return r


def test_fuzz_truncated_at_every_length(tmp_path):
    path, data = base_file(tmp_path)
    last_end = max(t.offset + t.nbytes for t in Reader(path).tensors.values())
    for cut in range(len(data)):
        p = write_bytes(tmp_path / f"cut{cut}.gguf", data[:cut])
        try:
            _read_everything(p)
        except GGUFError as e:
            assert str(e).startswith(p + ": ")
        else:
            assert cut >= last_end        # only the padding after the last tensor may go
        os.remove(p)


def test_fuzz_flipped_bytes(tmp_path):
    path, data = base_file(tmp_path)
    header_end = Reader(path).data_offset
    rng = np.random.default_rng(47)
    outcomes = {"error": 0, "read": 0}
    for i in range(1500):
        bad = bytearray(data)
        for _ in range(rng.integers(1, 4)):
            at = int(rng.integers(0, header_end if i % 4 else len(data)))
            bad[at] ^= int(rng.integers(1, 256))
        p = write_bytes(tmp_path / f"flip{i}.gguf", bad)
        try:
            _read_everything(p)
            outcomes["read"] += 1
        except GGUFError as e:
            assert str(e).startswith(p + ": ")
            outcomes["error"] += 1
        os.remove(p)
    assert outcomes["error"] > 300 and outcomes["read"] > 100      # both paths were exercised
