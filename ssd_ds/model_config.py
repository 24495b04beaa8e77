"""Typed model configuration and its named presets.

`mlperf()` is the exact MLPerf v0.7 SSD300-ResNet34 (SPEC sections 1-2). `cpu_small()` is a model of the same
family (ResNet basic-block trunk with a stride-1 layer3, conv extra blocks, per-level loc/conf heads) that is
narrow and takes 128x128 inputs, so that it trains to a useful mAP on two CPU cores in minutes; `cpu_160()` and
`cpu_160_s4()` (a stride-4 level for small objects) are its larger kin for one's own data.
Default boxes of every preset other than `mlperf` are derived from the model's own feature-map sizes; their scales
can be replaced by ones fitted to a data set (`build_model_config(anchor_scales=...)`, the trainer's --anchor_scales;
`python -m ssd_ds.data.check --fit` proposes them). The `mlperf` preset's 8732 boxes are the benchmark's and stay so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ssd_ds.anchors import AnchorConfig
from ssd_ds.errors import BadInput


@dataclass(frozen=True)
class ExtraBlock:
    """One extra feature block: conv1x1(bias) -> ReLU -> conv3x3(bias) -> ReLU (SPEC section 1)."""

    mid: int  # channels after the 1x1 conv
    out: int  # channels after the 3x3 conv
    stride: int  # stride of the 3x3 conv
    padding: int  # padding of the 3x3 conv


@dataclass(frozen=True)
class ModelConfig:
    """The SSD model: trunk, extra blocks, heads and default boxes."""

    name: str  # preset name, recorded with every run
    input_size: int  # square input side in pixels
    num_classes: int = 81  # classes including background at index 0
    stem_width: int = 64  # channels of conv1 (7x7, stride 2)
    widths: tuple[int, int, int] = (64, 128, 256)  # channels of layer1, layer2, layer3
    depths: tuple[int, int, int] = (3, 4, 6)  # basic blocks in layer1, layer2, layer3
    extras: tuple[ExtraBlock, ...] = ()  # extra feature blocks after the trunk
    anchors: AnchorConfig | None = None  # default boxes; derived from the feature sizes when None
    extra_norm: bool = False  # BatchNorm after each conv of the extra blocks (SPEC's model has none)
    stride4_width: int = 0  # channels of a stride-4 level from layer1 plus the upsampled trunk output (0: none)

    def __post_init__(self) -> None:
        if self.anchors is None:
            object.__setattr__(self, "anchors", derive_anchors(self.input_size, feature_sizes(self),
                                                               stride4=bool(self.stride4_width)))
        if tuple(self.anchors.feat_sizes) != feature_sizes(self):
            raise ValueError(
                f"ModelConfig {self.name!r}: anchor feature sizes {self.anchors.feat_sizes} do not match "
                f"the model's feature maps {feature_sizes(self)} at input {self.input_size}"
            )


def _conv_out(n: int, kernel: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - kernel) // stride + 1


def feature_sizes(cfg: ModelConfig) -> tuple[int, ...]:
    """Side of every feature map the heads see, from the layer arithmetic (trunk stride 8, then the extras)."""
    n = _conv_out(cfg.input_size, 7, 2, 3)  # conv1
    n = _conv_out(n, 3, 2, 1)  # maxpool
    stride4 = n  # layer1 keeps the maxpool's stride 4
    n = _conv_out(n, 3, 2, 1)  # layer2's first block; layer3 keeps stride 1 (SPEC section 1)
    if cfg.stride4_width and stride4 != 2 * n:  # the trunk's output is upsampled 2x onto layer1's
        raise ValueError(f"ModelConfig {cfg.name!r}: a stride-4 level needs an input side divisible by 8, "
                         f"got {cfg.input_size}")
    sizes = [stride4, n] if cfg.stride4_width else [n]
    for block in cfg.extras:
        n = _conv_out(n, 3, block.stride, block.padding)
        sizes.append(n)
    return tuple(sizes)


STRIDE4_SCALE = 0.04  # smallest default box of a stride-4 level, a share of the input side (the best coverage of
#                       0.03-0.07 on the hard synthetic set's boxes, BENCHMARKS.md "Your own data")


def derive_anchors(
    fig_size: int,
    feat_sizes: tuple[int, ...],
    scale_fractions: tuple[float, ...] | None = None,
    aspect_ratios: tuple[tuple[int, ...], ...] | None = None,
    stride4: bool = False,
) -> AnchorConfig:
    """Default boxes for a model other than the benchmark's: one step per feature cell, scales as in the SSD paper.

    Scales default to the SSD paper's linear rule from 0.1 to 0.95 of the input (one more than levels); aspect
    ratios default to [2] on the first and last level and [2, 3] between, as in SPEC section 2. With `stride4` the
    first of `feat_sizes` is a stride-4 level (ModelConfig.stride4_width): the others get those defaults as if it were
    absent, and it gets the two square boxes only, from STRIDE4_SCALE of the input to the next level's first scale.
    """
    n = len(feat_sizes)
    if stride4:  # the stride-4 level: its own smaller scale and the two square boxes only, before the usual levels
        rest = derive_anchors(fig_size, feat_sizes[1:])
        scale_fractions = scale_fractions or (STRIDE4_SCALE,) + tuple(s / fig_size for s in rest.scales)
        aspect_ratios = aspect_ratios or ((),) + rest.aspect_ratios
    if scale_fractions is None:
        scale_fractions = tuple(0.1 + (0.95 - 0.1) * k / n for k in range(n + 1))
    if aspect_ratios is None:
        aspect_ratios = tuple((2,) if k in (0, n - 1) else (2, 3) for k in range(n))
    return AnchorConfig(
        fig_size=fig_size,
        feat_sizes=tuple(feat_sizes),
        steps=tuple(fig_size / f for f in feat_sizes),
        scales=tuple(s * fig_size for s in scale_fractions),
        aspect_ratios=tuple(tuple(a) for a in aspect_ratios),
    )


def mlperf(num_classes: int = 81) -> ModelConfig:
    """The benchmark model: SSD300, ResNet-34 trunk, five extra blocks, 8732 default boxes (SPEC sections 1-2)."""
    return ModelConfig(
        name="mlperf",
        input_size=300,
        num_classes=num_classes,
        extras=(
            ExtraBlock(256, 512, 2, 1),
            ExtraBlock(256, 512, 2, 1),
            ExtraBlock(128, 256, 2, 1),
            ExtraBlock(128, 256, 1, 0),
            ExtraBlock(128, 256, 1, 0),
        ),
        anchors=AnchorConfig(
            fig_size=300,
            feat_sizes=(38, 19, 10, 5, 3, 1),
            steps=(8, 16, 32, 64, 100, 300),
            scales=(21, 45, 99, 153, 207, 261, 315),
            aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
        ),
    )


def cpu_small(num_classes: int = 81) -> ModelConfig:
    """A narrow SSD of the same family at 128x128 input: feature maps 16, 8, 4, 2, 1; about 1 M parameters."""
    return ModelConfig(
        name="cpu_small",
        input_size=128,
        num_classes=num_classes,
        stem_width=32,
        widths=(32, 64, 128),
        depths=(1, 2, 2),
        extras=(
            ExtraBlock(64, 128, 2, 1),
            ExtraBlock(64, 128, 2, 1),
            ExtraBlock(64, 128, 2, 1),
            ExtraBlock(64, 128, 2, 1),
        ),
    )


def cpu_160(num_classes: int = 81) -> ModelConfig:
    """cpu_small's trunk at 160x160 input with BatchNorm in its extra blocks: feature maps 20, 10, 5, 3, 2 and 2420
    default boxes, for one's own data (the `custom` run preset). Both changes were measured on the hard synthetic
    set (BENCHMARKS.md, "Your own data"): the larger input puts more default boxes on small objects, the
    normalised extras learn faster from random initialisation."""
    return replace(cpu_small(num_classes), name="cpu_160", input_size=160, extra_norm=True, anchors=None)


def cpu_160_s4(num_classes: int = 81) -> ModelConfig:
    """cpu_160 with a stride-4 level for small objects (`ModelConfig.stride4_width`, 32 channels): feature maps 40,
    20, 10, 5, 3, 2 and 5620 default boxes, the 40 x 40 level's two square boxes starting at 6.4 px, for one's own
    data (the `custom` run preset). On the hard synthetic set it raised default-box coverage of COCO-small boxes from
    17% to 56% and their AP from 0.15 to 0.21, for about 10% more compute than cpu_160 (BENCHMARKS.md, "Your own
    data"); 64 channels cost 40% more and learned no better."""
    return replace(cpu_160(num_classes), name="cpu_160_s4", stride4_width=32, anchors=None)


MODEL_PRESETS = {"mlperf": mlperf, "cpu_small": cpu_small, "cpu_160": cpu_160, "cpu_160_s4": cpu_160_s4}


def build_model_config(name: str, num_classes: int = 81, anchor_scales: tuple[float, ...] | None = None) -> ModelConfig:
    """A preset by name, for a data set of `num_classes` classes (background included).

    `anchor_scales` (pixels of the input, one more than the feature levels) replaces the preset's default-box scales;
    None or empty keeps them. The boxes per location, so the heads' shapes, do not change. The `mlperf` preset
    refuses them: its default boxes are the benchmark's (SPEC section 2)."""
    if name not in MODEL_PRESETS:
        raise BadInput(f"unknown model preset {name!r}; choose from {sorted(MODEL_PRESETS)}")
    cfg = MODEL_PRESETS[name](num_classes=num_classes)
    if not anchor_scales:
        return cfg
    if name == "mlperf":
        raise BadInput(f"--anchor_scales: the mlperf model keeps the benchmark's {cfg.anchors.num_anchors} default "
                       "boxes (SPEC section 2); fitted scales are for the other presets")
    levels = len(cfg.anchors.feat_sizes)
    if len(anchor_scales) != levels + 1:
        raise BadInput(f"--anchor_scales: model {name} has {levels} feature levels, so it takes {levels + 1} scales "
                       f"(pixels of its {cfg.input_size}px input), got {len(anchor_scales)}")
    if not all(math.isfinite(s) and s > 0 for s in anchor_scales):
        raise BadInput(f"--anchor_scales: scales are positive pixel sizes, got {tuple(anchor_scales)}")
    return replace(cfg, anchors=replace(cfg.anchors, scales=tuple(float(s) for s in anchor_scales)))
