"""From a graph to something callable: segments of native kernels, ops the interpreter runs in
between, and the per-call work (shapes, buffers, pointer tables) done in Python.

Ops with a native kernel form segments, each compiled into one function; a graph whose ops
all have kernels is one native call. Ops without one run through their reference semantics,
exactly as in the interpreter, on the same buffers. Views (reshape, squeeze, ...) share their
operand's buffer. Every dim that is not static in the IR is read from the `dims` array at run
time, filled from the shapes of the actual values: the shape rules, evaluated on concrete
types, give each value's shape before its segment runs (and are cached per input shapes).
"""
from __future__ import annotations

import ctypes

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
    if op.regions or not tensor_types_supported(op):
        return "ref"
    if "view" in op.opdef.traits and not name.endswith("_dyn"):
        return "view"
    return "native" if find_emitter(op) is not None else "ref"


class Plan:
    """The segments of a graph and their code. `load()` compiles and loads it (runnable targets
    only); `ir_text` is available for any target (for `ckir compile --emit`)."""

    def __init__(self, module: Module, graph: Graph, target: Target, threads: int):
        self.module, self.graph, self.target, self.threads = module, graph, target, threads
        self.ops = [op for op in graph if op is not graph.terminator]
        self.kinds = {op: classify(op) for op in self.ops}
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
        cg = CodeGen(target, max_tasks=4 * threads)
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
        self.ir_text = cg.ir_text()
        self.cached = False
        self.state = StateStore(module)
        self._shapes_cache: dict = {}
        self._has_dynamic = any(k == "ref" for k in self.kinds.values())

    def load(self, use_cache: bool = True) -> None:
        check_runnable(self.target)
        rt = Runtime.get(self.target)
        rt.set_threads(self.threads)
        segs = [s for s in self.steps if s.kind == "native"]
        if segs:
            obj, self.cached = jit.object_code(self.ir_text, self.target, use_cache)
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
        cg.segment(step.name, run, layout, emits)
        self.steps.append(step)

    # --- per call ---------------------------------------------------------------------------------
    def _shapes(self, env_shapes: dict, op) -> list:
        """Concrete result shapes of `op` from its operands' concrete shapes."""
        types = [TensorType(env_shapes[v], v.type.dtype) for v in op.operands]
        out = op.opdef.infer(types, op.attrs)
        shapes = []
        for r, t in zip(op.results, out):
            if not t.is_static:
                raise CkirError(f"{op.location()}: the llvm backend cannot size this result "
                                f"before running it ({t})")
            shapes.append(t.shape)
        return shapes

    def run(self, inputs: list, bind: dict) -> list:
        self.state.begin()
        outs = self._run(inputs, bind)
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
        shapes = dict(cached) if cached is not None else {v: a.shape for v, a in env.items()
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
                shapes[op.results[0]] = a.shape
            elif step.kind == "ref":
                op = step.ops[0]
                self._run_ref(op, env, bind)
                for r in op.results:
                    if isinstance(env[r], np.ndarray):
                        shapes[r] = env[r].shape
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


def _contiguous(a: np.ndarray) -> np.ndarray:
    # np.ascontiguousarray would turn a 0-d array into a 1-d one
    return a if a.flags.c_contiguous else np.array(a, order="C")


class LLVMBackend:
    name = "llvm"

    def compile(self, module: Module, graph: Graph, target=None, threads=None, cache: bool = True):
        """Options: target (default $CKIR_TARGET or the best this CPU runs), threads (default:
        the CPUs this process may use), cache (reuse compiled code from the disk cache)."""
        from .runtime import default_threads
        from .target import make_target
        plan = Plan(module, graph, make_target(target), int(threads or default_threads()))
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
