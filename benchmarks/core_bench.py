"""Core IR speed: build, print, parse, verify and `canonicalize,cse,dce` on generated modules.

    python benchmarks/core_bench.py [--sizes 10000 100000] [--repeat 3]

Each figure is the median of --repeat runs (default 5: this VM's speed varies by ~30% run to run). Targets (2-core machine): each step under 1 s at
10k ops, and 100k/10k time ratio <= 12 (linear). For scale: xDSL's parser took about two
minutes for 20k ops before its PR #937.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time

import numpy as np

import ckir
from ckir import Module, Sym, TensorType, new_graph
from ckir.ir import gc_paused

BLOCK_OPS = 16      # ops per generated block (see block())


def block(b, m, x):
    """A transformer-ish block with the waste optimizers remove: an identity multiply, a
    duplicated subexpression, a dead op and a duplicated weight read."""
    w = b.weight(m, "w")
    h = b.nn.matmul(x, w, transpose_b=True)
    h = b.nn.add(h, b.weight(m, "bias"))
    h = b.nn.mul(h, 1.0)                       # canonicalize: identity
    g = b.nn.gelu(h)
    e1 = b.nn.exp(g)
    e2 = b.nn.exp(g)                           # cse: duplicate
    b.nn.tanh(e2)                              # dce: dead
    s = b.nn.add(e1, e2)
    r = b.nn.reshape(s, shape=["seq", 64])
    r = b.nn.matmul(r, b.weight(m, "w"), transpose_b=True)     # duplicated weight read
    return b.nn.add(x, b.nn.mul(r, 0.01))


def build(n_ops: int) -> Module:
    with gc_paused():     # as the frontends build modules
        return _build(n_ops)


def _build(n_ops: int) -> Module:
    m = Module("bench")
    m.add_weight("w", np.zeros((64, 64), np.float32))
    m.add_weight("bias", np.zeros(64, np.float32))
    g, b = new_graph("main", {"x": TensorType([Sym("seq", 4096), 64], "f32")})
    x = g.inputs[0]
    while len(g) < n_ops - BLOCK_OPS:
        x = block(b, m, x)
    g.set_outputs([x], ["y"])
    m.add_graph(g)
    return m


def timed(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def measure(n: int, repeat: int) -> dict:
    r = {}
    r["build"], m = timed(lambda: build(n), repeat)
    ops = m.num_ops()
    r["print"], text = timed(m.print, repeat)
    r["parse"], m2 = timed(lambda: ckir.parse(text), repeat)
    r["verify"], _ = timed(lambda: ckir.verify(m2), repeat)

    def passes():
        mm = ckir.parse(text)
        t0 = time.perf_counter()
        ckir.PassManager("canonicalize,cse,dce", verify=False).run(mm)
        return time.perf_counter() - t0, mm.num_ops()
    runs = [passes() for _ in range(repeat)]
    r["canonicalize,cse,dce"] = statistics.median(t for t, _ in runs)
    r["ops"], r["ops_after"], r["bytes"] = ops, runs[0][1], len(text)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    res = {n: measure(n, a.repeat) for n in a.sizes}
    steps = ["build", "print", "parse", "verify", "canonicalize,cse,dce"]
    print(f"{'ops':>8}  " + "  ".join(f"{s:>20}" for s in steps) + "   text")
    for n, r in res.items():
        print(f"{r['ops']:>8}  " + "  ".join(f"{r[s]:>19.3f}s" for s in steps)
              + f"   {r['bytes'] / 1e6:.1f} MB ({r['ops_after']} ops after passes)")
    if len(a.sizes) >= 2:
        lo, hi = res[a.sizes[0]], res[a.sizes[-1]]
        scale = hi["ops"] / lo["ops"]
        print(f"ratio {hi['ops']}/{lo['ops']} ops ({scale:.1f}x): " +
              "  ".join(f"{s} {hi[s] / lo[s]:.1f}x" for s in steps))


if __name__ == "__main__":
    main()
