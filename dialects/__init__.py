"""Op declarations, grouped by dialect. Importing this package declares every op."""
from . import fused, nn, quant, train  # noqa: F401
