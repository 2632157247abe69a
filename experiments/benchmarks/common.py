"""What the benchmarks share: the cases, the skip rules, the call, and a throughput timer.

Cases are named problems of ``testbed.cases.SUITES``, of every spatial rank; the benchmarks call the public
``testbed.conv_transpose2d`` (``conv_transpose1d``/``3d`` at the other ranks; validation and dispatch included:
that is what a user pays, and what the ``tiny`` case measures).
"""

import numpy as np

import testbed
from testbed import timing
from testbed.cases import SUITES
from testbed.problem import LAYOUTS_BY_RANK
from testbed.testing import call_kwargs

#: Every named problem of every suite, by name.
CASES = {name: problem for cases in SUITES.values() for name, problem in cases.items()}

#: The cases timed and measured for throughput: a U-Net up-convolution (stride == kernel), a DCGAN decoder
#: layer (k4 s2 p1), a grouped and a depthwise layer, and a tiny layer where call overhead dominates.
SPEED_CASES = ["unet1", "k4s2p1", "k4s2g8", "depthwise", "tiny_k3s2"]

#: The cases of the layout and ``out=`` benchmark: the smallest and largest U-Net up-convolutions, and a tiny
#: stride == kernel layer.
LAYOUT_CASES = ["unet1", "unet4", "tiny_k2s2"]

#: The cases of the peak-memory benchmark: the largest U-Net layer (col2im's column buffer is
#: C_out·kH·kW·H·W values, polyphase's and fft's buffers are output-sized) and a grouped layer every
#: backend runs.
MEMORY_CASES = ["unet4", "k4s2g8"]

#: The cases of the accuracy benchmark: stride == kernel (the only one ``kron`` supports), groups with
#: dilation and an uneven stride, dilation at realistic size, groups at realistic size; at the other ranks
#: HiFi-GAN's third up-sampling (1-D, k4 s2 p1) and nnU-Net's deepest up-convolution (3-D, k = s = 2).
ACCURACY_CASES = ["tiny_k2s2", "tiny_g2d2", "k3d2", "k4s2g8", "voc3", "unet3d1"]

#: The case of each spatial rank in the rank benchmarks (``bench_conv.SpeedByRank``): HiFi-GAN's third
#: up-sampling (1-D: 128→64 channels, 5504 samples, k4 s2 p1; 0.36 GFLOP), the first U-Net up-convolution (2-D)
#: and nnU-Net's deepest one (3-D: 320→320 channels at 4³, batch 2, k = s = 2; 0.21 GFLOP).
RANK_CASES = {1: "voc3", 2: "unet1", 3: "unet3d1"}

#: The cases of the direction benchmark (``bench_conv.SpeedByDirection``): a U-Net up-convolution (stride ==
#: kernel) and a tiny overlapping layer (k3 s2), where call overhead shows.
DIRECTION_CASES = ["unet1", "tiny_k3s2"]

#: The layouts of the rank benchmarks: the channels first or last at the case's rank (NCL/NCHW/NCDHW,
#: NLC/NHWC/NDHWC).
LAYOUT_FAMILIES = {"channels_first": 0, "channels_last": 1}

#: Large cases, and the backends skipped on them: one call of ``naive`` takes 4–6 s and of ``fft`` 15–80 s
#: there on this 2-core machine, which would make the quick suite take many minutes.
LARGE_CASES = {"unet1", "unet2", "unet3", "unet4", "k4s2p1"}
SLOW_ON_LARGE = {"naive", "fft"}


def layout_of(family: str, rank: int) -> str:
    """The layout of ``family`` (a key of :data:`LAYOUT_FAMILIES`) at spatial ``rank``, e.g. NDHWC."""
    return LAYOUTS_BY_RANK[rank][LAYOUT_FAMILIES[family]]


class TimedSampling:
    """asv's sampling attributes for the time benchmarks, inherited by their classes.

    Chosen so that ``make bench`` records a commit within minutes on 2 shared cores, with results asv keeps
    (asv discards ``--quick`` runs): two processes per combination (``rounds``), each taking 3 to 10 samples
    and stopping after 2 s once it has 3 (``repeat = (min, max, seconds)``), a sample being as many calls as
    fill ``sample_time`` (``number = 0``: asv calibrates it; one call for anything above 20 ms), after
    ``warmup_time`` seconds of untimed calls (setup already made the first, compiling call). asv records the
    median and interquartile range over all samples of both rounds; ``asv compare``/``continuous`` use them to
    decide whether a change is significant.
    """

    rounds = 2
    repeat = (3, 10, 2.0)
    number = 0
    sample_time = 0.02
    warmup_time = 0.1
    min_run_count = 2
    timeout = 300


def require(backend_name, case, *, timed, layout=None, direction="forward"):
    """The problem of ``case`` (in ``layout``, default its own) if ``backend_name`` can run it here, else
    ``NotImplementedError`` (asv: skip): also for a spatial rank or a ``direction`` (``testbed.registry.DIRECTIONS``)
    the backend does not declare.

    ``timed``: the result is a time, so the backend must also give meaningful timings (not the simulator).
    """
    backend = testbed.get_backend(backend_name)
    problem = CASES[case] if layout is None else CASES[case].with_(layout=layout)
    if timed and backend.timing_kind is None:
        raise NotImplementedError(f"{backend_name} is not timed here: {backend.status}")
    if not backend.available:
        raise NotImplementedError(f"{backend_name} is unavailable here: {backend.status}")
    reason = backend.unsupported_reason(problem, direction)
    if reason is not None:
        raise NotImplementedError(f"{backend_name} does not support {case} ({direction}): {reason}")
    if case in LARGE_CASES and backend_name in SLOW_ON_LARGE:
        raise NotImplementedError(f"{backend_name} is too slow for the large case {case}")
    return problem


class Call:
    """One prepared call: ``testbed.conv_transpose2d`` (``1d``/``3d`` at the problem's rank) of ``backend`` on the
    random arrays of ``problem`` (in its layout); with ``allocation="out"`` into a preallocated, already
    faulted-in ``out``."""

    def __init__(self, backend_name, problem, arrays=None, allocation="alloc"):
        self.backend_name = backend_name
        self.problem = problem
        self.conv_transpose = getattr(testbed, f"conv_transpose{problem.rank}d")
        self.x, self.weight, self.bias = problem.random_arrays(0) if arrays is None else arrays
        self.kwargs = call_kwargs(problem)
        if allocation == "out":
            self.kwargs["out"] = np.zeros(problem.output_shape, dtype=problem.dtype)

    def __call__(self):
        return self.conv_transpose(self.x, self.weight, self.bias, backend=self.backend_name, **self.kwargs)


def seconds_per_call(fn, *, batch_seconds=0.05, batches=3):
    """Median over ``batches`` samples of the time per call of ``fn`` (testbed.timing: auto-ranged loops, so
    each sample repeats ``fn`` for at least ``batch_seconds`` and fast calls are not lost in timer
    resolution)."""
    settings = timing.TimingSettings(
        warmup=1, min_repeats=batches, max_repeats=batches, budget_s=0.0, min_sample_s=batch_seconds
    )
    return timing.time_call(fn, settings)["median_s"]
