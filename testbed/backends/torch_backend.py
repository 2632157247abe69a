"""``torch``: ``torch.nn.functional.conv_transpose2d`` on the CPU, the optional oracle and the peer to beat."""

import functools
import warnings

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


def torch_conv_transpose2d(x, weight, bias, problem):
    torch = _torch()
    # torch.from_numpy warns on read-only arrays; conv_transpose2d never writes its inputs.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        y = torch.nn.functional.conv_transpose2d(
            torch.from_numpy(x), torch.from_numpy(weight), None if bias is None else torch.from_numpy(bias),
            stride=problem.stride, padding=problem.padding, output_padding=problem.output_padding,
            groups=problem.groups, dilation=problem.dilation)
    return y.numpy()


register(Backend(
    name="torch",
    description="PyTorch's F.conv_transpose2d on the CPU (oneDNN or GEMM + col2im inside)",
    run=torch_conv_transpose2d,
    probe=_probe,
))
