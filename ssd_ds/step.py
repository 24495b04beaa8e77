"""The training step's module: model + loss, the unit torch.compile traces and DeepSpeed drives.

Kept apart from the trainer so that benchmarks and compile checks use it without DeepSpeed, MLPerf logging or
pycocotools installed.
"""

from __future__ import annotations

import torch

from ssd_ds.loss import localisation_loss


class SSDTrainStep(torch.nn.Module):
    """Model + loss as one module, so torch.compile sees the whole forward and DeepSpeed drives it.

    `loss_fn` is the torch reference or the Triton kernel (ssd_ds.device_ops). Returns (loss, loc part, conf
    part); the parts are for logging only, the loc part recomputed outside autograd (elementwise, cheap).
    """

    def __init__(self, model: torch.nn.Module, loss_fn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, images, loc_t, labels_t):
        locs, logits = self.model(images)
        loss = self.loss_fn(locs, logits, loc_t, labels_t)
        with torch.no_grad():
            loc = localisation_loss(locs, loc_t, labels_t)
        return loss, loc, loss.detach() - loc
