"""The loop's small parts on their own: the step's encoding decision, the training records and the stop condition."""

import math

import pytest
import torch

from ssd_ds.data.batch import Batch
from ssd_ds.loop import RunState, StopAt, TrainLog, train_step


class RecordingMetrics:
    def __init__(self):
        self.records = []

    def log(self, group, record, step):
        self.records.append((group, dict(record), step))


def add_steps(train_log: TrainLog, first: int, last: int, bad: int | None = None) -> None:
    for it in range(first, last + 1):
        loss = torch.tensor(math.nan if it == bad else float(it))
        train_log.add(it, loss, loss / 4, loss * 3 / 4)


def test_a_checkpoint_between_two_logs_keeps_every_step_in_the_records(tmp_path):
    metrics = RecordingMetrics()
    train_log = TrainLog(metrics, tmp_path, global_batch=8, device=torch.device("cpu"))
    add_steps(train_log, 1, 3)
    train_log.check_finite()  # a checkpoint at iteration 3, a log at 4
    add_steps(train_log, 4, 4)
    train_log.skipped_images = 2
    train_log.write(epoch=1, lr=0.1, elapsed=2.0, data_wait=0.4, prepare=0.8)
    assert [r[2] for r in metrics.records] == [1, 2, 3, 4]
    assert [r[1]["loss"] for r in metrics.records] == [1.0, 2.0, 3.0, 4.0]
    last = metrics.records[-1][1]
    assert last["images_per_s"] == pytest.approx(4 * 8 / 2.0)  # four steps of the global batch in 2 s
    assert last["data_wait_s_per_step"] == pytest.approx(0.1) and last["prepare_s_per_step"] == pytest.approx(0.2)
    assert last["skipped_images"] == 2 and train_log.skipped_images == 0
    assert "lr" not in metrics.records[0][1]


def test_a_non_finite_loss_stops_before_the_checkpoint_naming_the_iteration_and_the_kept_checkpoint(tmp_path):
    (tmp_path / "latest").write_text("epoch001_iter0000004")
    train_log = TrainLog(RecordingMetrics(), tmp_path, global_batch=8, device=torch.device("cpu"))
    add_steps(train_log, 5, 7, bad=6)
    with pytest.raises(FloatingPointError, match=r"loss is nan at iteration 6.*epoch001_iter0000004"):
        train_log.check_finite()


@pytest.mark.parametrize(("state", "stops"), [
    (RunState(epoch=1, iteration=10), False),
    (RunState(epoch=1, iteration=10, success=True), True),  # the target reached
    (RunState(epoch=3, iteration=10), True),  # the schedule's epochs done
    (RunState(epoch=2, iteration=25), True),  # the iteration limit (--max_iters)
])
def test_stop_at(state, stops):
    assert StopAt(epochs=3, iterations=25)(state) is stops


def test_train_step_refuses_a_batch_that_disagrees_with_the_runs_encoding_decision():
    """The run decides once who encodes (DeviceOps.encode None: the loader workers); a batch made the other way is
    a clear error, not a second encoding or a missing target that goes unnoticed."""

    class Unreachable:  # the engine: never reached when the batch is refused
        def __call__(self, *args):
            raise AssertionError("the step ran on a mismatched batch")

    raw = Batch(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, 8, 4), torch.zeros(1, 8, dtype=torch.int64),
                torch.tensor([0]), None, None, 0)
    encoded = raw._replace(loc_t=torch.zeros(1, 16, 4), labels_t=torch.zeros(1, 16, dtype=torch.int64))
    with pytest.raises(ValueError, match="carries no encoded targets"):
        train_step(Unreachable(), raw, torch.contiguous_format, encode=None)
    with pytest.raises(ValueError, match="already carries targets"):
        train_step(Unreachable(), encoded, torch.contiguous_format, encode=lambda *a: (None, None))
