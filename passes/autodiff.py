"""autodiff{wrt=params,loss=NAME}: append the gradient of a scalar loss as IR.

The backward graph is built from the ops' declared VJPs, in reverse order over the ops that lie
on a path from a `wrt` value to the loss; gradients of a value used several times are summed.
The graph then returns its original outputs plus `grad.<name>` for every wrt weight or input,
and is optimized, laid out and compiled like any forward graph.

`wrt` names weights or graph inputs; `params` means every float weight the graph reads.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ckir.builder import Builder
from ckir.errors import CkirError
from ckir.ir import Graph, Module, Value
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


def append_gradients(module: Module, g: Graph, loss_name: str, wrt) -> dict:
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
    return {"ops on the path": n_path, "gradients": len(tgt)}


@register_pass
class Autodiff(Pass):
    """Append gradients of a scalar loss output w.r.t. weights/inputs (outputs grad.NAME)."""
    name = "autodiff"
    wrt: list[str] = dataclasses.field(default_factory=lambda: ["params"])
    loss: str = ""
    graph: str = ""

    def run(self, module):
        g = module.graph(self.graph or None)
        for k, v in append_gradients(module, g, self.loss, self.wrt).items():
            self.stat(k, v)
