"""Parser for the text IR. Every malformed input raises ParseError with file:line:col.

    module   := 'module' @NAME '{' (weight | graph)* '}'
    weight   := 'weight' @NAME ':' TYPE '=' (DENSE | 'file' '(' STRING ',' 'offset' '=' INT ')' | 'memory')
    graph    := 'graph' @NAME '(' args ')' '->' '(' [NAME ':' TYPE (',' ...)*] ')' '{' op* '}'
    op       := [VALUE (',' VALUE)* '='] OPNAME [VALUE (',' VALUE)*] [attrs] region*
                ':' '(' types ')' '->' (TYPE | '(' types ')') ['loc' '(' STRING ')']
    region   := '(' args ')' '{' op* '}'
    attrs    := '{' NAME '=' attr (',' NAME '=' attr)* '}'
    attr     := INT | FLOAT | true | false | STRING | @NAME | IDENT | '[' attr,* ']' | DENSE ':' TYPE
    TYPE     := tensor<(DIM x)* DTYPE>      DIM := INT | ? | [NAME] | [NAME<=INT] | [?<=INT]
    DENSE    := dense<number | nested list | "0xHEX">     (strings: a JSON string or nested list of them)
"""
from __future__ import annotations

import bisect
import json
import re

import numpy as np

from . import dtypes as dt
from .errors import CkirError, ParseError
from .ir import Block, FileSource, Graph, Module, Op, Weight, gc_paused
from .opdef import Bare, Dense, SymbolRef, lookup
from .types import ANY, OptType, SeqType, Sym, TensorType

# strings are JSON strings: only JSON's escapes lex, so json.loads always accepts a token
_STRING = r'"(?:[^"\\\n\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'
_NAME = r'(?:[A-Za-z_][A-Za-z0-9_.$]*|' + _STRING + ')'
# the same strings as one unrolled loop, which scans long ones (hex dense values) quickly
_STRING_RUN = r'"[^"\\\n\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\n\x00-\x1f]*)*"'
# Leading whitespace and comments are consumed with each token, which halves the matches.
_TOKEN = re.compile(r"""(?:\s+|//[^\n]*)*(?:
    (?P<value>%(?:\d+|""" + _NAME + r"""))
  | (?P<sym>@""" + _NAME + r""")
  | (?P<type>(?:(?:seq|optional)<)*tensor<[^>]*>(?:>)*)
  | (?P<dense>dense<[^>"]*(?:""" + _STRING_RUN + r"""[^>"]*)*>)
  | (?P<string>""" + _STRING + r""")
  | (?P<number>[-+]?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+|inf\b|nan\b))
  | (?P<arrow>->)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.$]*)
  | (?P<punct>[=,(){}\[\]:])
  | (?P<bad>.)
  | (?P<end>\Z)
)""", re.VERBOSE | re.DOTALL)
_DIM = re.compile(r"(\d+|\?|\[(?:([A-Za-z_][A-Za-z0-9_]*)|\?)(?:<=(\d+))?\])x")
_TYPE_CACHE: dict[str, TensorType] = {}


def parse_type(text: str):
    """Parse `tensor<...>`, `seq<tensor<...>>` or `optional<...>` text (cached); raises
    CkirError on bad syntax."""
    t = _TYPE_CACHE.get(text)
    if t is not None:
        return t
    for prefix, cls in (("seq<", SeqType), ("optional<", OptType)):
        if text.startswith(prefix):
            if not text.endswith(">"):
                raise CkirError(f"bad type {text!r}")
            t = _TYPE_CACHE[text] = cls(parse_type(text[len(prefix):-1]))
            return t
    if not (text.startswith("tensor<") and text.endswith(">")):
        raise CkirError(f"expected a tensor type, got {text!r}")
    body, pos, shape = text[7:-1], 0, []
    while True:
        m = _DIM.match(body, pos)
        if not m:
            break
        g = m.group(1)
        if g.isdigit():
            shape.append(int(g))
        elif g == "?":
            shape.append(ANY)
        else:
            shape.append(Sym(m.group(2), int(m.group(3)) if m.group(3) else None))
        pos = m.end()
    name = body[pos:]
    if name not in dt.names():
        raise CkirError(f"bad tensor type {text!r}: '{name}' is not a dtype "
                        f"(dtypes: {', '.join(dt.names())})")
    t = TensorType(shape, name)
    _TYPE_CACHE[text] = t
    return t


def _unquote(s: str) -> str:
    return json.loads(s) if s.startswith('"') else s


_SPECIAL = re.compile(r"\b(inf|nan)\b")


def parse_dense(body: str, t: TensorType) -> np.ndarray:
    """The array of a `dense<body> : t` literal."""
    npd = t.dtype.np
    if npd is None:
        raise CkirError(f"dense values of {t.dtype} are not supported")
    shape = tuple(d if type(d) is int else -1 for d in t.shape)
    if -1 in shape:
        raise CkirError(f"dense value needs a static type, got {t}")
    if t.dtype.is_string:
        return _string_dense(body, shape, t)
    if body.startswith('"0x'):
        raw = bytes.fromhex(body[3:-1])
        want = int(np.prod(shape)) * npd.itemsize
        if len(raw) != want:
            raise CkirError(f"hex dense value has {len(raw)} bytes, {t} needs {want}")
        return np.frombuffer(raw, dtype=npd.newbyteorder("<")).astype(npd).reshape(shape)
    js = _SPECIAL.sub(lambda m: {"inf": "Infinity", "nan": "NaN"}[m.group(1)], body)
    try:
        val = json.loads(js)
    except ValueError:
        raise CkirError(f"bad dense value <{body}>") from None
    try:
        with np.errstate(over="raise"):
            arr = np.array(val, dtype=npd if npd.kind != "b" else None)
    except FloatingPointError:
        raise CkirError(f"dense value <{body}> is out of range for {t.dtype}") from None
    except (ValueError, TypeError, OverflowError):
        raise CkirError(f"dense value <{body}> is not a regular array of {t.dtype}") from None
    if npd.kind == "b":
        if arr.dtype != np.bool_:
            raise CkirError(f"dense value <{body}> is not boolean")
    elif arr.dtype != npd and (arr.dtype == object or arr.dtype.kind not in "biuf"):
        raise CkirError(f"dense value <{body}> is not numeric")
    if arr.shape != shape:
        if arr.ndim == 0:
            return np.full(shape, arr, dtype=npd)    # splat
        if arr.size == 0 and 0 in shape:
            return np.zeros(shape, dtype=npd)        # `[]` stands for any empty shape
        raise CkirError(f"dense value has shape {list(arr.shape)}, type {t} says {list(shape)}")
    return arr.astype(npd)


def _string_dense(body: str, shape: tuple, t: TensorType) -> np.ndarray:
    """A string tensor from JSON text: a nested list of strings, or one string (a splat)."""
    try:
        val = json.loads(body)
    except ValueError:
        raise CkirError(f"bad dense value <{body}>") from None
    arr = np.empty((), dtype=object)
    if isinstance(val, list):
        try:
            arr = np.array(val, dtype=object)
        except ValueError:
            arr = None
    else:
        arr[()] = val
    if arr is None or any(not isinstance(x, str) for x in arr.flat):
        raise CkirError(f"dense value <{body}> is not a regular array of strings")
    if arr.shape != shape:
        if arr.ndim == 0:
            return np.full(shape, arr[()], dtype=object)    # splat
        if arr.size == 0 and 0 in shape:
            return np.empty(shape, dtype=object)
        raise CkirError(f"dense value has shape {list(arr.shape)}, type {t} says {list(shape)}")
    return arr


class Parser:
    def __init__(self, text: str, filename: str = "<string>"):
        self.text, self.filename = text, filename
        toks = []
        for m in _TOKEN.finditer(text):
            k = m.lastgroup
            if k == "end" or k is None:
                break
            toks.append((k, m.group(k), m.start(k)))
        toks.append(("eof", "", len(text)))
        self.toks = toks
        self.i = 0
        self._lines = None

    # --- errors and tokens ----------------------------------------------------------------------
    def where(self, pos: int) -> tuple[str, int, int]:
        if self._lines is None:
            self._lines = [m.start() for m in re.finditer("\n", self.text)]
        line = bisect.bisect_left(self._lines, pos)
        col = pos - (self._lines[line - 1] + 1 if line else 0)
        return self.filename, line + 1, col + 1

    def error(self, msg: str, pos: int | None = None) -> ParseError:
        if pos is None:
            pos = self.toks[self.i][2]
        return ParseError("%s:%d:%d: " % self.where(pos) + msg)

    def describe(self, tok) -> str:
        k, s, _ = tok
        if k == "eof":
            return "end of input"
        if k == "bad":
            return f"invalid character {s!r}"
        return f"'{s}'" if len(s) < 40 else f"'{s[:37]}...'"

    def expect(self, s: str, what: str | None = None) -> None:
        tok = self.toks[self.i]
        if tok[1] != s or tok[0] in ("string", "value"):
            raise self.error(f"expected '{s}'{' ' + what if what else ''}, got {self.describe(tok)}")
        self.i += 1

    def accept(self, s: str) -> bool:
        tok = self.toks[self.i]
        if tok[1] == s and tok[0] in ("punct", "arrow", "ident"):
            self.i += 1
            return True
        return False

    def take(self, kind: str, what: str):
        tok = self.toks[self.i]
        if tok[0] != kind:
            raise self.error(f"expected {what}, got {self.describe(tok)}")
        self.i += 1
        return tok

    def peek_kind(self) -> str:
        return self.toks[self.i][0]

    def type(self) -> TensorType:
        tok = self.take("type", "a tensor type")
        try:
            return parse_type(tok[1])
        except CkirError as e:
            raise self.error(str(e), tok[2]) from None

    def name_tok(self, what: str) -> str:
        tok = self.toks[self.i]
        if tok[0] == "ident":
            self.i += 1
            return tok[1]
        if tok[0] == "string":
            self.i += 1
            return json.loads(tok[1])
        raise self.error(f"expected {what}, got {self.describe(tok)}")

    def sym(self, what: str) -> str:
        return _unquote(self.take("sym", what)[1][1:])

    # --- module ---------------------------------------------------------------------------------
    def module(self, weights=None) -> Module:
        self.expect("module")
        m = Module(self.sym("a module name like @model"))
        self.expect("{", "to open the module")
        while not self.accept("}"):
            tok = self.toks[self.i]
            if tok[1] == "weight" and tok[0] == "ident":
                self.weight(m, weights or {})
            elif tok[1] == "state" and tok[0] == "ident":
                self.state(m)
            elif tok[1] == "graph" and tok[0] == "ident":
                self.graph(m)
            else:
                raise self.error(f"expected 'weight', 'state', 'graph' or '}}', got {self.describe(tok)}")
        if self.peek_kind() != "eof":
            raise self.error(f"unexpected {self.describe(self.toks[self.i])} after the module")
        return m

    def weight(self, m: Module, given: dict) -> None:
        self.i += 1
        pos = self.toks[self.i][2]
        name = self.sym("a weight name like @w")
        if name in m.weights:
            raise self.error(f"weight @{name} defined twice", pos)
        self.expect(":")
        t = self.type()
        self.expect("=")
        tok = self.toks[self.i]
        if tok[0] == "dense":
            self.i += 1
            try:
                data = parse_dense(tok[1][6:-1], t)
            except CkirError as e:
                raise self.error(str(e), tok[2]) from None
        elif tok[1] == "file" and tok[0] == "ident":
            if t.dtype.is_string:
                raise self.error(f"weight @{name}: string weights have no byte form; "
                                 "give them as dense<...>")
            self.i += 1
            self.expect("(")
            path = json.loads(self.take("string", "a file path")[1])
            self.expect(",")
            self.expect("offset")
            self.expect("=")
            off = self.take("number", "an offset")
            if not off[1].isdigit():
                raise self.error("offset must be a non-negative integer", off[2])
            self.expect(")")
            data = FileSource(path, int(off[1]))
        elif tok[1] == "memory" and tok[0] == "ident":
            self.i += 1
            data = given.get(name)
        else:
            raise self.error(f"expected dense<...>, file(...) or memory, got {self.describe(tok)}")
        m.weights[name] = Weight(name, t, data, inline=tok[0] == "dense")

    def state(self, m: Module) -> None:
        self.i += 1
        pos = self.toks[self.i][2]
        name = self.sym("a state name like @kv")
        if name in m.state:
            raise self.error(f"state @{name} defined twice", pos)
        self.expect(":")
        t = self.type()
        self.expect("=")
        init = None
        if self.accept("weight"):
            init = self.sym("the weight it starts from, like @w")
        else:
            self.expect("zeros", "or 'weight @name'")
        try:
            m.add_state(name, t, init)
        except CkirError as e:
            raise self.error(str(e), pos) from None

    def args(self, scope: dict, block_pos: int):
        names, types = [], []
        self.expect("(")
        if not self.accept(")"):
            while True:
                tok = self.take("value", "an argument like %x")
                self.expect(":")
                names.append((tok[1], tok[2]))
                types.append(self.type())
                if self.accept(")"):
                    break
                self.expect(",", "or ')' in the argument list")
        return names, types

    def bind_args(self, block: Block, names, scope: dict) -> None:
        for (n, pos), v in zip(names, block.args):
            if n in scope:
                raise self.error(f"value {n} defined twice", pos)
            scope[n] = v

    def graph(self, m: Module) -> None:
        self.i += 1
        pos = self.toks[self.i][2]
        name = self.sym("a graph name like @main")
        if name in m.graphs:
            raise self.error(f"graph @{name} defined twice", pos)
        names, types = self.args({}, pos)
        g = Graph(name, types, [_value_name(n) for n, _ in names])
        scope: dict = {}
        self.bind_args(g, names, scope)
        self.expect("->")
        self.expect("(")
        out_names, out_types = [], []
        if not self.accept(")"):
            while True:
                out_names.append(self.name_tok("an output name"))
                self.expect(":")
                out_types.append(self.type())
                if self.accept(")"):
                    break
                self.expect(",", "or ')' in the output list")
        self.expect("{", "to open the graph body")
        self.block_body(g, scope)
        t = g.terminator
        if t is None:
            raise self.error(f"graph @{name} does not end with ckir.return", pos)
        if len(t.operands) != len(out_names):
            raise self.error(f"graph @{name} declares {len(out_names)} outputs but returns "
                             f"{len(t.operands)}", pos)
        for n, want, v in zip(out_names, out_types, t.operands):
            if v.type is not want:
                raise self.error(f"graph @{name}: output {n} is declared {want} but returns {v.type}", pos)
        if len(set(out_names)) != len(out_names):
            raise self.error(f"graph @{name} has duplicate output names", pos)
        g.output_names = out_names
        m.graphs[name] = g

    def block_body(self, block: Block, scope: dict) -> None:
        toks = self.toks
        while True:
            tok = toks[self.i]
            if tok[1] == "}" and tok[0] == "punct":
                self.i += 1
                return
            if tok[0] == "eof":
                raise self.error("unexpected end of input: missing '}'")
            block.append(self.op(scope))

    def op(self, scope: dict) -> Op:
        toks = self.toks
        start = toks[self.i][2]
        results = []
        if toks[self.i][0] == "value":
            while True:
                tok = self.take("value", "a result name")
                results.append(tok)
                if self.accept("="):
                    break
                self.expect(",", "or '=' after result names")
        tok = self.take("ident", "an op name like nn.add")
        opdef = lookup(tok[1])
        if opdef is None:
            raise self.error(f"unknown op '{tok[1]}'", tok[2])
        opname_pos = tok[2]
        operands = []
        if toks[self.i][0] == "value":
            while True:
                vt = self.take("value", "an operand")
                v = scope.get(vt[1])
                if v is None:
                    raise self.error(f"use of undefined value {vt[1]}", vt[2])
                operands.append(v)
                if not self.accept(","):
                    break
        raw = {}
        if toks[self.i][1] == "{" and toks[self.i][0] == "punct":
            self.i += 1
            while True:
                kpos = toks[self.i][2]
                key = self.name_tok("an attribute name")
                if key in raw:
                    raise self.error(f"{opdef.name}: attribute '{key}' given twice", kpos)
                self.expect("=")
                raw[key] = self.attr_value()
                if self.accept("}"):
                    break
                self.expect(",", "or '}' in the attribute list")
        regions = []
        while toks[self.i][1] == "(" and toks[self.i][0] == "punct":
            rpos = toks[self.i][2]
            names, types = self.args(scope, rpos)
            reg = Block(types, [_value_name(n) for n, _ in names])
            inner = dict(scope)
            self.bind_args(reg, names, inner)
            self.expect("{", "to open the region")
            self.block_body(reg, inner)
            regions.append(reg)
        self.expect(":", f"and the type signature of {opdef.name}")
        self.expect("(")
        otypes = []
        if not self.accept(")"):
            while True:
                otypes.append(self.type())
                if self.accept(")"):
                    break
                self.expect(",", "or ')' in the operand types")
        self.expect("->")
        rtypes = []
        if self.accept("("):
            if not self.accept(")"):
                while True:
                    rtypes.append(self.type())
                    if self.accept(")"):
                        break
                    self.expect(",", "or ')' in the result types")
        else:
            rtypes.append(self.type())
        loc = None
        if toks[self.i][1] == "loc" and toks[self.i][0] == "ident":
            self.i += 1
            self.expect("(")
            loc = json.loads(self.take("string", "a location string")[1])
            self.expect(")")
        where = "%s:%d:%d: " % self.where(opname_pos)
        if len(otypes) != len(operands):
            raise ParseError(f"{where}{opdef.name} has {len(operands)} operands but {len(otypes)} operand types")
        for k, (v, t) in enumerate(zip(operands, otypes)):
            if v.type is not t:
                raise ParseError(f"{where}{opdef.name}: operand {k} has type {v.type}, annotated as {t}")
        if len(rtypes) != len(results):
            raise ParseError(f"{where}{opdef.name} defines {len(results)} values but has {len(rtypes)} result types")
        meta = {k: raw.pop(k) for k in [k for k in raw if "." in k]}
        try:
            attrs = opdef.make_attrs(raw, opdef.name)
        except CkirError as e:
            raise ParseError(where + str(e)) from None
        op = Op(opdef, operands, rtypes, attrs, regions, loc, [_value_name(t[1]) for t in results])
        op.pos = self.where(start)
        for k, v in meta.items():
            try:
                op.set_meta(k, v)
            except CkirError as e:
                raise ParseError(f"{where}{opdef.name}: {e}") from None
        for tok, v in zip(results, op.results):
            if tok[1] in scope:
                op.drop_operands()
                raise self.error(f"value {tok[1]} defined twice", tok[2])
            scope[tok[1]] = v
        return op

    def attr_value(self):
        tok = self.toks[self.i]
        k, s, pos = tok
        self.i += 1
        if k == "number":
            if any(c in s for c in ".eEn"):
                return float(s)
            return int(s)
        if k == "string":
            return json.loads(s)
        if k == "sym":
            return SymbolRef(_unquote(s[1:]))
        if k == "ident":
            if s == "true":
                return True
            if s == "false":
                return False
            return Bare(s)
        if k == "type":
            self.i -= 1
            return self.type()
        if s == "[" and k == "punct":
            items = []
            if self.accept("]"):
                return items
            while True:
                items.append(self.attr_value())
                if self.accept("]"):
                    return items
                self.expect(",", "or ']' in the list")
        if k == "dense":
            self.expect(":", "and the dense value's type")
            t = self.type()
            try:
                return Dense(parse_dense(s[6:-1], t))
            except CkirError as e:
                raise self.error(str(e), pos) from None
        self.i -= 1
        raise self.error(f"expected an attribute value, got {self.describe(tok)}")


def _value_name(tok: str) -> str | None:
    n = tok[1:]
    if n.startswith('"'):
        return json.loads(n)
    return None if n.isdigit() else n


def parse(text: str, filename: str = "<string>", weights: dict | None = None) -> Module:
    """Parse a module from text. `weights` supplies data for weights printed as `memory`."""
    if not isinstance(text, str):
        raise ParseError(f"{filename}: expected text, got {type(text).__name__}")
    with gc_paused():
        p = Parser(text, filename)
        try:
            return p.module(weights)
        except RecursionError:
            raise p.error("nesting too deep") from None
