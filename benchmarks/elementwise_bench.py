"""Bandwidth of the LLVM backend's elementwise-family kernels on 16M floats, against numpy's copy
bandwidth measured in the same run (issue 5: add/gelu/softmax/rms_norm, target >= 80% of copy).

    python benchmarks/elementwise_bench.py [--n 16777216] [--threads 2] [--repeat 3]
                                           [--ops add,gelu,softmax,rms_norm] [--target avx2]

Bytes counted are the useful ones: every operand read once plus every result written once
(add: 12 bytes per element, gelu: 8, softmax: 8, rms_norm: 8 + the scale row), the same
accounting as the copy's 8 bytes per element. Each figure is the median of --repeat timings
(each the mean of a few back-to-back calls); the machine is shared, so expect noise.

Two timings per op:
- kernel: the compiled segment called directly with preallocated, already-touched outputs;
  this is what the kernel itself achieves and what is compared with the copy;
- call: the public path `f(x)`, which allocates its outputs with np.empty each call. A 64 MB
  array is a fresh mmap every time (glibc's mmap threshold tops out at 32 MB), so the kernel
  also pays the page faults (and the kernel zeroing the pages) of its output; the difference
  is printed as the allocation cost. numpy pays the same: `x.copy()` versus `np.copyto`.
Ops without a native kernel yet (find_emitter returns None) are listed as "not compiled yet".
"""
from __future__ import annotations

import argparse
import ctypes

import numpy as np

import ckir
from ckir.backends.llvm.codegen import find_emitter
from _timing import timed  # noqa: E402

OPS = {
    # name: (op, attrs, input shapes as functions of n)
    "add": ("nn.add", {}, lambda n: [(n,), (n,)]),
    "gelu": ("nn.gelu", {}, lambda n: [(n,)]),
    "gelu_tanh": ("nn.gelu", {"approximate": "tanh"}, lambda n: [(n,)]),
    "softmax": ("nn.softmax", {}, lambda n: [(n // 4096, 4096)]),
    "rms_norm": ("nn.rms_norm", {}, lambda n: [(n // 4096, 4096), (4096,)]),
    "exp": ("nn.exp", {}, lambda n: [(n,)]),
    "tanh": ("nn.tanh", {}, lambda n: [(n,)]),
    "sigmoid": ("nn.sigmoid", {}, lambda n: [(n,)]),
    "silu": ("nn.silu", {}, lambda n: [(n,)]),
    "erf": ("nn.erf", {}, lambda n: [(n,)]),
}


def build(opname, attrs, shapes):
    g, b = ckir.new_graph("main", {f"x{i}": ckir.TensorType(list(s), "f32") for i, s in enumerate(shapes)})
    op = b.create(ckir.get_op(opname), list(g.inputs), attrs)
    g.set_outputs(op.results, [f"y{i}" for i in range(len(op.results))])
    m = ckir.Module("bench")
    m.add_graph(g)
    return m, op


def kernel_caller(f, xs):
    """Call the compiled segment directly on preallocated outputs (the graph must be one native
    segment). Returns (call, outputs)."""
    plan = f._run.plan
    steps = [s for s in plan.steps if s.kind == "native"]
    if len(steps) != 1 or len(plan.steps) != 1:
        return None, None
    step = steps[0]
    env = dict(zip(plan.graph.inputs, xs))
    outs = []
    for v in step.values:
        if v not in env:
            env[v] = np.zeros(v.type.shape, v.type.dtype.np)    # zeros: pages touched now
            outs.append(env[v])
    ptrs = (ctypes.c_void_p * len(step.values))(*[env[v].ctypes.data for v in step.values])
    dims = np.zeros(max(1, plan.n_dims), np.int64)
    keep = (ptrs, dims, outs)            # the pointers must outlive the calls

    def call(keep=keep):
        step.fn(ctypes.addressof(keep[0]), keep[1].ctypes.data)
    return call, outs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16 * 1024 * 1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ops", default="add,gelu,softmax,rms_norm")
    ap.add_argument("--target", default=None)
    args = ap.parse_args(argv)
    n = args.n
    rng = np.random.default_rng(0)

    src = rng.standard_normal(n).astype(np.float32)
    dst = np.empty_like(src)
    dst[:] = 0
    t_copy = timed(lambda: np.copyto(dst, src), args.repeat)
    t_copy_fresh = timed(lambda: src.copy(), args.repeat)
    copy_bw = 8 * n / t_copy / 1e9
    print(f"n = {n} f32 ({4 * n / 2**20:.0f} MB per array), threads = {args.threads}, "
          f"median of {args.repeat}; machine shared with other jobs: figures are noisy")
    print(f"numpy copy, np.copyto into a touched array : {t_copy * 1e3:8.2f} ms  {copy_bw:6.1f} GB/s  (the 100% line)")
    print(f"numpy copy, x.copy() (fresh 64 MB output)   : {t_copy_fresh * 1e3:8.2f} ms  "
          f"{8 * n / t_copy_fresh / 1e9:6.1f} GB/s  (allocation + page faults: "
          f"{(t_copy_fresh - t_copy) * 1e3:.2f} ms)")
    print()
    print(f"{'op':<10} {'kernel ms':>9} {'GB/s':>6} {'% copy':>7} | {'call ms':>8} {'GB/s':>6} {'% copy':>7} "
          f"{'alloc ms':>8} | {'numpy ms':>8} {'numpy/kernel':>12}")
    for name in args.ops.split(","):
        opname, attrs, shapes_fn = OPS[name]
        shapes = shapes_fn(n)
        m, op = build(opname, attrs, shapes)
        if find_emitter(op) is None:
            print(f"{name:<10} not compiled yet (no native kernel for {opname}; it would run in the interpreter)")
            continue
        xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        f = ckir.compile(m, backend="llvm", target=args.target, threads=args.threads, cache=False)
        want = ckir.compile(m)(*xs)
        got = f(*xs)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5)
        nbytes = sum(x.nbytes for x in xs) + sum(r.type.nbytes() for r in op.results)
        call, _ = kernel_caller(f, xs)
        t_k = timed(call, args.repeat)
        t_c = timed(lambda f=f, xs=xs: f(*xs), args.repeat)
        t_np = timed(lambda name=name, xs=xs: numpy_version(name, xs), args.repeat, inner=1)
        bw_k, bw_c = nbytes / t_k / 1e9, nbytes / t_c / 1e9
        print(f"{name:<10} {t_k * 1e3:9.2f} {bw_k:6.1f} {100 * bw_k / copy_bw:6.0f}% | {t_c * 1e3:8.2f} {bw_c:6.1f} "
              f"{100 * bw_c / copy_bw:6.0f}% {(t_c - t_k) * 1e3:8.2f} | {t_np * 1e3:8.2f} {t_np / t_k:11.1f}x")


def numpy_version(name, xs):
    """The same computation in numpy (its reference formulas, f32 where numpy keeps f32)."""
    from scipy import special
    x = xs[0]
    if name == "add":
        return np.add(xs[0], xs[1])
    if name == "gelu":
        return 0.5 * x * (1 + special.erf(x * np.float32(0.7071067811865476)))
    if name == "gelu_tanh":
        return 0.5 * x * (1 + np.tanh(np.float32(0.7978845608) * (x + np.float32(0.044715) * x * x * x)))
    if name == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if name == "rms_norm":
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(1e-6)) * xs[1]
    if name == "silu":
        return x * special.expit(x)
    return {"exp": np.exp, "tanh": np.tanh, "sigmoid": special.expit, "erf": special.erf}[name](x)


if __name__ == "__main__":
    main()
