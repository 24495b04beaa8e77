import torch

from ssd_ds.box_coder import BoxCoder
from ssd_ds.postprocess import PostprocessConfig, detect_image, postprocess, to_coco_results


def test_nms_threshold_and_per_class_handling():
    boxes = torch.tensor([
        [0.10, 0.10, 0.50, 0.50],
        [0.12, 0.10, 0.52, 0.50],  # IoU ~0.9 with box 0
        [0.60, 0.60, 0.90, 0.90],
        [0.10, 0.10, 0.50, 0.50],  # same place as box 0, scored for another class
    ])
    scores = torch.zeros(4, 3)  # background + 2 classes
    scores[0, 1], scores[1, 1], scores[2, 1], scores[3, 2] = 0.9, 0.8, 0.04, 0.7
    got_boxes, got_scores, got_labels = detect_image(boxes, scores)
    # Box 1 is suppressed by box 0 (same class); box 2 is below 0.05; box 3 survives as another class.
    assert got_labels.tolist() == [1, 2]
    assert torch.allclose(got_scores, torch.tensor([0.9, 0.7]))
    assert torch.equal(got_boxes, boxes[[0, 3]])


def test_topk_caps():
    n = 50
    xy = torch.rand(n, 2) * 0.01 + torch.arange(n)[:, None] * 0.02  # disjoint small boxes
    boxes = torch.cat([xy, xy + 0.01], dim=1)
    scores = torch.zeros(n, 3)
    scores[:, 1] = torch.linspace(0.9, 0.1, n)
    scores[:, 2] = torch.linspace(0.8, 0.06, n)
    cfg = PostprocessConfig(topk_per_class=10, max_detections=15)
    _, got_scores, got_labels = detect_image(boxes, scores, cfg)
    assert len(got_scores) == 15
    assert (got_labels == 1).sum() == 10  # per-class cap reached for class 1 before the image cap
    assert torch.all(got_scores[:-1] >= got_scores[1:])


def test_coco_results_in_original_pixels():
    dboxes = torch.tensor([[0.25, 0.25, 0.75, 0.75]])
    coder = BoxCoder(dboxes)
    locs = torch.zeros(1, 1, 4)  # decodes to the default box
    logits = torch.tensor([[[0.0, 5.0]]])
    dets = postprocess(locs, logits, coder).per_image()
    res = to_coco_results(dets, [42], [(200, 400)], {1: 17})
    assert len(res) == 1
    assert res[0]["image_id"] == 42 and res[0]["category_id"] == 17
    assert [round(v, 3) for v in res[0]["bbox"]] == [100.0, 50.0, 200.0, 100.0]


def random_outputs(B, A, C, generator, ties: bool = False):
    """Decoded boxes [B,A,4] and softmax scores [B,A,C]; with `ties` the scores take few distinct values and many
    boxes coincide, so that equal scores meet in NMS."""
    xy = torch.rand(B, A, 2, generator=generator) * 0.8
    wh = 0.05 + torch.rand(B, A, 2, generator=generator) * 0.3
    boxes = torch.cat([xy, xy + wh], dim=2)
    scores = torch.softmax(torch.randn(B, A, C, generator=generator) * 3, dim=2)
    if ties:
        boxes = (boxes * 8).round() / 8
        scores = (scores * 10).round() / 10
    return boxes, scores


def test_batched_detection_equals_per_image_detection():
    from ssd_ds.postprocess import select_detections

    generator = torch.Generator().manual_seed(0)
    cfg = PostprocessConfig(topk_per_class=30, max_detections=40)
    for ties in (False, True):
        boxes, scores = random_outputs(6, 300, 9, generator, ties)
        batched = select_detections(boxes, scores, cfg).per_image()
        assert len(batched) == 6
        for b, (got_boxes, got_scores, got_labels) in enumerate(batched):
            want_boxes, want_scores, want_labels = detect_image(boxes[b], scores[b], cfg)
            assert len(want_scores) > 0
            assert torch.equal(got_scores, want_scores) and torch.equal(got_labels, want_labels), (ties, b)
            assert torch.equal(got_boxes, want_boxes)
    empty = select_detections(torch.zeros(2, 5, 4), torch.zeros(2, 5, 3), cfg)  # nothing above the threshold
    assert empty.counts.tolist() == [0, 0] and empty.boxes.shape == (2, 40, 4)
