"""ckir: a declarative graph IR and optimizer framework for AI models on CPUs.

    import ckir
    m = ckir.load("model.ckir")                 # or ckir.parse(text)
    f = ckir.compile(m, passes="canonicalize,cse,dce")
    outputs = f(x=...)                            # {output name: numpy array}
"""
from . import dtypes
from .errors import CkirError, InputError, ParseError, PassError, ShapeError, VerifyError
from .types import Sym, TensorType
from .ir import Block, FileSource, Graph, Module, Op, Value, Weight
from .opdef import (Arg, Attr, Cost, Ex, OpDef, Operand, Result, all_ops, declare, get_op,
                    not_differentiable, register)
from . import builtin  # noqa: F401  (declares ckir.return, ckir.weight)
from .builder import Builder, new_graph
from .parser import parse
from .verifier import verify
from .rewrite import P, Rule, apply_patterns
from .pipeline import Pass, PassManager, load_plugin, register_pass, registered_passes, run_pipeline
from .api import CompiledModule, compile, save
from . import dialects  # noqa: F401,E402  (declares the nn dialect)

__version__ = "0.1.0"


def load(source):
    """A Module from a file path (.ckir text; ONNX and GGUF as their frontends land)."""
    from .frontends import load as _load
    return _load(source)


__all__ = [
    "Arg", "Attr", "Block", "Builder", "CkirError", "CompiledModule", "Cost", "Ex", "FileSource",
    "Graph", "InputError", "Module", "Op", "OpDef", "Operand", "P", "ParseError", "Pass",
    "PassError", "PassManager", "Result", "Rule", "ShapeError", "Sym", "TensorType", "Value",
    "VerifyError", "Weight", "all_ops", "apply_patterns", "compile", "declare", "dtypes",
    "get_op", "load", "load_plugin", "new_graph", "not_differentiable", "parse", "register",
    "register_pass", "registered_passes", "run_pipeline", "save", "verify",
]
