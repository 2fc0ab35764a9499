"""Constants."""
from __future__ import annotations

import numpy as np

from ckir.opdef import ANY, Attr, Cost, Ex, Operand, declare
from ckir.types import TensorType


@declare
class constant:
    """A literal tensor held in the `value` attribute (small tensors only: large data belongs in
    module weights)."""
    name = "nn.constant"
    attrs = (Attr("value", "dense", doc="the tensor"),)
    traits = {"pure"}
    fold = False
    examples = (Ex(value=np.arange(6, dtype=np.float32).reshape(2, 3)), Ex(value=np.float32(2.5)),
                Ex(value=np.array([True, False])), Ex(value=np.arange(40, dtype=np.int64)))

    def infer(*, value):
        return TensorType(value.array.shape, value.array.dtype)

    def ref(*, value):
        return value.array

    def vjp(b, op, g):
        return []       # no operands: a leaf

    def cost(op, bind):
        return Cost(0, 0, op.results[0].type.nbytes())


@declare
class stop_gradient:
    """The identity, to which autodiff assigns no gradient: y = x, dy/dx treated as 0."""
    name = "nn.stop_gradient"
    operands = (Operand("x", ANY),)
    traits = {"pure", "view"}
    examples = (Ex("f32[2,3]"), Ex("i64[4]"))
    fold = False     # keep the marker where the user put it

    def infer(x):
        return x

    def ref(x):
        return x

    def vjp(b, op, g):
        return [None]

    def cost(op, bind):
        return Cost()
