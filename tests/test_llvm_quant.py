"""quant.dequantize, quant.get_rows and quant.matmul on the LLVM backend against the interpreter:
every GGML block type on every target this CPU runs, odd N (1, 3, 17, 100), M (0, 1, 2, 7, 64
and 70, which crosses a 64-row activation chunk) through one compile with a symbolic M, f16/bf16
activations, out-of-range ids, what falls back to the interpreter, and the code for targets this
CPU cannot run (AVX-512, NEON) as assembly.

Tolerances:
- dequantize / get_rows: bit-identical (the kernel repeats the reference's f32 operations).
- matmul act="f32": the error bound of a K-term f32 dot product on exactly decoded weights,
  |got - want| <= 2*K*u*(|x| @ |W|^T) (u = 2^-24), as in test_llvm_matmul.py.
- matmul act="q8": both sides quantize the activations identically and form the same integer
  dot products; they differ only in how the f32 block terms are rounded and summed: the kernel
  converts each block's 8 integer lanes to f32, multiplies by d_w*d_a with fmuladd and sums
  over the nb blocks per lane, then over the lanes; the reference sums exact-in-f64 block terms.
  So |got - want| <= 2*(nb + 10)*u*S with S = sum over blocks of |d_w*d_a| * sum|sc*q*qa| +
  |dmin_w*d_a| * sum|mn*bsum| + |m*s| (the terms' magnitudes before any cancellation).
- f16/bf16 results: one ulp of the result type on top (two f32 values within the bound may round
  to neighbouring f16/bf16 values).
"""
import ml_dtypes
import numpy as np
import pytest
from ckir.backends.llvm.codegen import find_emitter
from ckir.backends.llvm.plan import emit
from ckir.backends.llvm.target import NAMES, runnable
from ckir.dialects.quant import ggml

import ckir
from ckir import dtypes as dt
from ckir.errors import CkirError

TARGETS = [t for t in NAMES if runnable(t)]
TYPES = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_k"]
U = 2.0 ** -24
NS = (1, 3, 17, 100)
MS = (1, 2, 7, 64, 70, 0)
EPS_LOW = {"f16": 2.0 ** -10, "bf16": 2.0 ** -7}
NP = {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16}


def _k(name):
    return 3 * dt.dtype(name).block_size


def _module(g):
    m = ckir.Module()
    m.add_graph(g)
    return m


def q8_bound(x, w, d):
    """2*(nb + 10)*u*S for act="q8" (see the module doc)."""
    q, sc, mn, dw, mw, gsz = ggml._int_parts(np.ascontiguousarray(w).reshape(-1, d.block_bytes), d)
    bs, n = d.block_size, w.shape[0]
    kb = w.shape[1] // d.block_bytes
    qa, da, sa = ggml.quantize_act(x.astype(np.float32), bs)
    r = x.shape[0]
    q = np.abs(q.reshape(n, kb, bs // gsz, gsz).astype(np.float64))
    qa64 = qa.reshape(r, kb, bs // gsz, gsz).astype(np.float64)
    isum = np.einsum("nbsg,rbsg,nbs->rnb", q, np.abs(qa64), np.abs(sc.reshape(n, kb, -1).astype(np.float64)))
    s = np.abs(dw.reshape(n, kb)[None] * da[:, None].astype(np.float64)) * isum
    if mw is not None:
        mw = mw.reshape(n, kb).astype(np.float64)
        if mn is None:
            s += np.abs(mw[None] * sa[:, None])
        else:
            msum = np.einsum("nbs,rbs->rnb", mn.reshape(n, kb, -1).astype(np.float64), np.abs(qa64.sum(-1)))
            s += np.abs(mw[None] * da[:, None]) * msum
    return 2 * (kb + 10) * U * s.sum(-1) + 1e-30


def f32_bound(x, w, d):
    wf = ggml.decode(w, d).astype(np.float64)
    return 2 * x.shape[-1] * U * (np.abs(x.astype(np.float64)) @ np.abs(wf).T) + 1e-30


def check(got, want, bound, what, low=None):
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype, got.shape, want.shape)
    g, w = got.astype(np.float64), want.astype(np.float64)
    if low:
        bound = bound + EPS_LOW[low] * np.abs(w) + 1e-7
    err = np.abs(g - w)
    bad = ~(err <= bound)
    assert not bad.any(), f"{what}: {bad.sum()} of {bad.size} off, worst {err[bad].max()} (bound {bound[bad].max()})"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", TYPES)
def test_matmul_every_type_odd_shapes_symbolic_m(name, target):
    """One graph: x [M, K] with M symbolic, four weights (N = 1, 3, 17, 100), each used with
    act="q8" and act="f32"; run for every M in MS against the interpreter."""
    d = dt.dtype(name)
    K = _k(name)
    r = np.random.default_rng(7)
    inputs = {"x": ckir.TensorType(["M", K], "f32")}
    inputs.update({f"w{n}": ckir.TensorType([n, K], name) for n in NS})
    g, b = ckir.new_graph("main", inputs)
    outs, names = [], []
    for i, n in enumerate(NS):
        for act in ("q8", "f32"):
            outs.append(b.quant.matmul(g.inputs[0], g.inputs[1 + i], act=act))
            names.append(f"{act}_{n}")
    g.set_outputs(outs, names)
    m = _module(g)
    assert all(find_emitter(op) is not None for op in g if op is not g.terminator)
    f = ckir.compile(m, backend="llvm", target=target, cache=False)
    ref = ckir.compile(m)
    ws = [ggml.random_blocks(d, (n, K), r) for n in NS]
    for rows in MS:
        x = r.standard_normal((rows, K)).astype(np.float32)
        got, want = f(x, *ws), ref(x, *ws)
        for n, w in zip(NS, ws):
            what = f"{name} M={rows} N={n} K={K} on {target}"
            if rows:
                check(got[f"q8_{n}"], want[f"q8_{n}"], q8_bound(x, w, d), "q8 " + what)
                check(got[f"f32_{n}"], want[f"f32_{n}"], f32_bound(x, w, d), "f32 " + what)
            else:
                assert got[f"q8_{n}"].shape == (0, n) and got[f"f32_{n}"].shape == (0, n)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("xdt", ["f16", "bf16"])
@pytest.mark.parametrize("name", ["q4_0", "q4_k", "q6_k"])
def test_matmul_low_precision_activations_and_batch_dims(name, xdt, target):
    """f16/bf16 x (act="q8": quantized from f32, result rounded once), rank-3 x and a rank-1 x."""
    d = dt.dtype(name)
    K = _k(name)
    r = np.random.default_rng(3)
    g, b = ckir.new_graph("main", {"x": ckir.TensorType([2, "s", K], xdt), "v": ckir.TensorType([K], xdt),
                                   "w": ckir.TensorType([17, K], name)})
    x_, v_, w_ = g.inputs
    g.set_outputs([b.quant.matmul(x_, w_, act="q8"), b.quant.matmul(v_, w_, act="q8")], ["y", "yv"])
    m = _module(g)
    f = ckir.compile(m, backend="llvm", target=target, cache=False)
    w = ggml.random_blocks(d, (17, K), r)
    for s in (1, 5):
        x = r.standard_normal((2, s, K)).astype(NP[xdt])
        v = r.standard_normal(K).astype(NP[xdt])
        got, want = f(x, v, w), ckir.compile(m)(x, v, w)
        bound = q8_bound(x.reshape(-1, K).astype(np.float32), w, d).reshape(2, s, 17)
        check(got["y"], want["y"], bound, f"{name} {xdt} s={s}", low=xdt)
        check(got["yv"], want["yv"], q8_bound(v.reshape(1, K).astype(np.float32), w, d)[0], f"{name} {xdt} 1-D", low=xdt)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", TYPES)
def test_dequantize_and_get_rows_bit_identical(name, target):
    d = dt.dtype(name)
    K = _k(name)
    r = np.random.default_rng(11)
    V = 9
    g, b = ckir.new_graph("main", {"w": ckir.TensorType([V, K], name), "w3": ckir.TensorType([2, "n", K], name),
                                   "ids": ckir.TensorType([2, 3], "i64"), "ids32": ckir.TensorType(["t"], "i32")})
    w_, w3_, ids_, ids32_ = g.inputs
    outs = [b.quant.dequantize(w_), b.quant.dequantize(w3_, to="f16"), b.quant.dequantize(w_, to="bf16"),
            b.quant.dequantize(w_, to="f64"), b.quant.get_rows(w_, ids_), b.quant.get_rows(w_, ids32_, to="f16")]
    g.set_outputs(outs, ["d", "d3", "dbf", "d64", "rows", "rows16"])
    m = _module(g)
    assert all(find_emitter(op) is not None for op in g if op is not g.terminator)
    f = ckir.compile(m, backend="llvm", target=target, cache=False)
    w = ggml.random_blocks(d, (V, K), r)
    for n, t in ((1, 1), (3, 5), (0, 0)):
        w3 = ggml.random_blocks(d, (2, n, K), r)
        ids = r.integers(0, V, (2, 3)).astype(np.int64)
        ids[0, 0], ids[1, 2] = 0, V - 1
        ids32 = r.integers(0, V, t).astype(np.int32)
        got, want = f(w, w3, ids, ids32), ckir.compile(m)(w, w3, ids, ids32)
        for key in want:
            assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
            assert np.array_equal(got[key].view(np.uint8), want[key].view(np.uint8)), f"{name} {key} on {target}"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("bad", [9, -1, 1 << 40])
def test_get_rows_out_of_range_is_an_error(bad, target):
    g, b = ckir.new_graph("main", {"w": ckir.TensorType([9, 256], "q4_k"), "ids": ckir.TensorType([3], "i64")})
    g.set_outputs([b.quant.get_rows(*g.inputs)], ["y"])
    f = ckir.compile(_module(g), backend="llvm", target=target, cache=False)
    w = ggml.random_blocks(dt.q4_k, (9, 256), np.random.default_rng(0))
    with pytest.raises(CkirError, match=f"row id {bad} is out of range"):
        f(w, np.array([1, bad, 2], np.int64))
    assert f(w, np.array([1, 8, 0], np.int64))["y"].shape == (3, 256)     # still usable after


def test_large_gemv_and_gemm():
    """Sizes where several tasks split N and M crosses chunks: 1 x 4096 and 67 x 4096 on q4_k."""
    K, N = 4096, 300
    r = np.random.default_rng(5)
    g, b = ckir.new_graph("main", {"x": ckir.TensorType(["M", K], "f32"), "w": ckir.TensorType([N, K], "q4_k")})
    g.set_outputs([b.quant.matmul(*g.inputs, act="q8")], ["y"])
    m = _module(g)
    f = ckir.compile(m, backend="llvm", target=TARGETS[-1], threads=2, cache=False)
    w = ggml.random_blocks(dt.q4_k, (N, K), r)
    for rows in (1, 67):
        x = r.standard_normal((rows, K)).astype(np.float32)
        check(f(x, w)["y"], ckir.compile(m)(x, w)["y"], q8_bound(x, w, dt.q4_k), f"M={rows}")


def test_mismatched_k_is_an_error_not_a_crash():
    g, b = ckir.new_graph("main", {"x": ckir.TensorType(["M", "k"], "f32"), "w": ckir.TensorType([3, 256], "q4_k")})
    g.set_outputs([b.quant.matmul(*g.inputs, act="q8")], ["y"])
    f = ckir.compile(_module(g), backend="llvm", target=TARGETS[-1], cache=False)
    w = ggml.random_blocks(dt.q4_k, (3, 256), np.random.default_rng(0))
    with pytest.raises(CkirError, match="K"):
        f(np.ones((2, 128), np.float32), w)


def test_what_falls_back_to_the_interpreter():
    """act="f32" runs natively for f32 x only (f16/bf16/f64 x: the interpreter); act="q8" for
    f32/f16/bf16 (f64 x is exact by definition: the interpreter). Symbolic weight shapes fall
    back too (GGUF weights are always static)."""
    def op_of(xt, wt, act):
        g, b = ckir.new_graph("main", {"x": xt, "w": wt})
        g.set_outputs([b.quant.matmul(*g.inputs, act=act)], ["y"])
        return next(iter(g))
    w = ckir.TensorType([4, 256], "q4_k")
    assert find_emitter(op_of(ckir.TensorType([2, 256], "f32"), w, "f32")) is not None
    assert find_emitter(op_of(ckir.TensorType([2, 256], "f16"), w, "q8")) is not None
    assert find_emitter(op_of(ckir.TensorType([2, 256], "f16"), w, "f32")) is None
    assert find_emitter(op_of(ckir.TensorType([2, 256], "f64"), w, "q8")) is None
    assert find_emitter(op_of(ckir.TensorType([2, 256], "f32"), ckir.TensorType(["n", 256], "q4_k"), "q8")) is None


@pytest.mark.parametrize("target,want", [("avx2", ("vpmaddubsw", "vpmaddwd")),
                                         ("avx512", ("vpmaddubsw", "vpmaddwd")),
                                         ("neon", ("smull",))])
@pytest.mark.parametrize("name", ["q4_0", "q4_k", "q6_k", "q8_0"])
def test_assembly_has_integer_dot_products(name, target, want):
    """Every target compiles (run or not); the q8 kernels use the integer multiply-adds."""
    K = _k(name)
    g, b = ckir.new_graph("main", {"x": ckir.TensorType(["M", K], "f32"), "w": ckir.TensorType([5, K], name),
                                   "ids": ckir.TensorType([2], "i32")})
    x_, w_, ids_ = g.inputs
    g.set_outputs([b.quant.matmul(x_, w_, act="q8"), b.quant.matmul(x_, w_), b.quant.get_rows(w_, ids_),
                   b.quant.dequantize(w_)], ["y", "yf", "r", "d"])
    asm = emit(_module(g), target=target, kind="asm")
    for ins in want:
        assert ins in asm, f"{ins} missing from the {target} code for {name}"


def _ggml():
    """llama.cpp's ggml mul_mat through ctypes (benchmarks/quant_bench.py), or skip."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the oracle) is not installed")
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "quant_bench.py"
    spec = importlib.util.spec_from_file_location("quant_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", [t for t in TYPES if t != "q8_k"])
def test_act_q8_matches_llama_cpp_mul_mat(name):
    """act="q8" is llama.cpp's arithmetic: ggml's own mul_mat (activations quantized to q8_0/q8_1/
    q8_K, integer dot products) agrees with the kernel within the same bound as the reference
    (q8_k weights have no ggml mul_mat)."""
    qb = _ggml()
    lc = qb.GGML()
    d = dt.dtype(name)
    K = _k(name)
    r = np.random.default_rng(13)
    w = ggml.random_blocks(d, (17, K), r)
    f = qb.ckir_matmul(name, 17, K, threads=2, target=TARGETS[-1])
    for rows in (1, 7):
        x = r.standard_normal((rows, K)).astype(np.float32)
        run = lc.matmul(x, w, name, threads=1)
        want = run().copy()
        run.free()
        check(f(x, w), want, 2 * q8_bound(x, w, d), f"{name} M={rows} vs llama.cpp")
