"""A regression found on purpose: asv and ``experiments.history`` must flag a planted 2× slowdown, and only it.

    python -m experiments.asv_regression [--backend kron] [--controls col2im,polyphase,torch] [--case unet1]
                                         [--factor 1.5] [--rounds 4] [--out DIR] [--keep]
    make bench-regression-check        # ~7 min here, most of it building the clone's asv environment

Steps, in a throw-away ``git clone`` of this repository's HEAD (a temporary folder, removed afterwards unless
``--keep``), with the clone's own asv virtualenv (built once, ~3 min here; what ``make bench-continuous`` does):

1. two commits: HEAD (``base``) and one whose ``--backend`` computes its result twice (``slow``: the module's
   registered ``run=`` is wrapped by a function calling it twice and returning the second result, so the answer
   is still right and the work doubles);
2. ``asv continuous --factor F base slow`` records both commits for ``CPUTime.time_conv_transpose2d`` (CPU
   seconds per call) of the backend and the ``--controls`` on ``--case``, single-threaded, ``--rounds``
   processes per commit taken alternately (asv's interleaved rounds), and must list the backend as worse, no
   control, and exit 1; ``asv compare --factor F base slow`` must say the same from the stored results;
3. ``python -m experiments.history`` on the clone's results must report a regression from ``base`` to ``slow``
   for the backend (time and GFLOP/s) and none for a control.

The clone's ``asv.conf.json`` (work tree only) gets ``regressions_thresholds`` of ``F - 1`` (0.5 for the default
factor 1.5), so that the history's step detection and ``asv compare`` judge with the same tolerance.

Why CPU time, single-threaded: on this 2-core machine shared with other jobs (load averages of 5–18 while this
was written) the wall time of unchanged code moved by up to 2× between two runs of ``Speed`` minutes apart, and
a planted 2× came out as 1.3–1.7×, not significant: the wall time measures the other jobs as much as the code.
One thread's CPU time per call is what the code costs whatever else runs (42 ms ± 1 % for ``kron`` on
``unet1`` in two processes under load, against 43–81 ms of wall time).

Writes ``summary.md`` (the commands, asv's tables, the verdicts), ``verdict.json`` and the history report into
``--out`` (default ``results/asv_regression/<run-id>/``), and exits 1 when a verdict fails. Two runs here:
``kron`` ×2.05 and ×1.95, the controls ×0.93–1.06, PASS (``results/showcase/asv/regression-check/``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.common import RESULTS_ROOT
from experiments.harness.metadata import PROJECT_ROOT, run_id
from experiments.harness.storage import atomic_write_json, atomic_write_text

NAME = "asv_regression"
BENCHMARK = "bench_conv.CPUTime.time_conv_transpose2d"
#: One thread per library, so that CPU time has no thread pool's spin-waiting in it and no core to wait for.
SINGLE_THREADED = dict.fromkeys(
    ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"], "1"
)
#: The one ``run=<function>,`` argument of a backend module's ``register(Backend(...))`` call.
RUN_ARGUMENT = re.compile(r"^(\s*)run=(\w+),\s*$", re.MULTILINE)
#: The module's top-level ``register(Backend(...))`` call, however it is laid out.
REGISTER_CALL = re.compile(r"^register\(\s*Backend\(", re.MULTILINE)


def plant_slowdown(module: Path, backend: str) -> str:
    """Rewrite ``module`` so that ``backend``'s registered ``run`` computes everything twice; the wrapper's
    name. ``ValueError`` unless the module has exactly one ``run=<name>,`` argument to wrap."""
    text = module.read_text()
    found = RUN_ARGUMENT.findall(text)
    if len(found) != 1:
        raise ValueError(
            f"--backend {backend}: {module} has {len(found)} `run=<function>,` arguments, expected exactly one to wrap"
        )
    indent, original = found[0]
    wrapper = f"_{original}_twice"
    planted = (
        f"\n\ndef {wrapper}(x, weight, bias, problem, **kwargs):\n"
        f'    """A deliberate 2x slowdown (experiments.asv_regression): the same work twice."""\n'
        f"    {original}(x, weight, bias, problem, **kwargs)\n"
        f"    return {original}(x, weight, bias, problem, **kwargs)\n"
    )
    registration = REGISTER_CALL.search(text)
    if registration is None:
        raise ValueError(f"--backend {backend}: {module} has no `register(Backend(...))` call at the top level")
    register_at = registration.start()
    text = text[:register_at].rstrip("\n") + planted + "\n\n" + text[register_at:]
    text = RUN_ARGUMENT.sub(f"{indent}run={wrapper},", text)
    module.write_text(text)
    return wrapper


def benchmark_regex(backends, case: str) -> str:
    """asv's --bench expression selecting ``BENCHMARK`` for ``backends`` on ``case`` (asv matches it against
    ``name('backend', 'case')``)."""
    return rf"{re.escape(BENCHMARK)}\('({'|'.join(map(re.escape, backends))})', '{re.escape(case)}'\)"


def flagged_worse(table: str) -> list[str]:
    """The benchmarks an ``asv compare``/``continuous`` table marks ``+`` (worse by more than the factor and,
    with statistics, significantly), as ``name(params)``."""
    worse = []
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and cells[0] == "+":
            worse.append(cells[-1])
    return worse


class Runner:
    """Runs commands in the clone, echoing them and their output, and keeps the transcript."""

    def __init__(self, cwd: Path, env: dict):
        self.cwd = cwd
        self.env = env
        self.transcript = []

    def __call__(self, *command, check=True) -> subprocess.CompletedProcess:
        start = time.perf_counter()
        print("$", " ".join(map(str, command)), flush=True)
        done = subprocess.run(
            [str(c) for c in command], cwd=self.cwd, env=self.env, capture_output=True, text=True, check=False
        )
        seconds = time.perf_counter() - start
        print(done.stdout[-4000:], done.stderr[-2000:], sep="\n", flush=True)
        self.transcript.append((command, done, seconds))
        if check and done.returncode != 0:
            raise SystemExit(f"{' '.join(map(str, command))} exited with {done.returncode}:\n{done.stderr[-3000:]}")
        return done


def commit(git: Runner, message: str) -> str:
    git("git", "commit", "-qam", message)
    return git("git", "rev-parse", "HEAD").stdout.strip()


def run_check(args, clone: Path, out: Path) -> tuple[list[str], str]:
    """The check in ``clone``; ``(failed verdicts, summary markdown)``."""
    sh = Runner(clone, {**os.environ, **SINGLE_THREADED})
    asv = [sys.executable, "-m", "asv"]
    sh("git", "checkout", "-q", "-B", "main")
    sh("git", "config", "user.email", "asv-regression@localhost")
    sh("git", "config", "user.name", "experiments.asv_regression")
    base = sh("git", "rev-parse", "HEAD").stdout.strip()
    module = clone / "testbed" / "backends" / f"{args.backend}.py"
    if not module.is_file():
        raise SystemExit(f"--backend {args.backend}: no module {module.relative_to(clone)} to plant a slowdown in")
    wrapper = plant_slowdown(module, args.backend)
    slow = commit(sh, f"asv_regression: {args.backend} computes twice ({wrapper})")

    # asv compare and the history judge with the same tolerance (asv.conf.json is read from the work tree).
    config = clone / "asv.conf.json"
    text = config.read_text()
    text = re.sub(
        r'"regressions_thresholds":\s*\{[^}]*\}', f'"regressions_thresholds": {{".*": {args.factor - 1:g}}}', text
    )
    config.write_text(text)

    regex = benchmark_regex([args.backend, *args.controls], args.case)
    sh(*asv, "machine", "--yes")
    started = time.perf_counter()
    continuous = sh(
        *asv,
        "continuous",
        "--factor",
        f"{args.factor:g}",
        "--split",
        "--interleave-rounds",
        "--attribute",
        f"rounds={args.rounds}",
        "--bench",
        regex,
        base,
        slow,
        check=False,
    )
    recorded_s = time.perf_counter() - started
    compare = sh(*asv, "compare", "--factor", f"{args.factor:g}", "--split", base, slow)
    history_out = out / "history"
    sh(
        sys.executable,
        "-m",
        "experiments.history",
        "--config",
        config,
        "--bench",
        re.escape(BENCHMARK),
        "--out",
        history_out,
    )
    regressions = _read_csv(history_out / "regressions.csv")

    expected = f"{BENCHMARK}('{args.backend}', '{args.case}')"
    failures = []
    for tool, table in (("asv continuous", continuous.stdout), ("asv compare", compare.stdout)):
        worse = flagged_worse(table)
        if worse != [expected]:
            failures.append(f"{tool} flagged {worse or 'nothing'}, expected exactly [{expected}]")
    if continuous.returncode == 0:
        failures.append("asv continuous exited 0 (it exits 1 when a benchmark got worse)")
    found = {(row["benchmark"], row["params"], row["good"], row["bad"]) for row in regressions}
    params = f"'{args.backend}', '{args.case}'"
    for benchmark in (BENCHMARK, f"{BENCHMARK} [GFLOP/s]"):
        if (benchmark, params, base, slow) not in found:
            failures.append(f"experiments.history did not mark {benchmark}({params}) from base to slow")
    others = sorted({f"{b}({p})" for b, p, _, _ in found if p != params})
    if others:
        failures.append(f"experiments.history marked unchanged backends: {others}")

    lines = [
        f"# A planted {args.backend} slowdown, found by asv and experiments.history",
        "",
        f"- repository: a `git clone` of `{PROJECT_ROOT}`; commits `base` {base[:10]} (its HEAD) and `slow` "
        f"{slow[:10]} ({args.backend}'s `run=` wrapped by `{wrapper}`, which computes twice)",
        f"- benchmarks: `{regex}`; factor {args.factor:g} (regressions_thresholds {args.factor - 1:g}); "
        f"{args.rounds} interleaved rounds per commit",
        f"- `asv continuous` building the environment and recording both commits: {recorded_s:.0f} s",
        f"- verdict: {'PASS' if not failures else 'FAIL'}",
        *[f"  - {f}" for f in failures],
        "",
        "## Commands and output",
        "",
    ]
    for command, done, seconds in sh.transcript:
        lines += [
            f"```\n$ {' '.join(map(str, command))}    # {seconds:.0f} s, exit {done.returncode}",
            _tail(done.stdout),
            "```",
            "",
        ]
    return failures, "\n".join(lines)


def _read_csv(path: Path) -> list[dict]:
    import pandas as pd

    return pd.read_csv(path, dtype=str).fillna("").to_dict("records") if path.stat().st_size > 1 else []


def _tail(text: str, lines: int = 40) -> str:
    """The last ``lines`` lines of a command's output, without blank ones and the combinations that did not run
    (``n/a``: other backends and cases of the benchmark, outside the --bench selection)."""
    kept = [line for line in text.splitlines() if line.strip() and "n/a" not in line]
    return "\n".join((["…"] if len(kept) > lines else []) + kept[-lines:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m experiments.{NAME}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="kron", help="the backend slowed down (default kron)")
    parser.add_argument(
        "--controls",
        default="col2im,polyphase,torch",
        type=lambda text: [name for name in text.split(",") if name],
        help="comma list of unchanged backends that must not be flagged",
    )
    parser.add_argument("--case", default="unet1", help="the Speed case every backend runs (default unet1)")
    parser.add_argument(
        "--factor",
        type=float,
        default=1.5,
        help="asv's --factor and 1 + the history's threshold (default 1.5; the slowdown is 2)",
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="asv rounds per commit, interleaved between the two commits (default 4)"
    )
    parser.add_argument("--out", type=Path, default=None, help=f"default results/{NAME}/<run-id>/")
    parser.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    args = parser.parse_args(argv)
    import testbed
    from experiments.benchmarks.common import SPEED_CASES

    for name in [args.backend, *args.controls]:
        if name not in testbed.list_backends():
            parser.error(f"{name!r} is not a registered backend; choose from {testbed.list_backends()}")
    if args.backend in args.controls:
        parser.error(f"--backend {args.backend} is also in --controls")
    if args.case not in SPEED_CASES:
        parser.error(f"--case {args.case!r} is not a Speed case; choose from {SPEED_CASES}")
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: must be at least 1")
    if not 1 < args.factor < 2:
        parser.error(f"--factor {args.factor:g}: must lie strictly between 1 and the planted 2")
    out = (args.out or RESULTS_ROOT / NAME / run_id()).resolve()  # the commands run in the clone
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="asv-regression-"))
    clone = workdir / "repo"
    subprocess.run(["git", "clone", "--quiet", str(PROJECT_ROOT), str(clone)], check=True)
    try:
        failures, summary = run_check(args, clone, out)
    finally:
        if args.keep:
            print(f"{NAME}: the clone is kept in {clone}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    atomic_write_text(out / "summary.md", summary)
    atomic_write_json(out / "verdict.json", {"passed": not failures, "failures": failures})
    print(f"{NAME}: {'PASS' if not failures else 'FAIL'}; summary in {out / 'summary.md'}")
    for failure in failures:
        print(f"  - {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
