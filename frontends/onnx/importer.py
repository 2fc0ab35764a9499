"""ONNX ModelProto -> ckir Module.

Initializers become module weights by reference (external data is memory-mapped, never copied);
tiny ones become `nn.constant` so passes can fold them. `dim_param` dims become named symbolic
dims, missing dims anonymous ones. Each node is converted by the converter registered for its
(domain, op type) at the model's opset (frontends/onnx/registry.py). While converting, values
whose contents are known (constants, small weights, and pure ops on known values) are
evaluated with the ops' reference semantics, so converters can read shape tensors statically
and fall back to dynamic ops only when a value is really computed at run time.
"""
from __future__ import annotations

import os
import re

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ckir import dtypes as dt
from ckir.builder import Builder
from ckir.errors import CkirError
from ckir.ir import Block, FileSource, Graph, Module, Op, Value, gc_paused
from ckir.opdef import get_op
from ckir.types import ANY, OptType, SeqType, Sym, TensorType

from . import registry

ONNX_DTYPES = {
    TensorProto.FLOAT: dt.f32, TensorProto.DOUBLE: dt.f64, TensorProto.FLOAT16: dt.f16,
    TensorProto.BFLOAT16: dt.bf16, TensorProto.INT64: dt.i64, TensorProto.INT32: dt.i32,
    TensorProto.INT16: dt.i16, TensorProto.INT8: dt.i8, TensorProto.UINT8: dt.u8,
    TensorProto.UINT16: dt.u16, TensorProto.UINT32: dt.u32, TensorProto.UINT64: dt.u64,
    TensorProto.BOOL: dt.bool_, TensorProto.FLOAT8E4M3FN: dt.f8e4m3fn,
    TensorProto.FLOAT8E4M3FNUZ: dt.f8e4m3fnuz, TensorProto.FLOAT8E5M2: dt.f8e5m2,
    TensorProto.FLOAT8E5M2FNUZ: dt.f8e5m2fnuz, TensorProto.FLOAT8E8M0: dt.f8e8m0,
    TensorProto.FLOAT4E2M1: dt.f4e2m1, TensorProto.INT4: dt.i4, TensorProto.UINT4: dt.u4,
    TensorProto.INT2: dt.i2, TensorProto.UINT2: dt.u2, TensorProto.STRING: dt.string,
}
TO_ONNX_DTYPE = {v: k for k, v in ONNX_DTYPES.items()}
CONSTANT_ELEMENTS = 64        # non-float initializers up to this size become nn.constant
# ops that only move elements around, so they can run on shape vectors holding symbolic dims
MOVES_ELEMENTS = {"nn.gather", "nn.concat", "nn.unsqueeze", "nn.squeeze", "nn.slice", "nn.reshape",
                  "nn.cast", "nn.split", "nn.transpose", "nn.expand", "nn.tile"}
KNOWN_ELEMENTS = 1 << 16      # values up to this size are evaluated at import when known
_IDENT = re.compile(r"[^A-Za-z0-9_]")


def _dims_array(dims) -> np.ndarray:
    """A shape vector: i64 when every dim is static, else an object array of ints and Syms."""
    if all(type(d) is int or isinstance(d, (np.integer,)) for d in dims):
        return np.asarray([int(d) for d in dims], dtype=np.int64)
    return np.asarray([d if type(d) is Sym else int(d) for d in dims], dtype=object)


def onnx_dtype(code: int, what: str) -> dt.DType:
    d = ONNX_DTYPES.get(code)
    if d is None:
        name = TensorProto.DataType.Name(code) if code in TensorProto.DataType.values() else str(code)
        raise CkirError(f"{what}: ONNX element type {name} is not supported")
    return d


def dim_name(param: str) -> str:
    """An ONNX dim_param as a ckir symbolic dim name (an identifier)."""
    n = _IDENT.sub("_", param) or "dim"
    return n if not n[0].isdigit() else "d_" + n


def tensor_type(tp, what: str) -> TensorType:
    """ckir type of an ONNX TypeProto (tensors only)."""
    if not tp.HasField("tensor_type"):
        kind = tp.WhichOneof("value")
        raise CkirError(f"{what}: ONNX {kind or 'untyped'} values are not supported (tensors only)")
    tt = tp.tensor_type
    d = onnx_dtype(tt.elem_type, what)
    if not tt.HasField("shape"):
        raise CkirError(f"{what}: the rank is unknown (no shape in the model)")
    dims = []
    for x in tt.shape.dim:
        if x.HasField("dim_value"):
            dims.append(x.dim_value)
        elif x.HasField("dim_param") and x.dim_param:
            dims.append(Sym(dim_name(x.dim_param)))
        else:
            dims.append(ANY)
    return TensorType(dims, d)


def value_type(tp, what: str):
    """ckir type of an ONNX TypeProto: a tensor, a sequence of tensors, or an optional of
    either."""
    kind = tp.WhichOneof("value")
    if kind == "sequence_type":
        e = value_type(tp.sequence_type.elem_type, f"{what} (sequence element)")
        if type(e) is not TensorType:
            raise CkirError(f"{what}: sequences of {e} are not supported (sequences of tensors only)")
        return SeqType(e)
    if kind == "optional_type":
        e = value_type(tp.optional_type.elem_type, f"{what} (optional element)")
        if type(e) is OptType:
            raise CkirError(f"{what}: an optional of an optional is not supported")
        return OptType(e)
    return tensor_type(tp, what)


def safe_external_path(base_dir: str, location: str, tensor: str) -> str:
    """Resolve an external-data location inside the model's directory: absolute paths, `..`
    and symlinks that leave it are refused."""
    if not location or os.path.isabs(location) or location.startswith(("/", "\\")):
        raise CkirError(f"initializer {tensor}: external data path {location!r} must be relative "
                        "to the model's directory")
    parts = re.split(r"[/\\]", location)
    if ".." in parts:
        raise CkirError(f"initializer {tensor}: external data path {location!r} leaves the model's directory")
    root = os.path.realpath(base_dir)
    path = os.path.realpath(os.path.join(root, location))
    if os.path.commonpath([root, path]) != root:
        raise CkirError(f"initializer {tensor}: external data path {location!r} resolves outside "
                        f"the model's directory (symlink?)")
    if not os.path.isfile(path):
        raise CkirError(f"initializer {tensor}: external data file {location!r} not found")
    return path


def initializer_data(t: TensorProto, base_dir: str | None):
    """(TensorType, data) of an initializer: a numpy array, or a FileSource for external data."""
    what = f"initializer {t.name}"
    d = onnx_dtype(t.data_type, what)
    ty = TensorType(tuple(t.dims), d)
    if t.data_location == TensorProto.EXTERNAL:
        info = {e.key: e.value for e in t.external_data}
        if base_dir is None:
            raise CkirError(f"{what}: external data needs the model's file path (load it from a file)")
        if d.is_string:
            raise CkirError(f"{what}: string tensors in external data are not supported")
        path = safe_external_path(base_dir, info.get("location", ""), t.name)
        offset = int(info.get("offset", "0") or 0)
        need = ty.nbytes()
        length = int(info.get("length", str(need)) or need)
        if length != need:
            raise CkirError(f"{what}: external data length {length} != {need} bytes for {ty}")
        if os.path.getsize(path) < offset + need:
            raise CkirError(f"{what}: {info.get('location')} is too short for offset {offset} + {need} bytes")
        if d.bits == 8 and d in (dt.i4, dt.u4, dt.f4e2m1, dt.i2, dt.u2):
            raise CkirError(f"{what}: packed {d} external data is not supported")
        return ty, FileSource(path, offset)
    if d.is_string:       # decoded here, so that bad UTF-8 is reported with its element
        if len(t.string_data) != ty.numel:
            raise CkirError(f"{what}: has {len(t.string_data)} strings, dims say {list(ty.shape)}")
        return ty, _decode_strings(np.asarray(list(t.string_data), dtype=object).reshape(ty.shape), what)
    try:
        arr = numpy_helper.to_array(t)
    except Exception as e:
        raise CkirError(f"{what}: cannot read its data: {e}") from None
    if arr.dtype != d.np:
        arr = arr.astype(d.np)
    if arr.shape != ty.shape:
        raise CkirError(f"{what}: data has shape {list(arr.shape)}, dims say {list(ty.shape)}")
    return ty, arr


def _decode_strings(arr: np.ndarray, what: str) -> np.ndarray:
    """ONNX strings (bytes, UTF-8) as an object array of str."""
    out = np.empty(arr.shape, dtype=object)
    for i, x in enumerate(arr.flat):
        out.flat[i] = _utf8(x, f"{what}: element {i}")
    return out


def _utf8(x, what: str) -> str:
    if isinstance(x, str):
        return x
    try:
        return x.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CkirError(f"{what} is not valid UTF-8 ({e.reason} at byte {e.start})") from None


class Scope:
    """Names visible while converting one (sub)graph. A name found only in an enclosing scope
    is captured: it becomes a new argument of this scope's block (regions are isolated)."""

    def __init__(self, block: Block, parent: Scope | None = None, on_capture=None):
        self.block, self.parent = block, parent
        self.names: dict[str, Value] = {}
        self.captures: list[tuple[Value, Value]] = []    # (outer value, block argument)
        self.on_capture = on_capture

    def lookup(self, name: str) -> Value | None:
        v = self.names.get(name)
        if v is not None or self.parent is None:
            return v
        outer = self.parent.lookup(name)
        if outer is None:
            return None
        arg = self.block.add_arg(outer.type, name)
        self.names[name] = arg
        self.captures.append((outer, arg))
        if self.on_capture is not None:
            self.on_capture(outer, arg)
        return arg


class Importer:
    def __init__(self, model: onnx.ModelProto, base_dir: str | None, name: str):
        self.model = model
        self.base_dir = base_dir
        self.module = Module(name)
        self.module.base_dir = base_dir
        # each node's domain is checked against these when it is converted
        self.opsets = {registry.DOMAIN_ALIASES.get(o.domain, o.domain): o.version for o in model.opset_import}
        self.known: dict[Value, np.ndarray] = {}

    # --- values known at import time ------------------------------------------------------------
    def known_value(self, v: Value | None) -> np.ndarray | None:
        if v is None:
            return None
        a = self.known.get(v)
        if a is not None:
            return a
        op = v.op
        if op is not None and op.opdef.name == "ckir.weight" and not v.type.dtype.is_quant \
                and v.type.is_static and v.type.numel <= KNOWN_ELEMENTS:
            a = self.module.weights[op.attrs["name"]].array(self.base_dir)
            self.known[v] = a
        return a

    def evaluate(self, ops) -> None:
        """Record the results of new pure ops whose operands are all known. Shape vectors may
        hold named symbolic dims (object arrays of ints and Syms): nn.shape of a value with
        named dims is known, and ops that only move elements keep such vectors known, so a
        Shape -> Gather -> Concat -> Reshape chain of an exported model stays static."""
        for op in ops:
            od = op.opdef
            if od.name == "nn.constant":
                self.known[op.results[0]] = op.attrs["value"].array
                continue
            if od.name == "nn.shape":
                dims = op.operands[0].type.shape[slice(op.attrs["start"], op.attrs["end"])]
                if all(type(d) is int or d.name is not None for d in dims):
                    self.known[op.results[0]] = _dims_array(dims)
                continue
            if not od.pure or not od.fold or op.regions or not op.operands:
                continue
            if any(type(r.type) is not TensorType or not r.type.is_static
                   or r.type.numel > KNOWN_ELEMENTS for r in op.results):
                continue
            arrays = [self.known_value(v) for v in op.operands]
            if any(a is None for a in arrays):
                continue
            # object arrays of string values hold text; of other values, shape vectors with Syms
            symbolic = any(a.dtype == object and not v.type.dtype.is_string
                           for a, v in zip(arrays, op.operands))
            if symbolic and od.name not in MOVES_ELEMENTS:
                continue
            try:
                with np.errstate(all="ignore"):
                    if symbolic and od.name == "nn.cast":
                        if not op.attrs["to"].is_int:
                            continue
                        outs = arrays           # ints and dims stay what they are
                    else:
                        outs = od.ref(arrays, op.attrs, types=[v.type for v in op.operands])
            except (CkirError, ValueError, TypeError, ArithmeticError):
                continue
            for r, a in zip(op.results, outs):
                a = np.asarray(a)
                if a.dtype == object and not r.type.dtype.is_string:
                    a = _dims_array(a.reshape(-1)).reshape(a.shape)
                self.known[r] = a

    # --- graphs ---------------------------------------------------------------------------------
    def run(self) -> Module:
        g = self.model.graph
        with gc_paused():
            graph = Graph("main")
            scope = Scope(graph)
            self.initializers_to_scope(g, scope)
            inits = {t.name for t in g.initializer}
            for vi in g.input:
                if vi.name in inits:
                    continue          # an initializer listed as an input (IR < 4): a weight
                t = value_type(vi.type, f"graph input {vi.name}")
                scope.names[vi.name] = graph.add_arg(t, vi.name)
            self.convert_nodes(g.node, scope)
            outs = []
            for vi in g.output:
                v = scope.lookup(vi.name)
                if v is None:
                    raise CkirError(f"graph output {vi.name} is produced by no node, input or initializer")
                outs.append(v)
            graph.set_outputs(outs, [vi.name for vi in g.output])
            self.module.add_graph(graph)
        return self.module

    def initializers_to_scope(self, g, scope: Scope) -> None:
        """A (sub)graph's initializers as values: tiny ones as constants, the rest as module
        weights (memory-mapped when external)."""
        if len(g.sparse_initializer):
            raise CkirError(f"sparse initializer {g.sparse_initializer[0].values.name} is not supported")
        b = Builder.at_end(scope.block)
        for t in g.initializer:
            ty, data = initializer_data(t, self.base_dir)
            # strings have no byte form to reference: they are always constants. Float ones stay
            # weights however small (a bias is a parameter: autodiff and training need it), but
            # their values are known to the importer all the same.
            tiny = isinstance(data, np.ndarray) and data.size <= CONSTANT_ELEMENTS
            if tiny and not ty.dtype.is_float or ty.dtype.is_string:
                v = b.constant(data)
                self.known[v] = data
            else:
                if t.name in self.module.weights:
                    raise CkirError(f"initializer {t.name} is defined twice")
                self.module.add_weight(t.name, ty, data)
                v = b.weight(self.module, t.name)
                if tiny:
                    self.known[v] = data
            v.name = t.name
            scope.names[t.name] = v

    def convert_nodes(self, nodes, scope: Scope) -> None:
        for node in nodes:
            domain = registry.DOMAIN_ALIASES.get(node.domain, node.domain)
            opset = self.opsets.get(domain)
            where = _where(node, opset)
            if opset is None:
                raise CkirError(f"{where}: the model imports no opset for domain '{node.domain}'")
            fn, since = registry.find(domain, node.op_type, opset)
            if fn is None:
                raise CkirError(f"{where}: unsupported op")
            created: list = []
            ctx = Ctx(self, node, scope, opset, created)
            try:
                outs = fn(ctx)
            except CkirError as e:
                msg = str(e)
                raise CkirError(msg if msg.startswith(where) else f"{where}: {msg}") from None
            if isinstance(outs, Value) or outs is None:
                outs = [outs]
            outs = list(outs)
            for i, name in enumerate(node.output):
                if not name:
                    continue
                v = outs[i] if i < len(outs) else None
                if v is None:
                    raise CkirError(f"{where}: output {i} ({name}) is not supported")
                if v.name is None or v.op is not None and v.op in created:
                    v.name = name
                scope.names[name] = v
            self.evaluate(created)

    def subgraph(self, g, scope: Scope, arg_types, arg_names=None):
        """Convert a subgraph attribute into a region. Returns (block, captured outer values):
        the block's arguments are `arg_types` followed by one per captured value."""
        block = Block(arg_types, arg_names)
        inner = Scope(block, scope, self._capture_known)
        for i, vi in enumerate(g.input):
            if i < len(block.args):
                inner.names[vi.name] = block.args[i]
                if block.args[i].name is None:
                    block.args[i].name = vi.name
        self.initializers_to_scope(g, inner)
        self.convert_nodes(g.node, inner)
        outs = []
        for vi in g.output:
            v = inner.lookup(vi.name)
            if v is None:
                raise CkirError(f"subgraph {g.name}: output {vi.name} is not defined")
            outs.append(v)
        block.append(Op(get_op("ckir.return"), outs, ()))
        return block, [outer for outer, _ in inner.captures]

    def _capture_known(self, outer: Value, arg: Value) -> None:
        """A captured value known at import is known inside the region too."""
        k = self.known_value(outer)
        if k is not None:
            self.known[arg] = k


def _where(node, opset) -> str:
    dom = node.domain or "ai.onnx"
    name = f"'{node.name}'" if node.name else f"(unnamed, output {node.output[0] if node.output else '?'})"
    return f"node {name} ({node.op_type}, domain {dom}, opset {opset})"


_MISSING = object()


class Ctx:
    """What a converter sees: the node, its inputs as Values, its attributes, a Builder that
    inserts where the node's ops belong, and the values known at import time."""

    def __init__(self, imp: Importer, node, scope: Scope, opset: int, created: list):
        self.imp, self.node, self.scope, self.opset = imp, node, scope, opset
        self.op_type = node.op_type
        self.where = _where(node, opset)
        self.b = Builder.at_end(scope.block, loc=node.name or None, listener=created.append)
        self.inputs = []
        for i, name in enumerate(node.input):
            if not name:
                self.inputs.append(None)
                continue
            v = scope.lookup(name)
            if v is None:
                raise CkirError(f"{self.where}: input {i} '{name}' is produced by no node, input or "
                                "initializer (missing initializer?)")
            self.inputs.append(v)
        self.attrs = {a.name: a for a in node.attribute}

    # --- inputs ---
    @property
    def n_in(self) -> int:
        return len(self.inputs)

    @property
    def n_out(self) -> int:
        return len(self.node.output)

    def x(self, i: int) -> Value:
        v = self.inputs[i] if i < len(self.inputs) else None
        if v is None:
            raise CkirError(f"{self.where}: input {i} is required")
        return v

    def opt(self, i: int) -> Value | None:
        return self.inputs[i] if i < len(self.inputs) else None

    def const(self, i: int) -> np.ndarray | None:
        """The contents of input i when known at import time, else None. Shape vectors holding
        symbolic dims are object arrays (use `dims`); `ints` refuses them."""
        return self.imp.known_value(self.opt(i))

    def ints(self, i: int, what: str = "") -> list[int] | None:
        """Input i as a list of ints if it is known at import time, else None."""
        a = self.const(i)
        if a is None or a.dtype == object:
            return None
        return [int(v) for v in np.asarray(a).reshape(-1)]

    def dims(self, i: int) -> list | None:
        """Input i as a list of ints and named symbolic dims (a shape vector computed from
        symbolic shapes, e.g. [batch, seq, 12, 64]) if known at import time, else None."""
        a = self.const(i)
        if a is None:
            return None
        return [v if type(v) is Sym else int(v) for v in np.asarray(a).reshape(-1)]

    def out_used(self, i: int) -> bool:
        return i < len(self.node.output) and bool(self.node.output[i])

    # --- attributes ---
    def attr(self, name: str, default=_MISSING):
        a = self.attrs.get(name)
        if a is None:
            if default is _MISSING:
                raise CkirError(f"{self.where}: missing attribute '{name}'")
            return default
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            return _utf8(v, f"{self.where}: attribute '{name}'")
        if isinstance(v, list) and v and isinstance(v[0], bytes):
            return [_utf8(s, f"{self.where}: attribute '{name}'[{i}]") for i, s in enumerate(v)]
        if isinstance(v, TensorProto):
            data = initializer_data(v, self.imp.base_dir)[1]
            if not isinstance(data, np.ndarray):
                raise CkirError(f"{self.where}: attribute '{name}' holds external data")
            return data
        return v

    def has(self, name: str) -> bool:
        return name in self.attrs

    def fail(self, msg: str) -> CkirError:
        return CkirError(f"{self.where}: {msg}")

    def subgraph(self, name: str, arg_types, arg_names=None):
        g = self.attr(name)
        return self.imp.subgraph(g, self.scope, arg_types, arg_names)


def load_model(source) -> onnx.ModelProto:
    """A ModelProto from a path, bytes or a ModelProto, checked by onnx.checker."""
    if isinstance(source, onnx.ModelProto):
        model, what = source, "model"
    elif isinstance(source, (bytes, bytearray)):
        model, what = _parse(bytes(source), "model bytes"), "model bytes"
    else:
        what = os.fspath(source)
        try:
            with open(what, "rb") as f:
                data = f.read()
        except OSError as e:
            raise CkirError(f"{what}: cannot read: {e.strerror}") from None
        model = _parse(data, what)
    base_dir = os.path.dirname(os.path.abspath(what)) if not isinstance(source, (onnx.ModelProto, bytes, bytearray)) else None
    for t in model.graph.initializer:      # our own path checks come first: they are stricter
        if t.data_location == TensorProto.EXTERNAL:
            if base_dir is None:
                raise CkirError(f"initializer {t.name}: external data needs the model's file path "
                                "(load the model from its file)")
            initializer_data(t, base_dir)
    try:
        onnx.checker.check_model(what if base_dir is not None else model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid"
        raise CkirError(f"{what}: fails onnx.checker: {first}") from None
    except ValueError as e:      # e.g. a model over 2 GB given in memory
        raise CkirError(f"{what}: cannot be checked: {e}") from None
    return model


def _parse(data: bytes, what: str) -> onnx.ModelProto:
    m = onnx.ModelProto()
    try:
        m.ParseFromString(data)
    except Exception:
        raise CkirError(f"{what}: not an ONNX model (protobuf parse failed: truncated or not ONNX?)") from None
    if not m.HasField("graph"):
        raise CkirError(f"{what}: not an ONNX model (no graph)")
    return m


def import_onnx(source, name: str | None = None) -> Module:
    """Load and convert an ONNX model (path, bytes or ModelProto) into a Module."""
    base_dir = None
    if isinstance(source, (str, os.PathLike)):
        base_dir = os.path.dirname(os.path.abspath(os.fspath(source)))
        name = name or os.path.splitext(os.path.basename(os.fspath(source)))[0]
    model = load_model(source)
    from . import ops  # noqa: F401  (registers the converters)
    name = name or (model.graph.name or "model")
    return Importer(model, base_dir, dim_name(name)).run()
