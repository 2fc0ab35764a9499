"""A custom pass written the way a ckir user writes one: a rewrite pattern (data) and a pass
class with a name and an option, registered with ckir.

From Python:   python examples/silu_pass.py
From the CLI:  ckir opt examples/swish.ckir --plugin examples/silu_pass.py --passes fuse-silu,dce --stats
"""
import numpy as np

import ckir
from ckir import P

# x * sigmoid(x) is SiLU; commutative ops match in either operand order.
RULES = [
    P("nn.mul", P.var("x"), P("nn.sigmoid", P.var("x"))) >> (lambda b, x: b.nn.silu(x)),
]


@ckir.register_pass
class FuseSilu(ckir.Pass):
    """Rewrite x * sigmoid(x) into nn.silu(x)."""
    name = "fuse-silu"
    max_iterations: int = 10

    def run(self, module):
        res = ckir.apply_patterns(module, RULES, max_iterations=self.max_iterations)
        self.stat("silu formed", sum(res.applied.values()))


if __name__ == "__main__":
    import os
    import sys
    m = ckir.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "swish.ckir"))
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(2, 6)
    before = ckir.compile(m)(x=x)["y"]
    ckir.PassManager("fuse-silu,dce", stats=True, out=sys.stdout).run(m)
    print(m.print())
    after = ckir.compile(m)(x=x)["y"]
    print("max |before - after| =", float(np.max(np.abs(before - after))))
