"""Neural-network layers: reductions, softmax, convolution and pooling, normalizations, losses,
attention and rotary embeddings."""
from __future__ import annotations

import math

import numpy as np

from ckir import dtypes as dt
from ckir.dialects.nn.layers import build_reduce
from ckir.errors import ShapeError

from ..importer import Scope, onnx_dtype
from ..registry import converter


# --- helpers ----------------------------------------------------------------------------------
def _norm_axes(ctx, axes, rank):
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise ctx.fail(f"axis {a} is out of range for rank {rank}")
        out.append(a % rank)
    if len(set(out)) != len(out):
        raise ctx.fail(f"repeated axis in {list(axes)}")
    return sorted(out)


def _norm_axis(ctx, axis, rank):
    return _norm_axes(ctx, [axis], rank)[0]


def _static(dims) -> bool:
    return all(type(d) is int for d in dims)


# --- reductions -------------------------------------------------------------------------------
REDUCE = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "max", "ReduceMin": "min",
          "ReduceProd": "prod", "ReduceL1": "l1", "ReduceL2": "l2", "ReduceLogSum": "log_sum",
          "ReduceLogSumExp": "log_sum_exp", "ReduceSumSquare": "sum_square"}


def _reduce(ctx, kind, axes, noop):
    """axes: a list known at import, or a Value known only at run time."""
    x = ctx.x(0)
    keepdims = bool(ctx.attr("keepdims", 1))
    if not isinstance(axes, list):
        return ctx.b.nn.reduce_dyn(x, axes, kind=kind, keepdims=keepdims, noop_with_empty_axes=noop)
    if not axes:
        if noop:
            return x
        axes = list(range(x.type.rank))
    try:
        return build_reduce(ctx.b, x, kind, _norm_axes(ctx, axes, x.type.rank), keepdims)
    except ShapeError as e:
        raise ctx.fail(str(e)) from None


def _reduce_attr_axes(kind):
    def conv(ctx):
        return _reduce(ctx, kind, list(ctx.attr("axes", [])), False)
    return conv


def _reduce_input_axes(kind):
    def conv(ctx):
        noop = bool(ctx.attr("noop_with_empty_axes", 0))
        v = ctx.opt(1)
        if v is None or v.type.rank == 1 and v.type.shape[0] == 0:
            axes = []
        else:
            axes = ctx.ints(1, "axes")
            if axes is None:
                if v.type.dtype is not dt.i64:
                    v = ctx.b.nn.cast(v, to=dt.i64)
                axes = v if v.type.rank == 1 else ctx.b.nn.reshape(v, shape=[-1])
        return _reduce(ctx, kind, axes, noop)
    return conv


for _op, _kind in REDUCE.items():
    converter(_op, since=1)(_reduce_attr_axes(_kind))
    converter(_op, since=13 if _op == "ReduceSum" else 18)(_reduce_input_axes(_kind))


def _arg(fn):
    def conv(ctx):
        x = ctx.x(0)
        axis = ctx.attr("axis", 0)
        _norm_axis(ctx, axis, x.type.rank)
        if x.type.dtype.is_bool:
            x = ctx.b.nn.cast(x, to=dt.u8)
        return getattr(ctx.b.nn, fn)(x, axis=axis, keepdims=bool(ctx.attr("keepdims", 1)),
                                     select_last_index=bool(ctx.attr("select_last_index", 0)))
    return conv


converter("ArgMax", since=1)(_arg("argmax"))
converter("ArgMin", since=1)(_arg("argmin"))


# --- softmax ----------------------------------------------------------------------------------
def _softmax_flat(ctx, fn):
    """Opsets < 13: x is seen as 2-D (prod(shape[:axis]), prod(shape[axis:])) and normalized
    over its second dim, i.e. over all axes from `axis` on."""
    b = ctx.b
    x = ctx.x(0)
    rank = x.type.rank
    axis = _norm_axis(ctx, ctx.attr("axis", 1), max(rank, 1)) if rank else 0
    if rank == 0 or axis == rank - 1:
        return getattr(b.nn, fn)(x, axis=-1)
    tail = x.type.shape[axis:]
    if _static(tail):
        y = getattr(b.nn, fn)(b.nn.reshape(x, shape=[-1, math.prod(tail)]), axis=-1)
        return b.nn.reshape_like(y, x)
    # symbolic trailing dims: the same normalization over several axes, composed
    axes = list(range(axis, rank))
    m = b.nn.max(x, axes=axes, keepdims=True)
    z = b.nn.sub(x, m)
    lse = b.nn.log(b.nn.sum(b.nn.exp(z), axes=axes, keepdims=True))
    return b.nn.sub(z, lse) if fn == "log_softmax" else b.nn.exp(b.nn.sub(z, lse))


def _softmax(fn):
    def conv(ctx):
        return getattr(ctx.b.nn, fn)(ctx.x(0), axis=ctx.attr("axis", -1))
    return conv


for _op, _fn in (("Softmax", "softmax"), ("LogSoftmax", "log_softmax")):
    converter(_op, since=1)(lambda ctx, _fn=_fn: _softmax_flat(ctx, _fn))
    converter(_op, since=13)(_softmax(_fn))


# --- convolution and pooling ------------------------------------------------------------------
def auto_pads(ctx, x, kernel, strides, dilations):
    """ONNX pads (begins then ends) from auto_pad / pads for a conv or pool over x."""
    n = len(kernel)
    auto = ctx.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(ctx.attr("pads", [0] * (2 * n)))
        if len(pads) != 2 * n:
            raise ctx.fail(f"pads {pads} must have {2 * n} entries")
        return pads
    if auto == "VALID":
        return [0] * (2 * n)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise ctx.fail(f"unknown auto_pad {auto!r}")
    begins, ends = [], []
    for i, (size, k, s, d) in enumerate(zip(x.type.shape[2:], kernel, strides, dilations)):
        span = d * (k - 1) + 1
        if type(size) is not int:
            if s != 1:
                raise ctx.fail(f"auto_pad {auto} with stride {s} needs a static size for spatial "
                               f"axis {i} (x is {x.type}): the padding depends on it")
            total = span - 1
        else:
            total = max(0, (-(-size // s) - 1) * s + span - size)
        small = total // 2
        begins.append(small if auto == "SAME_UPPER" else total - small)
        ends.append(total - begins[-1])
    return begins + ends


def conv_window(ctx, x, w=None):
    """(kernel, strides, dilations) of a conv (kernel from w) or pool (kernel_shape)."""
    n = x.type.rank - 2
    if n < 1:
        raise ctx.fail(f"x must be (N, C, spatial...), got {x.type}")
    if w is not None:
        kernel = list(w.type.shape[2:])
        given = ctx.attr("kernel_shape", None)
        if given is not None and _static(kernel) and list(given) != kernel:
            raise ctx.fail(f"kernel_shape {list(given)} disagrees with the weight {w.type}")
        if not _static(kernel):
            if given is None:
                raise ctx.fail(f"the kernel size is unknown (weight {w.type}, no kernel_shape)")
            kernel = list(given)
    else:
        kernel = list(ctx.attr("kernel_shape"))
    if len(kernel) != n:
        raise ctx.fail(f"kernel {kernel} must have {n} entries for x {x.type}")
    strides = list(ctx.attr("strides", [1] * n) or [1] * n)
    dilations = list(ctx.attr("dilations", [1] * n) or [1] * n)
    return kernel, strides, dilations


def window_geometry(strides, pads, dilations):
    """nn conv/pool attributes, leaving defaults absent."""
    return {"strides": None if set(strides) == {1} else strides,
            "pads": pads if any(pads) else None,
            "dilations": None if set(dilations) == {1} else dilations}


@converter("Conv", since=1)
def conv(ctx):
    x, w, bias = ctx.x(0), ctx.x(1), ctx.opt(2)
    kernel, strides, dilations = conv_window(ctx, x, w)
    pads = auto_pads(ctx, x, kernel, strides, dilations)
    return ctx.b.nn.conv(x, w, *([bias] if bias is not None else []), groups=ctx.attr("group", 1),
                         **window_geometry(strides, pads, dilations))


@converter("ConvTranspose", since=1)
def conv_transpose(ctx):
    b = ctx.b
    x, w, bias = ctx.x(0), ctx.x(1), ctx.opt(2)
    kernel, strides, dilations = conv_window(ctx, x, w)
    n = len(kernel)
    outpad = list(ctx.attr("output_padding", [0] * n))
    if len(outpad) != n:
        raise ctx.fail(f"output_padding {outpad} must have {n} entries")
    auto = ctx.attr("auto_pad", "NOTSET")
    out_shape = ctx.attr("output_shape", None)
    if out_shape is not None and len(out_shape) == n + 2:
        out_shape = out_shape[2:]
    if out_shape is None and auto in ("NOTSET", "", "VALID"):
        pads = [0] * (2 * n) if auto == "VALID" else list(ctx.attr("pads", [0] * (2 * n)))
        begins, ends = pads[:n], pads[n:]
    else:
        # pads follow from the wanted output size; the full (unpadded) output may be smaller,
        # in which case a negative pad extends it with zeros
        sizes = x.type.shape[2:]
        if not _static(sizes):
            raise ctx.fail(f"output_shape / auto_pad {auto} need static spatial sizes, x is {x.type}")
        if out_shape is None:
            out_shape = [m * s for m, s in zip(sizes, strides)]
        if len(out_shape) != n:
            raise ctx.fail(f"output_shape {list(out_shape)} must have {n} entries")
        begins, ends = [], []
        for m, s, k, d, op, o in zip(sizes, strides, kernel, dilations, outpad, out_shape):
            full = s * (m - 1) + d * (k - 1) + 1
            total = full + op - o
            begin = total // 2 if auto == "SAME_UPPER" else total - total // 2
            begins.append(begin)
            ends.append(full - begin - o)
        outpad = [0] * n
    # nn.conv_transpose takes pads >= 0 and output_padding < stride: the rest is nn.pad
    extend_b = [max(-p, 0) for p in begins]
    extend_e = []
    for i in range(n):
        e = max(-ends[i], 0) + outpad[i]
        if e < strides[i] and not extend_b[i]:
            outpad[i], e = e, 0
        else:
            outpad[i] = 0
        extend_e.append(e)
    pads = [max(p, 0) for p in begins] + [max(p, 0) for p in ends]
    extra = any(extend_b) or any(extend_e)
    y = b.nn.conv_transpose(x, w, *([bias] if bias is not None and not extra else []),
                            groups=ctx.attr("group", 1), output_padding=outpad if any(outpad) else None,
                            **window_geometry(strides, pads, dilations))
    if extra:
        y = b.nn.pad(y, pads=[0, 0] + extend_b + [0, 0] + extend_e)
        if bias is not None:
            y = b.nn.add(y, b.nn.unsqueeze(bias, axes=list(range(1, n + 1))))
    return y


def _pool_attrs(ctx, x):
    kernel, strides, dilations = conv_window(ctx, x)
    pads = auto_pads(ctx, x, kernel, strides, dilations)
    ceil = bool(ctx.attr("ceil_mode", 0))
    if ctx.attr("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        ceil = False   # the output size is ceil(size / stride), which the pads already give
    return dict(kernel=kernel, ceil_mode=ceil, **window_geometry(strides, pads, dilations))


def _float_view(ctx, x):
    """Pools and window ops run on floats: 8-bit ints go through f32 exactly."""
    t = x.type.dtype
    if t.is_float:
        return x, None
    if t in (dt.i8, dt.u8):
        return ctx.b.nn.cast(x, to=dt.f32), t
    raise ctx.fail(f"{ctx.op_type} of {t} is not supported")


@converter("MaxPool", since=1)
def max_pool(ctx):
    b = ctx.b
    x, back = _float_view(ctx, ctx.x(0))
    at = _pool_attrs(ctx, x)
    y = b.nn.max_pool(x, **at)
    if back is not None:
        y = b.nn.cast(y, to=back)
    if not ctx.out_used(1):
        return y
    idx = b.nn.max_pool_indices(x, storage_order=ctx.attr("storage_order", 0), **at)
    return [y, idx]


@converter("AveragePool", since=1)
def average_pool(ctx):
    x = ctx.x(0)
    return ctx.b.nn.avg_pool(x, count_include_pad=bool(ctx.attr("count_include_pad", 0)),
                             **_pool_attrs(ctx, x))


@converter("LpPool", since=1)
def lp_pool(ctx):
    """(sum over the window of |x|^p)^(1/p): a sum pool of |x|^p (padding adds zeros)."""
    b = ctx.b
    x = ctx.x(0)
    p = ctx.attr("p", 2)
    if ctx.opset < 2:
        p = int(p)
    at = _pool_attrs(ctx, x)
    n = len(at["kernel"])
    pads = at["pads"] or [0] * (2 * n)
    if at["ceil_mode"]:
        # the ceil_mode overhang becomes explicit end padding, so every window is full
        sizes = x.type.shape[2:]
        if not _static(sizes):
            raise ctx.fail(f"ceil_mode needs static spatial sizes, x is {x.type}")
        strides = at["strides"] or [1] * n
        dil = at["dilations"] or [1] * n
        pads = list(pads)
        for i, (m, k, s, d) in enumerate(zip(sizes, at["kernel"], strides, dil)):
            span = m + pads[i] + pads[n + i] - d * (k - 1) - 1
            o = -(-span // s) + 1
            if (o - 1) * s >= m + pads[i]:
                o -= 1
            pads[n + i] = max(pads[n + i], (o - 1) * s + d * (k - 1) + 1 - m - pads[i])
        at = dict(at, pads=pads if any(pads) else None, ceil_mode=False)
    powered = b.nn.mul(x, x) if p == 2 else b.nn.pow(b.nn.abs(x), float(p))
    s = b.nn.mul(b.nn.avg_pool(powered, count_include_pad=True, **at), float(math.prod(at["kernel"])))
    return b.nn.sqrt(s) if p == 2 else b.nn.pow(s, 1.0 / p)


def _spatial(x):
    return list(range(2, x.type.rank))


@converter("GlobalAveragePool", since=1)
def global_average_pool(ctx):
    x = ctx.x(0)
    return ctx.b.nn.mean(x, axes=_spatial(x), keepdims=True)


@converter("GlobalMaxPool", since=1)
def global_max_pool(ctx):
    x = ctx.x(0)
    return ctx.b.nn.max(x, axes=_spatial(x), keepdims=True)


@converter("GlobalLpPool", since=1)
def global_lp_pool(ctx):
    b = ctx.b
    x = ctx.x(0)
    p = float(ctx.attr("p", 2))
    powered = b.nn.mul(x, x) if p == 2 else b.nn.pow(b.nn.abs(x), p)
    s = b.nn.sum(powered, axes=_spatial(x), keepdims=True)
    return b.nn.sqrt(s) if p == 2 else b.nn.pow(s, 1.0 / p)


@converter("MaxUnpool", since=9)
def max_unpool(ctx):
    x, idx = ctx.x(0), ctx.x(1)
    kernel = list(ctx.attr("kernel_shape"))
    n = len(kernel)
    pads = list(ctx.attr("pads", [0] * (2 * n)))
    strides = list(ctx.attr("strides", [1] * n))
    out = ctx.ints(2, "output_shape")
    extra = []
    if out is None and ctx.opt(2) is not None:
        extra = [ctx.opt(2)]
    if idx.type.dtype is not dt.i64:
        idx = ctx.b.nn.cast(idx, to=dt.i64)
    return ctx.b.nn.max_unpool(x, idx, *extra, kernel=kernel, strides=strides if set(strides) != {1} else None,
                               pads=pads if any(pads) else None, output_shape=out)


# --- normalizations ---------------------------------------------------------------------------
def _per_channel(ctx, p, x):
    """A per-channel parameter (C,) shaped (C, 1, ..., 1) to broadcast against x (N, C, ...);
    a parameter of higher rank (opset < 9 spatial=0: (C, *spatial)) is used as given."""
    if p.type.rank == 1 and x.type.rank > 2:
        return ctx.b.nn.unsqueeze(p, axes=list(range(1, x.type.rank - 1)))
    return p


def _batch_stats(b, x):
    """(mean, population variance) over every axis but the channels, keepdims."""
    axes = [0] + list(range(2, x.type.rank))
    mean = b.nn.mean(x, axes=axes, keepdims=True)
    xc = b.nn.sub(x, mean)
    return mean, b.nn.mean(b.nn.mul(xc, xc), axes=axes, keepdims=True)


@converter("BatchNormalization", since=1)
def batch_norm(ctx):
    """y = (x - mean) / sqrt(var + eps) * scale + bias per channel. Inference uses the given
    statistics. Training mode (opset >= 14: training_mode = 1; opsets 7-13: more than one output
    asked for; opsets < 7: is_test = 0) normalizes with the batch's statistics and also returns
    the running statistics mixed with momentum (and before opset 14 the batch's as saved_*)."""
    b = ctx.b
    x, scale, bias, mean, var = (ctx.x(i) for i in range(5))
    eps = ctx.attr("epsilon", 1e-5)
    if ctx.opset >= 14:
        training = bool(ctx.attr("training_mode", 0))
    elif ctx.opset >= 7:
        training = any(ctx.out_used(i) for i in range(1, 5))
    else:
        training = not ctx.attr("is_test", 0)
    scale, bias, mean, var = (_per_channel(ctx, p, x) for p in (scale, bias, mean, var))
    if not training:
        k = b.nn.mul(scale, b.nn.rsqrt(b.nn.add(var, eps)))
        return b.nn.add(b.nn.mul(b.nn.sub(x, mean), k), bias)
    if ctx.opset < 9 and ctx.attr("spatial", 1) == 0:
        raise ctx.fail("training-mode BatchNormalization with spatial = 0 is not supported")
    bmean, bvar = _batch_stats(b, x)
    y = b.nn.add(b.nn.mul(b.nn.sub(x, bmean), b.nn.mul(scale, b.nn.rsqrt(b.nn.add(bvar, eps)))), bias)
    m = ctx.attr("momentum", 0.9)
    flat = [b.nn.reshape_like(v, ctx.x(3)) for v in (bmean, bvar)]
    running = [b.nn.add(b.nn.mul(ctx.x(3 + i), m), b.nn.mul(flat[i], 1 - m)) for i in range(2)]
    return [y] + running + (flat if ctx.opset < 14 else [])


@converter("InstanceNormalization", since=1)
def instance_norm(ctx):
    b = ctx.b
    x = ctx.x(0)
    if x.type.rank < 3:
        raise ctx.fail(f"x must be (N, C, spatial...), got {x.type}")
    y = b.nn.layer_norm(x, axis=2, eps=ctx.attr("epsilon", 1e-5))
    return b.nn.add(b.nn.mul(y, _per_channel(ctx, ctx.x(1), x)), _per_channel(ctx, ctx.x(2), x))


@converter("GroupNormalization", since=21)
def group_norm(ctx):
    """Per (instance, group of channels) normalization, then per-channel scale and bias (opset
    21; GroupNormalization-18 is deprecated and models using it fail onnx.checker)."""
    b = ctx.b
    x, scale, bias = ctx.x(0), ctx.x(1), ctx.x(2)
    g = ctx.attr("num_groups")
    c = x.type.shape[1] if x.type.rank >= 2 else None
    if type(c) is not int or c % g:
        raise ctx.fail(f"the channels of x {x.type} must be static and divisible by num_groups {g}")
    rest = x.type.shape[2:]
    n = x.type.shape[0]
    if _static(rest):
        shape = [-1, g, c // g * math.prod(rest)]
    elif type(n) is int or n.name is not None:
        shape = [n if type(n) is int else n.name, g, -1]
    else:
        raise ctx.fail(f"x {x.type} has an anonymous batch dim and symbolic spatial dims: cannot "
                       "form the groups")
    y = b.nn.reshape_like(b.nn.layer_norm(b.nn.reshape(x, shape=shape), eps=ctx.attr("epsilon", 1e-5)), x)
    return b.nn.add(b.nn.mul(y, _per_channel(ctx, scale, x)), _per_channel(ctx, bias, x))


def _stash(ctx, x):
    """x in the stash_type precision (float by default) for statistics outputs."""
    want = onnx_dtype(ctx.attr("stash_type", 1), ctx.where)
    return x if x.type.dtype is want else ctx.b.nn.cast(x, to=want)


@converter("LayerNormalization", since=17)
def layer_norm(ctx):
    b = ctx.b
    x, scale, bias = ctx.x(0), ctx.x(1), ctx.opt(2)
    axis = _norm_axis(ctx, ctx.attr("axis", -1), x.type.rank)
    eps = ctx.attr("epsilon", 1e-5)
    y = b.nn.layer_norm(x, scale, *([bias] if bias is not None else []), axis=axis, eps=eps)
    if not (ctx.out_used(1) or ctx.out_used(2)):
        return y
    xs = _stash(ctx, x)
    axes = list(range(axis, x.type.rank))
    mean = b.nn.mean(xs, axes=axes, keepdims=True)
    xc = b.nn.sub(xs, mean)
    inv = b.nn.rsqrt(b.nn.add(b.nn.mean(b.nn.mul(xc, xc), axes=axes, keepdims=True), eps))
    return [y, mean, inv]


@converter("RMSNormalization", since=23)
def rms_norm(ctx):
    x = ctx.x(0)
    axis = _norm_axis(ctx, ctx.attr("axis", -1), x.type.rank)
    return ctx.b.nn.rms_norm(x, ctx.x(1), axis=axis, eps=ctx.attr("epsilon", 1e-5))


@converter("LRN", since=1)
def lrn(ctx):
    """x / (bias + alpha / size * s)^beta, s the sum of x^2 over the `size` channels around each
    channel (floor((size-1)/2) before, ceil((size-1)/2) after): an average pool over the channel
    axis seen as a spatial axis."""
    b = ctx.b
    x = ctx.x(0)
    size = ctx.attr("size")
    if not 3 <= x.type.rank <= 4:
        raise ctx.fail(f"LRN of x {x.type}: only (N, C, L) and (N, C, H, W) are supported")
    alpha, beta, bias = ctx.attr("alpha", 1e-4), ctx.attr("beta", 0.75), ctx.attr("bias", 1.0)
    rest = x.type.rank - 2
    lo, hi = (size - 1) // 2, size // 2
    sq = b.nn.unsqueeze(b.nn.mul(x, x), axes=[1])
    avg = b.nn.avg_pool(sq, kernel=[size] + [1] * rest, pads=[lo] + [0] * rest + [hi] + [0] * rest,
                        count_include_pad=True)
    d = b.nn.add(b.nn.mul(b.nn.squeeze(avg, axes=[1]), float(alpha)), float(bias))
    return b.nn.div(x, b.nn.pow(d, float(beta)) if beta != 0.5 else b.nn.sqrt(d))


@converter("LpNormalization", since=1)
def lp_normalization(ctx):
    b = ctx.b
    x = ctx.x(0)
    axis = _norm_axis(ctx, ctx.attr("axis", -1), x.type.rank)
    p = ctx.attr("p", 2)
    if p == 1:
        norm = b.nn.sum(b.nn.abs(x), axes=[axis], keepdims=True)
    elif p == 2:
        norm = b.nn.sqrt(b.nn.sum(b.nn.mul(x, x), axes=[axis], keepdims=True))
    else:
        raise ctx.fail(f"p must be 1 or 2, got {p}")
    # a zero norm gives zeros, as the ONNX reference does
    return b.nn.div(x, b.nn.where(b.nn.eq(norm, 0.0), 1.0, norm))


@converter("MeanVarianceNormalization", since=9)
def mvn(ctx):
    """(x - mean) / (sqrt(var) + 1e-9) over `axes` (default [0, 2, 3]), as ONNX's function body."""
    b = ctx.b
    x = ctx.x(0)
    axes = _norm_axes(ctx, ctx.attr("axes", [0, 2, 3]), x.type.rank)
    xc = b.nn.sub(x, b.nn.mean(x, axes=axes, keepdims=True))
    sd = b.nn.sqrt(b.nn.mean(b.nn.mul(xc, xc), axes=axes, keepdims=True))
    return b.nn.div(xc, b.nn.add(sd, 1e-9))


# --- losses -----------------------------------------------------------------------------------
def _loss_attrs(ctx):
    red = ctx.attr("reduction", "mean")
    if red not in ("none", "sum", "mean"):
        raise ctx.fail(f"unknown reduction {red!r}")
    return {"reduction": red, "ignore_index": ctx.attr("ignore_index", None)}


@converter("NegativeLogLikelihoodLoss", since=12)
def nll_loss(ctx):
    w = ctx.opt(2)
    return ctx.b.nn.nll_loss(ctx.x(0), ctx.x(1), *([w] if w is not None else []), **_loss_attrs(ctx))


@converter("SoftmaxCrossEntropyLoss", since=12)
def softmax_cross_entropy(ctx):
    """nn.log_softmax over the class axis, then nn.nll_loss; the log-probabilities are the
    optional second output."""
    w = ctx.opt(2)
    lp = ctx.b.nn.log_softmax(ctx.x(0), axis=1)
    loss = ctx.b.nn.nll_loss(lp, ctx.x(1), *([w] if w is not None else []), **_loss_attrs(ctx))
    return [loss, lp]


# --- attention --------------------------------------------------------------------------------
def _dim_spec(ctx, dims, what):
    """nn.reshape shape entries for dims kept as they are: ints, dim names, at most one -1."""
    out = [d if type(d) is int else (d.name if d.name is not None else -1) for d in dims]
    if out.count(-1) > 1:
        raise ctx.fail(f"{what}: cannot reshape with two anonymous dims ({out})")
    return out


def _split_heads(ctx, v, heads, what):
    """(B, S, H*D) -> (B, H, S, D)."""
    if heads is None:
        raise ctx.fail(f"3-D {what} needs the q_num_heads and kv_num_heads attributes")
    bsz, s, hd = v.type.shape
    if type(hd) is not int or hd % heads:
        raise ctx.fail(f"{what} {v.type}: hidden size is not a static multiple of {heads} heads")
    shape = _dim_spec(ctx, [bsz, s], what) + [heads, hd // heads]
    return ctx.b.nn.transpose(ctx.b.nn.reshape(v, shape=shape), perm=[0, 2, 1, 3])


def _merge_heads(ctx, y):
    """(B, H, S, D) -> (B, S, H*D)."""
    bsz, h, s, d = y.type.shape
    if type(h) is not int or type(d) is not int:
        raise ctx.fail(f"cannot merge the heads of {y.type}: heads and head size must be static")
    t = ctx.b.nn.transpose(y, perm=[0, 2, 1, 3])
    return ctx.b.nn.reshape(t, shape=_dim_spec(ctx, [bsz, s], "Y") + [h * d])


def _visible(ctx, tq, tk, offset, causal, left, right):
    """Which keys each query may see, as a bool (Tq, Tk) constant (offset an int) or a bool
    (B, 1, Tq, Tk) Value (offset a per-batch i64 Value), or None when all are: query i at
    absolute position i + offset sees key j iff j <= i + offset (causal) and
    i + offset - left <= j <= i + offset + right (each bound when >= 0)."""
    if not causal and left < 0 and right < 0:
        return None
    if type(tq) is not int or type(tk) is not int:
        raise ctx.fail(f"this masking needs static query and key lengths (got {tq} and {tk})")
    d = np.arange(tk)[None, :] - np.arange(tq)[:, None]          # j - i
    if isinstance(offset, int):
        ok = np.ones((tq, tk), bool)
        if causal:
            ok &= d <= offset
        if left >= 0:
            ok &= d >= offset - left
        if right >= 0:
            ok &= d <= offset + right
        return ctx.b.constant(ok)
    b = ctx.b
    dv = b.constant(d.astype(np.int64))
    off = b.nn.reshape(offset, shape=[-1, 1, 1, 1])
    ok = None
    for cond in ([b.nn.le(dv, off)] if causal else []) + \
            ([b.nn.ge(dv, b.nn.sub(off, left))] if left >= 0 else []) + \
            ([b.nn.le(dv, b.nn.add(off, right))] if right >= 0 else []):
        ok = cond if ok is None else b.nn.and_(ok, cond)
    return ok


def _and(b, a, c):
    return c if a is None else a if c is None else b.nn.and_(a, c)


@converter("Attention", since=23)
def attention(ctx):
    """Scaled dot-product attention on nn.attention. 3-D inputs (B, S, H*D) are split into
    heads and merged back; past keys and values are concatenated in front of K and V (the
    present outputs). The causal frontier is offset-aware (query i sees key j <= i + offset,
    offset = the past length, or nonpad_kv_seqlen[b] - Tq): when it coincides with
    nn.attention's (the queries are the last Tq keys) nn.attention's causal flag is used, else
    an explicit mask. The optional qk_matmul_output is recomputed from its definition.
    softmax_precision is not needed: nn.attention computes f16/bf16 in f32 and f32 in f32 (a
    requested double softmax for f32 inputs differs by f32 rounding only)."""
    b = ctx.b
    q, k, v = ctx.x(0), ctx.x(1), ctx.x(2)
    mask, past_k, past_v = ctx.opt(3), ctx.opt(4), ctx.opt(5)
    nonpad = ctx.opt(6) if ctx.opset >= 24 else None
    causal = bool(ctx.attr("is_causal", 0))
    left, right = (ctx.attr("left_window_size", -1), ctx.attr("right_window_size", -1)) \
        if ctx.opset >= 25 else (-1, -1)
    softcap = ctx.attr("softcap", 0.0) or None
    scale = ctx.attr("scale", None)
    mode = ctx.attr("qk_matmul_output_mode", 0)
    rank = q.type.rank
    if rank == 3:
        q = _split_heads(ctx, q, ctx.attr("q_num_heads", None), "Q")
        k = _split_heads(ctx, k, ctx.attr("kv_num_heads", None), "K")
        v = _split_heads(ctx, v, ctx.attr("kv_num_heads", None), "V")
    elif rank != 4:
        raise ctx.fail(f"Q must be 3-D or 4-D, got {q.type}")
    if (past_k is None) != (past_v is None):
        raise ctx.fail("past_key and past_value must be given together")
    if nonpad is not None and past_k is not None:
        raise ctx.fail("nonpad_kv_seqlen cannot be combined with past_key / past_value")
    kv_len = k.type.shape[2]
    if past_k is not None:
        k = b.nn.concat([past_k, k], axis=2)
        v = b.nn.concat([past_v, v], axis=2)
    tq, tk = q.type.shape[2], k.type.shape[2]

    # the keys each query sees
    native = nonpad is None and kv_len == tq and (type(tq) is int or tq.name is not None)
    if nonpad is not None:
        if type(tq) is not int:
            raise ctx.fail(f"nonpad_kv_seqlen needs a static query length, Q is {q.type}")
        nonpad = nonpad if nonpad.type.dtype is dt.i64 else b.nn.cast(nonpad, to=dt.i64)
        offset = b.nn.sub(nonpad, tq)
    else:
        offset = past_k.type.shape[2] if past_k is not None else 0
    use_flag = native and (causal or (left < 0 and right < 0))
    window = left + 1 if use_flag and causal and left >= 0 else None
    visible = None if use_flag else _visible(ctx, tq, tk, offset, causal, left, right)
    if nonpad is not None:
        if type(tk) is not int:
            raise ctx.fail(f"nonpad_kv_seqlen needs a static key length, K is {k.type}")
        keys = b.constant(np.arange(tk, dtype=np.int64))
        visible = _and(b, visible, b.nn.lt(keys, b.nn.reshape(nonpad, shape=[-1, 1, 1, 1])))
    neg_inf = float("-inf")
    if mask is not None:
        # (symbolic lengths are left for nn.attention to check at run time)
        short = tk - mask.type.shape[-1] if type(tk) is int and type(mask.type.shape[-1]) is int else 0
        if short < 0:
            raise ctx.fail(f"attn_mask {mask.type} has more keys than the {tk} of K")
        if short:   # a shorter mask leaves the remaining keys masked
            fill = 0.0 if mask.type.dtype.is_bool else neg_inf
            mask = b.nn.pad(mask, pads=[0] * mask.type.rank + [0] * (mask.type.rank - 1) + [short], value=fill)
        if mask.type.dtype.is_bool:
            m = _and(b, mask, visible)
        else:
            if mask.type.dtype is not q.type.dtype:
                mask = b.nn.cast(mask, to=q.type.dtype)
            m = mask if visible is None else b.nn.where(visible, mask, neg_inf)
    else:
        m = visible
    y = b.nn.attention(q, k, v, *([m] if m is not None else []), causal=use_flag and causal,
                       window=window, scale=scale, softcap=softcap)
    outs = [_merge_heads(ctx, y) if rank == 3 else y, k, v]
    if ctx.out_used(3):
        outs.append(_qk_output(ctx, q, k, m, scale, softcap, mode, use_flag and causal, window))
    return outs


def _qk_output(ctx, q, k, m, scale, softcap, mode, causal, window):
    """ONNX Attention's qk_matmul_output: 0 the scaled Q K^T, 1 after the softcap, 2 plus the
    mask bias, 3 the softmax probabilities (a row that sees no key is zeros)."""
    b = ctx.b
    hq, hkv = q.type.shape[1], k.type.shape[1]
    if hq != hkv:
        if type(hq) is not int or type(hkv) is not int:
            raise ctx.fail("qk_matmul_output with grouped heads needs static head counts")
        k = b.nn.repeat_interleave(k, repeats=hq // hkv, axis=1)
    d = q.type.shape[-1]
    if scale is None:
        scale = b.nn.rsqrt(b.nn.size(q, axes=[3], dtype=q.type.dtype)) if type(d) is not int else 1 / math.sqrt(d)
    s = b.nn.mul(b.nn.matmul(q, k, transpose_b=True), scale)
    if mode == 0:
        return s
    if softcap is not None:
        s = b.nn.mul(b.nn.tanh(b.nn.div(s, softcap)), softcap)
    if mode == 1:
        return s
    if mode not in (2, 3):
        raise ctx.fail(f"qk_matmul_output_mode {mode} is not 0, 1, 2 or 3")
    if causal:
        c = b.nn.causal_mask(q, k, window=window)
        m = c if m is None else (b.nn.and_(m, c) if m.type.dtype.is_bool else b.nn.where(c, m, float("-inf")))
    bias = None
    if m is not None:
        f = s.type.dtype.np
        bias = b.nn.where(m, b.constant(0, f), b.constant(-np.inf, f)) if m.type.dtype.is_bool else m
        if bias.type.dtype is not s.type.dtype:
            bias = b.nn.cast(bias, to=s.type.dtype)
        s = b.nn.add(s, bias)
    if mode == 2:
        return s
    p = b.nn.softmax(s, axis=-1)
    if bias is None:
        return p
    empty = b.nn.eq(b.nn.max(bias, axes=[-1], keepdims=True), float("-inf"))
    return b.nn.where(empty, 0.0, p)


@converter("RotaryEmbedding", since=23)
def rotary_embedding(ctx):
    """nn.rope_cached on x seen as (B, S, H, D): the caches are gathered at position_ids (or
    given per position as (B, S, R)) and broadcast over the heads."""
    b = ctx.b
    x, cos, sin, pos = ctx.x(0), ctx.x(1), ctx.x(2), ctx.opt(3)
    if pos is not None:
        cos, sin = b.nn.gather(cos, pos, axis=0), b.nn.gather(sin, pos, axis=0)
    if cos.type.rank != 3:
        raise ctx.fail(f"the gathered cos cache must be (B, S, R), got {cos.type}")
    rd = ctx.attr("rotary_embedding_dim", 0)
    r = cos.type.shape[-1]
    if rd and type(r) is int and 2 * r != rd:
        raise ctx.fail(f"cos cache has {r} entries per position, rotary_embedding_dim {rd} needs {rd // 2}")
    il = bool(ctx.attr("interleaved", 0))
    if x.type.rank == 4:            # (B, H, S, D)
        return b.nn.rope_cached(x, b.nn.unsqueeze(cos, axes=[1]), b.nn.unsqueeze(sin, axes=[1]), interleaved=il)
    if x.type.rank != 3:
        raise ctx.fail(f"input must be (B, H, S, D) or (B, S, hidden), got {x.type}")
    heads = ctx.attr("num_heads", 0)
    hidden = x.type.shape[2]
    if not heads or type(hidden) is not int or hidden % heads:
        raise ctx.fail(f"3-D input {x.type} needs num_heads dividing its static hidden size")
    x4 = b.nn.reshape(x, shape=_dim_spec(ctx, x.type.shape[:2], "input") + [heads, hidden // heads])
    y = b.nn.rope_cached(x4, b.nn.unsqueeze(cos, axes=[2]), b.nn.unsqueeze(sin, axes=[2]), interleaved=il)
    return b.nn.reshape_like(y, x)


@converter("SwiGLU", since=28)
def swiglu(ctx):
    """a * sigmoid(alpha * a) * b."""
    b = ctx.b
    a, v = ctx.x(0), ctx.x(1)
    alpha = ctx.attr("alpha", 1.0)
    gate = b.nn.silu(a) if alpha == 1.0 else b.nn.mul(a, b.nn.sigmoid(b.nn.mul(a, float(alpha))))
    return b.nn.mul(gate, v)


@converter("CausalConvWithState", since=27)
def causal_conv_with_state(ctx):
    """Depthwise causal conv1d: past_state (or k-1 zeros) in front of the input, nn.conv with
    groups = channels, optional SiLU; present_state is the last k-1 steps of that sequence."""
    b = ctx.b
    x, w, bias, past = ctx.x(0), ctx.x(1), ctx.opt(2), ctx.opt(3)
    act = ctx.attr("activation", "none")
    if act not in ("none", "silu", "swish"):
        raise ctx.fail(f"unknown activation {act!r}")
    if x.type.rank != 3 or w.type.rank != 3:
        raise ctx.fail(f"input (B, C, L) and weight (C, 1, k) expected, got {x.type} and {w.type}")
    c, k = x.type.shape[1], w.type.shape[2]
    if type(c) is not int or type(k) is not int:
        raise ctx.fail(f"channels and kernel size must be static (input {x.type}, weight {w.type})")
    seq = b.nn.concat([past, x], axis=2) if past is not None else b.nn.pad(x, pads=[0, 0, k - 1, 0, 0, 0])
    y = b.nn.conv(seq, w, *([bias] if bias is not None else []), groups=c)
    if act != "none":
        y = b.nn.silu(y)
    int64_max = 2**63 - 1
    state = b.nn.slice(seq, starts=[-(k - 1) if k > 1 else int64_max], ends=[int64_max], axes=[2])
    return [y, state]


@converter("NonMaxSuppression", since=10)
def non_max_suppression(ctx):
    b = ctx.b
    boxes, scores = ctx.x(0), ctx.x(1)
    given = [ctx.opt(i) for i in range(2, 5)]
    while given and given[-1] is None:
        given.pop()
    # an absent limit in the middle takes its default, so the later ones stay in place
    defaults = [lambda: b.constant(np.array([0], np.int64)), lambda: b.constant(np.array([0.0], boxes.type.dtype.np))]
    ops = []
    for i, v in enumerate(given):
        if v is None:
            v = defaults[i]()
        elif i == 0 and v.type.dtype not in (dt.i32, dt.i64):
            v = b.nn.cast(v, to=dt.i64)
        elif i > 0 and v.type.dtype is not boxes.type.dtype:
            v = b.nn.cast(v, to=boxes.type.dtype)
        ops.append(v)
    return b.nn.non_max_suppression(boxes, scores, *ops, center_point_box=bool(ctx.attr("center_point_box", 0)))


@converter("RoiAlign", since=10)
def roi_align(ctx):
    x, rois, idx = ctx.x(0), ctx.x(1), ctx.x(2)
    # opsets 10-15 had only the (misaligned) output_half_pixel behaviour
    mode = ctx.attr("coordinate_transformation_mode", "half_pixel") if ctx.opset >= 16 else "output_half_pixel"
    if rois.type.dtype is not x.type.dtype:
        rois = ctx.b.nn.cast(rois, to=x.type.dtype)
    return ctx.b.nn.roi_align(x, rois, idx, mode=ctx.attr("mode", "avg"),
                              output_height=ctx.attr("output_height", 1),
                              output_width=ctx.attr("output_width", 1),
                              sampling_ratio=ctx.attr("sampling_ratio", 0),
                              spatial_scale=ctx.attr("spatial_scale", 1.0),
                              coordinate_transformation_mode=mode)


@converter("DeformConv", since=19)
def deform_conv(ctx):
    x, w, offset, bias, mask = ctx.x(0), ctx.x(1), ctx.x(2), ctx.opt(3), ctx.opt(4)
    if x.type.rank != 4:
        raise ctx.fail(f"only 2-D DeformConv is supported, X is {x.type}")
    _, strides, dilations = conv_window(ctx, x, w)
    pads = list(ctx.attr("pads", [0] * 4))
    if mask is not None and bias is None:     # operands are positional: a zero bias keeps the mask's place
        o = w.type.shape[0]
        if type(o) is not int:
            raise ctx.fail(f"a mask without a bias needs a static output channel count, W is {w.type}")
        bias = ctx.b.constant(np.zeros(o, x.type.dtype.np))
    return ctx.b.nn.deform_conv(x, w, offset, *[v for v in (bias, mask) if v is not None],
                                groups=ctx.attr("group", 1), offset_groups=ctx.attr("offset_group", 1),
                                **window_geometry(strides, pads, dilations))


@converter("LinearAttention", since=27)
def linear_attention(ctx):
    """nn.linear_attention on the heads-major layout: the packed (B, T, H*D) inputs are split
    into heads; absent past_state, decay and beta become broadcast zeros, zeros and ones."""
    b = ctx.b
    q, k, v, past, decay, beta = (ctx.opt(i) for i in range(6))
    rule = ctx.attr("update_rule", "gated_delta")
    if rule not in ("linear", "gated", "delta", "gated_delta"):
        raise ctx.fail(f"unknown update_rule {rule!r}")
    gated, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    if gated != (decay is not None) or delta != (beta is not None):
        raise ctx.fail(f"update_rule {rule!r} {'needs' if gated else 'forbids'} decay and "
                       f"{'needs' if delta else 'forbids'} beta")
    hq, hkv = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
    for name, t in (("query", q), ("key", k), ("value", v)):
        if t is None or t.type.rank != 3:
            raise ctx.fail(f"{name} must be (B, T, H*D)")
    f = q.type.dtype
    q4, k4, v4 = _split_heads(ctx, q, hq, "query"), _split_heads(ctx, k, hkv, "key"), _split_heads(ctx, v, hkv, "value")
    one = lambda val: b.constant(np.full((1, 1, 1, 1), val, f.np))
    if decay is None:
        decay = one(0.0)
    elif decay.type.shape[-1] == hkv:        # one gate per head: (B, T, H) -> (B, H, T, 1)
        decay = b.nn.unsqueeze(b.nn.transpose(decay, perm=[0, 2, 1]), axes=[3])
    else:
        decay = _split_heads(ctx, decay, hkv, "decay")
    if beta is None:
        beta = one(1.0)
    else:
        beta = b.nn.unsqueeze(b.nn.transpose(beta, perm=[0, 2, 1]), axes=[3])
    state = one(0.0) if past is None else past
    if state.type.dtype is not f:
        state = b.nn.cast(state, to=f)
    scale = ctx.attr("scale", 0.0) or None
    y, s = b.nn.linear_attention(q4, k4, v4, state, decay, beta, delta=delta, scale=scale)
    if past is not None and past.type.dtype is not f:
        s = b.nn.cast(s, to=past.type.dtype)
    return [_merge_heads(ctx, y), s]


class _Inline(Scope):
    """A subgraph converted into the enclosing block: outer names are visible as they are."""

    def lookup(self, name):
        v = self.names.get(name)
        return v if v is not None else self.parent.lookup(name)


def _inline(ctx, attr, value):
    """Convert the one-input, one-output graph attribute `attr` applied to `value`, in place."""
    g = ctx.attr(attr)
    if len(g.input) != 1 or len(g.output) != 1:
        raise ctx.fail(f"{attr} must have one input and one output")
    inner = _Inline(ctx.scope.block, ctx.scope)
    inner.names[g.input[0].name] = value
    ctx.imp.initializers_to_scope(g, inner)
    ctx.imp.convert_nodes(g.node, inner)
    out = inner.lookup(g.output[0].name)
    if out is None or out.type.rank != 4 or out.type.dtype is not value.type.dtype:
        raise ctx.fail(f"{attr} must return a rank-4 tensor like its input {value.type}")
    return out


@converter("FlexAttention", since=1, domain="ai.onnx.preview")
def flex_attention(ctx):
    """softmax(score_mod(Q K^T * scale)) -> prob_mod -> @ V, the modifier subgraphs inlined;
    without modifiers, nn.attention."""
    b = ctx.b
    q, k, v = ctx.x(0), ctx.x(1), ctx.x(2)
    if any(t.type.rank != 4 for t in (q, k, v)):
        raise ctx.fail("Q, K and V must be rank 4")
    scale = ctx.attr("scale", None)
    if not ctx.has("score_mod") and not ctx.has("prob_mod") and not ctx.has("softmax_precision"):
        return b.nn.attention(q, k, v, scale=scale)
    f = q.type.dtype
    if ctx.has("softmax_precision"):
        cd = onnx_dtype(ctx.attr("softmax_precision"), ctx.where)
    else:
        cd = dt.f32 if f.bits < 32 else f
    hq, hkv = q.type.shape[1], k.type.shape[1]
    if hq != hkv:
        if type(hq) is not int or type(hkv) is not int or hq % hkv:
            raise ctx.fail(f"query heads {hq} must be a static multiple of kv heads {hkv}")
        k, v = (b.nn.repeat_interleave(t, repeats=hq // hkv, axis=1) for t in (k, v))
    if cd is not f:
        q, k, v = (b.nn.cast(t, to=cd) for t in (q, k, v))
    d = q.type.shape[-1]
    if scale is None:
        scale = b.nn.rsqrt(b.nn.size(q, axes=[3], dtype=cd)) if type(d) is not int else 1 / math.sqrt(d)
    s = b.nn.mul(b.nn.matmul(q, k, transpose_b=True), scale)
    if ctx.has("score_mod"):
        s = _inline(ctx, "score_mod", s)
    p = b.nn.softmax(s, axis=-1)
    if ctx.has("prob_mod"):
        p = _inline(ctx, "prob_mod", p)
    y = b.nn.matmul(p, v)
    return y if cd is f else b.nn.cast(y, to=f)
