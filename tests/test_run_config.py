"""The run config's command line: typed flags documented by their fields' help texts, and saved configs fed back."""

import dataclasses
import json

import pytest

from ssd_ds.run_config import RunConfig, build_parser, config_from_args, demo, mlperf


def test_every_field_is_a_documented_flag_showing_the_presets_value():
    assert all(f.metadata.get("help") for f in dataclasses.fields(RunConfig))
    text = " ".join(build_parser(mlperf()).format_help().split())
    for f in dataclasses.fields(RunConfig):
        if f.name != "preset":
            assert f"--{f.name}" in text
    assert "LR per 32 images" in text  # lr_per_32's help text, as written beside the field
    assert "[mlperf: 44,55]" in text and "[mlperf: ds_configs/dgxa100_8x114_bf16.json]" in text


def test_flags_are_parsed_by_the_fields_types():
    cfg = config_from_args(["--epochs", "3", "--decay_epochs", "1,2", "--backbone_weights", "none",
                            "--progress", "off", "--target_map", "0.3"])
    assert (cfg.epochs, cfg.decay_epochs, cfg.backbone_weights, cfg.progress, cfg.target_map) == \
        (3, (1, 2), None, False, 0.3)
    with pytest.raises(ValueError, match="--epochs: expected int, got 'three'"):
        config_from_args(["--epochs", "three"])
    with pytest.raises(ValueError, match="--progress: expected bool"):
        config_from_args(["--progress", "maybe"])
    with pytest.raises(ValueError, match="--eval_only needs --resume"):
        config_from_args(["--eval_only", "true"])


def test_a_saved_config_reruns_with_flags_on_top(tmp_path):
    saved = config_from_args(["--preset", "mlperf", "--epochs", "7", "--eval_epochs", "3,5", "--seed", "9"])
    saved.save(tmp_path / "config.json")
    again = config_from_args(["--config", str(tmp_path / "config.json")])
    assert again == saved
    changed = config_from_args(["--config", str(tmp_path / "config.json"), "--seed", "10", "--run_dir", "runs/x"])
    assert dataclasses.replace(saved, seed=10, run_dir="runs/x") == changed
    assert changed.preset == "mlperf" and changed.eval_epochs == (3, 5)


def test_a_bad_config_file_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**dataclasses.asdict(demo()), "epoch": 3}))
    with pytest.raises(ValueError, match=r"config.json: unknown fields \['epoch'\]"):
        config_from_args(["--config", str(path)])
    path.write_text(json.dumps({"epochs": "many"}))
    with pytest.raises(ValueError, match="config.json: --epochs: expected int"):
        config_from_args(["--config", str(path)])
    path.write_text("{")
    with pytest.raises(ValueError, match="config.json: malformed JSON"):
        config_from_args(["--config", str(path)])
    with pytest.raises(FileNotFoundError, match="absent.json: run config not found"):
        config_from_args(["--config", str(tmp_path / "absent.json")])
    demo().save(path)
    with pytest.raises(ValueError, match="give one"):
        config_from_args(["--config", str(path), "--preset", "mlperf"])
