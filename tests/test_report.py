import json
import re

import numpy as np
import pytest
import zarr
from PIL import Image

from pipeline.report import write as report
from pipeline.shards import build as shards
from pipeline.ssv2.records import read_shard
from pipeline.student import evaluate_run, train
from pipeline.teacher import run as teacher_run
from tests.helpers import TINY_TRAINING, make_config

SMALL = (*TINY_TRAINING, "train.num_workers=1")


@pytest.fixture(scope="module")
def full_run(synth_root, tmp_path_factory):
    cfg = make_config(synth_root, tmp_path_factory.mktemp("run"), *SMALL)
    shards.run(cfg)
    teacher_run.run(cfg)
    train.run(cfg)
    cfg.eval.checkpoint = "latest"  # the final weights: its single view is the trainer's last evaluation
    evaluate_run.run(cfg)
    return cfg, report.write_report(cfg).read_text()


def _number(text, pattern):
    match = re.search(pattern, text)
    assert match, pattern
    return float(match.group(1))


def test_every_plot_decodes_and_is_of_sane_size(full_run):
    cfg, text = full_run
    pngs = re.findall(r"\]\(([^)]+\.png)\)", text)
    assert len(pngs) == 7
    for name in pngs:
        with Image.open(cfg.paths.run_dir + "/report/" + name) as image:
            image.load()
            assert 400 <= image.width <= 4000 and 300 <= image.height <= 4000, (name, image.size)


def test_numbers_trace_back_to_the_run_files(full_run):
    cfg, text = full_run
    index = json.loads((cfg.paths.shards_dir / "validation.index.json").read_text())
    assert re.search(rf"\| validation \| {index['num_videos']} \|", text)
    records = [json.loads(x) for x in (cfg.paths.student_dir / "metrics.jsonl").read_text().splitlines()]
    best_val = max(r["top1"] for r in records if r["kind"] == "val")
    assert _number(text, r"validation top-1 ([0-9.]+)\.\n") == pytest.approx(best_val, abs=1e-4)
    frames = json.loads((cfg.paths.student_dir / "eval_frames.json").read_text())["results"]
    assert _number(text, r"\| 4 \(trained\) \| ([0-9.]+) \|") == pytest.approx(frames["4"]["top1"], abs=1e-4)
    # The teacher's zero-shot top-1, recomputed here from the shard records and the Zarr logits.
    g = zarr.open_group(cfg.paths.teacher_cache, mode="r")["validation"]
    logits = g["logits"][:]
    hits = [
        logits[r["row"]].argmax() == r["label"]
        for t in sorted(cfg.paths.shards_dir.glob("validation-*.tar"))
        for r, _ in read_shard(str(t))
    ]
    assert _number(text, r"validation \(\d+ videos\): top-1 ([0-9.]+)") == pytest.approx(np.mean(hits), abs=1e-4)
    # Student-teacher agreement, recomputed from the saved predictions.
    with np.load(cfg.paths.student_dir / "val_predictions.npz") as z:
        ids, student = z["ids"], z["logits"].astype(np.float32)
    rows = {r["id"]: r["row"] for t in cfg.paths.shards_dir.glob("validation-*.tar") for r, _ in read_shard(str(t))}
    teacher_top = np.array([logits[rows[i]].argmax() for i in ids])
    assert _number(text, r"top-1 agreement ([0-9.]+)") == pytest.approx((teacher_top == student.argmax(1)).mean(), abs=1e-4)
    assert "Most confused pairs" in text and "Missing" not in text
    # The lr the run trained with: train.lr per 64 clips, scaled to the run's batch of one rank.
    lr = cfg.train.lr * cfg.train.batch_size / cfg.train.lr_batch
    assert _number(text, r"effective lr ([0-9.e-]+) \(") == pytest.approx(lr, rel=1e-4)


def test_a_partial_run_says_what_is_missing(synth_root, tmp_path):
    cfg = make_config(synth_root, tmp_path, *SMALL, "data.splits=[validation]")
    shards.run(cfg)
    text = report.write_report(cfg).read_text()
    assert "| validation |" in text
    assert "Missing: no teacher cache yet (run `make teacher-cache`)" in text
    assert "Missing: no training metrics yet (run `make train-student`)" in text
    assert "Missing: no validation predictions yet" in text
    empty = make_config(synth_root, tmp_path / "nothing", *SMALL)
    assert "Missing: no complete shard index for train, validation" in report.write_report(empty).read_text()


def test_the_test_protocol_table_traces_back_to_its_scores(full_run):
    cfg, text = full_run
    facts = json.loads((cfg.paths.student_dir / "test" / "test.json").read_text())
    trained = json.loads((cfg.paths.student_dir / "eval_frames.json").read_text())["results"]
    for row in facts["rows"]:
        with np.load(cfg.paths.student_dir / "test" / f"scores-{row['frames']}f-{row['clips']}x{row['crops']}.npz") as z:
            top1 = float((z["scores"].astype(np.float32).argmax(1) == z["labels"]).mean())
        assert row["top1"] == pytest.approx(top1, abs=1e-6)
        if row["clips"] * row["crops"] == 1:  # the same clips and weights as the trainer's evaluation at that count
            assert row["top1"] == pytest.approx(trained[str(row["frames"])]["top1"], abs=1e-6)
    multi = next(r for r in facts["rows"] if r["clips"] == 2 and r["crops"] == 3)
    cell = re.search(rf"\| {multi['frames']}(?: \(trained\))? \| [0-9.]+ \| [0-9.]+ \| ([0-9.]+) \|", text)
    assert cell and float(cell.group(1)) == pytest.approx(100 * multi["top1"], abs=0.006)


@pytest.mark.unit
def test_make_runs_lists_every_student_with_its_recipe_verdict_and_provenance(tmp_path):
    import yaml

    from pipeline import config
    from pipeline.report.runs import runs_table
    from tests.helpers import PIPELINE_YAML

    for name, curve, mode in (("a", [0.1, 0.2, 0.3, 0.5, 0.6], "vanilla"), ("sweeps/b", [0.19, 0.2, 0.19, 0.2, 0.19], "distill")):
        folder = tmp_path / name / "student"
        folder.mkdir(parents=True)
        cfg = config.to_dict(config.load(PIPELINE_YAML, [f"loss.mode={mode}", "train.epochs=5"]))
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
        lines = [{"kind": "val", "step": i, "epoch": i, "top1": v, "time": 1.7e9 + i} for i, v in enumerate(curve)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        start = {"commit": "0123456789abcdef", "dirty": True, "device": "NVIDIA H100 80GB HBM3 x1"}
        (folder / "provenance.jsonl").write_text(json.dumps(start) + "\n")
    table = runs_table(tmp_path)
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert set(rows) == {"a/student", "sweeps/b/student"}
    assert "| 0.6000 | yes | 5/5 |" in rows["a/student"] and "vanilla; sgd" in rows["a/student"]
    assert "| 0.2000 | PLATEAU | 5/5 |" in rows["sweeps/b/student"] and "distill best: 0.5/1.0/1.0" in rows["sweeps/b/student"]
    assert "0123456789 (dirty) | NVIDIA H100 80GB HBM3 x1 |" in rows["a/student"]


def test_the_report_sets_a_distilled_run_against_a_vanilla_one_class_by_class(full_run, tmp_path):
    cfg, _ = full_run
    vanilla = make_config(synth_root_of(cfg), tmp_path / "vanilla", *SMALL, "loss.mode=vanilla")
    (tmp_path / "vanilla").mkdir()
    (tmp_path / "vanilla" / "shards").symlink_to(cfg.paths.shards_dir)
    train.run(vanilla)
    text = report.write_report(cfg, vanilla=vanilla.paths.student_dir).read_text()
    section = text.split("## Against labels alone", 1)[1]
    with np.load(cfg.paths.student_dir / "val_predictions.npz") as z:
        mine = float((z["logits"].astype(np.float32).argmax(1) == z["labels"]).mean())
    with np.load(vanilla.paths.student_dir / "val_predictions.npz") as z:
        theirs = float((z["logits"].astype(np.float32).argmax(1) == z["labels"]).mean())
    assert _number(section, r"this run ([0-9.]+),") == pytest.approx(mine, abs=1e-4)
    assert _number(section, r"vanilla ([0-9.]+) ") == pytest.approx(theirs, abs=1e-4)
    assert section.count("\n| ") >= 3  # the header and a row per class
    assert "Teacher head zero_shot: " in text  # what distillation from it is expected to do (here: no head record to say it)


def synth_root_of(cfg):
    """The data set a config points at."""
    from pathlib import Path

    return Path(cfg.paths.ssv2_root)
