"""Kernel code generation: the Kernel helper that emitters use, the emitter registry, and the
segment functions that chain kernels.

A segment is a run of ops with native kernels, compiled into one function
`void seg(ptr* bufs, i64* dims)`: `bufs` holds a pointer per value the segment touches and
`dims` every dim that is not static in the IR (symbolic dims stay runtime values, so one
compile serves every size). Each op becomes an internal function with that same signature,
called in order; an emitter fills it in through a `Kernel`, which hands out typed pointers,
dims, loops and parallel loops over the runtime thread pool.
"""
from __future__ import annotations

import llvmlite.ir as ir

from ckir import dtypes as dt
from ckir.errors import CkirError
from ckir.types import TensorType

I1, I8, I16, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
F16, F32, F64 = ir.HalfType(), ir.FloatType(), ir.DoubleType()
PTR = ir.PointerType()
VOID = ir.VoidType()
KERNEL_TY = ir.FunctionType(VOID, [PTR, PTR])               # (bufs, dims)
TASK_TY = ir.FunctionType(VOID, [PTR, I64])                  # (ctx, task index)

# how each dtype is held in memory
_MEM = {dt.f32: F32, dt.f64: F64, dt.f16: F16, dt.bf16: I16, dt.i64: I64, dt.i32: I32, dt.i16: I16,
        dt.i8: I8, dt.u8: I8, dt.u16: I16, dt.u32: I32, dt.u64: I64, dt.bool_: I8}
# GGML block types are raw bytes (see ckir.dtypes); only quant.* ops take them, and their
# emitters index the bytes themselves
_MEM.update({d: I8 for d in dt.QUANTS})


def mem_type(d: dt.DType) -> ir.Type:
    t = _MEM.get(d)
    if t is None:
        raise CkirError(f"the llvm backend has no storage for {d}")
    return t


def supported_dtype(d) -> bool:
    return d in _MEM


_EMITTERS: dict[str, object] = {}


def emitter(*names):
    """Register `fn(k: Kernel, op)` as the native kernel of the named ops. `fn.supports(op)`
    (optional) may refuse particular instances (dtypes, attributes), which then fall back."""
    def reg(fn):
        for n in names:
            if n in _EMITTERS:
                raise CkirError(f"two llvm emitters for {n}")
            _EMITTERS[n] = fn
        return fn
    return reg


def find_emitter(op):
    fn = _EMITTERS.get(op.opdef.name)
    if fn is None:
        return None
    check = getattr(fn, "supports", None)
    if check is not None and not check(op):
        return None
    return fn


def emitter_names() -> list[str]:
    return sorted(_EMITTERS)


class Layout:
    """Where a segment finds things: value -> index into `bufs`, (value, axis) -> index into
    `dims` for dims that are not static."""

    def __init__(self, buf_index: dict, dim_index: dict, status_index=None, op_index=None):
        self.buf_index = buf_index
        self.dim_index = dim_index
        # where a kernel reports a run-time error (Kernel.fail): dims[status_index] gets 1 + the
        # op's position in its segment (op_index)
        self.status_index = status_index
        self.op_index = op_index or {}


class Kernel:
    """Code for one op, or one task of it, inside a function taking (bufs, dims)."""

    def __init__(self, mod: ir.Module, fn: ir.Function, layout: Layout, op, bufs, dims, cg):
        self.mod, self.fn, self.layout, self.op, self.cg = mod, fn, layout, op, cg
        self.bufs, self.dims = bufs, dims
        # buffer pointers and dims are loaded once, in a block before the code, so loops see
        # loop-invariant values (and the vectorizer can work)
        head = fn.append_basic_block("head")
        body = fn.append_basic_block("body")
        self.head = ir.IRBuilder(head)
        self.head.position_at_end(head)
        jump = self.head.branch(body)
        self.head.position_before(jump)
        self.b = ir.IRBuilder(body)
        self._ptrs: dict = {}
        self._dims: dict = {}

    # --- values ---------------------------------------------------------------------------------
    def ptr(self, v):
        """The buffer of value `v` (an opaque pointer)."""
        p = self._ptrs.get(v)
        if p is None:
            idx = self.layout.buf_index[v]
            slot = self.head.gep(self.bufs, [I64(idx)], source_etype=PTR, inbounds=True)
            p = self._ptrs[v] = self.head.load(slot, typ=PTR)
        return p

    def dim(self, v, axis: int):
        d = v.type.shape[axis]
        if type(d) is int:
            return I64(d)
        idx = self.layout.dim_index[(v, axis)]
        x = self._dims.get(idx)
        if x is None:
            x = self._dims[idx] = self.head.load(
                self.head.gep(self.dims, [I64(idx)], source_etype=I64, inbounds=True), typ=I64)
        return x

    def shape(self, v) -> list:
        return [self.dim(v, i) for i in range(v.type.rank)]

    def numel(self, v):
        n = I64(1)
        for d in self.shape(v):
            n = self.mul(n, d)
        return n

    # --- integer arithmetic that folds constants ---------------------------------------------------
    def mul(self, a, c):
        if isinstance(a, ir.Constant) and isinstance(c, ir.Constant):
            return I64(a.constant * c.constant)
        if isinstance(a, ir.Constant) and a.constant == 1:
            return c
        if isinstance(c, ir.Constant) and c.constant == 1:
            return a
        return self.b.mul(a, c)

    def add(self, a, c):
        if isinstance(a, ir.Constant) and isinstance(c, ir.Constant):
            return I64(a.constant + c.constant)
        if isinstance(a, ir.Constant) and a.constant == 0:
            return c
        if isinstance(c, ir.Constant) and c.constant == 0:
            return a
        return self.b.add(a, c)

    # --- memory ----------------------------------------------------------------------------------
    def load(self, v, index, ptr=None):
        """Element `index` of value `v`, in its memory type."""
        t = mem_type(v.type.dtype)
        p = self.b.gep(ptr if ptr is not None else self.ptr(v), [index], source_etype=t, inbounds=True)
        return self.b.load(p, typ=t)

    def store(self, v, index, x, ptr=None):
        t = mem_type(v.type.dtype)
        p = self.b.gep(ptr if ptr is not None else self.ptr(v), [index], source_etype=t, inbounds=True)
        self.b.store(x, p)

    def fail(self):
        """Report that this op failed at run time (e.g. an index out of range). The kernel must
        still return normally without touching memory out of bounds; the rest of the segment
        runs (kernels stay in bounds whatever data they read), then plan.py reruns this op's
        reference on the same operands, which raises the interpreter's error. The first op of a
        segment that fails is the one reported."""
        if self.layout.status_index is None or self.op not in self.layout.op_index:
            raise CkirError(f"internal error: {self.op.opdef.name} reports a run-time error, "
                            "but its segment has no status slot")
        slot = self.b.gep(self.dims, [I64(self.layout.status_index)], source_etype=I64, inbounds=True)
        self.b.cmpxchg(slot, I64(0), I64(self.layout.op_index[self.op] + 1), "monotonic", "monotonic")

    # --- control flow ----------------------------------------------------------------------------
    def loop(self, start, end, body, step=None):
        """for i in [start, end): body(i). Returns nothing; the builder continues after it."""
        b = self.b
        pre = b.block
        head = self.fn.append_basic_block("loop")
        exit_ = self.fn.append_basic_block("endloop")
        b.cbranch(b.icmp_signed("<", start, end), head, exit_)
        b.position_at_end(head)
        i = b.phi(I64)
        i.add_incoming(start, pre)
        body(i)
        nxt = b.add(i, step if step is not None else I64(1))
        i.add_incoming(nxt, b.block)
        b.cbranch(b.icmp_signed("<", nxt, end), head, exit_)
        b.position_at_end(exit_)

    def parallel(self, ntasks, task_body):
        """Run task_body(kt, t) for t in [0, ntasks) on the thread pool; `kt` is a Kernel inside
        the task function (it reads bufs/dims again, so the body may use any value)."""
        tfn = ir.Function(self.mod, TASK_TY, self.cg.fresh(f"{self.fn.name}_task"))
        tfn.linkage = "internal"
        ctx, t = tfn.args
        entry_b = ir.IRBuilder(tfn.append_basic_block("unpack"))
        bufs = entry_b.load(entry_b.gep(ctx, [I64(0)], source_etype=PTR), typ=PTR)
        dims = entry_b.load(entry_b.gep(ctx, [I64(1)], source_etype=PTR), typ=PTR)
        kt = Kernel(self.mod, tfn, self.layout, self.op, bufs, dims, self.cg)
        entry_b.branch(kt.head.block)
        task_body(kt, t)
        kt.b.ret_void()
        b = self.b
        cell = b.alloca(PTR, 2)
        b.store(self.bufs, b.gep(cell, [I64(0)], source_etype=PTR))
        b.store(self.dims, b.gep(cell, [I64(1)], source_etype=PTR))
        b.call(self.cg.parallel_for(), [tfn, cell, ntasks])

    def ntasks(self, n, grain: int):
        """How many tasks split n iterations: ceil(n / grain), at least 1, at most max_tasks."""
        b = self.b
        per = b.sdiv(b.add(n, I64(grain - 1)), I64(grain))
        cap = I64(self.cg.max_tasks)
        t = b.select(b.icmp_signed("<", per, cap), per, cap)
        return b.select(b.icmp_signed("<", t, I64(1)), I64(1), t)

    def parallel_range(self, n_fn, body, grain: int = 4096):
        """Split [0, n) into contiguous chunks of at least `grain` iterations, one task each,
        and run body(kt, lo, hi) for each. `n_fn(k)` computes n in a given Kernel: the task
        functions compute it again, since LLVM values do not cross functions."""
        n = n_fn(self)

        def task(kt, t):
            m = n_fn(kt)
            nt = kt.ntasks(m, grain)
            chunk = kt.b.sdiv(kt.b.add(m, kt.b.sub(nt, I64(1))), nt)
            lo = kt.b.mul(t, chunk)
            hi0 = kt.b.add(lo, chunk)
            hi = kt.b.select(kt.b.icmp_signed("<", hi0, m), hi0, m)
            body(kt, lo, hi)

        self.parallel(self.ntasks(n, grain), task)


class CodeGen:
    """One LLVM module: the segment functions of a graph and the kernels they call."""

    def __init__(self, target, max_tasks: int, threads: int | None = None):
        self.target = target
        self.max_tasks = max_tasks
        # the compiled module's own thread count, passed to the pool with every job
        self.threads = int(threads) if threads is not None else max(1, max_tasks // 4)
        self.mod = ir.Module(name="ckir")
        self.mod.triple = target.triple
        self._n = 0
        self._pf = None
        self._decls: dict = {}

    def fresh(self, base: str) -> str:
        self._n += 1
        return f"{base}.{self._n}"

    def parallel_for(self):
        """A function (task_fn, ctx, ntasks) running task_fn(ctx, t) for t in [0, ntasks) on the
        pool. It is an always-inlined wrapper passing this module's thread count to the runtime's
        `ckir_parallel_for(task_fn, ctx, ntasks, threads)`, so the code calls only that symbol."""
        if self._pf is None:
            rt = ir.Function(self.mod, ir.FunctionType(VOID, [PTR, PTR, I64, I32]), "ckir_parallel_for")
            self._pf = ir.Function(self.mod, ir.FunctionType(VOID, [PTR, PTR, I64]), "ckir_parallel_for.m")
            self._pf.linkage = "internal"
            self._pf.attributes.add("alwaysinline")
            b = ir.IRBuilder(self._pf.append_basic_block("entry"))
            b.call(rt, list(self._pf.args) + [I32(self.threads)])
            b.ret_void()
        return self._pf

    def declare(self, name: str, fnty: ir.FunctionType):
        """An external function (libm, an intrinsic), declared once."""
        f = self._decls.get(name)
        if f is None:
            f = self._decls[name] = ir.Function(self.mod, fnty, name)
        return f

    def segment(self, name: str, ops, layout: Layout, emitters) -> None:
        """Emit `void name(ptr bufs, ptr dims)` running the kernels of `ops` in order."""
        seg = ir.Function(self.mod, KERNEL_TY, name)
        b = ir.IRBuilder(seg.append_basic_block("entry"))
        bufs, dims = seg.args
        for op, emit in zip(ops, emitters):
            if emit is None:          # a view: its result shares the operand's buffer
                continue
            kfn = ir.Function(self.mod, KERNEL_TY, self.fresh(op.opdef.name.replace(".", "_")))
            kfn.linkage = "internal"
            k = Kernel(self.mod, kfn, layout, op, kfn.args[0], kfn.args[1], self)
            emit(k, op)
            k.b.ret_void()
            b.call(kfn, [bufs, dims])
        b.ret_void()

    def ir_text(self) -> str:
        return str(self.mod)


def tensor_types_supported(op) -> bool:
    """Whether every operand and result is a tensor of a dtype the backend can store."""
    for v in list(op.operands) + list(op.results):
        if type(v.type) is not TensorType or not supported_dtype(v.type.dtype):
            return False
    return True
