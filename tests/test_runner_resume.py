"""A run never overwrites or mixes results: a run into a directory that holds rows is refused and writes
nothing, and ``--resume`` refuses other arguments (naming each), another experiment's run, and completes a run
with the same arguments."""

import json

import pytest

from experiments import checkerboard, correctness, scaling, seed, speed
from experiments import main as main_job
from experiments.common import RunRefused
from run_helpers import SEED_RUN, lockable, one_line, seed_run, snapshot

EXPERIMENTS = (correctness, speed, scaling, seed, checkerboard, main_job)


@pytest.mark.parametrize("module", EXPERIMENTS, ids=lambda m: m.NAME)
def test_a_run_refused_because_out_holds_rows_writes_nothing(tmp_path, module):
    out = tmp_path / "run"
    out.mkdir()
    (out / "meta.json").write_text(json.dumps({"experiment": module.NAME, "seed": 0}))
    (out / "rows.jsonl").write_text(json.dumps({"cell_key": "earlier", "status": "ok"}) + "\n")
    before = snapshot(out)
    with pytest.raises(RunRefused, match=r"already holds a run \(meta\.json, 1 rows in rows\.jsonl\).*--resume"):
        module.main(["--quick", "--no-progress", "--out", str(out)])
    assert snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "rows.jsonl"]  # no lock file left either
    assert lockable(out)


def test_the_main_job_is_refused_when_only_a_part_holds_rows(tmp_path):
    part = tmp_path / "run" / "correctness"
    part.mkdir(parents=True)
    (part / "rows.jsonl").write_text(json.dumps({"cell_key": "earlier"}) + "\n")
    before = snapshot(tmp_path / "run")
    with pytest.raises(RunRefused, match=r"1 rows in correctness/rows\.jsonl"):
        main_job.main(["--quick", "--no-progress", "--out", str(tmp_path / "run")])
    assert snapshot(tmp_path / "run") == before


@pytest.mark.parametrize(
    "module, first, then, named",
    [
        (seed, ["--seed", "0"], ["--seed", "1"], "--seed: run 0, this command 1"),
        (seed, [], ["--dtypes", "float64"], "--dtypes: run float32, this command float64"),
        (seed, [], ["--backends", "naive,col2im"], "--backends: run naive, this command naive,col2im"),
        (
            correctness,
            ["--dtypes", "float64"],
            ["--dtypes", "float64", "--fill", "int"],
            "--fill: run normal, this command int",
        ),
        (speed, ["--budget", "0.01"], ["--budget", "0.02"], "--budget: run 0.01, this command 0.02"),
        (
            speed,
            ["--budget", "0.01"],
            ["--budget", "0.01", "--suite", "decoder"],
            "--suite: run default, this command decoder",
        ),
        (
            speed,
            ["--budget", "0.01"],
            ["--budget", "0.01", "--exclude", "none"],
            f"--exclude: run {speed.DEFAULT_EXCLUDE}, this command none",
        ),
        (checkerboard, ["--size", "4"], ["--size", "5"], "--size: run 4, this command 5"),
    ],
    ids=["seed", "dtypes", "backends", "fill", "budget", "suite", "exclude", "size"],
)
def test_resume_refuses_other_arguments_naming_them_and_writes_nothing(tmp_path, module, first, then, named):
    out = tmp_path / "run"
    module.main([*SEED_RUN, *first, "--out", str(out)])
    assert "arguments" in json.loads((out / "meta.json").read_text())
    before = snapshot(out)
    with pytest.raises(RunRefused, match="cannot resume") as info:
        module.main([*SEED_RUN, *then, "--out", str(out), "--resume"])
    assert named in one_line(info.value)
    assert snapshot(out) == before and lockable(out)


def test_resume_names_every_differing_argument_and_quick(tmp_path):
    out = seed_run(tmp_path / "run")
    with pytest.raises(RunRefused) as info:
        seed.main(["--no-progress", "--backends", "naive", "--seed", "7", "--out", str(out), "--resume"])
    message = one_line(info.value)
    assert "--quick: run on, this command off" in message and "--seed: run 0, this command 7" in message


def test_resume_with_the_same_arguments_completes_and_records_the_resume(tmp_path):
    out = seed_run(tmp_path / "run")
    rows = (out / "rows.jsonl").read_text()
    seed.main([*SEED_RUN, "--out", str(out), "--resume", "--seed", "0"])  # the default, spelled out
    assert (out / "rows.jsonl").read_text() == rows  # nothing left to compute
    assert len(json.loads((out / "meta.json").read_text())["resumed"]) == 1


def test_resume_compares_a_meta_json_from_before_arguments_were_recorded(tmp_path):
    out = seed_run(tmp_path / "run")
    meta = json.loads((out / "meta.json").read_text())
    del meta["arguments"]
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RunRefused, match="--seed: run 0, this command 3"):
        seed_run(out, "--seed", "3", "--resume")


def test_resume_refuses_a_run_of_another_experiment(tmp_path):
    out = seed_run(tmp_path / "run")
    before = snapshot(out)
    with pytest.raises(RunRefused, match="it is a 'seed' run, not 'checkerboard'"):
        checkerboard.main([*SEED_RUN, "--out", str(out), "--resume"])
    assert snapshot(out) == before
