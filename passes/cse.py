"""cse: merge pure ops that compute the same thing from the same operands."""
from __future__ import annotations

from ckir.ir import Block
from ckir.pipeline import Pass, register_pass


def _key(op):
    operands = op.operands
    if "commutative" in op.opdef.traits:
        operands = tuple(sorted(operands, key=id))
    attrs = tuple(sorted((k, v) for k, v in op.attrs.items() if v is not None))
    meta = tuple(sorted(op.meta.items())) if op.meta else ()
    return (op.opdef, operands, attrs, meta, tuple(r.type for r in op.results))


def cse_block(block: Block) -> int:
    seen: dict = {}
    merged = 0
    for op in block:
        for reg in op.regions:
            merged += cse_block(reg)
        if not op.opdef.pure or op.regions:
            continue
        try:
            key = _key(op)
            prev = seen.get(key)
        except TypeError:        # an unhashable attribute value: leave the op alone
            continue
        if prev is None:
            seen[key] = op
        else:
            op.replace_with(prev.results)
            merged += 1
    return merged


@register_pass
class CSE(Pass):
    """Common subexpression elimination over pure ops (commutative operands in any order)."""
    name = "cse"

    def run(self, module):
        n = sum(cse_block(g) for g in module.graphs.values())
        self.stat("ops merged", n)
