"""Plain-PyTorch training steps of the CPU preset on generated images (no DeepSpeed, no data set): the smallest
check that the model and loss learn, and generated batches for kernel tests. Images are noise with a few bright
rectangles whose boxes are the targets."""

from __future__ import annotations

import torch

from ssd_ds.anchors import default_boxes_ltrb
from ssd_ds.box_coder import BoxCoder
from ssd_ds.loss import ssd_loss
from ssd_ds.model import build_model
from ssd_ds.model_config import cpu_small


def generated_batch(batch: int, size: int, num_classes: int, generator: torch.Generator):
    """Noise images with one filled rectangle per class-coloured object; boxes in relative ltrb."""
    images = torch.rand(batch, 3, size, size, generator=generator) * 0.2
    boxes, labels = [], []
    for b in range(batch):
        n = int(torch.randint(1, 4, (1,), generator=generator))
        xy = torch.rand(n, 2, generator=generator) * 0.6
        wh = 0.15 + torch.rand(n, 2, generator=generator) * 0.25
        ltrb = torch.cat([xy, xy + wh], dim=1).clamp(0, 1)
        lab = torch.randint(1, num_classes, (n,), generator=generator)
        for (l, t, r, btm), c in zip((ltrb * size).long().tolist(), lab.tolist()):
            images[b, c % 3, t:btm, l:r] = 1.0
        boxes.append(ltrb)
        labels.append(lab)
    return images, boxes, labels


def train_steps(steps: int = 30, batch: int = 8) -> list[float]:
    """The loss of each of `steps` SGD steps on one generated batch."""
    torch.manual_seed(0)
    cfg = cpu_small(num_classes=4)
    model = build_model(cfg)
    coder = BoxCoder(default_boxes_ltrb(cfg.anchors))
    images, boxes, labels = generated_batch(batch, cfg.input_size, cfg.num_classes, torch.Generator().manual_seed(0))
    targets = [coder.encode(b, lab) for b, lab in zip(boxes, labels)]
    loc_t = torch.stack([t[0] for t in targets])
    labels_t = torch.stack([t[1] for t in targets])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(steps):
        locs, logits = model(images)
        loss = ssd_loss(locs, logits, loc_t, labels_t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
