"""What the fuse pass buys on the LLVM backend: the same model compiled without and with `fuse`.

    python benchmarks/fusion_bench.py [--threads 2] [--repeat 3] [--levels 1,2] [--iters N]

Cases (random weights, nothing downloaded):
- encoder layer: one post-LN BERT/MiniLM layer (hidden 384, 12 heads, FFN 1536, erf GELU) with
  its embeddings, exported from PyTorch by tests/onnx_models.py, at batch 8, sequence 128;
- llama decode: one decode step (one token after 64 others) of an f32 llama-family
  GGUF model written by tests/gguf_models.py (d 1024, 2 layers, 16 heads, 4 KV heads, FFN 2816).

Every variant runs `canonicalize,cse,dce` first; "L1", "L2" then run `fuse{level=1}` and
`fuse{level=2}`. Each time is the median of --repeat rounds; a round times --iters calls of
each variant in turn (interleaved, so a burst of load on a shared machine hits all of them). "bytes moved" is the fuse
pass's estimate (sum over kernels of bytes read + written, from the op declarations, with the
symbolic dims bound to the benchmark's sizes); "kernels" counts non-view ops. The machine these
figures come from is usually shared: compare the ratios within one run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

MB = 1e6


def encoder_case(tmp):
    from onnx_models import encoder_inputs, encoder_onnx

    import ckir
    path = encoder_onnx(os.path.join(tmp, "layer.onnx"), layers=1, hidden=384, heads=12, ffn=1536,
                        vocab=1000, max_pos=512)
    feeds = encoder_inputs(8, 128, 1000)

    def make(passes):
        m = ckir.load(path)
        # static sizes: the llvm plan cannot yet size a reshape whose `shape` names symbolic dims
        ckir.run_pipeline(m, "specialize{batch=8,seq=128}," + passes)
        return m

    def runner(m, threads):
        f = ckir.compile(m, backend="llvm", threads=threads)
        return lambda: f(**feeds)
    return "encoder layer b8 s128 d384", make, runner, "main", {"batch": 8, "seq": 128}


def llama_case(tmp):
    from ckir.frontends.gguf.models import build
    from gguf_models import T, write_model

    import ckir
    path = os.path.join(tmp, "llama.gguf")
    write_model(path, "llama", T.F32, n_embd=1024, n_layer=2, n_head=16, n_head_kv=4, head_dim=64,
                n_ff=2816, ctx=256)

    def make(passes):
        m = build(path, 256)
        ckir.run_pipeline(m, passes)
        return m

    def runner(m, threads):
        from ckir.llm import _Graphs
        graphs = _Graphs(m, "llvm", threads)
        prompt = np.arange(3, 67, dtype=np.int64)
        # the prompt one token at a time (the llvm plan cannot yet size prefill's symbolic reshapes)
        for i, t in enumerate(prompt):
            graphs("decode", prompt[i:i + 1], i)
        tok = np.array([5], np.int64)
        # the same position every call: the step overwrites one cache slot, the work is the same
        return lambda: graphs("decode", tok, len(prompt))
    return "llama decode d1024 f32", make, runner, "decode", {"seq": 1}


def estimates(m, graph, bind):
    from ckir.passes.fuse import kernels, moved_bytes
    one = _only(m.graph(graph))        # one graph only (the GGUF modules hold prefill/decode/score)
    return moved_bytes(one, bind), kernels(one)


class _only:
    """A Module-like view with a single graph, for the fuse pass's counters."""

    def __init__(self, g):
        self.graphs = {g.name: g}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--iters", type=int, default=0, help="calls per timing (default: per case)")
    ap.add_argument("--levels", default="1,2")
    ap.add_argument("--only", choices=["encoder", "llama"], default=None)
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split(",")]
    tmp = tempfile.mkdtemp(prefix="ckir-fusion-")
    cases = [("encoder", encoder_case, 3), ("llama", llama_case, 20)]
    base = "canonicalize,cse,dce"
    variants = [("unfused", base)] + [(f"L{lv}", f"{base},fuse{{level={lv}}}") for lv in levels]
    print(f"fuse on the llvm backend, {a.threads} threads, median of {a.repeat} interleaved rounds")
    head = f"{'case':<27} " + " ".join(f"{v + ' ms':>10}" for v, _ in variants) + "  speedup  "
    head += " ".join(f"{'MB ' + v:>10}" for v, _ in variants) + "  kernels"
    print(head)
    for key, case, iters in cases:
        if a.only and key != a.only:
            continue
        name, make, runner, graph, bind = case(tmp)
        fns, est = {}, {}
        for v, passes in variants:
            m = make(passes)
            est[v] = estimates(m, graph, bind)
            fns[v] = runner(m, a.threads)
            fns[v]()                                   # warm-up
        ts = {v: [] for v, _ in variants}
        n = a.iters or iters
        for _ in range(a.repeat):
            for v, f in fns.items():
                t0 = time.perf_counter()
                for _ in range(n):
                    f()
                ts[v].append((time.perf_counter() - t0) / n)
        med = {v: statistics.median(t) for v, t in ts.items()}
        speed = "/".join(f"{med['unfused'] / med[v]:.2f}x" for v, _ in variants[1:])
        line = f"{name:<27} " + " ".join(f"{med[v] * 1e3:>10.2f}" for v, _ in variants) + f"  {speed}  "
        line += " ".join(f"{est[v][0] / MB:>10.1f}" for v, _ in variants) + "  "
        line += "->".join(str(est[v][1]) for v, _ in variants)
        print(line, flush=True)


if __name__ == "__main__":
    main()
