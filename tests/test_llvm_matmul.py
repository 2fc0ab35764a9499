"""nn.matmul on the LLVM backend against the interpreter: the op's declared examples, odd sizes
(1, 3, 17, 1000) on every path (GEMV with M == 1 or N == 1, blocked GEMM with edge tiles, K
slices, several row chunks and column blocks, batch-parallel small matrices), every transpose
combination, batch broadcasting, 1-D operands, symbolic dims (one compile, several sizes),
f64 and f16/bf16, and the code for targets this CPU cannot run (AVX-512, NEON) as assembly.

Tolerance, from the error bound of a K-term dot product: each side's result differs from the
exact sum by at most about K*u*sum|a_i*b_i| (u: unit roundoff of the compute type; both sides
sum in their own order, with or without FMA), so we require
    |got - want| <= 2*K*u*(|A| @ |B|) + tiny.
f16/bf16 are computed in f32 on both sides and rounded once; two f32 values within the bound
above may round to neighbouring f16/bf16 values, so one ulp of the result type is added
(eps_low * |want|)."""
import os

import ml_dtypes
import numpy as np
import pytest

import ckir
from ckir.backends.llvm.codegen import find_emitter
from ckir.backends.llvm.target import NAMES, runnable
from ckir.errors import CkirError
from opcheck import one_op_module

TARGETS = [t for t in NAMES if runnable(t)]
MATMUL = ckir.get_op("nn.matmul")
NP = {"f32": np.float32, "f64": np.float64, "f16": np.float16, "bf16": ml_dtypes.bfloat16}
U = {"f32": 2.0 ** -24, "f64": 2.0 ** -53, "f16": 2.0 ** -24, "bf16": 2.0 ** -24}     # compute type
EPS_LOW = {"f16": 2.0 ** -10, "bf16": 2.0 ** -7}


def _abs_product(a, b, ta, tb):
    a = np.abs(a.astype(np.float64))
    b = np.abs(b.astype(np.float64))
    if ta:
        a = np.swapaxes(a, -1, -2)
    if tb:
        b = np.swapaxes(b, -1, -2)
    return np.matmul(a, b)


def check_close(got, want, a, b, ta=False, tb=False, dtype="f32", what=""):
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype, got.shape, want.shape)
    if want.size == 0:
        return
    k = a.shape[-2] if ta else a.shape[-1]
    bound = 2 * max(k, 1) * U[dtype] * _abs_product(a, b, ta, tb) + 1e-30
    g, w = got.astype(np.float64), want.astype(np.float64)
    if dtype in EPS_LOW:
        bound = bound + EPS_LOW[dtype] * np.abs(w) + 1e-7
    err = np.abs(g - w)
    bad = ~(err <= bound)
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} elements off, worst {err[bad].max()} "
                           f"(bound there {bound[bad][np.argmax(err[bad])]})")


def rand(r, shape, dtype):
    return r.standard_normal(shape).astype(NP[dtype])


def run_one(sa, sb, target, dtype="f32", threads=None, seed=0, **attrs):
    r = np.random.default_rng(seed)
    a, b = rand(r, sa, dtype), rand(r, sb, dtype)
    m, op, xs = one_op_module(MATMUL, [a, b], attrs)
    assert find_emitter(op) is not None
    want = ckir.compile(m)(*xs)["y0"]
    got = ckir.compile(m, backend="llvm", target=target, threads=threads, cache=False)(*xs)["y0"]
    check_close(got, want, a, b, attrs.get("transpose_a", False), attrs.get("transpose_b", False), dtype,
                f"{sa} @ {sb} {attrs} {dtype} on {target}")


def run_many(cases, target, dtype="f32", threads=None, seed=0):
    """Many matmuls in one graph (one compile): cases are (shape_a, shape_b, ta, tb)."""
    r = np.random.default_rng(seed)
    arrays, inputs = [], {}
    for i, (sa, sb, ta, tb) in enumerate(cases):
        a, b = rand(r, sa, dtype), rand(r, sb, dtype)
        arrays.append((a, b))
        inputs[f"a{i}"] = ckir.TensorType(sa, dtype)
        inputs[f"b{i}"] = ckir.TensorType(sb, dtype)
    g, bld = ckir.new_graph("main", inputs)
    ins = list(g.inputs)
    outs = [bld.nn.matmul(ins[2 * i], ins[2 * i + 1], transpose_a=ta, transpose_b=tb)
            for i, (_, _, ta, tb) in enumerate(cases)]
    g.set_outputs(outs, [f"y{i}" for i in range(len(cases))])
    m = ckir.Module()
    m.add_graph(g)
    xs = [x for ab in arrays for x in ab]
    want = ckir.compile(m)(*xs)
    got = ckir.compile(m, backend="llvm", target=target, threads=threads, cache=False)(*xs)
    for i, ((sa, sb, ta, tb), (a, b)) in enumerate(zip(cases, arrays)):
        check_close(got[f"y{i}"], want[f"y{i}"], a, b, ta, tb, dtype,
                    f"case {i}: {sa} @ {sb} ta={ta} tb={tb} {dtype} on {target} threads={threads}")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("i", range(len(MATMUL.examples)))
def test_declared_examples(i, target):
    ex = MATMUL.examples[i]
    arrays = ex.arrays(np.random.default_rng(i))
    m, op, xs = one_op_module(MATMUL, arrays, ex.attrs)
    want = ckir.compile(m)(*xs)["y0"]
    got = ckir.compile(m, backend="llvm", target=target, cache=False)(*xs)["y0"]
    check_close(got, want, xs[0], xs[1], ex.attrs.get("transpose_a", False), ex.attrs.get("transpose_b", False))


def _odd_cases():
    sizes = (1, 3, 17)
    cases = []
    for m in sizes:
        for k in sizes:
            for n in sizes:
                for ta in (False, True):
                    for tb in (False, True):
                        sa = (k, m) if ta else (m, k)
                        sb = (n, k) if tb else (k, n)
                        cases.append((sa, sb, ta, tb))
    return cases


@pytest.mark.parametrize("target", TARGETS)
def test_odd_sizes_every_transpose(target):
    """M, K, N in {1, 3, 17} with all four transpose combinations: GEMV (M or N = 1), edge
    tiles smaller than the register tile, K shorter than a vector."""
    run_many(_odd_cases(), target)


THOUSANDS = [((1000, 17), (17, 3)), ((3, 1000), (1000, 17)), ((17, 3), (3, 1000)), ((1, 1000), (1000, 17)),
             ((1000, 3), (3, 1)), ((17, 1000), (1000, 1)), ((1, 17), (17, 1000)), ((1000, 1000), (1000, 3))]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
def test_sizes_of_a_thousand(ta, tb, target):
    cases = []
    for sa, sb in THOUSANDS:
        m, k = sa
        n = sb[1]
        cases.append(((k, m) if ta else (m, k), (n, k) if tb else (k, n), ta, tb))
    run_many(cases, target)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_blocking_boundaries(threads, target):
    """Shapes that cross the block sizes: several K slices (K > 256, not a multiple), several
    row chunks (M > 1020), a column block edge (N > 4096), transposed packing of full and
    partial panels, and the thread splits for 1, 2 and 3 threads."""
    cases = [((1100, 600), (600, 300), False, False), ((300, 1100), (70, 1100), False, True),
             ((257, 33), (257, 4100), True, False), ((70, 513), (4103, 513), False, True)]
    run_many(cases, target, threads=threads)


@pytest.mark.parametrize("target", TARGETS)
def test_batch_broadcasting_and_vectors(target):
    cases = [((2, 1, 5, 7), (3, 7, 4), False, False),        # both sides broadcast
             ((5, 7), (2, 3, 7, 4), False, False),            # a broadcast over b's batch
             ((2, 3, 5, 7), (7, 4), False, False),            # b broadcast
             ((2, 3, 7, 5), (1, 4, 7), True, True),
             ((7,), (2, 3, 7, 4), False, False),              # 1-D a: batched GEMV, M = 1
             ((2, 3, 5, 7), (7,), False, False),              # 1-D b: N = 1
             ((3, 7, 5), (7,), True, False),
             ((7,), (3, 4, 7), False, True),
             ((1000,), (1000,), False, False),                # a dot product
             ((6, 33, 40), (6, 40, 29), False, False),        # batch-parallel small GEMMs
             ((12, 1, 64), (12, 70, 64), False, True),        # attention decode (M = 1 per head)
             ((12, 70, 64), (12, 70, 64), False, True),       # attention scores
             ((2, 300, 20), (20, 300), False, False)]         # two big items, split over threads
    run_many(cases, target)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", ["f64", "f16", "bf16"])
def test_other_dtypes(dtype, target):
    cases = [((3, 17), (17, 1000), False, False), ((1, 300), (300, 77), False, False),
             ((1, 300), (77, 300), False, True), ((300, 77), (77, 1), False, False),
             ((77, 300), (77, 1), True, False), ((130, 600), (40, 600), False, True),
             ((300, 20), (300, 30), True, False), ((4, 17, 33), (33, 9), False, False),
             ((2, 300, 20), (20, 300), False, False)]
    run_many(cases, target, dtype=dtype)


@pytest.mark.parametrize("target", TARGETS)
def test_empty_dims(target):
    """K == 0 gives zeros; M, N or batch == 0 give empty results."""
    cases = [((3, 0), (0, 4), False, False), ((1, 0), (0, 5), False, False), ((4, 0), (0, 1), False, False),
             ((0, 3), (3, 4), False, False), ((3, 4), (4, 0), False, False), ((0, 3, 4), (4, 5), False, False)]
    run_many(cases, target)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("tb", [False, True])
def test_symbolic_dims_one_compile_every_size(tb, target):
    """M (and a batch dim) symbolic: one compile serves M = 1 (GEMV), small and large M."""
    K, N = 70, 90
    g, b = ckir.new_graph("main", {"x": ckir.TensorType(["batch", "m", K], "f32"),
                                   "w": ckir.TensorType([N, K] if tb else [K, N], "f32")})
    g.set_outputs([b.nn.matmul(*g.inputs, transpose_b=tb)], ["y"])
    m = ckir.Module()
    m.add_graph(g)
    f = ckir.compile(m, backend="llvm", target=target, cache=False)
    r = np.random.default_rng(0)
    w = rand(r, (N, K) if tb else (K, N), "f32")
    for bs, rows in ((1, 1), (3, 1), (1, 2), (2, 7), (1, 300), (1, 1100), (5, 33)):
        x = rand(r, (bs, rows, K), "f32")
        got = f(x, w)["y"]
        want = np.matmul(x.astype(np.float64), (w.T if tb else w).astype(np.float64))
        check_close(got, want.astype(np.float32), x, w, False, tb, "f32", f"batch={bs} m={rows}")


@pytest.mark.parametrize("target", TARGETS)
def test_all_dims_symbolic(target):
    g, b = ckir.new_graph("main", {"x": ckir.TensorType(["b", "m", "k"], "f32"),
                                   "w": ckir.TensorType(["k", "n"], "f32")})
    g.set_outputs([b.nn.matmul(*g.inputs)], ["y"])
    m = ckir.Module()
    m.add_graph(g)
    f = ckir.compile(m, backend="llvm", target=target, cache=False)
    r = np.random.default_rng(1)
    for bs, rows, k, n in ((1, 1, 1, 1), (2, 3, 0, 4), (1, 17, 1000, 3), (3, 1, 17, 1000), (2, 40, 300, 1), (1, 300, 300, 300)):
        x, w = rand(r, (bs, rows, k), "f32"), rand(r, (k, n), "f32")
        want = np.matmul(x.astype(np.float64), w.astype(np.float64)).astype(np.float32)
        check_close(f(x, w)["y"], want, x, w, what=f"{bs}x{rows}x{k}x{n}")


def test_mismatched_symbolic_k_is_an_error_not_a_crash():
    g, b = ckir.new_graph("main", {"x": ckir.TensorType(["m", "k1"], "f32"), "w": ckir.TensorType(["k2", 5], "f32")})
    g.set_outputs([b.nn.matmul(*g.inputs)], ["y"])
    m = ckir.Module()
    m.add_graph(g)
    f = ckir.compile(m, backend="llvm", cache=False)
    with pytest.raises(CkirError):
        f(np.ones((3, 4), np.float32), np.ones((6, 5), np.float32))
    np.testing.assert_allclose(f(np.ones((3, 4), np.float32), np.ones((4, 5), np.float32))["y"], 4.0)


def test_narrow_float_types_fall_back():
    """8-bit floats have no kernel (the interpreter runs them)."""
    x = np.ones((2, 3), ml_dtypes.float8_e4m3fn)
    _, op, _ = one_op_module(MATMUL, [x, np.ones((3, 4), ml_dtypes.float8_e4m3fn)], {})
    assert find_emitter(op) is None


@pytest.mark.parametrize("target", TARGETS)
def test_large_shape(target):
    if target == "scalar" and not os.environ.get("CKIR_SLOW_TESTS"):
        pytest.skip("plain code is slow at this size (set CKIR_SLOW_TESTS=1)")
    run_one((512, 1024), (1024, 1536), target, seed=3)
    run_one((1, 4096), (1024, 4096), target, seed=4, transpose_b=True)


# --- targets this CPU cannot run: their code, as assembly ----------------------------------------

def _asm(target, dtype="f32", tb=False):
    from ckir.backends.llvm.plan import emit
    g, b = ckir.new_graph("main", {"x": ckir.TensorType([192, 256], dtype),
                                   "w": ckir.TensorType([512, 256] if tb else [256, 512], dtype)})
    g.set_outputs([b.nn.matmul(*g.inputs, transpose_b=tb)], ["y"])
    m = ckir.Module()
    m.add_graph(g)
    return emit(m, target=target, kind="asm")


def _hot_block(asm, pattern):
    """The basic block with the most instructions matching `pattern` (the microkernel loop)."""
    import re
    blocks, cur = [], []
    for line in asm.splitlines():
        if re.match(r"^\S.*:", line):
            blocks.append(cur)
            cur = []
        cur.append(line)
    blocks.append(cur)
    return max(blocks, key=lambda bl: sum(1 for x in bl if re.search(pattern, x)))


@pytest.mark.parametrize("dtype,count", [("f32", 28), ("f64", 28)])
def test_avx512_microkernel_asm(dtype, count):
    """14 x 32 (f32) / 14 x 16 (f64) tile: 28 zmm FMAs per k step, accumulators in registers."""
    hot = _hot_block(_asm("avx512", dtype), r"vfmadd\d+p[sd]\s.*zmm")
    fmas = [x for x in hot if "vfmadd" in x and "zmm" in x]
    assert len(fmas) % count == 0 and fmas, hot
    assert not any("rsp" in x and "zmm" in x for x in hot), "accumulators spilled"


@pytest.mark.parametrize("dtype,count", [("f32", 24), ("f64", 24)])
def test_neon_microkernel_asm(dtype, count):
    """8 x 12 (f32) / 8 x 6 (f64) tile: 24 fmla by element per k step on q registers."""
    lanes = "4s" if dtype == "f32" else "2d"
    hot = _hot_block(_asm("neon", dtype), rf"fmla\s+v\d+\.{lanes}")
    fmas = [x for x in hot if "fmla" in x]
    assert len(fmas) % count == 0 and fmas, hot
    assert all(f".{lanes}" in x for x in fmas)
    assert not any("[sp" in x for x in hot), "accumulators spilled"


def test_avx2_microkernel_asm():
    """6 x 16 tile: 12 ymm FMAs per k step with broadcasts of A, no spills."""
    hot = _hot_block(_asm("avx2"), r"vfmadd\d+ps\s.*ymm")
    fmas = [x for x in hot if "vfmadd" in x]
    assert len(fmas) % 12 == 0 and fmas
    assert any("vbroadcastss" in x for x in hot)
    assert not any("rsp" in x and "ymm" in x for x in hot), "accumulators spilled"


@pytest.mark.parametrize("target", ["avx512", "neon", "amx"])
@pytest.mark.parametrize("dtype", ["f32", "f64", "f16", "bf16"])
def test_every_path_compiles_for_other_targets(target, dtype):
    """Symbolic batch, M and N: GEMV (both forms), batch-parallel and blocked GEMM code."""
    from ckir.backends.llvm.plan import emit
    g, b = ckir.new_graph("main", {"x": ckir.TensorType(["b", "m", 64], dtype),
                                   "w": ckir.TensorType(["b", "n", 64], dtype),
                                   "v": ckir.TensorType([64, "n"], dtype)})
    x, w, v = g.inputs
    g.set_outputs([b.nn.matmul(x, w, transpose_b=True), b.nn.matmul(x, v),
                   b.nn.matmul(w, x, transpose_a=True, transpose_b=True)], ["y", "z", "u"])
    m = ckir.Module()
    m.add_graph(g)
    asm = emit(m, target=target, kind="asm")
    assert ("zmm" in asm) if target != "neon" else ("fmla" in asm)


@pytest.mark.parametrize("target", ["avx512", "neon"])
def test_half_precision_packing_compiles(target):
    """f16/bf16 operands are widened while packing: vector conversions on these targets."""
    asm16 = _asm(target, "f16", tb=True)
    assert ("vcvtph2ps" in asm16) if target == "avx512" else ("fcvtl" in asm16)
    _asm(target, "bf16", tb=True)
