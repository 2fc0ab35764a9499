"""Latency of ckir vs onnxruntime on the same ONNX models, same thread count.

    python benchmarks/onnx_bench.py [--backend interp] [--threads 2] [--repeat 3]

Models (random weights, exported from PyTorch by tests/onnx_models.py): a 6-layer MiniLM-like
encoder (hidden 384, 12 heads, FFN 1536) at batch 1 and 8, sequence 128; a ResNet-like CNN at
batch 1, 3x224x224. Each latency is the median of --repeat timed runs after one warm-up run;
the ratio is ckir / onnxruntime (lower is better; 1.0 = parity). Run on a quiet machine.
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


def timed(fn, repeat):
    fn()                      # warm-up (and compile)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="interp")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(a.threads))   # numpy's BLAS (the interpreter's matmuls)
    import onnxruntime as ort

    import ckir
    from onnx_models import MINILM, cnn_onnx, encoder_inputs, encoder_onnx

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    tmp = tempfile.mkdtemp(prefix="ckir-bench-")
    enc = encoder_onnx(os.path.join(tmp, "minilm.onnx"), **MINILM)
    cnn = cnn_onnx(os.path.join(tmp, "cnn.onnx"), size=224, widths=(64, 128, 256, 512), classes=1000)
    cases = [("encoder b1 s128", enc, encoder_inputs(1, 128, MINILM["vocab"])),
             ("encoder b8 s128", enc, encoder_inputs(8, 128, MINILM["vocab"])),
             ("cnn b1 224x224", cnn, {"image": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)})]
    print(f"ckir ({a.backend}) vs onnxruntime {ort.__version__}, {a.threads} threads, median of {a.repeat}")
    print(f"{'model':<18} {'ckir ms':>10} {'ort ms':>10} {'ratio':>8}")
    for name, path, feeds in cases:
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        f = ckir.compile(ckir.load(path), backend=a.backend, passes="canonicalize,cse,dce")
        t_ort = timed(lambda: sess.run(None, feeds), a.repeat)
        t_ck = timed(lambda: f(**feeds), a.repeat)
        print(f"{name:<18} {1e3 * t_ck:10.1f} {1e3 * t_ort:10.1f} {t_ck / t_ort:8.2f}")


if __name__ == "__main__":
    main()
