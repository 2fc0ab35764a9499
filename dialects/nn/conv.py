"""Convolution and pooling over 1, 2 or 3 spatial dims, channels-first layout (N, C, *spatial).

Window geometry follows ONNX: `strides` and `dilations` hold one int per spatial axis (absent:
all 1); `pads` holds the begin padding of every spatial axis, then the end padding (absent: all
0). The spatial rank is taken from the operands. Along an axis of size S with kernel K, a window
spans d*(K-1)+1 elements and there are floor((S + pad_begin + pad_end - d*(K-1) - 1) / s) + 1
of them; an output size that cannot be known statically is `?`, except that a symbolic size is
kept when the op provably preserves it (stride 1 and pads that add up to the window span minus 1).

References work on strided window views and batched matmuls; f16/bf16 compute in f32 and round.
The gradient helpers conv_input_grad, conv_weight_grad and avg_pool_grad read only the shape of
one operand (the tensor whose gradient they give, or the weight whose kernel size they need):
the stride rounding makes those sizes unrecoverable from the others, and symbolic sizes are
only known at run time.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ckir.errors import ShapeError
from ckir.opdef import FLOAT, Attr, Cost, Ex, Operand, declare, not_differentiable
from ckir.types import ANY as ANYDIM
from ckir.types import TensorType, concrete

from ._util import numel, same_dtype

STRIDES = Attr("strides", "ints", None, doc="step per spatial axis; absent means all 1")
PADS = Attr("pads", "ints", None,
            doc="begin pads of every spatial axis, then end pads (ONNX order); absent means all 0")
DILATIONS = Attr("dilations", "ints", None,
                 doc="distance between kernel taps per spatial axis; absent means all 1")
GROUPS = Attr("groups", "int", 1, doc="channel groups; each output channel sees C/groups inputs")
CONV_ATTRS = (STRIDES, PADS, DILATIONS, GROUPS)
KERNEL = Attr("kernel", "ints", doc="window size per spatial axis")
CEIL = Attr("ceil_mode", "bool", False,
            doc="round the window count up; a window that would start in the end padding is dropped")
POOL_ATTRS = (KERNEL, STRIDES, PADS, DILATIONS, CEIL)
COUNT_PAD = Attr("count_include_pad", "bool", False,
                 doc="divide by the window size including explicit pads (never the ceil_mode overhang)")


# --- geometry ---------------------------------------------------------------------------------
def _spatial_rank(x) -> int:
    n = len(x.shape) - 2
    if not 1 <= n <= 3:
        raise ShapeError(f"x must be (N, C, spatial...) with 1 to 3 spatial dims, got shape "
                         f"{list(x.shape)}")
    return n


def _geometry(n, strides, pads, dilations):
    """(strides, pad begins, pad ends, dilations), each a tuple of n ints, checked."""
    s = (1,) * n if strides is None else tuple(strides)
    p = (0,) * (2 * n) if pads is None else tuple(pads)
    d = (1,) * n if dilations is None else tuple(dilations)
    for name, v, want in (("strides", s, n), ("pads", p, 2 * n), ("dilations", d, n)):
        if len(v) != want:
            raise ShapeError(f"{name} {list(v)} must have {want} entries for {n} spatial dims")
    if min(s) < 1 or min(d) < 1:
        raise ShapeError(f"strides {list(s)} and dilations {list(d)} must be >= 1")
    if min(p) < 0:
        raise ShapeError(f"pads {list(p)} must be >= 0")
    return s, p[:n], p[n:], d


def _out_dims(sizes, kernel, s, pb, pe, d, ceil=False):
    """Window counts per spatial axis (ONNX/torch ceil_mode: a last window that would start in
    the end padding is dropped). A symbolic size gives `?` unless it is provably preserved."""
    out = []
    for i, (n, k) in enumerate(zip(sizes, kernel)):
        if type(n) is not int or type(k) is not int:
            same = type(k) is int and s[i] == 1 and pb[i] + pe[i] == d[i] * (k - 1)
            out.append(n if same else ANYDIM)
            continue
        span = n + pb[i] + pe[i] - d[i] * (k - 1) - 1
        if k < 1 or span < 0:
            raise ShapeError(f"spatial axis {i}: a window of {d[i] * (k - 1) + 1} (kernel {k}, "
                             f"dilation {d[i]}) does not fit in {n} + pads {pb[i]}, {pe[i]}")
        o = (-(-span // s[i]) if ceil else span // s[i]) + 1
        if ceil and (o - 1) * s[i] >= n + pb[i]:
            o -= 1
        out.append(o)
    return tuple(out)


def _same(a, b) -> bool:
    """Dims that may be equal (symbolic dims are checked at run time)."""
    return type(a) is not int or type(b) is not int or a == b


def _check_like(got, want, what):
    if len(got.shape) != len(want.shape) or not all(_same(a, b) for a, b in zip(got.shape, want.shape)):
        raise ShapeError(f"{what} has shape {list(got.shape)}, expected {list(want.shape)}")


def _conv_type(x, w, strides, pads, dilations, groups) -> TensorType:
    """Result type of nn.conv(x, w)."""
    n = _spatial_rank(x)
    if len(w.shape) != n + 2:
        raise ShapeError(f"w must be (O, C/groups, *kernel) with {n} kernel dims, got shape {list(w.shape)}")
    s, pb, pe, d = _geometry(n, strides, pads, dilations)
    if groups < 1:
        raise ShapeError(f"groups must be >= 1, got {groups}")
    c, o, cg = x.shape[1], w.shape[0], w.shape[1]
    for what, v in (("input channels", c), ("output channels", o)):
        if type(v) is int and v % groups:
            raise ShapeError(f"{what} {v} are not divisible by groups {groups}")
    if type(c) is int and type(cg) is int and cg * groups != c:
        raise ShapeError(f"w has {cg} input channels per group, but x has {c} channels in "
                         f"{groups} group(s)")
    return TensorType((x.shape[0], o) + _out_dims(x.shape[2:], w.shape[2:], s, pb, pe, d), x.dtype)


def _conv_t_type(x, w, strides, pads, dilations, groups, output_padding) -> TensorType:
    """Result type of nn.conv_transpose(x, w)."""
    n = _spatial_rank(x)
    if len(w.shape) != n + 2:
        raise ShapeError(f"w must be (C, O/groups, *kernel) with {n} kernel dims, got shape {list(w.shape)}")
    s, pb, pe, d = _geometry(n, strides, pads, dilations)
    op = (0,) * n if output_padding is None else tuple(output_padding)
    if len(op) != n or not all(0 <= a < b for a, b in zip(op, s)):
        raise ShapeError(f"output_padding {list(op)} must have {n} entries, each >= 0 and smaller "
                         f"than its stride {list(s)}")
    if groups < 1:
        raise ShapeError(f"groups must be >= 1, got {groups}")
    c = x.shape[1]
    if type(c) is int and c % groups:
        raise ShapeError(f"input channels {c} are not divisible by groups {groups}")
    if not _same(c, w.shape[0]):
        raise ShapeError(f"w has {w.shape[0]} input channels, x has {c}")
    og = w.shape[1]
    o = og * groups if type(og) is int else (og if groups == 1 else ANYDIM)
    out = []
    for i, (m, k) in enumerate(zip(x.shape[2:], w.shape[2:])):
        extra = d[i] * (k - 1) + op[i] - pb[i] - pe[i] if type(k) is int else None
        if type(m) is int and extra is not None:
            size = (m - 1) * s[i] + extra + 1
            if size < 1:
                raise ShapeError(f"spatial axis {i}: pads {pb[i]}, {pe[i]} leave {size} output elements")
            out.append(size)
        else:
            out.append(m if extra == 0 and s[i] == 1 else ANYDIM)
    return TensorType((x.shape[0], o) + tuple(out), x.dtype)


def _pool_type(x, kernel, strides, pads, dilations, ceil_mode) -> TensorType:
    n = _spatial_rank(x)
    if len(kernel) != n or min(kernel) < 1:
        raise ShapeError(f"kernel {list(kernel)} must have {n} entries, each >= 1")
    s, pb, pe, d = _geometry(n, strides, pads, dilations)
    return x.with_shape(x.shape[:2] + _out_dims(x.shape[2:], kernel, s, pb, pe, d, ceil_mode))


# --- numpy kernels ----------------------------------------------------------------------------
def _compute_dtype(a):
    # Sums of thousands of products: accumulate in f64 and round once, so the reference is
    # the correctly rounded result whatever order a BLAS would add in (squeezenet's logits,
    # ~1e10 from identical weights, must come out identical).
    return np.float64


def _pad(x, pb, pe, value=0):
    return np.pad(x, [(0, 0), (0, 0)] + list(zip(pb, pe)), constant_values=value)


def _windows(xp, out, kernel, s, d):
    """View (N, C, *out, *kernel) of a padded array: output position o, tap t reads o*s + t*d."""
    n = len(kernel)
    span = tuple(di * (k - 1) + 1 for di, k in zip(d, kernel))
    v = sliding_window_view(xp, span, axis=tuple(range(2, 2 + n)))
    return v[(slice(None),) * 2 + tuple(slice(0, (o - 1) * si + 1, si) for o, si in zip(out, s))
             + tuple(slice(None, None, di) for di in d)]


def _scatter_windows(cols, padded, s, d):
    """The adjoint of `_windows`: add cols (N, C, *out, *kernel) into zeros of shape `padded`."""
    n = len(s)
    out, kernel = cols.shape[2:2 + n], cols.shape[2 + n:]
    buf = np.zeros(padded, cols.dtype)
    for tap in np.ndindex(*kernel):
        buf[(slice(None),) * 2 + tuple(slice(t * di, t * di + (o - 1) * si + 1, si)
                                       for t, di, o, si in zip(tap, d, out, s))] += cols[(Ellipsis,) + tap]
    return buf


def _crop(buf, pb, sizes):
    return buf[(slice(None),) * 2 + tuple(slice(b, b + m) for b, m in zip(pb, sizes))]


def _im2col(x, out, kernel, s, pb, pe, d, groups):
    """Patches of x as (groups, N * prod(out), C/groups * prod(kernel))."""
    n, (nb, c) = len(kernel), x.shape[:2]
    v = _windows(_pad(x, pb, pe), out, kernel, s, d).reshape((nb, groups, c // groups) + out + kernel)
    v = v.transpose((1, 0) + tuple(range(3, 3 + n)) + (2,) + tuple(range(3 + n, 3 + 2 * n)))
    return v.reshape(groups, nb * math.prod(out), -1)


def _conv_np(x, w, strides, pads, dilations, groups):
    ct = _compute_dtype(x)
    x, w = x.astype(ct, copy=False), w.astype(ct, copy=False)
    n = x.ndim - 2
    s, pb, pe, d = _geometry(n, strides, pads, dilations)
    out = _out_dims(x.shape[2:], w.shape[2:], s, pb, pe, d)
    if x.shape[1] != w.shape[1] * groups:
        raise ShapeError(f"x has {x.shape[1]} channels, w expects {w.shape[1]} x {groups} groups")
    cols = _im2col(x, out, w.shape[2:], s, pb, pe, d, groups)
    o = w.shape[0]
    y = cols @ w.reshape(groups, o // groups, -1).transpose(0, 2, 1)   # (G, N*P, O/G)
    y = y.reshape((groups, x.shape[0]) + out + (o // groups,))
    y = y.transpose((1, 0, n + 2) + tuple(range(2, n + 2)))
    return y.reshape((x.shape[0], o) + out)


def _conv_t_np(x, w, s, pb, pe, d, groups, sizes):
    """Transposed convolution of x (N, C, *in) by w (C, O/groups, *kernel) with result spatial
    `sizes`: y[o, i*s + t*d - pb] += x[c, i] * w[c, o, t] within each group."""
    ct = _compute_dtype(x)
    x, w = x.astype(ct, copy=False), w.astype(ct, copy=False)
    n, (nb, c), og = x.ndim - 2, x.shape[:2], w.shape[1]
    inner, kernel = x.shape[2:], w.shape[2:]
    if w.shape[0] != c or c % groups:
        raise ShapeError(f"x has {c} channels, w has {w.shape[0]} in {groups} group(s)")
    xm = x.reshape(nb, groups, c // groups, -1).transpose(1, 0, 3, 2).reshape(groups, -1, c // groups)
    cols = xm @ w.reshape(groups, c // groups, -1)                      # (G, N*P, O/G * K)
    cols = cols.reshape((groups, nb) + inner + (og,) + kernel)
    cols = cols.transpose((1, 0, n + 2) + tuple(range(2, n + 2)) + tuple(range(n + 3, 2 * n + 3)))
    cols = cols.reshape((nb, groups * og) + inner + kernel)
    padded = tuple(max((m - 1) * si + di * (k - 1) + 1, z + b + e)
                   for m, si, di, k, z, b, e in zip(inner, s, d, kernel, sizes, pb, pe))
    return _crop(_scatter_windows(cols, (nb, groups * og) + padded, s, d), pb, sizes)


def _conv_weight_grad_np(x, g, kernel, strides, pads, dilations, groups):
    ct = _compute_dtype(x)
    x, g = x.astype(ct, copy=False), g.astype(ct, copy=False)
    n = x.ndim - 2
    s, pb, pe, d = _geometry(n, strides, pads, dilations)
    out = _out_dims(x.shape[2:], kernel, s, pb, pe, d)
    if g.shape[2:] != out or g.shape[0] != x.shape[0] or g.shape[1] % groups or x.shape[1] % groups:
        raise ShapeError(f"g has shape {list(g.shape)}, but the convolution of x {list(x.shape)} by "
                         f"a kernel {list(kernel)} in {groups} group(s) gives spatial {list(out)}")
    cols = _im2col(x, out, kernel, s, pb, pe, d, groups)                # (G, N*P, C/G * K)
    o = g.shape[1]
    gm = g.reshape(x.shape[0], groups, o // groups, -1).transpose(1, 2, 0, 3).reshape(groups, o // groups, -1)
    return (gm @ cols).reshape((o, x.shape[1] // groups) + tuple(kernel))


def _pool_geometry(x, kernel, strides, pads, dilations, ceil_mode):
    """(out, strides, pad begins, pad ends, pad ends stretched to hold every window, dilations)."""
    n = x.ndim - 2
    if len(kernel) != n:
        raise ShapeError(f"kernel {list(kernel)} must have {n} entries")
    s, pb, pe, d = _geometry(n, strides, pads, dilations)
    out = _out_dims(x.shape[2:], kernel, s, pb, pe, d, ceil_mode)
    pe_all = tuple(max(e, (o - 1) * si + di * (k - 1) + 1 - m - b)
                   for e, o, si, di, k, m, b in zip(pe, out, s, d, kernel, x.shape[2:], pb))
    return out, s, pb, pe, pe_all, d


def _pool_counts(sizes, kernel, out, s, pb, pe, pe_all, d, include_pad):
    """Divisor per output position, (1, 1, *out): counted elements in each window, at least 1."""
    if include_pad:   # explicit pads count, the ceil_mode overhang does not
        region = _pad(np.ones((1, 1) + tuple(m + b + e for m, b, e in zip(sizes, pb, pe))),
                      (0,) * len(pb), tuple(a - e for a, e in zip(pe_all, pe)))
    else:
        region = _pad(np.ones((1, 1) + sizes), pb, pe_all)
    n = len(kernel)
    counts = _windows(region, out, kernel, s, d).sum(axis=tuple(range(-n, 0)))
    return np.maximum(counts, 1)


def _max_pool_np(x, *, kernel, strides, pads, dilations, ceil_mode):
    ct = _compute_dtype(x)
    out, s, pb, _, pe_all, d = _pool_geometry(x, kernel, strides, pads, dilations, ceil_mode)
    v = _windows(_pad(x.astype(ct, copy=False), pb, pe_all, -np.inf), out, kernel, s, d)
    return v.max(axis=tuple(range(-len(kernel), 0))).astype(x.dtype)


def _avg_pool_np(x, *, kernel, strides, pads, dilations, ceil_mode, count_include_pad):
    ct = _compute_dtype(x)
    out, s, pb, pe, pe_all, d = _pool_geometry(x, kernel, strides, pads, dilations, ceil_mode)
    v = _windows(_pad(x.astype(ct, copy=False), pb, pe_all), out, kernel, s, d)
    sums = v.sum(axis=tuple(range(-len(kernel), 0)))
    counts = _pool_counts(x.shape[2:], kernel, out, s, pb, pe, pe_all, d, count_include_pad)
    return (sums / counts.astype(ct)).astype(x.dtype)


def _check_pool_grad(x, g, out):
    if g.shape != x.shape[:2] + out:
        raise ShapeError(f"g has shape {list(g.shape)}, the pooling of {list(x.shape)} gives "
                         f"{list(x.shape[:2] + out)}")


def _max_pool_grad_np(x, g, *, kernel, strides, pads, dilations, ceil_mode):
    ct = _compute_dtype(x)
    out, s, pb, _, pe_all, d = _pool_geometry(x, kernel, strides, pads, dilations, ceil_mode)
    _check_pool_grad(x, g, out)
    kk = math.prod(kernel)
    xp = _pad(x.astype(ct, copy=False), pb, pe_all, -np.inf)
    v = _windows(xp, out, kernel, s, d).reshape(x.shape[:2] + out + (kk,))
    real = _windows(_pad(np.ones((1, 1) + x.shape[2:], bool), pb, pe_all, False), out, kernel, s, d)
    real = real.reshape((1, 1) + out + (kk,))
    top = v.max(axis=-1, keepdims=True)
    hit = ((v == top) | np.isnan(v)) & real     # NaN is the max, as in the forward max
    first = hit.argmax(axis=-1)[..., None]
    gsel = np.where(hit.any(axis=-1), g.astype(ct, copy=False), 0)[..., None]
    cols = np.zeros(v.shape, ct)
    np.put_along_axis(cols, first, gsel, axis=-1)
    cols = cols.reshape(x.shape[:2] + out + tuple(kernel))
    return _crop(_scatter_windows(cols, xp.shape, s, d), pb, x.shape[2:]).astype(x.dtype)


def _avg_pool_grad_np(x, g, *, kernel, strides, pads, dilations, ceil_mode, count_include_pad):
    ct = _compute_dtype(x)
    out, s, pb, pe, pe_all, d = _pool_geometry(x, kernel, strides, pads, dilations, ceil_mode)
    _check_pool_grad(x, g, out)
    share = g.astype(ct, copy=False) / _pool_counts(x.shape[2:], kernel, out, s, pb, pe, pe_all, d,
                                                   count_include_pad).astype(ct)
    n = len(kernel)
    cols = np.broadcast_to(share.reshape(share.shape + (1,) * n), share.shape + tuple(kernel))
    padded = x.shape[:2] + tuple(m + b + e for m, b, e in zip(x.shape[2:], pb, pe_all))
    return _crop(_scatter_windows(cols, padded, s, d), pb, x.shape[2:]).astype(x.dtype)


# --- costs --------------------------------------------------------------------------------------
def _macs_cost(sweep, w, read, op, bind):
    """2 FLOPs per multiply-add: every element of `sweep` meets prod(w.shape[1:]) weights."""
    per = math.prod(concrete(w.type.shape[1:], bind))
    return Cost(2 * numel(sweep.type, bind) * per, sum(v.type.nbytes(bind) for v in read),
                op.results[0].type.nbytes(bind))


def _pool_cost(extra, reads):
    """(kernel taps + extra) FLOPs per window; the windows are the result of a pooling and the
    g operand of a pooling gradient; `reads` are the operand indices whose data is read."""
    def cost(op, bind):
        windows = op.results[0] if len(op.operands) == 1 else op.operands[1]
        flops = numel(windows.type, bind) * (math.prod(op.attrs["kernel"]) + extra)
        return Cost(flops, sum(op.operands[i].type.nbytes(bind) for i in reads),
                    op.results[0].type.nbytes(bind))
    return cost


def _sum_except_channels(b, g):
    return b.nn.sum(g, axes=[0] + list(range(2, g.type.rank)))


def _conv_attrs(op):
    return {k: op.attrs[k] for k in ("strides", "pads", "dilations", "groups")}


# --- ops ----------------------------------------------------------------------------------------
@declare
class conv:
    """Convolution as ONNX Conv (a cross-correlation: the kernel is not flipped), over 1, 2 or 3
    spatial dims. x is (N, C, *S), w is (O, C/groups, *K), bias (O,) is optional; the result is
    (N, O, *out) with out = floor((S + pad_begin + pad_end - dilation*(K-1) - 1) / stride) + 1:

        y[n, o, p] = bias[o] + sum_{c, t} x_padded[n, g*C/groups + c, p*stride + t*dilation] * w[o, c, t]

    where g = o // (O/groups) and padding is zeros. Output sizes that depend on a symbolic input
    size are `?` unless stride 1 and pads summing to dilation*(K-1) keep the size ("same" conv).
    The batch dim passes through.

    Gradients: x through nn.conv_input_grad (not nn.conv_transpose, whose output_padding would
    have to be S mod stride, unknown for a symbolic S), w through nn.conv_weight_grad, bias as
    the sum of g over batch and spatial dims."""
    name = "nn.conv"
    operands = (Operand("x", FLOAT), Operand("w", FLOAT), Operand("bias", FLOAT, optional=True))
    attrs = CONV_ATTRS
    traits = {"pure"}
    examples = (Ex("f32[2,3,7]", "f32[4,3,3]"),
                Ex("f32[1,4,6,5]", "f32[6,2,3,2]", "f32[6]", strides=[2, 1], pads=[1, 0, 2, 1],
                   dilations=[1, 2], groups=2),
                Ex("f32[1,2,5,4,4]", "f32[4,1,2,3,2]", "f32[4]", strides=[1, 2, 1],
                   pads=[0, 1, 1, 1, 0, 0], groups=2),
                Ex("f32[2,3,9]", "f32[3,1,3]", groups=3, strides=[3], dilations=[2], pads=[2, 1]),
                Ex("f32[1,3,4,4]", "f32[5,3,1,1]", "f32[5]"))

    def infer(x, w, bias, *, strides, pads, dilations, groups):
        same_dtype(x, w, *([bias] if bias is not None else []))
        y = _conv_type(x, w, strides, pads, dilations, groups)
        if bias is not None and (bias.rank != 1 or not _same(bias.shape[0], w.shape[0])):
            raise ShapeError(f"bias must be ({w.shape[0]},), got shape {list(bias.shape)}")
        return y

    def ref(x, w, bias, *, strides, pads, dilations, groups):
        y = _conv_np(x, w, strides, pads, dilations, groups)
        if bias is not None:
            y = y + bias.astype(y.dtype).reshape((-1,) + (1,) * (x.ndim - 2))
        return y.astype(x.dtype)

    def vjp(b, op, g):
        if g is None:
            return [None] * len(op.operands)
        x, w = op.operands[:2]
        a = _conv_attrs(op)
        grads = [b.nn.conv_input_grad(g, w, x, **a), b.nn.conv_weight_grad(x, g, w, **a)]
        if len(op.operands) == 3:
            grads.append(_sum_except_channels(b, g))
        return grads

    def cost(op, bind):
        return _macs_cost(op.results[0], op.operands[1], op.operands, op, bind)


@declare
class conv_transpose:
    """Transposed convolution as ONNX ConvTranspose with explicit pads (the adjoint of nn.conv
    with respect to its input). x is (N, C, *S), w is (C, O/groups, *K), bias (O,) optional;
    the result is (N, O, *out) with out = (S-1)*stride + dilation*(K-1) + output_padding + 1
    - pad_begin - pad_end:

        y_full[n, g*O/groups + o, i*stride + t*dilation] += x[n, c, i] * w[c, o, t]  (c in group g)
        y = y_full[pad_begin : pad_begin + out] + bias

    Elements added by output_padding past the last written position are zero (plus bias).
    output_padding (absent: all 0) must be smaller than the stride on each axis. There is no
    auto_pad or output_shape: frontends turn those into pads and output_padding."""
    name = "nn.conv_transpose"
    operands = (Operand("x", FLOAT), Operand("w", FLOAT), Operand("bias", FLOAT, optional=True))
    attrs = CONV_ATTRS + (Attr("output_padding", "ints", None,
                               doc="extra end elements per spatial axis, each < stride; absent means 0"),)
    traits = {"pure"}
    examples = (Ex("f32[2,3,4]", "f32[3,2,3]"),
                Ex("f32[1,4,3,4]", "f32[4,3,3,2]", "f32[6]", strides=[2, 3], pads=[1, 0, 0, 1],
                   dilations=[1, 2], groups=2, output_padding=[1, 2]),
                Ex("f32[1,2,2,3,2]", "f32[2,1,2,2,3]", "f32[1]", strides=[2, 1, 2],
                   pads=[0, 0, 1, 1, 0, 0], output_padding=[1, 0, 0]),
                Ex("f32[2,3,5]", "f32[3,1,3]", groups=3, strides=[2], pads=[3, 2], dilations=[2]))

    def infer(x, w, bias, *, strides, pads, dilations, groups, output_padding):
        same_dtype(x, w, *([bias] if bias is not None else []))
        y = _conv_t_type(x, w, strides, pads, dilations, groups, output_padding)
        if bias is not None and (bias.rank != 1 or not _same(bias.shape[0], y.shape[1])):
            raise ShapeError(f"bias must be ({y.shape[1]},), got shape {list(bias.shape)}")
        return y

    def ref(x, w, bias, *, strides, pads, dilations, groups, output_padding):
        n = x.ndim - 2
        s, pb, pe, d = _geometry(n, strides, pads, dilations)
        op = (0,) * n if output_padding is None else output_padding
        sizes = tuple((m - 1) * si + di * (k - 1) + p + 1 - b - e
                      for m, si, di, k, p, b, e in zip(x.shape[2:], s, d, w.shape[2:], op, pb, pe))
        if min(sizes) < 1:
            raise ShapeError(f"pads {list(pads)} leave an empty output for input {list(x.shape)}")
        y = _conv_t_np(x, w, s, pb, pe, d, groups, sizes)
        if bias is not None:
            y = y + bias.astype(y.dtype).reshape((-1,) + (1,) * n)
        return y.astype(x.dtype)

    def vjp(b, op, g):
        if g is None:
            return [None] * len(op.operands)
        x, w = op.operands[:2]
        a = _conv_attrs(op)
        # output_padding < stride makes conv(g) exactly x's size
        grads = [b.nn.conv(g, w, **a), b.nn.conv_weight_grad(g, x, w, **a)]
        if len(op.operands) == 3:
            grads.append(_sum_except_channels(b, g))
        return grads

    def cost(op, bind):
        return _macs_cost(op.operands[0], op.operands[1], op.operands, op, bind)


@declare
class conv_input_grad:
    """The gradient of nn.conv with respect to its input: given g, the cotangent of
    y = conv(x, w) (same strides, pads, dilations, groups), the result has x's type and is
    J^T g, a transposed convolution of g by w sized to x (the sizes conv rounded away get
    zeros). Only x's shape is read, so symbolic spatial sizes work."""
    name = "nn.conv_input_grad"
    operands = (Operand("g", FLOAT), Operand("w", FLOAT), Operand("x", FLOAT, doc="only its shape is read"))
    attrs = CONV_ATTRS
    traits = {"pure"}
    examples = (Ex("f32[2,4,5]", "f32[4,3,3]", "f32[2,3,7]"),
                Ex("f32[1,6,4,4]", "f32[6,2,3,2]", "f32[1,4,6,5]", strides=[2, 1],
                   pads=[1, 0, 2, 1], dilations=[1, 2], groups=2),
                Ex("f32[1,2,5,2,4]", "f32[2,2,2,3,2]", "f32[1,2,5,4,4]", strides=[1, 2, 1],
                   pads=[0, 1, 1, 1, 0, 0]))

    def infer(g, w, x, *, strides, pads, dilations, groups):
        same_dtype(g, w, x)
        _check_like(g, _conv_type(x, w, strides, pads, dilations, groups), "g")
        return x

    def ref(g, w, x, *, strides, pads, dilations, groups):
        n = x.ndim - 2
        s, pb, pe, d = _geometry(n, strides, pads, dilations)
        out = _out_dims(x.shape[2:], w.shape[2:], s, pb, pe, d)
        if g.shape[2:] != out or g.shape[0] != x.shape[0]:
            raise ShapeError(f"g has shape {list(g.shape)}, conv of x {list(x.shape)} gives spatial "
                             f"{list(out)}")
        return _conv_t_np(g, w, s, pb, pe, d, groups, x.shape[2:]).astype(x.dtype)

    def vjp(b, op, h):
        if h is None:
            return [None, None, None]
        g, w, _ = op.operands
        a = _conv_attrs(op)
        return [b.nn.conv(h, w, **a), b.nn.conv_weight_grad(h, g, w, **a), None]

    def cost(op, bind):
        return _macs_cost(op.operands[0], op.operands[1], op.operands[:2], op, bind)


@declare
class conv_weight_grad:
    """The gradient of nn.conv with respect to its weight: given x and g, the cotangent of
    y = conv(x, w) (same strides, pads, dilations, groups), the result has w's type:

        dw[o, c, t] = sum_{n, p} g[n, o, p] * x_padded[n, grp*C/groups + c, p*stride + t*dilation]

    Only w's shape is read (it fixes the kernel size, which the other shapes cannot)."""
    name = "nn.conv_weight_grad"
    operands = (Operand("x", FLOAT), Operand("g", FLOAT), Operand("w", FLOAT, doc="only its shape is read"))
    attrs = CONV_ATTRS
    traits = {"pure"}
    examples = (Ex("f32[2,3,7]", "f32[2,4,5]", "f32[4,3,3]"),
                Ex("f32[1,4,6,5]", "f32[1,6,4,4]", "f32[6,2,3,2]", strides=[2, 1],
                   pads=[1, 0, 2, 1], dilations=[1, 2], groups=2),
                Ex("f32[2,3,9]", "f32[2,3,3]", "f32[3,1,3]", groups=3, strides=[3], dilations=[2],
                   pads=[2, 1]))

    def infer(x, g, w, *, strides, pads, dilations, groups):
        same_dtype(x, g, w)
        _check_like(g, _conv_type(x, w, strides, pads, dilations, groups), "g")
        return w

    def ref(x, g, w, *, strides, pads, dilations, groups):
        return _conv_weight_grad_np(x, g, w.shape[2:], strides, pads, dilations, groups).astype(x.dtype)

    def vjp(b, op, h):
        if h is None:
            return [None, None, None]
        x, g, _ = op.operands
        a = _conv_attrs(op)
        return [b.nn.conv_input_grad(g, h, x, **a), b.nn.conv(x, h, **a), None]

    def cost(op, bind):
        return _macs_cost(op.operands[1], op.operands[2], op.operands[:2], op, bind)


@declare
class max_pool:
    """Max over windows as ONNX MaxPool, over 1, 2 or 3 spatial dims of x (N, C, *S): window p
    covers x[p*stride + t*dilation - pad_begin] for taps t < kernel; padding never wins (it acts
    as -inf), so a window holding only padding gives -inf. ceil_mode rounds the window count up
    but drops a last window that would start in the end padding (as ONNX and torch). NaN
    propagates. The gradient goes to the first maximum of each window in row-major tap order
    (torch's choice), through nn.max_pool_grad."""
    name = "nn.max_pool"
    operands = (Operand("x", FLOAT),)
    attrs = POOL_ATTRS
    traits = {"pure"}
    cost = _pool_cost(0, (0,))
    examples = (Ex("f32[2,3,7]", kernel=[3]),
                Ex("f32[1,2,6,7]", kernel=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1]),
                Ex("f32[1,2,5,6]", kernel=[2, 3], strides=[2, 2], dilations=[2, 1], ceil_mode=True),
                Ex("f32[1,1,4,5,3]", kernel=[2, 2, 2], strides=[2, 1, 2], pads=[0, 1, 0, 0, 0, 1],
                   ceil_mode=True))

    def infer(x, *, kernel, strides, pads, dilations, ceil_mode):
        return _pool_type(x, kernel, strides, pads, dilations, ceil_mode)

    ref = _max_pool_np

    def vjp(b, op, g):
        if g is None:
            return [None]
        return [b.nn.max_pool_grad(op.operands[0], g, **op.attrs)]


@declare
class max_pool_grad:
    """The gradient of nn.max_pool (same attributes) with respect to x: each element of g goes
    to the first maximum of its window, in row-major tap order (torch's choice; the first NaN
    when the window holds one), and overlapping windows add up. A window holding only padding
    routes nowhere. The result has x's type."""
    name = "nn.max_pool_grad"
    operands = (Operand("x", FLOAT), Operand("g", FLOAT))
    attrs = POOL_ATTRS
    traits = {"pure"}
    vjp = not_differentiable("piecewise linear routing: its derivative with respect to g is a "
                             "gather at each window's argmax, which no op provides; second "
                             "derivatives of max pooling are not supported")
    cost = _pool_cost(1, (0, 1))
    examples = (Ex("f32[2,3,7]", "f32[2,3,5]", kernel=[3]),
                Ex("f32[1,2,6,7]", "f32[1,2,3,4]", kernel=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1]),
                Ex(np.array([[[1, 3, 3, 2, 2, 0]]], np.float32), np.array([[[1, 2, 4, 8]]], np.float32),
                   kernel=[3]),
                Ex("f32[1,1,4,5,3]", "f32[1,1,2,5,2]", kernel=[2, 2, 2], strides=[2, 1, 2],
                   pads=[0, 1, 0, 0, 0, 1], ceil_mode=True))

    def infer(x, g, *, kernel, strides, pads, dilations, ceil_mode):
        same_dtype(x, g)
        _check_like(g, _pool_type(x, kernel, strides, pads, dilations, ceil_mode), "g")
        return x

    ref = _max_pool_grad_np


@declare
class avg_pool:
    """Mean over windows as ONNX AveragePool, over 1, 2 or 3 spatial dims of x (N, C, *S):
    window p covers x[p*stride + t*dilation - pad_begin] for taps t < kernel; its sum is divided
    by the number of taps inside x, or with count_include_pad by the number inside x plus the
    explicit pads (taps in the ceil_mode overhang never count, as in torch and the ONNX
    reference). A window with no counted tap gives 0. ceil_mode rounds the window count up but
    drops a last window that would start in the end padding."""
    name = "nn.avg_pool"
    operands = (Operand("x", FLOAT),)
    attrs = POOL_ATTRS + (COUNT_PAD,)
    traits = {"pure"}
    cost = _pool_cost(1, (0,))
    examples = (Ex("f32[2,3,7]", kernel=[3]),
                Ex("f32[1,2,6,7]", kernel=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1]),
                Ex("f32[1,2,6,7]", kernel=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1],
                   count_include_pad=True, ceil_mode=True),
                Ex("f32[1,2,5,6]", kernel=[2, 3], strides=[2, 2], dilations=[2, 1], ceil_mode=True),
                Ex("f32[1,1,4,5,3]", kernel=[2, 2, 2], strides=[2, 1, 2], pads=[0, 1, 0, 0, 0, 1],
                   count_include_pad=True))

    def infer(x, *, kernel, strides, pads, dilations, ceil_mode, count_include_pad):
        return _pool_type(x, kernel, strides, pads, dilations, ceil_mode)

    ref = _avg_pool_np

    def vjp(b, op, g):
        if g is None:
            return [None]
        return [b.nn.avg_pool_grad(op.operands[0], g, **op.attrs)]


@declare
class avg_pool_grad:
    """The gradient of nn.avg_pool (same attributes) with respect to x: each element of g,
    divided by its window's divisor, is added to every tap of its window that lies inside x.
    Only x's shape is read; the result has x's type. Linear in g: its own gradient is avg_pool."""
    name = "nn.avg_pool_grad"
    operands = (Operand("x", FLOAT, doc="only its shape is read"), Operand("g", FLOAT))
    attrs = POOL_ATTRS + (COUNT_PAD,)
    traits = {"pure"}
    cost = _pool_cost(1, (1,))
    examples = (Ex("f32[2,3,7]", "f32[2,3,5]", kernel=[3]),
                Ex("f32[1,2,6,7]", "f32[1,2,4,4]", kernel=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1],
                   count_include_pad=True, ceil_mode=True),
                Ex("f32[1,2,5,6]", "f32[1,2,2,3]", kernel=[2, 3], strides=[2, 2], dilations=[2, 1],
                   ceil_mode=True),
                Ex("f32[1,1,4,5,3]", "f32[1,1,2,5,2]", kernel=[2, 2, 2], strides=[2, 1, 2],
                   pads=[0, 1, 0, 0, 0, 1], count_include_pad=True))

    def infer(x, g, *, kernel, strides, pads, dilations, ceil_mode, count_include_pad):
        same_dtype(x, g)
        _check_like(g, _pool_type(x, kernel, strides, pads, dilations, ceil_mode), "g")
        return x

    ref = _avg_pool_grad_np

    def vjp(b, op, h):
        if h is None:
            return [None, None]
        return [None, b.nn.avg_pool(h, **op.attrs)]
