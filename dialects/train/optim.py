"""Optimizer update ops (ONNX ai.onnx.preview.training Adagrad, Adam, Momentum), one tensor each.

Each takes the learning rate `r` (a float scalar of any float dtype), the update count `t` (an
i64 scalar) and same-shaped tensors (the parameter x, its gradient g, its optimizer state), and
returns the updated parameter and state. The arithmetic is in x's dtype (f32 for f16/bf16).
"""
from __future__ import annotations

import numpy as np

from ckir import dtypes as dt
from ckir.dialects.nn._util import wide
from ckir.errors import ShapeError
from ckir.opdef import FLOAT, Arg, Attr, Cost, Ex, Operand, Result, declare, not_differentiable
from ckir.types import TensorType, concrete

NO_VJP = not_differentiable("an optimizer step consumes gradients; nothing differentiates through it")


def _scalars(r: TensorType, t: TensorType):
    for nm, v in (("r", r), ("t", t)):
        if any(type(d) is int and d != 1 for d in v.shape):
            raise ShapeError(f"{nm} must hold one element, got {v}")


def _same(x: TensorType, **others) -> TensorType:
    for nm, v in others.items():
        if v.dtype is not x.dtype:
            raise ShapeError(f"{nm} is {v.dtype}, x is {x.dtype}")
        if v.rank != x.rank or any(type(a) is int and type(b) is int and a != b
                                   for a, b in zip(v.shape, x.shape)):
            raise ShapeError(f"{nm} has shape {v}, x has {x}")
    return x


def _cost(flops):
    def cost(op, bind):
        x = op.operands[2].type
        n = int(np.prod(concrete(x.shape, bind)))
        return Cost(flops * n, sum(v.type.nbytes(bind) for v in op.operands),
                    sum(v.type.nbytes(bind) for v in op.results))
    return cost


def _prep(r, t, *xs):
    """r, t as Python numbers; the tensors in their compute precision."""
    if np.size(r) != 1 or np.size(t) != 1:
        raise ShapeError(f"r and t must hold one element, got shapes {list(np.shape(r))}, {list(np.shape(t))}")
    d = wide(xs[0]).dtype
    return (np.asarray(r).reshape(()).astype(d), int(np.asarray(t).reshape(())), d.type,
            [wide(v) for v in xs])


_T = np.array(3, np.int64)


@declare
class adagrad:
    """One Adagrad step: lr = r / (1 + t * decay_factor); gr = norm_coefficient * x + g;
    h_new = h + gr^2; x_new = x - lr * gr / (sqrt(h_new) + epsilon). Results: x_new, h_new."""
    name = "train.adagrad"
    operands = (Operand("r", FLOAT), Operand("t", (dt.i64,)), Operand("x", FLOAT), Operand("g", FLOAT),
                Operand("h", FLOAT, doc="the accumulated squared gradient"))
    results = (Result("x_new"), Result("h_new"))
    attrs = (Attr("decay_factor", "float", 0.0), Attr("epsilon", "float", 1e-6),
             Attr("norm_coefficient", "float", 0.0))
    traits = {"pure"}
    vjp = NO_VJP
    cost = _cost(8)
    examples = (Ex("f32[]", _T, "f32[2,3]", "f32[2,3]", Arg("f32[2,3]", 0.0, 1.0)),
                Ex("f64[]", _T, "f32[4]", "f32[4]", Arg("f32[4]", 0.0, 1.0), decay_factor=0.1,
                   epsilon=1e-4, norm_coefficient=0.01))

    def infer(r, t, x, g, h, **attrs):
        _scalars(r, t)
        x = _same(x, g=g, h=h)
        return x, x

    def ref(r, t, x, g, h, *, decay_factor, epsilon, norm_coefficient):
        dtype = x.dtype
        r, t, c, (x, g, h) = _prep(r, t, x, g, h)
        lr = r / (1 + t * c(decay_factor))
        gr = c(norm_coefficient) * x + g
        h_new = h + gr * gr
        x_new = x - lr * gr / (np.sqrt(h_new) + c(epsilon))
        return x_new.astype(dtype), h_new.astype(dtype)


@declare
class adam:
    """One Adam step: gr = norm_coefficient * x + g; v_new = alpha v + (1 - alpha) gr;
    h_new = beta h + (1 - beta) gr^2; lr = r sqrt(1 - beta^t) / (1 - alpha^t) when t > 0, else
    r; x_new = (1 - norm_coefficient_post) (x - lr v_new / (sqrt(h_new) + epsilon)).
    Results: x_new, v_new, h_new."""
    name = "train.adam"
    operands = (Operand("r", FLOAT), Operand("t", (dt.i64,)), Operand("x", FLOAT), Operand("g", FLOAT),
                Operand("v", FLOAT, doc="the running mean of the gradient"),
                Operand("h", FLOAT, doc="the running mean of the squared gradient"))
    results = (Result("x_new"), Result("v_new"), Result("h_new"))
    attrs = (Attr("alpha", "float", 0.9), Attr("beta", "float", 0.999), Attr("epsilon", "float", 1e-6),
             Attr("norm_coefficient", "float", 0.0), Attr("norm_coefficient_post", "float", 0.0))
    traits = {"pure"}
    vjp = NO_VJP
    cost = _cost(12)
    examples = (Ex("f32[]", _T, "f32[2,3]", "f32[2,3]", "f32[2,3]", Arg("f32[2,3]", 0.0, 1.0)),
                Ex("f32[]", np.array(0, np.int64), "f64[5]", "f64[5]", "f64[5]", Arg("f64[5]", 0.0, 1.0),
                   alpha=0.8, beta=0.9, norm_coefficient=0.1, norm_coefficient_post=0.05))

    def infer(r, t, x, g, v, h, **attrs):
        _scalars(r, t)
        x = _same(x, g=g, v=v, h=h)
        return x, x, x

    def ref(r, t, x, g, v, h, *, alpha, beta, epsilon, norm_coefficient, norm_coefficient_post):
        dtype = x.dtype
        r, t, c, (x, g, v, h) = _prep(r, t, x, g, v, h)
        a, bt = c(alpha), c(beta)
        gr = c(norm_coefficient) * x + g
        v_new = a * v + (1 - a) * gr
        h_new = bt * h + (1 - bt) * gr * gr
        lr = r * np.sqrt(1 - bt ** t) / (1 - a ** t) if t > 0 else r
        x_new = (1 - c(norm_coefficient_post)) * (x - lr * v_new / (np.sqrt(h_new) + c(epsilon)))
        return x_new.astype(dtype), v_new.astype(dtype), h_new.astype(dtype)


@declare
class momentum:
    """One step of gradient descent with momentum: gr = norm_coefficient * x + g;
    v_new = alpha v + beta' gr with beta' = beta when t > 0, else 1; x_new = x - r v_new
    (mode "standard") or x - r (gr + alpha v_new) (mode "nesterov"). Results: x_new, v_new."""
    name = "train.momentum"
    operands = (Operand("r", FLOAT), Operand("t", (dt.i64,)), Operand("x", FLOAT), Operand("g", FLOAT),
                Operand("v", FLOAT, doc="the momentum"))
    results = (Result("x_new"), Result("v_new"))
    attrs = (Attr("alpha", "float"), Attr("beta", "float"),
             Attr("mode", "str", "standard", choices=("standard", "nesterov")),
             Attr("norm_coefficient", "float", 0.0))
    traits = {"pure"}
    vjp = NO_VJP
    cost = _cost(6)
    examples = (Ex("f32[]", _T, "f32[2,3]", "f32[2,3]", "f32[2,3]", alpha=0.9, beta=0.1),
                Ex("f32[]", np.array(0, np.int64), "f32[4]", "f32[4]", "f32[4]", alpha=0.5, beta=0.3,
                   mode="nesterov", norm_coefficient=0.01))

    def infer(r, t, x, g, v, **attrs):
        _scalars(r, t)
        x = _same(x, g=g, v=v)
        return x, x

    def ref(r, t, x, g, v, *, alpha, beta, mode, norm_coefficient):
        dtype = x.dtype
        r, t, c, (x, g, v) = _prep(r, t, x, g, v)
        a = c(alpha)
        gr = c(norm_coefficient) * x + g
        v_new = a * v + (c(beta) if t > 0 else c(1)) * gr
        x_new = x - r * (gr + a * v_new if mode == "nesterov" else v_new)
        return x_new.astype(dtype), v_new.astype(dtype)
