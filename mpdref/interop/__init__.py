"""Other frameworks' models in and out: ONNX evaluated with mpdref's own ops, crosscheck
reports, convert and export (issue #18; filled in slices)."""
