"""``conv_transpose2d``: PyTorch's ``torch.nn.functional.conv_transpose2d``, computed by a chosen backend."""

from __future__ import annotations

import numpy as np

from .problem import SUPPORTED_DTYPES, Problem, UnsupportedConfiguration
from .registry import BackendUnavailable, get_backend, is_device_array

__all__ = ["conv_transpose2d"]


def _as_array(value, name: str, on_device_ok: bool):
    """A float32/float64 array (host) or the device array itself; integers promote to float64."""
    if is_device_array(value):
        if not on_device_ok:
            raise TypeError(f"{name} is a CUDA device array, but the chosen backend runs on the host; "
                            f"pass a NumPy array or choose a numba_cuda* backend")
        dtype = np.dtype(value.dtype)
    else:
        if isinstance(value, (str, bytes)) or value is None:
            raise TypeError(f"{name} must be a real numeric array, got {type(value).__name__}")
        value = np.asarray(value)
        dtype = value.dtype
    if dtype.kind in "iu":
        if is_device_array(value):
            raise TypeError(f"{name} is an integer device array ({dtype}); convert it to float32/float64")
        return value.astype(np.float64)
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64 (integers are promoted to float64), "
                        f"got {dtype}")
    return value


def _device_byte_bounds(array):
    """``[lo, hi)`` device addresses a CUDA array (``__cuda_array_interface__``) may touch."""
    face = array.__cuda_array_interface__
    itemsize = np.dtype(face["typestr"]).itemsize
    shape = tuple(face["shape"])
    strides = face.get("strides") or tuple(int(np.prod(shape[i + 1:], dtype=np.int64)) * itemsize
                                           for i in range(len(shape)))
    start = face["data"][0]
    if 0 in shape:
        return start, start
    low = start + sum(min(0, (n - 1) * s) for n, s in zip(shape, strides))
    return low, start + sum(max(0, (n - 1) * s) for n, s in zip(shape, strides)) + itemsize


def _shares_memory(a, b) -> bool:
    """``np.shares_memory`` for host (and simulator) arrays; overlapping address ranges for CUDA arrays."""
    if hasattr(a, "__cuda_array_interface__") and hasattr(b, "__cuda_array_interface__"):
        (a_lo, a_hi), (b_lo, b_hi) = _device_byte_bounds(a), _device_byte_bounds(b)
        return a_lo < b_hi and b_lo < a_hi
    if is_device_array(a) != is_device_array(b):
        return False
    return bool(np.shares_memory(a, b))


def _check_out(out, shape: tuple, dtype: np.dtype, on_device: bool, operands: dict) -> None:
    """``out`` must be where the input is (host or CUDA device), of the result's exact shape and dtype,
    writable, and share no memory with an operand (numpy's ``out=`` rules, minus its casting)."""
    if on_device and not is_device_array(out):
        raise TypeError(f"out must be a CUDA device array when the input is one, got {type(out).__name__}")
    if not on_device and not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array (the input is on the host), got {type(out).__name__}")
    if tuple(out.shape) != shape:
        raise ValueError(f"out must have the output's shape {shape}, got {tuple(out.shape)}")
    if np.dtype(out.dtype) != dtype:
        raise TypeError(f"out must have the result's dtype {dtype}, got {np.dtype(out.dtype)}")
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        raise ValueError("out must be writable, got a read-only array")
    if on_device:
        from numba import cuda
        if not (out if hasattr(out, "is_c_contiguous") else cuda.as_cuda_array(out)).is_c_contiguous():
            raise ValueError("out must be C-contiguous when it is a CUDA device array")
    for name, operand in operands.items():
        if operand is not None and _shares_memory(out, operand):
            raise ValueError(f"out must not share memory with {name}")


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                     *, backend="auto", output_size=None, out=None):
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

    ``out`` (numpy's convention): an array of the exact output shape (unbatched: ``(C_out, H_out, W_out)``)
    and the result's dtype, writable, sharing no memory with ``input``, ``weight`` or ``bias``, on the
    input's device; the result is written into it and ``out`` is returned (no output allocation: backends
    that cannot compute in place copy into it).
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
    if out is not None:
        _check_out(out, problem.output_shape[1:] if unbatched else problem.output_shape, problem.dtype,
                   on_device, {"input": input, "weight": weight, "bias": bias})
    if unbatched:
        x = x.reshape((1, *x.shape))        # reshape, not x[None]: device arrays may not support None indexing
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
        y = impl.compute(x, w, b, problem, out=out.reshape((1, *out.shape)) if unbatched and out is not None
                         else out)
        if out is not None:
            return out
    return y.reshape(tuple(y.shape[1:])) if unbatched else y
