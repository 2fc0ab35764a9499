"""Quantized matmul: ckir's LLVM kernels (quant.matmul, act="q8") against llama.cpp's own ggml
mul_mat, called at the op level through the libggml shipped with llama-cpp-python (ctypes), and
against numpy (f32 matmul on weights dequantized beforehand, i.e. 4-8x the bytes).

    python benchmarks/quant_bench.py [--threads 2] [--types q4_k,q6_k,q8_0] [--reps 3]

llama.cpp is timed on graphs of 10 GEMVs (1 GEMM), since ggml starts its threads per graph.
Shapes: GEMV 1x4096x4096 (decode: memory-bound) and GEMM 128x4096x4096 (prefill). Prints the
median of `reps` timings (each the mean of a few calls), GB/s of quantized weight bytes read,
GOPS (2*M*N*K), and the ratios; a numpy copy of the weight bytes gives the machine's current
memory bandwidth. The machine may be shared: figures are indicative, repeat when it is idle.
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import os

import numpy as np
from _timing import timed  # noqa: E402

GGML_TYPES = {"q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "q2_k": 10, "q3_k": 11,
              "q4_k": 12, "q5_k": 13, "q6_k": 14}


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class GGML:
    """ggml's mul_mat on raw GGUF blocks: y [M, N] = x [M, K] (f32) times w [N, K] (blocks), as
    llama.cpp computes a linear layer (activations quantized to q8_0/q8_1/q8_K)."""

    def __init__(self):
        import llama_cpp
        lib = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
        self.base = ctypes.CDLL(glob.glob(os.path.join(lib, "libggml-base.so*"))[0], mode=ctypes.RTLD_GLOBAL)
        self.cpu = ctypes.CDLL(glob.glob(os.path.join(lib, "libggml-cpu.so*"))[0], mode=ctypes.RTLD_GLOBAL)
        b, c = self.base, self.cpu
        b.ggml_init.restype = ctypes.c_void_p
        b.ggml_init.argtypes = [_InitParams]
        b.ggml_free.argtypes = [ctypes.c_void_p]
        b.ggml_new_tensor_2d.restype = ctypes.c_void_p
        b.ggml_new_tensor_2d.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        b.ggml_get_data.restype = ctypes.c_void_p
        b.ggml_get_data.argtypes = [ctypes.c_void_p]
        b.ggml_mul_mat.restype = ctypes.c_void_p
        b.ggml_mul_mat.argtypes = [ctypes.c_void_p] * 3
        b.ggml_new_graph.restype = ctypes.c_void_p
        b.ggml_new_graph.argtypes = [ctypes.c_void_p]
        b.ggml_build_forward_expand.argtypes = [ctypes.c_void_p] * 2
        c.ggml_graph_compute_with_ctx.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        c.ggml_cpu_init()

    def matmul(self, x: np.ndarray, w: np.ndarray, qtype: str, threads: int = 2, repeat: int = 1):
        """A callable computing x @ dequantize(w)^T with ggml (`repeat` times in one graph, since
        each graph computation starts its own threads), returning the output array."""
        m, k = x.shape
        n = w.shape[0]
        mem = w.nbytes + 2 * x.nbytes + 4 * m * n * repeat + (64 << 20)
        ctx = self.base.ggml_init(_InitParams(mem, None, False))
        wt = self.base.ggml_new_tensor_2d(ctx, GGML_TYPES[qtype], k, n)
        xt = self.base.ggml_new_tensor_2d(ctx, 0, k, m)
        ctypes.memmove(self.base.ggml_get_data(wt), w.ctypes.data, w.nbytes)
        ctypes.memmove(self.base.ggml_get_data(xt), np.ascontiguousarray(x, np.float32).ctypes.data, x.nbytes)
        gf = self.base.ggml_new_graph(ctx)
        for _ in range(repeat):
            yt = self.base.ggml_mul_mat(ctx, wt, xt)
            self.base.ggml_build_forward_expand(gf, yt)
        y = np.ctypeslib.as_array((ctypes.c_float * (m * n)).from_address(self.base.ggml_get_data(yt))).reshape(m, n)
        cpu = self.cpu

        def run():
            cpu.ggml_graph_compute_with_ctx(ctx, gf, threads)
            return y
        run.free = lambda: self.base.ggml_free(ctx)
        return run


def ckir_matmul(qtype: str, n: int, k: int, threads: int, target=None):
    import ckir
    g, b = ckir.new_graph("main", {"x": ckir.TensorType(["M", k], "f32"), "w": ckir.TensorType([n, k], qtype)})
    g.set_outputs([b.quant.matmul(*g.inputs, act="q8")], ["y"])
    m = ckir.Module()
    m.add_graph(g)
    f = ckir.compile(m, backend="llvm", target=target, threads=threads)
    return lambda x, w: f(x, w)["y"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", default="q4_k,q6_k,q8_0")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--target", default=None)
    a = ap.parse_args(argv)
    from ckir.dialects.quant import ggml

    from ckir import dtypes as dt
    try:
        lc = GGML()
    except Exception as e:          # llama-cpp-python missing or its libggml not loadable
        print(f"llama.cpp (libggml) unavailable: {e}")
        lc = None
    N = K = 4096
    r = np.random.default_rng(0)
    print(f"threads={a.threads}, median of {a.reps}; the machine may be busy: indicative figures")
    for qtype in a.types.split(","):
        d = dt.dtype(qtype)
        w = ggml.random_blocks(d, (N, K), r)
        wf = ggml.decode(w, d)
        copy_dst = np.empty_like(w)
        t_copy = timed(lambda: np.copyto(copy_dst, w), a.reps, 5)
        f = ckir_matmul(qtype, N, K, a.threads, a.target)
        for M in (1, 128):
            x = r.standard_normal((M, K)).astype(np.float32)
            inner = 10 if M == 1 else 1
            t_ck = timed(lambda: f(x, w), a.reps, inner)
            t_np = timed(lambda: x @ wf.T, a.reps, inner)
            ops = 2 * M * N * K
            line = (f"{qtype} {M}x{K}x{N}: ckir {t_ck * 1e3:8.2f} ms {w.nbytes / t_ck / 1e9:6.1f} GB/s "
                    f"{ops / t_ck / 1e9:6.1f} GOPS | numpy f32 (dequantized) {t_np * 1e3:8.2f} ms "
                    f"x{t_np / t_ck:5.2f}")
            if lc is not None and qtype in GGML_TYPES:
                run = lc.matmul(x, w, qtype, a.threads, repeat=inner)
                t_lc = timed(run, a.reps, 1) / inner
                y_lc, y_ck = run().copy(), f(x, w)
                err = float(np.abs(y_lc - y_ck).max() / np.abs(y_lc).max())
                run.free()
                line += f" | llama.cpp {t_lc * 1e3:8.2f} ms, ckir/llama.cpp speed x{t_lc / t_ck:5.2f} (max rel diff {err:.1e})"
            print(line, flush=True)
        print(f"{qtype}: numpy copy of the {w.nbytes / 1e6:.1f} MB of weight bytes: {w.nbytes / t_copy / 1e9:.1f} GB/s",
              flush=True)


if __name__ == "__main__":
    main()
