"""One BatchNorm's forward and backward with the batch's statistics shared against normalised in two
groups (`train.unlabelled_norm: separate`, pipeline/models/norm_groups.py), side by side in one run.

    python -m bench.norm_bench [--shape 512 64 28 28] [--labelled-share 0.5]

The input is channels_last, as the students' convolutions give it; on CUDA in bf16. A row's figure is
the median of its timed repeats, and the ratio is against the shared row: what grouping costs the
BatchNorms alone (`bench.loss_bench` has the whole step).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from pipeline.models.norm_groups import separate_norms
from pipeline.runtime.device import pick_device


def seconds(norm: nn.Module, x: torch.Tensor, *, repeats: int, device: torch.device) -> float:
    """Median seconds of one forward and backward of `norm` on `x`."""
    times, grad = [], torch.randn_like(x)  # a dense gradient in x's layout, as a network's would be
    for i in range(repeats + 3):
        inp = x.detach().requires_grad_()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        norm(inp).backward(grad)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:  # the first calls pick kernels and allocate
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Time the shared and the grouped BatchNorm; print one Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=4, default=[512, 64, 28, 28], metavar=("N", "C", "H", "W"))
    parser.add_argument("--labelled-share", type=float, default=0.5, help="the first group's share of the rows")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    device = pick_device("auto")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n, c, h, w = args.shape
    x = torch.randn(n, c, h, w, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    shared = nn.BatchNorm2d(c).to(device).train()
    grouped = nn.BatchNorm2d(c).to(device).train()
    groups = separate_norms(grouped)
    groups.split = (round(args.labelled_share * n), n)  # each row a clip of one frame
    rows = {"shared statistics": seconds(shared, x, repeats=args.repeats, device=device)}
    rows["separate statistics"] = seconds(grouped, x, repeats=args.repeats, device=device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    shape = f"input {n}x{c}x{h}x{w} channels_last, {args.labelled_share:.0%} labelled rows"
    print(f"\n{name}, {dtype}, {shape}, median of {args.repeats}\n")
    print("| BatchNorm2d, forward and backward | ms | against shared |\n| --- | --- | --- |")
    for row, s in rows.items():
        print(f"| {row} | {s * 1000:.2f} | {s / rows['shared statistics']:.2f}x |")


if __name__ == "__main__":
    main()
