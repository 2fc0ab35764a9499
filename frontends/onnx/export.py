"""ckir Module -> ONNX ModelProto, for modules whose ops map back (`module.to_onnx()`,
`ckir export-onnx`), so an optimized module opens in Netron or runs in onnxruntime.

Each exportable op has one entry in EXPORT: `fn(e, op) -> list of output names`, emitting
nodes through `e.node(...)`. An op without an entry is an error naming it.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ckir.errors import CkirError
from ckir.ir import Module
from ckir.types import Sym, TensorType

from .importer import TO_ONNX_DTYPE

BASE_OPSET = 18


class Exporter:
    def __init__(self, module: Module):
        self.module = module
        self.nodes: list = []
        self.inits: list = []
        self.names: dict = {}
        self.used: set = set()
        self.opset = BASE_OPSET
        self.counter = 0

    def fresh(self, hint: str = "t") -> str:
        while True:
            self.counter += 1
            n = f"{hint}_{self.counter}"
            if n not in self.used:
                self.used.add(n)
                return n

    def name(self, v) -> str:
        n = self.names.get(v)
        if n is None:
            n = v.name if v.name and v.name not in self.used else self.fresh(v.name or "v")
            self.used.add(n)
            self.names[v] = n
        return n

    def node(self, op_type: str, inputs, n_out: int = 1, opset: int = 0, **attrs) -> list[str]:
        self.opset = max(self.opset, opset)
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.fresh(op_type), **attrs))
        return outs

    def const(self, array, hint: str = "c") -> str:
        n = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(array), n))
        return n

    def ints(self, values) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64), "ints")


def value_info(name: str, t) -> onnx.ValueInfoProto:
    if type(t) is not TensorType:
        raise CkirError(f"cannot export {t} values to ONNX yet")
    if t.dtype not in TO_ONNX_DTYPE:
        raise CkirError(f"no ONNX type for {t.dtype}")
    dims = [d if type(d) is int else (d.name if isinstance(d, Sym) and d.name else None) for d in t.shape]
    return helper.make_tensor_value_info(name, TO_ONNX_DTYPE[t.dtype], dims)


def _simple(onnx_op: str, opset: int = 0):
    return lambda e, op: e.node(onnx_op, [e.name(v) for v in op.operands], opset=opset)


def _equal(e, op):
    # Equal takes strings from opset 19 on
    return e.node("Equal", [e.name(v) for v in op.operands],
                  opset=19 if op.operands[0].type.dtype.is_string else 0)


def _not_equal(e, op):
    return e.node("Not", _equal(e, op))


def _rsqrt(e, op):
    return e.node("Reciprocal", e.node("Sqrt", [e.name(op.operands[0])]))


def _silu(e, op):
    x = e.name(op.operands[0])
    return e.node("Mul", [x] + e.node("Sigmoid", [x]))


def _gelu(e, op):
    return e.node("Gelu", [e.name(op.operands[0])], opset=20, approximate=op.attrs["approximate"])


def _mod(e, op):
    if op.operands[0].type.dtype.is_float:
        raise CkirError("nn.mod on floats (Python's sign rule) has no ONNX equivalent")
    return e.node("Mod", [e.name(v) for v in op.operands], fmod=0)


def _cast(e, op):
    return e.node("Cast", [e.name(op.operands[0])], to=TO_ONNX_DTYPE[op.attrs["to"]])


def _clip(e, op):
    x = op.operands[0]
    npd = x.type.dtype.np
    lo = e.const(np.asarray(op.attrs["min"], npd)) if op.attrs["min"] is not None else ""
    hi = e.const(np.asarray(op.attrs["max"], npd)) if op.attrs["max"] is not None else ""
    return e.node("Clip", [e.name(x), lo, hi])


def _swap_last(e, name: str, rank: int) -> str:
    perm = list(range(rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return e.node("Transpose", [name], perm=perm)[0]


def _matmul(e, op):
    a, b = op.operands
    an, bn = e.name(a), e.name(b)
    if op.attrs["transpose_a"]:
        an = _swap_last(e, an, a.type.rank)
    if op.attrs["transpose_b"]:
        bn = _swap_last(e, bn, b.type.rank)
    return e.node("MatMul", [an, bn])


def _reduce(onnx_op: str):
    def fn(e, op):
        x = op.operands[0]
        axes = op.attrs["axes"]
        ins = [e.name(x)] + ([e.ints(axes)] if axes is not None else [])
        return e.node(onnx_op, ins, keepdims=int(op.attrs["keepdims"]))
    return fn


def _arg(onnx_op: str):
    return lambda e, op: e.node(onnx_op, [e.name(op.operands[0])], axis=op.attrs["axis"],
                                keepdims=int(op.attrs["keepdims"]),
                                select_last_index=int(op.attrs["select_last_index"]))


def _static(values, what):
    if any(type(v) is Sym for v in values):
        raise CkirError(f"{what} holds symbolic dims; specialize them before exporting")
    return values


def _reshape(e, op):
    return e.node("Reshape", [e.name(op.operands[0]), e.ints(_static(op.attrs["shape"], "nn.reshape shape"))],
                  allowzero=1)


def _like(onnx_op: str):
    return lambda e, op: e.node(onnx_op, [e.name(op.operands[0])] + e.node("Shape", [e.name(op.operands[1])]))


def _transpose(e, op):
    perm = op.attrs["perm"]
    return e.node("Transpose", [e.name(op.operands[0])], **({"perm": list(perm)} if perm is not None else {}))


def _axes_op(onnx_op: str):
    def fn(e, op):
        axes = op.attrs["axes"]
        return e.node(onnx_op, [e.name(op.operands[0])] + ([e.ints(axes)] if axes is not None else []))
    return fn


def _expand(e, op):
    return e.node("Expand", [e.name(op.operands[0]), e.ints(_static(op.attrs["shape"], "nn.expand shape"))])


def _concat(e, op):
    return e.node("Concat", [e.name(v) for v in op.operands], axis=op.attrs["axis"])


def _split(e, op):
    return e.node("Split", [e.name(op.operands[0]), e.ints(op.attrs["sizes"])], n_out=len(op.results),
                  axis=op.attrs["axis"])


def _slice(e, op):
    a = op.attrs
    ins = [e.name(op.operands[0]), e.ints(a["starts"]), e.ints(a["ends"])]
    if a["axes"] is not None or a["steps"] is not None:
        ins.append(e.ints(a["axes"]) if a["axes"] is not None else e.ints(range(len(a["starts"]))))
    if a["steps"] is not None:
        ins.append(e.ints(a["steps"]))
    return e.node("Slice", ins)


def _gather(e, op):
    return e.node("Gather", [e.name(v) for v in op.operands], axis=op.attrs["axis"])


def _pad(e, op):
    x = op.operands[0]
    ins = [e.name(x), e.ints(op.attrs["pads"])]
    if op.attrs["mode"] == "constant":
        ins.append(e.const(np.asarray(op.attrs["value"], x.type.dtype.np)))
    return e.node("Pad", ins, mode=op.attrs["mode"])


def _tile(e, op):
    return e.node("Tile", [e.name(op.operands[0]), e.ints(op.attrs["repeats"])])


def _softmax(onnx_op: str):
    return lambda e, op: e.node(onnx_op, [e.name(op.operands[0])], axis=op.attrs["axis"])


def _ones_for(e, x, axis: int, what: str) -> str:
    shape = x.type.shape[axis % x.type.rank:]
    if not all(type(d) is int for d in shape):
        raise CkirError(f"{what} without a scale over symbolic dims cannot be exported")
    return e.const(np.ones(shape, x.type.dtype.np), "ones")


def _layer_norm(e, op):
    x, scale, bias = (list(op.operands) + [None, None])[:3]
    axis = op.attrs["axis"]
    s = e.name(scale) if scale is not None else _ones_for(e, x, axis, "nn.layer_norm")
    ins = [e.name(x), s] + ([e.name(bias)] if bias is not None else [])
    return e.node("LayerNormalization", ins, opset=17, axis=axis, epsilon=op.attrs["eps"])


def _rms_norm(e, op):
    x = op.operands[0]
    axis = op.attrs["axis"]
    s = e.name(op.operands[1]) if len(op.operands) > 1 else _ones_for(e, x, axis, "nn.rms_norm")
    return e.node("RMSNormalization", [e.name(x), s], opset=23, axis=axis, epsilon=op.attrs["eps"])


def _window_attrs(op):
    a = op.attrs
    out = {}
    for k in ("strides", "pads", "dilations"):
        if a.get(k) is not None:
            out[k] = list(a[k])
    return out


def _conv(e, op):
    w = op.operands[1]
    return e.node("Conv", [e.name(v) for v in op.operands], group=op.attrs["groups"],
                  kernel_shape=list(_static(w.type.shape[2:], "nn.conv kernel")), **_window_attrs(op))


def _pool(onnx_op: str):
    def fn(e, op):
        a = op.attrs
        extra = {"count_include_pad": int(a["count_include_pad"])} if "count_include_pad" in a else {}
        return e.node(onnx_op, [e.name(op.operands[0])], opset=19 if onnx_op == "AveragePool" else 0,
                      kernel_shape=list(a["kernel"]), ceil_mode=int(a["ceil_mode"]),
                      **_window_attrs(op), **extra)
    return fn


def _shape(e, op):
    a = op.attrs
    return e.node("Shape", [e.name(op.operands[0])], start=a["start"], **({"end": a["end"]} if a["end"] is not None else {}))


def _size(e, op):
    dims = e.node("Shape", [e.name(op.operands[0])])
    if op.attrs["axes"] is not None:
        dims = e.node("Gather", dims + [e.ints(op.attrs["axes"])])
    n = e.node("ReduceProd", dims, keepdims=0)
    return e.node("Cast", n, to=TO_ONNX_DTYPE[op.attrs["dtype"]])


EXPORT = {
    "nn.neg": _simple("Neg"), "nn.abs": _simple("Abs"), "nn.exp": _simple("Exp"), "nn.log": _simple("Log"),
    "nn.sqrt": _simple("Sqrt"), "nn.rsqrt": _rsqrt, "nn.reciprocal": _simple("Reciprocal"),
    "nn.sin": _simple("Sin"), "nn.cos": _simple("Cos"), "nn.tanh": _simple("Tanh"),
    "nn.sigmoid": _simple("Sigmoid"), "nn.relu": _simple("Relu"), "nn.erf": _simple("Erf"),
    "nn.floor": _simple("Floor"), "nn.ceil": _simple("Ceil"), "nn.round": _simple("Round"),
    "nn.sign": _simple("Sign"), "nn.not": _simple("Not"), "nn.silu": _silu, "nn.gelu": _gelu,
    "nn.add": _simple("Add"), "nn.sub": _simple("Sub"), "nn.mul": _simple("Mul"), "nn.div": _simple("Div"),
    "nn.pow": _simple("Pow"), "nn.maximum": _simple("Max"), "nn.minimum": _simple("Min"), "nn.mod": _mod,
    "nn.and": _simple("And"), "nn.or": _simple("Or"), "nn.xor": _simple("Xor"),
    "nn.eq": _equal, "nn.ne": _not_equal, "nn.lt": _simple("Less"),
    "nn.le": _simple("LessOrEqual"), "nn.gt": _simple("Greater"), "nn.ge": _simple("GreaterOrEqual"),
    "nn.where": _simple("Where"), "nn.cast": _cast, "nn.clip": _clip, "nn.matmul": _matmul,
    "nn.sum": _reduce("ReduceSum"), "nn.mean": _reduce("ReduceMean"), "nn.max": _reduce("ReduceMax"),
    "nn.min": _reduce("ReduceMin"), "nn.prod": _reduce("ReduceProd"),
    "nn.argmax": _arg("ArgMax"), "nn.argmin": _arg("ArgMin"),
    "nn.reshape": _reshape, "nn.reshape_like": _like("Reshape"), "nn.broadcast_like": _like("Expand"),
    "nn.transpose": _transpose, "nn.unsqueeze": _axes_op("Unsqueeze"), "nn.squeeze": _axes_op("Squeeze"),
    "nn.expand": _expand, "nn.concat": _concat, "nn.split": _split, "nn.slice": _slice,
    "nn.gather": _gather, "nn.pad": _pad, "nn.tile": _tile,
    "nn.softmax": _softmax("Softmax"), "nn.log_softmax": _softmax("LogSoftmax"),
    "nn.layer_norm": _layer_norm, "nn.rms_norm": _rms_norm, "nn.conv": _conv,
    "nn.max_pool": _pool("MaxPool"), "nn.avg_pool": _pool("AveragePool"),
    "nn.shape": _shape, "nn.size": _size,
}


def to_onnx(module: Module, graph: str | None = None) -> onnx.ModelProto:
    """The ONNX model of one graph of `module`; errors name the first op that does not map."""
    g = module.graph(graph)
    e = Exporter(module)
    e.used.update(g.output_names)
    inputs = [value_info(e.name(v), v.type) for v in g.inputs]
    seen_weights = set()
    for op in g:
        od = op.opdef
        if od.name == "ckir.return":
            continue
        if op.regions:
            raise CkirError(f"{op.location()}: ops with regions cannot be exported to ONNX yet")
        if od.name == "ckir.weight":
            w = module.weights[op.attrs["name"]]
            if w.type.dtype not in TO_ONNX_DTYPE:
                raise CkirError(f"weight @{w.name}: {w.type.dtype} has no ONNX type")
            n = e.name(op.results[0])
            if n not in seen_weights:
                seen_weights.add(n)
                e.inits.append(numpy_helper.from_array(np.ascontiguousarray(w.array(module.base_dir)), n))
            continue
        if od.name == "nn.constant":
            e.inits.append(numpy_helper.from_array(op.attrs["value"].array, e.name(op.results[0])))
            continue
        fn = EXPORT.get(od.name)
        if fn is None:
            raise CkirError(f"{op.location()}: no ONNX mapping for {od.name}")
        outs = fn(e, op)
        for r, n in zip(op.results, outs):
            e.names[r] = n
    # graph outputs need their own names: route each through Identity
    outputs = []
    for name, v in zip(g.output_names, g.outputs):
        e.nodes.append(helper.make_node("Identity", [e.name(v)], [name], name=e.fresh("out")))
        outputs.append(value_info(name, v.type))
    og = helper.make_graph(e.nodes, module.name, inputs, outputs, initializer=e.inits)
    model = helper.make_model(og, opset_imports=[helper.make_opsetid("", e.opset)],
                              producer_name="ckir")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise CkirError(f"the exported model fails onnx.checker: {str(err).splitlines()[0]}") from None
    return model

