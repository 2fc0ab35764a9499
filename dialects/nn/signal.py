"""Signal processing (DFT, STFT, windows, mel filter banks), random sampling, and the numeric
classical-ML ops of ONNX (TfIdfVectorizer on integer tokens, LabelEncoder on numbers and strings,
TreeEnsemble).

Complex tensors are real tensors whose last dim holds (real, imaginary): size 2, or size 1 for
a real signal. Transforms run numpy.fft in the operand's precision: f64 in float64, the
others in float32 (f16/bf16 rounded back once).

Random ops draw from numpy's legacy generator `RandomState(seed)` (as onnx.reference does), so
with a `seed` every run gives the same values; without one every run draws fresh values. They
are not `pure`: passes never fold, merge or drop them.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ckir import dtypes as dt
from ckir.errors import CkirError, ShapeError
from ckir.opdef import (ANY, FLOAT, INT, NUMERIC, STRING, Arg, Attr, Cost, Ex, Operand, declare,
                        not_differentiable)
from ckir.types import ANY as ANYDIM
from ckir.types import TensorType, concrete

from ._util import norm_axis, numel

WIDE = (dt.f64, dt.f32, dt.f16, dt.bf16)
SCALAR_INT = (dt.i32, dt.i64)


def _out_cost(per):
    """`per` FLOPs per result element; reads the operands, writes the results."""
    def cost(op, bind):
        n = sum(numel(r.type, bind) for r in op.results)
        return Cost(per * n, sum(v.type.nbytes(bind) for v in op.operands),
                    sum(r.type.nbytes(bind) for r in op.results))
    return cost


def _fft_cost(op, bind):
    """~5 log2(n) FLOPs per result element (the radix-2 count, 5 n log2 n per line of n points),
    n the largest dim of the result (an upper bound of the line length)."""
    y = op.results[0].type
    n = max(2, max(concrete(y.shape, bind)))
    return Cost(int(5 * numel(y, bind) * math.log2(n)),
                sum(v.type.nbytes(bind) for v in op.operands), y.nbytes(bind))


def _scalar(a, what) -> int:
    a = np.asarray(a)
    if a.size != 1:
        raise ShapeError(f"{what} must be a single value, got shape {list(a.shape)}")
    return int(a.reshape(-1)[0])


def _check_scalar_operand(t, what):
    if t.rank > 1 or t.rank == 1 and type(t.shape[0]) is int and t.shape[0] != 1:
        raise ShapeError(f"{what} must be a scalar, got {t}")


# --- DFT ------------------------------------------------------------------------------------------
def _complex_dim(x):
    if x.rank < 2:
        raise ShapeError(f"x must be (..., signal dims, 1 or 2), got {x}")
    c = x.shape[-1]
    if c not in (1, 2):
        raise ShapeError(f"the last dim of x holds (real[, imaginary]) and must be 1 or 2, got {x}")
    return c


def _dft_axis(x, axis):
    a = norm_axis(axis, x.rank)
    if a == x.rank - 1:
        raise ShapeError(f"axis {axis} is the (real, imaginary) dim of x {x}; transform a signal dim")
    return a


def _dft_type(x, axis, length, inverse, onesided):
    c = _complex_dim(x)
    a = _dft_axis(x, axis)
    if length is not None and length < 1:
        raise ShapeError(f"length must be >= 1, got {length}")
    n = x.shape[a]
    if inverse and onesided:
        if c != 2:
            raise ShapeError("an inverse one-sided transform (IRFFT) needs a complex (last dim 2) "
                             f"half spectrum, got {x}")
        size = length if length is not None else (2 * (n - 1) if type(n) is int else ANYDIM)
        if type(size) is int and size < 1:
            raise ShapeError(f"an IRFFT of {n} bins has no default length; give length")
        return x.with_shape(x.shape[:a] + (size,) + x.shape[a + 1:-1] + (1,))
    if onesided and c != 1:
        raise ShapeError(f"a one-sided forward transform (RFFT) needs real input (last dim 1), got {x}")
    size = length if length is not None else n
    if onesided:
        size = size // 2 + 1 if type(size) is int else ANYDIM
    return x.with_shape(x.shape[:a] + (size,) + x.shape[a + 1:-1] + (2,))


def _fft_input(x):
    """x (..., 1 or 2) as a real or complex array in its compute precision."""
    xf = x.astype(np.float64 if x.dtype == np.float64 else np.float32)
    return xf[..., 0] + 1j * xf[..., 1] if x.shape[-1] == 2 else xf[..., 0]


def _dft_np(x, a, length, inverse, onesided):
    z = _fft_input(x)
    n = x.shape[a]
    if inverse and onesided:
        size = length if length is not None else 2 * (n - 1)
        if size < 1:
            raise ShapeError(f"an IRFFT of {n} bins has no default length")
        return np.fft.irfft(z, n=size, axis=a)[..., None].astype(x.dtype)
    size = length if length is not None else n
    if onesided:
        y = np.fft.rfft(z, n=size, axis=a)
    else:
        y = np.fft.ifft(z, n=size, axis=a) if inverse else np.fft.fft(z, n=size, axis=a)
    return np.stack([y.real, y.imag], axis=-1).astype(x.dtype)


def _resize(b, v, a, have, want):
    """v cut or zero-padded along axis a from `have` to `want` entries."""
    if have == want:
        return v
    if type(have) is not int or type(want) is not int:
        raise CkirError(f"the DFT gradient needs static sizes to resize {have} to {want} entries")
    if have > want:
        return b.nn.slice(v, starts=[0], ends=[want], axes=[a])
    pads = [0] * (2 * v.type.rank)
    pads[v.type.rank + a] = want - have
    return b.nn.pad(v, pads=pads)


def _length_value(b, g, a, size):
    """The transform length as a scalar of g's dtype (read from g's shape when symbolic)."""
    if type(size) is int:
        return float(size)
    n = b.nn.cast(b.nn.shape(g, start=a, end=a + 1), to=g.type.dtype)
    return b.nn.reshape(n, shape=[])


def _dft_vjp(b, op, g):
    """DFTs are linear: the adjoint of the forward transform is the unnormalized inverse, of
    the inverse the forward one divided by the length; one-sided transforms zero-pad (RFFT)
    or double the non-self-conjugate bins (IRFFT); padding/truncation of the input is undone
    by truncation/padding."""
    if g is None:
        return [None]
    x = op.operands[0]
    at = op.attrs
    a = _dft_axis(x.type, at["axis"])
    n, c = x.type.shape[a], x.type.shape[-1]
    inverse, onesided = at["inverse"], at["onesided"]
    if inverse and onesided:
        size = g.type.shape[a]
        if type(size) is not int:
            raise CkirError(f"the IRFFT gradient needs a static length, got {g.type}")
        h = size // 2 + 1
        w = np.full(h, 2.0)
        w[0] = 1.0
        if size % 2 == 0:
            w[-1] = 1.0
        w = (w / size).reshape((h,) + (1,) * (g.type.rank - 1 - a))
        spec = b.nn.dft(g, axis=a, onesided=True)
        gz = b.nn.mul(spec, b.constant(w.astype(g.type.dtype.np)))
        return [_resize(b, gz, a, h, n)]
    if not inverse and onesided:
        size = at["length"] if at["length"] is not None else n
        if type(size) is not int:
            raise CkirError(f"the RFFT gradient needs a static length, got {x.type}")
        g = _resize(b, g, a, g.type.shape[a], size)
    size = g.type.shape[a]
    scale = _length_value(b, g, a, size)
    t = b.nn.dft(g, axis=a, inverse=not inverse)
    gz = b.nn.mul(t, scale) if not inverse else b.nn.div(t, scale)
    gz = _resize(b, gz, a, size, n)
    if c == 1:
        gz = b.nn.slice(gz, starts=[0], ends=[1], axes=[-1])
    return [gz]


@declare
class dft:
    """Discrete Fourier transform of x along `axis` (ONNX DFT): x is (..., 1) real or (..., 2)
    complex, `axis` a signal dim (not the last). The signal is zero-padded or cut to `length`
    (absent: its size) and transformed:

        forward   y[k] = sum_n x[n] exp(-2 pi i k n / L)
        inverse   y[n] = 1/L sum_k x[k] exp(2 pi i k n / L)

    giving (..., L, ..., 2). `onesided` forward (RFFT, real input) keeps bins 0 .. L//2;
    `onesided` inverse (IRFFT) reads a complex half spectrum and returns the real signal of
    length L (absent: 2 * (bins - 1)) as (..., L, ..., 1), ignoring the imaginary parts of the
    DC and Nyquist bins (numpy.fft.irfft)."""
    name = "nn.dft"
    operands = (Operand("x", WIDE),)
    attrs = (Attr("axis", "int", -2, doc="the transformed dim; not the last"),
             Attr("length", "int", None, doc="transform length; absent: the axis size "
                  "(IRFFT: 2 * (size - 1))"),
             Attr("inverse", "bool", False), Attr("onesided", "bool", False))
    traits = {"pure"}
    cost = _fft_cost
    vjp = _dft_vjp
    examples = (Ex("f32[2,6,1]", axis=1), Ex("f32[3,5,2]", axis=-2, inverse=True),
                Ex("f32[2,7,3,2]", axis=1, length=9), Ex("f32[4,6,1]", axis=0, length=3),
                Ex("f32[2,8,1]", axis=1, onesided=True), Ex("f32[2,7,1]", onesided=True, length=6),
                Ex("f32[3,4,2]", axis=1, inverse=True, onesided=True),
                Ex("f32[2,4,2]", inverse=True, onesided=True, length=7),
                Ex("f32[5,2]", axis=0, length=3, inverse=True), Ex("f16[4,2]", axis=0))

    def infer(x, *, axis, length, inverse, onesided):
        return _dft_type(x, axis, length, inverse, onesided)

    def ref(x, *, axis, length, inverse, onesided):
        return _dft_np(x, _dft_axis(TensorType(x.shape, x.dtype), axis), length, inverse, onesided)


@declare
class dft_dynamic:
    """nn.dft with the axis (and optionally the length) as int scalar operands known only at
    run time. Without `length` a two-sided transform keeps x's shape (last dim 2); otherwise
    every signal dim of the result is `?`."""
    name = "nn.dft_dynamic"
    operands = (Operand("x", WIDE), Operand("axis", SCALAR_INT),
                Operand("length", SCALAR_INT, optional=True))
    attrs = (Attr("inverse", "bool", False), Attr("onesided", "bool", False))
    traits = {"pure"}
    cost = _fft_cost
    vjp = not_differentiable("the transformed axis is only known at run time; graphs that need "
                             "gradients use nn.dft with a static axis")
    examples = (Ex("f32[2,5,1]", np.array(1, np.int64)),
                Ex("f32[3,4,2]", np.array(-3, np.int64), np.array(6, np.int64), inverse=True),
                Ex("f32[2,6,1]", np.array(1, np.int32), onesided=True),
                Ex("f32[2,4,2]", np.array(1, np.int64), inverse=True, onesided=True))

    def infer(x, axis, length, *, inverse, onesided):
        c = _complex_dim(x)
        _check_scalar_operand(axis, "axis")
        if length is not None:
            _check_scalar_operand(length, "length")
        if inverse and onesided and c != 2:
            raise ShapeError(f"an inverse one-sided transform (IRFFT) needs complex input, got {x}")
        if onesided and not inverse and c != 1:
            raise ShapeError(f"a one-sided forward transform (RFFT) needs real input, got {x}")
        if length is None and not onesided:
            return x.with_shape(x.shape[:-1] + (2,))
        return x.with_shape((ANYDIM,) * (x.rank - 1) + (1 if inverse and onesided else 2,))

    def ref(x, axis, length, *, inverse, onesided):
        a = _dft_axis(TensorType(x.shape, x.dtype), _scalar(axis, "axis"))
        n = None if length is None else _scalar(length, "length")
        if n is not None and n < 1:
            raise ShapeError(f"length must be >= 1, got {n}")
        return _dft_np(x, a, n, inverse, onesided)


# --- STFT -----------------------------------------------------------------------------------------
def _stft_check(signal, window):
    if signal.rank != 3:
        raise ShapeError(f"signal must be (batch, length, 1 or 2), got {signal}")
    _complex_dim(signal)
    if window is not None:
        if window.rank != 1:
            raise ShapeError(f"window must be 1-D, got {window}")
        if window.dtype is not signal.dtype:
            raise ShapeError(f"window has dtype {window.dtype}, signal {signal.dtype}")


def _stft_np(signal, window, step, frame_length, onesided):
    _, t, c = signal.shape
    if window is not None and frame_length is not None and window.shape[0] != frame_length:
        raise ShapeError(f"the window has {window.shape[0]} entries, frame_length is {frame_length}")
    fl = frame_length if frame_length is not None else (window.shape[0] if window is not None else t)
    if step < 1 or fl < 1 or fl > t:
        raise ShapeError(f"frames of {fl} samples every {step} (>= 1) do not fit a signal of {t}")
    if onesided and c != 1:
        raise ShapeError("a one-sided STFT needs a real signal (last dim 1)")
    z = _fft_input(signal)
    frames = sliding_window_view(z, fl, axis=1)[:, ::step]           # (B, frames, fl)
    if window is not None:
        frames = frames * window.astype(z.real.dtype)
    y = np.fft.rfft(frames, axis=-1) if onesided else np.fft.fft(frames, axis=-1)
    return np.stack([y.real, y.imag], axis=-1).astype(signal.dtype)


_STFT_VJP = not_differentiable("the adjoint needs an overlap-add of frames, which no op provides yet")


@declare
class stft:
    """Short-time Fourier transform (ONNX STFT) of signal (batch, T, 1 or 2): frames of
    `frame_length` samples start every `frame_step` samples (frames = (T - frame_length) //
    frame_step + 1), are multiplied by `window` (absent: ones) and transformed by a DFT of
    length frame_length. Result (batch, frames, bins, 2), bins = frame_length // 2 + 1 when
    `onesided` (real signals only), else frame_length. frame_length absent: the window's
    length, or T without a window; given with a window, the two must agree."""
    name = "nn.stft"
    operands = (Operand("signal", WIDE), Operand("window", WIDE, optional=True))
    attrs = (Attr("frame_step", "int"), Attr("frame_length", "int", None),
             Attr("onesided", "bool", True))
    traits = {"pure"}
    cost = _fft_cost
    vjp = _STFT_VJP
    examples = (Ex("f32[2,16,1]", "f32[6]", frame_step=3), Ex("f32[1,10,1]", frame_step=2, frame_length=4),
                Ex("f32[2,9,2]", "f32[5]", frame_step=2, onesided=False),
                Ex("f32[1,7,1]", frame_step=1, onesided=False))

    def infer(signal, window, *, frame_step, frame_length, onesided):
        _stft_check(signal, window)
        if onesided and signal.shape[-1] != 1:
            raise ShapeError(f"a one-sided STFT needs a real signal (last dim 1), got {signal}")
        wl = window.shape[0] if window is not None else None
        if frame_length is not None and wl is not None and type(wl) is int and wl != frame_length:
            raise ShapeError(f"the window has {wl} entries, frame_length is {frame_length}")
        fl = frame_length if frame_length is not None else (wl if wl is not None else signal.shape[1])
        t = signal.shape[1]
        if frame_step < 1:
            raise ShapeError(f"frame_step must be >= 1, got {frame_step}")
        if type(fl) is int and type(t) is int:
            if not 1 <= fl <= t:
                raise ShapeError(f"frames of {fl} samples do not fit a signal of {t}")
            frames = (t - fl) // frame_step + 1
        else:
            frames = ANYDIM
        bins = (fl // 2 + 1 if onesided else fl) if type(fl) is int else ANYDIM
        return signal.with_shape((signal.shape[0], frames, bins, 2))

    def ref(signal, window, *, frame_step, frame_length, onesided):
        return _stft_np(signal, window, frame_step, frame_length, onesided)


@declare
class stft_dynamic:
    """nn.stft with frame_step and frame_length as int scalar operands known only at run time;
    the result is (batch, ?, ?, 2)."""
    name = "nn.stft_dynamic"
    operands = (Operand("signal", WIDE), Operand("frame_step", SCALAR_INT),
                Operand("frame_length", SCALAR_INT), Operand("window", WIDE, optional=True))
    attrs = (Attr("onesided", "bool", True),)
    traits = {"pure"}
    cost = _fft_cost
    vjp = _STFT_VJP
    examples = (Ex("f32[1,12,1]", np.array(3, np.int64), np.array(4, np.int64)),
                Ex("f32[2,10,2]", np.array(2, np.int64), np.array(5, np.int64), "f32[5]",
                   onesided=False))

    def infer(signal, frame_step, frame_length, window, *, onesided):
        _stft_check(signal, window)
        _check_scalar_operand(frame_step, "frame_step")
        _check_scalar_operand(frame_length, "frame_length")
        if onesided and signal.shape[-1] != 1:
            raise ShapeError(f"a one-sided STFT needs a real signal (last dim 1), got {signal}")
        return signal.with_shape((signal.shape[0], ANYDIM, ANYDIM, 2))

    def ref(signal, frame_step, frame_length, window, *, onesided):
        return _stft_np(signal, window, _scalar(frame_step, "frame_step"),
                        _scalar(frame_length, "frame_length"), onesided)


# --- windows and the mel filter bank --------------------------------------------------------------
def window_np(size: int, kind: str, periodic: bool, dtype) -> np.ndarray:
    """The window of `size` points: w[n] = a0 - a1 cos(2 pi n / N) + a2 cos(4 pi n / N), N = size
    (periodic) or size - 1 (symmetric; a 1-point window is [1])."""
    if size < 0:
        raise ShapeError(f"a window size must be >= 0, got {size}")
    big_n = size if periodic else size - 1
    if big_n <= 0:
        return np.ones(size, dtype)
    a0, a1, a2 = {"hann": (0.5, 0.5, 0.0), "hamming": (25 / 46, 21 / 46, 0.0),
                  "blackman": (0.42, 0.5, 0.08)}[kind]
    t = 2 * np.pi * np.arange(size) / big_n
    return (a0 - a1 * np.cos(t) + a2 * np.cos(2 * t)).astype(dtype)


@declare
class window:
    """A window function of `size` points (an int scalar known only at run time; a known size
    is a constant instead): w[n] = a0 - a1 cos(2 pi n / N) + a2 cos(4 pi n / N) with
    (a0, a1, a2) = (0.5, 0.5, 0) for "hann", (25/46, 21/46, 0) for "hamming", (0.42, 0.5,
    0.08) for "blackman"; N = size when `periodic` (ONNX's default), size - 1 otherwise (a
    1-point symmetric window is [1]). Computed in float64, rounded to `dtype`."""
    name = "nn.window"
    operands = (Operand("size", SCALAR_INT),)
    attrs = (Attr("kind", "str", choices=("hann", "hamming", "blackman")),
             Attr("periodic", "bool", True), Attr("dtype", "dtype", "f32"))
    traits = {"pure"}
    cost = _out_cost(6)
    vjp = not_differentiable("integer operand")
    examples = (Ex(np.array(10, np.int64), kind="hann"),
                Ex(np.array(7, np.int32), kind="hamming", periodic=False, dtype="f64"),
                Ex(np.array(1, np.int64), kind="blackman", periodic=False),
                Ex(np.array(6, np.int64), kind="blackman", dtype="f16"))

    def infer(size, *, kind, periodic, dtype):
        _check_scalar_operand(size, "size")
        if not dtype.is_float and not dtype.is_int:
            raise ShapeError(f"dtype must be numeric, got {dtype}")
        return TensorType((ANYDIM,), dtype)

    def ref(size, *, kind, periodic, dtype):
        return window_np(_scalar(size, "size"), kind, periodic, dtype.np)


def mel_weight_matrix_np(num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz,
                         dtype) -> np.ndarray:
    """ONNX MelWeightMatrix (the algorithm of its reference implementation)."""
    if num_mel_bins < 1 or dft_length < 1 or sample_rate < 1:
        raise ShapeError(f"num_mel_bins {num_mel_bins}, dft_length {dft_length} and sample_rate "
                         f"{sample_rate} must be >= 1")
    if not 0 <= lower_edge_hertz < upper_edge_hertz:
        raise ShapeError(f"need 0 <= lower_edge_hertz ({lower_edge_hertz}) < upper_edge_hertz "
                         f"({upper_edge_hertz})")
    bins = dft_length // 2 + 1
    lo = 2595 * np.log10(1 + lower_edge_hertz / 700)
    hi = 2595 * np.log10(1 + upper_edge_hertz / 700)
    mel = np.arange(num_mel_bins + 2) * ((hi - lo) / (num_mel_bins + 2)) + lo
    hz = 700 * (10 ** (mel / 2595) - 1)
    edges = ((dft_length + 1) * hz // sample_rate).astype(np.int64)
    if edges.max() >= bins:
        raise ShapeError(f"upper_edge_hertz {upper_edge_hertz} maps past the {bins} spectrogram bins")
    out = np.zeros((bins, num_mel_bins))
    for i in range(num_mel_bins):
        left, center, right = edges[i:i + 3]
        if center == left:
            out[center, i] = 1
        else:
            j = np.arange(left, center + 1)
            out[j, i] = (j - left) / (center - left)
        if right > center:
            j = np.arange(center, right)
            out[j, i] = (right - j) / (right - center)
    return out.astype(dtype)


@declare
class mel_weight_matrix:
    """ONNX MelWeightMatrix from run-time scalars (known ones make a constant instead): a
    (dft_length // 2 + 1, num_mel_bins) matrix of triangular filters with peak 1 that maps a
    one-sided linear spectrogram to mel bands, mel(f) = 2595 log10(1 + f / 700). The
    num_mel_bins + 2 band edges are spaced evenly in mel between lower_edge_hertz and
    upper_edge_hertz and mapped to spectrogram bins floor((dft_length + 1) * f / sample_rate);
    filter i rises linearly from edge i to edge i+1 (a single 1 if they coincide) and falls to
    edge i+2."""
    name = "nn.mel_weight_matrix"
    operands = (Operand("num_mel_bins", SCALAR_INT), Operand("dft_length", SCALAR_INT),
                Operand("sample_rate", SCALAR_INT), Operand("lower_edge_hertz", FLOAT),
                Operand("upper_edge_hertz", FLOAT))
    attrs = (Attr("dtype", "dtype", "f32"),)
    traits = {"pure"}
    cost = _out_cost(1)
    vjp = not_differentiable("the filter edges are integer bins chosen from the operands")
    examples = (Ex(np.array(8, np.int64), np.array(16, np.int64), np.array(8192, np.int64),
                   np.array(0, np.float32), np.array(8192 / 2, np.float32)),
                Ex(np.array(4, np.int32), np.array(31, np.int32), np.array(16000, np.int32),
                   np.array(100, np.float64), np.array(7000, np.float64), dtype="f64"))

    def infer(num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz, *, dtype):
        for t, w in ((num_mel_bins, "num_mel_bins"), (dft_length, "dft_length"),
                     (sample_rate, "sample_rate"), (lower_edge_hertz, "lower_edge_hertz"),
                     (upper_edge_hertz, "upper_edge_hertz")):
            _check_scalar_operand(t, w)
        return TensorType((ANYDIM, ANYDIM), dtype)

    def ref(num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz, *, dtype):
        return mel_weight_matrix_np(
            _scalar(num_mel_bins, "num_mel_bins"), _scalar(dft_length, "dft_length"),
            _scalar(sample_rate, "sample_rate"), float(np.asarray(lower_edge_hertz).reshape(-1)[0]),
            float(np.asarray(upper_edge_hertz).reshape(-1)[0]), dtype.np)


# --- random ---------------------------------------------------------------------------------------
SEED = Attr("seed", "int", None, doc="seed of RandomState; absent: fresh values every run")


def _state(seed):
    return np.random.RandomState(seed) if seed is not None else np.random.RandomState()


def _random_type(like, shape, dtype, what):
    if (like is None) == (shape is None):
        raise ShapeError(f"{what} needs exactly one of the operand `like` and the attribute `shape`")
    d = dtype or (like.dtype if like is not None else dt.f32)
    if d not in WIDE:
        raise ShapeError(f"{what} samples floats (f32, f64, f16, bf16), got dtype {d}")
    if shape is not None and min(shape, default=0) < 0:
        raise ShapeError(f"shape {list(shape)} has a negative size")
    return TensorType(like.shape if like is not None else tuple(shape), d)


def _affine(r, a, b, d):
    """r * a + b in d (f16/bf16 via f32), as onnx.reference computes it."""
    c = np.dtype(np.float32 if d.itemsize < 4 else d)
    v = r.astype(c)
    v *= c.type(a)
    v += c.type(b)
    return v.astype(d)


def _like_vjp(b, op, g):
    return [None] * len(op.operands)     # the samples do not depend on `like`'s values


RANDOM_TRAITS = set()     # not pure: never folded, merged or removed


@declare
class random_uniform:
    """Samples uniform in [low, high) (ONNX RandomUniform / RandomUniformLike): of the shape of
    `like` (only its shape is read) or of `shape`; dtype absent: like's, else f32. Values are
    RandomState(seed).rand(...) scaled as r * (high - low) + low in the result dtype (f16/bf16
    in f32), bit for bit what onnx.reference computes for the same seed."""
    name = "nn.random_uniform"
    operands = (Operand("like", ANY, optional=True, doc="only its shape is read"),)
    attrs = (Attr("shape", "ints", None), Attr("low", "float", 0.0), Attr("high", "float", 1.0),
             Attr("dtype", "dtype", None), SEED)
    traits = RANDOM_TRAITS
    cost = _out_cost(2)
    vjp = _like_vjp
    examples = (Ex(shape=[2, 3], seed=0), Ex("f32[4,2]", low=-2.0, high=3.0, seed=5),
                Ex("i64[3]", dtype="f64", seed=1), Ex(shape=[5], dtype="f16", seed=2))

    def infer(like, *, shape, low, high, dtype, seed):
        return _random_type(like, shape, dtype, "random_uniform")

    def ref(like, *, shape, low, high, dtype, seed):
        d = (dtype or (dt.dtype(like.dtype) if like is not None else dt.f32)).np
        size = like.shape if like is not None else tuple(shape)
        return _affine(_state(seed).rand(*size), high - low, low, d)


@declare
class random_normal:
    """Samples from the normal distribution N(mean, scale^2) (ONNX RandomNormal /
    RandomNormalLike): of the shape of `like` (only its shape is read) or of `shape`; dtype
    absent: like's, else f32. Values are RandomState(seed).randn(...) * scale + mean in the
    result dtype (f16/bf16 in f32), as onnx.reference computes them."""
    name = "nn.random_normal"
    operands = (Operand("like", ANY, optional=True, doc="only its shape is read"),)
    attrs = (Attr("shape", "ints", None), Attr("mean", "float", 0.0), Attr("scale", "float", 1.0),
             Attr("dtype", "dtype", None), SEED)
    traits = RANDOM_TRAITS
    cost = _out_cost(4)
    vjp = _like_vjp
    examples = (Ex(shape=[2, 3], seed=0), Ex("f32[4,2]", mean=1.0, scale=0.5, seed=3),
                Ex("f64[3,1]", seed=4), Ex(shape=[4], dtype="bf16", seed=9))

    def infer(like, *, shape, mean, scale, dtype, seed):
        return _random_type(like, shape, dtype, "random_normal")

    def ref(like, *, shape, mean, scale, dtype, seed):
        d = (dtype or (dt.dtype(like.dtype) if like is not None else dt.f32)).np
        size = like.shape if like is not None else tuple(shape)
        return _affine(_state(seed).randn(*size), scale, mean, d)


@declare
class bernoulli:
    """Samples 1 with probability p and 0 otherwise for every element of p (ONNX Bernoulli),
    in dtype `dtype` (absent: p's). Values are RandomState(seed).binomial(1, p), as
    onnx.reference draws them; p outside [0, 1] or NaN is an error."""
    name = "nn.bernoulli"
    operands = (Operand("p", WIDE),)
    attrs = (Attr("dtype", "dtype", None), SEED)
    traits = RANDOM_TRAITS
    cost = _out_cost(4)
    vjp = not_differentiable("discrete samples: the gradient is zero almost everywhere (use a "
                             "score-function or straight-through estimator)")
    examples = (Ex(Arg("f32[3,4]", 0.0, 1.0), seed=0), Ex(Arg("f64[5]", 0.0, 1.0), dtype="i32", seed=1),
                Ex(Arg("f16[2,2]", 0.0, 1.0), dtype="bool", seed=7))

    def infer(p, *, dtype, seed):
        return p.with_dtype(dtype or p.dtype)

    def ref(p, *, dtype, seed):
        return _state(seed).binomial(1, p.astype(np.float64)).astype((dtype or dt.dtype(p.dtype)).np)


@declare
class multinomial:
    """`sample_size` class indices per row of logits (batch, classes), drawn with replacement
    with probabilities softmax(logits) (ONNX Multinomial: unnormalized log-probabilities).
    Result (batch, sample_size) of dtype i32 (default) or i64. A draw u ~ RandomState(seed)
    .random_sample picks the first class whose cumulative probability exceeds u."""
    name = "nn.multinomial"
    operands = (Operand("logits", WIDE),)
    attrs = (Attr("sample_size", "int", 1), Attr("dtype", "dtype", "i32"), SEED)
    traits = RANDOM_TRAITS
    cost = _out_cost(8)
    vjp = not_differentiable("discrete samples: the gradient is zero almost everywhere")
    examples = (Ex("f32[2,5]", sample_size=4, seed=0), Ex("f64[3,2]", dtype="i64", seed=1))

    def infer(logits, *, sample_size, dtype, seed):
        if logits.rank != 2:
            raise ShapeError(f"logits must be (batch, classes), got {logits}")
        if dtype not in SCALAR_INT:
            raise ShapeError(f"dtype must be i32 or i64, got {dtype}")
        if sample_size < 1:
            raise ShapeError(f"sample_size must be >= 1, got {sample_size}")
        return TensorType((logits.shape[0], sample_size), dtype)

    def ref(logits, *, sample_size, dtype, seed):
        z = logits.astype(np.float64)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        cdf = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
        u = _state(seed).random_sample((z.shape[0], sample_size))
        idx = (u[:, :, None] >= cdf[:, None, :]).sum(axis=-1)
        return np.minimum(idx, z.shape[1] - 1).astype(dtype.np)


# --- TfIdfVectorizer ------------------------------------------------------------------------------
def _ngram_table(pool, ngram_counts, ngram_indexes, lo, hi):
    """{n: {n-gram tuple: output column}} for the pool's n-grams of sizes lo..hi."""
    starts = list(ngram_counts) + [len(pool)]
    table, k = {}, 0
    for i in range(len(ngram_counts)):
        n = i + 1
        items = pool[starts[i]:starts[i + 1]]
        if len(items) % n:
            raise ShapeError(f"the pool's {n}-grams hold {len(items)} items, not a multiple of {n}")
        for j in range(0, len(items), n):
            if k >= len(ngram_indexes):
                raise ShapeError(f"ngram_indexes has {len(ngram_indexes)} entries, the pool more n-grams")
            if lo <= n <= hi:
                table.setdefault(n, {})[tuple(items[j:j + n])] = ngram_indexes[k]
            k += 1
    if k != len(ngram_indexes):
        raise ShapeError(f"ngram_indexes has {len(ngram_indexes)} entries for {k} n-grams in the pool")
    return table


@declare
class tfidf_vectorizer:
    """ONNX TfIdfVectorizer on integer tokens: x (C) or (B, C) -> f32 (max(ngram_indexes) + 1) or
    (B, max(ngram_indexes) + 1). The pool holds the n-grams to count: those of size n start at
    ngram_counts[n-1], one after another; the i-th n-gram of the pool is counted in column
    ngram_indexes[i]. In each row, every n-gram of a size in [min_gram_length, max_gram_length]
    is read at positions s, s + d, ..., s + (n-1) d for skip distances d = 1 .. max_skip_count + 1
    (unigrams once); an n-gram found in the pool adds 1 to its column. mode "TF" returns the
    counts, "IDF" the n-gram's weight where the count is > 0 (1 without weights), "TFIDF"
    counts times the weight; weights[i] belongs to the i-th n-gram of the pool (as the ONNX spec
    and ONNX Runtime have it; onnx.reference indexes it by output column instead)."""
    name = "nn.tfidf_vectorizer"
    operands = (Operand("x", INT),)
    attrs = (Attr("mode", "str", choices=("TF", "IDF", "TFIDF")),
             Attr("min_gram_length", "int"), Attr("max_gram_length", "int"),
             Attr("max_skip_count", "int", 0), Attr("ngram_counts", "ints"),
             Attr("ngram_indexes", "ints"), Attr("pool", "ints"), Attr("weights", "floats", None))
    traits = {"pure"}
    vjp = not_differentiable("integer tokens")
    examples = (
        Ex(np.array([1, 1, 3, 3, 3, 7, 8, 6, 7, 5, 6, 8], np.int32), mode="TF", min_gram_length=2,
           max_gram_length=2, max_skip_count=0, ngram_counts=[0, 4], ngram_indexes=[0, 1, 2, 3, 4, 5, 6],
           pool=[2, 3, 5, 4, 5, 6, 7, 8, 6, 7]),
        Ex(np.array([[1, 1, 3, 3, 3, 7], [8, 6, 7, 5, 6, 8]], np.int64), mode="TFIDF",
           min_gram_length=1, max_gram_length=2, max_skip_count=5, ngram_counts=[0, 4],
           ngram_indexes=[6, 5, 4, 3, 2, 1, 0], pool=[2, 3, 5, 4, 5, 6, 7, 8, 6, 7],
           weights=[0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]),
        Ex(np.array([[5, 6, 7, 5, 6]], np.int64), mode="IDF", min_gram_length=1, max_gram_length=3,
           max_skip_count=1, ngram_counts=[0, 2, 6], ngram_indexes=[0, 1, 2, 3, 4],
           pool=[5, 6, 5, 6, 6, 7, 5, 6, 7]))

    def infer(x, *, mode, min_gram_length, max_gram_length, max_skip_count, ngram_counts,
              ngram_indexes, pool, weights):
        if x.rank not in (1, 2):
            raise ShapeError(f"x must be (C) or (B, C), got {x}")
        if not 1 <= min_gram_length <= max_gram_length or max_skip_count < 0:
            raise ShapeError(f"need 1 <= min_gram_length ({min_gram_length}) <= max_gram_length "
                             f"({max_gram_length}) and max_skip_count ({max_skip_count}) >= 0")
        if not ngram_indexes or min(ngram_indexes) < 0:
            raise ShapeError("ngram_indexes must be non-empty and >= 0")
        size = max(ngram_indexes) + 1
        if weights is not None and len(weights) != len(ngram_indexes):
            raise ShapeError(f"weights has {len(weights)} entries for {len(ngram_indexes)} n-grams")
        _ngram_table(pool, ngram_counts, ngram_indexes, min_gram_length, max_gram_length)
        return TensorType(x.shape[:-1] + (size,), dt.f32)

    def ref(x, *, mode, min_gram_length, max_gram_length, max_skip_count, ngram_counts,
            ngram_indexes, pool, weights):
        table = _ngram_table(pool, ngram_counts, ngram_indexes, min_gram_length, max_gram_length)
        size = max(ngram_indexes) + 1
        rows = x.reshape(-1, x.shape[-1]).astype(np.int64)
        counts = np.zeros((rows.shape[0], size), np.int64)
        c = rows.shape[1]
        for n, grams in table.items():
            for d in range(1, (max_skip_count + 1 if n > 1 else 1) + 1):
                last = c - (n - 1) * d
                if last <= 0:
                    break
                win = np.stack([rows[:, k * d:k * d + last] for k in range(n)], axis=-1)
                for r in range(rows.shape[0]):
                    for g in map(tuple, win[r].tolist()):
                        col = grams.get(g)
                        if col is not None:
                            counts[r, col] += 1
        w = np.ones(size)
        if weights is not None:
            w[list(ngram_indexes)] = weights
        if mode == "TF":
            y = counts
        elif mode == "IDF":
            y = (counts > 0) * w
        else:
            y = counts * w
        return y.astype(np.float32).reshape(x.shape[:-1] + (size,))

    def cost(op, bind):
        x = op.operands[0].type
        a = op.attrs
        per = (a["max_gram_length"] - a["min_gram_length"] + 1) * (a["max_skip_count"] + 1)
        return Cost(per * a["max_gram_length"] * numel(x, bind), x.nbytes(bind),
                    op.results[0].type.nbytes(bind))


# --- ai.onnx.ml: LabelEncoder, TreeEnsemble --------------------------------------------------------
@declare
class label_encoder:
    """ONNX-ML LabelEncoder on numbers or strings: each element of x equal to keys[i] becomes
    values[i], any other becomes `default`. keys and values are 1-D dense attributes of the same
    length (keys unique, of x's dtype; a NaN key matches NaN); the result has values' dtype
    (a number type or string) and x's shape."""
    name = "nn.label_encoder"
    operands = (Operand("x", NUMERIC + STRING),)
    attrs = (Attr("keys", "dense"), Attr("values", "dense"), Attr("default", "dense"))
    traits = {"pure", "elementwise"}
    vjp = not_differentiable("a table lookup: piecewise constant")
    cost = _out_cost(10)
    examples = (Ex(np.array([[1, 5, 3], [7, 1, 2]], np.int64), keys=np.array([1, 2, 3], np.int64),
                   values=np.array([10, 20, 30], np.int64), default=np.array(-1, np.int64)),
                Ex(np.array([0.5, np.nan, 2.0, 3.0], np.float32),
                   keys=np.array([2.0, np.nan, 0.5], np.float32),
                   values=np.array([1, 2, 3], np.int16), default=np.array(0, np.int16)),
                Ex(np.array([4, 9], np.int32), keys=np.array([9], np.int32),
                   values=np.array([2.5], np.float32), default=np.array(-0.5, np.float32)),
                Ex(np.array([["a", "d"], ["", "c"]], object), keys=np.array(["c", "a", ""], object),
                   values=np.array([1, 2, 3], np.int16), default=np.array(-1, np.int16)),
                Ex(np.array([3, 1, 7], np.int64), keys=np.array([1, 3], np.int64),
                   values=np.array(["one", "three"], object), default=np.array("_Unused", object)))

    def infer(x, *, keys, values, default):
        k, v, d = keys.array, values.array, default.array
        if k.ndim != 1 or v.ndim != 1 or k.size != v.size:
            raise ShapeError(f"keys ({list(k.shape)}) and values ({list(v.shape)}) must be 1-D of "
                             "the same length")
        if d.size != 1 or d.dtype != v.dtype:
            raise ShapeError(f"default must be one {v.dtype} value, got {d.dtype} {list(d.shape)}")
        if dt.dtype(k.dtype) is not x.dtype:
            raise ShapeError(f"keys have dtype {dt.dtype(k.dtype)}, x {x.dtype}")
        if len(np.unique(k)) != k.size:
            raise ShapeError("keys must be unique")
        return x.with_dtype(dt.dtype(v.dtype))

    def ref(x, *, keys, values, default):
        k, v = keys.array, values.array
        out = np.full(x.shape, default.array.reshape(()), v.dtype)
        if k.size == 0:
            return out
        order = np.argsort(k, kind="stable")       # NaN sorts last
        sk, sv = k[order], v[order]
        i = np.clip(np.searchsorted(sk, x), 0, k.size - 1)
        hit = sk[i] == x
        if k.dtype.kind == "f" and np.isnan(sk[-1]):
            nan = np.isnan(x)
            hit |= nan
            i = np.where(nan, k.size - 1, i)
        out[hit] = sv[i[hit]]
        return out


_MODES = ("leq", "lt", "gte", "gt", "eq", "neq", "member")


def _tree_check(n_features, a):
    nodes = len(a["nodes_featureids"])
    leaves = len(a["leaf_targetids"])
    for k in ("nodes_modes", "nodes_truenodeids", "nodes_trueleafs", "nodes_falsenodeids",
              "nodes_falseleafs"):
        if len(a[k]) != nodes:
            raise ShapeError(f"{k} has {len(a[k])} entries, nodes_featureids {nodes}")
    if a["nodes_splits"].array.shape != (nodes,):
        raise ShapeError(f"nodes_splits must hold {nodes} values")
    if a["leaf_weights"].array.shape != (leaves,):
        raise ShapeError(f"leaf_weights must hold {leaves} values")
    mv = a["nodes_missing_value_tracks_true"]
    if mv is not None and len(mv) != nodes:
        raise ShapeError(f"nodes_missing_value_tracks_true has {len(mv)} entries for {nodes} nodes")
    if any(not 0 <= m < len(_MODES) for m in a["nodes_modes"]):
        raise ShapeError(f"nodes_modes must be 0 .. 6, got {sorted(set(a['nodes_modes']))}")
    for ids, flags, what in ((a["nodes_truenodeids"], a["nodes_trueleafs"], "true"),
                             (a["nodes_falsenodeids"], a["nodes_falseleafs"], "false")):
        for i, f in zip(ids, flags):
            if not 0 <= i < (leaves if f else nodes):
                raise ShapeError(f"a {what} branch points to {'leaf' if f else 'node'} {i}, out of range")
    if any(not 0 <= r < nodes for r in a["tree_roots"]) or not a["tree_roots"]:
        raise ShapeError(f"tree_roots {list(a['tree_roots'])} must be node indices")
    if any(not 0 <= t < a["n_targets"] for t in a["leaf_targetids"]):
        raise ShapeError(f"leaf_targetids must be in [0, n_targets = {a['n_targets']})")
    if type(n_features) is int and any(not 0 <= f < n_features for f in a["nodes_featureids"]):
        raise ShapeError(f"nodes_featureids must be in [0, {n_features}) for x's features")
    members = sum(m == 6 for m in a["nodes_modes"])
    mvals = a["membership_values"]
    have = 0 if mvals is None else int(np.isnan(mvals.array).sum())
    if have != members:
        raise ShapeError(f"membership_values holds {have} NaN-delimited sets for {members} "
                         "member nodes")


def _member_sets(a):
    """{node: sorted members} for the set-membership nodes, in node order."""
    out, vals = {}, ([] if a["membership_values"] is None else list(a["membership_values"].array))
    it = iter(vals)
    for i, m in enumerate(a["nodes_modes"]):
        if m == 6:
            s = []
            for v in it:
                if np.isnan(v):
                    break
                s.append(v)
            out[i] = np.sort(np.asarray(s, np.float64))
    return out


def _tree_np(x, a):
    feat = np.asarray(a["nodes_featureids"], np.int64)
    mode = np.asarray(a["nodes_modes"], np.int64)
    split = a["nodes_splits"].array.astype(x.dtype)
    tid, tleaf = np.asarray(a["nodes_truenodeids"], np.int64), np.asarray(a["nodes_trueleafs"], bool)
    fid, fleaf = np.asarray(a["nodes_falsenodeids"], np.int64), np.asarray(a["nodes_falseleafs"], bool)
    mv = a["nodes_missing_value_tracks_true"]
    miss = np.zeros(len(feat), bool) if mv is None else np.asarray(mv, bool)
    sets = _member_sets(a)
    n = x.shape[0]
    leaves = np.empty((len(a["tree_roots"]), n), np.int64)
    for t, root in enumerate(a["tree_roots"]):
        node = np.full(n, root, np.int64)
        active = np.arange(n)
        for _ in range(len(feat) + 1):
            if not active.size:
                break
            nd = node[active]
            v = x[active, feat[nd]]
            s = split[nd]
            with np.errstate(invalid="ignore"):
                go = np.select([mode[nd] == k for k in range(6)],
                               [v <= s, v < s, v >= s, v > s, v == s, v != s], False)
            for i in np.unique(nd[mode[nd] == 6]):
                sel = nd == i
                go[sel] = np.isin(v[sel].astype(np.float64), sets[i])
            go |= np.isnan(v) & miss[nd]
            nxt = np.where(go, tid[nd], fid[nd])
            leaf = np.where(go, tleaf[nd], fleaf[nd])
            leaves[t, active[leaf]] = nxt[leaf]
            node[active[~leaf]] = nxt[~leaf]
            active = active[~leaf]
        else:
            raise ShapeError(f"tree {t} has a cycle")
    return leaves


@declare
class tree_ensemble:
    """ONNX-ML TreeEnsemble (opset 5) on x (N, F): every tree, starting at its root in
    tree_roots, sends each row down the true or false branch of each node by comparing
    x[row, nodes_featureids[node]] with nodes_splits[node] per nodes_modes (0 <=, 1 <, 2 >=,
    3 >, 4 ==, 5 !=, 6 membership in the node's set; sets are listed in membership_values in
    node order, each ended by NaN); a NaN feature goes to the true branch where
    nodes_missing_value_tracks_true is 1 (comparisons with NaN are false, != is true). A branch
    flagged in nodes_trueleafs / nodes_falseleafs ends at that leaf. Each reached leaf adds
    leaf_weights[leaf] to target leaf_targetids[leaf]; targets aggregate by `aggregate`: "sum",
    "average" (sum / number of trees), "min", "max" (a target no leaf reaches stays at 0, or at
    the dtype's largest / lowest value for min / max). Result (N, n_targets) in x's dtype,
    accumulated in float64."""
    name = "nn.tree_ensemble"
    operands = (Operand("x", WIDE),)
    attrs = (Attr("nodes_featureids", "ints"), Attr("nodes_splits", "dense"),
             Attr("nodes_modes", "ints"), Attr("nodes_truenodeids", "ints"),
             Attr("nodes_trueleafs", "ints"), Attr("nodes_falsenodeids", "ints"),
             Attr("nodes_falseleafs", "ints"), Attr("nodes_missing_value_tracks_true", "ints", None),
             Attr("leaf_targetids", "ints"), Attr("leaf_weights", "dense"), Attr("tree_roots", "ints"),
             Attr("membership_values", "dense", None), Attr("n_targets", "int"),
             Attr("aggregate", "str", "sum", choices=("sum", "average", "min", "max")))
    traits = {"pure"}
    vjp = not_differentiable("piecewise constant in x")
    examples = (
        Ex(np.array([[1.2, 3.4], [-0.12, 1.66], [4.14, 1.77], [np.nan, 2.0]]),
           nodes_featureids=[0, 0, 1], nodes_splits=np.array([3.14, 1.2, 2.0]), nodes_modes=[0, 1, 3],
           nodes_truenodeids=[1, 0, 2], nodes_trueleafs=[0, 1, 1], nodes_falsenodeids=[2, 1, 3],
           nodes_falseleafs=[0, 1, 1], nodes_missing_value_tracks_true=[1, 0, 0],
           leaf_targetids=[0, 1, 0, 1], leaf_weights=np.array([5.23, 12.12, -12.23, 7.21]),
           tree_roots=[0, 2], n_targets=2),
        Ex(np.array([[1.2], [3.4], [-0.12], [np.nan], [12.0], [7.0]], np.float32),
           nodes_featureids=[0, 0, 0], nodes_splits=np.array([11.0, 232344.0, np.nan], np.float32),
           nodes_modes=[0, 6, 6], nodes_truenodeids=[1, 0, 1], nodes_trueleafs=[0, 1, 1],
           nodes_falsenodeids=[2, 2, 3], nodes_falseleafs=[1, 0, 1], leaf_targetids=[0, 1, 2, 3],
           leaf_weights=np.array([1.0, 10.0, 1000.0, 100.0], np.float32), tree_roots=[0],
           membership_values=np.array([1.2, 3.7, 8.0, 9.0, np.nan, 12.0, 7.0, np.nan], np.float32),
           n_targets=4, aggregate="max"),
        Ex(np.array([[0.5, 2.0], [3.0, -1.0]], np.float32), nodes_featureids=[1, 0],
           nodes_splits=np.array([0.0, 1.0], np.float32), nodes_modes=[2, 4],
           nodes_truenodeids=[0, 1], nodes_trueleafs=[1, 1], nodes_falsenodeids=[1, 2],
           nodes_falseleafs=[1, 1], leaf_targetids=[0, 0, 0],
           leaf_weights=np.array([1.5, -2.0, 4.0], np.float32), tree_roots=[0, 1], n_targets=1,
           aggregate="average"))

    def infer(x, **attrs):
        if x.rank != 2:
            raise ShapeError(f"x must be (N, features), got {x}")
        _tree_check(x.shape[1], attrs)
        return TensorType((x.shape[0], attrs["n_targets"]), x.dtype)

    def ref(x, **a):
        leaves = _tree_np(x, a)                       # (trees, N)
        tw = a["leaf_weights"].array.astype(np.float64)[leaves]
        tt = np.asarray(a["leaf_targetids"], np.int64)[leaves]
        n, k = x.shape[0], a["n_targets"]
        rows = np.broadcast_to(np.arange(n), tt.shape)
        agg = a["aggregate"]
        if agg in ("sum", "average"):
            out = np.zeros((n, k))
            np.add.at(out, (rows, tt), tw)
            if agg == "average":
                out /= len(a["tree_roots"])
        elif agg == "min":
            out = np.full((n, k), np.inf)
            np.minimum.at(out, (rows, tt), tw)
            out[np.isinf(out) & (out > 0)] = np.finfo(x.dtype).max
        else:
            out = np.full((n, k), -np.inf)
            np.maximum.at(out, (rows, tt), tw)
            out[np.isinf(out) & (out < 0)] = np.finfo(x.dtype).min
        return out.astype(x.dtype)

    def cost(op, bind):
        x = op.operands[0].type
        n = concrete(x.shape[:1], bind)[0]
        depth = max(1, int(math.log2(len(op.attrs["nodes_featureids"]) + 1)))
        return Cost(n * len(op.attrs["tree_roots"]) * depth * 2, x.nbytes(bind),
                    op.results[0].type.nbytes(bind))
