"""The two structural ops the core itself relies on."""
from __future__ import annotations

from .opdef import ANY, QUANT, STRING, Attr, Cost, Operand, Result, declare, not_differentiable


@declare
class return_:
    """Ends a block; its operands are the block's outputs (a graph's outputs, or a region's
    results)."""
    name = "ckir.return"
    operands = (Operand("values", ANY + QUANT + STRING, variadic=True, kind="any"),)
    results = (Result("none", variadic=True),)
    traits = {"terminator"}
    vjp = not_differentiable("structural: autodiff handles graph outputs itself")

    def infer(values):
        return ()

    def ref(values):
        return tuple(values)

    def cost(op, bind):
        return Cost()


@declare
class weight:
    """A module weight as a value. Its type is the weight's type, stated in the IR and checked
    by the verifier against the module; its data is never copied into the IR."""
    name = "ckir.weight"
    results = (Result("y"),)
    attrs = (Attr("name", "symbol", doc="the weight, @name"),)
    traits = {"pure"}
    declared_types = True
    fold = False
    vjp = not_differentiable("a leaf: autodiff reads gradients for weights off this op's result")

    def ref(*, name, weights):
        return weights(name)

    def cost(op, bind):
        return Cost()
