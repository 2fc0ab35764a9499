"""The LLVM data movement kernels (backends/llvm/kernels/movement.py) against the interpreter:
transpose (row path and cache-blocked path, every perm of small ranks), expand/broadcast_like,
concat, split/split_like, slice (ONNX semantics, negative steps, clamping), gather (the
embedding lookup included), gather_elements, pad (constant/reflect/edge), tile and arange, on
odd sizes (1, 3, 17, 1000), empty tensors, symbolic dims (one compile for every size), large
tensors and every dtype the backend stores, on every target this CPU runs.

Tolerance: none. Data movement copies bytes, so results must equal the interpreter's bit for
bit (NaN payloads included); arange computes start + i * delta in f64 and rounds once, as the
reference does, so it is exact too. Out-of-range indices must raise the interpreter's
CkirError (the kernels report them through the segment's status word; plan.py reruns the
reference to raise it)."""
import itertools

import ml_dtypes
import numpy as np
import pytest

import ckir
from ckir.backends.llvm.codegen import find_emitter
from ckir.backends.llvm.plan import emit
from ckir.backends.llvm.target import NAMES, runnable
from ckir.errors import CkirError
from opcheck import one_op_module

TARGETS = [t for t in NAMES if runnable(t)]
INT64_MAX, INT64_MIN = 2**63 - 1, -2**63
DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16, np.int64, np.int32, np.int16, np.int8,
          np.uint8, np.uint16, np.uint32, np.uint64, np.bool_]


def rand(shape, dtype=np.float32, seed=0):
    """Random bits of `dtype` (any pattern: NaNs with payloads, subnormals), bools 0/1."""
    r = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return r.random(shape) < 0.5
    return r.integers(0, 256, size=(*shape, dtype.itemsize), dtype=np.uint8).view(dtype).reshape(shape)


def same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    assert np.array_equal(np.ascontiguousarray(a).reshape(-1).view(np.uint8),
                          np.ascontiguousarray(b).reshape(-1).view(np.uint8))


def run_both(m, xs, target):
    """(interpreter outputs or error, llvm outputs or error)."""
    out = []
    for kw in ({}, {"backend": "llvm", "target": target, "cache": False}):
        try:
            out.append(ckir.compile(m, **kw)(*xs))
        except CkirError as e:
            out.append(e)
    return out


def check(name, arrays, targets=TARGETS, **attrs):
    m, op, xs = one_op_module(ckir.get_op(name), arrays, attrs)
    assert find_emitter(op) is not None, f"{name} {attrs} has no native kernel"
    for t in targets:
        want, got = run_both(m, xs, t)
        if isinstance(want, Exception):
            assert isinstance(got, CkirError) and str(got) == str(want), (got, want)
            continue
        assert not isinstance(got, Exception), got
        for k in want:
            same(got[k], want[k])


def check_error(name, arrays, match, **attrs):
    m, op, xs = one_op_module(ckir.get_op(name), arrays, attrs)
    assert find_emitter(op) is not None
    for t in TARGETS:
        want, got = run_both(m, xs, t)
        assert isinstance(want, CkirError) and match in str(want), want
        assert isinstance(got, CkirError) and str(got) == str(want), (got, want)


# --- transpose -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (3, 1), (3, 17), (17, 3), (17, 1000), (1000, 17), (67, 131),
                                   (64, 128), (0, 5), (5, 0)])
def test_transpose_2d(shape):
    check("nn.transpose", [rand(shape)])


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("shape", [(3, 17, 5), (2, 70, 33), (1, 17, 1), (4, 0, 3)])
def test_transpose_every_perm_3d(shape, perm):
    check("nn.transpose", [rand(shape, seed=len(shape))], perm=list(perm))


@pytest.mark.parametrize("perm", list(itertools.permutations(range(4))))
def test_transpose_every_perm_4d(perm):
    check("nn.transpose", [rand((2, 3, 17, 9))], perm=list(perm))


@pytest.mark.parametrize("shape,perm", [((2, 17, 3, 33), [0, 2, 1, 3]), ((2, 17, 3, 33), [0, 2, 3, 1]),
                                        ((8, 128, 12, 64), [0, 2, 1, 3]), ((2, 64, 4, 32), [0, 2, 3, 1]),
                                        ((3, 5, 1, 7, 2), [4, 2, 0, 3, 1]), ((), None), ((1, 1, 1), [2, 0, 1]),
                                        ((2, 3, 4), None), ((1023, 1025), [1, 0])])
def test_transpose_attention_and_corners(shape, perm):
    check("nn.transpose", [rand(shape)], perm=perm)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_transpose_every_dtype(dtype):
    # blocked path (with and without edge tiles), row path, batched blocked path
    for shape, perm in (((70, 45), [1, 0]), ((128, 64), [1, 0]), ((200, 300), [1, 0]), ((3, 5, 7), [1, 0, 2]),
                        ((3, 33, 40), [0, 2, 1])):
        check("nn.transpose", [rand(shape, dtype)], perm=perm)


def test_transpose_big():
    check("nn.transpose", [rand((1000, 3000))], perm=[1, 0])
    check("nn.transpose", [rand((4, 300, 12, 64))], perm=[0, 2, 1, 3])


# --- expand / broadcast_like -----------------------------------------------------------------------------
@pytest.mark.parametrize("src,shape", [((3, 1), (3, 4)), ((), (2, 3)), ((4,), (2, 3, 4)), ((1, 1), (5, 1)),
                                       ((2, 1, 3), (2, 4, 3)), ((1,), (0,)), ((3, 1, 17), (3, 5, 17)),
                                       ((1, 1000), (3, 1000)), ((1000, 1), (1000, 3)), ((2, 1), (1, 5)),
                                       ((17,), (1,)), ((1, 3, 1, 2), (4, 3, 5, 2))])
def test_expand(src, shape):
    check("nn.expand", [rand(src)], shape=list(shape))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_broadcast_like_every_dtype(dtype):
    check("nn.broadcast_like", [rand((3, 1, 5), dtype), rand((2, 3, 4, 5), np.int8)])
    check("nn.broadcast_like", [rand((), dtype), rand((17,), np.bool_)])


# --- concat / split -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shapes,axis", [([(2, 3), (4, 3)], 0), ([(2, 1, 3), (2, 4, 3), (2, 2, 3)], -2),
                                         ([(3,), (0,), (2,)], 0), ([(2, 5)], 1), ([(17, 1), (17, 2), (17, 1000)], 1),
                                         ([(3, 0, 2), (3, 0, 2)], 1), ([(0, 4), (0, 4)], 1),
                                         ([(1, 3)] * 10, 0), ([(2, 3, 1)] * 7, -1), ([(1000, 3), (1000, 17)], -1)])
def test_concat(shapes, axis):
    check("nn.concat", [[rand(s, seed=i) for i, s in enumerate(shapes)]], axis=axis)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_concat_split_every_dtype(dtype):
    check("nn.concat", [[rand((3, 2, 5), dtype, 1), rand((3, 7, 5), dtype, 2)]], axis=1)
    check("nn.split", [rand((3, 9, 5), dtype)], axis=1, sizes=[2, 0, 7])
    check("nn.split_like", [rand((4, 9), dtype), rand((4, 4), np.int8), rand((4, 5), np.float32)], axis=-1)


@pytest.mark.parametrize("shape,axis,sizes", [((5, 3), 0, [2, 3]), ((2, 7), -1, [1, 0, 4, 2]), ((4,), 0, [4]),
                                              ((3, 1000), 1, [1, 999]), ((1000, 3), 1, [1, 1, 1]),
                                              ((0, 6), 1, [3, 3]), ((2, 17, 3), 1, [5, 5, 5, 2])])
def test_split(shape, axis, sizes):
    check("nn.split", [rand(shape)], axis=axis, sizes=sizes)


def test_concat_big():
    check("nn.concat", [[rand((512, 1024), seed=i) for i in range(3)]], axis=1)
    check("nn.concat", [[rand((300, 1000), seed=i) for i in range(3)]], axis=0)


# --- slice --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,starts,ends,axes,steps", [
    ((5, 6), [1, 0], [4, 6], None, None),
    ((4, 7), [-1], [INT64_MIN], [1], [-2]),
    ((6, 5), [0, INT64_MAX], [INT64_MAX, -4], [-2, 1], [2, -1]),
    ((5,), [-100], [100], None, None),
    ((6,), [-10], [INT64_MIN], None, [-1]),
    ((3, 4, 5), [3, 1], [0, 100], [2, 0], [-3, 3]),
    ((3, 4), [2], [1], [0], None),
    ((17, 1000), [3, 1], [-2, 999], [0, 1], [5, 7]),
    ((1000,), [999], [INT64_MIN], None, [-1]),
    ((2, 3, 17, 9), [1, 2], [3, 9], [1, 3], [1, 1]),
    ((2, 3, 17, 9), [INT64_MAX], [INT64_MIN], [2], [-4]),
    ((0, 5), [1], [4], [1], None),
    ((1, 5, 1), [0, 4], [1, -6], [0, 1], [1, -1]),
])
def test_slice(shape, starts, ends, axes, steps):
    check("nn.slice", [rand(shape)], starts=starts, ends=ends, axes=axes, steps=steps)


def test_slice_random():
    r = np.random.default_rng(7)
    picks = [-INT64_MAX, INT64_MIN, INT64_MAX, -9, -3, -1, 0, 1, 2, 5, 17]
    for case in range(30):
        rank = int(r.integers(1, 5))
        shape = tuple(int(d) for d in r.choice([1, 2, 3, 5, 8], rank))
        n = int(r.integers(1, rank + 1))
        axes = [int(a) - rank * int(r.integers(0, 2)) for a in r.permutation(rank)[:n]]
        starts = [int(r.choice(picks)) for _ in range(n)]
        ends = [int(r.choice(picks)) for _ in range(n)]
        steps = [int(r.choice([-3, -2, -1, 1, 2, 4])) for _ in range(n)]
        check("nn.slice", [rand(shape, seed=case)], starts=starts, ends=ends, axes=axes, steps=steps)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_slice_every_dtype(dtype):
    check("nn.slice", [rand((5, 9), dtype)], starts=[-1, 1], ends=[INT64_MIN, 8], steps=[-2, 3])
    check("nn.slice", [rand((5, 9), dtype)], starts=[1], ends=[4], axes=[0])


# --- gather -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,idx,axis", [
    ((5, 3), [0, -1, 2, 2], 0), ((2, 4, 3), [[3, 0], [-4, 1]], 1), ((4, 3), 2, -1), ((6,), [5, 0], 0),
    ((3, 2), [-3], 0), ((17, 1000), [16, 0, -17, 3], 0), ((3, 17), [[1, 2, 3], [-1, -2, -3]], 1),
    ((1000,), list(range(-1000, 1000, 7)), 0), ((2, 5, 1), [4, 4, 0], 1), ((5, 3), [], 0),
    ((0, 4), [1, 3], 1), ((3, 0), [2], 0), ((2, 3, 4, 5), [[0, 3], [2, -1]], 2),
])
@pytest.mark.parametrize("itype", [np.int32, np.int64])
def test_gather(shape, idx, axis, itype):
    check("nn.gather", [rand(shape), np.array(idx, itype)], axis=axis)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_gather_every_dtype(dtype):
    check("nn.gather", [rand((7, 5), dtype), np.array([6, -7, 3], np.int64)], axis=0)
    check("nn.gather", [rand((7, 5), dtype), np.array([[4, -5], [0, 1]], np.int32)], axis=1)


def test_gather_embedding():
    table = rand((5000, 300))
    ids = np.random.default_rng(1).integers(-5000, 5000, 777).astype(np.int64)
    check("nn.gather", [table, ids], axis=0)


@pytest.mark.parametrize("shape,idx,axis", [((5, 3), [0, 7, 2], 0), ((5, 3), [1, -6], 0), ((2, 4), [[4]], 1),
                                            ((0, 4), [7], 1), ((3, 0), [0], 1), ((5,), [2**40], 0)])
@pytest.mark.parametrize("itype", [np.int32, np.int64])
def test_gather_out_of_range_raises_the_interpreters_error(shape, idx, axis, itype):
    if itype is np.int32 and max(abs(i) for i in np.ravel(idx)) >= 2**31:
        pytest.skip("not an int32")
    check_error("nn.gather", [rand(shape), np.array(idx, itype)], "out of range", axis=axis)


def test_gather_error_in_a_segment_is_the_first_failing_op():
    g, b = ckir.new_graph("main", {"x": ckir.TensorType([6, 4], "f32"), "i": ckir.TensorType([3], "i64"),
                                   "j": ckir.TensorType([2], "i32")})
    x, i, j = g.inputs
    y = b.nn.gather(x, i, axis=0)
    z = b.nn.gather(b.nn.add(y, y), j, axis=1)
    g.set_outputs([z], ["z"])
    m = ckir.Module()
    m.add_graph(g)
    xs = rand((6, 4))
    for t in TARGETS:
        f = ckir.compile(m, backend="llvm", target=t, cache=False)
        assert all(k.kind == "native" for k in f._run.plan.steps)          # one segment
        ok = f(xs, np.array([5, -6, 0]), np.array([3, -4], np.int32))["z"]
        same(ok, ckir.compile(m)(xs, np.array([5, -6, 0]), np.array([3, -4], np.int32))["z"])
        for bad_i, bad_j, msg in (([1, 6, 0], [0, 9], "index 6 is out of range for axis 0"),
                                  ([1, 2, 0], [0, -5], "index -5 is out of range for axis 1")):
            with pytest.raises(CkirError, match=msg):
                f(xs, np.array(bad_i), np.array(bad_j, np.int32))
        # the status word is reset: a good call after a bad one works
        same(f(xs, np.array([5, -6, 0]), np.array([3, -4], np.int32))["z"], ok)


# --- gather_elements -------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,idx,axis", [
    ((3, 4), [[0, 3, -1], [2, 2, 0]], 1), ((3, 2, 2), [[[2, 0]], [[-3, 1]]], 0), ((5,), [4, 0, 0], -1),
    ((17, 33), np.random.default_rng(0).integers(-17, 17, (17, 20)), 0),
    ((17, 33), np.random.default_rng(1).integers(-33, 33, (10, 1000)) % 33, 1),
    ((4, 5, 6), np.random.default_rng(2).integers(-5, 5, (3, 7, 6)), 1),
    ((3, 4), np.zeros((0, 4), np.int64), 0),
])
@pytest.mark.parametrize("itype", [np.int32, np.int64])
def test_gather_elements(shape, idx, axis, itype):
    check("nn.gather_elements", [rand(shape), np.array(idx, itype)], axis=axis)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_gather_elements_every_dtype(dtype):
    check("nn.gather_elements", [rand((4, 5), dtype), np.array([[4, -5, 0], [1, 2, 3]], np.int64)], axis=1)


def test_gather_elements_out_of_range():
    check_error("nn.gather_elements", [rand((3, 4)), np.array([[0, 4]], np.int64)], "out of range", axis=1)
    check_error("nn.gather_elements", [rand((3, 4)), np.array([[-4], [0]], np.int32)], "out of range", axis=0)


# --- pad ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("shape,pads", [((2, 3), [1, 0, 2, 3]), ((3, 4), [0, 2, 1, 3]), ((4, 5), [-1, 2, 1, -2]),
                                        ((3,), [5, 4]), ((1,), [3, 2]), ((17, 1000), [2, 3, 1, 4]),
                                        ((3, 2), [-1, -1, 2, 0]), ((2, 3, 17), [1, 0, -2, 0, 2, 19]),
                                        ((5, 1), [0, 0, 0, 0]), ((1, 3, 8, 8), [0, 0, 1, 1, 0, 0, 1, 1])])
def test_pad(shape, pads, mode):
    check("nn.pad", [rand(shape)], pads=pads, mode=mode, value=-1.5)


def test_pad_empty_and_values():
    check("nn.pad", [rand((0, 3))], pads=[1, 1, 1, 1], value=2.0)
    check("nn.pad", [rand((2, 3))], pads=[0, -3, 0, 0], value=2.0)
    check("nn.pad", [rand((2, 2), np.int32)], pads=[1, 1, 0, 0], value=7.0)
    check("nn.pad", [rand((2, 2), np.int8)], pads=[1, 1, 0, 0], value=-3.7)
    check("nn.pad", [rand((2, 2), np.bool_)], pads=[1, 1, 0, 0], value=1.0)
    # the reference fails on a 0-d tensor (np.pad wants integral widths): no kernel, same error
    _, op, _ = one_op_module(ckir.get_op("nn.pad"), [rand((), np.float32)], {"pads": []})
    assert find_emitter(op) is None


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_pad_every_dtype(dtype):
    for mode in ("constant", "reflect", "edge"):
        check("nn.pad", [rand((3, 5), dtype)], pads=[2, 7, 1, -1], mode=mode, value=1.0)


# --- tile / arange ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,repeats", [((2, 3), [2, 3]), ((3, 1, 2), [1, 4, 0]), ((4,), [3]), ((), []),
                                           ((17, 3), [1, 1000]), ((1, 1000), [3, 1]), ((3, 1, 17), [2, 5, 2]),
                                           ((0, 3), [2, 2])])
def test_tile(shape, repeats):
    check("nn.tile", [rand(shape)], repeats=repeats)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_tile_every_dtype(dtype):
    check("nn.tile", [rand((2, 3), dtype)], repeats=[3, 2])


@pytest.mark.parametrize("dtype", ["f32", "f64", "f16", "bf16", "i64", "i32", "i16", "i8", "u8", "u16", "u32",
                                   "u64"])
@pytest.mark.parametrize("start,limit,delta", [(0, 5, 1), (1, 2, 0.3), (5, -4, -2), (3, 1, 1), (-1.5, 1, 0.5),
                                               (0, 1000, 1), (0.1, 77.7, 0.037), (-20, 20, 3)])
def test_arange(dtype, start, limit, delta):
    d = ckir.dtypes.dtype(dtype)
    if d.is_int and not all(float(v).is_integer() for v in (start, limit, delta)):
        pytest.skip("int ranges need whole numbers")
    if d.kind == "u" and min(start, limit) < 0:
        pytest.skip("negative values wrap; not a meaningful unsigned range")
    check("nn.arange", [], start=start, limit=limit, delta=delta, dtype=dtype)


# --- symbolic dims: one compile, every size --------------------------------------------------------------
def _module(inputs, build):
    g, b = ckir.new_graph("main", {k: ckir.TensorType(*v) for k, v in inputs.items()})
    outs = build(b, *g.inputs)
    g.set_outputs(outs, [f"y{i}" for i in range(len(outs))])
    m = ckir.Module()
    m.add_graph(g)
    return m


def test_symbolic_dims_one_compile_every_size():
    def build(b, x, ids, e):
        t = b.nn.transpose(x, perm=[1, 0])                                   # [7, n]
        s = b.nn.slice(x, starts=[-1, 1], ends=[INT64_MIN, 6], steps=[-2, 2])   # [?, 3]
        c = b.nn.concat([x, x, b.nn.slice(x, starts=[1], ends=[INT64_MAX])], axis=0)
        gt = b.nn.gather(x, ids, axis=0)                                      # [t, 7]
        g1 = b.nn.gather(t, ids, axis=1)                                      # [7, t]: inner 1
        ex = b.nn.broadcast_like(e, x)                                        # e: [k, 1] -> [n, 7]
        p = b.nn.pad(x, pads=[2, 1, 3, 0], mode="reflect")
        tl = b.nn.tile(x, repeats=[2, 3])
        return [t, s, c, gt, g1, ex, p, tl]
    m = _module({"x": (["n", 7], "f32"), "ids": (["t"], "i64"), "e": (["k", 1], "f32")}, build)
    ref = ckir.compile(m)
    for tgt in TARGETS:
        f = ckir.compile(m, backend="llvm", target=tgt, cache=False)
        assert all(s.kind != "ref" for s in f._run.plan.steps)
        for n, t in ((1, 1), (3, 5), (17, 2), (1000, 33)):
            r = np.random.default_rng(n)
            x = rand((n, 7), seed=n)
            ids = r.integers(-n, n, t)
            for k in (1, n):
                e = rand((k, 1), seed=k)
                want, got = ref(x, ids, e), f(x, ids, e)
                for key in want:
                    same(got[key], want[key])
        with pytest.raises(CkirError, match="out of range"):
            f(rand((4, 7)), np.array([4]), rand((1, 1)))


def test_symbolic_split_like_and_expand():
    def build(b, x, a):
        parts = b.create("nn.split_like", [x, a, a], {"axis": 0}).results
        return [*parts, b.nn.expand(a, shape=[3, 1, 5]), b.nn.expand(a, shape=[3, "m", 5])]
    m = _module({"x": (["m2", 5], "f32"), "a": (["m", 5], "f32")}, build)
    ref = ckir.compile(m)
    for tgt in TARGETS:
        f = ckir.compile(m, backend="llvm", target=tgt, cache=False)
        # an expand to a shape naming a dim is sized by the interpreter (plan.py does not bind
        # attribute dims), so it falls back
        assert [s.kind for s in f._run.plan.steps][-1] == "ref"
        for mm in (0, 1, 4, 300):
            xs = (rand((2 * mm, 5), seed=mm), rand((mm, 5), seed=mm + 1))
            want, got = ref(*xs), f(*xs)
            for key in want:
                same(got[key], want[key])


def test_symbolic_split_checks_the_sizes():
    m = _module({"x": (["n", 3], "f32")},
                lambda b, x: list(b.create("nn.split", [x], {"axis": 0, "sizes": [2, 3]}).results))
    for tgt in TARGETS:
        f = ckir.compile(m, backend="llvm", target=tgt, cache=False)
        x = rand((5, 3))
        got, want = f(x), ckir.compile(m)(x)
        for key in want:
            same(got[key], want[key])
        for n in (4, 6, 1000):
            # plan.py's shape rule catches it before the kernel (whose own check is a backstop)
            want, got = run_both(m, [rand((n, 3))], tgt)
            for e in (want, got):
                assert isinstance(e, CkirError) and "add up to 5" in str(e), e


def test_kernel_backstops_report_through_the_status_word():
    """Called directly with sizes the shape rule would refuse, the kernels report instead of
    reading out of bounds."""
    import ctypes
    m = _module({"x": (["n", 3], "f32")},
                lambda b, x: list(b.create("nn.split", [x], {"axis": 0, "sizes": [2, 3]}).results))
    f = ckir.compile(m, backend="llvm", cache=False)
    plan = f._run.plan
    step = next(s for s in plan.steps if s.kind == "native")
    x, y0, y1 = np.zeros((4, 3), np.float32), np.zeros((2, 3), np.float32), np.zeros((3, 3), np.float32)
    ptrs = (ctypes.c_void_p * 3)(*[a.ctypes.data for a in (x, y0, y1)])
    dims = np.zeros(plan.n_dims + 1, np.int64)
    dims[plan.dim_index[(plan.graph.inputs[0], 0)]] = 4
    step.fn(ctypes.addressof(ptrs), dims.ctypes.data)
    assert dims[plan.n_dims] == 1                     # op 1 of the segment failed


# --- cross-target code ------------------------------------------------------------------------------------
@pytest.mark.parametrize("target,needles", [("avx512", ["zmm"]), ("neon", ["zip1", "zip2"]), ("avx2", ["ymm"])])
def test_blocked_transpose_uses_vector_shuffles(target, needles):
    m, _, _ = one_op_module(ckir.get_op("nn.transpose"), [np.zeros((64, 64), np.float32)], {"perm": [1, 0]})
    asm = emit(m, target=target, kind="asm")
    for n in needles:
        assert n in asm, (target, n)


@pytest.mark.parametrize("target", ["avx512", "neon", "scalar"])
def test_every_movement_op_compiles_for_other_targets(target):
    ops = [("nn.transpose", [np.zeros((5, 40, 33), np.int8)], {"perm": [2, 0, 1]}),
           ("nn.gather", [np.zeros((9, 4), np.float16), np.array([1], np.int32)], {}),
           ("nn.gather_elements", [np.zeros((9, 4)), np.zeros((2, 4), np.int64)], {}),
           ("nn.pad", [np.zeros((3, 4), np.int64)], {"pads": [1, 2, 3, 4], "mode": "reflect"}),
           ("nn.concat", [[np.zeros((2, 2)), np.zeros((2, 1))]], {"axis": 1}),
           ("nn.slice", [np.zeros((5, 5), np.uint16)], {"starts": [4], "ends": [INT64_MIN], "steps": [-2]}),
           ("nn.tile", [np.zeros((2, 3), np.bool_)], {"repeats": [2, 2]})]
    for name, arrays, attrs in ops:
        m, _, _ = one_op_module(ckir.get_op(name), arrays, attrs)
        assert emit(m, target=target, kind="asm")
