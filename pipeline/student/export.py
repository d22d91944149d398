"""A trained student for deployment: per frame count an ONNX file (the `torch.onnx` dynamo exporter)
and a `torch.export` program, each checked against the PyTorch model on real validation clips, and
the latency at batch 1 with onnxruntime on the CPU (one thread and all) and PyTorch on the GPU.

An exported model takes uint8 RGB clips [B, T, 3, H, W] (any B, the T it was exported for) and
returns the class logits: the input normalisation is inside it. A frame-flexible (FFN) student is
exported at each count with that count's norms and alterations; a count it was not trained at uses
the nearest trained one, as in evaluation.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.runtime.atomic import discard_on_error, publish

log = logging.getLogger(__name__)


class Deployable(nn.Module):
    """uint8 clips [B, T, 3, H, W] -> logits [B, C]: the student's normalisation, then the student
    with its frame-aware modules set for T."""

    def __init__(self, student: nn.Module, frames: int):
        super().__init__()
        self.student, self.frames = student, frames
        self.register_buffer("mean", torch.tensor(student.input_mean).view(1, 1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(student.input_std).view(1, 1, 3, 1, 1) * 255)

    def prepare(self) -> Deployable:
        """Set every frame-aware module for this T (before tracing: the graph is made for one T)."""
        for module in self.student.modules():
            if hasattr(module, "set_frames"):
                module.set_frames(self.frames)
        return self.eval()

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.student.forward_clip((clips.float() - self.mean) / self.std).logits


@dataclass
class Exported:
    """The files of one frame count and their checks against PyTorch (max abs logit difference)."""

    frames: int
    onnx: Path
    program: Path
    onnx_diff: float
    program_diff: float


def export_count(student: nn.Module, *, frames: int, size: int, out: Path, check_clips: torch.Tensor) -> Exported:
    """Export the student at `frames` (ONNX and torch.export, dynamic batch) into `out`, then run both on
    `check_clips` (uint8 [B, frames, 3, size, size]) against the PyTorch model."""
    model = Deployable(student, frames).prepare()
    example = torch.zeros(2, frames, 3, size, size, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    out.mkdir(parents=True, exist_ok=True)
    pt2, onnx_path = out / f"student-{frames}f.pt2", out / f"student-{frames}f.onnx"
    with discard_on_error(out / f".tmp-{os.getpid()}-{pt2.name}", pt2) as tmp:
        torch.export.save(program, tmp)
        publish(tmp, pt2)
    with discard_on_error(out / f".tmp-{os.getpid()}-{onnx_path.name}", onnx_path) as tmp:
        for name in ("onnx_ir", "onnxscript"):  # their passes log every step at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
            torch.onnx.export(
                model, (example,), str(tmp), dynamo=True, dynamic_shapes=({0: batch},), verbose=False, external_data=False
            )
        publish(tmp, onnx_path)
    with torch.no_grad():
        expected = model(check_clips)
        from_program = torch.export.load(pt2).module()(check_clips)
    from_onnx = onnx_session(onnx_path, threads=0).run(None, {"clips": check_clips.numpy()})[0]
    return Exported(
        frames,
        onnx_path,
        pt2,
        onnx_diff=float(np.abs(from_onnx - expected.numpy()).max()),
        program_diff=float((from_program - expected).abs().max()),
    )


def onnx_session(path: Path, *, threads: int):
    """An onnxruntime CPU session; threads 0: all of this process's CPUs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _median_ms(call, *, runs: int, sync=lambda: None) -> float:
    for _ in range(3):
        call()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def latency(student: nn.Module, onnx_path: Path, *, frames: int, size: int, runs: int) -> dict[str, float | None]:
    """Median milliseconds per batch-1 clip: onnxruntime on 1 and on all CPU threads, PyTorch on the GPU
    (eager, bf16 autocast; None without CUDA)."""
    clip = np.random.default_rng(0).integers(0, 256, (1, frames, 3, size, size), dtype=np.uint8)
    result: dict[str, float | None] = {}
    for threads, key in ((1, "onnx_cpu_1_thread"), (0, "onnx_cpu_all_threads")):
        session = onnx_session(onnx_path, threads=threads)
        result[key] = _median_ms(lambda s=session: s.run(None, {"clips": clip}), runs=runs)
    result["cpu_threads"] = len(os.sched_getaffinity(0))
    result["torch_gpu"] = None
    if torch.cuda.is_available():
        model = Deployable(student, frames).prepare().cuda()
        x = torch.from_numpy(clip).cuda()

        def run() -> None:
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                model(x)

        result["torch_gpu"] = _median_ms(run, runs=runs, sync=torch.cuda.synchronize)
        model.cpu()
    return result
