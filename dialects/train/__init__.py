"""The train dialect: optimizer updates (and, later, losses and gradient accumulation)."""
from . import optim  # noqa: F401
