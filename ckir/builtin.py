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


@declare
class state:
    """The value of a module state (see Module.add_state) as of the start of the call: every
    read in one call sees the same value, whatever the call writes."""
    name = "ckir.state"
    results = (Result("y"),)
    attrs = (Attr("name", "symbol", doc="the state, @name"),)
    traits = {"pure"}
    declared_types = True
    fold = False
    vjp = not_differentiable("state is not differentiated; the optimizer pass updates it")

    def ref(*, name, state):
        return state.read(name)

    def cost(op, bind):
        return Cost()


@declare
class write_state:
    """Replace a module state with `value` when the call completes (if the call fails, the
    state keeps its old value). At most one write per state per graph."""
    name = "ckir.write_state"
    operands = (Operand("value", ANY),)
    results = ()
    attrs = (Attr("name", "symbol", doc="the state, @name"),)
    traits = {"side_effect"}
    fold = False
    vjp = not_differentiable("a side effect")

    def infer(value, *, name):
        return ()

    def ref(value, *, name, state):
        state.write(name, value)
        return ()

    def cost(op, bind):
        v = op.operands[0].type
        return Cost(0, v.nbytes(bind), v.nbytes(bind))
