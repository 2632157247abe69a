"""``naive``: the scatter definition, the oracle.

``y[n, g·Co_g + co, ih·s + kh·d - p, iw·s + kw·d - p] += x[n, g·Ci_g + ci, ih, iw] · W[g·Ci_g + ci, co, kh, kw]``

The same for 1-D (``y[n, c, i·s + k·d - p]``) and 3-D (three spatial indices). Vectorised only over batch,
output channels and input pixels; input channels and kernel taps are plain loops, in that order, so the summation
order is the definition's and nothing else is clever. Each tap adds
only the input pixels that land inside the output (:meth:`Problem.landing`), straight into the output: no
uncropped canvas, so memory is the output plus one tap's products however large stride or padding are.

Every output starts at +0.0, receives its products in (ci, kh, kw) order, then the bias: the sign of zero is
PyTorch's (an output is never -0.0).
"""

import itertools
from typing import Any

import numpy as np

from ..registry import Backend, register


def landed_taps(problem):
    """``(ci, channels, taps, inputs, outputs)`` for every input channel and every kernel tap that lands inside the
    output on every axis, in (ci, taps) order: ``channels`` the slice of the group's output channels, ``inputs`` and
    ``outputs`` the per-axis index slices of :meth:`Problem.landing` (the definition's sums all run over these)."""
    cig, cog = problem.in_per_group, problem.out_per_group
    # per spatial axis, where each tap lands; a tap combination lands only if it lands on every axis
    spans = [[problem.landing(axis, k) for k in range(size)] for axis, size in enumerate(problem.kernel_size)]
    for ci in range(problem.in_channels):
        group = ci // cig
        channels = slice(group * cog, (group + 1) * cog)
        for taps in itertools.product(*(range(size) for size in problem.kernel_size)):
            landed = [spans[axis][k] for axis, k in enumerate(taps)]
            if all(span is not None for span in landed):
                yield ci, channels, taps, tuple(sp[0] for sp in landed), tuple(sp[1] for sp in landed)


def scatter_definition(x, weight, bias, problem):
    broadcast = (None,) * problem.rank  # a per-channel vector against the spatial axes
    y = np.zeros(problem.output_shape, dtype=problem.dtype)
    for ci, channels, taps, inputs, outputs in landed_taps(problem):
        tap_at, per_channel = (ci, slice(None), *taps), (None, slice(None), *broadcast)
        into, from_ = (slice(None), channels, *outputs), (slice(None), ci, None, *inputs)
        y[into] += x[from_] * weight[tap_at][per_channel]  # tap: (1, Co_g, 1, ...)
    if bias is not None:
        per_channel = (None, slice(None), *broadcast)
        y += bias[per_channel]
    return y


# ---- backward: the definition's sums, over the same landing taps ------------------------------------------------


def gather_data_gradient(grad_output, weight, problem):
    """``grad_input[n, g·Ci + ci, i] = Σ_{co, k} grad_output[n, g·Co + co, i·s - p + k·d] · W[g·Ci + ci, co, k]``
    over the taps that land (:meth:`Problem.landing`): per input channel and tap, a channel sum of the landed
    output gradient against the tap's weights, in (ci, taps) order as the forward."""
    spatial = "xyz"[: problem.rank]  # einsum letters of the spatial axes
    grad_input = np.zeros(problem.input_shape, dtype=problem.dtype)
    for ci, channels, taps, inputs, outputs in landed_taps(problem):
        into, from_, tap_at = (slice(None), ci, *inputs), (slice(None), channels, *outputs), (ci, slice(None), *taps)
        # (N, Co_g, *landed) against the tap's (Co_g,) weights
        grad_input[into] += np.einsum(f"nc{spatial},c->n{spatial}", grad_output[from_], weight[tap_at])
    return grad_input


def correlate_weight_gradient(grad_output, x, problem):
    """``grad_weight[g·Ci + ci, co, k] = Σ_{n, i} x[n, g·Ci + ci, i] · grad_output[n, g·Co + co, i·s - p + k·d]``
    over the input pixels that land through tap ``k``: per input channel and tap, one reduction over the batch and
    the landed pixels."""
    spatial = "xyz"[: problem.rank]  # einsum letters of the spatial axes
    grad_weight = np.zeros(problem.weight_shape, dtype=problem.dtype)
    for ci, channels, taps, inputs, outputs in landed_taps(problem):
        pixels, from_ = (slice(None), ci, *inputs), (slice(None), channels, *outputs)
        tap_at: tuple[Any, ...] = (ci, slice(None), *taps)
        # (N, *landed) against (N, Co_g, *landed)
        grad_weight[tap_at] = np.einsum(f"n{spatial},nc{spatial}->c", x[pixels], grad_output[from_])
    return grad_weight


register(
    Backend(
        name="naive",
        description="scatter definition: every input pixel times the kernel, added into its output window (oracle)",
        run=scatter_definition,
        ranks=(1, 2, 3),
        backward_data=gather_data_gradient,
        backward_weight=correlate_weight_gradient,
    )
)
