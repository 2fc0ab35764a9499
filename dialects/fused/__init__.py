"""The fused dialect: ops made by the fuse pass. Each holds a body region of ordinary ops, so
the text IR shows exactly what was fused, the interpreter runs a fused op by running its body,
autodiff differentiates through the body, and a backend compiles the body as one loop nest."""
from . import ops  # noqa: F401
