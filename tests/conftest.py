"""Test-suite wiring: every module a test compiles is round-tripped through the text IR first,
and a `test.call` op with a region exercises region support in the core."""
import numpy as np
import pytest

import ckir
from ckir.api import CompiledModule
from ckir.opdef import ANY, Cost, Operand, OpDef, Result, register, lookup

_orig_init = CompiledModule.__init__


def _roundtrip_then_init(self, module, *a, **kw):
    text = module.print()
    again = ckir.parse(text, weights={n: w.data for n, w in module.weights.items()})
    assert again.print() == text, "print(parse(print(m))) != print(m)"
    ckir.verify(again)
    _orig_init(self, module, *a, **kw)


@pytest.fixture(autouse=True, scope="session")
def roundtrip_every_compiled_module():
    CompiledModule.__init__ = _roundtrip_then_init
    yield
    CompiledModule.__init__ = _orig_init


def _verify_call(op):
    outs = op.regions[0].outputs
    if [v.type for v in outs] != [v.type for v in op.results]:
        raise ckir.CkirError("region outputs do not match the results")
    if [v.type for v in op.regions[0].args] != [v.type for v in op.operands]:
        raise ckir.CkirError("region arguments do not match the operands")


if lookup("test.call") is None:
    register(OpDef(
        "test.call", doc="Runs its region on its operands (a test-only op with a region).",
        operands=(Operand("xs", ANY, variadic=True, kind="any"),), results=(Result("ys", variadic=True),),
        traits={"pure"}, declared_types=True, regions=1, verify=_verify_call,
        ref=lambda xs, regions: tuple(np.asarray(r) for r in regions[0](*xs)),
        vjp=ckir.not_differentiable("test op"), cost=lambda op, bind: Cost()))
