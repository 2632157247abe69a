"""The argument layout the ``numba_cuda*`` host wrapper (:mod:`.numba_cuda`) and its kernels
(:mod:`.numba_cuda_kernels`) agree on: the output tile of ``tiled_gather`` and the field order of the uint32
tuples every kernel receives. One contract, in a module that imports no numba, so that the host module, the
kernels and the PTX report (:mod:`.numba_cuda_ptx`) read it from one place and none of them imports another
for it.
"""

import numpy as np

__all__ = ["TILE", "SHAPE_FIELDS", "GEOMETRY_FIELDS", "DEPTH_FIELDS", "CHUNK_FIELDS", "uint32_fields"]

#: Output tile of ``tiled_gather``: one thread per output element of a TILE×TILE block.
TILE = 16

#: Field order of the ``shape`` tuple every gather/scatter kernel receives (all uint32): the last two spatial
#: axes (H, W) of a 2-D or 3-D problem (a 1-D one arrives as 2-D with one row, ``numba_cuda.as_rank``).
SHAPE_FIELDS = (
    "in_channels",
    "in_h",
    "in_w",
    "out_channels",
    "out_h",
    "out_w",
    "in_per_group",
    "out_per_group",
    "kernel_h",
    "kernel_w",
)
#: Field order of the ``geometry`` tuple (all uint32; ``gcd``/``inverse`` per axis from
#: ``numba_cuda._phase_constants``).
GEOMETRY_FIELDS = (
    "stride_h",
    "stride_w",
    "padding_h",
    "padding_w",
    "dilation_h",
    "dilation_w",
    "gcd_h",
    "gcd_w",
    "inverse_h",
    "inverse_w",
)
#: Field order of the ``depth`` tuple of ``gather3d``: the D axis of a 3-D problem, its extents and geometry
#: (all uint32; ``gcd_d``/``inverse_d`` as for H and W).
DEPTH_FIELDS = ("in_d", "out_d", "kernel_d", "stride_d", "padding_d", "dilation_d", "gcd_d", "inverse_d")
#: Field order of the ``chunks`` tuple of ``tiled_gather`` (see ``numba_cuda.tiled_plan``).
CHUNK_FIELDS = ("chunk_h", "chunk_w", "halo_h", "halo_w")


def uint32_fields(names: tuple[str, ...], values: dict) -> tuple:
    """``values`` in the field order ``names``, as uint32 (numba then types the tuple UniTuple(uint32))."""
    return tuple(np.uint32(values[name]) for name in names)
