"""ONNX's own backend test suite (node, simple, pytorch-converted, pytorch-operator, and the
light real models) through ckir's ONNX backend API on the interpreter.

Tests expected to fail are listed, each with its reason, in tests/onnx_expected_failures.txt.
They run as unittest expected failures: one that starts passing fails the run (an unexpected
success), so the list can only shrink."""
import os
import re
import warnings

import onnx.backend.test

from ckir.frontends.onnx import backend

HERE = os.path.dirname(os.path.abspath(__file__))


def expected_failures() -> dict:
    out = {}
    with open(os.path.join(HERE, "onnx_expected_failures.txt")) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, reason = line.partition("#")
            if not sep or not reason.strip():
                raise ValueError(f"onnx_expected_failures.txt:{n}: '{line}' has no reason")
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
