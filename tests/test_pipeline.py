"""Pipeline strings, typed pass options, the pass manager, plugins and entry points."""
import io
import sys
import textwrap

import pytest

import ckir
from ckir import Pass, PassError, PassManager, parse, register_pass
from ckir.pipeline import parse_pipeline, registered_passes
from helpers import module_from

F3 = ((3,), "f32")


@register_pass
class Opts(Pass):
    """A pass with one option of each kind (test only)."""
    name = "test-opts"
    level: int = 3
    rate: float = 0.5
    flag: bool = False
    label: str = "x"
    names: list[str] = None

    def run(self, module):
        self.stat("ran")


@register_pass
class Breaks(Pass):
    """Leaves a dangling op behind (test only)."""
    name = "test-breaks"
    crash: bool = False

    def run(self, module):
        if self.crash:
            raise ZeroDivisionError("boom")
        g = module.main
        g.detach(g.terminator)   # unlinks the return but leaves its uses: the verifier must catch it


def test_options_are_typed():
    (p,) = parse_pipeline("test-opts{level=2,rate=1e-3,flag=true,label=\"a,b\",names=w1,w2}")
    assert (p.level, p.rate, p.flag, p.label, p.names) == (2, 1e-3, True, "a,b", ["w1", "w2"])
    (q,) = parse_pipeline("test-opts{names=[a,b,c]}")
    assert q.names == ["a", "b", "c"]
    assert str(p) == "test-opts{level=2,rate=0.001,flag=true,label=a,b,names=[w1,w2]}"
    ps = parse_pipeline(" canonicalize , cse,dce ")
    assert [x.name for x in ps] == ["canonicalize", "cse", "dce"]
    assert parse_pipeline("") == []


@pytest.mark.parametrize("text,msg", [
    ("nope", r"unknown pass 'nope' \(registered: .*canonicalize.*\)"),
    ("test-opts{lvl=1}", r"pass 'test-opts': unknown option 'lvl' \(options: level, rate, flag, label, names\)"),
    ("test-opts{level=high}", "pass 'test-opts': option 'level' expects int, got 'high'"),
    ("test-opts{flag=maybe}", "option 'flag' expects bool, got 'maybe'"),
    ("test-opts{level=1", r"malformed pipeline 'test-opts\{level=1': unclosed bracket"),
    ("test-opts{level=1}}", r"unbalanced '}'"),
    ("cse,,dce", "empty pass name"),
    ("test-opts{level=1,level=2}", "option 'level' given twice"),
    ("test-opts{=3}", "option without a name"),
    ("test-opts{level=1,2}", "option 'level' takes one value, got 1,2"),
    ("cse{x}", r"pass 'cse': expected key=value, got 'x'"),
])
def test_pipeline_errors(text, msg):
    with pytest.raises(PassError, match=msg):
        parse_pipeline(text)


def test_register_pass_errors():
    class NoName(Pass):
        pass
    with pytest.raises(ckir.CkirError, match="has no name"):
        register_pass(NoName)

    class Dup(Pass):
        name = "cse"
    with pytest.raises(ckir.CkirError, match="a pass named 'cse' is already registered"):
        register_pass(Dup)
    with pytest.raises(ckir.CkirError, match="expects a Pass subclass"):
        register_pass(object)


def _m():
    return module_from(lambda b, x: b.nn.neg(b.nn.neg(x)), {"x": F3})


def test_manager_prints_times_and_counts():
    out = io.StringIO()
    pm = PassManager("canonicalize,test-opts", print_ir_after_change=True, timing=True, stats=True, out=out)
    pm.run(_m())
    text = out.getvalue()
    assert "// -----// IR Dump After canonicalize (changed) //----- //" in text
    assert "IR Dump After test-opts" not in text          # it changed nothing
    assert "Pass execution timing report" in text and "canonicalize" in text
    assert "applied nn.neg(nn.neg(x))" in text and "ran" in text
    assert pm.records[0]["ops_before"] == 3 and pm.records[0]["ops_after"] == 1


def test_print_before_and_after_all():
    out = io.StringIO()
    PassManager("cse", print_ir_before_all=True, print_ir_after_all=True, out=out).run(_m())
    t = out.getvalue()
    assert t.index("IR Dump Before cse") < t.index("IR Dump After cse")


def test_failures_name_the_pass_and_dump_the_input(tmp_path):
    m = _m()
    text = m.print()
    dump = tmp_path / "before.ckir"
    with pytest.raises(PassError, match="pass 'test-breaks' produced invalid IR: nn.neg: result 0 has a stale use by ckir.return"):
        PassManager("test-breaks", dump_on_failure=str(dump), out=io.StringIO()).run(m)
    assert dump.read_text() == text
    with pytest.raises(PassError, match="pass 'test-breaks{crash=true}' failed with an internal error: ZeroDivisionError: boom"):
        PassManager("test-breaks{crash=true}").run(_m())


def test_plugin_file_registers_a_pass(tmp_path):
    f = tmp_path / "myplugin.py"
    f.write_text(textwrap.dedent('''
        import ckir
        @ckir.register_pass
        class Hello(ckir.Pass):
            """Says hello."""
            name = "test-hello"
            times: int = 1
            def run(self, module):
                self.stat("hello", self.times)
    '''))
    ckir.load_plugin(str(f))
    assert "test-hello" in registered_passes()
    ckir.load_plugin(str(f))                 # loading twice is harmless
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('nope')\n")
    with pytest.raises(ckir.CkirError, match="plugin .*bad.py failed to load: RuntimeError: nope"):
        ckir.load_plugin(str(bad))
    with pytest.raises(ckir.CkirError, match="no such file"):
        ckir.load_plugin(str(tmp_path / "missing.py"))


def test_entry_point_group(tmp_path, monkeypatch):
    """A third-party package registers a pass through the `ckir.passes` entry-point group."""
    pkg = tmp_path / "thirdparty_pass.py"
    pkg.write_text(textwrap.dedent('''
        import ckir
        class ThirdParty(ckir.Pass):
            """From an installed package."""
            name = "test-thirdparty"
            def run(self, module):
                pass
    '''))
    dist = tmp_path / "thirdparty-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[ckir.passes]\nthirdparty = thirdparty_pass:ThirdParty\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import ckir.pipeline as pl
    monkeypatch.setattr(pl, "_entry_points_loaded", False)
    assert "test-thirdparty" in registered_passes()
    parse_pipeline("test-thirdparty")
    sys.modules.pop("thirdparty_pass", None)


def test_compile_runs_passes():
    m = _m()
    f = ckir.compile(m, passes="canonicalize")
    assert [op.name for op in m.main] == ["ckir.return"]
    assert f.output_names == ["y0"]
    assert parse(m.print()).print() == m.print()
