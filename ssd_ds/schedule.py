"""The MLPerf SSD learning-rate schedule (SPEC section 7): base-LR rule, linear warmup per iteration from the
warmup factor, x decay_factor at the start of each boundary epoch.
"""

from __future__ import annotations

LR_UNIT = 2.5e-3  # the base-LR rule rounds to multiples of this (SPEC section 7)
LR_BATCH_UNIT = 32  # lr_arg is per this many images


def base_lr(lr_arg: float, global_batch: int) -> float:
    """2.5e-3 x round((lr_arg / 2.5e-3) x global_batch / 32): 0.09 for lr_arg 3.2e-3 at batch 912."""
    return LR_UNIT * round((lr_arg / LR_UNIT) * global_batch / LR_BATCH_UNIT)


def lr_factor(
    iteration: int,
    iters_per_epoch: int,
    warmup_iters: int,
    warmup_factor: float,
    decay_epochs: tuple[int, ...],
    decay_factor: float,
) -> float:
    """Multiplier of the base LR at optimizer step `iteration` (0-based).

    Warmup: factor + (1 - factor) * it / W for it < W (SPEC: factor 0, so lr = base * it / W).
    Decay: x decay_factor for every boundary e with it >= e * iters_per_epoch, i.e. once e epochs are complete
    (NVIDIA's iteration boundaries; "the start of epoch e" counting epochs from 0).
    """
    factor = 1.0
    if iteration < warmup_iters:
        factor = warmup_factor + (1.0 - warmup_factor) * iteration / warmup_iters
    for epoch in decay_epochs:
        if iteration >= epoch * iters_per_epoch:
            factor *= decay_factor
    return factor
