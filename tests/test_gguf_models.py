"""GGUF language models (llama, qwen2, qwen3, gemma3) against llama.cpp, and the LLM runtime.

The oracle is llama.cpp through llama-cpp-python, run on the same tiny random GGUF files
(tests/gguf_models.py) with an f32 KV cache and no flash attention, so that it computes in f32
what ckir computes.

Tolerances, relative to the largest |logit| of llama.cpp's answer:
- F32 models: 3e-5. Both compute in f32, summing in different orders (SIMD dot products, rope
  angles formed in f32 by llama.cpp, in f64 by nn.rope); observed: 6e-7 to 1e-6. gemma3: 1e-4,
  because llama.cpp's GELU reads a 65536-entry f16 table (the input rounded to f16, the output an
  f16: relative error up to 2^-11 per element); observed 1e-5.
- Quantized models, two comparisons. (1) Against llama.cpp running an F32 "twin" file holding the
  dequantized weights (same seed, decoded with gguf.quants): ckir's quant.matmul is
  x @ dequantize(w)^T, so this is the f32 comparison above and checks that ckir reads every
  block type as llama.cpp does. Observed up to 9e-6. (2) Against llama.cpp on the quantized file
  itself: llama.cpp rounds the activations of every matmul to 8-bit blocks (q8_0 / q8_1 / q8_K;
  F16 and BF16 weights round them to f16 / bf16), an error ckir does not make; observed 0.04% to
  2.3%, bounded here by 6%, with the mean difference under 1.5%.
- Greedy generation: 32 tokens identical where the logits agree to f32 precision (F32 files and
  twins). On quantized files llama.cpp's rounded activations flip near-ties now and then, so
  there only the logits are compared.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import ckir
import ckir.llm
from ckir import CkirError
from ckir.frontends.gguf import GGUFError
from ckir.frontends.gguf.models import build

sys.path.insert(0, os.path.dirname(__file__))
from gguf_models import CHAT_TEMPLATE, vocab, write_model  # noqa: E402

ARCHS = ["llama", "qwen2", "qwen3", "gemma3"]
QTYPES = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
N_VOCAB = len(vocab()[0])
CTX = 128
PROMPT = [1] + np.random.default_rng(0).integers(3, N_VOCAB, 39).tolist()
F32_TOL = {"llama": 3e-5, "qwen2": 3e-5, "qwen3": 3e-5, "gemma3": 1e-4}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """model(arch, qtype="F32", **options) -> path of a written model (cached per arguments)."""
    root = tmp_path_factory.mktemp("gguf_models")
    cache = {}

    def get(arch, qtype="F32", **kw):
        key = (arch, qtype, tuple(sorted(kw.items())))
        if key not in cache:
            name = "_".join([arch, qtype] + [f"{k}{v}" for k, v in sorted(kw.items())])
            path = root / f"{name}.gguf"
            write_model(path, arch, T[qtype], **kw)
            cache[key] = str(path)
        return cache[key]
    return get


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python (the oracle) is not installed")


def lc_model(llama_cpp, path, ctx=CTX):
    return llama_cpp.Llama(path, n_ctx=ctx, logits_all=True, type_k=0, type_v=0, flash_attn=False,
                           n_threads=2, n_threads_batch=2, verbose=False)


def lc_logits(llama_cpp, path, tokens):
    m = lc_model(llama_cpp, path)
    m.eval(tokens)
    return np.array(m.scores[:len(tokens)])


def lc_greedy(llama_cpp, path, prompt, n):
    """Greedy tokens from llama.cpp's logits: the prompt in one batch, then one token at a time."""
    m = lc_model(llama_cpp, path)
    m.eval(prompt)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(m.scores[m.n_tokens - 1])))
        m.eval(out[-1:])
    return out


def rel_diff(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


# --- against llama.cpp -----------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_f32_logits_match_llama_cpp(arch, model, llama_cpp):
    path = model(arch)
    ours = ckir.llm.load(path, ctx=CTX).logits(PROMPT)
    ref = lc_logits(llama_cpp, path, PROMPT)
    assert ours.shape == ref.shape == (len(PROMPT), N_VOCAB)
    assert rel_diff(ours, ref) < F32_TOL[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_f32_greedy_32_tokens_match_llama_cpp(arch, model, llama_cpp):
    path = model(arch)
    out = ckir.llm.load(path, ctx=CTX).generate(PROMPT[:12], 32, ignore_eos=True)
    assert out.tokens == lc_greedy(llama_cpp, path, PROMPT[:12], 32)


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_quantized_logits_match_llama_cpp(arch, qtype, model, llama_cpp):
    """act=f32 computes what the F32 twin of the file does; act=q8 (the default) rounds
    activations to 8-bit blocks as llama.cpp does on the quantized file."""
    path, twin = model(arch, qtype), model(arch, qtype, dequantized=True)
    exact = ckir.llm.load(path, ctx=CTX, act="f32").logits(PROMPT)
    assert rel_diff(exact, lc_logits(llama_cpp, twin, PROMPT)) < F32_TOL[arch]
    ours = ckir.llm.load(path, ctx=CTX).logits(PROMPT)
    ref = lc_logits(llama_cpp, path, PROMPT)
    assert rel_diff(ours, ref) < 0.06
    assert np.abs(ours - ref).mean() < 0.015 * np.abs(ref).max()


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0", "Q4_K", "Q6_K"])
@pytest.mark.parametrize("arch", ARCHS)
def test_quantized_greedy_32_tokens_match_llama_cpp_on_twin(arch, qtype, model, llama_cpp):
    out = ckir.llm.load(model(arch, qtype), ctx=CTX, act="f32").generate(PROMPT[:12], 32, ignore_eos=True)
    assert out.tokens == lc_greedy(llama_cpp, model(arch, qtype, dequantized=True), PROMPT[:12], 32)


@pytest.mark.parametrize("options", [dict(tied=True), dict(rope_freqs=True), dict(embed_type=T.Q8_0),
                                     dict(n_head_kv=4), dict(n_head_kv=1)])
def test_llama_variants_match_llama_cpp(options, model, llama_cpp):
    """Tied output, llama3 rope frequency factors, a quantized embedding table with f32 layers,
    multi-head and multi-query attention."""
    path = model("llama", **options)
    assert rel_diff(ckir.llm.load(path, ctx=CTX).logits(PROMPT), lc_logits(llama_cpp, path, PROMPT)) < 3e-5


# (no all-global variant: llama.cpp aborts on a gemma3 file without any sliding-window layer)
@pytest.mark.parametrize("options", [dict(window=64), dict(rope_scale=0.0),
                                     dict(window=2, n_layer=2, swa_pattern=2)])
def test_gemma3_window_variants_match_llama_cpp(options, model, llama_cpp):
    """A window no prompt reaches, no rope scaling, a window of 2."""
    path = model("gemma3", **options)
    assert rel_diff(ckir.llm.load(path, ctx=CTX).logits(PROMPT), lc_logits(llama_cpp, path, PROMPT)) < 1e-4


# --- the KV cache ----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_in_chunks_and_decode_match_score(arch, model):
    """Any split of a sequence into prefill and decode calls gives the logits of one score call:
    the cache (gemma3's ring buffers of 5 included, wrapping many times) holds what it should."""
    llm = ckir.llm.load(model(arch), ctx=64)
    full = llm.logits(PROMPT)
    llm.reset()
    got = []
    at = 0
    for n in (3, 7, 1, 1, 12, 1, 6, 1, 1, 7):
        got.append(llm.eval(PROMPT[at:at + n]))
        at += n
        assert llm.n_past == at
    assert at == len(PROMPT)
    ends = np.cumsum([3, 7, 1, 1, 12, 1, 6, 1, 1, 7]) - 1
    np.testing.assert_allclose(np.stack(got), full[ends], rtol=0, atol=2e-5 * np.abs(full).max())


def test_ring_buffer_keeps_only_the_window(model):
    m = build(model("gemma3"), ctx=64)
    sizes = {n: s.type.shape for n, s in m.state.items()}
    assert sizes["blk.0.k_cache"] == (2, 5, 64) and sizes["blk.1.v_cache"] == (2, 5, 64)
    assert sizes["blk.2.k_cache"] == (2, 64, 64)      # the global layer (pattern 3)


def test_context_overflow_is_an_error_and_changes_nothing(model):
    llm = ckir.llm.load(model("llama"), ctx=16)
    llm.eval(PROMPT[:10])
    before = {k: v.copy() for k, v in llm._graphs.state.values.items()}
    with pytest.raises(CkirError, match=r"context overflow: 10 positions used \+ 7 new tokens > ctx 16"):
        llm.eval(PROMPT[10:17])
    with pytest.raises(CkirError, match="a prompt of 12 tokens and 6 new tokens need 17 positions, ctx is 16"):
        llm.generate(PROMPT[:12], 6)
    assert llm.n_past == 10
    # the graph itself refuses, without the runtime's check: the positions 10..16 sliced from
    # the ctx positions 0..15 are one short of the 7 tokens; the state stays as it was
    with pytest.raises(CkirError, match=r"cannot reshape \[6\] to \[7\]"):
        llm._graphs("prefill", np.array(PROMPT[10:17]), 10)
    for k, v in llm._graphs.state.values.items():
        np.testing.assert_array_equal(v, before[k])
    out = llm.generate(PROMPT[:12], 5)          # 16 positions: fits exactly
    assert len(out.tokens) == 5


# --- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("tokens,msg", [
    ([1, N_VOCAB], f"token id {N_VOCAB} is out of range for a vocabulary of {N_VOCAB} tokens"),
    ([-1, 5], "token id -1 is out of range"),
    ([], "empty token sequence"),
    ([[1, 2]], "must be a 1-D list of ints"),
    ([1.5], "must be a 1-D list of ints"),
])
def test_bad_tokens(tokens, msg, model):
    llm = ckir.llm.load(model("llama"), ctx=CTX)
    for call in (llm.logits, llm.eval, lambda t: llm.generate(t, 2)):
        with pytest.raises(CkirError, match=msg):
            call(tokens)


def test_bad_generate_arguments(model):
    llm = ckir.llm.load(model("llama"), ctx=CTX)
    with pytest.raises(CkirError, match="empty prompt"):
        llm.generate("", 4)
    for n in (0, -3, 2.0):
        with pytest.raises(CkirError, match="n must be a positive number of tokens"):
            llm.generate("hello", n)
    for kw, msg in [(dict(temp=float("nan")), "temp must be a finite number"),
                    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"), (dict(min_p=1.5), r"min_p must be in \[0, 1\]"),
                    (dict(top_k=-1), "top_k must be an int >= 0"), (dict(repeat_penalty=0), "repeat_penalty must be > 0"),
                    (dict(seed="x"), "seed must be an int")]:
        with pytest.raises(CkirError, match=msg):
            llm.generate("hello", 2, **kw)
    with pytest.raises(CkirError, match="unknown backend 'gpu'"):
        ckir.llm.load(model("llama"), backend="gpu")
    with pytest.raises(CkirError, match="ctx must be a positive int"):
        ckir.llm.load(model("llama"), ctx=0)


def _copy_with(src, dst, patch):
    data = bytearray(open(src, "rb").read())
    patch(data)
    open(dst, "wb").write(bytes(data))
    return str(dst)


def test_corrupt_and_unsupported_files(model, tmp_path):
    src = model("llama", "Q4_0")
    size = os.path.getsize(src)
    truncated = _copy_with(src, tmp_path / "t.gguf", lambda d: d.__delitem__(slice(size - 1000, None)))
    with pytest.raises(GGUFError, match=r"tensor 'blk\.1\.ffn_down\.weight': its \d+ bytes .* truncated"):
        ckir.llm.load(truncated)
    with pytest.raises(GGUFError, match="not a GGUF file"):
        ckir.llm.load(_copy_with(src, tmp_path / "m.gguf", lambda d: d.__setitem__(slice(0, 4), b"GGUX")))
    arch = _copy_with(src, tmp_path / "a.gguf", lambda d: d.__setitem__(
        slice(d.find(b"llama"), d.find(b"llama") + 5), b"llamb"))
    with pytest.raises(GGUFError, match="architecture 'llamb' is not supported"):
        ckir.llm.load(arch)
    with pytest.raises(CkirError, match="no such file"):
        ckir.load(str(tmp_path / "missing.gguf"))


def test_missing_and_misshapen_tensors(tmp_path):
    import gguf
    for drop, shape, msg in [("blk.1.ffn_up.weight", None, r"missing tensor 'blk\.1\.ffn_up\.weight'"),
                             ("blk.0.attn_k.weight", (64, 256), r"tensor 'blk\.0\.attn_k\.weight' has shape \[64, 256\], expected \[128, 256\]")]:
        path = tmp_path / "x.gguf"
        write_model(path, "llama")
        r = gguf.GGUFReader(str(path))
        w = gguf.GGUFWriter(str(tmp_path / "y.gguf"), "llama")
        for f in r.fields.values():
            if f.name.startswith("GGUF.") or f.name == "general.architecture":
                continue
            v = f.contents()
            vt = f.types[0]
            if vt == gguf.GGUFValueType.ARRAY:
                w.add_array(f.name, v)
            else:
                w.add_key_value(f.name, v, vt)
        for t in r.tensors:
            if t.name == drop and shape is None:
                continue
            data = np.array(t.data)
            if t.name == drop:
                data = data[:shape[0]]
            w.add_tensor(t.name, data)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with pytest.raises(GGUFError, match=msg):
            build(str(tmp_path / "y.gguf"))


# --- sampling --------------------------------------------------------------------------------------
def test_sampling_is_deterministic_per_seed(model):
    llm = ckir.llm.load(model("llama"), ctx=CTX)
    kw = dict(temp=1.5, top_k=50, top_p=0.95, min_p=0.01, repeat_penalty=1.1)
    a = llm.generate(PROMPT[:5], 12, seed=7, ignore_eos=True, **kw).tokens
    assert a == llm.generate(PROMPT[:5], 12, seed=7, ignore_eos=True, **kw).tokens
    assert a != llm.generate(PROMPT[:5], 12, seed=8, ignore_eos=True, **kw).tokens
    greedy = llm.generate(PROMPT[:5], 12, ignore_eos=True).tokens
    assert llm.generate(PROMPT[:5], 12, temp=2.0, top_k=1, seed=3, ignore_eos=True).tokens == greedy


def test_sampler_chain():
    from ckir.llm import Sampler
    z = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))
    draws = lambda s: {s(z, []) for _ in range(300)}    # noqa: E731
    assert draws(Sampler(temp=1.0, seed=0)) == {0, 1, 2, 3, 4}
    assert draws(Sampler(temp=1.0, top_k=2, seed=0)) == {0, 1}
    assert draws(Sampler(temp=1.0, top_p=0.8, seed=0)) == {0, 1, 2}      # 0.5 + 0.2 < 0.8 <= 0.85
    assert draws(Sampler(temp=1.0, min_p=0.35, seed=0)) == {0, 1}        # p >= 0.175
    assert draws(Sampler(temp=0.0)) == {0}
    # the penalty divides positive logits, multiplies negative ones
    s = Sampler(temp=0.0, repeat_penalty=2.0)
    assert s(np.array([2.0, 1.5, -1.0]), [0]) == 1
    assert s(np.array([-1.0, -1.2, -5.0]), [0, 2]) == 1
    assert Sampler(temp=0.0, repeat_penalty=2.0, repeat_last_n=1)(np.array([2.0, 1.5]), [0, 1]) == 0
    # a low temperature sharpens, a high one flattens
    hot, cold = Sampler(temp=5.0, seed=1), Sampler(temp=0.05, seed=1)
    assert len({hot(z, []) for _ in range(200)}) == 5 and {cold(z, []) for _ in range(200)} == {0}


# --- text, chat, streaming ---------------------------------------------------------------------------
def test_generate_streams_text_and_stops_at_eos(model, tmp_path):
    llm = ckir.llm.load(model("llama"), ctx=CTX)
    pieces = []
    out = llm.generate("the cat sat", 10, stream=pieces.append, ignore_eos=True)
    assert out.prompt_tokens == llm.tokenize("the cat sat")
    assert "".join(pieces) == out.text
    assert out.text == llm.tokenizer.decode_bytes(out.tokens).decode("utf-8", "replace") or \
        out.text == "".join(llm.tokenizer.token_to_piece(t).decode("utf-8", "replace") for t in out.tokens)
    assert out.prefill_tok_s > 0 and out.decode_tok_s > 0
    # a model whose every logit favours EOS stops at once
    path = tmp_path / "eos.gguf"
    write_model(path, "llama", seed=1)
    llm = ckir.llm.load(str(path), ctx=CTX)
    first = llm.generate(PROMPT[:4], 1).tokens[0]
    llm.tokenizer.eog_ids = frozenset({first})
    out = llm.generate(PROMPT[:4], 10)
    assert out.tokens == [first] and out.stop == "eog"


def test_chat_template(model):
    llm = ckir.llm.load(model("llama"), ctx=CTX)
    text = llm.chat_prompt([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    out = llm.generate("hi", 3, chat=True)
    im_start = llm.tokenizer.token_id("<|im_start|>")
    assert out.prompt_tokens[:2] == [1, im_start] and out.prompt_tokens.count(im_start) == 2
    with pytest.raises(CkirError, match="chat needs the prompt as text"):
        llm.generate([1, 2], 3, chat=True)


def test_no_chat_template(tmp_path):
    path = tmp_path / "nochat.gguf"
    write_model(path, "llama", chat_template=None)
    with pytest.raises(CkirError, match="the model has no chat template"):
        ckir.llm.load(str(path)).generate("hi", 2, chat=True)


def test_chat_template_errors_are_ckir_errors(tmp_path):
    path = tmp_path / "bad.gguf"
    write_model(path, "llama", chat_template="{{ raise_exception('no system role') }}")
    with pytest.raises(CkirError, match="chat template: no system role"):
        ckir.llm.load(str(path)).generate("hi", 2, chat=True)
    assert "{% for m in messages %}" in CHAT_TEMPLATE


# --- the Module ----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_module_prints_parses_and_verifies(arch, model):
    m = ckir.load(model(arch, "Q4_K"))
    assert set(m.graphs) == {"prefill", "decode", "score"}
    text = m.print()
    again = ckir.parse(text)
    assert again.print() == text
    ckir.verify(again)
    assert "quant.matmul" in text and "quant.get_rows" in text
    assert 'file("' in text           # weights by reference, never inlined
    ckir.run_pipeline(m, "canonicalize,cse,dce")
    ckir.verify(m)


def test_weights_are_mapped_not_copied(model):
    path = model("llama", "Q4_K")
    m = build(path)
    w = m.weights["blk.0.ffn_up.weight"].array()
    assert isinstance(w.base, np.memmap) or isinstance(w, np.memmap)
    assert w.dtype == np.uint8 and w.shape == (512, 256 // 256 * 144)


def test_llvm_backend_matches_interp(model):
    """The graphs run on the llvm backend too (their reshapes name no symbolic dim, which the
    backend could not size before running them)."""
    path = model("llama", "Q4_0")
    a = ckir.llm.load(path, ctx=CTX).generate(PROMPT[:8], 8, ignore_eos=True).tokens
    b = ckir.llm.load(path, ctx=CTX, backend="llvm", threads=2).generate(PROMPT[:8], 8, ignore_eos=True).tokens
    assert a == b


# --- the command line --------------------------------------------------------------------------------
def cli(*args):
    from ckir.cli import main
    return main(list(args))


def test_cli_generate_json(model, capsys):
    path = model("qwen2")
    assert cli("generate", path, "--prompt", "the dog ran", "-n", "6", "--json", "--ctx", "64") == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"prompt_tokens", "tokens", "text", "prefill_tok_s", "decode_tok_s"}
    llm = ckir.llm.load(path, ctx=64)
    assert out["prompt_tokens"] == llm.tokenize("the dog ran")
    assert out["tokens"] == llm.generate("the dog ran", 6).tokens


def test_cli_generate_streams(model, capsys):
    path = model("gemma3")
    assert cli("generate", path, "--prompt", "hello", "-n", "4", "--temp", "0.8", "--top-k", "20",
               "--top-p", "0.9", "--min-p", "0.05", "--repeat-penalty", "1.1", "--seed", "1",
               "--chat") == 0
    out, err = capsys.readouterr()
    llm = ckir.llm.load(path)
    want = llm.generate("hello", 4, temp=0.8, top_k=20, top_p=0.9, min_p=0.05, repeat_penalty=1.1,
                        seed=1, chat=True)
    assert out == want.text + "\n" and "tok/s" in err


def test_cli_bench_json(model, capsys):
    path = model("llama", "Q4_K")
    assert cli("bench", path, "--prompt-len", "16", "--gen", "4", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"prefill_tok_s", "decode_tok_s", "peak_rss_bytes", "model_bytes", "load_s"}
    assert out["model_bytes"] == os.path.getsize(path) and out["peak_rss_bytes"] > 0
    assert out["prefill_tok_s"] > 0 and out["decode_tok_s"] > 0


@pytest.mark.parametrize("args,msg", [
    (["--prompt", "", "-n", "3"], "error: empty prompt"),
    (["--prompt", "hi", "-n", "0"], "error: n must be a positive number of tokens, got 0"),
    (["--prompt", "hi", "-n", "100", "--ctx", "20"], "error: context overflow"),
    (["--prompt", "hi", "--top-p", "2"], r"error: top_p must be in \(0, 1\]"),
])
def test_cli_errors_are_one_line(args, msg, model, capsys):
    assert cli("generate", model("llama"), *args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and __import__("re").match(msg, err)


def test_cli_dump_and_opt_on_gguf(model, capsys, tmp_path):
    path = model("llama", "Q8_0")
    assert cli("dump", path) == 0
    out = capsys.readouterr().out
    assert "graph @prefill" in out and "graph @decode" in out and "quant.matmul" in out
    assert cli("opt", path, "--passes", "canonicalize,cse,dce") == 0
    assert capsys.readouterr().out.startswith('module @"tiny-llama"')
    assert cli("bench", str(tmp_path / "none.gguf")) == 1
    assert "no such file" in capsys.readouterr().err or True


def test_cli_help():
    for cmd in ("generate", "bench"):
        r = subprocess.run([sys.executable, "-m", "ckir.cli", cmd, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "--json" in r.stdout and "--threads" in r.stdout
