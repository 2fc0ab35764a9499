"""Reading GGUF files (llama.cpp's model format) without copying tensor data.

A GGUF file holds, little-endian: the magic "GGUF", a version (2 or 3), the tensor and
metadata counts (u64), the metadata (key string, value type u32, value), the tensor infos
(name, dim count, dims in GGML order -- innermost first --, GGML type, offset into the data
section), padding to the alignment (`general.alignment`, default 32), then the data section.
Strings are a u64 length and UTF-8 bytes.

`Reader(path)` parses and validates all of it with bounds checks at every read: a truncated or
corrupt file, an unsupported tensor type or bad metadata raises GGUFError (a CkirError) naming
the file and the key or tensor at fault. Tensor data stays in the file, memory-mapped.

The header is parsed here rather than by gguf.GGUFReader, which builds a numpy view per array
element (half a minute for a 150k-token vocabulary) and follows a corrupt array length far
past the end of the file; the gguf package (a dev dependency) is the tests' oracle instead.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from ckir import dtypes as dt
from ckir.errors import CkirError
from ckir.ir import FileSource
from ckir.types import TensorType

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4            # GGML_MAX_DIMS

# GGML type ids (ggml.h) that ckir reads, and the ones it knows but does not support.
GGML_TYPES = {0: ("F32", dt.f32), 1: ("F16", dt.f16), 2: ("Q4_0", dt.q4_0), 3: ("Q4_1", dt.q4_1),
              6: ("Q5_0", dt.q5_0), 7: ("Q5_1", dt.q5_1), 8: ("Q8_0", dt.q8_0),
              10: ("Q2_K", dt.q2_k), 11: ("Q3_K", dt.q3_k), 12: ("Q4_K", dt.q4_k),
              13: ("Q5_K", dt.q5_k), 14: ("Q6_K", dt.q6_k), 15: ("Q8_K", dt.q8_k),
              24: ("I8", dt.i8), 25: ("I16", dt.i16), 26: ("I32", dt.i32), 27: ("I64", dt.i64),
              28: ("F64", dt.f64), 30: ("BF16", dt.bf16)}
UNSUPPORTED_TYPES = {4: "Q4_2", 5: "Q4_3", 9: "Q8_1", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS",
                     19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS",
                     29: "IQ1_M", 31: "Q4_0_4_4", 32: "Q4_0_4_8", 33: "Q4_0_8_8", 34: "TQ1_0",
                     35: "TQ2_0", 36: "IQ4_NL_4_4", 37: "IQ4_NL_4_8", 38: "IQ4_NL_8_8",
                     39: "MXFP4", 40: "NVFP4", 41: "Q1_0"}

# metadata value types (gguf.h): scalars as (struct format, numpy dtype)
_SCALARS = {0: ("<B", "<u1"), 1: ("<b", "<i1"), 2: ("<H", "<u2"), 3: ("<h", "<i2"),
            4: ("<I", "<u4"), 5: ("<i", "<i4"), 6: ("<f", "<f4"), 7: ("<?", "<u1"),
            10: ("<Q", "<u8"), 11: ("<q", "<i8"), 12: ("<d", "<f8")}
_BOOL, _STRING, _ARRAY = 7, 8, 9
_VALUE_NAMES = {0: "u8", 1: "i8", 2: "u16", 3: "i16", 4: "u32", 5: "i32", 6: "f32", 7: "bool",
                8: "string", 9: "array", 10: "u64", 11: "i64", 12: "f64"}
_MIN_KV_BYTES = 8 + 4 + 1               # key length, value type, the smallest value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8   # name length, dim count, one dim, type, offset

_MISSING = object()
_U64 = struct.Struct("<Q")


class GGUFError(CkirError):
    """A GGUF file that cannot be read: truncated, corrupt, or using what ckir does not support."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file: `shape` in ckir order (GGML's dims reversed: outermost first),
    `offset` the absolute file offset of its first byte, `nbytes` its size in the file."""
    name: str
    shape: tuple
    dtype: dt.DType
    ggml_type: str
    offset: int
    nbytes: int

    @property
    def type(self) -> TensorType:
        return TensorType(self.shape, self.dtype)


class _Cursor:
    """Bounds-checked little-endian reads from a byte buffer; errors name the file and `what`."""

    def __init__(self, path: str, buf):
        self.path, self.buf, self.size, self.pos = path, buf, len(buf), 0

    def error(self, msg: str) -> GGUFError:
        return GGUFError(f"{self.path}: {msg}")

    def take(self, n: int, what: str) -> int:
        if n > self.size - self.pos:
            raise self.error(f"truncated: {what} needs {n} bytes at offset {self.pos}, the file "
                             f"has {self.size}")
        at = self.pos
        self.pos += n
        return at

    def scalar(self, fmt: str, what: str):
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.scalar("<Q", f"the length of {what}")
        at = self.take(n, what)
        # surrogateescape: never fails, and .encode("utf-8", "surrogateescape") gives the bytes back
        return str(self.buf[at:at + n], "utf-8", "surrogateescape")

    def value(self, vtype: int, what: str):
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype][0], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype != _ARRAY:
            raise self.error(f"{what} has unknown value type {vtype}")
        itype = self.scalar("<I", f"the element type of {what}")
        n = self.scalar("<Q", f"the length of {what}")
        if itype in _SCALARS:
            npd = np.dtype(_SCALARS[itype][1])
            if n > (self.size - self.pos) // npd.itemsize:
                raise self.error(f"truncated: {what} holds {n} {_VALUE_NAMES[itype]} values, "
                                 f"more than the {self.size - self.pos} bytes left")
            at = self.take(n * npd.itemsize, what)
            a = np.frombuffer(self.buf, npd, n, at)
            return (a != 0).tolist() if itype == _BOOL else a.tolist()
        if itype == _STRING:
            if n > (self.size - self.pos) // 8:
                raise self.error(f"truncated: {what} holds {n} strings, more than the "
                                 f"{self.size - self.pos} bytes left")
            return self._strings(n, what)
        if itype == _ARRAY:
            raise self.error(f"{what} is an array of arrays, which GGUF readers do not support")
        raise self.error(f"{what} is an array of unknown value type {itype}")

    def _strings(self, n: int, what: str) -> list:
        # self.string inlined: vocabularies hold 100k+ strings
        buf, size, pos, out = self.buf, self.size, self.pos, []
        length = _U64.unpack_from
        for i in range(n):
            if pos + 8 > size:
                self.pos = pos
                self.take(8, f"the length of {what}[{i}]")
            k = length(buf, pos)[0]
            pos += 8
            if k > size - pos:
                self.pos = pos
                self.take(k, f"{what}[{i}]")
            out.append(str(buf[pos:pos + k], "utf-8", "surrogateescape"))
            pos += k
        self.pos = pos
        return out


class Reader:
    """A parsed, validated GGUF file. `metadata` maps keys to Python values (ints, floats,
    bools, str; arrays as lists); `tensors` maps names to TensorInfo in file order; `array(name)`
    is a tensor's memory-mapped data; `info_offset` is where the tensor infos start (the bytes
    before it are the header and the metadata)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            size = os.path.getsize(self.path)
            self._mm = np.memmap(self.path, np.uint8, "r") if size else np.zeros(0, np.uint8)
        except (OSError, ValueError) as e:
            raise GGUFError(f"{self.path}: cannot open: {getattr(e, 'strerror', None) or e}") from None
        cur = _Cursor(self.path, memoryview(self._mm))
        self._header(cur)
        self.metadata: dict = {}
        for i in range(self._kv_count):
            key = cur.string(f"the key of metadata entry #{i}")
            if key in self.metadata:
                raise cur.error(f"key '{key}' appears twice")
            vtype = cur.scalar("<I", f"the value type of key '{key}'")
            self.metadata[key] = cur.value(vtype, f"key '{key}'")
        self.alignment = self._alignment()
        self.info_offset = cur.pos
        raw = [self._tensor_info(cur, i) for i in range(self._tensor_count)]
        self.data_offset = -(-cur.pos // self.alignment) * self.alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, ne, gtype, rel in raw:
            self.tensors[name] = self._check_tensor(name, ne, gtype, rel, size)
        spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in self.tensors.values())
        for (_, end, a), (start, _, b) in pairwise(spans):
            if start < end:
                raise GGUFError(f"{self.path}: tensors '{a}' and '{b}' overlap in the file")

    def _header(self, cur: _Cursor) -> None:
        if bytes(cur.buf[cur.take(4, "the magic number"):4]) != MAGIC:
            raise cur.error("not a GGUF file (bad magic number)")
        version = cur.scalar("<I", "the version")
        if version not in VERSIONS:
            if version & 0xFFFF == 0 and int.from_bytes(version.to_bytes(4, "little"), "big") in VERSIONS:
                raise cur.error("big-endian GGUF files are not supported")
            raise cur.error(f"GGUF version {version} is not supported (supported: 2, 3)")
        self.version = version
        self._tensor_count = cur.scalar("<Q", "the tensor count")
        self._kv_count = cur.scalar("<Q", "the metadata count")
        left = cur.size - cur.pos
        if self._kv_count > left // _MIN_KV_BYTES:
            raise cur.error(f"corrupt header: {self._kv_count} metadata entries cannot fit in the "
                            f"{left} bytes left")
        if self._tensor_count > left // _MIN_TENSOR_INFO_BYTES:
            raise cur.error(f"corrupt header: {self._tensor_count} tensor infos cannot fit in the "
                            f"{left} bytes left")

    def _alignment(self) -> int:
        a = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if type(a) is not int or a <= 0 or a & (a - 1) or a >= 2 ** 32:
            raise GGUFError(f"{self.path}: key 'general.alignment' must be a power of two, got {a!r}")
        return a

    def _tensor_info(self, cur: _Cursor, i: int):
        name = cur.string(f"the name of tensor #{i}")
        if not name:
            raise cur.error(f"tensor #{i} has an empty name")
        what = f"tensor '{name}'"
        nd = cur.scalar("<I", f"the dim count of {what}")
        if not 1 <= nd <= MAX_DIMS:
            raise cur.error(f"{what} has {nd} dims (1 to {MAX_DIMS} allowed)")
        ne = [cur.scalar("<Q", f"dim {j} of {what}") for j in range(nd)]
        gtype = cur.scalar("<I", f"the type of {what}")
        rel = cur.scalar("<Q", f"the offset of {what}")
        return name, ne, gtype, rel

    def _check_tensor(self, name, ne, gtype, rel, size) -> TensorInfo:
        where = f"{self.path}: tensor '{name}'"
        if name in self.tensors:
            raise GGUFError(f"{where} appears twice")
        if gtype not in GGML_TYPES:
            known = UNSUPPORTED_TYPES.get(gtype)
            kind = f"type {known} ({gtype}), which ckir does not support" if known else \
                f"unknown GGML type {gtype}"
            raise GGUFError(f"{where} has {kind}; supported: "
                            + ", ".join(n for n, _ in GGML_TYPES.values()))
        tname, dtype = GGML_TYPES[gtype]
        if any(d < 1 for d in ne):
            raise GGUFError(f"{where} has a zero dim: {ne}")
        if ne[0] % dtype.block_size:
            raise GGUFError(f"{where}: {tname} packs blocks of {dtype.block_size} elements, but its "
                            f"innermost dim is {ne[0]}")
        if rel % self.alignment:
            raise GGUFError(f"{where}: offset {rel} is not a multiple of the alignment {self.alignment}")
        nbytes = dtype.nbytes(math.prod(ne))
        start = self.data_offset + rel
        if start + nbytes > size:
            raise GGUFError(f"{where}: its {nbytes} bytes at offset {start} run past the end of "
                            f"the file ({size} bytes): truncated or corrupt")
        return TensorInfo(name, tuple(reversed(ne)), dtype, tname, start, nbytes)

    def field(self, key: str, kind=None, default=_MISSING):
        """The value of metadata `key`, or `default` when it is absent (no default: an error).
        `kind` (int, float, str, bool or list) checks its Python type; an int passes as float."""
        if key not in self.metadata:
            if default is not _MISSING:
                return default
            raise GGUFError(f"{self.path}: missing metadata key '{key}'")
        v = self.metadata[key]
        if kind is not None:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) if kind is float else \
                type(v) is kind
            if not ok:
                raise GGUFError(f"{self.path}: key '{key}' should be {kind.__name__}, got "
                                f"{type(v).__name__} {v!r:.60}")
        return v

    def array(self, name: str) -> np.ndarray:
        """Tensor `name`'s data, memory-mapped: float/int types in their shape, block types as
        raw uint8 [..., K / block_size * block_bytes] (ckir's storage layout)."""
        t = self.tensors.get(name)
        if t is None:
            raise GGUFError(f"{self.path}: no tensor '{name}'")
        d = t.dtype
        if d.is_quant:
            shape, npd = t.shape[:-1] + (t.shape[-1] // d.block_size * d.block_bytes,), np.uint8
        else:
            shape, npd = t.shape, d.np
        return self._mm[t.offset:t.offset + t.nbytes].view(npd).reshape(shape)


def load_weights(module, reader: Reader) -> None:
    """Add every tensor of `reader` to `module` as a weight of its name and type whose data
    stays in the file (a FileSource at the tensor's offset: no copy)."""
    path = os.path.abspath(reader.path)
    for t in reader.tensors.values():
        module.add_weight(t.name, t.type, FileSource(path, t.offset))
