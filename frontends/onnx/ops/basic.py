"""Constants, identity, casts and shapes."""
from __future__ import annotations

import numpy as np

from ckir import dtypes as dt

from ..importer import onnx_dtype
from ..registry import converter


@converter("Constant", since=1)
def constant(ctx):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if ctx.has(key):
            v = ctx.attr(key)
            if key == "value":
                return ctx.b.constant(v)
            npd = np.float32 if "float" in key else np.int64
            return ctx.b.constant(np.asarray(v, dtype=npd))
    raise ctx.fail("needs one of value, value_float(s), value_int(s) (strings and sparse values "
                   "are not supported)")


@converter("Identity", since=1)
def identity(ctx):
    return ctx.x(0)


@converter("Cast", since=6)
def cast(ctx):
    to = onnx_dtype(ctx.attr("to"), ctx.where)
    return ctx.b.nn.cast(ctx.x(0), to=to)


@converter("CastLike", since=15)
def cast_like(ctx):
    return ctx.b.nn.cast(ctx.x(0), to=ctx.x(1).type.dtype)


@converter("Shape", since=1)
def shape(ctx):
    x = ctx.x(0)
    start, end = ctx.attr("start", 0), ctx.attr("end", None)
    dims = list(x.type.shape)[slice(start, end)]
    if all(type(d) is int for d in dims):
        return ctx.b.constant(np.asarray(dims, dtype=np.int64))
    return ctx.b.nn.shape(x, start=start, end=end)


@converter("Size", since=1)
def size(ctx):
    x = ctx.x(0)
    if x.type.is_static:
        return ctx.b.constant(np.asarray(x.type.numel, dtype=np.int64))
    return ctx.b.nn.size(x, dtype=dt.i64)
