"""Every Numba option mpdref uses, in one place.

fastmath stays off: the fast paths are compared with the NumPy reference and
runs must be reproducible bit for bit. ``cache=True`` is never combined with
``parallel=True`` (Numba's cache has known crashes with parallel kernels).
"""
from __future__ import annotations

FASTMATH = False

#: options for serial kernels (cached on disk: they compile once per machine)
SERIAL = dict(nogil=True, fastmath=FASTMATH, cache=True)
#: options for kernels parallel over the batch (`prange`); never cached
PARALLEL = dict(nogil=True, fastmath=FASTMATH, parallel=True, cache=False)
