"""Every experiment end to end in --quick mode into a temporary directory: the files it promises, their
columns, real PNG figures, report rebuild and comparison, and a killed run completed by --resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from experiments import checkerboard, correctness, report, scaling, seed, speed, training_step
from experiments import main as main_job
from experiments.harness.metadata import PROJECT_ROOT
from experiments.harness.runner import ROW_COLUMNS
from testbed.cases import SUITES
from testbed.registry import available_backends, get_backend

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
META_KEYS = {
    "experiment",
    "run_id",
    "utc_time",
    "git",
    "versions",
    "cpu_model",
    "threads",
    "device",
    "seed",
    "command",
    "quick",
    "backends",
}
FAST = "naive,col2im,kron"  # a few quick backends where the experiment is not about all of them


def check_run(run_dir: Path, experiment: str, metrics=()) -> pd.DataFrame:
    """The common promises of a run directory; returns its results table."""
    meta = json.loads((run_dir / "meta.json").read_text())
    assert META_KEYS <= set(meta) and meta["experiment"] == experiment
    assert {"python", "numpy", "scipy", "numba", "pandas"} <= set(meta["versions"])
    assert {"commit", "dirty"} <= set(meta["git"])
    frame = pd.read_csv(run_dir / "results.csv")
    assert len(frame) > 0 and frame["cell_key"].is_unique
    assert set(ROW_COLUMNS) <= set(frame.columns) and set(metrics) <= set(frame.columns)
    assert set(frame["status"]) <= {"ok", "unsupported", "unavailable", "error", "simulator: not timed"}
    assert not (frame["status"] == "error").any(), frame[frame["status"] == "error"][["backend", "message"]]
    text = (run_dir / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert linked, "the report links no figure"
    for name in linked:
        check_png(run_dir / name)
    return frame


def check_png(path: Path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 100, (path, image.shape)
    assert image.std() > 0.01, f"{path} is blank"


def truthy(series):
    return series.astype(str).str.lower() == "true"


def test_every_experiment_has_help(capsys):
    for module in (correctness, speed, scaling, seed, checkerboard, main_job, training_step):
        with pytest.raises(SystemExit) as info:
            module.build_parser().parse_args(["--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        for flag in ("--quick", "--out", "--backends", "--seed", "--resume"):
            assert flag in out, (module.NAME, flag)


def test_unknown_backend_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        correctness.build_parser().parse_args(["--backends", "naive,nonesuch"])
    assert "unknown: nonesuch" in capsys.readouterr().err


def test_correctness_quick(tmp_path):
    run_dir = correctness.main(["--quick", "--no-progress", "--out", str(tmp_path / "run")])
    frame = check_run(run_dir, "correctness", ["rel_l2", "max_abs", "bitwise_equal", "adjoint_residual", "passed"])
    assert set(frame["backend"]) == set(available_backends())
    assert set(frame["dtype"]) == {"float32", "float64"}
    ok = frame[frame["status"] == "ok"]
    assert truthy(ok["passed"]).all(), ok[~truthy(ok["passed"])]
    assert (ok.loc[ok["backend"] == "naive", "rel_l2"] <= 1e-6).all()
    # every rank, each backend's cells of a rank it does not declare reported unsupported (not errors)
    assert set(frame["rank"]) == {1, 2, 3}
    for (name, rank), rows in frame.groupby(["backend", "rank"]):
        if rank not in get_backend(name).ranks:
            assert (rows["status"] == "unsupported").all(), (name, rank)
            assert rows["message"].str.contains(f"{rank}-D transposed convolution not supported").all()
    assert {1, 3} <= set(ok.loc[ok["backend"] == "naive", "rank"])
    assert "## Spatial ranks per backend" in (run_dir / "report.md").read_text()


def test_correctness_integer_fill_reports_bitwise_backends(tmp_path):
    run_dir = correctness.main(
        [
            "--quick",
            "--no-progress",
            "--fill",
            "int",
            "--dtypes",
            "float32",
            "--backends",
            "naive,fft,col2im",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    frame = check_run(run_dir, "correctness", ["bitwise_equal"])
    assert truthy(frame.loc[frame["backend"] == "naive", "bitwise_equal"]).all()
    text = (run_dir / "report.md").read_text()
    assert "Bitwise equal on every cell:** naive" in text


def test_speed_layout_and_reference_rows(tmp_path):
    """--layout NHWC times every cell channels last; the stride == kernel case gets the bare-GEMM and torch
    channels-last reference rows, and every row its ratio to the GEMM of the same run."""
    run_dir = speed.main(
        [
            "--quick",
            "--no-progress",
            "--suite",
            "tiny",
            "--cases",
            "tiny_k2s2,tiny_k3s2",
            "--backends",
            "col2im,numba_cpu",
            "--baseline",
            "col2im",
            "--layout",
            "NHWC",
            "--references",
            "all",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    frame = check_run(run_dir, "speed", ["ratio_to_gemm", "layout"])
    ok = frame[frame["status"] == "ok"]
    assert set(ok["layout"]) == {"NHWC"}
    unet_like = ok[ok["case"] == "tiny_k2s2"]
    references = {"gemm"} | ({"torch_channels_last"} if "torch" in available_backends() else set())
    assert references <= set(unet_like["backend"])
    assert (unet_like.loc[unet_like["backend"] == "gemm", "ratio_to_gemm"] == 1).all()
    assert unet_like["ratio_to_gemm"].notna().all()
    assert not frame.loc[frame["case"] == "tiny_k3s2", "backend"].isin(references).any()
    assert "Ratio to the bare GEMM" in (run_dir / "report.md").read_text()


def test_speed_of_the_1d_and_3d_suites(tmp_path, monkeypatch):
    """--suite unet3d,vocoder1d (their first layers shrunk to a few channels and positions here): rows of rank 1
    and 3 with the layout of their rank (--layout NHWC: NLC and NDHWC), every backend that does not declare a
    rank ``unsupported``, and on the 3-D stride == kernel case the bare-GEMM and torch channels-last rows."""
    unet3d1, voc1 = SUITES["unet3d"]["unet3d1"], SUITES["vocoder1d"]["voc1"]
    monkeypatch.setitem(SUITES, "unet3d", {"unet3d1": unet3d1.with_(in_channels=4, out_channels=3, in_size=3)})
    monkeypatch.setitem(SUITES, "vocoder1d", {"voc1": voc1.with_(in_channels=4, out_channels=2, in_size=5)})
    argv = ["--quick", "--no-progress", "--suite", "unet3d,vocoder1d", "--baseline", "naive", "--exclude", "none"]
    run_dir = speed.main([*argv, "--layout", "NHWC", "--out", str(tmp_path / "run")])
    frame = check_run(run_dir, "speed", ["rank", "layout", "gflops", "ratio_to_gemm"])
    assert dict(zip(frame["case"], frame["rank"])) == {"unet3d1": 3, "voc1": 1}
    ok = frame[frame["status"] == "ok"]
    library = ok[~ok["backend"].isin(["gemm", "torch_channels_last"])]
    assert set(zip(library["case"], library["layout"])) == {("unet3d1", "NDHWC"), ("voc1", "NLC")}
    assert (ok.loc[ok["backend"] == "naive", "speedup"] == 1).all() and set(ok["case"]) == {"unet3d1", "voc1"}
    for (name, rank), rows in frame[frame["backend"].isin(available_backends())].groupby(["backend", "rank"]):
        if rank not in get_backend(name).ranks:
            assert (rows["status"] == "unsupported").all(), (name, rank)
    unet_like = ok[ok["case"] == "unet3d1"]
    references = {"gemm"} | ({"torch_channels_last"} if "torch" in available_backends() else set())
    assert references <= set(unet_like["backend"]) and unet_like["ratio_to_gemm"].notna().all()
    assert (unet_like.loc[unet_like["backend"] == "gemm", "ratio_to_gemm"] == 1).all()
    assert not frame.loc[frame["case"] == "voc1", "backend"].isin(references).any()  # k16 s8: no bare GEMM
    useful = {case: SUITES[name][case].flops for name, case in (("unet3d", "unet3d1"), ("vocoder1d", "voc1"))}
    assert np.allclose(ok["gflops"], ok["case"].map(useful) / ok["median_s"] / 1e9)  # useful work, any rank
    text = (run_dir / "report.md").read_text()
    assert "## suite unet3d, float32, NDHWC, forward" in text and "## suite vocoder1d, float32, NLC, forward" in text


def test_speed_directions(tmp_path):
    """--direction forward,backward_data,backward_weight: a direction column; the gradients timed for every
    backend declaring them (Backend.directions), ``unsupported`` rows naming the direction for the others;
    speedups within a direction; GFLOP/s of the forward's useful work; ratio_to_gemm over the forward-timed GEMM;
    a report section per direction."""
    run_dir = speed.main(
        [
            "--quick",
            "--no-progress",
            "--suite",
            "tiny",
            "--cases",
            "tiny_k2s2",
            "--backends",
            "col2im,kron,numba_cpu",
            "--baseline",
            "col2im",
            "--direction",
            "forward,backward_data,backward_weight",
            "--references",
            "all",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    frame = check_run(run_dir, "speed", ["direction", "gflops", "speedup", "ratio_to_gemm"])
    library = frame[~frame["backend"].isin(["gemm", "torch_channels_last"])]
    for (name, direction), rows in library.groupby(["backend", "direction"]):
        declared = direction in get_backend(name).directions
        assert (rows["status"] == ("ok" if declared else "unsupported")).all(), (name, direction)
        if not declared:
            assert rows["message"].str.contains(direction).all()
    assert set(library["direction"]) == {"forward", "backward_data", "backward_weight"}
    assert set(frame.loc[frame["backend"].isin(["gemm", "torch_channels_last"]), "direction"]) == {"forward"}
    ok = frame[frame["status"] == "ok"]
    assert (ok.loc[ok["backend"] == "col2im", "speedup"] == 1).all()
    flops = SUITES["tiny"]["tiny_k2s2"].flops
    assert np.allclose(ok["gflops"], flops / ok["median_s"] / 1e9)
    backward = ok[ok["direction"] != "forward"]
    assert set(backward["backend"]) == {"col2im", "numba_cpu"} and backward["ratio_to_gemm"].notna().all()
    text = (run_dir / "report.md").read_text()
    for direction in ("forward", "backward_data", "backward_weight"):
        assert f"## suite tiny, float32, NCHW, {direction}" in text


def test_speed_quick(tmp_path):
    run_dir = speed.main(
        ["--quick", "--no-progress", "--backends", FAST, "--baseline", "col2im", "--out", str(tmp_path / "run")]
    )
    frame = check_run(
        run_dir,
        "speed",
        ["first_call_s", "median_s", "min_s", "iqr_s", "repeats", "gflops", "gbps", "speedup", "flops", "bytes_moved"],
    )
    ok = frame[frame["status"] == "ok"]
    assert (ok["median_s"] > 0).all() and (ok["min_s"] <= ok["median_s"]).all()
    assert (ok.loc[ok["backend"] == "col2im", "speedup"] == 1).all()
    assert set(frame["suite"]) == {"tiny"}
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["gemm_gflops_f32"] > 0 and meta["copy_gbps"] > 0
    assert (frame.loc[frame["case"].eq("tiny_k3s2") & frame["backend"].eq("kron"), "status"] == "unsupported").all()
    # attained GFLOP/s against the GEMM ceiling: a table per suite and a column of the cell table
    text = (run_dir / "report.md").read_text()
    assert f"float32 GEMM ceiling ({meta['gemm_gflops_f32']:.1f} GFLOP/s" in text
    with_pct = speed.with_ceiling_pct(ok, meta["gemm_gflops_f32"])
    assert np.allclose(with_pct["gemm_ceiling_pct"], ok["gflops"] / meta["gemm_gflops_f32"] * 100)


@pytest.mark.parametrize("suite_name", ["unet", "unet3d"])
def test_training_step_quick(tmp_path, suite_name):
    """--quick on a tiny U-Net up-convolution (2-D and 3-D): a step row per backend declaring all three
    directions (every part and the whole step timed), ``unsupported`` naming the missing direction for the
    others, the bare-GEMM reference row whose step is three GEMMs (the floor), speedups and ratios to it, a
    report with its figure; --resume with every row on disk times nothing again; experiments.report rebuilds the
    table with its ratios from the log."""
    argv = ["--quick", "--no-progress", "--suite", suite_name, "--backends", "col2im,kron,numba_cpu"]
    run_dir = training_step.main([*argv, "--baseline", "col2im", "--out", str(tmp_path / "run")])
    frame = check_run(run_dir, "training_step", ["median_s", "forward_s", "speedup", "ratio_to_floor", "suite"])
    rank = next(iter(SUITES[suite_name].values())).rank
    assert set(frame["suite"]) == {suite_name} and set(frame["rank"]) == {rank}
    for name, rows in frame[frame["backend"] != "gemm"].groupby("backend"):
        declared = set(get_backend(name).directions) == {"forward", "backward_data", "backward_weight"}
        assert (rows["status"] == ("ok" if declared else "unsupported")).all(), name
        if declared:
            parts = rows[[f"{part}_s" for part in training_step.PARTS]]
            assert (parts > 0).all().all() and (rows["median_s"] > 0).all()
        else:
            assert rows["message"].str.contains("backward_data").all()
    gemm = frame[frame["backend"] == "gemm"]
    assert len(gemm) == 1 and (gemm["status"] == "ok").all()
    assert np.allclose(gemm["median_s"], 3 * gemm["forward_s"]) and np.allclose(gemm["ratio_to_floor"], 1)
    ok = frame[frame["status"] == "ok"]
    assert (ok.loc[ok["backend"] == "col2im", "speedup"] == 1).all() and ok["ratio_to_floor"].notna().all()
    assert "three such GEMMs, the floor of a step" in (run_dir / "report.md").read_text()
    before = (run_dir / "rows.jsonl").read_text()
    training_step.main([*argv, "--baseline", "col2im", "--out", str(run_dir), "--resume"])
    assert (run_dir / "rows.jsonl").read_text() == before
    (run_dir / "results.csv").unlink()  # a killed run: the table and its ratios rebuilt from the log
    report.main([str(run_dir)])
    assert pd.read_csv(run_dir / "results.csv")["ratio_to_floor"].notna().sum() == len(ok)


def test_scaling_quick(tmp_path):
    run_dir = scaling.main(
        ["--quick", "--no-progress", "--backends", FAST + ",numba_cpu", "--out", str(tmp_path / "run")]
    )
    frame = check_run(run_dir, "scaling", ["median_s", "sweep", "x"])
    assert {"size", "channels"} <= set(frame["sweep"])
    text = (run_dir / "report.md").read_text()
    assert "Fitted log-log slopes" in text
    assert ("threads" in set(frame["sweep"])) or "Skipped:" in text


def test_scaling_skips_threads_without_numba_cpu(tmp_path):
    run_dir = scaling.main(["--quick", "--no-progress", "--backends", "kron", "--out", str(tmp_path / "run")])
    assert "Skipped: numba_cpu is not" in (run_dir / "report.md").read_text()


def test_seed_quick(tmp_path, capsys):
    run_dir = seed.main(["--quick", "--no-progress", "--out", str(tmp_path / "run")])
    frame = check_run(run_dir, "seed", ["blocks_exact", "max_abs_diff", "passed", "upsampling"])
    ok = frame[frame["status"] == "ok"]
    assert truthy(ok["passed"]).all()
    assert set(ok["upsampling"]) == {2, 3, 4}
    assert truthy(ok.loc[ok["backend"] == "naive", "blocks_exact"]).all()
    assert "6 blocks of 2x2 == kernel × pixel exactly" in capsys.readouterr().out


def test_checkerboard_quick(tmp_path):
    run_dir = checkerboard.main(
        ["--quick", "--no-progress", "--backends", FAST + ",fft", "--out", str(tmp_path / "run")]
    )
    frame = check_run(run_dir, "checkerboard", ["unevenness", "stride_divides_kernel", "passed"])
    naive = frame[frame["backend"] == "naive"].set_index("case")
    assert naive.loc["k3s2", "unevenness"] > 0.5 and naive.loc["k5s3", "unevenness"] > 0.5
    assert (naive.loc[["k2s2", "k4s2", "k3s1"], "unevenness"] == 0).all()
    assert truthy(frame.loc[frame["status"] == "ok", "passed"]).all()


def test_main_quick_then_rebuild_and_compare(tmp_path):
    first = main_job.main(["--quick", "--no-progress", "--backends", FAST, "--out", str(tmp_path / "a")])
    check_run(first / "correctness", "correctness")
    check_run(first / "speed", "speed")
    summary = (first / "report.md").read_text()
    assert "## Correctness against the naive oracle" in summary and "## Speed" in summary
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", summary):
        check_png(first / name)

    # rebuild from the saved files only: remove the report and figures, then bring them back
    for path in list(first.rglob("*.png")) + list(first.rglob("report.md")):
        path.unlink()
    report.main([str(first)])
    assert (first / "report.md").read_text() == summary
    check_png(first / "speed" / "roofline.png")

    second = speed.main(["--quick", "--no-progress", "--backends", "naive,kron", "--out", str(tmp_path / "b")])
    out = report.main([str(first / "speed"), str(second)])
    text = Path(out).read_text()
    assert "ratio B / A" in text and "A and B" in text and "A only" in text
    with pytest.raises(SystemExit, match="cannot compare"):
        report.main([str(first / "correctness"), str(second)])


def test_main_times_two_unet_cases_once_by_default_and_every_suite_with_full(tmp_path, monkeypatch):
    """make run's default fits in two minutes on 2 cores (two U-Net cases, one fresh worker per cell); --full is
    experiments.speed's own default: every case of every suite, DEFAULT_ROUNDS rounds."""
    from experiments.common import DEFAULT_ROUNDS, rounds_of

    parts = []
    monkeypatch.setattr(correctness, "main", lambda argv, out: parts.append(("correctness", argv)))
    monkeypatch.setattr(speed, "main", lambda argv, out: parts.append(("speed", speed.build_parser().parse_args(argv))))
    for flags, suites, cases, rounds in (
        ([], ["unet"], {"unet1", "unet4"}, 1),
        (["--full"], ["unet", "decoder", "tiny"], None, DEFAULT_ROUNDS),
    ):
        parts.clear()
        main_job.main([*flags, "--no-progress", "--backends", FAST, "--out", str(tmp_path / "-".join(["run", *flags]))])
        assert [name for name, _ in parts] == ["correctness", "speed"]
        speed_args = parts[1][1]
        assert (speed_args.suite, speed_args.cases, rounds_of(speed_args)) == (suites, cases, rounds)
        assert not speed_args.quick and speed_args.backends == FAST.split(",")


def test_killed_run_keeps_rows_and_resume_completes_it(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "experiments.speed",
        "--quick",
        "--no-progress",
        "--backends",
        "naive,col2im",
        "--budget",
        "0.4",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = out / "rows.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if rows.exists() and len(rows.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed; raise --budget"
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = [json.loads(line)["cell_key"] for line in rows.read_text().splitlines() if line.endswith("}")]
    assert 2 <= len(kept) < 8

    # the report of the killed run comes from rows.jsonl: results.csv is rebuilt, derived speedups included
    report.main([str(out)])
    rebuilt = pd.read_csv(out / "results.csv")
    assert list(rebuilt["cell_key"]) == kept and "speedup" in rebuilt
    status = (out / "report.md").read_text().split("## Status per backend")[1]
    assert "_(no rows)_" not in status and "naive" in status

    run_dir = speed.main(
        ["--quick", "--no-progress", "--backends", "naive,col2im", "--budget", "0.4", "--out", str(out), "--resume"]
    )
    frame = pd.read_csv(run_dir / "results.csv")
    assert len(frame) == 8 and frame["cell_key"].is_unique  # 4 tiny cases × 2 backends
    assert set(kept) <= set(frame["cell_key"])
    assert "resumed" in json.loads((run_dir / "meta.json").read_text())


def test_compare_counts_the_cells_that_agree():
    import pandas as pd

    from experiments.compare import compare

    def frame(medians, speedups):
        return pd.DataFrame(
            {
                "suite": "s",
                "case": ["a", "b", "c"],
                "backend": "x",
                "dtype": "float32",
                "layout": "NCHW",
                "status": ["ok", "ok", "error"],
                "median_s": medians,
                "speedup": speedups,
            }
        )

    rows = compare(frame([1.0, 1.0, 1.0], [2.0, 2.0, 1.0]), frame([1.1, 0.8, 1.0], [1.5, 2.1, 1.0]), tolerance=0.15)
    assert list(rows["speedup_agrees"]) == [False, True]  # the ratios judged apart from the medians
    assert list(rows["case"]) == ["a", "b"]  # a cell not ok in either run is left out
    assert list(rows["agrees"]) == [True, False]  # 1.0 vs 0.8 is 25 % apart, measured both ways
    assert rows["ratio"].tolist() == pytest.approx([1 / 1.1, 1 / 0.8])
