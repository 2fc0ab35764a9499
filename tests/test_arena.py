"""The arena pass: placements that never overlap live tensors, peaks near the lower bound,
and the arena interpreter (which runs inside the plan) equal to the plain interpreter."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import ckir
from ckir import Module, PassError, Sym, TensorType, new_graph
from ckir.passes.arena import overlaps, placements, section_stats, svg


def mlp_train_module():
    """A 3-layer MLP with an MSE loss and its gradients (a training graph)."""
    r = np.random.default_rng(0)
    m = Module("train")
    for i, (o, n) in enumerate([(64, 32), (64, 64), (8, 64)]):
        m.add_weight(f"w{i}", (r.standard_normal((o, n)) * 0.1).astype(np.float32))
    g, b = new_graph("main", {"x": TensorType([Sym("batch", 32), 32], "f32"),
                              "t": TensorType([Sym("batch", 32), 8], "f32")})
    h = g.inputs[0]
    for i in range(3):
        h = b.nn.matmul(h, b.weight(m, f"w{i}"), transpose_b=True)
        if i < 2:
            h = b.nn.gelu(h)
    d = b.nn.sub(h, g.inputs[1])
    g.set_outputs([b.nn.mean(b.nn.mul(d, d))], ["loss"])
    m.add_graph(g)
    ckir.run_pipeline(m, "autodiff,canonicalize,cse,dce")
    return m


def test_training_graph_plan_is_tight_and_runs():
    m = mlp_train_module()
    ckir.run_pipeline(m, "arena")
    st = section_stats(m.main)
    assert st["gradients"]["tensors"] == 3 and st["outputs"]["tensors"] == 1
    a = st["activations"]
    assert a["peak_bytes"] <= 1.05 * a["lower_bound_bytes"], a
    assert not overlaps(m.main)
    r = np.random.default_rng(1)
    x, t = r.standard_normal((32, 32)).astype(np.float32), r.standard_normal((32, 8)).astype(np.float32)
    want = ckir.compile(m)(x, t)
    got = ckir.compile(m, arena=True)(x, t)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    # fewer rows than the bound also fit
    got = ckir.compile(m, arena=True)(x[:5], t[:5])
    np.testing.assert_array_equal(got["grad.w0"], ckir.compile(m)(x[:5], t[:5])["grad.w0"])


def test_placements_roundtrip_through_text():
    m = mlp_train_module()
    ckir.run_pipeline(m, "arena{align=128}")
    text = m.print()
    assert "arena.place" in text and "arena.live" in text
    m2 = ckir.parse(text, weights={n: w.data for n, w in m.weights.items()})
    assert m2.print() == text
    assert section_stats(m2.main) == section_stats(m.main)
    assert all(r["offset"] % 128 == 0 for r in placements(m2.main))


def test_a_broken_plan_changes_the_arena_interpreter_result():
    m = mlp_train_module()
    ckir.run_pipeline(m, "arena")
    # move one activation onto another that is alive at the same time
    ops = [op for op in m.main if op.meta and op.meta["arena.place"][0][0] == "activations"]
    victim = max(ops, key=lambda op: op.meta["arena.place"][0][2])
    other = next(op for op in ops if op is not victim and op.meta["arena.place"][0][3] != victim.meta["arena.place"][0][3]
                 and op.meta["arena.live"][0][0] <= victim.meta["arena.live"][0][1]
                 and victim.meta["arena.live"][0][0] <= op.meta["arena.live"][0][1])
    sec, _, size, buf = other.meta["arena.place"][0]
    other.set_meta("arena.place", [[sec, victim.meta["arena.place"][0][1], size, buf]])
    assert overlaps(m.main)
    r = np.random.default_rng(1)
    x, t = r.standard_normal((32, 32)).astype(np.float32), r.standard_normal((32, 8)).astype(np.float32)
    want = ckir.compile(m)(x, t)
    got = ckir.compile(m, arena=True)(x, t)
    assert any(not np.array_equal(got[k], want[k]) for k in want)


def test_unbounded_dims_are_refused():
    g, b = new_graph("main", {"x": TensorType(["n", 4], "f32")})
    g.set_outputs([b.nn.exp(b.nn.exp(g.inputs[0]))], ["y"])
    m = Module()
    m.add_graph(g)
    with pytest.raises(PassError, match="dim 'n' with no upper bound; specialize it or give it one"):
        ckir.run_pipeline(m, "arena")
    ckir.run_pipeline(m, "specialize{n=3},arena")
    with pytest.raises(PassError, match="order must be auto or keep"):
        ckir.run_pipeline(m, "arena{order=random}")


def test_inplace_and_views_share_bytes():
    g, b = new_graph("main", {"x": TensorType([4, 8], "f32")})
    y = b.nn.exp(g.inputs[0])
    y = b.nn.tanh(y)                 # may overwrite exp's result
    y = b.nn.reshape(y, shape=[32])  # a view
    g.set_outputs([b.nn.sum(y)], ["s"])
    m = Module()
    m.add_graph(g)
    ckir.run_pipeline(m, "arena")
    bufs = {r["buffer"] for r in placements(m.main) if r["section"] == "activations"}
    assert len(bufs) == 1
    m2 = ckir.parse(m.print())
    ckir.run_pipeline(m2, "arena{inplace=false}")
    assert len({r["buffer"] for r in placements(m2.main) if r["section"] == "activations"}) == 2


def test_svg_and_cli(tmp_path, capsys):
    from ckir.cli import main
    m = mlp_train_module()
    ckir.run_pipeline(m, "arena")
    assert svg(m.main).startswith("<svg")
    p = tmp_path / "train.ckir"
    ckir.save(m, str(p))
    out = tmp_path / "arena.svg"
    assert main(["dump", str(p), "--arena", "--arena-svg", str(out)]) == 0
    text = capsys.readouterr().out
    assert "arena activations: peak" in text and "section" in text and out.read_text().startswith("<svg")
    assert main(["dump", str(p), "--json"]) == 0
    import json
    s = json.loads(capsys.readouterr().out)
    assert set(s["arena"]["activations"]) >= {"peak_bytes", "lower_bound_bytes", "no_reuse_bytes"}
    plain = tmp_path / "plain.ckir"
    plain.write_text(open(__import__("os").path.join(__import__("os").path.dirname(__file__), "..", "examples", "mlp.ckir")).read())
    assert main(["dump", str(plain), "--arena"]) == 1
    assert "no memory plan" in capsys.readouterr().err


from test_properties import graphs  # noqa: E402


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graphs())
def test_random_graphs_arena_interpreter_equals_interpreter(case):
    m, inputs, d = case
    from ckir.passes.specialize import module_dims
    dims = module_dims(m)
    if dims:
        ckir.run_pipeline(m, "specialize{" + ",".join(f"{n}={d}" for n in dims) + "}")
    with np.errstate(all="ignore"):
        want = ckir.compile(m)(*inputs)
        ckir.run_pipeline(m, "arena")
        assert not overlaps(m.main)
        got = ckir.compile(m, arena=True)(*inputs)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_every_graph_is_planned_by_default():
    text = str(mlp_train_module())
    m = ckir.parse(text)
    m.add_graph(ckir.parse(text.replace("graph @main", "graph @second")).graphs["second"])
    pm = ckir.PassManager("arena")
    pm.run(m)
    assert all(placements(g) for g in m.graphs.values())
    assert {k.split()[0] for k in pm.records[0]["statistics"]} == {"@main", "@second"}
