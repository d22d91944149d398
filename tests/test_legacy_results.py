"""Results recorded before a setting existed are reused only where they are provably the same run."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import subprocess

import pytest

from experiments import legacy, runner
from experiments.frame_flexible import STUDY as FRAME_STUDY
from experiments.proxy_benchmark import STUDY as PROXY_STUDY

pytestmark = pytest.mark.unit


def _older(settings: dict, *, unlabelled_weight: str) -> dict:
    """`settings` as the code before `loss.fade` (and every setting added after it) wrote them."""
    older = copy.deepcopy(settings)
    del older["loss"]["fade"], older["loss"]["fade_margin"], older["loss"]["gamma_with_unlabelled"], older["loss"]["fade_window"]
    del older["train"]["unlabelled_norm"]
    older["loss"]["unlabelled_weight"] = unlabelled_weight
    return older


def _shared(settings: dict) -> dict:
    """`settings` with the BatchNorm statistics shared: the only run a result from before that setting can be."""
    settings["train"]["unlabelled_norm"] = "shared"
    return settings


def _record(study, work, table: str, name: str, settings_for_key: dict, base: dict) -> dict:
    key = legacy.settings_key(base, settings_for_key, str(work))
    return {"key": key, "table": table, "name": name, "seed": 0, "epochs": settings_for_key["train"]["epochs"], "counts": {}}


def _restore(study, work, records: list[dict]) -> set[str]:
    path = work / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    runner.restore_results(study, work, path)
    return {p.stem for p in (work / "results").glob("*.json")}


def test_a_vanilla_result_from_before_the_fade_is_filed_under_todays_key(tmp_path):
    table, name = "gpu", "TSM-R50, plain 16"
    base, settings = runner.run_settings(FRAME_STUDY, tmp_path, table, name, 0, None)
    record = _record(FRAME_STUDY, tmp_path, table, name, _older(settings, unlabelled_weight="confidence"), base)
    today = runner.run_key(FRAME_STUDY, tmp_path, table, name, 0, None)
    assert record["key"] != today
    assert _restore(FRAME_STUDY, tmp_path, [record]) == {today}
    assert runner.result(FRAME_STUDY, tmp_path, table, name, 0, None)["recorded_key"] == record["key"]


def test_a_result_whose_other_settings_differ_keeps_its_own_key(tmp_path):
    table, name = "gpu", "TSM-R50, plain 16"
    base, settings = runner.run_settings(FRAME_STUDY, tmp_path, table, name, 0, None)
    older = _older(settings, unlabelled_weight="confidence")
    older["train"]["lr"] *= 2  # a setting the run reads
    record = _record(FRAME_STUDY, tmp_path, table, name, older, base)
    assert _restore(FRAME_STUDY, tmp_path, [record]) == {record["key"]}
    assert runner.result(FRAME_STUDY, tmp_path, table, name, 0, None) is None


def test_a_distilled_result_from_before_the_fade_counts_only_for_runs_without_it(tmp_path):
    """Before the fade every distilled run trained as `fade: none`: such a result is the seeds' recipe's
    run today, never the default's (which fades)."""
    seeds, default = "40, seeds' recipe", "40, default (seeds' weights, crossover fade)"
    base, settings = runner.run_settings(PROXY_STUDY, tmp_path, "screen", seeds, 0, None)
    assert settings["loss"]["fade"] == "none"
    record = _record(PROXY_STUDY, tmp_path, "screen", seeds, _older(settings, unlabelled_weight="uniform"), base)
    assert _restore(PROXY_STUDY, tmp_path, [record]) == {runner.run_key(PROXY_STUDY, tmp_path, "screen", seeds, 0, None)}

    _, with_fade = runner.run_settings(PROXY_STUDY, tmp_path, "screen", default, 0, None)
    assert with_fade["loss"]["fade"] == "crossover"
    assert all(older["loss"]["fade"] == "crossover" for older in legacy.earlier_layouts(with_fade))  # none predates it


def test_an_unlabelled_run_needs_the_unlabelled_weight_it_was_recorded_with(tmp_path):
    name = "10 + 30 unlabelled, seeds' recipe"
    base, settings = runner.run_settings(PROXY_STUDY, tmp_path, "screen", name, 0, None)
    settings = _shared(settings)
    assert settings["train"]["unlabelled_splits"] and settings["loss"]["unlabelled_weight"] == "uniform"
    other = _record(PROXY_STUDY, tmp_path, "screen", name, _older(settings, unlabelled_weight="confidence"), base)
    same = _record(PROXY_STUDY, tmp_path, "screen", name, _older(settings, unlabelled_weight="uniform"), base)
    assert not legacy.recorded_key_matches(base, settings, str(tmp_path), other["key"])
    assert legacy.recorded_key_matches(base, settings, str(tmp_path), same["key"])


def test_a_result_with_the_frame_term_from_before_its_targets_changed_keeps_its_own_key(tmp_path):
    """The per-frame term's targets moved from index to position (1701761) with no setting to show it."""
    name = "40, gated + frames"
    base, settings = runner.run_settings(PROXY_STUDY, tmp_path, "screen", name, 0, None)
    assert settings["loss"]["frame_alpha"] > 0 and settings["loss"]["fade"] == "none"
    record = _record(PROXY_STUDY, tmp_path, "screen", name, _older(settings, unlabelled_weight="confidence"), base)
    assert _restore(PROXY_STUDY, tmp_path, [record]) == {record["key"]}


def test_an_older_result_never_replaces_one_recorded_under_todays_key(tmp_path):
    table, name = "gpu", "TSM-R50, plain 16"
    base, settings = runner.run_settings(FRAME_STUDY, tmp_path, table, name, 0, None)
    today = runner.run_key(FRAME_STUDY, tmp_path, table, name, 0, None)
    newer = {"key": today, "table": table, "name": name, "seed": 0, "epochs": 30, "counts": {"16": 0.9}}
    older = {**_record(FRAME_STUDY, tmp_path, table, name, _older(settings, unlabelled_weight="confidence"), base)}
    older["counts"] = {"16": 0.5}
    _restore(FRAME_STUDY, tmp_path, [newer, older])
    assert runner.result(FRAME_STUDY, tmp_path, table, name, 0, None)["counts"] == {"16": 0.9}


def test_a_record_without_its_seed_or_epochs_is_kept_under_its_own_key(tmp_path):
    record = {"key": "0123456789abcdef", "table": "gpu", "name": "TSM-R50, plain 16", "counts": {}}
    assert _restore(FRAME_STUDY, tmp_path, [record]) == {"0123456789abcdef"}


def _before_gamma_with_unlabelled(settings: dict, *, gamma: float) -> dict:
    """`settings` as the code before `loss.gamma_with_unlabelled` wrote them, with the task weight `gamma`."""
    older = copy.deepcopy(settings)
    del older["loss"]["gamma_with_unlabelled"], older["train"]["unlabelled_norm"], older["loss"]["fade_window"]
    older["loss"]["gamma"] = gamma
    return older


def test_a_labelled_run_at_full_task_weight_from_before_the_new_default_is_todays_default(tmp_path):
    """The label-first candidate (gamma 1.0, measured before gamma_with_unlabelled existed) is the default's run today;
    the earlier default (gamma 0.1) is not."""
    name = "40 per class, linear head, default"
    base, settings = runner.run_settings(PROXY_STUDY, tmp_path, "safety", name, 0, None)
    assert settings["loss"]["gamma"] == 1.0 and not settings["train"]["unlabelled_splits"]
    for gamma, counts in ((1.0, True), (0.1, False)):
        record = _record(PROXY_STUDY, tmp_path, "safety", name, _before_gamma_with_unlabelled(settings, gamma=gamma), base)
        assert legacy.recorded_key_matches(base, settings, str(tmp_path), record["key"]) is counts


def test_an_unlabelled_run_counts_for_the_task_weight_it_trained_with(tmp_path):
    """With unlabelled splits the task weight is gamma_with_unlabelled: a result recorded with gamma 0.1 is today's
    default (gamma_with_unlabelled 0.1), one recorded with gamma 1.0 the row that sets gamma_with_unlabelled=1.0."""
    default, full = "10 labelled + 30 unlabelled, default", "10 labelled + 30 unlabelled, the task at full weight"
    base, settings = runner.run_settings(PROXY_STUDY, tmp_path, "unlabelled", default, 0, None)
    _, full_settings = runner.run_settings(PROXY_STUDY, tmp_path, "unlabelled", full, 0, None)
    settings, full_settings = _shared(settings), _shared(full_settings)
    light = _record(PROXY_STUDY, tmp_path, "unlabelled", default, _before_gamma_with_unlabelled(settings, gamma=0.1), base)
    heavy = _record(PROXY_STUDY, tmp_path, "unlabelled", full, _before_gamma_with_unlabelled(settings, gamma=1.0), base)
    assert legacy.recorded_key_matches(base, settings, str(tmp_path), light["key"])
    assert not legacy.recorded_key_matches(base, settings, str(tmp_path), heavy["key"])
    assert legacy.recorded_key_matches(base, full_settings, str(tmp_path), heavy["key"])
    assert not legacy.recorded_key_matches(base, full_settings, str(tmp_path), light["key"])


def test_a_result_of_a_renamed_condition_follows_its_run(tmp_path):
    """The label-first candidate's rows became the default's: the key, not the name, says which run a result is."""
    name = "40 per class, linear head, default"
    base, settings = runner.run_settings(PROXY_STUDY, tmp_path, "safety", name, 0, None)
    record = _record(PROXY_STUDY, tmp_path, "safety", name, _before_gamma_with_unlabelled(settings, gamma=1.0), base)
    record["name"] = "40 per class, linear head, label-first candidate"  # its name when it ran
    _restore(PROXY_STUDY, tmp_path, [record])
    moved = runner.result(PROXY_STUDY, tmp_path, "safety", name, 0, None)
    assert moved["recorded_name"] == "40 per class, linear head, label-first candidate" and moved["name"] == name
    assert moved["recorded_key"] == record["key"]


def _known(commit: str) -> bool:
    return subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=legacy.REPO, capture_output=True).returncode == 0


@pytest.mark.skipif(not (_known("61f76a8") and _known("e80abae")), reason="needs the repository's history (a full clone)")
def test_a_per_frame_result_counts_through_an_older_layout_only_if_recorded_after_its_targets_changed(tmp_path):
    name = "40 per class, previous default (task 0.1) + per-frame term 0.5"
    base, settings = runner.run_settings(PROXY_STUDY, tmp_path, "frames", name, 0, None)
    assert settings["loss"]["frame_alpha"] > 0
    record = _record(PROXY_STUDY, tmp_path, "frames", name, _before_gamma_with_unlabelled(settings, gamma=0.1), base)
    after = {**record, "provenance": {"commit": "61f76a8"}}  # the frames table's runs, after 1701761
    before = {**record, "provenance": {"commit": "e80abae"}}  # the screen's, before it
    assert legacy.frame_targets_current(after) and not legacy.frame_targets_current(before)
    assert not legacy.frame_targets_current({**record, "provenance": {}})
    today = runner.run_key(PROXY_STUDY, tmp_path, "frames", name, 0, None)
    assert _restore(PROXY_STUDY, tmp_path, [before]) == {record["key"]}  # kept under its own key: no run today
    shutil.rmtree(tmp_path / "results")
    assert _restore(PROXY_STUDY, tmp_path, [after]) == {today}


def test_a_vanilla_result_from_the_narrow_head_world_is_todays_and_a_distilled_one_is_not(tmp_path):
    """The proxy world fitted a narrower head (width 128, 300 steps) before pipeline.yaml's: a vanilla
    run never reads the head, a distilled one learns from it."""
    for table, name, restored in (
        ("gpu", "TSM-R50, plain 16", True),
        ("safety", "40 per class, temporal head, default", False),
    ):
        study = FRAME_STUDY if table == "gpu" else PROXY_STUDY
        work = tmp_path / table
        work.mkdir()
        base, settings = runner.run_settings(study, work, table, name, 0, None)
        assert (settings["teacher_head"]["temporal_width"], settings["teacher_head"]["min_steps"]) == (256, 500)
        narrow = copy.deepcopy(settings)
        narrow["teacher_head"] |= {"temporal_width": 128, "min_steps": 300}
        record = _record(study, work, table, name, narrow, base)
        today = runner.run_key(study, work, table, name, 0, None)
        assert _restore(study, work, [record]) == ({today} if restored else {record["key"]})


def test_a_result_at_the_old_ratio_counts_for_the_one_per_labelled_clip_row_and_not_todays_default(tmp_path):
    """`train.unlabelled_ratio` went from 1 to auto (3 in the proxy's 10 + 30): a run recorded at 1 is the
    row that sets 1, not today's default; a run without unlabelled clips never read the ratio."""
    default, one = "10 labelled + 30 unlabelled, default", "10 labelled + 30 unlabelled at 1 per labelled clip, default"
    base, settings = runner.run_settings(PROXY_STUDY, tmp_path, "unlabelled", default, 0, None)
    _, one_settings = runner.run_settings(PROXY_STUDY, tmp_path, "unlabelled", one, 0, None)
    assert settings["train"]["unlabelled_ratio"] == "auto" and one_settings["train"]["unlabelled_ratio"] == 1.0
    old_default = copy.deepcopy(settings)
    old_default["train"]["unlabelled_ratio"] = 1.0  # what the code before auto wrote for the default row
    key = legacy.settings_key(base, old_default, str(tmp_path))
    assert key == legacy.settings_key(base, one_settings, str(tmp_path))
    assert not legacy.recorded_key_matches(base, settings, str(tmp_path), key)

    labelled = "40 per class, temporal head, default"
    base, settings = runner.run_settings(PROXY_STUDY, tmp_path, "safety", labelled, 0, None)
    older = copy.deepcopy(settings)
    older["train"]["unlabelled_ratio"] = 1.0
    assert legacy.recorded_key_matches(base, settings, str(tmp_path), legacy.settings_key(base, older, str(tmp_path)))


def test_an_unlabelled_result_from_before_the_norm_setting_counts_for_shared_statistics_only(tmp_path):
    """Before `train.unlabelled_norm` every batch shared its BatchNorm statistics: such a result is the
    `shared` run, never today's default (`separate`); a labelled-only run never reads the setting, so
    its results count whether they were recorded before the setting or under the old default."""
    name = "10 labelled + 30 unlabelled, default"
    base, settings = runner.run_settings(PROXY_STUDY, tmp_path, "unlabelled", name, 0, None)
    assert settings["train"]["unlabelled_norm"] == "separate"
    older = copy.deepcopy(settings)
    del older["train"]["unlabelled_norm"], older["loss"]["fade_window"]
    key = legacy.settings_key(base, older, str(tmp_path))
    assert not legacy.recorded_key_matches(base, settings, str(tmp_path), key)
    shared = copy.deepcopy(settings)
    shared["train"]["unlabelled_norm"] = "shared"
    assert legacy.recorded_key_matches(base, shared, str(tmp_path), key)
    under_old_default = legacy.settings_key(base, shared, str(tmp_path))
    assert not legacy.recorded_key_matches(base, settings, str(tmp_path), under_old_default)
    base, vanilla = runner.run_settings(PROXY_STUDY, tmp_path, "unlabelled", "10 labelled, vanilla", 0, None)
    older = copy.deepcopy(vanilla)
    del older["train"]["unlabelled_norm"], older["loss"]["fade_window"]
    assert legacy.recorded_key_matches(base, vanilla, str(tmp_path), legacy.settings_key(base, older, str(tmp_path)))
    older["train"]["unlabelled_norm"] = "shared"
    assert legacy.recorded_key_matches(base, vanilla, str(tmp_path), legacy.settings_key(base, older, str(tmp_path)))


@pytest.mark.skipif(not (_known("6402f28") and _known("15413cc")), reason="needs the repository's history (a full clone)")
def test_a_separate_statistics_result_from_before_their_running_statistics_changed_is_not_todays(tmp_path):
    """6402f28 updated the running statistics from both groups under `separate`; from 15413cc on, the
    labelled clips' alone: the same key, another run."""
    name = "10 labelled + 30 unlabelled, random-weight teacher, default"
    study = dataclasses.replace(PROXY_STUDY, extra=["train.unlabelled_norm=separate"])
    today = runner.run_key(study, tmp_path, "unlabelled", name, 0, None)
    epochs = runner.run_epochs(study, "unlabelled", name, None)
    record = {"key": today, "table": "unlabelled", "name": name, "seed": 0, "epochs": epochs, "counts": {}}
    first_form = {**record, "provenance": {"commit": "6402f28"}}
    assert _restore(study, tmp_path, [first_form]) == {f"{today}-superseded"}  # filed apart: no run today is it
    assert runner.result(study, tmp_path, "unlabelled", name, 0, None) is None
    shutil.rmtree(tmp_path / "results")
    assert _restore(study, tmp_path, [{**record, "provenance": {"commit": "15413cc"}}]) == {today}


def test_a_result_from_before_the_fade_window_counts_for_the_default_and_not_the_candidate(tmp_path):
    """Before `loss.fade_window` the fade read the best single validation (window 1): such a result is
    the default's run today, never the smoothed-fade candidate's."""
    base, settings = runner.run_settings(PROXY_STUDY, tmp_path, "unlabelled", "10 labelled + 30 unlabelled, default", 0, None)
    older = copy.deepcopy(settings)
    del older["loss"]["fade_window"]
    key = legacy.settings_key(base, older, str(tmp_path))
    assert settings["loss"]["fade_window"] == 1 and legacy.recorded_key_matches(base, settings, str(tmp_path), key)
    name = "10 labelled + 30 unlabelled, default, fade over 5 validations"
    base, candidate = runner.run_settings(PROXY_STUDY, tmp_path, "unlabelled", name, 0, None)
    assert candidate["loss"]["fade_window"] == 5 and not legacy.recorded_key_matches(base, candidate, str(tmp_path), key)
