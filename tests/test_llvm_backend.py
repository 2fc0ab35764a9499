"""The LLVM backend's machinery: targets, refusal of targets the CPU lacks, code for targets it
cannot run, the disk cache, threads, and the CLI commands."""
import os
import warnings

import numpy as np
import pytest

import ckir
from ckir.backends.llvm.target import make_target, runnable
from ckir.cli import main

ADD = """module @a {
  graph @main(%x: tensor<[n]xf32>, %y: tensor<[n]xf32>) -> (z: tensor<[n]xf32>) {
    %z = nn.add %x, %y : (tensor<[n]xf32>, tensor<[n]xf32>) -> tensor<[n]xf32>
    ckir.return %z : (tensor<[n]xf32>) -> ()
  }
}
"""


def test_targets_the_cpu_lacks_are_refused_before_running():
    lacking = [t for t in ("avx512", "amx", "neon") if not runnable(t)]
    if not lacking:
        pytest.skip("this CPU runs every target")
    with pytest.raises(ckir.CkirError, match=f"target '{lacking[0]}' cannot run on this CPU"):
        ckir.compile(ckir.parse(ADD), backend="llvm", target=lacking[0])
    with pytest.raises(ckir.CkirError, match="unknown target 'sse9'"):
        ckir.compile(ckir.parse(ADD), backend="llvm", target="sse9")


def test_env_override(monkeypatch):
    monkeypatch.setenv("CKIR_TARGET", "scalar")
    assert make_target().name == "scalar"
    f = ckir.compile(ckir.parse(ADD), backend="llvm", cache=False)
    assert f._run.plan.target.name == "scalar"


@pytest.mark.parametrize("target,pattern", [("avx2", "ymm"), ("avx512", "zmm"), ("neon", ".4s"), ("amx", "zmm")])
def test_every_target_compiles_to_assembly(target, pattern):
    from ckir.backends.llvm.plan import emit
    asm = emit(ckir.parse(ADD), target=target, kind="asm")
    assert pattern in asm, f"no {pattern} registers in {target} code"
    obj = emit(ckir.parse(ADD), target=target, kind="obj")
    assert obj[:4] == b"\x7fELF"


def test_disk_cache_hits_and_survives_corruption(tmp_path, monkeypatch):
    monkeypatch.setenv("CKIR_CACHE_DIR", str(tmp_path))
    x = np.arange(5, dtype=np.float32)
    f1 = ckir.compile(ckir.parse(ADD), backend="llvm")
    assert not f1._run.plan.cached
    f2 = ckir.compile(ckir.parse(ADD), backend="llvm")
    assert f2._run.plan.cached
    entries = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs if f.endswith(".obj")]
    assert entries
    for e in entries:                      # flip a byte in every entry
        data = bytearray(open(e, "rb").read())
        data[-1] ^= 0xFF
        open(e, "wb").write(bytes(data))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        f3 = ckir.compile(ckir.parse(ADD), backend="llvm")
    assert not f3._run.plan.cached and any("corrupt" in str(x.message) for x in w)
    np.testing.assert_array_equal(f3(x, x)["z"], 2 * x)


def test_no_cache_option(tmp_path, monkeypatch):
    monkeypatch.setenv("CKIR_CACHE_DIR", str(tmp_path))
    ckir.compile(ckir.parse(ADD), backend="llvm", cache=False)
    assert not any(f.endswith(".obj") for _, _, fs in os.walk(tmp_path) for f in fs)
    monkeypatch.setenv("CKIR_NO_CACHE", "1")
    f = ckir.compile(ckir.parse(ADD), backend="llvm")
    assert not f._run.plan.cached
    assert not any(f.endswith(".obj") for _, _, fs in os.walk(tmp_path) for f in fs)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_give_identical_results(threads):
    m = ckir.parse(ADD)
    x = np.random.default_rng(0).standard_normal(100003).astype(np.float32)
    f = ckir.compile(m, backend="llvm", threads=threads, cache=False)
    np.testing.assert_array_equal(f(x, x)["z"], x + x)


def test_cli_targets_and_compile(tmp_path, capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "avx2" in out and "elementwise:" in out
    p = tmp_path / "add.ckir"
    p.write_text(ADD)
    assert main(["compile", str(p), "--target", "avx512", "--emit", "asm"]) == 0
    assert "zmm" in capsys.readouterr().out
    assert main(["compile", str(p), "--target", "neon", "--emit", "obj", "-o", str(tmp_path / "a.o")]) == 0
    assert (tmp_path / "a.o").read_bytes()[:4] == b"\x7fELF"
    assert main(["compile", str(p), "--emit", "obj"]) == 1
    assert "binary: give -o FILE" in capsys.readouterr().err


def _entries(d):
    return sorted(os.path.join(p, f) for p, _, fs in os.walk(d) for f in fs if f.endswith(".obj"))


def test_cache_hit_skips_code_generation_and_keys_on_what_matters(tmp_path, monkeypatch):
    monkeypatch.setenv("CKIR_CACHE_DIR", str(tmp_path))
    x = np.arange(7, dtype=np.float32)
    f1 = ckir.compile(ckir.parse(ADD), backend="llvm", threads=2)
    assert not f1._run.plan.cached
    f2 = ckir.compile(ckir.parse(ADD), backend="llvm", threads=2)
    assert f2._run.plan.cached and f2._run.plan._ir_text is None      # no LLVM IR was generated
    np.testing.assert_array_equal(f2(x, x)["z"], 2 * x)
    assert "ckir_parallel_for" in f2._run.plan.ir_text                 # still available on demand
    # another thread count, target or graph is another entry
    assert not ckir.compile(ckir.parse(ADD), backend="llvm", threads=3)._run.plan.cached
    assert not ckir.compile(ckir.parse(ADD), backend="llvm", threads=2, target="scalar")._run.plan.cached
    assert not ckir.compile(ckir.parse(ADD.replace("nn.add", "nn.mul")), backend="llvm", threads=2)._run.plan.cached
    assert len(_entries(tmp_path)) == 4


def test_cache_entries_are_checked_before_use(tmp_path, monkeypatch):
    monkeypatch.setenv("CKIR_CACHE_DIR", str(tmp_path))
    x = np.arange(5, dtype=np.float32)
    ckir.compile(ckir.parse(ADD), backend="llvm", threads=2)
    ckir.compile(ckir.parse(ADD.replace("nn.add", "nn.sub")), backend="llvm", threads=2)
    add_e, sub_e = _entries(tmp_path)[0], _entries(tmp_path)[1]
    key_add = ckir.compile(ckir.parse(ADD), backend="llvm", threads=2)._run.plan.cache_key()
    if key_add not in add_e:
        add_e, sub_e = sub_e, add_e
    # an entry copied over another key's file (valid object, wrong key) is not used
    data = open(sub_e, "rb").read()
    open(add_e, "wb").write(data)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        f = ckir.compile(ckir.parse(ADD), backend="llvm", threads=2)
    assert not f._run.plan.cached
    np.testing.assert_array_equal(f(x, x)["z"], 2 * x)
    assert ckir.compile(ckir.parse(ADD), backend="llvm", threads=2)._run.plan.cached   # rewritten
    # truncated and empty entries
    for cut in (10, 0):
        open(add_e, "wb").write(data[:cut])
        with pytest.warns(RuntimeWarning, match="corrupt"):
            f = ckir.compile(ckir.parse(ADD), backend="llvm", threads=2)
        np.testing.assert_array_equal(f(x, x)["z"], 2 * x)


def test_unusable_cache_dir_only_warns(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("CKIR_CACHE_DIR", str(blocker / "cache"))
    x = np.arange(3, dtype=np.float32)
    with pytest.warns(RuntimeWarning, match="cache directory unusable"):
        f = ckir.compile(ckir.parse(ADD), backend="llvm", threads=2)
    np.testing.assert_array_equal(f(x, x)["z"], 2 * x)


def test_cache_key_covers_the_backend_code_and_tuning_environment(monkeypatch):
    from ckir.backends.llvm import jit
    f = ckir.compile(ckir.parse(ADD), backend="llvm", threads=2, cache=False)
    k0 = f._run.plan.cache_key()
    monkeypatch.setattr(jit, "code_version", lambda: "another version of the kernels")
    assert f._run.plan.cache_key() != k0
    monkeypatch.undo()
    monkeypatch.setenv("MM_KC", "128")          # a kernel tuning knob read at code generation
    assert f._run.plan.cache_key() != k0
    monkeypatch.delenv("MM_KC")
    monkeypatch.setenv("CKIR_CACHE_DIR", "/elsewhere")   # not a code generation setting
    assert f._run.plan.cache_key() == k0
