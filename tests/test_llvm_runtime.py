"""The native thread pool (backends/llvm/runtime.py) and the plan's runtime behaviour.

The pool tests drive `ckir_parallel_for` from a small native module (below), so 100k jobs take
well under a second and no Python runs inside tasks. Each task adds 1 to its own counter; after
every job the driver checks that every counter equals the number of jobs so far, so a job that
returned before all its tasks ran, a task run twice, or a stale claim from an earlier job running
in a later one, all show up as a nonzero count of bad (job, task) pairs.
"""
import ctypes
import threading
import tracemalloc

import numpy as np
import pytest
from test_arena import mlp_train_module

import ckir
from ckir.backends.llvm import jit
from ckir.backends.llvm.runtime import Runtime
from ckir.backends.llvm.target import make_target

DRIVER = r"""
declare void @ckir_parallel_for(ptr, ptr, i64, i32)
declare i64 @pthread_self()

; ctx: { ptr counts, i64 work, ptr tids, i64 job }; task i of job r spins ((i + r) % 7) * work times
; (so which thread gets the longest task changes from job to job), then records its thread
define void @task(ptr %ctx, i64 %i) {
entry:
  %counts = load ptr, ptr %ctx
  %wp = getelementptr i64, ptr %ctx, i64 1
  %work = load i64, ptr %wp
  %tp = getelementptr i64, ptr %ctx, i64 2
  %tids = load ptr, ptr %tp
  %jp = getelementptr i64, ptr %ctx, i64 3
  %job = load i64, ptr %jp
  %ij = add i64 %i, %job
  %m = urem i64 %ij, 7
  %iters = mul i64 %m, %work
  %sink = alloca i64
  store volatile i64 0, ptr %sink
  br label %loop
loop:
  %k = phi i64 [ 0, %entry ], [ %k1, %body ]
  %more = icmp slt i64 %k, %iters
  br i1 %more, label %body, label %out
body:
  %v = load volatile i64, ptr %sink
  %v1 = add i64 %v, 1
  store volatile i64 %v1, ptr %sink
  %k1 = add i64 %k, 1
  br label %loop
out:
  %p = getelementptr i64, ptr %counts, i64 %i
  %o = atomicrmw add ptr %p, i64 1 monotonic
  %self = call i64 @pthread_self()
  %tq = getelementptr i64, ptr %tids, i64 %i
  store atomic i64 %self, ptr %tq monotonic, align 8
  ret void
}

; two tasks that must run on two threads: task 0 waits (bounded) until task 1 has started, and
; task 1 then runs long, so a caller that returns before all tasks are done is caught every time
define void @pair_task(ptr %ctx, i64 %i) {
entry:
  %sp = getelementptr i64, ptr %ctx, i64 4
  %started = load ptr, ptr %sp
  %o = atomicrmw add ptr %started, i64 1 seq_cst
  %first = icmp eq i64 %i, 0
  br i1 %first, label %waitloop, label %long
waitloop:
  %k = phi i64 [ 0, %entry ], [ %k1, %waitloop ]
  %s = load atomic i64, ptr %started seq_cst, align 8
  %k1 = add i64 %k, 1
  %both = icmp sge i64 %s, 2
  %given_up = icmp sgt i64 %k1, 300000000
  %stop = or i1 %both, %given_up
  br i1 %stop, label %fin, label %waitloop
long:
  %wp = getelementptr i64, ptr %ctx, i64 1
  %work = load i64, ptr %wp
  %sink = alloca i64
  store volatile i64 0, ptr %sink
  br label %spin
spin:
  %j = phi i64 [ 0, %long ], [ %j1, %spin ]
  %v = load volatile i64, ptr %sink
  %v1 = add i64 %v, 1
  store volatile i64 %v1, ptr %sink
  %j1 = add i64 %j, 1
  %more = icmp slt i64 %j1, %work
  br i1 %more, label %spin, label %fin
fin:
  %counts = load ptr, ptr %ctx
  %p = getelementptr i64, ptr %counts, i64 %i
  %o2 = atomicrmw add ptr %p, i64 1 monotonic
  %self = call i64 @pthread_self()
  %tp = getelementptr i64, ptr %ctx, i64 2
  %tids = load ptr, ptr %tp
  %tq = getelementptr i64, ptr %tids, i64 %i
  store atomic i64 %self, ptr %tq monotonic, align 8
  ret void
}

; `jobs` jobs of n tasks; returns how many (job, task) counters were wrong right after a job
define i64 @drive(ptr %taskfn, ptr %counts, ptr %tids, ptr %started, i64 %n, i64 %jobs, i32 %threads, i64 %work) {
entry:
  %ctx = alloca [5 x i64]
  %sq = getelementptr i64, ptr %ctx, i64 4
  store ptr %started, ptr %sq
  store ptr %counts, ptr %ctx
  %wp = getelementptr i64, ptr %ctx, i64 1
  store i64 %work, ptr %wp
  %tp = getelementptr i64, ptr %ctx, i64 2
  store ptr %tids, ptr %tp
  br label %job
job:
  %r = phi i64 [ 0, %entry ], [ %r1, %checked ]
  %bad = phi i64 [ 0, %entry ], [ %bad2, %checked ]
  %jmore = icmp slt i64 %r, %jobs
  br i1 %jmore, label %run, label %done
run:
  %jq = getelementptr i64, ptr %ctx, i64 3
  store i64 %r, ptr %jq
  store atomic i64 0, ptr %started seq_cst, align 8
  call void @ckir_parallel_for(ptr %taskfn, ptr %ctx, i64 %n, i32 %threads)
  %r1 = add i64 %r, 1
  %any = icmp sgt i64 %n, 0
  br i1 %any, label %check, label %checked
check:
  %i = phi i64 [ 0, %run ], [ %i1, %check ]
  %b = phi i64 [ %bad, %run ], [ %b1, %check ]
  %p = getelementptr i64, ptr %counts, i64 %i
  %c = load atomic i64, ptr %p monotonic, align 8
  %wrong = icmp ne i64 %c, %r1
  %w = zext i1 %wrong to i64
  %b1 = add i64 %b, %w
  %i1 = add i64 %i, 1
  %imore = icmp slt i64 %i1, %n
  br i1 %imore, label %check, label %checked
checked:
  %bad2 = phi i64 [ %b1, %check ], [ %bad, %run ]
  br label %job
done:
  ret i64 %bad
}
"""


@pytest.fixture(scope="module")
def drive():
    rt = Runtime.get()
    rt.ensure_threads(4)
    t = make_target("scalar")
    obj, _ = jit.object_code(DRIVER, t, use_cache=False)
    eng = jit.Engine(obj, t)
    fn = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                          ctypes.c_int64, ctypes.c_int64, ctypes.c_int32, ctypes.c_int64)(eng.address("drive"))
    tasks = {"task": eng.address("task"), "pair": eng.address("pair_task")}

    def run(n, jobs, threads, work=0, task="task"):
        counts = np.zeros(max(n, 1), np.int64)
        tids = np.zeros(max(n, 1), np.int64)
        started = np.zeros(1, np.int64)
        bad = fn(tasks[task], counts.ctypes.data, tids.ctypes.data, started.ctypes.data, n, jobs, threads, work)
        return bad, counts[:n], tids[:n]
    run.engine = eng          # keep the code alive
    return run


def test_many_tiny_jobs_back_to_back(drive):
    bad, counts, _ = drive(3, 100_000, 3)
    assert bad == 0 and (counts == 100_000).all()
    bad, counts, _ = drive(2, 100_000, 2)
    assert bad == 0 and (counts == 100_000).all()


def test_more_tasks_than_threads_and_uneven_tasks(drive):
    for n, threads, work in [(64, 2, 0), (64, 3, 2000), (1000, 4, 50), (17, 4, 20000)]:
        bad, counts, _ = drive(n, 200, threads, work)
        assert bad == 0 and (counts == 200).all(), (n, threads, work)


def test_caller_waits_for_tasks_running_on_workers(drive):
    """Each job's task 1 runs on a worker (task 0 holds the caller until it starts) and runs long;
    the caller must not return before it is done."""
    for threads in (2, 3):
        bad, counts, _ = drive(2, 50, threads, 100_000, task="pair")
        assert bad == 0 and (counts == 50).all()


def test_edge_task_counts(drive):
    for n in (0, 1, 2):
        bad, counts, _ = drive(n, 1000, 3)
        assert bad == 0 and (counts == 1000).all(), n


def test_thread_count_is_per_job(drive):
    """A job never uses more threads than it asks for; threads=1 runs on the caller only; a job
    that needs a second thread (the pair task) gets one from the pool."""
    for _ in range(10):
        for threads in (3, 1, 2):
            bad, _, tids = drive(24, 1, threads, 20000)
            assert bad == 0
            assert len(set(tids.tolist())) <= threads
            if threads == 1:
                assert len(set(tids.tolist())) == 1
    distinct = [len(set(drive(2, 1, 3, 1000, task="pair")[2].tolist())) for _ in range(5)]
    assert max(distinct) == 2, "threads=3 never used a worker"


def test_two_python_threads_at_once(drive):
    """Concurrent callers: one gets the pool, the other runs its tasks inline; both correct."""
    results = []

    def worker(threads):
        results.append(drive(32, 3000, threads, 10)[0])
    ts = [threading.Thread(target=worker, args=(th,)) for th in (3, 2, 3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert results == [0, 0, 0]


# --- compiled modules ---------------------------------------------------------------------------
SUM = """module @s {
  graph @main(%x: tensor<[n]xf32>, %y: tensor<[n]xf32>) -> (z: tensor<[n]xf32>) {
    %a = nn.add %x, %y : (tensor<[n]xf32>, tensor<[n]xf32>) -> tensor<[n]xf32>
    %b = nn.mul %a, %x : (tensor<[n]xf32>, tensor<[n]xf32>) -> tensor<[n]xf32>
    %z = nn.sub %b, %y : (tensor<[n]xf32>, tensor<[n]xf32>) -> tensor<[n]xf32>
    ckir.return %z : (tensor<[n]xf32>) -> ()
  }
}
"""


def _want(x, y):
    return (x + y) * x - y


def test_modules_with_different_threads_used_alternately():
    f1 = ckir.compile(ckir.parse(SUM), backend="llvm", threads=1, cache=False)
    f3 = ckir.compile(ckir.parse(SUM), backend="llvm", threads=3, cache=False)
    # each module carries its own count into the pool
    assert "i32 1)" in f1._run.plan.ir_text and "i32 3)" in f3._run.plan.ir_text
    rng = np.random.default_rng(0)
    for i in range(60):
        n = [1, 3, 17, 1000, 100_003][i % 5]
        x, y = rng.standard_normal((2, n)).astype(np.float32)
        for f in (f1, f3):
            np.testing.assert_array_equal(f(x, y)["z"], _want(x, y))


def test_threads_one_never_parallel():
    f = ckir.compile(ckir.parse(SUM), backend="llvm", threads=1, cache=False)
    x = np.arange(300_001, dtype=np.float32)
    np.testing.assert_array_equal(f(x, x)["z"], _want(x, x))


def test_compiled_modules_from_two_python_threads():
    """Documented behaviour: safe. Calls on one module are serialized by a lock in the plan;
    calls on different modules run at once (one of them on the pool, the other inline)."""
    fa = ckir.compile(ckir.parse(SUM), backend="llvm", threads=2, cache=False)
    fb = ckir.compile(ckir.parse(SUM), backend="llvm", threads=3, cache=False)
    rng = np.random.default_rng(1)
    errors = []

    def worker(f, seed):
        r = np.random.default_rng(seed)
        try:
            for _ in range(150):
                n = int(r.integers(1, 200_000))
                x, y = r.standard_normal((2, n)).astype(np.float32)
                z = f(x, y)["z"]
                if not np.array_equal(z, _want(x, y)):
                    errors.append(n)
        except Exception as e:   # noqa: BLE001  (reported below)
            errors.append(e)
    ts = [threading.Thread(target=worker, args=(f, s)) for s, f in enumerate([fa, fa, fb, fb])]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    x, y = rng.standard_normal((2, 10)).astype(np.float32)
    np.testing.assert_array_equal(fa(x, y)["z"], _want(x, y))


# --- the arena: the plan's placements as the native code's memory -----------------------------
# Float tolerance: the llvm kernels and the interpreter's numpy references differ by reassociation
# (vectorized sums, f64 accumulation, vector exp/erf with a few ulps of error), so llvm vs interp is
# compared with rtol 1e-4 / atol 1e-5 on values of order 1. llvm with the arena vs llvm without it
# runs the same kernels on the same data: bit-identical when nothing is computed in place
# (arena{inplace=false}). In place, a kernel's output pointer equals its input pointer, LLVM's
# runtime alias check then picks the scalar loop instead of the vector one, and the scalar math
# (e.g. exp/erf) differs from the vector math by an ulp or so: rtol 1e-5 / atol 1e-6 there.


def _close_to_interp(got, want):
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


def _same_as_plain(got, ref, inplace):
    for k in ref:
        if inplace:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
        else:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


@pytest.mark.parametrize("canary,inplace", [(False, False), (False, True), (True, True)])
def test_arena_training_step_matches_interp(canary, inplace):
    m = mlp_train_module()
    ckir.run_pipeline(m, f"arena{{inplace={str(inplace).lower()}}}")
    f = ckir.compile(m, backend="llvm", cache=False, arena_canary=canary)
    plan = f._run.plan
    assert plan.arena is not None and plan.arena.canary == canary
    plain = ckir.compile(m, backend="llvm", cache=False, arena=False)
    assert plain._run.plan.arena is None
    interp = ckir.compile(m)
    r = np.random.default_rng(1)
    for batch in (32, 5, 1, 32, 5):          # symbolic batch (<= 32): one cached binding per shape set
        x, t = r.standard_normal((batch, 32)).astype(np.float32), r.standard_normal((batch, 8)).astype(np.float32)
        got = f(x, t)
        _close_to_interp(got, interp(x, t))
        _same_as_plain(got, plain(x, t), inplace)
    assert len(plan._bound) == 3


@pytest.fixture(scope="module")
def small_encoder(tmp_path_factory):
    pytest.importorskip("torch")
    from onnx_models import encoder_inputs, encoder_onnx
    p = encoder_onnx(str(tmp_path_factory.mktemp("enc") / "enc.onnx"), layers=2, hidden=64, heads=4, ffn=128,
                     vocab=100, max_pos=128)
    return p, encoder_inputs


@pytest.mark.parametrize("inplace", [False, True])
def test_arena_encoder_matches_interp(small_encoder, inplace):
    path, encoder_inputs = small_encoder
    m = ckir.load(path)
    ckir.run_pipeline(m, f"specialize{{batch=2,seq=16}},canonicalize,cse,dce,arena{{inplace={str(inplace).lower()}}}")
    inputs = encoder_inputs(2, 16)
    want = ckir.compile(m)(**inputs)
    want_arena_interp = ckir.compile(m, arena=True)(**inputs)
    f = ckir.compile(m, backend="llvm", cache=False)
    assert f._run.plan.arena is not None
    plain = ckir.compile(m, backend="llvm", cache=False, arena=False)
    for _ in range(2):
        got = f(**inputs)
        _close_to_interp(got, want)
        _close_to_interp(got, want_arena_interp)
        _same_as_plain(got, plain(**inputs), inplace)
    canary = ckir.compile(m, backend="llvm", cache=False, arena_canary=True)
    np.testing.assert_array_equal(canary(**inputs)["last_hidden_state"], got["last_hidden_state"])


BIG = """module @big {
  graph @main(%x: tensor<512x1024xf32>) -> (s: tensor<f32>) {
    %a = nn.exp %x : (tensor<512x1024xf32>) -> tensor<512x1024xf32>
    %b = nn.mul %a, %x : (tensor<512x1024xf32>, tensor<512x1024xf32>) -> tensor<512x1024xf32>
    %c = nn.tanh %b : (tensor<512x1024xf32>) -> tensor<512x1024xf32>
    %d = nn.add %c, %a : (tensor<512x1024xf32>, tensor<512x1024xf32>) -> tensor<512x1024xf32>
    %s = nn.sum %d : (tensor<512x1024xf32>) -> tensor<f32>
    ckir.return %s : (tensor<f32>) -> ()
  }
}
"""


def _traced_bytes(fn, *args):
    """Peak bytes Python and numpy allocate during one call (tracemalloc sees numpy's data)."""
    fn(*args)                                   # warm: bindings, pointer tables
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn(*args)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_arena_calls_allocate_no_intermediates():
    x = np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32) * 0.1
    m = ckir.parse(BIG)
    ckir.run_pipeline(m, "arena")
    f = ckir.compile(m, backend="llvm", cache=False)
    plain = ckir.compile(m, backend="llvm", cache=False, arena=False)
    one = 512 * 1024 * 4                        # one intermediate: 2 MiB
    assert _traced_bytes(plain, x) >= 2 * one   # the plain plan: an array per value per call
    arena = _traced_bytes(f, x)
    assert arena < 64 * 1024, f"a call allocated {arena} bytes"
    np.testing.assert_allclose(f(x)["s"], plain(x)["s"], rtol=1e-6)


def test_arena_outputs_do_not_alias_the_next_call():
    m = mlp_train_module()
    ckir.run_pipeline(m, "arena")
    f = ckir.compile(m, backend="llvm", cache=False)
    r = np.random.default_rng(2)
    x1, t1, x2, t2 = (r.standard_normal(s).astype(np.float32) for s in [(8, 32), (8, 8), (8, 32), (8, 8)])
    first = f(x1, t1)
    keep = {k: v.copy() for k, v in first.items()}
    f(x2, t2)
    for k, v in keep.items():
        np.testing.assert_array_equal(first[k], v)
    # zero-copy option: outputs are views into the outputs section, overwritten by the next call
    z = ckir.compile(m, backend="llvm", cache=False, copy_outputs=False)
    a = z(x1, t1)["grad.w0"]
    a0 = a.copy()
    z(x2, t2)
    assert not np.array_equal(a, a0)


def test_arena_view_output_of_a_reused_buffer_is_copied():
    text = """module @v {
  graph @main(%x: tensor<64x64xf32>) -> (y: tensor<4096xf32>, z: tensor<64x64xf32>) {
    %a = nn.exp %x : (tensor<64x64xf32>) -> tensor<64x64xf32>
    %y = nn.reshape %a {shape = [4096]} : (tensor<64x64xf32>) -> tensor<4096xf32>
    %b = nn.tanh %x : (tensor<64x64xf32>) -> tensor<64x64xf32>
    %c = nn.mul %b, %b : (tensor<64x64xf32>, tensor<64x64xf32>) -> tensor<64x64xf32>
    %z = nn.add %c, %x : (tensor<64x64xf32>, tensor<64x64xf32>) -> tensor<64x64xf32>
    ckir.return %y, %z : (tensor<4096xf32>, tensor<64x64xf32>) -> ()
  }
}
"""
    m = ckir.parse(text)
    ckir.run_pipeline(m, "arena{order=keep}")
    f = ckir.compile(m, backend="llvm", cache=False)
    x = np.random.default_rng(3).standard_normal((64, 64)).astype(np.float32)
    want = ckir.compile(m)(x)
    _close_to_interp(f(x), want)


def test_arena_canary_names_the_overflowing_value(monkeypatch):
    m = mlp_train_module()
    ckir.run_pipeline(m, "arena")
    f = ckir.compile(m, backend="llvm", cache=False, arena_canary=True)
    plan = f._run.plan
    # corrupt the plan: the first matmul's result starts 16 bytes late, so its kernel writes
    # 16 bytes past the end of its planned place
    mm = next(op for op in plan.ops if op.opdef.name == "nn.matmul")
    plan.arena.addr[mm.results[0]] += 16
    r = np.random.default_rng(1)
    x, t = r.standard_normal((32, 32)).astype(np.float32), r.standard_normal((32, 8)).astype(np.float32)
    with pytest.raises(ckir.CkirError, match=r"arena canary: the bytes after activations buffer \d+ \(8192 bytes "
                                             r"planned\) were overwritten in segment\d+; the buffer holds .*nn\.matmul"):
        f(x, t)
    # the environment variable turns it on too
    monkeypatch.setenv("CKIR_ARENA_CANARY", "1")
    assert ckir.compile(m, backend="llvm", cache=False)._run.plan.arena.canary


def test_arena_plan_too_small_for_the_shapes_is_refused():
    m = mlp_train_module()
    ckir.run_pipeline(m, "arena")
    mm = next(op for op in m.main if op.opdef.name == "nn.matmul")
    sec, off, size, buf = mm.meta["arena.place"][0]
    mm.set_meta("arena.place", [[sec, off, size // 2, buf]])
    f = ckir.compile(m, backend="llvm", cache=False)
    x, t = np.ones((32, 32), np.float32), np.ones((32, 8), np.float32)
    with pytest.raises(ckir.CkirError, match=r"nn\.matmul.*needs 8192 bytes for shape \[32, 64\], the arena planned 4096"):
        f(x, t)
    with pytest.raises(ckir.CkirError, match="has no arena placements"):
        ckir.compile(ckir.parse(SUM), backend="llvm", cache=False, arena=True)


def test_arena_with_state():
    from test_state import KV
    m = ckir.parse(KV)
    ckir.run_pipeline(m, "canonicalize,cse,dce,arena")
    f = ckir.compile(m, backend="llvm", cache=False)
    assert f._run.plan.arena is not None
    ref = ckir.compile(ckir.parse(KV), passes="canonicalize,cse,dce")
    for i in range(4):
        args = (np.full((1, 2), i + 1, np.float32), np.int64(i))
        got, want = f(*args), ref(*args)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    with pytest.raises(ckir.CkirError, match="does not fit"):
        f(np.ones((1, 2), np.float32), np.int64(6))
    np.testing.assert_array_equal(f.state["acc"], ref.state["acc"])


def _inplace_cases():
    from ckir.backends.llvm.codegen import emitter_names
    out = []
    for n in emitter_names():
        od = ckir.get_op(n)
        if "inplace" in od.traits and "elementwise" not in od.traits:
            out += [(od, i) for i in range(len(od.examples))]
    return out


@pytest.mark.parametrize("opdef,i", _inplace_cases(), ids=[f"{o.name}-{i}" for o, i in _inplace_cases()])
def test_arena_inplace_kernels_read_before_they_overwrite(opdef, i):
    """Ops that may write their result over their first operand (softmax, norms, rope, scatter,
    ...): with the arena they do, and the kernel must still match the interpreter."""
    from ckir.backends.llvm.codegen import find_emitter
    ex = opdef.examples[i]
    arrays = ex.arrays(np.random.default_rng(i))
    from opcheck import flat
    xs = flat(arrays)
    types = ex.types(arrays) or [ckir.TensorType(x.shape, x.dtype) for x in xs]
    if types[0].dtype.name not in ("f32", "f64", "i32", "i64"):
        pytest.skip("the first operand is not a type nn.neg copies")
    g, b = ckir.new_graph("main", {f"a{k}": t for k, t in enumerate(types)})
    first = b.nn.neg(b.nn.neg(g.inputs[0]))           # a native intermediate the op may overwrite
    op = b.create(opdef, [first] + list(g.inputs[1:]), ex.attrs)
    if find_emitter(op) is None or op.results[0].type.dtype.name not in ("f32", "f64", "i32", "i64"):
        pytest.skip("no kernel for this instance")
    g.set_outputs([b.nn.neg(op.results[0])] + list(op.results[1:]), [f"y{k}" for k in range(len(op.results))])
    m = ckir.Module("inplace")
    m.add_graph(g)
    ckir.run_pipeline(m, "arena{order=keep}")
    place = {o: o.meta["arena.place"][0][3] for o in m.main if o.meta and "arena.place" in o.meta}
    mine = next(o for o in m.main if o.opdef is opdef)
    if place[mine] != place[first.op]:
        pytest.skip("the plan did not put this result over its operand")
    want = ckir.compile(m)(*xs)
    got = ckir.compile(m, backend="llvm", cache=False)(*xs)
    for k in want:
        if np.issubdtype(want[k].dtype, np.floating):
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
        else:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
