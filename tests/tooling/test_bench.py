"""`python -m ssd_ds.bench train` times the trainer's configuration: its DeepSpeed JSON's accumulation and precision,
its data set's classes, and one static graph per micro-batch, as the trainer compiles."""

import json
import re
import subprocess
import sys

import pytest
import torch

from ssd_ds.bench.train import compiled_graphs, fresh_compile_state
from ssd_ds.data.coco import CocoDetection
from tests.helpers import REPO, env

ROW = re.compile(r"^  batch +(\d+)x(\d+)  (.+?) +([\d.]+) img/s +x([\d.]+) .*TFLOP/s  (.+)$")


def test_graph_count_tells_a_static_graph_from_a_dynamic_recompile():
    fn = torch.compile(lambda x: (x * 2).sum(dim=1), backend="eager")
    fresh_compile_state()
    fn(torch.ones(2, 3))
    one = compiled_graphs()
    fn(torch.ones(4, 3))  # same code, another batch: dynamo recompiles with the batch dimension dynamic
    two = compiled_graphs()
    fresh_compile_state()
    fn(torch.ones(4, 3))
    fresh = compiled_graphs()
    assert (one.graphs, one.dynamic) == (1, 0) and str(one) == "1 graph compiled, static"
    assert (two.graphs, two.dynamic) == (2, 1) and str(two) == "2 graphs compiled, 1 DYNAMIC"
    assert (fresh.graphs, fresh.dynamic) == (1, 0)


@pytest.mark.slow
def test_bench_train_times_the_trainers_configuration_with_one_static_graph_per_micro_batch(synthetic_dataset,
                                                                                           tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": 2,
                              "torch_autocast": {"enabled": True, "dtype": "bfloat16"}}))
    # aot_eager: dynamo traces what it traces for inductor (the graphs counted here) without inductor's minutes of C++
    # compilation on this CPU; the backend is torch's debugging override, the bench and the trainer's flags unchanged.
    proc = subprocess.run(
        [sys.executable, "-m", "ssd_ds.bench", "train", "--preset", "demo", "--data", str(synthetic_dataset),
         "--deepspeed_config", str(ds), "--compile", "on", "--batch", "2,4", "--steps", "1", "--rows", "trainer"],
        cwd=REPO, env=env(TORCH_COMPILE_OVERRIDE_BACKENDS=">=0:aot_eager"), capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    classes = CocoDetection(synthetic_dataset, "train").num_classes
    assert any(line.startswith("training step") and f"cpu_small (128x128, {classes} classes from {synthetic_dataset})"
               in line for line in lines), proc.stdout
    assert any(f"trainer's configuration: preset demo, {ds} (micro-batch 3 x accumulation 2, bfloat16 autocast); "
               "kernels torch, compiled True" in line for line in lines), proc.stdout
    rows = [m.groups() for m in map(ROW.match, lines) if m]
    assert [(micro, accum, label) for micro, accum, label, *_ in rows] == [
        ("2", "2", "fp32 NCHW eager (baseline)"), ("2", "2", "trainer's configuration"),
        ("4", "2", "fp32 NCHW eager (baseline)"), ("4", "2", "trainer's configuration")], proc.stdout
    for baseline, trainer in (rows[0:2], rows[2:4]):
        assert baseline[4] == "1.00" and baseline[5] == "no graph compiled"
        # the ratio is the trainer's images/s over the baseline's at the same micro-batch (both printed to 0.1)
        rate, base, ratio = float(trainer[3]), float(baseline[3]), float(trainer[4])
        assert (rate - 0.05) / (base + 0.05) - 0.005 <= ratio <= (rate + 0.05) / (base - 0.05) + 0.005, proc.stdout
        # one graph at each micro-batch, static: the second is compiled afresh, not retraced with a dynamic batch
        assert trainer[5] == "1 graph compiled, static", proc.stdout


def test_bench_eval_times_a_runs_evaluation_before_and_with_the_report(synthetic_dataset, tmp_path, capsys):
    """`bench eval --run_dir` on a run's last evaluated epoch: the background work before the report and with it, the
    spawned process, writing the report to TensorBoard, and drawing the validation images, each timed."""
    import argparse

    import numpy as np

    from ssd_ds.bench import eval as bench_eval
    from tests.unit.test_evaluate import fake_detections

    run_dir = tmp_path / "run"
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"data": str(synthetic_dataset), "coco_eval": "hotcoco"}))
    _, detections = fake_detections(str(synthetic_dataset / "annotations" / "instances_val2017.json"))
    np.save(run_dir / "eval" / "epoch_1.npy", detections[:5])
    np.save(run_dir / "eval" / "epoch_3.npy", detections)  # the last evaluated epoch is the one timed
    timings = bench_eval.run(argparse.Namespace(run_dir=str(run_dir), repeats=1))
    out = capsys.readouterr().out
    assert f"of {run_dir / 'eval' / 'epoch_3.npy'} ({len(detections)} detections on 16 images, hotcoco)" in out
    assert set(timings) == {"before", "after", "spawned_after", "tensorboard", "draw_before", "draw_after"}
    assert all(v > 0 for v in timings.values())
    assert "the report to TensorBoard" in out and "(6 classes, 14 curves)" in out
