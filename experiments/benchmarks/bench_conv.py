"""Speed, throughput, peak memory and accuracy of ``conv_transpose2d`` for every registered backend, of
``conv_transpose1d``/``3d`` (``SpeedByRank``, the 1-D and 3-D ``Accuracy`` cases), and of the backward pass's data and
weight gradients (``SpeedByDirection``).

GFLOP/s counts useful work only, ``Problem.flops = 2·N·C_in·(C_out/groups)·prod(in_size)·prod(kernel_size)``.
Accuracy is the relative L2 error ``‖y - ref‖ / ‖ref‖`` against ``testbed.testing.oracle``, the ``naive`` scatter
definition computed in float64 on the same inputs (for float32 the inputs are drawn in float32 and widened
exactly), so a float32 result shows its own rounding, and a float64 one shows whether the algorithm is still exact
to ~1e-16.
"""

import time

import numpy as np

import testbed
from testbed.registry import DIRECTIONS
from testbed.testing import call_kwargs, oracle, relative_error
from testbed.timing import prepare_call, reset_peak_rss

from .common import (
    ACCURACY_CASES,
    CASES,
    DIRECTION_CASES,
    LAYOUT_CASES,
    LAYOUT_FAMILIES,
    MEMORY_CASES,
    RANK_CASES,
    SPEED_CASES,
    Call,
    TimedSampling,
    layout_of,
    require,
    seconds_per_call,
)

BACKENDS = testbed.list_backends()


class Speed(TimedSampling):
    """Time per call and throughput; the first call (Numba compilation, torch start-up) happens in setup."""

    params = [BACKENDS, SPEED_CASES]
    param_names = ["backend", "case"]

    def setup(self, backend, case):
        self.call = Call(backend, require(backend, case, timed=True))
        self.call()

    def time_conv_transpose2d(self, backend, case):
        self.call()

    def track_gflops(self, backend, case):
        return self.call.problem.flops / seconds_per_call(self.call) / 1e9

    track_gflops.unit = "GFLOP/s"


class CPUTime(TimedSampling):
    """CPU seconds per call of this process, all its threads together (``timer = time.process_time``): what the
    call costs, not how long it also waited for a core. On a machine shared with other jobs the wall time of
    ``Speed`` moves with their load; this moves far less, and not at all from waiting. Run single-threaded
    (``OMP_NUM_THREADS=1``, ``NUMBA_NUM_THREADS=1``: thread pools then have no spin-waiting to add) it is what
    ``experiments.asv_regression`` compares between two commits.
    """

    params = [BACKENDS, SPEED_CASES]
    param_names = ["backend", "case"]
    timer = time.process_time

    def setup(self, backend, case):
        self.call = Call(backend, require(backend, case, timed=True))
        self.call()

    def time_conv_transpose2d(self, backend, case):
        self.call()


class LayoutAndOut(TimedSampling):
    """Time per call in both layouts (``layout="NHWC"``: channels last; backends without a native NHWC path pay
    the dispatcher's transposes), allocating the result or writing into a preallocated ``out=``."""

    params = [BACKENDS, LAYOUT_CASES, ["NHWC", "NCHW"], ["out", "alloc"]]
    param_names = ["backend", "case", "layout", "allocation"]

    def setup(self, backend, case, layout, allocation):
        problem = require(backend, case, timed=True).with_(layout=layout)
        self.call = Call(backend, problem, allocation=allocation)
        self.call()

    def time_conv_transpose2d(self, backend, case, layout, allocation):
        self.call()

    def track_gflops(self, backend, case, layout, allocation):
        return self.call.problem.flops / seconds_per_call(self.call) / 1e9

    track_gflops.unit = "GFLOP/s"


class SpeedByRank(TimedSampling):
    """Time per call and throughput at every spatial rank (``common.RANK_CASES``: one case per rank), channels
    first and last at that rank (NCL/NLC, NCHW/NHWC, NCDHW/NDHWC; backends without a native channels-last path
    pay the dispatcher's transposes). A backend that does not declare a rank (``Backend.ranks``) skips it."""

    params = [BACKENDS, sorted(RANK_CASES), list(LAYOUT_FAMILIES)]
    param_names = ["backend", "rank", "layout"]

    def setup(self, backend, rank, layout):
        self.call = Call(backend, require(backend, RANK_CASES[rank], timed=True, layout=layout_of(layout, rank)))
        self.call()

    def time_conv_transpose(self, backend, rank, layout):
        self.call()

    def track_gflops(self, backend, rank, layout):
        return self.call.problem.flops / seconds_per_call(self.call) / 1e9

    track_gflops.unit = "GFLOP/s"


class SpeedByDirection(TimedSampling):
    """Time per call and throughput of each direction (``testbed.registry.DIRECTIONS``: the forward, and the data
    and weight gradients of ``testbed.conv_transpose_backward``, each asked for alone through ``output_mask``;
    ``testbed.timing.prepare_call``). A backend that does not declare a direction (``Backend.directions``) skips
    it. GFLOP/s counts the same useful work in every direction, ``Problem.flops``: each gradient is a product of
    the same sizes as the forward."""

    params = [BACKENDS, DIRECTION_CASES, list(DIRECTIONS)]
    param_names = ["backend", "case", "direction"]

    def setup(self, backend, case, direction):
        self.problem = require(backend, case, timed=True, direction=direction)
        self.call = prepare_call(backend, self.problem, *self.problem.random_arrays(0), direction=direction)
        self.call()

    def time_conv_transpose(self, backend, case, direction):
        self.call()

    def track_gflops(self, backend, case, direction):
        return self.problem.flops / seconds_per_call(self.call) / 1e9

    track_gflops.unit = "GFLOP/s"


class Memory:
    """Peak resident memory of the process during one call. The baseline (interpreter, numpy, numba, torch,
    inputs) is the same for every backend: differences are the backend's buffers and output (col2im's column
    buffer, fft's spectra). Setup makes the first call (compilation) and then restarts the peak count.
    """

    params = [BACKENDS, MEMORY_CASES]
    param_names = ["backend", "case"]
    timeout = 300

    def setup(self, backend, case):
        self.call = Call(backend, require(backend, case, timed=True))
        self.call()
        reset_peak_rss()  # the peak of the body, not of setup's warm-up call (compilation)

    def peakmem_conv_transpose2d(self, backend, case):
        self.call()


class Accuracy:
    """Relative L2 error against the float64 ``naive`` oracle (computed once per environment in setup_cache)."""

    params = [BACKENDS, ACCURACY_CASES, ["float32", "float64"]]
    param_names = ["backend", "case", "dtype"]
    timeout = 300
    rounds = 1  # the same inputs give the same error in every process

    def setup_cache(self):
        references = {}
        for case in ACCURACY_CASES:
            x, weight, bias = CASES[case].random_arrays(0)
            references[case] = ((x, weight, bias), oracle(x, weight, bias, **call_kwargs(CASES[case])))
        return references

    def setup(self, references, backend, case, dtype):
        problem = require(backend, case, timed=False).with_(dtype=np.dtype(dtype))
        arrays, self.reference = references[case]
        arrays = tuple(None if a is None else a.astype(problem.dtype) for a in arrays)
        self.call = Call(backend, problem, arrays)

    def track_relative_error(self, references, backend, case, dtype):
        return relative_error(self.call(), self.reference)

    track_relative_error.unit = "relative L2 error"
