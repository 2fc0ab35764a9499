"""Constants."""
from __future__ import annotations

import numpy as np

from ckir.opdef import Attr, Cost, Ex, declare
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
