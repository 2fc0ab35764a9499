"""The nn dialect: tensor ops for MLPs, CNNs and transformers."""
from . import core, elementwise, linalg, reduce, shape  # noqa: F401
