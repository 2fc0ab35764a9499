"""Control flow with regions: nn.if, nn.loop, nn.scan (ONNX If, Loop, Scan).

Regions are isolated from above: every value a body reads from outside is an operand of the op
and arrives as a block argument. Result types come from the regions (the IR states them and the
verifier checks them against the regions), so these ops have no shape rule of their own.
"""
from __future__ import annotations

import numpy as np

from ckir import dtypes as dt
from ckir.errors import CkirError, ShapeError
from ckir.opdef import ANY, BOOL, Attr, Cost, Operand, Result, compatible, declare, not_differentiable
from ckir.types import ANY as ANYDIM
from ckir.types import TensorType, concrete

from ._util import norm_axis

NO_VJP = not_differentiable("control flow: autodiff through regions is not implemented yet")
I64 = TensorType((), dt.i64)
BOOL_SCALAR = TensorType((), dt.bool_)


def block_cost(block, bind) -> Cost:
    """The summed cost of one run of a region."""
    c = Cost()
    for op in block:
        if "terminator" not in op.opdef.traits:
            c = c + op.opdef.cost(op, bind)
    return c


def _scale(c: Cost, n: int) -> Cost:
    return Cost(c.flops * n, c.bytes_read * n, c.bytes_written * n)


def _check_args(reg, k, types):
    args = [a.type for a in reg.args]
    if len(args) != len(types):
        raise ShapeError(f"region {k} has {len(args)} arguments, expects {len(types)}")
    for i, (a, t) in enumerate(zip(args, types)):
        if not compatible(a, t):
            raise ShapeError(f"region {k} argument {i} is {a}, but receives {t}")


def _check_outs(reg, k, types, what="result", prefix=False):
    """Region k's outputs (the first len(types) of them with `prefix`) fit `types`."""
    outs = [v.type for v in reg.outputs]
    if prefix:
        outs = outs[:len(types)]
    if len(outs) != len(types):
        raise ShapeError(f"region {k} returns {len(outs)} values, expects {len(types)}")
    for i, (o, t) in enumerate(zip(outs, types)):
        if not compatible(t, o):
            raise ShapeError(f"region {k} output {i} is {o}, but {what} {i} is {t}")


def _one_element(a, what) -> np.ndarray:
    a = np.asarray(a)
    if a.size != 1:
        raise ShapeError(f"{what} must hold one element, got shape {list(a.shape)}")
    return a.reshape(())


def _stack(elems, axis, what):
    """Stack per-iteration values along a new `axis`."""
    shapes = {e.shape for e in elems}
    if len(shapes) > 1:
        raise ShapeError(f"{what} changes shape across iterations: {sorted(map(list, shapes))}")
    return np.stack(elems, axis=axis)


def stacked_type(elem: TensorType, n, axis: int = 0) -> TensorType:
    """The type of per-iteration values `elem` stacked along a new `axis` (n iterations)."""
    if type(elem) is not TensorType:
        raise ShapeError(f"scan outputs must be tensors, got {elem}")
    a = norm_axis(axis, elem.rank + 1)
    return elem.with_shape(elem.shape[:a] + (n,) + elem.shape[a:])


# --- if ----------------------------------------------------------------------------------------
def _if_verify(op):
    cond = op.operands[0].type
    if any(type(d) is int and d != 1 for d in cond.shape):
        raise ShapeError(f"cond must hold one element, got {cond}")
    types = [v.type for v in op.operands[1:]]
    res = [r.type for r in op.results]
    for k, reg in enumerate(op.regions):
        _check_args(reg, k, types)
        _check_outs(reg, k, res)


@declare
class if_:
    """Run region 0 (then) when the one-element bool `cond` is true, else region 1 (else); the
    results are the chosen region's outputs. Both regions take the operands after `cond` as
    their arguments (each may ignore some) and return values of the result types (a result
    type is the join of both branches: a dim the branches disagree on is `?`). Cost: the
    dearer branch."""
    name = "nn.if"
    operands = (Operand("cond", BOOL), Operand("args", ANY, variadic=True, kind="any",
                                                 doc="values the branches read"))
    results = (Result("ys", variadic=True),)
    regions = 2
    traits = {"pure"}
    declared_types = True
    fold = False
    verify = _if_verify
    vjp = NO_VJP

    def ref(cond, args, *, regions):
        taken = regions[0] if bool(_one_element(cond, "cond")) else regions[1]
        return tuple(taken(*args))

    def cost(op, bind):
        costs = [block_cost(r, bind) for r in op.regions]
        return max(costs, key=lambda c: (c.flops, c.bytes_read + c.bytes_written))


# --- loop --------------------------------------------------------------------------------------
def _loop_verify(op):
    trip, cond = op.operands[0].type, op.operands[1].type
    if trip is not I64:
        raise ShapeError(f"max_trip must be tensor<i64> (a scalar), got {trip}")
    if cond is not BOOL_SCALAR:
        raise ShapeError(f"cond must be tensor<bool> (a scalar), got {cond}")
    nc = op.attrs["num_carried"]
    values = [v.type for v in op.operands[2:]]
    if not 0 <= nc <= len(values):
        raise ShapeError(f"num_carried = {nc}, but there are {len(values)} values")
    reg = op.regions[0]
    _check_args(reg, 0, [I64, BOOL_SCALAR] + values)
    carried = [a.type for a in reg.args[2:2 + nc]]
    outs = [v.type for v in reg.outputs]
    if len(outs) < 1 + nc:
        raise ShapeError(f"the body returns {len(outs)} values, needs cond and {nc} carried values")
    _check_outs(reg, 0, [BOOL_SCALAR] + carried, "body argument", prefix=True)
    res = [r.type for r in op.results]
    if len(res) != len(outs) - 1:
        raise ShapeError(f"has {len(res)} results, the body gives {nc} carried values and "
                         f"{len(outs) - 1 - nc} scan outputs")
    for i in range(nc):
        if not compatible(res[i], carried[i]):
            raise ShapeError(f"result {i} is {res[i]}, but the carried value is {carried[i]}")
    for i, e in enumerate(outs[1 + nc:]):
        want = stacked_type(e, ANYDIM)
        if not compatible(res[nc + i], want):
            raise ShapeError(f"result {nc + i} is {res[nc + i]}, but stacking the body's {e} gives {want}")


@declare
class loop:
    """A loop (ONNX Loop). Operands: `max_trip` (i64 scalar), `cond` (bool scalar), then
    `values`: the first `num_carried` are the loop-carried values' initial values, the rest
    are read-only values every iteration sees. The region takes (iteration number i64, cond,
    carried..., read-only...) and returns (cond, carried..., scan elements...). Iteration i runs
    while i < max_trip and cond is true; each returns the next cond and carried values. Results:
    the carried values after the last iteration (the initial ones if none ran), then each scan
    element stacked over the iterations along a new axis 0. When no iteration runs, the body is
    evaluated once on the initial values (iteration 0, cond true) and its results discarded:
    that gives the empty scan outputs their element shape (with scan outputs, the loop fails if
    that evaluation fails). Cost: one iteration times max_trip when it is a constant (at most
    2^20), else one iteration."""
    name = "nn.loop"
    operands = (Operand("max_trip", (dt.i64,)), Operand("cond", BOOL),
                Operand("values", ANY, variadic=True, kind="any"))
    results = (Result("ys", variadic=True),)
    attrs = (Attr("num_carried", "int", 0, doc="how many of `values` are loop-carried"),)
    regions = 1
    traits = {"pure"}
    declared_types = True
    fold = False
    verify = _loop_verify
    vjp = NO_VJP

    def ref(max_trip, cond, values, *, num_carried, regions):
        body = regions[0]
        n = int(_one_element(max_trip, "max_trip"))
        keep = bool(_one_element(cond, "cond"))
        carried, fixed = list(values[:num_carried]), list(values[num_carried:])
        scans = None
        i = 0
        while i < n and keep:
            outs = body(np.asarray(i, np.int64), np.asarray(keep), *carried, *fixed)
            keep = bool(_one_element(outs[0], "the body's cond"))
            carried = list(outs[1:1 + num_carried])
            elems = outs[1 + num_carried:]
            scans = [[] for _ in elems] if scans is None else scans
            for s, e in zip(scans, elems):
                s.append(np.asarray(e))
            i += 1
        if scans is None:     # no iteration ran: the elements' shapes come from a discarded run
            # (if that run fails, only the carried values come back: right without scan outputs,
            # and with them the interpreter reports the missing results)
            elems = _dry_run(body, [np.asarray(0, np.int64), np.asarray(True), *carried, *fixed],
                             1 + num_carried) or []
            return tuple(carried) + tuple(np.zeros((0,) + e.shape, e.dtype) for e in elems)
        return tuple(carried) + tuple(_stack(s, 0, f"scan output {j}") for j, s in enumerate(scans))

    def cost(op, bind):
        trip = op.operands[0].op
        n = 1
        if trip is not None and trip.opdef.name == "nn.constant":
            n = max(0, min(int(trip.attrs["value"].array), 1 << 20))
        return _scale(block_cost(op.regions[0], bind), n)


def _dry_run(body, args, skip):
    """The scan elements of one discarded run of `body`, or None if that run fails: a loop or
    scan that runs zero times still owes empty scan outputs of the elements' shape and dtype,
    which only the body knows."""
    try:
        outs = body(*args)
    except (CkirError, ValueError, TypeError, IndexError, ArithmeticError):
        return None
    return [np.asarray(o) for o in outs[skip:]]


# --- scan --------------------------------------------------------------------------------------
def _flags(v, n, what):
    v = [0] * n if v is None else list(v)
    if len(v) != n:
        raise ShapeError(f"{what} has {len(v)} entries, expects {n}")
    return v


def _scan_layout(op_types, attrs):
    """(states, scan inputs, read-only values, input axes, scan length) of an nn.scan."""
    ns, ni = attrs["num_state"], attrs["num_scan_inputs"]
    if ns < 0 or ni < 1 or ns + ni > len(op_types):
        raise ShapeError(f"num_state = {ns} and num_scan_inputs = {ni} do not fit {len(op_types)} operands "
                         "(at least one scan input)")
    xs = op_types[ns:ns + ni]
    for x in xs:
        if type(x) is not TensorType:
            raise ShapeError(f"scan inputs must be tensors, got {x}")
    axes = [norm_axis(a, x.rank) for a, x in zip(_flags(attrs["input_axes"], ni, "input_axes"), xs)]
    _flags(attrs["input_directions"], ni, "input_directions")
    lens = [x.shape[a] for x, a in zip(xs, axes)]
    static = {d for d in lens if type(d) is int}
    if len(static) > 1:
        raise ShapeError(f"scan inputs have different lengths {sorted(static)} along their scan axes")
    n = static.pop() if static else lens[0]
    return op_types[:ns], xs, op_types[ns + ni:], axes, n


def _scan_verify(op):
    types = [v.type for v in op.operands]
    states, xs, fixed, axes, n = _scan_layout(types, op.attrs)
    slices = [x.with_shape(x.shape[:a] + x.shape[a + 1:]) for x, a in zip(xs, axes)]
    reg = op.regions[0]
    _check_args(reg, 0, states + slices + fixed)
    ns = len(states)
    carried = [a.type for a in reg.args[:ns]]
    outs = [v.type for v in reg.outputs]
    if len(outs) < ns:
        raise ShapeError(f"the body returns {len(outs)} values, needs {ns} states")
    _check_outs(reg, 0, carried, "body argument", prefix=True)
    elems = outs[ns:]
    k = len(elems)
    oaxes = _flags(op.attrs["output_axes"], k, "output_axes")
    _flags(op.attrs["output_directions"], k, "output_directions")
    res = [r.type for r in op.results]
    if len(res) != len(outs):
        raise ShapeError(f"has {len(res)} results, the body gives {ns} states and {k} scan outputs")
    for i in range(ns):
        if not compatible(res[i], carried[i]):
            raise ShapeError(f"result {i} is {res[i]}, but the state is {carried[i]}")
    for i, (e, a) in enumerate(zip(elems, oaxes)):
        want = stacked_type(e, n, a)
        if not compatible(res[ns + i], want):
            raise ShapeError(f"result {ns + i} is {res[ns + i]}, but stacking the body's {e} gives {want}")


@declare
class scan:
    """A scan (ONNX Scan, opset 9 form). Operands: `num_state` initial states, then
    `num_scan_inputs` (>= 1) scan inputs, then read-only values every iteration sees. Iteration
    t takes slice t of each scan input along its axis (`input_axes`, default 0; slice
    n-1-t where `input_directions` is 1), so all scan inputs have the same length n there. The
    region takes (states..., slices..., read-only...) and returns (states..., scan
    elements...). Results: the final states, then each scan element stacked over the n
    iterations along `output_axes` (default 0; in reverse iteration order where
    `output_directions` is 1). When n = 0 the body is evaluated once on zero slices and its
    results discarded, to give the empty scan outputs their element shape (with scan outputs,
    the scan fails if that evaluation fails). Cost: n iterations."""
    name = "nn.scan"
    operands = (Operand("values", ANY, variadic=True, kind="any"),)
    results = (Result("ys", variadic=True),)
    attrs = (Attr("num_state", "int", 0), Attr("num_scan_inputs", "int"),
             Attr("input_axes", "ints", None, doc="absent: all 0"),
             Attr("input_directions", "ints", None, doc="0 forward, 1 reverse; absent: all 0"),
             Attr("output_axes", "ints", None, doc="absent: all 0"),
             Attr("output_directions", "ints", None, doc="0 append, 1 prepend; absent: all 0"))
    regions = 1
    traits = {"pure"}
    declared_types = True
    fold = False
    verify = _scan_verify
    vjp = NO_VJP

    def ref(values, *, num_state, num_scan_inputs, input_axes, input_directions, output_axes,
            output_directions, regions):
        body = regions[0]
        ns, ni = num_state, num_scan_inputs
        states, xs, fixed = list(values[:ns]), values[ns:ns + ni], list(values[ns + ni:])
        axes = [norm_axis(a, x.ndim) for a, x in zip(_flags(input_axes, ni, "input_axes"), xs)]
        rev = _flags(input_directions, ni, "input_directions")
        lens = {x.shape[a] for x, a in zip(xs, axes)}
        if len(lens) != 1:
            raise ShapeError(f"scan inputs have different lengths {sorted(lens)} along their scan axes")
        n = lens.pop()
        scans = None
        for t in range(n):
            sl = [np.take(x, n - 1 - t if r else t, axis=a) for x, a, r in zip(xs, axes, rev)]
            outs = body(*states, *sl, *fixed)
            states = list(outs[:ns])
            elems = outs[ns:]
            scans = [[] for _ in elems] if scans is None else scans
            for s, e in zip(scans, elems):
                s.append(np.asarray(e))
        if scans is None:     # no iteration ran: the elements' shapes come from a discarded run
            sl = [np.zeros(x.shape[:a] + x.shape[a + 1:], x.dtype) for x, a in zip(xs, axes)]
            scans = [[e] for e in _dry_run(body, [*states, *sl, *fixed], ns) or []]
        k = len(scans)
        oax, odir = _flags(output_axes, k, "output_axes"), _flags(output_directions, k, "output_directions")
        ys = []
        for j, (s, a, d) in enumerate(zip(scans, oax, odir)):
            y = _stack(s[::-1] if d else s, norm_axis(a, s[0].ndim + 1), f"scan output {j}")
            ys.append(y if n else np.take(y, np.zeros(0, np.intp), axis=norm_axis(a, y.ndim)))
        return tuple(states) + tuple(ys)

    def cost(op, bind):
        n = _scan_layout([v.type for v in op.operands], op.attrs)[4]
        return _scale(block_cost(op.regions[0], bind), concrete((n,), bind)[0])
