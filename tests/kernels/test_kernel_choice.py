"""Backend choice, and the trainer's step giving the same loss and gradients with either backend."""

import pytest
import torch

from ssd_ds.anchors import default_boxes_ltrb
from ssd_ds.box_coder import encode_batch
from ssd_ds.device_ops import OPS, encode_fn, op_fn, resolve_backend, ssd_loss_fn
from ssd_ds.loss import ssd_loss
from ssd_ds.model import build_model
from ssd_ds.model_config import cpu_small
from tests.smoke import generated_batch


def test_resolve_backend(monkeypatch):
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("auto", "cpu") == "torch"  # the interpreter is for tests, never chosen automatically
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", "cpu") == "triton"  # the interpreter may be asked for explicitly (tests)
    if torch.cuda.is_available():
        assert resolve_backend("auto", "cuda") == "triton"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="need a CUDA device"):
        resolve_backend("triton", "cpu")
    with pytest.raises(ValueError, match="must be one of"):
        resolve_backend("cuda", "cpu")


def test_torch_backend_is_the_reference():
    assert ssd_loss_fn("torch") is ssd_loss
    assert encode_fn("torch") is encode_batch
    with pytest.raises(ValueError, match="resolve 'auto'"):
        op_fn("ssd_loss", "auto")
    for op in OPS:  # every Triton entry names a real callable
        assert callable(op_fn(op, "triton"))


@pytest.mark.slow
def test_trainer_step_is_the_same_with_either_backend(device):
    # The cpu_small model (A = 1532, C = 21) on generated images: targets from each backend's encoder, then loss
    # and parameter gradients from each backend's loss.
    cfg = cpu_small(num_classes=21)
    model = build_model(cfg).to(device)
    images, boxes, labels = generated_batch(3, cfg.input_size, cfg.num_classes, torch.Generator().manual_seed(0))
    G = max(len(b) for b in boxes)
    gt_ltrb = torch.zeros(3, G, 4)
    gt_labels = torch.zeros(3, G, dtype=torch.long)
    for i, (b, l) in enumerate(zip(boxes, labels)):
        gt_ltrb[i, : len(b)], gt_labels[i, : len(l)] = b, l
    num_gt = torch.tensor([len(b) for b in boxes])
    gt = [t.to(device) for t in (gt_ltrb, gt_labels, num_gt)]
    dboxes = default_boxes_ltrb(cfg.anchors).to(device)
    locs, logits = model(images.to(device))

    results = {}
    for backend in ("torch", "triton"):
        loc_t, labels_t = encode_fn(backend)(*gt, dboxes)
        loss = ssd_loss_fn(backend)(locs, logits, loc_t, labels_t)
        results[backend] = (labels_t, loss, torch.autograd.grad(loss, list(model.parameters()), retain_graph=True))
    (labels_ref, loss_ref, grads_ref), (labels_tri, loss_tri, grads_tri) = results["torch"], results["triton"]
    assert torch.equal(labels_tri, labels_ref)
    torch.testing.assert_close(loss_tri, loss_ref, rtol=1e-5, atol=1e-5)
    for g_tri, g_ref in zip(grads_tri, grads_ref):
        # fp32 summation order differs inside the loss; the model's backward sums those differences further.
        torch.testing.assert_close(g_tri, g_ref, rtol=1e-4, atol=1e-5 * g_ref.abs().max().item())
