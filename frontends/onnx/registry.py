"""Converters from ONNX nodes to ckir ops, registered per (domain, op type, first opset).

    @converter("Softmax", since=13)
    def softmax(ctx):
        return ctx.b.nn.softmax(ctx.x(0), axis=ctx.attr("axis", -1))

A model's node uses the converter with the highest `since` not above the model's opset for
that domain, so one converter serves every opset until the op's meaning changes.
"""
from __future__ import annotations

from collections import defaultdict

ONNX = "ai.onnx"
DOMAIN_ALIASES = {"": ONNX, "ai.onnx": ONNX}

_CONVERTERS: dict[tuple[str, str], list[tuple[int, object]]] = defaultdict(list)


def converter(op_type: str, since: int = 1, domain: str = ONNX):
    """Register `fn(ctx)` converting `op_type` nodes of `domain` from opset `since` on. It returns
    the node's output Values (one Value, or a list with None for outputs it does not produce)."""
    def reg(fn):
        entries = _CONVERTERS[(DOMAIN_ALIASES.get(domain, domain), op_type)]
        if any(s == since for s, _ in entries):
            raise ValueError(f"two converters for {domain}::{op_type} since opset {since}")
        entries.append((since, fn))
        entries.sort(key=lambda e: e[0])
        return fn
    return reg


def find(domain: str, op_type: str, opset: int):
    """(converter, since) for a node, or (None, None) when there is none for this opset."""
    entries = _CONVERTERS.get((DOMAIN_ALIASES.get(domain, domain), op_type))
    if not entries:
        return None, None
    best = None
    for since, fn in entries:
        if since <= opset:
            best = (fn, since)
    return best if best is not None else (None, None)


def known_ops() -> dict[tuple[str, str], list[int]]:
    return {k: [s for s, _ in v] for k, v in sorted(_CONVERTERS.items())}
