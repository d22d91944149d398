import io
import json
import os
import tarfile

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from pipeline.shards import build as shards
from pipeline.shards.plan import index_path, manifest_path, plan_all
from pipeline.ssv2.records import read_shard, select_frames
from pipeline.ssv2.synthetic import encode_vp9
from tests.helpers import make_config, read_annotations


@pytest.fixture(scope="module")
def built(synth_root, tmp_path_factory):
    """The synthetic set sharded once with the default settings."""
    cfg = make_config(synth_root, tmp_path_factory.mktemp("run"))
    summary = shards.run(cfg)
    return cfg, summary


def _all_samples(cfg, split):
    out = {}
    for tar in sorted(cfg.paths.shards_dir.glob(f"{split}-*.tar")):
        for record, blob in read_shard(str(tar)):
            out[record["id"]] = (record, blob)
    return out


def test_counts_labels_and_frames_match_annotations(built, synth_root):
    cfg, summary = built
    labels = json.loads((synth_root / "labels" / "labels.json").read_text())
    assert summary.rejected == {}
    for split in ("train", "validation"):
        annotations = {a["id"]: a for a in read_annotations(synth_root, split)}
        samples = _all_samples(cfg, split)
        assert set(samples) == set(annotations)
        index = json.loads(index_path(cfg.paths.shards_dir, split).read_text())
        assert index["num_videos"] == len(annotations)
        assert index["num_frames"] == sum(r["num_frames"] for r, _ in samples.values())
        for vid, (record, blob) in samples.items():
            template = annotations[vid]["template"].replace("[", "").replace("]", "")
            assert record["template"] == template
            assert record["label"] == int(labels[template])
            assert record["label_text"] == annotations[vid]["label"]
            assert record["num_frames"] == len(record["frame_bytes"]) >= cfg.shards.min_frames
            assert sum(record["frame_bytes"]) == len(blob)
    assert not list(cfg.paths.shards_dir.glob("test-*")), "test split is not configured"


def test_webdataset_and_tarfile_read_the_same_samples(built):
    cfg, _ = built
    tars = sorted(str(p) for p in cfg.paths.shards_dir.glob("train-*.tar"))
    via_wds = {s["__key__"]: (json.loads(s["json"]), s["jpgs"]) for s in wds.WebDataset(tars, shardshuffle=False)}
    via_tar = {r["id"]: (r, b) for t in tars for r, b in read_shard(t)}
    assert via_wds.keys() == via_tar.keys() and len(via_wds) > 0
    for key in via_wds:
        assert via_wds[key][0] == via_tar[key][0]
        assert via_wds[key][1] == via_tar[key][1]


def test_sampled_frames_decode_to_the_recorded_size(built):
    cfg, _ = built
    for record, blob in list(_all_samples(cfg, "validation").values())[:4]:
        picks = [0, record["num_frames"] // 2, record["num_frames"] - 1]
        for jpeg in select_frames(record, blob, picks):
            image = Image.open(io.BytesIO(jpeg))
            assert image.size == (record["width"], record["height"])
            assert min(image.size) <= cfg.shards.short_side


def test_rows_are_unique_and_match_the_plan(built):
    cfg, _ = built
    for spec in plan_all(cfg):
        manifest = json.loads(manifest_path(cfg.paths.shards_dir, spec.name).read_text())
        assert [v["row"] for v in manifest["videos"]] == list(range(spec.first_row, spec.first_row + len(spec.videos)))
    records = _all_samples(cfg, "train")
    for record, _ in records.values():
        assert record["row"] // cfg.shards.videos_per_shard < len([s for s in plan_all(cfg) if s.split == "train"])


def test_short_side_scaling_never_upscales(synth_root, tmp_path):
    cfg = make_config(synth_root, tmp_path, "shards.short_side=120", "data.splits=[validation]")
    shards.run(cfg)
    for record, blob in _all_samples(cfg, "validation").values():
        assert min(record["width"], record["height"]) == 120
        assert Image.open(io.BytesIO(select_frames(record, blob, [0])[0])).size == (record["width"], record["height"])
    cfg_big = make_config(synth_root, tmp_path / "big", "shards.short_side=1000", "data.splits=[validation]")
    shards.run(cfg_big)
    assert all(r["height"] == 240 for r, _ in _all_samples(cfg_big, "validation").values())


def _add_video(root, vid, template, frames=None, raw=None, audio=False):
    """Append an annotation and write its file (real VP9 frames, or raw bytes, or nothing)."""
    path = root / "20bn-something-something-v2" / f"{vid}.webm"
    if frames is not None:
        encode_vp9(path, frames, 12, audio=audio)
    elif raw is not None:
        path.write_bytes(raw)
    items = read_annotations(root, "train")
    items.append({"id": vid, "label": "x", "template": template, "placeholders": []})
    (root / "labels" / "train.json").write_text(json.dumps(items))


def _frames(t, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, size=(t, h, w, 3), dtype=np.uint8)


def test_bad_inputs_are_rejected_with_reasons_and_the_rest_is_kept(synth_copy, tmp_path):
    root = synth_copy
    push = "Pushing [something] from left to right"
    good = root / "20bn-something-something-v2" / f"{read_annotations(root, 'train')[0]['id']}.webm"
    _add_video(root, "900001", push)  # missing
    _add_video(root, "900002", push, raw=b"")  # empty
    _add_video(root, "900003", push, raw=good.read_bytes()[: good.stat().st_size // 2])  # truncated
    _add_video(root, "900004", push, raw=b"this is not a video\n" * 50)  # not a video
    _add_video(root, "900005", push, frames=_frames(4, 240, 320))  # too short
    _add_video(root, "900006", "Juggling [something] while riding a unicycle", frames=_frames(20, 240, 320))
    _add_video(root, "900007", push, frames=_frames(20, 426, 240), audio=True)  # portrait, with audio
    _add_video(root, "900008", push, frames=_frames(20, 250, 338))  # short side above 240
    cfg = make_config(root, tmp_path, "shards.videos_per_shard=64", "data.splits=[train]", "shards.short_side=201")
    summary = shards.run(cfg)
    reasons = summary.rejected
    assert reasons["900001"] == "missing file"
    assert reasons["900002"] == "empty file"
    assert "truncated" in reasons["900003"]
    assert "ffmpeg failed" in reasons["900004"]
    assert reasons["900005"].startswith("too short: 4 frames")
    assert reasons["900006"].startswith("label not in labels.json")
    assert set(reasons) == {"900001", "900002", "900003", "900004", "900005", "900006"}
    (spec,) = plan_all(cfg)
    manifest = json.loads(manifest_path(cfg.paths.shards_dir, spec.name).read_text())
    assert {r["id"]: r["reason"] for r in manifest["rejected"]} == reasons
    samples = _all_samples(cfg, "train")
    assert set(samples) == {a["id"] for a in read_annotations(root, "train")} - set(reasons)
    portrait = samples["900007"][0]
    assert (portrait["width"], portrait["height"]) == (201, 357)  # odd width and height, both kept
    wide = samples["900008"][0]
    assert wide["height"] == 201 and abs(wide["width"] / 201 - 338 / 250) < 0.01
    names = tarfile.open(cfg.paths.shards_dir / spec.name).getnames()
    assert not any(n.startswith(tuple(reasons)) for n in names)


def test_resume_redoes_only_missing_or_corrupt_shards(synth_root, tmp_path):
    cfg = make_config(synth_root, tmp_path, "data.splits=[train]")
    shards.run(cfg)
    specs = plan_all(cfg)
    out = cfg.paths.shards_dir
    tars = [out / s.name for s in specs]
    originals = {t: t.read_bytes() for t in tars}
    old = 1_000_000_000
    for t in tars:
        os.utime(t, (old, old))
    # Shard 0: a crash mid-write (temporary file, tar and manifest gone). Shard 1: a flipped byte.
    manifest_path(out, specs[0].name).unlink()
    tars[0].rename(out / f".{specs[0].name}.tmp-12345")
    data = bytearray(tars[1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    tars[1].write_bytes(bytes(data))
    os.utime(tars[1], (old, old))
    index_path(out, "train").unlink()

    summary = shards.run(cfg)
    assert summary.shards_built == 2 and summary.shards_skipped == len(specs) - 2
    assert not list(out.glob(".*.tmp-*"))
    for t in tars:
        assert t.read_bytes() == originals[t], "rebuilt shards equal the first build byte for byte"
    assert tars[0].stat().st_mtime > old and tars[1].stat().st_mtime > old
    assert all(t.stat().st_mtime == old for t in tars[2:]), "verified shards are not rewritten"
    assert index_path(out, "train").exists()


def test_changed_settings_make_shards_stale(synth_root, tmp_path):
    cfg = make_config(synth_root, tmp_path, "data.splits=[validation]")
    assert shards.run(cfg).shards_built > 0
    assert shards.run(cfg).shards_built == 0
    changed = make_config(synth_root, tmp_path, "data.splits=[validation]", "shards.jpeg_qscale=10")
    summary = shards.run(changed)
    assert summary.shards_built == len(plan_all(changed)) and summary.shards_skipped == 0


def test_task_split_covers_every_shard_once(synth_root, tmp_path):
    cfg = make_config(synth_root, tmp_path, "shards.videos_per_shard=4")
    built = [shards.run(cfg, task_id=t, num_tasks=3).shards_built for t in range(3)]
    assert sum(built) == len(plan_all(cfg)) and min(built) > 0
    assert index_path(cfg.paths.shards_dir, "train").exists()
    assert index_path(cfg.paths.shards_dir, "validation").exists()
    assert (cfg.paths.shards_dir / "config.yaml").exists()


def test_ffmpeg_killed_by_a_signal_aborts_the_shard_instead_of_rejecting(synth_root, tmp_path, monkeypatch):
    import subprocess as sp

    from pipeline.shards import ffmpeg as ffmpeg_io

    real_run = sp.run
    calls = {"n": 0}

    def run(cmd, *args, **kwargs):  # the third decode dies of SIGTERM, as in a scancel
        calls["n"] += 1
        if calls["n"] == 3:
            return sp.CompletedProcess(cmd, -15, b"", b"")
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(ffmpeg_io.subprocess, "run", run)
    cfg = make_config(synth_root, tmp_path, "data.splits=[validation]", "shards.cpus_per_task=1")
    with pytest.raises(ffmpeg_io.DecodeInterrupted, match="killed by signal 15"):
        shards.run(cfg)
    (first, *_) = plan_all(cfg)
    assert not manifest_path(cfg.paths.shards_dir, first.name).exists(), "no done marker for the interrupted shard"
    assert not (cfg.paths.shards_dir / first.name).exists()
    monkeypatch.setattr(ffmpeg_io.subprocess, "run", real_run)
    summary = shards.run(cfg)
    assert summary.rejected == {} and summary.shards_built == len(plan_all(cfg))
