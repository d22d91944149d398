"""The plateau check that training summaries, reports, `make compare`, `make runs` and experiment tables apply."""

import pytest

from pipeline.student.health import plateau


@pytest.mark.unit
def test_a_curve_that_never_leaves_its_first_epochs_level_is_a_plateau():
    # docs/proxy_benchmark.md: 16-frame tsm_tiny at AdamW 1e-3 without warm-up, 15 epochs
    stuck = [0.17, 0.19, 0.18, 0.19, 0.2, 0.19, 0.18, 0.19, 0.2, 0.19, 0.19, 0.18, 0.19, 0.19, 0.187]
    verdict = plateau(stuck)
    assert verdict.flagged and verdict.early_epochs == 3 and verdict.sentence().startswith("PLATEAU")
    # a run that learns late but clearly (the GPU TSM-R50 curves: chance for 4 epochs, then up)
    late = [0.036, 0.036, 0.057, 0.045, 0.255, 0.274, 0.5, 0.7, 0.8, 0.85]
    assert not plateau(late).flagged
    assert not plateau([0.1, 0.2, 0.3, 0.5, 0.52]).flagged


@pytest.mark.unit
def test_a_flat_curve_over_memorised_training_clips_is_overfitting_not_a_failed_optimisation():
    # the safety table's 10-per-class vanilla runs: 280 training clips, 60 epochs
    flat = [0.04, 0.07, 0.1, 0.08, 0.07, 0.08, 0.07, 0.08, 0.07, 0.07]
    assert plateau(flat, 0.882).overfit  # under 0.9, but 0.78 above the best validation top-1
    assert plateau(flat, 0.95).overfit
    assert not plateau(flat, 0.3).overfit  # training top-1 near validation's: the optimiser failed
    assert "a lower lr will not" in plateau(flat, 0.882).sentence()
    assert not plateau(flat).overfit  # training top-1 unknown: no claim


@pytest.mark.unit
def test_short_or_already_solved_curves_are_not_judged_a_plateau():
    assert plateau([0.2, 0.2, 0.2]) is None  # too few epochs to judge
    assert not plateau([1.0, 1.0, 1.0, 1.0, 1.0]).flagged  # the toy set, solved in the first epoch
    assert plateau([0.5, 0.51, 0.52, 0.53, 0.54]).flagged  # rose 0.04 after its first epoch: under the 0.05 a learner gains


@pytest.mark.unit
def test_a_resume_drops_the_records_past_its_checkpoint_and_the_validations_it_redoes(tmp_path):
    import json

    from pipeline.student.metrics import truncate_after

    # epoch 0 ends at step 4 with a checkpoint saved at step 4 before its validation (checkpoint_every_steps 4),
    # then the run logs step 5 and dies: the resumed run redoes epoch 0's validation at step 4, then step 5
    records = [{"kind": "train", "step": s, "epoch": 0} for s in (1, 2, 3, 4)]
    records += [{"kind": "val", "step": 4, "epoch": 0}, {"kind": "train", "step": 5, "epoch": 1}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"kind": "tra')  # a line torn by the kill
    assert truncate_after(path, 4, validations=0) == 3
    assert [(r["kind"], r["step"]) for r in map(json.loads, path.read_text().splitlines())] == [
        ("train", s) for s in (1, 2, 3, 4)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert truncate_after(path, 4, validations=1) == 1  # a checkpoint after the validation keeps it
