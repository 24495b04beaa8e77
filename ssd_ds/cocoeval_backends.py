"""The COCOeval implementations a run or `evaluate` can use, and the default: names only, so that the run config
can offer them without importing the evaluation (ssd_ds.coco_eval runs them)."""

COCOEVAL_BACKENDS = ("faster", "hotcoco", "pycocotools")
DEFAULT_BACKEND = "hotcoco"  # faster than faster-coco-eval, and bit-identical to pycocotools (BENCHMARKS.md)
