"""Microbenchmark of box decoding: the Triton kernel against the torch reference, eager and under torch.compile.

Mode `scores`, the fused evaluation form (`decode_scores` vs `ssd_ds.postprocess.decode_scores`: decode, fp32
softmax, scores <= 0.05 zeroed).
Inputs: bf16 locs and logits in the model's layout (transposed views; `--layout contiguous` for [B,A,*]), the 8732
SSD300 default boxes, C = 81.
Bytes counted: locs, logits and default boxes read, fp32 boxes and scores written.

    python -m ssd_ds.bench decode [--batches 32 256] [--out results/bench/bench_decode.csv]
"""

from __future__ import annotations

import argparse

from ssd_ds.anchors import default_boxes_cxcywh
from ssd_ds.bench.kernels import common
from ssd_ds.model_config import mlperf
from ssd_ds.postprocess import PostprocessConfig

A, C = common.A_SSD300, common.C_COCO

NAME = "bench_decode"  # of the CSV and of the refusal line
HELP = "Triton box decoding against the torch reference, eager and compiled (CUDA GPU)"
THRESHOLD = PostprocessConfig().score_threshold


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_arguments(parser, NAME, layouts=True)


def run(args: argparse.Namespace) -> None:
    common.require_gpu(NAME)
    from ssd_ds.postprocess import decode_scores as decode_scores_reference
    from triton_kernels.decode import decode_scores

    scores_fns = common.providers(decode_scores, decode_scores_reference)
    dboxes = default_boxes_cxcywh(mlperf().anchors).to(common.DEVICE)
    report = common.Report(args.out)
    for B in args.batches:
        locs, logits = common.model_outputs(B, args.layout)
        boxes_bytes = locs.numel() * 2 + dboxes.numel() * 4 + locs.numel() * 4
        fields = dict(op="decode", B=B, A=A, C=C, dtype="bfloat16", layout=args.layout)
        report.time_providers(
            {p: (lambda f=f: f(locs, logits, dboxes, THRESHOLD)) for p, f in scores_fns.items()},
            boxes_bytes + logits.numel() * (2 + 4), args.rep, mode="scores", **fields,
        )
    report.write()


if __name__ == "__main__":
    common.run_alone(NAME, __doc__, add_arguments, run)
