"""Module state (KV caches, trained parameters): declared in the module, read with ckir.state,
replaced with ckir.write_state when a call completes; kept across calls by the compiled module."""
import numpy as np
import pytest

import ckir
from ckir import VerifyError

KV = """module @m {
  weight @w0 : tensor<2xf32> = dense<[1.0, -1.0]>
  state @kv : tensor<6x2xf32> = zeros
  state @acc : tensor<2xf32> = weight @w0
  graph @main(%x: tensor<1x2xf32>, %pos: tensor<i64>) -> (y: tensor<6x2xf32>, a: tensor<2xf32>) {
    %0 = ckir.state {name = @kv} : () -> tensor<6x2xf32>
    %1 = nn.update_slice %0, %x, %pos {axis = 0} : (tensor<6x2xf32>, tensor<1x2xf32>, tensor<i64>) -> tensor<6x2xf32>
    ckir.write_state %1 {name = @kv} : (tensor<6x2xf32>) -> ()
    %2 = ckir.state {name = @acc} : () -> tensor<2xf32>
    %3 = nn.sum %x {axes = [0]} : (tensor<1x2xf32>) -> tensor<2xf32>
    %4 = nn.add %2, %3 : (tensor<2xf32>, tensor<2xf32>) -> tensor<2xf32>
    ckir.write_state %4 {name = @acc} : (tensor<2xf32>) -> ()
    ckir.return %1, %4 : (tensor<6x2xf32>, tensor<2xf32>) -> ()
  }
}
"""


@pytest.mark.parametrize("backend", ["interp", "llvm"])
def test_state_persists_across_calls_and_failed_calls_change_nothing(backend):
    m = ckir.parse(KV)
    assert m.print() == KV
    f = ckir.compile(m, backend=backend, passes="canonicalize,cse,dce")
    for i in range(3):
        out = f(np.full((1, 2), i + 1, np.float32), np.int64(i))
    assert out["y"][:, 0].tolist() == [1, 2, 3, 0, 0, 0]
    np.testing.assert_array_equal(f.state["acc"], [7, 5])          # [1,-1] + 1 + 2 + 3
    with pytest.raises(ckir.CkirError, match=r"slice \[6, 7\) does not fit axis 0 of size 6"):
        f(np.ones((1, 2), np.float32), np.int64(6))
    np.testing.assert_array_equal(f.state["acc"], [7, 5])          # the failed call wrote nothing
    f.reset_state()
    np.testing.assert_array_equal(f.state["acc"], [1, -1])
    assert not f.state["kv"].any()


@pytest.mark.parametrize("text,msg", [
    (KV, None),
    (KV.replace("%2 = ckir.state {name = @acc} : () -> tensor<2xf32>", "%2 = ckir.state {name = @nope} : () -> tensor<2xf32>"),
     "no state @nope in the module"),
])
def test_verifier_checks_state_ops(text, msg):
    m = ckir.parse(text)
    if msg is None:
        ckir.verify(m)
        return
    with pytest.raises(VerifyError, match=msg):
        ckir.verify(m)


def test_two_writes_and_bad_declarations():
    twice = KV.replace("ckir.write_state %4 {name = @acc} : (tensor<2xf32>) -> ()",
                       "ckir.write_state %1 {name = @kv} : (tensor<6x2xf32>) -> ()")
    with pytest.raises(VerifyError, match="state @kv is written twice in graph @main"):
        ckir.verify(ckir.parse(twice))
    with pytest.raises(ckir.ParseError, match="state @acc is tensor<3xf32> but weight @w0 is tensor<2xf32>"):
        ckir.parse(KV.replace("state @acc : tensor<2xf32> = weight @w0", "state @acc : tensor<3xf32> = weight @w0"))
    with pytest.raises(ckir.ParseError, match=r"state @kv must have a static type"):
        ckir.parse(KV.replace("state @kv : tensor<6x2xf32>", "state @kv : tensor<[n]x2xf32>"))


def test_passes_keep_writes_and_arena_places_state():
    m = ckir.parse(KV)
    ckir.run_pipeline(m, "canonicalize,cse,dce,arena")
    assert sum(op.name == "ckir.write_state" for op in m.main) == 2
    from ckir.passes.arena import section_stats
    assert section_stats(m.main)["state"]["tensors"] == 2
