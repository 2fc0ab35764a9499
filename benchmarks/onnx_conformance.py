"""ONNX's own backend test suite run through ckir's ONNX backend API.

    python benchmarks/onnx_conformance.py [--backend interp|llvm] [-k PATTERN] [--failures]
                                          [--write-expected FILE]

Prints `N passed, M failed` per category (node, simple, pytorch-converted, pytorch-operator,
real = the light models shipped with onnx) and the op types of the failing node tests. With
--failures, one line per failing test with the first line of its error; --write-expected writes
the failing tests in the format of tests/onnx_expected_failures.txt (reasons to be filled in).
"""
from __future__ import annotations

import argparse
import collections
import io
import os
import re
import sys
import time
import unittest
import warnings

CATEGORIES = {
    "OnnxBackendNodeModelTest": "node",
    "OnnxBackendSimpleModelTest": "simple",
    "OnnxBackendPyTorchConvertedModelTest": "pytorch-converted",
    "OnnxBackendPyTorchOperatorModelTest": "pytorch-operator",
    "OnnxBackendRealModelTest": "real",
}


def suite_cases(backend_name: str):
    """{test name: (category, unittest case)} for the whole official suite."""
    import onnx.backend.test
    os.environ["CKIR_ONNX_BACKEND"] = backend_name
    from ckir.frontends.onnx import backend
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bt = onnx.backend.test.BackendTest(backend, "conformance")
    out = {}
    loader = unittest.TestLoader()
    for cls_name, cls in bt.test_cases.items():
        cat = CATEGORIES.get(cls_name)
        if cat is None:
            continue
        for case in loader.loadTestsFromTestCase(cls):
            name = case.id().split(".")[-1]
            if name.endswith("_cuda"):
                continue
            out[name.removesuffix("_cpu")] = (cat, case)
    return out


def node_op_types() -> dict:
    """{node test name: sorted op types in its model}."""
    from onnx.backend.test.loader import load_model_tests
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tests = load_model_tests(kind="node")
    return {t.name: sorted({n.op_type for n in t.model.graph.node}) for t in tests if t.model is not None}


def run_case(case) -> str | None:
    """None when the test passes, else the first line of its failure."""
    result = unittest.TestResult()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        case.run(result)
    problems = result.errors + result.failures
    if result.skipped:
        return "skipped: " + result.skipped[0][1]
    if not problems:
        return None
    text = problems[0][1].strip().splitlines()
    for i in range(len(text) - 1, -1, -1):
        if re.match(r"^[\w.]+(Error|Exception)\b", text[i]):
            # the exception line and what follows it (assertion details)
            rest = " ".join(t.strip() for t in text[i:i + 6] if t.strip())
            return rest[:400]
    return text[-1].strip()[:400]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="interp", help="ckir backend (default interp)")
    ap.add_argument("-k", default=None, help="only tests whose name matches this regex")
    ap.add_argument("--failures", action="store_true", help="list each failing test and its error")
    ap.add_argument("--write-expected", metavar="FILE", help="write the failing tests to FILE")
    a = ap.parse_args(argv)
    cases = suite_cases(a.backend)
    if a.k:
        cases = {n: c for n, c in cases.items() if re.search(a.k, n)}
    ops = node_op_types()
    stats = collections.defaultdict(lambda: [0, 0])
    failing = {}
    t0 = time.time()
    try:
        from tqdm import tqdm
        it = tqdm(sorted(cases.items()), desc="onnx suite", file=sys.stderr, disable=not sys.stderr.isatty())
    except ImportError:
        it = sorted(cases.items())
    for name, (cat, case) in it:
        err = run_case(case)
        stats[cat][err is not None] += 1
        if err is not None:
            failing[name] = (cat, err)
    out = io.StringIO()
    total_pass = sum(p for p, _ in stats.values())
    total = sum(p + f for p, f in stats.values())
    print(f"ONNX backend suite on ckir ({a.backend}), {time.time() - t0:.0f} s", file=out)
    for cat in CATEGORIES.values():
        if cat in stats:
            p, f = stats[cat]
            print(f"  {cat:<18} {p:5d} passed, {f:4d} failed  ({100 * p / max(1, p + f):.1f}%)", file=out)
    print(f"  {'all':<18} {total_pass:5d} passed, {total - total_pass:4d} failed", file=out)
    by_op = collections.Counter()
    for name, (cat, _) in failing.items():
        if cat == "node":
            by_op.update(ops.get(name, ["?"]))
    if by_op:
        print("failing node tests by op type: " + ", ".join(f"{o} {n}" for o, n in by_op.most_common()), file=out)
    if a.failures:
        for name, (cat, err) in sorted(failing.items()):
            print(f"  {cat:<18} {name}: {err}", file=out)
    sys.stdout.write(out.getvalue())
    if a.write_expected:
        with open(a.write_expected, "w") as f:
            for name, (cat, err) in sorted(failing.items()):
                f.write(f"{name}  # {err[:150]}\n")


if __name__ == "__main__":
    main()
