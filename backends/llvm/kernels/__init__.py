"""Kernel emitters, one module per op family; importing this package registers them."""
from . import elementwise, movement, matmul, reduce  # noqa: F401
