"""Memory plans from the arena pass: peak bytes per section against the lower bound (the most
bytes alive at any one step) and against no reuse at all.

    python benchmarks/arena_report.py

Graphs: a 6-layer MiniLM-like ONNX encoder at batch 8, sequence 128; a ResNet-like ONNX CNN at
batch 1, 3x224x224; the encoder's training graph (a mean-square loss on its output, gradients
for every weight, via autodiff); the decode graph (one token, KV cache of 512) of a llama-family
GGUF model with Q4_K weights (d 1024, 16 heads, 4 KV heads). Target: activation peak <= 1.05x the lower bound.

Then the peak RSS of one encoder run (batch 8, seq 128) in a fresh process, ckir (--backend,
default llvm) vs onnxruntime with the same threads: the whole process's peak, and the part
above what the process held once its libraries were imported and the model loaded (run on a
quiet machine; --skip-rss leaves it out).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import numpy as np  # noqa: E402

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


RSS_CHILD = r"""
import json, os, sys
import numpy as np
feeds = dict(np.load({feeds!r}))

def rss_now():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

if {who!r} == "ort":
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = {threads}, 1
    sess = ort.InferenceSession({path!r}, so, providers=["CPUExecutionProvider"])
    run = lambda: sess.run(None, feeds)
else:
    import ckir
    f = ckir.compile(ckir.load({path!r}), backend={who!r},
                     passes="specialize{{batch=8,seq=128}},canonicalize,cse,dce",
                     **({{"threads": {threads}}} if {who!r} == "llvm" else {{}}))
    run = lambda: f(**feeds)
base = rss_now()
for _ in range(3):
    run()
# VmHWM belongs to this exec's address space; ru_maxrss would carry the parent's peak over fork
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(json.dumps({{"peak": hwm, "base": base}}))
"""


def peak_rss(who: str, path: str, threads: int) -> dict:
    """Peak RSS of a fresh process that loads the encoder and runs it 3 times at b8 s128 (its
    inputs come from a file: the child imports only numpy and the runtime measured)."""
    from onnx_models import MINILM, encoder_inputs
    feeds = path + ".inputs.npz"
    np.savez(feeds, **encoder_inputs(8, 128, MINILM["vocab"]))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    code = RSS_CHILD.format(feeds=feeds, who=who, path=path, threads=threads)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{who}: {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="llvm", help="ckir backend for the RSS run (default llvm)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-rss", action="store_true")
    a = ap.parse_args()
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
    from gguf_models import T, write_model
    path = os.path.join(tmp, "llama.gguf")
    write_model(path, "llama", T.Q4_K, n_embd=1024, n_head=16, n_head_kv=4, head_dim=64, n_ff=2816)
    m = ckir.load(path)
    ckir.run_pipeline(m, "canonicalize,cse,dce,arena{graph=decode}")
    cases.append(("gguf llama decode", m))
    print(f"{'graph':<18} {'section':<12} {'peak':>13} {'lower bound':>13} {'no reuse':>13} {'peak/bound':>10}")
    for name, m in cases:
        g = m.graphs.get("main") or m.graphs["decode"]
        assert not overlaps(g), f"{name}: overlapping tensors"
        for sec, s in section_stats(g).items():
            ratio = s["peak_bytes"] / s["lower_bound_bytes"] if s["lower_bound_bytes"] else 1.0
            print(f"{name:<18} {sec:<12} {mb(s['peak_bytes'])} {mb(s['lower_bound_bytes'])} "
                  f"{mb(s['no_reuse_bytes'])} {ratio:10.3f}")
    if a.skip_rss:
        return
    ck, ort = peak_rss(a.backend, enc, a.threads), peak_rss("ort", enc, a.threads)
    print(f"\npeak RSS, encoder b8 s128, {a.threads} threads: ckir ({a.backend}) {mb(ck['peak'])} "
          f"(+{mb(ck['peak'] - ck['base']).strip()} over loaded), onnxruntime {mb(ort['peak'])} "
          f"(+{mb(ort['peak'] - ort['base']).strip()} over loaded); ratio {ck['peak'] / ort['peak']:.2f}")


if __name__ == "__main__":
    main()
