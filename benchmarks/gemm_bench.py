"""f32 GEMM of the LLVM backend against numpy (OpenBLAS) in the same run (issue 5: target >= 0.9x
OpenBLAS on the large shapes with 2 threads, and >= 1.8x ckir scaling from 1 to 2 threads).

    python benchmarks/gemm_bench.py [--shapes 1x640x2048,128x640x2048,1024x1024x1024,512x4096x4096]
                                    [--threads 2] [--repeat 3] [--transpose-b] [--target avx2]

A shape is MxKxN: C[M,N] = A[M,K] @ B[K,N] (with --transpose-b, B is stored [N,K] as a linear
layer's weight). FLOPs counted: 2*M*N*K. OPENBLAS_NUM_THREADS is set to --threads before numpy
is imported, so both sides use the same number of cores.

Timings per shape, each the median of --repeat measurements (each the mean of back-to-back
calls for ~0.1 s):
- kernel: the compiled segment called directly on a preallocated, touched output, against
  np.matmul(a, b, out=c) -- the two libraries' kernels, the figure the targets refer to;
- call: the public path f(a, b) (input checks, output allocation, one native call), against
  a @ b (which allocates too);
- scaling: ckir kernel time with threads=1 over threads=2 (each compiled for its thread count).
The thread pool's size is process-wide (the last `ckir.compile` sets it), so it is set again
before each measurement.

The machine this runs on is shared (2 cores, other jobs): figures move by 10-30% from run to
run and a busy neighbour lowers both sides; compare the ratios within one run.
"""
from __future__ import annotations

import argparse
import os
import sys


def _early_threads(argv):
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return "2"


os.environ["OPENBLAS_NUM_THREADS"] = _early_threads(sys.argv[1:])   # before numpy is imported

import ctypes  # noqa: E402

import numpy as np  # noqa: E402

import ckir  # noqa: E402
from ckir.backends.llvm.runtime import Runtime  # noqa: E402
from _timing import timed  # noqa: E402

SHAPES = "1x640x2048,128x640x2048,1024x1024x1024,512x4096x4096"


def build(m, k, n, tb):
    g, b = ckir.new_graph("main", {"a": ckir.TensorType([m, k], "f32"),
                                   "b": ckir.TensorType([n, k] if tb else [k, n], "f32")})
    g.set_outputs([b.nn.matmul(*g.inputs, transpose_b=tb)], ["c"])
    mod = ckir.Module("gemm")
    mod.add_graph(g)
    return mod


def kernel_caller(f, xs):
    """The compiled segment called directly, with a preallocated (touched) output."""
    plan = f._run.plan
    (step,) = plan.steps
    env = dict(zip(plan.graph.inputs, xs))
    out = None
    for v in step.values:
        if v not in env:
            out = env[v] = np.zeros(v.type.shape, np.float32)
    ptrs = (ctypes.c_void_p * len(step.values))(*[env[v].ctypes.data for v in step.values])
    dims = np.zeros(max(1, plan.n_dims), np.int64)
    keep = (ptrs, dims, out)

    def call(keep=keep):
        step.fn(ctypes.addressof(keep[0]), keep[1].ctypes.data)
    return call, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default=SHAPES)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--transpose-b", action="store_true")
    ap.add_argument("--target", default=None)
    args = ap.parse_args(argv)
    tb = args.transpose_b
    rng = np.random.default_rng(0)
    print(f"f32 GEMM, threads = {args.threads} (OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}), "
          f"B {'[N,K] (transpose_b)' if tb else '[K,N]'}, median of {args.repeat}; "
          "the machine is shared with other jobs: figures are noisy, compare ratios")
    print(f"{'MxKxN':>16} | {'ckir GF/s':>9} {'numpy GF/s':>10} {'ratio':>6} | {'call: ckir':>10} {'numpy':>7} "
          f"{'ratio':>6} | {'1 thr GF/s':>10} {'scaling':>7}")
    for s in args.shapes.split(","):
        m, k, n = (int(x) for x in s.split("x"))
        flops = 2.0 * m * n * k
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
        bb = b.T if tb else b
        mod = build(m, k, n, tb)
        fs = {t: ckir.compile(mod, backend="llvm", target=args.target, threads=t, cache=False)
              for t in sorted({1, args.threads})}
        f = fs[args.threads]
        rt = Runtime.get(f._run.plan.target)
        rt.set_threads(args.threads)
        got = f(a, b)["c"]
        want = a.astype(np.float64) @ bb.astype(np.float64)
        err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
        assert err < 1e-4 * max(1, k) ** 0.5, f"{s}: wrong result (relative error {err})"
        call, _ = kernel_caller(f, [a, b])
        c = np.empty((m, n), np.float32)
        res = {}
        res["k"] = timed(call, args.repeat)
        res["np"] = timed(lambda: np.matmul(a, bb, out=c), args.repeat)
        res["call"] = timed(lambda: f(a, b), args.repeat)
        res["np_call"] = timed(lambda: a @ bb, args.repeat)
        rt.set_threads(1)
        call1, _ = kernel_caller(fs[1], [a, b])
        res["k1"] = timed(call1, args.repeat)
        rt.set_threads(args.threads)
        gf = {key: flops / t / 1e9 for key, t in res.items()}
        print(f"{s:>16} | {gf['k']:9.1f} {gf['np']:10.1f} {gf['k'] / gf['np']:5.2f}x | {gf['call']:10.1f} "
              f"{gf['np_call']:7.1f} {gf['call'] / gf['np_call']:5.2f}x | {gf['k1']:10.1f} {res['k1'] / res['k']:6.2f}x",
              flush=True)


if __name__ == "__main__":
    main()
