"""The nn dialect: tensor ops for MLPs, CNNs and transformers."""
from . import (activation, attention, control, conv, core, data, dynamic, elementwise, image,  # noqa: F401
               index, layers, linalg, loss, norm, reduce, rnn, seq, shape, signal, strings)
