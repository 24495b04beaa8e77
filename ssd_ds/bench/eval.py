"""`python -m ssd_ds.bench eval [--images N] [--detections D] [--batch B]`: COCOeval (bbox) of the same generated
detections by faster-coco-eval, hotcoco and pycocotools (the reference), timed, with the ratios and whether all twelve
numbers are identical; what the evaluation report (per-class table, PR curves, TIDE errors) adds; then the
post-processing of SSD300-shaped outputs per image (the loop evaluation ran before) and batched
(`select_detections`), with the ratio and whether the detections are identical.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ssd_ds.anchors import default_boxes_cxcywh
from ssd_ds.bench.device import sync
from ssd_ds.coco_eval import COCOEVAL_BACKENDS, DEFAULT_BACKEND, coco_eval, evaluate_report
from ssd_ds.fileio import atomic_write
from ssd_ds.model_config import mlperf
from ssd_ds.postprocess import decode_scores, detect_image, select_detections

HELP = "COCOeval backends on the same detections (faster, hotcoco, pycocotools) and the report's cost"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=5000, help="generated validation images")
    parser.add_argument("--detections", type=int, default=100, help="detections an image")
    parser.add_argument("--batch", type=int, default=32, help="images per post-processing batch")
    parser.add_argument("--batches", type=int, default=3, help="post-processing batches timed")
    parser.add_argument("--run_dir", help="instead: the trainer's evaluation of this run's last evaluated epoch, "
                                          "before the report and with it")
    parser.add_argument("--repeats", type=int, default=5, help="with --run_dir: timings per variant (median)")
    parser.add_argument("--backend", choices=COCOEVAL_BACKENDS,
                        help="with --run_dir: this COCOeval backend instead of the run's")


def generated_eval_set(out_dir: Path, images: int, detections_per_image: int, seed: int = 0):
    """A COCO ground-truth file of `images` images (1-12 boxes each, 80 categories; COCOeval needs no pixels) and
    detections for it as the [N, 7] array: each ground-truth box found with jitter, the rest false positives."""
    rng = np.random.default_rng(seed)
    anns, dets = [], []
    for image_id in range(1, images + 1):
        n = int(rng.integers(1, 13))
        xy, wh = rng.uniform(0, 500, (n, 2)), rng.uniform(8, 200, (n, 2))
        cats = rng.integers(1, 81, n)
        for box, cat in zip(np.hstack([xy, wh]), cats):
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": int(cat), "bbox": box.tolist(),
                         "area": float(box[2] * box[3]), "iscrowd": 0})
            dets.append([image_id, *(box + rng.normal(0, 0.1, 4) * box[[2, 3, 2, 3]]), rng.uniform(0.3, 1), cat])
        for _ in range(detections_per_image - n):
            box = np.concatenate([rng.uniform(0, 500, 2), rng.uniform(8, 200, 2)])
            dets.append([image_id, *box, rng.uniform(0.05, 0.6), rng.integers(1, 81)])
    gt = {"images": [{"id": i, "width": 640, "height": 640, "file_name": f"{i:012d}.jpg"}
                     for i in range(1, images + 1)],
          "annotations": anns, "categories": [{"id": c, "name": f"class{c}"} for c in range(1, 81)]}
    ann_file = Path(out_dir) / "instances_bench.json"
    atomic_write(ann_file, json.dumps(gt))
    return str(ann_file), np.asarray(dets, dtype=np.float64)


def run(args: argparse.Namespace) -> dict[str, float]:
    """COCOeval of the same detections by each backend, timed in this process, the twelve numbers compared with
    pycocotools'; the report's additions (per-class table, curves, error breakdown) timed on the default backend;
    then the post-processing, per image and batched. With --run_dir: `time_run_evaluation` instead."""
    if args.run_dir:
        return time_run_evaluation(Path(args.run_dir), args.repeats, getattr(args, "backend", None))
    with tempfile.TemporaryDirectory() as tmp:
        ann_file, detections = generated_eval_set(Path(tmp), args.images, args.detections)
        print(f"COCOeval (bbox) of {len(detections)} detections on {args.images} generated images "
              f"({args.detections} an image), one process")
        seconds, stats = {}, {}
        for backend in COCOEVAL_BACKENDS:
            coco_eval(ann_file, detections[:1], backend)  # imports and first-call set-up, not timed
            start = time.perf_counter()
            stats[backend] = coco_eval(ann_file, detections, backend)
            seconds[backend] = time.perf_counter() - start
            print(f"  {backend:12s} {seconds[backend]:8.2f} s   AP {stats[backend]['AP']:.6f}")
        for backend in COCOEVAL_BACKENDS:
            if backend != "pycocotools":
                print(f"  {backend} against pycocotools: {seconds['pycocotools'] / seconds[backend]:.1f}x faster; "
                      f"all twelve numbers {agreement(stats[backend], stats['pycocotools'])}")
        print(f"  hotcoco against faster: {seconds['faster'] / seconds['hotcoco']:.1f}x faster; all twelve numbers "
              f"{agreement(stats['hotcoco'], stats['faster'])}")
        report = evaluate_report(ann_file, detections, DEFAULT_BACKEND)
        extra = report["seconds"]
        print(f"  the report on {DEFAULT_BACKEND}: COCOeval {extra['cocoeval']:.2f} s, per-class table and curves "
              f"{extra['per_class_and_curves']:.2f} s, error breakdown and confusion "
              f"{extra['errors_and_confusion']:.2f} s ({len(report['per_class'])} classes)")
        seconds.update({f"report_{k}": v for k, v in extra.items()})
        seconds["report_tensorboard"] = time_tensorboard(report, Path(tmp))
    seconds.update(time_postprocess(args.batch, args.batches))
    return seconds


def agreement(a: dict[str, float], b: dict[str, float]) -> str:
    """"identical", or how far the twelve numbers are apart: implementations summing precisions in different orders
    may differ in their last bit or two (~1e-16)."""
    largest = max(abs(a[k] - b[k]) for k in a)
    return ("identical" if largest == 0 else f"equal to {largest:.0e} (summation order)" if largest < 1e-12
            else f"DIFFERENT (by up to {largest:.2e})")


def time_postprocess(batch: int, batches: int) -> dict[str, float]:
    """Post-processing of SSD300-shaped outputs (8732 anchors, 81 classes, background dominant as in a trained model;
    the candidates above the score threshold are counted and printed), per image (`detect_image` in a loop, the
    reference) and batched (`select_detections`), on the device evaluation runs on; seconds per 1,000 images."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator().manual_seed(0)
    dboxes = default_boxes_cxcywh(mlperf().anchors).to(device)
    A, C = len(dboxes), mlperf().num_classes
    locs = (torch.randn(batch, A, 4, generator=generator) * 0.5).to(device)
    logits = torch.randn(batch, A, C, generator=generator).to(device)
    logits[:, :, 0] += 7.45  # background wins almost everywhere, as in a trained model: ~100 candidates an image
    boxes, scores = decode_scores(locs, logits, dboxes)
    ways = {"per image (loop)": lambda: [detect_image(b, sc) for b, sc in zip(boxes, scores)],
            "batched": lambda: select_detections(boxes, scores).per_image()}
    results = {}
    print(f"post-processing, batch {batch} x {A} anchors x {C} classes, "
          f"{int((scores[:, :, 1:] > 0.05).sum()) / batch:.0f} candidates an image, on {device}:")
    for name, fn in ways.items():
        fn()  # warm-up
        sync(device)
        start = time.perf_counter()
        for _ in range(batches):
            out = fn()
        sync(device)
        results[name] = (time.perf_counter() - start) / (batches * batch) * 1000
        print(f"  {name:18s} {results[name]:8.3f} s per 1,000 images")
    same = all(torch.equal(a, b) for got, want in zip(out, ways["per image (loop)"]()) for a, b in zip(got, want))
    print(f"  ratio per image / batched: {results['per image (loop)'] / results['batched']:.1f}x; "
          f"{sum(len(scores) for _, scores, _ in out) / batch:.0f} detections an image, "
          f"{'identical' if same else 'DIFFERENT'}")
    return results


def time_run_evaluation(run_dir: Path, repeats: int, backend: str | None = None) -> dict[str, float]:
    """The trainer's evaluation of a run's last evaluated epoch (its `eval/epoch_<e>.npy` against the val annotations
    of its config's data set, with `backend` or else its config's), median of `repeats`: the background process's
    work as it was before the report (COCOeval, the result written) and as it is (`evaluate_report`, its JSON and
    CSV), in this process and as the spawned process the trainer starts (imports included); then what the training
    process adds: writing the report to TensorBoard, and drawing the validation images (4 at the demo's 128 px, as
    before with torchvision's `draw_bounding_boxes` and now with `ssd_ds.draw`)."""
    from ssd_ds.coco_eval import BackgroundEvaluator, _eval_worker
    from ssd_ds.data.coco import annotation_file
    from ssd_ds.fileio import read_json

    config = read_json(run_dir / "config.json", "run config")
    epochs = sorted(int(f.stem.split("_")[1]) for f in (run_dir / "eval").glob("epoch_*.npy"))
    if not epochs:
        raise SystemExit(f"{run_dir / 'eval'}: no evaluated epoch (epoch_<e>.npy)")
    det_file = run_dir / "eval" / f"epoch_{epochs[-1]}.npy"
    ann_file, backend = str(annotation_file(Path(config["data"]), "val")), backend or config["coco_eval"]
    detections = np.load(det_file)
    images = len(read_json(ann_file)["images"])
    print(f"the trainer's evaluation of {det_file} ({len(detections)} detections on {images} images, {backend}), "
          f"median of {repeats}:")

    def median_seconds(fn) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def before():  # the background process's body before the report: COCOeval, the twelve numbers written
            atomic_write(tmp / "before.json", json.dumps(coco_eval(ann_file, np.load(det_file), backend)))

        coco_eval(ann_file, detections[:1], backend)  # imports, not timed
        results["before"] = median_seconds(before)
        results["after"] = median_seconds(lambda: _eval_worker(ann_file, str(det_file), str(tmp / "after.json"),
                                                               backend))
        print(f"  in process:  before (COCOeval) {results['before']:.3f} s, after (with the report) "
              f"{results['after']:.3f} s: +{results['after'] - results['before']:.3f} s")
        report = json.loads((tmp / "after.json").read_text())
        print(f"    the last run's parts: COCOeval {report['seconds']['cocoeval']:.3f} s, per-class table and curves "
              f"{report['seconds']['per_class_and_curves']:.3f} s, error breakdown and confusion "
              f"{report['seconds']['errors_and_confusion']:.3f} s")
        evaluator = BackgroundEvaluator(ann_file, tmp / "spawned", backend)

        def spawned():
            evaluator.submit(1, detections)
            ((_, result),) = evaluator.wait()
            assert result is not None, "the spawned evaluation failed"

        results["spawned_after"] = median_seconds(spawned)
        print(f"  spawned process (what the trainer waits for, imports included): {results['spawned_after']:.3f} s")
        results["tensorboard"] = time_tensorboard(report, tmp, repeats)
    results.update(time_drawing(repeats))
    return results


def time_tensorboard(report: dict, tmp: Path, repeats: int = 3) -> float:
    """Median seconds the training process takes to write an evaluation report to TensorBoard (`log_eval_report`:
    the PR curves and the texts; the scalars go with the eval record), flushed."""
    from ssd_ds.loop import log_eval_report
    from ssd_ds.metrics import MetricsLogger

    (tmp / "tb").mkdir()
    metrics = MetricsLogger(tmp / "tb", enabled=True)
    times = []
    for step in range(repeats):
        start = time.perf_counter()
        log_eval_report(metrics, report, step)
        metrics.writer.flush()
        times.append(time.perf_counter() - start)
    metrics.close()
    curves = sum(len(by_class) for key, by_class in report["pr_curves"].items() if key.startswith("IoU"))
    print(f"  in the training process: the report to TensorBoard {1000 * float(np.median(times)):.1f} ms "
          f"({len(report['per_class'])} classes, {curves} curves)")
    return float(np.median(times))


def time_drawing(repeats: int, images: int = 4, side: int = 128, boxes: int = 8) -> dict[str, float]:
    """Drawing `images` validation images with `boxes` detections and as many ground-truth boxes: torchvision's
    `draw_bounding_boxes` (before) against `ssd_ds.draw.draw_validation_image` (now), median seconds for all."""
    from torchvision.utils import draw_bounding_boxes

    from ssd_ds.draw import draw_validation_image

    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, side, side), dtype=torch.uint8, generator=generator)
    xy = torch.rand(boxes, 2, generator=generator) * 0.6
    rel = torch.cat([xy, xy + 0.1 + torch.rand(boxes, 2, generator=generator) * 0.3], 1)
    captions, labels = [f"class{i} 0.{90 - i}" for i in range(boxes)], list(range(boxes))
    timings = {}
    for name, fn in (("draw_before", lambda: draw_bounding_boxes(image, rel * side, labels=captions)),
                     ("draw_after", lambda: draw_validation_image(image, rel, captions, labels, rel, captions))):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(images):
                fn()
            times.append(time.perf_counter() - start)
        timings[name] = float(np.median(times))
    print(f"  drawing {images} validation images ({side} px, {boxes} boxes each): before "
          f"{1000 * timings['draw_before']:.1f} ms, now (ground truth too, enlarged) "
          f"{1000 * timings['draw_after']:.1f} ms")
    return timings
