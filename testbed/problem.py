"""The one place where a transposed-convolution call is validated and its shapes are derived.

Every backend receives a :class:`Problem` and never re-derives shapes or re-checks arguments.

Notation (PyTorch's, see ``torch.nn.ConvTranspose2d``): input ``(N, C_in, H, W)``, weight
``(C_in, C_out/groups, kH, kW)``, output ``(N, C_out, H_out, W_out)`` with, per spatial dimension,

    H_out = (H - 1)·s - 2·p + d·(k - 1) + op + 1

(Dumoulin & Visin, "A guide to convolution arithmetic for deep learning", 2016, relationship 14,
written with PyTorch's padding/output_padding/dilation conventions).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Problem",
    "UnsupportedConfiguration",
    "output_shape",
    "pair",
    "spatial",
    "LAYOUTS",
    "LAYOUTS_BY_RANK",
    "RANKS",
    "SUPPORTED_DTYPES",
    "WORKSPACE_BYTES",
]

#: Memory layouts of the input and output: ``"NCHW"`` (channels first, PyTorch's default) or ``"NHWC"``
#: (channels last: TensorFlow's default ``data_format``, PyTorch's ``channels_last``). The weight is always
#: ``(C_in, C_out/groups, kH, kW)``.
LAYOUTS = ("NCHW", "NHWC")

#: The layouts of each spatial rank, channels first then channels last: ``"NCL"``/``"NLC"`` (1-D, PyTorch's and
#: TensorFlow's ``data_format="NWC"``), ``"NCHW"``/``"NHWC"`` (2-D), ``"NCDHW"``/``"NDHWC"`` (3-D). Backends
#: declare the 2-D names (:attr:`Backend.layouts`), which stand for channels first / channels last at every rank.
LAYOUTS_BY_RANK = {1: ("NCL", "NLC"), 2: LAYOUTS, 3: ("NCDHW", "NDHWC")}
#: The spatial ranks a problem may have (``conv_transpose1d``, ``2d``, ``3d``).
RANKS = tuple(LAYOUTS_BY_RANK)
_RANK_OF_LAYOUT = {layout: rank for rank, pair_ in LAYOUTS_BY_RANK.items() for layout in pair_}
#: The letters that name the spatial axes of each rank, in errors and signatures.
_AXES = {1: "l", 2: "hw", 3: "dhw"}

#: dtypes the backends compute in; integer arrays are promoted to float64 first.
SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: Every size and index a backend computes must fit a signed 64-bit integer (NumPy's and Numba's index type).
INT64_MAX = 2**63 - 1

#: Temporary buffers a backend may hold at once beyond twice the call's own arrays (see
#: :attr:`Problem.workspace_limit`): larger intermediates are computed in blocks under the limit, or the backend
#: declines the configuration (UnsupportedConfiguration naming the size it would need).
WORKSPACE_BYTES = 256 * 2**20


class UnsupportedConfiguration(ValueError):
    """A backend cannot compute a configuration that is itself valid (e.g. ``kron`` with stride != kernel).

    Parameters
    ----------
    backend : str
        The backend's name.
    reason : str
        What it does not support (its :meth:`Backend.unsupported_reason`).

    Attributes
    ----------
    backend, reason : str
        As given.

    See Also
    --------
    Backend.unsupported_reason : the same reason, without raising.

    Notes
    -----
    A ``ValueError``, so code that handles bad arguments handles it too; ``"auto"`` never raises it.

    Examples
    --------
    >>> import numpy as np
    >>> import testbed
    >>> try:
    ...     testbed.conv_transpose2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)), stride=2, backend="kron")
    ... except testbed.UnsupportedConfiguration as exc:
    ...     print(exc.backend, "|", exc.reason)
    kron | needs stride == kernel size and dilation 1, ...
    """

    def __init__(self, backend: str, reason: str):
        self.backend = backend
        self.reason = reason
        super().__init__(f"backend {backend!r} does not support this configuration: {reason}")


def _expected(rank: int) -> str:
    return {2: "an int or a pair of ints"}.get(rank, f"an int or a {rank}-tuple of ints")


def spatial(value, name: str, *, minimum: int, rank: int = 2) -> tuple[int, ...]:
    """``value`` as ``rank`` ints (one per spatial axis) in ``[minimum, 2**63 - 1]``; ``name`` is the argument
    named in errors.

    Accepted: an int (Python or NumPy integer, not bool), used for every axis, or a ``rank``-item tuple, list,
    ``torch.Size`` or 1-D integer NumPy array of ints. Anything else (sets, dicts, strings, bytes, generators,
    floats...) is a TypeError: an unordered or accidental iterable must not silently become a size.
    """
    if type(value) is tuple and all(type(v) is int for v in value):  # the common case, checked cheaply
        items = value
    else:
        items = (value,) * rank if _is_int(value) else _int_sequence(value, name, _expected(rank))
    if len(items) != rank:
        raise TypeError(f"{name} must be {_expected(rank)}, got {value!r}")
    if min(items) < minimum:
        what = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name} must be {what} (>= {minimum}), got {value!r}")
    if max(items) > INT64_MAX:
        raise ValueError(f"{name} must be at most 2**63 - 1 (int64), got {value!r}")
    return items


def pair(value, name: str, *, minimum: int) -> tuple[int, int]:
    """:func:`spatial` for the two axes of a 2-D problem: ``value`` as an ``(h, w)`` pair."""
    return spatial(value, name, minimum=minimum, rank=2)  # type: ignore[return-value]


def _int_sequence(value, name: str, expected: str) -> tuple[int, ...]:
    """The ints of a tuple, list, ``torch.Size`` or 1-D integer array; TypeError naming ``name`` otherwise."""
    is_int_array = isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "iu"
    # torch.Size is a tuple; sets, dicts, strings, bytes, generators... are not sequences of ints here.
    if not (is_int_array or (isinstance(value, (tuple, list)) and all(_is_int(v) for v in value))):
        raise TypeError(
            f"{name} must be {expected}, got {value!r} ({type(value).__name__}; a sequence is a "
            f"tuple, list, torch.Size or 1-D integer array of ints)"
        )
    return tuple(int(v) for v in (value.tolist() if is_int_array else value))


def _is_int(value) -> bool:
    # (a plain int first: the ABC check below costs a microsecond, and a call validates a few dozen values)
    return type(value) is int or (isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)))


def _check_layout(layout, rank: int) -> None:
    allowed = LAYOUTS_BY_RANK[rank]
    if not isinstance(layout, str) or layout not in allowed:
        where = "" if rank == 2 else f" for a {rank}-D transposed convolution"
        raise ValueError(f"layout must be one of {allowed}{where}, got {layout!r}")


def _check_rank(rank, name: str = "rank") -> int:
    if not _is_int(rank) or rank not in RANKS:
        raise ValueError(f"{name} must be one of {RANKS} (the number of spatial axes), got {rank!r}")
    return int(rank)


def is_channels_last(layout: str) -> bool:
    """Whether ``layout`` (any rank) keeps the channels last: ``"NLC"``, ``"NHWC"``, ``"NDHWC"``."""
    return layout.endswith("C")


def _to_channels_first(shape, layout: str):
    """A shape in ``layout`` as (N, C, *spatial)."""
    return tuple(shape) if not is_channels_last(layout) else (shape[0], shape[-1], *shape[1:-1])


def _from_channels_first(shape, layout: str):
    """An (N, C, *spatial) shape in ``layout``."""
    return tuple(shape) if not is_channels_last(layout) else (shape[0], *shape[2:], shape[1])


def _extent(size: int, kernel: int, stride: int, padding: int, output_padding: int, dilation: int) -> int:
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def output_shape(
    input_shape: Sequence[int],
    weight_shape: Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    output_padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    *,
    layout: str | None = None,
) -> tuple[int, ...]:
    """The shape of ``conv_transpose2d(input, weight, ...)`` (or of ``conv_transpose1d``/``3d``: the weight's rank
    says which), without computing it.

    Parameters
    ----------
    input_shape : sequence of int
        ``(N, C_in, H, W)``, or unbatched ``(C_in, H, W)``; ``(N, H, W, C_in)`` / ``(H, W, C_in)`` with
        ``layout="NHWC"``.
    weight_shape : sequence of int
        ``(C_in, C_out / groups, kH, kW)``; ``(C_in, C_out / groups, kL)`` for 1-D, ``(..., kD, kH, kW)`` for 3-D
        (the input then has one spatial axis fewer or more).
    stride, padding, output_padding, dilation : int or tuple of int
        As for :func:`conv_transpose2d`, one entry per spatial axis.
    groups : int, default 1
        As for :func:`conv_transpose2d`.
    layout : str, optional
        The layout of the input and the output (:data:`LAYOUTS_BY_RANK`); default channels first (``"NCHW"``,
        ``"NCL"``, ``"NCDHW"``).

    Returns
    -------
    tuple of int
        ``(N, C_out, H_out, W_out)``, or ``(C_out, H_out, W_out)`` for an unbatched ``input_shape``; in NHWC
        ``(N, H_out, W_out, C_out)`` or ``(H_out, W_out, C_out)``.

    Raises
    ------
    ValueError, TypeError
        For an invalid configuration, with the same messages as :func:`conv_transpose2d`.

    See Also
    --------
    conv_transpose2d : computes the result.

    Notes
    -----
    Per spatial axis, with stride ``s``, padding ``p``, dilation ``d``, kernel size ``k`` and output padding
    ``op``:

    .. math::

        H_{out} = (H - 1)s - 2p + d(k - 1) + op + 1

    (Dumoulin & Visin, "A guide to convolution arithmetic for deep learning", arXiv:1603.07285, 2016,
    relationship 14, in PyTorch's conventions), and ``C_out = groups · weight_shape[1]``.

    Examples
    --------
    The first U-Net up-convolution doubles the image size and halves the channels:

    >>> import testbed
    >>> testbed.output_shape((1, 1024, 28, 28), (1024, 512, 2, 2), stride=2)
    (1, 512, 56, 56)
    >>> testbed.output_shape((64, 32, 32), (64, 1, 4, 4), stride=2, padding=1, groups=64)
    (64, 64, 64)
    >>> testbed.output_shape((1, 28, 28, 1024), (1024, 512, 2, 2), stride=2, layout="NHWC")
    (1, 56, 56, 512)
    >>> testbed.output_shape((1, 512, 100), (512, 256, 16), stride=8, padding=4)       # HiFi-GAN, 1-D
    (1, 256, 800)
    """
    problem = Problem.from_shapes(
        tuple(input_shape),
        tuple(weight_shape),
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        dilation=dilation,
        groups=groups,
        layout=layout,
    )
    return problem.output_shape if len(input_shape) == problem.rank + 2 else problem.output_shape[1:]


@dataclass(frozen=True)
class Problem:
    """A validated configuration: every shape, parameter and the compute dtype of one call.

    :func:`conv_transpose2d` builds one from its arguments (:meth:`from_shapes`) and hands it to the backend;
    experiments and benchmarks build them directly to name a case without arrays.

    Parameters
    ----------
    batch : int
        ``N`` (0 allowed).
    in_channels, out_channels : int
        ``C_in`` and ``C_out``, both divisible by ``groups``.
    in_size : int or (int, int)
        ``(H, W)`` of the input.
    kernel_size : int or (int, int)
        ``(kH, kW)``.
    stride, padding, output_padding, dilation : int or (int, int)
        As for :func:`conv_transpose2d`; normalised to pairs.
    groups : int, default 1
    dtype : dtype-like, default float64
        The compute dtype, float32 or float64.
    has_bias : bool, default False
    layout : {"NCHW", "NHWC"}, default "NCHW"
        The layout of the input and output arrays (:data:`LAYOUTS`); :attr:`input_shape` and
        :attr:`output_shape` are in it.

    Raises
    ------
    ValueError, TypeError
        For an invalid configuration, naming the argument, its value and what is expected.

    See Also
    --------
    output_shape : the output shape from array shapes.
    conv_transpose2d : computes a problem.

    Notes
    -----
    Per spatial axis ``H_out = (H - 1)·s - 2p + d·(k - 1) + op + 1`` (Dumoulin & Visin 2016, relationship 14),
    ``output_padding`` must be smaller than the stride or the dilation (PyTorch's rule), and the output must be
    non-empty. Derived sizes (``out_size``, ``output_shape``, ``weight_shape``, ``flops``, ...) are properties.

    Examples
    --------
    >>> import testbed
    >>> p = testbed.Problem(batch=1, in_channels=1024, in_size=28, out_channels=512, kernel_size=2, stride=2)
    >>> p.output_shape, p.weight_shape, p.is_nonoverlapping
    ((1, 512, 56, 56), (1024, 512, 2, 2), True)
    >>> testbed.Problem(batch=1, in_channels=4, in_size=8, out_channels=4, kernel_size=3, stride=2,
    ...                 output_padding=2)
    Traceback (most recent call last):
        ...
    ValueError: output_padding must be smaller than either stride or dilation, ...
    """

    batch: int
    in_channels: int
    in_size: tuple[int, ...]
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...] = 1  # type: ignore[assignment]  # an int means every axis; normalised to a tuple
    padding: tuple[int, ...] = 0  # type: ignore[assignment]
    output_padding: tuple[int, ...] = 0  # type: ignore[assignment]
    dilation: tuple[int, ...] = 1  # type: ignore[assignment]
    groups: int = 1
    dtype: np.dtype = field(default=np.dtype(np.float64))
    has_bias: bool = False
    layout: str = None  # type: ignore[assignment]  # None: channels first of the rank; normalised to a name
    rank: int = None  # type: ignore[assignment]  # None: inferred (see _inferred_rank); normalised to an int

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise in place once
        rank = self._inferred_rank()
        set_(self, "rank", rank)
        layout: str | None = self.layout
        set_(self, "layout", LAYOUTS_BY_RANK[rank][0] if layout is None else layout)
        _check_layout(self.layout, rank)
        set_(self, "stride", spatial(self.stride, "stride", minimum=1, rank=rank))
        set_(self, "padding", spatial(self.padding, "padding", minimum=0, rank=rank))
        set_(self, "output_padding", spatial(self.output_padding, "output_padding", minimum=0, rank=rank))
        set_(self, "dilation", spatial(self.dilation, "dilation", minimum=1, rank=rank))
        set_(self, "in_size", spatial(self.in_size, "input spatial size", minimum=1, rank=rank))
        set_(self, "kernel_size", spatial(self.kernel_size, "kernel size", minimum=1, rank=rank))
        set_(self, "dtype", np.dtype(self.dtype).newbyteorder("="))  # '>f8' computes as native float64
        if not _is_int(self.groups) or self.groups < 1:
            raise ValueError(f"groups must be a positive int, got {self.groups!r}")
        if not _is_int(self.batch) or self.batch < 0:
            raise ValueError(f"batch size must be a non-negative int, got {self.batch!r}")
        for name in ("in_channels", "out_channels"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.in_channels % self.groups:
            raise ValueError(f"input channels ({self.in_channels}) must be divisible by groups ({self.groups})")
        if self.out_channels % self.groups:
            raise ValueError(f"output channels ({self.out_channels}) must be divisible by groups ({self.groups})")
        if self.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        for axis, s, d, op in zip(self.axes, self.stride, self.dilation, self.output_padding):
            # PyTorch's rule (NaiveConvolutionTranspose2d.cpp): op < stride or op < dilation.
            if not (op < s or op < d):
                raise ValueError(
                    f"output_padding must be smaller than either stride or dilation, got "
                    f"output_padding={self.output_padding}, stride={self.stride}, "
                    f"dilation={self.dilation} (axis {axis})"
                )
        for axis, n, k, s, op, d, extent in zip(
            self.axes,
            self.in_size,
            self.kernel_size,
            self.stride,
            self.output_padding,
            self.dilation,
            self.canvas_size,
        ):
            if extent > INT64_MAX:
                raise ValueError(
                    f"stride {s}, dilation {d} and output_padding {op} place the taps of an input of "
                    f"size {n} with kernel {k} over {extent} positions (axis {axis}), beyond int64 "
                    f"(2**63 - 1); reduce stride or dilation"
                )
        for name in ("batch", "in_channels", "out_channels"):
            if getattr(self, name) > INT64_MAX:
                raise ValueError(f"{name} must be at most 2**63 - 1 (int64), got {getattr(self, name)}")
        if min(self.out_size) < 1:
            raise ValueError(
                f"the output would have a non-positive size {self.out_size} for input size "
                f"{self.in_size}, kernel {self.kernel_size}, stride {self.stride}, padding "
                f"{self.padding}, dilation {self.dilation}; reduce padding or enlarge the input"
            )
        out_bytes = math.prod(self.output_shape) * self.dtype.itemsize
        if out_bytes > INT64_MAX:
            raise ValueError(
                f"the output {self.output_shape} would take {out_bytes} bytes, beyond what int64 can "
                f"address; reduce stride, dilation or the batch"
            )

    def _inferred_rank(self) -> int:
        """The spatial rank: ``rank`` if given, else the layout's, else the length of the per-axis sequences
        given (which must agree), else 2. A layout of another rank than ``rank`` or than the sequences is refused
        here; a sequence of another length than ``rank`` is then refused by :func:`spatial`."""
        layout: str | None = self.layout
        given_rank: int | None = self.rank
        claims = {
            name: len(value)
            for name in ("in_size", "kernel_size", "stride", "padding", "output_padding", "dilation")
            if isinstance(value := getattr(self, name), (tuple, list, np.ndarray)) and len(value) in RANKS
        }
        if given_rank is not None:
            rank = _check_rank(given_rank)
            if layout is not None:
                _check_layout(layout, rank)
            return rank
        if layout is not None:
            if not isinstance(layout, str) or layout not in _RANK_OF_LAYOUT:
                raise ValueError(f"layout must be one of {tuple(_RANK_OF_LAYOUT)}, got {layout!r}")
            for name, length in claims.items():
                if length != _RANK_OF_LAYOUT[layout]:
                    raise ValueError(
                        f"layout must be one of {LAYOUTS_BY_RANK[length]} for the {length} spatial axes of "
                        f"{name}={getattr(self, name)!r}, got {layout!r}"
                    )
            return _RANK_OF_LAYOUT[layout]
        if len(set(claims.values())) > 1:
            said = ", ".join(f"{name} has {rank}" for name, rank in claims.items())
            raise ValueError(f"the per-axis arguments disagree on the number of spatial axes: {said}")
        return claims.popitem()[1] if claims else 2

    # ---- construction from arrays -------------------------------------------------------------------
    @classmethod
    def from_shapes(
        cls,
        input_shape,
        weight_shape,
        *,
        stride=1,
        padding=0,
        output_padding=0,
        dilation=1,
        groups=1,
        dtype=np.float64,
        has_bias=False,
        output_size=None,
        layout=None,
        rank=None,
    ) -> Problem:
        """Validate the shapes of a call and build its problem: the weight ``(C_in, C_out/groups, *kernel)`` has
        ``rank + 2`` axes (``rank`` inferred from it when None), the input ``rank + 2`` (batched) or ``rank + 1``
        (unbatched) in ``layout`` (default: channels first)."""
        if rank is None:
            rank = len(weight_shape) - 2
            if rank not in RANKS:
                raise ValueError(
                    f"weight must be 3-D, 4-D or 5-D (C_in, C_out/groups, *kernel) for a 1-D, 2-D or 3-D "
                    f"transposed convolution, got shape {tuple(weight_shape)}"
                )
        rank = _check_rank(rank)
        layout = LAYOUTS_BY_RANK[rank][0] if layout is None else layout
        _check_layout(layout, rank)
        spatial_names = {1: "L", 2: "H, W", 3: "D, H, W"}[rank]
        if len(input_shape) not in (rank + 1, rank + 2):
            first, last = (f"C_in, {spatial_names}", "") if not is_channels_last(layout) else (spatial_names, ", C_in")
            raise ValueError(
                f"input must be {rank + 2}-D (N, {first}{last}) or {rank + 1}-D ({first}{last}), got shape "
                f"{input_shape}"
            )
        if len(weight_shape) != rank + 2:
            kernel = {1: "kL", 2: "kH, kW", 3: "kD, kH, kW"}[rank]
            raise ValueError(f"weight must be {rank + 2}-D (C_in, C_out/groups, {kernel}), got shape {weight_shape}")
        batched = input_shape if len(input_shape) == rank + 2 else (1, *input_shape)
        batch, in_channels, *size = _to_channels_first(batched, layout)
        if weight_shape[0] != in_channels:
            raise ValueError(
                f"weight.shape[0] ({weight_shape[0]}) must equal the input's channel count "
                f"({in_channels}); weight is (C_in, C_out/groups, *kernel), got {weight_shape}"
            )
        if not _is_int(groups) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        if min(size) < 1:
            raise ValueError(f"input spatial size must be positive, got shape {input_shape}")
        kernel_size = tuple(weight_shape[2:])
        if min(kernel_size) < 1 or weight_shape[1] < 1:
            raise ValueError(f"weight must have positive C_out/groups and kernel sizes, got shape {weight_shape}")
        if output_size is not None:
            output_padding = cls._output_padding_for(
                output_size,
                output_padding,
                len(input_shape),
                tuple(size),
                kernel_size,
                stride,
                padding,
                dilation,
                layout,
            )
        return cls(
            batch=batch,
            in_channels=in_channels,
            in_size=tuple(size),
            out_channels=weight_shape[1] * groups,
            kernel_size=kernel_size,
            stride=stride,
            padding=padding,
            output_padding=output_padding,
            dilation=dilation,
            groups=groups,
            dtype=dtype,
            has_bias=has_bias,
            layout=layout,
            rank=rank,
        )

    @staticmethod
    def _output_padding_for(output_size, output_padding, ndim, in_size, kernel, stride, padding, dilation, layout):
        """The output_padding that yields ``output_size``, as ``ConvTranspose2d.forward(x, output_size)``."""
        rank = len(in_size)
        if (
            not (_is_int(output_padding) and output_padding == 0)
            and tuple(
                _int_sequence(output_padding, "output_padding", _expected(rank))
                if not _is_int(output_padding)
                else (output_padding,)
            )
            != (0,) * rank
        ):
            raise ValueError(
                f"give either output_size or output_padding, not both "
                f"(output_size={output_size!r}, output_padding={output_padding!r})"
            )
        size = _int_sequence(output_size, "output_size", "a sequence of ints")
        if len(size) == ndim:  # a full shape in the layout: only the spatial entries matter
            size = _to_channels_first(size if ndim == rank + 2 else (1, *size), layout)[2:]
        if len(size) != rank:
            raise ValueError(
                f"output_size must have {rank} spatial {'entry' if rank == 1 else 'entries'} (or {ndim} for a full "
                f"shape), got {output_size!r}"
            )
        stride = spatial(stride, "stride", minimum=1, rank=rank)
        padding = spatial(padding, "padding", minimum=0, rank=rank)
        dilation = spatial(dilation, "dilation", minimum=1, rank=rank)
        smallest = tuple(_extent(n, k, s, p, 0, d) for n, k, s, p, d in zip(in_size, kernel, stride, padding, dilation))
        largest = tuple(lo + s - 1 for lo, s in zip(smallest, stride))
        if not all(lo <= v <= hi for v, lo, hi in zip(size, smallest, largest)):
            raise ValueError(
                f"output_size {tuple(size)} is unreachable: valid sizes range from {smallest} to "
                f"{largest} for an input of spatial size {tuple(in_size)}"
            )
        return tuple(v - lo for v, lo in zip(size, smallest))

    # ---- derived shapes ------------------------------------------------------------------------------
    @property
    def axes(self) -> str:
        """The letters of the spatial axes in errors and signatures: ``"l"``, ``"hw"`` or ``"dhw"``."""
        return _AXES[self.rank]

    @property
    def channels_last(self) -> bool:
        """Whether :attr:`layout` keeps the channels last (``"NLC"``, ``"NHWC"``, ``"NDHWC"``)."""
        return is_channels_last(self.layout)

    @functools.cached_property
    def out_size(self) -> tuple[int, ...]:
        """Output extent per spatial axis (computed once: part of every call's cost)."""
        return tuple(
            _extent(n, k, s, p, op, d)
            for n, k, s, p, op, d in zip(
                self.in_size, self.kernel_size, self.stride, self.padding, self.output_padding, self.dilation
            )
        )

    @property
    def canvas_size(self) -> tuple[int, ...]:
        """Extent of the uncropped scatter target: every tap lands at ``i·s + k·d`` (``< (n-1)·s + d·(k-1) + 1``),
        plus ``output_padding`` entries that no tap reaches when ``padding`` is 0."""
        return tuple(
            (n - 1) * s + d * (k - 1) + 1 + op
            for n, k, s, op, d in zip(self.in_size, self.kernel_size, self.stride, self.output_padding, self.dilation)
        )

    def landing(self, axis: int, tap: int) -> tuple[slice, slice] | None:
        """Where tap ``tap`` of the kernel lands along spatial ``axis`` (0: the first spatial axis): ``(inputs,
        outputs)``, the input indices ``i`` whose ``o = i·s - p + tap·d`` falls inside the output and the step-``s``
        slice of those outputs; None when no input lands there. Backends that scatter use it to touch only outputs,
        never the uncropped canvas (whose size follows stride and padding, not the work)."""
        n, s, p, d, out = (
            self.in_size[axis],
            self.stride[axis],
            self.padding[axis],
            self.dilation[axis],
            self.out_size[axis],
        )
        offset = tap * d - p  # output index of input 0
        first = max(0, -(offset // s))  # smallest i with i·s + offset >= 0
        stop = min(n, (out - 1 - offset) // s + 1)  # past the largest i with i·s + offset < out
        if stop <= first:
            return None
        o_first = first * s + offset
        return slice(first, stop), slice(o_first, o_first + (stop - first - 1) * s + 1, s)

    def landing_inputs(self, axis: int) -> slice:
        """The input indices along ``axis`` that reach the output through some tap (an empty slice if none)."""
        spans = [span[0] for span in (self.landing(axis, k) for k in range(self.kernel_size[axis])) if span]
        if not spans:
            return slice(0, 0)
        return slice(min(sp.start for sp in spans), max(sp.stop for sp in spans))

    @property
    def workspace_limit(self) -> int:
        """Bytes of temporaries a backend may hold at once: twice the call's own arrays (:attr:`bytes_moved`), or
        :data:`WORKSPACE_BYTES` when that is larger. A backend whose intermediates would exceed it computes in
        blocks under it, or declines the configuration with the size it would need."""
        return max(WORKSPACE_BYTES, 2 * self.bytes_moved)

    def crop(self, canvas):
        """The output window ``canvas[..., p:p+H_out, p:p+W_out]`` (per spatial axis, the trailing ones) of a
        canvas-sized array."""
        window = (Ellipsis, *(slice(p, p + n) for p, n in zip(self.padding, self.out_size)))
        return canvas[window]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(N, C_in, *in_size)``, or ``(N, *in_size, C_in)`` channels last."""
        return _from_channels_first((self.batch, self.in_channels, *self.in_size), self.layout)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.in_channels, self.out_channels // self.groups, *self.kernel_size)

    @functools.cached_property
    def output_shape(self) -> tuple[int, ...]:
        """``(N, C_out, *out_size)``, or ``(N, *out_size, C_out)`` channels last."""
        return _from_channels_first((self.batch, self.out_channels, *self.out_size), self.layout)

    @property
    def in_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def is_depthwise(self) -> bool:
        return self.groups == self.in_channels and self.out_per_group == 1

    @property
    def is_nonoverlapping(self) -> bool:
        """stride == kernel, dilation 1: every input pixel owns its own kH×kW output block (U-Net up-conv)."""
        return self.stride == self.kernel_size and set(self.dilation) == {1}

    @property
    def flops(self) -> int:
        """Useful work 2·N·C_in·(C_out/groups)·H·W·kH·kW, over every spatial axis of the rank (no
        multiplications by inserted zeros)."""
        spatial_work = math.prod(self.in_size) * math.prod(self.kernel_size)
        return 2 * self.batch * self.in_channels * self.out_per_group * spatial_work

    @property
    def bytes_moved(self) -> int:
        """Input + weight + output, each read or written once."""
        count = math.prod(self.input_shape) + math.prod(self.weight_shape) + math.prod(self.output_shape)
        return count * self.dtype.itemsize

    def with_(self, **changes) -> Problem:
        """A copy with some fields replaced (validated again)."""
        from dataclasses import replace

        return replace(self, **changes)

    def random_arrays(self, rng: np.random.Generator | int | None = 0, *, integer: bool = False):
        """``(input, weight, bias)`` for this problem, standard normal (or small integers if ``integer``)."""
        rng = np.random.default_rng(rng)

        def draw(shape):
            if integer:
                return rng.integers(-3, 4, size=shape).astype(self.dtype)
            return rng.standard_normal(shape).astype(self.dtype)

        bias = draw((self.out_channels,)) if self.has_bias else None
        return draw(self.input_shape), draw(self.weight_shape), bias
