"""The generated op reference is current, and the shipped examples run."""
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def test_ops_doc_is_up_to_date():
    # a fresh process: the test suite registers a test-only op
    r = subprocess.run([sys.executable, "-m", "ckir.docs"], capture_output=True, text=True, check=True)
    with open(os.path.join(ROOT, "docs", "ops.md")) as f:
        assert f.read() == r.stdout, "docs/ops.md is stale: run `python -m ckir.docs > docs/ops.md`"


def test_end_to_end_example():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "end_to_end.py")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "max |ckir - numpy|" in r.stdout and "dead ops erased" in r.stdout


def test_custom_pass_example():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "silu_pass.py")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "nn.silu" in r.stdout and "max |before - after| = 0.0" in r.stdout
