"""Bounds of unknown dims: what shape rules can promise about a size they cannot know (so a
memory plan can place the value), checked against the sizes the references really produce."""
import itertools

import numpy as np
import pytest

import ckir
from ckir.dialects.nn.data import _slice_bound, _slice_range
from ckir.types import Sym, TensorType

BIG = 2**63 - 1
INDICES = [-7, -3, -1, 0, 1, 2, 5, 9, BIG, -BIG - 1]


@pytest.mark.parametrize("step", [1, 2, 3, -1, -2, -3])
def test_slice_bound_covers_every_axis_size(step):
    for s, e in itertools.product(INDICES, INDICES):
        for n in (0, 1, 4, 10, 13):
            most = max(len(_slice_range(d, s, e, step)) for d in range(n + 1))
            assert _slice_bound(n, s, e, step) >= most, (s, e, step, n)
        unbounded = _slice_bound(None, s, e, step)
        if unbounded is not None:
            assert unbounded >= max(len(_slice_range(d, s, e, step)) for d in range(80)), (s, e, step)


def infer(name, types, **attrs):
    od = ckir.get_op(name)
    return od.infer(types, od.make_attrs(attrs))[0]


def test_slice_of_a_symbolic_dim_is_bounded():
    seq = Sym("seq", 512)
    assert infer("nn.slice", [TensorType([seq, 8], "f32")], starts=[-1], ends=[BIG], axes=[0]).shape \
        == (Sym(None, 1), 8)
    assert infer("nn.slice", [TensorType([seq], "f32")], starts=[3], ends=[-2], axes=[0]).shape == (Sym(None, 507),)
    assert infer("nn.slice", [TensorType([Sym("n")], "f32")], starts=[3], ends=[-2], axes=[0]).shape \
        == (Sym(None, None),)
    assert infer("nn.slice_dyn", [TensorType([2, 64, 8], "f32"), TensorType([1], "i64"),
                                  TensorType([1], "i64")], axes=[1]).shape == (2, Sym(None, 64), 8)


def test_reshape_minus_one_keeps_the_symbolic_dim():
    seq = Sym("seq", 512)
    x = TensorType([seq, 256], "f32")
    assert infer("nn.reshape", [x], shape=[-1, 4, 64]).shape == (seq, 4, 64)
    assert infer("nn.reshape", [x], shape=[-1, 8, 64]).shape == (Sym(None, None), 8, 64)   # seq/2
    b = Sym("b")
    assert infer("nn.reshape", [TensorType([b, seq, 6], "f32")], shape=["b", -1, 2, 3]).shape == (b, seq, 2, 3)


def test_bounded_results_run():
    g, bld = ckir.new_graph("main", {"x": TensorType([Sym("seq", 16), 4], "f32")})
    y = bld.nn.slice(g.inputs[0], starts=[-3], ends=[BIG], axes=[0])
    assert y.type.shape == (Sym(None, 3), 4)
    g.set_outputs([y], ["y"])
    m = ckir.Module("m")
    m.add_graph(g)
    for n in (1, 2, 7):
        x = np.arange(4 * n, dtype=np.float32).reshape(n, 4)
        np.testing.assert_array_equal(ckir.compile(m)(x)["y"], x[-3:])
