"""Forward/backward smoke of the CPU preset on generated images: prints the loss as it falls.

`python -m ssd_ds.smoke [--steps N]`. Images are noise with a few bright rectangles whose boxes are the targets.
"""

from __future__ import annotations

import argparse
import time

import torch

from ssd_ds.anchors import default_boxes_ltrb
from ssd_ds.box_coder import BoxCoder
from ssd_ds.config import cpu_small
from ssd_ds.loss import ssd_loss
from ssd_ds.model import build_model


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


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    cfg = cpu_small(num_classes=4)
    model = build_model(cfg)
    coder = BoxCoder(default_boxes_ltrb(cfg.anchors))
    images, boxes, labels = generated_batch(args.batch, cfg.input_size, cfg.num_classes, torch.Generator().manual_seed(0))
    targets = [coder.encode(b, l) for b, l in zip(boxes, labels)]
    loc_t = torch.stack([t[0] for t in targets])
    labels_t = torch.stack([t[1] for t in targets])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    start = time.perf_counter()
    losses = []
    for step in range(args.steps):
        locs, logits = model(images)
        loss = ssd_loss(locs, logits, loc_t, labels_t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 5 == 0 or step == args.steps - 1:
            print(f"step {step:3d}  loss {loss.item():.4f}")
    print(f"{args.steps} steps of batch {args.batch} in {time.perf_counter() - start:.1f} s")
    return losses


if __name__ == "__main__":
    from ssd_ds.cli import run_cli

    run_cli(main)
