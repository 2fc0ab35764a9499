"""GGML block-quantized weights (llama.cpp's formats): decoding, the linear layer on a quantized
weight, and embedding rows from a quantized table.

A tensor of a block type (q4_0 ... q8_k) with logical shape [..., K] is stored as raw uint8
[..., K / block_size * block_bytes]: each run of `block_size` elements along the innermost dim
is one block, laid out as in ggml-common.h (offsets below, little-endian). Decoding repeats
ggml-quants.c's dequantize_row_* operation by operation in f32 (f16 scales widen exactly), so
it is bit-identical to llama.cpp's reference decoder and to gguf.quants.dequantize.

The raw bytes do not say which block type they hold, so these references take the operand
types as `types`.
"""
from __future__ import annotations

import math

import numpy as np

from ckir import dtypes as dt
from ckir.errors import CkirError, ShapeError
from ckir.opdef import QUANT, Arg, Attr, Cost, Ex, Operand, declare, not_differentiable
from ckir.types import TensorType, concrete

from ..nn._util import numel

F32 = np.float32
RESULTS = (dt.f32, dt.f16, dt.bf16, dt.f64)
TO = Attr("to", "dtype", "f32", doc="the result dtype: f32, f16, bf16 or f64 (decoded in f32, "
                                    "then rounded once)")


def _f16(b, at):
    """The f16 field at byte `at` of each block, as f32 [n, 1]."""
    return np.ascontiguousarray(b[:, at:at + 2]).view(np.float16).astype(F32)


def _nibbles(qs):
    """[n, m] bytes -> [n, 2m]: the low nibbles, then the high nibbles."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bits(qh, count):
    """Bit i (i < count) of each little-endian 32-bit qh [n, 4], as [n, count] in {0, 1}."""
    word = np.ascontiguousarray(qh).view("<u4")
    return ((word >> np.arange(count, dtype=np.uint32)) & 1).astype(np.uint8)


_SHIFT2 = np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
_BIT8 = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)


def _crumbs(qs):
    """K-quant 2-bit fields: qs [n, 64] -> [n, 256]; element h*128 + j*32 + l is bits 2j..2j+1
    of qs[h*32 + l] (l < 32)."""
    n = qs.shape[0]
    return ((qs.reshape(n, 2, 1, 32) >> _SHIFT2) & 3).reshape(n, 256)


def _scale_min_k4(s):
    """ggml's get_scale_min_k4 for j = 0..7: 6-bit scales and mins packed in 12 bytes."""
    lo, mid, hi = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([lo & 63, (hi & 0x0F) | ((lo >> 6) << 4)], axis=1)
    mn = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=1)
    return sc.astype(F32), mn.astype(F32)


def _q4_0(b):    # d f16 | qs[16]: element j < 16 low nibble of qs[j], j >= 16 high nibble
    q = _nibbles(b[:, 2:18]).astype(F32) - F32(8)
    return _f16(b, 0) * q


def _q4_1(b):    # d f16 | m f16 | qs[16]
    return _f16(b, 0) * _nibbles(b[:, 4:20]).astype(F32) + _f16(b, 2)


def _q5_0(b):    # d f16 | qh u32 (bit j: 5th bit of element j) | qs[16]
    q = (_nibbles(b[:, 6:22]) | (_bits(b[:, 2:6], 32) << 4)).astype(F32) - F32(16)
    return _f16(b, 0) * q


def _q5_1(b):    # d f16 | m f16 | qh u32 | qs[16]
    q = (_nibbles(b[:, 8:24]) | (_bits(b[:, 4:8], 32) << 4)).astype(F32)
    return _f16(b, 0) * q + _f16(b, 2)


def _q8_0(b):    # d f16 | qs int8[32]
    return _f16(b, 0) * b[:, 2:34].view(np.int8).astype(F32)


def _q2_k(b):    # scales[16] (low nibble scale, high nibble min) | qs[64] | d f16 | dmin f16
    n = b.shape[0]
    sc = b[:, 0:16]
    dl = _f16(b, 80) * (sc & 0x0F).astype(F32)
    ml = _f16(b, 82) * (sc >> 4).astype(F32)
    q = _crumbs(b[:, 16:80]).astype(F32).reshape(n, 16, 16)
    return (dl[:, :, None] * q - ml[:, :, None]).reshape(n, 256)


def _q3_k(b):    # hmask[32] | qs[64] | scales[12] (16 6-bit values) | d f16
    n = b.shape[0]
    s = b[:, 96:108]
    low = np.concatenate([s[:, 0:8] & 0x0F, s[:, 0:8] >> 4], axis=1)
    high = ((s[:, None, 8:12] >> _SHIFT2[0]) & 3).reshape(n, 16)
    dl = _f16(b, 108) * ((low | (high << 4)).astype(F32) - F32(32))
    # element h*128 + j*32 + l takes its high bit from bit h*4 + j of hmask[l]; clear means -4
    hbit = ((b[:, None, 0:32] >> _BIT8) & 1).reshape(n, 256)
    q = _crumbs(b[:, 32:96]).astype(np.int16) - 4 * (1 - hbit.astype(np.int16))
    return (dl[:, :, None] * q.astype(F32).reshape(n, 16, 16)).reshape(n, 256)


def _q4_k_low(qs):
    """qs [n, 128] -> [n, 8, 32]: sub-block 2c is the low nibbles of qs[32c:32c+32], 2c+1 the high."""
    n = qs.shape[0]
    q = qs.reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    return (q & 0x0F).reshape(n, 8, 32)


def _q4_k(b):    # d f16 | dmin f16 | scales[12] | qs[128]
    n = b.shape[0]
    sc, mn = _scale_min_k4(b[:, 4:16])
    d1, m1 = _f16(b, 0) * sc, _f16(b, 2) * mn
    q = _q4_k_low(b[:, 16:144]).astype(F32)
    return (d1[:, :, None] * q - m1[:, :, None]).reshape(n, 256)


def _q5_k(b):    # d f16 | dmin f16 | scales[12] | qh[32] (bit s: 5th bit in sub-block s) | qs[128]
    n = b.shape[0]
    sc, mn = _scale_min_k4(b[:, 4:16])
    d1, m1 = _f16(b, 0) * sc, _f16(b, 2) * mn
    high = (b[:, None, 16:48] >> _BIT8) & 1
    q = (_q4_k_low(b[:, 48:176]) + (high << 4)).astype(F32)
    return (d1[:, :, None] * q - m1[:, :, None]).reshape(n, 256)


def _q6_k(b):    # ql[128] | qh[64] | scales int8[16] | d f16
    n = b.shape[0]
    ql = b[:, 0:128].reshape(n, 2, 2, 32)
    low = np.stack([ql[:, :, 0] & 0x0F, ql[:, :, 1] & 0x0F, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
    high = (b[:, 128:192].reshape(n, 2, 1, 32) >> _SHIFT2) & 3
    q = ((low | (high << 4)).astype(F32) - F32(32)).reshape(n, 16, 16)
    ds = _f16(b, 208) * b[:, 192:208].view(np.int8).astype(F32)
    return (ds[:, :, None] * q).reshape(n, 256)


def _q8_k(b):    # d f32 | qs int8[256] | bsums int16[16] (sums for dot products; unused here)
    d = np.ascontiguousarray(b[:, 0:4]).view("<f4").astype(F32)
    return d * b[:, 4:260].view(np.int8).astype(F32)


_DECODERS = {dt.q4_0: _q4_0, dt.q4_1: _q4_1, dt.q5_0: _q5_0, dt.q5_1: _q5_1, dt.q8_0: _q8_0,
             dt.q2_k: _q2_k, dt.q3_k: _q3_k, dt.q4_k: _q4_k, dt.q5_k: _q5_k, dt.q6_k: _q6_k,
             dt.q8_k: _q8_k}

# Byte offsets of each block's float scale fields (f16; q8_k's d is f32), for making valid
# random blocks.
SCALE_FIELDS = {dt.q4_0: (0,), dt.q4_1: (0, 2), dt.q5_0: (0,), dt.q5_1: (0, 2), dt.q8_0: (0,),
                dt.q2_k: (80, 82), dt.q3_k: (108,), dt.q4_k: (0, 2), dt.q5_k: (0, 2),
                dt.q6_k: (208,), dt.q8_k: (0,)}


def decode(raw: np.ndarray, dtype) -> np.ndarray:
    """Blocks of `dtype` stored as uint8 [..., nblocks * block_bytes] -> f32 [..., nblocks *
    block_size]."""
    d = dt.dtype(dtype)
    if d not in _DECODERS:
        raise CkirError(f"{d} is not a GGML block type")
    raw = np.asarray(raw)
    if raw.dtype != np.uint8 or raw.ndim < 1 or raw.shape[-1] % d.block_bytes:
        raise CkirError(f"{d} data must be uint8 with a whole number of {d.block_bytes}-byte "
                        f"blocks per row, got {raw.dtype}{list(raw.shape)}")
    nb = raw.shape[-1] // d.block_bytes
    y = _DECODERS[d](np.ascontiguousarray(raw).reshape(-1, d.block_bytes))
    return y.reshape(raw.shape[:-1] + (nb * d.block_size,))


def random_blocks(dtype, shape, rng, low=0.01, high=0.1) -> np.ndarray:
    """Random valid blocks for a tensor of `dtype` with logical `shape`: random bytes whose
    scale fields hold finite values of magnitude in [low, high) and random sign."""
    d = dt.dtype(dtype)
    shape = tuple(shape)
    raw = rng.integers(0, 256, shape[:-1] + (shape[-1] // d.block_size * d.block_bytes,), np.uint8)
    blocks = raw.reshape(-1, d.block_bytes)
    ftype = np.dtype("<f4") if d is dt.q8_k else np.dtype("<f2")
    for at in SCALE_FIELDS[d]:
        v = rng.uniform(low, high, (blocks.shape[0], 1)) * rng.choice([-1.0, 1.0], (blocks.shape[0], 1))
        blocks[:, at:at + ftype.itemsize] = v.astype(ftype).view(np.uint8)
    return raw


class Blocks(Arg):
    """An example operand of a block type: `Blocks("q4_k[3,256]")` gives random valid blocks
    (see random_blocks; low/high bound the scales' magnitude)."""

    def sample(self, rng):
        if self.low is None:
            return random_blocks(self.dtype, self.shape, rng)
        return random_blocks(self.dtype, self.shape, rng, self.low, self.high)


def _check_to(to):
    if to not in RESULTS:
        raise ShapeError(f"to must be f32, f16, bf16 or f64, got {to}")


def _table(w: TensorType, what: str):
    if w.rank != 2:
        raise ShapeError(f"{what} must be a 2-D [N, K] block-quantized tensor, got {w}")


@declare
class dequantize:
    """Decode GGML blocks: w of a block type (q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k,
    q5_k, q6_k, q8_k), any shape [..., K], to dtype `to` (default f32), same shape. Each block
    decodes exactly as llama.cpp's dequantize_row_* in f32 (bit-identical to
    gguf.quants.dequantize); f16/bf16 results round that once, f64 widens it exactly.
    Not differentiable: w is quantized."""
    name = "quant.dequantize"
    operands = (Operand("w", QUANT),)
    attrs = (TO,)
    traits = {"pure"}
    vjp = not_differentiable("w holds quantized blocks (raw bytes): there is no gradient to give it")
    examples = (Ex(Blocks("q4_0[2,64]")), Ex(Blocks("q4_1[3,32]")), Ex(Blocks("q5_0[1,96]")),
                Ex(Blocks("q5_1[2,32]"), to="f16"), Ex(Blocks("q8_0[2,3,32]")),
                Ex(Blocks("q2_k[2,256]")), Ex(Blocks("q3_k[1,512]"), to="bf16"),
                Ex(Blocks("q4_k[2,256]")), Ex(Blocks("q5_k[1,256]"), to="f64"),
                Ex(Blocks("q6_k[2,256]")), Ex(Blocks("q8_k[256]")))

    def infer(w, *, to):
        _check_to(to)
        return TensorType(w.shape, to)

    def ref(w, *, to, types):
        return decode(w, types[0].dtype).astype(to.np, copy=False)

    def cost(op, bind):
        w, y = op.operands[0].type, op.results[0].type
        return Cost(2 * numel(y, bind), w.nbytes(bind), y.nbytes(bind))


@declare
class matmul:
    """The linear layer on a quantized weight, GGML's layout: y = x @ dequantize(w)^T with x
    float [..., K] (f32, f16, bf16 or f64; rank 1 is one row) and w a block-quantized [N, K]
    (one row per output feature, blocks along K); y is [..., N] in x's dtype. The reference
    decodes w as quant.dequantize does and multiplies in f32 (f64 for f64 x), rounding
    f16/bf16 results once. Cost: 2*M*N*K FLOPs for the products plus 2*N*K for decoding;
    bytes read are x's plus w's quantized bytes. Gradient: x gets g @ dequantize(w); w gets
    none (quantized weights are not differentiable)."""
    name = "quant.matmul"
    operands = (Operand("x", RESULTS), Operand("w", QUANT))
    traits = {"pure"}
    examples = (Ex("f32[3,64]", Blocks("q4_0[5,64]")), Ex("f32[32]", Blocks("q8_0[3,32]")),
                Ex("f16[2,2,256]", Blocks("q4_k[3,256]")), Ex("bf16[1,256]", Blocks("q6_k[2,256]")),
                Ex("f32[2,64]", Blocks("q5_1[4,64]")), Ex("f32[4,256]", Blocks("q2_k[2,256]")),
                Ex("f32[2,256]", Blocks("q3_k[3,256]")), Ex("f32[1,256]", Blocks("q5_k[2,256]")),
                Ex("f32[2,32]", Blocks("q4_1[3,32]")), Ex("f32[3,32]", Blocks("q5_0[2,32]")),
                Ex("f32[2,256]", Blocks("q8_k[2,256]")))

    def infer(x, w):
        _table(w, "w")
        if x.rank < 1:
            raise ShapeError(f"x must have rank >= 1, got {x}")
        k, kw = x.shape[-1], w.shape[1]
        if type(k) is int and type(kw) is int and k != kw:
            raise ShapeError(f"x {x} has K = {k} but w {w} has K = {kw}")
        return TensorType(x.shape[:-1] + (w.shape[0],), x.dtype)

    def ref(x, w, *, types):
        wf = decode(w, types[1].dtype)
        if x.shape[-1] != wf.shape[1]:
            raise CkirError(f"x has K = {x.shape[-1]} but w has K = {wf.shape[1]}")
        c = np.float64 if x.dtype == np.float64 else F32
        return np.matmul(x.astype(c, copy=False), wf.astype(c, copy=False).T).astype(x.dtype, copy=False)

    def vjp(b, op, g):
        if g is None:
            return [None, None]
        x, w = op.operands
        dx = b.nn.matmul(g, b.quant.dequantize(w, to=x.type.dtype))
        if dx.type is not x.type:
            dx = b.nn.reshape_like(dx, x)
        return [dx, None]

    def cost(op, bind):
        x, w = op.operands[0].type, op.operands[1].type
        n, k = concrete(w.shape, bind)
        rows = math.prod(concrete(x.shape[:-1], bind))
        return Cost(2 * rows * n * k + 2 * n * k, x.nbytes(bind) + w.nbytes(bind),
                    op.results[0].type.nbytes(bind))


@declare
class get_rows:
    """Embedding lookup in a quantized table: y[i..., :] = dequantize(w)[ids[i...], :] for w a
    block-quantized [V, K] and ids i32/i64 of any shape; y is ids.shape + [K] in dtype `to`
    (default f32). Only the selected rows are decoded (as quant.dequantize does). Every id must
    be in [0, V): anything else (negative ids included) is an error naming it, never a read out
    of bounds. Cost: the ids plus the selected rows' quantized bytes. Not differentiable: w is
    quantized and ids are integers."""
    name = "quant.get_rows"
    operands = (Operand("w", QUANT), Operand("ids", (dt.i32, dt.i64)))
    attrs = (TO,)
    traits = {"pure"}
    vjp = not_differentiable("w holds quantized blocks and ids are integers")
    examples = (Ex(Blocks("q4_k[5,256]"), np.array([[0, 4], [2, 2]], np.int64)),
                Ex(Blocks("q8_0[3,64]"), np.array([1], np.int32), to="f16"),
                Ex(Blocks("q6_k[4,256]"), np.array(3, np.int64)),
                Ex(Blocks("q4_0[6,32]"), np.array([5, 0, 1], np.int32), to="f64"))

    def infer(w, ids, *, to):
        _check_to(to)
        _table(w, "w")
        return TensorType(ids.shape + (w.shape[1],), to)

    def ref(w, ids, *, to, types):
        v = w.shape[0]
        bad = (ids < 0) | (ids >= v)
        if bad.any():
            raise CkirError(f"row id {int(ids[bad][0])} is out of range for a table of {v} rows")
        rows = decode(w[ids.reshape(-1)], types[0].dtype)
        return rows.reshape(ids.shape + rows.shape[-1:]).astype(to.np, copy=False)

    def cost(op, bind):
        w, ids = op.operands[0].type, op.operands[1].type
        k = concrete(w.shape, bind)[1]
        rows = numel(ids, bind)
        return Cost(2 * rows * k, ids.nbytes(bind) + rows * w.dtype.nbytes(k),
                    op.results[0].type.nbytes(bind))
