"""Small builders shared by tests."""
import numpy as np

import ckir
from ckir import Module, TensorType, new_graph


def module_from(build, inputs: dict, name="t", outputs=None):
    """Build a one-graph module: `build(b, *input_values)` returns the output value(s)."""
    g, b = new_graph("main", {k: TensorType(*v) if isinstance(v, tuple) else v for k, v in inputs.items()})
    outs = build(b, *g.inputs)
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    g.set_outputs(outs, outputs or [f"y{i}" for i in range(len(outs))])
    m = Module(name)
    m.add_graph(g)
    ckir.verify(m)
    return m


def run(m, *args, **kw):
    return ckir.compile(m)(*args, **kw)


def rand(*shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)
