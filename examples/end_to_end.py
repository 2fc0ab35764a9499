"""End to end: load a model, optimize it, run it in the reference interpreter, check the answer,
then fuse it and run it as native code from the LLVM backend.

    python examples/end_to_end.py
"""
import os
import sys

import numpy as np
from scipy.special import erf

import ckir
import ckir.backends.llvm.target
from ckir.report import format_summary, summarize

here = os.path.dirname(os.path.abspath(__file__))

# 1. load the text IR (ONNX and GGUF files load the same way once their frontends land)
module = ckir.load(os.path.join(here, "mlp.ckir"))
print(format_summary(summarize(module, {"batch": 5})))

# 2. optimize: the pass manager verifies after every pass and reports what each one did
ckir.PassManager("canonicalize,cse,dce", stats=True, out=sys.stdout).run(module)
print(module.print())

# 3. run it in the reference interpreter
run = ckir.compile(module, backend="interp")
x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
logits = run(x=x)["logits"]
print("logits =\n", logits)

# 4. check against numpy written straight from the weights
w = {name: wt.array() for name, wt in module.weights.items()}
h = x @ w["fc1.weight"].T + w["fc1.bias"]
h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
expect = h @ w["fc2.weight"].T + w["fc2.bias"]
err = float(np.max(np.abs(logits - expect)))
print(f"max |ckir - numpy| = {err:.2e}")
if err > 1e-5:
    sys.exit("mismatch")

# 5. fuse elementwise chains and JIT-compile for this CPU (vectorized, multithreaded kernels)
native = ckir.compile(module, backend="llvm", passes="fuse")
got = native(x=x)["logits"]
err = float(np.max(np.abs(got - logits)))
target = ckir.backends.llvm.target.best_host_target()
print(f"llvm backend (target {target}): max |llvm - interpreter| = {err:.2e}")
if err > 1e-5:
    sys.exit("llvm mismatch")
