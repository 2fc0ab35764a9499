"""Training-step time of a small GPT: ckir (forward + backward + AdamW compiled as one graph)
against PyTorch eager, same thread count.

    python benchmarks/train_bench.py [--backend llvm] [--threads 2] [--repeat 3]

The model is tests/tiny_gpt.py's network at a benchmark size (4 layers, d=128, 4 heads, seq
64, batch 8, vocab 256, f32). Each figure is the median of --repeat timed runs of 5 steps after
2 warm-up steps; the ratio is ckir / torch (target <= 1.0, goal 0.5).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

CFG = dict(vocab=256, d=128, heads=4, layers=4, seq=64, ffn=512)
BATCH = 8


def timed(step, repeat, n=5):
    for _ in range(2):
        step()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        ts.append((time.perf_counter() - t0) / n)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="llvm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import numpy as np
    import torch

    import ckir
    from tiny_gpt import batches, build, init_weights, torch_model
    torch.set_num_threads(a.threads)
    w = init_weights(CFG, dtype=np.float32)
    tok, tgt = next(batches(CFG, BATCH, 1))
    m = build(CFG, w, BATCH)
    ckir.run_pipeline(m, "autodiff,optimizer{lr=0.001},canonicalize,cse,dce")
    opts = {"threads": a.threads} if a.backend == "llvm" else {}
    f = ckir.compile(m, backend=a.backend, **opts)
    params, fwd = torch_model(CFG, w)
    opt = torch.optim.AdamW(list(params.values()), lr=0.001, weight_decay=0.0)
    tt, tg = torch.tensor(tok), torch.tensor(tgt)

    def torch_step():
        loss = fwd(tt, tg)
        loss.backward()
        opt.step()
        opt.zero_grad()

    t_torch = timed(torch_step, a.repeat)
    t_ckir = timed(lambda: f(tok, tgt), a.repeat)
    plan = getattr(f._run, "plan", None)
    note = f", {len(plan.ref_ops)} ops run in the interpreter" if plan is not None else ""
    print(f"tiny GPT training step ({CFG['layers']} layers, d={CFG['d']}, batch {BATCH} x seq {CFG['seq']}), "
          f"{a.threads} threads, median of {a.repeat}")
    print(f"  ckir ({a.backend}{note}): {1e3 * t_ckir:8.1f} ms")
    print(f"  torch eager {torch.__version__}: {1e3 * t_torch:8.1f} ms")
    print(f"  ratio ckir/torch: {t_ckir / t_torch:.2f}")


if __name__ == "__main__":
    main()
