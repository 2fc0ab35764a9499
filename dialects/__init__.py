"""Op declarations, grouped by dialect. Importing this package declares every op."""
from . import nn, quant  # noqa: F401
