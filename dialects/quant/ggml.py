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


def _int_parts(b, d):
    """The integer form of blocks b [n, block_bytes] of type d, as llama.cpp's dot products use
    it: (q, sc, mn, dw, mw, group) with q int32 [n, block_size] the quantized values, sc/mn int32
    [n, block_size/group] the sub-block scales and mins (mn None when the type has none), dw f32
    [n] the block scale and mw f32 [n] the min's scale (d for the K-quants' mins, the additive m
    of q4_1/q5_1; None when absent). A block decodes to dw*sc*q - mw*mn (K-quants) or
    dw*q + mw (q4_1, q5_1)."""
    n = b.shape[0]
    i32 = np.int32
    one = np.ones((n, 1), i32)

    def f16(at):
        return _f16(b, at)[:, 0]
    if d is dt.q4_0:
        return _nibbles(b[:, 2:18]).astype(i32) - 8, one, None, f16(0), None, 32
    if d is dt.q4_1:
        return _nibbles(b[:, 4:20]).astype(i32), one, None, f16(0), f16(2), 32
    if d is dt.q5_0:
        q = (_nibbles(b[:, 6:22]) | (_bits(b[:, 2:6], 32) << 4)).astype(i32) - 16
        return q, one, None, f16(0), None, 32
    if d is dt.q5_1:
        q = (_nibbles(b[:, 8:24]) | (_bits(b[:, 4:8], 32) << 4)).astype(i32)
        return q, one, None, f16(0), f16(2), 32
    if d is dt.q8_0:
        return b[:, 2:34].view(np.int8).astype(i32), one, None, f16(0), None, 32
    if d is dt.q2_k:
        sc = b[:, 0:16]
        return (_crumbs(b[:, 16:80]).astype(i32), (sc & 0x0F).astype(i32), (sc >> 4).astype(i32),
                f16(80), f16(82), 16)
    if d is dt.q3_k:
        s = b[:, 96:108]
        low = np.concatenate([s[:, 0:8] & 0x0F, s[:, 0:8] >> 4], axis=1)
        high = ((s[:, None, 8:12] >> _SHIFT2[0]) & 3).reshape(n, 16)
        hbit = ((b[:, None, 0:32] >> _BIT8) & 1).reshape(n, 256)
        q = _crumbs(b[:, 32:96]).astype(i32) - 4 * (1 - hbit.astype(i32))
        return q, (low | (high << 4)).astype(i32) - 32, None, f16(108), None, 16
    if d in (dt.q4_k, dt.q5_k):
        sc, mn = _scale_min_k4(b[:, 4:16])
        if d is dt.q4_k:
            q = _q4_k_low(b[:, 16:144]).astype(i32)
        else:
            q = _q4_k_low(b[:, 48:176]).astype(i32) + (((b[:, None, 16:48] >> _BIT8) & 1).astype(i32) << 4)
        return q.reshape(n, 256), sc.astype(i32), mn.astype(i32), f16(0), f16(2), 32
    if d is dt.q6_k:
        ql = b[:, 0:128].reshape(n, 2, 2, 32)
        low = np.stack([ql[:, :, 0] & 0x0F, ql[:, :, 1] & 0x0F, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
        high = (b[:, 128:192].reshape(n, 2, 1, 32) >> _SHIFT2) & 3
        q = (low | (high << 4)).astype(i32).reshape(n, 256) - 32
        return q, b[:, 192:208].view(np.int8).astype(i32), None, f16(208), None, 16
    d8 = np.ascontiguousarray(b[:, 0:4]).view("<f4").astype(F32)[:, 0]
    return b[:, 4:260].view(np.int8).astype(i32), one, None, d8, None, 256


def quantize_act(x: np.ndarray, block: int):
    """Activation rows x f32 [R, K] as llama.cpp's x86 code quantizes them for the dot products:
    block 32 (q8_0 / q8_1: d = amax/127 stored as f16, q = round-half-even(x * (127/amax)),
    s = f16(d * sum(q))) or block 256 (q8_K: with `mx` the first element of largest magnitude,
    q = min(127, round-half-even(x * (-127/mx))), d = 1/(-127/mx) in f32). Returns q int32
    [R, K], d f32 [R, K/block], s f32 [R, K/block] (block 32 only, else None)."""
    r, k = x.shape
    xb = x.astype(F32).reshape(r, k // block, block)
    ax = np.abs(xb)
    if block == 32:
        amax = ax.max(axis=-1)
        d = amax / F32(127)
        with np.errstate(divide="ignore"):
            inv = np.where(amax != 0, F32(127) / amax, F32(0)).astype(F32)
        q = np.rint(xb * inv[..., None]).astype(np.int32)
        s = (d * q.sum(axis=-1).astype(F32)).astype(np.float16).astype(F32)
        return q.reshape(r, k), d.astype(np.float16).astype(F32), s
    mx = np.take_along_axis(xb, ax.argmax(axis=-1)[..., None], axis=-1)[..., 0]
    with np.errstate(divide="ignore"):
        iscale = np.where(mx != 0, F32(-127) / mx, F32(0)).astype(F32)
        d = np.where(mx != 0, F32(1) / iscale, F32(0)).astype(F32)
    q = np.minimum(np.rint(xb * iscale[..., None]), 127).astype(np.int32)
    return q.reshape(r, k), d, None


def _matmul_q8(x: np.ndarray, w: np.ndarray, d) -> np.ndarray:
    """act="q8": x [R, K] f32 quantized per row (quantize_act; q8_0/q8_1 blocks for the 32-element
    types, q8_K for the K-quants and q8_k), then per weight block an exact integer dot product
    scaled in f32 as llama.cpp does: f32(dw*da)*isum + f32(mw*s) (q4_1, q5_1) or
    f32(dw*da)*isum - f32(mw*da)*msum (K-quants), isum = sum over sub-blocks of sc * sum(q*qa),
    msum = sum over sub-blocks of mn * sum(qa); the block terms are summed in f64 and rounded
    to f32 once."""
    nw, kb = w.shape[0], w.shape[1] // d.block_bytes
    q, sc, mn, dw, mw, g = _int_parts(np.ascontiguousarray(w).reshape(-1, d.block_bytes), d)
    bs = d.block_size
    qa, da, sa = quantize_act(x, bs)
    r = x.shape[0]
    # integer sums as f64 matmuls over each block: every product and partial sum is an integer
    # below 2^53, so they are exact
    qs = (q.reshape(nw, kb, bs // g, g) * sc.reshape(nw, kb, -1, 1)).astype(np.float64)
    qa = qa.reshape(r, kb, bs // g, g).astype(np.float64)
    isum = np.matmul(qa.reshape(r, kb, bs).transpose(1, 0, 2), qs.reshape(nw, kb, bs).transpose(1, 2, 0))
    isum = isum.transpose(1, 2, 0).astype(F32)                      # [r, n, kb]
    dw = dw.reshape(nw, kb)
    dd = (dw[None] * da[:, None]).astype(F32)                     # [r, n, kb]
    terms = (dd * isum).astype(np.float64)
    if mw is not None:
        mw = mw.reshape(nw, kb)
        if mn is None:                                                # q4_1, q5_1: + m * s
            terms += (mw[None] * sa[:, None]).astype(F32)
        else:
            msum = np.matmul(qa.sum(axis=-1).transpose(1, 0, 2),
                             mn.reshape(nw, kb, -1).astype(np.float64).transpose(1, 2, 0))
            msum = msum.transpose(1, 2, 0).astype(F32)
            terms -= ((mw[None] * da[:, None]).astype(F32) * msum).astype(F32)
    return terms.sum(axis=-1).astype(F32)


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
    f16/bf16 results once. With act="q8" (f32, f16 and bf16 x; f64 x is always exact) the
    result is llama.cpp's instead (its x86 CPU code), so that kernels may use 8-bit integer dot
    products: each row of x, in f32, is quantized per block of 32 (for q4_0 ... q8_0: amax =
    max|x|, qa = round-half-even(x * (127/amax)), da = f16(amax/127), s = f16(amax/127 *
    sum(qa))) or of 256 (K-quants and q8_k: mx = the first x of largest magnitude, qa =
    min(127, round-half-even(x * (-127/mx))), da = 1/(-127/mx)); each weight block, with
    quantized values q, sub-block scales sc and mins mn (as in its decoding: value = d*sc*q -
    dmin*mn, or d*q + m for q4_1/q5_1), then contributes f32(d*da) * isum + f32(m*s) (q4_1,
    q5_1) or f32(d*da) * isum - f32(dmin*da) * msum (K-quants), with the exact integers isum =
    sum(sc*q*qa) and msum = sum over sub-blocks of mn*sum(qa); block terms are summed exactly
    and rounded to f32 once. This differs from the exact result by the activations' rounding
    (at most half a step, amax/254, per element of x).
    Cost: 2*M*N*K FLOPs for the products plus 2*N*K for decoding;
    bytes read are x's plus w's quantized bytes. Gradient: x gets g @ dequantize(w); w gets
    none (quantized weights are not differentiable)."""
    name = "quant.matmul"
    operands = (Operand("x", RESULTS), Operand("w", QUANT))
    attrs = (Attr("act", "str", "f32", choices=("f32", "q8"),
                  doc="f32: exact (x times the decoded weights in f32); q8: quantize each row of "
                      "x to 8-bit blocks first, as llama.cpp does (see the op doc)"),)
    traits = {"pure"}
    examples = (Ex("f32[3,64]", Blocks("q4_0[5,64]"), act="q8"), Ex("f32[2,256]", Blocks("q4_k[3,256]"), act="q8"),
                Ex("f32[32]", Blocks("q4_1[3,32]"), act="q8"), Ex("bf16[2,256]", Blocks("q6_k[2,256]"), act="q8"),
                Ex("f32[3,64]", Blocks("q4_0[5,64]")), Ex("f32[32]", Blocks("q8_0[3,32]")),
                Ex("f16[2,2,256]", Blocks("q4_k[3,256]")), Ex("bf16[1,256]", Blocks("q6_k[2,256]")),
                Ex("f32[2,64]", Blocks("q5_1[4,64]")), Ex("f32[4,256]", Blocks("q2_k[2,256]")),
                Ex("f32[2,256]", Blocks("q3_k[3,256]")), Ex("f32[1,256]", Blocks("q5_k[2,256]")),
                Ex("f32[2,32]", Blocks("q4_1[3,32]")), Ex("f32[3,32]", Blocks("q5_0[2,32]")),
                Ex("f32[2,256]", Blocks("q8_k[2,256]")))

    def infer(x, w, *, act):
        _table(w, "w")
        if x.rank < 1:
            raise ShapeError(f"x must have rank >= 1, got {x}")
        k, kw = x.shape[-1], w.shape[1]
        if type(k) is int and type(kw) is int and k != kw:
            raise ShapeError(f"x {x} has K = {k} but w {w} has K = {kw}")
        return TensorType(x.shape[:-1] + (w.shape[0],), x.dtype)

    def ref(x, w, *, act, types):
        d = types[1].dtype
        if x.shape[-1] != w.shape[1] // d.block_bytes * d.block_size:
            raise CkirError(f"x has K = {x.shape[-1]} but w has K = {w.shape[1] // d.block_bytes * d.block_size}")
        if act == "q8" and x.dtype != np.float64:
            y = _matmul_q8(x.reshape(-1, x.shape[-1]).astype(F32), w, d)
            return y.reshape(x.shape[:-1] + (w.shape[0],)).astype(x.dtype)
        wf = decode(w, d)
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
