"""Data movement kernels of the LLVM backend vs numpy, in the same run.

    python benchmarks/movement_bench.py [--threads N] [--target T] [--repeat R]

Cases: transpose of a 4096x4096 f32 matrix (the cache-blocked path), the attention perm
[0,2,1,3] of [8,128,12,64] f32, concat of four [1024,1024] f32 along axis 1, and gather of
512 rows from a [32000, 2048] f32 table (an embedding lookup). Each time is the median of R
runs (each run the best of a few calls), for ckir on 1 thread and on --threads (default: the
CPUs available); ratio = numpy time / ckir time (> 1: ckir faster); GB/s (bytes read +
written, at the better thread count) includes allocating the result, as numpy's does. The
numpy peers: np.ascontiguousarray of the transposed view, np.concatenate, np.take. The
"kernel" column times the native segment alone on preallocated results (inside a compiled
graph there is no per-op Python or allocation); its ratio is against the same numpy figure. On
a shared machine the figures are indicative only.
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import time

import numpy as np

import ckir
from ckir.backends.llvm.runtime import Runtime, default_threads


def one_op(name, arrays, attrs):
    g, b = ckir.new_graph("main", {f"a{i}": ckir.TensorType(a.shape, a.dtype) for i, a in enumerate(arrays)})
    op = b.create(ckir.get_op(name), list(g.inputs), attrs)
    g.set_outputs(op.results, [f"y{i}" for i in range(len(op.results))])
    m = ckir.Module("bench")
    m.add_graph(g)
    return m


def kernel_only(f, arrays):
    """The native segment alone, on preallocated results: no Python per call, no allocation
    (what a whole compiled graph pays for this op)."""
    plan = f._run.plan
    step = next(s for s in plan.steps if s.kind == "native")
    outs = [np.empty(a.shape, a.dtype) for a in f(*arrays).values()]
    vals = list(arrays) + outs
    ptrs = (ctypes.c_void_p * len(vals))(*[a.ctypes.data for a in vals])
    dims = np.zeros(plan.n_dims + 1, np.int64)

    def run():
        step.fn(ctypes.addressof(ptrs), dims.ctypes.data)
    run.keep = (f, outs, ptrs, dims)
    return run


def best_of(fn, calls):
    best = float("inf")
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--target", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--calls", type=int, default=5)
    args = ap.parse_args()
    r = np.random.default_rng(0)

    big = r.standard_normal((4096, 4096), dtype=np.float32)
    att = r.standard_normal((8, 128, 12, 64), dtype=np.float32)
    parts = [r.standard_normal((1024, 1024), dtype=np.float32) for _ in range(4)]
    table = r.standard_normal((32000, 2048), dtype=np.float32)
    ids = r.integers(0, 32000, 512).astype(np.int64)

    cases = [
        ("transpose 4096x4096 f32", "nn.transpose", [big], {"perm": [1, 0]},
         lambda: np.ascontiguousarray(big.T), 2 * big.nbytes),
        ("transpose [8,128,12,64] [0,2,1,3]", "nn.transpose", [att], {"perm": [0, 2, 1, 3]},
         lambda: np.ascontiguousarray(att.transpose(0, 2, 1, 3)), 2 * att.nbytes),
        ("concat 4x[1024,1024] axis 1", "nn.concat", parts, {"axis": 1},
         lambda: np.concatenate(parts, axis=1), 2 * sum(p.nbytes for p in parts)),
        ("gather 512 rows of [32000,2048]", "nn.gather", [table, ids], {"axis": 0},
         lambda: np.take(table, ids, axis=0), 2 * 512 * 2048 * 4 + ids.nbytes),
    ]
    threads = [1, args.threads or default_threads()]
    if threads[1] == 1:
        threads = [1]
    cols = [f"ckir {t}T ms" for t in threads] + [f"kernel {t}T" for t in threads]
    print(f"{'case':36s} {'numpy ms':>9s}" + "".join(f" {c:>11s} {'ratio':>6s}" for c in cols) + f" {'GB/s':>6s}")
    for title, name, arrays, attrs, peer, nbytes in cases:
        fs = []
        for t in threads:
            opts = {"backend": "llvm", "cache": False, "threads": t}
            if args.target:
                opts["target"] = args.target
            f = ckir.compile(one_op(name, arrays, attrs), **opts)
            assert np.array_equal(f(*arrays)["y0"], peer()), title
            fs.append(f)
        runs = ([(peer, None)] + [(lambda f=f, a=arrays: f(*a), f) for f in fs]
                + [(kernel_only(f, arrays), f) for f in fs])
        times = [[] for _ in runs]
        for _ in range(args.repeat):
            for i, (fn, f) in enumerate(runs):
                if f is not None:
                    # the pool is process-wide and sized by the last compile: size it for this one
                    plan = f._run.plan
                    Runtime.get(plan.target).set_threads(plan.threads)
                times[i].append(best_of(fn, args.calls))
        med = [statistics.median(t) for t in times]
        row = f"{title:36s} {med[0] * 1e3:9.3f}"
        for c in med[1:]:
            row += f" {c * 1e3:11.3f} {med[0] / c:5.2f}x"
        print(row + f" {nbytes / min(med[1:len(fs) + 1]) / 1e9:6.1f}")


if __name__ == "__main__":
    main()
