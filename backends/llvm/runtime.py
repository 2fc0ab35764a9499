"""The native runtime: a persistent thread pool, written in LLVM IR and compiled once per process.

Workers are started once (pthreads) and sleep on a futex between jobs. A job is
`ckir_parallel_for(task, ctx, n)`: task(ctx, i) runs for i in [0, n), handed out by an atomic
counter to the calling thread and to the first `threads - 1` workers; the call returns when all
tasks are done. Kernels use it for their outer loops, so a whole graph runs in one native call
with no Python between ops.
"""
from __future__ import annotations

import ctypes
import os
import threading

import llvmlite.binding as llvm

from . import jit
from .target import Target

MAX_WORKERS = 255
_FUTEX = {"x86_64": 202, "aarch64": 98}


def runtime_ir(t: Target) -> str:
    arch = t.triple.split("-")[0]
    sys_futex = _FUTEX.get(arch, 202)
    pause = ("call void @llvm.x86.sse2.pause()" if arch == "x86_64" else "")
    pause_decl = "declare void @llvm.x86.sse2.pause()" if arch == "x86_64" else ""
    return f"""
target triple = "{t.triple}"

@gen = internal global i32 0, align 64
@pending = internal global i32 0, align 64
@next = internal global i64 0, align 64
@task = internal global ptr null
@ctx = internal global ptr null
@ntasks = internal global i64 0
@participants = internal global i32 0
@nworkers = internal global i32 0
@threads = internal global i32 1

declare i64 @syscall(i64, ...)
declare i32 @pthread_create(ptr, ptr, ptr, ptr)
declare i32 @pthread_detach(i64)
{pause_decl}

define internal void @futex_wait(ptr %addr, i32 %val) {{
  %r = call i64 (i64, ...) @syscall(i64 {sys_futex}, ptr %addr, i32 128, i32 %val, ptr null, ptr null, i32 0)
  ret void
}}

define internal void @futex_wake(ptr %addr, i32 %n) {{
  %r = call i64 (i64, ...) @syscall(i64 {sys_futex}, ptr %addr, i32 129, i32 %n, ptr null, ptr null, i32 0)
  ret void
}}

define internal void @run_tasks() {{
entry:
  %fn = load ptr, ptr @task
  %c = load ptr, ptr @ctx
  %n = load i64, ptr @ntasks
  br label %loop
loop:
  %i = atomicrmw add ptr @next, i64 1 acq_rel
  %more = icmp slt i64 %i, %n
  br i1 %more, label %body, label %done
body:
  call void %fn(ptr %c, i64 %i)
  br label %loop
done:
  ret void
}}

define internal ptr @worker(ptr %arg) {{
entry:
  %index = ptrtoint ptr %arg to i32
  %g0 = load atomic i32, ptr @gen acquire, align 4
  br label %wait
wait:
  %seen = phi i32 [ %g0, %entry ], [ %seen, %sleep ], [ %g, %skip ], [ %g, %ran ]
  %spins = phi i32 [ 0, %entry ], [ 0, %sleep ], [ 0, %skip ], [ 0, %ran ]
  br label %spin
spin:
  %k = phi i32 [ %spins, %wait ], [ %k1, %again ]
  %g = load atomic i32, ptr @gen acquire, align 4
  %same = icmp eq i32 %g, %seen
  br i1 %same, label %again, label %work
again:
  %k1 = add i32 %k, 1
  {pause}
  %long = icmp sgt i32 %k1, 20000
  br i1 %long, label %sleep, label %spin
sleep:
  call void @futex_wait(ptr @gen, i32 %seen)
  br label %wait
work:
  %p = load i32, ptr @participants
  %mine = icmp slt i32 %index, %p
  br i1 %mine, label %run, label %skip
skip:
  br label %wait
run:
  call void @run_tasks()
  %old = atomicrmw sub ptr @pending, i32 1 acq_rel
  %last = icmp eq i32 %old, 1
  br i1 %last, label %wake, label %ran
wake:
  call void @futex_wake(ptr @pending, i32 1)
  br label %ran
ran:
  br label %wait
}}

; start workers so that `threads` threads (the caller included) can run jobs
define i32 @ckir_set_threads(i32 %threads) {{
entry:
  %want = sub i32 %threads, 1
  br label %check
check:
  %have = load i32, ptr @nworkers
  %enough = icmp sge i32 %have, %want
  br i1 %enough, label %done, label %spawn
spawn:
  %tid = alloca i64
  %argp = inttoptr i32 %have to ptr
  %rc = call i32 @pthread_create(ptr %tid, ptr null, ptr @worker, ptr %argp)
  %ok = icmp eq i32 %rc, 0
  br i1 %ok, label %started, label %fail
started:
  %t = load i64, ptr %tid
  %d = call i32 @pthread_detach(i64 %t)
  %h1 = add i32 %have, 1
  store i32 %h1, ptr @nworkers
  br label %check
fail:
  ret i32 %rc
done:
  store i32 %threads, ptr @threads
  ret i32 0
}}

define void @ckir_parallel_for(ptr %fn, ptr %c, i64 %n) {{
entry:
  %t = load i32, ptr @threads
  %workers = sub i32 %t, 1
  %nw = sext i32 %workers to i64
  %small = icmp sle i64 %n, 1
  %alone = icmp sle i32 %workers, 0
  %serial = or i1 %small, %alone
  br i1 %serial, label %inline, label %parallel
inline:
  br label %iloop
iloop:
  %i = phi i64 [ 0, %inline ], [ %i1, %ibody ]
  %imore = icmp slt i64 %i, %n
  br i1 %imore, label %ibody, label %idone
ibody:
  call void %fn(ptr %c, i64 %i)
  %i1 = add i64 %i, 1
  br label %iloop
idone:
  ret void
parallel:
  %fewer = icmp slt i64 %n, %nw
  %nm1 = trunc i64 %n to i32
  %nm = sub i32 %nm1, 1
  %p = select i1 %fewer, i32 %nm, i32 %workers
  store ptr %fn, ptr @task
  store ptr %c, ptr @ctx
  store i64 %n, ptr @ntasks
  store atomic i64 0, ptr @next release, align 8
  store i32 %p, ptr @participants
  store atomic i32 %p, ptr @pending release, align 4
  %g = atomicrmw add ptr @gen, i32 1 acq_rel
  call void @futex_wake(ptr @gen, i32 2147483647)
  call void @run_tasks()
  br label %wait
wait:
  %k = phi i32 [ 0, %parallel ], [ %k1, %spin ], [ 0, %sleep ]
  %left = load atomic i32, ptr @pending acquire, align 4
  %finished = icmp eq i32 %left, 0
  br i1 %finished, label %done, label %spin
spin:
  %k1 = add i32 %k, 1
  {pause}
  %long = icmp sgt i32 %k1, 20000
  br i1 %long, label %sleep, label %wait
sleep:
  call void @futex_wait(ptr @pending, i32 %left)
  br label %wait
done:
  ret void
}}
"""


class Runtime:
    """The process-wide runtime for one target: its compiled code and exported symbols."""
    _lock = threading.Lock()
    _by_target: dict = {}

    def __init__(self, t: Target):
        obj, _ = jit.object_code(runtime_ir(t), t)
        self.engine = jit.Engine(obj, t)
        self.parallel_for = self.engine.address("ckir_parallel_for")
        self._set_threads = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int32)(
            self.engine.address("ckir_set_threads"))
        # compiled graphs call the pool by name
        llvm.add_symbol("ckir_parallel_for", self.parallel_for)

    @classmethod
    def get(cls, t: Target) -> Runtime:
        with cls._lock:
            rt = cls._by_target.get(t.name)
            if rt is None:
                rt = cls._by_target[t.name] = Runtime(t)
            return rt

    def set_threads(self, n: int) -> None:
        n = max(1, min(int(n), MAX_WORKERS + 1))
        rc = self._set_threads(n)
        if rc != 0:
            raise OSError(rc, f"could not start {n - 1} worker threads: {os.strerror(rc)}")


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
