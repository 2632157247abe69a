"""``torch``: ``torch.nn.functional.conv_transpose2d`` on the CPU, the optional oracle and the peer to beat."""

import functools

from ..registry import Backend, register
from ._runtime import prepare_torch


@functools.lru_cache(maxsize=1)
def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _probe():
    torch = _torch()
    if torch is None:
        return False, "torch is not installed (pip install 'convtranspose-testbed[torch]' torch==2.13.0)"
    return True, f"available (torch {torch.__version__})"


def _tensor(torch, array):
    """``array`` as a CPU tensor sharing its memory; a read-only array is copied first, because
    ``torch.from_numpy`` warns about it (once per process, as a UserWarning that a caller's warning filters may
    turn into an error) and silencing that per call would change the process-wide warning filters."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def torch_conv_transpose2d(x, weight, bias, problem):
    """NCHW arrays as contiguous tensors; NHWC arrays as PyTorch's ``channels_last`` tensors (the same memory
    seen as (N, C, H, W)), which oneDNN computes in that layout and returns in it."""
    torch = _torch()
    prepare_torch(torch)  # one thread in a child forked after torch's OpenMP pool started (see _runtime)
    x_t = _tensor(torch, x)
    if problem.layout == "NHWC":
        x_t = x_t.permute(0, 3, 1, 2)
    with torch.no_grad():
        y = torch.nn.functional.conv_transpose2d(
            x_t,
            _tensor(torch, weight),
            None if bias is None else _tensor(torch, bias),
            stride=problem.stride,
            padding=problem.padding,
            output_padding=problem.output_padding,
            groups=problem.groups,
            dilation=problem.dilation,
        )
    if problem.layout == "NHWC":
        y = y.permute(0, 2, 3, 1).contiguous()  # a view when torch kept channels_last
    return y.numpy()


def _within_torch_limits(problem):
    """torch narrows stride, padding, dilation and output_padding to 32-bit ints (2**31 fails inside torch), and
    its float64 path (slow_conv_transpose2d; also float32 without oneDNN) allocates a column buffer
    C_out·kH·kW·H·W per image, which must fit :attr:`Problem.workspace_limit`."""
    for name in ("stride", "padding", "output_padding", "dilation"):
        if max(getattr(problem, name)) >= 2**31:
            return f"torch takes {name} as a 32-bit int, got {getattr(problem, name)}"
    torch = _torch()
    one_dnn = torch is not None and torch.backends.mkldnn.is_available()
    if problem.dtype.itemsize == 8 or not one_dnn:
        (h, w), (kh, kw) = problem.in_size, problem.kernel_size
        columns = problem.out_channels * kh * kw * h * w * problem.dtype.itemsize
        if columns > problem.workspace_limit:
            return (
                f"torch's slow_conv_transpose2d would allocate a {columns:.3g}-byte column buffer "
                f"(C_out·kH·kW·H·W), above the workspace limit of {problem.workspace_limit:.3g} bytes"
            )
    return None


register(
    Backend(
        name="torch",
        description="PyTorch's F.conv_transpose2d on the CPU (oneDNN or GEMM + col2im inside)",
        run=torch_conv_transpose2d,
        check=_within_torch_limits,
        probe=_probe,
        layouts=("NCHW", "NHWC"),
    )
)
