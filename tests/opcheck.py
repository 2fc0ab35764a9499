"""Generic checks every op declaration must pass, driven by its examples:

- run: build a one-op module, run it in the interpreter (which checks each result against the
  declared type), and compare with calling the reference function directly;
- round-trip: print, parse, print again: identical text, and the parsed module verifies;
- cost: a Cost of non-negative ints;
- vjp: the gradient IR the op's VJP builds, run in float64, against central finite differences
  of sum(cotangent * output) computed through the reference function.
"""
from __future__ import annotations

import numpy as np

import ckir
from ckir import Module, TensorType, new_graph
from ckir.opdef import Cost, NotDifferentiable

RNG_SEED = 1234


def flat(arrays):
    out = []
    for a in arrays:
        out.extend(a if isinstance(a, list) else [a])
    return out


def one_op_module(opdef, arrays, attrs, types=None):
    """A module with one graph input per (flattened) operand array (of `types`, else the
    arrays' own), the op, and its results as outputs. Returns (module, op, input arrays)."""
    xs = flat(arrays)
    types = types or [TensorType(x.shape, x.dtype) for x in xs]
    g, b = new_graph("main", {f"a{i}": t for i, t in enumerate(types)})
    op = b.create(opdef, list(g.inputs), attrs)
    g.set_outputs(op.results, [f"y{i}" for i in range(len(op.results))])
    m = Module("check")
    m.add_graph(g)
    return m, op, xs


def roundtrip(m: Module) -> Module:
    text = m.print()
    m2 = ckir.parse(text)
    assert m2.print() == text, "print(parse(print(m))) differs from print(m)"
    ckir.verify(m2)
    return m2


def run_example(opdef, ex, rng=None):
    """Run one example through the interpreter; returns (module, inputs, outputs)."""
    rng = rng or np.random.default_rng(RNG_SEED)
    arrays = ex.arrays(rng)
    m, op, xs = one_op_module(opdef, arrays, ex.attrs, ex.types(arrays))
    ckir.verify(m)
    f = ckir.compile(m)
    outs = [f(*xs)[n] for n in f.output_names]
    direct = opdef.ref(xs, op.attrs, types=[v.type for v in op.operands])
    for o, d in zip(outs, direct):
        np.testing.assert_array_equal(o, np.asarray(d))
    return m, xs, outs


def check_cost(opdef, m: Module) -> Cost:
    op = next(o for o in m.main if o.opdef is opdef)
    c = opdef.cost(op)
    assert isinstance(c, Cost), f"{opdef.name}.cost returned {c!r}"
    for field in ("flops", "bytes_read", "bytes_written"):
        v = getattr(c, field)
        assert isinstance(v, (int, np.integer)) and v >= 0, f"{opdef.name} cost {field} = {v!r}"
    return c


def _to64(a):
    return a.astype(np.float64) if a.dtype.kind == "f" or a.dtype == ckir.dtypes.bf16.np else a


def check_vjp(opdef, ex, rng=None, max_points: int = 48) -> bool:
    """Finite-difference check of the op's VJP on one example, in float64. Returns False when
    the example has no float64 inputs and outputs to check (e.g. a cast to f16)."""
    assert not isinstance(opdef.vjp, NotDifferentiable)
    rng = rng or np.random.default_rng(RNG_SEED)
    arrays = ex.arrays(rng)
    arrays = [[_to64(x) for x in a] if isinstance(a, list) else _to64(a) for a in arrays]
    xs = flat(arrays)
    attrs = dict(ex.attrs)
    m, op, _ = one_op_module(opdef, arrays, attrs, ex.types(arrays))
    float_in = [i for i, x in enumerate(xs) if x.dtype == np.float64]
    float_out = [r for r in op.results if r.type.dtype is ckir.dtypes.f64]
    if not float_in or not float_out or any(r.type.dtype.is_float and r.type.dtype is not ckir.dtypes.f64
                                             for r in op.results):
        return False
    g = m.main
    t = g.terminator
    t.erase()
    cots, cot_vals = {}, []
    types = [v.type for v in op.operands]
    ys = opdef.ref(xs, op.attrs, types=types)          # results with `?` dims take their run-time shape
    for r in op.results:
        if r in float_out:
            c = rng.standard_normal(np.shape(ys[r.index]))
            cots[r] = g.add_arg(r.type, f"c{r.index}")
            cot_vals.append(c)
    b = ckir.Builder.at_end(g)
    grads = opdef.vjp(b, op, *[cots.get(r) for r in op.results])
    assert len(grads) == len(xs), f"{opdef.name}.vjp returned {len(grads)} gradients for {len(xs)} operands"
    outs, names = [], []
    for i, gv in enumerate(grads):
        if gv is not None:
            assert gv.type.shape == op.operands[i].type.shape and gv.type.dtype is op.operands[i].type.dtype, \
                f"{opdef.name}: gradient {i} has type {gv.type}, operand is {op.operands[i].type}"
            outs.append(gv)
            names.append(f"g{i}")
    if not outs:   # every gradient is None (zero): still check against finite differences
        outs, names = [op.results[0]], ["unused"]
    g.set_outputs(outs, names)
    ckir.verify(m)
    roundtrip(m)
    res = ckir.compile(m)(*xs, *cot_vals)

    def loss(vals):
        ys = opdef.ref(vals, op.attrs, types=types)
        return sum(float(np.sum(c * y)) for c, y, r in zip(cot_vals, [ys[r.index] for r in float_out], float_out))

    for i in float_in:
        got = res[f"g{i}"] if f"g{i}" in res else np.zeros_like(xs[i])
        x = xs[i]
        idx = np.arange(x.size)
        if x.size > max_points:
            idx = rng.choice(x.size, max_points, replace=False)
        for j in idx:
            vals = [v.copy() for v in xs]
            h = 1e-6 * max(1.0, abs(float(x.flat[j])))
            vals[i].flat[j] = x.flat[j] + h
            up = loss(vals)
            vals[i].flat[j] = x.flat[j] - h
            down = loss(vals)
            fd = (up - down) / (2 * h)
            an = float(np.asarray(got).flat[j])
            assert abs(fd - an) <= 1e-4 * max(1.0, abs(fd)), (
                f"{opdef.name} {ex!r}: d/d operand {i} element {j}: vjp {an}, finite difference {fd}")
    return True
