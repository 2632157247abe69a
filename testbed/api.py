"""The public entry points: :func:`conv_transpose2d`, the scoped backend selection :func:`use_backend`, and
:func:`resolve_backend`, which says which backend a call would run.

The backend of a call is, in order: its ``backend=`` argument; else the one chosen by the innermost enclosing
``with use_backend(...)`` block of the calling thread or asyncio task (a :class:`contextvars.ContextVar`);
else ``"auto"``. A dispatching backend (``auto``) then picks the backend that computes the call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from .problem import SUPPORTED_DTYPES, Problem, UnsupportedConfiguration
from .registry import DIRECTIONS, Backend, BackendUnavailable, get_backend, is_device_array

__all__ = ["conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "resolve_backend", "use_backend"]

#: An int used for every spatial axis, or one int per axis (an ``(h, w)`` pair in 2-D, ``(d, h, w)`` in 3-D).
IntOrPair: TypeAlias = int | Sequence[int]
#: A registered backend's name, or a :class:`~testbed.Backend` object.
BackendLike: TypeAlias = str | Backend

#: The backend selected by the innermost ``with use_backend(...)`` of this thread / asyncio task, or None.
_SCOPED_BACKEND: ContextVar[Backend | None] = ContextVar("testbed_scoped_backend", default=None)


def _as_array(value: Any, name: str, on_device_ok: bool) -> Any:
    """A float32/float64 array in native byte order (host) or the device array itself; integers promote to
    float64. Masked arrays are refused: a convolution has no meaning for masked entries, and NumPy would
    silently drop the mask."""
    if is_device_array(value):
        if not on_device_ok:
            raise TypeError(
                f"{name} is a CUDA device array, but the chosen backend runs on the host; "
                f"pass a NumPy array or choose a numba_cuda* backend"
            )
        dtype = np.dtype(value.dtype)
    else:
        if isinstance(value, (str, bytes)) or value is None:
            raise TypeError(f"{name} must be a real numeric array, got {type(value).__name__}")
        if isinstance(value, np.ma.MaskedArray):
            raise TypeError(
                f"{name} is a masked array; fill the masked entries first ({name}.filled(0.0)) or pass {name}.data"
            )
        value = np.asarray(value)
        dtype = value.dtype
        if not dtype.isnative:  # e.g. '>f8' read from a file: same values, native order
            dtype = dtype.newbyteorder("=")
            value = value.astype(dtype)
    if dtype.kind in "iu":
        if is_device_array(value):
            raise TypeError(f"{name} is an integer device array ({dtype}); convert it to float32/float64")
        return value.astype(np.float64)
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64 (integers are promoted to float64), got {dtype}")
    return value


def _device_byte_bounds(array: Any) -> tuple[int, int]:
    """``[lo, hi)`` device addresses a CUDA array (``__cuda_array_interface__``) may touch."""
    face = array.__cuda_array_interface__
    itemsize = np.dtype(face["typestr"]).itemsize
    shape = tuple(face["shape"])
    strides = face.get("strides") or tuple(
        int(np.prod(shape[i + 1 :], dtype=np.int64)) * itemsize for i in range(len(shape))
    )
    start = face["data"][0]
    if 0 in shape:
        return start, start
    low = start + sum(min(0, (n - 1) * s) for n, s in zip(shape, strides))
    return low, start + sum(max(0, (n - 1) * s) for n, s in zip(shape, strides)) + itemsize


def _shares_memory(a: Any, b: Any) -> bool:
    """``np.shares_memory`` for host (and simulator) arrays; overlapping address ranges for CUDA arrays."""
    if hasattr(a, "__cuda_array_interface__") and hasattr(b, "__cuda_array_interface__"):
        (a_lo, a_hi), (b_lo, b_hi) = _device_byte_bounds(a), _device_byte_bounds(b)
        return a_lo < b_hi and b_lo < a_hi
    if is_device_array(a) != is_device_array(b):
        return False
    return bool(np.shares_memory(a, b))


def _check_out(
    out: Any,
    shape: tuple[int, ...],
    dtype: np.dtype,
    on_device: bool,
    operands: dict[str, Any],
    name: str = "out",
    result: str = "the output",
) -> None:
    """``out`` must be where the input is (host or CUDA device), of the result's exact shape and dtype,
    writable, and share no memory with an operand (numpy's ``out=`` rules, minus its casting). ``name`` is the
    argument named in errors, ``result`` what it receives."""
    if on_device and not is_device_array(out):
        raise TypeError(f"{name} must be a CUDA device array when the input is one, got {type(out).__name__}")
    if not on_device and not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array (the input is on the host), got {type(out).__name__}")
    if tuple(out.shape) != shape:
        raise ValueError(f"{name} must have {result}'s shape {shape}, got {tuple(out.shape)}")
    if np.dtype(out.dtype) != dtype:
        raise TypeError(f"{name} must have the result's dtype {dtype}, got {np.dtype(out.dtype)}")
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        raise ValueError(f"{name} must be writable, got a read-only array")
    if on_device:
        from numba import cuda

        if not (out if hasattr(out, "is_c_contiguous") else cuda.as_cuda_array(out)).is_c_contiguous():
            raise ValueError(f"{name} must be C-contiguous when it is a CUDA device array")
    for operand_name, operand in operands.items():
        if operand is not None and _shares_memory(out, operand):
            raise ValueError(f"{name} must not share memory with {operand_name}")


def use_backend(backend: BackendLike) -> contextlib.AbstractContextManager[Backend]:
    """Run every :func:`conv_transpose2d` call without a ``backend=`` argument in a block with ``backend``.

    Parameters
    ----------
    backend : str or Backend
        A registered backend name (see :func:`list_backends`), ``"auto"``, or a :class:`Backend` object.

    Returns
    -------
    context manager
        Entering it selects the backend (and gives the :class:`Backend` object to ``as``); leaving it, also by an
        exception, restores the selection that was in force before. It also works as a function decorator.

    Raises
    ------
    ValueError
        If ``backend`` is not a registered name; raised here, before the block runs.

    See Also
    --------
    conv_transpose2d : reads the selection when its ``backend`` argument is None.
    resolve_backend : the backend a call would run, including the one ``auto`` chooses.
    scipy.fft.set_backend : the model for this context manager.

    Notes
    -----
    The selection lives in a :class:`contextvars.ContextVar`, so blocks nest (the innermost wins) and are local
    to the thread or asyncio task that entered them: other threads do not see it (a new thread starts with no
    selection, i.e. ``"auto"``, unless Python runs with ``-X thread_inherit_context``, the default of
    free-threaded 3.14 builds), and an asyncio task sees the selection in force where it was created and keeps
    its own changes to itself. An explicit ``backend=`` argument always takes precedence. Availability is
    checked when a call runs, as for ``backend=``: selecting ``"torch"`` without torch installed raises
    :class:`BackendUnavailable` from the first call in the block.

    Examples
    --------
    >>> import numpy as np
    >>> import testbed
    >>> x, w = np.ones((1, 2, 3, 3)), np.ones((2, 1, 2, 2))
    >>> with testbed.use_backend("col2im"):
    ...     y = testbed.conv_transpose2d(x, w, stride=2)                  # computed by col2im
    ...     print(testbed.resolve_backend(x, w, stride=2).name)
    ...     with testbed.use_backend("naive"):
    ...         print(testbed.resolve_backend(x, w, stride=2).name)      # the innermost block wins
    ...     print(testbed.resolve_backend(x, w, stride=2, backend="numba_cpu").name)   # the argument wins
    col2im
    naive
    numba_cpu
    >>> testbed.resolve_backend(x, w, stride=2).name                      # outside: auto's choice
    'numba_cpu'
    """
    return _scoped(get_backend(backend))


@contextlib.contextmanager
def _scoped(impl: Backend) -> Iterator[Backend]:
    token = _SCOPED_BACKEND.set(impl)
    try:
        yield impl
    finally:
        _SCOPED_BACKEND.reset(token)


def _problem_of_call(
    input: Any,
    weight: Any,
    bias: Any,
    stride: IntOrPair,
    padding: IntOrPair,
    output_padding: IntOrPair,
    groups: int,
    dilation: IntOrPair,
    output_size: Sequence[int] | None,
    on_device_ok: bool,
    layout: str | None = None,
    rank: int | None = None,
) -> tuple[Problem, Any, Any, Any]:
    """The validated problem of a call and its arrays, converted: ``(problem, input, weight, bias)``."""
    x = _as_array(input, "input", on_device_ok)
    w = _as_array(weight, "weight", on_device_ok)
    b = None if bias is None else _as_array(bias, "bias", on_device_ok)
    for name, arr in (("weight", w), ("bias", b)):
        if arr is not None and np.dtype(arr.dtype) != np.dtype(x.dtype):
            raise TypeError(
                f"{name} dtype ({np.dtype(arr.dtype)}) must match the input dtype "
                f"({np.dtype(x.dtype)}); cast one of them"
            )
    problem = Problem.from_shapes(
        tuple(x.shape),
        tuple(w.shape),
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        dilation=dilation,
        groups=groups,
        dtype=x.dtype,
        has_bias=b is not None,
        output_size=output_size,
        layout=layout,
        rank=rank,
    )
    if b is not None and tuple(b.shape) != (problem.out_channels,):
        raise ValueError(f"bias must have shape (C_out,) = ({problem.out_channels},), got {tuple(b.shape)}")
    return problem, x, w, b


def _prepare(
    input: Any,
    weight: Any,
    bias: Any,
    stride: IntOrPair,
    padding: IntOrPair,
    output_padding: IntOrPair,
    groups: int,
    dilation: IntOrPair,
    backend: BackendLike | None,
    output_size: Sequence[int] | None,
    layout: str | None,
    rank: int | None = None,
    direction: str = "forward",
) -> tuple[Backend, Problem, Any, Any, Any]:
    """Validate a call: ``(backend that runs it in direction, problem, input, weight, bias)``, arrays converted.

    The shared front half of :func:`conv_transpose2d`, :func:`testbed.conv_transpose_backward` and
    :func:`resolve_backend`: they cannot disagree. No backend computes a backward direction on CUDA device arrays
    yet, so there only ``device="cuda"`` backends (which then refuse the direction by name) accept them.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    impl = get_backend(backend if backend is not None else _SCOPED_BACKEND.get() or "auto")
    problem, x, w, b = _problem_of_call(
        input,
        weight,
        bias,
        stride,
        padding,
        output_padding,
        groups,
        dilation,
        output_size,
        on_device_ok=impl.device in ("cuda", "any") if direction == "forward" else impl.device == "cuda",
        layout=layout,
        rank=rank,
    )
    return _runner(impl, problem, is_device_array(x), direction), problem, x, w, b


def _runner(impl: Backend, problem: Problem, on_device: bool, direction: str) -> Backend:
    """The backend that computes ``problem`` in ``direction`` when ``impl`` is asked to: ``impl`` or, for a
    dispatcher, its choice. UnsupportedConfiguration / BackendUnavailable when ``impl`` cannot."""
    reason = impl.unsupported_reason(problem, direction)
    if reason is not None:
        raise UnsupportedConfiguration(impl.name, reason)
    ok, why = impl.probe()
    if not ok:
        raise BackendUnavailable(f"backend {impl.name!r} is unavailable here: {why}")
    return impl.resolve(problem, on_device, direction)


def resolve_backend(
    input: npt.ArrayLike,
    weight: npt.ArrayLike,
    bias: npt.ArrayLike | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    output_padding: IntOrPair = 0,
    groups: int = 1,
    dilation: IntOrPair = 1,
    *,
    backend: BackendLike | None = None,
    output_size: Sequence[int] | None = None,
    layout: str | None = None,
    direction: str = "forward",
) -> Backend:
    """The backend that ``conv_transpose2d`` (or ``1d``/``3d``: the weight's rank says which) would run with these
    arguments, without running it.

    Parameters
    ----------
    input, weight, bias, stride, padding, output_padding, groups, dilation, output_size, layout
        As for :func:`conv_transpose2d`, :func:`conv_transpose1d` or :func:`conv_transpose3d`. Only shapes,
        dtypes and whether the arrays are CUDA device arrays are read, so arrays from ``np.empty`` do.
    backend : str, Backend or None, optional
        As for :func:`conv_transpose2d`: None means the backend of the enclosing :func:`use_backend` block, or
        ``"auto"`` outside one.
    direction : {"forward", "backward_data", "backward_weight"}, default "forward"
        Which computation of the call (:data:`testbed.registry.DIRECTIONS`): the forward, or the gradient with
        respect to the input or the weight that :func:`testbed.conv_transpose_backward` computes. ``auto``
        chooses per direction among the backends that declare it.

    Returns
    -------
    Backend
        The backend that computes the call. For ``"auto"``, the backend it dispatches this configuration to
        (see :mod:`testbed.backends.auto`); for any other backend, that backend.

    Raises
    ------
    ValueError, TypeError
        On invalid arguments, exactly as :func:`conv_transpose2d` would.
    UnsupportedConfiguration
        If the named backend cannot compute this valid configuration (or does not compute ``direction``).
    BackendUnavailable
        If the named backend cannot run on this machine.

    See Also
    --------
    conv_transpose2d : runs the call.
    use_backend : selects the backend of a block of calls.
    get_backend : a backend by name, without a configuration.

    Notes
    -----
    ``conv_transpose2d`` validates its arguments and resolves its backend with the same code, then runs the
    backend returned here, so the answer is the backend that would run, not a prediction of it.

    Examples
    --------
    ``auto`` on a U-Net up-convolution (kernel 2, stride 2) and on a depthwise one:

    >>> import numpy as np
    >>> import testbed
    >>> x, w = np.empty((1, 128, 196, 196), np.float32), np.empty((128, 64, 2, 2), np.float32)
    >>> testbed.resolve_backend(x, w, stride=2).name
    'numba_cpu'
    >>> x, w = np.empty((1, 128, 64, 64), np.float32), np.empty((128, 1, 4, 4), np.float32)
    >>> testbed.resolve_backend(x, w, stride=2, padding=1, groups=128).name in ("torch", "numba_cpu")
    True
    >>> testbed.resolve_backend(x, w, stride=2, padding=1, groups=128, backend="col2im").name
    'col2im'
    >>> chosen = testbed.resolve_backend(x, w, stride=2, padding=1, groups=128, direction="backward_weight")
    >>> "backward_weight" in chosen.directions                            # auto chooses among those declaring it
    True
    """
    return _prepare(
        input,
        weight,
        bias,
        stride,
        padding,
        output_padding,
        groups,
        dilation,
        backend,
        output_size,
        layout,
        direction=direction,
    )[0]


def conv_transpose2d(
    input: npt.ArrayLike,
    weight: npt.ArrayLike,
    bias: npt.ArrayLike | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    output_padding: IntOrPair = 0,
    groups: int = 1,
    dilation: IntOrPair = 1,
    *,
    backend: BackendLike | None = None,
    output_size: Sequence[int] | None = None,
    out: Any = None,
    layout: str | None = None,
) -> npt.NDArray[np.floating[Any]]:
    """2-D transposed convolution with exactly the semantics of ``torch.nn.functional.conv_transpose2d``.

    Every input pixel scatters a copy of the kernel, scaled by the pixel, into the output at ``stride`` spacing;
    overlapping copies add up. It is the adjoint (transpose) of the strided convolution ``conv2d`` with the same
    parameters, the operator that upsamples in U-Net and in decoders.

    Parameters
    ----------
    input : array_like, shape (N, C_in, H, W) or (C_in, H, W)
        The input, batched or unbatched; ``(N, H, W, C_in)`` or ``(H, W, C_in)`` with ``layout="NHWC"``.
        A CUDA device array is accepted by the ``numba_cuda*`` backends and ``"auto"``.
    weight : array_like, shape (C_in, C_out / groups, kH, kW)
        The kernel, in PyTorch's layout for transposed convolutions.
    bias : array_like, shape (C_out,), optional
        Added to every output pixel of each output channel.
    stride : int or (int, int), default 1
        The spacing of the input pixels in the output (the upsampling factor).
    padding : int or (int, int), default 0
        Rows/columns cropped from each side of the full output (in PyTorch's words, ``dilation·(k - 1) -
        padding`` implicit zero padding of the input).
    output_padding : int or (int, int), default 0
        Rows/columns added on the bottom/right of the output; must be smaller than ``stride`` or ``dilation``.
    groups : int, default 1
        Input and output channels split into ``groups`` independent groups (``groups = C_in`` with
        ``C_out / groups = 1``: depthwise).
    dilation : int or (int, int), default 1
        The spacing between kernel taps.
    backend : str, Backend or None, optional
        The implementation: a name from :func:`list_backends`, ``"auto"`` (the fastest measured available
        backend for the configuration's class), or a :class:`Backend`. None (the default) uses the backend of
        the enclosing :func:`use_backend` block, or ``"auto"`` outside one.
    output_size : sequence of int, optional
        The spatial output size ``(H_out, W_out)`` (or a full output shape in ``layout``, whose spatial entries
        are used);
        chooses ``output_padding`` as ``torch.nn.ConvTranspose2d.forward(x, output_size=...)`` does. Give either
        this or a non-zero ``output_padding``.

    out : numpy.ndarray or CUDA device array, optional
        Where to write the result (numpy's convention): the exact output shape (unbatched input:
        ``(C_out, H_out, W_out)``) and the result's dtype, writable, sharing no memory with ``input``, ``weight``
        or ``bias``, on the input's device. The result is written into it and ``out`` is returned, so no output
        is allocated (backends that cannot compute in place copy into it).
    layout : {"NCHW", "NHWC"}, optional
        Default ``"NCHW"``. The memory layout of ``input``, ``out`` and the result: channels first (PyTorch's
        default) or channels last (TensorFlow's ``data_format="NHWC"``, PyTorch's ``channels_last``). The weight is
        ``(C_in, C_out / groups, kH, kW)`` in both. Backends compute the layouts they declare
        (:attr:`Backend.layouts`) natively; for the others the input is transposed on the way in and the result
        on the way out.

    Returns
    -------
    numpy.ndarray, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
        The result, in the input's dtype, unbatched when the input is; ``(N, H_out, W_out, C_out)`` or
        ``(H_out, W_out, C_out)`` in NHWC (C-contiguous). A CUDA device array when the input is
        one. ``out`` itself when given.

    Raises
    ------
    ValueError
        For an invalid configuration (wrong ranks, channel counts, non-positive stride or dilation, negative
        padding, too large ``output_padding``, an empty output, a wrong bias shape, an unreachable
        ``output_size``) or an unknown backend; the message names the argument, its value and what is expected.
    TypeError
        For unsupported dtypes (anything but float32, float64 and integers), or input, weight and bias of
        different dtypes after integer promotion.
    UnsupportedConfiguration
        If the chosen backend cannot compute this valid configuration (e.g. ``kron`` with stride ≠ kernel);
        ``"auto"`` never raises it.
    BackendUnavailable
        If the chosen backend cannot run on this machine (e.g. ``torch`` not installed, no CUDA GPU).

    See Also
    --------
    conv_transpose1d, conv_transpose3d : the same operator over one or three spatial axes.
    output_shape : the result's shape, without computing it.
    resolve_backend : the backend a call runs, including ``auto``'s choice.
    use_backend : select the backend of a block of calls.
    torch.nn.functional.conv_transpose2d : the reference semantics.

    Notes
    -----
    With ``G = groups``, ``Ci = C_in / G``, ``Co = C_out / G``, ``s`` the stride, ``p`` the padding and ``d`` the
    dilation (per spatial axis), for every group ``g`` and every tap that lands inside the output:

    .. math::

        y[n, gCo + c_o, i s - p + k d, j s - p + l d] \\mathrel{+}= x[n, gCi + c_i, i, j]\\, W[gCi + c_i, c_o, k, l]

    plus ``bias[c]`` on every pixel of channel ``c``, and per axis

    .. math::

        H_{out} = (H - 1)s - 2p + d(k_H - 1) + op + 1

    (Dumoulin & Visin [1]_, relationship 14, in PyTorch's conventions [2]_). float32 and float64 are computed in
    their own precision; integer arrays are promoted to float64, after which input, weight and bias must share
    one dtype (PyTorch's rule: no silent promotion). Inputs are never modified; non-contiguous and read-only
    arrays work; a batch of 0 gives an empty result of the right shape. NaN and inf propagate to the outputs the
    definition reaches (``fft``: to its whole output plane), and no backend returns ``-0.0`` (sums start at +0, the
    bias is added last, as in PyTorch's CPU results). A pair argument is an int, a tuple, a list, a ``torch.Size``
    or a 1-D integer array (a set, dict, string or generator is a ``TypeError``); parameters and sizes beyond int64
    are refused naming the argument; masked arrays are refused; non-native byte order is converted.

    References
    ----------
    .. [1] V. Dumoulin and F. Visin, "A guide to convolution arithmetic for deep learning",
       arXiv:1603.07285, 2016.
    .. [2] PyTorch, ``torch.nn.ConvTranspose2d``,
       https://pytorch.org/docs/stable/generated/torch.nn.ConvTranspose2d.html

    Examples
    --------
    With a 2×2 kernel and stride 2 every input pixel becomes its own 2×2 block, the kernel times the pixel:

    >>> import numpy as np
    >>> import testbed
    >>> x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])              # (N, C_in, H, W) = (1, 1, 2, 2)
    >>> w = np.array([[[[1.0, 10.0], [-1.0, 100.0]]]])          # (C_in, C_out, kH, kW) = (1, 1, 2, 2)
    >>> testbed.conv_transpose2d(x, w, stride=2)
    array([[[[  1.,  10.,   2.,  20.],
             [ -1., 100.,  -2., 200.],
             [  3.,  30.,   4.,  40.],
             [ -3., 300.,  -4., 400.]]]])

    With stride 1 the copies overlap and add up; ``padding`` crops the border:

    >>> testbed.conv_transpose2d(x, np.ones((1, 1, 2, 2)), stride=1)[0, 0]
    array([[ 1.,  3.,  2.],
           [ 4., 10.,  6.],
           [ 3.,  7.,  4.]])
    >>> testbed.conv_transpose2d(x, np.ones((1, 1, 2, 2)), stride=1, padding=1)[0, 0]
    array([[10.]])

    Any backend computes the same function; ``output_size`` picks ``output_padding``:

    >>> y = testbed.conv_transpose2d(x, w, stride=2, backend="naive", output_size=(5, 5))
    >>> y.shape, bool(np.array_equal(y[..., :4, :4], testbed.conv_transpose2d(x, w, stride=2)))
    ((1, 1, 5, 5), True)
    """
    return _conv_transpose(
        2, input, weight, bias, stride, padding, output_padding, groups, dilation, backend, output_size, out, layout
    )


def _conv_transpose(
    rank: int,
    input: Any,
    weight: Any,
    bias: Any,
    stride: IntOrPair,
    padding: IntOrPair,
    output_padding: IntOrPair,
    groups: int,
    dilation: IntOrPair,
    backend: BackendLike | None,
    output_size: Sequence[int] | None,
    out: Any,
    layout: str | None,
) -> Any:
    """The transposed convolution of spatial rank ``rank``: validate, resolve the backend, allocate, compute."""
    impl, problem, x, w, b = _prepare(
        input, weight, bias, stride, padding, output_padding, groups, dilation, backend, output_size, layout, rank
    )
    on_device = is_device_array(x)
    unbatched = len(x.shape) == rank + 1
    if out is not None:
        _check_out(
            out,
            problem.output_shape[1:] if unbatched else problem.output_shape,
            problem.dtype,
            on_device,
            {"input": input, "weight": weight, "bias": bias},
        )
    if unbatched:
        x = x.reshape((1, *x.shape))  # reshape, not x[None]: device arrays may not support None indexing
    if problem.batch == 0:
        if out is not None:
            return out
        y = np.zeros(problem.output_shape, dtype=problem.dtype)
        if on_device:
            from numba import cuda

            y = cuda.to_device(y)
    else:
        if not on_device:
            x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
            b = None if b is None else np.ascontiguousarray(b)
        # adding a leading length-1 axis is a view even of a non-contiguous array: the result lands in out
        y = impl.compute(x, w, b, problem, out=out.reshape((1, *out.shape)) if unbatched and out is not None else out)
        if out is not None:
            return out
    return y.reshape(tuple(y.shape[1:])) if unbatched else y


def conv_transpose1d(
    input: npt.ArrayLike,
    weight: npt.ArrayLike,
    bias: npt.ArrayLike | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    output_padding: IntOrPair = 0,
    groups: int = 1,
    dilation: IntOrPair = 1,
    *,
    backend: BackendLike | None = None,
    output_size: Sequence[int] | None = None,
    out: Any = None,
    layout: str | None = None,
) -> npt.NDArray[np.floating[Any]]:
    """1-D transposed convolution with exactly the semantics of ``torch.nn.functional.conv_transpose1d``.

    :func:`conv_transpose2d` over one spatial axis: every input sample scatters the kernel, scaled by it, at
    ``stride`` spacing; overlapping copies add up. It is how neural vocoders (HiFi-GAN, the VITS generator)
    upsample audio.

    Parameters
    ----------
    input : array_like, shape (N, C_in, L) or (C_in, L)
        ``(N, L, C_in)`` or ``(L, C_in)`` with ``layout="NLC"``.
    weight : array_like, shape (C_in, C_out / groups, kL)
    bias : array_like, shape (C_out,), optional
    stride, padding, output_padding, dilation : int or (int,)
    groups : int, default 1
    backend, output_size, out
        As for :func:`conv_transpose2d` (``output_size``: ``(L_out,)`` or a full output shape).
    layout : {"NCL", "NLC"}, optional
        Default ``"NCL"`` (channels first); ``"NLC"`` keeps the channels last (TensorFlow's ``"NWC"``).

    Returns
    -------
    numpy.ndarray, shape (N, C_out, L_out) or (C_out, L_out)
        ``L_out = (L - 1)·s - 2p + d·(kL - 1) + op + 1``; ``(N, L_out, C_out)`` in NLC.

    Raises
    ------
    ValueError, TypeError, UnsupportedConfiguration, BackendUnavailable
        As :func:`conv_transpose2d`; a backend that does not compute 1-D problems raises
        ``UnsupportedConfiguration`` saying so.

    See Also
    --------
    conv_transpose2d : the full description of the arguments and the definition.
    torch.nn.functional.conv_transpose1d : the reference semantics.

    Examples
    --------
    With kernel = stride every input sample becomes its own copy of the kernel:

    >>> import numpy as np
    >>> import testbed
    >>> testbed.conv_transpose1d(np.array([[[1.0, 2.0, 3.0]]]), np.array([[[1.0, -1.0]]]), stride=2)
    array([[[ 1., -1.,  2., -2.,  3., -3.]]])
    >>> testbed.output_shape((1, 512, 100), (512, 256, 16), stride=8, padding=4)     # HiFi-GAN's first up-sampling
    (1, 256, 800)
    """
    return _conv_transpose(
        1, input, weight, bias, stride, padding, output_padding, groups, dilation, backend, output_size, out, layout
    )


def conv_transpose3d(
    input: npt.ArrayLike,
    weight: npt.ArrayLike,
    bias: npt.ArrayLike | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    output_padding: IntOrPair = 0,
    groups: int = 1,
    dilation: IntOrPair = 1,
    *,
    backend: BackendLike | None = None,
    output_size: Sequence[int] | None = None,
    out: Any = None,
    layout: str | None = None,
) -> npt.NDArray[np.floating[Any]]:
    """3-D transposed convolution with exactly the semantics of ``torch.nn.functional.conv_transpose3d``.

    :func:`conv_transpose2d` over three spatial axes: the up-convolution of volumetric U-Nets (3D U-Net,
    V-Net, nnU-Net: kernel = stride = 2, every voxel becomes a 2×2×2 block).

    Parameters
    ----------
    input : array_like, shape (N, C_in, D, H, W) or (C_in, D, H, W)
        ``(N, D, H, W, C_in)`` or ``(D, H, W, C_in)`` with ``layout="NDHWC"``.
    weight : array_like, shape (C_in, C_out / groups, kD, kH, kW)
    bias : array_like, shape (C_out,), optional
    stride, padding, output_padding, dilation : int or (int, int, int)
    groups : int, default 1
    backend, output_size, out
        As for :func:`conv_transpose2d` (``output_size``: ``(D_out, H_out, W_out)`` or a full output shape).
    layout : {"NCDHW", "NDHWC"}, optional
        Default ``"NCDHW"`` (channels first); ``"NDHWC"`` keeps the channels last.

    Returns
    -------
    numpy.ndarray, shape (N, C_out, D_out, H_out, W_out) or (C_out, D_out, H_out, W_out)
        Per axis ``(n - 1)·s - 2p + d·(k - 1) + op + 1``; ``(N, D_out, H_out, W_out, C_out)`` in NDHWC.

    Raises
    ------
    ValueError, TypeError, UnsupportedConfiguration, BackendUnavailable
        As :func:`conv_transpose2d`; a backend that does not compute 3-D problems raises
        ``UnsupportedConfiguration`` saying so.

    See Also
    --------
    conv_transpose2d : the full description of the arguments and the definition.
    torch.nn.functional.conv_transpose3d : the reference semantics.

    Examples
    --------
    >>> import numpy as np
    >>> import testbed
    >>> x, w = np.ones((1, 320, 8, 8, 8), np.float32), np.ones((320, 256, 2, 2, 2), np.float32)
    >>> testbed.output_shape(x.shape, w.shape, stride=2)                              # nnU-Net's first up-sampling
    (1, 256, 16, 16, 16)
    >>> y = testbed.conv_transpose3d(np.arange(2.0).reshape(1, 1, 1, 1, 2), np.ones((1, 1, 2, 2, 2)), stride=2)
    >>> y[0, 0, 1]
    array([[0., 0., 1., 1.],
           [0., 0., 1., 1.]])
    """
    return _conv_transpose(
        3, input, weight, bias, stride, padding, output_padding, groups, dilation, backend, output_size, out, layout
    )
