"""Independent references for the tests: PyTorch, when installed."""

import numpy as np
import pytest


def torch_or_skip():
    return pytest.importorskip("torch")


def torch_conv_transpose2d(x, w, b=None, **params):
    torch = torch_or_skip()
    x, w = np.array(x), np.array(w)       # writable copies: torch.from_numpy warns on read-only arrays
    with torch.no_grad():
        y = torch.nn.functional.conv_transpose2d(
            torch.from_numpy(x), torch.from_numpy(w), None if b is None else torch.from_numpy(np.array(b)),
            **params)
    return y.numpy()


def torch_conv2d(z, w, **params):
    """The strided convolution whose adjoint (in its input) is ``conv_transpose2d`` with the same weight."""
    torch = torch_or_skip()
    params = {k: v for k, v in params.items() if k != "output_padding"}
    with torch.no_grad():
        return torch.nn.functional.conv2d(torch.from_numpy(z), torch.from_numpy(w), **params).numpy()
