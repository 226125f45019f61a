"""Other frameworks' models in and out: ONNX evaluated with mpdref's own ops, crosscheck
reports, convert and export (issue #18).

    onnx_eval.py    run_onnx: an ONNX graph evaluated with the reference ops of `mpdref.ops`
                    (`SUPPORTED_OPS`; `UnsupportedModel` for anything else)
    export.py       export_onnx, export_safetensors; export (`mpdref export`)
    convert.py      read_state_dict, convert; convert_file (`mpdref convert`)
    crosscheck.py   crosscheck_onnx, crosscheck_torch, format_report; crosscheck (`mpdref crosscheck`)
    torch_twin.py   torch_network, torch_twin: an mpdref network as torch modules of the same names

`run_onnx` and the names in `__all__` are importable from here; the last four modules load on
first use of one of their names (they import the methods, and with them Numba). A function
named like its module (export, convert, crosscheck, torch_twin) is imported from the module. Needs the interop
extra: ``pip install -e '.[interop]'``; what needs PyTorch says so: ``pip install -e '.[crosscheck]'``.
"""
import importlib

from mpdref.interop.onnx_eval import SUPPORTED_OPS, UnsupportedModel, load_onnx, run_onnx

#: name -> the module of mpdref.interop that defines it, imported when the name is first asked for. The
#: functions named like their modules (export, convert, crosscheck, torch_twin) are imported from those modules:
#: here the name is the module's once it is loaded.
_LAZY = {
    "export_onnx": "export", "export_safetensors": "export",
    "convert_file": "convert", "read_state_dict": "convert",
    "crosscheck_onnx": "crosscheck", "crosscheck_torch": "crosscheck",
    "format_report": "crosscheck", "exit_status": "crosscheck", "write_report_json": "crosscheck",
    "torch_network": "torch_twin",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"mpdref.interop.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mpdref.interop' has no attribute {name!r}")


__all__ = ["SUPPORTED_OPS", "UnsupportedModel", "load_onnx", "run_onnx", *_LAZY]
