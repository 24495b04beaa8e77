"""The MLPerf SSD schedule: the learning rate (SPEC section 7: base-LR rule, linear warmup per iteration from the
warmup factor, x decay_factor at the start of each boundary epoch) and the evaluations with the blocks they make.
"""

from __future__ import annotations

from dataclasses import dataclass

LR_UNIT = 2.5e-3  # the base-LR rule rounds to multiples of this (SPEC section 7)
LR_BATCH_UNIT = 32  # lr_per_32 is per this many images


def base_lr(lr_per_32: float, global_batch: int) -> float:
    """2.5e-3 x round((lr_per_32 / 2.5e-3) x global_batch / 32): 0.09 for 3.2e-3 at batch 912 (NVIDIA's `--lr`)."""
    return LR_UNIT * round((lr_per_32 / LR_UNIT) * global_batch / LR_BATCH_UNIT)


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


@dataclass(frozen=True)
class EvalSchedule:
    """When the run evaluates, and the MLPerf blocks that follows from it (SPEC section 8: a block is the epochs
    between two evaluations, logged with block_start/block_stop)."""

    eval_epochs: tuple[int, ...]  # evaluate after these 1-based epochs ...
    eval_every: int  # ... then every this many epochs after the last of them
    epochs: int  # and after the last epoch of the schedule

    def evaluates_after(self, epoch: int) -> bool:
        """Whether the run evaluates once 1-based `epoch` is complete."""
        if epoch in self.eval_epochs or epoch == self.epochs:
            return True
        last = max(self.eval_epochs, default=0)
        return epoch > last and (epoch - last) % self.eval_every == 0

    def block_starts(self, epoch: int) -> bool:
        """Whether a block starts with `epoch`: the first epoch, and every epoch after an evaluation."""
        return epoch == 1 or self.evaluates_after(epoch - 1)

    def block_first(self, epoch: int) -> int:
        """The first epoch of the block holding `epoch`."""
        first = epoch
        while first > 1 and not self.evaluates_after(first - 1):
            first -= 1
        return first

    def block_length(self, epoch: int) -> int:
        """Epochs in the block that starts with `epoch`, up to and including its evaluation."""
        last = epoch
        while not self.evaluates_after(last):
            last += 1
        return last - epoch + 1
