"""CPU-sized variants of the accuracy experiments (the `slow` tier): each table's machinery through the
real stages on a few videos per class, one epoch; the numbers themselves are the GPU runs' (docs/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, TINY_PROXY


def _experiment(module: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, *args, *(f"--set={s}" for s in TINY_PROXY)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_frame_flexibility_table_trains_evaluates_every_count_and_its_results_move_between_machines(tmp_path):
    work = tmp_path / "work"
    common = ("--work", str(work), "--seeds", "0", "--epochs", "1")
    _experiment("experiments.frame_flexible", "cpu", *common, "--match", "plain 16", "FFN", "--export", str(tmp_path / "r.jsonl"))
    results = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert {r["name"] for r in results} == {"tsm_tiny, plain 16", "tsm_tiny, FFN 4/8/16"}
    for r in results:
        assert set(r["counts"]) == {"4", "8", "16"} and len(r["curve"]) == 1 and r["plateau"] is False
        assert r["provenance"]["versions"]["torch"]
    # restored into an empty work folder, the table is the same and nothing is trained again
    again = _experiment("experiments.frame_flexible", "cpu", *common, "--work", str(tmp_path / "other"), "--tabulate",
                        "--restore", str(tmp_path / "r.jsonl"))  # fmt: skip
    first = _experiment("experiments.frame_flexible", "cpu", *common, "--tabulate")
    table = lambda out: out.stdout.split("cpu\n", 1)[1]  # noqa: E731
    assert table(again) == table(first) and "| tsm_tiny, FFN 4/8/16 |" in table(first)


@pytest.mark.slow
def test_unlabelled_table_distils_from_unlabelled_videos_through_the_real_stages(tmp_path):
    """10 labelled (here 2) and 30 unlabelled (here 1) per class: the proxy's test split cached and trained on."""
    work = tmp_path / "work"
    args = ("unlabelled", "--work", str(work), "--seeds", "0", "--epochs", "1", "--only", "10 labelled + 30 unlabelled, default")
    _experiment("experiments.proxy_benchmark", *args, "--set=synthetic.unlabelled_per_class=1")
    (result,) = [json.loads(p.read_text()) for p in (work / "results").glob("*.json")]
    assert result["name"] == "10 labelled + 30 unlabelled, default"
    (run,) = (work / "runs").iterdir()
    log = [json.loads(line) for line in (run / "student" / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "train" for r in log)
    cfg = (run / "student" / "config.yaml").read_text()
    assert "unlabelled_splits:\n  - test" in cfg
    # the head probes read the same base: the unlabelled clips' classes from their ids
    (base,) = work.glob("base-l10-u30-*")
    probe = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "experiments.head_probes", *a, "--base", str(base)], cwd=REPO, capture_output=True, text=True
    )
    out = probe("self-training", "--rounds", "1", "--keep", "1")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split(" | ") for line in out.stdout.splitlines() if line.startswith(("| labelled", "| round"))]
    assert [r[0] for r in rows] == ["| labelled clips alone (56)", "| round 1, keep 1"]
    assert rows[1][1] == "28" and all(0.0 <= float(v.strip(" |")) <= 1.0 for r in rows for v in r[3:])
    out = probe("width", "--widths", "64")
    assert out.returncode == 0, out.stderr[-3000:]
    assert [line.split(" | ")[0] for line in out.stdout.splitlines()[2:]] == ["| 64"]


@pytest.mark.slow
@pytest.mark.parametrize("student", [("--arch", "tsm_tiny"), ("--arch", "mobilevit_xxs", "--temporal", "attention_pos")])
def test_memorise_takes_a_student_to_its_noise_clips(student):
    """The gradient-path check behind docs/frame_flexible.md's MobileViT probe: 8 noise clips learned in 25 steps."""
    cmd = [sys.executable, "-m", "experiments.memorise", *student, "--clips", "8", "--steps", "25"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    summary = out.stderr.strip().splitlines()[-1]
    assert "memorised 100% of 8 noise clips" in summary, summary
