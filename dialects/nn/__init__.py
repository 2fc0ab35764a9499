"""The nn dialect: tensor ops for MLPs, CNNs and transformers."""
from . import (activation, attention, conv, core, data, dynamic, elementwise, image, index,  # noqa: F401
               layers, linalg, loss, norm, reduce, shape, signal)
