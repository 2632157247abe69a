"""``numba_cuda``, ``numba_cuda_atomic``, ``numba_cuda_tiled``: numba.cuda GPU kernels (gather, atomic
scatter, shared-memory tiled gather; see ``numba_cuda_kernels`` for the formulas).

Spatial ranks: ``numba_cuda`` computes 1-D, 2-D and 3-D (``gather``; ``gather3d`` over three axes),
``numba_cuda_atomic`` 1-D and 2-D, ``numba_cuda_tiled`` 2-D. A 1-D problem is computed as the 2-D problem with
one row (:func:`as_rank`: unit axes in front, the same C-order arrays), which the kernels see through the
same flat views: no copy, no second kernel. The tiled kernel's 16×16 output tiles would leave 15 of 16
threads idle on one row, and the atomic scatter has no 3-D kernel, so those ranks are declined
(``Backend.ranks``).

The host side takes NumPy arrays (copied to the device and back; a NumPy array is returned) or CUDA device
arrays (anything with ``__cuda_array_interface__``, or the simulator's arrays; the result is then a device
array and nothing is copied or synchronised), so experiments can time kernels without transfers
(:func:`time_cuda_backend`).

Backward (issue 24): ``numba_cuda`` alone declares ``backward_data`` and ``backward_weight`` at every rank, as
gathers (``backward_data``/``backward_data3d``, ``backward_weight``/``backward_weight3d`` in
``numba_cuda_kernels``: one thread per gradient element, no atomics, bitwise repeatable); a 1-D problem again
runs as 2-D with one row. :func:`testbed.conv_transpose_backward` hands over host arrays only (channels-last
ones transposed to channels first on the host), so there they are copied to the device and the gradient back;
``Backend.backward_data``/``backward_weight`` called directly with device arrays return a device array, as
``run`` does.

Availability: a CUDA GPU, or numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` set before numba is
imported) which runs every CUDA thread as a Python thread: correct, never a speed.
Importing this module imports neither numba nor numba.cuda; the kernels compile on first use.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable

import numpy as np

from ..problem import LAYOUTS_BY_RANK
from ..registry import Backend, BackendUnavailable, get_backend, is_device_array, register
from .numba_cuda_layout import CHUNK_FIELDS, DEPTH_FIELDS, GEOMETRY_FIELDS, SHAPE_FIELDS, TILE, uint32_fields

__all__ = [
    "probe",
    "time_cuda_backend",
    "tiled_plan",
    "SIMULATOR_STATUS",
    "THREADS_PER_BLOCK",
    "SHARED_BYTES_BUDGET",
    "TILE",
    "INDEX_LIMIT",
    "index_limit_reason",
    "as_rank",
]

SIMULATOR_STATUS = "simulator (correctness only; never timed as GPU speed)"
NO_DEVICE_STATUS = "no CUDA GPU and the simulator is off (set NUMBA_ENABLE_CUDASIM=1 before importing numba)"

#: Threads per block of the 1-D grids (gather, gather3d, fill, atomic scatter): a multiple of the warp size that
#: keeps several blocks resident per SM.
THREADS_PER_BLOCK = 256
#: Dynamic shared memory the tiled kernel may ask for per block: well under the 48 KiB that needs no opt-in,
#: so that several blocks share an SM.
SHARED_BYTES_BUDGET = 16 * 1024


@functools.cache
def probe() -> tuple[bool, str]:
    """(usable here?, why): a real GPU, the simulator, or neither. Cached: the answer cannot change once
    numba has been imported (``NUMBA_ENABLE_CUDASIM`` is read at import)."""
    from numba import config

    if config.ENABLE_CUDASIM:
        return True, SIMULATOR_STATUS
    try:
        from numba import cuda

        if not cuda.is_available():
            return False, NO_DEVICE_STATUS
        name = cuda.get_current_device().name
    except Exception as exc:  # a broken driver or toolkit is "unavailable", not an import error
        return False, f"numba.cuda cannot start: {exc}"
    return True, f"available ({name.decode() if isinstance(name, bytes) else name})"


@functools.cache
def _kernel(name: str, dtype: str):
    """The cuda.jit dispatcher of one kernel for one dtype, built on first use (compiled at first launch)."""
    from numba import cuda

    from ._runtime import can_cache
    from .numba_cuda_kernels import KERNELS

    return cuda.jit(cache=can_cache(KERNELS[name][dtype]))(KERNELS[name][dtype])


# ---- host arrays ↔ device arrays ----------------------------------------------------------------------------


def _is_numba_device_array(value) -> bool:
    """numba's own device arrays, real or simulated (the simulator's have no __cuda_array_interface__)."""
    return not isinstance(value, np.ndarray) and hasattr(value, "copy_to_host")


def _on_device(value):
    """``value`` as a numba device array: device arrays are used in place, host arrays are copied."""
    from numba import cuda

    if value is None or _is_numba_device_array(value):
        return value
    if hasattr(value, "__cuda_array_interface__") and not isinstance(value, np.ndarray):
        return cuda.as_cuda_array(value)
    return cuda.to_device(np.ascontiguousarray(value))


def _launch(run_kernels):
    """Wrap ``run_kernels(x, weight, bias, y, problem)`` (device arrays, ``bias`` never None) as a
    ``Backend.run``: moves host arrays in and the result out (into a host ``out`` if given), or stays on the
    device (writing into a device ``out`` if given)."""

    @functools.wraps(run_kernels)
    def run(x, weight, bias, problem, out=None):
        from numba import cuda

        on_device = is_device_array(x)
        if out is not None and is_device_array(out):
            y = _on_device(out)
        else:
            y = cuda.device_array(problem.output_shape, dtype=problem.dtype)
        # The kernels write a C-contiguous output; a strided device ``out`` (e.g. an NHWC array seen as NCHW by
        # the layout conversion) gets the result copied in on the device.
        target, y = y, (y if y.is_c_contiguous() else cuda.device_array(problem.output_shape, dtype=problem.dtype))
        if problem.batch > 0:
            d_bias = _on_device(bias) if bias is not None else cuda.device_array(1, dtype=problem.dtype)
            run_kernels(_on_device(x), _on_device(weight), d_bias, y, problem)
        if target is not y:
            target[:] = y
            y = target
        if on_device:
            return y
        return y.copy_to_host() if out is None else y.copy_to_host(out)

    return run


def _phase_constants(stride: int, dilation: int) -> tuple[int, int]:
    """``(g, inv)``: ``g = gcd(s, d)`` and the inverse of ``d/g`` modulo ``s/g`` (0 when ``s/g == 1``),
    which give each output's first tap in closed form (see numba_cuda_kernels)."""
    g = math.gcd(stride, dilation)
    return g, pow(dilation // g, -1, stride // g)


# ---- 32-bit kernel arguments ------------------------------------------------------------------------------

#: The kernels index in unsigned 32-bit arithmetic; every count and extent they meet must stay below this
#: (int32's maximum, so that int32 loop counters hold them too).
INDEX_LIMIT = 2**31 - 1


def index_limit_reason(problem) -> str | None:
    """Why the kernels' 32-bit index arithmetic cannot address ``problem``, or None if it can.

    Checked: the element counts of input, weight and output and the atomic scatter's thread count (each plus
    a block of slack for the last block's idle threads), and per spatial axis (D, H, W or L) the canvas extent
    ``H_out + 2·padding`` plus stride, dilation and a tile, which bounds every index, offset and tap
    position the kernels form on that axis (including a loop's last, unused step)."""
    input_elements = math.prod(problem.input_shape)
    counts = {
        "input elements": input_elements,
        "weight elements": math.prod(problem.weight_shape),
        "output elements": math.prod(problem.output_shape),
        "atomic scatter threads (input elements × C_out/groups)": input_elements * problem.out_per_group,
    }
    for what, count in counts.items():
        if count > INDEX_LIMIT - THREADS_PER_BLOCK:
            return (
                f"{what}: {count} exceeds the CUDA kernels' 32-bit index range (at most "
                f"{INDEX_LIMIT - THREADS_PER_BLOCK})"
            )
    for name, out, pad, stride, dilation in zip(
        problem.axes.upper(), problem.out_size, problem.padding, problem.stride, problem.dilation
    ):
        extent = out + 2 * pad + stride + dilation + TILE
        if extent > INDEX_LIMIT:
            return (
                f"index extent along {name} ({name}_out + 2·padding + stride + dilation + {TILE} with "
                f"{name}_out={out}, padding={pad}, stride={stride}, dilation={dilation}) is {extent}, beyond "
                f"the CUDA kernels' 32-bit index range ({INDEX_LIMIT})"
            )
    return None


def as_rank(problem, rank: int):
    """``problem`` as the same computation at a higher spatial ``rank``: unit axes in front of its own (size 1,
    kernel 1, stride 1, padding 0, output padding 0, dilation 1), the layout of the same family. Each unit axis
    has one output, receiving its one tap from its one input, so the outputs are equal; and the arrays of both
    are the same C-order elements (a length-1 axis added), which the kernels read through flat views.

    >>> from testbed import Problem
    >>> plane = as_rank(Problem(2, 3, (7,), 4, (3,), stride=2, padding=1, layout="NLC"), 2)
    >>> plane.in_size, plane.kernel_size, plane.stride, plane.padding, plane.layout, plane.output_shape
    ((1, 7), (1, 3), (1, 2), (0, 1), 'NHWC', (2, 1, 13, 4))
    """
    units = rank - problem.rank
    if units < 0:
        raise ValueError(f"rank must be at least the problem's ({problem.rank}), got {rank!r}")

    def lifted(values, unit):
        return (unit,) * units + tuple(values)

    return problem.with_(
        rank=rank,
        layout=LAYOUTS_BY_RANK[rank][problem.channels_last],
        in_size=lifted(problem.in_size, 1),
        kernel_size=lifted(problem.kernel_size, 1),
        stride=lifted(problem.stride, 1),
        padding=lifted(problem.padding, 0),
        output_padding=lifted(problem.output_padding, 0),
        dilation=lifted(problem.dilation, 1),
    )


def _shape_args(problem) -> tuple:
    """The ``shape`` tuple: channels and the last two spatial axes (H, W)."""
    (in_h, in_w), (out_h, out_w) = problem.in_size[-2:], problem.out_size[-2:]
    kernel_h, kernel_w = problem.kernel_size[-2:]
    return uint32_fields(
        SHAPE_FIELDS,
        {
            "in_channels": problem.in_channels,
            "in_h": in_h,
            "in_w": in_w,
            "out_channels": problem.out_channels,
            "out_h": out_h,
            "out_w": out_w,
            "in_per_group": problem.in_per_group,
            "out_per_group": problem.out_per_group,
            "kernel_h": kernel_h,
            "kernel_w": kernel_w,
        },
    )


def _geometry_args(problem) -> tuple:
    """The ``geometry`` tuple of the last two spatial axes (H, W)."""
    (sh, sw), (ph, pw), (dh, dw) = problem.stride[-2:], problem.padding[-2:], problem.dilation[-2:]
    (gh, inv_h), (gw, inv_w) = _phase_constants(sh, dh), _phase_constants(sw, dw)
    return uint32_fields(
        GEOMETRY_FIELDS,
        {
            "stride_h": sh,
            "stride_w": sw,
            "padding_h": ph,
            "padding_w": pw,
            "dilation_h": dh,
            "dilation_w": dw,
            "gcd_h": gh,
            "gcd_w": gw,
            "inverse_h": inv_h,
            "inverse_w": inv_w,
        },
    )


def _depth_args(problem) -> tuple:
    """The ``depth`` tuple of ``gather3d``: the first spatial axis (D) of a 3-D problem."""
    stride, dilation = problem.stride[0], problem.dilation[0]
    gcd, inverse = _phase_constants(stride, dilation)
    values = {
        "in_d": problem.in_size[0],
        "out_d": problem.out_size[0],
        "kernel_d": problem.kernel_size[0],
        "stride_d": stride,
        "padding_d": problem.padding[0],
        "dilation_d": dilation,
        "gcd_d": gcd,
        "inverse_d": inverse,
    }
    return uint32_fields(DEPTH_FIELDS, values)


def _flat(array):
    """A device array as the 1-D C-order view the kernels index; a strided one (e.g. a transposed tensor
    passed through ``__cuda_array_interface__``) is first copied into a contiguous array on the device."""
    if not array.is_c_contiguous():
        from numba import cuda

        dense = cuda.device_array(array.shape, dtype=array.dtype)
        dense[:] = array
        array = dense
    return array.reshape(array.size)


def _flat_output(y):
    """The output as a 1-D view of itself (never a copy: the kernels must write into ``y``)."""
    if not y.is_c_contiguous():
        raise ValueError(
            f"the output device array must be C-contiguous, got shape {tuple(y.shape)} with strides {tuple(y.strides)}"
        )
    return y.reshape(y.size)


def _blocks(count: int) -> int:
    return (count + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK


def _run_gather(x, weight, bias, y, problem):
    """``gather3d`` for a 3-D problem, else ``gather`` (a 1-D problem as 2-D with one row)."""
    arrays = (_flat(x), _flat(weight), _flat(bias), _flat_output(y))
    grid = (_blocks(y.size), THREADS_PER_BLOCK)
    if problem.rank == 3:
        _kernel("gather3d", problem.dtype.name)[grid](
            *arrays, problem.has_bias, _shape_args(problem), _geometry_args(problem), _depth_args(problem)
        )
    else:
        plane = as_rank(problem, 2)
        _kernel("gather", problem.dtype.name)[grid](
            *arrays, problem.has_bias, _shape_args(plane), _geometry_args(plane)
        )


def _run_atomic(x, weight, bias, y, problem):
    """Zero-fill, scatter, then add the bias: ``(+0 + Σ products) + bias`` as PyTorch sums (its sign of
    zero included), not ``bias + Σ products``. A 1-D problem runs as 2-D with one row."""
    problem = as_rank(problem, 2)
    dtype = problem.dtype.name
    y_flat = _flat_output(y)
    _kernel("fill_zero", dtype)[_blocks(y.size), THREADS_PER_BLOCK](y_flat)
    threads = x.size * problem.out_per_group
    _kernel("scatter_atomic", dtype)[_blocks(threads), THREADS_PER_BLOCK](
        _flat(x), _flat(weight), y_flat, _shape_args(problem), _geometry_args(problem)
    )
    if problem.has_bias:
        _kernel("add_bias", dtype)[_blocks(y.size), THREADS_PER_BLOCK](
            _flat(bias), y_flat, np.uint32(problem.out_channels), np.uint32(math.prod(problem.out_size))
        )


def _launch_backward(run_kernels, result_shape):
    """Wrap ``run_kernels(grad_output, operand, result, problem)`` (device arrays) as a ``Backend.backward_data``
    / ``backward_weight`` (``operand``: the weight, resp. the input; the result of ``result_shape(problem)``):
    host arrays are copied in and the gradient out (a NumPy array), device arrays give a device array."""

    @functools.wraps(run_kernels)
    def backward(grad_output, operand, problem):
        from numba import cuda

        result = cuda.device_array(result_shape(problem), dtype=problem.dtype)
        if result.size > 0:  # an empty batch has no data gradient to launch threads for
            run_kernels(_on_device(grad_output), _on_device(operand), result, problem)
        return result if is_device_array(grad_output) else result.copy_to_host()

    return backward


def _run_backward_data(grad_output, weight, grad_input, problem):
    """``backward_data3d`` for a 3-D problem, else ``backward_data`` (1-D as 2-D with one row)."""
    arrays = (_flat(grad_output), _flat(weight), _flat_output(grad_input))
    grid = (_blocks(grad_input.size), THREADS_PER_BLOCK)
    if problem.rank == 3:
        _kernel("backward_data3d", problem.dtype.name)[grid](
            *arrays, _shape_args(problem), _geometry_args(problem), _depth_args(problem)
        )
    else:
        plane = as_rank(problem, 2)
        _kernel("backward_data", problem.dtype.name)[grid](*arrays, _shape_args(plane), _geometry_args(plane))


def _run_backward_weight(grad_output, x, grad_weight, problem):
    """``backward_weight3d`` for a 3-D problem, else ``backward_weight`` (1-D as 2-D with one row)."""
    arrays = (_flat(grad_output), _flat(x), _flat_output(grad_weight), np.uint32(problem.batch))
    grid = (_blocks(grad_weight.size), THREADS_PER_BLOCK)
    if problem.rank == 3:
        _kernel("backward_weight3d", problem.dtype.name)[grid](
            *arrays, _shape_args(problem), _geometry_args(problem), _depth_args(problem)
        )
    else:
        plane = as_rank(problem, 2)
        _kernel("backward_weight", problem.dtype.name)[grid](*arrays, _shape_args(plane), _geometry_args(plane))


def tiled_plan(problem) -> dict:
    """Tap chunks and halo of ``tiled_gather``: the largest ``chunk_h × chunk_w`` tap block (halving the
    side with the larger halo) whose weights plus input halo fit :data:`SHARED_BYTES_BUDGET`.
    A TILE-row output block reads at most ``(TILE - 1 + (chunk - 1)·d) // s + 2`` input rows per chunk."""
    itemsize = problem.dtype.itemsize
    (kh, kw), (sh, sw), (dh, dw) = problem.kernel_size, problem.stride, problem.dilation
    chunk_h, chunk_w = kh, kw

    def halo(chunk, s, d):
        return (TILE - 1 + (chunk - 1) * d) // s + 2

    while True:
        halo_h, halo_w = halo(chunk_h, sh, dh), halo(chunk_w, sw, dw)
        shared_bytes = (chunk_h * chunk_w + halo_h * halo_w) * itemsize
        if shared_bytes <= SHARED_BYTES_BUDGET or (chunk_h, chunk_w) == (1, 1):
            break
        if (halo_h >= halo_w and chunk_h > 1) or chunk_w == 1:
            chunk_h = (chunk_h + 1) // 2
        else:
            chunk_w = (chunk_w + 1) // 2
    blocks = (
        problem.batch * problem.out_channels * (-(-problem.out_size[0] // TILE)) * (-(-problem.out_size[1] // TILE))
    )
    return {
        "chunk_h": chunk_h,
        "chunk_w": chunk_w,
        "halo_h": halo_h,
        "halo_w": halo_w,
        "shared_bytes": shared_bytes,
        "blocks": blocks,
        "tile": TILE,
    }


def _run_tiled(x, weight, bias, y, problem):
    plan = tiled_plan(problem)
    kernel = _kernel("tiled_gather", problem.dtype.name)
    kernel[plan["blocks"], (plan["tile"], plan["tile"]), 0, plan["shared_bytes"]](
        _flat(x),
        _flat(weight),
        _flat(bias),
        _flat_output(y),
        problem.has_bias,
        _shape_args(problem),
        _geometry_args(problem),
        uint32_fields(CHUNK_FIELDS, plan),
    )


# ---- timing ---------------------------------------------------------------------------------------------------


def time_cuda_backend(backend, problem, *, repeats: int = 10, rng=0, direction: str = "forward") -> dict:
    """Median milliseconds of one call of a CUDA backend on ``problem`` in ``direction``, measured with CUDA
    events: ``kernel_ms`` with device arrays in and out (kernels plus the result's allocation, no transfers) and
    ``with_transfers_ms`` from NumPy arrays to a NumPy result (host→device copies, kernels, device→host).

    The forward goes through ``Backend.compute``, as ``conv_transpose1d/2d/3d`` does: a channels-last problem
    is timed with its layout conversion (strided views copied on the device; host arrays transposed), not
    as the channels-first kernels on arrays they would misread. A backward direction (``"backward_data"``,
    ``"backward_weight"``) calls the backend's gradient function on arrays in its native layout
    (:meth:`Backend.native_layout`): the layout conversion :func:`testbed.conv_transpose_backward` does on the
    host is not timed.
    One untimed call first compiles the kernels. Refuses the simulator (its times say nothing of a GPU)."""
    impl = get_backend(backend)
    if impl.device != "cuda":
        raise ValueError(f"backend must be a CUDA backend (device 'cuda'), got {impl.name!r} (device {impl.device!r})")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    reason = impl.unsupported_reason(problem, direction)  # ValueError for an unknown direction
    ok, why = impl.probe()
    if not ok:
        raise BackendUnavailable(f"backend {impl.name!r} cannot be timed here: {why}")
    if impl.timing_kind != "gpu":
        raise RuntimeError(
            f"backend {impl.name!r} runs in the CUDA simulator ({why}); simulator times are not "
            f"GPU times, so time_cuda_backend refuses to measure them"
        )
    if reason is not None:
        raise ValueError(f"backend {impl.name!r} does not support {problem} ({direction}): {reason}")
    from numba import cuda

    native = problem.with_(layout=impl.native_layout(problem))

    def forward(x, weight, bias):
        impl.compute(x, weight, bias, problem)

    def gradient(grad_output, operand):
        getattr(impl, direction)(grad_output, operand, native)

    call: Callable[..., None]
    if direction == "forward":
        call, host_args = forward, problem.random_arrays(rng)
    else:
        x, weight, _ = native.random_arrays(rng)
        grad_output = np.random.default_rng(rng).standard_normal(native.output_shape).astype(native.dtype)
        call, host_args = gradient, (grad_output, weight if direction == "backward_data" else x)

    device_args = tuple(None if a is None else cuda.to_device(a) for a in host_args)

    def median_ms(*args):
        call(*args)  # compile / warm up
        cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, stop = cuda.event(timing=True), cuda.event(timing=True)
            start.record()
            call(*args)
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        return statistics.median(times)

    return {"kernel_ms": median_ms(*device_args), "with_transfers_ms": median_ms(*host_args)}


# ---- registration --------------------------------------------------------------------------------------------

register(
    Backend(
        name="numba_cuda",
        description="numba.cuda gather: one thread per output element, phase-aware tap loops, bias fused, no atomics "
        "(backward: one thread per gradient element, gathers too)",
        run=_launch(_run_gather),
        device="cuda",
        check=index_limit_reason,
        probe=probe,
        writes_out=True,
        ranks=(1, 2, 3),
        backward_data=_launch_backward(_run_backward_data, lambda problem: problem.input_shape),
        backward_weight=_launch_backward(_run_backward_weight, lambda problem: problem.weight_shape),
    )
)

register(
    Backend(
        name="numba_cuda_atomic",
        description="numba.cuda scatter: one thread per input element and output channel, cuda.atomic.add "
        "into the zero-filled output, then the bias (run-to-run nondeterministic)",
        run=_launch(_run_atomic),
        device="cuda",
        deterministic=False,
        check=index_limit_reason,
        probe=probe,
        writes_out=True,
        ranks=(1, 2),
    )
)

register(
    Backend(
        name="numba_cuda_tiled",
        description="numba.cuda gather over 16x16 output tiles with the weights and input halo staged in shared "
        "memory (per input channel and tap chunk)",
        run=_launch(_run_tiled),
        device="cuda",
        check=index_limit_reason,
        probe=probe,
        writes_out=True,
    )
)
