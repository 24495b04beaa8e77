"""Microbenchmark of matching and encoding: the Triton kernels against the torch reference
(`ssd_ds.box_coder.encode_batch`), eager and under torch.compile.

Inputs: a padded batch of G box slots per image (`--slots`, default 128, the trainer's `max_boxes`, and 64, a COCO
batch's largest count rounded up as `ssd_ds.data.batch.box_slots` pads) with 1-G real boxes each, the
8732 SSD300 default boxes; the two G show what trimming the padding per batch saves. The op is IoU-bound (B x G x A
IoUs), so GB/s is low by nature; it is reported against the bytes the op must move: boxes, labels, counts and
default boxes read, fp32 offsets and int64 labels written.

    python -m ssd_ds.bench encode [--batches 32 256] [--out results/bench/bench_encode.csv]
"""

from __future__ import annotations

import argparse

import torch

from ssd_ds.anchors import default_boxes_ltrb
from ssd_ds.bench.kernels import common
from ssd_ds.model_config import mlperf

A = common.A_SSD300

NAME = "bench_encode"  # of the CSV and of the refusal line
HELP = "Triton matching and encoding against the torch reference, eager and compiled (CUDA GPU)"


def make_batch(B: int, G: int):
    wh = 0.02 + torch.rand(B, G, 2, device=common.DEVICE) * 0.6
    xy = torch.rand(B, G, 2, device=common.DEVICE) * (1 - wh)
    gt_ltrb = torch.cat([xy, xy + wh], dim=-1)
    gt_labels = torch.randint(1, common.C_COCO, (B, G), device=common.DEVICE)
    num_gt = torch.randint(1, G + 1, (B,), device=common.DEVICE)
    return gt_ltrb, gt_labels, num_gt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_arguments(parser, NAME, slots=True)


def run(args: argparse.Namespace) -> None:
    common.require_gpu(NAME)
    from ssd_ds.box_coder import encode_batch as encode_batch_reference
    from triton_kernels.encode import encode_batch

    fns = common.providers(encode_batch, encode_batch_reference)
    dboxes = default_boxes_ltrb(mlperf().anchors).to(common.DEVICE)
    report = common.Report(args.out)
    for B in args.batches:
        for G in args.slots:
            batch = make_batch(B, G)
            nbytes = B * G * (16 + 8) + B * 8 + A * 16 + B * A * (16 + 8)
            report.time_providers(
                {p: (lambda f=f: f(*batch, dboxes)) for p, f in fns.items()}, nbytes, args.rep,
                op="encode", mode=f"G={G}", B=B, A=A, G=G, dtype="float32", layout="contiguous",
            )
    report.write()


if __name__ == "__main__":
    common.run_alone(NAME, __doc__, add_arguments, run)
