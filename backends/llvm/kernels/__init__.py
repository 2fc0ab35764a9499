"""Kernel emitters, one module per op family; importing this package registers them."""
from . import (  # noqa: F401
    conv, elementwise, fused, matmul, movement, nn_attention, nn_axis, nn_bitcast, nn_loss, nn_scatter,
    quant, reduce,
)
