"""Microbenchmark of the SSD loss: the Triton kernels against the torch reference (`ssd_ds.loss.ssd_loss`), eager and
under torch.compile.

Modes: `fwd` (the loss) and `fwd+bwd` (the loss and the gradients of locs and logits, as in training).
Inputs: bf16 locs and logits in the model's layout (transposed views of [B,4,A] and [B,C,A]; `--layout contiguous`
for [B,A,4] / [B,A,C]), fp32 loc_t, int64 labels with 1-150 positives per image; A = 8732, C = 81.
Bytes counted: the forward reads logits, locs, loc_t and labels once; the backward reads them once more and writes
the two gradients. fwd = L + P + T + Y, fwd+bwd = 3 (L + P) + 2 (T + Y).

    python -m ssd_ds.bench loss [--batches 32 256] [--out results/bench/bench_loss.csv]
"""

from __future__ import annotations

import argparse

import torch

from ssd_ds.bench.kernels import common

A, C = common.A_SSD300, common.C_COCO

NAME = "bench_loss"  # of the CSV and of the refusal line
HELP = "Triton SSD loss against the torch reference, eager and compiled (CUDA GPU)"


def make_targets(B: int) -> tuple[torch.Tensor, torch.Tensor]:
    """loc_t [B,A,4] fp32 and labels_t [B,A] with 1-150 positives per image (COCO-like)."""
    dev = common.DEVICE
    loc_t = torch.randn(B, A, 4, device=dev)
    labels_t = torch.zeros(B, A, dtype=torch.long, device=dev)
    for b in range(B):
        n = int(torch.randint(1, 151, ()))
        labels_t[b, torch.randperm(A, device=dev)[:n]] = torch.randint(1, C, (n,), device=dev)
    return loc_t, labels_t


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_arguments(parser, NAME, layouts=True)


def run(args: argparse.Namespace) -> None:
    common.require_gpu(NAME)
    from ssd_ds.loss import ssd_loss as ssd_loss_reference
    from triton_kernels.loss import ssd_loss

    losses = common.providers(ssd_loss, ssd_loss_reference)
    report = common.Report(args.out)
    for B in args.batches:
        locs, logits = common.model_outputs(B, args.layout)
        loc_t, labels_t = make_targets(B)
        L, P = logits.numel() * logits.element_size(), locs.numel() * locs.element_size()
        T, Y = loc_t.numel() * 4, labels_t.numel() * 8
        fields = dict(op="ssd_loss", B=B, A=A, C=C, dtype="bfloat16", layout=args.layout)
        report.time_providers(
            {p: (lambda f=f: f(locs, logits, loc_t, labels_t)) for p, f in losses.items()},
            L + P + T + Y, args.rep, mode="fwd", **fields,
        )
        leaves = [locs.detach().requires_grad_(), logits.detach().requires_grad_()]
        report.time_providers(
            {p: (lambda f=f: f(*leaves, loc_t, labels_t).backward()) for p, f in losses.items()},
            3 * (L + P) + 2 * (T + Y), args.rep, grad_to_none=leaves, mode="fwd+bwd", **fields,
        )
    report.write()


if __name__ == "__main__":
    common.run_alone(NAME, __doc__, add_arguments, run)
