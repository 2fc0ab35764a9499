"""The nn dialect: tensor ops for MLPs, CNNs and transformers."""
from . import attention, conv, core, data, elementwise, linalg, norm, reduce, shape  # noqa: F401
