"""TSM: a ResNet whose blocks shift 1/8 of the channels one frame back and 1/8 one frame forward.

The shift sits at the start of each block's residual branch (before its first conv), so the
identity path keeps the frame's own features. Ends are zero-padded; the shift makes a new tensor
(no in-place update). Frame logits are averaged over time (average consensus).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet

from pipeline.accel import shift_kernel
from pipeline.config import StudentConfig
from pipeline.models.base import (
    StudentOutput,
    VideoStudent,
    WeightsError,
    cached_or_download,
    classifier,
    load_backbone_weights,
    project_checkpoint,
)
from pipeline.models.flexible import alter_before, specialise_norms
from pipeline.models.layout import load_tsm_backbone


def _shifted(x: torch.Tensor, num_frames: int, fold_div: int, *, backward: bool) -> torch.Tensor:
    """One read and one write: the first fold from frame t+1 and the second from t-1 (`backward`:
    the other way round, which is the forward shift's adjoint), the rest as it is, ends zero."""
    nt, c, h, w = x.shape
    fold = c // fold_div
    if shift_kernel.usable(x):  # one pass in memory order instead of five strided copies and fills
        return shift_kernel.shift_frames(x, frames=num_frames, fold=fold, sign=-1 if backward else 1)
    src = x.reshape(nt // num_frames, num_frames, c, h, w)
    out = torch.empty_like(x)  # keeps channels_last
    dst = out.view(nt // num_frames, num_frames, c, h, w)
    ahead, behind = (slice(fold, 2 * fold), slice(0, fold)) if backward else (slice(0, fold), slice(fold, 2 * fold))
    dst[:, :-1, ahead] = src[:, 1:, ahead]
    dst[:, -1, ahead] = 0
    dst[:, 1:, behind] = src[:, :-1, behind]
    dst[:, 0, behind] = 0
    dst[:, :, 2 * fold :] = src[:, :, 2 * fold :]
    return out


class _Shift(torch.autograd.Function):
    """The shift with its adjoint as backward: autograd through slice assignments would build a
    zero tensor of the input's size per slice and add them up."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, num_frames: int, fold_div: int) -> torch.Tensor:
        ctx.num_frames, ctx.fold_div = num_frames, fold_div
        return _shifted(x, num_frames, fold_div, backward=False)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _shifted(grad, ctx.num_frames, ctx.fold_div, backward=True), None, None


def pointwise_shift(x: torch.Tensor, num_frames: int, fold_div: int = 8) -> torch.Tensor:
    """The same shift as one elementwise expression (roll and select), which the compiler fuses
    into the kernels around it, forward and backward; eager it would cost several copies."""
    nt, c, h, w = x.shape
    fold = c // fold_div
    v = x.view(nt // num_frames, num_frames, c, h, w)
    channel = torch.arange(c, device=x.device).view(1, 1, c, 1, 1)
    frame = torch.arange(num_frames, device=x.device).view(1, num_frames, 1, 1, 1)
    zero = v.new_zeros(())
    ahead = torch.where(frame < num_frames - 1, torch.roll(v, -1, 1), zero)
    behind = torch.where(frame > 0, torch.roll(v, 1, 1), zero)
    out = torch.where(channel < fold, ahead, torch.where(channel < 2 * fold, behind, v))
    return out.reshape(nt, c, h, w)


def temporal_shift(x: torch.Tensor, num_frames: int, fold_div: int = 8) -> torch.Tensor:
    """[N*T, C, H, W] -> a new tensor of that shape, channels [0, C/8) taken from t+1, [C/8, C/4) from t-1."""
    if torch.compiler.is_compiling():
        return pointwise_shift(x, num_frames, fold_div)
    return _Shift.apply(x, num_frames, fold_div)


class TemporalShift(nn.Module):
    """Shift, then the wrapped conv; the model sets the clip's frame count before each forward."""

    def __init__(self, conv: nn.Module, fold_div: int = 8):
        super().__init__()
        self.conv, self.fold_div, self.num_frames = conv, fold_div, 1

    def set_frames(self, frames: int) -> None:
        """Shift within clips of `frames` frames."""
        self.num_frames = frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(temporal_shift(x, self.num_frames, self.fold_div))


class TSM(VideoStudent):
    """ResNet with temporal shift, average consensus, a classifier and a feature projection."""

    def __init__(self, backbone: resnet.ResNet, cfg: StudentConfig, num_classes: int):
        super().__init__()
        width = backbone.fc.in_features
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.dropout = nn.Dropout(cfg.dropout)
        self.per_frame = cfg.dropout_at == "frame"
        self.fc = classifier(width, num_classes, cfg.fc_init_std)
        self.proj = nn.Linear(width, cfg.feature_dim)

    def forward_clip(self, clips: torch.Tensor) -> StudentOutput:
        """clips [B, T, 3, H, W] -> logits [B, C], feature [B, D], frame features [B, T, D]."""
        b, t = clips.shape[:2]
        frames = self.backbone(self.frames(clips)).view(b, t, -1)  # [B, T, width]
        pooled = frames.mean(1)  # average consensus (the fc is linear: equal to averaging frame logits)
        # per frame, TSM's place: each frame drops its own units before the (shared) fc
        dropped = self.dropout(frames).mean(1) if self.per_frame else self.dropout(pooled)
        projected = self.proj(frames)  # linear: its mean over frames is the projection of the pooled feature
        return StudentOutput(self.fc(dropped), projected.mean(1), projected)


def add_shifts(net: resnet.ResNet, fold_div: int = 8, counts: list[int] | None = None) -> resnet.ResNet:
    """Wrap the first conv of every residual block's branch with a temporal shift; with several
    trained frame counts (FFN), a per-count weight alteration between the shift and the conv, and
    per-count BatchNorms throughout."""
    flexible = counts is not None and len(counts) > 1
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in layer:
            if flexible:
                alter_before(block, "conv1", block.conv1.in_channels, counts)
            block.conv1 = TemporalShift(block.conv1, fold_div)
    if flexible:
        specialise_norms(net, counts)
    return net


def _imagenet_state(tag: str) -> dict:
    """torchvision's ResNet-50 IMAGENET1K_V1, the weights TSM and mmaction2 start from (not V2)."""
    if tag != "imagenet":
        raise WeightsError(f"student.pretrained={tag!r}: not a file, and the only tag is 'imagenet'")
    weights = resnet.ResNet50_Weights.IMAGENET1K_V1
    name = weights.url.rsplit("/", 1)[1]
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return cached_or_download(
        cache / name,
        lambda: weights.get_state_dict(progress=False),
        what=f"torchvision's ResNet-50 IMAGENET1K_V1 ({name})",
        place=f"{name} (from {weights.url}) in {cache}/",
    )


def build_tsm(cfg: StudentConfig, num_classes: int, depth: int, counts: list[int] | None = None) -> TSM:
    """TSM on ResNet-50 (depth 50) or a one-block-per-stage ResNet-10 (depth 10, for tests); a
    `student.pretrained` checkpoint of this project (trained or imported) gives its backbone."""
    if depth == 50:
        net = resnet.ResNet(resnet.Bottleneck, [3, 4, 6, 3])
    else:
        net = resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1])
    saved = project_checkpoint(cfg.pretrained)
    if saved is None:  # loaded before the shifts wrap conv1, so torchvision/timm keys match
        load_backbone_weights(net, cfg.pretrained, _imagenet_state)
    model = TSM(add_shifts(net, counts=counts), cfg, num_classes)
    if saved is not None:  # a student of this project (trained or imported): matched name by name
        load_tsm_backbone(model, saved, counts or [cfg.num_frames], source=cfg.pretrained)
    return model
