"""The ONNX frontend: `ckir.load("model.onnx")` / `import_onnx(ModelProto)`, and the ONNX backend
API in `ckir.frontends.onnx.backend`."""
from .importer import import_onnx, load_model  # noqa: F401
