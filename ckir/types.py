"""Tensor types with static or symbolic dimensions.

A dim is an int or a `Sym`. `Sym("seq", 2048)` is a named dim with an upper bound; the same name
means the same size everywhere in a module. `Sym(None)` is an anonymous dim (`?`): unknown, and
unrelated to any other `?`. Types are interned, so `==` is identity and hashing is cheap.
"""
from __future__ import annotations

import math
import re

from . import dtypes as dt
from .errors import CkirError, ShapeError

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class Sym:
    __slots__ = ("name", "bound", "_hash")
    _cache: dict = {}

    def __new__(cls, name: str | None = None, bound: int | None = None):
        key = (name, bound)
        s = cls._cache.get(key)
        if s is None:
            if name is not None and not _IDENT.match(name):
                raise CkirError(f"symbolic dim name {name!r} must be an identifier")
            if bound is not None and (not isinstance(bound, int) or bound < 0):
                raise CkirError(f"symbolic dim bound must be a non-negative int, got {bound!r}")
            s = object.__new__(cls)
            s.name, s.bound, s._hash = name, bound, hash(key)
            cls._cache[key] = s
        return s

    def __hash__(self):
        return self._hash

    def __reduce__(self):
        return (Sym, (self.name, self.bound))

    def __str__(self):
        core = self.name if self.name is not None else "?"
        if self.name is None and self.bound is None:
            return "?"
        return f"[{core}<={self.bound}]" if self.bound is not None else f"[{core}]"

    __repr__ = __str__


ANY = Sym()
Dim = int | Sym


def is_static(d) -> bool:
    return type(d) is int


class TensorType:
    """An n-d tensor type. Rank-0 means scalar. Build with `TensorType(shape, dtype)`."""
    __slots__ = ("shape", "dtype", "_hash", "_str")
    _cache: dict = {}

    def __new__(cls, shape, dtype):
        dtype = dt.dtype(dtype)
        shape = tuple(shape)
        key = (shape, dtype)
        t = cls._cache.get(key)
        if t is not None:
            return t
        shape = tuple(_dim(d) for d in shape)
        key = (shape, dtype)
        t = cls._cache.get(key)
        if t is None:
            if dtype.is_quant:
                if not shape:
                    raise CkirError(f"block-quantized type {dtype} needs rank >= 1")
                last = shape[-1]
                if type(last) is int and last % dtype.block_size:
                    raise CkirError(f"{dtype} packs blocks of {dtype.block_size} elements; "
                                    f"innermost dim {last} is not a multiple")
            t = object.__new__(cls)
            t.shape, t.dtype, t._hash, t._str = shape, dtype, hash(key), None
            cls._cache[key] = t
        return t

    def __hash__(self):
        return self._hash

    def __reduce__(self):
        return (TensorType, (self.shape, self.dtype.name))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(type(d) is int for d in self.shape)

    @property
    def syms(self) -> set:
        return {d for d in self.shape if type(d) is Sym}

    @property
    def numel(self) -> int | None:
        """Element count, or None when a dim is symbolic."""
        return math.prod(self.shape) if self.is_static else None

    def nbytes(self, bind=None) -> int:
        """Bytes the tensor occupies; symbolic dims are looked up in `bind` (else bound, else 1)."""
        return self.dtype.nbytes(math.prod(concrete(self.shape, bind)))

    def with_shape(self, shape) -> TensorType:
        return TensorType(shape, self.dtype)

    def with_dtype(self, dtype) -> TensorType:
        return TensorType(self.shape, dtype)

    def __str__(self):
        s = self._str
        if s is None:
            s = self._str = "tensor<" + "".join(f"{d}x" for d in self.shape) + self.dtype.name + ">"
        return s

    def __repr__(self):
        return str(self)


class SeqType:
    """A sequence of tensors of one element type (ONNX sequences). At run time: a list of arrays.
    Element dims are per element: named dims in `elem` are not bound across elements."""
    __slots__ = ("elem", "_hash")
    _cache: dict = {}

    def __new__(cls, elem):
        t = cls._cache.get(elem)
        if t is None:
            if type(elem) is not TensorType:
                raise CkirError(f"a sequence holds tensors, not {elem}")
            t = object.__new__(cls)
            t.elem, t._hash = elem, hash(("seq", elem))
            cls._cache[elem] = t
        return t

    def __hash__(self):
        return self._hash

    def __reduce__(self):
        return (SeqType, (self.elem,))

    dtype = property(lambda self: self.elem.dtype)
    syms = property(lambda self: self.elem.syms)
    is_static = False

    def nbytes(self, bind=None) -> int:
        return 0          # unknown until run time

    def __str__(self):
        return f"seq<{self.elem}>"

    __repr__ = __str__


class OptType:
    """An optional value (ONNX optional): a tensor or sequence, or none. At run time: the value
    or None."""
    __slots__ = ("elem", "_hash")
    _cache: dict = {}

    def __new__(cls, elem):
        t = cls._cache.get(elem)
        if t is None:
            if type(elem) not in (TensorType, SeqType):
                raise CkirError(f"an optional holds a tensor or a sequence, not {elem}")
            t = object.__new__(cls)
            t.elem, t._hash = elem, hash(("optional", elem))
            cls._cache[elem] = t
        return t

    def __hash__(self):
        return self._hash

    def __reduce__(self):
        return (OptType, (self.elem,))

    dtype = property(lambda self: self.elem.dtype)
    syms = property(lambda self: self.elem.syms)
    is_static = False

    def nbytes(self, bind=None) -> int:
        return self.elem.nbytes(bind) if type(self.elem) is TensorType else 0

    def __str__(self):
        return f"optional<{self.elem}>"

    __repr__ = __str__


def tensors_in(t):
    """The tensor types a (tensor, sequence or optional) type is made of."""
    while type(t) is not TensorType:
        t = t.elem
    return t


def _dim(d):
    if type(d) is int or type(d) is Sym:
        if type(d) is int and d < 0:
            raise CkirError(f"dims must be >= 0, got {d}")
        return d
    if d is None or d == "?":
        return ANY
    if isinstance(d, str):
        return Sym(d)
    try:
        import operator
        v = operator.index(d)
    except TypeError:
        raise CkirError(f"a dim must be an int, a name or '?', got {d!r}") from None
    return _dim(v)


def concrete(shape, bind=None) -> tuple[int, ...]:
    """Shape with symbolic dims replaced from `bind` (name -> int); falls back to the bound, then 1.
    Used for cost estimates, never for execution."""
    out = []
    for d in shape:
        if type(d) is int:
            out.append(d)
        elif bind and d.name in bind:
            out.append(bind[d.name])
        else:
            out.append(d.bound if d.bound is not None else 1)
    return tuple(out)


def same_dim(a, b) -> bool:
    """Dims known to be equal (an anonymous `?` is equal to nothing but itself)."""
    return a == b and not (type(a) is Sym and a.name is None)


def broadcast_shapes(*shapes) -> tuple:
    """numpy broadcasting extended to symbolic dims. Mismatched static dims raise ShapeError."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(rank):
        dims = [s[i - rank + len(s)] for s in shapes if i - rank + len(s) >= 0]
        non1 = [d for d in dims if d != 1]
        if not non1:
            out.append(1)
            continue
        static = {d for d in non1 if type(d) is int}
        if len(static) > 1:
            raise ShapeError(f"cannot broadcast shapes {', '.join(fmt_shape(s) for s in shapes)}")
        if static:
            out.append(static.pop())
        elif non1[0].name is not None and all(d.name == non1[0].name for d in non1):
            out.append(next((d for d in non1 if d.bound is not None), non1[0]))
        else:
            out.append(ANY)
    return tuple(out)


def with_bounds(dims, *types) -> tuple:
    """Dims from an attribute (named dims are stored by name only) with the bounds their names
    carry in `types`."""
    known = {d.name: d for t in types for d in t.shape if type(d) is Sym and d.name}
    return tuple(known.get(d.name, d) if type(d) is Sym and d.name else d for d in dims)


def fmt_shape(shape) -> str:
    return "[" + ", ".join(str(d) if type(d) is not Sym else (d.name or "?") for d in shape) + "]"


def dims_product(dims):
    """Product of dims: an int when all are static, else ANY."""
    p = 1
    for d in dims:
        if type(d) is not int:
            return ANY
        p *= d
    return p
