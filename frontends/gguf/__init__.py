"""The GGUF frontend: llama.cpp model files (reader, tokenizer, architecture builders)."""
from .reader import GGUFError, Reader, TensorInfo, load_weights  # noqa: F401
