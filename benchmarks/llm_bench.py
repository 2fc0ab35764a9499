"""Prefill and decode speed of a GGUF language model: ckir (ckir.llm) against llama.cpp
(llama-cpp-python) on the same prompt tokens with the same number of threads (issue 6: target
decode >= 1.0x and prefill >= 0.8x llama.cpp at 2 threads on a Q4_K_M model of a few hundred MB;
peak RSS <= file size + KV cache + 100 MB).

    python benchmarks/llm_bench.py MODEL.gguf [--threads 2] [--prompt-len 128] [--gen 64]
                                   [--backend llvm] [--repeat 1] [--json]
    python benchmarks/llm_bench.py gemma3-270m-q4_k_m      # a model of benchmarks/fetch_model.py

Each side runs in its own process (so that each peak RSS is its own): it loads the model with a
context of prompt-len + gen positions, warms up (a 4-token prompt and 2 generated tokens), then
generates --gen tokens greedily after the prompt from an empty cache, --repeat times; the best
run counts. Prefill is the prompt in one batch (tokens / seconds); decode is the gen - 1
one-token steps after it. Peak RSS is given twice: over the whole process (loading and, for
llvm, compiling included) and while generating (the kernel's high-water mark reset after the
warm-up). The prompt is the same token ids for both: a fixed English text tokenized by
llama.cpp, repeated to --prompt-len tokens (BOS first when the vocabulary adds one).

llama.cpp runs as llama-cpp-python sets it up by default (f16 KV cache, flash attention chosen
by llama.cpp, n_batch >= the prompt), with n_threads = n_threads_batch = --threads. ckir's KV
cache is f32; the RSS bound uses ckir's own KV cache size. Load time (ckir: building the module and,
for llvm, compiling it) is reported but not part of either speed.

Figures move by 10-30% between runs on a shared machine; compare the ratios within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

TEXT = ("The history of computing is a story of people, ideas and machines. Early mechanical "
        "calculators gave way to electronic computers, which filled rooms and used thousands of "
        "vacuum tubes. Transistors, integrated circuits and microprocessors then made machines "
        "smaller, cheaper and faster every year, and software grew with them: operating systems, "
        "compilers, databases, networks and, more recently, language models that write text. ")
MB = 1e6


def prompt_tokens(path: str, n: int) -> list:
    import llama_cpp
    m = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    body = m.tokenize(TEXT.encode(), add_bos=False, special=False)
    head = m.tokenize(b"", add_bos=True, special=False)
    ids = list(head)
    while len(ids) < n:
        ids += body
    return ids[:n]


def peak_rss() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Start the kernel's peak-RSS count (VmHWM) afresh from the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_peak_rss(reset: bool):
    """VmHWM since reset_peak_rss, or None where it could not be reset."""
    if not reset:
        return None
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def run_ckir(a, prompt) -> dict:
    import ckir.llm
    llm = ckir.llm.load(a.model, ctx=len(prompt) + a.gen, backend=a.backend, threads=a.threads)
    kv = sum(s.type.nbytes() for s in llm.module.state.values())
    llm.generate(prompt[:4], 2, ignore_eos=True)
    reset = reset_peak_rss()
    runs = [llm.generate(prompt, a.gen, ignore_eos=True) for _ in range(a.repeat)]
    return {"prefill_tok_s": max(r.prefill_tok_s for r in runs),
            "decode_tok_s": max(r.decode_tok_s for r in runs), "load_s": llm.load_s,
            "kv_bytes": kv, "tokens": runs[0].tokens, "peak_rss_bytes": peak_rss(),
            "run_peak_rss_bytes": run_peak_rss(reset)}


def run_llama_cpp(a, prompt) -> dict:
    import numpy as np
    import llama_cpp
    t0 = time.perf_counter()
    m = llama_cpp.Llama(model_path=a.model, n_ctx=len(prompt) + a.gen, n_batch=max(512, len(prompt)),
                        n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
    load = time.perf_counter() - t0

    def last_logits():
        # without logits_all llama-cpp-python keeps no scores: read the context's last row
        return np.ctypeslib.as_array(m._ctx.get_logits_ith(-1), shape=(m.n_vocab(),))

    def generate(ids, n):
        m.reset()
        t = time.perf_counter()
        m.eval(ids)
        prefill = len(ids) / (time.perf_counter() - t)
        out = [int(np.argmax(last_logits()))]
        t = time.perf_counter()
        while len(out) < n:
            m.eval(out[-1:])
            out.append(int(np.argmax(last_logits())))
        return prefill, (n - 1) / (time.perf_counter() - t) if n > 1 else 0.0, out

    generate(prompt[:4], 2)
    reset = reset_peak_rss()
    runs = [generate(prompt, a.gen) for _ in range(a.repeat)]
    return {"prefill_tok_s": max(r[0] for r in runs), "decode_tok_s": max(r[1] for r in runs),
            "load_s": load, "tokens": runs[0][2], "peak_rss_bytes": peak_rss(),
            "run_peak_rss_bytes": run_peak_rss(reset)}


def side(a) -> int:
    prompt = json.loads(a.prompt)
    res = run_ckir(a, prompt) if a.side == "ckir" else run_llama_cpp(a, prompt)
    print(json.dumps(res))
    return 0


def child(a, name: str, prompt: list) -> dict:
    cmd = [sys.executable, __file__, a.model, "--side", name, "--prompt", json.dumps(prompt),
           "--threads", str(a.threads), "--gen", str(a.gen), "--backend", a.backend,
           "--repeat", str(a.repeat)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"llm_bench: the {name} run failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a .gguf file, or a model name of benchmarks/fetch_model.py")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--backend", default="llvm", choices=["llvm", "interp"])
    ap.add_argument("--repeat", type=int, default=1, help="measured runs per side (best counts)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--side", choices=["ckir", "llama.cpp"], help=argparse.SUPPRESS)
    ap.add_argument("--prompt", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.threads < 1 or a.prompt_len < 1 or a.gen < 2 or a.repeat < 1:
        ap.error("--threads, --prompt-len and --repeat must be >= 1, --gen >= 2")
    if not os.path.exists(a.model):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from fetch_model import MODELS, fetch
        if a.model not in MODELS:
            ap.error(f"{a.model}: no such file, nor a model of fetch_model.py ({', '.join(MODELS)})")
        a.model = str(fetch(a.model))
    if a.side:
        return side(a)

    prompt = prompt_tokens(a.model, a.prompt_len)
    ours, ref = child(a, "ckir", prompt), child(a, "llama.cpp", prompt)
    size = os.path.getsize(a.model)
    bound = size + ours["kv_bytes"] + 100 * MB
    same = next((i for i, (x, y) in enumerate(zip(ours["tokens"], ref["tokens"])) if x != y),
                len(ours["tokens"]))
    res = {"model": a.model, "model_bytes": size, "threads": a.threads, "backend": a.backend,
           "prompt_len": len(prompt), "gen": a.gen,
           "ckir": {k: v for k, v in ours.items() if k != "tokens"},
           "llama_cpp": {k: v for k, v in ref.items() if k != "tokens"},
           "prefill_ratio": ours["prefill_tok_s"] / ref["prefill_tok_s"],
           "decode_ratio": ours["decode_tok_s"] / ref["decode_tok_s"],
           "rss_bound_bytes": bound, "rss_ok": ours["peak_rss_bytes"] <= bound,
           "run_rss_ok": None if ours["run_peak_rss_bytes"] is None
           else ours["run_peak_rss_bytes"] <= bound,
           "same_greedy_tokens": same}
    if a.json:
        print(json.dumps(res))
        return 0
    print(f"model {a.model} ({size / MB:.1f} MB), {a.threads} threads, prompt {len(prompt)} "
          f"tokens, {a.gen} generated, ckir backend {a.backend}")
    def mb(x):
        return "-" if x is None else f"{x / MB:.1f}"
    print(f"{'':12}{'prefill tok/s':>15}{'decode tok/s':>15}{'load s':>9}{'peak RSS MB':>13}"
          f"{'run peak MB':>13}")
    for name, r in (("ckir", ours), ("llama.cpp", ref)):
        print(f"{name:12}{r['prefill_tok_s']:15.2f}{r['decode_tok_s']:15.2f}{r['load_s']:9.2f}"
              f"{mb(r['peak_rss_bytes']):>13}{mb(r['run_peak_rss_bytes']):>13}")
    print(f"{'ckir/llama':12}{res['prefill_ratio']:14.2f}x{res['decode_ratio']:14.2f}x"
          f"   (targets: prefill >= 0.8x, decode >= 1.0x)")
    verdict = {True: "within", False: "OVER", None: "-"}
    print(f"RSS bound: file {size / MB:.1f} + ckir KV cache {ours['kv_bytes'] / MB:.1f} + 100 MB = "
          f"{bound / MB:.1f} MB; ckir peak (whole process, load and compile included) "
          f"{mb(ours['peak_rss_bytes'])} MB: {verdict[res['rss_ok']]}; peak while generating "
          f"{mb(ours['run_peak_rss_bytes'])} MB: {verdict[res['run_rss_ok']]}")
    print(f"greedy tokens identical for the first {same} of {a.gen} "
          "(quantized: llama.cpp rounds activations to 8 bits, so they may part)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
