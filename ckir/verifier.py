"""Module verifier: structure, use-def chains, dominance, and every op against its declaration.
Messages name the op (with file:line:col when parsed) and say what is wrong."""
from __future__ import annotations

from .errors import VerifyError
from .ir import Block, Graph, Module, Value
from .types import Sym, tensors_in


def _vname(v: Value) -> str:
    return f"%{v.name}" if v.name else f"value #{v.index} of {v.op.name if v.op else 'a block'}"


def verify_block(block: Block, where: str, syms: dict, module: Module | None) -> None:
    defined = set(block.args)
    writes: set = set()
    for a in block.args:
        _check_syms(a.type, syms, where)
    last = block.last
    for op in block:
        od = op.opdef
        if "terminator" in od.traits and op is not last:
            raise VerifyError(f"{op.location()}: terminator in the middle of {where}")
        for i, v in enumerate(op.operands):
            if v not in defined:
                home = v.owner if isinstance(v.owner, Block) else v.owner.parent
                how = ("is defined outside this region (regions are isolated from above)"
                       if block.parent_op is not None and home is not block
                       else "is not defined before this use")
                raise VerifyError(f"{op.location()}: operand {i} ({_vname(v)}) {how}")
            if (op, i) not in v.uses:
                raise VerifyError(f"{op.location()}: use-def chain broken at operand {i}")
        for r in op.results:
            for u, j in r.uses:
                if u.parent is None or j >= len(u.operands) or u.operands[j] is not r:
                    raise VerifyError(f"{op.location()}: result {r.index} has a stale use by {u.name}")
            _check_syms(r.type, syms, op.location())
        od.verify(op)
        if od.name in ("ckir.state", "ckir.write_state") and module is not None:
            st = module.state.get(op.attrs["name"])
            if st is None:
                raise VerifyError(f"{op.location()}: no state @{op.attrs['name']} in the module")
            t = op.results[0].type if od.name == "ckir.state" else op.operands[0].type
            if t is not st.type:
                raise VerifyError(f"{op.location()}: state @{st.name} is {st.type}, the op has {t}")
            if od.name == "ckir.write_state":
                if st.name in writes:
                    raise VerifyError(f"{op.location()}: state @{st.name} is written twice in {where}")
                writes.add(st.name)
        if od.name == "ckir.weight" and module is not None:
            w = module.weights.get(op.attrs["name"])
            if w is None:
                raise VerifyError(f"{op.location()}: no weight @{op.attrs['name']} in the module")
            if op.results[0].type is not w.type:
                raise VerifyError(f"{op.location()}: weight @{w.name} is {w.type}, "
                                  f"the op says {op.results[0].type}")
        for k, reg in enumerate(op.regions):
            if reg.parent_op is not op:
                raise VerifyError(f"{op.location()}: region {k} has the wrong parent")
            verify_block(reg, f"region {k} of {op.name}", syms, module)
            if reg.terminator is None:
                raise VerifyError(f"{op.location()}: region {k} does not end with ckir.return")
        defined.update(op.results)


def _check_syms(t, syms: dict, where: str) -> None:
    for d in tensors_in(t).shape:
        if type(d) is Sym and d.name is not None:
            b = syms.setdefault(d.name, d.bound)
            if b != d.bound:
                raise VerifyError(f"{where}: dim '{d.name}' has bound {d.bound} here but "
                                  f"{b} elsewhere in the module")


def verify_graph(g: Graph, module: Module | None = None, syms: dict | None = None) -> None:
    where = f"graph @{g.name}"
    names = [a.name for a in g.args]
    for i, n in enumerate(names):
        if not n:
            raise VerifyError(f"{where}: input {i} has no name")
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise VerifyError(f"{where}: duplicate input names {sorted(dup)}")
    verify_block(g, where, {} if syms is None else syms, module)
    t = g.terminator
    if t is None or t.name != "ckir.return":
        raise VerifyError(f"{where}: does not end with ckir.return")
    if len(g.output_names) != len(t.operands):
        raise VerifyError(f"{where}: {len(t.operands)} outputs but {len(g.output_names)} output names")
    if len(set(g.output_names)) != len(g.output_names):
        raise VerifyError(f"{where}: duplicate output names")


def verify(module: Module) -> None:
    if not module.graphs:
        raise VerifyError(f"module @{module.name} has no graph")
    syms: dict = {}
    for w in module.weights.values():
        _check_syms(w.type, syms, f"weight @{w.name}")
    for g in module.graphs.values():
        verify_graph(g, module, syms)
