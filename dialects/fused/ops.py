"""Fused ops: a body of ordinary ops behind one op."""
from __future__ import annotations

from ckir.errors import CkirError
from ckir.opdef import ANY, Cost, Operand, Result, declare
from ckir.types import TensorType, broadcast_shapes


def _verify_body(op) -> None:
    body = op.regions[0]
    if [a.type for a in body.args] != [v.type for v in op.operands]:
        raise CkirError("the body's arguments do not match the operands")
    if [v.type for v in body.outputs] != [r.type for r in op.results]:
        raise CkirError("the body's results do not match the op's results")


def _run_body(xs, regions):
    return tuple(regions[0](*xs))


def _vjp_through_body(b, op, *grads):
    """Differentiate the body: copy it here, then backprop through the copy from
    sum(output * incoming gradient)."""
    from ckir.builder import Builder
    from ckir.passes.autodiff import backprop
    created: list = []
    sub = Builder(b.block, b.anchor, loc=b.loc, listener=created.append)
    outs = sub.inline(op.regions[0], list(op.operands))
    terms = [sub.nn.sum(sub.nn.mul(o, g)) for o, g in zip(outs, grads) if g is not None]
    if not terms:
        return [None] * len(op.operands)
    loss = terms[0]
    for t in terms[1:]:
        loss = sub.nn.add(loss, t)
    ct, _ = backprop(created, loss, list(op.operands), sub)
    return [ct.get(v) for v in op.operands]


def _body_cost(op, bind) -> Cost:
    flops = sum(o.opdef.cost(o, bind).flops for o in op.regions[0].walk() if o.opdef.name != "ckir.return")
    return Cost(flops, sum(v.type.nbytes(bind) for v in op.operands),
                sum(r.type.nbytes(bind) for r in op.results))


def _matmul_cost(op, bind) -> Cost:
    c = _body_cost(op, bind)
    out = sum(r.type.nbytes(bind) for r in op.results)
    return Cost(c.flops, c.bytes_read + out, c.bytes_written + out)


@declare
class elementwise:
    """A chain of elementwise ops computed in one loop over its result: every body op is
    elementwise, and every intermediate broadcasts to the result's shape, so each result element
    is computed from the operands' elements without materializing intermediates."""
    name = "fused.elementwise"
    operands = (Operand("xs", ANY, variadic=True),)
    results = (Result("ys", variadic=True),)
    traits = {"pure"}
    regions = 1
    declared_types = True
    fold = False
    verify = _verify_body
    ref = _run_body
    vjp = _vjp_through_body
    cost = _body_cost


def check_elementwise_body(body, result: TensorType) -> None:
    for o in body:
        if o.opdef.name == "ckir.return":
            continue
        if "elementwise" not in o.opdef.traits:
            raise CkirError(f"{o.name} is not elementwise")
        for r in o.results:
            if broadcast_shapes(r.type.shape, result.shape) != tuple(result.shape):
                raise CkirError(f"{o.name}'s result {r.type} does not broadcast to {result}")


@declare
class reduction:
    """A row normalization (nn.softmax, nn.log_softmax, nn.layer_norm or nn.rms_norm) with the
    elementwise ops that produce its input (prologue: e.g. the scale and mask before a softmax,
    the residual add before a layer_norm) and those that consume its result (epilogue: e.g. a
    scale/shift after a norm), computed one row at a time: the prologue is recomputed in each
    pass over the row instead of being written to memory, and the epilogue is applied before
    the row is stored. Every body value broadcasts to the result's shape, which is the
    normalization's."""
    name = "fused.reduction"
    operands = (Operand("xs", ANY, variadic=True),)
    results = (Result("ys", variadic=True),)
    traits = {"pure"}
    regions = 1
    declared_types = True
    fold = False
    verify = _verify_body
    ref = _run_body
    vjp = _vjp_through_body
    cost = _body_cost


@declare
class matmul:
    """An nn.matmul with its epilogue: elementwise ops applied to the product (bias, activation,
    residual add, scaling), each of whose results has the product's shape, so they are applied
    to each element of the product right after it is computed instead of in separate passes.
    Its cost counts one more read and write of the result: the llvm backend applies the
    epilogue in a pass over the product just after the matmul (not yet inside its tiles)."""
    name = "fused.matmul"
    operands = (Operand("xs", ANY, variadic=True),)
    results = (Result("ys", variadic=True),)
    traits = {"pure"}
    regions = 1
    declared_types = True
    fold = False
    verify = _verify_body
    ref = _run_body
    vjp = _vjp_through_body
    cost = _matmul_cost
