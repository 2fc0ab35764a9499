"""fuse{level=1}: merge chains of elementwise ops (broadcasting, casts, where, compares) into
`fused.elementwise` ops computed in one loop, so intermediates are never written to memory.

Groups grow from a consumer backwards: a producer joins when it is elementwise, every user of
its result is already in the group (else the result must be materialized anyway), its result
broadcasts to the group's result, and the cost model agrees: fusing a producer smaller than the
result recomputes it per result element, which is allowed only while the extra FLOPs stay
under FLOPS_PER_BYTE times the bytes the fusion saves (writing and reading the intermediate).
Scalar constants are copied into the bodies.

Levels 2 and 3 (reductions, matmul epilogues, horizontal merges, attention) are not
implemented yet: asking for them is an error rather than a silent level 1.
"""
from __future__ import annotations

import math

from ckir.builder import Builder
from ckir.errors import CkirError
from ckir.ir import Block, Module, Op
from ckir.opdef import get_op
from ckir.pipeline import Pass, register_pass
from ckir.types import TensorType, broadcast_shapes, concrete

FLOPS_PER_BYTE = 4          # recompute allowed per byte of memory traffic saved


def _numel(t, bind) -> int:
    return math.prod(concrete(t.shape, bind))


def fusible(op) -> bool:
    od = op.opdef
    return (od.pure and "elementwise" in od.traits and not op.regions and len(op.results) == 1
            and all(type(v.type) is TensorType and not v.type.dtype.is_string for v in (*op.operands, *op.results)))


def _fits(t: TensorType, out: TensorType) -> bool:
    try:
        return broadcast_shapes(t.shape, out.shape) == tuple(out.shape)
    except CkirError:
        return False


def _worth(p, out, bind) -> bool:
    n_out, n_p = _numel(out.type, bind), _numel(p.results[0].type, bind)
    if n_p >= n_out:
        return True
    extra = p.opdef.cost(p, bind).flops / max(n_p, 1) * (n_out - n_p)
    saved = 2 * p.results[0].type.nbytes(bind)
    return extra <= FLOPS_PER_BYTE * saved


def find_groups(block: Block, bind) -> list[list[Op]]:
    """Groups of at least two elementwise ops, each listed in program order."""
    ops = [op for op in block if op is not block.terminator]
    pos = {op: i for i, op in enumerate(ops)}
    taken: set = set()
    groups = []
    for root in reversed(ops):
        if root in taken or not fusible(root):
            continue
        group = {root}
        frontier = [root]
        out = root.results[0]
        while frontier:
            o = frontier.pop()
            for v in o.operands:
                p = v.op
                if p is None or p in group or p in taken or p not in pos or not fusible(p):
                    continue
                if any(u not in group for u, _ in p.results[0].uses):
                    continue
                if not _fits(p.results[0].type, out.type) or not _worth(p, out, bind):
                    continue
                group.add(p)
                frontier.append(p)
        if len(group) >= 2:
            taken |= group
            groups.append(sorted(group, key=pos.__getitem__))
    return groups


def fuse_group(group: list[Op]) -> Op:
    """Replace `group` (elementwise ops, last one the root) by one fused.elementwise op."""
    root = group[-1]
    members = set(group)
    external: list = []
    for op in group:
        for v in op.operands:
            if (v.op is None or v.op not in members) and v not in external:
                if v.op is not None and v.op.opdef.name == "nn.constant" and v.type.numel == 1:
                    continue                  # copied into the body
                external.append(v)
    body = Block([v.type for v in external], [v.name for v in external])
    env = dict(zip(external, body.args))
    bb = Builder.at_end(body)
    for op in group:
        for v in op.operands:
            if v not in env:                  # a scalar constant
                env[v] = bb.insert(Op(v.op.opdef, [], [v.type], dict(v.op.attrs))).results[0]
        new = bb.insert(Op(op.opdef, [env[v] for v in op.operands], [r.type for r in op.results],
                           dict(op.attrs), (), op.loc, [r.name for r in op.results]))
        env.update(zip(op.results, new.results))
    body.append(Op(get_op("ckir.return"), [env[root.results[0]]], ()))
    fused = Builder.before(root, loc=root.loc).create("fused.elementwise", external, {},
                                                      result_types=[root.results[0].type], regions=[body])
    fused.results[0].name = root.results[0].name
    root.results[0].replace_all_uses_with(fused.results[0])
    for op in reversed(group):
        op.erase()
    return fused


def moved_bytes(module: Module, bind) -> int:
    total = 0
    for g in module.graphs.values():
        for op in g:
            if op.opdef.name in ("ckir.return", "ckir.weight", "nn.constant", "ckir.state"):
                continue
            c = op.opdef.cost(op, bind)
            total += c.bytes_read + c.bytes_written
    return total


def kernels(module: Module) -> int:
    return sum(1 for g in module.graphs.values() for op in g
               if op.opdef.name not in ("ckir.return", "ckir.weight", "nn.constant", "ckir.state")
               and "view" not in op.opdef.traits)


@register_pass
class Fuse(Pass):
    """Fuse elementwise chains into single loops (level 1), with statistics."""
    name = "fuse"
    level: int = 1

    def run(self, module):
        if self.level not in (1, 2, 3):
            raise CkirError(f"fuse: level must be 1, 2 or 3, not {self.level}")
        if self.level > 1:
            raise CkirError(f"fuse: level {self.level} (reductions, matmul epilogues, attention) is not "
                            "implemented yet; use fuse{level=1}")
        bind: dict = {}
        self.stat("kernels before", kernels(module))
        self.stat("bytes moved before", moved_bytes(module, bind))
        for g in module.graphs.values():
            for group in find_groups(g, bind):
                fuse_group(group)
                self.stat("elementwise groups")
                self.stat("ops fused", len(group))
        self.stat("kernels after", kernels(module))
        self.stat("bytes moved after", moved_bytes(module, bind))
