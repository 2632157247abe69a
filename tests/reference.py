"""Independent references for the tests: PyTorch, when installed."""

import numpy as np
import pytest


def torch_or_skip():
    return pytest.importorskip("torch")


def torch_conv_transpose2d(x, w, b=None, layout="NCHW", **params):
    """PyTorch's result; ``layout="NHWC"`` arrays go in and come out channels last (4-D only)."""
    torch = torch_or_skip()
    x, w = np.array(x), np.array(w)  # writable copies: torch.from_numpy warns on read-only arrays
    x_t = torch.from_numpy(x) if layout == "NCHW" else torch.from_numpy(x).permute(0, 3, 1, 2)
    with torch.no_grad():
        y = torch.nn.functional.conv_transpose2d(
            x_t, torch.from_numpy(w), None if b is None else torch.from_numpy(np.array(b)), **params
        )
    return (y if layout == "NCHW" else y.permute(0, 2, 3, 1)).contiguous().numpy()


def torch_conv2d(z, w, **params):
    """The strided convolution whose adjoint (in its input) is ``conv_transpose2d`` with the same weight."""
    torch = torch_or_skip()
    params = {k: v for k, v in params.items() if k != "output_padding"}
    with torch.no_grad():
        return torch.nn.functional.conv2d(torch.from_numpy(z), torch.from_numpy(w), **params).numpy()
