"""Public entry points: compile a Module and call it; save a Module with its weights."""
from __future__ import annotations

import os
import tempfile

import numpy as np

from .errors import CkirError, InputError
from .ir import FileSource, Module
from .types import SeqType, TensorType
from .pipeline import PassManager
from .printer import INLINE_WEIGHT_BYTES


class CompiledModule:
    """A graph of a module, ready to run. Call with arrays by position or by input name;
    returns {output name: array}. Inputs are checked against the graph's signature first."""

    def __init__(self, module: Module, graph: str | None, backend: str, **options):
        from ckir.backends import get_backend
        self.module = module
        self.graph = module.graph(graph)
        self.backend = backend
        self.input_names = [v.name for v in self.graph.inputs]
        self.input_types = [v.type for v in self.graph.inputs]
        self.output_names = list(self.graph.output_names)
        self._run = get_backend(backend).compile(module, self.graph, **options)

    def _bind_inputs(self, args, kwargs) -> tuple[list, dict]:
        from ckir.backends.interp import check_value
        names = self.input_names
        if len(args) > len(names):
            raise InputError(f"graph @{self.graph.name} takes {len(names)} inputs, got {len(args)}")
        given = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in names:
                raise InputError(f"graph @{self.graph.name} has no input '{k}' "
                                 f"(inputs: {', '.join(names)})")
            if k in given:
                raise InputError(f"input '{k}' given twice")
            given[k] = v
        missing = [n for n in names if n not in given]
        if missing:
            raise InputError(f"missing input{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                             f"for graph @{self.graph.name}")
        bind: dict = {}
        arrays = []
        for n, t in zip(names, self.input_types):
            a = given[n]
            if type(t) is not TensorType:
                if type(t) is SeqType and isinstance(a, tuple):
                    a = list(a)
            elif t.dtype.is_string:
                a = _string_input(a, n)
            elif not isinstance(a, np.ndarray):
                if isinstance(a, (list, tuple, int, float, bool, np.generic)):
                    a = np.asarray(a, dtype=t.dtype.np if t.dtype.np is not None else None)
                else:
                    raise InputError(f"input '{n}': expected a numpy array, got {type(a).__name__}")
            try:
                check_value(a, t, bind, f"input '{n}'")
            except CkirError as e:
                raise InputError(str(e)) from None
            arrays.append(a)
        return arrays, bind

    @property
    def state(self) -> dict:
        """The current value of each module state (read-only arrays)."""
        store = getattr(self._run, "state", None)
        if store is None:
            raise CkirError(f"the {self.backend} backend does not keep state")
        return {n: store.read(n) for n in self.module.state}

    def reset_state(self) -> None:
        """Back to each state's initial value (zeros, or its weight)."""
        store = getattr(self._run, "state", None)
        if store is not None:
            store.reset()

    def __call__(self, *args, **kwargs) -> dict[str, np.ndarray]:
        arrays, bind = self._bind_inputs(args, kwargs)
        outs = self._run(arrays, bind)
        return dict(zip(self.output_names, outs))


def _string_input(a, name: str):
    """A string input as an object array of str: numpy text arrays and lists are converted,
    bytes (as ONNX tooling often gives strings) are decoded as UTF-8."""
    if not isinstance(a, np.ndarray):
        if not isinstance(a, (list, tuple, str, bytes, np.generic)):
            raise InputError(f"input '{name}': expected a numpy array of strings, got {type(a).__name__}")
        a = np.asarray(a, dtype=object)
    if a.dtype.kind in "US":
        a = a.astype(object)
    if a.dtype == object and any(isinstance(x, bytes) for x in a.flat):
        out = np.empty(a.shape, dtype=object)
        for i, x in enumerate(a.flat):
            try:
                out.flat[i] = x.decode("utf-8") if isinstance(x, bytes) else x
            except UnicodeDecodeError as e:
                raise InputError(f"input '{name}': element {i} is not valid UTF-8 ({e.reason} at "
                                 f"byte {e.start})") from None
        a = out
    return a


def compile(module: Module, backend: str = "interp", passes: str | None = None,
            graph: str | None = None, **options) -> CompiledModule:
    """Run `passes` (a pipeline string) on `module` in place, then compile `graph` for
    `backend`."""
    from .verifier import verify
    if not isinstance(module, Module):
        raise CkirError(f"compile expects a Module, got {type(module).__name__}; use ckir.load first")
    if passes:
        PassManager(passes).run(module)
    else:
        verify(module)
    return CompiledModule(module, graph, backend, **options)


def save(module: Module, path: str, *, inline_limit: int = INLINE_WEIGHT_BYTES) -> None:
    """Write `module` as text to `path`. In-memory weights above `inline_limit` bytes go to
    `path + '.bin'` (64-byte aligned) and are referenced by offset (string weights have no byte
    form: they stay inline); file weights are re-pointed relative to the new location. Written
    atomically (temp file + rename)."""
    from .printer import print_module
    out_dir = os.path.dirname(os.path.abspath(path))
    bin_path = path + ".bin"
    originals = {}
    blobs = []
    offset = 0
    try:
        for w in module.weights.values():
            d = w.data
            originals[w.name] = d
            if isinstance(d, FileSource):
                src = d.path
                if not os.path.isabs(src) and module.base_dir is not None:
                    src = os.path.join(module.base_dir, src)
                w.data = FileSource(os.path.relpath(os.path.abspath(src), out_dir), d.offset)
            elif d is not None and not w.inline and not w.type.dtype.is_string and (
                    np.asarray(d).nbytes > inline_limit or w.type.dtype.is_quant):
                arr = np.ascontiguousarray(w.array())
                blobs.append((offset, arr))
                w.data = FileSource(os.path.basename(bin_path), offset)
                offset = (offset + arr.nbytes + 63) // 64 * 64
        text = print_module(module)
        if blobs:
            _atomic_write(bin_path, lambda f: [(f.seek(o), f.write(a.tobytes())) for o, a in blobs])
        _atomic_write(path, lambda f: f.write(text.encode()))
    finally:
        for w in module.weights.values():
            if w.name in originals:
                w.data = originals[w.name]


def _atomic_write(path: str, write) -> None:
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".ckir-tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
