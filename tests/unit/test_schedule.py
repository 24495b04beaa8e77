import pytest

from ssd_ds.ds_config import BatchPlan, check_batch
from ssd_ds.run_config import demo, mlperf
from ssd_ds.schedule import EvalSchedule, base_lr, lr_factor


def test_base_lr_rule_matches_spec_systems():
    # SPEC section 7: 2.5e-3 * round((lr_per_32 / 2.5e-3) * batch / 32).
    assert base_lr(3.2e-3, 912) == pytest.approx(0.09)  # DGX A100
    assert base_lr(2.92e-3, 960) == pytest.approx(0.0875)  # DGX-1: round(35.04) = 35
    assert base_lr(2.9e-3, 1536) == pytest.approx(0.14)  # 4x DGX-2H: round(55.68) = 56
    assert base_lr(3.2e-3, 896) == pytest.approx(0.09)  # round(35.84) = 36


def test_warmup_is_linear_per_iteration_from_zero():
    args = dict(iters_per_epoch=128, warmup_iters=650, warmup_factor=0.0, decay_epochs=(44, 55), decay_factor=0.1)
    assert lr_factor(0, **args) == 0.0
    assert lr_factor(325, **args) == pytest.approx(0.5)
    assert lr_factor(649, **args) == pytest.approx(649 / 650)
    assert lr_factor(650, **args) == 1.0


def test_decay_at_boundary_epochs():
    args = dict(iters_per_epoch=128, warmup_iters=650, warmup_factor=0.0, decay_epochs=(44, 55), decay_factor=0.1)
    assert lr_factor(44 * 128 - 1, **args) == 1.0
    assert lr_factor(44 * 128, **args) == pytest.approx(0.1)
    assert lr_factor(55 * 128 - 1, **args) == pytest.approx(0.1)
    assert lr_factor(55 * 128, **args) == pytest.approx(0.01)


def test_mlperf_evaluation_epochs():
    schedule = mlperf().eval_schedule
    evaluated = [e for e in range(1, 66) if schedule.evaluates_after(e)]
    assert evaluated == [40, 50, 55, 60, 65]
    assert demo().eval_schedule.evaluates_after(demo().epochs)


def test_blocks_run_from_one_evaluation_to_the_next():
    schedule = EvalSchedule(eval_epochs=(3, 5), eval_every=2, epochs=8)  # evaluations after 3, 5, 7, 8
    starts = [e for e in range(1, 9) if schedule.block_starts(e)]
    assert starts == [1, 4, 6, 8]
    assert [schedule.block_length(e) for e in starts] == [3, 2, 2, 1]
    assert [schedule.block_first(e) for e in range(1, 9)] == [1, 1, 1, 4, 4, 6, 6, 8]


def test_batch_arithmetic_checked_against_world_size():
    plan = check_batch({"train_batch_size": 912, "train_micro_batch_size_per_gpu": 114}, "x.json", 8)
    assert plan == BatchPlan(114, 1, 8)
    assert check_batch({"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 2}, "c.json",
                       2).global_batch == 32
    with pytest.raises(ValueError, match=r"dgx.json: train_batch_size 912 != .* world size 4"):
        check_batch({"train_batch_size": 912, "train_micro_batch_size_per_gpu": 114}, "dgx.json", 4)
