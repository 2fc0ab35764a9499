"""Recurrent layers: nn.rnn, nn.gru, nn.lstm (one direction of ONNX RNN, GRU, LSTM) and their
gradient ops. The conventions every one of them follows are in COMMON_DOC (part of each op's
doc). A bidirectional layer is two ops, one with `reverse`.
"""
from __future__ import annotations

import numpy as np
from scipy import special

from ckir import dtypes as dt
from ckir.errors import ShapeError
from ckir.opdef import FLOAT, Arg, Attr, Cost, Ex, Operand, OpDef, Result, not_differentiable, register
from ckir.types import TensorType, concrete

from ._util import wide

COMMON_DOC = """\
Layout is time-major: x [T, B, I]. Weights keep ONNX's gate order and layout: w [G*H, I],
r [G*H, H], b [2*G*H] = (input biases, recurrence biases), G = 1 (rnn), 3 (gru: z, r, h) or 4
(lstm: i, o, f, c). The initial state h0 (and c0) broadcasts to [B, H]: [1, H] zeros stand for
"no initial state". Steps run t = 0..T-1, or T-1..0 with `reverse` (y stays time-aligned).

With `seq_lens` ([B], i32/i64, each in [0, T]), batch row b runs steps 0..L-1 (reverse: L-1
down to 0) only: y is 0 at its other steps and its final state is the one after its last step
(zeros when L = 0), as in onnxruntime.

Activations (`f`, `g`, `h`) are ONNX's, in lower case with underscores: relu, tanh, sigmoid,
affine (alpha x + beta), leaky_relu, thresholded_relu (x if x > alpha else 0), scaled_tanh
(alpha tanh(beta x)), hard_sigmoid (clamp(alpha x + beta, 0, 1)), elu, softsign, softplus.
`alpha`/`beta` hold one value per activation, in f, g, h order; absent, each activation takes
its default (leaky_relu 0.01; thresholded_relu 1; elu 1; hard_sigmoid 0.2, 0.5; affine 1, 0;
scaled_tanh 1, 1). `clip` clamps every gate's pre-activation to [-clip, clip]. Computed in f32
for f16/bf16."""

ACTIVATIONS = ("tanh", "sigmoid", "relu", "affine", "leaky_relu", "thresholded_relu", "scaled_tanh",
               "hard_sigmoid", "elu", "softsign", "softplus")
DEFAULT_ALPHA = {"affine": 1.0, "leaky_relu": 0.01, "thresholded_relu": 1.0, "scaled_tanh": 1.0,
                 "hard_sigmoid": 0.2, "elu": 1.0}
DEFAULT_BETA = {"affine": 0.0, "scaled_tanh": 1.0, "hard_sigmoid": 0.5}
LENS = (dt.i32, dt.i64)
GATES = {"rnn": 1, "gru": 3, "lstm": 4}
ACT_NAMES = {"rnn": ("f",), "gru": ("f", "g"), "lstm": ("f", "g", "h")}
ACT_DEFAULTS = {"f": "sigmoid", "g": "tanh", "h": "tanh"}


# --- activations and their derivatives (numpy) ---------------------------------------------
def act(name, a, al, be):
    if name == "tanh":
        return np.tanh(a)
    if name == "sigmoid":
        return special.expit(a)
    if name == "relu":
        return np.maximum(a, 0)
    if name == "affine":
        return al * a + be
    if name == "leaky_relu":
        return np.where(a >= 0, a, al * a)
    if name == "thresholded_relu":
        return np.where(a > al, a, 0)
    if name == "scaled_tanh":
        return al * np.tanh(be * a)
    if name == "hard_sigmoid":
        return np.clip(al * a + be, 0, 1)
    if name == "elu":
        return np.where(a >= 0, a, al * np.expm1(np.minimum(a, 0)))
    if name == "softsign":
        return a / (1 + np.abs(a))
    if name == "softplus":
        return np.logaddexp(0, a)
    raise ShapeError(f"unknown activation {name!r}")


def act_grad(name, a, y, al, be):
    """d act(a) / da, given a and y = act(a)."""
    if name == "tanh":
        return 1 - y * y
    if name == "sigmoid":
        return y * (1 - y)
    if name == "relu":
        return (a > 0).astype(a.dtype)
    if name == "affine":
        return np.full_like(a, al)
    if name == "leaky_relu":
        return np.where(a >= 0, 1, al).astype(a.dtype)
    if name == "thresholded_relu":
        return (a > al).astype(a.dtype)
    if name == "scaled_tanh":
        t = np.tanh(be * a)
        return al * be * (1 - t * t)
    if name == "hard_sigmoid":
        u = al * a + be
        return np.where((u > 0) & (u < 1), al, 0).astype(a.dtype)
    if name == "elu":
        return np.where(a >= 0, 1, y + al).astype(a.dtype)
    if name == "softsign":
        return 1 / (1 + np.abs(a)) ** 2
    if name == "softplus":
        return special.expit(a)
    raise ShapeError(f"unknown activation {name!r}")


class _Acts:
    """The activations of one op with their alpha/beta resolved."""

    def __init__(self, kind, attrs):
        names = [attrs[k] for k in ACT_NAMES[kind]]
        n = len(names)
        al, be = attrs["alpha"], attrs["beta"]
        if al is not None and len(al) != n or be is not None and len(be) != n:
            raise ShapeError(f"alpha and beta need one value per activation ({n})")
        self.fns = [(nm, al[i] if al is not None else DEFAULT_ALPHA.get(nm, 0.0),
                     be[i] if be is not None else DEFAULT_BETA.get(nm, 0.0)) for i, nm in enumerate(names)]

    def __call__(self, i, a):
        nm, al, be = self.fns[i]
        return act(nm, a, al, be)

    def grad(self, i, a, y):
        nm, al, be = self.fns[i]
        return act_grad(nm, a, y, al, be)


def _clip(a, c):
    """(a clamped to [-c, c], mask of the elements it kept) — mask None without a clip."""
    if c is None:
        return a, None
    return np.clip(a, -c, c), np.abs(a) <= c


def _m(g, mask):
    return g if mask is None else g * mask


# --- the recurrences -----------------------------------------------------------------------
def _steps(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def _valid(lens, T, B):
    if lens is None:
        return None
    lens = np.asarray(lens).reshape(-1)
    if lens.shape != (B,):
        raise ShapeError(f"seq_lens has shape {list(np.shape(lens))}, expects [{B}]")
    if (lens < 0).any() or (lens > T).any():
        raise ShapeError(f"seq_lens {lens.tolist()} must be in [0, {T}]")
    return lens


def _cell_rnn(acts, clip, xw, h, c, R, rb, p, opts):
    a, mask = _clip(xw + h @ R.T + rb, clip)
    hn = acts(0, a)
    return hn, None, (a, mask, hn)


def _back_rnn(acts, clip, cache, gh, gc, h, c, R, rb, p, opts, acc):
    a, mask, hn = cache
    da = _m(gh * acts.grad(0, a, hn), mask)
    acc["r"] += da.T @ h
    acc["rb"] += da.sum(0)
    return da, da @ R, None


def _cell_gru(acts, clip, xw, h, c, R, rb, p, opts):
    H = h.shape[1]
    Rz, Rr, Rh = R[:H], R[H:2 * H], R[2 * H:]
    xz, xr, xh = xw[:, :H], xw[:, H:2 * H], xw[:, 2 * H:]
    az, mz = _clip(xz + h @ Rz.T + rb[:H], clip)
    ar, mr = _clip(xr + h @ Rr.T + rb[H:2 * H], clip)
    z, r = acts(0, az), acts(0, ar)
    if opts["linear_before_reset"]:
        hr = h @ Rh.T + rb[2 * H:]
        ah, mh = _clip(xh + r * hr, clip)
    else:
        hr = None
        ah, mh = _clip(xh + (r * h) @ Rh.T + rb[2 * H:], clip)
    n = acts(1, ah)
    return (1 - z) * n + z * h, None, (az, mz, ar, mr, ah, mh, z, r, n, hr)


def _back_gru(acts, clip, cache, gh, gc, h, c, R, rb, p, opts, acc):
    H = h.shape[1]
    Rz, Rr, Rh = R[:H], R[H:2 * H], R[2 * H:]
    az, mz, ar, mr, ah, mh, z, r, n, hr = cache
    dz = gh * (h - n)
    dah = _m(gh * (1 - z) * acts.grad(1, ah, n), mh)
    dh = gh * z
    if opts["linear_before_reset"]:
        dr = dah * hr
        dhr = dah * r
        acc["r"][2 * H:] += dhr.T @ h
        acc["rb"][2 * H:] += dhr.sum(0)
        dh = dh + dhr @ Rh
    else:
        acc["r"][2 * H:] += dah.T @ (r * h)
        acc["rb"][2 * H:] += dah.sum(0)
        drh = dah @ Rh
        dr = drh * h
        dh = dh + drh * r
    daz = _m(dz * acts.grad(0, az, z), mz)
    dar = _m(dr * acts.grad(0, ar, r), mr)
    acc["r"][:H] += daz.T @ h
    acc["r"][H:2 * H] += dar.T @ h
    acc["rb"][:H] += daz.sum(0)
    acc["rb"][H:2 * H] += dar.sum(0)
    dh = dh + daz @ Rz + dar @ Rr
    return np.concatenate([daz, dar, dah], axis=1), dh, None


def _cell_lstm(acts, clip, xw, h, c, R, rb, p, opts):
    H = h.shape[1]
    g = xw + h @ R.T + rb
    pi, po, pf = p[:H], p[H:2 * H], p[2 * H:]
    ai, mi = _clip(g[:, :H] + pi * c, clip)
    i = acts(0, ai)
    if opts["input_forget"]:
        af, mf, f = None, None, 1 - i
    else:
        af, mf = _clip(g[:, 2 * H:3 * H] + pf * c, clip)
        f = acts(0, af)
    ac, mc = _clip(g[:, 3 * H:], clip)
    cc = acts(1, ac)
    cn = f * c + i * cc
    ao, mo = _clip(g[:, H:2 * H] + po * cn, clip)
    o = acts(0, ao)
    hc = acts(2, cn)
    return o * hc, cn, (ai, mi, i, af, mf, f, ac, mc, cc, cn, ao, mo, o, hc)


def _back_lstm(acts, clip, cache, gh, gc, h, c, R, rb, p, opts, acc):
    H = h.shape[1]
    ai, mi, i, af, mf, f, ac, mc, cc, cn, ao, mo, o, hc = cache
    pi, po, pf = p[:H], p[H:2 * H], p[2 * H:]
    dao = _m(gh * hc * acts.grad(0, ao, o), mo)
    dcn = gc + gh * o * acts.grad(2, cn, hc) + dao * po
    acc["p"][H:2 * H] += (dao * cn).sum(0)
    di, df, dcc = dcn * cc, dcn * c, dcn * i
    dc = dcn * f
    if opts["input_forget"]:
        di = di - df
        daf = np.zeros_like(di)
    else:
        daf = _m(df * acts.grad(0, af, f), mf)
    dai = _m(di * acts.grad(0, ai, i), mi)
    dac = _m(dcc * acts.grad(1, ac, cc), mc)
    dc = dc + dai * pi + daf * pf
    acc["p"][:H] += (dai * c).sum(0)
    acc["p"][2 * H:] += (daf * c).sum(0)
    da = np.concatenate([dai, dao, daf, dac], axis=1)
    acc["r"] += da.T @ h
    acc["rb"] += da.sum(0)
    return da, da @ R, dc


CELLS = {"rnn": (_cell_rnn, _back_rnn), "gru": (_cell_gru, _back_gru), "lstm": (_cell_lstm, _back_lstm)}


def run(kind, x, w, r, b, h0, c0, p, lens, attrs, grads=None):
    """Forward (y, h, c) of one direction; with `grads` = (dy, dh, dc), the gradients
    (dx, dw, dr, db, dh0, dc0, dp) instead. Computed in f32 for f16/bf16."""
    cell, back = CELLS[kind]
    dtype = x.dtype
    x, w, r, b, h0 = wide(x), wide(w), wide(r), wide(b), wide(h0)
    c0 = None if c0 is None else wide(c0)
    p = None if p is None else wide(p)
    T, B, _ = x.shape
    H = r.shape[1]
    GH = w.shape[0]
    acts = _Acts(kind, attrs)
    clip, reverse = attrs["clip"], attrs["reverse"]
    lens = _valid(lens, T, B)
    xw = x @ w.T + b[:GH]
    rb = b[GH:]
    h = np.broadcast_to(h0, (B, H)).astype(x.dtype)
    c = None if c0 is None else np.broadcast_to(c0, (B, H)).astype(x.dtype)
    y = np.zeros((T, B, H), x.dtype)
    tape = []
    for t in _steps(T, reverse):
        hn, cn, cache = cell(acts, clip, xw[t], h, c, r, rb, p, attrs)
        if lens is not None:
            keep = (t < lens)[:, None]
            hn = np.where(keep, hn, h)
            cn = None if cn is None else np.where(keep, cn, c)
            y[t] = np.where(keep, hn, 0)
        else:
            y[t] = hn
        if grads is not None:
            tape.append((t, h, c, cache))
        h, c = hn, cn
    alive = None if lens is None else (lens > 0)[:, None]
    if grads is None:
        if alive is not None:       # a sequence of length 0 ends in zero states (as onnxruntime)
            h = np.where(alive, h, 0)
            c = None if c is None else np.where(alive, c, 0)
        out = (y, h) if c is None else (y, h, c)
        return tuple(v.astype(dtype) for v in out)
    dy, dh, dc = (None if g is None else wide(g) for g in grads)
    acc = {"r": np.zeros_like(r), "rb": np.zeros_like(rb), "p": None if p is None else np.zeros_like(p)}
    dxw = np.zeros_like(xw)
    dh = dh.astype(x.dtype, copy=True)
    dc = None if c is None else dc.astype(x.dtype, copy=True)
    if alive is not None:
        dh = np.where(alive, dh, 0)
        dc = None if dc is None else np.where(alive, dc, 0)
    for t, h, c, cache in reversed(tape):
        gh = dh + dy[t]
        if lens is None:
            dxw[t], dh, dcp = back(acts, clip, cache, gh, dc, h, c, r, rb, p, attrs, acc)
            dc = dcp
            continue
        keep = (t < lens)[:, None]
        ghk = np.where(keep, gh, 0)
        gck = None if dc is None else np.where(keep, dc, 0)
        dxw[t], dhp, dcp = back(acts, clip, cache, ghk, gck, h, c, r, rb, p, attrs, acc)
        dh = np.where(keep, dhp, dh)
        dc = None if dc is None else np.where(keep, dcp, dc)
    dx = dxw @ w
    dw = np.einsum("tbg,tbi->gi", dxw, x)
    db = np.concatenate([dxw.sum((0, 1)), acc["rb"]])
    dh0 = _sum_to(dh, h0.shape)
    out = [dx, dw, acc["r"], db, dh0]
    if c0 is not None:
        out += [_sum_to(dc, c0.shape), acc["p"]]
    return tuple(v.astype(dtype) for v in out)


def _sum_to(g, shape):
    return g.sum(0, keepdims=True) if shape[0] == 1 and g.shape[0] != 1 else g


# --- declarations --------------------------------------------------------------------------
def _operands(kind):
    ops = [Operand("x", FLOAT, doc="[T, B, I]"), Operand("w", FLOAT, doc="[G*H, I]"),
           Operand("r", FLOAT, doc="[G*H, H]"), Operand("b", FLOAT, doc="[2*G*H]"),
           Operand("h0", FLOAT, doc="broadcasts to [B, H]")]
    if kind == "lstm":
        ops += [Operand("c0", FLOAT, doc="broadcasts to [B, H]"), Operand("p", FLOAT, doc="peepholes [3*H]: i, o, f")]
    return ops + [Operand("seq_lens", LENS, optional=True, doc="[B]")]


def _attrs(kind):
    out = [Attr(k, "str", "tanh" if kind == "rnn" else ACT_DEFAULTS[k], choices=ACTIVATIONS)
           for k in ACT_NAMES[kind]]
    out += [Attr("alpha", "floats", None, doc="one per activation"),
            Attr("beta", "floats", None, doc="one per activation"),
            Attr("clip", "float", None, doc="clamp of the gates' pre-activations"),
            Attr("reverse", "bool", False, doc="run from the last step to the first")]
    if kind == "gru":
        out.append(Attr("linear_before_reset", "bool", False))
    if kind == "lstm":
        out.append(Attr("input_forget", "bool", False, doc="couple the gates: f = 1 - i"))
    return tuple(out)


def _split(kind, operands):
    """(x, w, r, b, h0, c0, p, seq_lens) from an op's grouped operands."""
    if kind == "lstm":
        x, w, r, b, h0, c0, p, lens = operands
    else:
        (x, w, r, b, h0, lens), c0, p = operands, None, None
    return x, w, r, b, h0, c0, p, lens


def _infer(kind, operands):
    x, w, r, b, h0, c0, p, lens = _split(kind, operands)
    d = x.dtype
    for nm, t in (("w", w), ("r", r), ("b", b), ("h0", h0), ("c0", c0), ("p", p)):
        if t is not None and t.dtype is not d:
            raise ShapeError(f"{nm} is {t.dtype}, x is {d}")
    if x.rank != 3 or w.rank != 2 or r.rank != 2 or b.rank != 1:
        raise ShapeError(f"expects x [T, B, I], w [G*H, I], r [G*H, H], b [2*G*H]; got {x}, {w}, {r}, {b}")
    T, B, I = x.shape
    H = r.shape[1]
    G = GATES[kind]

    def need(what, have, want):
        if type(have) is int and type(want) is int and have != want:
            raise ShapeError(f"{what} is {have}, expects {want}")
    need("w's last dim", w.shape[1], I)
    if type(H) is int:
        need("w's first dim", w.shape[0], G * H)
        need("r's first dim", r.shape[0], G * H)
        need("b's size", b.shape[0], 2 * G * H)
    for nm, t in (("h0", h0), ("c0", c0)):
        if t is None:
            continue
        if t.rank != 2:
            raise ShapeError(f"{nm} must be [B, H] or [1, H], got {t}")
        if t.shape[0] != 1:
            need(f"{nm}'s first dim", t.shape[0], B)
        need(f"{nm}'s last dim", t.shape[1], H)
    if p is not None:
        if p.rank != 1:
            raise ShapeError(f"p must be [3*H], got {p}")
        if type(H) is int:
            need("p's size", p.shape[0], 3 * H)
    if lens is not None:
        if lens.rank != 1:
            raise ShapeError(f"seq_lens must be [B], got {lens}")
        need("seq_lens' size", lens.shape[0], B)
    y, h = TensorType((T, B, H), d), TensorType((B, H), d)
    return (y, h, h) if kind == "lstm" else (y, h)


def _flops(kind, x, r, bind):
    T, B, I = concrete(x.shape, bind)
    H = concrete(r.shape, bind)[1]
    G = GATES[kind]
    return T * B * (2 * G * H * (I + H) + 10 * G * H)


def _declare(kind, doc, examples, grad_examples):
    ops, attrs = _operands(kind), _attrs(kind)
    n_res = 3 if kind == "lstm" else 2
    res = (Result("y", doc="[T, B, H]"), Result("h", doc="the final state [B, H]"))
    if kind == "lstm":
        res += (Result("c", doc="the final cell [B, H]"),)

    def infer(*operands, **attrs):
        return _infer(kind, operands)

    def ref(*operands, **attrs):
        x, w, r, b, h0, c0, p, lens = _split(kind, operands)
        return run(kind, x, w, r, b, h0, c0, p, lens, attrs)

    def vjp(bld, op, *grads):
        if all(g is None for g in grads):
            return [None] * len(op.operands)
        cots = [g if g is not None else bld.nn.broadcast_like(bld.constant(np.zeros((), r.type.dtype.np)), r)
                for g, r in zip(grads, op.results)]
        gs = bld.create(f"nn.{kind}_grad", cots + list(op.operands), dict(op.attrs)).results
        return list(gs) + [None] * (len(op.operands) - len(gs))

    def cost(op, bind):
        x, r = op.operands[0].type, op.operands[2].type
        return Cost(_flops(kind, x, r, bind), sum(v.type.nbytes(bind) for v in op.operands),
                    sum(v.type.nbytes(bind) for v in op.results))

    register(OpDef(f"nn.{kind}", doc=doc + "\n\n" + COMMON_DOC, operands=ops, results=res, attrs=attrs, traits={"pure"},
                   infer=infer, ref=ref, vjp=vjp, cost=cost, examples=examples))

    cot_ops = [Operand("dy", FLOAT), Operand("dh", FLOAT)] + ([Operand("dc", FLOAT)] if kind == "lstm" else [])
    names = ["x", "w", "r", "b", "h0"] + (["c0", "p"] if kind == "lstm" else [])
    gres = tuple(Result(f"d{n}") for n in names)

    def ginfer(*operands, **attrs):
        cots, fwd = operands[:n_res], operands[n_res:]
        outs = _infer(kind, fwd)
        for i, (c, t) in enumerate(zip(cots, outs)):
            if c.dtype is not t.dtype or c.rank != t.rank or any(
                    type(a) is int and type(bb) is int and a != bb for a, bb in zip(c.shape, t.shape)):
                raise ShapeError(f"cotangent {res[i].name} is {c}, the result is {t}")
        return tuple(t for t in fwd[:len(names)])

    def gref(*operands, **attrs):
        cots, fwd = operands[:n_res], operands[n_res:]
        x, w, r, b, h0, c0, p, lens = _split(kind, fwd)
        dy, dh = cots[0], cots[1]
        dc = cots[2] if kind == "lstm" else None
        return run(kind, x, w, r, b, h0, c0, p, lens, attrs, grads=(dy, dh, dc))

    def gcost(op, bind):
        x, r = op.operands[n_res].type, op.operands[n_res + 2].type
        return Cost(2 * _flops(kind, x, r, bind), sum(v.type.nbytes(bind) for v in op.operands),
                    sum(v.type.nbytes(bind) for v in op.results))

    register(OpDef(
        f"nn.{kind}_grad",
        doc=f"The gradients of nn.{kind} (backpropagation through time): given the cotangents of "
            f"its results ({', '.join(r.name for r in res)}) and its operands, the gradients of "
            f"{', '.join(names)} (each shaped like its operand; h0"
            f"{' and c0' if kind == 'lstm' else ''} summed over the batch when given as [1, H]). "
            "The forward pass is recomputed.",
        operands=cot_ops + ops, results=gres, attrs=attrs, traits={"pure"}, infer=ginfer, ref=gref,
        vjp=not_differentiable("second-order gradients of recurrent layers are not implemented"),
        cost=gcost, examples=grad_examples))


_LENS = np.array([3, 1], np.int32)

_declare("rnn", """\
One direction of a simple recurrent layer (ONNX RNN): for each step t,
h_t = f(clip(x_t w^T + b[:H] + h_{t-1} r^T + b[H:])), y[t] = h_t. Results: y [T, B, H] and the
final state h [B, H]. f defaults to tanh.""",
         examples=(Ex("f32[3,2,4]", "f32[5,4]", "f32[5,5]", "f32[10]", "f32[2,5]"),
                   Ex("f32[4,2,3]", "f32[2,3]", "f32[2,2]", "f32[4]", "f32[1,2]", _LENS, reverse=True),
                   Ex("f32[3,2,2]", "f32[3,2]", "f32[3,3]", "f32[6]", "f32[1,3]", f="softsign"),
                   Ex("f32[2,1,2]", "f32[2,2]", "f32[2,2]", "f32[4]", "f32[1,2]", f="scaled_tanh",
                      alpha=[0.8], beta=[1.5], clip=2.0)),
         grad_examples=(Ex("f32[3,2,5]", "f32[2,5]", "f32[3,2,4]", "f32[5,4]", "f32[5,5]", "f32[10]",
                           "f32[2,5]"),))

_declare("gru", """\
One direction of a gated recurrent unit layer (ONNX GRU), gates z, r, h: with xw = x_t w^T +
b[:3H] split into (xz, xr, xh) and rb = b[3H:] likewise,
z = f(xz + h_{t-1} Rz^T + rbz), r = f(xr + h_{t-1} Rr^T + rbr),
n = g(xh + (r * h_{t-1}) Rh^T + rbh), or with `linear_before_reset`
n = g(xh + r * (h_{t-1} Rh^T + rbh)); h_t = (1 - z) * n + z * h_{t-1}, y[t] = h_t. Results: y
[T, B, H] and the final state h [B, H]. f, g default to sigmoid, tanh.""",
         examples=(Ex("f32[3,2,4]", "f32[9,4]", "f32[9,3]", "f32[18]", "f32[2,3]"),
                   Ex("f32[3,2,2]", "f32[6,2]", "f32[6,2]", "f32[12]", "f32[1,2]", np.array([2, 0], np.int64),
                      linear_before_reset=True, reverse=True),
                   Ex("f32[2,3,2]", "f32[6,2]", "f32[6,2]", "f32[12]", "f32[3,2]", f="hard_sigmoid",
                      g="softplus", alpha=[0.3, 0.0], beta=[0.4, 0.0]),
                   Ex("f32[2,1,3]", "f32[6,3]", "f32[6,2]", "f32[12]", "f32[1,2]", g="elu", clip=1.5,
                      linear_before_reset=True)),
         grad_examples=(Ex("f32[3,2,3]", "f32[2,3]", "f32[3,2,4]", "f32[9,4]", "f32[9,3]", "f32[18]",
                           "f32[2,3]"),))

_declare("lstm", """\
One direction of a long short-term memory layer (ONNX LSTM), gates i, o, f, c: with g = x_t w^T +
b[:4H] + h_{t-1} r^T + b[4H:] split into (gi, go, gf, gc) and peepholes p = (pi, po, pf),
i = f(gi + pi * c_{t-1}), forget = f(gf + pf * c_{t-1}) (1 - i with `input_forget`),
c_t = forget * c_{t-1} + i * g(gc), o = f(go + po * c_t), h_t = o * h(c_t), y[t] = h_t.
Results: y [T, B, H], the final state h [B, H] and the final cell c [B, H]. f, g, h default to
sigmoid, tanh, tanh.""",
         examples=(Ex("f32[3,2,4]", "f32[12,4]", "f32[12,3]", "f32[24]", "f32[2,3]", "f32[2,3]", "f32[9]"),
                   Ex("f32[4,2,2]", "f32[8,2]", "f32[8,2]", "f32[16]", "f32[1,2]", "f32[1,2]", "f32[6]",
                      _LENS, reverse=True),
                   Ex("f32[2,2,3]", "f32[8,3]", "f32[8,2]", "f32[16]", "f32[2,2]", "f32[1,2]", "f32[6]",
                      input_forget=True, h="softsign", clip=3.0),
                   Ex("f32[2,1,2]", Arg("f32[4,2]", -0.5, 0.5), "f32[4,1]", "f32[8]", "f32[1,1]",
                      "f32[1,1]", "f32[3]", f="hard_sigmoid", g="affine", h="elu", alpha=[0.2, 0.7, 1.0],
                      beta=[0.5, 0.1, 0.0])),
         grad_examples=(Ex("f32[3,2,3]", "f32[2,3]", "f32[2,3]", "f32[3,2,4]", "f32[12,4]", "f32[12,3]",
                           "f32[24]", "f32[2,3]", "f32[2,3]", "f32[9]"),))
