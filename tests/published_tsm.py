"""Stand-ins for two published TSM implementations, built from their model definitions' structure
(module names, where the shift and the per-count parts sit), so their state dicts carry the
published key names and their forward is theirs, not this project's:

- mit-han-lab/temporal-shift-module: a torchvision ResNet whose blocks' conv1 is wrapped by a shift
  module holding it as `.net`, inside a TSN module (`base_model`, the classifier `new_fc` after a
  dropout that replaced `base_model.fc`, average consensus over frames), inside DataParallel
  (`module.`).
- BeSpontaneous/FFN: the same TSN around a ResNet with a BatchNorm per frame count (`bn1_4`,
  `bn1_8`, `bn1_16`, `downsample_bn_<n>`), one `downsample_conv`, and per-count depthwise
  `adaconv_<n>` added to the shifted input of each block's conv1.

Only the evaluation path at one frame count is written; the ResNet is one BasicBlock per stage,
as `tsm_tiny` (mit-han-lab's also ResNet-50, as `tsm_r50`).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet


def shift(x: torch.Tensor, frames: int, fold_div: int = 8) -> torch.Tensor:
    """Both repositories' shift: the first fold from the next frame, the second from the previous, zero ends."""
    nt, c, h, w = x.shape
    v = x.view(nt // frames, frames, c, h, w)
    fold = c // fold_div
    out = torch.zeros_like(v)
    out[:, :-1, :fold] = v[:, 1:, :fold]
    out[:, 1:, fold : 2 * fold] = v[:, :-1, fold : 2 * fold]
    out[:, :, 2 * fold :] = v[:, :, 2 * fold :]
    return out.view(nt, c, h, w)


class Shifted(nn.Module):
    """mit-han-lab's TemporalShift: shift, then the wrapped module `net`."""

    def __init__(self, net: nn.Module, frames: int):
        super().__init__()
        self.net, self.frames = net, frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(shift(x, self.frames))


class TSN(nn.Module):
    """base_model per frame, new_fc, average over the frames."""

    def __init__(self, base_model: nn.Module, width: int, num_classes: int, frames: int):
        super().__init__()
        self.base_model, self.frames = base_model, frames
        self.base_model.fc = nn.Dropout(0.5)
        self.new_fc = nn.Linear(width, num_classes)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        b = clips.shape[0]
        return self.new_fc(self.base_model(clips.flatten(0, 1))).view(b, self.frames, -1).mean(1)


class DataParallelNames(nn.Module):
    """What DataParallel adds to the names: `module.`."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.module(clips)


def mit_han_lab_tsm(num_classes: int, frames: int, depth: int = 10) -> nn.Module:
    """TSM (blockres shift, 1/8) on a one-block-per-stage torchvision ResNet, or ResNet-50 (`depth` 50)."""
    if depth == 50:
        net, width = resnet.resnet50(), 2048
    else:
        net, width = resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1]), 512
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in layer:
            block.conv1 = Shifted(block.conv1, frames)
    return DataParallelNames(TSN(net, width, num_classes, frames))


class FFNBlock(nn.Module):
    """FFN's BasicBlock at one count `n`: shift, + adaconv_n, conv1, bn1_n, relu, conv2, bn2_n, + shortcut, relu."""

    def __init__(self, inplanes: int, planes: int, stride: int, counts: list[int], frames: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.relu, self.frames, self.count = nn.ReLU(), frames, _nearest(counts, frames)
        for n in counts:
            setattr(self, f"bn1_{n}", nn.BatchNorm2d(planes))
            setattr(self, f"bn2_{n}", nn.BatchNorm2d(planes))
            setattr(self, f"adaconv_{n}", nn.Conv2d(inplanes, inplanes, 1, groups=inplanes, bias=False))
        self.downsample_conv = None
        if stride != 1 or inplanes != planes:
            self.downsample_conv = nn.Conv2d(inplanes, planes, 1, stride, bias=False)
            for n in counts:
                setattr(self, f"downsample_bn_{n}", nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.count
        out = shift(x, self.frames)
        out = out + getattr(self, f"adaconv_{n}")(out)
        out = self.relu(getattr(self, f"bn1_{n}")(self.conv1(out)))
        out = getattr(self, f"bn2_{n}")(self.conv2(out))
        identity = x if self.downsample_conv is None else getattr(self, f"downsample_bn_{n}")(self.downsample_conv(x))
        return self.relu(out + identity)


class FFNResNet(nn.Module):
    """FFN's ResNet at one count: conv1, bn1_n, relu, maxpool, the layers, average pool, fc."""

    def __init__(self, counts: list[int], frames: int):
        super().__init__()
        self.count = _nearest(counts, frames)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        for n in counts:
            setattr(self, f"bn1_{n}", nn.BatchNorm2d(64))
        self.relu, self.maxpool = nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        widths, inplanes = [64, 128, 256, 512], 64
        for i, planes in enumerate(widths):
            setattr(self, f"layer{i + 1}", nn.Sequential(FFNBlock(inplanes, planes, 1 if i == 0 else 2, counts, frames)))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(getattr(self, f"bn1_{self.count}")(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def ffn_tsm(num_classes: int, counts: list[int], frames: int) -> nn.Module:
    """FFN's TSM evaluated at `frames` (its norms and alteration: the nearest trained count, ties to the larger)."""
    return DataParallelNames(TSN(FFNResNet(counts, frames), 512, num_classes, frames))


def _nearest(counts: list[int], frames: int) -> int:
    return min(counts, key=lambda c: (abs(c - frames), -c))
