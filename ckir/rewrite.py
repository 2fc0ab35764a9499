"""Rewrite patterns as data, and the one greedy driver that applies them.

A rule is a pattern plus a function. Patterns read like the algebra they match:

    rules = [
        P("nn.add", P.var("x"), P.const(0.0)) >> (lambda x: x),
        P("nn.mul", P.var("x"), P.const(1.0)) >> (lambda x: x),
        P("nn.neg", P("nn.neg", P.var("x"))) >> (lambda x: x),
    ]
    apply_patterns(module, rules)

The function receives the captured values by name (plus `b`, a Builder placed before the
matched op, and `op`, the matched op, when it asks for them) and returns the replacement value
(or a tuple of values for a multi-result op), or None to decline. Commutative ops match their
operands in either order. `Rule(root, fn)` takes a plain function `fn(op, b)` for matches a
pattern cannot express; `root` is an op name, a tuple of names, or None for any op.
"""
from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .builder import Builder
from .errors import CkirError
from .ir import Block, Module, Op, Value


class P:
    """A pattern over values. `P(op, *operands, **attrs)` matches a value produced by `op`
    (a name or tuple of names) whose operands match and whose attributes equal `attrs` (or
    satisfy them, when an attr constraint is callable). `name=` captures the matched value."""

    def __init__(self, op=None, *operands, name: str | None = None, where=None, **attrs):
        self.ops = (op,) if isinstance(op, str) else (tuple(op) if op is not None else None)
        self.operands = operands
        self.name = name
        self.where = where        # extra predicate on the matched Value
        self.attrs = attrs
        self.const = None         # for P.const: the required splat value (or None for any)

    @staticmethod
    def var(name: str, where=None) -> P:
        """Any value, captured as `name`."""
        return P(None, name=name, where=where)

    @staticmethod
    def const(value=None, name: str | None = None) -> P:
        """A value produced by nn.constant; with `value`, every element must equal it.
        When named, the capture is the constant's numpy array."""
        p = P("nn.constant", name=name)
        p.const = (value,)
        return p

    def match(self, v: Value, caps: dict) -> bool:
        if self.ops is not None:
            op = v.op
            if op is None or op.opdef.name not in self.ops:
                return False
            if not self._match_op(op, caps):
                return False
        if self.where is not None and not self.where(v):
            return False
        if self.name is not None:
            if self.const is not None:
                caps[self.name] = v.op.attrs["value"].array
            else:
                prev = caps.get(self.name)
                if prev is not None and prev is not v:
                    return False        # the same name twice must be the same value
                caps[self.name] = v
        return True

    def _match_op(self, op: Op, caps: dict) -> bool:
        for k, want in self.attrs.items():
            have = op.attrs.get(k)
            if callable(want) and not want(have):
                return False
            if not callable(want) and have != want:
                return False
        if self.const is not None and self.const[0] is not None:
            a = op.attrs["value"].array
            if a.size == 0 or not np.all(a == self.const[0]):
                return False
        if not self.operands:
            return True
        if len(op.operands) != len(self.operands):
            return False
        orders = [op.operands]
        if "commutative" in op.opdef.traits and len(op.operands) == 2:
            orders.append(op.operands[::-1])
        for vals in orders:
            trial = dict(caps)
            if all(p.match(v, trial) for p, v in zip(self.operands, vals)):
                caps.clear()
                caps.update(trial)
                return True
        return False

    def __rshift__(self, fn) -> Rule:
        return pattern_rule(self, fn)

    def __repr__(self):
        if self.const is not None:
            return "const" if self.const[0] is None else repr(self.const[0])
        if self.ops is None:
            return self.name or "_"
        head = "|".join(self.ops)
        return f"{head}({', '.join(map(repr, self.operands))})" if self.operands else head


def pattern_rule(pat: P, fn, name: str | None = None) -> Rule:
    params = inspect.signature(fn).parameters
    wants_b, wants_op = "b" in params, "op" in params

    def apply(op: Op, b: Builder):
        caps: dict = {}
        if not pat._match_op(op, caps) or (pat.where is not None and not pat.where(op.results[0])):
            return None
        if pat.name is not None:
            caps[pat.name] = op.results[0] if len(op.results) == 1 else op.results
        kw = {k: v for k, v in caps.items() if k in params}
        if wants_b:
            kw["b"] = b
        if wants_op:
            kw["op"] = op
        return fn(**kw)

    return Rule(pat.ops, apply, name or repr(pat))


@dataclass
class Rule:
    """`fn(op, b)` returns replacement value(s) for `op`, or None when it does not apply."""
    root: object                 # op name, tuple of names, or None for any op
    fn: object
    name: str = ""

    def __post_init__(self):
        if isinstance(self.root, str):
            self.root = (self.root,)
        if not self.name:
            self.name = getattr(self.fn, "__name__", "rule")


@dataclass
class RewriteResult:
    converged: bool = True
    iterations: int = 0
    applied: Counter = field(default_factory=Counter)   # rule name -> times applied
    erased: int = 0                                      # trivially dead ops removed

    @property
    def changed(self) -> bool:
        return bool(self.applied) or self.erased > 0


def _blocks(target) -> list[Block]:
    if isinstance(target, Module):
        return list(target.graphs.values())
    if isinstance(target, Block):
        return [target]
    raise CkirError(f"cannot rewrite a {type(target).__name__}")


def apply_patterns(target, rules, *, max_iterations: int = 10, max_rewrites: int | None = None,
                   erase_dead: bool = True) -> RewriteResult:
    """Apply `rules` greedily until nothing matches (or a cap is hit) and return statistics.

    Each iteration seeds a worklist with every op (regions included); when a rule fires, the
    ops it created, the users of the replacement values and the producers of the old operands
    go back on the worklist. Iterations repeat until one changes nothing (converged) or
    `max_iterations` is reached; `max_rewrites` caps rewrites per iteration so rules that undo
    each other cannot loop forever."""
    by_root: dict[str, list[Rule]] = {}
    anyop: list[Rule] = []
    for r in rules:
        if r.root is None:
            anyop.append(r)
        else:
            for n in r.root:
                by_root.setdefault(n, []).append(r)
    blocks = _blocks(target)
    res = RewriteResult(converged=False)
    for it in range(max_iterations):
        res.iterations = it + 1
        ops = [op for blk in blocks for op in blk.walk()]
        cap = max_rewrites if max_rewrites is not None else 10 * len(ops) + 100
        changed = _sweep(ops, by_root, anyop, res, cap, erase_dead)
        if changed is None:          # hit the per-iteration cap
            return res
        if not changed:
            res.converged = True
            return res
    return res


def _sweep(ops, by_root, anyop, res: RewriteResult, cap: int, erase_dead: bool):
    work = ops[::-1]
    queued = set(work)
    changed = False
    rewrites = 0
    created: list[Op] = []

    def push(op):
        if op is not None and op not in queued:
            queued.add(op)
            work.append(op)

    while work:
        op = work.pop()
        queued.discard(op)
        if op.parent is None:
            continue
        od = op.opdef
        if erase_dead and od.pure and not op.regions and not any(r.uses for r in op.results):
            producers = [v.op for v in op.operands]
            op.erase()
            res.erased += 1
            changed = True
            for p in producers:
                push(p)
            continue
        rules = by_root.get(od.name)
        if rules is None and not anyop:
            continue
        for rule in (rules or []) + anyop if anyop else rules:
            created.clear()
            b = Builder.before(op, loc=op.loc, listener=created.append)
            try:
                new = rule.fn(op, b)
            except CkirError as e:
                raise CkirError(f"rule {rule.name} on {op.location()}: {e}") from None
            if new is None:
                if created:
                    raise CkirError(f"rule {rule.name} created ops but returned None")
                continue
            if isinstance(new, Value):
                new = (new,)
            new = tuple(new)
            if all(a is b for a, b in zip(new, op.results)) and not created:
                continue
            if len(new) != len(op.results):
                raise CkirError(f"rule {rule.name} returned {len(new)} values for {op.name} "
                                f"with {len(op.results)} results")
            fresh = set(created)
            producers = [v.op for v in op.operands]
            for r, v in zip(op.results, new):
                if r.type is not v.type and not _refines(v.type, r.type):
                    raise CkirError(f"rule {rule.name} replaced a {r.type} result of {op.location()} "
                                    f"with a {v.type} value")
                for u in r.users:
                    push(u)
                r.replace_all_uses_with(v, where=lambda u: u not in fresh)
            if not any(r.uses for r in op.results):
                op.erase()
            for o in created:
                push(o)
            for v in new:
                push(v.op)
            for p in producers:
                push(p)
            res.applied[rule.name] += 1
            changed = True
            rewrites += 1
            if rewrites > cap:
                return None
            break
    return changed


def _refines(new, old) -> bool:
    from .opdef import compatible
    return compatible(new, old)
