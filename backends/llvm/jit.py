"""LLVM plumbing: target machines, the optimization pipeline, object code, the JIT, and the
on-disk cache of compiled objects.

Compiled code is cached under $CKIR_CACHE_DIR (default ~/.cache/ckir) keyed by a hash of the
LLVM IR, the target and the ckir/llvmlite versions. Each entry stores the object file with its
SHA-256; an entry whose bytes do not match is recompiled with a warning, never loaded.
"""
from __future__ import annotations

import hashlib
import os
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


def cache_key(ir_text: str, t: Target) -> str:
    from ckir import __version__
    h = hashlib.sha256()
    for part in (ir_text, t.name, t.cpu, t.features, t.triple, __version__, llvmlite.__version__):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def object_code(ir_text: str, t: Target, use_cache: bool = True) -> tuple[bytes, bool]:
    """Object code for `ir_text` on `t`; (bytes, whether it came from the cache)."""
    key = cache_key(ir_text, t)
    path = os.path.join(cache_dir(), key[:2], key + ".o") if use_cache else None
    if path and os.path.exists(path):
        try:
            with open(path, "rb") as f:
                blob = f.read()
            digest, obj = blob[:64].decode("ascii"), blob[64:]
            if hashlib.sha256(obj).hexdigest() == digest:
                return obj, True
            warnings.warn(f"ckir: cache entry {path} is corrupt; recompiling", RuntimeWarning, stacklevel=2)
        except (OSError, UnicodeDecodeError):
            warnings.warn(f"ckir: cache entry {path} is unreadable; recompiling", RuntimeWarning, stacklevel=2)
    mod = optimize(ir_text, t)
    obj = target_machine(t).emit_object(mod)
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(hashlib.sha256(obj).hexdigest().encode("ascii") + obj)
        os.replace(tmp, path)
    return obj, False


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
