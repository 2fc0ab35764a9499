"""String ops (ONNX StringNormalizer, StringConcat, StringSplit, RegexFullMatch).

String tensors hold variable-length Unicode text: at run time, numpy object arrays whose
elements are Python `str` (see ckir/dtypes.py). A string's size is not known from its type, so
these ops' costs count one operation per result element and no bytes. Strings have no gradient.
"""
from __future__ import annotations

import re

import numpy as np

from ckir import dtypes as dt
from ckir.errors import ShapeError
from ckir.opdef import STRING, Attr, Cost, Ex, Operand, Result, declare, not_differentiable
from ckir.types import ANY as ANYDIM
from ckir.types import TensorType, broadcast_shapes

from ._util import numel

NO_GRADIENT = not_differentiable("strings")


def strings(*xs, shape=None) -> np.ndarray:
    """An object array of str (the run-time form of a string tensor)."""
    a = np.empty(len(xs), dtype=object)
    a[:] = list(xs)
    return a.reshape(shape if shape is not None else (len(xs),))


def _per_element_cost(op, bind) -> Cost:
    n = sum(numel(r.type, bind) for r in op.results)
    return Cost(n, sum(v.type.nbytes(bind) for v in op.operands),
                sum(r.type.nbytes(bind) for r in op.results))


def _map(fn, x, dtype=object) -> np.ndarray:
    """fn applied to each element of x, keeping x's shape (0-d and empty arrays too)."""
    out = np.empty(x.shape, dtype=dtype)
    for i, s in enumerate(x.flat):
        out.flat[i] = fn(s)
    return out


@declare
class string_concat:
    """y = a + b: each string of a followed by the string of b at the same position, with numpy
    broadcasting (ONNX StringConcat)."""
    name = "nn.string_concat"
    operands = (Operand("a", STRING), Operand("b", STRING))
    traits = {"pure", "elementwise", "broadcasting"}
    vjp = NO_GRADIENT
    cost = _per_element_cost
    examples = (Ex(strings("abc", "", "的"), strings(".com", "x", "中")),
                Ex(strings("cat", "dog", "snake", "", shape=(2, 2)), strings("s")),
                Ex(strings("a", shape=()), strings("\"q\"\\", shape=())))

    def infer(a, b):
        return TensorType(broadcast_shapes(a.shape, b.shape), dt.string)

    def ref(a, b):
        a, b = np.broadcast_arrays(a, b)
        out = np.empty(a.shape, dtype=object)
        for i, (s, t) in enumerate(zip(a.flat, b.flat)):
            out.flat[i] = s + t
        return out


def _casefold_set(words):
    return {w.casefold() for w in words}


@declare
class string_normalizer:
    """ONNX StringNormalizer on x of shape [C] or [1, C]: drops the elements equal to one of
    `stopwords` (compared exactly when `case_sensitive`, else by Unicode caseless matching,
    str.casefold), then changes the case of the others: "LOWER" str.lower, "UPPER" str.upper
    (Unicode default case mapping: locale-independent), "NONE" unchanged. The kept elements
    stay in order along the last axis; if none is kept the result is one empty string ([1] or
    [1, 1]). The result's last dim is C when there are no stopwords and C > 0 is static, else
    `?`. Unlike onnx.reference, accents are not stripped (the ONNX spec does not ask for it)."""
    name = "nn.string_normalizer"
    operands = (Operand("x", STRING),)
    attrs = (Attr("case_change", "str", "NONE", choices=("NONE", "LOWER", "UPPER")),
             Attr("case_sensitive", "bool", False, doc="compare with stopwords exactly"),
             Attr("stopwords", "dense", None, doc="1-D string tensor of words to drop"))
    traits = {"pure"}
    vjp = NO_GRADIENT
    cost = _per_element_cost
    examples = (Ex(strings("Monday", "tuesday", "MONDAY", "straße"), case_change="UPPER",
                   stopwords=strings("monday")),
                Ex(strings("monday", "Tuesday", "monday", shape=(1, 3)), case_change="LOWER",
                   case_sensitive=True, stopwords=strings("monday", "x")),
                Ex(strings("monday", "monday"), stopwords=strings("MONDAY")),
                Ex(strings("A", "b", shape=(1, 2)), case_change="LOWER"),
                Ex(strings()))

    def infer(x, *, case_change, case_sensitive, stopwords):
        if x.rank not in (1, 2) or x.rank == 2 and x.shape[0] != 1 and type(x.shape[0]) is int:
            raise ShapeError(f"x must have shape [C] or [1, C], got {x}")
        if stopwords is not None and (stopwords.array.ndim != 1 or stopwords.array.dtype != object):
            raise ShapeError(f"stopwords must be a 1-D string tensor, got {stopwords.array.dtype} "
                             f"{list(stopwords.array.shape)}")
        c = x.shape[-1]
        keeps_all = (stopwords is None or stopwords.array.size == 0) and type(c) is int and c > 0
        return TensorType((1,) * (x.rank - 1) + (c if keeps_all else ANYDIM,), dt.string)

    def ref(x, *, case_change, case_sensitive, stopwords):
        if x.ndim == 2 and x.shape[0] != 1:
            raise ShapeError(f"x must have shape [C] or [1, C], got {list(x.shape)}")
        words = () if stopwords is None else stopwords.array
        if case_sensitive:
            stops = set(words)
            kept = [s for s in x.flat if s not in stops]
        else:
            stops = _casefold_set(words)
            kept = [s for s in x.flat if s.casefold() not in stops]
        change = {"LOWER": str.lower, "UPPER": str.upper}.get(case_change)
        if change is not None:
            kept = [change(s) for s in kept]
        return strings(*(kept or [""])).reshape((1,) * (x.ndim - 1) + (-1,))


@declare
class string_split:
    """ONNX StringSplit: splits each string of x at `delimiter` (str.split semantics). With a
    delimiter, consecutive delimiters delimit empty strings and an empty string gives one empty
    substring; with `delimiter` absent or "", runs of whitespace (str.isspace) separate and
    leading/trailing whitespace is dropped (an empty or all-space string gives none). At most
    `maxsplit` splits are made, from the left (absent: no limit); the rest of the string is
    the last substring. Results: `y` of shape x.shape + [n], n the largest substring count
    (0 when x is empty), shorter rows padded with ""; `lengths` (i64, x's shape) the number of
    substrings of each string."""
    name = "nn.string_split"
    operands = (Operand("x", STRING),)
    results = (Result("y"), Result("lengths"))
    attrs = (Attr("delimiter", "str", None, doc="absent or \"\": runs of whitespace"),
             Attr("maxsplit", "int", None, doc="at most this many splits; absent: no limit"))
    traits = {"pure"}
    vjp = NO_GRADIENT
    cost = _per_element_cost
    examples = (Ex(strings("abc.com", "def.net.", ""), delimiter="."),
                Ex(strings("hello world", "def.net", "o n n x", " the quick  brown fox ", shape=(2, 2)),
                   maxsplit=2),
                Ex(strings("o-n-n--x-", "o-n----nx"), delimiter="--"),
                Ex(strings(" a\tb\n", "", "  "), delimiter=""),
                Ex(strings("a b", shape=())),
                Ex(strings(), delimiter=","))

    def infer(x, *, delimiter, maxsplit):
        if maxsplit is not None and maxsplit < 0:
            raise ShapeError(f"maxsplit must be >= 0, got {maxsplit}")
        last = 0 if 0 in x.shape else ANYDIM
        return TensorType(x.shape + (last,), dt.string), TensorType(x.shape, dt.i64)

    def ref(x, *, delimiter, maxsplit):
        sep = delimiter or None
        limit = -1 if maxsplit is None else maxsplit
        parts = [s.split(sep, limit) for s in x.flat]
        n = max((len(p) for p in parts), default=0)
        y = np.full((len(parts), n), "", dtype=object)
        for i, p in enumerate(parts):
            y[i, :len(p)] = p
        lengths = np.asarray([len(p) for p in parts], dtype=np.int64)
        return y.reshape(x.shape + (n,)), lengths.reshape(x.shape)


_POSIX_CLASS = re.compile(r"\[:\^?[a-z]+:\]")


def compile_pattern(pattern: str) -> re.Pattern:
    """The pattern compiled with Python's re in ASCII mode. ONNX specifies RE2; in ASCII mode
    \\d \\w \\s \\b mean what they mean in RE2 (ASCII classes). RE2's POSIX classes
    ([[:alpha:]]), which re would read silently as a plain set, are refused; so is what re
    cannot parse (\\p{..}, \\Q..\\E, \\C, \\z, (?U), ...)."""
    if _POSIX_CLASS.search(pattern):
        raise ShapeError(f"pattern {pattern!r}: POSIX classes like [[:alpha:]] are not supported "
                         "(ckir matches with Python's re, not RE2)")
    try:
        return re.compile(pattern, re.ASCII)
    except re.error as e:
        raise ShapeError(f"pattern {pattern!r} is not a valid regular expression: {e}") from None


@declare
class regex_full_match:
    """ONNX RegexFullMatch: y[i] = true when the whole string x[i] matches `pattern`
    (re.fullmatch). Matching uses Python's `re` in ASCII mode, not RE2 as ONNX specifies: the
    classes \\d \\w \\s \\b are ASCII as in RE2 (though \\s also matches \\v, RE2's does not);
    re also accepts what RE2 refuses (backreferences, lookaround), reads `a{,n}` as a repeat
    (RE2: literal text) and folds case under (?i) for ASCII letters only (RE2: Unicode). POSIX
    classes ([[:alpha:]]) and syntax re lacks (\\p{..}, \\Q..\\E, \\C, \\z) are refused when the
    op is built."""
    name = "nn.regex_full_match"
    operands = (Operand("x", STRING),)
    attrs = (Attr("pattern", "str"),)
    traits = {"pure", "elementwise"}
    vjp = NO_GRADIENT
    cost = _per_element_cost
    examples = (Ex(strings("www.google.com", "www.bbc.co.uk", "www.x.com"),
                   pattern=r"www\.[\w.-]+\.\bcom\b"),
                Ex(strings("account@gmail.com", "a@hotmail.com", "not email", "b2@yahoo.com",
                           shape=(2, 2)),
                   pattern=r"(\W|^)[\w.\-]{0,25}@(yahoo|gmail)\.com(\W|$)"),
                Ex(strings("١٢٣", "123", ""), pattern=r"\d*"),
                Ex(strings(shape=(2, 0)), pattern="a"))

    def infer(x, *, pattern):
        compile_pattern(pattern)
        return x.with_dtype(dt.bool_)

    def ref(x, *, pattern):
        rx = compile_pattern(pattern)
        return _map(lambda s: rx.fullmatch(s) is not None, x, np.bool_)
