"""The one place where a transposed-convolution call is validated and its shapes are derived.

Every backend receives a :class:`Problem` and never re-derives shapes or re-checks arguments.

Notation (PyTorch's, see ``torch.nn.ConvTranspose2d``): input ``(N, C_in, H, W)``, weight
``(C_in, C_out/groups, kH, kW)``, output ``(N, C_out, H_out, W_out)`` with, per spatial dimension,

    H_out = (H - 1)·s - 2·p + d·(k - 1) + op + 1

(Dumoulin & Visin, "A guide to convolution arithmetic for deep learning", 2016, relationship 14,
written with PyTorch's padding/output_padding/dilation conventions).
"""

from __future__ import annotations

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
    "LAYOUTS",
    "SUPPORTED_DTYPES",
    "WORKSPACE_BYTES",
]

#: Memory layouts of the input and output: ``"NCHW"`` (channels first, PyTorch's default) or ``"NHWC"``
#: (channels last: TensorFlow's default ``data_format``, PyTorch's ``channels_last``). The weight is always
#: ``(C_in, C_out/groups, kH, kW)``.
LAYOUTS = ("NCHW", "NHWC")

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


def pair(value, name: str, *, minimum: int) -> tuple[int, int]:
    """``value`` as an (h, w) pair of ints in ``[minimum, 2**63 - 1]``; ``name`` is the argument named in errors.

    Accepted: an int (Python or NumPy integer, not bool), or a 2-item tuple, list, ``torch.Size`` or 1-D integer
    NumPy array of ints. Anything else (sets, dicts, strings, bytes, generators, floats...) is a TypeError:
    an unordered or accidental iterable must not silently become a pair.
    """
    items = (value, value) if _is_int(value) else _int_sequence(value, name, "an int or a pair of ints")
    if len(items) != 2:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(items) < minimum:
        what = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name} must be {what} (>= {minimum}), got {value!r}")
    if max(items) > INT64_MAX:
        raise ValueError(f"{name} must be at most 2**63 - 1 (int64), got {value!r}")
    return items


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
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _check_layout(layout) -> None:
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def _to_nchw(shape, layout: str):
    """A 4-D shape in ``layout`` as (N, C, H, W)."""
    return tuple(shape) if layout == "NCHW" else (shape[0], shape[3], shape[1], shape[2])


def _from_nchw(shape, layout: str):
    """An (N, C, H, W) shape in ``layout``."""
    return tuple(shape) if layout == "NCHW" else (shape[0], shape[2], shape[3], shape[1])


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
    layout: str = "NCHW",
) -> tuple[int, ...]:
    """The shape of ``conv_transpose2d(input, weight, ...)``, without computing it.

    Parameters
    ----------
    input_shape : sequence of int
        ``(N, C_in, H, W)``, or unbatched ``(C_in, H, W)``; ``(N, H, W, C_in)`` / ``(H, W, C_in)`` with
        ``layout="NHWC"``.
    weight_shape : sequence of int
        ``(C_in, C_out / groups, kH, kW)``.
    stride, padding, output_padding, dilation : int or (int, int)
        As for :func:`conv_transpose2d`.
    groups : int, default 1
        As for :func:`conv_transpose2d`.
    layout : {"NCHW", "NHWC"}, default "NCHW"
        The layout of the input and the output.

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
    return problem.output_shape if len(input_shape) == 4 else problem.output_shape[1:]


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
    in_size: tuple[int, int]
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    output_padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    dtype: np.dtype = field(default=np.dtype(np.float64))
    has_bias: bool = False
    layout: str = "NCHW"

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise in place once
        set_(self, "stride", pair(self.stride, "stride", minimum=1))
        set_(self, "padding", pair(self.padding, "padding", minimum=0))
        set_(self, "output_padding", pair(self.output_padding, "output_padding", minimum=0))
        set_(self, "dilation", pair(self.dilation, "dilation", minimum=1))
        set_(self, "in_size", pair(self.in_size, "input spatial size", minimum=1))
        set_(self, "kernel_size", pair(self.kernel_size, "kernel size", minimum=1))
        set_(self, "dtype", np.dtype(self.dtype).newbyteorder("="))  # '>f8' computes as native float64
        if not _is_int(self.groups) or self.groups < 1:
            raise ValueError(f"groups must be a positive int, got {self.groups!r}")
        _check_layout(self.layout)
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
        for axis, s, d, op in zip("hw", self.stride, self.dilation, self.output_padding):
            # PyTorch's rule (NaiveConvolutionTranspose2d.cpp): op < stride or op < dilation.
            if not (op < s or op < d):
                raise ValueError(
                    f"output_padding must be smaller than either stride or dilation, got "
                    f"output_padding={self.output_padding}, stride={self.stride}, "
                    f"dilation={self.dilation} (axis {axis})"
                )
        for axis, n, k, s, op, d, extent in zip(
            "hw", self.in_size, self.kernel_size, self.stride, self.output_padding, self.dilation, self.canvas_size
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
        layout="NCHW",
    ) -> Problem:
        """Validate the shapes of a call (input 3-D or 4-D in ``layout``, weight 4-D) and build its problem."""
        _check_layout(layout)
        if len(input_shape) not in (3, 4):
            dims = "(N, C_in, H, W) or 3-D (C_in, H, W)" if layout == "NCHW" else "(N, H, W, C_in) or 3-D (H, W, C_in)"
            raise ValueError(f"input must be 4-D {dims}, got shape {input_shape}")
        if len(weight_shape) != 4:
            raise ValueError(f"weight must be 4-D (C_in, C_out/groups, kH, kW), got shape {weight_shape}")
        batch, in_channels, h, w = _to_nchw(input_shape if len(input_shape) == 4 else (1, *input_shape), layout)
        if weight_shape[0] != in_channels:
            raise ValueError(
                f"weight.shape[0] ({weight_shape[0]}) must equal the input's channel count "
                f"({in_channels}); weight is (C_in, C_out/groups, kH, kW), got {weight_shape}"
            )
        if not _is_int(groups) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        if h < 1 or w < 1:
            raise ValueError(f"input spatial size must be positive, got shape {input_shape}")
        kernel = (weight_shape[2], weight_shape[3])
        if min(kernel) < 1 or weight_shape[1] < 1:
            raise ValueError(f"weight must have positive C_out/groups, kH and kW, got shape {weight_shape}")
        if output_size is not None:
            output_padding = cls._output_padding_for(
                output_size, output_padding, len(input_shape), (h, w), kernel, stride, padding, dilation, layout
            )
        return cls(
            batch=batch,
            in_channels=in_channels,
            in_size=(h, w),
            out_channels=weight_shape[1] * groups,
            kernel_size=kernel,
            stride=stride,
            padding=padding,
            output_padding=output_padding,
            dilation=dilation,
            groups=groups,
            dtype=dtype,
            has_bias=has_bias,
            layout=layout,
        )

    @staticmethod
    def _output_padding_for(output_size, output_padding, ndim, in_size, kernel, stride, padding, dilation, layout):
        """The output_padding that yields ``output_size``, as ``ConvTranspose2d.forward(x, output_size)``."""
        if output_padding not in (0, (0, 0)):
            raise ValueError(
                f"give either output_size or output_padding, not both "
                f"(output_size={output_size!r}, output_padding={output_padding!r})"
            )
        size = _int_sequence(output_size, "output_size", "a sequence of ints")
        if len(size) == ndim:  # a full shape in the layout: only the spatial entries matter
            size = _to_nchw(size if ndim == 4 else (1, *size), layout)[2:]
        if len(size) != 2:
            raise ValueError(
                f"output_size must have 2 spatial entries (or {ndim} for a full shape), got {output_size!r}"
            )
        stride = pair(stride, "stride", minimum=1)
        padding = pair(padding, "padding", minimum=0)
        dilation = pair(dilation, "dilation", minimum=1)
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
    def out_size(self) -> tuple[int, int]:
        h, w = (
            _extent(n, k, s, p, op, d)
            for n, k, s, p, op, d in zip(
                self.in_size, self.kernel_size, self.stride, self.padding, self.output_padding, self.dilation
            )
        )
        return h, w

    @property
    def canvas_size(self) -> tuple[int, int]:
        """Extent of the uncropped scatter target: every tap lands at ``ih·s + kh·d`` (``< (H-1)·s + d·(k-1) + 1``),
        plus ``output_padding`` rows/columns that no tap reaches when ``padding`` is 0."""
        h, w = (
            (n - 1) * s + d * (k - 1) + 1 + op
            for n, k, s, op, d in zip(self.in_size, self.kernel_size, self.stride, self.output_padding, self.dilation)
        )
        return h, w

    def landing(self, axis: int, tap: int) -> tuple[slice, slice] | None:
        """Where tap ``tap`` of the kernel lands along ``axis`` (0: rows, 1: columns): ``(inputs, outputs)``, the
        input indices ``i`` whose ``o = i·s - p + tap·d`` falls inside the output and the step-``s`` slice of
        those outputs; None when no input lands there. Backends that scatter use it to touch only outputs,
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
        """The output window ``canvas[..., p:p+H_out, p:p+W_out]`` of a canvas-sized array."""
        (ph, pw), (ho, wo) = self.padding, self.out_size
        return canvas[..., ph : ph + ho, pw : pw + wo]

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """``(N, C_in, H, W)``, or ``(N, H, W, C_in)`` in NHWC."""
        return _from_nchw((self.batch, self.in_channels, *self.in_size), self.layout)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.in_channels, self.out_channels // self.groups, *self.kernel_size)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        """``(N, C_out, H_out, W_out)``, or ``(N, H_out, W_out, C_out)`` in NHWC."""
        return _from_nchw((self.batch, self.out_channels, *self.out_size), self.layout)

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
        return self.stride == self.kernel_size and self.dilation == (1, 1)

    @property
    def flops(self) -> int:
        """Useful work 2·N·C_in·(C_out/groups)·H·W·kH·kW (no multiplications by inserted zeros)."""
        return (
            2
            * self.batch
            * self.in_channels
            * self.out_per_group
            * self.in_size[0]
            * self.in_size[1]
            * self.kernel_size[0]
            * self.kernel_size[1]
        )

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
