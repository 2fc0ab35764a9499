"""nn.cross_entropy and nn.mse_loss against torch.nn.functional (float64 forward and gradients)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oracle import TOL, check_grads, run_op, torch_vjp

R = np.random.default_rng(0)


@pytest.mark.parametrize("shape,reduction,smooth,ignore", [
    ((6, 5), "mean", 0.0, -100), ((6, 5), "sum", 0.2, -100), ((2, 4, 3), "none", 0.1, 1),
    ((2, 4, 3, 2), "mean", 0.5, 2), ((5, 7), "mean", 0.0, 3),
])
def test_cross_entropy_matches_torch(shape, reduction, smooth, ignore):
    x = R.standard_normal(shape)
    tshape = (shape[0],) + shape[2:]
    t = R.integers(0, shape[1], tshape).astype(np.int64)
    t.flat[0] = ignore if 0 <= ignore < shape[1] or ignore == -100 else t.flat[0]
    attrs = {"reduction": reduction, "label_smoothing": smooth, "ignore_index": ignore}
    out_shape = tshape if reduction == "none" else ()
    c = R.standard_normal(out_shape)
    (y,), grads = run_op("cross_entropy", [x, t], attrs, [c])
    ty, tg = torch_vjp(lambda a, b: F.cross_entropy(a, b, reduction=reduction, label_smoothing=smooth,
                                                    ignore_index=ignore), [x, t], [c])
    np.testing.assert_allclose(y, ty[0], **TOL)
    check_grads(grads, tg, [x, t])


@pytest.mark.parametrize("sa,sb,reduction", [((3, 4), (3, 4), "mean"), ((2, 3), (3,), "sum"), ((5,), (5,), "none")])
def test_mse_matches_torch(sa, sb, reduction):
    a, b = R.standard_normal(sa), R.standard_normal(sb)
    out = np.broadcast_shapes(sa, sb) if reduction == "none" else ()
    c = R.standard_normal(out)
    (y,), grads = run_op("mse_loss", [a, b], {"reduction": reduction}, [c])
    ty, tg = torch_vjp(lambda x, z: F.mse_loss(*torch.broadcast_tensors(x, z), reduction=reduction), [a, b], [c])
    np.testing.assert_allclose(y, ty[0], **TOL)
    check_grads(grads, tg, [a, b])


def test_cross_entropy_bad_target():
    import ckir
    with pytest.raises(ckir.CkirError, match="target 9 is out of range for 5 classes"):
        run_op("cross_entropy", [R.standard_normal((2, 5)), np.array([1, 9])], {}, [None])
