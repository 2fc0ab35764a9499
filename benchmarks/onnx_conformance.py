"""ONNX's own backend test suite run through ckir's ONNX backend API.

    python benchmarks/onnx_conformance.py [--backend interp|llvm] [--category node] [-k PATTERN]
                                          [--failures] [--write-expected FILE]

Prints `N passed, M failed` per category (node, simple, pytorch-converted, pytorch-operator,
real = the light models shipped with onnx) and the op types of the failing node tests. With
--failures, one line per failing test with the first line of its error; --write-expected writes
the failing tests in the format of tests/onnx_expected_failures.txt (reasons to be filled in).

With --backend llvm a passing test counts as native only if every op of every model it
prepared ran as a native kernel: a test whose graph keeps any op on the interpreter fallback
(no emitter, an emitter refusing the instance, an op with regions, a non-tensor value) passes
"with fallback". The native figure over all node tests is the LLVM conformance figure; the
table after it counts, per ckir op, the node tests in which that op fell back.
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


# the reps prepared by the test being run (see RecordingBackend)
PREPARED: list = []

# why an op runs in the interpreter on llvm, for the expected-failures file (--write-expected)
DYN = "shape/axes read from a tensor at run time (plan.py sizes results before a segment runs)"
NO_STORAGE = "a dtype the llvm backend cannot store (float8/float4/int4/int2, strings): codegen's storage table"
CONTROL = "regions, sequences and optionals run in the interpreter (plan.py runs only tensors natively)"
DATA_SIZED = "its result size depends on the data, which the plan cannot size before running it"
FALLBACK_REASONS = {
    "nn.cast": NO_STORAGE, "nn.cast_e8m0": NO_STORAGE, "nn.eq": NO_STORAGE + " (string equality)",
    "nn.div": "integer division: elementwise.py leaves integer div/mod/fmod to the interpreter",
    "nn.mod": "integer modulo: elementwise.py leaves integer div/mod/fmod to the interpreter",
    "nn.fmod": "integer fmod: elementwise.py leaves integer div/mod/fmod to the interpreter",
    "nn.unique": DATA_SIZED, "nn.nonzero": DATA_SIZED, "nn.non_max_suppression": DATA_SIZED,
    "nn.window": DATA_SIZED + " (its length is a run-time scalar)",
    "nn.mel_weight_matrix": DATA_SIZED + " (its sizes are run-time scalars)",
    "nn.dft": "no llvm kernel yet (DFT)", "nn.stft": "no llvm kernel yet (STFT)",
    "nn.conv": "f16 convolution: the llvm kernel (kernels/conv.py) is f32/f64 only",
    "nn.bernoulli": "random numbers from numpy's generator", "nn.random_uniform": "random numbers from numpy's generator",
    "nn.dropout": "random mask from numpy's generator",
}
for _op in ("nn.loop", "nn.scan", "nn.if", "nn.seq_empty", "nn.seq_length", "nn.seq_construct", "nn.seq_insert",
            "nn.seq_at", "nn.split_to_seq", "nn.opt_has", "nn.opt_get", "nn.concat_from_seq"):
    FALLBACK_REASONS[_op] = CONTROL
for _op in ("nn.string_split", "nn.string_normalizer", "nn.string_concat", "nn.regex_full_match",
            "nn.tfidf_vectorizer", "nn.label_encoder"):
    FALLBACK_REASONS[_op] = NO_STORAGE


def fallback_reason(ops) -> str:
    """'falls back: op, op: why; op: why' for the ops a test runs in the interpreter."""
    why = {}
    for o in ops:
        if o.endswith(("_dyn", "_dynamic")):
            r = DYN
        elif o.startswith("quant."):
            r = "no llvm kernel yet (kernels/quant.py is in progress)"
        else:
            r = FALLBACK_REASONS.get(o, "no llvm kernel yet")
        why.setdefault(r, []).append(o)
    return "falls back: " + "; ".join(f"{', '.join(o)}: {r}" for r, o in why.items())


def recording_backend(backend_name: str):
    """ckir's backend class, on `backend_name`, recording each rep it prepares in PREPARED."""
    from ckir.frontends.onnx.backend import CkirBackend

    class RecordingBackend(CkirBackend):
        @classmethod
        def prepare(cls, model, device="CPU", **kwargs):
            kwargs.setdefault("backend", backend_name)
            rep = super().prepare(model, device, **kwargs)
            PREPARED.append(rep)
            return rep
    return RecordingBackend


def suite_cases(backend_name: str):
    """{test name: (category, unittest case)} for the whole official suite."""
    import onnx.backend.test
    os.environ["CKIR_ONNX_BACKEND"] = backend_name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bt = onnx.backend.test.BackendTest(recording_backend(backend_name), "conformance")
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
    ap.add_argument("--category", action="append", choices=sorted(set(CATEGORIES.values())),
                    help="only this category (repeatable; default all)")
    ap.add_argument("-k", default=None, help="only tests whose name matches this regex")
    ap.add_argument("--failures", action="store_true", help="list each failing test and its error")
    ap.add_argument("--write-expected", metavar="FILE", help="write the failing tests to FILE")
    a = ap.parse_args(argv)
    cases = suite_cases(a.backend)
    if a.k:
        cases = {n: c for n, c in cases.items() if re.search(a.k, n)}
    if a.category:
        cases = {n: c for n, c in cases.items() if c[0] in a.category}
    ops = node_op_types()
    stats = collections.defaultdict(lambda: [0, 0])
    failing = {}
    llvm = a.backend == "llvm"
    native_pass = collections.Counter()       # category -> tests passed with no fallback
    fallback_tests = collections.Counter()    # ckir op -> node tests in which it fell back
    fallback_of = {}                          # passing test -> its fallback ops
    fallback_all = {}                         # any test -> its fallback ops
    t0 = time.time()
    try:
        from tqdm import tqdm
        it = tqdm(sorted(cases.items()), desc="onnx suite", file=sys.stderr, disable=not sys.stderr.isatty())
    except ImportError:
        it = sorted(cases.items())
    for name, (cat, case) in it:
        PREPARED.clear()
        err = run_case(case)
        stats[cat][err is not None] += 1
        if err is not None:
            failing[name] = (cat, err)
        if llvm:
            fb = sorted({o for rep in PREPARED for o in rep.fallback_ops})
            if cat == "node":
                fallback_tests.update(fb)
            if fb:
                fallback_all[name] = fb
            if err is None:
                if fb:
                    fallback_of[name] = fb
                elif PREPARED:
                    native_pass[cat] += 1
    out = io.StringIO()
    total_pass = sum(p for p, _ in stats.values())
    total = sum(p + f for p, f in stats.values())
    print(f"ONNX backend suite on ckir ({a.backend}), {time.time() - t0:.0f} s", file=out)
    for cat in CATEGORIES.values():
        if cat in stats:
            p, f = stats[cat]
            line = f"  {cat:<18} {p:5d} passed, {f:4d} failed  ({100 * p / max(1, p + f):.1f}%)"
            if llvm:
                n = native_pass[cat]
                line += (f"; {n} natively ({100 * n / max(1, p + f):.1f}%), {p - n} with fallback")
            print(line, file=out)
    print(f"  {'all':<18} {total_pass:5d} passed, {total - total_pass:4d} failed", file=out)
    if llvm and "node" in stats:
        p, f = stats["node"]
        n = native_pass["node"]
        print(f"node tests on llvm: {n} passed natively, {p - n} passed with fallback, {f} failed, "
              f"of {p + f}: {100 * n / max(1, p + f):.1f}% native", file=out)
        if fallback_tests:
            print("fallback ops (node tests in which each ran in the interpreter): " +
                  ", ".join(f"{o} {c}" for o, c in fallback_tests.most_common()), file=out)
    by_op = collections.Counter()
    for name, (cat, _) in failing.items():
        if cat == "node":
            by_op.update(ops.get(name, ["?"]))
    if by_op:
        print("failing node tests by op type: " + ", ".join(f"{o} {n}" for o, n in by_op.most_common()), file=out)
    if a.failures:
        for name, (cat, err) in sorted(failing.items()):
            print(f"  {cat:<18} {name}: {err}", file=out)
        for name, fb in sorted(fallback_of.items()):
            print(f"  passed with fallback: {name}: {', '.join(fb)}", file=out)
    sys.stdout.write(out.getvalue())
    if a.write_expected:
        entries = {name: err[:150] for name, (cat, err) in failing.items()}
        if llvm:
            # native-only runs (tests/test_onnx_conformance.py) fail every test that falls back
            interp = {}
            path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "onnx_expected_failures.txt")
            if os.path.exists(path):
                for line in open(path):
                    name, sep, reason = line.partition("#")
                    if sep and name.strip() and not line.startswith("#"):
                        interp[name.strip()] = reason.strip()
            for name in set(entries) | set(fallback_all):
                if name in fallback_all:
                    entries[name] = fallback_reason(fallback_all[name])
                elif name in interp:
                    entries[name] = "fails on the interpreter too: " + interp[name]
        with open(a.write_expected, "w") as f:
            if llvm:
                f.write("# ONNX node tests that do not pass natively on the llvm backend, one per line: test name  # reason.\n"
                        "# tests/test_onnx_conformance.py runs the node tests with native_only=True (a model that would\n"
                        "# run any op in the interpreter is refused) and these as expected failures; one that starts\n"
                        "# passing fails the suite, so this list only shrinks. Regenerate with\n"
                        "#   python benchmarks/onnx_conformance.py --backend llvm --category node --write-expected FILE\n\n")
            for name, reason in sorted(entries.items()):
                f.write(f"{name}  # {reason}\n")


if __name__ == "__main__":
    main()
