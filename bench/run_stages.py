"""Where a whole pipeline run's wall time goes, and how much of its CPU time is the kernel's.

Reads the console log of ``python -m rlhf_jax.main`` (or ``launchers/local.sh``) — every
stage's progress line at 100% carries its elapsed time — and, when given, the report of
``/usr/bin/time -v`` around the same command (wall clock, user and system CPU seconds, minor
page faults, peak resident memory). Several runs (e.g. before / after a change, same config,
same host, one at a time) become one table of per-stage wall times, a grouped bar chart and
one JSONL record per run with the host's CPU.

  /usr/bin/time -v -o after.time launchers/local.sh configs/sentiment.py runs/after > after.log 2>&1
  python bench/run_stages.py --run after=after.log,after.time --run before=before.log,before.time \
    --out bench/results/default_run.jsonl --md bench/results/default_run.md \
    --plot bench/results/default_run.png

A stage is a progress line's description ("pretrain base", "reward model round 1", ...); a
description that finishes more than once (the reward normalisation of every round) sums its
100% lines. A stage interrupted and resumed counts the resumed part only (its progress line
restarts). "other" is the wall
time no stage line covers (start-up, data, compilation outside the stages, evaluation without
a progress bar, the report), when the run's total is known.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

from rlhf_jax.train.metrics import markdown_table  # noqa: E402

_DONE = re.compile(r"\] (?P<desc>[^\]]+?): 100% \(\d+/\d+ [^)]*\) .*?elapsed (?P<elapsed>[\d:]+)")
_TIME_FIELDS = {
  "Elapsed (wall clock) time (h:mm:ss or m:ss)": "wall_s",
  "User time (seconds)": "user_s",
  "System time (seconds)": "sys_s",
  "Minor (reclaiming a frame) page faults": "minor_faults",
  "Maximum resident set size (kbytes)": "max_rss_kb",
  "Exit status": "exit_status",
}


def clock_seconds(text: str) -> float:
  """``"1:02:03"`` / ``"02:03"`` / ``"2:03.45"`` -> seconds."""
  seconds = 0.0
  for part in text.strip().split(":"):
    seconds = seconds * 60 + float(part)
  return seconds


def stage_seconds(log_text: str) -> Dict[str, float]:
  """``{stage: seconds}`` from a run's console log, in the order the stages first finished."""
  stages: Dict[str, float] = {}
  for line in log_text.replace("\r", "\n").splitlines():
    m = _DONE.search(line)
    if m:
      desc = m.group("desc").strip()
      stages[desc] = stages.get(desc, 0.0) + clock_seconds(m.group("elapsed"))
  return stages


def time_report(text: str) -> Dict[str, float]:
  """The fields of ``/usr/bin/time -v`` this script reports, as numbers."""
  out: Dict[str, float] = {}
  for line in text.splitlines():
    key, sep, value = line.strip().rpartition(": ")
    if sep and key in _TIME_FIELDS:
      name = _TIME_FIELDS[key]
      out[name] = clock_seconds(value) if name == "wall_s" else float(value)
  if "user_s" in out and "sys_s" in out and out["user_s"] + out["sys_s"] > 0:
    out["kernel_share"] = out["sys_s"] / (out["user_s"] + out["sys_s"])
  return out


def run_record(name: str, log_path: str, time_path: Optional[str]) -> dict:
  with open(log_path, errors="replace") as f:
    stages = stage_seconds(f.read())
  if not stages:
    raise SystemExit(f"{log_path}: no stage finished (no progress line at 100%)")
  record = {"run": name, "log": log_path, "stages_s": stages}
  if time_path:
    with open(time_path) as f:
      usage = time_report(f.read())
    if "wall_s" not in usage:
      raise SystemExit(f"{time_path}: not a /usr/bin/time -v report (no wall-clock line)")
    record.update(usage)
    record["other_s"] = usage["wall_s"] - sum(stages.values())
  return record


def _stage_names(records: List[dict]) -> List[str]:
  """Every run's stages, in the order they first appear."""
  return list(dict.fromkeys(s for r in records for s in r["stages_s"]))


def markdown(records: List[dict]) -> str:
  stages = _stage_names(records)

  def fmt(v, spec=".0f"):
    return "–" if v is None else format(v, spec)

  rows = [[s] + [fmt(r["stages_s"].get(s)) for r in records] for s in stages]
  rows.append(["other (no progress line)"] + [fmt(r.get("other_s")) for r in records])
  rows.append(["**total wall**"] + [fmt(r.get("wall_s")) for r in records])
  rows.append(["user CPU s"] + [fmt(r.get("user_s")) for r in records])
  rows.append(["kernel (system) CPU s"] + [fmt(r.get("sys_s")) for r in records])
  rows.append(
    ["kernel share of CPU time"]
    + [f"{100 * r['kernel_share']:.1f}%" if "kernel_share" in r else "–" for r in records]
  )
  rows.append(
    ["minor page faults (millions)"]
    + [fmt(None if "minor_faults" not in r else r["minor_faults"] / 1e6, ".1f") for r in records]
  )
  rows.append(
    ["peak RSS GiB"]
    + [fmt(None if "max_rss_kb" not in r else r["max_rss_kb"] / 2**20, ".2f") for r in records]
  )
  return markdown_table(["seconds"] + [r["run"] for r in records], rows) + "\n"


def plot(records: List[dict], path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  stages = _stage_names(records)
  if any("other_s" in r for r in records):
    stages.append("other")
  y = np.arange(len(stages))
  height = 0.8 / len(records)
  fig, ax = plt.subplots(figsize=(8, 0.45 * len(stages) + 1.5))
  for i, r in enumerate(records):
    values = [r["stages_s"].get(s, r.get("other_s") if s == "other" else None) for s in stages]
    minutes = [0.0 if v is None else v / 60 for v in values]
    total = r.get("wall_s")
    label = r["run"] + ("" if total is None else f" (total {total / 60:.1f} min)")
    ax.barh(y + i * height, minutes, height, label=label)
  ax.set_yticks(y + height * (len(records) - 1) / 2, stages)
  ax.invert_yaxis()
  ax.set_xlabel("wall minutes")
  ax.legend()
  ax.set_title("Pipeline run: wall time per stage")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument(
    "--run",
    action="append",
    required=True,
    metavar="NAME=LOG[,TIME]",
    help="a run's console log and optionally its /usr/bin/time -v report",
  )
  p.add_argument("--out", help="append one JSONL record per run here")
  p.add_argument("--md", help="write the markdown table here")
  p.add_argument("--plot", help="write the bar chart (PNG) here")
  args = p.parse_args(argv)
  records = []
  for spec in args.run:
    name, sep, paths = spec.partition("=")
    if not sep or not paths:
      p.error(f"--run {spec!r}: expected NAME=LOG[,TIME]")
    log_path, _, time_path = paths.partition(",")
    records.append(run_record(name, log_path, time_path or None))
  table = markdown(records)
  print(table)
  if args.md:
    with open(args.md, "w") as f:
      f.write(f"Host CPU: {json.dumps(_common.cpu_model())}\n\n" + table)
  if args.plot:
    plot(records, args.plot)
  if args.out:
    for r in records:
      _common.emit(dict(r, tag="pipeline_run", cpu=_common.cpu_model()), args.out)


if __name__ == "__main__":
  main()
