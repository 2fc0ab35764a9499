"""`ckir train` and ckir.train.Trainer on a byte-level language model exported from PyTorch to
ONNX: losses fall, --json prints a line per step, and resuming from a checkpoint reproduces the
losses of an uninterrupted run exactly."""
import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import ckir
from ckir.cli import main


class ByteLM(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.emb = nn.Embedding(256, d)
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)
        self.head = nn.Linear(d, 256)

    def forward(self, tokens):
        x = self.emb(tokens)
        x = x + torch.tanh(self.fc(self.ln(x)))
        return self.head(x)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    torch.manual_seed(0)
    path = d / "lm.onnx"
    with torch.no_grad():
        torch.onnx.export(ByteLM(), (torch.zeros(2, 8, dtype=torch.long),), str(path), dynamo=False,
                          input_names=["tokens"], output_names=["logits"],
                          dynamic_axes={"tokens": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}},
                          opset_version=17)
    onnx.checker.check_model(str(path))
    text = d / "data.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    return str(path), str(text)


def run_json(capsys, *args):
    assert main(list(args)) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_train_json_and_exact_resume(lm, tmp_path, capsys):
    model, data = lm
    full = run_json(capsys, "train", model, "--data", data, "--steps", "8", "--batch", "2", "--seq", "16",
                    "--lr", "0.01", "--json")
    assert [r["step"] for r in full] == list(range(1, 9))
    assert full[-1]["loss"] < full[0]["loss"]
    ck = tmp_path / "ck.npz"
    first = run_json(capsys, "train", model, "--data", data, "--steps", "5", "--batch", "2", "--seq", "16",
                     "--lr", "0.01", "--json", "--save", str(ck))
    rest = run_json(capsys, "train", model, "--data", data, "--steps", "8", "--batch", "2", "--seq", "16",
                    "--lr", "0.01", "--json", "--resume", str(ck))
    assert [r["loss"] for r in first + rest] == [r["loss"] for r in full]
    assert [r["step"] for r in rest] == [6, 7, 8]


def test_trainer_api_and_errors(lm, tmp_path):
    model, data = lm
    from ckir.train import ByteData, Trainer
    t = Trainer(ckir.load(model), batch=2, seq=8, lr=0.05)
    d = ByteData(data, 2, 8)
    losses = [t.step(*d.next()) for _ in range(5)]
    assert losses[-1] < losses[0]
    with pytest.raises(ckir.CkirError, match="token id 300 is outside the vocabulary"):
        t.step(np.full((2, 8), 300, np.int64), np.zeros((2, 8), np.int64))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ckir.CkirError, match="cannot read it"):
        t.load(str(bad))
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("ab")
    with pytest.raises(ckir.CkirError, match="need at least seq \\+ 1"):
        ByteData(str(tiny), 2, 8)


def test_cli_help_and_bad_args(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--resume" in capsys.readouterr().out


def test_remat_gives_the_same_losses(lm, capsys):
    model, data = lm
    args = ["train", model, "--data", data, "--steps", "4", "--batch", "2", "--seq", "16", "--lr", "0.01", "--json"]
    plain, remat = run_json(capsys, *args), run_json(capsys, *args, "--remat")
    np.testing.assert_allclose([r["loss"] for r in remat], [r["loss"] for r in plain], rtol=1e-6)
