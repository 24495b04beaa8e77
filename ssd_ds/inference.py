"""Inference with a trained model, what evaluation, prediction, export and the trainer's own evaluation share: the
inference file saved beside every checkpoint (`model.pt`: `inference_state`, `save_inference`), its loading, the ops a
loaded model is evaluated with, the device half of evaluation (`detect_batch`, which the warm-up runs too) and a
rank's detections over a loader (`infer_detections`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ssd_ds.box_coder import BoxCoder
from ssd_ds.checkpoint import LATEST
from ssd_ds.data.transforms import normalize_images
from ssd_ds.device_ops import build_device_ops
from ssd_ds.errors import BadInput, NotFound
from ssd_ds.model import build_model
from ssd_ds.model_config import ModelConfig, build_model_config
from ssd_ds.postprocess import Detections, decode_scores, postprocess, to_coco_results

INFERENCE_FILE = "model.pt"  # what inference needs, readable without DeepSpeed: torch.load(weights_only=True)
# Format 2 added `anchor_scales` (fitted default boxes). A format 1 file has the preset's boxes; a reader of format 1
# only refuses a format 2 file rather than decode it with default boxes other than those the model was trained on.
INFERENCE_FORMAT = 2
READABLE_FORMATS = (1, 2)


def inference_state(model: torch.nn.Module, model_name: str, input_size: int, class_names: list[str],
                    label_to_category: dict[int, int], autocast: torch.dtype | None,
                    anchor_scales: tuple[float, ...] | None = None) -> dict:
    """Everything `ssd_ds.predict`, `ssd_ds.evaluate` and `ssd_ds.export` need, as plain data and CPU tensors: the
    model preset and input size, its default-box scales when they are not the preset's (--anchor_scales), class
    names (index = label, 0 = background), the label -> COCO category id map, the evaluation precision, and the
    weights."""
    return {"format": INFERENCE_FORMAT, "model": model_name, "input_size": input_size,
            "anchor_scales": [float(s) for s in anchor_scales] if anchor_scales else None,
            "class_names": list(class_names),
            "label_to_category": {int(k): int(v) for k, v in label_to_category.items()},
            "autocast": None if autocast is None else str(autocast).removeprefix("torch."),
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}}


def save_inference(state: dict, directory: Path) -> None:
    """Write an `inference_state` as `directory/model.pt` (the trainer: into a checkpoint before its atomic rename)."""
    torch.save(state, Path(directory) / INFERENCE_FILE)


def find_inference_file(path: str | Path) -> Path:
    """`model.pt` from a path to it, to a checkpoint directory, or to a run directory (its latest checkpoint)."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / INFERENCE_FILE).is_file():
        return path / INFERENCE_FILE
    if (path / "checkpoints" / LATEST).is_file():
        return find_inference_file(path / "checkpoints" / (path / "checkpoints" / LATEST).read_text().strip())
    raise NotFound(f"{path}: no {INFERENCE_FILE} there (a checkpoint file, a checkpoint directory or a run "
                   f"directory with checkpoints/latest)")


def model_config_of(meta: dict) -> ModelConfig:
    """The model configuration an inference state was trained with: its preset, classes and default boxes (a file
    without `anchor_scales`, format 1, has the preset's)."""
    return build_model_config(meta["model"], num_classes=len(meta["class_names"]),
                              anchor_scales=tuple(meta.get("anchor_scales") or ()))


def load_inference(path: str | Path, device: torch.device | str = "cpu"):
    """(the model in eval mode on `device`, the inference state without its weights) from `find_inference_file`."""
    file = find_inference_file(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file: all mean the same to the user
        raise BadInput(f"{file}: cannot be read as an ssd_ds model checkpoint ({exc})") from None
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
        raise BadInput(f"{file}: not an ssd_ds model checkpoint this version reads (format "
                       f"{state.get('format') if isinstance(state, dict) else None!r}, not one of {READABLE_FORMATS})")
    try:
        model_cfg = model_config_of(state)
    except BadInput as exc:
        raise BadInput(f"{file}: {exc}") from None
    if model_cfg.input_size != state["input_size"]:
        raise BadInput(f"{file}: model {state['model']!r} takes {model_cfg.input_size}px inputs, the checkpoint "
                       f"says {state['input_size']}")
    model = build_model(model_cfg)
    try:
        model.load_state_dict(state.pop("state_dict"))
    except RuntimeError as exc:
        raise BadInput(f"{file}: weights do not fit model preset {state['model']!r} "
                       f"({str(exc).splitlines()[0]})") from None
    return model.to(device).eval(), state


@torch.no_grad()
def detect_batch(model, images: torch.Tensor, coder: BoxCoder, device: torch.device,
                 autocast_dtype: torch.dtype | None = None, decode=decode_scores,
                 memory_format: torch.memory_format = torch.contiguous_format, pad_to: int | None = None):
    """The device half of evaluation: uint8 images [B,3,S,S] (any device) -> `Detections` on `device` (batched:
    no host sync). `coder` must hold its default boxes on `device` (BoxCoder.to).

    `pad_to` (>= B) runs the model on the images followed by black ones up to that many, and returns the B real
    images' detections only: a compiled model then sees one batch shape, where a partial batch (the last of an
    evaluation, or one with unreadable images dropped) would make it compile again. Every image is detected on its
    own (eval-mode BatchNorm, per-image post-processing), so the padding changes no real image's detections beyond
    the rounding of kernels chosen for another batch size."""
    B = images.shape[0]
    images = images.to(device, non_blocking=True)
    if pad_to is not None and B != pad_to:
        if B > pad_to:
            raise ValueError(f"detect_batch: {B} images do not fit pad_to={pad_to}")
        images = torch.cat([images, images.new_zeros(pad_to - B, *images.shape[1:])])
    images = normalize_images(images, memory_format)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        locs, logits = model(images)
    detections = postprocess(locs, logits, coder, decode=decode)
    return Detections(*(t[:B] for t in detections))


def inference_ops(meta: dict, device: torch.device):
    """(the ops a checkpoint's model is evaluated with on `device`, its autocast dtype), as the trainer chooses them
    (`build_device_ops`: the checkpoint's default boxes on the device, the Triton or torch decode) from
    `load_inference`'s meta."""
    ops = build_device_ops(model_config_of(meta), device, encode_on_device="off")
    return ops, getattr(torch, meta["autocast"]) if meta["autocast"] else None


@torch.no_grad()
def infer_detections(model, loader, coder: BoxCoder, label_to_category: dict[int, int], device: torch.device,
                     autocast_dtype: torch.dtype | None = None, images_to_draw: int = 0, decode=decode_scores,
                     memory_format: torch.memory_format = torch.contiguous_format, pad_to: int | None = None):
    """This rank's detections as an [N, 7] float64 array, the ids of the images it evaluated, the count of skipped
    images, and up to `images_to_draw` examples `(image [3,S,S] uint8, boxes_ltrb relative, scores, labels, image_id)`
    for TensorBoard. `decode` is the torch or Triton decode+softmax (ssd_ds.device_ops.decode_scores_fn); `pad_to`
    (the loader's batch size) runs every batch at that size (`detect_batch`), for a compiled model."""
    was_training = model.training
    model.eval()
    detections, seen, skipped, examples = [], [], 0, []
    for images, image_ids, sizes, n_skipped in loader:
        seen += image_ids
        skipped += n_skipped
        if images is None:
            continue
        per_image = detect_batch(model, images, coder, device, autocast_dtype, decode, memory_format,
                                 pad_to).per_image()
        for (boxes, scores, labels), image, image_id in zip(per_image, images, image_ids):
            if len(examples) < images_to_draw:
                examples.append((image.cpu(), boxes.cpu(), scores.cpu(), labels.cpu(), image_id))
        for r in to_coco_results(per_image, image_ids, sizes, label_to_category):
            detections.append([r["image_id"], *r["bbox"], r["score"], r["category_id"]])
    model.train(was_training)
    return np.asarray(detections, dtype=np.float64).reshape(-1, 7), seen, skipped, examples
