"""fuse{level=1}: merge chains of elementwise ops (broadcasting, casts, where, compares) into
`fused.elementwise` ops computed in one loop, so intermediates are never written to memory.

Groups grow from a consumer backwards: a producer joins when it is elementwise, every user of
its result is already in the group (else the result must be materialized anyway), its result
broadcasts to the group's result, and the cost model agrees: fusing a producer smaller than the
result recomputes it per result element, which is allowed only while the extra FLOPs stay
under FLOPS_PER_BYTE times the bytes the fusion saves (writing and reading the intermediate).
Scalar constants are copied into the bodies.

fuse{level=2} first makes, before the level-1 chains:
- `fused.reduction`: a row normalization (softmax, log_softmax, layer_norm, rms_norm) with the
  elementwise ops producing its input (grown backwards as above, against the normalization's
  shape) and the elementwise ops consuming its result (the epilogue: a DAG of ops whose
  results have the normalization's shape, only the last one used outside, see _epilogue).
  Normalizations are matched before matmuls, so a prologue that could also be a matmul
  epilogue (attention's scale and mask, a residual add before a norm) goes to the
  normalization, where it costs no pass of its own. A kernel passes over each row
  2-3 times (max/sum/write for softmax, mean/variance/write for layer_norm), recomputing the
  prologue each time: the prologue joins only while those extra FLOPs stay under
  FLOPS_PER_BYTE times the bytes the fusion saves;
- `fused.matmul`: an nn.matmul with the elementwise ops consuming the product (bias,
  activation, residual add, scaling; an epilogue as above whose results also keep the
  product's dtype). Nothing is recomputed, so the cost model always agrees.
Conv epilogues and quantizing activations for the next quantized matmul are not done.
The default level stays 1 until level 3 exists.

Level 3 (horizontal merges, attention) is not implemented yet: asking for it is an error
rather than a silent level 2.
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


def fuse_group(group: list[Op], name: str = "fused.elementwise") -> Op:
    """Replace `group` (ops in program order, last one the root, every other result used only
    inside the group) by one fused op `name` whose body is the group."""
    root = group[-1]
    members = set(group)
    external: list = []
    for op in group:
        for v in op.operands:
            if (v.op is None or v.op not in members) and v not in external:
                if (v.op is not None and v.op.opdef.name == "nn.constant" and v.type.numel == 1
                        and "elementwise" in op.opdef.traits):
                    continue                  # copied into the body (a matmul's operands stay buffers)
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
    fused = Builder.before(root, loc=root.loc).create(name, external, {},
                                                      result_types=[root.results[0].type], regions=[body])
    fused.results[0].name = root.results[0].name
    root.results[0].replace_all_uses_with(fused.results[0])
    for op in reversed(group):
        op.erase()
    return fused


ROW_OPS = {"nn.softmax": 3, "nn.log_softmax": 3, "nn.layer_norm": 3, "nn.rms_norm": 2}   # passes per row


def _epilogue(start: Op, taken: set, same_type: bool, pos: dict) -> list[Op]:
    """The largest group of elementwise ops consuming `start`'s result (a DAG: e.g. bias add
    then erf GELU, which reads the sum twice) whose every result has its shape (and dtype,
    with `same_type`), such that only the last one's result is used outside: grown forwards
    over users, then cut to the largest valid subgroup ending at one of its ops."""
    v0 = start.results[0]
    grown: list = []
    inside = {v0}
    frontier = [v0]
    while frontier:
        v = frontier.pop()
        for u in v.users:
            if u in grown or u in taken or u not in pos or not fusible(u):
                continue
            r = u.results[0].type
            if tuple(r.shape) != tuple(v0.type.shape) or (same_type and r.dtype is not v0.type.dtype):
                continue
            grown.append(u)
            inside.add(u.results[0])
            frontier.append(u.results[0])
    grown.sort(key=pos.__getitem__)
    best: list = []
    for root in reversed(grown):
        sub = {root}
        stack = [root]
        while stack:                          # root's ancestors among the grown ops
            for v in stack.pop().operands:
                if v.op in grown and v.op not in sub:
                    sub.add(v.op)
                    stack.append(v.op)
        if not any(v.op is start for o in sub for v in o.operands):
            continue
        members = sub | {start}
        ok = all(u in members for o in members if o is not root for u in o.results[0].users)
        if ok and len(sub) > len(best):
            best = sorted(sub, key=pos.__getitem__)
    return best


def find_level2_groups(block: Block, bind) -> list[tuple[list[Op], str]]:
    """Row normalizations with their prologue and epilogue, matmuls with their epilogue."""
    ops = [op for op in block if op is not block.terminator]
    pos = {op: i for i, op in enumerate(ops)}
    taken: set = set()
    groups = []
    # normalizations first: a prologue recomputed inside the row passes saves more than a
    # matmul epilogue applied in a pass of its own
    for r in sorted(ops, key=lambda o: o.opdef.name == "nn.matmul"):
        name = r.opdef.name
        if r in taken or len(r.results) != 1 or type(r.results[0].type) is not TensorType:
            continue
        if name == "nn.matmul":
            chain = _epilogue(r, taken, True, pos)
            if chain:
                group = [r] + chain
                taken |= set(group)
                groups.append((group, "fused.matmul"))
            continue
        if name not in ROW_OPS:
            continue
        out = r.results[0]
        group = {r}
        frontier = [r]
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
                # the prologue is recomputed in each pass over a row
                flops = (ROW_OPS[name] - 1) * p.opdef.cost(p, bind).flops
                if flops > FLOPS_PER_BYTE * 2 * p.results[0].type.nbytes(bind):
                    continue
                group.add(p)
                frontier.append(p)
        group |= set(_epilogue(r, taken | group, False, pos))
        if len(group) >= 2:
            taken |= group
            groups.append((sorted(group, key=pos.__getitem__), "fused.reduction"))
    return groups


def moved_bytes_of(ops, bind) -> int:
    total = 0
    for op in ops:
        c = op.opdef.cost(op, bind)
        total += c.bytes_read + c.bytes_written
    return total


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
    """Fuse elementwise chains into single loops (level 1), normalizations with their prologue
    and epilogue and matmuls with their epilogue (level 2), with statistics."""
    name = "fuse"
    level: int = 1

    def run(self, module):
        if self.level not in (1, 2, 3):
            raise CkirError(f"fuse: level must be 1, 2 or 3, not {self.level}")
        if self.level > 2:
            raise CkirError(f"fuse: level {self.level} (horizontal merges, attention) is not "
                            "implemented yet; use fuse{level=2}")
        bind: dict = {}
        self.stat("kernels before", kernels(module))
        self.stat("bytes moved before", moved_bytes(module, bind))
        for g in module.graphs.values():
            if self.level >= 2:
                for group, name in find_level2_groups(g, bind):
                    before = moved_bytes_of(group, bind)
                    fused = fuse_group(group, name)
                    kind = "reduction" if name == "fused.reduction" else "matmul epilogue"
                    self.stat(f"{kind} groups")
                    self.stat(f"{kind}: ops fused", len(group))
                    self.stat(f"{kind}: bytes saved", before - moved_bytes_of([fused], bind))
            for group in find_groups(g, bind):
                fuse_group(group)
                self.stat("elementwise groups")
                self.stat("ops fused", len(group))
        self.stat("kernels after", kernels(module))
        self.stat("bytes moved after", moved_bytes(module, bind))
