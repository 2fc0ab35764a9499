"""Memory plans from the arena pass: peak bytes per section against the lower bound (the most
bytes alive at any one step) and against no reuse at all.

    python benchmarks/arena_report.py

Graphs: a 6-layer MiniLM-like ONNX encoder at batch 8, sequence 128; a ResNet-like ONNX CNN at
batch 1, 3x224x224; the encoder's training graph (a mean-square loss on its output, gradients
for every weight, via autodiff). Target: activation peak <= 1.05x the lower bound.
"""
from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import ckir  # noqa: E402
from ckir.passes.arena import overlaps, section_stats  # noqa: E402


def mb(n: int) -> str:
    return f"{n / 2**20:9.2f} MiB"


def add_mse_loss(m):
    g = m.main
    b = ckir.Builder.before(g.terminator)
    y = g.outputs[0]
    loss = b.nn.mean(b.nn.mul(y, y))
    g.set_outputs([loss], ["loss"])


def main():
    from onnx_models import MINILM, cnn_onnx, encoder_onnx
    tmp = tempfile.mkdtemp(prefix="ckir-arena-")
    enc = encoder_onnx(os.path.join(tmp, "minilm.onnx"), **MINILM)
    cnn = cnn_onnx(os.path.join(tmp, "cnn.onnx"), size=224, widths=(64, 128, 256, 512), classes=1000)
    cases = []
    m = ckir.load(enc)
    ckir.run_pipeline(m, "specialize{batch=8,seq=128},canonicalize,cse,dce,arena")
    cases.append(("encoder b8 s128", m))
    m = ckir.load(cnn)
    ckir.run_pipeline(m, "specialize{batch=1},canonicalize,cse,dce,arena")
    cases.append(("cnn b1 224x224", m))
    m = ckir.load(enc)
    ckir.run_pipeline(m, "specialize{batch=8,seq=128},canonicalize,cse,dce")
    add_mse_loss(m)
    ckir.run_pipeline(m, "autodiff{wrt=params},canonicalize,cse,dce,arena")
    cases.append(("encoder training", m))
    print(f"{'graph':<18} {'section':<12} {'peak':>13} {'lower bound':>13} {'no reuse':>13} {'peak/bound':>10}")
    for name, m in cases:
        assert not overlaps(m.main), f"{name}: overlapping tensors"
        for sec, s in section_stats(m.main).items():
            ratio = s["peak_bytes"] / s["lower_bound_bytes"] if s["lower_bound_bytes"] else 1.0
            print(f"{name:<18} {sec:<12} {mb(s['peak_bytes'])} {mb(s['lower_bound_bytes'])} "
                  f"{mb(s['no_reuse_bytes'])} {ratio:10.3f}")
    print("GGUF decode graph: not measured (the GGUF frontend has not landed yet)")


if __name__ == "__main__":
    main()
