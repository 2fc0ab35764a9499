"""Generate the op reference (docs/ops.md) from the declarations: `python -m ckir.docs`."""
from __future__ import annotations

import sys

import numpy as np

from .opdef import REQUIRED, NotDifferentiable, _fmt_dtypes, all_ops


def _example_line(opdef, ex) -> str:
    from .builder import new_graph
    from .printer import print_op
    types = ex.types(ex.arrays(np.random.default_rng(0)))
    g, b = new_graph("main", {f"a{i}": t for i, t in enumerate(types)})
    op = b.create(opdef, list(g.inputs), ex.attrs)
    return print_op(op)


def op_markdown(od) -> str:
    out = [f"### `{od.name}`", "", od.doc or "(no description)", ""]
    if od.operands:
        out.append("| operand | dtypes | |")
        out.append("|---|---|---|")
        for o in od.operands:
            kind = "variadic" if o.variadic else ("optional" if o.optional else "")
            out.append(f"| `{o.name}` | {_fmt_dtypes(o.dtypes)} | {kind} {o.doc}".rstrip() + " |")
        out.append("")
    if od.attrs:
        out.append("| attribute | kind | default | |")
        out.append("|---|---|---|---|")
        for a in od.attrs.values():
            d = "required" if a.default is REQUIRED else ("absent" if a.default is None else f"`{a.default}`")
            extra = f"one of {', '.join(a.choices)}. " if a.choices else ""
            out.append(f"| `{a.name}` | {a.kind} | {d} | {extra}{a.doc} |")
        out.append("")
    res = ", ".join(f"`{r.name}`" + (" (variadic)" if r.variadic else "") for r in od.results)
    out.append(f"Results: {res or 'none'}. Traits: {', '.join(sorted(od.traits)) or 'none'}.")
    if isinstance(od.vjp, NotDifferentiable):
        out.append(f"Gradient: none ({od.vjp.reason}).")
    else:
        out.append("Gradient: declared (VJP rule).")
    if od.examples:
        out += ["", "```"] + [_example_line(od, ex) for ex in od.examples[:3]] + ["```"]
    return "\n".join(out) + "\n"


def ops_markdown() -> str:
    ops = sorted(all_ops(), key=lambda o: o.name)
    out = ["# ckir op reference", "",
           "Generated from the op declarations by `python -m ckir.docs > docs/ops.md`; do not edit.",
           "A test fails when this file is out of date.", ""]
    dialects = sorted({o.dialect for o in ops})
    for d in dialects:
        names = [o.name for o in ops if o.dialect == d]
        out.append(f"- **{d}**: " + ", ".join(f"[`{n}`](#{n.replace('.', '')})" for n in names))
    out.append("")
    for d in dialects:
        out += [f"## {d}", ""]
        for o in ops:
            if o.dialect == d:
                out.append(op_markdown(o))
    return "\n".join(out)


if __name__ == "__main__":
    import ckir  # noqa: F401  (declares every op)
    sys.stdout.write(ops_markdown())
