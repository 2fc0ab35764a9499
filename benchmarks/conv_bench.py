"""nn.conv / nn.max_pool on the llvm backend vs numpy (f32 im2col + matmul on OpenBLAS, in the
same run), on a few CNN layer shapes; prints times, GFLOP/s and the numpy/llvm ratio (> 1:
llvm faster). Medians of 3 runs after a warm-up. The machine may be shared: treat the figures
as rough.

    python benchmarks/conv_bench.py [--threads N]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

import ckir
from ckir import Module, TensorType, new_graph

SHAPES = [  # (name, x shape, w shape, attrs)
    ("resnet stem 7x7/2", (1, 3, 224, 224), (64, 3, 7, 7), dict(strides=[2, 2], pads=[3, 3, 3, 3])),
    ("resnet 3x3 64ch", (1, 64, 56, 56), (64, 64, 3, 3), dict(pads=[1, 1, 1, 1])),
    ("pointwise 256->64", (1, 256, 56, 56), (64, 256, 1, 1), {}),
    ("depthwise 3x3 32ch", (1, 32, 112, 112), (32, 1, 3, 3), dict(pads=[1, 1, 1, 1], groups=32)),
]


def numpy_conv(x, w, strides=(1, 1), pads=(0, 0, 0, 0), groups=1):
    """f32 im2col + matmul (the usual numpy way), groups as a batched matmul."""
    xp = np.pad(x, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    kh, kw = w.shape[2:]
    v = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::strides[0], ::strides[1]]
    n, c, oh, ow = v.shape[:4]
    cg = c // groups
    cols = v.reshape(n, groups, cg, oh, ow, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6).reshape(groups, n * oh * ow, cg * kh * kw)
    y = cols @ w.reshape(groups, -1, cg * kh * kw).transpose(0, 2, 1)
    return y.reshape(groups, n, oh, ow, -1).transpose(1, 0, 4, 2, 3).reshape(n, -1, oh, ow)


def median_time(fn, reps=3):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    r = np.random.default_rng(0)
    print(f"{'layer':<22} {'llvm ms':>9} {'GFLOP/s':>8} {'numpy ms':>9} {'numpy/llvm':>10}")
    for name, xs, ws, attrs in SHAPES:
        g, b = new_graph("main", {"x": TensorType(xs, ckir.dtypes.f32), "w": TensorType(ws, ckir.dtypes.f32)})
        g.set_outputs([b.nn.conv(*g.inputs, **attrs)], ["y"])
        m = Module("t")
        m.add_graph(g)
        f = ckir.compile(m, backend="llvm", threads=a.threads)
        x = r.uniform(-1, 1, xs).astype(np.float32)
        w = r.uniform(-1, 1, ws).astype(np.float32)
        y = f(x, w)["y"]
        kw = dict(strides=attrs.get("strides", (1, 1)), pads=attrs.get("pads", (0, 0, 0, 0)),
                  groups=attrs.get("groups", 1))
        np.testing.assert_allclose(y, numpy_conv(x, w, **kw), rtol=1e-3, atol=1e-3)
        t_llvm = median_time(lambda: f(x, w))
        t_np = median_time(lambda: numpy_conv(x, w, **kw))
        flops = 2 * np.prod(ws[1:]) * y.size
        print(f"{name:<22} {t_llvm * 1e3:9.2f} {flops / t_llvm / 1e9:8.1f} {t_np * 1e3:9.2f} {t_np / t_llvm:10.2f}")


if __name__ == "__main__":
    main()
