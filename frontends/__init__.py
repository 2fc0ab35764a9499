"""Frontends turn a file or an in-memory model into a Module. `load` dispatches on the file
suffix (or the object type); the ONNX and GGUF frontends register here as they land."""
from __future__ import annotations

import os

from ckir.errors import CkirError


def _load_text(path: str):
    from ckir.parser import parse
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise CkirError(f"{path}: not a text IR file (not UTF-8)") from None
    m = parse(text, filename=path)
    m.base_dir = os.path.dirname(os.path.abspath(path))
    return m


def _load_onnx(path: str):
    from .onnx import import_onnx
    return import_onnx(path)


def _load_gguf(path: str):
    from .gguf.models import build
    return build(path)


_BY_SUFFIX = {".ckir": _load_text, ".mlir": _load_text, ".onnx": _load_onnx, ".gguf": _load_gguf}


def load(source):
    """A Module from a path (.ckir text, .onnx, .gguf), an onnx.ModelProto, or a Module."""
    from ckir.ir import Module
    if isinstance(source, Module):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise CkirError(f"{path}: no such file")
        if os.path.isdir(path):
            raise CkirError(f"{path}: is a directory, expected a model file")
        suffix = os.path.splitext(path)[1].lower()
        fn = _BY_SUFFIX.get(suffix)
        if fn is None:
            raise CkirError(f"{path}: unknown model format '{suffix or '(no suffix)'}' "
                            f"(known: {', '.join(sorted(_BY_SUFFIX))})")
        return fn(path)
    if type(source).__name__ == "ModelProto":
        from .onnx import import_onnx
        return import_onnx(source)
    raise CkirError(f"cannot load a {type(source).__name__}; pass a file path, an onnx.ModelProto "
                    "or a Module")
