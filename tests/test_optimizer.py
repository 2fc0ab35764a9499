"""The optimizer pass against torch.optim on a tiny GPT: 20 steps of AdamW (and SGD with
momentum, weight decay, accumulation and clipping) give the same losses and parameters.

Both sides run in float64, so the only differences are summation orders: losses and
parameters agree to ~1e-12 relative after 20 steps (tolerance 1e-9). A float32 run is checked
at 1e-4: f32 rounding differences compound through the Adam denominators over 20 steps."""
import numpy as np
import pytest
import torch

import ckir
from tiny_gpt import CONFIG, batches, build, init_weights, torch_model

BATCH = 3


def train_ckir(pipeline, steps, dtype=np.float64, backend="interp"):
    w = init_weights(CONFIG, dtype=dtype)
    m = build(CONFIG, w, BATCH)
    ckir.run_pipeline(m, pipeline)
    f = ckir.compile(m, backend=backend)
    losses = [float(f(tok, tgt)["loss"]) for tok, tgt in batches(CONFIG, BATCH, steps)]
    return losses, f.state


def train_torch(make_opt, steps, accum=1, clip=0.0, dtype=np.float64):
    w = init_weights(CONFIG, dtype=dtype)
    params, fwd = torch_model(CONFIG, w)
    opt = make_opt(list(params.values()))
    losses = []
    for i, (tok, tgt) in enumerate(batches(CONFIG, BATCH, steps)):
        loss = fwd(torch.tensor(tok), torch.tensor(tgt))
        losses.append(loss.item())
        (loss / accum).backward()
        if (i + 1) % accum == 0:
            if clip:
                torch.nn.utils.clip_grad_norm_(list(params.values()), clip)
            opt.step()
            opt.zero_grad()
    return losses, {k: v.detach().numpy() for k, v in params.items()}


def check(ours, theirs, tol):
    (l1, st), (l2, p2) = ours, theirs
    np.testing.assert_allclose(l1, l2, rtol=tol, atol=tol)
    for k, v in p2.items():
        np.testing.assert_allclose(st[k], v, rtol=tol, atol=tol, err_msg=k)


def test_adamw_matches_torch():
    ours = train_ckir("autodiff,optimizer{kind=adamw,lr=0.01,weight_decay=0.1},canonicalize,cse,dce", 20)
    theirs = train_torch(lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1), 20)
    check(ours, theirs, 1e-9)
    assert ours[0][-1] < ours[0][0]            # it learns


def test_sgd_momentum_accumulation_and_clipping_match_torch():
    pipe = "autodiff,optimizer{kind=sgd,lr=0.1,momentum=0.9,weight_decay=0.01,accum=2,clip_norm=0.5},canonicalize,cse,dce"
    ours = train_ckir(pipe, 12)
    theirs = train_torch(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01), 12, accum=2, clip=0.5)
    check(ours, theirs, 1e-9)


def test_float32_adamw_matches_torch():
    ours = train_ckir("autodiff,optimizer{lr=0.01},canonicalize,cse,dce", 20, dtype=np.float32)
    theirs = train_torch(lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.0), 20, dtype=np.float32)
    check(ours, theirs, 1e-4)


def test_errors():
    m = build(CONFIG, init_weights(CONFIG), BATCH)
    with pytest.raises(ckir.PassError, match="no grad.<weight> outputs; run autodiff first"):
        ckir.run_pipeline(m, "optimizer")
    with pytest.raises(ckir.PassError, match="kind must be adamw or sgd"):
        ckir.run_pipeline(m, "autodiff,optimizer{kind=lion}")
