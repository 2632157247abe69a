"""Independent references for the tests: PyTorch, when installed."""

import numpy as np
import pytest


def torch_or_skip():
    return pytest.importorskip("torch")


def _channel_axis(array, w):
    """Where the channels of a batched or unbatched channels-last ``array`` are moved to (channels first)."""
    return 1 if np.ndim(array) == np.ndim(w) else 0


def torch_conv_transpose(x, w, b=None, layout=None, **params):
    """PyTorch's ``conv_transpose1d``/``2d``/``3d`` (the weight's rank), batched or unbatched; a channels-last
    ``layout`` (``"NLC"``, ``"NHWC"``, ``"NDHWC"``) goes in and comes out channels last."""
    torch = torch_or_skip()
    x, w = np.array(x), np.array(w)  # writable copies: torch.from_numpy warns on read-only arrays
    function = getattr(torch.nn.functional, f"conv_transpose{w.ndim - 2}d")
    channels = _channel_axis(x, w)
    channels_last = layout is not None and layout.endswith("C")
    x_t = torch.from_numpy(x).movedim(-1, channels) if channels_last else torch.from_numpy(x)
    with torch.no_grad():
        y = function(x_t, torch.from_numpy(w), None if b is None else torch.from_numpy(np.array(b)), **params)
    return (y.movedim(channels, -1) if channels_last else y).contiguous().numpy()


def torch_conv_transpose2d(x, w, b=None, layout="NCHW", **params):
    """PyTorch's result; ``layout="NHWC"`` arrays go in and come out channels last (4-D only)."""
    return torch_conv_transpose(x, w, b, layout=layout, **params)


def torch_conv(z, w, **params):
    """The strided convolution (``conv1d``/``2d``/``3d``: the weight's rank) whose adjoint (in its input) is
    ``conv_transpose1d/2d/3d`` with the same weight."""
    torch = torch_or_skip()
    params = {k: v for k, v in params.items() if k != "output_padding"}
    function = getattr(torch.nn.functional, f"conv{np.ndim(w) - 2}d")
    with torch.no_grad():
        return function(torch.from_numpy(np.array(z)), torch.from_numpy(np.array(w)), **params).numpy()


def torch_conv2d(z, w, **params):
    """The strided convolution whose adjoint (in its input) is ``conv_transpose2d`` with the same weight."""
    return torch_conv(z, w, **params)
