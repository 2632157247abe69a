"""The seed blog post's demonstration, for every backend (the post this project started from).

``ConvTranspose2d(1, 1, 2, stride=2, bias=False)`` on a random 2×3 input: each 2×2 block of the 4×6 output
equals the kernel times one input pixel, ``out[2i:2i+2, 2j:2j+2] == kernel * inp[i, j]`` (the post checks it
with ``==``). Then the post's rule "upsampling by an integer factor n = kernel n×n, stride n, no padding"
for n = 2, 3, 4: the output is n times larger and every n×n block is kernel × pixel.

Per backend and case the results record whether every block equals kernel × pixel exactly (bit for bit, as in
the post: one product per output, nothing added but zeros) and within the dtype's tolerance, and the largest
deviation. The figure shows input, kernel and output blocks of the seed case (computed by ``naive``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.harness.reporting import finish_report, load_run, markdown_table, new_figure, report_header, truthy
from experiments.harness.runner import call_backend, cell_rng, grid, run_sweep
from experiments.harness.storage import save_arrays, save_figure
from testbed.problem import Problem

from .common import finish, make_parser, selected_backends, start_run, sweep_executor

NAME = "seed"
TOLERANCE = {"float32": 1e-6, "float64": 1e-14}  # relative to max |kernel × pixel|
INPUT_SIZE = (2, 3)


def upsampler(n: int) -> Problem:
    """``ConvTranspose2d(1, 1, n, stride=n)`` on a 2×3 input: upsampling by ``n``."""
    return Problem(batch=1, in_channels=1, in_size=INPUT_SIZE, out_channels=1, kernel_size=n, stride=n)


def cases() -> dict:
    return {"seed": upsampler(2), "up2": upsampler(2), "up3": upsampler(3), "up4": upsampler(4)}


def block_check(x, weight, y, n: int) -> dict:
    """Compare every n×n block of ``y`` with ``weight × pixel``."""
    kernel = weight[0, 0]
    worst, exact, scale = 0.0, True, 0.0
    for i in range(x.shape[2]):
        for j in range(x.shape[3]):
            expected = kernel * x[0, 0, i, j]
            block = y[0, 0, n * i : n * (i + 1), n * j : n * (j + 1)]
            exact &= bool(np.array_equal(block, expected))
            worst = max(worst, float(np.abs(block.astype(np.float64) - expected).max()))
            scale = max(scale, float(np.abs(expected).max()))
    return {
        "blocks": x.shape[2] * x.shape[3],
        "blocks_exact": exact,
        "max_abs_diff": worst,
        "relative_diff": worst / scale if scale else worst,
    }


def make_measure(seed: int):
    def measure(cell, backend):
        problem = cell.problem
        x, weight, _ = problem.random_arrays(cell_rng(seed, cell))
        y = np.asarray(call_backend(backend, problem, x, weight))
        n = problem.stride[0]
        expected_shape = (1, 1, INPUT_SIZE[0] * n, INPUT_SIZE[1] * n)
        if y.shape != expected_shape:
            return {"status": "error", "message": f"output shape {y.shape}, expected {expected_shape}", "passed": False}
        result = block_check(x, weight, y, n)
        result["upsampling"] = n
        result["passed"] = result["relative_diff"] <= TOLERANCE[str(problem.dtype)]
        return result

    return measure


def build_parser():
    return make_parser(NAME, __doc__, dtypes="float32")


def main(argv=None, *, out=None):
    args = build_parser().parse_args(argv)
    run_dir, _meta = start_run(NAME, args, argv, {"tolerance": TOLERANCE}, out=out)
    cells = grid(cases(), selected_backends(args), args.dtypes)
    frame = run_sweep(
        cells,
        make_measure(args.seed),
        run_dir,
        resume=args.resume,
        progress=not args.no_progress,
        desc=NAME,
        executor=sweep_executor(args),
    )
    # The figure's arrays: the seed case as the oracle computes it, saved so a report rebuild can redraw it.
    seed_cell = next(c for c in cells if c.case == "seed")
    x, weight, _ = seed_cell.problem.random_arrays(cell_rng(args.seed, seed_cell))
    y = call_backend("naive", seed_cell.problem, x, weight)
    save_arrays(run_dir / "seed_arrays.npz", input=x[0, 0], kernel=weight[0, 0], output=y[0, 0])
    print(verification_text(frame))
    write_report(run_dir)
    finish(run_dir, NAME)
    return run_dir


def verification_text(frame) -> str:
    lines = []
    for _, row in frame.iterrows():
        if row["status"] != "ok":
            lines.append(f"{row['case']:5s} {row['backend']:18s} {row['dtype']}: {row['status']} {row['message']}")
            continue
        exact = truthy(row["blocks_exact"])
        verdict = "PASS" if truthy(row["passed"]) else "FAIL"
        lines.append(
            f"{row['case']:5s} {row['backend']:18s} {row['dtype']}: {verdict}  "
            f"{int(row['blocks'])} blocks of {int(row['upsampling'])}x{int(row['upsampling'])} == kernel × "
            f"pixel {'exactly' if exact else 'within tolerance'} (max |diff| {row['max_abs_diff']:.2g})"
        )
    return "\n".join(lines)


def seed_figure(arrays, path):
    x, kernel, y = arrays["input"], arrays["kernel"], arrays["output"]
    n = kernel.shape[0]
    fig, axes = new_figure(1, 3, figsize=(12, 3.6), gridspec_kw={"width_ratios": [3, 2, 6]})
    limit = float(np.abs(y).max()) or 1.0
    panels = (
        (x, "input (2×3)", None),
        (kernel, f"kernel ({n}×{n})", None),
        (y, f"output ({y.shape[0]}×{y.shape[1]}): block (i, j) = kernel × input[i, j]", n),
    )
    for ax, (image, title, block) in zip(axes, panels):
        ax.imshow(image, cmap="coolwarm", vmin=-limit, vmax=limit)
        for (r, c), value in np.ndenumerate(image):
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(image.shape[1]))
        ax.set_yticks(range(image.shape[0]))
        ax.set_xlabel("column")
        ax.set_ylabel("row")
        ax.set_title(title, fontsize=10)
        if block:
            for edge in range(0, image.shape[0] + 1, block):
                ax.axhline(edge - 0.5, color="black", lw=2)
            for edge in range(0, image.shape[1] + 1, block):
                ax.axvline(edge - 0.5, color="black", lw=2)
    fig.suptitle("Seed demonstration: ConvTranspose2d(1, 1, 2, stride=2) turns each pixel into kernel × pixel", y=1.06)
    return save_figure(fig, path)


def write_report(run_dir) -> str:
    run_dir = Path(run_dir)
    meta, frame = load_run(run_dir)
    parts = [
        report_header(meta, "Seed demonstration: upsampling by n = kernel n×n, stride n"),
        "Each n×n output block must equal kernel × the input pixel (the seed post checks it with `==`). "
        f"`passed`: within {TOLERANCE} of max |kernel × pixel|; `blocks_exact`: bit for bit.\n",
    ]
    if not frame.empty:
        columns = [
            "case",
            "backend",
            "dtype",
            "status",
            "upsampling",
            "blocks",
            "blocks_exact",
            "max_abs_diff",
            "passed",
        ]
        parts += [
            "## Verification\n",
            "```\n" + verification_text(frame) + "\n```\n",
            markdown_table(frame[[c for c in columns if c in frame]], index=False),
        ]
    arrays_path = run_dir / "seed_arrays.npz"
    if arrays_path.exists():
        with np.load(arrays_path) as arrays:
            seed_figure(arrays, run_dir / "seed.png")
        parts.append("\n![input, kernel and output blocks of the seed case](seed.png)\n")
    return finish_report(run_dir, parts, frame)


if __name__ == "__main__":
    main()
