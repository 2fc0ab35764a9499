"""optimizer{kind=adamw|sgd,lr=..,...}: append the parameter update as IR, after autodiff.

Every weight with a `grad.<name>` output becomes state (`<name>`, starting from the weight's
values) and is replaced in place when the call completes, with its optimizer state beside it:
AdamW moments `adam.m.<name>`, `adam.v.<name>` and the step count `opt.step`; SGD momentum
buffers `sgd.buf.<name>`. The formulas are torch.optim's (AdamW with decoupled weight decay and
bias correction; SGD with L2 weight decay added to the gradient and momentum without dampening).

accum=N sums gradients over N calls in `accum.<name>` and applies their mean every N-th call
(the update is computed every call and selected, so the graph has no branches). clip_norm=C
scales the gradients (after accumulation) by min(1, C / (global L2 norm + 1e-6)), as
torch.nn.utils.clip_grad_norm_. The grad.* outputs are dropped unless keep_grads=true.
"""
from __future__ import annotations

import numpy as np

from ckir.builder import Builder
from ckir.errors import CkirError
from ckir.pipeline import Pass, register_pass


def _scalar(b, x, like):
    return b.constant(np.asarray(x, dtype=like.type.dtype.np))


@register_pass
class Optimizer(Pass):
    """Append AdamW or SGD updates of the weights that have grad.* outputs, as IR on state."""
    name = "optimizer"
    kind: str = "adamw"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0
    accum: int = 1
    clip_norm: float = 0.0
    keep_grads: bool = False
    graph: str = ""

    def run(self, module):
        if self.kind not in ("adamw", "sgd"):
            raise CkirError(f"optimizer: kind must be adamw or sgd, not '{self.kind}'")
        if self.accum < 1:
            raise CkirError(f"optimizer: accum must be >= 1, not {self.accum}")
        g = module.graph(self.graph or None)
        names = list(g.output_names)
        params = [n[len("grad."):] for n in names if n.startswith("grad.")]
        params = [p for p in params if p in module.weights]
        if not params:
            raise CkirError(f"optimizer: graph @{g.name} has no grad.<weight> outputs; run autodiff first")
        b = Builder.before(g.terminator, loc="optimizer")
        grads = {p: g.outputs[names.index(f"grad.{p}")] for p in params}
        cur = {}
        for p in params:                      # the weight becomes state, read where it was read
            w = module.weights[p]
            if p in module.state:
                raise CkirError(f"optimizer: state @{p} already exists")
            module.add_state(p, w.type, init=p)
            reads = [op for op in g if op.opdef.name == "ckir.weight" and op.attrs["name"] == p]
            for op in reads:
                v = Builder.before(op).create("ckir.state", (), {"name": p}, result_types=[w.type]).results[0]
                op.replace_with(v)
            cur[p] = b.create("ckir.state", (), {"name": p}, result_types=[w.type]).results[0]
        apply = None
        if self.accum > 1:                    # sum gradients; apply their mean every accum-th call
            count = self._state(module, b, "opt.accum_count", grads[params[0]], shape=())
            count1 = b.nn.add(count, 1.0)
            apply = b.nn.ge(count1, float(self.accum))
            b.create("ckir.write_state", [b.nn.where(apply, b.nn.mul(count1, 0.0), count1)],
                     {"name": "opt.accum_count"})
            for p in params:
                acc = self._state(module, b, f"accum.{p}", grads[p])
                total = b.nn.add(acc, grads[p])
                b.create("ckir.write_state", [b.nn.where(apply, b.nn.mul(total, 0.0), total)],
                         {"name": f"accum.{p}"})
                grads[p] = b.nn.div(total, float(self.accum))
        if self.clip_norm > 0:
            sq = None
            for p in params:
                s = b.nn.sum(b.nn.mul(grads[p], grads[p]))
                sq = s if sq is None else b.nn.add(sq, s)
            total = b.nn.sqrt(sq)
            coef = b.nn.minimum(b.nn.div(self.clip_norm, b.nn.add(total, 1e-6)), 1.0)
            for p in params:
                grads[p] = b.nn.mul(grads[p], b.nn.cast(coef, to=grads[p].type.dtype))
        step = None
        if self.kind == "adamw":
            step0 = self._state(module, b, "opt.step", grads[params[0]], shape=())
            step = b.nn.add(step0, 1.0)
            if apply is not None:
                step = b.nn.where(apply, step, step0)
            b.create("ckir.write_state", [step], {"name": "opt.step"})
        for p in params:
            new = self._adamw(module, b, p, cur[p], grads[p], step, apply) if self.kind == "adamw" \
                else self._sgd(module, b, p, cur[p], grads[p], apply)
            if apply is not None:
                new = b.nn.where(apply, new, cur[p])
            b.create("ckir.write_state", [new], {"name": p})
        if not self.keep_grads:
            keep = [(n, v) for n, v in zip(g.output_names, g.outputs) if not n.startswith("grad.")]
            g.set_outputs([v for _, v in keep], [n for n, _ in keep])
        self.stat("parameters", len(params))

    def _state(self, module, b, name, like, shape=None):
        t = like.type if shape is None else like.type.with_shape(shape)
        if name not in module.state:
            module.add_state(name, t)
        return b.create("ckir.state", (), {"name": name}, result_types=[t]).results[0]

    def _keep_or(self, b, apply, new, old):
        return new if apply is None else b.nn.where(apply, new, old)

    def _adamw(self, module, b, p, w, grad, step, apply):
        """torch.optim.AdamW: w *= 1 - lr*wd; m, v moments; w -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)."""
        m0 = self._state(module, b, f"adam.m.{p}", w)
        v0 = self._state(module, b, f"adam.v.{p}", w)
        m = b.nn.add(b.nn.mul(m0, self.beta1), b.nn.mul(grad, 1 - self.beta1))
        v = b.nn.add(b.nn.mul(v0, self.beta2), b.nn.mul(b.nn.mul(grad, grad), 1 - self.beta2))
        b.create("ckir.write_state", [self._keep_or(b, apply, m, m0)], {"name": f"adam.m.{p}"})
        b.create("ckir.write_state", [self._keep_or(b, apply, v, v0)], {"name": f"adam.v.{p}"})
        s = b.nn.cast(step, to=w.type.dtype)
        bc1 = b.nn.sub(1.0, b.nn.pow(_scalar(b, self.beta1, w), s))
        bc2 = b.nn.sub(1.0, b.nn.pow(_scalar(b, self.beta2, w), s))
        if self.weight_decay:
            w = b.nn.mul(w, 1 - self.lr * self.weight_decay)
        denom = b.nn.add(b.nn.div(b.nn.sqrt(v), b.nn.sqrt(bc2)), self.eps)
        return b.nn.sub(w, b.nn.mul(b.nn.div(m, denom), b.nn.div(_scalar(b, self.lr, w), bc1)))

    def _sgd(self, module, b, p, w, grad, apply):
        """torch.optim.SGD: g += wd*w; buf = momentum*buf + g; w -= lr*buf."""
        if self.weight_decay:
            grad = b.nn.add(grad, b.nn.mul(w, self.weight_decay))
        if self.momentum:
            buf0 = self._state(module, b, f"sgd.buf.{p}", w)
            buf = b.nn.add(b.nn.mul(buf0, self.momentum), grad)
            b.create("ckir.write_state", [self._keep_or(b, apply, buf, buf0)], {"name": f"sgd.buf.{p}"})
            grad = buf
        return b.nn.sub(w, b.nn.mul(grad, self.lr))
