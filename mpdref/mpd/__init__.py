"""MPDCompress (matrix permutation decomposition): training under permuted block-diagonal masks.

Read in this order:

    masks.py         M = P_r B P_cᵀ: random masks, their structure recovered from a bare 0/1 mask
    storage.py       the bits an MPD network stores, and the k that reaches a compression ratio
    block_form.py    the masked network as its blocks alone (inference and training)
    cuda_network.py  the block form's inference on the GPU

The block-diagonal product itself is an op: `mpdref.ops.block_diagonal_matmul` (the
reference) and `mpdref.kernels.blockdiag` (the Numba kernel). The pipeline stage that
applies masks is `mpdref.runner.stages.mpd`; its figure is `mpdref.figures.plot_masks`.
"""
from mpdref.bits import index_bits
from mpdref.kernels import BACKENDS
from mpdref.mpd.block_form import (
    BlockConv2d,
    BlockDense,
    BlockLayer,
    BlockNetwork,
    block_arrays,
    to_block_diagonal,
)
from mpdref.mpd.cuda_network import CudaBlockNetwork  # loads numba-cuda only when one is built
from mpdref.mpd.masks import (
    MPDMask,
    apply_mpd_masks,
    block_structure,
    channel_mask,
    mpd_mask,
    split_bounds,
    weight_structure,
)
from mpdref.mpd.storage import blocks_per_layer, choose_k, layer_storage_bits, storage_table
from mpdref.ops.block import block_diagonal_matmul



def block_network(net, backend: str = "cpu"):
    """The block-diagonal form of the MPD-masked `net` on a device: "cpu" gives a BlockNetwork
    (inference and training), "cuda" a CudaBlockNetwork (inference on the GPU). backend="cuda"
    without a usable GPU raises mpdref.kernels.BackendUnavailable, which names the cause and the
    alternatives."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    block = to_block_diagonal(net)
    return CudaBlockNetwork(block) if backend == "cuda" else block


__all__ = [
    "BlockConv2d", "BlockDense", "BlockLayer", "BlockNetwork", "CudaBlockNetwork", "MPDMask", "apply_mpd_masks",
    "block_arrays", "block_diagonal_matmul", "block_network", "block_structure", "blocks_per_layer",
    "channel_mask", "choose_k", "index_bits", "layer_storage_bits", "mpd_mask", "split_bounds", "storage_table",
    "to_block_diagonal", "weight_structure",
]
