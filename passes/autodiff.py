"""autodiff{wrt=params,loss=NAME}: append the gradient of a scalar loss as IR.

The backward graph is built from the ops' declared VJPs, in reverse order over the ops that lie
on a path from a `wrt` value to the loss; gradients of a value used several times are summed.
The graph then returns its original outputs plus `grad.<name>` for every wrt weight or input,
and is optimized, laid out and compiled like any forward graph.

`wrt` names weights or graph inputs; `params` means every float weight the graph reads.

`remat=true` trades FLOPs for memory: an elementwise forward result that the backward reads is
recomputed next to its first backward use when everything it is computed from is kept for the
backward anyway (or is a weight, constant or input), so the forward result dies where its
forward uses end instead of living until the backward. The copies carry `autodiff.remat` so
cse does not merge them back.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ckir.builder import Builder
from ckir.errors import CkirError
from ckir.ir import Graph, Module, Op, Value
from ckir.opdef import NotDifferentiable
from ckir.pipeline import Pass, register_pass
from ckir.types import TensorType


def _float(v: Value) -> bool:
    return type(v.type) is TensorType and v.type.dtype.is_float


def targets(module: Module, g: Graph, wrt) -> dict[str, list[Value]]:
    """{name: the values whose gradient is wanted} for weights (every ckir.weight op reading
    them) and graph inputs."""
    reads: dict[str, list[Value]] = {}
    for op in g:
        if op.opdef.name == "ckir.weight":
            reads.setdefault(op.attrs["name"], []).append(op.results[0])
    inputs = {v.name: v for v in g.inputs}
    out: dict[str, list[Value]] = {}
    for name in wrt:
        if name == "params":
            for w, vals in reads.items():
                if _float(vals[0]):
                    out[w] = vals
        elif name in reads:
            out[name] = reads[name]
        elif name in inputs:
            out[name] = [inputs[name]]
        elif name in module.weights:
            raise CkirError(f"autodiff: weight @{name} is not read by graph @{g.name}")
        else:
            raise CkirError(f"autodiff: no weight or input named '{name}' (weights: "
                            f"{', '.join(reads) or 'none'}; inputs: {', '.join(inputs) or 'none'})")
    for name, vals in out.items():
        if not _float(vals[0]):
            raise CkirError(f"autodiff: '{name}' is {vals[0].type}; only float values have gradients")
    if not out:
        raise CkirError(f"autodiff: nothing to differentiate with respect to (wrt={','.join(wrt)})")
    return out


def backprop(ops, loss: Value, wrt: list, b: Builder) -> tuple[dict, int]:
    """Reverse-mode differentiation of the scalar `loss` through `ops` (in program order),
    emitting the backward ops with `b`. Returns ({value: its gradient} for the values on a
    path from `wrt` to the loss, number of ops on that path)."""
    live = set(wrt)
    for op in ops:
        if any(v in live for v in op.operands):
            live.update(r for r in op.results if _float(r))
    needed = {loss}
    path = []
    for op in reversed(ops):
        if any(r in needed for r in op.results) and any(v in live for v in op.operands):
            path.append(op)
            needed.update(v for v in op.operands if v in live)
    ct: dict[Value, Value] = {loss: b.constant(np.ones((), loss.type.dtype.np))}
    for op in path:                      # already in reverse order
        grads = [ct.get(r) for r in op.results]
        if all(x is None for x in grads):
            continue
        if isinstance(op.opdef.vjp, NotDifferentiable):
            raise CkirError(f"autodiff: {op.location()} is on the path to the loss but has no "
                            f"gradient ({op.opdef.vjp.reason})")
        try:
            gs = op.opdef.vjp(b, op, *grads)
        except CkirError as e:
            raise CkirError(f"autodiff: the gradient of {op.location()} failed: {e}") from None
        if len(gs) != len(op.operands):
            raise CkirError(f"{op.name}: its VJP returned {len(gs)} gradients for {len(op.operands)} operands")
        for v, gv in zip(op.operands, gs):
            if gv is None or v not in live:
                continue
            if gv.type is not v.type:
                raise CkirError(f"{op.name}: its VJP gave a {gv.type} gradient for a {v.type} operand")
            prev = ct.get(v)
            ct[v] = gv if prev is None else b.nn.add(prev, gv)

    return ct, len(path)


def append_gradients(module: Module, g: Graph, loss_name: str, wrt, remat: bool = False) -> dict:
    """Build the backward graph in `g`; returns statistics."""
    names = list(g.output_names)
    if not loss_name:
        if len(names) != 1:
            raise CkirError(f"autodiff: graph @{g.name} has outputs {', '.join(names)}; "
                            "name the loss with loss=NAME")
        loss_name = names[0]
    if loss_name not in names:
        raise CkirError(f"autodiff: graph @{g.name} has no output '{loss_name}' (outputs: {', '.join(names)})")
    loss = g.outputs[names.index(loss_name)]
    if not _float(loss) or loss.type.rank != 0:
        raise CkirError(f"autodiff: the loss '{loss_name}' must be a float scalar, it is {loss.type}")
    tgt = targets(module, g, wrt)
    for n in tgt:
        if f"grad.{n}" in names:
            raise CkirError(f"autodiff: graph @{g.name} already has an output grad.{n}")

    ops = [op for op in g if op is not g.terminator]
    b = Builder.before(g.terminator, loc="autodiff")
    ct, n_path = backprop(ops, loss, [v for vals in tgt.values() for v in vals], b)
    outs, out_names = list(g.outputs), list(names)
    for name, vals in tgt.items():
        gs = [ct[v] for v in vals if v in ct]
        if gs:
            grad = gs[0]
            for x in gs[1:]:
                grad = b.nn.add(grad, x)
        else:             # the loss does not depend on it
            grad = b.nn.broadcast_like(b.constant(np.zeros((), vals[0].type.dtype.np)), vals[0])
        outs.append(grad)
        out_names.append(f"grad.{name}")
    g.set_outputs(outs, out_names)
    stats = {"ops on the path": n_path, "gradients": len(tgt)}
    if remat:
        stats["ops recomputed"] = rematerialize(ops, g)
    return stats


_FREE = {"ckir.weight", "nn.constant"}


def rematerialize(forward: list, g: Graph) -> int:
    """Recompute cheap forward values in the backward part of `g` (the ops after `forward`)."""
    fwd = set(forward)
    inputs = set(g.inputs)
    at = {op: float(i) for i, op in enumerate(g)}     # program order; copies get fractions

    def backward_users(v):
        return [u for u in v.users if u not in fwd and u is not g.terminator]

    def place(op, before):
        """Put `op` (new, or a copy to move earlier) right before `before`, and its copied
        operands before it."""
        if op.parent is not None:
            op.parent.detach(op)
        g.insert_before(before, op)
        at[op] = (at[op.prev] + at[before]) / 2 if op.prev is not None else at[before] - 1
        for v in op.operands:
            c = v.op
            if c is not None and c.meta and c.meta.get("autodiff.remat") and at[c] > at[op]:
                place(c, op)

    copies: dict[Value, Value] = {}
    n = 0
    for op in forward:
        if ("elementwise" not in op.opdef.traits or not op.opdef.pure or op.regions
                or len(op.results) != 1):
            continue
        r = op.results[0]
        users = backward_users(r)
        if not users or r in g.outputs:
            continue
        if not all(v in copies or v in inputs or (v.op is not None and v.op.opdef.name in _FREE)
                   or backward_users(v) for v in op.operands):
            continue
        new = Op(op.opdef, [copies.get(v, v) for v in op.operands], [r.type], dict(op.attrs),
                 (), "autodiff.remat")
        new.set_meta("autodiff.remat", True)
        place(new, min(users, key=at.__getitem__))
        copies[r] = new.results[0]
        for u in users:
            for i, v in enumerate(u.operands):
                if v is r:
                    u.set_operand(i, new.results[0])
        n += 1
    return n


@register_pass
class Autodiff(Pass):
    """Append gradients of a scalar loss output w.r.t. weights/inputs (outputs grad.NAME)."""
    name = "autodiff"
    wrt: list[str] = dataclasses.field(default_factory=lambda: ["params"])
    loss: str = ""
    graph: str = ""
    remat: bool = False

    def run(self, module):
        g = module.graph(self.graph or None)
        for k, v in append_gradients(module, g, self.loss, self.wrt, self.remat).items():
            self.stat(k, v)
