"""The backward pass of the transposed convolution: :func:`conv_transpose_backward`, after ATen's
``convolution_backward``.

For ``y = conv_transpose(x, W) + b`` and a loss ``L`` with ``grad_output = dL/dy``, with ``G`` groups,
``Ci = C_in / G``, ``Co = C_out / G``, stride ``s``, padding ``p``, dilation ``d`` (per spatial axis) and the sums
over the taps ``k`` whose output position ``o = i·s - p + k·d`` lies inside the output:

.. math::

    \\frac{\\partial L}{\\partial x}[n, gCi + c_i, i] = \\sum_{c_o, k} g_y[n, gCo + c_o, i s - p + k d]\\,
        W[gCi + c_i, c_o, k]

    \\frac{\\partial L}{\\partial W}[gCi + c_i, c_o, k] = \\sum_{n, i} x[n, gCi + c_i, i]\\,
        g_y[n, gCo + c_o, i s - p + k d]

    \\frac{\\partial L}{\\partial b}[c] = \\sum_{n, o} g_y[n, c, o]

The data gradient is the strided convolution ``conv(grad_output, W)`` with the same parameters (the adjoint of the
forward, Dumoulin & Visin 2016, section 4); the weight gradient is a correlation of the input with the output
gradient, a GEMM of shape ``(C_in/G) × (C_out/G · prod(kernel))`` reduced over every input pixel of the batch.
oneDNN names the three directions ``FWD``, ``BWD_D`` and ``BWD_W``; here they are
:data:`testbed.registry.DIRECTIONS`.

Each backend declares the backward directions it computes (:attr:`testbed.Backend.backward_data`,
:attr:`~testbed.Backend.backward_weight`) with its own algorithm; ``auto`` chooses per direction. The bias
gradient is one reduction of ``grad_output`` (float64 accumulation for float32), the same for every backend, so it
is computed here, as ATen's generic path does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from .api import _SCOPED_BACKEND, BackendLike, IntOrPair, _as_array, _check_out, _problem_of_call, _runner
from .problem import Problem
from .registry import Backend, get_backend, layout_axes

__all__ = ["Gradients", "conv_transpose_backward"]

#: The entries of :class:`Gradients`, in order, with the direction that computes each (None: the bias reduction).
_ENTRIES = (("grad_input", "backward_data"), ("grad_weight", "backward_weight"), ("grad_bias", None))


class Gradients(NamedTuple):
    """The result of :func:`conv_transpose_backward`: a tuple ``(grad_input, grad_weight, grad_bias)``, each None
    where ``output_mask`` did not ask for it."""

    grad_input: Any
    grad_weight: Any
    grad_bias: Any


def _mask(output_mask: Any) -> tuple[bool, bool, bool]:
    if (
        isinstance(output_mask, (str, bytes))
        or not isinstance(output_mask, Sequence)
        or len(output_mask) != 3
        or not all(isinstance(flag, (bool, np.bool_)) for flag in output_mask)
    ):
        raise TypeError(
            f"output_mask must be a sequence of 3 bools (grad_input, grad_weight, grad_bias), got {output_mask!r}"
        )
    return bool(output_mask[0]), bool(output_mask[1]), bool(output_mask[2])


def _outs(out: Any, mask: tuple[bool, bool, bool]) -> tuple[Any, Any, Any]:
    if out is None:
        return None, None, None
    if isinstance(out, np.ndarray) or not isinstance(out, Sequence) or len(out) != 3:
        raise TypeError(
            f"out must be a 3-tuple (grad_input, grad_weight, grad_bias) of arrays or None, got {type(out).__name__}"
        )
    for (name, _), given, wanted in zip(_ENTRIES, out, mask):
        if given is not None and not wanted:
            raise ValueError(f"out.{name} is given but output_mask does not ask for {name}")
    return out[0], out[1], out[2]


def conv_transpose_backward(
    grad_output: npt.ArrayLike,
    input: npt.ArrayLike,
    weight: npt.ArrayLike,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    output_padding: IntOrPair = 0,
    groups: int = 1,
    dilation: IntOrPair = 1,
    *,
    output_mask: Sequence[bool] = (True, True, True),
    backend: BackendLike | None = None,
    layout: str | None = None,
    out: Sequence[Any] | None = None,
) -> Gradients:
    """The gradients of ``conv_transpose1d/2d/3d(input, weight, bias, ...)`` (the weight's rank says which) with
    respect to the input, the weight and the bias, given the gradient of the output: ATen's
    ``convolution_backward(..., transposed=True)``.

    Parameters
    ----------
    grad_output : array_like
        ``dL/dy``, of exactly the forward's output shape (:func:`testbed.output_shape`): ``(N, C_out, *out_size)``,
        or ``(C_out, *out_size)`` when ``input`` is unbatched; channels last with a channels-last ``layout``.
    input : array_like, shape (N, C_in, *in_size) or (C_in, *in_size)
        The forward's input (read only for the weight gradient; its shape always sets the problem).
    weight : array_like, shape (C_in, C_out / groups, *kernel)
        The forward's weight; ``weight.ndim - 2`` is the spatial rank (1, 2 or 3).
    stride, padding, output_padding, groups, dilation
        The forward's, as for :func:`testbed.conv_transpose2d` (``output_padding`` fixes the output size: pass
        the one the forward used, or the one its ``output_size`` chose).
    output_mask : sequence of 3 bools, default (True, True, True)
        Which of ``(grad_input, grad_weight, grad_bias)`` to compute; the others are None (as ATen's
        ``output_mask``). ``grad_bias`` is asked for whether or not the forward had a bias.
    backend : str, Backend or None, optional
        As for :func:`testbed.conv_transpose2d`. A named backend must declare every direction asked for
        (:attr:`Backend.directions`: ``backward_data`` for ``grad_input``, ``backward_weight`` for
        ``grad_weight``); ``"auto"`` chooses one per direction (:func:`testbed.resolve_backend` with
        ``direction=``).
    layout : str, optional
        The layout of ``grad_output``, ``input`` and ``grad_input``, as for the forward (default channels first).
    out : 3-tuple of arrays or None, optional
        Where to write ``(grad_input, grad_weight, grad_bias)`` (a :class:`Gradients` or any 3-sequence; None
        entries are allocated): each entry under the forward's ``out`` rules (exact shape and dtype, writable, on
        the input's device, sharing no memory with ``grad_output``, ``input``, ``weight`` or another entry), and
        given only where ``output_mask`` asks for it.

    Returns
    -------
    Gradients
        ``(grad_input, grad_weight, grad_bias)``: ``grad_input`` of ``input``'s shape and layout (C-contiguous),
        ``grad_weight`` of ``weight``'s shape, ``grad_bias`` of shape ``(C_out,)``, in the input's dtype; None
        where not asked for; the ``out`` entries themselves where given.

    Raises
    ------
    ValueError
        For an invalid configuration (the forward's messages), a ``grad_output`` of another shape than the
        forward's output (naming both), an ``out`` entry given where not asked for, or an unknown backend.
    TypeError
        For unsupported or mixed dtypes (``grad_output`` must have the input's), a malformed ``output_mask`` or
        ``out``, or CUDA device arrays (the backward takes host arrays; ``backend="numba_cuda"`` computes it
        on the GPU, copying them in and the gradients out).
    UnsupportedConfiguration
        If the chosen backend does not compute an asked direction, or this configuration; ``"auto"`` never does.
    BackendUnavailable
        If the chosen backend cannot run here.

    See Also
    --------
    conv_transpose2d : the forward.
    resolve_backend : the backend of each direction (``direction="backward_data"`` / ``"backward_weight"``).
    testbed.torch : ``torch.nn.ConvTranspose1d/2d/3d`` running forward and backward on a testbed backend.

    Notes
    -----
    The data gradient is the strided convolution ``conv(grad_output, W)``; the weight gradient the correlation
    ``Σ_{n,i} x[n, c_i, i] · grad_output[n, c_o, i·s - p + k·d]`` (formulas in :mod:`testbed.backward`). An empty
    batch gives an empty ``grad_input`` and zero weight and bias gradients. Arguments are never modified.

    Examples
    --------
    The data gradient of an up-convolution with kernel = stride sums each output block against the kernel:

    >>> import numpy as np
    >>> import testbed
    >>> x, w = np.ones((1, 1, 2, 2)), np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    >>> g = np.ones((1, 1, 4, 4))
    >>> gi, gw, gb = testbed.conv_transpose_backward(g, x, w, stride=2, backend="naive")
    >>> gi[0, 0]
    array([[10., 10.],
           [10., 10.]])
    >>> gw[0, 0], gb
    (array([[4., 4.],
           [4., 4.]]), array([16.]))
    >>> testbed.conv_transpose_backward(g, x, w, stride=2, output_mask=(False, True, False)).grad_input is None
    True
    """
    mask = _mask(output_mask)
    outs = _outs(out, mask)
    impl = get_backend(backend if backend is not None else _SCOPED_BACKEND.get() or "auto")
    problem, x, w, _ = _problem_of_call(
        input,
        weight,
        None,
        stride,
        padding,
        output_padding,
        groups,
        dilation,
        None,
        on_device_ok=False,  # host arrays only: numba_cuda's backward copies them to the GPU and back
        layout=layout,
    )
    unbatched = x.ndim == problem.rank + 1
    go = _as_array(grad_output, "grad_output", on_device_ok=False)
    if go.dtype != problem.dtype:
        raise TypeError(
            f"grad_output dtype ({go.dtype}) must match the input dtype ({problem.dtype}); cast one of them"
        )
    expected = problem.output_shape[1:] if unbatched else problem.output_shape
    if tuple(go.shape) != expected:
        raise ValueError(
            f"grad_output must have the forward's output shape {expected} (layout {problem.layout}), got "
            f"{tuple(go.shape)}"
        )
    runners = {
        direction: _runner(impl, problem, False, direction)
        for (_, direction), wanted in zip(_ENTRIES, mask)
        if wanted and direction is not None
    }
    shapes = (
        problem.input_shape[1:] if unbatched else problem.input_shape,
        problem.weight_shape,
        (problem.out_channels,),
    )
    operands = {"grad_output": grad_output, "input": input, "weight": weight}
    for (name, _), given, shape in zip(_ENTRIES, outs, shapes):
        if given is not None:
            others = {f"out.{other}": o for (other, _), o in zip(_ENTRIES, outs) if o is not None and o is not given}
            _check_out(given, shape, problem.dtype, False, {**operands, **others}, f"out.{name}", name)
    if unbatched:
        x, go = x.reshape((1, *x.shape)), go.reshape((1, *go.shape))
    results: list[Any] = [None, None, None]
    if "backward_data" in runners:
        results[0] = _data_gradient(runners["backward_data"], go, w, problem, outs[0], unbatched)
    if "backward_weight" in runners:
        results[1] = _weight_gradient(runners["backward_weight"], go, x, problem, outs[1])
    if mask[2]:
        results[2] = _bias_gradient(go, problem, outs[2])
    return Gradients(*results)


def _native(backend: Backend, problem: Problem, *arrays: np.ndarray) -> tuple[Problem, list[np.ndarray]]:
    """The problem in ``backend``'s native layout and ``arrays`` (batched, in ``problem.layout``) as C-contiguous
    arrays in it: the same arrays when the layout is native, transposed copies otherwise."""
    native = problem.with_(layout=backend.native_layout(problem))
    axes = layout_axes(problem.layout, native.layout)
    return native, [np.ascontiguousarray(a if native.layout == problem.layout else a.transpose(axes)) for a in arrays]


def _data_gradient(
    backend: Backend, go: np.ndarray, w: np.ndarray, problem: Problem, out: Any, unbatched: bool
) -> np.ndarray:
    if problem.batch == 0:
        grad = np.zeros(problem.input_shape, problem.dtype)
    else:
        assert backend.backward_data is not None  # resolved for this direction
        native, (go_native,) = _native(backend, problem, go)
        grad = backend.backward_data(go_native, np.ascontiguousarray(w), native)
        grad = grad.transpose(layout_axes(native.layout, problem.layout))
    if unbatched:
        grad = grad.reshape(grad.shape[1:])
    if out is None:
        return np.ascontiguousarray(grad)
    np.copyto(out, grad)
    return out


def _weight_gradient(backend: Backend, go: np.ndarray, x: np.ndarray, problem: Problem, out: Any) -> np.ndarray:
    if problem.batch == 0:
        grad = np.zeros(problem.weight_shape, problem.dtype)
    else:
        assert backend.backward_weight is not None  # resolved for this direction
        native, (go_native, x_native) = _native(backend, problem, go, x)
        grad = backend.backward_weight(go_native, x_native, native)
    if out is None:
        return np.ascontiguousarray(grad)
    np.copyto(out, grad)
    return out


def _bias_gradient(go: np.ndarray, problem: Problem, out: Any) -> np.ndarray:
    """``Σ_{n, o} grad_output[n, c, o]``: float64 accumulation (NumPy's pairwise sum per chunk) for float32,
    rounded once, so the float32 bias gradient carries one rounding whatever the output size."""
    channel = go.ndim - 1 if problem.channels_last else 1
    axes = tuple(a for a in range(go.ndim) if a != channel)
    grad = go.sum(axis=axes, dtype=np.float64).astype(problem.dtype)  # an empty batch sums to +0.0
    if out is None:
        return grad
    np.copyto(out, grad)
    return out
