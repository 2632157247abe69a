"""How ``auto`` chooses: planner modes, measured decisions (:func:`tune`) and their explanation (after FFTW).

``auto`` runs, for a call, the backend :func:`choose_backend` picks, in this order (:func:`planned_backend`,
then the class rule of :mod:`testbed.preference`):

1. **wisdom** — the backend measured fastest for this exact problem signature on this machine
   (:mod:`testbed.wisdom`), if it is still available and supports the problem;
2. in the ``measure`` planner mode, for a signature without wisdom: **a measurement now** — the candidates
   are timed (:func:`tune`), the winner is stored as wisdom and run;
3. **the class rule** — the first available backend supporting the problem in the table row of its class
   (``estimate``, FFTW's ``FFTW_ESTIMATE``: no timing; the default), or for CUDA device arrays the device row.

The planner mode is ``"estimate"`` unless set by :func:`set_planner` (per thread / asyncio task, also as a
context manager) or by the environment variable ``TESTBED_PLANNER`` (``estimate`` or ``measure``).

**What a measurement times.** The candidates are the registered backends for the arrays' device (host
backends for NumPy arrays, CUDA backends for device arrays; never a dispatcher) that are available and
support the problem, ordered as the class rule orders them. The reference implementations
(:data:`REFERENCE_BACKENDS`: the oracle ``naive`` and ``fft``, 10-1000x slower than the others wherever both
were measured) are left out whenever another candidate supports the problem. Each candidate is timed through
:mod:`testbed.timing` on random arrays of the problem's shape: first a *pilot* (its first call, then three warm
calls); a candidate whose fastest warm call is already ``cut_factor`` times slower than the best median so far is cut
there, the others get the full measurement (warm-ups, then samples until the budget is spent). The isolation
is ``process`` by default: each candidate in a fresh worker process, so that no candidate inherits the
thread pools or the allocator state another left behind; ``interleaved`` and ``inline``
run in this process, faster and less trustworthy. The winner is the lowest median.

**A decision survives noise.** One round can be decided by a burst of other load on a shared host. So a winner
that overturns the class rule's choice, or that beats the runner-up by less than their measured spread (the
bootstrap 95 % interval of the ratio of their medians reaches 1), must win again: the contenders (winner,
runner-up, the rule's choice) are timed again in fresh workers, taking turns in the reverse order, and the one
that wins two rounds (of at most three) is kept.
The wisdom entry keeps ``rounds``, ``round_winners``, ``margin`` (runner-up median over winner median, minus 1)
and ``failed`` (the candidates whose measurement failed, and why); :func:`explain` shows them. When no candidate
can be measured :func:`tune` raises :class:`TuneError` naming each and why; the ``measure`` planner then warns
once and follows the class rule.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any

from . import machine, preference, wisdom
from ._environ import env_choice
from ._worker import MainModuleError
from .problem import Problem
from .registry import DIRECTIONS, Backend, get_backend, is_device_array, list_backends
from .timing import (
    ISOLATIONS,
    Measurement,
    TimingJob,
    TimingSettings,
    WorkerError,
    median_ci,
    pool_rounds,
    run_in_worker,
    speedup_ci,
    time_backend,
    time_jobs,
)

__all__ = [
    "MODES",
    "PLANNER_ENV",
    "REFERENCE_BACKENDS",
    "PlannerConfig",
    "CandidateTiming",
    "TuneError",
    "TuneResult",
    "Explanation",
    "set_planner",
    "get_planner",
    "tune",
    "tune_problem",
    "explain",
    "explain_problem",
    "choose_backend",
    "planned_backend",
    "rule_backend",
]

MODES = ("estimate", "measure")
PLANNER_ENV = "TESTBED_PLANNER"
#: Never timed when any other backend supports the problem: the float64-exact oracle (Python loops over
#: channels and taps) and the FFT backend (full kernel spectra), seconds to minutes per call on the suites.
REFERENCE_BACKENDS = ("naive", "fft")
#: The measurement a ``measure``-mode first call makes: small, as the first call pays for it.
MEASURE_SETTINGS = TimingSettings(
    warmup=1, min_repeats=5, max_repeats=20, budget_s=0.1, min_sample_s=1e-3, worker_timeout_s=600.0, warmup_s=0.1
)
#: The pilot: a candidate's first call, then three warm calls, of which the fastest counts (on a busy machine
#: one call of a fraction of a millisecond can lose a whole scheduler time slice).
_PILOT = TimingSettings(warmup=0, min_repeats=3, max_repeats=3, budget_s=0.0, min_sample_s=0.0, warmup_s=0.0)


# ---- planner modes ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannerConfig:
    """The planner in force: ``mode`` (``"estimate"`` or ``"measure"``) and, for ``measure``, how a new
    signature is timed (``isolation``, ``settings``, ``cut_factor``; see :func:`tune`)."""

    mode: str = "estimate"
    isolation: str = "process"
    settings: TimingSettings = MEASURE_SETTINGS
    cut_factor: float = 3.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"planner mode must be one of {MODES}, got {self.mode!r}")
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {ISOLATIONS}, got {self.isolation!r}")
        if not isinstance(self.settings, TimingSettings):
            raise TypeError(f"settings must be a testbed.timing.TimingSettings, got {type(self.settings).__name__}")
        if not (isinstance(self.cut_factor, (int, float)) and self.cut_factor >= 1):
            raise ValueError(f"cut_factor must be a number >= 1, got {self.cut_factor!r}")


_PLANNER: ContextVar[PlannerConfig | None] = ContextVar("testbed_planner", default=None)
_MEASURE_LOCK = threading.RLock()
#: Signatures a measurement could not decide here (nothing timable, e.g. the CUDA simulator): not retried.
_UNDECIDED: set[str] = set()
#: The planner each value of TESTBED_PLANNER gives (built once: read on every auto call).
_FROM_ENVIRONMENT = {mode: PlannerConfig(mode) for mode in MODES}


class set_planner:
    """Set the planner mode of ``auto`` for this thread or asyncio task; also a context manager.

    Parameters
    ----------
    mode : {"estimate", "measure"}
        ``"estimate"``: wisdom, else the class rules, no timing (the default). ``"measure"``: wisdom, else the
        first call with a new problem signature times the candidates (see :func:`tune`), stores the winner as
        wisdom and runs it.
    isolation : {"process", "interleaved", "inline"}, default "process"
        How ``measure`` times the candidates (:mod:`testbed.timing`): ``process`` is the trustworthy one (a
        fresh worker per candidate, seconds per new signature), the others run in this process.
    settings : testbed.timing.TimingSettings, optional
        The timing budget of a ``measure`` (default :data:`MEASURE_SETTINGS`: at least 5 samples, ~0.1 s).
    cut_factor : float, default 3.0
        A candidate whose fastest of 3 warm calls is this many times slower than the best median so far is not
        timed further.

    Notes
    -----
    Called plainly, the mode stays set for the calling thread or task (a :class:`contextvars.ContextVar`);
    used in a ``with`` block, the previous mode is restored at its end. Other threads are not affected; the
    environment variable ``TESTBED_PLANNER`` sets the default of every thread. Wisdom is applied in both
    modes.

    See Also
    --------
    get_planner, tune, explain

    Examples
    --------
    >>> import testbed
    >>> testbed.get_planner().mode
    'estimate'
    >>> with testbed.set_planner("measure", isolation="interleaved"):
    ...     print(testbed.get_planner().mode)
    measure
    >>> testbed.get_planner().mode
    'estimate'
    """

    def __init__(
        self,
        mode: str,
        *,
        isolation: str = "process",
        settings: TimingSettings = MEASURE_SETTINGS,
        cut_factor: float = 3.0,
    ):
        self.config = PlannerConfig(mode, isolation, settings, cut_factor)
        self._token = _PLANNER.set(self.config)

    def __enter__(self) -> PlannerConfig:
        return self.config

    def __exit__(self, *exc_info) -> None:
        _PLANNER.reset(self._token)


def get_planner() -> PlannerConfig:
    """The planner in force here: the innermost :func:`set_planner` of this thread/task, else
    ``$TESTBED_PLANNER``, else ``estimate``. An invalid ``TESTBED_PLANNER`` warns once and reads as ``estimate``
    (:mod:`testbed._environ`).

    Examples
    --------
    >>> import testbed
    >>> testbed.get_planner()
    PlannerConfig(mode='estimate', isolation='process', settings=..., cut_factor=3.0)
    """
    config = _PLANNER.get()
    if config is not None:
        return config
    return env_choice(PLANNER_ENV, _FROM_ENVIRONMENT, _FROM_ENVIRONMENT["estimate"])


# ---- results -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CandidateTiming:
    """One candidate of a measurement. ``status``: ``ok`` (timed), ``cut`` (pilot too slow), ``excluded``
    (a reference backend), ``unsupported``, ``unavailable``, ``error`` or ``simulator: not timed``. Times in
    seconds per call; ``ci_s``: bootstrap 95 % interval of the median; ``ratio``: median over the winner's,
    with its bootstrap 95 % interval ``ratio_ci``; ``first_call_s``: the very first call (compile, cache
    load, page faults); ``pilot_s``: the fastest of the pilot's 3 warm calls; ``measurement``: the
    :class:`testbed.timing.Measurement` these were read from (None where nothing was sampled: a cut, a failure,
    a GPU backend's CUDA-event median)."""

    backend: str
    status: str
    median_s: float = math.nan
    ci_s: tuple[float, float] = (math.nan, math.nan)
    min_s: float = math.nan
    iqr_s: float = math.nan
    repeats: int = 0
    first_call_s: float = math.nan
    pilot_s: float = math.nan
    ratio: float = math.nan
    ratio_ci: tuple[float, float] = (math.nan, math.nan)
    message: str = ""
    samples_s: tuple[float, ...] = field(default=(), repr=False)
    measurement: Measurement | None = field(default=None, repr=False)


def _ms(seconds: float) -> str:
    return "—" if not math.isfinite(seconds) else f"{seconds * 1e3:.3g} ms"


def _decided(rounds: int, round_winners, margin: float | None) -> str:
    """``; 2 rounds (col2im, col2im), margin 12 %`` for a summary line."""
    text = f"; {rounds} rounds ({', '.join(w or 'none' for w in round_winners)})" if rounds > 1 else ""
    return text + (f", margin {margin:.1%}" if margin is not None and math.isfinite(margin) else "")


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` found: every candidate's timing (``candidates``, in the order timed), the ``winner``
    (None only in the result a :class:`TuneError` carries), the class rule's choice (``rule``), and the wisdom
    entry stored (``stored``, None if not stored). ``elapsed_s``: the wall time the whole measurement took
    (what a ``measure``-mode first call pays on top of its own computation). ``rounds``: how many rounds decided
    (more than 1 when the first round's winner had to win again, see :func:`tune`), ``round_winners`` each
    round's fastest, ``margin`` the runner-up's median over the winner's, minus 1 (None without a runner-up)."""

    problem: Problem
    signature: str
    candidates: tuple[CandidateTiming, ...]
    winner: str | None
    rule: str | None
    isolation: str
    elapsed_s: float
    stored: dict[str, Any] | None = None
    rounds: int = 1
    round_winners: tuple[str, ...] = ()
    margin: float | None = None

    def timing(self, backend: str) -> CandidateTiming:
        """The candidate named ``backend`` (KeyError if it was not a candidate)."""
        for candidate in self.candidates:
            if candidate.backend == backend:
                return candidate
        raise KeyError(f"{backend!r} was not a candidate; candidates: {[c.backend for c in self.candidates]}")

    @property
    def medians_s(self) -> dict[str, float]:
        """``{backend: median}`` of the timed candidates."""
        return {c.backend: c.median_s for c in self.candidates if c.status == "ok"}

    def __str__(self) -> str:
        decided = _decided(self.rounds, self.round_winners, self.margin)
        lines = [
            f"tune {self.signature}: winner {self.winner or 'none'} (class rule: {self.rule or 'none'}; "
            f"{self.isolation} isolation, {self.elapsed_s:.2f} s{decided})",
            f"  {'backend':<18}{'status':<13}{'median':>10}  {'95% CI':<19}{'x winner':>9}  {'first call':>10}",
        ]
        for c in self.candidates:
            ci = f"{c.ci_s[0] * 1e3:.3g}–{c.ci_s[1] * 1e3:.3g} ms" if math.isfinite(c.ci_s[0]) else ""
            ratio = f"{c.ratio:.2f}" if math.isfinite(c.ratio) else ""
            line = (
                f"  {c.backend:<18}{c.status:<13}{_ms(c.median_s):>10}  {ci:<19}{ratio:>9}  {_ms(c.first_call_s):>10}"
            )
            if c.message and c.status != "ok":
                line += f"  {c.message[:90]}"
            lines.append(line.rstrip())
        return "\n".join(lines)


@dataclass(frozen=True)
class Explanation:
    """Which backend ``auto`` would run for a call, and why.

    ``reason``: ``"wisdom"`` (a stored measurement: ``measured_s`` holds its medians, ``wisdom`` the entry),
    ``"rule"`` (the class rule: ``problem_class`` and its ``table_row``; ``skipped`` lists the row's earlier
    backends with the reason each was passed over) or ``"device"`` (CUDA device arrays: the device row).
    ``backend`` is None only when no backend can run the call here (auto would raise). ``note`` adds what the
    planner mode or an unusable wisdom entry changes. The class rule reads the preference table of
    ``table_isa``: the ISA row this process runs (``isa_row``, :func:`testbed.isa.selected_isa`), or where that
    row was never measured the nearest measured row's (``table_fallback``); ``table_source`` names its file,
    machine and run (:func:`testbed.preference.preference_table`). ``kernels``: the chosen backend's account of how
    it computes the call (:attr:`testbed.registry.Backend.describe`; ``numba_cpu``: its path and the ISA row its
    kernels were built for, with the vector width and register tile).
    """

    backend: str | None
    reason: str
    signature: str
    planner: str
    problem_class: str
    table_row: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    measured_s: dict[str, float] = field(default_factory=dict)
    wisdom: dict[str, Any] | None = None
    rule: str | None = None
    note: str = ""
    isa_row: str = ""
    table_isa: str = ""
    table_fallback: bool = False
    table_source: str = ""
    kernels: str = ""

    def __str__(self) -> str:
        lines = [
            f"auto runs {self.backend or 'nothing (no backend can)'} — reason: {self.reason}",
            f"  problem: {self.signature}",
        ]
        if self.reason == "wisdom":
            entry = self.wisdom or {}
            times = ", ".join(f"{name} {_ms(t)}" for name, t in sorted(self.measured_s.items(), key=lambda i: i[1]))
            decided = _decided(entry.get("rounds", 1), entry.get("round_winners", ()), entry.get("margin"))
            lines.append(
                f"  measured by {entry.get('source', '?')} at {entry.get('time', '?')} "
                f"({entry.get('isolation', '?')} isolation{decided}): {times or 'no times recorded'}"
            )
            if entry.get("confirmation"):
                lines.append(f"  confirmed in more rounds: the first round's winner {entry['confirmation']}")
            for name, why in (entry.get("failed") or {}).items():
                lines.append(f"  not measured: {name} ({why})")
            lines.append(f"  (the class rule would run {self.rule}: class {self.problem_class!r})")
        else:
            what = "device row" if self.reason == "device" else f"class {self.problem_class!r}, table row"
            lines.append(f"  {what}: {' > '.join(self.table_row)} (the first available backend that supports it)")
        if self.table_source:
            lines.append(f"  preference table of the {self.table_isa} row: {self.table_source}")
        if self.kernels:
            lines.append(f"  {self.backend}: {self.kernels}")
        for name, why in self.skipped:
            lines.append(f"  passed over {name}: {why}")
        lines.append(f"  planner: {self.planner}")
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)


# ---- candidates ------------------------------------------------------------------------------------------------


def _device(on_device: bool) -> str:
    """The device field of a signature: ``cpu``, or ``cuda:<GPU name>``."""
    return f"cuda:{machine.gpu_name()}" if on_device else "cpu"


def _why_not(backend: Backend, problem: Problem, on_device: bool, direction: str = "forward") -> str | None:
    """Why ``backend`` cannot run ``problem`` in ``direction`` here (for host or device arrays), or None if it can."""
    if backend.device == "any":
        return "a dispatcher, not an implementation"
    if (backend.device == "cuda") != on_device:
        return f"runs on the {'host' if on_device else 'GPU'}; the arrays are on the {'GPU' if on_device else 'host'}"
    ok, why = backend.probe()
    if not ok:
        return f"unavailable: {why}"
    reason = backend.unsupported_reason(problem, direction)
    return None if reason is None else f"unsupported: {reason}"


def _usable(name: str, problem: Problem, on_device: bool, direction: str = "forward") -> tuple[Backend | None, str]:
    try:
        backend = get_backend(name)
    except ValueError:
        return None, "not a registered backend"
    why = _why_not(backend, problem, on_device, direction)
    return (None, why) if why else (backend, "")


def _table_row(problem: Problem, on_device: bool) -> tuple[str, tuple[str, ...]]:
    return preference.preference_table().order_for(problem, on_device)


def _candidates(
    problem: Problem, on_device: bool, names: Iterable | None, direction: str = "forward"
) -> tuple[list[Backend], list[CandidateTiming]]:
    """The backends to time in ``direction``, in the class rule's order, and the status rows of the others."""
    row = _table_row(problem, on_device)[1]
    explicit = names is not None
    pool = [get_backend(name) for name in (list_backends() if names is None else names)]
    pool.sort(key=lambda b: row.index(b.name) if b.name in row else len(row))  # stable: registry order after
    timed, skipped = [], []
    for backend in pool:
        why = _why_not(backend, problem, on_device, direction)
        if why is None and backend.timing_kind is None:  # the CUDA simulator: runs, but times mean nothing
            skipped.append(CandidateTiming(backend.name, "simulator: not timed", message=backend.status))
        elif why is None:
            timed.append(backend)
        elif explicit or not why.startswith(("a dispatcher", "runs on")):
            status = why.split(":", 1)[0] if why.startswith(("unavailable", "unsupported")) else "unsupported"
            skipped.append(CandidateTiming(backend.name, status, message=why))
    if not explicit and any(b.name not in REFERENCE_BACKENDS for b in timed):
        skipped += [
            CandidateTiming(b.name, "excluded", message="a reference backend, far slower than the others")
            for b in timed
            if b.name in REFERENCE_BACKENDS
        ]
        timed = [b for b in timed if b.name not in REFERENCE_BACKENDS]
    return timed, skipped


# ---- timing ----------------------------------------------------------------------------------------------------


def _time_candidate(
    problem: Problem,
    backend,
    settings: TimingSettings | None,
    best_s: float | None,
    cut_factor: float,
    seed: int,
    direction: str = "forward",
) -> dict[str, Any]:
    """Pilot (first call, 3 warm calls), then, unless the pilot is ``cut_factor`` times slower than ``best_s``
    or ``settings`` is None (pilot only), the full measurement with its samples, of ``direction``. Runs in a
    worker process for ``process`` isolation; every exception becomes an ``error`` status."""
    try:
        x, weight, bias = problem.random_arrays(seed)
        pilot = time_backend(backend, problem, x, weight, bias, _PILOT, direction=direction)
        if "median_s" not in pilot:
            return pilot
        fastest = pilot["min_s"] if math.isfinite(pilot["min_s"]) else pilot["median_s"]  # GPU: median only
        found = {"first_call_s": pilot["first_call_s"], "pilot_s": fastest}
        if best_s is not None and fastest > cut_factor * best_s:
            return {
                **found,
                "status": "cut",
                "message": f"fastest of 3 warm calls {_ms(fastest)} > {cut_factor:g} x the best median {_ms(best_s)}",
            }
        if settings is None:
            return {**found, "status": "ok"}
        # the pilot's calls were the warm-ups
        stats = time_backend(
            backend, problem, x, weight, bias, replace(settings, warmup=0), keep_samples=True, direction=direction
        )
        return {**stats, **found, "status": stats.get("status", "ok")}
    except Exception as exc:
        return {"status": "error", "message": f"{type(exc).__name__}: {exc}"}


def _measure(
    problem: Problem,
    backends: Sequence[Backend],
    isolation: str,
    settings: TimingSettings,
    cut_factor: float,
    seed: int,
    direction: str = "forward",
) -> list[dict[str, Any]]:
    """One result dict per backend, in order (see :func:`_time_candidate`), timing ``direction``."""

    def picklable(backend: Backend):
        # testbed's own backends travel by name; any other (a test fake, a user's) as the object, so the worker
        # imports its module (and whatever that registers) when it unpickles it
        registered = backend.name in list_backends() and get_backend(backend.name) is backend
        own = str(getattr(backend.run, "__module__", "")).startswith("testbed.")
        return backend.name if registered and own else backend

    results: list[dict[str, Any]] = []
    best: float | None = None
    for backend in backends:
        if isolation == "process":
            try:
                result = run_in_worker(
                    _time_candidate,
                    problem,
                    picklable(backend),
                    settings,
                    best,
                    cut_factor,
                    seed,
                    direction,
                    timeout_s=settings.worker_timeout_s,
                )
            except (WorkerError, MainModuleError) as exc:
                result = {"status": "error", "message": str(exc)}
        else:  # inline: measured now; interleaved: only the pilot now, the samples round-robin below
            pilot_only = settings if isolation == "inline" else None
            result = _time_candidate(problem, picklable(backend), pilot_only, best, cut_factor, seed, direction)
        results.append(result)
        estimate = result.get("median_s", result.get("pilot_s")) if result.get("status") == "ok" else None
        if estimate is not None and math.isfinite(estimate):
            best = estimate if best is None else min(best, estimate)
    if isolation == "process" and settings.rounds > 1:
        _more_rounds(problem, backends, results, settings, seed, picklable, direction)
    if isolation == "interleaved":
        survivors = [i for i, result in enumerate(results) if result.get("status") == "ok"]
        rows = time_jobs(
            [TimingJob(problem, picklable(backends[i]), rng=seed, direction=direction) for i in survivors],
            settings,
            isolation="interleaved",
            keep_samples=True,
        )
        for i, row in zip(survivors, rows):
            pilot = {key: results[i][key] for key in ("first_call_s", "pilot_s")}
            results[i] = {**{k: v for k, v in row.items() if k != "backend"}, **pilot}
    return results


def _more_rounds(
    problem: Problem,
    backends: Sequence[Backend],
    results: list[dict[str, Any]],
    settings: TimingSettings,
    seed: int,
    picklable,
    direction: str = "forward",
) -> None:
    """``settings.rounds - 1`` more fresh workers for every candidate that was fully timed, the candidates
    taking turns; each one's rounds pooled into its result (:func:`testbed.timing.pool_rounds`)."""
    timed = [i for i, result in enumerate(results) if result.get("status") == "ok" and result.get("samples_s")]
    rounds: dict[int, list[dict[str, Any]]] = {i: [results[i]] for i in timed}
    for _ in range(settings.rounds - 1):
        for i in timed:
            try:
                rounds[i].append(
                    run_in_worker(
                        _time_candidate,
                        problem,
                        picklable(backends[i]),
                        settings,
                        None,
                        math.inf,
                        seed,
                        direction,
                        timeout_s=settings.worker_timeout_s,
                    )
                )
            except (WorkerError, MainModuleError):
                continue
    for i in timed:
        results[i] = pool_rounds(rounds[i], settings, keep_samples=True)


def _candidate_timing(
    name: str, result: dict[str, Any], winner: Measurement | None, winner_median: float
) -> CandidateTiming:
    status = str(result.get("status", "ok"))
    measured = Measurement.from_row(result) if status == "ok" else None
    if measured is not None:
        median, first_call = measured.median_s, measured.first_call_s
    elif status == "ok":  # a GPU backend: its CUDA-event median only, no samples
        median, first_call = float(result["median_s"]), float(result["first_call_s"])
    else:  # cut (its pilot timed), failed, unsupported: no median
        median, first_call = math.nan, float(result.get("first_call_s", math.nan))
    ratio, ratio_ci = math.nan, (math.nan, math.nan)
    if math.isfinite(median) and math.isfinite(winner_median):
        ratio = median / winner_median
        if winner is not None and measured is not None:
            ratio_ci = speedup_ci(measured.samples_s, winner.samples_s)
    return CandidateTiming(
        backend=name,
        status=status,
        median_s=median,
        ci_s=median_ci(measured.samples_s) if measured else (math.nan, math.nan),
        min_s=measured.min_s if measured else math.nan,
        iqr_s=measured.iqr_s if measured else math.nan,
        repeats=measured.repeats if measured else int(result.get("repeats", 0) or 0),
        first_call_s=first_call,
        pilot_s=float(result.get("pilot_s", math.nan)),
        ratio=ratio,
        ratio_ci=ratio_ci,
        message=str(result.get("message", "") or ""),
        samples_s=measured.samples_s if measured else (),
        measurement=measured,
    )


def _confirmation_reason(ok: dict[str, dict[str, Any]], winner: str, rule: str | None) -> str | None:
    """Why one round cannot decide (see :func:`tune`), or None: the winner overturns the class rule's choice
    (which was timed), or beats the runner-up by less than their measured spread — the bootstrap 95 % interval
    of the ratio of their medians (:func:`testbed.timing.speedup_ci`) reaches 1."""
    if rule is not None and rule != winner and rule in ok:
        return f"overturns the class rule's choice {rule}"
    others = [name for name in ok if name != winner]
    if others:
        runner = min(others, key=lambda name: ok[name]["median_s"])
        low, high = speedup_ci(ok[runner].get("samples_s", ()), ok[winner].get("samples_s", ()))
        if low <= 1:
            ratio = ok[runner]["median_s"] / ok[winner]["median_s"]
            return (
                f"beats the runner-up {runner} by less than their spread (median ratio {ratio:.3f}, 95 % "
                f"interval {low:.3f}-{high:.3f})"
            )
    return None


def _confirm(
    problem: Problem,
    by_name: dict[str, Backend],
    results: dict[str, dict[str, Any]],
    winner: str,
    rule: str | None,
    isolation: str,
    settings: TimingSettings,
    seed: int,
    direction: str = "forward",
) -> dict[str, Any]:
    """Rounds after the first for a decision that needs them (:func:`_confirmation_reason`): the contenders —
    the winner, the runner-up and the class rule's choice — are timed again, each fully and, under ``process``
    isolation, in a fresh worker, in the reverse order of the round before (taking turns). The decision is the
    contender that wins two rounds (at most three are run; with three different round winners, the lowest
    median over all rounds). Each contender's samples of every round are pooled into ``results``. Returns what
    the wisdom entry keeps: ``rounds``, ``round_winners``, ``confirmation`` (why) and ``backend``."""
    ok = {
        name: r for name, r in results.items() if r.get("status") == "ok" and math.isfinite(r.get("median_s", math.nan))
    }
    reason = _confirmation_reason(ok, winner, rule)
    if reason is None:
        return {"backend": winner, "rounds": 1, "round_winners": [winner], "confirmation": None}
    runner = min((name for name in ok if name != winner), key=lambda name: ok[name]["median_s"])
    order = [name for name in results if name in {winner, runner, rule} and name in ok]
    round_winners = [winner]
    single = replace(settings, rounds=1)
    while True:
        order.reverse()
        fresh = _measure(problem, [by_name[name] for name in order], isolation, single, math.inf, seed, direction)
        timed = {
            name: r
            for name, r in zip(order, fresh)
            if r.get("status") == "ok" and math.isfinite(r.get("median_s", math.nan))
        }
        for name, r in timed.items():
            results[name] = pool_rounds([results[name], r], settings, keep_samples=True)
        round_winners.append(min(timed, key=lambda name: timed[name]["median_s"]) if timed else "")
        wins = {name: round_winners.count(name) for name in order}
        decided = max(wins, key=lambda name: (wins[name], -results[name]["median_s"]))
        if wins[decided] >= 2 or len(round_winners) == 3:
            break
    if wins[decided] < 2:
        decided = min(order, key=lambda name: results[name]["median_s"])
    return {"backend": decided, "rounds": len(round_winners), "round_winners": round_winners, "confirmation": reason}


class TuneError(RuntimeError):
    """:func:`tune` could not measure any candidate. The message names every candidate and why (timed out,
    killed by a signal, unsupported, the error's text); ``result`` is the :class:`TuneResult` (``winner`` None)."""

    def __init__(self, result: TuneResult):
        def why(c: CandidateTiming) -> str:
            message = c.message.removeprefix(f"{c.status}: ")
            return f"{c.backend}: {c.status}" + (f" ({message})" if message else "")

        reasons = "; ".join(map(why, result.candidates)) or "no backend is registered for this device"
        super().__init__(f"tune could not measure any candidate for {result.signature}: {reasons}")
        self.result = result


def tune_problem(
    problem: Problem,
    *,
    on_device: bool = False,
    candidates: Iterable | None = None,
    isolation: str = "process",
    settings: TimingSettings | None = None,
    cut_factor: float = 3.0,
    store: bool = True,
    seed: int = 0,
    source: str = "tune",
    direction: str = "forward",
) -> TuneResult:
    """:func:`tune` for a :class:`Problem` (no arrays needed): time the candidates in ``direction``, return what
    was found, and with ``store`` keep the winner as wisdom (of that direction). ``on_device``: the problem's
    arrays are CUDA device arrays. Raises :class:`TuneError` when no candidate could be measured."""
    _check_direction(direction)
    config = PlannerConfig("measure", isolation, settings or MEASURE_SETTINGS, cut_factor)  # validates
    start = time.perf_counter()
    rule = rule_backend(problem, on_device, direction)
    rule_name = None if rule is None else rule.name
    backends, skipped = _candidates(problem, on_device, candidates, direction)
    measured = _measure(problem, backends, config.isolation, config.settings, config.cut_factor, seed, direction)
    timed = {b.name: r for b, r in zip(backends, measured)}
    ok = {
        name: r for name, r in timed.items() if r.get("status") == "ok" and math.isfinite(r.get("median_s", math.nan))
    }
    device = _device(on_device)
    sig = wisdom.signature(problem, device, direction)
    if not ok:
        rows = tuple(_candidate_timing(name, r, None, math.nan) for name, r in timed.items()) + tuple(skipped)
        raise TuneError(
            TuneResult(
                problem=problem,
                signature=sig,
                candidates=rows,
                winner=None,
                rule=rule_name,
                isolation=config.isolation,
                elapsed_s=time.perf_counter() - start,
            )
        )
    first = min(ok, key=lambda name: ok[name]["median_s"])
    decision = _confirm(
        problem,
        {b.name: b for b in backends},
        timed,
        first,
        rule_name,
        config.isolation,
        config.settings,
        seed,
        direction,
    )
    ok = {name: timed[name] for name in ok}  # pooled over the rounds where there were more
    winner = decision["backend"]
    rows = tuple(
        _candidate_timing(name, r, Measurement.from_row(ok[winner]), ok[winner]["median_s"])
        for name, r in timed.items()
    ) + tuple(skipped)
    others = [r["median_s"] for name, r in ok.items() if name != winner]
    margin = min(others) / ok[winner]["median_s"] - 1 if others and ok[winner]["median_s"] > 0 else None
    failed = {c.backend: c.message for c in rows if c.status == "error"}
    if failed:
        warnings.warn(
            f"tune {sig}: {len(failed)} candidate(s) could not be measured ("
            + "; ".join(f"{name}: {why}" for name, why in failed.items())
            + f"); {winner} is the fastest of the others",
            RuntimeWarning,
            stacklevel=2,
        )
    stored = None
    if store:
        stored = wisdom.record(
            problem,
            device,
            {
                **decision,
                "source": source,
                "isolation": config.isolation,
                "median_s": {name: r["median_s"] for name, r in ok.items()},
                "status": {c.backend: c.status for c in rows if c.status != "ok"},
                "failed": failed,
                "margin": margin,
                "rule": rule_name,
            },
            direction,
        )
    return TuneResult(
        problem=problem,
        signature=sig,
        candidates=rows,
        winner=winner,
        rule=rule_name,
        isolation=config.isolation,
        elapsed_s=time.perf_counter() - start,
        stored=stored,
        rounds=decision["rounds"],
        round_winners=tuple(decision["round_winners"]),
        margin=margin,
    )


def _call_problem(
    input, weight, bias, stride, padding, output_padding, groups, dilation, output_size, layout=None
) -> tuple[Problem, bool]:
    """The problem of a ``conv_transpose1d/2d/3d`` call (the weight's rank says which; validated as the call
    validates it) and whether its arrays are CUDA device arrays. Only shapes and dtypes are read."""
    from .api import _problem_of_call

    problem, x, _, _ = _problem_of_call(
        input,
        weight,
        bias,
        stride,
        padding,
        output_padding,
        groups,
        dilation,
        output_size,
        on_device_ok=True,
        layout=layout,
    )
    if problem.batch == 0:
        problem = problem.with_(batch=1)  # an empty batch computes nothing; plan for one image
    return problem, is_device_array(x)


def tune(
    input,
    weight,
    bias=None,
    stride=1,
    padding=0,
    output_padding=0,
    groups=1,
    dilation=1,
    *,
    output_size=None,
    candidates: Iterable | None = None,
    isolation: str = "process",
    settings: TimingSettings | None = None,
    cut_factor: float = 3.0,
    store: bool = True,
    seed: int = 0,
    layout: str | None = None,
    direction: str = "forward",
) -> TuneResult:
    """Measure now which backend computes this call fastest, and remember it (FFTW's ``FFTW_MEASURE``).

    Parameters
    ----------
    input, weight, bias, stride, padding, output_padding, groups, dilation, output_size, layout
        As for :func:`testbed.conv_transpose2d` (or ``1d``/``3d``: the weight's rank says which; validated the
        same way). Only their shapes, dtypes and
        device are used: the candidates are timed on random arrays of the same shapes, the arrays given are
        never touched.
    candidates : iterable of str or Backend, optional
        The backends to time (all of them, reference backends included). Default: every registered backend
        for the arrays' device that is available and supports the call, without the reference backends
        (:data:`REFERENCE_BACKENDS`) when another one qualifies.
    isolation : {"process", "interleaved", "inline"}, default "process"
        How each candidate is timed (:mod:`testbed.timing`); ``process`` gives each a fresh worker process.
    settings : testbed.timing.TimingSettings, optional
        The timing budget per candidate; default :data:`MEASURE_SETTINGS`.
    cut_factor : float, default 3.0
        A candidate whose fastest of 3 warm calls is ``cut_factor`` times slower than the best median so far
        gets status ``cut`` and is not timed further.
    store : bool, default True
        Keep the winner as wisdom (:mod:`testbed.wisdom`): ``auto`` then runs it for this signature on this
        machine, in every later process.
    seed : int, default 0
        Seed of the random arrays timed.
    direction : {"forward", "backward_data", "backward_weight"}, default "forward"
        What is timed: the forward, or one gradient of :func:`testbed.conv_transpose_backward` (the candidates
        are the backends that declare the direction); the winner is that direction's wisdom, which ``auto`` reads
        for that direction only.

    Returns
    -------
    TuneResult
        Each candidate's median, 95 % confidence interval, ratio to the winner and status; the winner; the
        class rule's choice; the wall time of the measurement; the stored entry. ``print`` it for a table.

    Raises
    ------
    ValueError, TypeError
        On an invalid call, as :func:`testbed.conv_transpose2d` raises them, or invalid options.
    TuneError
        When no candidate could be measured (each timed out, was killed, raised, or was unsupported): the
        message names every candidate and why. When only some failed, the winner is the fastest of the others,
        a RuntimeWarning names the failed ones and the wisdom entry records them (``failed``).

    Notes
    -----
    A first-round winner that overturns the class rule's choice, or beats the runner-up by less than their
    measured spread (the bootstrap 95 % interval of their median ratio reaches 1), is stored only after it
    wins a second round (see the module
    docstring); ``rounds``, ``round_winners`` and ``margin`` of the result and of the wisdom entry say how the
    decision was reached.

    See Also
    --------
    explain : which backend ``auto`` runs for a call, and why.
    set_planner : tune automatically on the first call of each new signature.
    export_wisdom, import_wisdom, forget_wisdom

    Examples
    --------
    >>> import numpy as np, os, tempfile, testbed
    >>> os.environ["TESTBED_WISDOM"] = os.path.join(tempfile.mkdtemp(), "wisdom.json")
    >>> x = np.zeros((1, 4, 8, 8), np.float32)
    >>> w = np.zeros((4, 2, 2, 2), np.float32)
    >>> result = testbed.tune(x, w, stride=2, candidates=["col2im", "kron"], isolation="inline")
    >>> result.winner in ("col2im", "kron"), sorted(result.medians_s)
    (True, ['col2im', 'kron'])
    >>> testbed.explain(x, w, stride=2).reason
    'wisdom'
    >>> del os.environ["TESTBED_WISDOM"]
    """
    problem, on_device = _call_problem(
        input, weight, bias, stride, padding, output_padding, groups, dilation, output_size, layout
    )
    return tune_problem(
        problem,
        on_device=on_device,
        candidates=candidates,
        isolation=isolation,
        settings=settings,
        cut_factor=cut_factor,
        store=store,
        seed=seed,
        direction=direction,
    )


# ---- the hook in auto ------------------------------------------------------------------------------------------


def rule_backend(problem: Problem, on_device: bool = False, direction: str = "forward") -> Backend | None:
    """The backend ``auto``'s class rule (its device row for CUDA arrays) picks for ``direction``, ignoring wisdom
    and the planner; None if no backend can run the problem here."""
    try:
        return preference.preference_table().choose(problem, on_device, direction)
    except RuntimeError:
        return None


def planned_backend(problem: Problem, on_device: bool = False, direction: str = "forward") -> Backend | None:
    """The backend wisdom (or, in the ``measure`` mode, a measurement made now) picks for ``problem`` in
    ``direction``, or None to follow the class rule. Asked by :func:`choose_backend` before the rule; never raises
    for a valid problem (a failed measurement warns and returns None)."""
    device = _device(on_device)
    entry = wisdom.lookup(problem, device, direction)
    if entry is not None:
        chosen, _ = _usable(entry["backend"], problem, on_device, direction)
        if chosen is not None:
            return chosen
    config = get_planner()
    if config.mode != "measure":
        return None
    key = wisdom.signature(problem, device, direction)
    with _MEASURE_LOCK:
        if key in _UNDECIDED:
            return None
        entry = wisdom.lookup(problem, device, direction)  # measured by another thread while this one waited
        if entry is not None and _usable(entry["backend"], problem, on_device, direction)[0] is not None:
            return _usable(entry["backend"], problem, on_device, direction)[0]
        try:
            result = tune_problem(
                problem,
                on_device=on_device,
                isolation=config.isolation,
                settings=config.settings,
                cut_factor=config.cut_factor,
                source="measure",
                direction=direction,
            )
        except Exception as exc:
            warnings.warn(
                f"the measure planner could not time {key} ({type(exc).__name__}: {exc}); following the class rules",
                RuntimeWarning,
                stacklevel=3,
            )
            result = None
        if result is None or result.winner is None:
            _UNDECIDED.add(key)
            return None
    return _usable(result.winner, problem, on_device, direction)[0]


def choose_backend(problem: Problem, on_device: bool = False, direction: str = "forward") -> Backend:
    """The backend ``auto`` runs for ``problem`` in ``direction`` (``on_device``: the arrays are CUDA device
    arrays): wisdom, else in the ``measure`` mode a measurement now (:func:`planned_backend`), else the class rule
    (:mod:`testbed.preference`) over the backends that declare the direction. RuntimeError if no backend can run
    it here (device arrays without a CUDA backend)."""
    planned = planned_backend(problem, on_device, direction)
    return planned if planned is not None else preference.preference_table().choose(problem, on_device, direction)


# ---- explain ---------------------------------------------------------------------------------------------------


def explain_problem(problem: Problem, on_device: bool = False, direction: str = "forward") -> Explanation:
    """:func:`explain` for a :class:`Problem` (``on_device``: its arrays are CUDA device arrays) in
    ``direction``."""
    config = get_planner()
    device = _device(on_device)
    table = preference.preference_table()
    klass, row = table.order_for(problem, on_device)
    rule = rule_backend(problem, on_device, direction)
    rule_name = None if rule is None else rule.name
    base = Explanation(
        backend=rule_name,
        reason="device" if on_device else "rule",
        signature=wisdom.signature(problem, device, direction),
        planner=config.mode,
        problem_class=klass,
        table_row=row,
        rule=rule_name,
        isa_row=table.row,
        table_isa=table.measured_row,
        table_fallback=table.fallback,
        table_source=table.describe(),
    )
    note = ""
    entry = wisdom.lookup(problem, device, direction)
    if entry is not None:
        chosen, why = _usable(entry["backend"], problem, on_device, direction)
        if chosen is not None:
            return replace(
                base,
                backend=chosen.name,
                reason="wisdom",
                measured_s=dict(entry.get("median_s", {})),
                wisdom=dict(entry),
                kernels=_kernels(chosen.name, problem),
            )
        note = f"wisdom names {entry['backend']}, which is ignored here ({why}). "
    if config.mode == "measure" and base.signature not in _UNDECIDED:
        note += (
            "planner 'measure': the first call with this signature times the candidates and may run another backend."
        )
    skipped = []
    for name in row:
        if name == rule_name:
            break
        skipped.append((name, _usable(name, problem, on_device, direction)[1]))
    return replace(base, skipped=tuple(skipped), note=note.strip(), kernels=_kernels(rule_name, problem))


def _check_direction(direction: object) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


def _kernels(backend: str | None, problem: Problem) -> str:
    """What :attr:`Explanation.kernels` says: the backend's own account of how it computes ``problem``."""
    if backend is None:
        return ""
    describe = get_backend(backend).describe
    return describe(problem) if describe is not None else ""


def explain(
    input,
    weight,
    bias=None,
    stride=1,
    padding=0,
    output_padding=0,
    groups=1,
    dilation=1,
    *,
    output_size=None,
    layout: str | None = None,
    direction: str = "forward",
) -> Explanation:
    """Which backend ``auto`` would run for this call, and why (nothing is computed or timed).

    Parameters
    ----------
    input, weight, bias, stride, padding, output_padding, groups, dilation, output_size, layout
        As for :func:`testbed.conv_transpose2d` (or ``1d``/``3d``: the weight's rank says which); only shapes,
        dtypes and device are read.
    direction : {"forward", "backward_data", "backward_weight"}, default "forward"
        The direction of the call (:data:`testbed.registry.DIRECTIONS`): the forward, or one gradient of
        :func:`testbed.conv_transpose_backward`. The class rule then passes over backends that do not declare it.

    Returns
    -------
    Explanation
        ``backend`` and ``reason``: ``"wisdom"`` (with the measured medians), ``"rule"`` (the configuration
        class and its table row, and why earlier backends of the row were passed over) or ``"device"`` (CUDA
        device arrays); which ISA row's preference table the rule reads (``table_isa``, and ``table_fallback``
        where this host's row has no measured table of its own). ``print`` it for a readable account.

    Raises
    ------
    ValueError, TypeError
        On an invalid call, as :func:`testbed.conv_transpose2d` raises them.

    See Also
    --------
    tune : measure and store the decision for a call.
    set_planner : the planner mode, which the explanation reports.

    Examples
    --------
    >>> import numpy as np, os, tempfile, testbed
    >>> os.environ["TESTBED_WISDOM"] = os.path.join(tempfile.mkdtemp(), "wisdom.json")
    >>> x = np.zeros((1, 128, 196, 196), np.float32)
    >>> w = np.zeros((128, 64, 2, 2), np.float32)
    >>> why = testbed.explain(x, w, stride=2)
    >>> why.reason, why.problem_class, why.backend == why.table_row[0]
    ('rule', 'nonoverlapping', True)
    >>> print(why)                                        # doctest: +ELLIPSIS
    auto runs ... — reason: rule
      problem: float32 NCHW N1 Cin128 Cout64 H196 W196 k2x2 s2x2 p0x0 op0x0 d1x1 g1 nobias cpu
      class 'nonoverlapping', table row: numba_cpu > ... (the first available backend that supports it)
      preference table of the ... row: preference_tables/...json (measured on ..., run ...)...
      planner: estimate
    >>> del os.environ["TESTBED_WISDOM"]
    """
    problem, on_device = _call_problem(
        input, weight, bias, stride, padding, output_padding, groups, dilation, output_size, layout
    )
    _check_direction(direction)
    return explain_problem(problem, on_device, direction)
