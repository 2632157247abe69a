"""``torch``: ``torch.nn.functional.conv_transpose2d`` on the CPU, the optional oracle and the peer to beat."""

import functools

from ..registry import Backend, register


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
    torch = _torch()
    with torch.no_grad():
        y = torch.nn.functional.conv_transpose2d(
            _tensor(torch, x), _tensor(torch, weight), None if bias is None else _tensor(torch, bias),
            stride=problem.stride, padding=problem.padding, output_padding=problem.output_padding,
            groups=problem.groups, dilation=problem.dilation)
    return y.numpy()


register(Backend(
    name="torch",
    description="PyTorch's F.conv_transpose2d on the CPU (oneDNN or GEMM + col2im inside)",
    run=torch_conv_transpose2d,
    probe=_probe,
))
