"""``conv_transpose2d``: PyTorch's ``torch.nn.functional.conv_transpose2d``, computed by a chosen backend."""

from __future__ import annotations

import numpy as np

from .problem import SUPPORTED_DTYPES, Problem, UnsupportedConfiguration
from .registry import BackendUnavailable, get_backend, is_device_array

__all__ = ["conv_transpose2d"]


def _as_array(value, name: str, on_device_ok: bool):
    """A float32/float64 array in native byte order (host) or the device array itself; integers promote to
    float64. Masked arrays are refused: a convolution has no meaning for masked entries, and NumPy would
    silently drop the mask."""
    if is_device_array(value):
        if not on_device_ok:
            raise TypeError(f"{name} is a CUDA device array, but the chosen backend runs on the host; "
                            f"pass a NumPy array or choose a numba_cuda* backend")
        dtype = np.dtype(value.dtype)
    else:
        if isinstance(value, (str, bytes)) or value is None:
            raise TypeError(f"{name} must be a real numeric array, got {type(value).__name__}")
        if isinstance(value, np.ma.MaskedArray):
            raise TypeError(f"{name} is a masked array; fill the masked entries first "
                            f"({name}.filled(0.0)) or pass {name}.data")
        value = np.asarray(value)
        dtype = value.dtype
        if not dtype.isnative:           # e.g. '>f8' read from a file: same values, native order
            dtype = dtype.newbyteorder("=")
            value = value.astype(dtype)
    if dtype.kind in "iu":
        if is_device_array(value):
            raise TypeError(f"{name} is an integer device array ({dtype}); convert it to float32/float64")
        return value.astype(np.float64)
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64 (integers are promoted to float64), "
                        f"got {dtype}")
    return value


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                     *, backend="auto", output_size=None):
    """2-D transposed convolution with exactly the semantics of ``torch.nn.functional.conv_transpose2d``.

    ``y[n, g·Co_g + co, ih·s - p + kh·d, iw·s - p + kw·d] += x[n, g·Ci_g + ci, ih, iw] · W[g·Ci_g + ci, co, kh, kw]``
    over all taps landing inside the output, plus ``bias[c]``; the output is ``(N, C_out, H_out, W_out)`` with
    ``H_out = (H - 1)·s - 2p + d·(kH - 1) + op + 1``.

    Parameters follow PyTorch: ``input`` ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``; ``weight``
    ``(C_in, C_out/groups, kH, kW)``; ``bias`` ``(C_out,)`` or None; ``stride``, ``padding``,
    ``output_padding``, ``dilation`` an int or a pair. ``output_size`` (a pair, or a full shape) chooses
    ``output_padding`` as ``ConvTranspose2d.forward(x, output_size=...)`` does. ``backend`` names a registered
    backend (see :func:`testbed.list_backends`) or ``"auto"``.

    dtype rule: float32 and float64 are computed in their own precision; integer arrays are promoted to
    float64; input, weight and bias must then share one dtype (TypeError otherwise, like PyTorch).
    The result has the input's dtype. Inputs are never modified.
    """
    impl = get_backend(backend)
    on_device_ok = impl.device in ("cuda", "any")
    x = _as_array(input, "input", on_device_ok)
    w = _as_array(weight, "weight", on_device_ok)
    b = None if bias is None else _as_array(bias, "bias", on_device_ok)
    for name, arr in (("weight", w), ("bias", b)):
        if arr is not None and np.dtype(arr.dtype) != np.dtype(x.dtype):
            raise TypeError(f"{name} dtype ({np.dtype(arr.dtype)}) must match the input dtype "
                            f"({np.dtype(x.dtype)}); cast one of them")

    problem = Problem.from_shapes(tuple(x.shape), tuple(w.shape), stride=stride, padding=padding,
                                  output_padding=output_padding, dilation=dilation, groups=groups,
                                  dtype=x.dtype, has_bias=b is not None, output_size=output_size)
    if b is not None and tuple(b.shape) != (problem.out_channels,):
        raise ValueError(f"bias must have shape (C_out,) = ({problem.out_channels},), got {tuple(b.shape)}")

    reason = impl.unsupported_reason(problem)
    if reason is not None:
        raise UnsupportedConfiguration(impl.name, reason)
    ok, why = impl.probe()
    if not ok:
        raise BackendUnavailable(f"backend {impl.name!r} is unavailable here: {why}")

    on_device = is_device_array(x)
    unbatched = len(x.shape) == 3
    if unbatched:
        x = x.reshape((1, *x.shape))        # reshape, not x[None]: device arrays may not support None indexing
    if problem.batch == 0:
        y = np.zeros(problem.output_shape, dtype=problem.dtype)
        if on_device:
            from numba import cuda
            y = cuda.to_device(y)
    else:
        if not on_device:
            x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
            b = None if b is None else np.ascontiguousarray(b)
        y = impl.run(x, w, b, problem)
    return y.reshape(tuple(y.shape[1:])) if unbatched else y
