"""ckir's own passes; each module registers one pass on import."""
from . import arena, autodiff, canonicalize, cse, dce, fuse, optimizer, specialize  # noqa: F401
