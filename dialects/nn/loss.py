"""Losses: negative log-likelihood over class scores (softmax cross-entropy is nn.log_softmax
followed by nn.nll_loss) and the helper its gradient is built from."""
from __future__ import annotations

import numpy as np

from ckir import dtypes as dt
from ckir.errors import ShapeError
from ckir.opdef import FLOAT, Attr, Cost, Ex, Operand, declare
from ckir.types import TensorType

from ._util import numel, same_dtype, wide

TARGET = (dt.i32, dt.i64)
REDUCTION = Attr("reduction", "str", "mean", choices=("none", "sum", "mean"),
                 doc="none: per element; sum; mean: divided by the summed weights")
IGNORE = Attr("ignore_index", "int", None, doc="targets equal to it contribute nothing")


def _check_target(x, target, what="x"):
    """x (N, C, *d) against target (N, *d): static dims must agree."""
    if x.rank < 2:
        raise ShapeError(f"{what} must be (N, C, d1, ...), got {x}")
    want = (x.shape[0],) + x.shape[2:]
    if target.rank != len(want) or any(type(a) is int and type(b) is int and a != b
                                       for a, b in zip(target.shape, want)):
        raise ShapeError(f"target {target} must have the shape (N, d1, ...) of {what} {x} without "
                         "its class dim")


def _picked(x, target, ignore_index):
    """(x[n, target[n, d], d], kept mask, safe targets): ignored positions pick class 0 and are
    not kept; a kept target outside [0, C) is an error."""
    c = x.shape[1]
    keep = np.ones(target.shape, bool) if ignore_index is None else target != ignore_index
    bad = keep & ((target < 0) | (target >= c))
    if bad.any():
        raise ShapeError(f"target {int(target[bad][0])} is out of range for {c} classes")
    safe = np.where(keep, target, 0).astype(np.int64)
    picked = np.take_along_axis(x, safe[:, None], axis=1)[:, 0]
    return picked, keep, safe


@declare
class nll_loss:
    """Negative log-likelihood loss (ONNX NegativeLogLikelihoodLoss, torch nll_loss): x holds
    log-probabilities (N, C, d1, ..., dk), target the class of each (N, d1, ..., dk) position
    (i32/i64), weight (C,) an optional weight per class (absent: 1):

        loss[n, d] = -weight[t] * x[n, t, d]      t = target[n, d]
        loss[n, d] = 0                            where t == ignore_index

    reduction "none" returns loss (target's shape); "sum" its sum; "mean" (default) its sum
    divided by the sum of weight[t] over the positions not ignored (the plain mean without
    weights; NaN when every position is ignored, as torch gives). A target that is not ignored
    must lie in [0, C): anything else is an error. f16/bf16 compute in f32.

    Gradient: x through nn.nll_loss_grad (-weight[t] * the incoming gradient at the target
    class, scaled by 1/sum(weight[t]) for "mean"); weight through nn.scatter_add over the
    targets; target gets none."""
    name = "nn.nll_loss"
    operands = (Operand("x", FLOAT), Operand("target", TARGET), Operand("weight", FLOAT, optional=True))
    attrs = (REDUCTION, IGNORE)
    traits = {"pure"}
    examples = (Ex("f32[3,5]", np.array([1, 0, 4], np.int64)),
                Ex("f32[2,4,3]", np.array([[0, 3, 2], [1, 1, 0]], np.int64), "f32[4]", reduction="none"),
                Ex("f32[2,3,2,2]", np.array([[[0, 2], [1, 1]], [[2, 0], [2, 1]]], np.int32),
                   "f32[3]", reduction="sum", ignore_index=1),
                Ex("f32[4,3]", np.array([2, -1, 0, 2], np.int64), "f32[3]", ignore_index=-1),
                Ex("f32[3,4]", np.array([3, 7, 0], np.int64), reduction="mean", ignore_index=7),
                Ex("f16[2,3]", np.array([1, 2], np.int64), "f16[3]", reduction="none"))

    def infer(x, target, weight, *, reduction, ignore_index):
        _check_target(x, target)
        if weight is not None:
            same_dtype(x, weight)
            c = x.shape[1]
            if weight.rank != 1 or type(c) is int and type(weight.shape[0]) is int and weight.shape[0] != c:
                raise ShapeError(f"weight {weight} must have one entry per class ({c})")
        return TensorType(target.shape if reduction == "none" else (), x.dtype)

    def ref(x, target, weight, *, reduction, ignore_index):
        w = wide(x)
        picked, keep, safe = _picked(w, target, ignore_index)
        wt = keep.astype(w.dtype) if weight is None else np.where(keep, wide(weight)[safe], 0).astype(w.dtype)
        loss = -picked * wt
        if reduction == "sum":
            loss = loss.sum()
        elif reduction == "mean":
            with np.errstate(all="ignore"):
                loss = loss.sum() / wt.sum()
        return np.asarray(loss).astype(x.dtype)

    def vjp(b, op, g):
        x, target = op.operands[:2]
        weight = op.operands[2] if len(op.operands) > 2 else None
        if g is None:
            return [None] * len(op.operands)
        red, ii = op.attrs["reduction"], op.attrs["ignore_index"]
        fd = x.type.dtype
        if ii is None:
            keep, safe = None, target
        else:
            kb = b.nn.ne(target, b.constant(ii, target.type.dtype.np))
            keep = b.nn.cast(kb, to=fd)
            safe = b.nn.where(kb, target, b.constant(0, target.type.dtype.np))
        wt = keep
        if weight is not None:
            wt = b.nn.gather(weight, safe)
            wt = wt if keep is None else b.nn.mul(wt, keep)
        ones = b.nn.broadcast_like(b.constant(1, fd.np), target) if wt is None else None
        per = ones if wt is None else wt                    # weight[t] per position, 0 if ignored
        if red == "none":
            ge = g
        elif red == "sum":
            ge = b.nn.broadcast_like(g, per)
        else:
            ge = b.nn.broadcast_like(b.nn.div(g, b.nn.sum(per)), per)
        dx = b.nn.nll_loss_grad(b.nn.mul(ge, per), target, x, ignore_index=ii)
        if weight is None:
            return [dx, None]
        # d/dweight[c] sums over the positions whose target is c
        q = b.nn.nll_loss(x, target, reduction="none", ignore_index=ii)      # -x[t], 0 if ignored
        if red == "mean":
            q = b.nn.sub(q, op.results[0])
            q = q if keep is None else b.nn.mul(q, keep)
        zeros = b.nn.broadcast_like(b.constant(0, fd.np), weight)
        return [dx, None, b.nn.scatter_add(zeros, safe, b.nn.mul(ge, q))]

    def cost(op, bind):
        t = op.operands[1].type
        return Cost(2 * numel(t, bind), sum(v.type.nbytes(bind) for v in op.operands[1:])
                    + t.with_dtype(op.operands[0].type.dtype).nbytes(bind), op.results[0].type.nbytes(bind))


@declare
class nll_loss_grad:
    """The gradient of nn.nll_loss with respect to x, given per position the coefficient
    coef[n, d] (the incoming gradient times weight[t], already divided by the summed weights for
    "mean"): a tensor shaped like `like` (only its shape is read: nll_loss's x, (N, C, *d)) with

        y[n, c, d] = -coef[n, d]   where c == target[n, d] != ignore_index,   0 elsewhere

    A target that is not ignored must lie in [0, C). Linear in coef: its gradient is nn.nll_loss
    of the cotangent with reduction "none"."""
    name = "nn.nll_loss_grad"
    operands = (Operand("coef", FLOAT), Operand("target", TARGET),
                Operand("like", FLOAT, doc="only its shape is read"))
    attrs = (IGNORE,)
    traits = {"pure"}
    examples = (Ex("f32[3]", np.array([1, 0, 4], np.int64), "f32[3,5]"),
                Ex("f32[2,3]", np.array([[0, 3, 2], [1, 1, 0]], np.int32), "f32[2,4,3]", ignore_index=3),
                Ex("f32[2]", np.array([-2, 1], np.int64), "f32[2,2]", ignore_index=-2))

    def infer(coef, target, like, *, ignore_index):
        _check_target(like, target, "like")
        if coef.shape != target.shape and (coef.rank != target.rank or any(
                type(a) is int and type(c) is int and a != c for a, c in zip(coef.shape, target.shape))):
            raise ShapeError(f"coef {coef} must have target's shape {target}")
        return TensorType(like.shape, coef.dtype)

    def ref(coef, target, like, *, ignore_index):
        y = np.zeros(like.shape, coef.dtype)
        _, keep, safe = _picked(y, target, ignore_index)
        np.put_along_axis(y, safe[:, None], np.where(keep, -coef, 0).astype(coef.dtype)[:, None], axis=1)
        return y

    def vjp(b, op, h):
        if h is None:
            return [None, None, None]
        return [b.nn.nll_loss(h, op.operands[1], reduction="none", ignore_index=op.attrs["ignore_index"]),
                None, None]

    def cost(op, bind):
        y = op.results[0].type
        return Cost(numel(op.operands[0].type, bind),
                    op.operands[0].type.nbytes(bind) + op.operands[1].type.nbytes(bind), y.nbytes(bind))


@declare
class cross_entropy:
    """Softmax cross-entropy of class scores, as torch.nn.functional.cross_entropy: logits
    (N, C, d1, ...), target (N, d1, ...) class indices (i32/i64):

        logp = log_softmax(logits, axis=1)
        loss[n, d] = -(1 - s) * logp[n, t, d] - s * mean_c(logp[n, c, d])    t = target[n, d]
        loss[n, d] = 0                                                       where t == ignore_index

    with s = label_smoothing. reduction "mean" (default) divides the sum by the number of
    positions not ignored (NaN when none is); "sum"; "none" keeps (N, d1, ...). A kept target
    outside [0, C) is an error. Computed in f64 for f16/bf16/f32 scores and rounded once.

    Gradient for the logits: (softmax(logits) - (1 - s) * onehot(t) - s / C) times the incoming
    gradient (divided by the count for "mean"), zero at ignored positions."""
    name = "nn.cross_entropy"
    operands = (Operand("logits", FLOAT), Operand("target", TARGET))
    attrs = (Attr("reduction", "str", "mean", choices=("none", "sum", "mean")),
             Attr("ignore_index", "int", -100, doc="targets equal to it contribute nothing"),
             Attr("label_smoothing", "float", 0.0, doc="weight s of the uniform target, in [0, 1]"))
    traits = {"pure"}
    examples = (Ex("f32[4,5]", np.array([1, 0, 4, 2], np.int64)),
                Ex("f32[2,3,4]", np.array([[0, 2, 1, 1], [2, 2, 0, 1]], np.int64), reduction="none"),
                Ex("f32[5,3]", np.array([2, -100, 0, 1, -100], np.int64), label_smoothing=0.1),
                Ex("f32[3,4]", np.array([3, 1, 0], np.int32), reduction="sum", label_smoothing=0.3,
                   ignore_index=1))

    def infer(logits, target, *, reduction, ignore_index, label_smoothing):
        _check_target(logits, target, "logits")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ShapeError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        if reduction == "none":
            return TensorType(target.shape, logits.dtype)
        return TensorType((), logits.dtype)

    def ref(logits, target, *, reduction, ignore_index, label_smoothing):
        x = logits.astype(np.float64)
        z = x - x.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        picked, keep, _ = _picked(logp, target, ignore_index)
        loss = -(1 - label_smoothing) * picked - label_smoothing * logp.mean(axis=1)
        loss = np.where(keep, loss, 0.0)
        if reduction == "sum":
            loss = loss.sum()
        elif reduction == "mean":
            n = keep.sum()
            loss = loss.sum() / n if n else np.float64(np.nan)
        return np.asarray(loss).astype(logits.dtype)

    def vjp(b, op, g):
        if g is None:
            return [None, None]
        x, t = op.operands
        a = op.attrs
        s, red = a["label_smoothing"], a["reduction"]
        keep = b.nn.cast(b.nn.ne(t, b.constant(np.asarray(a["ignore_index"], t.type.dtype.np))), to=x.type.dtype)
        w = b.nn.mul(keep, g)                                   # per position (g broadcasts)
        if red == "mean":
            w = b.nn.div(w, b.nn.sum(keep))
        wx = b.nn.unsqueeze(w, axes=[1])                        # over the class axis
        c = b.nn.size(x, axes=[1], dtype=x.type.dtype)
        grad = b.nn.mul(b.nn.sub(b.nn.softmax(x, axis=1), b.nn.div(s, c)), wx)
        onehot = b.nn.nll_loss_grad(b.nn.mul(w, 1.0 - s), b.nn.where(b.nn.cast(keep, to=dt.bool_), t, b.nn.mul(t, 0)), x)
        return [b.nn.add(grad, onehot), None]

    def cost(op, bind):
        x = op.operands[0].type
        return Cost(12 * numel(x, bind), x.nbytes(bind) + op.operands[1].type.nbytes(bind),
                    op.results[0].type.nbytes(bind))


@declare
class mse_loss:
    """Mean squared error, as torch.nn.functional.mse_loss: (a - b)^2 with numpy broadcasting,
    reduced by "mean" (default), "sum" or "none"."""
    name = "nn.mse_loss"
    operands = (Operand("a", FLOAT), Operand("b", FLOAT))
    attrs = (Attr("reduction", "str", "mean", choices=("none", "sum", "mean")),)
    traits = {"pure"}
    examples = (Ex("f32[3,4]", "f32[3,4]"), Ex("f32[2,3]", "f32[3]", reduction="sum"),
                Ex("f32[5]", "f32[5]", reduction="none"))

    def infer(a, b, *, reduction):
        from ckir.types import broadcast_shapes
        same_dtype(a, b)
        shape = broadcast_shapes(a.shape, b.shape)
        return TensorType(shape if reduction == "none" else (), a.dtype)

    def ref(a, b, *, reduction):
        d = wide(a).astype(np.float64) - wide(b).astype(np.float64)
        sq = d * d
        out = sq if reduction == "none" else (sq.sum() if reduction == "sum" else sq.mean())
        return np.asarray(out).astype(a.dtype)

    def vjp(bld, op, g):
        from ._util import unbroadcast
        if g is None:
            return [None, None]
        a, c = op.operands
        d = bld.nn.sub(a, c)
        scale = bld.nn.mul(g, 2.0)
        if op.attrs["reduction"] == "mean":
            scale = bld.nn.div(scale, bld.nn.size(d, dtype=a.type.dtype))
        gd = bld.nn.mul(d, scale)
        return [unbroadcast(bld, gd, a), unbroadcast(bld, bld.nn.neg(gd), c)]

    def cost(op, bind):
        a = op.operands[0].type
        return Cost(3 * numel(a, bind), a.nbytes(bind) + op.operands[1].type.nbytes(bind),
                    op.results[0].type.nbytes(bind))
