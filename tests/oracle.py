"""Running one op and its VJP in the interpreter, and the same computation in torch (float64,
autograd): the harness the per-dialect oracle tests share."""
import numpy as np
import torch

import ckir
from ckir import Module, TensorType, get_op, new_graph

# float64 gradients summed in another order than torch sums them: a few ulps, nothing more
TOL = dict(rtol=1e-12, atol=1e-12)


def op_module(name, in_types, attrs, cot_mask=None):
    """A module running nn.<name> on graph inputs a0, a1, ... (a list in `in_types` is one variadic
    operand), with cotangent inputs c<i> for the results picked by `cot_mask` (None: all); outputs the results
    y<i> and the VJP's gradients g<i> (operands whose gradient is None have no output)."""
    opdef = get_op(name if "." in name else "nn." + name)
    flat = [t for ts in in_types for t in (ts if isinstance(ts, list) else [ts])]
    g, b = new_graph("main", {f"a{i}": TensorType(*t) if isinstance(t, tuple) else t
                              for i, t in enumerate(flat)})
    op = b.create(opdef, list(g.inputs), attrs)
    cots = {}
    if callable(opdef.vjp):
        for r in op.results:
            if cot_mask is None or r.index < len(cot_mask) and cot_mask[r.index]:
                cots[r] = g.add_arg(r.type, f"c{r.index}")
        grads = opdef.vjp(b, op, *[cots.get(r) for r in op.results])
    else:
        grads = []
    outs = [(f"y{r.index}", r) for r in op.results]
    for i, v in enumerate(grads):
        if v is not None:
            assert v.type is op.operands[i].type, f"gradient {i} is {v.type}, operand is {op.operands[i].type}"
            outs.append((f"g{i}", v))
    g.set_outputs([v for _, v in outs], [n for n, _ in outs])
    m = ckir.Module("t")
    m.add_graph(g)
    ckir.verify(m)
    return m, op


def run_op(name, xs, attrs, cots=(), types=None):
    """(results, gradients) of nn.<name> on arrays xs with cotangents `cots` (one per result, None
    to leave out); `types` overrides the graph input types (e.g. with symbolic dims)."""
    flat = [x for a in xs for x in (a if isinstance(a, list) else [a])]
    if types is None:
        types = [[TensorType(x.shape, x.dtype) for x in a] if isinstance(a, list)
                 else TensorType(a.shape, a.dtype) for a in xs]
    m, op = op_module(name, types, attrs, [c is not None for c in cots])
    res = ckir.compile(m)(*flat, *[c for c in cots if c is not None])
    ys = [res[f"y{i}"] for i in range(len(op.results))]
    return ys, [res.get(f"g{i}") for i in range(len(flat))]


def torch_vjp(fn, xs, cots):
    """torch results and d(sum(cot * y))/dx for the float64 arrays among xs (None for others)."""
    ts = [torch.tensor(x, requires_grad=x.dtype == np.float64) for x in xs]
    ys = fn(*ts)
    ys = list(ys) if isinstance(ys, (list, tuple)) else [ys]
    loss = sum((torch.from_numpy(c) * y).sum() for c, y in zip(cots, ys) if c is not None)
    want = [t for t in ts if t.requires_grad]
    gs = iter(torch.autograd.grad(loss, want, allow_unused=True))
    out = []
    for t in ts:
        if not t.requires_grad:
            out.append(None)
            continue
        gr = next(gs)
        out.append(np.zeros(t.shape) if gr is None else gr.numpy())
    return [y.detach().numpy() for y in ys], out


def check_grads(got, want, xs):
    for gv, w, x in zip(got, want, xs):
        if w is None:
            continue
        np.testing.assert_allclose(np.zeros_like(x) if gv is None else gv, w, **TOL)


# --- one op and its VJP, returning plain arrays (norm and attention tests) ---------------------
def _graph(name, types, attrs):
    g, b = new_graph("main", {f"a{i}": t for i, t in enumerate(types)})
    op = b.create(name, list(g.inputs), attrs)
    return g, b, op


def run(name, arrays, types=None, **attrs):
    """Run one op in the interpreter; `types` may hold symbolic dims."""
    g, _, op = _graph(name, types or [TensorType(a.shape, a.dtype) for a in arrays], attrs)
    g.set_outputs(op.results, ["y"])
    m = Module("t")
    m.add_graph(g)
    return ckir.compile(m)(*arrays)["y"]


def run_vjp(name, arrays, cot, types=None, cot_type=None, **attrs):
    """The gradients the op's VJP builds (None where it returns None)."""
    g, b, op = _graph(name, types or [TensorType(a.shape, a.dtype) for a in arrays], attrs)
    c = g.add_arg(cot_type or TensorType(cot.shape, cot.dtype), "cot")
    grads = op.opdef.vjp(b, op, c)
    for v, x in zip(grads, op.operands):
        assert v is None or v.type is x.type, f"gradient type {v.type} for operand {x.type}"
    outs = [(f"g{i}", v) for i, v in enumerate(grads) if v is not None]
    g.set_outputs([v for _, v in outs], [n for n, _ in outs])
    m = Module("t")
    m.add_graph(g)
    res = ckir.compile(m)(*arrays, cot)
    return [res.get(f"g{i}") for i in range(len(grads))]


def t64(a, grad=False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def torch_grads(y, leaves, cot):
    return [x.detach().numpy() for x in torch.autograd.grad(y, leaves, torch.from_numpy(cot))]
