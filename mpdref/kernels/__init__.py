"""Numba fast paths. Each kernel names the NumPy reference in `mpdref.ops` it must equal."""
