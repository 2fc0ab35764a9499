"""ckir as an ONNX backend (onnx.backend.base): `prepare(model)` imports and compiles a model;
the returned rep's `run(inputs)` returns the outputs in graph order.

The execution backend is `backend=` in prepare's options, else $CKIR_ONNX_BACKEND, else
"interp": `prepare(model, backend="llvm")` or `CKIR_ONNX_BACKEND=llvm` runs the model on the LLVM
backend. The pass pipeline is `passes=` (default "canonicalize,cse,dce"); other options (e.g.
`target=`, `threads=` for llvm) go to `ckir.compile`. On llvm, ops without a native kernel run
through their interpreter reference; `rep.fallback_ops` lists them, and `native_only=True`
makes prepare refuse (CkirError naming them) a model that would run any op that way.
"""
from __future__ import annotations

import os
from collections import namedtuple

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

import ckir

from .importer import TO_ONNX_DTYPE, import_onnx

DEFAULT_PASSES = "canonicalize,cse,dce"


class CkirRep(BackendRep):
    def __init__(self, compiled: ckir.CompiledModule):
        self.compiled = compiled
        self._Outputs = namedtuple("Outputs", [f"o{i}" for i in range(len(compiled.output_names))],
                                   rename=True)

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            outs = self.compiled(**inputs)
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            outs = self.compiled(*inputs)
        return self._Outputs(*[outs[n] for n in self.compiled.output_names])

    @property
    def fallback_ops(self) -> list[str]:
        """Names of the ops (one entry per op instance) that the llvm backend runs through the
        interpreter's reference instead of a native kernel; ops inside a region count through
        their parent (If, Loop, Scan run in the interpreter). Empty on the interpreter backend,
        where nothing is native to fall back from."""
        plan = getattr(self.compiled._run, "plan", None)
        if plan is None:
            return []
        return [op.opdef.name for op in plan.ref_ops]


class CkirBackend(Backend):
    @classmethod
    def is_compatible(cls, model, device: str = "CPU", **kwargs) -> bool:
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs) -> CkirRep:
        if not cls.supports_device(device):
            raise ckir.CkirError(f"ckir runs on CPU, not {device}")
        backend = kwargs.pop("backend", None) or os.environ.get("CKIR_ONNX_BACKEND", "interp")
        passes = kwargs.pop("passes", DEFAULT_PASSES)
        native_only = kwargs.pop("native_only", False)
        options = {k: kwargs.pop(k) for k in ("target", "threads", "cache") if k in kwargs}
        module = ckir.load(model) if isinstance(model, (str, os.PathLike)) else import_onnx(model)
        if native_only:
            # checked before compiling, so a refused model costs no LLVM time
            if backend != "llvm":
                raise ckir.CkirError(f"native_only needs the llvm backend, not {backend}")
            from ckir.backends.llvm.plan import classify
            from ckir.pipeline import PassManager
            if passes:
                PassManager(passes).run(module)
                passes = None
            g = module.graph(None)
            ref = sorted({op.opdef.name for op in g if op is not g.terminator and classify(op) == "ref"})
            if ref:
                raise ckir.CkirError("not native on llvm: the interpreter would run " + ", ".join(ref))
        return CkirRep(ckir.compile(module, backend=backend, passes=passes, **options))

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device: str = "CPU", outputs_info=None, **kwargs):
        """Run one node: its inputs' types come from the arrays given."""
        inputs = [np.asarray(x) for x in inputs]
        vis = [onnx.helper.make_tensor_value_info(n, TO_ONNX_DTYPE[ckir.dtypes.dtype(x.dtype)], x.shape)
               for n, x in zip(node.input, inputs) if n]
        # output types are ckir's to infer; the checker only needs some tensor type
        elem = vis[0].type.tensor_type.elem_type if vis else onnx.TensorProto.FLOAT
        outs = [onnx.helper.make_tensor_value_info(n, elem, []) for n in node.output if n]
        graph = onnx.helper.make_graph([node], "run_node", vis, outs)
        opset = kwargs.pop("opset_version", onnx.defs.onnx_opset_version())
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(node.domain, opset)])
        return cls.prepare(model, device, **kwargs).run([x for n, x in zip(node.input, inputs) if n])

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return str(device).upper().startswith("CPU")


prepare = CkirBackend.prepare
run_model = CkirBackend.run_model
run_node = CkirBackend.run_node
supports_device = CkirBackend.supports_device
is_compatible = CkirBackend.is_compatible
