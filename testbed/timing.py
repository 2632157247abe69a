"""How a time is taken: the one timing module of the testbed (experiments, benchmarks and ``auto``'s tuning).

A time on this kind of machine depends on hidden process state as much as on the code timed: glibc's dynamic
mmap threshold decides whether a large result is page-faulted (and zeroed) on every call or reused from the
heap, and up to four thread pools (numba's OpenMP, numpy's and scipy's OpenBLAS, torch's) spin on the same
cores after their work. So every measurement says how it was taken:

**isolation** — ``process``: each (problem, backend) is timed in a fresh worker process (a new interpreter
running only testbed's worker module, :func:`run_in_worker`; never ``fork``: forking after a parallel region
is undefined behaviour for OpenMP and OpenBLAS; never the caller's script, as multiprocessing's ``spawn``
would re-run it); it sees exactly what a user's fresh program sees, whatever ran before. A worker that
crashes, is killed or times out becomes a row with status ``error`` and the sweep goes on.
``interleaved``: one process, the backends timed round-robin within each repeat (the starting backend
rotating), so pool and allocator state spread evenly over them. ``inline``: one after another in the
calling process (what a loop in a script measures).

**allocation** — ``alloc``: every call allocates its result (what a user's call costs); ``out``: the
result is preallocated once, touched, and written in place through ``conv_transpose2d(..., out=)``.

**statistics** — the first call is timed alone (``first_call_s``: Numba's compile or cache load), then untimed
warm-up calls (``warmup`` of them, and for ``warmup_s`` seconds), then samples: each sample times ``loops`` calls
back to back, ``loops`` chosen from the last untimed call so that a sample lasts at least ``min_sample_s``
(``torch.utils.benchmark.Timer``'s ``blocked_autorange`` and pyperf's calibration do the same, for sub-millisecond
calls); samples are taken until ``budget_s`` is spent, at least ``min_repeats`` and at most ``max_repeats``. A row
reports the median, minimum and interquartile range of the per-call times, the sample count, ``unstable`` when
IQR/median exceeds ``unstable_ratio``, minor page faults per timed call (``getrusage`` deltas) and the peak
resident set size of the process while the cell ran. :func:`speedup_ci` gives a bootstrap confidence interval of a
speedup (ratio of medians) from two sets of samples.

The library never changes another library's global settings (thread counts, allocator); a harness that wants
to may do so, scoped (``threadpoolctl.threadpool_limits`` as a context manager), and record it.
:func:`machine_state` records what matters for a run's ``meta.json``. Why not pyperf itself: its ``Runner``
owns the command line and re-executes the calling script as its workers, which a library call, a resumable
sweep and a test cannot do; its method (calibrated loops, worker processes, stability warnings) is kept.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from . import machine
from .machine import load_average, thread_pools
from .problem import Problem
from .registry import DIRECTIONS, Backend
from .testing import call_kwargs

__all__ = [
    "ALLOCATIONS",
    "ISOLATIONS",
    "STATUSES",
    "Measurement",
    "TimingJob",
    "TimingSettings",
    "WorkerError",
    "exception_status",
    "load_average",
    "machine_state",
    "median_ci",
    "minor_faults",
    "not_run_status",
    "peak_rss_bytes",
    "pool_rounds",
    "prepare_call",
    "reset_peak_rss",
    "rss_bytes",
    "run_in_worker",
    "speedup_ci",
    "summarize",
    "thread_pools",
    "time_backend",
    "time_call",
    "time_jobs",
]

ISOLATIONS = ("process", "interleaved", "inline")
#: What a timing (and a sweep's row) says about a (problem, backend): ``ok``; ``unsupported`` (the backend
#: declines a valid configuration: not a failure); ``unavailable`` (it cannot run here, with the reason);
#: ``error`` (any other exception, with its text); ``simulator: not timed`` (the CUDA simulator is never timed).
STATUSES = ("ok", "unsupported", "unavailable", "error", "simulator: not timed")
ALLOCATIONS = ("alloc", "out")


@dataclass(frozen=True)
class TimingSettings:
    """How long to time each cell: after the first call, untimed warm-up calls, at least ``warmup`` of them
    and until ``warmup_s`` seconds are spent, then samples of ``loops`` calls each (at least ``min_sample_s``
    long) until ``budget_s`` seconds are spent, at least ``min_repeats`` and at most ``max_repeats`` samples.
    ``unstable_ratio``: IQR/median above which a row is flagged ``unstable``. ``worker_timeout_s``: a
    ``process`` worker running longer is killed (an ``error`` row). ``rounds``: under ``process`` isolation,
    each job is timed in this many fresh workers, the jobs taking turns (A B C A B C …, as pyperf spreads a
    benchmark over worker processes), and the samples of its rounds pooled: a minute of other load on a shared
    host then falls on every job alike instead of on whichever ran in it.

    ``warmup_s``: a fresh process runs its first few hundred milliseconds of calls slower (measured here: the
    bare GEMM of unet4 30-31 ms for its first 10 calls, 23-24 ms after; the page cache, the allocator's
    thresholds and the kernel's page tables settle), so a count of warm-up calls alone leaves a process-isolated
    median inside that transient."""

    warmup: int = 1
    min_repeats: int = 5
    max_repeats: int = 30
    budget_s: float = 0.3
    min_sample_s: float = 1e-3
    max_loops: int = 10_000
    unstable_ratio: float = 0.10
    worker_timeout_s: float = 1800.0
    warmup_s: float = 0.3
    rounds: int = 1

    def __post_init__(self):
        for name in ("warmup", "min_repeats", "max_repeats", "max_loops", "rounds"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "warmup" else 1):
                raise ValueError(f"{name} must be an int >= {0 if name == 'warmup' else 1}, got {value!r}")
        if self.max_repeats < self.min_repeats:
            raise ValueError(f"max_repeats ({self.max_repeats}) must be >= min_repeats ({self.min_repeats})")
        for name in ("budget_s", "min_sample_s", "unstable_ratio", "worker_timeout_s", "warmup_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")

    @classmethod
    def quick(cls) -> TimingSettings:
        return cls(warmup=0, min_repeats=2, max_repeats=3, budget_s=0.01, min_sample_s=0.0, warmup_s=0.0)


@dataclass(frozen=True)
class TimingJob:
    """One (problem, backend) to time: picklable, so a worker process can time it. ``backend`` is a registered
    name or a :class:`~testbed.registry.Backend` whose functions are importable (module level); ``rng`` is what
    ``problem.random_arrays`` takes (a seed or a ``numpy.random.Generator``): every job of one case should get
    the same inputs. ``direction``: which computation is timed (:data:`testbed.registry.DIRECTIONS`, see
    :func:`prepare_call`)."""

    problem: Problem
    backend: str | Backend
    allocation: str = "alloc"
    rng: int | np.random.Generator | None = 0
    direction: str = "forward"

    def __post_init__(self):
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")

    @property
    def backend_name(self) -> str:
        return getattr(self.backend, "name", str(self.backend))


class WorkerError(RuntimeError):
    """A worker process ended without a result: killed, crashed, or timed out."""


# ---- process state: page faults and resident memory ------------------------------------------------------------


def minor_faults() -> int:
    """Minor page faults of this process so far (all threads; ``getrusage(RUSAGE_SELF).ru_minflt``), or -1
    where ``resource`` does not exist (Windows)."""
    try:
        import resource
    except ImportError:
        return -1
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak_rss() -> bool:
    """Restart the process's peak-RSS mark at its current size (Linux >= 4.0: ``5`` into
    ``/proc/self/clear_refs``); False where that is not possible (the peak is then the process's lifetime peak)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def rss_bytes() -> int | None:
    """Current resident set size of this process, in bytes (``VmRSS``, or psutil where /proc is missing)."""
    kib = _proc_status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return None


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process since start or the last :func:`reset_peak_rss`, in bytes."""
    kib = _proc_status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux/BSD


# ---- the timer -----------------------------------------------------------------------------------------------


class _Timer:
    """One prepared call being timed: first call, warm-ups and loop calibration (:meth:`start`), then one
    sample per :meth:`sample`, with the page faults of the timed calls counted. With ``catch``, an exception
    of the call is kept in ``error`` (the timer then stops) instead of raised."""

    def __init__(
        self,
        fn: Callable[[], object],
        settings: TimingSettings,
        catch: bool = False,
        before_each: Callable[[], object] | None = None,
    ):
        self.fn, self.settings, self.catch, self.before_each = fn, settings, catch, before_each
        self.samples: list[float] = []
        self.faults = 0
        self.calls = 0
        self.first_call_s = math.nan
        self.loops = 1
        self.error: str | None = None

    def _guarded(self, step: Callable[[], None]) -> None:
        if self.error is not None:
            return
        try:
            step()
        except Exception as exc:
            if not self.catch:
                raise
            self.error = f"{type(exc).__name__}: {exc}"

    def start(self) -> None:
        self._guarded(self._start)

    def sample(self) -> None:
        self._guarded(self._sample)

    def _start(self) -> None:
        fn = self.fn
        begin = time.perf_counter()
        fn()
        last = self.first_call_s = time.perf_counter() - begin
        warm_until, calls = time.perf_counter() + self.settings.warmup_s, 0
        while calls < self.settings.warmup or time.perf_counter() < warm_until:
            begin = time.perf_counter()
            fn()
            last = time.perf_counter() - begin
            calls += 1
        if last < self.settings.min_sample_s:
            self.loops = min(self.settings.max_loops, math.ceil(self.settings.min_sample_s / max(last, 1e-7)))

    def _sample(self) -> None:
        fn, loops = self.fn, self.loops
        if self.before_each is not None:
            self.before_each()
        faults = minor_faults()
        begin = time.perf_counter()
        for _ in range(loops):
            fn()
        elapsed = time.perf_counter() - begin
        self.faults += minor_faults() - faults
        self.samples.append(elapsed / loops)
        self.calls += loops

    def measurement(self, memory: dict | None = None) -> Measurement:
        """The samples taken, with ``memory``'s peak-RSS columns (:meth:`_Memory.columns`)."""
        counted = self.calls and minor_faults() >= 0
        return Measurement(
            tuple(self.samples),
            loops=self.loops,
            first_call_s=self.first_call_s,
            minor_faults_per_call=self.faults / self.calls if counted else math.nan,
            unstable_ratio=self.settings.unstable_ratio,
            **(memory or {}),
        )

    def result(self, memory: dict | None = None, keep_samples: bool = False) -> dict:
        if self.error is not None:
            return {"status": "error", "message": self.error}
        return self.measurement(memory).row(keep_samples)


class _Memory:
    """The process's peak resident size over the timed samples (first calls and warm-ups excluded: they
    include one-time costs such as a library import or a JIT compile)."""

    def __init__(self):
        self.start_rss: int | None = None

    def start(self) -> None:
        reset_peak_rss()
        self.start_rss = rss_bytes()

    def columns(self) -> dict:
        peak, start = peak_rss_bytes(), self.start_rss
        return {
            "peak_rss_mb": math.nan if peak is None else peak / 2**20,
            "peak_rss_increase_mb": math.nan if peak is None or start is None else (peak - start) / 2**20,
        }


def _round_robin(timers: Sequence[_Timer], settings: TimingSettings, memory: _Memory | None = None) -> None:
    """Start every timer in turn, then sample them round-robin (rotating who goes first) until the budget of
    ``budget_s`` per timer is spent. One timer: plain repeats. ``memory`` starts watching after the starts."""
    for timer in timers:
        timer.start()
    if memory is not None:
        memory.start()
    deadline = time.perf_counter() + settings.budget_s * len(timers)
    repeat = 0
    while repeat < settings.max_repeats and (repeat < settings.min_repeats or time.perf_counter() < deadline):
        shift = repeat % max(len(timers), 1)
        for timer in list(timers[shift:]) + list(timers[:shift]):
            timer.sample()
        repeat += 1


@dataclass(frozen=True)
class Measurement:
    """One timed call, after ``torch.utils.benchmark.Measurement``: the per-call samples and how they were taken,
    with the statistics as properties and :meth:`merge` for rounds in several fresh workers.

    ``samples_s``: per-call seconds, one per sample (each sample timed ``loops`` calls back to back);
    ``first_call_s``: the very first call (compile, cache load, page faults); ``minor_faults_per_call`` over the
    timed calls; ``peak_rss_mb`` / ``peak_rss_increase_mb``: the process's peak resident size over the samples,
    and its rise above the size before them; ``unstable_ratio``: IQR/median above which it is ``unstable``;
    ``round_medians_s``: the median of each fresh-worker round a merged measurement pools (empty: one round).
    :meth:`row` gives the columns a results file holds."""

    samples_s: tuple[float, ...]
    loops: int = 1
    first_call_s: float = math.nan
    minor_faults_per_call: float = math.nan
    peak_rss_mb: float = math.nan
    peak_rss_increase_mb: float = math.nan
    unstable_ratio: float = TimingSettings.unstable_ratio
    round_medians_s: tuple[float, ...] = ()

    def __post_init__(self):
        samples = tuple(float(value) for value in self.samples_s)
        if not samples:
            raise ValueError("no samples to summarize")
        object.__setattr__(self, "samples_s", samples)

    @functools.cached_property
    def _quartiles(self) -> tuple[float, float, float]:
        q25, median, q75 = np.percentile(np.asarray(self.samples_s), [25, 50, 75])
        return float(q25), float(median), float(q75)

    @property
    def median_s(self) -> float:
        return self._quartiles[1]

    @property
    def min_s(self) -> float:
        return min(self.samples_s)

    @property
    def iqr_s(self) -> float:
        return self._quartiles[2] - self._quartiles[0]

    @property
    def repeats(self) -> int:
        return len(self.samples_s)

    @property
    def unstable(self) -> bool:
        """IQR/median above ``unstable_ratio``."""
        return bool(self.median_s > 0 and self.iqr_s / self.median_s > self.unstable_ratio)

    @property
    def rounds(self) -> int:
        return max(len(self.round_medians_s), 1)

    @property
    def round_spread(self) -> float:
        """Slowest round's median over the fastest's, minus 1 (0 for one round): how much a fresh process alone
        moves the time."""
        medians = self.round_medians_s or (self.median_s,)
        return max(medians) / min(medians) - 1 if min(medians) > 0 else math.nan

    def statistics(self) -> dict:
        """``median_s``, ``min_s``, ``iqr_s``, ``repeats`` and ``unstable``."""
        return {
            "median_s": self.median_s,
            "min_s": self.min_s,
            "iqr_s": self.iqr_s,
            "repeats": self.repeats,
            "unstable": self.unstable,
        }

    def row(self, keep_samples: bool = False) -> dict:
        """The columns of a results file: :meth:`statistics`, ``first_call_s``, ``loops``,
        ``minor_faults_per_call``, ``peak_rss_mb``, ``peak_rss_increase_mb``, for a merged measurement ``rounds``
        and ``round_spread``, and with ``keep_samples`` the samples (``samples_s``)."""
        row = {
            **self.statistics(),
            "first_call_s": self.first_call_s,
            "loops": self.loops,
            "minor_faults_per_call": self.minor_faults_per_call,
            "peak_rss_mb": self.peak_rss_mb,
            "peak_rss_increase_mb": self.peak_rss_increase_mb,
        }
        if self.round_medians_s:
            row.update(rounds=self.rounds, round_spread=self.round_spread)
        if keep_samples:
            row["samples_s"] = list(self.samples_s)
        return row

    @classmethod
    def merge(cls, measurements: Sequence[Measurement]) -> Measurement:
        """Rounds of one job (each a fresh worker) as one measurement: the samples pooled, the first round's first
        call and loops, the mean faults per call, the largest peak RSS, and each round's median."""
        if not measurements:
            raise ValueError("no measurements to merge")
        first = measurements[0]
        return cls(
            samples_s=tuple(value for m in measurements for value in m.samples_s),
            loops=first.loops,
            first_call_s=first.first_call_s,
            minor_faults_per_call=float(np.mean([m.minor_faults_per_call for m in measurements])),
            peak_rss_mb=max(m.peak_rss_mb for m in measurements),
            peak_rss_increase_mb=max(m.peak_rss_increase_mb for m in measurements),
            unstable_ratio=first.unstable_ratio,
            round_medians_s=tuple(median for m in measurements for median in (m.round_medians_s or (m.median_s,))),
        )

    @classmethod
    def from_row(cls, row: dict, unstable_ratio: float = TimingSettings.unstable_ratio) -> Measurement | None:
        """The measurement a result row holds (one with ``samples_s``, as ``keep_samples`` gives), else None."""
        samples = row.get("samples_s")
        if not samples:
            return None

        def number(key: str) -> float:
            value = row.get(key)
            return float(value) if isinstance(value, (int, float)) else math.nan

        return cls(
            samples_s=tuple(samples),
            loops=int(row.get("loops", 1) or 1),
            first_call_s=number("first_call_s"),
            minor_faults_per_call=number("minor_faults_per_call"),
            peak_rss_mb=number("peak_rss_mb"),
            peak_rss_increase_mb=number("peak_rss_increase_mb"),
            unstable_ratio=unstable_ratio,
        )


def summarize(samples, unstable_ratio: float = TimingSettings.unstable_ratio) -> dict:
    """Median, minimum, interquartile range and count of per-call times, and ``unstable`` (IQR/median above
    ``unstable_ratio``): :meth:`Measurement.statistics`."""
    return Measurement(tuple(np.asarray(samples, dtype=float).ravel()), unstable_ratio=unstable_ratio).statistics()


def time_call(
    fn: Callable[[], object],
    settings: TimingSettings = TimingSettings(),
    *,
    before_each: Callable[[], object] | None = None,
    keep_samples: bool = False,
) -> dict:
    """Time ``fn()`` in this process (see :class:`TimingSettings`): the statistics of :func:`summarize`, plus
    ``first_call_s``, ``loops``, ``minor_faults_per_call``, ``peak_rss_mb`` (the process's peak resident size
    during the timed samples, first call and warm-ups excluded), ``peak_rss_increase_mb`` (above its size
    before the samples), ``timing_method``, and with ``keep_samples`` the per-call samples (``samples_s``).
    ``before_each``, if given, is called (untimed, its faults not counted) right before every sample."""
    timer = _Timer(fn, settings, before_each=before_each)
    memory = _Memory()
    _round_robin([timer], settings, memory)
    row = timer.result(memory.columns(), keep_samples)
    samples = row.pop("samples_s", None)
    return {**row, "timing_method": "perf_counter", **({"samples_s": samples} if keep_samples else {})}


def _bootstrap(sample_sets, statistic, confidence: float, n_resamples: int, seed: int) -> tuple[float, float]:
    """The one bootstrap of the testbed: a ``confidence`` interval of ``statistic`` over ``sample_sets``, each
    resampled independently (``scipy.stats.bootstrap``, ``paired=False``, percentile method: robust on the few,
    skewed samples a timing gives); ``(nan, nan)`` with fewer than 2 samples in any set."""
    from scipy import stats

    sets = tuple(np.asarray(samples, dtype=float) for samples in sample_sets)
    if any(samples.size < 2 for samples in sets):
        return math.nan, math.nan
    result = stats.bootstrap(
        sets,
        statistic,
        vectorized=True,
        paired=False,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def median_ci(samples, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap confidence interval of ``median(samples)`` (see :func:`speedup_ci`); ``(nan, nan)`` with fewer
    than 2 samples."""
    return _bootstrap((samples,), np.median, confidence, n_resamples, seed)


def speedup_ci(
    baseline_samples, samples, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap confidence interval of ``median(baseline) / median(samples)`` (> 1: faster than the baseline).

    The two sets are resampled independently (``scipy.stats.bootstrap`` with ``paired=False``, percentile
    method: robust on the few, skewed samples a timing gives). ``(nan, nan)`` with fewer than 2 samples in
    either set."""

    def ratio(a, b, axis=-1):
        return np.median(a, axis=axis) / np.median(b, axis=axis)

    return _bootstrap((baseline_samples, samples), ratio, confidence, n_resamples, seed)


# ---- timing a backend --------------------------------------------------------------------------------------------


def prepare_call(
    backend, problem: Problem, x, weight, bias, allocation: str = "alloc", direction: str = "forward"
) -> Callable[[], object]:
    """The call to time: the public ``conv_transpose2d`` (``conv_transpose1d``/``3d`` at ``problem.rank``; every
    backend pays the same validation), with a preallocated, already faulted-in ``out`` in ``out`` mode. For a
    backward ``direction``, :func:`testbed.conv_transpose_backward` asked for that one gradient (``output_mask``)
    of a standard-normal ``grad_output`` (seed 1; ``bias`` unused), its ``out`` entry preallocated in ``out``
    mode."""
    from . import api
    from .backward import conv_transpose_backward

    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    kwargs = call_kwargs(problem)
    if direction == "forward":
        conv_transpose = getattr(api, f"conv_transpose{problem.rank}d")
        if allocation == "out":
            kwargs["out"] = np.zeros(problem.output_shape, dtype=problem.dtype)
        return lambda: conv_transpose(x, weight, bias, backend=backend, **kwargs)
    grad_output = np.random.default_rng(1).standard_normal(problem.output_shape).astype(problem.dtype)
    data = direction == "backward_data"
    if allocation == "out":
        target = np.zeros(problem.input_shape if data else problem.weight_shape, dtype=problem.dtype)
        kwargs["out"] = (target, None, None) if data else (None, target, None)
    mask = (data, not data, False)
    return lambda: conv_transpose_backward(grad_output, x, weight, output_mask=mask, backend=backend, **kwargs)


def not_run_status(backend: Backend, problem: Problem, direction: str = "forward") -> dict | None:
    """``{"status", "message"}`` when ``backend`` cannot run ``problem`` in ``direction`` here — ``unavailable``
    (its probe's reason) or ``unsupported`` (the reason it declines) — else None. Shared with the harness's sweep
    rows."""
    ok, why = backend.probe()
    if not ok:
        return {"status": "unavailable", "message": why}
    reason = backend.unsupported_reason(problem, direction)
    if reason is not None:
        return {"status": "unsupported", "message": reason}
    return None


def exception_status(exc: Exception) -> dict:
    """``{"status", "message"}`` of an exception raised while running or timing a backend:
    :class:`~testbed.problem.UnsupportedConfiguration` is ``unsupported`` (not a failure),
    :class:`~testbed.registry.BackendUnavailable` ``unavailable``, anything else ``error`` with its type and text.
    Shared with the harness's sweep rows."""
    from .problem import UnsupportedConfiguration
    from .registry import BackendUnavailable

    if isinstance(exc, UnsupportedConfiguration):
        return {"status": "unsupported", "message": exc.reason}
    if isinstance(exc, BackendUnavailable):
        return {"status": "unavailable", "message": str(exc)}
    return {"status": "error", "message": f"{type(exc).__name__}: {exc}"}


def _untimed(backend, problem: Problem, direction: str = "forward") -> dict | None:
    """A status row for a backend that is not timed on ``problem`` in ``direction`` here, or None."""
    status = not_run_status(backend, problem, direction)
    if status is None and backend.timing_kind is None:
        return {"status": "simulator: not timed", "message": backend.probe()[1]}
    return status


def time_backend(
    backend,
    problem: Problem,
    x,
    weight,
    bias=None,
    settings: TimingSettings = TimingSettings(),
    *,
    allocation: str = "alloc",
    keep_samples: bool = False,
    direction: str = "forward",
) -> dict:
    """Timing statistics of one backend on one problem in this process, or a ``status`` saying why it was not
    timed (unavailable, unsupported, the CUDA simulator). ``direction``: the forward, or one gradient of
    :func:`testbed.conv_transpose_backward` (:func:`prepare_call`).

    CPU backends: :func:`time_call` of the public ``conv_transpose2d`` (with the samples as ``samples_s`` if
    ``keep_samples``). GPU backends (``timing_kind == "gpu"``): the
    first call is timed with perf_counter (JIT compile + transfers), then, if the backend's module defines
    ``time_cuda_backend(name, problem, *, repeats, direction) -> {"kernel_ms", "with_transfers_ms"}``
    (CUDA-event medians, testbed/backends/numba_cuda.py), ``median_s`` is its kernel time on device-resident
    arrays (for a backward direction: the gradient kernels in the backend's native layout) and
    ``with_transfers_s`` its host-to-host time; without that hook host arrays are timed with perf_counter,
    transfers included (``timing_method`` says which).
    """
    from .registry import get_backend

    backend = get_backend(backend)
    skipped = _untimed(backend, problem, direction)
    if skipped is not None:
        return skipped
    call = prepare_call(backend, problem, x, weight, bias, allocation, direction)
    module = sys.modules.get(getattr(backend.run, "__module__", ""), None)
    hook = getattr(module, "time_cuda_backend", None) if backend.timing_kind == "gpu" else None
    if hook is not None:
        start = time.perf_counter()
        call()
        first = time.perf_counter() - start
        repeats = max(settings.min_repeats, min(settings.max_repeats, 10))
        result = hook(backend.name, problem, repeats=repeats, direction=direction)
        return {
            "first_call_s": first,
            "median_s": result["kernel_ms"] / 1e3,
            "min_s": math.nan,
            "iqr_s": math.nan,
            "repeats": repeats,
            "with_transfers_s": result["with_transfers_ms"] / 1e3,
            "timing_method": "cuda events (device arrays; median only)",
            "allocation": "alloc",
        }
    stats = time_call(call, settings, keep_samples=keep_samples)
    stats["allocation"] = allocation
    if backend.timing_kind == "gpu":
        stats["timing_method"] += " (host arrays, includes transfers)"
    return stats


def _job_row(job: TimingJob, result: dict, isolation: str) -> dict:
    load = load_average()
    row = {
        "backend": job.backend_name,
        "isolation": isolation,
        "allocation": job.allocation,
        "load_1min": load[0] if load else math.nan,
    }
    row.update(status="ok", message="")
    row.update(result)
    return row


def _time_job_here(job: TimingJob, settings: TimingSettings, keep_samples: bool) -> dict:
    """One job timed in this process; every exception becomes a status (:func:`exception_status`; never
    raises)."""
    try:
        x, weight, bias = job.problem.random_arrays(job.rng)
        return time_backend(
            job.backend,
            job.problem,
            x,
            weight,
            bias,
            settings,
            allocation=job.allocation,
            keep_samples=keep_samples,
            direction=job.direction,
        )
    except Exception as exc:
        return exception_status(exc)


def _time_interleaved(jobs: Sequence[TimingJob], settings: TimingSettings, keep_samples: bool) -> list[dict]:
    """The CPU jobs round-robin in this process; the others (untimed, GPU) one by one as in ``inline``."""
    from .registry import get_backend

    timers: dict[int, _Timer] = {}
    for i, job in enumerate(jobs):
        backend = get_backend(job.backend)
        if _untimed(backend, job.problem, job.direction) is None and backend.timing_kind == "cpu":
            x, weight, bias = job.problem.random_arrays(job.rng)
            timers[i] = _Timer(
                prepare_call(backend, job.problem, x, weight, bias, job.allocation, job.direction), settings, catch=True
            )
    watch = _Memory()
    _round_robin(list(timers.values()), settings, watch)
    memory = watch.columns()  # the group's peak: one process ran them all
    results = []
    for i, job in enumerate(jobs):
        if i not in timers:
            results.append(_time_job_here(job, settings, keep_samples))
            continue
        result = timers[i].result(memory)
        if result.get("status") != "error":
            result.update(allocation=job.allocation, timing_method="perf_counter")
            if keep_samples:
                result["samples_s"] = list(timers[i].samples)
        results.append(result)
    return results


def time_jobs(
    jobs: Sequence[TimingJob],
    settings: TimingSettings = TimingSettings(),
    *,
    isolation: str = "process",
    keep_samples: bool = False,
    start_method: str | None = None,
) -> list[dict]:
    """Time every job; one row per job, in order: ``backend``, ``isolation``, ``allocation``, ``load_1min``
    (the 1-minute load average when the row was finished: other processes on the machine),
    ``status`` (``ok``, ``unsupported``, ``unavailable``, ``error``, ``simulator: not timed``), ``message``,
    and the statistics of :func:`time_backend`.

    ``process``: each job in its own fresh worker (see :func:`run_in_worker`); a worker that dies gives an
    ``error`` row and the next job runs. ``interleaved``: all jobs in this process, sampled round-robin
    (``peak_rss_mb`` is then the group's). ``inline``: one after another in this process.
    """
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}")
    if isolation == "interleaved":
        results = _time_interleaved(jobs, settings, keep_samples)
    elif isolation == "inline":
        results = [_time_job_here(job, settings, keep_samples) for job in jobs]
    else:
        rounds: list[list[dict]] = [[] for _ in jobs]
        for _ in range(settings.rounds):
            for i, job in enumerate(jobs):
                if rounds[i] and rounds[i][0].get("status", "ok") not in ("ok", "error"):
                    continue  # unsupported, unavailable: one answer is enough
                try:
                    rounds[i].append(
                        run_in_worker(
                            _time_job_here,
                            job,
                            settings,
                            True,
                            timeout_s=settings.worker_timeout_s,
                            start_method=start_method,
                        )
                    )
                except WorkerError as exc:
                    rounds[i].append({"status": "error", "message": str(exc)})
        results = [pool_rounds(results, settings, keep_samples) for results in rounds]
    return [_job_row(job, result, isolation) for job, result in zip(jobs, results)]


def pool_rounds(results: Sequence[dict], settings: TimingSettings, keep_samples: bool = False) -> dict:
    """One job's rounds (each a fresh worker, with its ``samples_s``) as one result (:meth:`Measurement.merge`):
    the samples of every round that timed, pooled, the first round's other fields (its first call), the mean
    faults per call, the largest peak RSS, and ``rounds`` (how many timed) with ``round_spread`` (slowest round
    median / fastest - 1: how much a fresh process alone moves the time). A job none of whose rounds timed gives
    its first result."""
    timed = [r for r in results if r.get("status", "ok") == "ok" and r.get("samples_s")]
    if not timed:
        first = dict(results[0])
        if not keep_samples:
            first.pop("samples_s", None)
        return first
    rounds = [Measurement.from_row(r, settings.unstable_ratio) for r in timed]
    merged = Measurement.merge([m for m in rounds if m is not None])
    pooled = {**timed[0], **merged.row(keep_samples)}
    if not keep_samples:
        pooled.pop("samples_s", None)
    return pooled


# ---- worker processes --------------------------------------------------------------------------------------------


def run_in_worker(fn: Callable, *args, timeout_s: float | None = None, start_method: str | None = None):
    """``fn(*args)`` in a fresh worker process: its return value, or :class:`WorkerError` if the process dies
    first (signal, crash), raises (the message carries the exception's type and text), or runs past
    ``timeout_s`` (it is then killed).

    The worker is a new interpreter (``sys.executable``) that runs only testbed's worker module
    (:mod:`testbed._worker`): it gets this process's environment, working directory and ``sys.path``, imports
    what ``fn`` and the arguments need, and never imports or re-runs the calling script (``__main__``), so a
    script without an ``if __name__ == "__main__":`` guard, ``python -c``, standard input and notebooks all
    work. ``fn``, the arguments and the result must be picklable, ``fn`` by its qualified name from an
    importable module: something defined in ``__main__`` is refused with a TypeError
    (:class:`testbed._worker.MainModuleError`) before any process starts. On every way out — a result, a
    timeout, ``KeyboardInterrupt`` — the worker is ended and reaped.

    ``start_method``: ``None``, ``"spawn"`` or ``"forkserver"`` (kept for compatibility: every worker is a fresh
    interpreter, as with ``spawn``); ``"fork"`` is refused (forking after parallel work breaks OpenMP and
    OpenBLAS)."""
    from . import _worker

    if start_method not in (None, "spawn", "forkserver"):
        raise ValueError(
            f"start_method must be 'spawn' or 'forkserver' (never 'fork': forking after parallel "
            f"work breaks OpenMP and OpenBLAS), got {start_method!r}"
        )
    return _worker.run(fn, args, timeout_s, WorkerError)


# ---- the machine's state -----------------------------------------------------------------------------------------


def machine_state() -> dict:
    """What changes timings on this machine, for a run's metadata: :func:`testbed.machine.describe` (thread
    pools, the allocator/threading environment, load average, CPU governor, cores, versions, GPU)."""
    return machine.describe()
