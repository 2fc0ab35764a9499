"""ckir -> ONNX export: every exportable op, on each of its declared examples, runs in
onnxruntime and matches the interpreter; a model survives export and re-import."""
import os

import numpy as np
import onnxruntime as ort
import pytest

import ckir
from ckir.frontends.onnx import import_onnx
from ckir.frontends.onnx.export import EXPORT
from opcheck import one_op_module

CASES = [(name, i) for name in sorted(EXPORT) for i in range(len(ckir.get_op(name).examples))]


def ort_run(model, xs):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {i.name: x for i, x in zip(s.get_inputs(), xs)})


@pytest.mark.parametrize("name,i", CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_exported_op_runs_in_onnxruntime(name, i):
    od = ckir.get_op(name)
    ex = od.examples[i]
    arrays = ex.arrays(np.random.default_rng(i))
    m, op, xs = one_op_module(od, arrays, ex.attrs)
    ours = ckir.compile(m)(*xs)
    try:
        model = m.to_onnx()
    except ckir.CkirError as e:
        pytest.skip(f"not exportable with these attributes: {e}")
    if any(r.type.dtype is ckir.dtypes.bf16 for r in op.results):
        pytest.skip("onnxruntime's Python binding cannot return bfloat16 arrays")
    try:
        theirs = ort_run(model, xs)
    except ort.capi.onnxruntime_pybind11_state.NotImplemented as e:
        pytest.skip(f"onnxruntime has no CPU kernel: {str(e)[:120]}")
    except ort.capi.onnxruntime_pybind11_state.InvalidArgument as e:
        if "Pad reflect" in str(e):
            pytest.skip("onnxruntime refuses reflect pads wider than the axis (numpy and ONNX's spec allow them)")
        raise
    for (k, a), b in zip(ours.items(), theirs):
        assert a.dtype == b.dtype and a.shape == b.shape, (k, a.dtype, b.dtype, a.shape, b.shape)
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=2e-6, atol=2e-6)
        else:
            np.testing.assert_array_equal(a, b)


def test_example_model_exports_and_reimports(tmp_path):
    m = ckir.load(os.path.join(os.path.dirname(__file__), "..", "examples", "mlp.ckir"))
    ckir.run_pipeline(m, "canonicalize,cse,dce")
    model = m.to_onnx()
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim][:1] == ["batch"]
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    want = ckir.compile(m)(x)["logits"]
    np.testing.assert_allclose(ort_run(model, [x])[0], want, rtol=1e-6, atol=1e-6)
    back = import_onnx(model)
    np.testing.assert_allclose(ckir.compile(back)(x)["logits"], want, rtol=1e-6, atol=1e-6)


def test_unmappable_ops_are_named():
    from test_ir import REGION_IR
    with pytest.raises(ckir.CkirError, match="test.call: ops with regions cannot be exported"):
        ckir.parse(REGION_IR).to_onnx()
