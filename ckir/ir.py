"""The IR: Value, Op, Block, Graph, Module, Weight.

Ops live in a doubly linked list inside their Block, so inserting and erasing are O(1). Every
Value knows its uses; the mutation methods here keep use-def chains consistent, which is why
operand and result lists are tuples: passes change them through `set_operand`,
`replace_all_uses_with`, `replace_with`, `erase` and the insert methods, never by hand.
"""
from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator, Sequence

import numpy as np

from .errors import CkirError
from .types import TensorType


@contextlib.contextmanager
def gc_paused():
    """Pause Python's cyclic garbage collector while building or rewriting a lot of IR.

    Ops and values reference each other, so the IR is all cycles, and bulk work allocates
    enough to trigger full collections that rescan the whole growing heap: that made passes on
    100k ops 10x slower. The parser, the pass manager and the frontends use this; garbage
    cycles left behind are collected once the collector runs again."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def freeze(v):
    """Lists as tuples, recursively: annotation values are hashable and print back as they
    parse."""
    if isinstance(v, (list, tuple)):
        return tuple(freeze(x) for x in v)
    if isinstance(v, (bool, int, float, str)):
        return v
    raise CkirError(f"annotation values are ints, floats, bools, strings and lists of them, not {v!r}")


class Value:
    """An SSA value: an op result or a block argument."""
    __slots__ = ("type", "owner", "index", "name", "uses", "__weakref__")

    def __init__(self, type: TensorType, owner, index: int, name: str | None = None):
        self.type = type
        self.owner = owner        # Op for results, Block for block arguments
        self.index = index
        self.name = name          # a hint for printing and for graph input names
        self.uses: dict[tuple[Op, int], None] = {}   # insertion-ordered set of (user, operand#)

    @property
    def op(self) -> Op | None:
        """The op defining this value, or None for a block argument."""
        o = self.owner
        return o if type(o) is Op else None

    @property
    def users(self) -> list[Op]:
        return list(dict.fromkeys(u for u, _ in self.uses))

    def has_uses(self) -> bool:
        return bool(self.uses)

    def replace_all_uses_with(self, new: Value, *, where=None) -> None:
        """Point every use (or those for which `where(user_op)` holds) at `new`."""
        if new is self:
            return
        for user, i in list(self.uses):
            if where is None or where(user):
                user.set_operand(i, new)

    def __repr__(self):
        return f"<Value {self.name or id(self)}: {self.type}>"


class Op:
    """One operation. `opdef` is its declaration (see ckir.opdef); attrs hold every declared
    attribute (defaults filled in); `meta` holds discardable annotations (prefix.name keys)."""
    __slots__ = ("opdef", "operands", "results", "attrs", "regions", "parent", "prev", "next",
                 "loc", "pos", "meta", "__weakref__")

    def __init__(self, opdef, operands: Sequence[Value], result_types: Sequence[TensorType],
                 attrs: dict | None = None, regions: Sequence[Block] = (), loc: str | None = None,
                 result_names: Sequence[str | None] | None = None):
        self.opdef = opdef
        self.operands = tuple(operands)
        for i, v in enumerate(self.operands):
            if type(v) is not Value:
                raise CkirError(f"{opdef.name}: operand {i} is {type(v).__name__}, not a Value")
            v.uses[(self, i)] = None
        names = result_names or (None,) * len(result_types)
        self.results = tuple(Value(t, self, i, n) for i, (t, n) in enumerate(zip(result_types, names)))
        self.attrs = attrs if attrs is not None else {}
        self.regions = tuple(regions)
        for r in self.regions:
            r.parent_op = self
        self.parent: Block | None = None
        self.prev: Op | None = None
        self.next: Op | None = None
        self.loc = loc            # source name (e.g. the ONNX node name), printed as loc("...")
        self.pos = None           # (file, line, col) when parsed from text; for error messages
        # discardable attributes: annotations passes leave for later passes and reports (names
        # with a dialect prefix, e.g. arena.place); not part of the op's declared meaning
        self.meta: dict | None = None

    @property
    def name(self) -> str:
        return self.opdef.name

    @property
    def result(self) -> Value:
        if len(self.results) != 1:
            raise CkirError(f"{self.name} has {len(self.results)} results, not 1")
        return self.results[0]

    def attr(self, key):
        return self.attrs[key]

    def set_meta(self, key: str, value) -> None:
        """Set a discardable annotation; `key` must have a prefix (e.g. "arena.place")."""
        if "." not in key:
            raise CkirError(f"discardable attribute '{key}' needs a prefix, like 'arena.place'")
        if self.meta is None:
            self.meta = {}
        self.meta[key] = freeze(value)

    def has_trait(self, trait) -> bool:
        return trait in self.opdef.traits

    def set_operand(self, i: int, v: Value) -> None:
        old = self.operands[i]
        del old.uses[(self, i)]
        ops = list(self.operands)
        ops[i] = v
        self.operands = tuple(ops)
        v.uses[(self, i)] = None

    def drop_operands(self) -> None:
        for i, v in enumerate(self.operands):
            del v.uses[(self, i)]
        self.operands = ()

    def erase(self) -> None:
        """Remove this op from its block and drop its operand uses. Results must be unused."""
        for r in self.results:
            if r.uses:
                users = ", ".join(sorted({u.name for u, _ in r.uses}))
                raise CkirError(f"cannot erase {self.name}: result {r.index} is still used by {users}")
        for reg in self.regions:
            for op in reversed(list(reg.walk())):
                op.drop_operands()
        if self.parent is not None:
            self.parent._unlink(self)
        self.drop_operands()

    def replace_with(self, values: Sequence[Value] | Value) -> None:
        """Replace all uses of this op's results with `values`, then erase it."""
        if isinstance(values, Value):
            values = (values,)
        if len(values) != len(self.results):
            raise CkirError(f"replacing {self.name}: {len(self.results)} results, got {len(values)} values")
        for r, v in zip(self.results, values):
            r.replace_all_uses_with(v)
        self.erase()

    def walk(self) -> Iterator[Op]:
        yield self
        for reg in self.regions:
            yield from reg.walk()

    def location(self) -> str:
        """Where this op came from, for error messages."""
        parts = []
        if self.pos:
            parts.append("%s:%d:%d" % self.pos)
        parts.append(self.name)
        if self.loc:
            parts.append(f'loc("{self.loc}")')
        return " ".join(parts)

    def __repr__(self):
        return f"<Op {self.name} at {id(self):#x}>"


class Block:
    """An ordered list of ops with arguments; the body of a graph or of an op's region.
    Its last op is a terminator (`ckir.return`) whose operands are the block's outputs."""
    __slots__ = ("args", "first", "last", "parent_op", "_len", "__weakref__")

    def __init__(self, arg_types: Sequence[TensorType] = (), arg_names=None):
        names = arg_names or [None] * len(arg_types)
        self.args = tuple(Value(t, self, i, n) for i, (t, n) in enumerate(zip(arg_types, names)))
        self.first: Op | None = None
        self.last: Op | None = None
        self.parent_op: Op | None = None
        self._len = 0

    def __iter__(self) -> Iterator[Op]:
        op = self.first
        while op is not None:
            nxt = op.next    # allows erasing the current op while iterating
            yield op
            op = nxt

    def __len__(self):
        return self._len

    def reversed(self) -> Iterator[Op]:
        op = self.last
        while op is not None:
            prv = op.prev
            yield op
            op = prv

    def walk(self) -> Iterator[Op]:
        """Every op in this block and, recursively, in its ops' regions (pre-order)."""
        for op in self:
            yield op
            for reg in op.regions:
                yield from reg.walk()

    def add_arg(self, type: TensorType, name: str | None = None) -> Value:
        v = Value(type, self, len(self.args), name)
        self.args = self.args + (v,)
        return v

    def erase_arg(self, i: int) -> None:
        """Remove an unused argument; later arguments shift down."""
        a = self.args[i]
        if a.uses:
            raise CkirError(f"cannot remove argument {i} ({a.name or '?'}): it is still used")
        self.args = self.args[:i] + self.args[i + 1:]
        for j, v in enumerate(self.args):
            v.index = j

    def _check_free(self, op: Op):
        if op.parent is not None:
            raise CkirError(f"{op.name} is already in a block; detach it first")

    def append(self, op: Op) -> Op:
        self._check_free(op)
        op.parent, op.prev, op.next = self, self.last, None
        if self.last is None:
            self.first = op
        else:
            self.last.next = op
        self.last = op
        self._len += 1
        return op

    def insert_before(self, anchor: Op, op: Op) -> Op:
        if anchor.parent is not self:
            raise CkirError("insert_before: anchor is not in this block")
        self._check_free(op)
        op.parent, op.prev, op.next = self, anchor.prev, anchor
        if anchor.prev is None:
            self.first = op
        else:
            anchor.prev.next = op
        anchor.prev = op
        self._len += 1
        return op

    def insert_after(self, anchor: Op, op: Op) -> Op:
        if anchor.next is None:
            if anchor.parent is not self:
                raise CkirError("insert_after: anchor is not in this block")
            return self.append(op)
        return self.insert_before(anchor.next, op)

    def _unlink(self, op: Op) -> None:
        if op.prev is None:
            self.first = op.next
        else:
            op.prev.next = op.next
        if op.next is None:
            self.last = op.prev
        else:
            op.next.prev = op.prev
        op.parent = op.prev = op.next = None
        self._len -= 1

    def detach(self, op: Op) -> Op:
        """Take `op` out of this block without touching its operands (to move it elsewhere)."""
        if op.parent is not self:
            raise CkirError("detach: op is not in this block")
        self._unlink(op)
        return op

    @property
    def terminator(self) -> Op | None:
        last = self.last
        return last if last is not None and "terminator" in last.opdef.traits else None

    @property
    def outputs(self) -> tuple[Value, ...]:
        t = self.terminator
        return t.operands if t is not None else ()


class Graph(Block):
    """A named top-level block: the inputs are its args, the outputs its `ckir.return` operands,
    named by `output_names`."""
    __slots__ = ("name", "output_names")

    def __init__(self, name: str = "main", input_types=(), input_names=None):
        super().__init__(input_types, input_names)
        self.name = name
        self.output_names: list[str] = []

    @property
    def inputs(self) -> tuple[Value, ...]:
        return self.args

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.args]

    def set_outputs(self, values: Sequence[Value], names: Sequence[str] | None = None) -> Op:
        """Make `values` the graph outputs (replacing any existing return op)."""
        from .opdef import get_op
        t = self.terminator
        if t is not None:
            t.erase()
        names = list(names) if names is not None else [f"out{i}" for i in range(len(values))]
        if len(names) != len(values):
            raise CkirError(f"graph @{self.name}: {len(values)} outputs but {len(names)} names")
        if len(set(names)) != len(names):
            raise CkirError(f"graph @{self.name}: duplicate output names {names}")
        self.output_names = names
        return self.append(Op(get_op("ckir.return"), values, ()))


class FileSource:
    """Weight bytes at `offset` in `path` (relative paths resolve against the module's directory)."""
    __slots__ = ("path", "offset")

    def __init__(self, path: str, offset: int = 0):
        self.path, self.offset = path, offset

    def __eq__(self, other):
        return type(other) is FileSource and (self.path, self.offset) == (other.path, other.offset)


class Weight:
    """A named parameter. `data` is a numpy array (in memory), a FileSource, or None when the
    bytes are not available (printed from memory and parsed back). `inline` arrays print in
    the text whatever their size (set for weights parsed from inline text)."""
    __slots__ = ("name", "type", "data", "inline", "_cached")

    def __init__(self, name: str, type: TensorType, data=None, inline: bool = False):
        self.name, self.type, self.data, self.inline = name, type, data, inline
        self._cached = None

    def array(self, base_dir: str | None = None) -> np.ndarray:
        """The weight's contents: float/int types with their shape; block-quantized types as
        raw uint8 of shape (..., K // block_size * block_bytes). Files are memory-mapped."""
        if self._cached is not None:
            return self._cached
        t = self.type
        if not t.is_static:
            raise CkirError(f"weight @{self.name} has symbolic shape {t}")
        if t.dtype.is_quant:
            shape = t.shape[:-1] + (t.shape[-1] // t.dtype.block_size * t.dtype.block_bytes,)
            npd = np.dtype(np.uint8)
        else:
            shape, npd = t.shape, t.dtype.np
        d = self.data
        if d is None:
            raise CkirError(f"weight @{self.name} has no data: it was printed from memory; "
                            "save the module with ckir.save() to keep its bytes")
        if isinstance(d, FileSource):
            path = d.path if base_dir is None or os.path.isabs(d.path) else os.path.join(base_dir, d.path)
            need = d.offset + int(np.prod(shape)) * npd.itemsize
            try:
                size = os.path.getsize(path)
            except OSError as e:
                raise CkirError(f"weight @{self.name}: cannot open {path}: {e.strerror}") from None
            if size < need:
                raise CkirError(f"weight @{self.name}: {path} has {size} bytes, needs {need} "
                                f"(offset {d.offset} + {need - d.offset})")
            arr = np.memmap(path, dtype=npd, mode="r", offset=d.offset, shape=shape)
        else:
            arr = np.asarray(d)
            if arr.shape != shape or arr.dtype != npd:
                raise CkirError(f"weight @{self.name}: data is {arr.dtype}{list(arr.shape)}, "
                                f"type says {npd}{list(shape)}")
        self._cached = arr
        return arr


class State:
    """A persistent tensor (a KV cache, trained parameters, optimizer moments): graphs read it
    with ckir.state and replace it with ckir.write_state; it starts as zeros or as a copy of the
    weight named by `init`."""
    __slots__ = ("name", "type", "init")

    def __init__(self, name: str, type: TensorType, init: str | None = None):
        self.name, self.type, self.init = name, type, init


class Module:
    """Graphs plus the weights and state they reference. `base_dir` resolves relative weight
    files."""

    def __init__(self, name: str = "module"):
        self.name = name
        self.graphs: dict[str, Graph] = {}
        self.weights: dict[str, Weight] = {}
        self.state: dict[str, State] = {}
        self.base_dir: str | None = None

    def add_graph(self, graph: Graph) -> Graph:
        if graph.name in self.graphs:
            raise CkirError(f"module already has a graph @{graph.name}")
        self.graphs[graph.name] = graph
        return graph

    def add_weight(self, name: str, type_or_array, data=None) -> Weight:
        """Add a weight from a numpy array, or from a TensorType and a data source."""
        if name in self.weights:
            raise CkirError(f"module already has a weight @{name}")
        if isinstance(type_or_array, TensorType):
            w = Weight(name, type_or_array, data)
        else:
            arr = np.asarray(type_or_array)
            w = Weight(name, TensorType(arr.shape, arr.dtype), arr)
        self.weights[name] = w
        return w

    def add_state(self, name: str, type: TensorType, init: str | None = None) -> State:
        """Declare persistent state: zeros, or a copy of weight `init`."""
        if name in self.state:
            raise CkirError(f"module already has state @{name}")
        if not type.is_static:
            raise CkirError(f"state @{name} must have a static type, not {type}")
        if init is not None:
            w = self.weights.get(init)
            if w is None:
                raise CkirError(f"state @{name}: no weight @{init} to start from")
            if w.type is not type:
                raise CkirError(f"state @{name} is {type} but weight @{init} is {w.type}")
        st = self.state[name] = State(name, type, init)
        return st

    @property
    def main(self) -> Graph:
        if len(self.graphs) == 1:
            return next(iter(self.graphs.values()))
        if "main" in self.graphs:
            return self.graphs["main"]
        raise CkirError(f"module has graphs {', '.join(self.graphs)} and none is @main")

    def graph(self, name: str | None = None) -> Graph:
        if name is None:
            return self.main
        try:
            return self.graphs[name]
        except KeyError:
            raise CkirError(f"no graph @{name} (module has {', '.join(self.graphs) or 'none'})") from None

    def walk(self) -> Iterator[Op]:
        for g in self.graphs.values():
            yield from g.walk()

    def num_ops(self) -> int:
        return sum(1 for _ in self.walk())

    def print(self, **kw) -> str:
        from .printer import print_module
        return print_module(self, **kw)

    def verify(self) -> None:
        from .verifier import verify
        verify(self)

    def to_onnx(self, graph: str | None = None):
        """This module's graph as an onnx.ModelProto (for ops that map back to ONNX)."""
        from ckir.frontends.onnx.export import to_onnx
        return to_onnx(self, graph)

    def clone(self) -> Module:
        from .parser import parse
        m = parse(self.print(), weights={n: w.data for n, w in self.weights.items()})
        m.base_dir = self.base_dir
        return m

    def __str__(self):
        return self.print()
