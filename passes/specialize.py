"""specialize{seq=128,batch=8}: bind symbolic dims to sizes, then re-infer result types so
dims that depended on them become static too."""
from __future__ import annotations

from ckir.errors import CkirError
from ckir.ir import Block, Module
from ckir.opdef import compatible
from ckir.pipeline import Pass, register_pass
from ckir.types import Sym, TensorType


def _subst(t, bind: dict):
    if type(t) is not TensorType:
        return type(t)(_subst(t.elem, bind))
    if not any(type(d) is Sym and d.name in bind for d in t.shape):
        return t
    return t.with_shape([bind[d.name] if type(d) is Sym and d.name in bind else d for d in t.shape])


def module_dims(module: Module) -> dict:
    """Every named symbolic dim in the module -> its bound (or None)."""
    dims = {}
    for w in module.weights.values():
        dims.update((d.name, d.bound) for d in w.type.syms if d.name)
    for g in module.graphs.values():
        for v in g.args:
            dims.update((d.name, d.bound) for d in v.type.syms if d.name)
        for op in g.walk():
            for v in op.results:
                dims.update((d.name, d.bound) for d in v.type.syms if d.name)
            for reg in op.regions:
                for v in reg.args:
                    dims.update((d.name, d.bound) for d in v.type.syms if d.name)
    return dims


def _refine(block: Block, bind: dict) -> int:
    """Substitute bound dims in every type and attribute of `block`, and sharpen result types
    from the shape rules. Returns how many values changed type."""
    changed = 0
    for a in block.args:
        t = _subst(a.type, bind)
        changed += t is not a.type
        a.type = t
    for op in block:
        for k, spec in op.opdef.attrs.items():
            v = op.attrs[k]
            if spec.kind == "shape" and v is not None and any(type(x) is Sym and x.name in bind for x in v):
                op.attrs[k] = tuple(bind[x.name] if type(x) is Sym and x.name in bind else x for x in v)
        for reg in op.regions:
            changed += _refine(reg, bind)
        new = [_subst(r.type, bind) for r in op.results]
        if not op.opdef.declared_types:
            inferred = op.opdef.infer([v.type for v in op.operands], op.attrs)
            new = [_sharpen(t, i) for t, i in zip(new, inferred)]
        for r, t in zip(op.results, new):
            changed += t is not r.type
            r.type = t
    return changed


def _sharpen(declared, inferred):
    if not compatible(declared, inferred) or type(declared) is not TensorType:
        return declared      # the verifier reports incompatibilities
    return declared.with_shape([i if type(d) is Sym and d.name is None else d
                                for d, i in zip(declared.shape, inferred.shape)])


@register_pass
class Specialize(Pass):
    """Bind symbolic dims: specialize{seq=128,batch=8}. Each size must be within the dim's bound."""
    name = "specialize"
    open_options = True

    def run(self, module):
        dims = module_dims(module)
        for k, v in self.extra.items():
            if k not in dims:
                raise CkirError(f"module has no symbolic dim '{k}' "
                                f"(dims: {', '.join(sorted(dims)) or 'none'})")
            if v < 0:
                raise CkirError(f"dim '{k}' = {v}: sizes must be >= 0")
            if dims[k] is not None and v > dims[k]:
                raise CkirError(f"dim '{k}' = {v} exceeds its bound {dims[k]}")
        for w in module.weights.values():
            w.type = _subst(w.type, self.extra)
        n = sum(_refine(g, self.extra) for g in module.graphs.values())
        self.stat("values retyped", n)
        self.stat("dims bound", len(self.extra))
