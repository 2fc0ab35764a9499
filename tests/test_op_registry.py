"""Walks the op registry: every op must be completely declared and pass the generic checks
(tests/opcheck.py) on each of its examples."""
import numpy as np
import pytest

import ckir
from ckir.opdef import NotDifferentiable
from opcheck import check_cost, check_vjp, roundtrip, run_example

# Ops that examples cannot exercise alone, and the tests that cover them instead.
STRUCTURAL = {
    "ckir.return": "ends every graph: every test module round-trips it",
    "ckir.weight": "needs a module weight: tests/test_ir.py::test_weight_op_roundtrip_and_run",
    "ckir.state": "needs a module state: tests/test_state.py",
    "fused.elementwise": "a body made by the fuse pass: tests/test_fuse.py",
    "fused.reduction": "a body made by fuse{level=2}: tests/test_fuse_llvm.py",
    "fused.matmul": "a body made by fuse{level=2}: tests/test_fuse_llvm.py",
    "ckir.write_state": "needs a module state: tests/test_state.py",
    "test.call": "declared by tests/conftest.py to exercise regions: tests/test_ir.py",
    # regions and sequence/optional operands (examples build tensor operands only)
    "nn.if": "regions: tests/test_onnx_control.py::test_if_*",
    "nn.loop": "a region: tests/test_onnx_control.py::test_loop_*, test_sequence_map",
    "nn.scan": "a region: tests/test_onnx_control.py::test_scan*",
    "nn.seq_insert": "a sequence operand: tests/test_onnx_control.py::test_sequence_*",
    "nn.seq_erase": "a sequence operand: tests/test_onnx_control.py::test_sequence_construct_insert_erase_at_length",
    "nn.seq_at": "a sequence operand: tests/test_onnx_control.py::test_sequence_*",
    "nn.seq_length": "a sequence operand: tests/test_onnx_control.py::test_sequence_construct_insert_erase_at_length",
    "nn.concat_from_seq": "a sequence operand: tests/test_onnx_control.py::test_concat_from_sequence",
    "nn.opt_has": "an optional operand: tests/test_onnx_control.py::test_optional_some_none_has_get",
    "nn.opt_get": "an optional operand: tests/test_onnx_control.py::test_optional_*",
}

OPS = sorted(ckir.all_ops(), key=lambda o: o.name)
EXAMPLES = [(o, i) for o in OPS for i in range(len(o.examples))]


@pytest.mark.parametrize("opdef", OPS, ids=lambda o: o.name)
def test_declaration_is_complete(opdef):
    missing = [p for p in ("infer", "ref", "cost", "vjp") if not opdef.has(p)]
    assert not missing, f"{opdef.name} lacks {', '.join(missing)}"
    assert callable(opdef.vjp) or isinstance(opdef.vjp, NotDifferentiable), \
        f"{opdef.name}: vjp must be a rule or not_differentiable(reason)"
    assert opdef.doc, f"{opdef.name} has no doc text"
    if opdef.name not in STRUCTURAL:
        assert opdef.examples, f"{opdef.name} has no examples (they drive its round-trip test)"


@pytest.mark.parametrize("opdef,i", EXAMPLES, ids=lambda x: x.name if hasattr(x, "name") else str(x))
def test_example_runs_roundtrips_and_costs(opdef, i):
    m, xs, outs = run_example(opdef, opdef.examples[i])
    roundtrip(m)
    check_cost(opdef, m)


# ops whose declared gradient is deliberately not the derivative
NOT_DERIVATIVE = {"nn.stop_gradient": "its gradient is zero by definition (it blocks autodiff)"}
DIFF = [o for o in OPS if callable(o.vjp) and o.examples and o.operands  # leaves have nothing to check
        and o.name not in NOT_DERIVATIVE]


@pytest.mark.parametrize("opdef", DIFF, ids=lambda o: o.name)
def test_vjp_matches_finite_differences(opdef):
    checked = 0
    for i, ex in enumerate(opdef.examples):
        checked += check_vjp(opdef, ex, np.random.default_rng(i))
    assert checked, f"{opdef.name}: no example has float64 inputs and outputs to check its VJP"
