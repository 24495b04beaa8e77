"""Fitted default-box scales as the trainer takes them (--anchor_scales, a --config file) and as the inference file
keeps them; the mlperf preset keeps the benchmark's 8732 boxes (ssd_ds/model_config.py, ssd_ds/inference.py)."""

import json

import pytest
import torch

from ssd_ds.anchors import default_boxes_ltrb
from ssd_ds.errors import BadInput
from ssd_ds.inference import inference_ops, inference_state, load_inference, model_config_of
from ssd_ds.model import build_model
from ssd_ds.model_config import build_model_config, cpu_small, mlperf
from ssd_ds.run_config import config_from_args

FITTED = (17.9, 38.7, 59.4, 80.1, 100.9, 121.6)
SPEC_SCALES = (21, 45, 99, 153, 207, 261, 315)  # SPEC section 2


def test_scales_replace_the_presets_and_keep_the_heads_shapes():
    cfg = build_model_config("cpu_small", num_classes=7, anchor_scales=FITTED)
    assert cfg.anchors.scales == FITTED and cfg.num_classes == 7
    preset = cpu_small(num_classes=7)
    assert cfg.anchors.num_anchors == preset.anchors.num_anchors
    assert cfg.anchors.boxes_per_location == preset.anchors.boxes_per_location
    assert not torch.equal(default_boxes_ltrb(cfg.anchors), default_boxes_ltrb(preset.anchors))
    assert build_model_config("cpu_small", anchor_scales=None) == build_model_config("cpu_small", anchor_scales=()) \
        == cpu_small()


def test_mlperf_keeps_the_benchmarks_8732_boxes_and_refuses_others():
    cfg = build_model_config("mlperf")
    assert cfg.anchors.num_anchors == 8732 and cfg.anchors.scales == SPEC_SCALES
    assert torch.equal(default_boxes_ltrb(cfg.anchors), default_boxes_ltrb(mlperf().anchors))
    with pytest.raises(BadInput, match="the mlperf model keeps the benchmark's 8732 default boxes"):
        build_model_config("mlperf", anchor_scales=SPEC_SCALES)
    with pytest.raises(BadInput, match="^--anchor_scales: the mlperf model keeps"):
        config_from_args(["--preset", "mlperf", "--anchor_scales", ",".join(map(str, SPEC_SCALES))])


def test_the_flag_and_a_config_file_give_the_scales(tmp_path):
    cfg = config_from_args(["--anchor_scales", ",".join(map(str, FITTED))])
    assert cfg.anchor_scales == FITTED
    cfg.save(tmp_path / "config.json")
    assert config_from_args(["--config", str(tmp_path / "config.json")]).anchor_scales == FITTED
    (tmp_path / "some.json").write_text(json.dumps({"preset": "demo", "anchor_scales": list(FITTED)}))
    assert config_from_args(["--config", str(tmp_path / "some.json")]).anchor_scales == FITTED
    assert config_from_args([]).anchor_scales is None
    assert config_from_args(["--anchor_scales", "none"]).anchor_scales is None
    with pytest.raises(BadInput, match="cpu_small has 5 feature levels, so it takes 6 scales"):
        config_from_args(["--anchor_scales", "10,20,30"])
    with pytest.raises(BadInput, match="scales are positive pixel sizes"):
        config_from_args(["--anchor_scales", "0,20,30,40,50,60"])


def _saved(tmp_path, name, scales, **changes):
    """An inference file of a cpu_small model with 3 classes, trained with default-box `scales`; `changes` to its
    fields."""
    model = build_model(build_model_config("cpu_small", num_classes=3, anchor_scales=scales))
    state = inference_state(model, "cpu_small", 128, ["background", "a", "b"], {1: 1, 2: 2}, None, scales)
    state.update(changes)
    torch.save(state, tmp_path / name)
    return tmp_path / name


def test_the_inference_file_carries_the_scales_to_every_loader(tmp_path):
    _, meta = load_inference(_saved(tmp_path, "fitted.pt", FITTED))
    assert meta["format"] == 2 and meta["anchor_scales"] == list(FITTED)
    ops, _ = inference_ops(meta, torch.device("cpu"))  # what predict, evaluate and export decode with
    want = default_boxes_ltrb(build_model_config("cpu_small", anchor_scales=FITTED).anchors)
    assert torch.equal(ops.coder.dboxes_ltrb, want)
    _, meta = load_inference(_saved(tmp_path, "preset.pt", None))
    assert meta["anchor_scales"] is None and model_config_of(meta).anchors == cpu_small().anchors


def test_a_format_1_file_has_the_presets_boxes(tmp_path):
    path = _saved(tmp_path, "old.pt", None, format=1)
    state = torch.load(path, weights_only=True)
    del state["anchor_scales"]  # format 1 had no such field
    torch.save(state, path)
    model, meta = load_inference(path)
    ops, _ = inference_ops(meta, torch.device("cpu"))
    assert torch.equal(ops.coder.dboxes_ltrb, default_boxes_ltrb(cpu_small().anchors))


def test_a_file_with_bad_scales_or_an_unknown_format_names_the_file(tmp_path):
    path = _saved(tmp_path, "bad.pt", FITTED, anchor_scales=[1.0, 2.0])
    with pytest.raises(BadInput, match=r"bad.pt: --anchor_scales: model cpu_small has 5 feature levels"):
        load_inference(path)
    path = _saved(tmp_path, "future.pt", None, format=3)
    with pytest.raises(BadInput, match=r"future.pt: not an ssd_ds model checkpoint this version reads \(format 3"):
        load_inference(path)


def test_a_run_resumes_only_on_the_boxes_it_was_trained_with(tmp_path):
    from ssd_ds.train import check_same_default_boxes

    check_same_default_boxes({"anchor_scales": list(FITTED)}, config_from_args(
        ["--anchor_scales", ",".join(map(str, FITTED))]), tmp_path)
    check_same_default_boxes({}, config_from_args([]), tmp_path)  # a checkpoint from before the field: the preset's
    with pytest.raises(BadInput, match=r"ckpt: trained with --anchor_scales 17.9,38.7.*, this run gives none"):
        check_same_default_boxes({"anchor_scales": FITTED}, config_from_args([]), tmp_path / "ckpt")
