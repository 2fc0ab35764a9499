"""arena{align=64,inplace=true,order=auto}: plan memory. Every tensor a graph computes gets a
(section, offset, size) and a buffer id, printed on its op as `arena.place` (values sharing bytes,
like a view and its operand, share the id), with its live range as `arena.live` (op indices);
backends and reports read them back.

Sections: `weights` (read-only: module weights and constants, packed in module order),
`activations` (reused by liveness), `outputs` (graph outputs: alive until the call returns),
`gradients` (outputs named grad.*), `state` (persistent; none yet). Graph inputs belong to the
caller and are not placed.

Activations are placed offline, greedy by size (the TFLite arena planner's strategy: largest
first, each into the best-fitting gap among the tensors alive at the same time). Views
(reshape, squeeze, ...) share their operand's bytes; with inplace=true an elementwise op may
write over an operand it is the last user of. order=auto first reorders independent ops to
lower the peak (greedy: run next the ready op that leaves the fewest bytes alive).
Symbolic dims are planned at their upper bound (`seq<=2048`); a dim without one is an error.
"""
from __future__ import annotations

from ckir.errors import CkirError
from ckir.ir import Graph, Module
from ckir.pipeline import Pass, register_pass
from ckir.types import TensorType, concrete

SECTIONS = ("weights", "activations", "outputs", "gradients", "state")
SOURCES = ("ckir.weight", "nn.constant")


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def value_bytes(v) -> int:
    t = v.type
    if type(t) is not TensorType:
        raise CkirError(f"arena: {v.op.location() if v.op else 'an argument'} makes a {t}; "
                        "only tensors can be placed")
    for d in t.shape:
        if type(d) is not int and d.bound is None:
            what = f"'{d.name}'" if d.name else "'?'"
            raise CkirError(f"arena: {v.op.location() if v.op else 'an input'} has dim {what} with "
                            "no upper bound; specialize it or give it one (e.g. seq<=2048)")
    return t.nbytes(None) if t.is_static else t.dtype.nbytes(_prod(concrete(t.shape)))


def _prod(xs):
    p = 1
    for x in xs:
        p *= x
    return p


def schedule(g: Graph) -> list:
    """The ops in an order that keeps few bytes alive: among ops whose operands are ready, run
    the one that frees the most minus what it allocates (ties: original order)."""
    ops = [op for op in g if op is not g.terminator]
    pos = {op: i for i, op in enumerate(ops)}
    users: dict = {}
    for op in ops + [g.terminator]:
        for v in op.operands:
            users.setdefault(v, set()).add(op)
    waiting = {op: sum(1 for v in {*op.operands} if v.op is not None and v.op in pos) for op in ops}
    remaining = {v: len(u) for v, u in users.items()}
    ready = [op for op in ops if waiting[op] == 0]
    order = []
    while ready:
        def gain(op):
            freed = sum(_safe_bytes(v) for v in {*op.operands}
                        if v.op is not None and remaining.get(v, 0) == sum(1 for u in users[v] if u is op) and
                        v not in g.outputs)
            made = sum(_safe_bytes(r) for r in op.results)
            return (made - freed, pos[op])
        best = min(ready, key=gain)
        ready.remove(best)
        order.append(best)
        for v in {*best.operands}:
            if v in remaining:
                remaining[v] -= 1
        for r in best.results:
            for u in users.get(r, ()):
                if u in waiting:
                    waiting[u] -= 1
                    if waiting[u] == 0:
                        ready.append(u)
    if len(order) != len(ops):
        raise CkirError("arena: the graph has a cycle")
    return order


def _safe_bytes(v) -> int:
    try:
        return value_bytes(v)
    except CkirError:
        return 0


class Group:
    """Values sharing one buffer (a tensor, its views, ops writing over it in place)."""
    __slots__ = ("values", "size", "first", "last", "section", "offset", "id")

    def __init__(self, v, size, first, section):
        self.values, self.size, self.first, self.last = [v], size, first, first
        self.section, self.offset, self.id = section, None, None


def plan(module: Module, g: Graph, align: int = 64, inplace: bool = True) -> dict:
    """Place every value `g` computes; annotate ops with arena.place; return the statistics."""
    ops = [op for op in g if op is not g.terminator]
    end = len(ops)
    outputs = dict(zip(g.outputs, g.output_names))
    last_use: dict = {}
    for i, op in enumerate(ops):
        for v in op.operands:
            last_use[v] = i
    for v in g.outputs:
        last_use[v] = end
    group: dict = {}
    groups: list[Group] = []
    inputs = set(g.inputs)

    def section_of(v) -> str:
        if v in outputs:
            return "gradients" if outputs[v].startswith("grad.") else "outputs"
        return "activations"

    for i, op in enumerate(ops):
        name = op.opdef.name
        for r in op.results:
            if name in SOURCES or name == "ckir.state":
                g_ = Group(r, value_bytes(r), 0, "state" if name == "ckir.state" else "weights")
                g_.last = end
            elif "view" in op.opdef.traits and op.operands and op.operands[0] not in inputs \
                    and op.operands[0] in group and r is op.results[0] \
                    and group[op.operands[0]].section == "activations" and section_of(r) == "activations":
                g_ = group[op.operands[0]]          # same bytes, another shape
                g_.values.append(r)
                group[r] = g_
                g_.last = max(g_.last, last_use.get(r, i))
                continue
            elif (inplace and "inplace" in op.opdef.traits and r is op.results[0] and op.operands
                  and op.operands[0] in group and last_use.get(op.operands[0]) == i
                  and group[op.operands[0]].section == "activations" and section_of(r) == "activations"
                  and group[op.operands[0]].last == i
                  and value_bytes(r) == group[op.operands[0]].size):
                g_ = group[op.operands[0]]          # write the result over the dead operand
                g_.values.append(r)
                group[r] = g_
                g_.last = max(g_.last, last_use.get(r, i))
                continue
            else:
                g_ = Group(r, value_bytes(r), i, section_of(r))
                g_.last = last_use.get(r, i)
            group[r] = g_
            groups.append(g_)

    for i, x in enumerate(groups):
        x.id = i
    stats = {}
    for sec in SECTIONS:
        mine = [x for x in groups if x.section == sec]
        if sec == "activations":
            peak = _place_by_size(mine, align)
            lower = _lower_bound(mine, end)
        else:
            peak = 0
            for x in mine:                       # packed, no reuse (alive for the whole call)
                x.offset = peak
                peak = _align(peak + x.size, align)
            lower = sum(x.size for x in mine)
        stats[sec] = {"peak_bytes": peak, "lower_bound_bytes": lower,
                      "no_reuse_bytes": sum(_align(x.size, align) for x in mine), "tensors": len(mine)}
    for op in ops:
        op.set_meta("arena.place", [[group[r].section, group[r].offset, value_bytes(r), group[r].id]
                                    for r in op.results])
        op.set_meta("arena.live", [[group[r].first, group[r].last] for r in op.results])
    return stats


def _place_by_size(groups: list, align: int) -> int:
    """Largest first; each at the offset of the smallest gap (among tensors alive at the same
    time) it fits in. Returns the peak (end of the highest tensor)."""
    placed: list[Group] = []
    peak = 0
    for x in sorted(groups, key=lambda x: (-x.size, x.first)):
        busy = sorted((p for p in placed if p.first <= x.last and x.first <= p.last), key=lambda p: p.offset)
        best, best_gap, prev_end = None, None, 0
        need = _align(x.size, align)
        for p in busy:
            gap = p.offset - prev_end
            if gap >= need and (best_gap is None or gap < best_gap):
                best, best_gap = prev_end, gap
            prev_end = max(prev_end, _align(p.offset + p.size, align))
        x.offset = best if best is not None else prev_end
        placed.append(x)
        peak = max(peak, x.offset + x.size)
    return peak


def _lower_bound(groups: list, end: int) -> int:
    """The most bytes alive at any one step: no placement can use less."""
    events: dict = {}
    for x in groups:
        events[x.first] = events.get(x.first, 0) + x.size
        events[x.last + 1] = events.get(x.last + 1, 0) - x.size
    live = best = 0
    for t in sorted(events):
        live += events[t]
        best = max(best, live)
    return best


@register_pass
class Arena(Pass):
    """Plan memory: liveness-reused activations, every tensor at (section, offset, size)."""
    name = "arena"
    align: int = 64
    inplace: bool = True
    order: str = "auto"
    graph: str = ""

    def run(self, module):
        if self.order not in ("auto", "keep"):
            raise CkirError(f"arena: order must be auto or keep, not '{self.order}'")
        if self.align < 1 or self.align & (self.align - 1):
            raise CkirError(f"arena: align must be a power of two, not {self.align}")
        # every graph by default: a GGUF model's prefill, decode and score graphs each get a plan
        graphs = [module.graph(self.graph)] if self.graph else list(module.graphs.values())
        for g in graphs:
            if self.order == "auto":
                order = schedule(g)
                for op in order:                 # move every op, in the new order, before the return
                    g.detach(op)
                    g.insert_before(g.terminator, op)
            stats = plan(module, g, self.align, self.inplace)
            where = f"@{g.name} " if len(graphs) > 1 else ""
            for sec, s in stats.items():
                if s["tensors"]:
                    self.stat(f"{where}{sec} peak bytes", s["peak_bytes"])
                    self.stat(f"{where}{sec} lower bound bytes", s["lower_bound_bytes"])
                    self.stat(f"{where}{sec} bytes without reuse", s["no_reuse_bytes"])


# --- reading a placed graph (reports, the arena interpreter) ------------------------------------
def placements(g: Graph) -> list[dict]:
    """One row per op result with a placement: value, op, section, offset, size, buffer id,
    first/last use (op indices). Empty when the graph has not been through `arena`."""
    from ckir.printer import Printer
    names = Printer()
    for a in g.args:
        names.name(a)
    rows = []
    for op in g:
        meta = op.meta or {}
        for r in op.results:
            names.name(r)                 # the names the printed IR uses
        place, live = meta.get("arena.place"), meta.get("arena.live")
        if place is None:
            continue
        for r, (sec, off, size, buf), (first, last) in zip(op.results, place, live):
            rows.append({"value": names.name(r), "op": op.name, "section": sec,
                         "offset": off, "size": size, "buffer": buf, "first": first, "last": last})
    return rows


def buffers(rows) -> list[dict]:
    """One entry per buffer: the values sharing it (views, in place) merged."""
    out: dict = {}
    for r in rows:
        b = out.get(r["buffer"])
        if b is None:
            out[r["buffer"]] = dict(r)
        else:
            b["size"] = max(b["size"], r["size"])
            b["first"], b["last"] = min(b["first"], r["first"]), max(b["last"], r["last"])
    return list(out.values())


def section_stats(g: Graph, align: int = 64) -> dict:
    """{section: peak_bytes, lower_bound_bytes, no_reuse_bytes, tensors} of a placed graph."""
    out = {}
    bufs = buffers(placements(g))
    for sec in SECTIONS:
        mine = [b for b in bufs if b["section"] == sec]
        if not mine:
            continue
        events: dict = {}
        for b in mine:
            events[b["first"]] = events.get(b["first"], 0) + b["size"]
            events[b["last"] + 1] = events.get(b["last"] + 1, 0) - b["size"]
        live = lb = 0
        for t in sorted(events):
            live += events[t]
            lb = max(lb, live)
        out[sec] = {"peak_bytes": max(b["offset"] + b["size"] for b in mine),
                    "lower_bound_bytes": lb if sec == "activations" else sum(b["size"] for b in mine),
                    "no_reuse_bytes": sum(_align(b["size"], align) for b in mine), "tensors": len(mine)}
    return out


def overlaps(g: Graph) -> list:
    """Pairs of buffers alive at the same time whose bytes overlap (there must be none)."""
    bad = []
    bufs = buffers(placements(g))
    for sec in SECTIONS:
        mine = sorted((b for b in bufs if b["section"] == sec), key=lambda b: b["offset"])
        for i, a in enumerate(mine):
            for b in mine[i + 1:]:
                if b["offset"] >= a["offset"] + a["size"]:
                    break
                if a["first"] <= b["last"] and b["first"] <= a["last"]:
                    bad.append((a["value"], b["value"]))
    return bad


_COLORS = {"weights": "#9e9e9e", "activations": "#4e79a7", "outputs": "#f28e2b", "gradients": "#e15759",
           "state": "#59a14f"}


def svg(g: Graph, width: int = 1000, height: int = 600) -> str:
    """The arena map: op index across, byte offset down, one rectangle per tensor, coloured by
    section; sections are stacked top to bottom."""
    import html
    rows = [r for r in buffers(placements(g)) if r["section"] != "weights"]
    if not rows:
        raise CkirError("the graph has no arena placements: run the arena pass first")
    steps = max(r["last"] for r in rows) + 1
    secs = [s for s in SECTIONS if any(r["section"] == s for r in rows)]
    base, total = {}, 0
    for s in secs:
        base[s] = total
        total += max(r["offset"] + r["size"] for r in rows if r["section"] == s)
    sx, sy = (width - 20) / steps, (height - 40) / max(total, 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
             f'<text x="10" y="14">arena: {steps} steps, {total} bytes ({", ".join(secs)})</text>']
    for r in rows:
        x = 10 + r["first"] * sx
        w = max(1.0, (r["last"] - r["first"] + 1) * sx)
        y = 24 + (base[r["section"]] + r["offset"]) * sy
        h = max(1.0, r["size"] * sy)
        tip = html.escape(f'{r["value"]} ({r["op"]}): {r["section"]} +{r["offset"]}, {r["size"]} bytes, ops {r["first"]}-{r["last"]}')
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{_COLORS[r["section"]]}" '
                     f'fill-opacity="0.75" stroke="#333" stroke-width="0.3"><title>{tip}</title></rect>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
