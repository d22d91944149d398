"""Side by side, the runs that decode the most frames start first."""

from __future__ import annotations

import pytest

from experiments import runner
from experiments.frame_flexible import STUDY as FRAME_STUDY
from experiments.proxy_benchmark import STUDY as PROXY_STUDY

pytestmark = pytest.mark.unit


def _order(study, work, table: str, names: list[str]) -> list[str]:
    runs = [(table, name, 0) for name in names]
    return [name for _, name, _ in runner.longest_first(study, work, runs, epochs=None)]


def test_ffn_runs_start_before_plain_ones_and_fewer_frames_last(tmp_path):
    names = ["TSM-R50, plain 4", "TSM-R50, plain 16", "TSM-R50, FFN 4/8/16", "TSM-R50, plain 8"]
    assert _order(FRAME_STUDY, tmp_path, "gpu", names) == [
        "TSM-R50, FFN 4/8/16",
        "TSM-R50, plain 16",
        "TSM-R50, plain 8",
        "TSM-R50, plain 4",
    ]


def test_more_labels_and_more_unlabelled_clips_a_batch_cost_more(tmp_path):
    safety = _order(PROXY_STUDY, tmp_path, "safety", ["10 per class, vanilla", "160 per class, vanilla", "40 per class, vanilla"])
    assert safety[0] == "160 per class, vanilla"
    unlabelled = _order(
        PROXY_STUDY,
        tmp_path,
        "unlabelled",
        [
            "10 labelled, vanilla",
            "10 labelled + 30 unlabelled at 1 per labelled clip, default",
            "10 labelled + 30 unlabelled at 3 per labelled clip, default",
        ],
    )
    assert unlabelled == [
        "10 labelled + 30 unlabelled at 3 per labelled clip, default",
        "10 labelled + 30 unlabelled at 1 per labelled clip, default",
        "10 labelled, vanilla",
    ]
    # the default's auto ratio is 3 here (30 unlabelled per 10 labelled), and costs what 3 costs
    auto, three = ("10 labelled + 30 unlabelled, default", "10 labelled + 30 unlabelled at 3 per labelled clip, default")
    assert runner.run_cost(PROXY_STUDY, tmp_path, "unlabelled", auto, None) == runner.run_cost(
        PROXY_STUDY, tmp_path, "unlabelled", three, None
    )


def test_a_result_names_the_commit_its_process_started_on_not_a_later_one(tmp_path, monkeypatch):
    from experiments import runner

    runner.code_at_start.cache_clear()
    monkeypatch.setenv("PIPELINE_COMMIT", "aaaaaaa")
    assert runner.code_at_start()["commit"] == "aaaaaaa"
    monkeypatch.setenv("PIPELINE_COMMIT", "bbbbbbb")  # committed while the runs train
    assert runner.code_at_start()["commit"] == "aaaaaaa"
    runner.code_at_start.cache_clear()
