"""LLM architectures from GGUF files as ckir Modules: llama (Llama 2/3, Mistral, SmolLM), qwen2,
qwen3 and gemma3, following llama.cpp's graphs (src/models/<arch>.cpp) and its reading of the
hyperparameters (llama_model::load_hparams).

`build(path, ctx=...)` gives a Module whose weights are the file's tensors (memory-mapped, never
copied; linear layers and embeddings read quantized tensors directly through quant.matmul and
quant.get_rows) and three graphs sharing them and the KV cache:

  prefill(tokens: i64[seq<=ctx], pos: i64) -> logits: f32[vocab]         the last position's
  decode(tokens: i64[1], pos: i64)         -> logits: f32[vocab]
  score(tokens: i64[seq<=ctx], pos: i64)   -> logits: f32[seq, vocab]      every position's

`tokens` sit at positions pos, pos+1, ...; each call appends their keys and values to the cache
(one state per layer for K and for V, laid out [kv_heads, ctx, head_dim] so attention reads it
without a transpose) and attends to every earlier position. A call reaching past `ctx` fails in
nn.update_slice (never an out-of-bounds write) and leaves the cache as it was. Token ids are
range-checked by quant.get_rows; nn.gather (float tables) takes negative ids from the end, so
callers check ids first (ckir.llm does).

Sliding-window layers (gemma3) keep only their window: a ring buffer of `window` entries where
slot r holds the latest position p with p % window == r. A call attends to the ring plus its own
new keys under a mask built from absolute positions, then gathers the new ring from both.

Conventions checked against llama.cpp:
- llama: rope pairs (2i, 2i+1) (LLAMA_ROPE_TYPE_NORM: convert_hf_to_gguf.py permutes the q/k rows
  of HF checkpoints so that this pairing is right); qwen2, qwen3, gemma3 pair (i, i + n_rot/2)
  (NEOX). Optional llama3 `rope_freqs.weight` divides each pair's frequency.
- qwen2: q/k/v biases (any architecture gets a bias where the file has one, as llama.cpp's
  create_tensor_qkv allows). qwen3 and gemma3: rms_norm of each head of q and k (weight
  [head_dim]) before rope.
- gemma3: the token embedding times sqrt(n_embd) (f32), q scaled by 1/sqrt(head_dim) (27B, 62
  layers: 1/sqrt(n_embd/n_head)) and attention with scale 1, rms_norm after attention and after
  the FFN as well as before, GELU(tanh)(gate) * up, output tied to the embedding when the file has
  no output.weight. convert_hf_to_gguf.py stores gemma's norm weights as (1 + w), so every
  rms_norm multiplies by the stored weight, as for the other architectures. Layer il is
  sliding-window iff il % pattern < pattern - 1 (pattern from
  `gemma3.attention.sliding_window_pattern`, default 6; an array there gives the layers
  directly); those layers use `rope.freq_base_swa` (default 10000) and no rope scaling, the
  others `rope.freq_base` and 1 / `rope.scaling.factor`. An optional
  `final_logit_softcapping` caps the logits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ckir import dtypes as dt
from ckir.builder import new_graph
from ckir.errors import CkirError
from ckir.ir import Module
from ckir.types import Sym, TensorType

from .reader import GGUFError, Reader, load_weights

ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3")
DEFAULT_CTX = 2048
INT64_MAX = 2 ** 63 - 1
I64 = dt.i64


@dataclass(frozen=True)
class Config:
    """Hyperparameters of a model, read from GGUF metadata as llama.cpp reads them."""
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    head_dim_v: int
    n_ff: int
    n_rot: int
    eps: float
    ctx_train: int
    rope_base: float
    rope_scale: float           # llama.cpp's freq_scale: positions are multiplied by it
    rope_base_swa: float
    rope_interleaved: bool
    window: int | None          # sliding window of the layers in `swa`
    swa: tuple                  # per layer: sliding-window attention or not
    attn_scale: float
    embed_scale: float | None
    softcap: float | None
    qk_norm: bool
    post_norms: bool
    gelu: bool


def _int(r: Reader, key: str, default=None, low=1) -> int:
    v = r.field(key, int) if default is None else r.field(key, int, default)
    if v < low:
        raise GGUFError(f"{r.path}: key '{key}' must be >= {low}, got {v}")
    return v


def _float(r: Reader, key: str, default=None) -> float:
    v = r.field(key, float) if default is None else r.field(key, float, default)
    if not math.isfinite(v):
        raise GGUFError(f"{r.path}: key '{key}' must be finite, got {v}")
    return float(v)


def config(r: Reader) -> Config:
    """The model's hyperparameters; missing or bad keys raise GGUFError naming the key."""
    arch = r.field("general.architecture", str)
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{r.path}: architecture '{arch}' is not supported (supported: "
                        f"{', '.join(ARCHITECTURES)})")
    p = arch + "."
    n_embd = _int(r, p + "embedding_length")
    n_layer = _int(r, p + "block_count")
    n_head = _int(r, p + "attention.head_count")
    n_head_kv = _int(r, p + "attention.head_count_kv", n_head)
    if n_head % n_head_kv:
        raise GGUFError(f"{r.path}: {n_head} attention heads are not a multiple of {n_head_kv} kv heads")
    head_dim = _int(r, p + "attention.key_length", n_embd // n_head)
    head_dim_v = _int(r, p + "attention.value_length", n_embd // n_head)
    if head_dim != head_dim_v:
        raise GGUFError(f"{r.path}: key_length {head_dim} != value_length {head_dim_v}; llama.cpp's "
                        f"{arch} graph needs them equal")
    n_rot = _int(r, p + "rope.dimension_count", head_dim)
    if n_rot > head_dim or n_rot % 2:
        raise GGUFError(f"{r.path}: rope.dimension_count {n_rot} must be even and <= the head dim {head_dim}")
    if arch in ("llama", "qwen2", "qwen3") and n_rot != head_dim:
        raise GGUFError(f"{r.path}: rope.dimension_count {n_rot} != head dim {head_dim}")
    if "tokenizer.ggml.tokens" in r.metadata:
        n_vocab = len(r.field("tokenizer.ggml.tokens", list))
    else:
        n_vocab = _int(r, p + "vocab_size")
    scaling = r.field(p + "rope.scaling.type", str, "linear")
    factor = _float(r, p + "rope.scaling.factor", 0.0) or _float(r, p + "rope.scale_linear", 0.0)
    if scaling not in ("none", "linear") and factor not in (0.0, 1.0):
        raise GGUFError(f"{r.path}: rope scaling '{scaling}' is not supported (only linear)")
    window, swa = None, (False,) * n_layer
    if arch == "gemma3":
        window = _int(r, p + "attention.sliding_window", 0, low=0) or None
        if window is not None:
            pat = r.field(p + "attention.sliding_window_pattern", default=6)
            if isinstance(pat, list):
                if len(pat) != n_layer:
                    raise GGUFError(f"{r.path}: key '{p}attention.sliding_window_pattern' has "
                                    f"{len(pat)} entries for {n_layer} layers")
                swa = tuple(bool(x) for x in pat)
            elif type(pat) is int and pat >= 0:
                swa = tuple(pat == 0 or il % pat < pat - 1 for il in range(n_layer))
            else:
                raise GGUFError(f"{r.path}: key '{p}attention.sliding_window_pattern' must be a "
                                f"non-negative int or a list, got {pat!r:.40}")
    if arch == "gemma3":
        per_head = n_embd / n_head if n_layer == 62 else head_dim
        attn_scale = float(np.float32(1.0) / np.sqrt(np.float32(per_head)))
    else:
        attn_scale = 1.0 / math.sqrt(head_dim)
    softcap = _float(r, p + "final_logit_softcapping", 0.0) or None
    return Config(
        arch=arch, n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        n_head_kv=n_head_kv, head_dim=head_dim, head_dim_v=head_dim_v,
        n_ff=_int(r, p + "feed_forward_length"), n_rot=n_rot,
        eps=_float(r, p + "attention.layer_norm_rms_epsilon"),
        ctx_train=_int(r, p + "context_length"),
        rope_base=_float(r, p + "rope.freq_base", 10000.0),
        rope_scale=1.0 / factor if factor else 1.0,
        rope_base_swa=_float(r, p + "rope.freq_base_swa", 10000.0),
        rope_interleaved=arch == "llama", window=window, swa=swa, attn_scale=attn_scale,
        embed_scale=float(np.sqrt(np.float32(n_embd))) if arch == "gemma3" else None,
        softcap=softcap if arch == "gemma3" else None,
        qk_norm=arch in ("qwen3", "gemma3"), post_norms=arch == "gemma3", gelu=arch == "gemma3")


# --- tensors ---------------------------------------------------------------------------------
_FLOAT = (dt.f32, dt.f16, dt.bf16)


class _Tensors:
    """The file's tensors, checked against the shapes the architecture needs."""

    def __init__(self, r: Reader, c: Config):
        self.r, self.c = r, c

    def get(self, name: str, shape: tuple, required: bool = True, kind: str = "any"):
        t = self.r.tensors.get(name)
        if t is None:
            if required:
                raise GGUFError(f"{self.r.path}: missing tensor '{name}' (needed by {self.c.arch})")
            return None
        if tuple(t.shape) != tuple(shape):
            raise GGUFError(f"{self.r.path}: tensor '{name}' has shape {list(t.shape)}, expected "
                            f"{list(shape)}")
        if kind == "float" and t.dtype is not dt.f32:
            raise GGUFError(f"{self.r.path}: tensor '{name}' is {t.ggml_type}; ckir needs F32 here")
        if kind == "any" and not (t.dtype.is_quant or t.dtype in _FLOAT):
            raise GGUFError(f"{self.r.path}: tensor '{name}' has type {t.ggml_type}, not a float "
                            f"or block-quantized type")
        return name


@dataclass
class _Layer:
    attn_norm: str
    wq: str
    wk: str
    wv: str
    wo: str
    bq: str | None
    bk: str | None
    bv: str | None
    bo: str | None
    q_norm: str | None
    k_norm: str | None
    post_attn_norm: str | None
    ffn_norm: str
    w_gate: str
    w_up: str
    w_down: str
    post_ffn_norm: str | None


def _layers(r: Reader, c: Config):
    ts = _Tensors(r, c)
    d, q_dim, kv_dim = c.n_embd, c.n_head * c.head_dim, c.n_head_kv * c.head_dim
    emb = ts.get("token_embd.weight", (c.n_vocab, d))
    out = ts.get("output.weight", (c.n_vocab, d), required=False) or emb
    out_norm = ts.get("output_norm.weight", (d,), kind="float")
    rope_freqs = ts.get("rope_freqs.weight", (c.n_rot // 2,), required=False, kind="float")
    layers = []
    for i in range(c.n_layer):
        def t(name, shape, required=True, kind="any"):
            return ts.get(f"blk.{i}.{name}", shape, required, kind)
        norm = dict(kind="float")
        layers.append(_Layer(
            attn_norm=t("attn_norm.weight", (d,), **norm),
            wq=t("attn_q.weight", (q_dim, d)), wk=t("attn_k.weight", (kv_dim, d)),
            wv=t("attn_v.weight", (kv_dim, d)), wo=t("attn_output.weight", (d, q_dim)),
            bq=t("attn_q.bias", (q_dim,), False, "float"), bk=t("attn_k.bias", (kv_dim,), False, "float"),
            bv=t("attn_v.bias", (kv_dim,), False, "float"), bo=t("attn_output.bias", (d,), False, "float"),
            q_norm=t("attn_q_norm.weight", (c.head_dim,), **norm) if c.qk_norm else None,
            k_norm=t("attn_k_norm.weight", (c.head_dim,), **norm) if c.qk_norm else None,
            post_attn_norm=t("post_attention_norm.weight", (d,), **norm) if c.post_norms else None,
            ffn_norm=t("ffn_norm.weight", (d,), **norm),
            w_gate=t("ffn_gate.weight", (c.n_ff, d)), w_up=t("ffn_up.weight", (c.n_ff, d)),
            w_down=t("ffn_down.weight", (d, c.n_ff)),
            post_ffn_norm=t("post_ffw_norm.weight", (d,), **norm) if c.post_norms else None))
    if "attn_qkv" in " ".join(r.tensors):
        raise GGUFError(f"{r.path}: fused attn_qkv tensors are not supported")
    return emb, out, out_norm, rope_freqs, layers


# --- graph building --------------------------------------------------------------------------
class _Net:
    """Builds one graph of the model with a Builder `b`."""

    def __init__(self, m: Module, c: Config, b, ctx: int, act: str):
        self.m, self.c, self.b, self.ctx, self.act = m, c, b, ctx, act

    def w(self, name):
        return self.b.weight(self.m, name)

    def const(self, v, dtype):
        return self.b.constant(np.asarray(v, dtype))

    def linear(self, x, name, bias=None):
        b, wt = self.b, self.m.weights[name].type
        w = self.w(name)
        if wt.dtype.is_quant:
            y = b.quant.matmul(x, w, act=self.act)
        else:
            if wt.dtype is not dt.f32:
                w = b.nn.cast(w, to="f32")
            y = b.nn.matmul(x, w, transpose_b=True)
        return y if bias is None else b.nn.add(y, self.w(bias))

    def embed(self, name, tokens):
        b, wt = self.b, self.m.weights[name].type
        if wt.dtype.is_quant:
            return b.quant.get_rows(self.w(name), tokens)
        x = b.nn.gather(self.w(name), tokens, axis=0)
        return x if wt.dtype is dt.f32 else b.nn.cast(x, to="f32")

    def norm(self, x, name):
        return self.b.nn.rms_norm(x, self.w(name), eps=self.c.eps)

    def rope(self, x, positions, base, scale, freqs):
        """x [T, H, D] at positions [T, 1]."""
        b, c = self.b, self.c
        if freqs is None:
            return b.nn.rope(x, positions, theta=base, interleaved=c.rope_interleaved,
                             rotary_dim=c.n_rot, scale=scale)
        # llama3 frequency factors divide each pair's frequency (ggml_rope_ext's freq_factors)
        inv = (scale / base ** (np.arange(0, c.n_rot, 2) / c.n_rot)).astype(np.float32)
        ang = b.nn.mul(b.nn.unsqueeze(b.nn.cast(positions, to="f32"), axes=[2]),
                       b.nn.div(self.const(inv, np.float32), self.w(freqs)))
        return b.nn.rope_cached(x, b.nn.cos(ang), b.nn.sin(ang), interleaved=c.rope_interleaved)

    def forward(self, tokens, pos, layers, emb, out, out_norm, freqs, all_logits: bool):
        b, c = self.b, self.c
        x = self.embed(emb, tokens)                                   # [T, d]
        if c.embed_scale is not None:
            x = b.nn.mul(x, c.embed_scale)
        n = b.nn.size(tokens, axes=[0], dtype="i64")
        end = b.nn.add(pos, n)
        # positions pos .. end-1 sliced from 0 .. ctx-1, so their size is bounded by ctx (a
        # memory plan can place them; arange_dyn's size would be unbounded)
        every = b.nn.arange(start=0, limit=self.ctx, dtype="i64")
        positions = b.nn.slice_dyn(every, b.nn.reshape(pos, shape=[1]), b.nn.reshape(end, shape=[1]),
                                   axes=[0])
        positions = b.nn.reshape_like(positions, tokens)              # [T]
        q_pos = b.nn.unsqueeze(positions, axes=[1])                   # [T, 1]
        for i, L in enumerate(layers):
            h = self.norm(x, L.attn_norm)
            # rows as -1, not the symbol seq: a backend sizes the result from its input alone
            q = b.nn.reshape(self.linear(h, L.wq, L.bq), shape=[-1, c.n_head, c.head_dim])
            k = b.nn.reshape(self.linear(h, L.wk, L.bk), shape=[-1, c.n_head_kv, c.head_dim])
            v = b.nn.reshape(self.linear(h, L.wv, L.bv), shape=[-1, c.n_head_kv, c.head_dim_v])
            if c.qk_norm:
                q, k = self.norm(q, L.q_norm), self.norm(k, L.k_norm)
            swa = c.swa[i]
            base, scale = (c.rope_base_swa, 1.0) if swa else (c.rope_base, c.rope_scale)
            q = self.rope(q, q_pos, base, scale, freqs)
            k = self.rope(k, q_pos, base, scale, freqs)
            q, k, v = (b.nn.transpose(t, perm=[1, 0, 2]) for t in (q, k, v))   # [H, T, D]
            if swa and c.window < self.ctx:
                a = self.ring_attention(i, q, k, v, pos, end, positions)
            else:
                a = self.cached_attention(i, q, k, v, pos, end, c.window if swa else None)
            a = b.nn.reshape(b.nn.transpose(a, perm=[1, 0, 2]), shape=[-1, c.n_head * c.head_dim_v])
            a = b.nn.reshape_like(self.linear(a, L.wo, L.bo), x)      # [?, d] back to [seq, d]
            if c.post_norms:
                a = self.norm(a, L.post_attn_norm)
            x = b.nn.add(x, a)
            h = self.norm(x, L.ffn_norm)
            g = self.linear(h, L.w_gate)
            g = b.nn.gelu(g, approximate="tanh") if c.gelu else b.nn.silu(g)
            f = self.linear(b.nn.mul(g, self.linear(h, L.w_up)), L.w_down)
            if c.post_norms:
                f = self.norm(f, L.post_ffn_norm)
            x = b.nn.add(x, f)
        if not all_logits:
            x = b.nn.slice(x, starts=[-1], ends=[INT64_MAX], axes=[0])
        y = self.linear(self.norm(x, out_norm), out)
        if c.softcap is not None:
            y = b.nn.mul(b.nn.tanh(b.nn.div(y, c.softcap)), c.softcap)
        return y if all_logits else b.nn.reshape(y, shape=[c.n_vocab])

    def cached_attention(self, i, q, k, v, pos, end, window):
        """Append k, v [Hkv, T, D] to the layer's cache at pos and attend to positions [0, end)."""
        b = self.b
        keys = []
        for kind, new in (("k", k), ("v", v)):
            name = f"blk.{i}.{kind}_cache"
            cache = b.nn.update_slice(self.state(name), new, pos, axis=1)
            self.write_state(cache, name)
            keys.append(b.nn.slice_dyn(cache, self.const([0], np.int64),
                                       b.nn.reshape(end, shape=[1]), axes=[1]))
        return b.nn.attention(q, keys[0], keys[1], causal=True, scale=self.c.attn_scale,
                              window=window)

    def state(self, name):
        return self.b.create("ckir.state", (), {"name": name},
                             result_types=[self.m.state[name].type]).results[0]

    def write_state(self, value, name):
        self.b.create("ckir.write_state", [value], {"name": name})

    def ring_attention(self, i, q, k, v, pos, end, positions):
        """Sliding-window attention with a ring buffer of W = window entries per kv head: slot r
        holds the latest position p < pos with p % W == r (absent when p < 0)."""
        b, W = self.b, self.c.window
        one = self.const(1, np.int64)
        slots = self.const(np.arange(W), np.int64)
        before = b.nn.sub(pos, one)
        held = b.nn.sub(before, b.nn.mod(b.nn.sub(before, slots), W))          # [W]
        key_pos = b.nn.concat(held, positions, axis=0)                          # [W + T]
        qp = b.nn.unsqueeze(positions, axes=[1])                                 # [T, 1]
        visible = b.nn.and_(b.nn.and_(b.nn.ge(key_pos, 0), b.nn.le(key_pos, qp)),
                            b.nn.gt(key_pos, b.nn.sub(qp, W)))                   # [T, W + T]
        last = b.nn.sub(end, one)
        latest = b.nn.sub(last, b.nn.mod(b.nn.sub(last, slots), W))             # [W]
        pick = b.nn.where(b.nn.ge(latest, pos), b.nn.add(b.nn.sub(latest, pos), W), slots)
        both = []
        for kind, new in (("k", k), ("v", v)):
            name = f"blk.{i}.{kind}_cache"
            joined = b.nn.concat(self.state(name), new, axis=1)                  # [Hkv, W + T, D]
            self.write_state(b.nn.gather(joined, pick, axis=1), name)
            both.append(joined)
        return b.nn.attention(q, both[0], both[1], visible, scale=self.c.attn_scale)


def build(source, ctx: int | None = None, act: str = "q8") -> Module:
    """A Module for the GGUF model at `source` (a path or a Reader) with a KV cache of `ctx`
    positions (default: the training context, at most 2048). `act` is the quantized matmuls'
    activation mode (quant.matmul): "q8" rounds activations to 8-bit blocks as llama.cpp does
    (its numerics, and integer dot-product kernels); "f32" multiplies exactly by the decoded
    weights (what an F32 copy of the file computes)."""
    if act not in ("q8", "f32"):
        raise CkirError(f"act must be q8 or f32, got {act!r}")
    r = source if isinstance(source, Reader) else Reader(source)
    c = config(r)
    if ctx is None:
        ctx = min(c.ctx_train, DEFAULT_CTX)
    if type(ctx) is not int or ctx < 1:
        raise CkirError(f"ctx must be a positive int, got {ctx!r}")
    emb, out, out_norm, freqs, layers = _layers(r, c)
    m = Module(r.field("general.name", str, c.arch).replace(" ", "_") or c.arch)
    load_weights(m, r)
    for i in range(c.n_layer):
        size = c.window if c.swa[i] and c.window < ctx else ctx
        for kind, d in (("k", c.head_dim), ("v", c.head_dim_v)):
            m.add_state(f"blk.{i}.{kind}_cache", TensorType((c.n_head_kv, size, d), dt.f32))
    seq = Sym("seq", ctx)
    for name, tdim, all_logits in (("prefill", seq, False), ("decode", 1, False), ("score", seq, True)):
        g, b = new_graph(name, {"tokens": TensorType((tdim,), I64), "pos": TensorType((), I64)})
        net = _Net(m, c, b, ctx, act)
        y = net.forward(g.inputs[0], g.inputs[1], layers, emb, out, out_norm, freqs, all_logits)
        g.set_outputs([y], ["logits"])
        m.add_graph(g)
    return m
