"""From a graph to something callable: segments of native kernels, ops the interpreter runs in
between, and the per-call work (shapes, buffers, pointer tables) done in Python.

Ops with a native kernel form segments, each compiled into one function; a graph whose ops
all have kernels is one native call. Ops without one run through their reference semantics,
exactly as in the interpreter, on the same buffers. Views (reshape, squeeze, ...) share their
operand's buffer. Every dim that is not static in the IR is read from the `dims` array at run
time, filled from the shapes of the actual values: the shape rules, evaluated on concrete
types, give each value's shape before its segment runs (and are cached per input shapes).

After the arena pass (arena.place on the ops), the values the native code writes live at their
planned offsets in sections allocated once per compiled module (ArenaMemory: activations,
outputs, gradients; weights and constants are used where they are, memory-mapped when they come
from a file; state stays in the StateStore). Per concrete input shapes a _Bound keeps the
shapes, the dims array, the numpy views of placed values and each segment's pointer table, so a
call allocates nothing of the graph's size; outputs are copied out (copy_outputs=False returns
views that the next call overwrites). A view whose result the plan put outside its operand's
activation buffer is copied ("copy" steps), since the operand's bytes may be reused. Debug
canaries (arena_canary=True, $CKIR_ARENA_CANARY=1 or $CKIR_DEBUG_ARENA=1): every buffer gets its
own slot between guard bytes, checked after each native segment.

Compiled code is cached on disk keyed by the module text, the target, the thread count and the
backend's source files (Plan.cache_key), so a cache hit loads the object without generating
any LLVM IR (ir_text is generated on demand).
"""
from __future__ import annotations

import ctypes
import mmap
import os
import threading

import numpy as np

from ckir.backends.interp import StateStore, check_value, resolve_attrs
from ckir.errors import CkirError
from ckir.ir import Graph, Module
from ckir.types import TensorType

from . import jit
from .codegen import CodeGen, Layout, find_emitter, tensor_types_supported
from .runtime import Runtime
from .target import Target, check_runnable

SOURCES = ("ckir.weight", "nn.constant", "ckir.state")


class Step:
    __slots__ = ("kind", "ops", "fn", "values", "index", "name")

    def __init__(self, kind, ops):
        self.kind, self.ops = kind, ops      # kind: "native" | "ref" | "source"
        self.fn = None
        self.name = ""
        self.values: list = []               # native: values in bufs order
        self.index: dict = {}


def classify(op) -> str:
    """'source', 'view', 'native' or 'ref' (run by the interpreter's reference)."""
    name = op.opdef.name
    if name in SOURCES:
        return "source"
    if not tensor_types_supported(op):
        return "ref"
    if op.regions:          # ops with a body (fused.*) are native only where an emitter says so
        return "native" if find_emitter(op) is not None else "ref"
    if "view" in op.opdef.traits and not name.endswith("_dyn"):
        return "view"
    return "native" if find_emitter(op) is not None else "ref"


class Plan:
    """The segments of a graph and their code. `load()` compiles and loads it (runnable targets
    only); `ir_text` is available for any target (for `ckir compile --emit`)."""

    def __init__(self, module: Module, graph: Graph, target: Target, threads: int, arena=None,
                 canary=None, copy_outputs: bool = True):
        self.module, self.graph, self.target, self.threads = module, graph, target, threads
        self.ops = [op for op in graph if op is not graph.terminator]
        self.kinds = {op: classify(op) for op in self.ops}
        # the arena pass's placements (section, offset, size, buffer id) of the values the native
        # code writes; None runs the plain way (a numpy array per value per call)
        self.place = _placements(self.ops) if arena is not False else {}
        if arena and not self.place:
            raise CkirError(f"graph @{graph.name} has no arena placements: run the arena pass first")
        self.arena = None
        self.copy_outputs = copy_outputs
        if self.place:
            for op in self.ops:
                if self.kinds[op] == "view" and _needs_copy(op, self.place):
                    self.kinds[op] = "copy"
        self.dim_index: dict = {}
        named: dict = {}
        values = list(graph.inputs) + [r for op in self.ops for r in op.results]
        for v in values:
            if type(v.type) is not TensorType:
                continue
            for ax, d in enumerate(v.type.shape):
                if type(d) is int:
                    continue
                key = d.name if d.name is not None else (v, ax)
                if key not in named:
                    named[key] = len(named)
                self.dim_index[(v, ax)] = named[key]
        self.n_dims = len(named)
        self.steps: list[Step] = []
        self._segments: list = []
        cg = CodeGen(target, max_tasks=4 * threads, threads=threads)
        run: list = []
        for op in self.ops:
            kind = self.kinds[op]
            if kind in ("native", "view"):
                run.append(op)
                continue
            self._close(run, cg)
            run = []
            self.steps.append(Step(kind, [op]))
        self._close(run, cg)
        self.ref_ops = [op for op, k in self.kinds.items() if k == "ref"]
        self._cg = cg
        self._ir_text = None
        self.cached = False
        self.state = StateStore(module)
        self._shapes_cache: dict = {}
        self._has_dynamic = any(k == "ref" for k in self.kinds.values())
        self._lock = threading.Lock()
        if self.place:
            if canary is None:
                canary = any(os.environ.get(k, "") not in ("", "0") for k in ("CKIR_ARENA_CANARY", "CKIR_DEBUG_ARENA"))
            self.arena = ArenaMemory(self, bool(canary))
            self._bound: dict = {}
            self._sources: dict = {}
            self._dynamic = False

    def load(self, use_cache: bool = True) -> None:
        check_runnable(self.target)
        Runtime.get(self.target).ensure_threads(self.threads)
        segs = [s for s in self.steps if s.kind == "native"]
        if segs:
            # keyed by the graph's text and the backend's code, so a hit skips code generation
            obj, self.cached = jit.object_code_for(self.cache_key(), lambda: self.ir_text, self.target,
                                                   use_cache)
            self.engine = jit.Engine(obj, self.target)
            proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
            for s in segs:
                s.fn = proto(self.engine.address(s.name))

    def _close(self, run, cg) -> None:
        if not run:
            return
        step = Step("native", run)
        step.name = f"segment{len(self.steps)}"
        vals = []
        for op in run:
            for v in list(op.operands) + list(op.results):
                if v not in step.index:
                    step.index[v] = len(vals)
                    vals.append(v)
        step.values = vals
        layout = Layout(step.index, self.dim_index, self.n_dims, {op: i for i, op in enumerate(run)})
        emits = [find_emitter(op) if self.kinds[op] == "native" else None for op in run]
        self._segments.append((step.name, run, layout, emits))
        self.steps.append(step)

    @property
    def ir_text(self) -> str:
        """The LLVM IR of every segment, generated on first use (a disk cache hit needs none)."""
        if self._ir_text is None:
            for name, run, layout, emits in self._segments:
                self._cg.segment(name, run, layout, emits)
            self._ir_text = self._cg.ir_text()
        return self._ir_text

    def cache_key(self) -> str:
        """What the compiled code depends on: the module's text (ops, types, attributes, arena
        placements), which graph, how each op runs (native, view, copy, interpreter), the
        target, the thread count, and the versions of ckir, llvmlite/LLVM and the backend's
        own source files (jit.code_version)."""
        from ckir.printer import print_module
        return jit.key_of([print_module(self.module), self.graph.name,
                           ",".join(self.kinds[op][0] for op in self.ops),
                           str(self.threads), jit.code_version(), jit.codegen_environment(), "plan-v1"],
                          self.target)

    # --- per call ---------------------------------------------------------------------------------
    def _shapes(self, env_shapes: dict, op) -> list:
        """Concrete result shapes of `op` from its operands' concrete shapes."""
        types = [TensorType(env_shapes[v], v.type.dtype) for v in op.operands]
        out = _body_types(op.regions[0], types) if op.regions else op.opdef.infer(types, op.attrs)
        shapes = []
        for r, t in zip(op.results, out):
            if not t.is_static:
                raise CkirError(f"{op.location()}: the llvm backend cannot size this result "
                                f"before running it ({t})")
            shapes.append(t.shape)
        return shapes

    def run(self, inputs: list, bind: dict) -> list:
        # calls on one compiled module from several Python threads are serialized (they share
        # the state, the shape cache and, with the arena, the buffers); calls on different
        # modules run at the same time (the native code releases the GIL), and the one that finds
        # the thread pool busy runs its parallel loops on its own thread
        with self._lock:
            self.state.begin()
            outs = self._run_arena(inputs, bind) if self.arena is not None else self._run(inputs, bind)
            self.state.commit()
            return outs

    def _run(self, inputs: list, bind: dict) -> list:
        g = self.graph
        env: dict = {}
        for v, a in zip(g.inputs, inputs):
            env[v] = _contiguous(a) if isinstance(a, np.ndarray) else a
        dims = np.zeros(self.n_dims + 1, dtype=np.int64)      # the last slot: the status word
        key = None if self._has_dynamic else tuple(a.shape for a in inputs if isinstance(a, np.ndarray))
        cached = self._shapes_cache.get(key) if key is not None else None
        shapes = dict(cached) if cached is not None else {v: _logical_shape(v, a) for v, a in env.items()
                                                          if isinstance(a, np.ndarray)}
        for step in self.steps:
            if step.kind == "source":
                op = step.ops[0]
                if op.opdef.name == "ckir.weight":
                    a = self.module.weights[op.attrs["name"]].array(self.module.base_dir)
                elif op.opdef.name == "ckir.state":
                    a = self.state.read(op.attrs["name"])
                else:
                    a = op.attrs["value"].array
                env[op.results[0]] = a
                shapes[op.results[0]] = _logical_shape(op.results[0], a)
            elif step.kind == "ref":
                op = step.ops[0]
                self._run_ref(op, env, bind)
                for r in op.results:
                    if isinstance(env[r], np.ndarray):
                        shapes[r] = _logical_shape(r, env[r])
            else:
                self._run_native(step, env, shapes, cached is not None, dims, bind)
        if key is not None and cached is None:
            self._shapes_cache[key] = shapes
        return [env[v] for v in g.outputs]

    def _run_ref(self, op, env, bind) -> None:
        arrays = [env[v] for v in op.operands]
        extra = {}
        if op.opdef.name == "ckir.write_state":
            extra["state"] = self.state
        if op.regions:
            from ckir.backends.interp import Interpreter
            interp = Interpreter(self.module)
            extra["regions"] = [interp._region_fn(r, bind) for r in op.regions]
        try:
            with np.errstate(all="ignore"):
                outs = op.opdef.ref(arrays, resolve_attrs(op, bind), types=[v.type for v in op.operands], **extra)
        except CkirError as e:
            raise CkirError(f"{op.location()}: {e}") from None
        except (ValueError, TypeError, IndexError, FloatingPointError, ZeroDivisionError) as e:
            raise CkirError(f"{op.location()}: failed at run time: {e}") from None
        for r, a in zip(op.results, outs):
            if type(r.type) is TensorType:
                a = _contiguous(np.asarray(a))
            check_value(a, r.type, bind, f"{op.location()}: result {r.index}")
            env[r] = a

    def _run_native(self, step, env, shapes, shapes_known, dims, bind) -> None:
        for op in step.ops:
            if not shapes_known:
                for r, sh in zip(op.results, self._shapes(shapes, op)):
                    shapes[r] = sh
            if self.kinds[op] == "view":
                env[op.results[0]] = env[op.operands[0]].reshape(shapes[op.results[0]])
            else:
                for r in op.results:
                    env[r] = np.empty(shapes[r], dtype=r.type.dtype.np)
        for (v, ax), i in self.dim_index.items():
            if v in shapes:
                dims[i] = shapes[v][ax]
        ptrs = (ctypes.c_void_p * len(step.values))(*[env[v].ctypes.data for v in step.values])
        dims[self.n_dims] = 0
        step.fn(ctypes.addressof(ptrs), dims.ctypes.data)
        if dims[self.n_dims]:
            # a kernel found bad data (Kernel.fail): the reference raises the interpreter's error
            op = step.ops[int(dims[self.n_dims]) - 1]
            self._run_ref(op, env, bind)
            raise CkirError(f"{op.location()}: failed at run time")

    # --- per call, inside the arena --------------------------------------------------------------
    def _run_arena(self, inputs: list, bind: dict) -> list:
        """Like _run, but every value the native code writes lives at its planned offset in
        memory allocated once (ArenaMemory). Per concrete input shapes, a _Bound holds the
        shapes, the dims array, numpy views of the placed values and each segment's pointer
        table with the placed pointers filled in; a call only fills in the pointers of inputs,
        weights, state and interpreter results, so nothing of the graph's size is allocated."""
        g = self.graph
        env: dict = {}
        for v, a in zip(g.inputs, inputs):
            env[v] = _contiguous(a) if isinstance(a, np.ndarray) else a
        key = tuple(a.shape if isinstance(a, np.ndarray) else None for a in inputs)
        bd = self._bound.get(key) if not self._dynamic else None
        fresh = bd is None
        if fresh:
            bd = _Bound(self, {v: _logical_shape(v, a) for v, a in env.items() if isinstance(a, np.ndarray)})
        else:
            env.update(bd.resident)
        mem = self.arena
        for step in self.steps:
            kind = step.kind
            if kind == "source":
                op = step.ops[0]
                r = op.results[0]
                if op.opdef.name == "ckir.state":
                    a = self.state.read(op.attrs["name"])
                elif op.opdef.name == "ckir.weight":
                    # Weight.array maps the file (or holds the array) once; asked again each call
                    # so a module whose weights are replaced runs with the new ones
                    a = self.module.weights[op.attrs["name"]].array(self.module.base_dir)
                else:
                    a = self._sources.get(op)
                    if a is None:
                        a = self._sources[op] = _contiguous(np.asarray(op.attrs["value"].array))
                env[r] = a
                if fresh:
                    bd.shapes[r] = _logical_shape(r, a)
            elif kind == "ref":
                op = step.ops[0]
                self._run_ref(op, env, bind)
                if fresh:
                    for r in op.results:
                        if isinstance(env[r], np.ndarray):
                            bd.shapes[r] = _logical_shape(r, env[r])
                    bd.note_ref(op)
            elif kind == "copy":
                op = step.ops[0]
                r = op.results[0]
                if fresh:
                    bd.shapes[r] = self._shapes(bd.shapes, op)[0]
                    bd.place_value(r)
                dst = bd.resident[r]
                np.copyto(dst, env[op.operands[0]].reshape(dst.shape))
                env[r] = dst
            else:
                tab = bd.tables.get(step)
                if tab is None:
                    tab = bd.prepare(step)
                    env.update({v: bd.resident[v] for v in step.values if v in bd.resident})
                ptrs, fill, aliases = tab
                for r, o, shape in aliases:
                    env[r] = env[o].reshape(shape)
                for slot, v in fill:
                    ptrs[slot] = env[v].ctypes.data
                dims = bd.dims
                dims[self.n_dims] = 0
                step.fn(ctypes.addressof(ptrs), dims.ctypes.data)
                if mem.canary:
                    mem.check(step)
                if dims[self.n_dims]:
                    op = step.ops[int(dims[self.n_dims]) - 1]
                    self._run_ref(op, env, bind)
                    raise CkirError(f"{op.location()}: failed at run time")
        if fresh:
            if bd.dynamic:
                self._dynamic = True
            else:
                self._bound[key] = bd
        outs = [env[v] for v in g.outputs]
        if self.copy_outputs:
            outs = [np.array(o) if isinstance(o, np.ndarray) else o for o in outs]
        return outs


def _body_types(body, types: list) -> list:
    """Result types of an op with a body (fused.*, which declares its types) for concrete
    operand types: the body's ops' shape rules, run in order."""
    env = dict(zip(body.args, types))
    for o in body:
        if o is body.terminator:
            break
        for r, t in zip(o.results, o.opdef.infer([env[v] for v in o.operands], o.attrs)):
            env[r] = t
    return [env[v] for v in body.outputs]


def _logical_shape(v, a: np.ndarray) -> tuple:
    """The shape of value `v` held in array `a`: block-quantized values are stored as raw bytes
    [..., nblocks * block_bytes] but their shape (what infer and the dims see) counts elements."""
    d = v.type.dtype if type(v.type) is TensorType else None
    if d is not None and d.is_quant and a.ndim:
        return a.shape[:-1] + (a.shape[-1] // d.block_bytes * d.block_size,)
    return a.shape


def _placements(ops) -> dict:
    """value -> (section, offset, size, buffer) for the results the arena pass placed in the
    sections the plan allocates (weights, constants and state keep their own arrays)."""
    out = {}
    for op in ops:
        meta = op.meta.get("arena.place") if op.meta else None
        if not meta:
            continue
        for r, p in zip(op.results, meta):
            if p[0] in ArenaMemory.SECTIONS and type(r.type) is TensorType:
                out[r] = (p[0], int(p[1]), int(p[2]), int(p[3]))
    return out


def _needs_copy(op, place) -> bool:
    """A view whose result the plan put in another buffer than its operand's activation buffer
    (e.g. a graph output that is a reshape of an intermediate): the operand's bytes may be
    reused while the result is alive, so the result is copied to its own place."""
    r, o = op.results[0], op.operands[0]
    return r in place and o in place and place[r][3] != place[o][3] and place[o][0] == "activations"


class ArenaMemory:
    """The sections the native code writes (activations, outputs, gradients), allocated once per
    compiled module: anonymous mmap (page aligned, so every 64-byte aligned offset stays
    aligned; transparent huge pages asked for with madvise on blocks of 2 MiB and more).

    With `canary`, the plan's reuse is given up for checking: every buffer gets its own slot,
    GUARD bytes of a fixed pattern before and after its planned size, and after each native
    segment the guards are compared; a changed guard raises a CkirError naming the buffer's
    values and the op of the segment that writes them."""
    SECTIONS = ("activations", "outputs", "gradients")
    GUARD = 64
    PATTERN = 0xA5

    def __init__(self, plan: Plan, canary: bool):
        self.canary = canary
        self.maps: list = []
        self.addr: dict = {}                 # value -> address of its first byte
        place = plan.place
        if not canary:
            for sec in self.SECTIONS:
                mine = [p for p in place.values() if p[0] == sec]
                if not mine:
                    continue
                base = self._alloc(max(p[1] + p[2] for p in mine))
                for v, p in place.items():
                    if p[0] == sec:
                        self.addr[v] = base + p[1]
            return
        slots: dict = {}                     # (section, buffer) -> size
        for p in place.values():
            k = (p[0], p[3])
            slots[k] = max(slots.get(k, 0), p[2])
        stride = {k: self.GUARD + (n + self.GUARD + 63) // 64 * 64 for k, n in slots.items()}
        base = self._alloc(sum(stride.values()) + self.GUARD)
        buf = self.maps[-1][1]
        buf[:] = self.PATTERN
        at, start = 0, {}
        for k in slots:
            start[k] = base + at + self.GUARD
            at += stride[k]
        for v, p in place.items():
            self.addr[v] = start[(p[0], p[3])]
        # guards: (byte range before, byte range after, buffer key); the bytes between the end of
        # the planned size and the next slot's guard are guard too
        self.guards = []
        owners: dict = {}
        for v, p in place.items():
            owners.setdefault((p[0], p[3]), []).append(v)
        at = 0
        for k, n in slots.items():
            lo = at + self.GUARD
            self.guards.append((buf[at:lo], buf[lo + n:at + stride[k] + self.GUARD], k, owners[k], n))
            at += stride[k]
        self.op_of = {r: op for op in plan.ops for r in op.results}

    def _alloc(self, n: int) -> int:
        n = max(n, 1)
        mm = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if n >= 2 << 20 and hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                mm.madvise(mmap.MADV_HUGEPAGE)
            except OSError:
                pass
        arr = np.frombuffer(mm, dtype=np.uint8)
        self.maps.append((mm, arr))
        return arr.ctypes.data

    def view(self, v, shape) -> np.ndarray:
        """A numpy array of value `v` with `shape`, at its place."""
        dt = np.dtype(v.type.dtype.np)
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        for mm, arr in self.maps:
            lo = arr.ctypes.data
            a = self.addr[v]
            if lo <= a and a + n <= lo + arr.size:
                return np.ndarray(shape, dtype=dt, buffer=arr, offset=a - lo)
        raise CkirError("internal error: a placed value lies outside its section")

    def check(self, step) -> None:
        for before, after, key, values, size in self.guards:
            if (before != self.PATTERN).any() or (after != self.PATTERN).any():
                side = "after" if (after != self.PATTERN).any() else "before"
                writers = [v for v in values if v in step.index and self.op_of.get(v) in step.ops] or values
                names = ", ".join(f"{self.op_of[v].location()} result {v.index}" if v in self.op_of else "?"
                                  for v in writers)
                before[:] = self.PATTERN           # re-arm, so the next report is about a new write
                after[:] = self.PATTERN
                raise CkirError(f"arena canary: the bytes {side} {key[0]} buffer {key[1]} ({size} bytes "
                                f"planned) were overwritten in {step.name}; the buffer holds {names}")


class _Bound:
    """What a call needs for one set of concrete input shapes (see Plan._run_arena)."""

    def __init__(self, plan: Plan, shapes: dict):
        self.plan = plan
        self.shapes = shapes
        self.dims = np.zeros(plan.n_dims + 1, dtype=np.int64)
        self.resident: dict = {}             # value -> its array in the arena
        self.tables: dict = {}
        self.dynamic = False

    def note_ref(self, op) -> None:
        """Whether this interpreter op's result shapes follow from its operands' shapes (then the
        shapes can be reused for the next call with the same input shapes)."""
        if self.dynamic:
            return
        try:
            for r, sh in zip(op.results, self.plan._shapes(self.shapes, op)):
                if tuple(sh) != tuple(self.shapes.get(r, ())):
                    self.dynamic = True
        except Exception:        # noqa: BLE001  (any failure: sizes depend on the data)
            self.dynamic = True

    def place_value(self, v) -> None:
        plan = self.plan
        shape = self.shapes[v]
        if v not in plan.place or v.type.dtype.is_quant:
            # not placed (the pass ran on an older form of the graph): its own array, made once
            # per shape set like the rest
            from ckir.backends.interp import storage_shape
            d = v.type.dtype
            self.resident[v] = np.empty(storage_shape(v.type, shape), dtype=np.uint8 if d.is_quant else d.np)
            return
        sec, off, size, buf = plan.place[v]
        need = v.type.dtype.nbytes(int(np.prod(shape, dtype=np.int64)))
        if need > size:
            op = v.op
            raise CkirError(f"{op.location()}: result {v.index} needs {need} bytes for shape {list(shape)}, "
                            f"the arena planned {size} ({sec} buffer {buf}); are the dims above the "
                            "bounds the plan was made for?")
        self.resident[v] = plan.arena.view(v, shape)

    def prepare(self, step):
        """Shapes, places and the pointer table of a native segment."""
        plan = self.plan
        for op in step.ops:
            for r, sh in zip(op.results, plan._shapes(self.shapes, op)):
                self.shapes[r] = sh
            if plan.kinds[op] == "view":
                r, o = op.results[0], op.operands[0]
                if r in plan.place and o in self.resident and plan.place[r][3] == plan.place[o][3]:
                    self.place_value(r)           # shares its operand's bytes in the arena
            else:
                for r in op.results:
                    self.place_value(r)
        for (v, ax), i in plan.dim_index.items():
            if v in self.shapes:
                self.dims[i] = self.shapes[v][ax]
        ptrs = (ctypes.c_void_p * len(step.values))()
        fill, aliases = [], []
        for op in step.ops:
            if plan.kinds[op] == "view" and op.results[0] not in self.resident:
                aliases.append((op.results[0], op.operands[0], tuple(self.shapes[op.results[0]])))
        for slot, v in enumerate(step.values):
            if v in self.resident:
                ptrs[slot] = self.resident[v].ctypes.data
            else:
                fill.append((slot, v))
        self.tables[step] = (ptrs, fill, aliases)
        return self.tables[step]


def _contiguous(a: np.ndarray) -> np.ndarray:
    # np.ascontiguousarray would turn a 0-d array into a 1-d one
    return a if a.flags.c_contiguous else np.array(a, order="C")


class LLVMBackend:
    name = "llvm"

    def compile(self, module: Module, graph: Graph, target=None, threads=None, cache: bool = True,
                arena=None, arena_canary=None, copy_outputs: bool = True):
        """Options: target (default $CKIR_TARGET or the best this CPU runs), threads (default:
        the CPUs this process may use; each compiled module keeps its own), cache (reuse compiled
        code from the disk cache), arena (None: run inside the arena pass's placements when the
        graph has them; False: ignore them; True: require them), arena_canary (guard bytes around
        every placed buffer, checked after each native segment; default $CKIR_ARENA_CANARY or
        $CKIR_DEBUG_ARENA), copy_outputs (with the arena, outputs are copied out of it; False
        returns views into the outputs section, valid until the next call)."""
        from .runtime import default_threads
        from .target import make_target
        plan = Plan(module, graph, make_target(target), int(threads or default_threads()), arena=arena,
                    canary=arena_canary, copy_outputs=copy_outputs)
        plan.load(cache)

        def run(inputs, bind):
            return plan.run(inputs, bind)
        run.plan = plan
        run.state = plan.state
        return run


def emit(module: Module, graph: str | None = None, target=None, kind: str = "asm", threads: int = 1):
    """The graph's code for `target` as 'asm', 'obj' or 'llvm' (runnable here or not)."""
    from .target import make_target
    t = make_target(target)
    plan = Plan(module, module.graph(graph), t, threads)
    return jit.emit(plan.ir_text, t, kind)
