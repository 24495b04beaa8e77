"""The run config's command line: typed flags documented by their fields' help texts, and saved configs fed back."""

import dataclasses
import json
import subprocess

import pytest
import torch

from ssd_ds import ds_config
from ssd_ds.run_config import RunConfig, build_parser, config_from_args, demo, from_file, mlperf
from tests.helpers import REPO

LAUNCH_SETTINGS = sorted((REPO / "scripts" / "launch").glob("config_*.sh"))


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
    path.write_text(json.dumps({"preset": "mlpref", "epochs": 3}))
    with pytest.raises(ValueError,
                       match=r"config.json: unknown preset 'mlpref' \(one of \['custom', 'demo', 'mlperf'\]\)"):
        config_from_args(["--config", str(path)])
    path.write_text("{")
    with pytest.raises(ValueError, match="config.json: malformed JSON"):
        config_from_args(["--config", str(path)])
    with pytest.raises(FileNotFoundError, match="absent.json: run config not found"):
        config_from_args(["--config", str(tmp_path / "absent.json")])
    demo().save(path)
    with pytest.raises(ValueError, match="give one"):
        config_from_args(["--config", str(path), "--preset", "mlperf"])


def test_a_partial_config_file_starts_from_the_preset_it_names(tmp_path):
    path = tmp_path / "system.json"
    path.write_text(json.dumps({"preset": "mlperf", "epochs": 3, "decay_epochs": [1, 2]}))
    assert config_from_args(["--config", str(path)]) == dataclasses.replace(mlperf(), epochs=3, decay_epochs=(1, 2))
    path.write_text(json.dumps({"epochs": 3}))
    assert config_from_args(["--config", str(path)]) == dataclasses.replace(demo(), epochs=3)


def launch_settings(script) -> dict[str, str]:
    """What a `config_<SYSTEM>.sh` exports, as bash sources it."""
    names = ("DGXSYSTEM", "DGXNNODES", "DGXNGPU", "WALLTIME", "SYSTEM_CONFIG")
    out = subprocess.run(["bash", "-c", f'source "$1" && printf "%s\\n" {" ".join("$" + n for n in names)}', "bash",
                          str(script)], check=True, capture_output=True, text=True).stdout
    return dict(zip(names, out.splitlines()))


@pytest.mark.parametrize("script", LAUNCH_SETTINGS, ids=lambda p: p.stem.removeprefix("config_"))
def test_each_system_config_loads_and_its_deepspeed_batch_fits_its_nodes(script, monkeypatch):
    settings = launch_settings(script)
    system = script.stem.removeprefix("config_")
    assert settings["DGXSYSTEM"] == system and settings["SYSTEM_CONFIG"] == f"configs/systems/{system}.json"
    monkeypatch.chdir(REPO)  # the launch scripts run from the repository root, where the config's paths start
    cfg = config_from_args(["--config", settings["SYSTEM_CONFIG"]])  # the trainer's own parsing and checks
    assert cfg.preset == "mlperf" and cfg.submission_platform == system
    engine = ds_config.read(cfg.deepspeed_config)
    world = int(settings["DGXNNODES"]) * int(settings["DGXNGPU"])
    assert "train_batch_size" in engine, f"{cfg.deepspeed_config}: a system's config states its global batch"
    plan = ds_config.check_batch(engine, cfg.deepspeed_config, world)  # raises unless micro x accum x world = batch
    assert plan.global_batch == engine["train_batch_size"]


def test_every_system_config_has_its_launch_settings_and_the_mlperf_preset_is_the_dgx_a100():
    systems = {p.stem for p in (REPO / "configs" / "systems").glob("*.json")}
    assert systems == {p.stem.removeprefix("config_") for p in LAUNCH_SETTINGS}
    dgxa100 = from_file(str(REPO / "configs" / "systems" / "DGXA100.json"))
    assert dataclasses.replace(dgxa100, submission_platform=mlperf().submission_platform) == mlperf()


def test_the_custom_preset_is_the_measured_one_for_ones_own_data(tmp_path, monkeypatch):
    cfg = config_from_args(["--preset", "custom", "--data", str(tmp_path)])
    assert (cfg.model, cfg.synthetic, cfg.data) == ("cpu_160_s4", False, str(tmp_path))
    engine = ds_config.load(str(REPO / cfg.deepspeed_config), world_size=1)
    assert (engine.plan.micro_batch, engine.plan.accumulation, engine.autocast_dtype) == (16, 1, torch.bfloat16)
    # it decays before its last epoch, and evaluates where each decay starts (the curve in BENCHMARKS.md)
    assert cfg.decay_epochs[-1] < cfg.epochs and all(cfg.eval_schedule.evaluates_after(e) for e in cfg.decay_epochs)
    monkeypatch.chdir(tmp_path)  # no data/custom here: the error says to give --data
    with pytest.raises(ValueError, match="--preset custom trains on a data set of your own: give --data DIR"):
        config_from_args(["--preset", "custom"])
