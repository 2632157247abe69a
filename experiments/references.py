"""Reference rows of the speed experiment: pseudo-backends timed exactly like the registered ones (through
``conv_transpose2d`` and testbed.timing, in the same run) but not registered in the library.

``gemm``: the bare GEMM of a stride == kernel up-convolution on the same matrices, with nothing else, at every
spatial rank (``P = prod(in_size)`` input positions: L, H·W or D·H·W; ``K = prod(kernel_size)`` taps): channels
first ``(C_out·K × C_in) · (C_in × P)`` per image (the weight read as its transpose, no copy), channels last
``(N·P × C_in) · (C_in × C_out·K)``; NumPy's matmul, no pixel shuffle, no bias. Its result is the unshuffled
product matrix, not the convolution: it is the floor a fused up-convolution is compared with (``ratio_to_gemm``
in the report). Its flops are the convolution's (``Problem.flops`` = 2·N·C_in·C_out·P·K).

``torch_channels_last``: PyTorch with channels-last tensors, the peer to beat on the U-Net shapes. It always gets
its input channels last (the speed experiment times it on the channels-last form of each case, whatever
``--layout``: NHWC, NDHWC), and its weight converted to ``torch.channels_last`` (2-D) or
``torch.channels_last_3d`` (3-D) once, as a model converted with ``model.to(memory_format=...)`` holds it
(oneDNN is faster with it: measured 36 vs 55 ms on unet3 here). Not 1-D: PyTorch has no channels-last memory
format for 3-D tensors ``(N, C, L)``; an NLC array handed to ``conv_transpose1d`` as a permuted view is copied to
``(N, C, L)`` inside torch, which is what the registered ``torch`` backend's own layout conversion times.

Only NumPy and testbed are imported here (torch on first use): the module is imported by the timing worker
processes, where anything else loaded would add thread pools to the measurement.
"""

from __future__ import annotations

import math

import numpy as np

from testbed.backends import torch_backend
from testbed.problem import Problem
from testbed.registry import Backend


def _gemm_check(problem: Problem) -> str | None:
    if not (
        problem.is_nonoverlapping
        and set(problem.padding) == {0}
        and set(problem.output_padding) == {0}
        and problem.groups == 1
    ):
        return "the bare-GEMM reference is defined for stride == kernel, no padding, groups 1"
    return None


def bare_gemm(x, weight, bias, problem: Problem, out=None):
    """The up-convolution's GEMM alone (see the module docstring); writes into ``out``'s memory when given."""
    in_channels = problem.in_channels
    weights = weight.reshape(in_channels, -1)  # (C_in, C_out·K), a view
    if problem.channels_last:
        pixels = x.reshape(-1, in_channels)  # (N·P, C_in), a view
        target = None if out is None else out.reshape(pixels.shape[0], weights.shape[1])
        return np.matmul(pixels, weights, out=target)
    area = math.prod(problem.in_size)
    products = (
        np.empty((problem.batch, weights.shape[1], area), dtype=problem.dtype)
        if out is None
        else out.reshape(problem.batch, weights.shape[1], area)
    )
    for n in range(problem.batch):
        np.matmul(weights.T, x[n].reshape(in_channels, area), out=products[n])
    return products


GEMM = Backend(
    name="gemm",
    description="reference: the bare GEMM of the same matrices (no shuffle, no bias)",
    run=bare_gemm,
    groups=False,
    dilation=False,
    check=_gemm_check,
    writes_out=True,
    layouts=("NCHW", "NHWC"),
    ranks=(1, 2, 3),
)

_converted_weight: dict = {}


def _channels_last_weight(torch, weight: np.ndarray):
    """``weight`` as a channels-last tensor (``channels_last`` for 4-D, ``channels_last_3d`` for 5-D), converted
    once per weight array (a model's parameters)."""
    key = (weight.ctypes.data, weight.shape, weight.dtype.str)
    if key not in _converted_weight:
        _converted_weight.clear()
        memory_format = torch.channels_last if weight.ndim == 4 else torch.channels_last_3d
        _converted_weight[key] = (weight, torch.from_numpy(weight).contiguous(memory_format=memory_format))
    return _converted_weight[key][1]


def torch_channels_last(x, weight, bias, problem: Problem):
    """``F.conv_transpose2d``/``3d`` on a channels-last view of the NHWC/NDHWC input, with a channels-last
    weight; the channels-last result as a NumPy array (no copy where torch keeps the channels last)."""
    torch = torch_backend._torch()
    torch_backend.prepare_torch(torch)
    rank = problem.rank
    channels_first = (0, rank + 1, *range(1, rank + 1))  # (N, *spatial, C) -> (N, C, *spatial)
    channels_last = (0, *range(2, rank + 2), 1)
    conv_transpose = getattr(torch.nn.functional, f"conv_transpose{rank}d")
    with torch.no_grad():
        y = conv_transpose(
            torch.from_numpy(x).permute(*channels_first),
            _channels_last_weight(torch, weight),
            None if bias is None else torch.from_numpy(bias),
            stride=problem.stride,
            padding=problem.padding,
            output_padding=problem.output_padding,
            groups=problem.groups,
            dilation=problem.dilation,
        )
    return y.permute(*channels_last).contiguous().numpy()


TORCH_CHANNELS_LAST = Backend(
    name="torch_channels_last",
    description="reference: PyTorch with channels-last input and weight (channels_last, channels_last_3d)",
    run=torch_channels_last,
    check=torch_backend._within_torch_limits,
    probe=torch_backend._probe,
    layouts=("NHWC",),
    ranks=(2, 3),
)

#: The reference pseudo-backends, by name.
REFERENCES = {backend.name: backend for backend in (GEMM, TORCH_CHANNELS_LAST)}
