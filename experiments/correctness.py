"""Correctness of every backend against the ``naive`` oracle (computed in float64) on a configuration grid of
every spatial rank: 2-D shapes covering every parameter, and 1-D and 3-D ones, among them the vocoder1d and
unet3d suites' layers shrunk to a few channels and positions (a backend that does not compute a rank reports
its cells ``unsupported``, with the reason, never as errors).

Per case × backend × dtype: relative L2 error ``‖y - y_ref‖ / ‖y_ref‖``, max absolute error, whether the
result equals the oracle bit for bit, and the adjoint-identity residual
``|<conv(z), x> - <z, convT(x)>| / (‖z‖·‖convT(x)‖)`` (testbed.testing: the forward convolution of the rank,
written independently in NumPy). A cell passes when both are within the dtype's tolerance
(``testbed.testing.TOLERANCES``: 1e-12 float64, 1e-5 float32).

``--fill int`` draws input, weight and bias from the integers -3..3, so every sum is exact in float32 and
float64: then every backend but ``fft`` (rounding in the transforms) should equal the oracle bit for bit;
the report says which do. (The exact-integer fill is oneDNN benchdnn's trick.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.harness.descriptor import parse_descriptor
from experiments.harness.reporting import finish_report, heatmap_figure, load_run, markdown_table, report_header, truthy
from experiments.harness.runner import call_backend, cell_rng, grid, run_sweep
from testbed.testing import TOLERANCES, adjoint_residual, call_kwargs, oracle, relative_error, tolerance

from .common import finish, make_parser, selected_backends, start_run, sweep_executor

NAME = "correctness"
#: Columns of the report's table of every cell.
CELL_COLUMNS = [
    "case",
    "descriptor",
    "rank",
    "backend",
    "dtype",
    "status",
    "rel_l2",
    "max_abs",
    "bitwise_equal",
    "adjoint_residual",
    "passed",
]

#: name: (descriptor, has_bias). Small shapes covering every parameter and the corner cases of the notes, at
#: every spatial rank (the descriptor names it: ``iw``/``kw`` only is 1-D, ``id``/``kd`` 3-D).
GRID = {
    "k2s2": ("mb2ic6ih5oc4kh2sh2", False),  # U-Net up-conv, no overlap
    "k3s2p1op1": ("mb2ic3ih5iw7oc5kh3sh2ph1oph1", True),  # output_padding rows hold computed values
    "k4s2p1": ("mb1ic4ih6oc3kh4sh2ph1", False),  # DCGAN
    "k3s1p1": ("mb1ic5ih7oc4kh3ph1", True),
    "k3d2": ("mb1ic3ih6oc4kh3ph2dh2", False),
    "g2_asym": ("g2mb1ic4ih6oc6kh3sh1sw2ph1pw0dh2", True),  # groups, asymmetric stride and padding
    "depthwise": ("g6mb1ic6ih6oc6kh4sh2ph1", True),
    "s_gt_k": ("mb1ic3ih4oc2kh2sh3", True),  # gaps that hold only the bias
    "op_ge_s": ("mb1ic2ih5oc3kh3oph1dh2", False),  # op >= stride, allowed as op < dilation
    "rect": ("mb1ic3ih5iw6oc2kh3kw2sh2sw1ph1pw0", False),  # non-square input and kernel
    "k1": ("mb2ic8ih5oc3kh1", True),
    "k5s3": ("mb1ic4ih5oc3kh5sh3ph1", False),
    "p_gt_dk": ("mb1ic2ih6oc2kh3sh2ph3", False),  # padding > d·(k-1): pure crop
    "k2s2op1": ("mb1ic4ih4oc4kh2sh2oph1", False),
    "g3s2d2": ("g3mb2ic6ih5oc9kh3sh2ph1oph1dh2", True),
    # 1-D: HiFi-GAN's up-samplings (vocoder1d) shrunk, and the other parameters along one axis
    "voc_k16s8p4_1d": ("mb2ic5iw6oc3kw16sw8pw4", True),
    "voc_k4s2p1_1d": ("mb1ic4iw9oc2kw4sw2pw1", False),
    "g2d2op1_1d": ("g2mb1ic4iw7oc6kw3sw2pw1opw1dw2", True),
    "s_gt_k_1d": ("mb1ic3iw5oc2kw2sw3", False),
    # 3-D: nnU-Net's up-convolutions (unet3d) shrunk, and overlapping, padded, grouped, dilated, uneven axes
    "unet_k2s2_3d": ("mb2ic6id3ih4iw2oc3kd2sd2", True),
    "k3s2p1op1_3d": ("mb1ic3id3ih4iw5oc2kd3sd2pd1opd1", False),
    "g2_asym_3d": ("g2mb1ic4id4ih3iw5oc6kd2kh3kw1sd1sh2sw3pd0ph1pw0dd2dh1", True),
    "depthwise_3d": ("g4mb1ic4id4oc4kd3sd2pd1", False),
}
QUICK = ("k2s2", "k3s2p1op1", "g2_asym", "depthwise", "voc_k16s8p4_1d", "unet_k2s2_3d")


def cases(quick: bool) -> dict:
    names = QUICK if quick else GRID
    return {name: parse_descriptor(GRID[name][0], dtype=np.float64, has_bias=GRID[name][1]) for name in names}


def make_measure(seed: int, integer_fill: bool):
    oracles = {}

    def cached_oracle(cell, x, weight, bias):
        key = (cell.case, str(cell.problem.dtype))
        if key not in oracles:
            oracles[key] = oracle(x, weight, bias, **call_kwargs(cell.problem))
        return oracles[key]

    def measure(cell, backend):
        problem = cell.problem
        rng = cell_rng(seed, cell)
        x, weight, bias = problem.random_arrays(rng, integer=integer_fill)
        reference = cached_oracle(cell, x, weight, bias)
        y = np.asarray(call_backend(backend, problem, x, weight, bias), dtype=np.float64)
        if y.shape != reference.shape:
            return {"status": "error", "message": f"output shape {y.shape}, expected {reference.shape}"}
        diff = y - reference
        rel_l2 = relative_error(y, reference)
        unbiased = y if bias is None else np.asarray(call_backend(backend, problem, x, weight, None))
        residual = adjoint_residual(x, weight, unbiased, rng.standard_normal(problem.output_shape), problem)
        allowed = tolerance(problem.dtype)
        finite = bool(np.isfinite(y).all())
        return {
            "rel_l2": rel_l2,
            "max_abs": float(np.abs(diff).max()) if diff.size else 0.0,
            "bitwise_equal": bool(np.array_equal(y, reference)),
            "adjoint_residual": residual,
            "tolerance": allowed,
            "passed": finite and rel_l2 <= allowed and residual <= allowed,
        }

    return measure


def build_parser():
    parser = make_parser(NAME, __doc__, dtypes="float32,float64")
    parser.add_argument(
        "--fill",
        choices=("normal", "int"),
        default="normal",
        help="input values: standard normal (default) or small integers (exact sums)",
    )
    return parser


def main(argv=None, *, out=None):
    args = build_parser().parse_args(argv)
    tolerances = {str(dtype): tol for dtype, tol in TOLERANCES.items()}
    run_dir, _meta = start_run(NAME, args, argv, {"fill": args.fill, "tolerance": tolerances}, out=out)
    cells = grid(cases(args.quick), selected_backends(args), args.dtypes)
    run_sweep(
        cells,
        make_measure(args.seed, args.fill == "int"),
        run_dir,
        resume=args.resume,
        progress=not args.no_progress,
        desc=NAME,
        executor=sweep_executor(args),
    )
    write_report(run_dir)
    finish(run_dir, NAME)
    return run_dir


def _log10_error(frame):
    return np.log10(np.maximum(frame["rel_l2"].astype(float), 1e-17))


def summary_table(frame):
    """Per backend, spatial rank and dtype: cells run, cells passed, worst relative L2 error and adjoint
    residual."""
    ok = frame[frame["status"] == "ok"].copy()
    if ok.empty:
        return ok
    ok["passed"] = truthy(ok["passed"])
    by = ["backend", "dtype"]
    if "rank" in ok:  # runs from before the ranks have no rank column
        ok, by = ok.sort_values("rank", kind="stable"), ["rank", *by]
    return ok.groupby(by, sort=False).agg(
        cases=("case", "count"),
        passed=("passed", "sum"),
        worst_rel_l2=("rel_l2", "max"),
        worst_max_abs=("max_abs", "max"),
        worst_adjoint=("adjoint_residual", "max"),
    )


def rank_table(frame):
    """Backend × spatial rank: ``passed/computed`` of the cells it ran, or the status of cells it did not run
    (``unsupported``: it does not declare the rank or declines those configurations)."""

    def cell(group):
        ok = group[group["status"] == "ok"]
        if ok.empty:
            return "/".join(sorted(set(group["status"])))
        return f"{int(truthy(ok['passed']).sum())}/{len(ok)}"

    ranks = frame.groupby(["backend", "rank"], sort=False)[["status", "passed"]].apply(cell).unstack("rank")
    return ranks.reindex(columns=sorted(ranks.columns)).rename(columns=lambda rank: f"{rank}-D")


def bitwise_table(frame):
    """Per backend: cells equal to the oracle bit for bit, out of the cells it ran."""
    ok = frame[frame["status"] == "ok"].copy()
    ok["bitwise_equal"] = truthy(ok["bitwise_equal"])
    table = ok.groupby("backend", sort=False).agg(cells=("case", "count"), bitwise_equal=("bitwise_equal", "sum"))
    table["all_bitwise"] = table["cells"] == table["bitwise_equal"]
    return table


def write_report(run_dir) -> str:
    """Rebuild report.md and the heatmaps from the saved results.csv and meta.json; returns the markdown."""
    run_dir = Path(run_dir)
    meta, frame = load_run(run_dir)
    parts = [
        report_header(meta, "Correctness against the naive oracle"),
        f"Fill: **{meta.get('fill')}**. Tolerances (relative L2 and adjoint residual): float32 "
        f"{tolerance('float32'):g}, float64 {tolerance('float64'):g}. Oracle: `naive` in float64 on the "
        f"same (rounded) inputs.\n",
    ]
    if not frame.empty:
        parts += ["## Summary per backend\n", markdown_table(summary_table(frame).reset_index(), index=False)]
        if "rank" in frame:
            parts += [
                "\n## Spatial ranks per backend\n",
                "Cells passed / computed per rank; a backend that does not compute a rank has its cells "
                "`unsupported` there (not an error).\n",
                markdown_table(rank_table(frame)),
            ]
        ok = frame[frame["status"] == "ok"]
        failed = ok[~truthy(ok["passed"])]
        parts.append(f"\n**{len(ok) - len(failed)} of {len(ok)} computed cells pass.**\n")
        if len(failed):
            parts += [
                "\n### Failing cells\n",
                markdown_table(
                    failed[["case", "descriptor", "backend", "dtype", "rel_l2", "max_abs", "adjoint_residual"]],
                    index=False,
                ),
            ]
        if meta.get("fill") == "int":
            bits = bitwise_table(frame)
            exact = [b for b, row in bits.iterrows() if row["all_bitwise"]]
            inexact = [b for b, row in bits.iterrows() if not row["all_bitwise"]]
            parts += [
                "\n## Exact-integer fill: bit-for-bit equality with the oracle\n",
                f"Every sum is an integer below 2^24, so a backend that adds exactly what the definition "
                f"adds matches bit for bit. **Bitwise equal on every cell:** {', '.join(exact) or 'none'}."
                f" **Not bitwise equal:** {', '.join(inexact) or 'none'}"
                + (" (expected of fft: its transforms round)" if "fft" in inexact else "")
                + ".\n",
                markdown_table(bits),
            ]
        figures = []
        for dtype, group in ok.groupby("dtype", sort=False):
            matrix = group.assign(log10_error=_log10_error(group)).pivot_table(
                index="backend", columns="case", values="log10_error", sort=False
            )
            path = run_dir / f"heatmap_{dtype}.png"
            heatmap_figure(
                matrix,
                f"log10 relative L2 error vs naive oracle ({dtype})",
                "log10(relative L2 error); -17 = exact",
                path,
                vmin=-17,
                vmax=0,
            )
            figures.append(f"![log10 error heatmap {dtype}]({path.name})")
        parts += [
            "\n## Error heatmaps (backend × case)\n",
            "Values are log10 of the relative L2 error (−17 marks an exact result); grey cells marked – "
            "are configurations the backend does not support.\n",
            "\n\n".join(figures) + "\n",
        ]
    return finish_report(run_dir, parts, frame, CELL_COLUMNS)


if __name__ == "__main__":
    main()
