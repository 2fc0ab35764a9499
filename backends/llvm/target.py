"""CPU targets: what the host can run, and the kernel family each target uses.

Targets, most capable first: amx (AVX-512 + AMX tiles), avx512 (F/BW/DQ/VL, with VNNI and BF16
when present), avx2 (AVX2 + FMA), neon (aarch64), scalar (plain code, any CPU). The host is read
from LLVM (llvmlite's host CPU name and features) and cross-checked with /proc/cpuinfo.
`CKIR_TARGET=avx2` or `target=` overrides the choice; a target the CPU lacks is refused before
any code runs (compiling for it, to assembly or an object file, is always allowed).
"""
from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass, field

from ckir.errors import CkirError

NAMES = ("scalar", "avx2", "avx512", "amx", "neon")


@dataclass(frozen=True)
class Target:
    name: str                 # one of NAMES
    triple: str
    cpu: str                  # LLVM CPU name
    features: str             # LLVM feature string, e.g. "+avx2,+fma"
    vector_bits: int          # widest float vector the kernels use
    extras: frozenset = field(default_factory=frozenset)   # vnni, bf16, amx-int8, ...

    @property
    def lanes_f32(self) -> int:
        return max(1, self.vector_bits // 32)


_X86 = "x86_64-unknown-linux-gnu"
_ARM = "aarch64-unknown-linux-gnu"

# (LLVM features that must be present, features to enable, vector bits)
_REQUIRES = {
    "avx2": ({"avx2", "fma"}, "+avx,+avx2,+fma,+f16c", 256),
    "avx512": ({"avx512f", "avx512bw", "avx512dq", "avx512vl"},
               "+avx,+avx2,+fma,+f16c,+avx512f,+avx512bw,+avx512dq,+avx512vl,-prefer-256-bit", 512),
    "amx": ({"avx512f", "avx512bw", "avx512dq", "avx512vl", "amx-tile"},
            "+avx,+avx2,+fma,+f16c,+avx512f,+avx512bw,+avx512dq,+avx512vl,-prefer-256-bit,+amx-tile,+amx-int8,+amx-bf16", 512),
    "neon": ({"neon"}, "+neon", 128),
}


@functools.lru_cache(maxsize=1)
def host_features() -> frozenset:
    """LLVM's view of the host CPU features, confirmed by /proc/cpuinfo where it can be read."""
    import llvmlite.binding as llvm
    feats = {k for k, v in llvm.get_host_cpu_features().items() if v}
    flags = _cpuinfo_flags()
    if flags is not None and platform.machine() == "x86_64":
        # LLVM and the kernel must agree: a feature the OS does not expose (e.g. AVX-512 with
        # its state disabled) must not be used
        alias = {"avx512f": "avx512f", "avx2": "avx2", "fma": "fma", "avx512bw": "avx512bw",
                 "avx512dq": "avx512dq", "avx512vl": "avx512vl", "avx512vnni": "avx512_vnni",
                 "avx512bf16": "avx512_bf16", "amx-tile": "amx_tile", "amx-int8": "amx_int8",
                 "amx-bf16": "amx_bf16"}
        feats = {f for f in feats if f not in alias or alias[f] in flags}
    return frozenset(feats)


def _cpuinfo_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def host_cpu() -> str:
    import llvmlite.binding as llvm
    return llvm.get_host_cpu_name()


def runnable(name: str) -> bool:
    """Whether this machine can execute code built for target `name`."""
    if name == "scalar":
        return True
    arch = platform.machine()
    if name == "neon":
        return arch in ("aarch64", "arm64")
    if arch != "x86_64":
        return False
    return _REQUIRES[name][0] <= host_features()


def best_host_target() -> str:
    for name in ("amx", "avx512", "avx2", "neon"):
        if runnable(name):
            return name
    return "scalar"


def make_target(name: str | None = None) -> Target:
    """The Target for `name` (default: $CKIR_TARGET, else the best the host runs)."""
    name = name or os.environ.get("CKIR_TARGET") or best_host_target()
    if name not in NAMES:
        raise CkirError(f"unknown target '{name}' (targets: {', '.join(NAMES)})")
    host = platform.machine() == "x86_64" and name != "neon" or name == "neon" and runnable("neon")
    if name == "neon":
        return Target(name, _ARM, "generic" if not runnable("neon") else host_cpu(), "+neon", 128,
                      frozenset({"neon"}))
    if name == "scalar":
        triple = _ARM if platform.machine() in ("aarch64", "arm64") else _X86
        return Target(name, triple, "generic", "", 32, frozenset())
    req, feats, bits = _REQUIRES[name]
    extras = set()
    hf = host_features() if host else frozenset()
    for f in ("avx512vnni", "avx512bf16", "amx-int8", "amx-bf16", "avxvnni"):
        if f in hf:
            extras.add(f)
    if name == "amx":
        extras |= {"amx-tile", "amx-int8", "amx-bf16"}
    cpu = host_cpu() if runnable(name) else {"avx2": "haswell", "avx512": "skylake-avx512",
                                             "amx": "sapphirerapids"}[name]
    return Target(name, _X86, cpu, feats, bits, frozenset(extras))


def check_runnable(t: Target) -> None:
    if not runnable(t.name):
        have = best_host_target()
        raise CkirError(f"target '{t.name}' cannot run on this CPU ({host_cpu()}, best: {have}); "
                        "compile it with emit=asm/obj instead, or pick another target")
