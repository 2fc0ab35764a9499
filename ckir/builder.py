"""Builder: create ops at an insertion point with their result types inferred.

    b = Builder.at_end(graph)
    y = b.nn.matmul(x, w, transpose_b=True)   # dialect.op(operands..., attrs...)
    z = b.nn.mul(y, 0.5)                        # Python scalars become nn.constant of y's dtype
"""
from __future__ import annotations

import numpy as np

from .errors import CkirError
from .ir import Block, Op, Value
from .opdef import OpDef, get_op
from .types import TensorType


class Builder:
    def __init__(self, block: Block, before: Op | None = None, loc: str | None = None, listener=None):
        self.block = block
        self.anchor = before      # insert before this op; None appends at the end
        self.loc = loc            # location given to every created op
        self.listener = listener  # called with every created op (the rewrite driver listens)

    @classmethod
    def at_end(cls, block: Block, **kw) -> Builder:
        return cls(block, None, **kw)

    @classmethod
    def before(cls, op: Op, **kw) -> Builder:
        return cls(op.parent, op, **kw)

    @classmethod
    def after(cls, op: Op, **kw) -> Builder:
        return cls(op.parent, op.next, **kw)

    def insert(self, op: Op) -> Op:
        if self.anchor is None:
            self.block.append(op)
        else:
            self.block.insert_before(self.anchor, op)
        if self.listener is not None:
            self.listener(op)
        return op

    def create(self, opdef: OpDef | str, operands=(), attrs: dict | None = None, result_types=None,
               regions=(), loc: str | None = None) -> Op:
        """Create and insert an op; result types are inferred unless given."""
        if isinstance(opdef, str):
            opdef = get_op(opdef)
        attrs = opdef.make_attrs(attrs or {})
        operands = list(operands)
        if result_types is None:
            if opdef.declared_types:
                raise CkirError(f"{opdef.name}: result types must be given")
            try:
                result_types = opdef.infer([v.type for v in operands], attrs)
            except CkirError as e:
                raise type(e)(f"{opdef.name}: {e}") from None
        return self.insert(Op(opdef, operands, result_types, attrs, regions, loc or self.loc))

    def op(self, name: str, *operands, **attrs):
        """`create` for the common case; returns the result Value, or a tuple of them for ops
        with several (or a variadic number of) results."""
        opdef = get_op(name)
        flat = list(_flatten(operands))
        # a Python number takes the dtype of the first non-bool Value operand
        given = [v for v in flat if isinstance(v, Value)]
        ref = next((v for v in given if not v.type.dtype.is_bool), given[0] if given else None)
        vals = [v if isinstance(v, Value) else self._lift(v, ref, name) for v in flat]
        op = self.create(opdef, vals, attrs)
        if opdef.variadic_results or len(op.results) != 1:
            return op.results
        return op.results[0]

    def _lift(self, x, ref: Value | None, name: str) -> Value:
        if isinstance(x, (bool, int, float, np.ndarray, np.generic)):
            dtype = ref.type.dtype.np if ref is not None and not isinstance(x, np.ndarray) else None
            return self.constant(x, dtype)
        raise CkirError(f"{name}: operand {x!r} is neither a Value nor a number")

    def inline(self, block: Block, args) -> list:
        """Copy `block`'s ops here with its arguments replaced by `args`; returns the values its
        terminator returns (fused ops differentiate and unfuse through this)."""
        env = dict(zip(block.args, args))
        for op in block:
            if "terminator" in op.opdef.traits:
                return [env[v] for v in op.operands]
            regions = [self._clone_block(r) for r in op.regions]
            new = self.insert(Op(op.opdef, [env[v] for v in op.operands], [r.type for r in op.results],
                                 dict(op.attrs), regions, op.loc or self.loc, [r.name for r in op.results]))
            if op.meta:
                new.meta = dict(op.meta)
            env.update(zip(op.results, new.results))
        raise CkirError("inline: the block has no terminator")

    @staticmethod
    def _clone_block(block: Block) -> Block:
        nb = Block([a.type for a in block.args], [a.name for a in block.args])
        outs = Builder.at_end(nb).inline(block, nb.args)
        from .opdef import get_op
        nb.append(Op(get_op("ckir.return"), outs, ()))
        return nb

    def constant(self, value, dtype=None) -> Value:
        arr = np.asarray(value, dtype=dtype)
        return self.create("nn.constant", (), {"value": arr}).results[0]

    def weight(self, module, name: str) -> Value:
        w = module.weights.get(name)
        if w is None:
            raise CkirError(f"no weight @{name} in module")
        return self.create("ckir.weight", (), {"name": name}, result_types=[w.type]).results[0]

    def __getattr__(self, dialect: str):
        if dialect.startswith("_"):
            raise AttributeError(dialect)
        return _Dialect(self, dialect)


class _Dialect:
    __slots__ = ("b", "d")

    def __init__(self, b, d):
        self.b, self.d = b, d

    def __getattr__(self, op):
        name = f"{self.d}.{op[:-1] if op.endswith('_') else op}"   # b.nn.and_ -> nn.and
        return lambda *operands, **attrs: self.b.op(name, *operands, **attrs)


def _flatten(xs):
    for x in xs:
        if isinstance(x, (list, tuple)):
            yield from x
        else:
            yield x


def new_graph(name: str = "main", inputs: dict | None = None):
    """A Graph with named inputs ({name: TensorType}) and a Builder appending to it."""
    from .ir import Graph
    inputs = inputs or {}
    g = Graph(name, list(inputs.values()), list(inputs))
    return g, Builder.at_end(g)


__all__ = ["Builder", "new_graph", "TensorType"]
