"""A tiny GPT-style transformer built twice, in ckir's IR and in PyTorch, from the same weights:
the reference for training (autodiff + optimizer) and the training benchmark.

Pre-LayerNorm blocks: causal multi-head attention and a GELU MLP, learned token and position
embeddings, a final LayerNorm and an untied LM head; the loss is cross-entropy of the next
token (log_softmax + nll_loss, mean over batch and positions)."""
from __future__ import annotations

import numpy as np

import ckir
from ckir import Module, TensorType, new_graph

CONFIG = dict(vocab=32, d=16, heads=2, layers=2, seq=8, ffn=32)


def init_weights(cfg: dict, seed: int = 0, dtype=np.float64) -> dict:
    r = np.random.default_rng(seed)
    d, f, v, t = cfg["d"], cfg["ffn"], cfg["vocab"], cfg["seq"]

    def n(*shape, s=0.2):
        return (r.standard_normal(shape) * s).astype(dtype)
    w = {"tok": n(v, d), "pos": n(t, d), "lnf.w": 1 + n(d, s=0.1), "lnf.b": n(d, s=0.1), "head": n(v, d)}
    for i in range(cfg["layers"]):
        p = f"l{i}."
        w.update({p + "ln1.w": 1 + n(d, s=0.1), p + "ln1.b": n(d, s=0.1), p + "q": n(d, d), p + "k": n(d, d),
                  p + "v": n(d, d), p + "o": n(d, d), p + "ln2.w": 1 + n(d, s=0.1), p + "ln2.b": n(d, s=0.1),
                  p + "fc1": n(f, d), p + "fc1.b": n(f, s=0.1), p + "fc2": n(d, f), p + "fc2.b": n(d, s=0.1)})
    return w


def build(cfg: dict, weights: dict, batch: int) -> Module:
    """Inputs tokens, targets (i64 [batch, seq]); output loss (a scalar)."""
    m = Module("tiny_gpt")
    for k, a in weights.items():
        m.add_weight(k, a)
    d, h, t = cfg["d"], cfg["heads"], cfg["seq"]
    dt = ckir.dtypes.dtype(next(iter(weights.values())).dtype)
    g, b = new_graph("main", {"tokens": TensorType([batch, t], "i64"), "targets": TensorType([batch, t], "i64")})
    tokens, targets = g.inputs

    def w(name):
        return b.weight(m, name)

    def linear(x, name, bias=None):
        y = b.nn.matmul(x, w(name), transpose_b=True)
        return b.nn.add(y, w(bias)) if bias else y

    x = b.nn.add(b.nn.gather(w("tok"), tokens, axis=0), w("pos"))
    for i in range(cfg["layers"]):
        p = f"l{i}."
        a = b.nn.layer_norm(x, w(p + "ln1.w"), w(p + "ln1.b"))

        def heads(y):
            return b.nn.transpose(b.nn.reshape(y, shape=[batch, t, h, d // h]), perm=[0, 2, 1, 3])
        q, k, v = heads(linear(a, p + "q")), heads(linear(a, p + "k")), heads(linear(a, p + "v"))
        att = b.nn.attention(q, k, v, causal=True)
        att = b.nn.reshape(b.nn.transpose(att, perm=[0, 2, 1, 3]), shape=[batch, t, d])
        x = b.nn.add(x, linear(att, p + "o"))
        a = b.nn.layer_norm(x, w(p + "ln2.w"), w(p + "ln2.b"))
        x = b.nn.add(x, linear(b.nn.gelu(linear(a, p + "fc1", p + "fc1.b")), p + "fc2", p + "fc2.b"))
    x = b.nn.layer_norm(x, w("lnf.w"), w("lnf.b"))
    logits = linear(x, "head")
    logp = b.nn.log_softmax(b.nn.reshape(logits, shape=[batch * t, cfg["vocab"]]), axis=-1)
    loss = b.nn.nll_loss(logp, b.nn.reshape(targets, shape=[batch * t]))
    g.set_outputs([loss], ["loss"])
    m.add_graph(g)
    assert loss.type.dtype is dt
    return m


def torch_model(cfg: dict, weights: dict):
    """The same network in PyTorch: (module, loss_fn(tokens, targets))."""
    import torch
    import torch.nn.functional as F
    params = {k: torch.nn.Parameter(torch.tensor(a)) for k, a in weights.items()}
    d, h, t = cfg["d"], cfg["heads"], cfg["seq"]

    def forward(tokens, targets):
        bsz = tokens.shape[0]
        x = params["tok"][tokens] + params["pos"]
        for i in range(cfg["layers"]):
            p = f"l{i}."
            a = F.layer_norm(x, (d,), params[p + "ln1.w"], params[p + "ln1.b"])

            def heads(y):
                return y.reshape(bsz, t, h, d // h).transpose(1, 2)
            q, k, v = (heads(a @ params[p + n].T) for n in "qkv")
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + att.transpose(1, 2).reshape(bsz, t, d) @ params[p + "o"].T
            a = F.layer_norm(x, (d,), params[p + "ln2.w"], params[p + "ln2.b"])
            x = x + F.gelu(a @ params[p + "fc1"].T + params[p + "fc1.b"]) @ params[p + "fc2"].T + params[p + "fc2.b"]
        x = F.layer_norm(x, (d,), params["lnf.w"], params["lnf.b"])
        logits = x @ params["head"].T
        return F.cross_entropy(logits.reshape(-1, cfg["vocab"]), targets.reshape(-1))
    return params, forward


def batches(cfg: dict, batch: int, steps: int, seed: int = 1):
    r = np.random.default_rng(seed)
    for _ in range(steps):
        tok = r.integers(0, cfg["vocab"], (batch, cfg["seq"] + 1))
        yield tok[:, :-1].astype(np.int64), tok[:, 1:].astype(np.int64)
