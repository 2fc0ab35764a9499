"""nn.rope, nn.attention and their helpers (nn.causal_mask, nn.repeat_interleave,
nn.group_sum) against PyTorch: forward results and torch.autograd gradients in float64.

The rope references are written the way HF transformers (rotate_half with cos/sin of a
torch-computed inv_freq) and GPT-J (rotate_every_two) write them; attention's is
torch.nn.functional.scaled_dot_product_attention (enable_gqa), with the causal/window mask
built in torch where SDPA's top-left `is_causal` does not apply, and HF gemma2's eager code for
softcap, which SDPA lacks.

Tolerances: float64 results differ from torch only by the order of a few roundings (1e-12
relative, 1e-10 for gradients); rope angles reach a few thousand radians, where one float64 ulp
of the angle is ~5e-13, hence atol 1e-10 there. float32 results agree to a few float32 ulps.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ckir
from ckir import TensorType, new_graph
from oracle import run, run_vjp, t64, torch_grads

RNG = np.random.default_rng(11)


# --- rope --------------------------------------------------------------------------------------
def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rotate_every_two(x):
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def torch_rope(x, pos, theta=10000.0, interleaved=False, rotary_dim=None, scale=1.0, dtype=torch.float64):
    """HF llama (rotate_half) or GPT-J (rotate_every_two) RoPE; angles in `dtype`."""
    rd = rotary_dim or x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, rd, 2, dtype=torch.int64).to(dtype) / rd))
    freqs = (pos.to(dtype) * scale)[..., None] * inv_freq
    if interleaved:
        emb = torch.repeat_interleave(freqs, 2, dim=-1)
        rot = rotate_every_two
    else:
        emb = torch.cat((freqs, freqs), dim=-1)
        rot = rotate_half
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    xr, xp = x[..., :rd], x[..., rd:]
    return torch.cat((xr * cos + rot(xr) * sin, xp), dim=-1)


# (x shape, positions shape, positions dtype, attrs)
ROPE_CASES = [
    ((5, 2, 8), (5, 1), np.int64, {}),
    ((2, 3, 5, 6), (5,), np.int32, {"interleaved": True}),
    ((2, 3, 5, 6), (2, 1, 5), np.int64, {}),
    ((4, 10), (4,), np.int64, {"rotary_dim": 6, "theta": 500.0}),
    ((3, 2, 12), (3, 1), np.int64, {"interleaved": True, "rotary_dim": 4, "scale": 0.25}),
    ((1, 4, 7, 16), (1, 1, 7), np.int64, {"theta": 1e6, "scale": 4.0}),
    ((6, 8), (6,), np.float64, {}),
    ((2, 4, 3, 8), (2, 4, 3), np.float64, {"interleaved": True, "rotary_dim": 6, "scale": 0.5}),
]


def _positions(shape, dtype):
    if np.dtype(dtype).kind == "f":
        return RNG.uniform(-50, 2000, shape).astype(dtype)
    return RNG.integers(0, 2048, shape).astype(dtype)


@pytest.mark.parametrize("xshape,pshape,pdtype,attrs", ROPE_CASES)
def test_rope_f64_forward_and_vjp(xshape, pshape, pdtype, attrs):
    x = RNG.standard_normal(xshape)
    pos = _positions(pshape, pdtype)
    cot = RNG.standard_normal(xshape)
    xt = t64(x, True)
    float_pos = np.dtype(pdtype).kind == "f"
    pt = t64(pos, True) if float_pos else torch.from_numpy(pos)
    yt = torch_rope(xt, pt, **attrs)
    np.testing.assert_allclose(run("nn.rope", [x, pos], **attrs), yt.detach().numpy(), rtol=1e-12, atol=1e-10)
    dx, dpos = run_vjp("nn.rope", [x, pos], cot, **attrs)
    want = torch_grads(yt, [xt, pt] if float_pos else [xt], cot)
    np.testing.assert_allclose(dx, want[0], rtol=1e-10, atol=1e-10)
    if float_pos:
        # d/dposition sums angle-weighted terms of size up to |x|^2 * D over the broadcast
        np.testing.assert_allclose(dpos, want[1], rtol=1e-9, atol=1e-9)
    else:
        assert dpos is None


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_f32_is_the_float64_rotation_rounded_once(interleaved):
    x = RNG.standard_normal((2, 4, 9, 32)).astype(np.float32)
    pos = RNG.integers(0, 4096, (9,)).astype(np.int64)
    y = run("nn.rope", [x, pos], interleaved=interleaved)
    assert y.dtype == np.float32
    want = torch_rope(t64(x), torch.from_numpy(pos), interleaved=interleaved).numpy()
    # one rounding to float32: half an ulp of each element (plus float64 noise on tiny ones)
    np.testing.assert_allclose(y, want, rtol=2 ** -24, atol=1e-12)


def test_rope_angles_are_float64():
    """At positions ~1e6, float32 angles (HF's and llama.cpp's choice) are off by up to ~0.1 rad; ours
    are exact, so the f32 result still matches the float64 rotation to float32 rounding."""
    x = RNG.standard_normal((3, 64)).astype(np.float32)
    pos = np.array([999_999, 1_234_567, 3_000_001], np.int64)
    y = run("nn.rope", [x, pos])
    exact = torch_rope(t64(x), torch.from_numpy(pos)).numpy()
    np.testing.assert_allclose(y, exact, rtol=2 ** -24, atol=1e-12)
    f32_angles = torch_rope(torch.from_numpy(x), torch.from_numpy(pos), dtype=torch.float32).numpy()
    assert np.abs(f32_angles - exact).max() > 1e-3      # the test tells the two choices apart


@pytest.mark.parametrize("dtype,torch_dtype", [(np.float16, torch.float16), ("bf16", torch.bfloat16)])
def test_rope_low_precision(dtype, torch_dtype):
    d = ckir.dtypes.dtype(dtype).np if dtype == "bf16" else np.dtype(dtype)
    x = RNG.standard_normal((5, 2, 8)).astype(d)
    pos = np.arange(5, dtype=np.int64)[:, None] * 37
    y = run("nn.rope", [x, pos])
    assert y.dtype == d
    want = torch_rope(t64(x.astype(np.float64)), torch.from_numpy(pos)).to(torch_dtype).double().numpy()
    ulp = 2.0 ** (-10 if dtype is np.float16 else -7)
    np.testing.assert_allclose(y.astype(np.float64), want, rtol=ulp, atol=ulp * 1e-3)


def test_rope_inverse_is_negative_scale():
    x = RNG.standard_normal((4, 3, 10))
    pos = RNG.integers(0, 100, (4, 1))
    y = run("nn.rope", [x, pos], rotary_dim=8, scale=0.5)
    back = run("nn.rope", [y, pos], rotary_dim=8, scale=-0.5)
    np.testing.assert_allclose(back, x, rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(y[..., 8:], x[..., 8:])


def test_rope_symbolic_dims():
    types = [TensorType(["t", 2, 8], "f64"), TensorType(["t", 1], "i64")]
    for t in (3, 6):
        x = RNG.standard_normal((t, 2, 8))
        pos = np.arange(10, 10 + t, dtype=np.int64)[:, None]
        cot = RNG.standard_normal((t, 2, 8))
        xt = t64(x, True)
        yt = torch_rope(xt, torch.from_numpy(pos))
        np.testing.assert_allclose(run("nn.rope", [x, pos], types), yt.detach().numpy(), rtol=1e-12,
                                   atol=1e-13)
        dx, dpos = run_vjp("nn.rope", [x, pos], cot, types, TensorType(["t", 2, 8], "f64"))
        np.testing.assert_allclose(dx, torch_grads(yt, [xt], cot)[0], rtol=1e-10, atol=1e-12)


def test_rope_errors():
    g, b = new_graph("main", {"x": TensorType([4, 2, 7], "f32"), "y": TensorType([4, 2, 8], "f32"),
                              "p": TensorType([4], "i64"), "q": TensorType([4, 1], "i64"),
                              "z": TensorType([4, 2, "d"], "f32"), "f": TensorType([4, 1], "f32")})
    x, y, p, q, z, f = g.inputs
    with pytest.raises(ckir.CkirError, match=r"the last dim 7 is odd; rope rotates pairs"):
        b.nn.rope(x, q)
    # (4,) aligns with the heads dim of (4, 2): a (T, H, D) x needs positions (T, 1)
    with pytest.raises(ckir.CkirError,
                       match=r"positions tensor<4xi64> do not broadcast to x.shape\[:-1\] = \[4, 2\]"):
        b.nn.rope(y, p)
    with pytest.raises(ckir.CkirError, match=r"rotary_dim 10 exceeds the last dim 8"):
        b.nn.rope(y, q, rotary_dim=10)
    with pytest.raises(ckir.CkirError, match=r"rotary_dim must be a positive even number, got 3"):
        b.nn.rope(y, q, rotary_dim=3)
    r = b.create("nn.rope", [z, f], {})
    with pytest.raises(ckir.CkirError, match=r"gradient for float positions needs a static last dim"):
        r.opdef.vjp(b, r, z)


# --- attention ---------------------------------------------------------------------------------
def causal_allowed(tq, tk, window=None):
    """Bottom-right aligned causal (and sliding window) mask, built in torch."""
    i = torch.arange(tq)[:, None] + (tk - tq)
    j = torch.arange(tk)[None, :]
    allowed = j <= i
    if window is not None:
        allowed &= j > i - window
    return allowed


def torch_attention(q, k, v, mask=None, causal=False, scale=None, window=None, softcap=None):
    """SDPA (or HF gemma2's eager code when softcap is set) on batch-expanded tensors."""
    batch = torch.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3],
                                   () if mask is None else mask.shape[:-3])
    q, k, v = (t.expand(batch + t.shape[-3:]) for t in (q, k, v))
    tq, tk = q.shape[-2], k.shape[-2]
    is_causal = causal and tq == tk and window is None and mask is None
    if causal and not is_causal:
        allowed = causal_allowed(tq, tk, window)
        if mask is None:
            mask = allowed
        elif mask.dtype == torch.bool:
            mask = mask & allowed
        else:
            mask = mask.masked_fill(~allowed, float("-inf"))
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale,
                                              enable_gqa=True)
    group = q.shape[-3] // k.shape[-3]
    k, v = (torch.repeat_interleave(t, group, dim=-3) for t in (k, v))
    w = torch.matmul(q, k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    w = torch.tanh(w / softcap) * softcap
    if mask is not None:
        w = w.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else w + mask
    return torch.matmul(torch.softmax(w, dim=-1), v)


def _no_empty_rows(mask):
    """A random bool mask with key 0 always visible (torch gives NaN for empty rows)."""
    mask[..., 0] = True
    return mask


# (q, k, v shapes, mask: None | ("bool"|"float", shape), attrs)
ATTN_CASES = [
    ((2, 4, 5, 8), (2, 4, 5, 8), (2, 4, 5, 8), None, {}),
    ((2, 6, 5, 4), (2, 2, 5, 4), (2, 2, 5, 3), None, {"causal": True}),
    ((1, 6, 3, 4), (1, 2, 7, 4), (1, 2, 7, 4), None, {"causal": True}),         # chunked prefill
    ((2, 4, 1, 8), (2, 2, 9, 8), (2, 2, 9, 8), None, {"causal": True}),         # decode step
    ((3, 8, 5), (3, 8, 5), (3, 8, 5), None, {"causal": True, "window": 3}),
    ((2, 3, 4, 5), (2, 1, 6, 5), (2, 1, 6, 2), ("bool", (4, 6)), {}),          # multi-query
    ((2, 2, 4, 5), (2, 2, 6, 5), (2, 2, 6, 5), ("float", (2, 1, 4, 6)), {"scale": 0.3}),
    ((2, 3, 2, 5, 4), (3, 1, 7, 4), (3, 1, 7, 6), None, {"softcap": 3.0}),     # broadcast batch
    ((2, 4, 6, 4), (2, 2, 6, 4), (2, 2, 6, 4), ("float", (6, 6)), {"causal": True, "softcap": 5.0}),
    ((4, 7, 4), (2, 7, 4), (2, 7, 4), ("bool", (4, 7, 7)), {"causal": True, "window": 4}),
    ((3, 4, 6), (3, 5, 6), (3, 5, 6), ("float", (2, 1, 1, 5)), {}),          # mask adds a batch dim
]


def _attn_inputs(qs, ks, vs, mask, dtype=np.float64):
    arrays = [RNG.standard_normal(s).astype(dtype) for s in (qs, ks, vs)]
    if mask is not None:
        kind, shape = mask
        if kind == "bool":
            arrays.append(_no_empty_rows(RNG.random(shape) < 0.6))
        else:
            m = RNG.standard_normal(shape)
            m[RNG.random(shape) < 0.2] = -np.inf
            m[..., 0] = 0.5
            arrays.append(m.astype(dtype))
    return arrays


@pytest.mark.parametrize("qs,ks,vs,mask,attrs", ATTN_CASES)
def test_attention_f64_forward_and_vjp(qs, ks, vs, mask, attrs):
    arrays = _attn_inputs(qs, ks, vs, mask)
    float_mask = mask is not None and mask[0] == "float"
    leaves = [t64(a, True) for a in arrays[:3]]
    if mask is not None:
        leaves.append(t64(arrays[3], True) if float_mask else torch.from_numpy(arrays[3]))
    yt = torch_attention(*leaves, **attrs)
    y = run("nn.attention", arrays, **attrs)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-13)
    cot = RNG.standard_normal(y.shape)
    ours = run_vjp("nn.attention", arrays, cot, **attrs)
    wrt = leaves if float_mask or mask is None else leaves[:3]
    want = torch_grads(yt, wrt, cot)
    for got, w in zip(ours, want):
        np.testing.assert_allclose(got, w, rtol=1e-10, atol=1e-12)
    if mask is not None and not float_mask:
        assert ours[3] is None


def test_attention_f32_matches_sdpa():
    q, k, v = (RNG.standard_normal(s).astype(np.float32)
               for s in ((2, 8, 7, 16), (2, 2, 7, 16), (2, 2, 7, 16)))
    y = run("nn.attention", [q, k, v], causal=True)
    want = F.scaled_dot_product_attention(*(torch.from_numpy(a) for a in (q, k, v)), is_causal=True,
                                          enable_gqa=True).numpy()
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype,torch_dtype,ulp", [(np.float16, torch.float16, 2 ** -10),
                                                   ("bf16", torch.bfloat16, 2 ** -7)])
def test_attention_low_precision(dtype, torch_dtype, ulp):
    d = ckir.dtypes.dtype(dtype).np if dtype == "bf16" else np.dtype(dtype)
    q, k, v = (RNG.standard_normal(s).astype(d) for s in ((2, 4, 5, 8), (2, 2, 5, 8), (2, 2, 5, 8)))
    y = run("nn.attention", [q, k, v], causal=True)
    assert y.dtype == d
    want = F.scaled_dot_product_attention(*(torch.from_numpy(a.astype(np.float32)) for a in (q, k, v)),
                                          is_causal=True, enable_gqa=True).to(torch_dtype).float().numpy()
    # one rounding of a float32 result on each side: an ulp of the output scale (|y| <= max |v|)
    np.testing.assert_allclose(y.astype(np.float32), want, rtol=2 * ulp, atol=2 * ulp * np.abs(want).max())


def test_attention_rows_without_visible_keys_are_zero():
    q, k, v = (RNG.standard_normal(s) for s in ((2, 4, 6), (2, 5, 6), (2, 5, 3)))
    mask = RNG.random((4, 5)) < 0.7
    mask[:, 0] = True
    mask[2] = False                                         # query 2 sees nothing
    y = run("nn.attention", [q, k, v, mask])
    assert np.all(y[:, 2] == 0) and np.all(np.isfinite(y))
    # the other rows are what torch computes with row 2 given something to see
    full = mask.copy()
    full[2] = True
    leaves = [t64(a, True) for a in (q, k, v)]
    yt = torch_attention(*leaves, torch.from_numpy(full))
    rows = [0, 1, 3]
    np.testing.assert_allclose(y[:, rows], yt.detach().numpy()[:, rows], rtol=1e-12, atol=1e-13)
    # gradients: the empty row gets none and sends none to k and v
    cot = RNG.standard_normal(y.shape)
    dq, dk, dv, dm = run_vjp("nn.attention", [q, k, v, mask], cot)
    assert np.all(dq[:, 2] == 0) and dm is None
    cot[:, 2] = 0
    want = torch_grads(yt, leaves, cot)
    for got, w in zip((dq, dk, dv), want):
        np.testing.assert_allclose(got, w, rtol=1e-10, atol=1e-12)


def test_attention_empty_rows_from_float_mask_causal_and_no_keys():
    q, k, v = (RNG.standard_normal(s) for s in ((1, 3, 4), (1, 3, 4), (1, 3, 2)))
    m = np.zeros((3, 3))
    m[1] = -np.inf
    y = run("nn.attention", [q, k, v, m])
    assert np.all(y[:, 1] == 0) and np.all(np.isfinite(y))
    (dq, dk, dv, dm) = run_vjp("nn.attention", [q, k, v, m], np.ones(y.shape))
    assert np.all(dq[:, 1] == 0) and np.all(dm[1] == 0) and np.all(np.isfinite(dk))
    # causal with Tq > Tk: the first Tq - Tk queries come before every key
    q5 = RNG.standard_normal((1, 5, 4))
    y = run("nn.attention", [q5, k, v], causal=True)
    assert np.all(y[:, :2] == 0)
    want = torch_attention(*(t64(a) for a in (q5[:, 2:], k, v)), causal=True).numpy()
    np.testing.assert_allclose(y[:, 2:], want, rtol=1e-12, atol=1e-13)
    # no keys at all
    empty = np.zeros((1, 0, 4))
    y = run("nn.attention", [q, empty, np.zeros((1, 0, 2))])
    assert y.shape == (1, 3, 2) and np.all(y == 0)


def test_attention_symbolic_dims():
    types = [TensorType([2, 4, "tq", 8], "f64"), TensorType([2, 2, "tk", 8], "f64"),
             TensorType([2, 2, "tk", 8], "f64")]
    for tq, tk in ((3, 5), (1, 9), (4, 4)):
        arrays = _attn_inputs((2, 4, tq, 8), (2, 2, tk, 8), (2, 2, tk, 8), None)
        leaves = [t64(a, True) for a in arrays]
        yt = torch_attention(*leaves, causal=True, window=3)
        y = run("nn.attention", arrays, types, causal=True, window=3)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-13)
        cot = RNG.standard_normal(y.shape)
        ours = run_vjp("nn.attention", arrays, cot, types, TensorType([2, 4, "tq", 8], "f64"), causal=True,
                       window=3)
        for got, w in zip(ours, torch_grads(yt, leaves, cot)):
            np.testing.assert_allclose(got, w, rtol=1e-10, atol=1e-12)


def test_attention_symbolic_head_dim_scale():
    # scale absent and D symbolic: the gradient reads D at run time
    types = [TensorType([2, 3, "d"], "f64"), TensorType([2, 4, "d"], "f64"), TensorType([2, 4, 5], "f64")]
    for d in (4, 9):
        arrays = _attn_inputs((2, 3, d), (2, 4, d), (2, 4, 5), None)
        leaves = [t64(a, True) for a in arrays]
        yt = torch_attention(*leaves)
        np.testing.assert_allclose(run("nn.attention", arrays, types), yt.detach().numpy(), rtol=1e-12)
        cot = RNG.standard_normal((2, 3, 5))
        ours = run_vjp("nn.attention", arrays, cot, types)
        for got, w in zip(ours, torch_grads(yt, leaves, cot)):
            np.testing.assert_allclose(got, w, rtol=1e-10, atol=1e-12)


def test_attention_cost_counts_both_products_and_softmax():
    g, b = new_graph("main", {"q": TensorType([2, 8, 5, 16], "f32"), "k": TensorType([2, 2, 7, 16], "f32"),
                              "v": TensorType([2, 2, 7, 12], "f32")})
    y = b.nn.attention(*g.inputs, causal=True)
    c = ckir.get_op("nn.attention").cost(y.op)
    heads, logits = 2 * 8, 2 * 8 * 5 * 7
    assert c.flops == heads * (2 * 5 * 7 * 16 + 2 * 5 * 7 * 12) + 14 * logits + 4 * heads * 5
    assert c.bytes_read == 4 * (2 * 8 * 5 * 16 + 2 * 2 * 7 * 16 + 2 * 2 * 7 * 12)
    assert c.bytes_written == 4 * 2 * 8 * 5 * 12


def test_attention_errors():
    g, b = new_graph("main", {"q": TensorType([6, 4, 8], "f32"), "k": TensorType([4, 5, 8], "f32"),
                              "k2": TensorType([2, 5, 6], "f32"), "kv": TensorType([2, 5, 8], "f32"),
                              "m": TensorType([3, 4, 5], "bool"), "h": TensorType([4, 5], "f16"),
                              "x": TensorType([4, 8], "f32"), "qs": TensorType(["h", 4, 8], "f32"),
                              "ks": TensorType(["g", 5, 8], "f32")})
    q, k, k2, kv, m, h, x, qs, ks = g.inputs
    with pytest.raises(ckir.CkirError, match=r"query heads 6 are not a multiple of kv heads 4"):
        b.nn.attention(q, k, k)
    with pytest.raises(ckir.CkirError, match=r"head dims of q and k differ: 8 vs 6"):
        b.nn.attention(q, k2, k2)
    with pytest.raises(ckir.CkirError, match=r"window must be >= 1 and needs causal = true"):
        b.nn.attention(q, kv, kv, window=2)
    with pytest.raises(ckir.CkirError,
                       match=r"mask tensor<3x4x5xbool> does not broadcast to \(..., Hq, Tq, Tk\)"):
        b.nn.attention(q, kv, kv, m)
    with pytest.raises(ckir.CkirError, match=r"a float mask must have q's dtype f32, got f16"):
        b.nn.attention(q, kv, kv, h)
    with pytest.raises(ckir.CkirError, match=r"v tensor<4x8xf32> needs rank >= 3"):
        b.nn.attention(q, kv, x)
    op = b.create("nn.attention", [qs, ks, ks], {})
    with pytest.raises(ckir.CkirError, match=r"gradient needs static head counts when they differ"):
        op.opdef.vjp(b, op, op.results[0])


# --- helpers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("tq,tk,window", [(4, 4, None), (3, 7, None), (1, 6, None), (6, 3, None),
                                          (5, 5, 2), (2, 9, 4), (4, 4, 1)])
def test_causal_mask_matches_torch_tril(tq, tk, window):
    want = torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq)
    if window is not None:
        want &= ~torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq - window)
    got = run("nn.causal_mask", [np.zeros((tq, 1), np.float32), np.zeros((2, tk, 3), np.int64)],
              window=window)
    np.testing.assert_array_equal(got, want.numpy())


def test_causal_mask_symbolic_and_errors():
    types = [TensorType(["t", 8], "f32"), TensorType(["s", 8], "f32")]
    for t, s in ((2, 5), (6, 6)):
        got = run("nn.causal_mask", [np.zeros((t, 8), np.float32), np.zeros((s, 8), np.float32)], types)
        np.testing.assert_array_equal(got, torch.ones(t, s, dtype=torch.bool).tril(s - t).numpy())
    g, b = new_graph("main", {"x": TensorType([4], "f32"), "y": TensorType([4, 2], "f32")})
    with pytest.raises(ckir.CkirError, match=r"q and k need rank >= 2"):
        b.nn.causal_mask(*g.inputs)
    with pytest.raises(ckir.CkirError, match=r"window must be >= 1, got 0"):
        b.nn.causal_mask(g.inputs[1], g.inputs[1], window=0)


@pytest.mark.parametrize("shape,repeats,axis", [((2, 3, 4), 2, -3), ((3, 5), 3, 1), ((4,), 1, 0),
                                                ((2, 2, 3), 4, -2)])
def test_repeat_interleave_and_group_sum_match_torch(shape, repeats, axis):
    x = RNG.standard_normal(shape)
    xt = t64(x, True)
    yt = torch.repeat_interleave(xt, repeats, dim=axis)
    np.testing.assert_array_equal(run("nn.repeat_interleave", [x], repeats=repeats, axis=axis),
                                  yt.detach().numpy())
    cot = RNG.standard_normal(tuple(yt.shape))
    (dx,) = run_vjp("nn.repeat_interleave", [x], cot, repeats=repeats, axis=axis)
    np.testing.assert_allclose(dx, torch_grads(yt, [xt], cot)[0], rtol=1e-14)
    # group_sum is the adjoint: summing the groups of the repeated-shape cotangent
    a = axis % len(shape)
    split = cot.shape[:a] + (shape[a], repeats) + cot.shape[a + 1:]
    ct = t64(cot, True)
    st = ct.reshape(split).sum(a + 1)
    np.testing.assert_allclose(run("nn.group_sum", [cot], size=repeats, axis=axis), st.detach().numpy(),
                               rtol=1e-14)
    cot2 = RNG.standard_normal(shape)
    (dc,) = run_vjp("nn.group_sum", [cot], cot2, size=repeats, axis=axis)
    np.testing.assert_allclose(dc, torch_grads(st, [ct], cot2)[0], rtol=1e-14)


def test_repeat_interleave_group_sum_symbolic_vjp():
    # a symbolic axis becomes anonymous when repeated; the gradients come back with x's type
    x = RNG.standard_normal((3, 2))
    for op, attrs, out in (("nn.repeat_interleave", {"repeats": 2}, (6, 2)),
                           ("nn.group_sum", {"size": 3}, (1, 2))):
        cot = RNG.standard_normal(out)
        (dx,) = run_vjp(op, [x], cot, [TensorType(["n", 2], "f64")], TensorType([None, 2], "f64"), axis=0,
                        **attrs)
        xt = t64(x, True)
        yt = torch.repeat_interleave(xt, 2, 0) if op == "nn.repeat_interleave" else xt.sum(0, keepdim=True)
        np.testing.assert_allclose(dx, torch_grads(yt, [xt], cot)[0], rtol=1e-14)


def test_group_sum_symbolic_and_errors():
    types = [TensorType(["n", 6], "f32")]
    for n in (1, 4):
        x = RNG.standard_normal((n, 6)).astype(np.float32)
        want = torch.from_numpy(x).reshape(n, 3, 2).sum(-1).numpy()
        np.testing.assert_allclose(run("nn.group_sum", [x], types, size=2, axis=1), want, rtol=1e-6)
    g, b = new_graph("main", {"x": TensorType([5, 6], "f32")})
    with pytest.raises(ckir.CkirError,
                       match=r"axis 0 of tensor<5x6xf32> has 5 slices, not a multiple of size 2"):
        b.nn.group_sum(g.inputs[0], size=2, axis=0)
    with pytest.raises(ckir.CkirError, match=r"repeats must be >= 1, got 0"):
        b.nn.repeat_interleave(g.inputs[0], repeats=0, axis=0)
