"""The ckir command line: every command, its --help, and one-line errors."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ckir.cli import main

ROOT = os.path.join(os.path.dirname(__file__), "..")
MLP = os.path.join(ROOT, "examples", "mlp.ckir")


def cli(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("cmd", ["opt", "run", "dump", "passes", "export-onnx"])
def test_help(capsys, cmd):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "--plugin" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    rc, out, _ = cli(capsys)
    assert rc == 1 and "opt" in out and "run" in out


def test_opt_prints_optimized_ir_and_stats(capsys):
    rc, out, err = cli(capsys, "opt", MLP, "--passes", "canonicalize,cse,dce", "--stats", "--timing")
    assert rc == 0 and out.startswith("module @mlp {") and "nn.exp" not in out
    assert "Pass statistics report" in err and "ops merged" in err and "Total Execution Time" in err


def test_opt_print_ir_after_change(capsys):
    rc, _, err = cli(capsys, "opt", MLP, "-p", "dce,dce,canonicalize", "--print-ir-after-change")
    assert rc == 0 and err.count("IR Dump After dce (changed)") == 1     # the second dce does nothing
    assert "IR Dump After canonicalize (changed)" in err


def test_opt_writes_output_with_weights(tmp_path, capsys):
    src = tmp_path / "in.ckir"
    big = np.arange(300, dtype=np.float32).reshape(3, 100)
    import ckir
    m = ckir.Module("big")
    m.add_weight("w", big)
    g, b = ckir.new_graph("main", {"x": ckir.TensorType([2, 3], "f32")})
    g.set_outputs([b.nn.matmul(g.inputs[0], b.weight(m, "w"))], ["y"])
    m.add_graph(g)
    ckir.save(m, str(src))
    out = tmp_path / "sub" / "out.ckir"
    out.parent.mkdir()
    rc, _, err = cli(capsys, "opt", str(src), "-p", "cse", "-o", str(out))
    assert rc == 0, err
    m2 = ckir.load(str(out))
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(ckir.compile(m2)(x)["y"], x @ big)
    # printing to stdout says when weights' bytes are not in the text
    m.print()
    mem = tmp_path / "mem.ckir"
    mem.write_text(m.print())
    rc, out_text, err = cli(capsys, "opt", str(mem))
    assert rc == 0 and "= memory" in out_text and "warning: 1 weight(s) print as 'memory'" in err


def test_run_random_and_npy(tmp_path, capsys):
    rc, out, err = cli(capsys, "run", MLP, "--random", "--bind", "batch=2", "--seed", "3")
    assert rc == 0, err
    assert "logits: float32[2, 3]" in out
    x = np.ones((4, 4), np.float32)
    np.save(tmp_path / "x.npy", x)
    rc, out, err = cli(capsys, "run", MLP, "--input", f"x={tmp_path / 'x.npy'}", "-o", str(tmp_path / "o.npz"),
                       "--passes", "canonicalize")
    assert rc == 0, err
    assert np.load(tmp_path / "o.npz")["logits"].shape == (4, 3)


@pytest.mark.parametrize("args,msg", [
    (["run", MLP], "error: missing input x (give --input NAME=FILE.npy, or --random)"),
    (["run", MLP, "--input", "x"], "error: --input expects NAME=FILE.npy, got 'x'"),
    (["run", MLP, "--input", "z=a.npy"], "error: graph @main has no input 'z' (inputs: x)"),
    (["run", MLP, "--input", "x=/nonexistent.npy"], "error: --input x: cannot read /nonexistent.npy"),
    (["opt", "/nonexistent.ckir"], "error: /nonexistent.ckir: no such file"),
    (["opt", MLP, "-p", "nope"], "error: unknown pass 'nope'"),
    (["opt", MLP, "-p", "cse{x=1}"], "error: pass 'cse': unknown option 'x' (options: none)"),
    (["opt", MLP, "--plugin", "/nonexistent.py"], "error: plugin /nonexistent.py: no such file"),
    (["dump", MLP, "--bind", "batch"], "error: --bind expects NAME=SIZE, got 'batch'"),
    (["opt", __file__], "error: " + __file__ + ": unknown model format '.py'"),
])
def test_user_errors_are_one_line(capsys, args, msg):
    rc, out, err = cli(capsys, *args)
    assert rc == 1
    assert err.startswith(msg) and err.count("\n") == 1, err


def test_debug_shows_the_exception(capsys):
    from ckir import CkirError
    with pytest.raises(CkirError):
        main(["opt", "/nonexistent.ckir", "--debug"])


def test_dump_text_and_json(capsys):
    rc, out, _ = cli(capsys, "dump", MLP, "--bind", "batch=8")
    assert rc == 0 and "nn.matmul" in out and "weights: 4" in out and "FLOP" in out
    rc, out, _ = cli(capsys, "dump", MLP, "--bind", "batch=8", "--json")
    s = json.loads(out)
    assert s["ops_by_kind"]["nn.matmul"] == 3 and s["weight_bytes"] == (32 + 8 + 24 + 3) * 4
    # fc1: 8*4*8 MACs, fc2 twice: 8*3*8 MACs each -> 2 FLOPs per MAC
    assert s["cost_by_kind"]["nn.matmul"]["flops"] == 2 * 8 * (8 * 4 + 2 * 3 * 8)
    rc, out, _ = cli(capsys, "dump", MLP)
    assert "symbolic dims batch taken as 1" not in out   # batch has a bound (64): it is used


def test_passes_lists_options(capsys):
    rc, out, _ = cli(capsys, "passes")
    assert rc == 0 and "canonicalize" in out and "fold_limit: int = 65536" in out
    rc, out, _ = cli(capsys, "passes", "--json")
    assert any(p["name"] == "specialize" and p["open_options"] for p in json.loads(out))


def test_plugin_from_the_cli(capsys):
    rc, out, err = cli(capsys, "opt", os.path.join(ROOT, "examples", "swish.ckir"), "--plugin",
                       os.path.join(ROOT, "examples", "silu_pass.py"), "--passes", "fuse-silu,dce")
    assert rc == 0, err
    assert "nn.silu" in out and "nn.sigmoid" not in out


def test_console_script_is_installed():
    exe = shutil.which("ckir")
    assert exe, "the ckir console script is not on PATH"
    r = subprocess.run([exe, "opt", "/nonexistent.ckir"], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr == "error: /nonexistent.ckir: no such file\n"
    r = subprocess.run([sys.executable, "-m", "ckir.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("ckir ")


def test_export_onnx(tmp_path, capsys):
    import onnx
    out = tmp_path / "mlp.onnx"
    rc, text, err = cli(capsys, "export-onnx", MLP, "--passes", "canonicalize,cse,dce", "-o", str(out))
    assert rc == 0, err
    assert "wrote" in text and onnx.load(str(out)).graph.output[0].name == "logits"
    rc, _, err = cli(capsys, "export-onnx", os.path.join(ROOT, "examples", "swish.ckir"), "-o", str(out),
                     "-p", "canonicalize")
    assert rc == 0, err


def test_no_cache_flag(tmp_path, monkeypatch, capsys):
    import os
    monkeypatch.setenv("CKIR_CACHE_DIR", str(tmp_path / "cache"))
    # main() sets CKIR_NO_CACHE in os.environ; setting it here first makes monkeypatch restore
    # the original (absent) value afterwards, so other tests in this process keep their cache
    monkeypatch.setenv("CKIR_NO_CACHE", "0")
    model = os.path.join(os.path.dirname(__file__), "..", "examples", "mlp.ckir")
    args = ["run", model, "--random", "--bind", "batch=2", "--backend", "llvm"]
    assert main(args + ["--no-cache"]) == 0
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.*"))
    monkeypatch.setenv("CKIR_NO_CACHE", "0")
    assert main(args) == 0
    assert any((tmp_path / "cache").rglob("*"))
