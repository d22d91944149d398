import json

import numpy as np
import pytest
import torch
import zarr

from pipeline.accel.gpu_resize import resize_by_products
from pipeline.accel.pool_loader import PoolKeeper
from pipeline.cache.store import CacheCorruptError, CacheMismatchError, CacheReader, open_checked
from pipeline.shards import build as shards
from pipeline.ssv2.annotations import LABELS_FILE, class_names, load_labels
from pipeline.ssv2.frames import decode, normalize, resize_crop
from pipeline.ssv2.records import read_shard, select_frames
from pipeline.ssv2.sampling import segment_centres
from pipeline.ssv2.views import draw_views, replay_view, teacher_subset
from pipeline.student.data import CacheSource, ClipSource, ClipSpec, ShardClips
from pipeline.teacher import data as teacher_data
from pipeline.teacher import run as teacher_run
from pipeline.teacher.clip import TeacherWeightsError, load_teacher
from tests.helpers import make_config, read_annotations

TINY = ("teacher.model=clip-tiny", "teacher.pretrained=random", "teacher.num_workers=2", "teacher.batch_videos=3")


def _cfg(root, run_dir, *extra):
    return make_config(root, run_dir, *TINY, *extra)


@pytest.fixture(scope="module")
def cached(synth_root, tmp_path_factory):
    """Shards plus a complete teacher cache, built once for the module."""
    cfg = _cfg(synth_root, tmp_path_factory.mktemp("run"))
    shards.run(cfg)
    summary = teacher_run.run(cfg)
    return cfg, summary


def _arrays(path):
    root = zarr.open_group(path, mode="r")
    return {f"{s}/{name}": root[s][name][:] for s in ("train", "validation") for name in root[s].array_keys()}


def test_cached_outputs_equal_a_fresh_teacher_forward(cached):
    cfg, _ = cached
    teacher = load_teacher(cfg.teacher, class_names(load_labels(LABELS_FILE)), torch.device("cpu"))
    reader = CacheReader(open_checked(cfg), "validation")
    tar = sorted(cfg.paths.shards_dir.glob("validation-*.tar"))[-1]
    checked = 0
    for record, blob in read_shard(str(tar)):
        jpegs = select_frames(record, blob, segment_centres(record["num_frames"], cfg.teacher.num_frames))
        x = normalize(resize_crop(torch.stack(decode(jpegs)), teacher.image_size), teacher.mean, teacher.std)
        with torch.no_grad():
            frame_emb = teacher.encode_frames(x)
            feature = frame_emb.mean(0, keepdim=True)
            logits = teacher.logits(feature)
        cached_feature, cached_logits = reader.get(record["row"], record["id"])
        np.testing.assert_allclose(cached_feature, feature[0].numpy(), rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(cached_logits, logits[0].numpy(), rtol=1e-3, atol=1e-3)
        checked += 1
    assert checked > 0


def test_cache_reader_keeps_recent_shards_and_serves_the_same_rows(cached):
    # a shuffle buffer mixes shards, so the reader keeps the last few shards' rows instead of one
    cfg, _ = cached
    root = zarr.open_group(cfg.paths.teacher_cache, mode="r")
    group, reader = root["train"], CacheReader(root, "train", keep_shards=2)
    ids, valid, features = group["ids"][:], group["valid"][:], group["features"][:]
    per = reader.per
    rows = [r for r in range(len(ids)) if valid[r]]
    order = [r for shard in (0, 1, 0, 2, 1, 0) for r in rows if r // per == shard][::3]
    for r in order:
        feature, _ = reader.get(r, str(ids[r]))
        np.testing.assert_array_equal(feature, features[r, 0])
    assert reader.kept_shards == [1, 0]  # the two most recent shards; 2 was evicted by the later 1 and 0


def test_shards_left_for_gpu_decoding_give_the_same_frames(cached):
    # gpu_decode_share hands a share of the shards to nvjpeg as raw JPEGs; on the CPU the same path
    # decodes them here, so both kinds of item must turn into the same model input

    cfg, _ = cached
    jobs = teacher_run.all_shards(cfg)
    left_raw = [teacher_data.gpu_decoded(i, 0.25) for i in range(len(jobs) * 4)]
    assert sum(left_raw) == len(jobs)  # one in four, whatever the count
    cpu = teacher_data.ShardFrames(jobs, teacher_run.view_plan(cfg), gpu_share=0.0)
    mixed = teacher_data.ShardFrames(jobs, teacher_run.view_plan(cfg), gpu_share=0.5)
    prep = teacher_data.FramePrep(32, torch.device("cpu"))
    kinds = set()
    for a, b in zip(cpu, mixed, strict=True):
        kinds.add(type(b).__name__)
        assert a.rows == b.rows
        assert torch.equal(prep(a)[1], prep(b)[1])
    assert kinds == {"ShardCrops", "ShardJpegs"}  # both kinds of item were compared


@pytest.mark.unit
@pytest.mark.parametrize("side", [240, 256, (158, 211)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_resize_by_matrix_products_equals_the_bicubic_kernel(side, dtype):
    # the CUDA path resizes by two products with weights read off torch's kernel; it must be that kernel
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    h, w = side if isinstance(side, tuple) else (side, side)  # squares, and a view's crop box
    gen = torch.Generator().manual_seed(h)
    smooth = torch.nn.functional.interpolate(torch.rand(6, 3, 16, 16, generator=gen), size=(h, w), mode="bilinear")
    frames = (smooth * 255).round().to(torch.uint8)
    ours = resize_by_products(frames, 224, dtype)
    kernel = TF.resize(frames.float(), [224, 224], interpolation=InterpolationMode.BICUBIC, antialias=True)
    assert ours.dtype == torch.uint8 and ours.shape == (6, 3, 224, 224)
    assert (ours.float() - kernel.round().clamp(0, 255)).abs().max() <= 1


@pytest.mark.unit
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the float16 products' CUDA path (cuBLAS reductions)")
@pytest.mark.parametrize("side", [240, (158, 211)])
def test_resize_by_float16_products_on_cuda_stays_within_a_level_of_the_kernel(side):
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    h, w = side if isinstance(side, tuple) else (side, side)
    frames = torch.randint(0, 256, (6, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(h))
    ours = resize_by_products(frames.cuda(), 224).cpu()
    kernel = TF.resize(frames.float(), [224, 224], interpolation=InterpolationMode.BICUBIC, antialias=True)
    assert (ours.float() - kernel.round().clamp(0, 255)).abs().max() <= 1


def test_store_opens_with_plain_zarr_with_documented_shapes(cached):
    cfg, _ = cached
    root = zarr.open_group(cfg.paths.teacher_cache, mode="r")
    index = json.loads((cfg.paths.shards_dir / "train.index.json").read_text())
    g = root["train"]
    n, per, frames, k = index["num_rows"], cfg.shards.videos_per_shard, cfg.teacher.num_frames, cfg.teacher.views
    assert k == 2  # the smoke settings' training views
    assert (g["features"].shape, g["features"].dtype) == ((n, k, 512), np.float32)
    assert (g["logits"].shape, g["logits"].dtype) == ((n, k, 174), np.float32)
    assert (g["frame_features"].shape, g["frame_features"].dtype) == ((n, k, frames, 512), np.float16)
    assert (g["view_frames"].shape, g["view_box"].shape, g["view_flip"].shape) == ((n, k, 8), (n, k, 4), (n, k))
    assert g["ids"].shape == (n,) and g["valid"].dtype == bool
    assert g["features"].chunks == (per, k, 512) and g["done"].chunks == (1,)
    v = root["validation"]
    assert v["features"].shape[1] == 1 and "view_box" not in v  # validation: the centre view alone
    assert g["done"][:].all() and g["valid"][:].sum() == index["num_videos"]
    train_ids = {a["id"] for a in read_annotations(cfg.paths.ssv2_root, "train")}
    assert set(g["ids"][:][g["valid"][:]]) == train_ids
    assert len(root.attrs["prompt_texts"]) == 174 * len(cfg.teacher.prompts)
    assert root.attrs["teacher"]["model"] == "clip-tiny" and len(root.attrs["weights_sha256"]) == 64


def test_killed_task_then_rerun_equals_uninterrupted_run(cached, synth_root, tmp_path):
    cfg_full, full_summary = cached
    cfg = _cfg(synth_root, tmp_path)
    shards.run(cfg)
    first = teacher_run.run(cfg, stop_after_shards=2)  # the task dies after two shards
    assert len(first.shards_computed) == 2
    second = teacher_run.run(cfg)
    assert not set(first.shards_computed) & set(second.shards_computed), "no shard computed twice"
    assert sorted(first.shards_computed + second.shards_computed) == sorted(full_summary.shards_computed)
    a, b = _arrays(cfg.paths.teacher_cache), _arrays(cfg_full.paths.teacher_cache)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_a_store_made_in_parts_of_shards_equals_one_made_whole(cached, synth_root, tmp_path):
    # TINY's batch of 3 views sends each training shard (K = 2) a video at a time and validation
    # shards 3 videos at a time; with a batch larger than a shard every item is a whole shard
    cfg_parts, parts_summary = cached
    cfg = _cfg(synth_root, tmp_path, "teacher.batch_videos=64")
    shards.run(cfg)
    whole = teacher_run.run(cfg)
    assert sorted(whole.shards_computed) == sorted(parts_summary.shards_computed)
    assert (whole.videos, whole.views, whole.frames) == (parts_summary.videos, parts_summary.views, parts_summary.frames)
    a, b = _arrays(cfg.paths.teacher_cache), _arrays(cfg_parts.paths.teacher_cache)
    assert a.keys() == b.keys()
    for name in a:
        if a[name].dtype.kind == "f":  # the forward's batch differs: float rounding may
            np.testing.assert_allclose(a[name].astype(np.float32), b[name].astype(np.float32), rtol=1e-3, atol=1e-3, err_msg=name)
        else:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_two_tasks_fill_the_same_store_as_one(cached, synth_root, tmp_path):
    cfg_full, _ = cached
    cfg = _cfg(synth_root, tmp_path)
    shards.run(cfg)
    done = [teacher_run.run(cfg, task_id=t, num_tasks=2).shards_computed for t in range(2)]
    assert done[0] and done[1] and not set(done[0]) & set(done[1])
    a, b = _arrays(cfg.paths.teacher_cache), _arrays(cfg_full.paths.teacher_cache)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_changed_teacher_setting_is_refused(cached):
    cfg, _ = cached
    changed = _cfg(cfg.paths.ssv2_root, cfg.paths.run_dir, "teacher.num_frames=4")
    with pytest.raises(CacheMismatchError, match=r"teacher.num_frames: cache has 8, config/shards give 4") as e:
        open_checked(changed)
    assert "make teacher-cache" in str(e.value)
    other_model = _cfg(cfg.paths.ssv2_root, cfg.paths.run_dir, "teacher.model=ViT-B-32")
    with pytest.raises(CacheMismatchError, match="teacher.model"):
        open_checked(other_model)


def test_changed_views_are_refused_with_what_differs(cached):
    cfg, _ = cached
    changes = {
        "teacher.views=3": "views.count",
        "teacher.view_seed=1": "views.seed",
        "student.num_frames=16": "views.clip_frames",
        "train.flip=true": "views.flip",
    }
    for override, key in changes.items():
        with pytest.raises(CacheMismatchError, match=rf"teacher.{key}: cache has") as e:
            open_checked(_cfg(cfg.paths.ssv2_root, cfg.paths.run_dir, override))
        assert "make teacher-cache" in str(e.value)


def test_the_students_replayed_crop_is_the_teachers_crop_bit_for_bit(cached):
    # the teacher's crops before its resize (loader worker output) against the student's crop of the
    # same view before its resize, and the student's batch carries that view's teacher outputs
    cfg, _ = cached
    plan = teacher_run.view_plan(cfg)
    job = teacher_run.all_shards(cfg)[0]
    assert job.split == "train"
    item = teacher_data.ShardFrames([job], plan).decoded(job)
    teacher_crops = {}
    for idx, crops in item.groups:
        teacher_crops |= {e: crops[i] for i, e in enumerate(idx)}
    cache = CacheSource(cfg.paths.teacher_cache, "train")
    spec = ClipSpec(cfg.student.num_frames, cfg.student.image_size, 1, train=True, epoch=3)
    clips = ShardClips(ClipSource([str(job.tar)], spec, 0, 1, 1, cache, {}))
    subset = list(segment_centres(cfg.student.num_frames, cfg.teacher.num_frames))
    for position, (record, blob) in enumerate(read_shard(str(job.tar))):
        for view in range(cfg.teacher.views):
            student, flip = clips.replayed_crop({"jpgs": blob}, record, view)
            teacher = teacher_crops[position * cfg.teacher.views + view]
            assert torch.equal(student[subset], teacher), (record["id"], view)
            assert flip == item.flips[position * cfg.teacher.views + view]
        sample = {"json": json.dumps(record).encode(), "jpgs": blob}
        _, _, feature, logits, _, lower, _ = clips._clip(sample, worker=0, index=0)
        assert lower == ()  # one trained count: no lower-count clips
        replayed = replay_view(spec.seed, record["row"], spec.epoch, cfg.teacher.views)
        np.testing.assert_array_equal(feature, cache.get(record["row"], record["id"], replayed)[0])


@pytest.mark.unit
def test_each_view_is_replayed_once_every_k_epochs_in_a_fresh_order():
    for row in range(20):
        rounds = [[replay_view(7, row, epoch, 4) for epoch in range(r * 4, r * 4 + 4)] for r in range(3)]
        assert all(sorted(one) == [0, 1, 2, 3] for one in rounds)
    orders = {tuple(replay_view(7, row, e, 4) for e in range(4)) for row in range(20)}
    assert len(orders) > 5  # not one order for every video


@pytest.mark.unit
def test_views_are_drawn_the_same_every_time_and_inside_the_frame():
    record = {"row": 12, "num_frames": 37, "height": 240, "width": 351}
    a = draw_views(record, count=8, clip_frames=16, flip=True, seed=0)
    assert a == draw_views(record, count=8, clip_frames=16, flip=True, seed=0)
    assert a != draw_views(record, count=8, clip_frames=16, flip=True, seed=1)
    for v in a:
        top, left, h, w = v.box
        assert 0 <= top and top + h <= 240 and 0 <= left and left + w <= 351
        assert list(v.frames) == sorted(v.frames) and len(v.frames) == 16 and max(v.frames) < 37
    assert {v.flip for v in a} == {True, False}
    assert not any(v.flip for v in draw_views(record, count=8, clip_frames=16, flip=False, seed=0))
    assert teacher_subset(tuple(range(16)), 8) == (1, 3, 5, 7, 9, 11, 13, 15)


def test_changed_shards_are_refused(synth_root, tmp_path):
    cfg = _cfg(synth_root, tmp_path, "data.splits=[validation]")
    shards.run(cfg)
    teacher_run.run(cfg)
    open_checked(cfg)
    rebuilt = _cfg(synth_root, tmp_path, "data.splits=[validation]", "shards.jpeg_qscale=9")
    shards.run(rebuilt)
    with pytest.raises(CacheMismatchError, match="shards differ|settings"):
        open_checked(rebuilt)
    with pytest.raises(CacheMismatchError):
        teacher_run.run(rebuilt)


def test_rejected_rows_stay_invalid_and_are_never_served(synth_copy, tmp_path):
    items = read_annotations(synth_copy, "validation")
    items.append({"id": "990001", "label": "x", "template": items[0]["template"], "placeholders": []})  # no file
    (synth_copy / "labels" / "validation.json").write_text(json.dumps(items))
    cfg = _cfg(synth_copy, tmp_path, "data.splits=[validation]")
    assert "990001" in shards.run(cfg).rejected
    teacher_run.run(cfg)
    g = zarr.open_group(cfg.paths.teacher_cache, mode="r")["validation"]
    ids, valid = g["ids"][:], g["valid"][:]
    (row,) = np.nonzero(ids == "990001")[0]
    assert not valid[row] and not g["features"][row].any()
    assert valid.sum() == len(items) - 1
    with pytest.raises(KeyError, match="not valid"):
        CacheReader(open_checked(cfg), "validation").get(int(row), "990001")


@pytest.mark.unit
def test_missing_weights_give_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    names = class_names(load_labels(LABELS_FILE))
    from pipeline.config import TeacherConfig

    with pytest.raises(TeacherWeightsError, match="no such checkpoint file"):
        load_teacher(TeacherConfig(model="clip-tiny", pretrained="/nonexistent/clip.pt"), names, torch.device("cpu"))
    with pytest.raises(TeacherWeightsError, match="not a known tag"):
        load_teacher(TeacherConfig(model="ViT-B-32", pretrained="no-such-tag"), names, torch.device("cpu"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TeacherWeightsError, match="set teacher.pretrained to the local file"):
        load_teacher(TeacherConfig(model="ViT-B-32", pretrained="openai"), names, torch.device("cpu"))


def test_missing_shards_give_a_clear_error(synth_root, tmp_path):
    cfg = _cfg(synth_root, tmp_path)
    with pytest.raises(FileNotFoundError, match="run `make shards`"):
        teacher_run.run(cfg)


@pytest.mark.parametrize("room", ["an item", "too small"])
def test_pooled_teacher_loader_gives_the_segment_loader_frames(cached, room):
    # the batch pool hands each item's crops over in a slot; an item larger than a slot goes the old way

    cfg, _ = cached
    jobs = teacher_run.all_shards(cfg)
    item_bytes = teacher_run.item_bytes(cfg) if room == "an item" else 4096
    cpu = torch.device("cpu")
    prep = teacher_data.FramePrep(32, cpu)
    parts = {"batch_views": cfg.teacher.batch_videos}
    pooled = teacher_data.make_loader(
        jobs, teacher_run.view_plan(cfg), num_workers=2, prep=prep, keeper=PoolKeeper(), shard_bytes=item_bytes, **parts
    )
    plain = teacher_data.make_loader(jobs, teacher_run.view_plan(cfg), num_workers=2, **parts)
    assert type(pooled).__name__ == "PooledLoader" and type(plain).__name__ == "DataLoader"
    count, parted = 0, 0
    for a, b in zip(pooled, plain, strict=True):
        assert (a.job, a.rows, a.part, a.parts) == (b.job, b.rows, b.part, b.parts)
        assert torch.equal(prep(a)[1], prep(b)[1])
        count, parted = count + (a.part == a.parts - 1), parted + (a.parts > 1)
    assert count == len(jobs) and parted > 0


def test_a_damaged_chunk_fails_its_checksum_and_recompute_restores_it(cached, synth_root, tmp_path):
    from stages import teacher_cache
    from tests.helpers import config_args

    cfg_full, _ = cached
    cfg = _cfg(synth_root, tmp_path)
    shards.run(cfg)
    teacher_run.run(cfg)
    expected = _arrays(cfg_full.paths.teacher_cache)
    chunk = cfg.paths.teacher_cache / "train" / "features" / "c" / "1" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x40  # one flipped bit in the middle of shard 1's chunk
    chunk.write_bytes(bytes(data))
    reader = CacheReader(zarr.open_group(cfg.paths.teacher_cache, mode="r"), "train")
    reader.shard_rows(0)  # the other shards read as before
    name = zarr.open_group(cfg.paths.teacher_cache, mode="r").attrs["splits"]["train"]["shards"][1][0]
    with pytest.raises(CacheCorruptError) as damaged:
        reader.shard_rows(1)
    message = str(damaged.value)
    assert name in message and f"--recompute {name}" in message and "\n" not in message
    assert teacher_cache.main([*config_args(synth_root, tmp_path, *TINY), "--recompute", name]) == 0
    repaired = _arrays(cfg.paths.teacher_cache)
    for key in expected:
        np.testing.assert_array_equal(repaired[key], expected[key], err_msg=key)
