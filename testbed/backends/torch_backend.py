"""``torch``: ``torch.nn.functional.conv_transpose1d`` / ``2d`` / ``3d`` on the CPU, the optional oracle and the
peer to beat, for every spatial rank.

The function of the problem's rank computes it, with PyTorch's own memory format where PyTorch has one:

- channels first (``NCL``, ``NCHW``, ``NCDHW``): contiguous tensors;
- ``NHWC`` and ``NDHWC``: the same memory seen as ``(N, C, *spatial)``, which is PyTorch's ``channels_last`` and
  ``channels_last_3d`` format; oneDNN computes float32 in it and returns it (no copy back), float64 goes through
  PyTorch's ``slow_conv_transpose2d``/``3d`` and comes back channels first (one copy into the layout);
- ``NLC``: PyTorch has no channels-last memory format for 3-D tensors, so ``conv_transpose1d`` receives the
  strided ``(N, C, L)`` view and computes channels first, as a PyTorch user's call on ``x.permute(0, 2, 1)``
  would; the result is copied back into NLC. That is PyTorch's 1-D operator as shipped, not the fastest PyTorch
  route: viewing NLC as ``(N, 1, L, C)`` channels_last and calling ``conv_transpose2d`` with a ``(1, kL)``
  kernel reaches oneDNN's channels-last kernel, 4.3× faster here in float32 (HiFi-GAN-like ``C_in 64, C_out
  32, k16 s8 p4, L 2000, N 4``, torch 2.13.0, one thread, CPU time: 7.1 ms against 30.3 ms, the same values, on
  the 2-core EPYC Zen 3 host with other work running), a trick no PyTorch function does for the user, so it is
  not the peer.
"""

import functools
import math

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


def torch_conv_transpose(x, weight, bias, problem):
    """Channels-first arrays as contiguous tensors; channels-last arrays as the ``(N, C, *spatial)`` view of the
    same memory (``channels_last``/``channels_last_3d`` in 2-D/3-D; a strided tensor in 1-D), computed by
    ``F.conv_transpose{rank}d`` and returned in the problem's layout."""
    torch = _torch()
    prepare_torch(torch)  # one thread in a child forked after torch's OpenMP pool started (see _runtime)
    rank = problem.rank
    function = {
        1: torch.nn.functional.conv_transpose1d,
        2: torch.nn.functional.conv_transpose2d,
        3: torch.nn.functional.conv_transpose3d,
    }[rank]
    x_t = _tensor(torch, x)
    if problem.channels_last:
        x_t = x_t.permute(0, rank + 1, *range(1, rank + 1))
    with torch.no_grad():
        y = function(
            x_t,
            _tensor(torch, weight),
            None if bias is None else _tensor(torch, bias),
            stride=problem.stride,
            padding=problem.padding,
            output_padding=problem.output_padding,
            groups=problem.groups,
            dilation=problem.dilation,
        )
    if problem.channels_last:
        y = y.permute(0, *range(2, rank + 2), 1).contiguous()  # a view when torch kept channels_last
    return y.numpy()


def _within_torch_limits(problem):
    """torch narrows stride, padding, dilation and output_padding to 32-bit ints (2**31 fails inside torch), and
    its float64 path (slow_conv_transpose2d, which conv_transpose1d reaches too, or slow_conv_transpose3d; also
    float32 without oneDNN) allocates a column buffer C_out·Π k_a·Π n_a per image, which must fit
    :attr:`Problem.workspace_limit`."""
    for name in ("stride", "padding", "output_padding", "dilation"):
        if max(getattr(problem, name)) >= 2**31:
            return f"torch takes {name} as a 32-bit int, got {getattr(problem, name)}"
    torch = _torch()
    one_dnn = torch is not None and torch.backends.mkldnn.is_available()
    if problem.dtype.itemsize == 8 or not one_dnn:
        taps_and_pixels = math.prod(problem.kernel_size) * math.prod(problem.in_size)
        columns = problem.out_channels * taps_and_pixels * problem.dtype.itemsize
        if columns > problem.workspace_limit:
            return (
                f"torch's slow_conv_transpose{max(problem.rank, 2)}d would allocate a {columns:.3g}-byte column "
                f"buffer (C_out·Π k·Π n), above the workspace limit of {problem.workspace_limit:.3g} bytes"
            )
    return None


# ---- backward: ATen's convolution_backward, transposed -----------------------------------------------------------


def _channels_first_view(torch, array, problem):
    """``array`` (batched, in ``problem.layout``) as a tensor seen as ``(N, C, *spatial)``: a permuted view of the
    same memory for a channels-last layout (PyTorch's ``channels_last`` strides)."""
    tensor = _tensor(torch, array)
    return tensor.permute(0, problem.rank + 1, *range(1, problem.rank + 1)) if problem.channels_last else tensor


def _in_layout(tensor, problem):
    """A ``(N, C, *spatial)`` result as a C-contiguous array in ``problem.layout``."""
    if problem.channels_last:
        tensor = tensor.permute(0, *range(2, problem.rank + 2), 1)
    return tensor.contiguous().numpy()


def _convolution_backward(grad_output, x, weight, problem, output_mask):
    """``torch.ops.aten.convolution_backward(..., transposed=True)``: what autograd runs for
    ``conv_transpose{1,2,3}d`` (oneDNN or slow_conv_transpose's im2col + GEMM inside). Only the shapes of the
    operand a direction does not read are used: ``x`` or ``weight`` may be an empty stand-in of that shape."""
    torch = _torch()
    prepare_torch(torch)
    with torch.no_grad():
        return torch.ops.aten.convolution_backward(
            _channels_first_view(torch, grad_output, problem),
            x,
            weight,
            None,  # bias_sizes: the bias gradient is conv_transpose_backward's own reduction
            list(problem.stride),
            list(problem.padding),
            list(problem.dilation),
            True,  # transposed
            list(problem.output_padding),
            problem.groups,
            output_mask,
        )


def torch_data_gradient(grad_output, weight, problem):
    torch = _torch()
    # convolution_backward reads only the input's shape (and memory format) for grad_input: an uninitialised
    # stand-in, allocated lazily by the OS, costs nothing
    stand_in = torch.empty(problem.input_shape, dtype=getattr(torch, problem.dtype.name))
    stand_in = _channels_first_view(torch, stand_in.numpy(), problem)
    grad_input, _, _ = _convolution_backward(
        grad_output, stand_in, _tensor(torch, weight), problem, [True, False, False]
    )
    return _in_layout(grad_input, problem)


def torch_weight_gradient(grad_output, x, problem):
    torch = _torch()
    stand_in = torch.empty(problem.weight_shape, dtype=getattr(torch, problem.dtype.name))
    x_t = _channels_first_view(torch, x, problem)
    _, grad_weight, _ = _convolution_backward(grad_output, x_t, stand_in, problem, [False, True, False])
    return grad_weight.contiguous().numpy()


register(
    Backend(
        name="torch",
        description="PyTorch's F.conv_transpose1d/2d/3d on the CPU (oneDNN or GEMM + col2im inside)",
        run=torch_conv_transpose,
        check=_within_torch_limits,
        probe=_probe,
        layouts=("NCHW", "NHWC"),
        ranks=(1, 2, 3),
        backward_data=torch_data_gradient,
        backward_weight=torch_weight_gradient,
    )
)
