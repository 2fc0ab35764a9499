"""Reductions and normalizations of the LLVM backend on 16M floats (rows of 4096), against
numpy's copy bandwidth measured in the same run (issue 5: softmax and rms_norm, target >= 80%
of copy bandwidth), plus the f32-sum accumulator choice (f64 vs f32: time and accuracy).

    python benchmarks/reduce_bench.py [--n 16777216] [--row 4096] [--threads 2] [--repeat 3]
                                      [--ops softmax,rms_norm,...] [--target avx2] [--no-accum]

Bytes counted are the useful ones: x read once and y written once (8 bytes per element for
softmax/log_softmax/rms_norm/layer_norm, like the copy's 8), 4 per element for reductions
(read only; their "% copy" compares a read-only stream with a read+write one, so it can pass
100%). Each figure is the median of --repeat timings, each the mean of 3 back-to-back calls
after a warm-up. The machine is shared (2 cores, other jobs running): expect noise.

Two timings per op:
- kernel: the compiled segment called directly with preallocated, already-touched outputs:
  what the kernel achieves, compared with np.copyto into a touched array;
- call: the public path f(x), which allocates outputs with np.empty on each call (a 64 MB
  result is a fresh mmap: page faults and zeroing), compared with x.copy().
"""
from __future__ import annotations

import argparse
import ctypes

import numpy as np

import ckir
from ckir.backends.llvm.kernels import reduce as R
from _timing import timed  # noqa: E402


def module(opname, attrs, shapes):
    g, b = ckir.new_graph("main", {f"x{i}": ckir.TensorType(list(s), "f32") for i, s in enumerate(shapes)})
    op = b.create(ckir.get_op(opname), list(g.inputs), attrs)
    g.set_outputs(op.results, [f"y{i}" for i in range(len(op.results))])
    m = ckir.Module("bench")
    m.add_graph(g)
    return m, op


def kernel_caller(f, xs):
    """The compiled segment called on preallocated outputs (one native segment expected)."""
    plan = f._run.plan
    if len(plan.steps) != 1 or plan.steps[0].kind != "native":
        return None, None
    step = plan.steps[0]
    env = dict(zip(plan.graph.inputs, xs))
    outs = []
    for v in step.values:
        if v not in env:
            env[v] = np.zeros(v.type.shape, v.type.dtype.np)      # touched now, not in the timing
            outs.append(env[v])
    ptrs = (ctypes.c_void_p * len(step.values))(*[env[v].ctypes.data for v in step.values])
    dims = np.zeros(plan.n_dims + 1, np.int64)
    keep = (ptrs, dims, outs)

    def call(keep=keep):
        step.fn(ctypes.addressof(keep[0]), keep[1].ctypes.data)
    return call, outs


def ops(rows, row):
    x = (rows, row)
    return {   # name: (op, attrs, shapes, bytes per element)
        "softmax": ("nn.softmax", {}, [x], 8),
        "log_softmax": ("nn.log_softmax", {}, [x], 8),
        "rms_norm": ("nn.rms_norm", {}, [x, (row,)], 8),
        "layer_norm": ("nn.layer_norm", {}, [x, (row,), (row,)], 8),
        "sum_rows": ("nn.sum", {"axes": [1]}, [x], 4),
        "sum_cols": ("nn.sum", {"axes": [0]}, [x], 4),
        "sum_all": ("nn.sum", {}, [x], 4),
        "max_rows": ("nn.max", {"axes": [1]}, [x], 4),
        "argmax_rows": ("nn.argmax", {"axis": 1}, [x], 4),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16 * 1024 * 1024)
    ap.add_argument("--row", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ops", default="softmax,rms_norm,log_softmax,layer_norm,sum_rows,sum_cols,sum_all,"
                                     "max_rows,argmax_rows")
    ap.add_argument("--target", default=None)
    ap.add_argument("--no-accum", action="store_true", help="skip the f64/f32 accumulator comparison")
    args = ap.parse_args(argv)
    n, row = args.n, args.row
    rows = n // row
    rng = np.random.default_rng(0)

    src = rng.standard_normal(n).astype(np.float32)
    dst = np.zeros_like(src)
    t_copy = timed(lambda: np.copyto(dst, src), args.repeat)
    t_fresh = timed(lambda: src.copy(), args.repeat)
    copy_bw = 8 * n / t_copy / 1e9
    fresh_bw = 8 * n / t_fresh / 1e9
    print(f"n = {n} f32 as {rows} rows of {row}, threads = {args.threads}, median of {args.repeat}; "
          "machine shared with other jobs: figures are noisy")
    print(f"numpy np.copyto (touched output) : {t_copy * 1e3:7.2f} ms {copy_bw:6.1f} GB/s  (100% for 'kernel')")
    print(f"numpy x.copy()  (fresh output)   : {t_fresh * 1e3:7.2f} ms {fresh_bw:6.1f} GB/s  (100% for 'call')")
    print()
    print(f"{'op':<12} {'kernel ms':>9} {'GB/s':>6} {'%copy':>6} | {'call ms':>8} {'GB/s':>6} {'%copy':>6} | "
          f"{'numpy ms':>8} {'numpy/kernel':>12}")
    table = ops(rows, row)
    for name in args.ops.split(","):
        opname, attrs, shapes, per = table[name]
        m, op = module(opname, attrs, shapes)
        xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        f = ckir.compile(m, backend="llvm", target=args.target, threads=args.threads, cache=False)
        call, _ = kernel_caller(f, xs)
        t_k = timed(call, args.repeat)
        t_c = timed(lambda: f(*xs), args.repeat)
        ref = op.opdef.ref
        t_np = timed(lambda: ref(xs, op.attrs), args.repeat, inner=1)
        bw_k, bw_c = per * n / t_k / 1e9, per * n / t_c / 1e9
        print(f"{name:<12} {t_k * 1e3:9.2f} {bw_k:6.1f} {100 * bw_k / copy_bw:5.0f}% | {t_c * 1e3:8.2f} {bw_c:6.1f} "
              f"{100 * bw_c / fresh_bw:5.0f}% | {t_np * 1e3:8.2f} {t_np / t_k:11.1f}x")

    if args.no_accum:
        return
    print()
    print("f32 sums accumulated in f64 (the choice, SUM_F64) vs f32: kernel ms, and the all-axes sum's")
    print("error against the exact (f64) sum of uniform [0, 1) values, in f32 ulps of the result")
    x = rng.random((rows, row)).astype(np.float32)
    exact = float(np.sum(x.astype(np.float64)))
    ulp = float(np.spacing(np.float32(exact)))
    print(f"  numpy np.sum (pairwise f32): error {abs(float(np.sum(x)) - exact) / ulp:6.2f} ulp")
    for name in ("sum_all", "sum_rows", "rms_norm", "softmax"):
        opname, attrs, shapes, _ = table[name]
        line = f"  {name:<9}"
        for wide in (True, False):
            R.SUM_F64 = wide
            try:
                m, _ = module(opname, attrs, shapes)
                f = ckir.compile(m, backend="llvm", target=args.target, threads=args.threads, cache=False)
            finally:
                R.SUM_F64 = True
            xs = [x] + [np.ones(s, np.float32) for s in shapes[1:]]
            call, outs = kernel_caller(f, xs)
            t = timed(call, args.repeat)
            line += f"  {'f64' if wide else 'f32'} acc {t * 1e3:7.2f} ms"
            if name == "sum_all":
                line += f" (error {abs(float(outs[0]) - exact) / ulp:7.2f} ulp)"
        print(line)


if __name__ == "__main__":
    main()
