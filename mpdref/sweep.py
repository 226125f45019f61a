"""Sweeps: a grid of experiment configs run as ordinary run directories on Dask
(issue #21; filled in slices)."""
