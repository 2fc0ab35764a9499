"""The native runtime: a persistent thread pool, written in LLVM IR and compiled once per process.

Workers are started once (pthreads) and sleep on a futex between jobs. A job is
`ckir_parallel_for(task, ctx, n, threads)`: task(ctx, i) runs once for each i in [0, n), on the
calling thread and on at most `threads - 1` workers; the call returns when all n tasks are done.
Kernels use it for their outer loops, so a whole graph runs in one native call with no Python
between ops. `threads` is the compiled module's own thread count (codegen passes it as a
constant), so modules compiled with different `threads=` each use their own count; the pool is
shared and grows to the largest count asked for.

How a job is handed out (the invariants the code relies on):
- `claim` is one 64-bit word: generation << 32 | next task index. A task is taken by a CAS from
  (g, i) to (g, i + 1), so a claim is only valid in the generation it was read in.
- The job description (task, ctx, ntasks, limit) is written only while the claim word's index is
  CLOSED (0xFFFFFFFF, never below ntasks): the caller first closes the old generation, then writes
  the description (release stores), then opens (g + 1, 0). A helper reads the claim word, then the
  description (acquire loads), then CASes: if it read a newer description, the CLOSED store
  happened before its CAS, so the CAS fails and nothing runs with a mixed-up description.
- `done` counts completed tasks of the current generation; only a thread whose claim succeeded
  increments it, and the caller returns when done == ntasks (not when some set of workers has
  checked in), so a worker that wakes late finds the generation closed or moved on and does
  nothing, and never delays or corrupts a later job.
- One job at a time: `busy` is taken by CAS. A caller that finds the pool busy (another Python
  thread calling another compiled module at the same time, or a task that itself calls
  ckir_parallel_for) runs its tasks inline on its own thread: correct, just not parallel.
- Sleeping: a worker spins a while on `wake` (bumped once per job) and then futex-waits; the
  caller does the futex wake syscall only when some worker is asleep (`sleepers`, a Dekker-style
  handshake with seq_cst operations), and likewise sleeps on `done` only after spinning, with
  `caller_sleeping` telling the last finisher to wake it.
Generations are 32-bit; a worker would have to stall across exactly 2^32 jobs between reading the
claim word and its CAS for a stale claim to succeed.
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
_SPINS = 20000


def runtime_ir(t: Target) -> str:
    arch = t.triple.split("-")[0]
    sys_futex = _FUTEX.get(arch, 202)
    pause = ("call void @llvm.x86.sse2.pause()" if arch == "x86_64" else "")
    pause_decl = "declare void @llvm.x86.sse2.pause()" if arch == "x86_64" else ""
    return f"""
target triple = "{t.triple}"

@claim = internal global i64 0, align 64
@done = internal global i32 0, align 64
@wake = internal global i32 0, align 64
@sleepers = internal global i32 0, align 64
@caller_sleeping = internal global i32 0, align 64
@busy = internal global i32 0, align 64
@task = internal global ptr null, align 64
@ctx = internal global ptr null, align 8
@ntasks = internal global i64 0, align 8
@limit = internal global i32 0, align 8
@nworkers = internal global i32 0, align 64

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

; claim and run tasks of the current generation until none is left (or this thread, a worker
; with index >= limit, is not one the job may use). The caller helps with index -1.
define internal void @help(i32 %index) {{
entry:
  br label %loop
loop:
  %w = load atomic i64, ptr @claim acquire, align 8
  %fn = load atomic ptr, ptr @task acquire, align 8
  %c = load atomic ptr, ptr @ctx acquire, align 8
  %n = load atomic i64, ptr @ntasks acquire, align 8
  %lim = load atomic i32, ptr @limit acquire, align 4
  %i = and i64 %w, 4294967295
  %has = icmp ult i64 %i, %n
  %allowed = icmp slt i32 %index, %lim
  %go = and i1 %has, %allowed
  br i1 %go, label %try, label %out
try:
  %w1 = add i64 %w, 1
  %r = cmpxchg ptr @claim, i64 %w, i64 %w1 acq_rel acquire
  %ok = extractvalue {{ i64, i1 }} %r, 1
  br i1 %ok, label %run, label %loop
run:
  call void %fn(ptr %c, i64 %i)
  %old = atomicrmw add ptr @done, i32 1 seq_cst
  %new = add i32 %old, 1
  %nt = trunc i64 %n to i32
  %last = icmp eq i32 %new, %nt
  br i1 %last, label %notify, label %loop
notify:
  %sl = load atomic i32, ptr @caller_sleeping seq_cst, align 4
  %asleep = icmp ne i32 %sl, 0
  br i1 %asleep, label %wakec, label %loop
wakec:
  call void @futex_wake(ptr @done, i32 1)
  br label %loop
out:
  ret void
}}

define internal ptr @worker(ptr %arg) {{
entry:
  %index = ptrtoint ptr %arg to i32
  br label %top
top:
  %s = load atomic i32, ptr @wake acquire, align 4
  call void @help(i32 %index)
  br label %spin
spin:
  %k = phi i32 [ 0, %top ], [ %k1, %again ]
  %g = load atomic i32, ptr @wake acquire, align 4
  %same = icmp eq i32 %g, %s
  br i1 %same, label %again, label %top
again:
  %k1 = add i32 %k, 1
  {pause}
  %long = icmp sgt i32 %k1, {_SPINS}
  br i1 %long, label %sleep, label %spin
sleep:
  %sl0 = atomicrmw add ptr @sleepers, i32 1 seq_cst
  %g2 = load atomic i32, ptr @wake seq_cst, align 4
  %still = icmp eq i32 %g2, %s
  br i1 %still, label %block, label %woke
block:
  call void @futex_wait(ptr @wake, i32 %s)
  br label %woke
woke:
  %sl1 = atomicrmw sub ptr @sleepers, i32 1 seq_cst
  br label %top
}}

; start workers so that `threads` threads (the caller included) can run jobs; never shrinks
define i32 @ckir_set_threads(i32 %threads) {{
entry:
  %tid = alloca i64
  %want = sub i32 %threads, 1
  br label %check
check:
  %have = load i32, ptr @nworkers
  %enough = icmp sge i32 %have, %want
  br i1 %enough, label %done, label %spawn
spawn:
  %argp = inttoptr i32 %have to ptr
  %rc = call i32 @pthread_create(ptr %tid, ptr null, ptr @worker, ptr %argp)
  %ok = icmp eq i32 %rc, 0
  br i1 %ok, label %started, label %fail
started:
  %t = load i64, ptr %tid
  %d = call i32 @pthread_detach(i64 %t)
  %h1 = add i32 %have, 1
  store atomic i32 %h1, ptr @nworkers release, align 4
  br label %check
fail:
  ret i32 %rc
done:
  ret i32 0
}}

define i32 @ckir_workers() {{
  %n = load atomic i32, ptr @nworkers acquire, align 4
  ret i32 %n
}}

define void @ckir_parallel_for(ptr %fn, ptr %c, i64 %n, i32 %threads) {{
entry:
  %few = icmp sle i64 %n, 1
  %alone = icmp sle i32 %threads, 1
  %huge = icmp sgt i64 %n, 2147483647
  %s0 = or i1 %few, %alone
  %s1 = or i1 %s0, %huge
  br i1 %s1, label %inline, label %take
take:
  %b = cmpxchg ptr @busy, i32 0, i32 1 acquire monotonic
  %got = extractvalue {{ i32, i1 }} %b, 1
  br i1 %got, label %size, label %inline
size:
  %nw = load atomic i32, ptr @nworkers acquire, align 4
  %tm1 = sub i32 %threads, 1
  %lt = icmp slt i32 %tm1, %nw
  %w0 = select i1 %lt, i32 %tm1, i32 %nw
  %nm1 = sub i64 %n, 1
  %nm1i = trunc i64 %nm1 to i32
  %lt2 = icmp slt i32 %nm1i, %w0
  %lim = select i1 %lt2, i32 %nm1i, i32 %w0
  %none = icmp sle i32 %lim, 0
  br i1 %none, label %unbusy_inline, label %publish
unbusy_inline:
  store atomic i32 0, ptr @busy release, align 4
  br label %inline
publish:
  %old = load atomic i64, ptr @claim monotonic, align 8
  %gen = lshr i64 %old, 32
  %gen1 = add i64 %gen, 1
  %hi = shl i64 %gen1, 32
  %closed = or i64 %hi, 4294967295
  store atomic i64 %closed, ptr @claim seq_cst, align 8
  store atomic ptr %fn, ptr @task release, align 8
  store atomic ptr %c, ptr @ctx release, align 8
  store atomic i64 %n, ptr @ntasks release, align 8
  store atomic i32 %lim, ptr @limit release, align 4
  store atomic i32 0, ptr @done release, align 4
  store atomic i64 %hi, ptr @claim release, align 8
  %wk = atomicrmw add ptr @wake, i32 1 seq_cst
  %sleeping = load atomic i32, ptr @sleepers seq_cst, align 4
  %any = icmp sgt i32 %sleeping, 0
  br i1 %any, label %wakeup, label %work
wakeup:
  call void @futex_wake(ptr @wake, i32 2147483647)
  br label %work
work:
  call void @help(i32 -1)
  %nt = trunc i64 %n to i32
  br label %wait
wait:
  %k = phi i32 [ 0, %work ], [ %k1, %spin ], [ 0, %slept ]
  %d = load atomic i32, ptr @done acquire, align 4
  %fin = icmp eq i32 %d, %nt
  br i1 %fin, label %finish, label %spin
spin:
  %k1 = add i32 %k, 1
  {pause}
  %long = icmp sgt i32 %k1, {_SPINS}
  br i1 %long, label %sleep, label %wait
sleep:
  store atomic i32 1, ptr @caller_sleeping seq_cst, align 4
  %d2 = load atomic i32, ptr @done seq_cst, align 4
  %fin2 = icmp eq i32 %d2, %nt
  br i1 %fin2, label %slept, label %block
block:
  call void @futex_wait(ptr @done, i32 %d2)
  br label %slept
slept:
  store atomic i32 0, ptr @caller_sleeping seq_cst, align 4
  br label %wait
finish:
  store atomic i32 0, ptr @busy release, align 4
  ret void
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
}}
"""


class Runtime:
    """The process-wide runtime: its compiled code and exported symbols. There is one pool per
    process whatever the targets of the compiled modules (the pool's code is plain scalar code;
    compiled modules find `ckir_parallel_for` by name, and LLVM's symbol table is global)."""
    _lock = threading.Lock()
    _instance: Runtime | None = None

    def __init__(self, t: Target):
        obj, _ = jit.object_code(runtime_ir(t), t)
        self.engine = jit.Engine(obj, t)
        self.parallel_for = self.engine.address("ckir_parallel_for")
        self._set_threads = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int32)(
            self.engine.address("ckir_set_threads"))
        self._workers = ctypes.CFUNCTYPE(ctypes.c_int32)(self.engine.address("ckir_workers"))
        llvm.add_symbol("ckir_parallel_for", self.parallel_for)

    @classmethod
    def get(cls, t: Target | None = None) -> Runtime:
        """The runtime (`t` is accepted for compatibility; the pool is built for the host's
        plain target, which every runnable target can call)."""
        with cls._lock:
            if cls._instance is None:
                from .target import make_target
                cls._instance = Runtime(make_target("scalar"))
            return cls._instance

    def ensure_threads(self, n: int) -> None:
        """Start workers (once) so that jobs may use `n` threads, the caller included."""
        n = max(1, min(int(n), MAX_WORKERS + 1))
        with Runtime._lock:
            rc = self._set_threads(n)
        if rc != 0:
            raise OSError(rc, f"could not start {n - 1} worker threads: {os.strerror(rc)}")

    # the old name: before thread counts were per compiled module, this set the process-wide count;
    # now it only makes sure the workers exist (each module uses its own threads=)
    set_threads = ensure_threads

    def workers(self) -> int:
        return int(self._workers())


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
