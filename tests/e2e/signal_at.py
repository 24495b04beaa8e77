"""The trainer, sending itself a real stop signal at a chosen point: `python tests/e2e/signal_at.py TRAINER FLAGS`
(or under `deepspeed --num_gpus N`), the point given by the environment, so that a test stops a run exactly where it
means to (a signal from outside lands wherever the run happens to be):

  SIGNAL_AT   where: `step:K` (inside the K-th micro-batch's step of this process), `eval:E` (as the evaluation
              after epoch E starts its inference), `save:K` (inside the K-th checkpoint save, mid-write); several,
              comma-separated, each sends one signal
  SIGNAL      which (default SIGTERM)
  SIGNAL_RANK only this rank sends (default: every rank)
  HANG_SAVE   `K`: the K-th save of this process never returns (a stuck file system)
  SLOW_COCOEVAL  `1`: COCOeval results are picked up only by a final wait, as when COCOeval takes longer than
              the steps before the stop (real COCO): the evaluation is still pending at the stop
"""

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ssd_ds import coco_eval, loop  # noqa: E402
from ssd_ds.cli import run_cli  # noqa: E402
from ssd_ds.train import main  # noqa: E402

points = [p for p in os.environ.get("SIGNAL_AT", "").split(",") if p]
number = signal.Signals[os.environ.get("SIGNAL", "SIGTERM")]
counts = {"step": 0, "save": 0}


def send(kind: str, value: int) -> None:
    if f"{kind}:{value}" in points and os.environ.get("SIGNAL_RANK", os.environ.get("RANK", "0")) == \
            os.environ.get("RANK", "0"):
        print(f"signal_at: sending {number.name} at {kind}:{value}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), number)


step = loop.train_step


def train_step(engine, *args, **kwargs):
    counts["step"] += 1
    send("step", counts["step"])
    return step(engine, *args, **kwargs)


loop.train_step = train_step

run = loop.Evaluation.run


def evaluation_run(self, state):
    send("eval", state.epoch)
    return run(self, state)


loop.Evaluation.run = evaluation_run

save = loop.checkpoint.save


def checkpoint_save(engine, *args, **kwargs):
    counts["save"] += 1
    k = counts["save"]

    class Engine:  # DeepSpeed's engine, its save interrupted mid-write
        def __getattr__(self, name):
            return getattr(engine, name)

        def save_checkpoint(self, save_dir, tag, **kw):
            result = engine.save_checkpoint(save_dir, tag=tag, **kw)
            send("save", k)
            if os.environ.get("HANG_SAVE") == str(k):
                print(f"signal_at: save {k} hangs", file=sys.stderr, flush=True)
                time.sleep(3600)
            return result

    return save(Engine(), *args, **kwargs)


loop.checkpoint.save = checkpoint_save

if os.environ.get("SLOW_COCOEVAL") == "1":
    poll = coco_eval.BackgroundEvaluator.poll

    def wait(self, timeout=None):
        for job in self.pending:
            job.process.join(timeout)
        return poll(self)

    coco_eval.BackgroundEvaluator.poll = lambda self: []
    coco_eval.BackgroundEvaluator.wait = wait

if __name__ == "__main__":
    run_cli(main)
