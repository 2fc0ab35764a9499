"""Models built in PyTorch and exported to ONNX, for tests and benchmarks (random weights,
nothing downloaded): a BERT/MiniLM-like encoder with dynamic batch and sequence axes, attention
mask and token type ids; a small ResNet-like CNN; an int8 dynamically quantized encoder."""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import torch
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads, self.dh = heads, hidden // heads
        self.q, self.k, self.v = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x, bias):
        b, t, _ = x.shape

        def split(y):
            return y.view(b, t, self.heads, self.dh).transpose(1, 2)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        s = q @ k.transpose(-1, -2) / math.sqrt(self.dh) + bias
        y = torch.softmax(s, dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, -1))


class Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int):
        super().__init__()
        self.attn = SelfAttention(hidden, heads)
        self.ln1, self.ln2 = nn.LayerNorm(hidden, eps=1e-12), nn.LayerNorm(hidden, eps=1e-12)
        self.fc1, self.fc2 = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)

    def forward(self, x, bias):
        x = self.ln1(x + self.attn(x, bias))
        return self.ln2(x + self.fc2(nn.functional.gelu(self.fc1(x))))


class Encoder(nn.Module):
    """BERT-style: word + position + token type embeddings, post-LN layers, additive mask."""

    def __init__(self, layers=2, hidden=64, heads=4, ffn=128, vocab=100, max_pos=128):
        super().__init__()
        self.word, self.pos, self.tok = nn.Embedding(vocab, hidden), nn.Embedding(max_pos, hidden), nn.Embedding(2, hidden)
        self.ln = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList(Layer(hidden, heads, ffn) for _ in range(layers))

    def forward(self, input_ids, attention_mask, token_type_ids):
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device).unsqueeze(0)
        x = self.ln(self.word(input_ids) + self.pos(pos) + self.tok(token_type_ids))
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, bias)
        return x


MINILM = dict(layers=6, hidden=384, heads=12, ffn=1536, vocab=30522, max_pos=512)


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.c1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(c_out)
        self.c2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(c_out)
        self.skip = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                     if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(y)) + self.skip(x))


class CNN(nn.Module):
    """ResNet-like: stem conv + max pool, residual blocks, global average pool, classifier."""

    def __init__(self, widths=(16, 32, 64), classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        blocks, c = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [Block(c, w, 1 if i == 0 else 2), Block(w, w, 1)]
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def _randomize_bn(model, seed):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def export(model, args, path, input_names, output_names, dynamic_axes, opset=17):
    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, path, dynamo=False, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes, opset_version=opset)
    return path


def encoder_onnx(path, seed=0, opset=17, **cfg):
    torch.manual_seed(seed)
    m = Encoder(**cfg)
    ids = torch.randint(0, cfg.get("vocab", 100), (2, 8))
    axes = {n: {0: "batch", 1: "seq"} for n in ("input_ids", "attention_mask", "token_type_ids")}
    axes["last_hidden_state"] = {0: "batch", 1: "seq"}
    return export(m, (ids, torch.ones_like(ids), torch.zeros_like(ids)), path,
                  ["input_ids", "attention_mask", "token_type_ids"], ["last_hidden_state"], axes, opset)


def encoder_inputs(batch, seq, vocab=100, seed=0):
    r = np.random.default_rng(seed)
    ids = r.integers(0, vocab, (batch, seq)).astype(np.int64)
    mask = np.ones((batch, seq), np.int64)
    mask[:, seq - seq // 4:] = 0 if batch > 1 else 1      # padded tails in a batch
    types = np.zeros((batch, seq), np.int64)
    types[:, seq // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def cnn_onnx(path, seed=0, opset=17, size=64, **cfg):
    torch.manual_seed(seed)
    m = CNN(**cfg)
    _randomize_bn(m, seed)
    return export(m, (torch.randn(1, 3, size, size),), path, ["image"], ["logits"],
                  {"image": {0: "batch"}, "logits": {0: "batch"}}, opset)


def quantized_encoder_onnx(path, seed=0, **cfg):
    """The encoder with int8 weights (onnxruntime.quantization.quantize_dynamic)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    fp32 = os.path.splitext(path)[0] + ".fp32.onnx"
    encoder_onnx(fp32, seed, **cfg)
    # 7-bit weights: on CPUs without AVX-512 VNNI, onnxruntime's u8 x s8 MatMulInteger adds
    # pairs of products with int16 saturation (vpmaddubsw), which full-range weights overflow;
    # reduce_range keeps its results exact, so they can be compared with ckir's exact ones.
    quantize_dynamic(fp32, path, weight_type=QuantType.QInt8, reduce_range=True)
    return path
