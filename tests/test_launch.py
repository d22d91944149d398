"""The launcher with submitit's local executor (no cluster needed)."""

import json

import pytest

from pipeline.shards import build as shards
from slurm import launch
from tests.helpers import make_config

LOCAL = [
    "slurm.executor=local",
    "slurm.teacher_cache.gpus_per_node=0",
    "slurm.teacher_cache.array_tasks=2",
    "slurm.train_student.gpus_per_node=0",
    "slurm.train_student.tasks_per_node=1",
]


def test_a_failed_array_task_is_named_with_its_log_and_shards(synth_root, tmp_path, caplog):
    overrides = [
        f"paths.ssv2_root={synth_root}",
        f"paths.run_dir={tmp_path}",
        "shards.videos_per_shard=8",
        "teacher.model=clip-tiny",
        "teacher.pretrained=/nonexistent/teacher.pt",
        *LOCAL,
    ]
    cfg = make_config(synth_root, tmp_path, *overrides[2:])
    shards.run(cfg)
    assert launch.main(["teacher-cache", *overrides]) == 1
    failures = [r.getMessage() for r in caplog.records if "FAILED" in r.getMessage()]
    assert len(failures) == 2
    for message in failures:
        assert (
            "_log.err" in message
            and "owned shards [" in message
            and "TeacherWeightsError" in message
            and "no such checkpoint file" in message
        )
    (submission,) = (tmp_path / "slurm" / "teacher_cache").glob("*/submission.json")
    owned = sorted(p for t in json.loads(submission.read_text())["tasks"] for p in t["args"][0])
    assert owned == list(range(6))


@pytest.mark.unit
def test_groups_deal_shards_round_robin_and_cap_the_task_count():
    assert launch.groups(list(range(7)), 3) == [[0, 3, 6], [1, 4], [2, 5]]
    assert launch.groups([5, 9], 64) == [[5], [9]]
