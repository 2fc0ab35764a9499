"""Tiny random GGUF language models for tests: every architecture ckir builds (llama, qwen2, qwen3,
gemma3), written with gguf.GGUFWriter with the metadata llama.cpp needs, a small SentencePiece
vocabulary (llama.cpp requires the 256 byte tokens), and the linear weights in any GGML type:
gguf.quants.quantize where it can (F16, BF16, Q4_0 ... Q8_0), else random valid blocks scaled to
the same spread (the K-quants)."""
from __future__ import annotations

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T

from ckir import dtypes as dt
from ckir.dialects.quant.ggml import decode, random_blocks

NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6
WORDS = ["\u2581the", "\u2581a", "\u2581cat", "\u2581dog", "\u2581sat", "\u2581on", "\u2581mat",
         "\u2581and", "\u2581ran", "\u2581hello", "\u2581world", "\u2581is", "ing", "ed", "er",
         "\u2581", "th", "he", "in"]
CHARS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list(".,!?'")
SPECIAL = ["<start_of_turn>", "<end_of_turn>", "<|im_start|>", "<|im_end|>"]

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# hyperparameters per architecture: every linear weight has K a multiple of 256 (K-quant rows)
BASE = dict(n_embd=256, n_layer=2, n_head=4, n_head_kv=2, head_dim=64, n_ff=512, ctx=512,
            eps=1e-5, rope_base=10000.0)
ARCH = {
    "llama": dict(),
    "qwen2": dict(rope_base=1000000.0, eps=1e-6),
    "qwen3": dict(head_dim=128, rope_base=1000000.0, eps=1e-6),   # head_dim * n_head != n_embd
    "gemma3": dict(n_layer=3, eps=1e-6, rope_base=1000000.0, window=5, swa_pattern=3,
                   rope_base_swa=10000.0, rope_scale=2.0),
}


def vocab():
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + CHARS + WORDS + SPECIAL
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256 + [NORMAL] * (len(CHARS) + len(WORDS)) \
        + [CONTROL] * len(SPECIAL)
    scores = [0.0] * 259 + [-10.0 - i for i in range(len(CHARS))] + [-1.0 - i for i in range(len(WORDS))] \
        + [0.0] * len(SPECIAL)
    return tokens, scores, types


def _spread_blocks(qtype: T, shape, std, rng):
    """Random valid blocks of `qtype` whose decoded values have standard deviation about `std`
    (every decoded value is linear in the block's float scales, so one rescale does it)."""
    d = dt.dtype(qtype.name.lower())
    seed = int(rng.integers(2 ** 31))
    probe = decode(random_blocks(d, shape, np.random.default_rng(seed), 0.5, 1.0), d)
    c = std / max(float(probe.std()), 1e-30)
    return random_blocks(d, shape, np.random.default_rng(seed), 0.5 * c, c)


def tensor_data(x: np.ndarray, qtype: T, rng):
    """(array to write, raw_dtype) for f32 weights `x` stored as `qtype`."""
    if qtype == T.F32:
        return x, None
    if qtype == T.F16:
        return x.astype(np.float16), None
    if qtype in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.BF16):
        return gguf.quants.quantize(x, qtype), qtype
    return _spread_blocks(qtype, x.shape, float(x.std()), rng), qtype


def hparams(arch: str, **over) -> dict:
    return {**BASE, **ARCH[arch], **over}


def write_model(path, arch: str, qtype: T = T.F32, seed: int = 0, tied: bool | None = None,
                embed_type: T | None = None, chat_template: str | None = CHAT_TEMPLATE,
                rope_freqs: bool = False, dequantized: bool = False, **over) -> dict:
    """Write a random model; returns {tensor name: f32 weights as llama.cpp decodes them}. With
    `dequantized`, the same model (same seed) is written with those f32 weights instead: llama.cpp
    then computes in f32 what ckir computes from the quantized file."""
    h = hparams(arch, **over)
    rng = np.random.default_rng(seed)
    tokens, scores, types = vocab()
    nv, d, hd, nh, nkv, ff = len(tokens), h["n_embd"], h["head_dim"], h["n_head"], h["n_head_kv"], h["n_ff"]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(h["ctx"])
    w.add_embedding_length(d)
    w.add_block_count(h["n_layer"])
    w.add_feed_forward_length(ff)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_layer_norm_rms_eps(h["eps"])
    w.add_rope_freq_base(h["rope_base"])
    if hd * nh != d or arch != "llama":
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    if arch == "gemma3":
        w.add_sliding_window(h["window"])
        w.add_uint32(f"{arch}.attention.sliding_window_pattern", h["swa_pattern"])
        w.add_rope_freq_base_swa(h["rope_base_swa"])
        if h.get("rope_scale"):
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(h["rope_scale"])
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat_template:
        w.add_chat_template(chat_template)
    if tied is None:
        tied = arch == "gemma3"
    decoded = {}

    def add(name, shape, std, quant=True, kind=None):
        x = (rng.standard_normal(shape) * std).astype(np.float32)
        if kind == "norm":
            x = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        q = (embed_type or qtype) if name == "token_embd.weight" else qtype
        data, raw = tensor_data(x, q if quant else T.F32, rng)
        if raw is not None:
            f = gguf.quants.dequantize(data, raw).reshape(shape)
        else:
            f = data.astype(np.float32)
        decoded[name] = f
        if dequantized:
            data, raw = f, None
        w.add_tensor(name, data, raw_dtype=raw)

    add("token_embd.weight", (nv, d), 1.0)
    add("output_norm.weight", (d,), 0, False, "norm")
    if not tied:
        add("output.weight", (nv, d), 3.0 / np.sqrt(d))
    if rope_freqs:
        w.add_tensor("rope_freqs.weight", (1.0 + rng.uniform(0, 3, hd // 2)).astype(np.float32))
    for i in range(h["n_layer"]):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", (d,), 0, False, "norm")
        add(p + "attn_q.weight", (nh * hd, d), 1 / np.sqrt(d))
        add(p + "attn_k.weight", (nkv * hd, d), 1 / np.sqrt(d))
        add(p + "attn_v.weight", (nkv * hd, d), 1 / np.sqrt(d))
        add(p + "attn_output.weight", (d, nh * hd), 1 / np.sqrt(nh * hd))
        if arch == "qwen2":
            add(p + "attn_q.bias", (nh * hd,), 0.5, False)
            add(p + "attn_k.bias", (nkv * hd,), 0.5, False)
            add(p + "attn_v.bias", (nkv * hd,), 0.5, False)
        if arch in ("qwen3", "gemma3"):
            add(p + "attn_q_norm.weight", (hd,), 0, False, "norm")
            add(p + "attn_k_norm.weight", (hd,), 0, False, "norm")
        if arch == "gemma3":
            add(p + "post_attention_norm.weight", (d,), 0, False, "norm")
            add(p + "post_ffw_norm.weight", (d,), 0, False, "norm")
        add(p + "ffn_norm.weight", (d,), 0, False, "norm")
        add(p + "ffn_gate.weight", (ff, d), 1 / np.sqrt(d))
        add(p + "ffn_up.weight", (ff, d), 1 / np.sqrt(d))
        add(p + "ffn_down.weight", (d, ff), 1 / np.sqrt(ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return decoded
