"""Reference rows of the speed experiment: pseudo-backends timed exactly like the registered ones (through
``conv_transpose2d`` and testbed.timing, in the same run) but not registered in the library.

``gemm``: the bare GEMM of a stride == kernel up-convolution on the same matrices, with nothing else: NCHW
``(C_out·kH·kW × C_in) · (C_in × H·W)`` per image (the weight read as its transpose, no copy), NHWC
``(N·H·W × C_in) · (C_in × C_out·kH·kW)``; NumPy's matmul, no pixel shuffle, no bias. Its result is the
unshuffled product matrix, not the convolution: it is the floor a fused up-convolution is compared with
(``ratio_to_gemm`` in the report).

``torch_channels_last``: PyTorch with ``channels_last`` tensors, the peer to beat on the U-Net shapes. It always
gets its input in NHWC (the speed experiment times it on the NHWC form of each case, whatever ``--layout``),
and its weight converted to ``channels_last`` once, as a model converted with
``model.to(memory_format=torch.channels_last)`` holds it (oneDNN is faster with it: measured 36 vs 55 ms on
unet3 here).

Only NumPy and testbed are imported here (torch on first use): the module is imported by the timing worker
processes, where anything else loaded would add thread pools to the measurement.
"""

from __future__ import annotations

import numpy as np

from testbed.backends import torch_backend
from testbed.problem import Problem
from testbed.registry import Backend


def _gemm_check(problem: Problem) -> str | None:
    if not (
        problem.is_nonoverlapping
        and problem.padding == (0, 0)
        and problem.output_padding == (0, 0)
        and problem.groups == 1
    ):
        return "the bare-GEMM reference is defined for stride == kernel, no padding, groups 1"
    return None


def bare_gemm(x, weight, bias, problem: Problem, out=None):
    """The up-convolution's GEMM alone (see the module docstring); writes into ``out``'s memory when given."""
    in_channels = problem.in_channels
    weights = weight.reshape(in_channels, -1)  # (C_in, C_out·kH·kW), a view
    if problem.layout == "NHWC":
        pixels = x.reshape(-1, in_channels)  # (N·H·W, C_in), a view
        target = None if out is None else out.reshape(pixels.shape[0], weights.shape[1])
        return np.matmul(pixels, weights, out=target)
    area = problem.in_size[0] * problem.in_size[1]
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
)

_converted_weight: dict = {}


def _channels_last_weight(torch, weight: np.ndarray):
    """``weight`` as a channels_last tensor, converted once per weight array (a model's parameters)."""
    key = (weight.ctypes.data, weight.shape, weight.dtype.str)
    if key not in _converted_weight:
        _converted_weight.clear()
        _converted_weight[key] = (weight, torch.from_numpy(weight).contiguous(memory_format=torch.channels_last))
    return _converted_weight[key][1]


def torch_channels_last(x, weight, bias, problem: Problem):
    """``F.conv_transpose2d`` on a channels_last view of the NHWC input, with a channels_last weight; the NHWC
    result as a NumPy array (no copy: torch keeps channels_last)."""
    torch = torch_backend._torch()
    torch_backend.prepare_torch(torch)
    with torch.no_grad():
        y = torch.nn.functional.conv_transpose2d(
            torch.from_numpy(x).permute(0, 3, 1, 2),
            _channels_last_weight(torch, weight),
            None if bias is None else torch.from_numpy(bias),
            stride=problem.stride,
            padding=problem.padding,
            output_padding=problem.output_padding,
            groups=problem.groups,
            dilation=problem.dilation,
        )
    return y.permute(0, 2, 3, 1).contiguous().numpy()


TORCH_CHANNELS_LAST = Backend(
    name="torch_channels_last",
    description="reference: PyTorch with channels_last input and weight",
    run=torch_channels_last,
    check=torch_backend._within_torch_limits,
    probe=torch_backend._probe,
    layouts=("NHWC",),
)

#: The reference pseudo-backends, by name.
REFERENCES = {backend.name: backend for backend in (GEMM, TORCH_CHANNELS_LAST)}
