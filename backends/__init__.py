"""Backends turn a verified Module into something callable. Each backend has `compile(module,
graph, **options)` returning `run(inputs: list[np.ndarray], bind: dict) -> list[np.ndarray]`;
input validation happens once, in ckir.api.CompiledModule, for every backend."""
from __future__ import annotations

from ckir.errors import CkirError

_BACKENDS = {"interp": "ckir.backends.interp:InterpBackend", "llvm": "ckir.backends.llvm:LLVMBackend"}


def get_backend(name: str):
    spec = _BACKENDS.get(name)
    if spec is None:
        raise CkirError(f"unknown backend '{name}' (available: {', '.join(_BACKENDS)})")
    import importlib
    mod, cls = spec.split(":")
    return getattr(importlib.import_module(mod), cls)()


def backend_names() -> list[str]:
    return list(_BACKENDS)
