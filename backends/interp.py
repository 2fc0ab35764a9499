"""The reference interpreter: runs a module with numpy through each op's declared `ref`.

It defines what every op means. Besides computing, it checks each result against the op's
declared type (dtype exactly; shape with symbolic dims bound consistently), so a wrong shape
rule or a wrong reference function is caught the first time it runs.
"""
from __future__ import annotations

import numpy as np

from ckir.errors import CkirError
from ckir.ir import Block, Graph, Module, Op
from ckir.types import OptType, SeqType, Sym, TensorType


def storage_shape(t: TensorType, shape) -> tuple:
    """The numpy shape holding a tensor of type `t` with logical `shape` (block-quantized types
    are raw bytes)."""
    d = t.dtype
    if d.is_quant:
        return tuple(shape[:-1]) + (shape[-1] // d.block_size * d.block_bytes,)
    return tuple(shape)


_ALL_STR = object()


def check_value(arr, t, bind: dict, what: str) -> None:
    """Check that `arr` holds a value of type `t`, binding named dims in `bind`. String tensors
    are object arrays of str. Sequences are lists of arrays (their elements' named dims are not
    bound: they may differ per element); optionals are None or their value."""
    if type(t) is SeqType:
        if not isinstance(arr, list):
            raise CkirError(f"{what}: expected a sequence (list of arrays), got {type(arr).__name__}")
        for i, a in enumerate(arr):
            check_value(a, t.elem, {}, f"{what}[{i}]")
        return
    if type(t) is OptType:
        if arr is not None:
            check_value(arr, t.elem, bind, what)
        return
    d = t.dtype
    want = np.dtype(np.uint8) if d.is_quant else d.np
    if not isinstance(arr, np.ndarray):
        raise CkirError(f"{what}: expected an array, got {type(arr).__name__}")
    if arr.dtype != want:
        raise CkirError(f"{what}: expected {d}, got {arr.dtype}")
    if d.is_string:
        bad = next((x for x in arr.flat if not isinstance(x, str)), _ALL_STR)
        if bad is not _ALL_STR:
            raise CkirError(f"{what}: a string tensor holds Python str elements, got "
                            f"{type(bad).__name__} {bad!r:.40}")
    if arr.ndim != t.rank:
        raise CkirError(f"{what}: expected rank {t.rank} ({t}), got shape {list(arr.shape)}")
    shape = arr.shape
    for i, dim in enumerate(t.shape):
        have = shape[i]
        if d.is_quant and i == t.rank - 1:
            if have % d.block_bytes:
                raise CkirError(f"{what}: innermost byte length {have} is not a whole number of "
                                f"{d} blocks ({d.block_bytes} bytes)")
            have = have // d.block_bytes * d.block_size
        if type(dim) is int:
            if have != dim:
                raise CkirError(f"{what}: dim {i} is {have}, type {t} says {dim}")
        elif dim.name is not None:
            b = bind.get(dim.name)
            if b is None:
                if dim.bound is not None and have > dim.bound:
                    raise CkirError(f"{what}: dim {i} ({dim.name}) is {have}, above its bound {dim.bound}")
                bind[dim.name] = have
            elif b != have:
                raise CkirError(f"{what}: dim {i} ({dim.name}) is {have}, but {dim.name} = {b} elsewhere")
        elif dim.bound is not None and have > dim.bound:
            raise CkirError(f"{what}: dim {i} is {have}, above its bound {dim.bound}")


def resolve_attrs(op: Op, bind: dict) -> dict:
    """Attributes with symbolic dims (in 'shape' attributes) replaced by their bound sizes."""
    attrs = op.attrs
    for k, a in op.opdef.attrs.items():
        if a.kind == "shape" and attrs[k] is not None and any(type(x) is Sym for x in attrs[k]):
            vals = []
            for x in attrs[k]:
                if type(x) is Sym:
                    if x.name not in bind:
                        raise CkirError(f"{op.location()}: dim '{x.name}' is not bound by any input")
                    x = bind[x.name]
                vals.append(x)
            attrs = dict(attrs)
            attrs[k] = tuple(vals)
    return attrs


class Interpreter:
    """Runs graphs of `module` through the ops' reference semantics.

    With `arena=True` (after the arena pass) every result is stored in one numpy buffer per
    section at its planned offset and read back from there, so a placement that lets two live
    tensors overlap changes the results: the plan is tested by running it."""

    def __init__(self, module: Module, arena: bool = False):
        self.module = module
        self.arena = arena
        self.state = StateStore(module)
        self.sections: dict | None = None
        self._last_use: dict[int, dict] = {}

    def weight(self, name: str) -> np.ndarray:
        w = self.module.weights.get(name)
        if w is None:
            raise CkirError(f"no weight @{name}")
        return w.array(self.module.base_dir)

    def _plan(self, block: Block) -> dict:
        """For each op, the values whose last use it is (so memory is released early)."""
        key = id(block)
        plan = self._last_use.get(key)
        if plan is None:
            last: dict = {}
            for op in block:
                for v in op.operands:
                    last[v] = op
            plan = {}
            for v, op in last.items():
                plan.setdefault(op, []).append(v)
            self._last_use[key] = plan
        return plan

    def run_block(self, block: Block, args: list, bind: dict) -> list:
        env = dict(zip(block.args, args))
        plan = self._plan(block)
        for op in block:
            od = op.opdef
            if "terminator" in od.traits:
                return [env[v] for v in op.operands]
            arrays = [env[v] for v in op.operands]
            extra = {}
            if od.name == "ckir.weight":
                extra["weights"] = self.weight
            elif od.name in ("ckir.state", "ckir.write_state"):
                extra["state"] = self.state
            if op.regions:
                extra["regions"] = [self._region_fn(r, bind) for r in op.regions]
            if od.ref_types:
                extra["types"] = [v.type for v in op.operands]
            try:
                outs = od.ref(arrays, resolve_attrs(op, bind), **extra)
            except CkirError as e:
                raise CkirError(f"{op.location()}: {e}") from None
            except (ValueError, TypeError, IndexError, FloatingPointError, ZeroDivisionError) as e:
                raise CkirError(f"{op.location()}: failed at run time: {e}") from None
            if len(outs) != len(op.results):
                raise CkirError(f"{op.location()}: reference gave {len(outs)} results, "
                                f"declared {len(op.results)}")
            place = op.meta.get("arena.place") if self.arena and op.meta else None
            for r, a in zip(op.results, outs):
                if type(r.type) is TensorType and not isinstance(a, np.ndarray):
                    a = np.asarray(a)
                check_value(a, r.type, bind, f"{op.location()}: result {r.index}")
                if place is not None:
                    a = self._into_arena(a, place[r.index], op)
                env[r] = a
            for v in plan.get(op, ()):
                env.pop(v, None)
        raise CkirError("block has no terminator")

    def _into_arena(self, a: np.ndarray, place, op) -> np.ndarray:
        sec, offset, size = place[0], place[1], place[2]
        if a.nbytes > size:
            raise CkirError(f"{op.location()}: result needs {a.nbytes} bytes, the arena planned {size}")
        buf = self.sections[sec]
        view = np.ndarray(a.shape, dtype=a.dtype, buffer=buf, offset=offset)
        np.copyto(view, a)     # a view result may already live there: copying onto itself is fine
        return view

    def _region_fn(self, region: Block, bind: dict):
        def run(*args):
            for a, v in zip(args, region.args):
                if type(v.type) is TensorType:
                    a = np.asarray(a)
                check_value(a, v.type, bind, f"region argument {v.index}")
            return self.run_block(region, list(args), bind)
        return run

    def run(self, graph: Graph, inputs: list, bind: dict) -> list:
        self.state.begin()
        outs = self._run(graph, inputs, bind)
        self.state.commit()
        return outs

    def _run(self, graph: Graph, inputs: list, bind: dict) -> list:
        if self.arena and self.sections is None:
            from ckir.passes.arena import section_stats
            stats = section_stats(graph)
            if not stats and any(op is not graph.terminator for op in graph):
                raise CkirError(f"graph @{graph.name} has no arena placements: run the arena pass first")
            self.sections = {sec: np.zeros(s["peak_bytes"], np.uint8) for sec, s in stats.items()}
        # IEEE semantics define the results (inf, nan); numpy's warnings about them are noise
        with np.errstate(all="ignore"):
            outs = self.run_block(graph, inputs, bind)
        if self.arena:
            outs = [np.array(o) if isinstance(o, np.ndarray) else o for o in outs]   # not views into the arena
        return outs


class StateStore:
    """The current values of a module's state. Writes made during a call are held back and
    applied only when the call completes, so a failed call leaves the state as it was."""

    def __init__(self, module: Module):
        self.module = module
        self.values: dict = {}
        self.pending: dict = {}

    def read(self, name: str) -> np.ndarray:
        a = self.values.get(name)
        if a is None:
            st = self.module.state[name]
            if st.init is not None:
                a = np.array(self.module.weights[st.init].array(self.module.base_dir))
            else:
                a = np.zeros(st.type.shape, st.type.dtype.np)
            a.flags.writeable = False
            self.values[name] = a
        return a

    def write(self, name: str, value: np.ndarray) -> None:
        v = np.array(value)
        v.flags.writeable = False
        self.pending[name] = v

    def begin(self) -> None:
        self.pending = {}

    def commit(self) -> None:
        self.values.update(self.pending)
        self.pending = {}

    def reset(self) -> None:
        self.values, self.pending = {}, {}


class InterpBackend:
    name = "interp"

    def compile(self, module: Module, graph: Graph, arena: bool = False, **options):
        """Option: arena=True runs inside the arena pass's placements (see Interpreter)."""
        if options:
            raise CkirError(f"the interp backend's only option is arena, got {', '.join(options)}")
        interp = Interpreter(module, arena=arena)

        def run(inputs, bind):
            return interp.run(graph, inputs, bind)
        run.state = interp.state
        return run
