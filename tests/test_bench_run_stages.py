"""bench/run_stages.py: stage times from a run's log and /usr/bin/time's report, hand-checked."""

import importlib.util
import json
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench")

LOG = (
  "tokenize: 100%|##########| 16223/16223 [00:17<00:00, 944.11text/s]\r"
  "I1202 21:40:00.1 1 metrics.py:314] pretrain base:  50% (400/800 step) 0.64 step/s, "
  "elapsed 10:00, ETA 10:00\n"
  "I1202 21:51:42.3 1 metrics.py:314] pretrain base: 100% (800/800 step) 0.64 step/s, "
  "elapsed 20:51, ETA 00:00\n"
  "I1202 21:54:37.7 1 metrics.py:314] round 1: responses a: 100% (128/128 batch) 1.95 "
  "batch/s, elapsed 01:06, ETA 00:00\n"
  "I1202 22:26:29.3 1 metrics.py:314] reward model round 1: 100% (512/512 step) 0.28 step/s,"
  " elapsed 1:30:56, ETA 00:00\n"
  # a stage that finishes again (one per round) adds up
  "I1202 22:30:00.0 1 metrics.py:314] round 1: responses a: 100% (128/128 batch) 1.95 "
  "batch/s, elapsed 00:04, ETA 00:00\n"
)

TIME = """\tCommand being timed: "launchers/local.sh configs/sentiment.py runs/x"
\tUser time (seconds): 9000.50
\tSystem time (seconds): 1000.50
\tPercent of CPU this job got: 190%
\tElapsed (wall clock) time (h:mm:ss or m:ss): 2:00:00
\tMaximum resident set size (kbytes): 2097152
\tMinor (reclaiming a frame) page faults: 12345678
\tExit status: 0
"""


@pytest.fixture()
def stages():
  sys.path.insert(0, BENCH)
  try:
    spec = importlib.util.spec_from_file_location(
      "bench_stages", os.path.join(BENCH, "run_stages.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
  finally:
    sys.path.remove(BENCH)


def test_stage_seconds_and_time_report_by_hand(stages):
  assert stages.clock_seconds("2:03.5") == 123.5
  assert stages.clock_seconds("1:02:03") == 3723.0
  got = stages.stage_seconds(LOG)
  assert got == {
    "pretrain base": 1251.0,
    "round 1: responses a": 70.0,
    "reward model round 1": 5456.0,
  }
  assert list(got) == ["pretrain base", "round 1: responses a", "reward model round 1"]
  usage = stages.time_report(TIME)
  assert usage["wall_s"] == 7200.0 and usage["user_s"] == 9000.5 and usage["sys_s"] == 1000.5
  assert usage["kernel_share"] == pytest.approx(1000.5 / 10001.0)
  assert usage["minor_faults"] == 12345678 and usage["max_rss_kb"] == 2097152


def test_main_writes_table_plot_and_records(stages, tmp_path):
  (tmp_path / "a.log").write_text(LOG)
  (tmp_path / "a.time").write_text(TIME)
  (tmp_path / "b.log").write_text(LOG.replace("elapsed 01:06", "elapsed 00:30"))
  out, md, png = tmp_path / "r.jsonl", tmp_path / "r.md", tmp_path / "r.png"
  stages.main(
    [
      "--run",
      f"before={tmp_path / 'a.log'},{tmp_path / 'a.time'}",
      "--run",
      f"after={tmp_path / 'b.log'}",
      "--out",
      str(out),
      "--md",
      str(md),
      "--plot",
      str(png),
    ]
  )
  records = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["run"] for r in records] == ["before", "after"]
  assert records[0]["other_s"] == pytest.approx(7200.0 - 1251.0 - 70.0 - 5456.0)
  assert "other_s" not in records[1] and records[1]["stages_s"]["round 1: responses a"] == 34.0
  table = md.read_text()
  assert "| round 1: responses a | 70 | 34 |" in table
  assert "| kernel share of CPU time | 10.0% | – |" in table
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_log_without_finished_stages_is_an_error_naming_it(stages, tmp_path):
  (tmp_path / "empty.log").write_text("nothing here\n")
  with pytest.raises(SystemExit, match="empty.log: no stage finished"):
    stages.main(["--run", f"x={tmp_path / 'empty.log'}"])
