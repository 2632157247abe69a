"""A PyTorch bridge: ``torch.nn.ConvTranspose1d/2d/3d`` that compute forward and backward on a testbed backend.

:class:`ConvTranspose1d`, :class:`ConvTranspose2d` and :class:`ConvTranspose3d` are PyTorch's own modules
(subclasses: the same constructor, parameters, initialisation, ``repr`` and state-dict keys ``weight`` and
``bias``) plus a ``backend=`` keyword; their ``forward`` runs :func:`conv_transpose`, a
:class:`torch.autograd.Function` whose forward is :func:`testbed.conv_transpose1d`/``2d``/``3d`` and whose
backward is :func:`testbed.conv_transpose_backward` (only the gradients autograd needs). A model built with
them trains as with PyTorch's layers, and a state dict saved from ``torch.nn.ConvTranspose2d`` loads unchanged.

CPU tensors of float32 or float64 only. Tensors cross into NumPy without a copy (``Tensor.numpy()`` shares the
memory, ``torch.from_numpy`` shares it back); a channels-last tensor (``torch.channels_last`` /
``channels_last_3d``, or a 1-D ``(N, C, L)`` tensor whose channels are the innermost axis) is handed over in the
testbed's channels-last layout, so it is not copied either, and the result keeps that memory format. Other
strided tensors are copied once by the backend that needs contiguous arrays. Second derivatives are not
supported (the backward is not itself differentiable).

Importing this module needs PyTorch; without it the import fails with an ``ImportError`` saying how to install
it.

Examples
--------
>>> import torch
>>> import testbed.torch
>>> layer = testbed.torch.ConvTranspose2d(4, 2, kernel_size=2, stride=2, backend="naive").double()
>>> reference = torch.nn.ConvTranspose2d(4, 2, kernel_size=2, stride=2).double()
>>> _ = layer.load_state_dict(reference.state_dict())
>>> x = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
>>> torch.allclose(layer(x), reference(x))
True
>>> torch.autograd.gradcheck(layer, (x,))
True
"""

from __future__ import annotations

from typing import Any

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised in a process without torch
    raise ImportError(
        "testbed.torch needs PyTorch, which is not installed: pip install 'convtranspose-testbed[torch]' torch==2.13.0"
    ) from exc

from . import api
from .backward import conv_transpose_backward
from .problem import LAYOUTS_BY_RANK

__all__ = ["ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "conv_transpose"]


def _layout(tensor: torch.Tensor, rank: int) -> str:
    """The testbed layout of a batched ``(N, C, *spatial)`` tensor's memory: channels last when the channels are
    the innermost axis and the tensor is not plainly contiguous, channels first otherwise."""
    first, last = LAYOUTS_BY_RANK[rank]
    if tensor.dim() == rank + 2 and not tensor.is_contiguous():
        if tensor.permute(0, *range(2, rank + 2), 1).is_contiguous():
            return last
    return first


def _to_layout(tensor: torch.Tensor, layout: str, rank: int) -> torch.Tensor:
    """``tensor`` (logical ``(N, C, *spatial)``) seen in ``layout``: a permuted view for channels last."""
    return tensor.permute(0, *range(2, rank + 2), 1) if layout.endswith("C") and tensor.dim() == rank + 2 else tensor


def _from_layout(tensor: torch.Tensor, layout: str, rank: int) -> torch.Tensor:
    """A result in ``layout`` seen as ``(N, C, *spatial)``: a permuted view for channels last."""
    if layout.endswith("C") and tensor.dim() == rank + 2:
        return tensor.permute(0, rank + 1, *range(1, rank + 1))
    return tensor


def _numpy(tensor: torch.Tensor | None, name: str) -> Any:
    """The tensor's memory as a NumPy array (no copy): CPU tensors only."""
    if tensor is None:
        return None
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.device.type != "cpu":
        raise TypeError(f"{name} must be a CPU tensor (testbed.torch computes on the host), got device {tensor.device}")
    return tensor.detach().resolve_conj().resolve_neg().numpy()


class _ConvTransposeFunction(torch.autograd.Function):
    """Forward: ``testbed.conv_transpose{rank}d``; backward: ``testbed.conv_transpose_backward`` asked only for the
    gradients autograd needs (``ctx.needs_input_grad``)."""

    @staticmethod
    def forward(
        ctx: Any,
        input: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        params: tuple[Any, ...],
        backend: Any,
    ) -> torch.Tensor:
        rank = weight.dim() - 2
        layout = _layout(input, rank)
        stride, padding, output_padding, groups, dilation = params
        result = api._conv_transpose(
            rank,
            _numpy(_to_layout(input, layout, rank), "input"),
            _numpy(weight, "weight"),
            _numpy(bias, "bias"),
            stride,
            padding,
            output_padding,
            groups,
            dilation,
            backend,
            None,
            None,
            layout,
        )
        ctx.save_for_backward(input, weight)
        ctx.params, ctx.backend, ctx.layout, ctx.rank = params, backend, layout, rank
        return _from_layout(torch.from_numpy(result), layout, rank)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        input, weight = ctx.saved_tensors
        mask = tuple(bool(flag) for flag in ctx.needs_input_grad[:3])
        if not any(mask):
            return None, None, None, None, None
        layout, rank = ctx.layout, ctx.rank
        gradients = conv_transpose_backward(
            _numpy(_to_layout(grad_output, layout, rank), "grad_output"),
            _numpy(_to_layout(input, layout, rank), "input"),
            _numpy(weight, "weight"),
            *ctx.params,
            output_mask=mask,
            backend=ctx.backend,
            layout=layout,
        )
        grad_input, grad_weight, grad_bias = (None if g is None else torch.from_numpy(g) for g in gradients)
        if grad_input is not None:
            grad_input = _from_layout(grad_input, layout, rank)
        return grad_input, grad_weight, grad_bias, None, None


def conv_transpose(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
    *,
    backend: api.BackendLike | None = None,
) -> torch.Tensor:
    """``torch.nn.functional.conv_transpose1d/2d/3d`` (the weight's rank says which) computed by a testbed backend,
    differentiable in ``input``, ``weight`` and ``bias``.

    Parameters
    ----------
    input, weight, bias, stride, padding, output_padding, groups, dilation
        As for :func:`torch.nn.functional.conv_transpose2d`: CPU tensors of float32 or float64.
    backend : str, Backend or None, optional
        The testbed backend of the forward and of both gradients (:func:`testbed.conv_transpose_backward`); None:
        the enclosing :func:`testbed.use_backend` block's, read when the forward runs (the backward uses the same),
        else ``"auto"``, which chooses per direction.

    Returns
    -------
    torch.Tensor
        The result, sharing memory with the NumPy array the backend returned; channels last where the input is.

    Raises
    ------
    TypeError, ValueError, testbed.UnsupportedConfiguration, testbed.BackendUnavailable
        As the testbed functions raise them; TypeError for tensors not on the CPU.
    """
    chosen = backend if backend is not None else api._SCOPED_BACKEND.get() or "auto"
    params = (stride, padding, output_padding, groups, dilation)
    result: torch.Tensor = _ConvTransposeFunction.apply(input, weight, bias, params, chosen)
    return result


class _Bridge:
    """The ``forward`` shared by the three modules: PyTorch's ``output_size`` handling, then :func:`conv_transpose`
    on :attr:`backend`."""

    backend: api.BackendLike | None
    _spatial_rank: int

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        module: Any = self
        if module.padding_mode != "zeros":
            raise ValueError(f"Only 'zeros' padding mode is supported for {type(self).__name__}")
        # PyTorch's own helper: output_size picks output_padding exactly as torch.nn.ConvTranspose{n}d does
        output_padding = module._output_padding(
            input, output_size, module.stride, module.padding, module.kernel_size, self._spatial_rank, module.dilation
        )
        return conv_transpose(
            input,
            module.weight,
            module.bias,
            module.stride,
            module.padding,
            output_padding,
            module.groups,
            module.dilation,
            backend=self.backend,
        )


class ConvTranspose1d(_Bridge, torch.nn.ConvTranspose1d):
    """``torch.nn.ConvTranspose1d`` computed by a testbed backend (``backend=``, default ``auto``).

    Same arguments, parameters and state-dict keys as PyTorch's module; ``backend`` is a registered testbed
    backend name, a :class:`testbed.Backend`, or None (the :func:`testbed.use_backend` scope, else ``auto``).
    """

    _spatial_rank = 1

    def __init__(self, *args: Any, backend: api.BackendLike | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backend = backend

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"


class ConvTranspose2d(_Bridge, torch.nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` computed by a testbed backend (``backend=``, default ``auto``).

    Same arguments, parameters and state-dict keys as PyTorch's module (a state dict saved from
    ``torch.nn.ConvTranspose2d`` loads unchanged); ``backend`` as for :class:`ConvTranspose1d`.
    """

    _spatial_rank = 2

    def __init__(self, *args: Any, backend: api.BackendLike | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backend = backend

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"


class ConvTranspose3d(_Bridge, torch.nn.ConvTranspose3d):
    """``torch.nn.ConvTranspose3d`` computed by a testbed backend (``backend=``, default ``auto``); as
    :class:`ConvTranspose2d`."""

    _spatial_rank = 3

    def __init__(self, *args: Any, backend: api.BackendLike | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backend = backend

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"
