"""LLVM plumbing: target machines, the optimization pipeline, object code, the JIT, and the
on-disk cache of compiled objects.

Compiled code is cached under $CKIR_CACHE_DIR (default ~/.cache/ckir; $CKIR_NO_CACHE=1 or
cache=False turns it off) keyed by a hash of what the code is made from (for a graph: its ckir
text, target and thread count, and the backend's own source files, so a hit skips code
generation; for the runtime: its LLVM IR) and the ckir/llvmlite/LLVM versions. Each entry
stores its key and the object file's SHA-256; an entry that does not match is recompiled with a
warning, never loaded.
"""
from __future__ import annotations

import functools
import hashlib
import os
import sys
import tempfile
import threading
import warnings

import llvmlite
import llvmlite.binding as llvm

from ckir.errors import CkirError

from .target import Target

_init_lock = threading.Lock()
_initialized = False


def init() -> None:
    global _initialized
    with _init_lock:
        if not _initialized:
            llvm.initialize_all_targets()
            llvm.initialize_all_asmprinters()
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            _initialized = True


def target_machine(t: Target, jit: bool = True):
    """A new TargetMachine (sharing one across pass-builder runs crashes LLVM 22 in llvmlite)."""
    init()
    try:
        target = llvm.Target.from_triple(t.triple)
    except RuntimeError as e:
        raise CkirError(f"LLVM has no backend for {t.triple}: {e}") from None
    return target.create_target_machine(cpu=t.cpu, features=t.features, opt=3,
                                        reloc="pic" if not jit else "default",
                                        codemodel="jitdefault" if jit else "default", jit=jit)


def optimize(ir_text: str, t: Target):
    """Parse, verify and optimize (O3 with loop and SLP vectorization) LLVM IR text."""
    init()
    try:
        mod = llvm.parse_assembly(ir_text)
        mod.verify()
    except RuntimeError as e:
        raise CkirError(f"internal error: generated LLVM IR does not verify: {e}") from None
    mod.triple = t.triple
    tm = target_machine(t)
    mod.data_layout = str(tm.target_data)
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    return mod


def emit(ir_text: str, t: Target, kind: str) -> bytes | str:
    """'asm', 'obj' or 'llvm' (optimized IR) for any target, runnable here or not."""
    mod = optimize(ir_text, t)
    if kind == "llvm":
        return str(mod)
    tm = target_machine(t, jit=False)
    if kind == "asm":
        return tm.emit_assembly(mod)
    if kind == "obj":
        return tm.emit_object(mod)
    raise CkirError(f"unknown emit kind '{kind}' (asm, obj, llvm)")


def cache_dir() -> str:
    d = os.environ.get("CKIR_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "ckir")
    os.makedirs(d, exist_ok=True)
    return d


def cache_disabled() -> bool:
    """$CKIR_NO_CACHE=1 turns the disk cache off for the whole process (what --no-cache sets)."""
    return os.environ.get("CKIR_NO_CACHE", "") not in ("", "0")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of the LLVM backend's source files (codegen, plan, runtime, kernels, ...) and the
    type/dtype definitions: compiled code made by other emitter code must not be reused, even
    when the ckir version number did not change (as during development)."""
    root = os.path.dirname(os.path.abspath(__file__))
    ckir_dir = os.path.dirname(os.path.abspath(sys.modules["ckir"].__file__))
    files = []
    for d, _, fs in os.walk(root):
        files += [os.path.join(d, f) for f in fs if f.endswith(".py")]
    files += [os.path.join(ckir_dir, f) for f in ("types.py", "dtypes.py")]
    h = hashlib.sha256()
    for f in sorted(files):
        try:
            with open(f, "rb") as fh:
                h.update(os.path.relpath(f, root).encode() + b"\0" + fh.read() + b"\0")
        except OSError:
            h.update(f.encode() + b"\0missing\0")
    return h.hexdigest()


# environment variables that code generation reads (kernel tuning knobs): part of the key, so code
# made under other settings is not reused
CODEGEN_ENV_PREFIXES = ("CKIR_", "MM_", "QMB", "QR")
_NOT_CODEGEN = ("CKIR_CACHE_DIR", "CKIR_NO_CACHE", "CKIR_ARENA_CANARY", "CKIR_DEBUG_ARENA")


def codegen_environment() -> str:
    return ";".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                    if k.startswith(CODEGEN_ENV_PREFIXES) and k not in _NOT_CODEGEN)


def key_of(parts, t: Target) -> str:
    """The cache key of code made from `parts` (strings) for target `t`, with the ckir,
    llvmlite and LLVM versions."""
    from ckir import __version__
    h = hashlib.sha256()
    for part in list(parts) + [t.name, t.cpu, t.features, t.triple, __version__, llvmlite.__version__,
                               ".".join(map(str, llvm.llvm_version_info))]:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def cache_key(ir_text: str, t: Target) -> str:
    return key_of([ir_text], t)


_MAGIC = b"CKIRO1\n"


def object_code(ir_text: str, t: Target, use_cache: bool = True) -> tuple[bytes, bool]:
    """Object code for `ir_text` on `t`; (bytes, whether it came from the cache)."""
    return object_code_for(cache_key(ir_text, t), lambda: ir_text, t, use_cache)


def object_code_for(key: str, make_ir, t: Target, use_cache: bool = True) -> tuple[bytes, bool]:
    """Object code cached under `key`; on a miss, `make_ir()` gives the LLVM IR to compile.
    (bytes, whether it came from the cache).

    An entry is MAGIC, the key (64 hex digits), the SHA-256 of the object (64 hex digits), then
    the object. It is used only if the magic, the key and the hash all match; otherwise the code
    is recompiled with a warning and the entry replaced. Entries are written to a temporary file
    and renamed, so a concurrent reader never sees half an entry; a cache that cannot be written
    (read-only, full) only costs a warning."""
    use_cache = use_cache and not cache_disabled()
    path = None
    if use_cache:
        try:
            path = os.path.join(cache_dir(), key[:2], key + ".obj")
        except OSError as e:
            warnings.warn(f"ckir: cache directory unusable ({e}); compiling without the cache",
                          RuntimeWarning, stacklevel=3)
    if path and os.path.exists(path):
        obj = _read_entry(path, key)
        if obj is not None:
            return obj, True
    mod = optimize(make_ir(), t)
    obj = target_machine(t).emit_object(mod)
    if path:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(_MAGIC + key.encode("ascii") + hashlib.sha256(obj).hexdigest().encode("ascii") + obj)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as e:
            warnings.warn(f"ckir: could not write cache entry {path}: {e}", RuntimeWarning, stacklevel=3)
    return obj, False


def _read_entry(path: str, key: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        warnings.warn(f"ckir: cache entry {path} is unreadable ({e}); recompiling", RuntimeWarning, stacklevel=4)
        return None
    n = len(_MAGIC)
    head, stored_key, digest, obj = blob[:n], blob[n:n + 64], blob[n + 64:n + 128], blob[n + 128:]
    if head == _MAGIC and stored_key == key.encode("ascii") and hashlib.sha256(obj).hexdigest().encode("ascii") == digest:
        return obj
    warnings.warn(f"ckir: cache entry {path} is corrupt; recompiling", RuntimeWarning, stacklevel=4)
    return None


class Engine:
    """An MCJIT engine holding one compiled object; symbols by name."""

    def __init__(self, obj: bytes, t: Target):
        init()
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), target_machine(t))
        self.engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self.engine.finalize_object()

    def address(self, name: str) -> int:
        a = self.engine.get_function_address(name)
        if not a:
            raise CkirError(f"internal error: symbol {name} not found in compiled code")
        return a
