"""canonicalize: algebraic identities and constant folding through the reference semantics.

The identities are data (RULES below, plus any `patterns` an op declaration carries) run by the
greedy driver in ckir.rewrite; constant folding evaluates an op's declared `ref` on constant
operands, so folding means exactly what the interpreter means.
"""
from __future__ import annotations

import numpy as np

from ckir.errors import CkirError
from ckir.opdef import all_ops
from ckir.pipeline import Pass, register_pass
from ckir.rewrite import P, Rule, apply_patterns


def _same_type(x, op):
    return x if x.type is op.results[0].type else None


def _compose_perm(inner, outer, rank):
    p1 = list(range(rank))[::-1] if inner is None else list(inner)
    p2 = list(range(rank))[::-1] if outer is None else list(outer)
    return [p1[i] for i in p2]


def _transpose_pair(b, x, op):
    inner = op.operands[0].op
    perm = _compose_perm(inner.attrs["perm"], op.attrs["perm"], x.type.rank)
    if perm == sorted(perm):
        return x
    return b.nn.transpose(x, perm=perm)


def _static_size(b, x, op):
    ax = op.attrs["axes"]
    dims = x.type.shape if ax is None else [x.type.shape[a] for a in ax]
    if not all(type(d) is int for d in dims):
        return None
    return b.constant(np.asarray(int(np.prod(dims)), dtype=op.attrs["dtype"].np))


RULES = [
    P("nn.add", P.var("x"), P.const(0)) >> _same_type,
    P("nn.sub", P.var("x"), P.const(0)) >> _same_type,
    P("nn.mul", P.var("x"), P.const(1)) >> _same_type,
    P("nn.div", P.var("x"), P.const(1)) >> _same_type,
    P("nn.neg", P("nn.neg", P.var("x"))) >> (lambda x: x),
    P("nn.not", P("nn.not", P.var("x"))) >> (lambda x: x),
    P("nn.cast", P.var("x")) >> _same_type,
    P("nn.reshape", P.var("x")) >> _same_type,
    P("nn.reshape", P("nn.reshape", P.var("x"))) >> (lambda b, x, op: b.nn.reshape(x, shape=op.attrs["shape"])),
    P("nn.transpose", P.var("x"), perm=lambda p: p is not None and list(p) == sorted(p)) >> (lambda x: x),
    P("nn.transpose", P("nn.transpose", P.var("x"))) >> _transpose_pair,
    P("nn.expand", P.var("x")) >> _same_type,
    P("nn.broadcast_like", P.var("x"), P.var("like")) >> _same_type,
    P("nn.squeeze", P("nn.unsqueeze", P.var("x"), name="u")) >>
    (lambda x, u, op: x if op.attrs["axes"] is not None and op.attrs["axes"] == u.op.attrs["axes"] else None),
    P("nn.size", P.var("x")) >> _static_size,
    P("nn.where", P.const(True), P.var("a"), P.var("c")) >> (lambda a, op: _same_type(a, op)),
    P("nn.where", P.const(False), P.var("a"), P.var("c")) >> (lambda c, op: _same_type(c, op)),
]


def fold_rule(limit: int) -> Rule:
    """Replace a pure op whose operands are all constants by constants computed with its
    reference semantics (results up to `limit` elements)."""
    def fold(op, b):
        od = op.opdef
        if not od.pure or not od.fold or op.regions or od.name == "nn.constant":
            return None
        arrays = []
        for v in op.operands:
            d = v.op
            if d is None or d.opdef.name != "nn.constant":
                return None
            arrays.append(d.attrs["value"].array)
        if any(not r.type.is_static or r.type.numel > limit for r in op.results):
            return None
        try:
            with np.errstate(all="ignore"):
                outs = od.ref(arrays, op.attrs, types=[v.type for v in op.operands])
        except (CkirError, ValueError, TypeError, ArithmeticError):
            return None          # leave it for run time, where the error names the inputs
        return [b.constant(np.asarray(o, dtype=r.type.dtype.np)) for o, r in zip(outs, op.results)]
    return Rule(None, fold, "constant-fold")


@register_pass
class Canonicalize(Pass):
    """Simplify with algebraic identities and fold constants (via each op's reference)."""
    name = "canonicalize"
    fold: bool = True
    fold_limit: int = 65536
    max_iterations: int = 10

    def run(self, module):
        rules = list(RULES) + [r for od in all_ops() for r in od.patterns]
        if self.fold:
            rules.append(fold_rule(self.fold_limit))
        res = apply_patterns(module, rules, max_iterations=self.max_iterations)
        for name, n in res.applied.items():
            self.stat(f"applied {name}", n)
        self.stat("dead ops erased", res.erased)
        self.stat("iterations", res.iterations)
        if not res.converged:
            self.stat("did not converge")
