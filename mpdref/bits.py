"""Counting stored bits: the one formula every size table and ratio uses."""
from __future__ import annotations

import math


def index_bits(n: int) -> int:
    """Bits of one index into n items: ceil(log2 n), at least 1."""
    return max(1, math.ceil(math.log2(max(n, 2))))
