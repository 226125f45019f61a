"""Other frameworks' models in and out: ONNX evaluated with mpdref's own ops, crosscheck
reports, convert and export (issue #18; filled in slices).

`run_onnx` evaluates an ONNX graph (a file or an onnx.ModelProto) with the reference ops of
`mpdref.ops` (`mpdref.interop.onnx_eval`); `SUPPORTED_OPS` are the op types it evaluates and
`UnsupportedModel` what it raises for anything else. Needs the interop extra:
``pip install -e '.[interop]'``.
"""
from mpdref.interop.onnx_eval import SUPPORTED_OPS, UnsupportedModel, load_onnx, run_onnx

__all__ = ["SUPPORTED_OPS", "UnsupportedModel", "load_onnx", "run_onnx"]
