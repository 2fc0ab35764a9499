"""Models exported from PyTorch (torch.onnx, dynamic batch and sequence axes) run in ckir and
match onnxruntime on the same ONNX file.

Tolerance: both run float32 with different summation orders (matmuls with K up to 128, softmax
and LayerNorm reductions); after LayerNorm the outputs are O(1), and the reordering error over two
layers stays around 1e-6..1e-5, so rtol=atol=1e-4 leaves a margin without hiding real errors
(a wrong mask or a transposed weight moves outputs by O(1)). The int8 model uses the same
integer arithmetic in both (DynamicQuantizeLinear rounding half to even, exact int32 MatMulInteger),
so it gets the same tolerance."""
import numpy as np
import onnxruntime as ort
import pytest

import ckir
from onnx_models import cnn_onnx, encoder_inputs, encoder_onnx, quantized_encoder_onnx

TOL = dict(rtol=1e-4, atol=1e-4)


def ort_run(path, feeds):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return encoder_onnx(str(tmp_path_factory.mktemp("enc") / "encoder.onnx"))


@pytest.mark.parametrize("batch,seq", [(1, 5), (3, 11)])
def test_encoder_matches_onnxruntime(encoder, batch, seq):
    m = ckir.load(encoder)
    text = m.print()
    assert "[batch]" in text and "[seq]" in text
    f = ckir.compile(m, passes="canonicalize,cse,dce")
    feeds = encoder_inputs(batch, seq)
    got = f(**feeds)["last_hidden_state"]
    want = ort_run(encoder, feeds)[0]
    assert got.shape == (batch, seq, 64)
    np.testing.assert_allclose(got, want, **TOL)


def test_cnn_matches_onnxruntime(tmp_path):
    path = cnn_onnx(str(tmp_path / "cnn.onnx"))
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    got = ckir.compile(ckir.load(path), passes="canonicalize,cse,dce")(image=x)["logits"]
    np.testing.assert_allclose(got, ort_run(path, {"image": x})[0], **TOL)


def test_int8_quantized_encoder_matches_onnxruntime(tmp_path):
    path = quantized_encoder_onnx(str(tmp_path / "encoder.int8.onnx"))
    m = ckir.load(path)
    assert any(op.name.startswith("quant.") for op in m.walk())
    feeds = encoder_inputs(2, 9)
    got = ckir.compile(m, passes="canonicalize,cse,dce")(**feeds)["last_hidden_state"]
    np.testing.assert_allclose(got, ort_run(path, feeds)[0], **TOL)


def test_encoder_shapes_stay_symbolic_through_shape_arithmetic(encoder):
    """Shape -> Gather -> Concat -> Reshape chains over dynamic axes import as static reshapes
    with the named dims, so types keep [batch] and [seq] all the way through."""
    m = ckir.load(encoder)
    ckir.run_pipeline(m, "canonicalize,cse,dce")
    names = {op.name for op in m.walk()}
    assert "nn.reshape_dyn" not in names
    shapes = [op.attrs["shape"] for op in m.walk() if op.name == "nn.reshape"]
    assert shapes and all([str(d) for d in s[:2]] == ["[batch]", "[seq]"] for s in shapes)
    assert "?" not in m.print()
