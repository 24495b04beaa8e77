"""The summary table that scripts/gpu_check.sh prints last: one row per step, with what it measured.

`python scripts/gpu_summary.py RESULTS_DIR` reads RESULTS_DIR/steps.tsv (name, status, seconds, log), the pytest
JUnit XML of a step (NAME.xml), the benchmark CSV of a step (NAME.csv, fields of
triton_kernels/benchmarks/common.py) and the result lines of a step (NAME.result); prints a Markdown table and writes
it to RESULTS_DIR/summary.md.
`python scripts/gpu_summary.py --smoke RUN_DIR` prints the result lines of a trainer run: time to train and status
from its MLPerf log, the evaluation's AP, and the training speed from its metrics.jsonl.
A benchmark row gives, per op and mode at its largest batch, each provider's median time, Triton's GB/s (and what
fraction it is of the `copy` baseline's for the same bytes) and its speed-up over torch eager and over torch.compile.
"""

from __future__ import annotations

import csv
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def test_result(xml: Path) -> str:
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    return f"{passed} passed, {n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped"


def bench_results(path: Path) -> list[str]:
    rows = list(csv.DictReader(open(path)))
    out = []
    for op, mode in dict.fromkeys((r["op"], r["mode"]) for r in rows):
        case = [r for r in rows if (r["op"], r["mode"]) == (op, mode)]
        B = max(int(r["B"]) for r in case)
        at_B = {r["provider"]: r for r in case if int(r["B"]) == B}
        copy = at_B.pop("copy", None)  # the bandwidth baseline, not a competitor
        ms = {p: float(r["ms"]) for p, r in at_B.items()}
        if "triton" not in ms:  # a run cut by its time limit
            out.append(f"{op} {mode} B={B}: incomplete, measured {', '.join(ms) or 'nothing'}")
            continue
        gbps = float(at_B["triton"]["gbps"])
        times = ", ".join(f"{p} {t:.3f} ms" for p, t in ms.items())
        speedups = " / ".join(f"x{ms[p] / ms['triton']:.2f} vs {p}" for p in ms if p != "triton")
        of_copy = f" ({gbps / float(copy['gbps']):.0%} of copy, {float(copy['gbps']):.0f} GB/s)" if copy else ""
        out.append(f"{op} {mode} B={B}: {times}; triton {gbps:.0f} GB/s{of_copy}, {speedups}")
    return out


def smoke_results(run_dir: Path) -> list[str]:
    """What a trainer run shows: its MLPerf log's time and status and eval_accuracy, its speed from metrics.jsonl."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from ssd_ds.mlperf_log import log_records, time_to_train

    seconds, status = time_to_train(run_dir / "mlperf.log")
    accuracy = [r["value"] for r in log_records(run_dir / "mlperf.log") if r["key"] == "eval_accuracy"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "iteration" in r]
    speeds = [r for r in steps if "images_per_s" in r]
    lines = [f"MLPerf log: run_start to run_stop {seconds:.1f} s, status {status}, eval_accuracy {accuracy}"]
    if steps:
        lines.append(f"{steps[-1]['iteration']} iterations, last loss {steps[-1]['loss']:.3f}")
    if len(speeds) > 1:  # the first record's interval holds the first (compiling) steps
        last = speeds[-1]
        lines.append(f"training {last['images_per_s']:.0f} img/s, data wait {last['data_wait_s_per_step'] * 1e3:.1f} "
                     "ms/step (last logged interval)")
    if not accuracy:
        raise SystemExit(f"{run_dir / 'mlperf.log'}: no eval_accuracy: the evaluation did not come back")
    return lines


def main(results: Path) -> None:
    lines = ["| step | status | s | result |", "|---|---|---|---|"]
    for name, status, seconds, log in (line.split("\t") for line in open(results / "steps.tsv").read().splitlines()):
        details = []
        if (results / f"{name}.xml").exists():
            details = [test_result(results / f"{name}.xml")]
        elif (results / f"{name}.csv").exists():
            details = bench_results(results / f"{name}.csv")
        if (results / f"{name}.result").exists():
            details += [line for line in (results / f"{name}.result").read_text().splitlines() if line.strip()]
        if status != "ok" and (results / log).exists():  # the log's last line says why
            tail = [line for line in (results / log).read_text().splitlines() if line.strip()][-1:]
            details += [f"{log}: {tail[0][:160]}" if tail else f"{log} is empty"]
        for i, detail in enumerate(details or [""]):
            lines.append(f"| {name} | {status} | {seconds} | {detail} |" if i == 0 else f"| | | | {detail} |")
    env = (results / "env.txt").read_text().splitlines() if (results / "env.txt").exists() else ["no env.txt"]
    table = "\n".join([f"GPU check: {env[0]}", "", *lines])
    (results / "summary.md").write_text(table + "\n")
    print("\n" + table)


if __name__ == "__main__":
    if sys.argv[1] == "--smoke":
        print("\n".join(smoke_results(Path(sys.argv[2]))))
    else:
        main(Path(sys.argv[1]))
