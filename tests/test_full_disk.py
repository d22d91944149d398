"""A full disk, for real: the run folder on a size-limited tmpfs (mounted by the test: as root, or
not root, as the root of a user namespace of its own).

The shards stage and the teacher stage run out of space part-way: each stops with one line naming
the file and saying that space ran out, no done marker is written for the shard it was on, no
partial file is left behind; after space is freed the rerun completes and equals a run that never
ran out."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import zarr

from pipeline.runtime.errors import guarded
from pipeline.shards import build as shards
from pipeline.shards.plan import plan_all, why_not_done
from pipeline.teacher import run as teacher_run
from stages import shards as shards_stage
from stages import teacher_cache as teacher_stage
from tests.helpers import REPO, config_args, make_config

TINY = ("teacher.model=clip-tiny", "teacher.pretrained=random", "teacher.num_workers=1", "teacher.batch_videos=2")
SETTINGS = ("shards.videos_per_shard=4", "shards.cpus_per_task=1", *TINY)


def _size_kb(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) // 1024 + 1


@pytest.fixture
def small_disk(tmp_path, request):
    """A tmpfs at tmp_path/disk whose size the test sets (and changes) with `resize(kb)`. Not root:
    the test runs again, whole, as the root of a user and mount namespace of its own (where a tmpfs
    can be mounted), and this gives None once that run has passed."""
    if os.geteuid() != 0:
        _in_own_namespace(request.node.nodeid)
        yield None
        return
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")

    def resize(kb: int) -> None:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"remount,size={kb}k", "tmpfs", str(disk)], check=True)

    yield disk, resize
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _in_own_namespace(nodeid: str) -> None:
    """Run the test `nodeid` under `unshare --user --map-root-user --mount`; fail with its output if it fails."""
    if shutil.which("unshare") is None:
        pytest.skip("not root and no unshare: no size-limited file system can be mounted here")
    command = ["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    base = tempfile.mkdtemp(prefix="full-disk-")  # the namespace's root owns what it writes: a folder of its own
    proc = subprocess.run([*command, f"--basetemp={base}", "-rs", nodeid], cwd=REPO, capture_output=True, text=True, timeout=900)
    if "Operation not permitted" in proc.stderr and proc.returncode:
        pytest.skip(f"not root, and user namespaces are not allowed here: {proc.stderr.strip()[-200:]}")
    if proc.returncode == 0 and " skipped" in proc.stdout and " passed" not in proc.stdout:
        pytest.skip(f"in its own namespace: {proc.stdout.strip().splitlines()[-1]}")
    assert proc.returncode == 0 and " passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_a_full_disk_stops_each_stage_cleanly_and_the_rerun_completes(synth_root, tmp_path, small_disk, capsys):
    if small_disk is None:
        return  # ran, and passed, in a namespace of its own
    disk, resize = small_disk
    reference = make_config(synth_root, tmp_path / "ref", *SETTINGS)
    shards.run(reference)
    teacher_run.run(reference)
    shards_kb, cache_kb = _size_kb(reference.paths.shards_dir), _size_kb(reference.paths.teacher_cache)

    cfg = make_config(synth_root, disk / "run", *SETTINGS)
    argv = config_args(synth_root, disk / "run", *SETTINGS)
    resize(shards_kb // 2)
    assert guarded("shards", lambda: shards_stage.main(argv), argv) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(disk) in line and "No space left on device" in line and "disk is full" in line
    out = cfg.paths.shards_dir
    done = [s for s in plan_all(cfg) if why_not_done(out, s, cfg) is None]
    assert 0 < len(done) < len(plan_all(cfg))
    assert not list(out.glob(".*.tmp-*")), "no partial file left taking the space"
    assert not list(out.glob("*.index.json")) or len(done) == len(plan_all(cfg))

    resize(shards_kb + cache_kb // 3)  # room for the shards, not for the whole cache
    assert guarded("shards", lambda: shards_stage.main(argv), argv) == 0
    for tar in sorted(reference.paths.shards_dir.glob("*.tar")):
        assert (out / tar.name).read_bytes() == tar.read_bytes(), tar.name

    assert guarded("teacher-cache", lambda: teacher_stage.main(argv), argv) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "No space left on device" in line, line
    resize(shards_kb + 2 * cache_kb + 1024)
    assert guarded("teacher-cache", lambda: teacher_stage.main(argv), argv) == 0
    a, b = zarr.open_group(cfg.paths.teacher_cache, mode="r"), zarr.open_group(reference.paths.teacher_cache, mode="r")
    for split in ("train", "validation"):
        for name in ("features", "logits", "valid", "ids", "done"):
            np.testing.assert_array_equal(a[split][name][:], b[split][name][:], err_msg=f"{split}/{name}")


def test_a_checkpoint_that_does_not_fit_leaves_the_previous_one_loadable(small_disk):
    import torch

    from pipeline.models import checkpoint

    if small_disk is None:
        return  # ran, and passed, in a namespace of its own
    disk, resize = small_disk
    resize(256)
    path = disk / "latest.pt"
    checkpoint.save(path, {"model": {"w": torch.ones(1000)}, "state": {"step": 5}})
    with pytest.raises(OSError) as full:
        checkpoint.save(path, {"model": {"w": torch.ones(200_000)}, "state": {"step": 10}})  # 800 kB: does not fit
    assert full.value.filename == str(path) and "No space left" in str(full.value)
    assert checkpoint.load(path)["state"]["step"] == 5
    assert [p.name for p in disk.iterdir()] == ["latest.pt"], "no partial file left"
