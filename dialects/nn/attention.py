"""Transformer attention: rotary position embedding, scaled dot-product attention, and the
helpers their gradients are built from (causal_mask, repeat_interleave, group_sum)."""
from __future__ import annotations

import math

import numpy as np

from ckir import dtypes as dt
from ckir.errors import CkirError, ShapeError
from ckir.opdef import ANY, BOOL, FLOAT, NUMERIC, Arg, Attr, Cost, Ex, Operand, declare, not_differentiable
from ckir.types import ANY as ANYDIM
from ckir.types import TensorType, broadcast_shapes, concrete, fmt_shape, same_dim

from ._util import broadcasts_to, data_movement_cost, norm_axis, numel, same_dtype, unbroadcast, wide



# --- rope --------------------------------------------------------------------------------------
def _inv_freq(theta, rd):
    """theta^(-2i/rd) for i in [0, rd/2), in float64."""
    return 1.0 / theta ** (np.arange(0, rd, 2, dtype=np.float64) / rd)


def _rotary_dim(rotary_dim, d):
    """The rotated width; `d` is the last dim (an int, or a Sym when only checking types)."""
    if rotary_dim is not None:
        if rotary_dim <= 0 or rotary_dim % 2:
            raise ShapeError(f"rotary_dim must be a positive even number, got {rotary_dim}")
        if type(d) is int and rotary_dim > d:
            raise ShapeError(f"rotary_dim {rotary_dim} exceeds the last dim {d}")
        return rotary_dim
    if type(d) is int and d % 2:
        raise ShapeError(f"the last dim {d} is odd; rope rotates pairs (set rotary_dim)")
    return d


def _pairs(interleaved, rd):
    """Index expressions of the two halves of each rotated pair along the last axis."""
    if interleaved:
        return (..., slice(0, rd, 2)), (..., slice(1, rd, 2))
    return (..., slice(0, rd // 2)), (..., slice(rd // 2, rd))


@declare
class rope:
    """Rotary position embedding. x is float (..., D); `positions` (any int or float dtype)
    broadcasts against x.shape[:-1] with numpy's right-aligned rules and may not enlarge it:
    x (T, H, D) takes positions (T, 1) or (T, H); x (B, H, T, D) takes (T,), (B, 1, T) or
    (B, H, T). With rd = `rotary_dim` (absent: D; must be even and <= D) the first rd channels
    are rotated in rd/2 pairs and channels [rd, D) pass through unchanged. Pair i turns by

        angle_i = (positions * scale) * theta^(-2i/rd),   i in [0, rd/2)

    as (a, b) -> (a cos - b sin, b cos + a sin). `interleaved = false` pairs channels
    (i, i + rd/2) (NEOX / rotate-half: HF llama, qwen2, gemma); `interleaved = true` pairs
    (2i, 2i+1) (GPT-J, llama.cpp's LLAMA_ROPE_TYPE_NORM). `scale` multiplies the positions
    (linear RoPE scaling; a negative scale turns backwards, which is how the gradient is built).

    Precision: angles, cos, sin and the rotation are computed in float64 for every dtype and
    rounded once to x's dtype: the rotation correctly rounded up to float64 noise.
    Implementations that form angles in float32 (HF transformers, llama.cpp) are off by up to
    about |position * scale| * 2^-23 radians, visibly so at positions in the tens of thousands.

    Gradient: the rotation is orthogonal, so dx is the rope of dy with the opposite angle.
    Integer positions get none; float positions get sum over pairs of
    scale * theta^(-2i/rd) * (dy . d(rotation)/d(angle)), which needs a static D."""
    name = "nn.rope"
    operands = (Operand("x", FLOAT), Operand("positions", NUMERIC))
    attrs = (Attr("theta", "float", 10000.0, doc="frequency base"),
             Attr("interleaved", "bool", False, doc="pair (2i, 2i+1) instead of (i, i + rd/2)"),
             Attr("rotary_dim", "int", None, doc="rotate only the first rotary_dim channels"),
             Attr("scale", "float", 1.0, doc="positions are multiplied by it"))
    traits = {"pure", "inplace"}
    examples = (Ex("f32[5,2,8]", Arg("i64[5,1]", 0, 50)),
                Ex("f32[2,3,5,6]", Arg("i32[5]", 0, 1000), interleaved=True),
                Ex("f32[4,10]", Arg("f32[4]", -20.0, 20.0), rotary_dim=6, theta=500.0),
                Ex("f32[3,2,8]", Arg("f32[3,1]", 0.0, 30.0), interleaved=True, rotary_dim=4, scale=0.25),
                Ex("f16[2,4]", Arg("i64[2]", 0, 9)), Ex("f32[3,4]", Arg("i64[]", 0, 9), scale=-2.0))

    def infer(x, positions, *, theta, interleaved, rotary_dim, scale):
        if x.rank < 1:
            raise ShapeError("x must have rank >= 1")
        _rotary_dim(rotary_dim, x.shape[-1])
        if theta <= 0:
            raise ShapeError(f"theta must be positive, got {theta}")
        if not broadcasts_to(positions.shape, x.shape[:-1]):
            raise ShapeError(f"positions {positions} do not broadcast to x.shape[:-1] = "
                             f"{fmt_shape(x.shape[:-1])} (x {x})")
        return x

    def ref(x, positions, *, theta, interleaved, rotary_dim, scale):
        rd = _rotary_dim(rotary_dim, x.shape[-1])
        ang = (positions.astype(np.float64) * scale)[..., None] * _inv_freq(theta, rd)
        c, s = np.cos(ang), np.sin(ang)
        w = x.astype(np.float64)
        y = w.copy()
        i, j = _pairs(interleaved, rd)
        y[i] = w[i] * c - w[j] * s
        y[j] = w[j] * c + w[i] * s
        return y.astype(x.dtype)

    def vjp(b, op, g):
        if g is None:
            return [None, None]
        x, p = op.operands
        at = dict(op.attrs)
        dx = b.nn.rope(g, p, **{**at, "scale": -at["scale"]})
        if not p.type.dtype.is_float:
            return [dx, None]
        d = x.type.shape[-1]
        if type(d) is not int:
            raise CkirError(f"nn.rope: the gradient for float positions needs a static last dim, "
                            f"x is {x.type}")
        # d(pair)/d(angle) is the pair turned by a further 90 degrees: rope with every angle pi/2
        rd = _rotary_dim(at["rotary_dim"], d)
        turned = b.nn.rope(op.results[0], b.constant(np.pi / 2, np.float64), theta=1.0,
                           interleaved=at["interleaved"], rotary_dim=rd)
        freq = np.zeros(d)
        i, j = _pairs(at["interleaved"], rd)
        freq[i] = freq[j] = _inv_freq(at["theta"], rd) * at["scale"]
        dp = b.nn.sum(b.nn.mul(b.nn.mul(g, turned), b.constant(freq, g.type.dtype.np)), axes=[-1])
        dp = unbroadcast(b, dp, p.type.with_dtype(g.type.dtype))
        return [dx, dp if dp.type.dtype is p.type.dtype else b.nn.cast(dp, to=p.type.dtype)]

    def cost(op, bind):
        x, p = (v.type for v in op.operands)
        d = concrete(x.shape[-1:], bind)[0]
        rd = op.attrs["rotary_dim"] or d
        # 3 FLOPs per rotated element (two products, one sum); per angle a product and a cos and
        # sin (8 each, as nn.cos / nn.sin)
        rotated = numel(x, bind) // max(d, 1) * rd
        return Cost(3 * rotated + 18 * numel(p, bind) * (rd // 2),
                    x.nbytes(bind) + p.nbytes(bind), op.results[0].type.nbytes(bind))


# --- helpers for attention and its gradient ----------------------------------------------------
def _causal(tq, tk, window):
    i = np.arange(tq)[:, None] + (tk - tq)
    j = np.arange(tk)[None, :]
    m = j <= i
    if window is not None:
        m &= j > i - window
    return m


@declare
class causal_mask:
    """The bool (Tq, Tk) mask of causal attention, Tq = q.shape[-2] and Tk = k.shape[-2] (only
    the shapes of q and k are read). Query i may see key j iff j <= i + (Tk - Tq): the queries
    are the last Tq positions of the Tk keys, so a decode step (Tq = 1) sees every key. With
    `window` w (>= 1) it additionally needs j > i + (Tk - Tq) - w: each query sees at most the w
    most recent keys, itself included (sliding-window attention)."""
    name = "nn.causal_mask"
    operands = (Operand("q", ANY), Operand("k", ANY))
    attrs = (Attr("window", "int", None, doc="sliding window size"),)
    traits = {"pure"}
    vjp = not_differentiable("depends only on the operands' shapes")
    examples = (Ex("f32[4,3]", "f32[4,3]"), Ex("f32[2,2,4]", "f32[2,5,4]"), Ex("f32[1,8]", "f32[6,8]"),
                Ex("f32[5,2]", "i64[7,1]", window=3), Ex("f32[6,1]", "f32[3,1]"))

    def infer(q, k, *, window):
        if q.rank < 2 or k.rank < 2:
            raise ShapeError(f"q and k need rank >= 2 (dim -2 is the sequence), got {q} and {k}")
        if window is not None and window < 1:
            raise ShapeError(f"window must be >= 1, got {window}")
        return TensorType((q.shape[-2], k.shape[-2]), dt.bool_)

    def ref(q, k, *, window):
        return _causal(q.shape[-2], k.shape[-2], window)

    def cost(op, bind):
        n = numel(op.results[0].type, bind)
        return Cost(n * (1 if op.attrs["window"] is None else 2), 0, op.results[0].type.nbytes(bind))


def _scaled_dim(d, factor):
    if factor == 1:
        return d
    return d * factor if type(d) is int else ANYDIM


def _like(b, g, x):
    """`g` retyped as `x` where a symbolic dim became anonymous on the way."""
    return g if g.type is x.type else b.nn.reshape_like(g, x)


@declare
class repeat_interleave:
    """Repeat each slice along `axis` `repeats` times, the copies side by side:
    y[..., j, ...] = x[..., j // repeats, ...] (torch.repeat_interleave; it turns kv heads into
    query heads for grouped-query attention)."""
    name = "nn.repeat_interleave"
    operands = (Operand("x", ANY),)
    attrs = (Attr("repeats", "int"), Attr("axis", "int"))
    traits = {"pure"}
    cost = data_movement_cost
    examples = (Ex("f32[2,3,4]", repeats=2, axis=-3), Ex("f32[3,5]", repeats=3, axis=1),
                Ex("i64[4]", repeats=1, axis=0))

    def infer(x, *, repeats, axis):
        a = norm_axis(axis, x.rank)
        if repeats < 1:
            raise ShapeError(f"repeats must be >= 1, got {repeats}")
        return x.with_shape(x.shape[:a] + (_scaled_dim(x.shape[a], repeats),) + x.shape[a + 1:])

    def ref(x, *, repeats, axis):
        return np.repeat(x, repeats, axis=norm_axis(axis, x.ndim))

    def vjp(b, op, g):
        x = op.operands[0]
        if g is None or not x.type.dtype.is_float:
            return [None]
        return [_like(b, b.nn.group_sum(g, size=op.attrs["repeats"], axis=op.attrs["axis"]), x)]


@declare
class group_sum:
    """Sum consecutive groups of `size` slices along `axis`: y[..., j, ...] = sum over r < size
    of x[..., j * size + r, ...]. The axis length must be a multiple of `size`. The adjoint of
    nn.repeat_interleave (it sums the query-head gradients that share a kv head)."""
    name = "nn.group_sum"
    operands = (Operand("x", NUMERIC),)
    attrs = (Attr("size", "int"), Attr("axis", "int"))
    traits = {"pure", "reduction"}
    examples = (Ex("f32[2,6,3]", size=3, axis=1), Ex("f32[4,2]", size=2, axis=-2),
                Ex("i32[6]", size=2, axis=0), Ex("f32[3,5]", size=1, axis=1))

    def infer(x, *, size, axis):
        a = norm_axis(axis, x.rank)
        d = x.shape[a]
        if size < 1:
            raise ShapeError(f"size must be >= 1, got {size}")
        if type(d) is int and d % size:
            raise ShapeError(f"axis {axis} of {x} has {d} slices, not a multiple of size {size}")
        nd = d if size == 1 else (d // size if type(d) is int else ANYDIM)
        return x.with_shape(x.shape[:a] + (nd,) + x.shape[a + 1:])

    def ref(x, *, size, axis):
        a = norm_axis(axis, x.ndim)
        if x.shape[a] % size:
            raise ShapeError(f"axis {a} has {x.shape[a]} slices, not a multiple of size {size}")
        split = x.shape[:a] + (x.shape[a] // size, size) + x.shape[a + 1:]
        return wide(x).reshape(split).sum(axis=a + 1).astype(x.dtype)

    def vjp(b, op, g):
        x = op.operands[0]
        if g is None or not x.type.dtype.is_float:
            return [None]
        return [_like(b, b.nn.repeat_interleave(g, repeats=op.attrs["size"], axis=op.attrs["axis"]), x)]

    def cost(op, bind):
        x, y = op.operands[0].type, op.results[0].type
        return Cost(numel(x, bind) - numel(y, bind), x.nbytes(bind), y.nbytes(bind))


# --- attention ---------------------------------------------------------------------------------
def _heads_group(hq, hkv):
    """Query heads per kv head, when the types say."""
    if same_dim(hq, hkv):
        return 1
    if type(hq) is int and type(hkv) is int:
        return hq // hkv
    return None


def _softmax_rows(s, masked):
    """softmax over the last axis where a row of -inf gives zeros instead of NaN."""
    m = np.max(s, axis=-1, keepdims=True, initial=-np.inf)
    if masked:
        m = np.where(m == -np.inf, 0, m).astype(s.dtype)
    e = np.exp(s - m)
    z = np.sum(e, axis=-1, keepdims=True)
    if masked:
        z = np.where(z == 0, 1, z).astype(s.dtype)
    return e / z


@declare
class attention:
    """Scaled dot-product attention with grouped-query heads.

    q (..., Hq, Tq, D), k (..., Hkv, Tk, D), v (..., Hkv, Tk, Dv) -> (..., Hq, Tq, Dv); the
    leading batch dims of q, k, v and mask broadcast together (numpy rules). Hq must be a
    multiple of Hkv: query head h uses kv head h // (Hq / Hkv) (Hq = Hkv is multi-head
    attention, Hkv = 1 multi-query). For each head:

        logits = (q @ k^T) * scale                      scale absent: 1 / sqrt(D)
        logits = softcap * tanh(logits / softcap)       if softcap is set (gemma2)
        logits = logits + mask                          float mask
        logits[i, j] = -inf where key j is not visible
        y = softmax(logits, over keys) @ v

    `mask` (optional) is bool (true = may attend) or a float of q's dtype added to the logits;
    its last three dims broadcast to (Hq, Tq, Tk) without enlarging them. `causal` lets query i
    see key j only if j <= i + (Tk - Tq) (the queries are the last Tq of the Tk positions, so a
    decode step with a KV cache, Tq = 1, sees every key); `window` w (needs causal) also
    requires j > i + (Tk - Tq) - w (sliding window: the w most recent keys, itself included).
    See nn.causal_mask. A query row that sees no key (every logit -inf, or Tk = 0) outputs
    zeros, where torch returns NaN.

    f16/bf16 are computed in f32 and rounded once. The cost counts the dense Tq x Tk logits
    (2 Tq Tk D + 2 Tq Tk Dv FLOPs per head plus the softmax), even where causal masking lets a
    kernel skip blocks. The gradient is IR (matmul, softmax rows, repeat_interleave, group_sum)
    and needs static head counts when Hq != Hkv; a bool mask gets no gradient."""
    name = "nn.attention"
    operands = (Operand("q", FLOAT), Operand("k", FLOAT), Operand("v", FLOAT),
                Operand("mask", FLOAT + BOOL, optional=True))
    attrs = (Attr("causal", "bool", False, doc="causal masking, aligned at the end"),
             Attr("scale", "float", None, doc="logit scale; absent = 1/sqrt(D)"),
             Attr("window", "int", None, doc="sliding window (with causal)"),
             Attr("softcap", "float", None, doc="logits = softcap * tanh(logits / softcap)"))
    traits = {"pure"}
    examples = (Ex("f32[2,4,5]", "f32[2,6,5]", "f32[2,6,3]"),
                Ex("f32[2,4,3,5]", "f32[2,2,6,5]", "f32[2,2,6,3]", causal=True),
                Ex("f32[3,4,2]", "f32[1,3,2]", "f32[1,3,4]", "bool[4,3]"),
                Ex("f32[2,1,2,5,3]", "f32[3,1,7,3]", "f32[3,1,7,2]", "f32[2,5,7]", scale=0.7, softcap=2.0),
                Ex("f32[2,6,4]", "f32[2,6,4]", "f32[2,6,4]", causal=True, window=2),
                Ex("f32[4,1,3]", "f32[2,5,3]", "f32[2,5,3]", Arg("f32[4,1,5]", -1.0, 1.0), causal=True),
                Ex("f16[2,3,4]", "f16[1,5,4]", "f16[1,5,4]", causal=True, softcap=5.0))

    def infer(q, k, v, mask, *, causal, scale, window, softcap):
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t.rank < 3:
                raise ShapeError(f"{name} {t} needs rank >= 3 (..., heads, seq, dim)")
        same_dtype(q, k, v)
        hq, tq, d = q.shape[-3:]
        hkv, tk, dk = k.shape[-3:]
        for what, a, c in (("head dims of q and k", d, dk), ("kv heads of k and v", hkv, v.shape[-3]),
                           ("key lengths of k and v", tk, v.shape[-2])):
            if type(a) is int and type(c) is int and a != c:
                raise ShapeError(f"{what} differ: {a} vs {c} (q {q}, k {k}, v {v})")
        if type(hq) is int and type(hkv) is int and (hkv == 0 or hq % hkv):
            raise ShapeError(f"query heads {hq} are not a multiple of kv heads {hkv}")
        batch = [q.shape[:-3], k.shape[:-3], v.shape[:-3]]
        if mask is not None:
            if mask.dtype.is_float and mask.dtype is not q.dtype:
                raise ShapeError(f"a float mask must have q's dtype {q.dtype}, got {mask.dtype}")
            if not broadcasts_to(mask.shape[-3:], (hq, tq, tk)):
                raise ShapeError(f"mask {mask} does not broadcast to (..., Hq, Tq, Tk) = "
                                 f"{fmt_shape((hq, tq, tk))}")
            batch.append(mask.shape[:-3])
        if window is not None and (not causal or window < 1):
            raise ShapeError(f"window must be >= 1 and needs causal = true (window {window}, "
                             f"causal {causal})")
        if softcap is not None and softcap <= 0:
            raise ShapeError(f"softcap must be positive, got {softcap}")
        return TensorType(broadcast_shapes(*batch) + (hq, tq, v.shape[-1]), q.dtype)

    def ref(q, k, v, mask, *, causal, scale, window, softcap):
        hq, hkv = q.shape[-3], k.shape[-3]
        if hkv == 0 or hq % hkv:
            raise ShapeError(f"query heads {hq} are not a multiple of kv heads {hkv}")
        f = np.float64 if q.dtype == np.float64 else np.float32
        k_, v_ = (np.repeat(t.astype(f), hq // hkv, axis=-3) for t in (k, v))
        scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
        s = np.matmul(q.astype(f), np.swapaxes(k_, -1, -2)) * f(scale)
        if softcap is not None:
            s = np.tanh(s / f(softcap)) * f(softcap)
        visible = None
        if mask is not None and mask.dtype == np.bool_:
            visible = mask
        elif mask is not None:
            s = s + mask.astype(f)
        if causal:
            c = _causal(q.shape[-2], k.shape[-2], window)
            visible = c if visible is None else visible & c
        if visible is not None:
            s = np.where(visible, s, f(-np.inf))
        p = _softmax_rows(s, masked=mask is not None or causal)
        return np.matmul(p, v_).astype(q.dtype)

    def vjp(b, op, g):
        q, k, v, mask = (list(op.operands) + [None])[:4]
        if g is None:
            return [None] * len(op.operands)
        at = op.attrs
        group = _heads_group(q.type.shape[-3], k.type.shape[-3])
        if group is None:
            raise CkirError(f"nn.attention: the gradient needs static head counts when they differ "
                            f"(q {q.type}, k {k.type})")
        kr, vr = (t if group == 1 else b.nn.repeat_interleave(t, repeats=group, axis=-3) for t in (k, v))
        d = q.type.shape[-1]
        if at["scale"] is not None:
            scale = at["scale"]
        elif type(d) is int:
            scale = 1 / math.sqrt(d)
        else:
            scale = b.nn.rsqrt(b.nn.size(q, axes=[q.type.rank - 1], dtype=q.type.dtype))
        # recompute the probabilities as the forward does
        s = b.nn.mul(b.nn.matmul(q, kr, transpose_b=True), scale)
        t = None
        if at["softcap"] is not None:
            t = b.nn.tanh(b.nn.div(s, at["softcap"]))
            s = b.nn.mul(t, at["softcap"])
        float_mask = mask is not None and mask.type.dtype.is_float
        visible = None if float_mask else mask
        if float_mask:
            s = b.nn.add(s, mask)
        if at["causal"]:
            c = b.nn.causal_mask(q, k, window=at["window"])
            visible = c if visible is None else b.nn.and_(visible, c)
        if visible is not None:
            s = b.nn.where(visible, s, float("-inf"))
        m = b.nn.max(s, axes=[-1], keepdims=True)
        masked = mask is not None or at["causal"]
        if masked:
            m = b.nn.where(b.nn.eq(m, float("-inf")), 0.0, m)
        e = b.nn.exp(b.nn.sub(s, m))
        z = b.nn.sum(e, axes=[-1], keepdims=True)
        if masked:
            z = b.nn.where(b.nn.eq(z, 0.0), 1.0, z)
        p = b.nn.div(e, z)
        # backward: masked logits have p = 0, so they get no gradient
        dv = b.nn.matmul(p, g, transpose_a=True)
        dp = b.nn.matmul(g, vr, transpose_b=True)
        ds = b.nn.mul(p, b.nn.sub(dp, b.nn.sum(b.nn.mul(dp, p), axes=[-1], keepdims=True)))
        dmask = unbroadcast(b, ds, mask) if float_mask else None
        if t is not None:
            ds = b.nn.mul(ds, b.nn.sub(1.0, b.nn.mul(t, t)))
        ds = b.nn.mul(ds, scale)
        dq = b.nn.matmul(ds, kr)
        dk = b.nn.matmul(ds, q, transpose_a=True)
        if group != 1:
            dk, dv = (b.nn.group_sum(x, size=group, axis=-3) for x in (dk, dv))
        grads = [unbroadcast(b, dq, q), unbroadcast(b, dk, k), unbroadcast(b, dv, v)]
        return grads + ([dmask] if mask is not None else [])

    def cost(op, bind):
        q, k, v = (x.type for x in op.operands[:3])
        y = op.results[0].type
        heads = numel(y.with_shape(y.shape[:-2]), bind)
        tq, tk, d, dv = concrete((y.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]), bind)
        logits = heads * tq * tk
        # per logit: scale 1 + softmax 12 (as nn.softmax) [+ mask or causal 1] [+ softcap: a
        # division, tanh 8, a product]; per row one reciprocal (4)
        per_logit = 13 + (op.attrs["causal"] or len(op.operands) > 3) + 10 * (op.attrs["softcap"] is not None)
        flops = 2 * logits * (d + dv) + per_logit * logits + 4 * heads * tq
        return Cost(flops, sum(x.type.nbytes(bind) for x in op.operands), y.nbytes(bind))
