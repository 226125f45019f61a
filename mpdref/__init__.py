"""mpdref: a framework-free NumPy/Numba reference implementation of deep-network compression."""

__version__ = "0.1.0"
