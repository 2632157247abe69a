"""Checkerboard artifacts (Odena, Dumoulin & Olah, "Deconvolution and Checkerboard Artifacts", Distill 2016).

The overlap map ``conv_transpose2d(ones(1, 1, n, n), ones(1, 1, k, k), stride=s)`` counts how many
(input pixel, kernel tap) pairs land on each output pixel. In the interior (rows and columns
``k-1 … (n-1)·s``, away from the borders where fewer pixels exist) it is periodic with period s, and it is
constant exactly when s divides k: otherwise some outputs receive more taps than their neighbours, the
checkerboard. The metric is the interior unevenness ``(max - min) / mean``, zero iff ``k mod s == 0``.

Pairs (k, s): (2, 2), (3, 2), (4, 2), (3, 1), (5, 3). Every backend computes every map; a cell passes when
its unevenness is zero exactly when s divides k. The figure has one panel per pair (the oracle's map).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.harness.reporting import finish_report, load_run, markdown_table, new_figure, report_header, truthy
from experiments.harness.runner import call_backend, grid, run_sweep
from experiments.harness.storage import save_arrays, save_figure
from testbed.problem import Problem

from .common import finish, make_parser, selected_backends, start_run, sweep_executor

NAME = "checkerboard"
PAIRS = ((2, 2), (3, 2), (4, 2), (3, 1), (5, 3))
ZERO = 1e-9  # unevenness below this counts as even (fft rounds the integer counts)


def overlap_problem(kernel: int, stride: int, size: int) -> Problem:
    return Problem(batch=1, in_channels=1, in_size=size, out_channels=1, kernel_size=kernel, stride=stride)


def cases(size: int) -> dict:
    return {f"k{k}s{s}": overlap_problem(k, s, size) for k, s in PAIRS}


def interior(overlap, problem: Problem):
    """The rows/columns ``k-1 … (n-1)·s`` of the map, where every kernel tap of a phase has a source pixel."""
    (kh, kw), (sh, sw), (h, w) = problem.kernel_size, problem.stride, problem.in_size
    return overlap[kh - 1 : (h - 1) * sh + 1, kw - 1 : (w - 1) * sw + 1]


def overlap_map(backend, problem: Problem):
    x = np.ones(problem.input_shape, dtype=problem.dtype)
    weight = np.ones(problem.weight_shape, dtype=problem.dtype)
    return np.asarray(call_backend(backend, problem, x, weight))[0, 0]


def measure(cell, backend):
    problem = cell.problem
    counts = interior(overlap_map(backend, problem), problem).astype(np.float64)
    if counts.size == 0:
        return {"status": "error", "message": f"input size {problem.in_size} leaves no interior"}
    unevenness = float((counts.max() - counts.min()) / counts.mean())
    divides = problem.kernel_size[0] % problem.stride[0] == 0
    return {
        "kernel": problem.kernel_size[0],
        "stride": problem.stride[0],
        "stride_divides_kernel": divides,
        "interior_min": float(counts.min()),
        "interior_max": float(counts.max()),
        "interior_mean": float(counts.mean()),
        "unevenness": unevenness,
        "passed": (unevenness < ZERO) == divides,
    }


def build_parser():
    parser = make_parser(NAME, __doc__, dtypes="float64")
    parser.add_argument("--size", type=int, default=None, help="input size n (default 12; 6 with --quick)")
    return parser


def main(argv=None, *, out=None):
    args = build_parser().parse_args(argv)
    size = args.size or (6 if args.quick else 12)
    if size < 2:
        raise SystemExit(f"--size must be at least 2 (an interior needs two input pixels), got {size}")
    run_dir, _meta = start_run(NAME, args, argv, {"input_size": size}, out=out)
    problems = cases(size)
    run_sweep(
        grid(problems, selected_backends(args), args.dtypes),
        measure,
        run_dir,
        resume=args.resume,
        progress=not args.no_progress,
        desc=NAME,
        executor=sweep_executor(args),
    )
    save_arrays(
        run_dir / "overlap_maps.npz",
        **{name: overlap_map("naive", problem.with_(dtype=np.float64)) for name, problem in problems.items()},
    )
    write_report(run_dir)
    finish(run_dir, NAME)
    return run_dir


def overlap_figure(maps: dict, path):
    from matplotlib.patches import Rectangle

    fig, axes = new_figure(1, len(maps), figsize=(3.3 * len(maps), 3.8))
    for ax, (name, overlap) in zip(np.atleast_1d(axes), maps.items()):
        k, s = (int(v) for v in name[1:].split("s"))
        problem = overlap_problem(k, s, (overlap.shape[0] - k) // s + 1)
        counts = interior(overlap, problem)
        unevenness = (counts.max() - counts.min()) / counts.mean()
        image = ax.imshow(overlap, cmap="magma", vmin=0, interpolation="nearest")
        lo, hi = k - 1, (problem.in_size[0] - 1) * s
        ax.add_patch(
            Rectangle((lo - 0.5, lo - 0.5), hi - lo + 1, hi - lo + 1, fill=False, edgecolor="cyan", lw=1.5, ls="--")
        )
        ax.set_title(f"kernel {k}, stride {s}\n(max−min)/mean = {unevenness:.2f}", fontsize=10)
        ax.set_xlabel("output column")
        ax.set_ylabel("output row")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="taps per output pixel")
    fig.suptitle("Overlap maps conv_transpose2d(ones, ones): even iff stride divides kernel (dashed: interior)", y=1.02)
    fig.tight_layout()
    return save_figure(fig, path)


def write_report(run_dir) -> str:
    run_dir = Path(run_dir)
    meta, frame = load_run(run_dir)
    parts = [
        report_header(meta, "Checkerboard artifacts: overlap maps of conv_transpose2d(ones, ones)"),
        f"Input {meta.get('input_size')}×{meta.get('input_size')}, one channel, all-ones kernel. Interior "
        f"unevenness (max − min) / mean is zero exactly when the stride divides the kernel "
        f"(Odena, Dumoulin & Olah 2016).\n",
    ]
    if not frame.empty and "unevenness" in frame:
        ok = frame[frame["status"] == "ok"]
        summary = ok.pivot_table(index="case", columns="backend", values="unevenness", sort=False)
        expected = ok.drop_duplicates("case").set_index("case")[
            ["kernel", "stride", "stride_divides_kernel", "interior_min", "interior_max"]
        ]
        passed = truthy(ok["passed"])
        parts += [
            "## Interior unevenness per (kernel, stride) and backend\n",
            markdown_table(expected),
            "\n",
            markdown_table(summary, floatfmt=".3g"),
            f"\n**{int(passed.sum())} of {len(ok)} cells: unevenness is zero iff stride divides kernel.**\n",
        ]
    maps_path = run_dir / "overlap_maps.npz"
    if maps_path.exists():
        with np.load(maps_path) as data:
            overlap_figure({name: data[name] for name in data.files}, run_dir / "overlap_maps.png")
        parts.append("\n![overlap maps, one panel per (kernel, stride)](overlap_maps.png)\n")
    return finish_report(run_dir, parts, frame)


if __name__ == "__main__":
    main()
