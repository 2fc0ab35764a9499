"""Module summaries from the op declarations: ops by kind, weight bytes, FLOPs, bytes moved."""
from __future__ import annotations

from collections import Counter

from .ir import Module
from .opdef import Cost


def summarize(module: Module, bind: dict | None = None) -> dict:
    """Counts and cost estimates. Symbolic dims take their size from `bind`, else their bound,
    else 1 (the figures are then per unit of that dim)."""
    bind = bind or {}
    by_kind: Counter = Counter()
    total = Cost()
    per_kind: dict = {}
    unbound = set()
    for op in module.walk():
        by_kind[op.name] += 1
        for v in op.results:
            unbound |= {d.name or "?" for d in v.type.syms if d.name not in bind and d.bound is None}
        c = op.opdef.cost(op, bind)
        total = total + c
        per_kind[op.name] = per_kind.get(op.name, Cost()) + c
    weights = {n: w.type.nbytes() if w.type.is_static else None for n, w in module.weights.items()}
    graphs = {}
    for g in module.graphs.values():
        graphs[g.name] = {
            "inputs": {v.name: str(v.type) for v in g.inputs},
            "outputs": {n: str(v.type) for n, v in zip(g.output_names, g.outputs)},
            "ops": sum(1 for _ in g.walk()),
        }
    return {
        "module": module.name,
        "graphs": graphs,
        "ops": sum(by_kind.values()),
        "ops_by_kind": dict(sorted(by_kind.items(), key=lambda kv: (-kv[1], kv[0]))),
        "weights": len(weights),
        "weight_bytes": sum(b for b in weights.values() if b is not None),
        "flops": total.flops,
        "bytes_read": total.bytes_read,
        "bytes_written": total.bytes_written,
        "cost_by_kind": {k: {"flops": c.flops, "bytes_read": c.bytes_read, "bytes_written": c.bytes_written}
                         for k, c in sorted(per_kind.items())},
        "bound_dims": dict(bind),
        "dims_taken_as_1": sorted(unbound),
    }


def human(n: float, unit: str = "") -> str:
    for prefix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.3g} {prefix}{unit}".rstrip() if prefix or unit else f"{n:.3g}"
        n /= 1000
    return str(n)


def format_summary(s: dict) -> str:
    lines = [f"module @{s['module']}"]
    for name, g in s["graphs"].items():
        ins = ", ".join(f"{k}: {t}" for k, t in g["inputs"].items())
        outs = ", ".join(f"{k}: {t}" for k, t in g["outputs"].items())
        lines.append(f"  graph @{name}({ins}) -> ({outs}): {g['ops']} ops")
    lines.append(f"weights: {s['weights']} ({human(s['weight_bytes'], 'B')})")
    lines.append(f"ops: {s['ops']}")
    for k, n in s["ops_by_kind"].items():
        c = s["cost_by_kind"][k]
        lines.append(f"  {n:8d}  {k:<24} {human(c['flops'], 'FLOP'):>12}  "
                     f"{human(c['bytes_read'] + c['bytes_written'], 'B'):>10} moved")
    lines.append(f"total: {human(s['flops'], 'FLOP')}, {human(s['bytes_read'], 'B')} read, "
                 f"{human(s['bytes_written'], 'B')} written")
    if s["dims_taken_as_1"]:
        lines.append(f"note: symbolic dims {', '.join(s['dims_taken_as_1'])} taken as 1 "
                     "(bind them with --bind NAME=SIZE)")
    return "\n".join(lines) + "\n"
