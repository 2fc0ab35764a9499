"""Text form of a Module (generic MLIR-like syntax; grammar in ckir/parser.py).

Printing is deterministic and `print(parse(print(m))) == print(m)`.
"""
from __future__ import annotations

import json
import re

import numpy as np

from .dtypes import DType
from .ir import FileSource, Graph, Module, Op, Value
from .opdef import Dense, SymbolRef
from .types import Sym, TensorType

_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_.$]*\Z")
INLINE_ELEMENTS = 64       # dense values up to this many elements print as lists, larger as hex
INLINE_WEIGHT_BYTES = 256  # in-memory weights up to this size print inline, larger as `memory`


def ident(name: str) -> str:
    """A name as printed: bare when it is an identifier, else a quoted string."""
    return name if _BARE.match(name) else json.dumps(name)


def fmt_scalar(x, dtype: np.dtype) -> str:
    if dtype.kind == "O":
        return json.dumps(x)      # strings: JSON text, non-ASCII as \u escapes
    if dtype.kind == "b":
        return "true" if x else "false"
    if dtype.kind in "iu":
        return str(int(x))
    s = str(x)   # numpy prints the shortest text that round-trips in x's own precision
    if s in ("inf", "-inf", "nan"):
        return s
    return s if any(c in s for c in ".en") else s + ".0"


def fmt_dense(d: Dense) -> str:
    a = d.array
    t = TensorType(a.shape, a.dtype)
    if a.size > INLINE_ELEMENTS and a.dtype != object:     # strings have no byte form
        body = '"0x' + np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes().hex().upper() + '"'
    elif a.ndim == 0:
        body = fmt_scalar(a[()], a.dtype)
    else:
        body = _nested(a)
    return f"dense<{body}> : {t}"


def _nested(a) -> str:
    if a.ndim == 1:
        return "[" + ", ".join(fmt_scalar(x, a.dtype) for x in a) + "]"
    return "[" + ", ".join(_nested(x) for x in a) + "]"


def fmt_attr(v) -> str:
    t = type(v)
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return str(v)
    if t is float:
        r = repr(v)
        return r if r in ("inf", "-inf", "nan") or "." in r or "e" in r else r + ".0"
    if t is SymbolRef:
        return "@" + ident(v)
    if t is str:
        return json.dumps(v)
    if t is tuple:
        return "[" + ", ".join(fmt_attr(x) for x in v) + "]"
    if t is Sym:
        return v.name
    if t is Dense:
        return fmt_dense(v)
    if t is DType:
        return v.name
    if t is TensorType:
        return str(v)
    raise TypeError(f"cannot print attribute value {v!r}")


class Printer:
    def __init__(self, debug_info: bool = True):
        self.names: dict[Value, str] = {}
        self.used: set[str] = set()
        self.counter = 0
        self.debug_info = debug_info

    def name(self, v: Value) -> str:
        n = self.names.get(v)
        if n is not None:
            return n
        hint = v.name
        if hint is None:
            n = "%" + str(self.counter)
            self.counter += 1
        else:
            base, k = hint, 0
            while hint in self.used:
                k += 1
                hint = f"{base}_{k}"
            self.used.add(hint)
            n = "%" + ident(hint)
        self.names[v] = n
        return n

    def op(self, op: Op, indent: str, out: list) -> None:
        parts = [indent]
        if op.results:
            parts.append(", ".join([self.name(r) for r in op.results]))
            parts.append(" = ")
        parts.append(op.opdef.name)
        if op.operands:
            names = self.names
            parts.append(" " + ", ".join([names.get(v) or self.name(v) for v in op.operands]))
        if op.attrs:
            defaults = op.opdef.attrs
            items = [f"{k} = {fmt_attr(v)}" for k, v in op.attrs.items()
                     if v is not None and (k not in defaults or v != defaults[k].default)]
        else:
            items = []
        if op.meta:
            items += [f"{k} = {fmt_attr(v)}" for k, v in op.meta.items()]
        if items:
            parts.append(" {" + ", ".join(items) + "}")
        if op.regions:
            out.append("".join(parts))
            parts = []
            for reg in op.regions:
                args = ", ".join(f"{self.name(a)}: {a.type}" for a in reg.args)
                out[-1] += f" ({args}) {{"
                for o in reg:
                    self.op(o, indent + "  ", out)
                out.append(indent + "}")
            parts.append(out.pop())
        parts.append(" : (")
        parts.append(", ".join([str(v.type) for v in op.operands]))
        parts.append(") -> ")
        rs = op.results
        if len(rs) == 1:
            parts.append(str(rs[0].type))
        else:
            parts.append("(" + ", ".join([str(v.type) for v in rs]) + ")")
        if op.loc is not None and self.debug_info:
            parts.append(f" loc({json.dumps(op.loc)})")
        out.append("".join(parts))

    def graph(self, g: Graph, out: list) -> None:
        args = ", ".join(f"{self.name(a)}: {a.type}" for a in g.args)
        outs = ", ".join(f"{ident(n)}: {v.type}" for n, v in zip(g.output_names, g.outputs))
        out.append(f"  graph @{ident(g.name)}({args}) -> ({outs}) {{")
        for op in g:
            self.op(op, "    ", out)
        out.append("  }")


def fmt_weight(w, inline_limit=INLINE_WEIGHT_BYTES) -> str:
    d = w.data
    if isinstance(d, FileSource):
        src = f"file({json.dumps(d.path)}, offset = {d.offset})"
    elif d is not None and not w.type.dtype.is_quant and (
            w.inline or w.type.dtype.is_string or np.asarray(d).nbytes <= inline_limit):
        src = fmt_dense(Dense(np.asarray(d))).rsplit(" : ", 1)[0]
    else:
        src = "memory"
    return f"  weight @{ident(w.name)} : {w.type} = {src}"


def print_module(m: Module, debug_info: bool = True) -> str:
    out = [f"module @{ident(m.name)} {{"]
    for w in m.weights.values():
        out.append(fmt_weight(w))
    for st in m.state.values():
        init = f"weight @{ident(st.init)}" if st.init is not None else "zeros"
        out.append(f"  state @{ident(st.name)} : {st.type} = {init}")
    p = Printer(debug_info)
    for g in m.graphs.values():
        p.graph(g, out)
    out.append("}")
    return "\n".join(out) + "\n"


def print_op(op: Op) -> str:
    """One op on one line (operand names are local to this print)."""
    out: list = []
    Printer().op(op, "", out)
    return "\n".join(out)
