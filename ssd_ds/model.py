"""SSD with a ResNet basic-block trunk (SPEC section 1), plain single-device PyTorch.

`SSD(cfg)(images[B,3,S,S]) -> (locs[B,A,4], logits[B,A,C])`, fixed shapes. The trunk keeps torchvision's module
names (conv1, bn1, layer1..layer3), so a torchvision `resnet34` state dict loads onto the MLPerf preset one to one.
Anchor order is the reference's: within a level, index `d*H*W + i*W + j` (default box d, row i, column j), conv
channel `coord*nd + d` (SPEC section 1), so reference weights map onto ours without permutation.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from ssd_ds.errors import BadInput, NotFound
from ssd_ds.model_config import ModelConfig

RESNET34_FILE = "resnet34-333f7ec4.pth"


def _layer(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
        )
    layers = [BasicBlock(in_ch, out_ch, stride=stride, downsample=downsample)]
    layers += [BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNetTrunk(nn.Module):
    """torchvision ResNet cut after layer3, with layer3's first block (3x3 conv and 1x1 downsample) at stride 1."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w1, w2, w3 = cfg.widths
        d1, d2, d3 = cfg.depths
        self.conv1 = nn.Conv2d(3, cfg.stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _layer(cfg.stem_width, w1, d1, stride=1)
        self.layer2 = _layer(w1, w2, d2, stride=2)
        self.layer3 = _layer(w2, w3, d3, stride=1)  # SSD modification: output stride 8
        self.out_channels = w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)[1]

    def stages(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(layer1's output at stride 4, layer3's at stride 8)."""
        c1 = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        return c1, self.layer3(self.layer2(c1))


class Stride4Level(nn.Module):
    """A stride-4 feature level for small objects: layer1's output plus the trunk's output upsampled 2x (each through
    a 1x1 conv to `width` channels, as in a feature pyramid's top-down step), then conv3x3 -> BatchNorm -> ReLU."""

    def __init__(self, c1: int, c3: int, width: int):
        super().__init__()
        self.lateral = nn.Conv2d(c1, width, kernel_size=1)
        self.top_down = nn.Conv2d(c3, width, kernel_size=1)
        self.smooth = nn.Sequential(nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False),
                                    nn.BatchNorm2d(width), nn.ReLU(inplace=True))

    def forward(self, c1: torch.Tensor, c3: torch.Tensor) -> torch.Tensor:
        up = nn.functional.interpolate(self.top_down(c3), scale_factor=2.0, mode="nearest")
        return self.smooth(self.lateral(c1) + up)


def _extra(in_ch: int, mid: int, out: int, stride: int, padding: int, norm: bool = False) -> nn.Sequential:
    """conv1x1 -> ReLU -> conv3x3 -> ReLU with biases (SPEC section 1), or with `norm` each conv bias-free and followed
    by a BatchNorm (ModelConfig.extra_norm)."""
    def conv(c_in: int, c_out: int, **kw) -> list[nn.Module]:
        if norm:
            return [nn.Conv2d(c_in, c_out, bias=False, **kw), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        return [nn.Conv2d(c_in, c_out, **kw), nn.ReLU(inplace=True)]

    return nn.Sequential(*conv(in_ch, mid, kernel_size=1),
                         *conv(mid, out, kernel_size=3, stride=stride, padding=padding))


class SSD(nn.Module):
    """Trunk -> extra blocks -> per-level loc and conf heads (kept separate; SPEC allows fusing them)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.backbone = ResNetTrunk(cfg)
        channels = [self.backbone.out_channels]
        self.stride4 = None
        if cfg.stride4_width:
            self.stride4 = Stride4Level(cfg.widths[0], cfg.widths[2], cfg.stride4_width)
            channels.insert(0, cfg.stride4_width)
        extras = []
        for block in cfg.extras:
            extras.append(_extra(channels[-1], block.mid, block.out, block.stride, block.padding, cfg.extra_norm))
            channels.append(block.out)
        self.extras = nn.ModuleList(extras)
        nds = cfg.anchors.boxes_per_location
        self.loc = nn.ModuleList(nn.Conv2d(c, nd * 4, kernel_size=3, padding=1) for c, nd in zip(channels, nds))
        self.conf = nn.ModuleList(
            nn.Conv2d(c, nd * cfg.num_classes, kernel_size=3, padding=1) for c, nd in zip(channels, nds)
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # SPEC section 1: xavier_uniform on every weight with dim > 1 outside the backbone; biases keep defaults.
        for module in (self.extras, self.loc, self.conf, self.stride4):
            if module is None:
                continue
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B,3,S,S] -> locs [B,A,4], logits [B,A,C]."""
        if self.stride4 is None:
            x = self.backbone(images)
            features = [x]
        else:
            c1, x = self.backbone.stages(images)
            features = [self.stride4(c1, x), x]
        for block in self.extras:
            x = block(x)
            features.append(x)
        B = images.shape[0]
        # [B, nd*4, H, W] viewed as [B, 4, nd*H*W] (reference layout), levels concatenated along anchors.
        locs = torch.cat([head(f).reshape(B, 4, -1) for head, f in zip(self.loc, features)], dim=2)
        logits = torch.cat(
            [head(f).reshape(B, self.num_classes, -1) for head, f in zip(self.conf, features)], dim=2
        )
        return locs.transpose(1, 2), logits.transpose(1, 2)


def resolve_backbone_weights(spec: str) -> Path:
    """"imagenet" means torchvision's file in the torch hub cache; anything else is a path."""
    if spec == "imagenet":
        return Path(torch.hub.get_dir()) / "checkpoints" / RESNET34_FILE
    return Path(os.path.expanduser(spec))


def load_backbone_weights(trunk: ResNetTrunk, path: Path) -> None:
    """Load a torchvision resnet34 state dict strictly onto the trunk; layer4 and fc are dropped.

    Raises FileNotFoundError / ValueError naming the file when it is missing, unreadable (truncated, not a torch
    file) or does not hold exactly torchvision's resnet34 keys and shapes.
    """
    if not path.is_file():
        raise NotFound(
            f"backbone weights {path}: file not found; fetch it with scripts/data/download_resnet34.sh "
            f"or train from random init (--backbone_weights none)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle garbage, ...: all mean the same to the user
        raise BadInput(f"backbone weights {path}: cannot be read as a torch state dict ({exc})") from exc
    if not isinstance(state, dict):
        raise BadInput(f"backbone weights {path}: holds a {type(state).__name__}, expected a state dict")
    expected = torchvision.models.resnet34().state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise BadInput(
            f"backbone weights {path}: not a torchvision resnet34 state dict "
            f"(missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})"
        )
    trunk_state = {k: v for k, v in state.items() if not k.startswith(("layer4.", "fc."))}
    own = trunk.state_dict()
    wrong = [k for k, v in trunk_state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        raise BadInput(
            f"backbone weights {path}: shapes do not fit this trunk at {wrong[:3]}; "
            f"ImageNet weights fit only the mlperf preset's ResNet-34 widths"
        )
    trunk.load_state_dict(trunk_state, strict=True)


def build_model(cfg: ModelConfig, backbone_weights: str | None = None) -> SSD:
    """The SSD for `cfg`; `backbone_weights` (a torchvision resnet34 file, or "imagenet" for the hub cache) loaded
    onto its trunk, random init when None."""
    model = SSD(cfg)
    if backbone_weights:
        load_backbone_weights(model.backbone, resolve_backbone_weights(backbone_weights))
    return model
