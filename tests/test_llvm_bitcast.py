"""The LLVM nn.bitcast kernel (backends/llvm/kernels/nn_bitcast.py) against the interpreter:
every same-width pair of 8/16/32/64-bit dtypes, NaN payloads and -0.0 kept bit for bit, to
bool (any nonzero byte is true), sizes 0, 1, 3, 17, 1000 and a symbolic dim. Exact: bits are
copied."""
import ml_dtypes
import numpy as np
import pytest

import ckir
from ckir import Module, TensorType, new_graph
from ckir.backends.llvm.codegen import find_emitter
from ckir.backends.llvm.target import NAMES, runnable

TARGETS = [t for t in NAMES if runnable(t)]
NP = {"i8": np.int8, "u8": np.uint8, "i16": np.int16, "u16": np.uint16, "f16": np.float16,
      "bf16": ml_dtypes.bfloat16, "i32": np.int32, "u32": np.uint32, "f32": np.float32, "i64": np.int64,
      "u64": np.uint64, "f64": np.float64}
BY_BITS = {8: ["i8", "u8"], 16: ["i16", "u16", "f16", "bf16"], 32: ["i32", "u32", "f32"],
           64: ["i64", "u64", "f64"]}


def run(x, src, to, target, shape=None):
    g, b = new_graph("main", {"x": TensorType(shape or x.shape, getattr(ckir.dtypes, src))})
    g.set_outputs([b.nn.bitcast(g.inputs[0], to=getattr(ckir.dtypes, to))], ["y"])
    m = Module("t")
    m.add_graph(g)
    assert all(find_emitter(op) is not None for op in g if op is not g.terminator)
    want = ckir.compile(m)(x)["y"]
    got = ckir.compile(m, backend="llvm", target=target, cache=False)(x)["y"]
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


def raw(n, bits, seed):
    r = np.random.default_rng(seed)
    u = r.integers(0, 1 << 63, n, dtype=np.uint64) * 2 + r.integers(0, 2, n, dtype=np.uint64)
    return u.astype({8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}[bits])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("bits", [8, 16, 32, 64])
def test_every_pair(bits, target):
    for src in BY_BITS[bits]:
        npt = NP[src]
        for n in (0, 1, 3, 17, 1000):
            x = raw(n, bits, n).view(npt)
            for to in BY_BITS[bits] + (["bool"] if bits == 8 else []):
                run(x, src, "bool_" if to == "bool" else to, target)


@pytest.mark.parametrize("target", TARGETS)
def test_nan_payloads_and_symbolic(target):
    x = np.array([0x7FC00001, 0xFFC12345, 0x80000000, 0x7F800000], np.uint32).view(np.float32)
    run(x, "f32", "i32", target)
    run(np.arange(17, dtype=np.uint8) % 3, "u8", "bool_", target, shape=("N",))
    run(np.array([True, False, True]), "bool_", "u8", target)
