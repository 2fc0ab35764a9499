"""`ckir opt model.onnx --passes fuse,autodiff{loss=loss}` on an MLP and on a transformer block
exported from PyTorch with their loss: the printed module holds the fused backward graph, and
its gradients equal the unfused ones and torch.autograd's."""
import contextlib
import io

import numpy as np
import pytest
import torch
from torch import nn

import ckir
from ckir.cli import main


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))

    def forward(self, x, t):
        return ((self.net(x) - t) ** 2).mean()


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, activation="gelu")

    def forward(self, x, t):
        return ((self.layer(x) - t) ** 2).mean()


CASES = {"mlp": (MLP, (6, 12), (6, 4)), "transformer_block": (Block, (2, 5, 16), (2, 5, 16))}


@pytest.mark.parametrize("name", CASES)
def test_fuse_then_autodiff_from_the_cli(name, tmp_path):
    cls, xs, ts = CASES[name]
    torch.manual_seed(0)
    model = cls().eval()
    with torch.no_grad():           # distinct values: the exporter merges equal initializers
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    x, t = torch.randn(*xs), torch.randn(*ts)
    path = str(tmp_path / f"{name}.onnx")
    torch.onnx.export(model, (x, t), path, dynamo=False, input_names=["x", "t"], output_names=["loss"],
                      opset_version=17, do_constant_folding=False)     # keeps parameter names
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["opt", path, "--passes", "fuse,autodiff{loss=loss}"]) == 0
    text = out.getvalue()
    assert "fused.elementwise" in text and "grad." in text         # the fused backward IR is printed
    assert main(["opt", path, "--passes", "fuse,autodiff{loss=loss}", "-o", str(tmp_path / "g.ckir")]) == 0
    fused = ckir.compile(ckir.load(str(tmp_path / "g.ckir")))(x.numpy(), t.numpy())

    plain = ckir.load(path)
    ckir.run_pipeline(plain, "autodiff{loss=loss}")
    want = ckir.compile(plain)(x.numpy(), t.numpy())
    assert set(fused) == set(want)
    for k in want:       # the same ops in another grouping: equal up to f32 rounding order
        np.testing.assert_allclose(fused[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)

    model(x, t).backward()
    grads = {f"grad.{k}": p.grad.numpy() for k, p in model.named_parameters()}
    assert set(grads) == set(fused) - {"loss"}
    for k in grads:
        np.testing.assert_allclose(fused[k], grads[k], rtol=1e-4, atol=1e-6, err_msg=k)
