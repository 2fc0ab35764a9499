"""dce: remove pure ops whose results are unused, and weights no graph references."""
from __future__ import annotations

from ckir.ir import Block
from ckir.pipeline import Pass, register_pass


def dce_block(block: Block) -> int:
    erased = 0
    for op in block.reversed():
        for reg in op.regions:
            erased += dce_block(reg)
        if op.opdef.pure and not any(r.uses for r in op.results):
            op.erase()
            erased += 1
    return erased


@register_pass
class DCE(Pass):
    """Dead code elimination: unused pure ops; with weights=true, unreferenced weights too."""
    name = "dce"
    weights: bool = True

    def run(self, module):
        self.stat("ops erased", sum(dce_block(g) for g in module.graphs.values()))
        if self.weights:
            used = {op.attrs["name"] for op in module.walk() if op.opdef.name == "ckir.weight"}
            used |= {st.init for st in module.state.values() if st.init is not None}
            dead = [n for n in module.weights if n not in used]
            for n in dead:
                del module.weights[n]
            self.stat("weights removed", len(dead))
