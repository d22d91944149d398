"""Temporal frequency deviation and FFN's fix at GPU scale, in the proxy world.

    python -m experiments.frame_flexible gpu --work DIR --no-ffmpeg --parallel 4   # one H100: TSM-R50, MobileViT-XXS
    python -m experiments.frame_flexible cpu --work DIR --parallel 2               # tsm_tiny at 64 px

`gpu`: students trained vanilla on the proxy set at 112 px (shards at short side 128), 30 epochs,
batch 32, AdamW lr 3e-4 with 3 warm-up epochs, each evaluated at 4, 8 and 16 frames: TSM-R50 trained
at 16 frames (the seeds' "vanilla TSM that will demonstrate TFD"), one TSM-R50 per count (4 and 8),
TSM-R50 trained frame-flexibly (FFN, 4/8/16), and the seeds' student, MobileViT-XXS with the
order-aware head (`attention_pos`), plain 16 and FFN 4/8/16. `cpu`: the same comparison for
tsm_tiny at 64 px. The runner (experiments/runner.py) keeps one result per run and prints mean ±
spread per condition; docs/frame_flexible.md has the tables, docs/frame_flexible_results.jsonl the runs.
"""

from __future__ import annotations

from experiments import proxy_world as world
from experiments.runner import Table, main

COUNTS = (4, 8, 16)
FFN = ("student.num_frames=16", "train.frame_counts=[4, 8, 16]")


def _conditions(arch: str, extra: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    return {
        f"{arch}, plain 16": (*extra, "student.num_frames=16"),
        f"{arch}, plain 8": (*extra, "student.num_frames=8"),
        f"{arch}, plain 4": (*extra, "student.num_frames=4"),
        f"{arch}, FFN 4/8/16": (*extra, *FFN),
    }


GPU = (
    "@size=128",
    "student.image_size=112",
    "train.batch_size=32",
    "train.num_workers=3",
    *world.VANILLA,
)
MOBILEVIT = ("student.arch=mobilevit_xxs", "student.temporal=attention_pos")

TABLES = {
    "gpu": Table(
        {
            **_conditions("TSM-R50", ("student.arch=tsm_r50",)),
            "MobileViT-XXS attention_pos, plain 16": (*MOBILEVIT, "student.num_frames=16"),
            "MobileViT-XXS attention_pos, FFN 4/8/16": (*MOBILEVIT, *FFN),
        },
        counts=COUNTS,
        settings=GPU,
        epochs=30,
    ),
    "cpu": Table(_conditions("tsm_tiny"), counts=COUNTS, settings=world.VANILLA, epochs=15),
}

STUDY = world.study("experiments.frame_flexible", TABLES)

if __name__ == "__main__":
    main(STUDY, __doc__)
