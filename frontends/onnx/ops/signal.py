"""Signal processing (DFT, STFT, windows, MelWeightMatrix), random generators, TfIdfVectorizer
and the numeric ai.onnx.ml ops (Binarizer, ArrayFeatureExtractor, LabelEncoder, TreeEnsemble).

Scalar parameters known at import time become attributes (or, for windows and mel matrices,
the whole result a constant); parameters computed at run time go to the *_dynamic ops.
LabelEncoder maps numbers and strings; TfIdfVectorizer takes integer pools only."""
from __future__ import annotations

import numpy as np
from ckir.dialects.nn.signal import mel_weight_matrix_np, window_np

from ckir import dtypes as dt

from ..importer import onnx_dtype
from ..registry import converter

ML = "ai.onnx.ml"


def _scalar_input(ctx, i, what):
    """(known int value or None, Value or None) of an optional scalar input."""
    v = ctx.opt(i)
    if v is None:
        return None, None
    vals = ctx.ints(i, what)
    if vals is not None and len(vals) != 1:
        raise ctx.fail(f"{what} must be a scalar, got {len(vals)} values")
    return (vals[0] if vals is not None else None), v


def _int_operand(ctx, value, v):
    """A run-time int scalar operand: the input itself, or a constant for a known value."""
    if v is not None and v.type.dtype in (dt.i32, dt.i64):
        return v
    return ctx.b.constant(np.int64(value))


def _dft(ctx, axis, axis_v):
    x = ctx.x(0)
    length, length_v = _scalar_input(ctx, 1, "dft_length")
    inverse, onesided = bool(ctx.attr("inverse", 0)), bool(ctx.attr("onesided", 0))
    if (length_v is None or length is not None) and axis is not None:
        return ctx.b.nn.dft(x, axis=axis, length=length, inverse=inverse, onesided=onesided)
    ops = [x, _int_operand(ctx, axis, axis_v)]
    if length_v is not None:
        ops.append(_int_operand(ctx, length, length_v))
    return ctx.b.nn.dft_dynamic(*ops, inverse=inverse, onesided=onesided)


@converter("DFT", since=17)
def dft17(ctx):
    return _dft(ctx, ctx.attr("axis", 1), None)


@converter("DFT", since=20)
def dft20(ctx):
    axis, axis_v = _scalar_input(ctx, 2, "axis")
    if axis_v is None:
        axis = -2
    return _dft(ctx, axis, axis_v)


@converter("STFT", since=17)
def stft(ctx):
    signal, window = ctx.x(0), ctx.opt(2)
    step, step_v = _scalar_input(ctx, 1, "frame_step")
    length, length_v = _scalar_input(ctx, 3, "frame_length")
    onesided = bool(ctx.attr("onesided", 1))
    extra = [window] if window is not None else []
    if step is not None and (length_v is None or length is not None):
        return ctx.b.nn.stft(signal, *extra, frame_step=step, frame_length=length, onesided=onesided)
    if length_v is None:
        src = window.type.shape[0] if window is not None else signal.type.shape[1]
        if type(src) is not int:
            raise ctx.fail("a run-time frame_step needs frame_length, or a window or signal of "
                           "static length")
        length = src
    return ctx.b.nn.stft_dynamic(signal, _int_operand(ctx, step, step_v),
                                 _int_operand(ctx, length, length_v), *extra, onesided=onesided)


def _window(kind):
    def conv(ctx):
        size, size_v = _scalar_input(ctx, 0, "size")
        dtype = onnx_dtype(ctx.attr("output_datatype", 1), ctx.where)
        periodic = bool(ctx.attr("periodic", 1))
        if size is not None:
            return ctx.b.constant(window_np(size, kind, periodic, dtype.np))
        return ctx.b.nn.window(size_v, kind=kind, periodic=periodic, dtype=dtype)
    return conv


for _op, _kind in (("HannWindow", "hann"), ("HammingWindow", "hamming"), ("BlackmanWindow", "blackman")):
    converter(_op, since=17)(_window(_kind))


@converter("MelWeightMatrix", since=17)
def mel_weight_matrix(ctx):
    dtype = onnx_dtype(ctx.attr("output_datatype", 1), ctx.where)
    known = [ctx.const(i) for i in range(5)]
    if all(k is not None for k in known):
        ints = [int(np.asarray(k).reshape(-1)[0]) for k in known[:3]]
        floats = [float(np.asarray(k).reshape(-1)[0]) for k in known[3:]]
        return ctx.b.constant(mel_weight_matrix_np(*ints, *floats, dtype.np))
    return ctx.b.nn.mel_weight_matrix(*[ctx.x(i) for i in range(5)], dtype=dtype)


# --- random -------------------------------------------------------------------------------------
def _seed(ctx):
    s = ctx.attr("seed", None)
    return None if s is None else int(s) % (1 << 32)


def _dtype_attr(ctx, default=None):
    code = ctx.attr("dtype", 0)
    return onnx_dtype(code, ctx.where) if code else default


@converter("RandomUniform", since=1)
def random_uniform(ctx):
    return ctx.b.nn.random_uniform(shape=list(ctx.attr("shape")), low=ctx.attr("low", 0.0),
                                   high=ctx.attr("high", 1.0), dtype=_dtype_attr(ctx, dt.f32),
                                   seed=_seed(ctx))


@converter("RandomUniformLike", since=1)
def random_uniform_like(ctx):
    return ctx.b.nn.random_uniform(ctx.x(0), low=ctx.attr("low", 0.0), high=ctx.attr("high", 1.0),
                                   dtype=_dtype_attr(ctx), seed=_seed(ctx))


@converter("RandomNormal", since=1)
def random_normal(ctx):
    return ctx.b.nn.random_normal(shape=list(ctx.attr("shape")), mean=ctx.attr("mean", 0.0),
                                  scale=ctx.attr("scale", 1.0), dtype=_dtype_attr(ctx, dt.f32),
                                  seed=_seed(ctx))


@converter("RandomNormalLike", since=1)
def random_normal_like(ctx):
    return ctx.b.nn.random_normal(ctx.x(0), mean=ctx.attr("mean", 0.0), scale=ctx.attr("scale", 1.0),
                                  dtype=_dtype_attr(ctx), seed=_seed(ctx))


@converter("Bernoulli", since=15)
def bernoulli(ctx):
    return ctx.b.nn.bernoulli(ctx.x(0), dtype=_dtype_attr(ctx), seed=_seed(ctx))


@converter("Multinomial", since=7)
def multinomial(ctx):
    return ctx.b.nn.multinomial(ctx.x(0), sample_size=ctx.attr("sample_size", 1),
                                dtype=_dtype_attr(ctx, dt.i32), seed=_seed(ctx))


# --- text and classical ML -------------------------------------------------------------------------
@converter("TfIdfVectorizer", since=9)
def tfidf_vectorizer(ctx):
    if ctx.has("pool_strings"):
        raise ctx.fail("pool_strings is not supported (integer pools only)")
    weights = ctx.attr("weights", None)
    return ctx.b.nn.tfidf_vectorizer(
        ctx.x(0), mode=ctx.attr("mode"), min_gram_length=ctx.attr("min_gram_length"),
        max_gram_length=ctx.attr("max_gram_length"), max_skip_count=ctx.attr("max_skip_count", 0),
        ngram_counts=list(ctx.attr("ngram_counts")), ngram_indexes=list(ctx.attr("ngram_indexes")),
        pool=list(ctx.attr("pool_int64s")), weights=None if weights is None else list(weights))


@converter("Binarizer", since=1, domain=ML)
def binarizer(ctx):
    x = ctx.x(0)
    t = float(ctx.attr("threshold", 0.0))
    if x.type.dtype.is_int:
        t = np.floor(t)           # x > t  <=>  x > floor(t) for integers
    c = ctx.b.constant(np.asarray(t).astype(x.type.dtype.np))
    return ctx.b.nn.cast(ctx.b.nn.gt(x, c), to=x.type.dtype)


@converter("ArrayFeatureExtractor", since=1, domain=ML)
def array_feature_extractor(ctx):
    b = ctx.b
    x, idx = ctx.x(0), ctx.x(1)
    if idx.type.rank != 1:
        idx = b.nn.reshape(idx, shape=[-1])
    y = b.nn.gather(x, idx, axis=-1)
    return b.nn.unsqueeze(y, axes=[0]) if x.type.rank == 1 else y


def _pick(ctx, names):
    given = [n for n in names if ctx.has(n)]
    if len(given) != 1:
        raise ctx.fail(f"needs exactly one of {', '.join(names)}, got {given or 'none'}")
    return given[0]


_UNUSED = "_Unused"      # ONNX's default for string values


@converter("LabelEncoder", since=2, domain=ML)
def label_encoder(ctx):
    x = ctx.x(0)
    kname = _pick(ctx, ["keys_floats", "keys_int64s", "keys_strings", "keys_tensor"])
    vname = _pick(ctx, ["values_floats", "values_int64s", "values_strings", "values_tensor"])
    arrays = {"keys_floats": np.float32, "keys_int64s": np.int64, "keys_strings": object,
              "values_floats": np.float32, "values_int64s": np.int64, "values_strings": object}
    keys = np.asarray(ctx.attr(kname), arrays.get(kname))
    values = np.asarray(ctx.attr(vname), arrays.get(vname))
    if vname == "values_tensor":
        default = ctx.attr("default_tensor", None)
        if default is None:
            default = _UNUSED if values.dtype == object else -1 if values.dtype.kind in "iu" else -0.0
        default = np.asarray(default, values.dtype).reshape(())
    elif vname == "values_int64s":
        default = np.asarray(ctx.attr("default_int64", -1), np.int64)
    elif vname == "values_strings":
        default = np.asarray(ctx.attr("default_string", _UNUSED), object)
    else:
        default = np.asarray(ctx.attr("default_float", -0.0), np.float32)
    if keys.dtype != x.type.dtype.np:
        raise ctx.fail(f"keys of dtype {keys.dtype} do not match the input's {x.type.dtype}")
    return ctx.b.nn.label_encoder(x, keys=keys.reshape(-1), values=values.reshape(-1),
                                  default=default.astype(values.dtype))


@converter("LabelEncoder", since=1, domain=ML)
def label_encoder1(ctx):
    """Strings to their index in classes_strings (default_int64), or int64 indices to those
    strings (default_string), by the input's dtype."""
    x = ctx.x(0)
    classes = np.asarray(ctx.attr("classes_strings", []), object)
    index = np.arange(classes.size, dtype=np.int64)
    if x.type.dtype.is_string:
        return ctx.b.nn.label_encoder(x, keys=classes, values=index,
                                      default=np.asarray(ctx.attr("default_int64", -1), np.int64))
    if x.type.dtype is not dt.i64:
        raise ctx.fail(f"LabelEncoder-1 maps string or int64 input, got {x.type.dtype}")
    return ctx.b.nn.label_encoder(x, keys=index, values=classes,
                                  default=np.asarray(ctx.attr("default_string", _UNUSED), object))


_AGGREGATE = {0: "average", 1: "sum", 2: "min", 3: "max"}


@converter("TreeEnsemble", since=5, domain=ML)
def tree_ensemble(ctx):
    b = ctx.b
    ints = {k: [int(v) for v in np.asarray(ctx.attr(k)).reshape(-1)] for k in (
        "nodes_featureids", "nodes_modes", "nodes_truenodeids", "nodes_trueleafs",
        "nodes_falsenodeids", "nodes_falseleafs", "leaf_targetids", "tree_roots")}
    missing = ctx.attr("nodes_missing_value_tracks_true", None)
    members = ctx.attr("membership_values", None)
    agg = ctx.attr("aggregate_function", 1)
    if agg not in _AGGREGATE:
        raise ctx.fail(f"unknown aggregate_function {agg}")
    y = b.nn.tree_ensemble(
        ctx.x(0), **ints, nodes_splits=np.asarray(ctx.attr("nodes_splits")),
        leaf_weights=np.asarray(ctx.attr("leaf_weights")),
        nodes_missing_value_tracks_true=None if missing is None else [int(v) for v in missing],
        membership_values=None if members is None else np.asarray(members),
        n_targets=ctx.attr("n_targets"), aggregate=_AGGREGATE[agg])
    post = ctx.attr("post_transform", 0)
    if post == 0:
        return y
    if post == 1:
        return b.nn.softmax(y, axis=-1)
    if post == 2:
        return b.nn.sigmoid(y)
    raise ctx.fail(f"post_transform {post} (SOFTMAX_ZERO = 3, PROBIT = 4) is not supported")
