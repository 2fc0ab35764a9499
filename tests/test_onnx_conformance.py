"""ONNX's own backend test suite (node, simple, pytorch-converted, pytorch-operator, and the
light real models) through ckir's ONNX backend API on the interpreter, and its node tests on
the llvm backend with native kernels only.

Tests expected to fail are listed, each with its reason, in tests/onnx_expected_failures.txt
(interpreter) and tests/onnx_expected_failures_llvm.txt (llvm). They run as unittest expected
failures: one that starts passing fails the run (an unexpected success), so the lists can only
shrink.

On llvm a node test passes only if every op of its model runs as a native kernel: the backend
is prepared with native_only=True, which refuses (CkirError, before compiling) a graph with an
op the interpreter would run, so a fallback is a failure and must be listed. This is the
figure `python benchmarks/onnx_conformance.py --backend llvm --category node` reports as
"passed natively".

The llvm run compiles every native model (about 0.3 s each on an idle machine without the
compile cache), so by default it takes a deterministic eighth of the node tests (by a CRC of
the name). CKIR_ONNX_LLVM_SUITE=all runs every node test, =0 none."""
import os
import re
import warnings
import zlib

import onnx.backend.test

from ckir.frontends.onnx import backend

HERE = os.path.dirname(os.path.abspath(__file__))


def expected_failures(fname="onnx_expected_failures.txt") -> dict:
    out = {}
    with open(os.path.join(HERE, fname)) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, reason = line.partition("#")
            if not sep or not reason.strip():
                raise ValueError(f"{fname}:{n}: '{line}' has no reason")
            out[name.strip()] = reason.strip()
    return out


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    _suite = onnx.backend.test.BackendTest(backend, __name__)
_suite.exclude(r"_cuda$")
for _name in expected_failures():
    _suite.xfail("^" + re.escape(_name) + "_cpu$")
globals().update(_suite.test_cases)


def test_expected_failures_name_real_tests():
    names = {n.removesuffix("_cpu") for cls in _suite.test_cases.values() for n in dir(cls) if n.startswith("test_")}
    stale = sorted(set(expected_failures()) - names)
    assert not stale, f"onnx_expected_failures.txt names tests that do not exist: {stale[:10]}"


# --- node tests on llvm, native kernels only -----------------------------------------------------
class NativeLlvmBackend(backend.CkirBackend):
    """ckir's backend on llvm, refusing any model that would fall back to the interpreter."""

    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        kwargs.setdefault("backend", "llvm")
        kwargs.setdefault("native_only", True)
        return super().prepare(model, device, **kwargs)


LLVM_EXPECTED = "onnx_expected_failures_llvm.txt"
LLVM_SUITE = os.environ.get("CKIR_ONNX_LLVM_SUITE", "subset")
if LLVM_SUITE != "0":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _llvm = onnx.backend.test.BackendTest(NativeLlvmBackend, __name__ + "_llvm")
    _llvm.exclude(r"_cuda$")
    for _name in expected_failures(LLVM_EXPECTED):
        _llvm.xfail("^" + re.escape(_name) + "_cpu$")
    LlvmOnnxBackendNodeModelTest = _llvm.test_cases["OnnxBackendNodeModelTest"]
    if LLVM_SUITE != "all":
        for _name in [n for n in vars(LlvmOnnxBackendNodeModelTest) if n.startswith("test_")]:
            if zlib.crc32(_name.removesuffix("_cpu").encode()) % 8:
                delattr(LlvmOnnxBackendNodeModelTest, _name)


def test_llvm_expected_failures_name_real_tests():
    cls = _suite.test_cases["OnnxBackendNodeModelTest"]
    names = {n.removesuffix("_cpu") for n in dir(cls) if n.startswith("test_")}
    stale = sorted(set(expected_failures(LLVM_EXPECTED)) - names)
    assert not stale, f"{LLVM_EXPECTED} names node tests that do not exist: {stale[:10]}"
