"""The Triton box decoding fused with softmax + score threshold against its torch reference."""

import pytest
import torch
from torchvision.ops import box_convert

from ssd_ds.anchors import default_boxes_cxcywh
from ssd_ds.box_coder import BoxCoder, decode_offsets
from ssd_ds.model_config import mlperf
from ssd_ds.postprocess import PostprocessConfig, postprocess
from ssd_ds.postprocess import decode_scores as decode_scores_reference
from triton_kernels.decode import decode_scores

SHAPES = [(4, 512, 16), (3, 301, 11)]  # (B, A, C): aligned, odd
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
THRESHOLD = 0.05


def make_inputs(B, A, C, device, dtype):
    """Offsets, logits and valid cxcywh default boxes, generated on CPU."""
    locs = torch.randn(B, A, 4)
    logits = torch.randn(B, A, C) * 3
    dboxes = torch.cat([torch.rand(A, 2), 0.05 + torch.rand(A, 2) * 0.5], dim=1)
    return locs.to(device, dtype), logits.to(device, dtype), dboxes.to(device)


def check_fused(locs, logits, dboxes, got, assert_close):
    """got = (boxes, scores) from the fused kernel, checked against the reference on the same inputs."""
    want = decode_scores_reference(locs, logits, dboxes, THRESHOLD)
    assert_close(got[0], want[0], "boxes")
    assert_close(got[0], decode_offsets(locs, dboxes), "boxes")
    # A score within rounding of the threshold may be zeroed by one side only; every other score must agree.
    unambiguous = (torch.softmax(logits.float(), dim=-1) - THRESHOLD).abs() > 1e-5
    assert_close(got[1][unambiguous], want[1][unambiguous], "scores")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,A,C", SHAPES)
def test_matches_reference(B, A, C, dtype, device, assert_close):
    locs, logits, dboxes = make_inputs(B, A, C, device, dtype)
    boxes, scores = decode_scores(locs, logits, dboxes, THRESHOLD)
    check_fused(locs, logits, dboxes, (boxes, scores), assert_close)
    assert 0 < (scores > 0).sum() < scores.numel()  # the threshold did cut


def test_model_layout_read_in_place(device, assert_close):
    # The model's locs [B,A,4] and logits [B,A,C] are transposed views of [B,4,A] and [B,C,A] head outputs.
    locs, logits, dboxes = make_inputs(3, 301, 11, device, torch.bfloat16)
    locs, logits = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (locs, logits))
    check_fused(locs, logits, dboxes, decode_scores(locs, logits, dboxes, THRESHOLD), assert_close)


def test_postprocess_with_kernel_equals_reference(device):
    # Evaluation's detections are the same through the fused kernel as through the torch path.
    locs, logits, dboxes = make_inputs(2, 301, 11, device, torch.float32)
    coder = BoxCoder(box_convert(dboxes, "cxcywh", "xyxy"))
    cfg = PostprocessConfig(topk_per_class=20, max_detections=30)
    kernel = postprocess(locs, logits, coder, cfg, decode=decode_scores)
    reference = postprocess(locs, logits, coder, cfg)
    assert torch.equal(kernel.counts, reference.counts) and torch.equal(kernel.labels, reference.labels)
    torch.testing.assert_close(kernel.scores, reference.scores)
    torch.testing.assert_close(kernel.boxes, reference.boxes)


def test_rejects_bad_shapes(device):
    locs, logits, dboxes = make_inputs(2, 64, 5, device, torch.float32)
    with pytest.raises(ValueError, match="dboxes_cxcywh"):
        decode_scores(locs, logits, dboxes[:-1])
    with pytest.raises(ValueError, match="logits"):
        decode_scores(locs, logits[:, :-1], dboxes)


def test_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("triton_kernels._common.INTERPRETED", False)
    locs, logits, dboxes = make_inputs(1, 8, 2, "cpu", torch.float32)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        decode_scores(locs, logits, dboxes)


def test_opcheck(device):
    locs, logits, dboxes = make_inputs(2, 301, 11, device, torch.bfloat16)
    torch.library.opcheck(decode_scores, (locs, logits, dboxes, THRESHOLD))


def test_compiles_without_graph_break(device, assert_close):
    locs, logits, dboxes = make_inputs(2, 301, 11, device, torch.float32)
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    compiled = torch.compile(lambda l, g: decode_scores(2 * l, g, dboxes, THRESHOLD), fullgraph=True, backend=backend)
    check_fused(2 * locs, logits, dboxes, compiled(locs, logits), assert_close)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_real_size(dtype, device, assert_close):
    locs, logits, _ = make_inputs(32, 8732, 81, device, dtype)
    dboxes = default_boxes_cxcywh(mlperf().anchors).to(device)
    check_fused(locs, logits, dboxes, decode_scores(locs, logits, dboxes, THRESHOLD), assert_close)
