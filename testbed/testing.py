"""Testing helpers for ``conv_transpose1d/2d/3d`` and their backends (after ``numpy.testing`` and
``torch.testing``).

One definition, used by the tests, the experiments and the benchmarks, of

- the **oracle**: the ``naive`` backend (the scatter definition) computed in float64 on the inputs widened
  exactly to float64, at the weight's spatial rank (:func:`oracle`);
- the **error metric**: the relative L2 error ``‖y - ref‖₂ / ‖ref‖₂`` in float64 (:func:`relative_error`);
- the **tolerances** a result must meet, per dtype (:data:`TOLERANCES`, :func:`tolerance`), and assertions
  with a useful message (:func:`assert_close`, :func:`assert_close_to_oracle`);
- the **adjoint**: the forward convolution whose adjoint is the transposed convolution, written independently
  of every backend, at every rank (:func:`conv_adjoint`; :func:`conv2d_adjoint` for 2-D), and the
  adjoint-identity residual (:func:`adjoint_residual`);
- the **call** that reproduces a :class:`~testbed.Problem` (:func:`call_kwargs`).

Library code: it needs NumPy only (no pytest, no torch).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from .api import conv_transpose1d, conv_transpose2d, conv_transpose3d
from .problem import SUPPORTED_DTYPES, Problem

__all__ = [
    "TOLERANCES",
    "adjoint_residual",
    "assert_close",
    "assert_close_to_oracle",
    "call_kwargs",
    "conv2d_adjoint",
    "conv_adjoint",
    "oracle",
    "relative_error",
    "tolerance",
]

#: Largest relative L2 error (:func:`relative_error`) a correct backend may show against the float64 oracle,
#: per compute dtype: a few hundred units of rounding of float32 (2⁻²⁴ ≈ 6e-8), and of float64 (1.1e-16),
#: enough for sums of a few thousand products in any order.
TOLERANCES: Mapping[np.dtype, float] = MappingProxyType({np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12})


def tolerance(dtype) -> float:
    """The relative L2 error allowed for a result computed in ``dtype``.

    Parameters
    ----------
    dtype : dtype-like
        ``float32`` or ``float64`` (anything :class:`numpy.dtype` accepts).

    Returns
    -------
    float
        ``1e-5`` for float32, ``1e-12`` for float64 (:data:`TOLERANCES`).

    Raises
    ------
    TypeError
        For any other dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from testbed.testing import tolerance
    >>> tolerance("float32"), tolerance(np.float64)
    (1e-05, 1e-12)
    """
    dtype = np.dtype(dtype)
    if dtype not in TOLERANCES:
        raise TypeError(f"dtype must be one of {[str(d) for d in SUPPORTED_DTYPES]}, got {dtype}")
    return TOLERANCES[dtype]


def relative_error(actual, desired) -> float:
    """The relative L2 error ``‖actual - desired‖₂ / ‖desired‖₂``, computed in float64.

    Parameters
    ----------
    actual, desired : array_like
        Arrays of one shape. ``desired`` is the reference.

    Returns
    -------
    float
        The relative error; the absolute error ``‖actual - desired‖₂`` where ``desired`` is all zeros; NaN
        where either holds a NaN or an infinity.

    Raises
    ------
    ValueError
        If the shapes differ.

    Examples
    --------
    >>> from testbed.testing import relative_error
    >>> relative_error([3.0, 4.5], [3.0, 4.0])   # ‖(0, 0.5)‖ / ‖(3, 4)‖
    0.1
    >>> relative_error([1.0], [0.0])
    1.0
    """
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    if actual.shape != desired.shape:
        raise ValueError(f"actual and desired must have one shape, got {actual.shape} and {desired.shape}")
    scale = np.linalg.norm(desired)
    return float(np.linalg.norm(actual - desired) / (scale if scale else 1.0))


def _widened(value):
    return None if value is None else np.asarray(value, dtype=np.float64)


#: The transposed convolution of each spatial rank.
_CONV_TRANSPOSE: Mapping[int, Callable[..., Any]] = MappingProxyType(
    {1: conv_transpose1d, 2: conv_transpose2d, 3: conv_transpose3d}
)


def _conv_transpose_for(weight) -> Callable[..., Any]:
    """``conv_transpose1d``, ``2d`` or ``3d``: the one whose weight has ``weight``'s number of axes."""
    ndim = np.ndim(weight)
    if ndim - 2 not in _CONV_TRANSPOSE:
        raise ValueError(
            f"weight must be 3-D, 4-D or 5-D (C_in, C_out/groups, *kernel) for a 1-D, 2-D or 3-D transposed "
            f"convolution, got shape {np.shape(weight)}"
        )
    return _CONV_TRANSPOSE[ndim - 2]


def oracle(input, weight, bias=None, **params) -> np.ndarray:
    """The reference result: the ``naive`` backend (the scatter definition) in float64 on widened inputs.

    Widening float32 (or integer) inputs to float64 is exact, so the oracle is the transposed convolution of
    exactly the values a backend was given, with float64's rounding only; a float32 result's distance from
    it is the float32 computation's own rounding. The weight's number of axes gives the spatial rank
    (``conv_transpose1d`` for a 3-D weight, ``2d`` for 4-D, ``3d`` for 5-D).

    Parameters
    ----------
    input, weight, bias : array_like
        As for :func:`testbed.conv_transpose2d`, :func:`~testbed.conv_transpose1d` or
        :func:`~testbed.conv_transpose3d` (host arrays; ``bias`` may be None).
    **params
        ``stride``, ``padding``, ``output_padding``, ``groups``, ``dilation``, ``output_size``, ``layout``: as for
        :func:`testbed.conv_transpose2d` (see :func:`call_kwargs` to get them from a
        :class:`~testbed.Problem`).

    Returns
    -------
    numpy.ndarray
        The float64 result, of the shape :func:`testbed.output_shape` gives.

    See Also
    --------
    assert_close_to_oracle : compare a result with the oracle.

    Examples
    --------
    >>> import numpy as np
    >>> from testbed.testing import oracle
    >>> oracle(np.float32([[[[1.0, 2.0]]]]), [[[[1.0, -1.0]]]], stride=2)
    array([[[[ 1., -1.,  2., -2.]]]])
    >>> oracle(np.float32([[[1.0, 2.0]]]), [[[1.0, -1.0]]], stride=2)              # 1-D: a 3-D weight
    array([[[ 1., -1.,  2., -2.]]])
    """
    conv_transpose = _conv_transpose_for(weight)
    return conv_transpose(_widened(input), _widened(weight), _widened(bias), backend="naive", **params)


def assert_close(actual, desired, *, rtol: float | None = None, err_msg: str = "") -> None:
    """Raise ``AssertionError`` unless ``actual`` has ``desired``'s shape and ``relative_error ≤ rtol``.

    A NaN or an infinity in either array fails (compare the finite parts, and where the others are, apart).

    Parameters
    ----------
    actual : array_like
        The result under test.
    desired : array_like
        The reference.
    rtol : float, optional
        The largest relative L2 error allowed; by default ``tolerance(actual.dtype)`` (float64's for
        integer or other non-float32 results).
    err_msg : str, optional
        Prepended to the failure message (e.g. the backend and case).

    Raises
    ------
    AssertionError
        With the relative error, the tolerance, the largest absolute difference and where it is, and the
        counts of non-finite values where they differ.

    Examples
    --------
    >>> import numpy as np
    >>> from testbed.testing import assert_close
    >>> assert_close(np.float32([1.0, 2.0]), [1.0, 2.0 + 1e-7])
    >>> assert_close([1.0, 2.1], [1.0, 2.0], err_msg="demo")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    AssertionError: demo: relative L2 error 0.0447 exceeds the tolerance 1e-12 (float64); largest |difference| ...
    """
    actual_arr, desired_arr = np.asarray(actual), np.asarray(desired)
    if rtol is None:
        dtype = actual_arr.dtype if actual_arr.dtype in TOLERANCES else np.dtype(np.float64)
        rtol, what = tolerance(dtype), f" ({dtype})"
    else:
        what = ""
    prefix = f"{err_msg}: " if err_msg else ""
    if actual_arr.shape != desired_arr.shape:
        raise AssertionError(f"{prefix}shape {actual_arr.shape} differs from the reference's {desired_arr.shape}")
    error = relative_error(actual_arr, desired_arr)
    if error <= rtol:
        return
    a64, d64 = actual_arr.astype(np.float64), desired_arr.astype(np.float64)
    details = []
    nonfinite_a, nonfinite_d = ~np.isfinite(a64), ~np.isfinite(d64)
    if not np.array_equal(nonfinite_a, nonfinite_d):
        details.append(
            f"non-finite values at {int(nonfinite_a.sum())} positions, the reference at {int(nonfinite_d.sum())}"
        )
    finite = ~(nonfinite_a | nonfinite_d)
    if finite.any():
        diff = np.where(finite, np.abs(a64 - d64), -1.0)
        where = np.unravel_index(int(np.argmax(diff)), diff.shape)
        details.append(
            f"largest |difference| {diff[where]:.3g} at index {tuple(int(i) for i in where)}, "
            f"actual {a64[where]:.6g}, desired {d64[where]:.6g}"
        )
    raise AssertionError(
        f"{prefix}relative L2 error {error:.3g} exceeds the tolerance {rtol:g}{what}; " + "; ".join(details)
    )


def assert_close_to_oracle(
    actual, input, weight, bias=None, *, rtol: float | None = None, err_msg: str = "", **params
) -> None:
    """Raise ``AssertionError`` unless ``actual`` is ``conv_transpose2d(input, weight, bias, **params)``
    to within the tolerance of its dtype, by the float64 :func:`oracle`.

    Parameters
    ----------
    actual : array_like
        The result under test. Its dtype must be the call's (the input's; float64 for integer input).
    input, weight, bias : array_like
        The arguments the result was computed from.
    rtol : float, optional
        The largest relative L2 error allowed; by default ``tolerance(actual.dtype)``.
    err_msg : str, optional
        Prepended to the failure message.
    **params
        The call's keyword arguments (``stride``, ``padding``, ...).

    Raises
    ------
    AssertionError
        If the dtype, the shape or the values differ (see :func:`assert_close`).

    Examples
    --------
    >>> import numpy as np
    >>> import testbed
    >>> from testbed.testing import assert_close_to_oracle
    >>> x, w = np.ones((1, 2, 3, 3), np.float32), np.ones((2, 1, 2, 2), np.float32)
    >>> y = testbed.conv_transpose2d(x, w, stride=2, backend="col2im")
    >>> assert_close_to_oracle(y, x, w, stride=2)
    """
    input_dtype = np.asarray(input).dtype
    expected_dtype = np.dtype(np.float64) if input_dtype.kind in "iub" else input_dtype
    prefix = f"{err_msg}: " if err_msg else ""
    if np.asarray(actual).dtype != expected_dtype:
        raise AssertionError(
            f"{prefix}result dtype {np.asarray(actual).dtype}, expected {expected_dtype} (the input's)"
        )
    assert_close(actual, oracle(input, weight, bias, **params), rtol=rtol, err_msg=err_msg)


def call_kwargs(problem: Problem) -> dict[str, Any]:
    """The keyword arguments of :func:`testbed.conv_transpose2d` (or ``1d``/``3d``, at ``problem.rank``) that
    reproduce ``problem``.

    Parameters
    ----------
    problem : testbed.Problem
        A validated configuration, of any spatial rank.

    Returns
    -------
    dict
        ``stride``, ``padding``, ``output_padding``, ``groups``, ``dilation`` and ``layout``, the per-axis ones as
        tuples of ``problem.rank`` ints; the arrays' shapes and dtype carry the rest.

    Examples
    --------
    >>> import testbed
    >>> from testbed.testing import call_kwargs
    >>> problem = testbed.Problem(batch=1, in_channels=4, in_size=5, out_channels=2, kernel_size=3, stride=2)
    >>> call_kwargs(problem)
    {'stride': (2, 2), 'padding': (0, 0), 'output_padding': (0, 0), 'groups': 1, 'dilation': (1, 1),
     'layout': 'NCHW'}
    >>> call_kwargs(testbed.Problem(batch=1, in_channels=4, in_size=(5,), out_channels=2, kernel_size=3, stride=4,
    ...                             layout="NLC"))
    {'stride': (4,), 'padding': (0,), 'output_padding': (0,), 'groups': 1, 'dilation': (1,), 'layout': 'NLC'}
    """
    return {
        "stride": problem.stride,
        "padding": problem.padding,
        "output_padding": problem.output_padding,
        "groups": problem.groups,
        "dilation": problem.dilation,
        "layout": problem.layout,
    }


def conv_adjoint(z, weight, problem: Problem) -> np.ndarray:
    """``Tᵀz``: the adjoint of the transposed convolution ``T`` of ``problem``, i.e. the forward strided
    convolution (conv1d, conv2d or conv3d: ``problem.rank``).

    For weight ``W`` ``(C_in, C_out/groups, *kernel)``, ``conv_transpose{1,2,3}d`` is the linear map
    ``T: x ↦ y``; its adjoint is the strided, padded, dilated, grouped cross-correlation (PyTorch's
    ``F.conv{1,2,3}d(z, W, stride=s, padding=p, dilation=d, groups=g)``, ``W`` read as a forward weight of
    ``C_in`` output and ``C_out/groups`` input channels). With ``a`` running over the spatial axes::

        (Tᵀz)[n, g·Ci_g + ci, i_1, ..., i_r] = Σ_{co, k_1, ..., k_r} W[g·Ci_g + ci, co, k_1, ..., k_r]
                                         · z[n, g·Co_g + co, i_1·s_1 - p_1 + k_1·d_1, ..., i_r·s_r - p_r + k_r·d_r]

    with taps outside ``z`` counting as zero. Written from this formula (per tap, the outputs it lands on
    read at stride ``s`` along every axis — :meth:`Problem.landing`, so memory follows the output, never the
    uncropped canvas — and one channel contraction), independently of every backend. Only the input positions
    the transposed convolution reads are computed, so ``output_padding`` ≥ stride (allowed when below the
    dilation) needs no special case.

    Parameters
    ----------
    z : array_like
        ``problem.output_shape``: ``(N, C_out, *out_size)``, or ``(N, *out_size, C_out)`` in a channels-last
        layout.
    weight : array_like
        ``problem.weight_shape``: ``(C_in, C_out/groups, *kernel)``.
    problem : testbed.Problem
        The transposed convolution's configuration, of any rank and layout.

    Returns
    -------
    numpy.ndarray
        ``problem.input_shape`` in float64 (in the problem's layout), C-contiguous.

    Raises
    ------
    ValueError
        If ``z`` or ``weight`` does not have the problem's shape.

    Notes
    -----
    ``<Tᵀz, x> = <z, T x>`` for every ``x`` and ``z``: the transposed convolution multiplies by ``Cᵀ`` where
    the forward convolution multiplies by ``C`` (Dumoulin & Visin, "A guide to convolution arithmetic for deep
    learning", 2016, ch. 4). :func:`adjoint_residual` measures how well a backend's ``T x`` satisfies it.

    Examples
    --------
    >>> import numpy as np
    >>> import testbed
    >>> from testbed.testing import conv_adjoint
    >>> problem = testbed.Problem(batch=1, in_channels=1, in_size=(2,), out_channels=1, kernel_size=(2,), stride=2)
    >>> conv_adjoint(np.arange(4.0).reshape(1, 1, 4), [[[1.0, -1.0]]], problem)
    array([[[-1., -1.]]])
    >>> problem = testbed.Problem(batch=1, in_channels=1, in_size=(1, 1, 2), out_channels=1, kernel_size=1,
    ...                           stride=(1, 1, 2), layout="NDHWC")
    >>> conv_adjoint(np.arange(3.0).reshape(1, 1, 1, 3, 1), [[[[[2.0]]]]], problem)[..., 0]
    array([[[[0., 4.]]]])
    """
    z = np.asarray(z, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    if z.shape != problem.output_shape:
        raise ValueError(f"z must have the transposed convolution's output shape {problem.output_shape}, got {z.shape}")
    if weight.shape != problem.weight_shape:
        raise ValueError(f"weight must have the problem's weight shape {problem.weight_shape}, got {weight.shape}")
    if problem.channels_last:
        z = np.moveaxis(z, -1, 1)  # (N, C_out, *out_size): the formula's order
    n, g = problem.batch, problem.groups
    cig, cog = problem.in_per_group, problem.out_per_group
    grouped = z.reshape(n, g, cog, *problem.out_size)
    taps_weight = weight.reshape(g, cig, cog, -1)  # the taps in C order: itertools.product's order
    out = np.zeros((n, g, cig, *problem.in_size))
    for flat_tap, taps in enumerate(itertools.product(*(range(k) for k in problem.kernel_size))):
        landed = [problem.landing(axis, tap) for axis, tap in enumerate(taps)]
        spans = [span for span in landed if span is not None]
        if len(spans) < problem.rank:  # the tap lands outside the output along some axis: its terms are zero
            continue
        inputs: tuple[Any, ...] = (Ellipsis, *(into for into, _ in spans))
        outputs: tuple[Any, ...] = (Ellipsis, *(read for _, read in spans))
        out[inputs] += np.einsum("ngo...,gio->ngi...", grouped[outputs], taps_weight[..., flat_tap])
    out = out.reshape(n, problem.in_channels, *problem.in_size)
    return np.ascontiguousarray(np.moveaxis(out, 1, -1)) if problem.channels_last else out


def conv2d_adjoint(z, weight, problem: Problem) -> np.ndarray:
    """:func:`conv_adjoint` of a 2-D problem: PyTorch's ``F.conv2d(z, W, stride, padding, dilation, groups)``.

    Parameters
    ----------
    z, weight, problem
        As for :func:`conv_adjoint`; ``problem.rank`` must be 2.

    Returns
    -------
    numpy.ndarray
        ``problem.input_shape`` (``(N, C_in, H, W)`` in NCHW) in float64.

    Raises
    ------
    ValueError
        If ``problem`` is not 2-D, or as :func:`conv_adjoint`.

    Examples
    --------
    >>> import numpy as np
    >>> import testbed
    >>> from testbed.testing import conv2d_adjoint
    >>> problem = testbed.Problem(batch=1, in_channels=1, in_size=(1, 2), out_channels=1, kernel_size=(1, 2),
    ...                           stride=2)
    >>> conv2d_adjoint(np.arange(4.0).reshape(1, 1, 1, 4), [[[[1.0, -1.0]]]], problem)
    array([[[[-1., -1.]]]])
    """
    if problem.rank != 2:
        raise ValueError(
            f"conv2d_adjoint takes 2-D problems, got a {problem.rank}-D one (layout {problem.layout!r}); "
            f"use conv_adjoint"
        )
    return conv_adjoint(z, weight, problem)


def adjoint_residual(x, weight, y, z, problem: Problem) -> float:
    """``|<Tᵀz, x> - <z, y>| / (‖z‖·‖y‖)`` for ``y`` a backend's bias-free ``T x``, in float64 (any rank).

    Parameters
    ----------
    x : array_like
        The input, ``problem.input_shape`` (e.g. ``(N, C_in, H, W)``).
    weight : array_like
        The weight ``(C_in, C_out/groups, *kernel)``.
    y : array_like
        The backend's result for ``x`` and ``weight`` without bias (``T x`` is linear only without it).
    z : array_like
        Any array of the output's shape (e.g. standard normal).
    problem : testbed.Problem
        The configuration, of any rank and layout (``x``, ``y`` and ``z`` in its layout).

    Returns
    -------
    float
        The residual. The scale is the Cauchy–Schwarz bound of ``<z, y>``, so the residual is at most about
        the relative error of ``y``, i.e. within :func:`tolerance` of its dtype for a correct backend. The
        absolute difference where ``z`` or ``y`` is zero.

    Examples
    --------
    >>> import numpy as np
    >>> import testbed
    >>> from testbed.testing import adjoint_residual, call_kwargs, tolerance
    >>> problem = testbed.Problem(batch=1, in_channels=2, in_size=4, out_channels=3, kernel_size=3, stride=2)
    >>> x, w, _ = problem.random_arrays(0)
    >>> y = testbed.conv_transpose2d(x, w, backend="col2im", **call_kwargs(problem))
    >>> z = np.random.default_rng(1).standard_normal(y.shape)
    >>> adjoint_residual(x, w, y, z, problem) < tolerance(y.dtype)
    True
    >>> problem = testbed.Problem(batch=1, in_channels=2, in_size=(3, 4, 2), out_channels=3,
    ...                           kernel_size=(2, 3, 1), stride=(1, 2, 3))                        # 3-D
    >>> x, w, _ = problem.random_arrays(0)
    >>> y = testbed.conv_transpose3d(x, w, backend="naive", **call_kwargs(problem))
    >>> adjoint_residual(x, w, y, np.random.default_rng(1).standard_normal(y.shape), problem) < 1e-12
    True
    """
    y = np.asarray(y, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    lhs = np.vdot(conv_adjoint(z, weight, problem).ravel(), np.asarray(x, dtype=np.float64).ravel())
    rhs = np.vdot(z.ravel(), y.ravel())
    scale = np.linalg.norm(z) * np.linalg.norm(y)
    return float(abs(lhs - rhs) / scale) if scale > 0 else float(abs(lhs - rhs))
