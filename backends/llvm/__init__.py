"""The LLVM backend: native kernels JIT-compiled with llvmlite for the detected CPU target, run
whole segments at a time on a persistent thread pool (see plan.py, codegen.py, kernels/)."""
from . import kernels  # noqa: F401  (registers the emitters)
from .plan import LLVMBackend  # noqa: F401
