"""Control flow (If, Loop, Scan), sequences (Sequence*, SplitToSequence, ConcatFromSequence,
SequenceMap), optionals (Optional*), recurrent layers (RNN, GRU, LSTM) and the training-domain
optimizer updates (ai.onnx.preview.training Adagrad, Adam, Momentum).

Subgraphs become regions (ctx.subgraph): the values a body reads from outside arrive as extra
block arguments, so the region ops take them as extra operands in the same order. An If whose
condition is known at import time is inlined: only the branch taken is converted.
"""
from __future__ import annotations

import functools

import numpy as np

from ckir import dtypes as dt
from ckir.builder import Builder
from ckir.dialects.nn import control, rnn, seq  # noqa: F401  (helpers used by the converters)
from ckir.dialects.nn.seq import free_dims, join_types
from ckir.errors import CkirError, ShapeError
from ckir.ir import Block
from ckir.types import ANY as ANYDIM
from ckir.types import OptType, SeqType, TensorType

from ..importer import Scope, onnx_dtype, value_type
from ..registry import converter

TRAINING = "ai.onnx.preview.training"
I64 = TensorType((), dt.i64)
BOOL = TensorType((), dt.bool_)
INT64_MAX = np.iinfo(np.int64).max


# --- types ---------------------------------------------------------------------------------------
def _shape_attr(t: TensorType) -> list:
    """Dims as a 'shape' attribute of nn.seq_empty / nn.opt_none: -1 (`?`) for symbolic ones,
    since an element's named dims are its own (and a shape attribute's names must be bound)."""
    return [d if type(d) is int else -1 for d in t.shape]


def _empty_seq(b: Builder, t: SeqType):
    return b.nn.seq_empty(dtype=t.elem.dtype, shape=_shape_attr(t.elem))


def _known_empty(v) -> bool:
    """Whether `v` is an nn.seq_empty result: an empty sequence may take any element type."""
    return v.op is not None and v.op.opdef.name == "nn.seq_empty"


def _scalar(b: Builder, v, what, ctx, dtype=None):
    """A one-element tensor as a scalar (ONNX passes counts and flags as [1] or [])."""
    if any(type(d) is int and d != 1 for d in v.type.shape):
        raise ctx.fail(f"{what} must hold one element, got {v.type}")
    if v.type.rank:
        v = b.nn.reshape(v, shape=[])
    if dtype is not None and v.type.dtype is not dtype:
        v = b.nn.cast(v, to=dtype)
    return v


def _set_output(block: Block, i: int, fn):
    """Replace output i of `block` by fn(builder placed before its return, old value)."""
    term = block.terminator
    term.set_operand(i, fn(Builder.before(term), term.operands[i]))


# --- If ------------------------------------------------------------------------------------------
class _InlineScope(Scope):
    """Names of an inlined branch: its own, then the enclosing scope's, without captures (the
    branch's ops go straight into the enclosing block)."""

    def lookup(self, name):
        v = self.names.get(name)
        return v if v is not None else self.parent.lookup(name)


def _inline(ctx, attr):
    g = ctx.attr(attr)
    scope = _InlineScope(ctx.scope.block, ctx.scope)
    ctx.imp.initializers_to_scope(g, scope)
    ctx.imp.convert_nodes(g.node, scope)
    outs = []
    for vi in g.output:
        v = scope.lookup(vi.name)
        if v is None:
            raise ctx.fail(f"{attr} output {vi.name} is not defined")
        outs.append(v)
    return outs


def _unify(ctx, blocks, i, what):
    """The join of output i of `blocks`; a known-empty sequence output takes the others' type."""
    vals = [blk.outputs[i] for blk in blocks]
    try:
        return functools.reduce(join_types, [v.type for v in vals])
    except ShapeError:
        full = [v.type for v in vals if not _known_empty(v)]
        try:
            if not full or len(full) == len(vals) or type(full[0]) is not SeqType:
                raise
            t = functools.reduce(join_types, full)
        except ShapeError:
            raise ctx.fail(f"the branches give {' and '.join(str(v.type) for v in vals)} for {what} {i}: "
                           "branches of different kinds, dtypes or ranks are not supported (ckir "
                           "types have a fixed rank)") from None
        for blk, v in zip(blocks, vals):
            if _known_empty(v) and v.type is not t:
                _set_output(blk, i, lambda b, _: _empty_seq(b, t))
        return t


def _dedupe(blocks, operands, first):
    """Drop repeated and unused region arguments from position `first` on (with their operands)."""
    ops = list(operands)
    for i in range(len(ops) - 1, first - 1, -1):
        j = next((k for k in range(first, i) if ops[k] is ops[i]), None)
        for blk in blocks:
            if j is not None:
                blk.args[i].replace_all_uses_with(blk.args[j])
        if all(not blk.args[i].uses for blk in blocks):
            for blk in blocks:
                blk.erase_arg(i)
            del ops[i]
    return ops


@converter("If", since=1)
def if_(ctx):
    c = ctx.const(0)
    if c is not None:
        if np.size(c) != 1:
            raise ctx.fail(f"cond must hold one element, got shape {list(np.shape(c))}")
        return _inline(ctx, "then_branch" if bool(np.asarray(c).reshape(-1)[0]) else "else_branch")
    tb, tcaps = ctx.subgraph("then_branch", [])
    eb, ecaps = ctx.subgraph("else_branch", [v.type for v in tcaps], [a.name for a in tb.args])
    for v, a in zip(ecaps, eb.args[len(tcaps):]):
        tb.add_arg(v.type, a.name)
    n = len(tb.outputs)
    if len(eb.outputs) != n:
        raise ctx.fail(f"the branches return {n} and {len(eb.outputs)} values")
    types = [_unify(ctx, [tb, eb], i, "output") for i in range(n)]
    args = _dedupe([tb, eb], tcaps + ecaps, 0)
    op = ctx.b.create("nn.if", [ctx.x(0)] + args, {}, result_types=types, regions=[tb, eb])
    return list(op.results)


# --- Loop and Scan -------------------------------------------------------------------------------
def _body(ctx, lead, carried, tail, skip, init=None, what="loop-carried value"):
    """Convert the `body` subgraph with arguments lead + carried + tail, re-converting with
    wider carried types until the body's carried outputs (outputs skip, skip+1, ...) fit them.
    Known-empty sequences in `init` (the carried initial values) are retyped to what the body
    makes of them. Returns (block, captured values, carried types)."""
    g = ctx.attr("body")
    names = [vi.name for vi in g.input]
    if len(names) != len(lead) + len(carried) + len(tail):
        raise ctx.fail(f"the body takes {len(names)} inputs, expects {len(lead) + len(carried) + len(tail)}")
    types = list(carried)
    if init is not None:        # the body's declared input types can type an empty sequence
        for i, v in enumerate(init):
            if _known_empty(v):
                try:
                    t = value_type(g.input[len(lead) + i].type, "body input")
                except CkirError:
                    continue
                if type(t) is SeqType and t.dtype is v.type.dtype and t is not v.type:
                    init[i] = _empty_seq(ctx.b, t)
                    types[i] = init[i].type
    for _ in range(4):
        block, caps = ctx.subgraph("body", lead + types + tail, names)
        outs = block.outputs
        if len(outs) < skip + len(types):
            raise ctx.fail(f"the body returns {len(outs)} values, expects at least {skip + len(types)}")
        new = []
        for i, t in enumerate(types):
            o = outs[skip + i].type
            try:
                new.append(join_types(t, o))
            except ShapeError:
                if init is None or not _known_empty(init[i]) or type(o) is not SeqType or o.dtype is not t.dtype:
                    raise ctx.fail(f"{what} {i} is {t} on entry but the body returns {o} (a changing "
                                   "rank or dtype is not supported)") from None
                init[i] = _empty_seq(ctx.b, o)
                new.append(init[i].type)
        if new == types:
            return block, caps, types
        types = new
    raise ctx.fail(f"the types of the {what}s do not settle")


@converter("Loop", since=1)
def loop(ctx):
    b = ctx.b
    nc = ctx.n_in - 2
    init = [ctx.x(2 + i) for i in range(nc)]
    trip = _scalar(b, ctx.opt(0), "M", ctx, dt.i64) if ctx.opt(0) is not None else b.constant(np.int64(INT64_MAX))
    cond = _scalar(b, ctx.opt(1), "cond", ctx, dt.bool_) if ctx.opt(1) is not None else b.constant(np.True_)
    block, caps, types = _body(ctx, [I64, BOOL], [v.type for v in init], [], 1, init)
    if ctx.opt(1) is None:     # without a cond input, the body's cond output is ignored
        _set_output(block, 0, lambda bb, _: bb.constant(np.True_))
    else:
        c = block.outputs[0]
        if c.type.dtype is not dt.bool_:
            raise ctx.fail(f"the body's cond output is {c.type}, not bool")
        if c.type.rank:
            _set_output(block, 0, lambda bb, v: _scalar(bb, v, "the body's cond output", ctx))
    elems = [v.type for v in block.outputs[1 + nc:]]
    for e in elems:
        if type(e) is not TensorType:
            raise ctx.fail(f"scan outputs must be tensors, got {e}")
    n = ANYDIM
    m = ctx.const(0)
    if ctx.opt(1) is None and m is not None:
        n = max(0, int(np.asarray(m).reshape(-1)[0]))
    res = types + [control.stacked_type(e, n) for e in elems]
    op = b.create("nn.loop", [trip, cond] + init + caps, {"num_carried": nc}, result_types=res,
                  regions=[block])
    return list(op.results)


def _drop(t: TensorType, axis: int) -> TensorType:
    return t.with_shape(t.shape[:axis] + t.shape[axis + 1:])


def _axes(ctx, name, n, ranks):
    v = ctx.attr(name, None)
    if v is None:
        return None
    v = list(v)
    if len(v) != n:
        raise ctx.fail(f"{name} has {len(v)} entries, expects {n}")
    out = []
    for a, r in zip(v, ranks):
        if not -r <= a < r:
            raise ctx.fail(f"{name}: axis {a} is out of range for rank {r}")
        out.append(a % r)
    return out


def _scan_len(ctx, xs, axes):
    lens = [x.type.shape[a] for x, a in zip(xs, axes)]
    static = {d for d in lens if type(d) is int}
    if len(static) > 1:
        raise ctx.fail(f"scan inputs have different lengths {sorted(static)}")
    return static.pop() if static else lens[0]


@converter("Scan", since=9)
def scan9(ctx):
    m = ctx.attr("num_scan_inputs")
    ns = ctx.n_in - m
    if ns < 0 or m < 1:
        raise ctx.fail(f"num_scan_inputs = {m} with {ctx.n_in} inputs")
    states = [ctx.x(i) for i in range(ns)]
    xs = [ctx.x(ns + j) for j in range(m)]
    in_axes = _axes(ctx, "scan_input_axes", m, [x.type.rank for x in xs])
    axes = in_axes or [0] * m
    slices = [_drop(x.type, a) for x, a in zip(xs, axes)]
    block, caps, types = _body(ctx, [], [v.type for v in states], slices, 0, what="state")
    elems = [v.type for v in block.outputs[ns:]]
    out_axes = _axes(ctx, "scan_output_axes", len(elems), [e.rank + 1 for e in elems])
    n = _scan_len(ctx, xs, axes)
    res = types + [control.stacked_type(e, n, a) for e, a in zip(elems, out_axes or [0] * len(elems))]
    attrs = {"num_state": ns, "num_scan_inputs": m, "input_axes": in_axes, "output_axes": out_axes,
             "input_directions": ctx.attr("scan_input_directions", None),
             "output_directions": ctx.attr("scan_output_directions", None)}
    op = ctx.b.create("nn.scan", states + xs + caps, attrs, result_types=res, regions=[block])
    return list(op.results)


@converter("Scan", since=8)
def scan8(ctx):
    """Scan-8 batches over axis 0 and scans axis 1: an nn.scan over the batch whose body is an
    nn.scan over time running the ONNX body."""
    m = ctx.attr("num_scan_inputs")
    ns = ctx.n_in - 1 - m
    if ns < 0 or m < 1:
        raise ctx.fail(f"num_scan_inputs = {m} with {ctx.n_in} inputs")
    states = [ctx.x(1 + i) for i in range(ns)]
    xs = [ctx.x(1 + ns + j) for j in range(m)]
    for v, need in [(v, 1) for v in states] + [(v, 2) for v in xs]:
        if v.type.rank < need:
            raise ctx.fail(f"input {v.type} lacks the batch{' and sequence' if need == 2 else ''} axis")
    T = _scan_len(ctx, xs, [1] * m)
    if ctx.opt(0) is not None:
        lens = ctx.const(0)
        if lens is None or type(T) is not int or (np.asarray(lens) != T).any():
            raise ctx.fail("sequence_lens shorter than the sequence axis are not supported")
    st_b = [_drop(v.type, 0) for v in states]
    xs_b = [_drop(v.type, 0) for v in xs]
    body, caps, types = _body(ctx, [], st_b, [_drop(t, 0) for t in xs_b], 0, what="state")
    elems = [v.type for v in body.outputs[ns:]]
    inner_res = types + [control.stacked_type(e, T) for e in elems]
    outer = Block(st_b + xs_b + [c.type for c in caps], [None] * (ns + m) + [c.name for c in caps])
    ob = Builder.at_end(outer)
    dirs = ctx.attr("directions", None)
    inner = ob.create("nn.scan", list(outer.args), {"num_state": ns, "num_scan_inputs": m,
                                                    "input_directions": dirs},
                      result_types=inner_res, regions=[body])
    ob.create("ckir.return", list(inner.results))
    batch = states[0].type.shape[0] if states else xs[0].type.shape[0]
    res = [control.stacked_type(t, batch) for t in inner_res]
    op = ctx.b.create("nn.scan", states + xs + caps, {"num_state": 0, "num_scan_inputs": ns + m},
                      result_types=res, regions=[outer])
    return list(op.results)


# --- sequences -----------------------------------------------------------------------------------
def _seq_operand(ctx, i):
    v = ctx.x(i)
    if type(v.type) is not SeqType:
        raise ctx.fail(f"input {i} must be a sequence, got {v.type}")
    return v


@converter("SequenceEmpty", since=11)
def sequence_empty(ctx):
    # the element rank is unknown here: a placeholder that consumers retype (see _known_empty)
    return ctx.b.nn.seq_empty(dtype=onnx_dtype(ctx.attr("dtype", 1), ctx.where), shape=[])


@converter("SequenceConstruct", since=11)
def sequence_construct(ctx):
    return ctx.b.nn.seq_construct([ctx.x(i) for i in range(ctx.n_in)])


@converter("SequenceInsert", since=11)
def sequence_insert(ctx):
    s, x, pos = _seq_operand(ctx, 0), ctx.x(1), ctx.opt(2)
    if _known_empty(s):
        try:
            join_types(s.type.elem, x.type)
        except ShapeError:
            if pos is None:
                return ctx.b.nn.seq_construct([x])
            s = _empty_seq(ctx.b, SeqType(x.type))
    return ctx.b.nn.seq_insert(s, x, *([pos] if pos is not None else []))


@converter("SequenceErase", since=11)
def sequence_erase(ctx):
    pos = ctx.opt(1)
    return ctx.b.nn.seq_erase(_seq_operand(ctx, 0), *([pos] if pos is not None else []))


@converter("SequenceAt", since=11)
def sequence_at(ctx):
    return ctx.b.nn.seq_at(_seq_operand(ctx, 0), ctx.x(1))


@converter("SequenceLength", since=11)
def sequence_length(ctx):
    return ctx.b.nn.seq_length(_seq_operand(ctx, 0))


@converter("SplitToSequence", since=11)
def split_to_sequence(ctx):
    b, x = ctx.b, ctx.x(0)
    axis, keepdims = ctx.attr("axis", 0), bool(ctx.attr("keepdims", 1))
    if not -x.type.rank <= axis < x.type.rank:
        raise ctx.fail(f"axis {axis} is out of range for rank {x.type.rank}")
    a = axis % x.type.rank
    n = x.type.shape[a]
    split = None if ctx.opt(1) is None else ctx.const(1)
    if type(n) is int and n > 0 and (ctx.opt(1) is None or split is not None):
        # sizes known at import: static pieces
        try:
            sizes = seq.split_sizes(n, split, f"axis {a}")
        except ShapeError as e:
            raise ctx.fail(str(e)) from None
        pieces = b.nn.split(x, axis=a, sizes=sizes)
        pieces = [pieces] if not isinstance(pieces, tuple) else list(pieces)
        if ctx.opt(1) is None and not keepdims:
            pieces = [b.nn.squeeze(p, axes=[a]) for p in pieces]
        return b.nn.seq_construct(pieces)
    args = [x] + ([ctx.x(1)] if ctx.opt(1) is not None else [])
    return b.nn.split_to_seq(*args, axis=a, keepdims=keepdims)


@converter("ConcatFromSequence", since=11)
def concat_from_sequence(ctx):
    return ctx.b.nn.concat_from_seq(_seq_operand(ctx, 0), axis=ctx.attr("axis"),
                                    new_axis=bool(ctx.attr("new_axis", 0)))


@converter("SequenceMap", since=17)
def sequence_map(ctx):
    """An nn.loop over the first sequence: each iteration takes element i of every sequence
    input (tensor inputs as they are), runs the body, and appends its outputs to the result
    sequences."""
    b = ctx.b
    ins = [ctx.x(i) for i in range(ctx.n_in)]
    if type(ins[0].type) is not SeqType:
        raise ctx.fail(f"input 0 must be a sequence, got {ins[0].type}")
    g = ctx.attr("body")
    arg_types = [free_dims(v.type.elem) if type(v.type) is SeqType else v.type for v in ins]
    body, caps = ctx.subgraph("body", arg_types, [vi.name for vi in g.input])
    outs = list(body.outputs)
    for o in outs:
        if type(o.type) is not TensorType:
            raise ctx.fail(f"the body's outputs must be tensors, got {o.type}")
    seq_types = [SeqType(o.type) for o in outs]
    k, nout = len(ins), len(outs)
    lp = Block([I64, BOOL] + seq_types + [v.type for v in ins] + [c.type for c in caps])
    lb = Builder.at_end(lp)
    fixed = lp.args[2 + nout:]
    elems = [lb.nn.seq_at(a, lp.args[0]) if type(a.type) is SeqType else a for a in fixed[:k]]
    mapping = dict(zip(body.args, elems + list(fixed[k:])))
    results = [mapping.get(o, o) for o in outs]
    body.terminator.erase()
    for arg, new in mapping.items():
        arg.replace_all_uses_with(new)
    for op in list(body):
        lp.append(body.detach(op))
    grown = [lb.nn.seq_insert(s, r) for s, r in zip(lp.args[2:2 + nout], results)]
    lb.create("ckir.return", [lp.args[1]] + grown)
    init = [_empty_seq(b, t) for t in seq_types]
    op = b.create("nn.loop", [b.nn.seq_length(ins[0]), b.constant(np.True_)] + init + ins + caps,
                  {"num_carried": nout}, result_types=seq_types, regions=[lp])
    return list(op.results)


# --- optionals -----------------------------------------------------------------------------------
@converter("Optional", since=15)
def optional(ctx):
    if ctx.opt(0) is not None:
        return ctx.b.nn.opt_some(ctx.x(0))
    if not ctx.has("type"):
        raise ctx.fail("an empty Optional needs the 'type' attribute")
    t = value_type(ctx.attrs["type"].tp, f"{ctx.where}: attribute 'type'")
    is_seq = type(t) is SeqType
    e = t.elem if is_seq else t
    if type(e) is not TensorType:
        raise ctx.fail(f"optionals of {t} are not supported")
    return ctx.b.nn.opt_none(dtype=e.dtype, shape=_shape_attr(e), seq=is_seq)


@converter("OptionalHasElement", since=15)
def optional_has_element(ctx):
    v = ctx.opt(0)
    if v is None:
        return ctx.b.constant(np.False_)
    if type(v.type) is not OptType:
        return ctx.b.constant(np.True_)      # a tensor or a sequence (opset 18) is present
    return ctx.b.nn.opt_has(v)


@converter("OptionalGetElement", since=15)
def optional_get_element(ctx):
    v = ctx.x(0)
    return v if type(v.type) is not OptType else ctx.b.nn.opt_get(v)


# --- recurrent layers ----------------------------------------------------------------------------
ONNX_ACTS = {n.replace("_", ""): n for n in rnn.ACTIVATIONS}
NEEDS_ALPHA = {"affine", "leaky_relu", "thresholded_relu", "scaled_tanh", "hard_sigmoid", "elu"}
NEEDS_BETA = {"affine", "scaled_tanh", "hard_sigmoid"}
ONNX_DEFAULT_ACTS = {"rnn": ["tanh"], "gru": ["sigmoid", "tanh"], "lstm": ["sigmoid", "tanh", "tanh"]}


def _activations(ctx, kind, nd):
    """Per direction: (activation names, alphas or None, betas or None). ONNX lists the
    activations of every direction in turn; alpha and beta values are consumed in that order
    by the activations that take them (as onnxruntime does)."""
    per = len(rnn.ACT_NAMES[kind])
    names = ctx.attr("activations", None)
    if names is None:
        names = ONNX_DEFAULT_ACTS[kind] * nd
    else:
        got = []
        for s in names:
            n = ONNX_ACTS.get(s.lower())
            if n is None:
                raise ctx.fail(f"activation {s!r} is not supported (supported: {', '.join(rnn.ACTIVATIONS)})")
            got.append(n)
        names = got * nd if len(got) == per and nd == 2 else got
    if len(names) != per * nd:
        raise ctx.fail(f"expects {per * nd} activations, got {len(names)}")
    al, be = ctx.attr("activation_alpha", None), ctx.attr("activation_beta", None)
    ia, ib = iter(al or []), iter(be or [])
    alphas, betas = [], []
    for n in names:
        alphas.append(next(ia, rnn.DEFAULT_ALPHA.get(n, 0.0)) if n in NEEDS_ALPHA else rnn.DEFAULT_ALPHA.get(n, 0.0))
        betas.append(next(ib, rnn.DEFAULT_BETA.get(n, 0.0)) if n in NEEDS_BETA else rnn.DEFAULT_BETA.get(n, 0.0))
    out = []
    for d in range(nd):
        sl = slice(d * per, (d + 1) * per)
        out.append((names[sl], alphas[sl] if al is not None else None, betas[sl] if be is not None else None))
    return out


def _direction(b, v, d, nd):
    """Slice d of the num_directions axis (axis 0)."""
    if nd == 1:
        return b.nn.squeeze(v, axes=[0])
    return b.nn.gather(v, b.constant(np.int64(d)), axis=0)


def _recurrent(ctx, kind):
    b = ctx.b
    x, w, r = ctx.x(0), ctx.x(1), ctx.x(2)
    bias, lens, h0 = ctx.opt(3), ctx.opt(4), ctx.opt(5)
    c0, p = (ctx.opt(6), ctx.opt(7)) if kind == "lstm" else (None, None)
    direction = ctx.attr("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ctx.fail(f"unknown direction {direction!r}")
    nd = 2 if direction == "bidirectional" else 1
    layout = ctx.attr("layout", 0)
    d = x.type.dtype
    if x.type.rank != 3 or w.type.rank != 3 or r.type.rank != 3:
        raise ctx.fail(f"expects X, W, R of rank 3, got {x.type}, {w.type}, {r.type}")
    H = ctx.attr("hidden_size", None)
    if H is None:
        H = r.type.shape[2]
        if type(H) is not int:
            raise ctx.fail("hidden_size is needed when R's last dim is not static")
    if type(w.type.shape[0]) is int and w.type.shape[0] != nd:
        raise ctx.fail(f"W's first dim is {w.type.shape[0]}, direction {direction} needs {nd}")
    G = rnn.GATES[kind]
    if layout:
        x = b.nn.transpose(x, perm=[1, 0, 2])
        h0 = None if h0 is None else b.nn.transpose(h0, perm=[1, 0, 2])
        c0 = None if c0 is None else b.nn.transpose(c0, perm=[1, 0, 2])
    if bias is None:
        bias = b.constant(np.zeros((nd, 2 * G * H), d.np))
    if kind == "lstm" and p is None:
        p = b.constant(np.zeros((nd, 3 * H), d.np))
    if lens is not None:
        known = ctx.const(4)
        T = x.type.shape[0]
        if known is not None and type(T) is int and (np.asarray(known) == T).all():
            lens = None          # every sequence is full length: nothing to mask
    zeros = b.constant(np.zeros((1, H), d.np)) if h0 is None or kind == "lstm" and c0 is None else None
    extra = {}
    if kind == "gru":
        extra["linear_before_reset"] = bool(ctx.attr("linear_before_reset", 0))
    if kind == "lstm":
        extra["input_forget"] = bool(ctx.attr("input_forget", 0))
    ys, hs, cs = [], [], []
    for di, (names, al, be) in enumerate(_activations(ctx, kind, nd)):
        operands = [x, _direction(b, w, di, nd), _direction(b, r, di, nd), _direction(b, bias, di, nd),
                    zeros if h0 is None else _direction(b, h0, di, nd)]
        if kind == "lstm":
            operands += [zeros if c0 is None else _direction(b, c0, di, nd), _direction(b, p, di, nd)]
        if lens is not None:
            operands.append(lens)
        attrs = dict(zip(rnn.ACT_NAMES[kind], names), alpha=al, beta=be, clip=ctx.attr("clip", None),
                     reverse=direction == "reverse" or di == 1, **extra)
        res = b.create(f"nn.{kind}", operands, attrs).results
        ys.append(b.nn.unsqueeze(res[0], axes=[1]))
        hs.append(b.nn.unsqueeze(res[1], axes=[0]))
        if kind == "lstm":
            cs.append(b.nn.unsqueeze(res[2], axes=[0]))
    y, h = (ys[0], hs[0]) if nd == 1 else (b.nn.concat(ys, axis=1), b.nn.concat(hs, axis=0))
    c = None if kind != "lstm" else cs[0] if nd == 1 else b.nn.concat(cs, axis=0)
    if layout:
        y = b.nn.transpose(y, perm=[2, 0, 1, 3])
        h = b.nn.transpose(h, perm=[1, 0, 2])
        c = None if c is None else b.nn.transpose(c, perm=[1, 0, 2])
    return [y, h] + ([c] if kind == "lstm" else [])


@converter("RNN", since=7)
def rnn_(ctx):
    return _recurrent(ctx, "rnn")


@converter("GRU", since=7)
def gru(ctx):
    return _recurrent(ctx, "gru")


@converter("LSTM", since=7)
def lstm(ctx):
    return _recurrent(ctx, "lstm")


# --- ai.onnx.preview.training --------------------------------------------------------------------
def _optimizer(ctx, name, n_state, attrs):
    """Inputs R, T, then X..., G..., then each state's tensors...; outputs X_new..., then each
    state's new tensors."""
    k = ctx.n_in - 2
    if k <= 0 or k % (2 + n_state):
        raise ctx.fail(f"expects R, T and {2 + n_state} groups of tensors, got {ctx.n_in} inputs")
    n = k // (2 + n_state)
    r, t = ctx.x(0), ctx.x(1)
    if t.type.dtype is not dt.i64:
        t = ctx.b.nn.cast(t, to=dt.i64)
    groups = [[ctx.x(2 + j * n + i) for j in range(2 + n_state)] for i in range(n)]
    outs = [ctx.b.create(name, [r, t] + grp, attrs).results for grp in groups]
    return [o[j] for j in range(1 + n_state) for o in outs]


@converter("Adagrad", since=1, domain=TRAINING)
def adagrad(ctx):
    return _optimizer(ctx, "train.adagrad", 1, {
        "decay_factor": ctx.attr("decay_factor", 0.0), "epsilon": ctx.attr("epsilon", 1e-6),
        "norm_coefficient": ctx.attr("norm_coefficient", 0.0)})


@converter("Adam", since=1, domain=TRAINING)
def adam(ctx):
    return _optimizer(ctx, "train.adam", 2, {
        "alpha": ctx.attr("alpha", 0.9), "beta": ctx.attr("beta", 0.999), "epsilon": ctx.attr("epsilon", 1e-6),
        "norm_coefficient": ctx.attr("norm_coefficient", 0.0),
        "norm_coefficient_post": ctx.attr("norm_coefficient_post", 0.0)})


@converter("Momentum", since=1, domain=TRAINING)
def momentum(ctx):
    mode = ctx.attr("mode")
    if mode not in ("standard", "nesterov"):
        raise ctx.fail(f"mode must be 'standard' or 'nesterov', got {mode!r}")
    return _optimizer(ctx, "train.momentum", 1, {
        "alpha": ctx.attr("alpha"), "beta": ctx.attr("beta"), "mode": mode,
        "norm_coefficient": ctx.attr("norm_coefficient")})


@converter("Gradient", since=1, domain=TRAINING)
def gradient(ctx):
    """dY/dX for the part of the graph converted so far, by ckir's autodiff (a scalar Y)."""
    from ckir.passes.autodiff import backprop
    if ctx.has("zs"):
        raise ctx.fail("the zs attribute (differentiating at given intermediate values) is not supported")
    y = ctx.scope.lookup(ctx.attr("y"))
    xs = [ctx.scope.lookup(n) for n in ctx.attr("xs")]
    if y is None or any(x is None for x in xs):
        raise ctx.fail("y and every xs name must be defined before the Gradient node")
    if type(y.type) is not TensorType or not y.type.dtype.is_float or y.type.rank != 0:
        raise ctx.fail(f"y must be a float scalar, it is {y.type}")
    ops = list(ctx.scope.block)
    ct, _ = backprop(ops, y, xs, ctx.b)
    zero = ctx.b.constant(np.zeros((), y.type.dtype.np))
    return [ct[x] if x in ct else ctx.b.nn.broadcast_like(zero, x) for x in xs]
