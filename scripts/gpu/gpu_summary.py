"""The summary table that scripts/gpu/gpu_check.sh prints last: one row per step, with what it measured.

`python scripts/gpu/gpu_summary.py RESULTS_DIR` reads RESULTS_DIR/steps.tsv (name, status, seconds, log), the pytest
JUnit XML of a step (NAME.xml) and the result lines of a step (NAME.result); prints a Markdown table and writes it
to RESULTS_DIR/summary.md.
`python scripts/gpu/gpu_summary.py --smoke RUN_DIR [LOG]` prints the result lines of a trainer run (`result: ...`):
time and status from its MLPerf log, the evaluations' AP, the steady-state speed (from epoch 2 on), host time per
step waiting for workers and preparing, the decode paths, peak memory from its metrics.jsonl; from its log (LOG)
the warm-up's seconds, recompiles and graph breaks (TORCH_LOGS="recompiles,graph_breaks") and the compile cache.
"""

from __future__ import annotations

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


def smoke_results(run_dir: Path, log: Path | None = None) -> list[str]:
    """What a trainer run shows (module docstring)."""
    import re
    import statistics

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from ssd_ds.mlperf_log import log_records, time_to_train

    seconds, status = time_to_train(run_dir / "mlperf.log")
    accuracy = [r["value"] for r in log_records(run_dir / "mlperf.log") if r["key"] == "eval_accuracy"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "iteration" in r and "loss" in r]
    lines = [f"MLPerf log: run_start to run_stop {seconds:.1f} s, status {status}, eval_accuracy {accuracy}"]
    if steps:
        lines.append(f"{steps[-1]['iteration']} iterations, last loss {steps[-1]['loss']:.3f}")
    steady = [r for r in steps if "images_per_s" in r and r.get("epoch", 0) >= 2]
    if steady:  # each record's rate covers its own interval of equal images: their harmonic mean is the overall rate
        rate = len(steady) / sum(1 / r["images_per_s"] for r in steady)
        ms = lambda key: statistics.median(r[key] for r in steady) * 1e3  # noqa: E731
        lines.append(f"steady state (epoch 2 on, {len(steady)} logged intervals): {rate:.0f} img/s; per step, host "
                     f"ms waiting for workers {ms('data_wait_s_per_step'):.1f}, preparing (decode, augment) "
                     f"{ms('prepare_s_per_step'):.1f} (medians)")
    decode = {}
    for r in steps:
        for key, n in r.get("decode", {}).items():
            decode[key] = decode.get(key, 0) + n
    if decode:
        lines.append("decode paths: " + ", ".join(f"{k} {n}" for k, n in decode.items()))
    memory = [r for r in steps if "max_allocated_gib" in r]
    if memory:
        lines.append(f"peak memory: allocated {max(r['max_allocated_gib'] for r in memory):.1f} GiB, reserved "
                     f"{max(r['max_reserved_gib'] for r in memory):.1f} GiB")
    if log is not None and log.exists():
        text = log.read_text(errors="replace")
        warm = re.search(r"warm-up \(compile, autotuning\) on synthetic tensors: ([\d.]+) s, of which the "
                         r"evaluation model ([\d.]+) s", text)
        if warm:
            lines.append(f"warm-up {warm[1]} s (the evaluation model {warm[2]} s)")
        cache = re.search(r"torch.compile cache artifacts: (.*)", text)
        lines.append(f"recompiles {text.count('Recompiling function')}, graph breaks "
                     f"{len(re.findall(r'Graph break', text))}" + (f"; compile cache: {cache[1]}" if cache else ""))
    if not accuracy:
        raise SystemExit(f"{run_dir / 'mlperf.log'}: no eval_accuracy: the evaluation did not come back")
    return [f"result: {line}" for line in lines]


def main(results: Path) -> None:
    lines = ["| step | status | s | result |", "|---|---|---|---|"]
    for name, status, seconds, log in (line.split("\t") for line in open(results / "steps.tsv").read().splitlines()):
        details = []
        if (results / f"{name}.xml").exists():
            details = [test_result(results / f"{name}.xml")]
        if (results / f"{name}.result").exists():
            details += [line.split(": ", 1)[-1] for line in (results / f"{name}.result").read_text().splitlines()
                        if line.strip()]
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
        print("\n".join(smoke_results(Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else None)))
    else:
        main(Path(sys.argv[1]))
