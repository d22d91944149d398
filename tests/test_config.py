import pytest

from pipeline import config
from tests.helpers import REPO, SMOKE_YAML

pytestmark = pytest.mark.unit  # every test here reads configs only


def test_pipeline_yaml_loads_and_matches_defaults():
    cfg = config.load(REPO / "pipeline.yaml")
    assert cfg.shards.videos_per_shard == config.ShardsConfig().videos_per_shard
    assert cfg.data.splits == ["train", "validation"]


def test_overrides_are_typed_and_take_precedence():
    cfg = config.load(REPO / "pipeline.yaml", ["shards.videos_per_shard=16", "shards.decode_timeout_s=5", "data.splits=[train]"])
    assert cfg.shards.videos_per_shard == 16
    assert cfg.shards.decode_timeout_s == 5.0 and isinstance(cfg.shards.decode_timeout_s, float)
    assert cfg.data.splits == ["train"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("shards.bogus=1", "unknown config key shards.bogus"),
        ("nosuch.key=1", "unknown config key nosuch"),
        ("shards.videos_per_shard=many", "config key shards.videos_per_shard: expected int"),
        ("shards.videos_per_shard=true", "config key shards.videos_per_shard: expected int"),
        ("data.splits=train", "config key data.splits: expected a list"),
        ("shards=3", "config key shards: expected a section"),
        ("shards.videos_per_shard", "not of the form"),
        ("teacher.precision=fp8", "config key teacher.precision: expected one of bf16, fp16, fp32, got .fp8."),
        ("loss.mode=distil", "config key loss.mode: expected one of distill, vanilla"),
    ],
)
def test_bad_keys_and_types_name_the_key(override, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(REPO / "pipeline.yaml", [override])


def test_unknown_key_in_file_is_rejected(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("shards:\n  videos_per_shrad: 3\n")
    with pytest.raises(config.ConfigError, match="shards.videos_per_shrad"):
        config.load(path)


def test_dump_round_trips(tmp_path):
    cfg = config.load(REPO / "pipeline.yaml", ["shards.short_side=128"])
    path = tmp_path / "resolved.yaml"
    path.write_text(config.dump(cfg))
    assert config.load(path) == cfg


def test_automatic_loader_workers_follow_the_ranks_cpus(monkeypatch):
    from pipeline.runtime import cpus

    monkeypatch.setattr(cpus.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda _: set(range(16)))  # SLURM bound this task to 16
    assert cpus.loader_workers(-1, cpus.TRAIN_RESERVE, ranks_here=4) == 10
    assert cpus.loader_workers(3, cpus.TRAIN_RESERVE) == 3  # a set number is kept
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda _: set(range(64)))  # torchrun: every rank sees all
    assert cpus.loader_workers(-1, cpus.TRAIN_RESERVE, ranks_here=4) == 10
    assert cpus.loader_workers(-1, cpus.TEACHER_RESERVE) == 62
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda _: {0, 1})
    assert cpus.loader_workers(-1, cpus.TRAIN_RESERVE) == 1  # never none


def test_later_config_files_override_earlier_ones_section_by_section():
    cfg = config.load([REPO / "pipeline.yaml", SMOKE_YAML], ["train.epochs=3"])
    assert cfg.teacher.model == "clip-tiny" and cfg.student.arch == "tsm_tiny"  # from the smoke file
    assert cfg.teacher.prompts == config.load(REPO / "pipeline.yaml").teacher.prompts  # untouched keys survive
    assert cfg.train.epochs == 3  # overrides come last
