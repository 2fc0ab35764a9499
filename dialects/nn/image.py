"""Image resampling: ONNX Resize (nearest / linear / cubic interpolation, separable over axes) and
GridSample, with the helper ops their gradients need."""
from __future__ import annotations

import math

import numpy as np

from ckir.errors import ShapeError
from ckir.opdef import (
    FLOAT,
    NUMERIC,
    Attr,
    Cost,
    Ex,
    Operand,
    Result,
    declare,
    not_differentiable,
)
from ckir.types import ANY as ANYDIM
from ckir.types import TensorType, fmt_shape

from ._util import numel, same_dtype

COORD_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
               "asymmetric", "tf_crop_and_resize", "tf_half_pixel_for_nn")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")

RESIZE_ATTRS = (
    Attr("sizes", "ints", None, doc="output size per dim; -1 (or all absent): floor(input size * "
                                    "scale), or the input size when scales are absent too"),
    Attr("scales", "floats", None, doc="the scale per dim the coordinate transform uses; absent: "
                                       "output size / input size"),
    Attr("roi", "floats", None, doc="tf_crop_and_resize's region: start per dim, then end per dim, "
                                    "normalized; absent: 0 and 1"),
    Attr("mode", "str", "nearest", choices=("nearest", "linear", "cubic")),
    Attr("coordinate_transformation_mode", "str", "half_pixel", choices=COORD_MODES),
    Attr("nearest_mode", "str", "round_prefer_floor", choices=NEAREST_MODES),
    Attr("cubic_coeff_a", "float", -0.75),
    Attr("exclude_outside", "bool", False, doc="give taps outside the input weight 0, renormalize"),
    Attr("extrapolation_value", "float", 0.0, doc="tf_crop_and_resize's value outside the input"),
    Attr("antialias", "bool", False, doc="linear/cubic: widen the kernel by 1/scale when downscaling"),
)
RESIZE_KEYS = tuple(a.name for a in RESIZE_ATTRS)


def _check_lengths(rank, sizes, scales, roi):
    for v, what, n in ((sizes, "sizes", rank), (scales, "scales", rank), (roi, "roi", 2 * rank)):
        if v is not None and len(v) != n:
            raise ShapeError(f"{what} has {len(v)} entries; a rank-{rank} input needs {n}")
    if sizes is not None and any(s < -1 for s in sizes):
        raise ShapeError(f"sizes {list(sizes)} must be >= -1")
    if scales is not None and any(not s > 0 for s in scales):
        raise ShapeError(f"scales {list(scales)} must be > 0")


def _out_dim(n, i, sizes, scales):
    if sizes is not None and sizes[i] >= 0:
        return sizes[i]
    if scales is None or scales[i] == 1.0:
        return n
    return math.floor(n * scales[i]) if type(n) is int else ANYDIM


def resize_shape(shape, sizes, scales, roi):
    _check_lengths(len(shape), sizes, scales, roi)
    return [_out_dim(n, i, sizes, scales) for i, n in enumerate(shape)]


def _source_coords(n_in, n_out, scale, roi, mode):
    """Where each output position samples the input (float64), per the coordinate mode."""
    y = np.arange(n_out, dtype=np.float64)
    width = scale * n_in      # the unrounded output size the formulas use
    if mode == "align_corners":
        return np.zeros(n_out) if width == 1 else y * (n_in - 1) / (width - 1)
    if mode == "asymmetric":
        return y / scale
    if mode == "tf_half_pixel_for_nn":
        return (y + 0.5) / scale
    if mode == "tf_crop_and_resize":
        lo, hi = roi
        if width == 1:
            x = np.full(n_out, (hi - lo) * (n_in - 1) / 2)
        else:
            x = y * (hi - lo) * (n_in - 1) / (width - 1)
        return x + lo * (n_in - 1)
    if mode == "pytorch_half_pixel":
        return np.full(n_out, -0.5) if width == 1 else (y + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        offset = n_in / 2 * (1 - n_out / width)
        return offset + (y + 0.5) / scale - 0.5
    return (y + 0.5) / scale - 0.5      # half_pixel


def _cubic_kernel(t, a):
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _taps(n_in, n_out, scale, roi, at):
    """(input positions [n_out, T], weights [n_out, T], extrapolated rows or None) of one axis."""
    x = _source_coords(n_in, n_out, scale, roi, at["coordinate_transformation_mode"])
    x0 = np.floor(x)
    r = x - x0
    mode = at["mode"]
    if mode == "nearest":
        nm = at["nearest_mode"]
        up = {"round_prefer_floor": r > 0.5, "round_prefer_ceil": r >= 0.5, "floor": r < 0,
              "ceil": r > 0}[nm]
        idx = (x0 + up).astype(np.int64)[:, None]
        w = np.ones((n_out, 1))
    else:
        # the kernel sits on x0 - 1 + (1 .. T) with r in (0, 1]: an integer x takes r = 1
        whole = r == 0
        x0, r = np.where(whole, x0 - 1, x0), np.where(whole, 1.0, r)
        s = min(scale, 1.0) if at["antialias"] else 1.0
        reach = 1.0 if mode == "linear" else 2.0
        start = math.floor(-reach / s) + 1
        offs = start + np.arange(2 - 2 * start)
        t = (offs[None, :] - r[:, None]) * s
        w = np.clip(1 - np.abs(t), 0, 1) if mode == "linear" else _cubic_kernel(t, at["cubic_coeff_a"])
        if at["antialias"]:
            w = w / w.sum(axis=1, keepdims=True)
        idx = x0.astype(np.int64)[:, None] + offs[None, :]
        if at["exclude_outside"]:
            w = np.where((idx < 0) | (idx >= n_in), 0.0, w)
            tot = w.sum(axis=1, keepdims=True)
            w = w / np.where(tot == 0, 1.0, tot)
    outside = None
    if at["coordinate_transformation_mode"] == "tf_crop_and_resize":
        outside = (x < 0) | (x > n_in - 1)
    return np.clip(idx, 0, max(n_in - 1, 0)), w, outside


def _axis_plan(shape, at):
    """[(axis, n_out, taps)] for the axes that change, in order."""
    sizes, scales, roi = at["sizes"], at["scales"], at["roi"]
    rank = len(shape)
    out = resize_shape(shape, sizes, scales, roi)
    plan = []
    for i, (n, m) in enumerate(zip(shape, out)):
        s = scales[i] if scales is not None else (m / n if n else 1.0)
        pair = (0.0, 1.0) if roi is None else (roi[i], roi[rank + i])
        if math.isclose(s, 1.0) and m == n and math.isclose(pair[0], 0.0) and math.isclose(pair[1], 1.0):
            continue
        if n == 0 and m > 0:
            raise ShapeError(f"cannot resize an empty axis {i} to {m}")
        plan.append((i, m, _taps(n, m, s, pair, at)))
    return plan


def resize_array(x, at):
    y = x.astype(np.float64)
    for a, m, (idx, w, outside) in _axis_plan(x.shape, at):
        g = np.take(y, idx, axis=a)                          # [..., m, T, ...]
        wshape = (1,) * a + w.shape + (1,) * (y.ndim - a - 1)
        y = (g * w.reshape(wshape)).sum(axis=a + 1)
        if outside is not None and outside.any():
            mshape = (1,) * a + (m,) + (1,) * (y.ndim - a - 1)
            y = np.where(outside.reshape(mshape), at["extrapolation_value"], y)
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        return np.clip(np.round(y), info.min, info.max).astype(x.dtype)
    return y.astype(x.dtype)


def resize_grad_array(g, like_shape, at):
    """The adjoint of resize's linear part: each axis's weights transposed, in reverse order."""
    plan = _axis_plan(like_shape, at)
    sizes = [like_shape[a] for a, _, _ in plan]
    y = g.astype(np.float64)
    for (a, m, (idx, w, outside)), n in zip(reversed(plan), reversed(sizes)):
        if y.shape[a] != m:
            raise ShapeError(f"g has size {y.shape[a]} in dim {a}, the resize gives {m}")
        part = np.moveaxis(y, a, 0)
        if outside is not None:
            part = np.where(outside.reshape((m,) + (1,) * (part.ndim - 1)), 0.0, part)
        acc = np.zeros((n,) + part.shape[1:])
        contrib = w.reshape(w.shape + (1,) * (part.ndim - 1)) * part[:, None]
        np.add.at(acc, idx.reshape(-1), contrib.reshape((-1,) + part.shape[1:]))
        y = np.moveaxis(acc, 0, a)
    return y.astype(g.dtype)


def _resize_attrs(op):
    return {k: op.attrs[k] for k in RESIZE_KEYS}


def _resize_cost(op, bind):
    y = op.results[0].type
    taps = {"nearest": 1, "linear": 2, "cubic": 4}[op.attrs["mode"]]
    return Cost(2 * taps * op.operands[0].type.rank * numel(y, bind), op.operands[0].type.nbytes(bind),
                y.nbytes(bind))


_RESIZE_DOC = """ONNX Resize (opsets 11-19) of every axis of x. Output size per dim: `sizes`
    (an entry -1: floor(input size * scale)). Each output index o of a resized axis samples the
    input at coordinate x(o), by `coordinate_transformation_mode` (s = the dim's scale,
    `scales` or else output size / input size, W = s * input size, unrounded):
    half_pixel (o + 0.5) / s - 0.5; half_pixel_symmetric the same shifted by
    in/2 * (1 - out/W); pytorch_half_pixel like half_pixel but -0.5 when W = 1; align_corners
    o * (in - 1) / (W - 1) (0 when W = 1); asymmetric o / s; tf_half_pixel_for_nn (o + 0.5) / s;
    tf_crop_and_resize o * (end - start) * (in - 1) / (W - 1) + start * (in - 1) with the dim's
    `roi` start/end, taking `extrapolation_value` where x(o) falls outside [0, in - 1].
    `mode` nearest picks round(x) by `nearest_mode` (round_prefer_floor/ceil round halves down/up);
    linear and cubic weigh the 2 or 4 nearest inputs (cubic: Keys' kernel with a =
    `cubic_coeff_a`); `antialias` widens the linear/cubic kernel by 1/s when s < 1 and
    normalizes it; `exclude_outside` zeroes the weights of taps outside the input and
    renormalizes; taps outside the input otherwise read the edge element. Axes are processed one
    after another (separable), in float64; an axis with scale 1, the same size and the full roi
    is left alone. Integer inputs round half to even and saturate."""


@declare
class resize:
    __doc__ = _RESIZE_DOC
    name = "nn.resize"
    operands = (Operand("x", NUMERIC),)
    attrs = RESIZE_ATTRS
    traits = {"pure"}
    cost = _resize_cost
    examples = (Ex("f32[1,1,3,4]", sizes=[1, 1, 5, 7], mode="linear"),
                Ex("f32[1,2,4,4]", scales=[1.0, 1.0, 0.6, 0.8], mode="cubic"),
                Ex("f32[2,6]", sizes=[2, 3], mode="cubic", antialias=True, exclude_outside=True,
                   coordinate_transformation_mode="pytorch_half_pixel"),
                Ex("f32[1,1,4,4]", sizes=[1, 1, 3, 3], mode="linear", roi=[0, 0, 0.4, 0.6, 1, 1, 1.2, 0.8],
                   coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=10.0),
                Ex("f32[3,5]", sizes=[-1, 3], scales=[1.0, 0.7], mode="linear", antialias=True,
                   coordinate_transformation_mode="half_pixel_symmetric"),
                Ex("f32[2,3]", scales=[2.0, 1.5], coordinate_transformation_mode="asymmetric",
                   nearest_mode="floor"),
                Ex("u8[1,4,4]", sizes=[1, 7, 6], mode="linear", coordinate_transformation_mode="align_corners"))

    def infer(x, **at):
        if at["sizes"] is None and at["scales"] is None:
            raise ShapeError("needs sizes or scales")
        return x.with_shape(resize_shape(x.shape, at["sizes"], at["scales"], at["roi"]))

    def ref(x, **at):
        return resize_array(x, at)

    def vjp(b, op, g):
        x = op.operands[0]
        if g is None or not x.type.dtype.is_float:
            return [None]
        return [b.nn.resize_grad(g, x, **_resize_attrs(op))]


@declare
class resize_grad:
    """The gradient of nn.resize with the same attributes: a tensor shaped like `like` (only its
    shape is read; it is resize's input) holding, for each input element, the sum of the
    cotangent `g` (shaped like resize's result) times the weight with which each output element
    read it; extrapolated outputs contribute nothing. Axes are undone in reverse order, in
    float64."""
    name = "nn.resize_grad"
    operands = (Operand("g", FLOAT), Operand("like", NUMERIC))
    attrs = RESIZE_ATTRS
    traits = {"pure"}
    examples = (Ex("f32[1,1,5,7]", "f32[1,1,3,4]", sizes=[1, 1, 5, 7], mode="linear"),
                Ex("f32[2,3]", "f32[2,6]", sizes=[2, 3], mode="cubic", antialias=True),
                Ex("f32[1,1,3,3]", "f32[1,1,4,4]", sizes=[1, 1, 3, 3], mode="linear",
                   roi=[0, 0, 0.4, 0.6, 1, 1, 1.2, 0.8], coordinate_transformation_mode="tf_crop_and_resize"),
                Ex("f32[4,4]", "f32[2,3]", scales=[2.0, 1.5]))

    def infer(g, like, **at):
        if at["sizes"] is None and at["scales"] is None:
            raise ShapeError("needs sizes or scales")
        want = resize_shape(like.shape, at["sizes"], at["scales"], at["roi"])
        if g.rank != len(want) or any(type(a) is int and type(w) is int and a != w for a, w in zip(g.shape, want)):
            raise ShapeError(f"g is {g}, the resize of {like} gives shape {fmt_shape(want)}")
        return TensorType(like.shape, g.dtype)

    def ref(g, like, **at):
        return resize_grad_array(g, like.shape, at)

    def vjp(b, op, dy):
        if dy is None:
            return [None, None]
        # resize_grad is the transpose of resize's linear part (resize without the fill)
        at = _resize_attrs(op)
        at["extrapolation_value"] = 0.0
        y = b.nn.resize(dy, **at)
        g = op.operands[0]
        return [y if y.type is g.type else b.nn.reshape_like(y, g), None]

    def cost(op, bind):
        g = op.operands[0].type
        taps = {"nearest": 1, "linear": 2, "cubic": 4}[op.attrs["mode"]]
        return Cost(2 * taps * g.rank * numel(g, bind), g.nbytes(bind), op.results[0].type.nbytes(bind))


# --- grid_sample --------------------------------------------------------------------------------
GRID_ATTRS = (Attr("mode", "str", "linear", choices=("nearest", "linear", "cubic")),
              Attr("padding_mode", "str", "zeros", choices=("zeros", "border", "reflection")),
              Attr("align_corners", "bool", False))
_A = -0.75    # GridSample's cubic kernel parameter


def _grid_types(x, grid):
    if x.rank < 3:
        raise ShapeError(f"x must be (N, C, d1, ...), got {x}")
    r = x.rank - 2
    if grid.rank != r + 2 or grid.shape[-1] != r:
        raise ShapeError(f"grid must be (N, D1_out, ..., {r}) for x {x}, got {grid}")
    n, m = x.shape[0], grid.shape[0]
    if type(n) is int and type(m) is int and n != m:
        raise ShapeError(f"x has batch {n}, grid {m}")
    return x.with_shape((x.shape[0], x.shape[1]) + grid.shape[1:-1])


def _reflect(v, lo, hi):
    """v reflected into [lo, hi] by the borders, and d(result)/dv."""
    span = hi - lo
    if span <= 0:
        return np.full_like(v, lo), np.zeros_like(v)
    below, above = v < lo, v > hi
    dx = np.where(below, lo - v, v - hi)
    k = np.floor(dx / span)
    rem = dx - k * span
    even = k % 2 == 0
    out = np.where(below, np.where(even, lo + rem, hi - rem), np.where(even, hi - rem, lo + rem))
    out = np.where(below | above, out, v)
    return out, np.where(below | above, np.where(even, -1.0, 1.0), 1.0)


def _grid_taps(x, grid, at):
    """Per spatial axis: ([tap positions], [tap weights], [d weight / d coordinate], valid masks,
    d coordinate / d grid) over (N, *out), and the compute dtype."""
    ct = np.float32 if x.dtype.itemsize < 4 or grid.dtype.itemsize < 4 else np.result_type(x.dtype, grid.dtype)
    g = grid.astype(ct)
    r = x.ndim - 2
    align, pad, mode = at["align_corners"], at["padding_mode"], at["mode"]
    axes = []
    for i in range(r):
        size = x.shape[2 + i]
        gi = g[..., r - 1 - i]
        if align:
            c, dc = (gi + 1) / 2 * (size - 1), (size - 1) / 2
            lo, hi = 0.0, size - 1.0
        else:
            c, dc = ((gi + 1) * size - 1) / 2, size / 2
            lo, hi = -0.5, size - 0.5
        deriv = np.ones_like(c)
        if mode == "nearest":
            c = np.rint(c)
        out = (c < lo) | (c > hi)
        if pad == "border" and mode != "cubic":    # cubic clamps each tap instead (as torch, ORT)
            deriv = np.where(out, 0.0, deriv)
            c = np.where(out, np.clip(c, 0, size - 1), c)
        elif pad == "reflection":
            c, deriv = _reflect(c, lo, hi)
        if mode == "nearest":
            pos = [np.trunc(c).astype(np.int64)]
            w, dw = [np.ones_like(c)], [np.zeros_like(c)]
        else:
            f = np.floor(c)
            t = c - f
            if mode == "linear":
                offs, w, dw = (0, 1), [1 - t, t], [-np.ones_like(t), np.ones_like(t)]
            else:
                offs = (-1, 0, 1, 2)
                w = [_cubic_kernel(t + 1, _A), _cubic_kernel(t, _A), _cubic_kernel(1 - t, _A),
                     _cubic_kernel(2 - t, _A)]
                dw = [_cubic_slope(t + 1), _cubic_slope(t), -_cubic_slope(1 - t), -_cubic_slope(2 - t)]
            pos = [f.astype(np.int64) + o for o in offs]
        valid = []
        for k, p in enumerate(pos):
            if pad == "zeros":
                valid.append((p >= 0) & (p < size))
                pos[k] = np.clip(p, 0, size - 1)
            else:
                if pad == "border":
                    pos[k] = np.clip(p, 0, size - 1)
                else:
                    pos[k] = np.trunc(_reflect(p.astype(np.float64), lo, hi)[0]).astype(np.int64)
                valid.append(np.ones(p.shape, bool))
        axes.append((pos, [wk.astype(ct) for wk in w], [d.astype(ct) for d in dw], valid,
                     (deriv * dc).astype(ct)))
    return axes, ct


def _cubic_slope(t):
    """d/dt of the cubic kernel for t >= 0."""
    a = _A
    return np.where(t <= 1, (3 * (a + 2) * t - 2 * (a + 3)) * t,
                    np.where(t < 2, (3 * a * t - 10 * a) * t + 8 * a, 0.0))


def _tap_combos(axes):
    """Every combination of one tap per axis: (positions, weight, per-axis weight lists, valid)."""
    combos = [((), None, (), None)]
    for pos, w, dw, valid, _ in axes:
        nxt = []
        for p0, w0, parts, v0 in combos:
            for k in range(len(pos)):
                nxt.append((p0 + (pos[k],), w[k] if w0 is None else w0 * w[k], parts + ((k,),),
                            valid[k] if v0 is None else v0 & valid[k]))
        combos = nxt
    return combos


def _batch_index(shape):
    n = shape[0]
    return np.arange(n).reshape((n,) + (1,) * (len(shape) - 1))


def grid_sample_array(x, grid, at):
    axes, ct = _grid_taps(x, grid, at)
    xt = np.moveaxis(x.astype(ct), 1, -1)                  # (N, *S, C)
    nb = _batch_index(grid.shape[:-1])
    y = np.zeros(grid.shape[:-1] + (x.shape[1],), ct)
    for pos, w, _, valid in _tap_combos(axes):
        y += (w * valid)[..., None] * xt[(nb,) + pos]
    return np.moveaxis(y, -1, 1).astype(x.dtype)


def grid_sample_grad_arrays(g, x, grid, at):
    axes, ct = _grid_taps(x, grid, at)
    xt = np.moveaxis(x.astype(ct), 1, -1)
    gt = np.moveaxis(g.astype(ct), 1, -1)                  # (N, *out, C)
    nb = _batch_index(grid.shape[:-1])
    dx = np.zeros(xt.shape, ct)
    dc = [np.zeros(grid.shape[:-1], ct) for _ in axes]
    for pos, w, parts, valid in _tap_combos(axes):
        idx = (np.broadcast_to(nb, grid.shape[:-1]),) + pos
        np.add.at(dx, idx, (w * valid)[..., None] * gt)
        if at["mode"] == "nearest":
            continue
        gv = np.sum(gt * xt[(nb,) + pos], axis=-1) * valid    # d loss / d(this tap's weight product)
        for i, (k,) in enumerate(parts):
            slope = axes[i][2][k]
            rest = np.ones_like(slope)
            for j, (kj,) in enumerate(parts):
                if j != i:
                    rest = rest * axes[j][1][kj]
            dc[i] += gv * slope * rest
    r = len(axes)
    dgrid = np.zeros(grid.shape, ct)
    for i, (_, _, _, _, dcoord) in enumerate(axes):
        dgrid[..., r - 1 - i] = dc[i] * dcoord
    return np.moveaxis(dx, -1, 1).astype(x.dtype), dgrid.astype(grid.dtype)


@declare
class grid_sample:
    """ONNX GridSample (torch.nn.functional.grid_sample): x is (N, C, d1..dr), grid is
    (N, o1..or, r) holding normalized sampling positions in [-1, 1] (grid[..., 0] is the last
    axis, the width); the result (N, C, o1..or) interpolates x there. A normalized g maps to the
    pixel coordinate (g + 1) / 2 * (d - 1) with `align_corners`, else ((g + 1) * d - 1) / 2.
    `mode`: nearest (round half to even), linear (2 taps per axis) or cubic (4 taps, Keys' kernel
    with a = -0.75). `padding_mode` for positions outside the image: zeros reads 0 outside;
    border clamps coordinates outside the border ([-0.5, d - 0.5], or [0, d - 1] with
    align_corners) to [0, d - 1] and taps to the edge (cubic clamps only the taps, as torch and
    ONNX Runtime do; the ONNX reference clamps the coordinate too); reflection reflects them at the
    border. Computed in x's precision (f32 for f16/bf16)."""
    name = "nn.grid_sample"
    operands = (Operand("x", FLOAT), Operand("grid", FLOAT))
    attrs = GRID_ATTRS
    traits = {"pure"}
    examples = (Ex("f32[1,2,3,4]", "f32[1,2,5,2]"),
                Ex("f32[2,1,4,3]", "f32[2,3,2,2]", mode="cubic", padding_mode="border", align_corners=True),
                Ex("f32[1,2,3,3]", "f32[1,4,1,2]", mode="nearest", padding_mode="reflection"),
                Ex("f32[1,1,3,2,4]", "f32[1,2,2,1,3]", padding_mode="reflection", align_corners=True),
                Ex("f32[2,3,5]", "f32[2,4,1]", mode="cubic"))

    def infer(x, grid, *, mode, padding_mode, align_corners):
        return _grid_types(x, grid)

    def ref(x, grid, **at):
        return grid_sample_array(x, grid, at)

    def vjp(b, op, g):
        if g is None:
            return [None, None]
        x, grid = op.operands
        dx, dgrid = b.nn.grid_sample_grad(g, x, grid, **{k: op.attrs[k] for k in ("mode", "padding_mode", "align_corners")})
        return [dx, dgrid]

    def cost(op, bind):
        x, grid = op.operands
        r = x.type.rank - 2
        taps = {"nearest": 1, "linear": 2, "cubic": 4}[op.attrs["mode"]] ** r
        y = op.results[0].type
        return Cost(2 * taps * numel(y, bind), grid.type.nbytes(bind) + x.type.nbytes(bind), y.nbytes(bind))


@declare
class grid_sample_grad:
    """The gradient of nn.grid_sample with the same attributes, given the cotangent `g` of its
    result: `dx` (each tap's weight times g summed into the element it read) and `dgrid` (the
    derivative of the interpolation weights along each axis, times the denormalization factor
    (d - 1) / 2 or d / 2, times the padding's slope: 0 where border clamps, -1 where a
    reflection flips). nearest mode has dgrid = 0."""
    name = "nn.grid_sample_grad"
    operands = (Operand("g", FLOAT), Operand("x", FLOAT), Operand("grid", FLOAT))
    results = (Result("dx"), Result("dgrid"))
    attrs = GRID_ATTRS
    traits = {"pure"}
    vjp = not_differentiable("second derivatives of grid sampling are not implemented")
    examples = (Ex("f32[1,2,2,5]", "f32[1,2,3,4]", "f32[1,2,5,2]"),
                Ex("f32[2,1,3,2]", "f32[2,1,4,3]", "f32[2,3,2,2]", mode="cubic", padding_mode="reflection"),
                Ex("f32[1,1,4,1]", "f32[1,1,3,3]", "f32[1,4,1,2]", mode="nearest", padding_mode="border"))

    def infer(g, x, grid, *, mode, padding_mode, align_corners):
        y = _grid_types(x, grid)
        if g.rank != y.rank or any(type(a) is int and type(c) is int and a != c for a, c in zip(g.shape, y.shape)):
            raise ShapeError(f"g is {g}, grid_sample gives {y}")
        same_dtype(g, x)
        return x, grid

    def ref(g, x, grid, **at):
        return grid_sample_grad_arrays(g, x, grid, at)

    def cost(op, bind):
        g, x = op.operands[:2]
        r = x.type.rank - 2
        taps = {"nearest": 1, "linear": 2, "cubic": 4}[op.attrs["mode"]] ** r
        return Cost(4 * taps * numel(g.type, bind), sum(v.type.nbytes(bind) for v in op.operands),
                    sum(v.type.nbytes(bind) for v in op.results))
