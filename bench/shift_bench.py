"""The temporal shift's own cost: TSM-R50 training steps beside a plain ResNet-50 step, on the same
number of images, eager and compiled, in one run.

    python -m bench.shift_bench [--images 256] [--steps 30] [--compile 0 1] [--rows rn50-ffn tsm16 ffn ...] [--json F]

Every row runs the same bare step (bf16 autocast on CUDA, channels_last, cross-entropy, fused SGD;
compiled with static shapes, as the trainer compiles),
so what differs is the model: torchvision's ResNet-50 on single images; TSM-R50 (the student's own
model: shifts, average consensus) at 8 and 16 frames; the same at 8 frames with the shift written as
the reference writes it (slice assignments, differentiated by autograd) and as strided copies for
contrast; and the FFN TSM-R50 at 4/8/16 frames (each step takes every count, with FFN's consistency
term), with its alteration unfolded, folded, and without its shifts (what FFN's smaller batches,
per-count norms and alterations cost apart from the shift). Images/s counts every frame the step
processes. The ratio is against the plain ResNet-50 of the same mode on the same images: the
single-image batch for the TSM rows; for the FFN rows, ResNet-50 over FFN's three batches (the
16-, 4- and 8-frame passes' images, same loss terms), whose own ratio is against the single batch.
The FFN rows also give their step time against the 16-frame TSM-R50 step (on the same 16-frame clips).
`--rows` runs only the named rows (each compiled row compiles anew: all of them do not fit one
10-minute call); a ratio whose baseline row was not run is left out.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet50

from pipeline import config
from pipeline.accel import shift_kernel
from pipeline.models import build_student, flexible
from pipeline.models import tsm as tsm_module
from pipeline.models.base import StudentOutput
from pipeline.runtime.device import pick_device
from pipeline.student.ffn import consistency_loss

CLASSES = 174
log = logging.getLogger(__name__)


def sliced_shift(x: torch.Tensor, num_frames: int, fold_div: int = 8) -> torch.Tensor:
    """The shift as mit-han-lab/temporal-shift-module writes it, left to autograd."""
    nt, c, h, w = x.shape
    v, fold = x.view(nt // num_frames, num_frames, c, h, w), c // fold_div
    out = torch.zeros_like(v)
    out[:, :-1, :fold] = v[:, 1:, :fold]
    out[:, 1:, fold : 2 * fold] = v[:, :-1, fold : 2 * fold]
    out[:, :, 2 * fold :] = v[:, :, 2 * fold :]
    return out.view(nt, c, h, w)


@dataclass
class Row:
    """One model: how to build it, its inputs, and how many images one step processes."""

    key: str  # what --rows calls it
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[torch.device], list[torch.Tensor]]
    images: int
    shift: Callable | None = None  # the shift to patch in while this row runs
    baseline: str = "single"  # the ResNet-50 row it is set against: "single" images, or "ffn" batches
    kernel: bool = True  # whether the eager shift may use the Triton kernel (CUDA)
    fold: bool = True  # whether FFN's alteration is folded into the conv after it


def _tsm(counts: list[int]) -> Callable[[], nn.Module]:
    cfg = config.load(None, ["student.arch=tsm_r50"])
    return lambda: build_student(cfg.student, CLASSES, counts if len(counts) > 1 else None)


def _clips(batch: int, counts: list[int]) -> Callable[[torch.device], list[torch.Tensor]]:
    # the clip at the highest count first, then the lower ones ascending (the trainer's order)
    order = [max(counts), *sorted(counts)[:-1]]
    return lambda device: [torch.randn(batch, t, 3, 224, 224, device=device) for t in order]


def _images(*sizes: int) -> Callable[[torch.device], list[torch.Tensor]]:
    return lambda device: [torch.randn(n, 3, 224, 224, device=device) for n in sizes]


class Batches(nn.Module):
    """A plain network over several image batches in one step (FFN's batch sizes, without FFN)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, *batches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.net(x) for x in batches)


def _ffn_batches(images: int) -> list[int]:
    # FFN's passes as the trainer runs them: the 16-frame clips first, then 4 and 8 frames
    return [images // 16 * t for t in (16, 4, 8)]


def rows(images: int) -> list[Row]:
    """The models compared, each sized to `images` frames per step (FFN: its 16-frame batch)."""
    return [
        Row("rn50", "ResNet-50, single images", lambda: resnet50(num_classes=CLASSES), _images(images), images),
        # FFN's baseline: ResNet-50 over FFN's three batches (the same images as the FFN rows' step)
        Row(
            "rn50-ffn",
            "ResNet-50, FFN's three batches (" + " + ".join(map(str, _ffn_batches(images))) + " images)",
            lambda: Batches(resnet50(num_classes=CLASSES)),
            _images(*_ffn_batches(images)),
            sum(_ffn_batches(images)),
        ),
        Row(
            "tsm8-sliced",
            "TSM-R50, 8 frames, reference's sliced shift",
            _tsm([8]),
            _clips(images // 8, [8]),
            images,
            shift=sliced_shift,
        ),
        Row(
            "tsm8-strided",
            "TSM-R50, 8 frames, eager shift as strided copies",
            _tsm([8]),
            _clips(images // 8, [8]),
            images,
            kernel=False,
        ),
        Row("tsm8", "TSM-R50, 8 frames", _tsm([8]), _clips(images // 8, [8]), images),
        Row("tsm16", "TSM-R50, 16 frames", _tsm([16]), _clips(images // 16, [16]), images),
        Row(
            "ffn-unfolded",
            "FFN TSM-R50, 4/8/16 frames, alteration applied to the input",
            _tsm([4, 8, 16]),
            _clips(images // 16, [4, 8, 16]),
            images // 16 * 28,
            baseline="ffn",
            fold=False,
        ),
        Row(
            "ffn",
            "FFN TSM-R50, 4/8/16 frames",
            _tsm([4, 8, 16]),
            _clips(images // 16, [4, 8, 16]),
            images // 16 * 28,
            baseline="ffn",
        ),
        # the same FFN step without its shifts: what FFN's batches, norms and alterations cost apart from the shift
        Row(
            "ffn-noshift",
            "FFN TSM-R50, 4/8/16 frames, no shift",
            _tsm([4, 8, 16]),
            _clips(images // 16, [4, 8, 16]),
            images // 16 * 28,
            baseline="ffn",
            shift=no_shift,
        ),
    ]


def no_shift(x: torch.Tensor, num_frames: int, fold_div: int = 8) -> torch.Tensor:
    """The network's shifts left out (for the FFN row's baseline)."""
    return x


def kernel_equals_copies(device: torch.device) -> bool:
    """Whether the eager shift gives the same values and gradients with the kernel as with strided
    copies, bf16 and float32, both layouts (the bench's own check; the tests run it on CUDA too)."""
    results = []
    for dtype in (torch.bfloat16, torch.float32):
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(6 * 8, 64, 14, 14, device=device, dtype=dtype).contiguous(memory_format=layout)
            weight = torch.randn_like(x)
            pairs = []
            for use in (True, False):
                shift_kernel_usable = shift_kernel.usable
                if not use:
                    shift_kernel.usable = lambda t: False
                try:
                    leaf = x.clone().requires_grad_(True)
                    out = tsm_module.temporal_shift(leaf, 8)
                    (out * weight).sum().backward()
                finally:
                    shift_kernel.usable = shift_kernel_usable
                pairs.append((out.detach(), leaf.grad))
            results.append(torch.equal(pairs[0][0], pairs[1][0]) and torch.equal(pairs[0][1], pairs[1][1]))
    return all(results)


def make_step(model: nn.Module, device: torch.device, compiled: bool) -> Callable[[list[torch.Tensor], torch.Tensor], None]:
    """One SGD step on `inputs`: cross-entropy on the first output, FFN's KL term on the others."""
    model.to(device).to(memory_format=torch.channels_last).train()
    model.channels_last = True
    forward = torch.compile(model, dynamic=False) if compiled else model  # as the trainer
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, fused=device.type == "cuda")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def step(inputs: list[torch.Tensor], labels: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            outs = forward(*inputs)
            outs = outs if isinstance(outs, tuple) and not isinstance(outs, StudentOutput) else (outs,)
            logits = [o.logits if isinstance(o, StudentOutput) else o for o in outs]
            # cross-entropy on the first output's rows (a batch of images or of clips), KL on the others
            loss = nn.functional.cross_entropy(logits[0], labels[: logits[0].shape[0]])
            for low in logits[1:]:  # FFN's term (for the baseline, against as many rows of the first)
                loss = loss + consistency_loss(logits[0][: low.shape[0]], [low], 1.0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def images_per_s(row: Row, device: torch.device, *, compiled: bool, warmup: int, steps: int) -> float:
    """Images/s of `row`'s step after `warmup` steps."""
    torch.manual_seed(0)
    original, usable, foldable = tsm_module.temporal_shift, shift_kernel.usable, flexible._foldable
    if not row.fold:
        flexible._foldable = lambda module: False
    if row.shift is not None:
        tsm_module.temporal_shift = row.shift
    if not row.kernel:
        shift_kernel.usable = lambda x: False
    try:
        model = row.build()
        inputs = [x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in row.inputs(device)]
        labels = torch.randint(0, CLASSES, (inputs[0].shape[0],), device=device)
        step = make_step(model, device, compiled)
        for _ in range(warmup):
            step(inputs, labels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step(inputs, labels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return row.images * steps / (time.perf_counter() - start)
    finally:
        tsm_module.temporal_shift, shift_kernel.usable, flexible._foldable = original, usable, foldable
        torch._dynamo.reset()


BASELINES = {"single": "rn50", "ffn": "rn50-ffn"}


def _cells(row: Row, rate: float, mode: int, rates: dict[tuple[str, int], float], images: dict[str, int]) -> list[str]:
    """images/s, the ratio to the row's ResNet-50 and (FFN rows) the step time against the 16-frame step."""
    base = rates.get((BASELINES[row.baseline], mode))
    vs_resnet = f"{rate / base:.0%}" if base else "-"
    tsm16 = rates.get(("tsm16", mode))
    step = f"{(row.images / rate) / (images['tsm16'] / tsm16):.2f}x" if row.key.startswith("ffn") and tsm16 else ""
    return [f"{rate:.0f}", vs_resnet, step]


def main() -> None:
    """Time every row (or those in --rows) eager and compiled; print one Markdown table."""
    cuda = torch.cuda.is_available()
    keys = [r.key for r in rows(16)]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256 if cuda else 32, help="frames per step (a multiple of 16)")
    parser.add_argument("--steps", type=int, default=30 if cuda else 2)
    parser.add_argument("--warmup", type=int, default=5 if cuda else 1)
    parser.add_argument("--compile", type=int, nargs="+", default=[0, 1] if cuda else [0], choices=[0, 1])
    parser.add_argument("--rows", nargs="+", default=keys, choices=keys, help="run only these rows (table order)")
    parser.add_argument("--skip", nargs="*", default=[], help="leave out the rows (past the two ResNet-50s) naming one of these")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    log.setLevel(logging.INFO)
    device = pick_device("auto")
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    modes = ["compiled" if c else "eager" for c in args.compile]
    if shift_kernel.usable(torch.empty(8, 16, 2, 2, device=device)):
        print(f"Triton shift equals the strided copies (values and gradients): {kernel_equals_copies(device)}")
    chosen = [r for r in rows(args.images) if r.key in args.rows]
    chosen = [r for r in chosen if r.key.startswith("rn50") or not any(word in r.name for word in args.skip)]
    # every row eager first, then every row compiled: a run cut short has whole modes, each line logged as it comes
    rates = {(r.key, c): _rate(r, device, c, args) for c in args.compile for r in chosen}
    images = {r.key: r.images for r in rows(args.images)}
    print(f"\n{name}, {'bf16' if cuda else 'fp32'}, channels_last, image 224, {args.steps} timed steps\n")
    print(
        "| model | images per step | "
        + " | ".join(f"{m} images/s | {m} / ResNet-50 | {m} step / 16-frame step" for m in modes)
        + " |"
    )
    print("| --- | --- |" + " --- | --- | --- |" * len(modes))
    for row in chosen:
        cells = [cell for c in args.compile for cell in _cells(row, rates[(row.key, c)], c, rates, images)]
        print(f"| {row.name} | {row.images} | " + " | ".join(cells) + " |")
    if args.json:
        figures = [{"key": k, "compiled": bool(c), "images": images[k], "images_per_s": r} for (k, c), r in rates.items()]
        args.json.write_text(json.dumps({"device": name, "steps": args.steps, "rows": figures}, indent=1))


def _rate(row: Row, device: torch.device, compiled: int, args: argparse.Namespace) -> float:
    """`row`'s images/s in one mode, logged with the seconds it took."""
    start = time.perf_counter()
    rate = images_per_s(row, device, compiled=bool(compiled), warmup=args.warmup + (5 if compiled else 0), steps=args.steps)
    mode = "compiled" if compiled else "eager"
    log.info("%s, %s: %.1f images/s (%.0f s with build, warm-up, compilation)", row.key, mode, rate, time.perf_counter() - start)
    return rate


if __name__ == "__main__":
    main()
