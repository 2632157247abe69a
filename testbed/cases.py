"""Named suites of problems shared by the experiments, the benchmarks and the performance work.

``unet``: the four U-Net up-convolutions (Ronneberger et al. 2015; kernel 2, stride 2, C_in = 2·C_out) at the
input sizes of the original 572² network. ``decoder``: the other shapes decoders use (k4 s2 p1 as in DCGAN,
k3 s2 p1 op1, stride 1, dilation, groups, depthwise, an odd k5 s3). ``tiny``: small shapes where call
overhead dominates.

``unet3d`` (3-D): the five up-convolutions of nnU-Net's 3-D full-resolution decoder (Isensee et al., "nnU-Net",
Nature Methods 18, 2021: kernel = stride = 2, widths 32·2^i capped at 320) on a 128³ patch, batch 2 (nnU-Net's
default batch): 320→320 at 4³ up to 64→32 at 64³, whose output is 2·32·128³ floats (512 MiB in float32).
``vocoder1d`` (1-D): the four up-samplings of the HiFi-GAN V1 generator (Kong et al., NeurIPS 2020: rates
8, 8, 2, 2, kernels 16, 16, 4, 4, padding (k - s)/2, channels 512→256→128→64→32) for one second of 22 050 Hz
audio (86 mel frames at hop 256), batch 1.
"""

import numpy as np

from .problem import Problem


def _p(name, c_in, c_out, size, kernel, stride=1, padding=0, output_padding=0, dilation=1, groups=1, batch=1, rank=2):
    return name, Problem(
        batch=batch,
        in_channels=c_in,
        in_size=size,
        out_channels=c_out,
        kernel_size=kernel,
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        dilation=dilation,
        groups=groups,
        dtype=np.dtype(np.float32),
        rank=rank,
    )


SUITES = {
    "unet": dict(
        [
            _p("unet1", 1024, 512, 28, 2, 2),
            _p("unet2", 512, 256, 52, 2, 2),
            _p("unet3", 256, 128, 100, 2, 2),
            _p("unet4", 128, 64, 196, 2, 2),
        ]
    ),
    "decoder": dict(
        [
            _p("k4s2p1", 256, 128, 32, 4, 2, 1),
            _p("k3s2p1op1", 128, 64, 64, 3, 2, 1, 1),
            _p("k3s1p1", 64, 64, 64, 3, 1, 1),
            _p("k3d2", 64, 64, 64, 3, 1, 2, dilation=2),
            _p("k4s2g8", 256, 256, 32, 4, 2, 1, groups=8),
            _p("depthwise", 128, 128, 64, 4, 2, 1, groups=128),
            _p("k5s3", 64, 32, 32, 5, 3, 1),
        ]
    ),
    "tiny": dict(
        [
            _p("seed", 1, 1, (2, 3), 2, 2),
            _p("tiny_k2s2", 4, 4, 8, 2, 2),
            _p("tiny_k3s2", 3, 5, (5, 7), 3, 2, 1, 1, batch=2),
            _p("tiny_g2d2", 4, 6, 6, 3, (1, 2), (1, 0), dilation=2, groups=2),
        ]
    ),
    "unet3d": dict(
        [
            _p("unet3d1", 320, 320, 4, 2, 2, batch=2, rank=3),
            _p("unet3d2", 320, 256, 8, 2, 2, batch=2, rank=3),
            _p("unet3d3", 256, 128, 16, 2, 2, batch=2, rank=3),
            _p("unet3d4", 128, 64, 32, 2, 2, batch=2, rank=3),
            _p("unet3d5", 64, 32, 64, 2, 2, batch=2, rank=3),
        ]
    ),
    "vocoder1d": dict(
        [
            _p("voc1", 512, 256, 86, 16, 8, 4, rank=1),
            _p("voc2", 256, 128, 688, 16, 8, 4, rank=1),
            _p("voc3", 128, 64, 5504, 4, 2, 1, rank=1),
            _p("voc4", 64, 32, 11008, 4, 2, 1, rank=1),
        ]
    ),
}


def suite(name: str) -> dict:
    """``{case_name: Problem}`` of a named suite (float32; use ``problem.with_(dtype=...)`` for others)."""
    if name not in SUITES:
        raise ValueError(f"suite must be one of {sorted(SUITES)}, got {name!r}")
    return SUITES[name]
