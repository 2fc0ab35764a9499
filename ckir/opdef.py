"""Op declarations: one object per op holding everything ckir knows about it.

An op is declared once, with `declare` on a class (or by calling `OpDef(...)` from a table):

    @declare
    class matmul:
        '''Matrix product with numpy batching.'''        # the docs text
        name = "nn.matmul"
        operands = (Operand("a", FLOAT), Operand("b", FLOAT))
        attrs = (Attr("transpose_b", "bool", False),)
        traits = {"pure"}
        examples = (Ex("f32[2,3]", "f32[4,3]", transpose_b=True),)
        def infer(a, b, *, transpose_b): ...            # operand types -> result type(s)
        def ref(a, b, *, transpose_b): ...              # numpy semantics: the meaning of the op
        def vjp(b, op, dy): ...                         # builds gradient IR, or NOT_DIFFERENTIABLE
        def cost(op, bind): ...                         # Cost(flops, bytes_read, bytes_written)

`infer` and `ref` take operands positionally (a list for a variadic operand, None for a missing
optional one) and attributes as keywords. `vjp(b, op, *grads)` gets a Builder placed where the
backward ops go and one gradient Value (or None) per result; it returns one Value (or None)
per operand. `cost` may be replaced by `flops` (FLOPs per output element), which gives the
usual elementwise cost.
"""
from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass

import numpy as np

from . import dtypes as dt
from .errors import CkirError, ShapeError, VerifyError
from .types import OptType, SeqType, Sym, TensorType, concrete

_KIND = {TensorType: "tensor", SeqType: "seq", OptType: "optional"}

TRAITS = {
    "pure": "no side effects; may be removed when unused, deduplicated and folded",
    "elementwise": "each output element depends only on the same element of each operand",
    "broadcasting": "operands broadcast with numpy rules",
    "commutative": "operands can be swapped",
    "reduction": "reduces over axes",
    "inplace": "the result may reuse the first operand's buffer",
    "view": "moves no data: the result is the operand's bytes reinterpreted",
    "terminator": "ends a block; its operands are the block's outputs",
    "side_effect": "touches state outside its operands and results; never removed or reordered",
}

# dtype constraints for operands
FLOAT = dt.FLOATS
INT = dt.INTS
BOOL = (dt.bool_,)
NUMERIC = FLOAT + INT
ANY = FLOAT + INT + BOOL      # not strings: an op that takes strings says so (STRING)
QUANT = dt.QUANTS
STRING = dt.STRINGS


@dataclass(frozen=True)
class Operand:
    """An operand slot. `kind` is "tensor", "seq" (a sequence of tensors), "optional" (an
    optional value) or "any"; `dtypes` constrains the (element) dtype."""
    name: str
    dtypes: tuple = ANY
    variadic: bool = False
    optional: bool = False
    doc: str = ""
    kind: str = "tensor"


@dataclass(frozen=True)
class Result:
    name: str
    variadic: bool = False
    doc: str = ""


REQUIRED = object()


class Dense:
    """An attribute holding a small numpy array (e.g. a constant's value). Hashable by content.
    Strings are object arrays of str (numpy fixed-width text arrays are converted to that)."""
    __slots__ = ("array", "_key", "_hash")

    def __init__(self, array):
        a = np.array(array, copy=True)
        if a.dtype.kind == "U":
            a = a.astype(object)
        if a.dtype == object:
            bad = [x for x in a.flat if not isinstance(x, str)]
            if bad:
                raise CkirError(f"a dense value of dtype object must hold strings, got "
                                f"{type(bad[0]).__name__} {bad[0]!r}")
            self._key = tuple(str(x) for x in a.flat)     # an object array's bytes are pointers
        else:
            self._key = None
        a.flags.writeable = False
        self.array = a
        self._hash = hash((a.dtype.str, a.shape, self._content()))

    def _content(self):
        return self._key if self._key is not None else self.array.tobytes()

    def __eq__(self, other):
        return (type(other) is Dense and self._hash == other._hash and self.array.dtype == other.array.dtype
                and self.array.shape == other.array.shape and self._content() == other._content())

    def __hash__(self):
        return self._hash

    def __repr__(self):
        return f"Dense({self.array!r})"


class SymbolRef(str):
    """A reference to a module-level symbol (a weight or a graph), printed `@name`."""
    __slots__ = ()


class Bare(str):
    """A bare identifier in attribute text (a dtype or dim name), as opposed to a quoted string."""
    __slots__ = ()


def _ident_or_int(x):
    if isinstance(x, Sym):
        if x.name is None:
            raise CkirError("'?' cannot appear in a shape attribute; use -1 or a named dim")
        return Sym(x.name)
    if isinstance(x, str) and not isinstance(x, SymbolRef):
        return Sym(str(x))
    x = _as_int(x)
    if x < -1:
        raise CkirError(f"shape entries must be >= -1, got {x}")
    return x


def _as_bool(x):
    if type(x) is bool or type(x) is np.bool_:
        return bool(x)
    raise CkirError(f"expected true or false, got {x!r}")


def _as_int(x):
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise CkirError(f"expected an integer, got {x!r}")
    return int(x)


def _as_float(x):
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise CkirError(f"expected a number, got {x!r}")
    return float(x)


def _as_str(x):
    if not isinstance(x, str) or isinstance(x, (SymbolRef, Bare)):
        raise CkirError(f"expected a quoted string, got {x!s}")
    return str(x)


def _as_list(conv):
    def f(x):
        if not isinstance(x, (list, tuple)):
            raise CkirError(f"expected a list, got {x!r}")
        return tuple(conv(v) for v in x)
    return f


def _as_dtype(x):
    if isinstance(x, dt.DType):
        return x
    if isinstance(x, str) and not isinstance(x, SymbolRef):
        return dt.dtype(str(x))
    raise CkirError(f"expected a dtype, got {x!r}")


def _as_dense(x):
    return x if isinstance(x, Dense) else Dense(x)


def _as_symref(x):
    if isinstance(x, str) and not isinstance(x, Bare):
        return SymbolRef(x)
    raise CkirError(f"expected a symbol reference @name, got {x!r}")


ATTR_KINDS = {
    "bool": _as_bool, "int": _as_int, "float": _as_float, "str": _as_str,
    "ints": _as_list(_as_int), "floats": _as_list(_as_float),
    "shape": _as_list(_ident_or_int),     # ints, -1, and symbolic dim names
    "dtype": _as_dtype, "dense": _as_dense, "symbol": _as_symref,
}


@dataclass(frozen=True)
class Attr:
    """An attribute: kind is one of ATTR_KINDS; default REQUIRED, None (absent) or a value;
    choices restricts a 'str' attribute to a set."""
    name: str
    kind: str
    default: object = REQUIRED
    doc: str = ""
    choices: tuple = ()

    def __post_init__(self):
        if self.kind not in ATTR_KINDS:
            raise CkirError(f"attribute {self.name}: unknown kind {self.kind!r}")
        if self.default is not REQUIRED and self.default is not None:
            object.__setattr__(self, "default", ATTR_KINDS[self.kind](self.default))

    def convert(self, value):
        v = ATTR_KINDS[self.kind](value)
        if self.choices and v not in self.choices:
            raise CkirError(f"expected one of {', '.join(map(repr, self.choices))}, got {v!r}")
        return v


class Ex:
    """An example use of an op: operand specs and attributes. Operand specs are type strings
    like "f32[2,3]" (random normal values; ints in [0, 5); random bools), `Arg(...)` for a value
    range, or numpy arrays. Examples drive the generic op tests and the docs."""

    def __init__(self, *args, **attrs):
        self.args = [a if isinstance(a, (Arg, np.ndarray, list)) else Arg(a) for a in args]
        self.attrs = attrs

    def arrays(self, rng):
        out = []
        for a in self.args:
            if isinstance(a, list):           # a variadic operand
                out.append([x if isinstance(x, np.ndarray) else Arg(x).sample(rng) for x in a])
            elif isinstance(a, np.ndarray):
                out.append(a)
            else:
                out.append(a.sample(rng))
        return out

    def types(self, arrays) -> list:
        """The operand types of `arrays` (as `arrays` returned them), flattened like the operands. A
        block-quantized operand's array holds raw bytes: its type comes from its Arg."""
        out = []
        for spec, a in zip(self.args, arrays):
            for x in (a if isinstance(a, list) else [a]):
                if isinstance(spec, Arg) and spec.dtype.is_quant:
                    out.append(TensorType(spec.shape, spec.dtype))
                else:
                    out.append(TensorType(x.shape, x.dtype))
        return out

    def __repr__(self):
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.attrs.items()]
        return f"({', '.join(parts)})"


_SPEC = re.compile(r"(\w+)\[([\d,\s]*)\]\Z")


class Arg:
    """A random operand: `Arg("f32[3,4]", low=0.1, high=2.0)`; `high` is exclusive for ints."""

    def __init__(self, spec, low=None, high=None):
        m = _SPEC.match(spec.replace(" ", ""))
        if not m:
            raise CkirError(f"bad example spec {spec!r}; want like 'f32[2,3]'")
        self.spec, self.low, self.high = spec, low, high
        self.dtype = dt.dtype(m.group(1))
        self.shape = tuple(int(x) for x in m.group(2).split(",") if x)

    def sample(self, rng):
        d = self.dtype
        if d.is_float:
            if self.low is None:
                x = rng.standard_normal(self.shape)
            else:
                x = rng.uniform(self.low, self.high, self.shape)
            return x.astype(d.np)
        if d.is_int:
            lo = 0 if self.low is None else self.low
            hi = 5 if self.high is None else self.high
            return rng.integers(lo, hi, self.shape).astype(d.np)
        if d.is_bool:
            return np.asarray(rng.random(self.shape) < 0.5)
        raise CkirError(f"no random examples for {d}")

    def __repr__(self):
        if self.low is None:
            return self.spec
        return f"{self.spec} in [{self.low}, {self.high})"


@dataclass(frozen=True)
class Cost:
    flops: int = 0
    bytes_read: int = 0
    bytes_written: int = 0

    def __add__(self, o):
        return Cost(self.flops + o.flops, self.bytes_read + o.bytes_read, self.bytes_written + o.bytes_written)


class NotDifferentiable:
    """The explicit decision that an op has no gradient, with the reason."""

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self):
        return f"not differentiable: {self.reason}"


def not_differentiable(reason: str) -> NotDifferentiable:
    return NotDifferentiable(reason)


_REGISTRY: dict[str, OpDef] = {}


class OpDef:
    """The declaration of one op. See the module docstring."""

    def __init__(self, name, *, doc="", operands=(), results=(Result("y"),), attrs=(), traits=(),
                 infer=None, ref=None, vjp=None, cost=None, flops=None, examples=(), verify=None,
                 regions=0, patterns=(), fold=True, declared_types=False):
        if not re.fullmatch(r"[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*", name):
            raise CkirError(f"op name {name!r} must look like dialect.op")
        unknown = set(traits) - set(TRAITS)
        if unknown:
            raise CkirError(f"{name}: unknown traits {sorted(unknown)}")
        self.name = name
        self.dialect = name.split(".")[0]
        self.doc = inspect.cleandoc(doc or "")
        self.operands = tuple(operands)
        self.results = tuple(results)
        self.attrs = {a.name: a for a in attrs}
        self.traits = frozenset(traits)
        self._infer, self._ref, self.vjp = infer, ref, vjp
        # a reference with a `types` parameter also gets the operand types (the raw bytes of a
        # block-quantized operand do not say which block type they hold)
        self.ref_types = ref is not None and "types" in inspect.signature(ref).parameters
        self._cost, self.flops = cost, flops
        self.examples = tuple(examples)
        self._verify = verify
        self.regions = regions
        self.patterns = tuple(patterns)
        self.fold = fold      # whether canonicalize may constant-fold it through `ref`
        # result types come from the IR text and are checked by `verify` (e.g. ckir.weight,
        # whose type is the weight's); such ops have no shape rule
        self.declared_types = declared_types
        self.pure = "pure" in self.traits
        self.variadic_operands = any(o.variadic for o in self.operands)
        self.variadic_results = any(r.variadic for r in self.results)
        self._required = [o for o in self.operands if not o.optional and not o.variadic]

    def __repr__(self):
        return f"<OpDef {self.name}>"

    # --- attributes ---------------------------------------------------------------------------
    def make_attrs(self, given: dict, where: str | None = None) -> dict:
        """Validate and normalize attributes, filling defaults. Errors name the op and attribute."""
        where = where or self.name
        out = {}
        for k, v in given.items():
            a = self.attrs.get(k)
            if a is None:
                known = ", ".join(self.attrs) or "none"
                raise VerifyError(f"{where}: unknown attribute '{k}' (attributes: {known})")
            if v is None:
                if a.default is not None:
                    raise VerifyError(f"{where}: attribute '{k}' cannot be absent")
                out[k] = None
                continue
            try:
                out[k] = a.convert(v)
            except CkirError as e:
                raise VerifyError(f"{where}: attribute '{k}' ({a.kind}): {e}") from None
        for k, a in self.attrs.items():
            if k not in out:
                if a.default is REQUIRED:
                    raise VerifyError(f"{where}: missing required attribute '{k}'")
                out[k] = a.default
        return out

    # --- operands -----------------------------------------------------------------------------
    def group(self, values: list) -> list:
        """Split a flat operand list into the declared operand slots (list for variadic, None
        for absent optional). Raises ShapeError when the count cannot match."""
        n, specs = len(values), self.operands
        if not self.variadic_operands and not any(o.optional for o in specs):
            if n != len(specs):
                raise ShapeError(f"expects {len(specs)} operands, got {n}")
            return list(values)
        fixed = len(self._required)
        if n < fixed:
            raise ShapeError(f"expects at least {fixed} operands, got {n}")
        extra = n - fixed
        out, i = [], 0
        for o in specs:
            if o.variadic:
                take = extra
                extra = 0
                out.append(list(values[i:i + take]))
                i += take
            elif o.optional:
                if extra > 0:
                    out.append(values[i])
                    i += 1
                    extra -= 1
                else:
                    out.append(None)
            else:
                out.append(values[i])
                i += 1
        if i != n:
            raise ShapeError(f"expects at most {i} operands, got {n}")
        return out

    def check_operand_dtypes(self, types: list) -> None:
        grouped = self.group(types)
        for spec, t in zip(self.operands, grouped):
            for tt in (t if spec.variadic else [t]):
                if tt is None:
                    continue
                if spec.kind != "any" and _KIND[type(tt)] != spec.kind:
                    raise ShapeError(f"operand '{spec.name}' must be a {spec.kind}, got {tt}")
                if tt.dtype not in spec.dtypes:
                    raise ShapeError(f"operand '{spec.name}' has dtype {tt.dtype}, allowed: "
                                     + _fmt_dtypes(spec.dtypes))

    # --- the declared pieces --------------------------------------------------------------------
    def infer(self, operand_types: list, attrs: dict) -> tuple:
        """Result types for these operand types and attributes (ShapeError if rejected)."""
        self.check_operand_dtypes(operand_types)
        r = self._infer(*self.group(list(operand_types)), **attrs)
        r = tuple(r) if isinstance(r, (tuple, list)) else (r,)
        if not self.variadic_results and len(r) != len(self.results):
            raise ShapeError(f"shape rule returned {len(r)} types for {len(self.results)} results")
        return r

    def ref(self, arrays: list, attrs: dict, types: list | None = None, **extra):
        """Run the reference on operand arrays; `types` (the operand types) is required by ops
        whose reference takes them (`ref_types`)."""
        if self.ref_types:
            if types is None:
                raise CkirError(f"{self.name}: its reference needs the operand types")
            extra["types"] = types
        r = self._ref(*self.group(list(arrays)), **attrs, **extra)
        return tuple(r) if isinstance(r, (tuple, list)) else (r,)

    def cost(self, op, bind=None) -> Cost:
        if self._cost is not None:
            return self._cost(op, bind)
        if self.flops is None:
            raise CkirError(f"{self.name} declares no cost")
        read = sum(v.type.nbytes(bind) for v in op.operands)
        written = sum(v.type.nbytes(bind) for v in op.results)
        n = sum(math.prod(concrete(v.type.shape, bind)) for v in op.results)
        return Cost(self.flops * n, read, written)

    def verify(self, op) -> None:
        """Check an op against this declaration; raises VerifyError naming the op."""
        where = op.location()
        if len(op.regions) != self.regions:
            raise VerifyError(f"{where}: has {len(op.regions)} regions, expects {self.regions}")
        if not self.declared_types:
            try:
                inferred = self.infer([v.type for v in op.operands], op.attrs)
            except CkirError as e:
                raise VerifyError(f"{where}: {e}") from None
            got = [v.type for v in op.results]
            if len(inferred) != len(got):
                raise VerifyError(f"{where}: has {len(got)} results, its shape rule gives {len(inferred)}")
            for i, (want, have) in enumerate(zip(inferred, got)):
                if not compatible(have, want):
                    raise VerifyError(f"{where}: result {i} has type {have}, but the operands give {want}")
        if self._verify is not None:
            try:
                self._verify(op)
            except CkirError as e:
                raise VerifyError(f"{where}: {e}") from None

    def has(self, piece: str) -> bool:
        return {"infer": self._infer or self.declared_types, "ref": self._ref, "vjp": self.vjp,
                "cost": self._cost if self._cost is not None else self.flops}[piece] is not None


def compatible(declared, inferred) -> bool:
    """A declared type may refine an inferred one: anonymous dims on either side match anything,
    and named dims match by name. Sequences and optionals compare their elements."""
    if declared is inferred:
        return True
    if type(declared) is not type(inferred):
        return False
    if type(declared) is not TensorType:
        return compatible(declared.elem, inferred.elem)
    if declared.dtype is not inferred.dtype or declared.rank != inferred.rank:
        return False
    for a, b in zip(declared.shape, inferred.shape):
        if a == b:
            continue
        if type(a) is Sym and (a.name is None or type(b) is Sym and b.name == a.name):
            continue        # a bound is a property of the name, checked module-wide
        if type(b) is Sym and b.name is None:
            continue
        return False
    return True


def _fmt_dtypes(ds) -> str:
    s = set(ds)
    for group, label in ((set(QUANT), "quantized types"), (set(FLOAT), "float types"), (set(INT), "int types")):
        if group <= s:
            s -= group
            s.add(label)
    return ", ".join(sorted(str(x) for x in s))


def register(opdef: OpDef) -> OpDef:
    if opdef.name in _REGISTRY:
        raise CkirError(f"op {opdef.name} is declared twice")
    _REGISTRY[opdef.name] = opdef
    return opdef


def declare(cls) -> OpDef:
    """Class decorator: turn a declaration class into a registered OpDef."""
    ns = {k: v for k, v in vars(cls).items() if not k.startswith("_")}   # _private helpers stay out
    name = ns.pop("name")
    for k in ("infer", "ref", "vjp", "cost", "verify"):
        if isinstance(ns.get(k), staticmethod):
            ns[k] = ns[k].__func__
    return register(OpDef(name, doc=cls.__doc__ or "", **ns))


def get_op(name: str) -> OpDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CkirError(f"unknown op '{name}'") from None


def lookup(name: str) -> OpDef | None:
    return _REGISTRY.get(name)


def all_ops() -> list[OpDef]:
    return list(_REGISTRY.values())
